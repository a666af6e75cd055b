//! Unit tests of the sender: backoff, sources, identities.

use super::*;

#[test]
fn reconnect_backoff_is_bounded_and_never_outlasts_the_budget() {
    let plenty = Duration::from_secs(3600);
    for attempt in 1..100 {
        let b = backoff(attempt, plenty);
        assert!(
            b <= MAX_BACKOFF && b >= Duration::from_millis(100),
            "{attempt}: {b:?}"
        );
    }
    assert!(backoff(30, plenty) >= MAX_BACKOFF / 2);
    assert!(backoff(10, Duration::from_millis(30)) <= Duration::from_millis(30));
    assert_eq!(backoff(3, Duration::ZERO), Duration::ZERO);
}

fn tree(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = (0..n)
        .map(|i| {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, format!("file {i}")).unwrap();
            p
        })
        .collect();
    (dir, paths)
}

#[test]
fn reading_many_files_keeps_only_a_few_open() {
    let (_dir, paths) = tree(3 * OPEN_FILES_PER_JOB);
    let files = OpenFiles::new(paths.len());
    for (i, p) in paths.iter().enumerate() {
        let f = files.get(i as u32, p).unwrap();
        let want = format!("file {i}");
        let mut buf = vec![0u8; want.len()];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, want.as_bytes());
        assert!(files.open.lock().unwrap().len() <= OPEN_FILES_PER_JOB);
    }
    // The most recent ones are kept; an evicted one opens again (the same file).
    let kept: Vec<u32> = files.open.lock().unwrap().iter().map(|(i, _)| *i).collect();
    let last = paths.len() as u32 - 1;
    assert!(kept.contains(&last), "{kept:?}");
    files.get(0, &paths[0]).unwrap();
    files.close_all();
    assert!(files.open.lock().unwrap().is_empty());
}

#[test]
fn a_file_replaced_between_reads_is_refused_not_read() {
    let (dir, paths) = tree(OPEN_FILES_PER_JOB + 2);
    let files = OpenFiles::new(paths.len());
    files.get(0, &paths[0]).unwrap();
    // Push file 0 out of the open set, then swap another file in under its name.
    for (i, p) in paths.iter().enumerate().skip(1) {
        files.get(i as u32, p).unwrap();
    }
    assert!(!files.open.lock().unwrap().iter().any(|(i, _)| *i == 0));
    let other = dir.path().join("other");
    std::fs::write(&other, "file 0").unwrap();
    std::fs::rename(&other, &paths[0]).unwrap();
    let err = files.get(0, &paths[0]).unwrap_err();
    assert!(matches!(err, SourceReadError::Changed { .. }), "{err}");
    assert!(
        err.to_string().contains("changed while it was being sent"),
        "{err}"
    );
}

#[test]
fn a_file_grown_between_reads_is_refused_not_read() {
    let (_dir, paths) = tree(OPEN_FILES_PER_JOB + 2);
    let files = OpenFiles::new(paths.len());
    files.get(0, &paths[0]).unwrap();
    for (i, p) in paths.iter().enumerate().skip(1) {
        files.get(i as u32, p).unwrap();
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&paths[0])
        .unwrap();
    std::io::Write::write_all(&mut f, b" and more").unwrap();
    let err = files.get(0, &paths[0]).unwrap_err();
    assert!(matches!(err, SourceReadError::Changed { .. }), "{err}");
    assert!(
        err.to_string().contains("changed while it was being sent"),
        "{err}"
    );
}
