//! Descriptors a confined source holds (alone in its own test binary, so no other test
//! opens files meanwhile): one for the whole job, not one per file.

use trackshift_engine::scan::{Confined, list_confined};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_confined_job_holds_one_descriptor_not_one_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let acme = tmp.path().join("acme");
    // 300 files, some 60 directories deep.
    let mut dir = acme.join("job");
    for depth in 0..60 {
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..5 {
            std::fs::write(dir.join(format!("f{k}")), vec![depth as u8; 10]).unwrap();
        }
        dir = dir.join("d");
    }
    let source = Confined {
        root: acme.clone(),
        rel: "job".into(),
        keep_out: Vec::new(),
    };
    let before = open_fds();
    let listing = list_confined(&source).unwrap();
    assert_eq!(listing.files().count(), 300);
    assert_eq!(open_fds(), before + 1, "the root only");
    let files: Vec<_> = (0..300).map(|i| listing.open(i).unwrap()).collect();
    assert_eq!(open_fds(), before + 301, "each open is the caller's");
    drop(files);
    for i in 0..300 {
        drop(listing.open(i).unwrap());
    }
    assert_eq!(open_fds(), before + 1, "a read's file is closed after it");
    drop(listing);
    assert_eq!(open_fds(), before);
}
