//! Tests of the local-disk connector: commit, resume, and the attacks on paths and names.
use super::writer::{DIRECT_ALIGN, DIRECT_MIN, direct_part};
use super::*;
use bytes::Bytes;
use std::fs;

pub(super) fn spec(path: &str, size: u64) -> ObjectSpec {
    ObjectSpec {
        tenant: "t".into(),
        job_id: "job-1".into(),
        path: path.into(),
        size,
        chunk_size: 1 << 20,
        state_file: None,
    }
}

pub(super) fn connector(dir: &Path) -> LocalConnector {
    LocalConnector::new(dir.to_str().unwrap()).unwrap()
}

#[tokio::test]
async fn writes_out_of_order_and_publishes_only_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path());
    c.check().await.unwrap();
    let s = spec("a/b.bin", 10);
    let w = c.open(&s, false).await.unwrap();
    w.write_at(5, Bytes::from_static(b"world")).await.unwrap();
    w.write_at(0, Bytes::from_static(b"hello")).await.unwrap();
    w.sync().await.unwrap();
    let final_path = dir.path().join("a/b.bin");
    let temp = dir.path().join("a").join(s.temp_name());
    assert!(!final_path.exists(), "no partial file under the final name");
    assert!(temp.exists());
    let conf = w.commit().await.unwrap();
    assert_eq!(conf.size, 10);
    assert_eq!(fs::read(&final_path).unwrap(), b"helloworld");
    assert!(!temp.exists());
    // Idempotent.
    assert_eq!(w.commit().await.unwrap().size, 10);
    assert!(w.write_at(0, Bytes::from_static(b"x")).await.is_err());
}

/// `len` bytes of a pattern in page-aligned memory, as the gateway's pooled buffers are.
pub(super) fn aligned(len: usize, seed: u8) -> Bytes {
    let mut v = vec![0u8; len + DIRECT_ALIGN];
    let start = v.as_ptr().align_offset(DIRECT_ALIGN);
    for (i, b) in v[start..start + len].iter_mut().enumerate() {
        *b = seed.wrapping_add((i % 251) as u8);
    }
    Bytes::from(v).slice(start..start + len)
}

#[test]
fn only_aligned_memory_at_aligned_offsets_goes_direct_and_only_whole_blocks_of_it() {
    let a = aligned(3 * DIRECT_ALIGN + 100, 1);
    assert_eq!(direct_part(0, &a), 3 * DIRECT_ALIGN);
    assert_eq!(direct_part(DIRECT_ALIGN as u64, &a), 3 * DIRECT_ALIGN);
    assert_eq!(direct_part(100, &a), 0, "unaligned offset");
    assert_eq!(direct_part(0, &a[1..]), 0, "unaligned memory");
    assert_eq!(direct_part(0, &a[..100]), 0, "less than a block");
}

#[tokio::test]
async fn direct_and_page_cache_writes_of_one_file_give_its_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = DIRECT_MIN;
    let size = 3 * chunk + 1000;
    let mut expected = Vec::new();
    let pieces: Vec<Bytes> = (0..4u8)
        .map(|k| aligned(if k == 3 { 1000 } else { chunk }, k * 7))
        .collect();
    for p in &pieces {
        expected.extend_from_slice(p);
    }
    for direct in [true, false] {
        let c = connector(dir.path()).with_direct(direct);
        let name = format!("f-{direct}.bin");
        let s = spec(&name, size as u64);
        let w = c.open(&s, false).await.unwrap();
        // Out of order; one piece from unaligned memory (a copy of it, one byte in), so
        // direct, page cache and both within one write all happen.
        w.write_at(3 * chunk as u64, pieces[3].clone())
            .await
            .unwrap();
        w.write_at(chunk as u64, pieces[1].clone()).await.unwrap();
        let mut shifted = vec![0u8; chunk + 1];
        shifted[1..].copy_from_slice(&pieces[2]);
        let shifted = Bytes::from(shifted).slice(1..);
        w.write_at(2 * chunk as u64, shifted).await.unwrap();
        w.write_at(0, pieces[0].clone()).await.unwrap();
        w.sync().await.unwrap();
        w.commit().await.unwrap();
        assert!(
            fs::read(dir.path().join(&name)).unwrap() == expected,
            "content of {name}"
        );
    }
}

#[tokio::test]
async fn resume_keeps_synced_data_and_fresh_open_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path());
    let w = c.open(&spec("f", 4), false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"ab")).await.unwrap();
    w.sync().await.unwrap();
    drop(w);
    let w = c.open(&spec("f", 4), true).await.unwrap();
    w.write_at(2, Bytes::from_static(b"cd")).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"abcd");
    // Reopening a committed object for resume confirms it without rewriting.
    let w = c.open(&spec("f", 4), true).await.unwrap();
    assert_eq!(w.commit().await.unwrap().size, 4);
    // A fresh (non-resume) open starts from zero.
    let w = c.open(&spec("g", 2), false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"zz")).await.unwrap();
    drop(w);
    let w = c.open(&spec("g", 2), false).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(fs::read(dir.path().join("g")).unwrap(), b"\0\0");
}

#[tokio::test]
async fn refuses_out_of_range_writes_and_bad_paths() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path());
    let s = spec("f", 4);
    let w = c.open(&s, false).await.unwrap();
    assert!(matches!(
        w.write_at(2, Bytes::from_static(b"abc")).await,
        Err(ConnectorError::OutOfRange { .. })
    ));
    assert!(matches!(
        w.write_at(u64::MAX, Bytes::from_static(b"a")).await,
        Err(ConnectorError::OutOfRange { .. })
    ));
    for bad in [
        "../escape",
        "/abs",
        "a/../../b",
        "x/.trackshift-1.tspart",
        "a.tspart",
    ] {
        assert!(matches!(
            c.open(&spec(bad, 1), false).await,
            Err(ConnectorError::InvalidPath(_))
        ));
    }
    w.abort().await.unwrap();
    assert!(!dir.path().join(s.temp_name()).exists());
}

#[tokio::test]
async fn vanished_destination_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dest");
    fs::create_dir(&root).unwrap();
    let c = connector(&root);
    c.check().await.unwrap();
    fs::remove_dir(&root).unwrap();
    let e = c.check().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unavailable(_)));
    assert!(e.to_string().contains("dest"), "{e}");
    assert!(c.open(&spec("f", 1), false).await.is_err());
    assert!(!root.exists(), "the destination is not silently re-created");
}

#[tokio::test]
async fn a_missing_job_directory_beneath_the_rule_is_created_and_the_rule_directory_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    fs::create_dir_all(&allowed).unwrap();
    let c = rule_connector(
        &allowed,
        &format!("file://{}/new/deeper", allowed.display()),
    );
    // A health probe changes nothing; a job about to write makes what is missing.
    assert!(c.check().await.is_err());
    assert!(!allowed.join("new").exists());
    c.prepare().await.unwrap();
    assert!(allowed.join("new/deeper").is_dir());
    let w = c.open(&spec("f", 2), false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"ok")).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(fs::read(allowed.join("new/deeper/f")).unwrap(), b"ok");
    // The directory the rule names is the operator's: missing, it is an error that says
    // so, and nothing is made in its place.
    let gone = tmp.path().join("unmounted");
    let c = rule_connector(&gone, &format!("file://{}/job", gone.display()));
    let e = c.prepare().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("must exist"), "{e}");
    assert!(!gone.exists());
}

#[tokio::test]
async fn full_disk_is_reported_not_swallowed() {
    // /dev/full fails every write with ENOSPC.
    if !Path::new("/dev/full").exists() {
        return;
    }
    let file = Arc::new(
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    );
    let w = LocalWriter {
        spec: spec("full", 4),
        final_path: PathBuf::from("/nonexistent/full"),
        temp_path: PathBuf::from("/dev/full"),
        name: "full".into(),
        temp: "full".into(),
        dir: Arc::new(rustix::fs::open("/dev", OFlags::RDONLY, Mode::empty()).unwrap()),
        batches: super::Batches::new(),
        file: Some(file),
        dev: 0,
        opened: 0,
        marker: super::writer::Marker::StateFile,
        changes: std::sync::atomic::AtomicU64::new(1),
        synced: std::sync::atomic::AtomicU64::new(0),
        direct: AtomicBool::new(false),
        committed: AtomicBool::new(false),
        verify: VerifyMode::Size,
        overwrite: false,
    };
    let e = w
        .write_at(0, Bytes::from_static(b"data"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(!e.is_transient());
}

fn rule_connector(rule: &Path, job_dest: &str) -> LocalConnector {
    let rule = Destination::parse(&format!("file://{}", rule.display())).unwrap();
    let job = Destination::parse(job_dest).unwrap();
    assert!(job.is_within(&rule));
    LocalConnector::at(&job.under_rule(&rule)).unwrap()
}

#[tokio::test]
async fn symlink_in_the_tenant_part_of_the_destination_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&allowed).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("f"), b"precious").unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
    let c = rule_connector(&allowed, &format!("file://{}/link", allowed.display()));
    let e = c.check().await.unwrap_err();
    assert!(e.to_string().contains("not allowed"), "{e}");
    assert!(c.open(&spec("f", 1), false).await.is_err());
    // The same answer for a link to something that does not exist: nothing is told.
    std::os::unix::fs::symlink(tmp.path().join("nothing"), allowed.join("dangling")).unwrap();
    let c2 = rule_connector(&allowed, &format!("file://{}/dangling", allowed.display()));
    let e2 = c2.check().await.unwrap_err();
    assert!(e2.to_string().contains("not allowed"), "{e2}");
    assert_eq!(fs::read(outside.join("f")).unwrap(), b"precious");
}

#[tokio::test]
async fn symlinked_directory_inside_an_object_path_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&allowed).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("sub")).unwrap();
    let c = rule_connector(&allowed, &format!("file://{}", allowed.display()));
    let e = match c.open(&spec("sub/f", 1), false).await {
        Err(e) => e,
        Ok(_) => panic!("opened through a link"),
    };
    assert!(matches!(e, ConnectorError::NotAllowed(_)), "{e}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // A link as the final name is neither followed nor replaced.
    fs::write(outside.join("target"), b"precious").unwrap();
    std::os::unix::fs::symlink(outside.join("target"), allowed.join("f")).unwrap();
    assert!(c.open(&spec("f", 1), false).await.is_err());
    assert!(c.read_back("f").await.is_err());
    assert_eq!(fs::read(outside.join("target")).unwrap(), b"precious");
}

#[tokio::test]
async fn directory_swapped_for_a_symlink_after_open_does_not_redirect_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(allowed.join("d")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let c = rule_connector(&allowed, &format!("file://{}", allowed.display()));
    let w = c.open(&spec("d/f", 2), false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"ok")).await.unwrap();
    // The tenant renames the directory away and puts a link in its place.
    fs::rename(allowed.join("d"), allowed.join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("d")).unwrap();
    w.commit().await.unwrap();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert_eq!(fs::read(allowed.join("moved/f")).unwrap(), b"ok");
}

#[tokio::test]
async fn an_existing_object_is_not_replaced_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"victim").unwrap();
    let c = connector(dir.path());
    let e = match c.open(&spec("f", 2), false).await {
        Err(e) => e,
        Ok(_) => panic!("opened over an existing object"),
    };
    assert!(matches!(e, ConnectorError::Exists(_)), "{e}");
    // One appearing between open and commit is not replaced either.
    let w = c.open(&spec("g", 2), false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"me")).await.unwrap();
    fs::write(dir.path().join("g"), b"other").unwrap();
    assert!(matches!(w.commit().await, Err(ConnectorError::Exists(_))));
    assert_eq!(fs::read(dir.path().join("g")).unwrap(), b"other");
    // With overwrite it is.
    let c = connector(dir.path()).with_overwrite(true);
    let w = c.open(&spec("f", 2), false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"ok")).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"ok");
}

#[tokio::test]
async fn same_job_id_of_two_tenants_never_shares_a_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path());
    let victim = ObjectSpec {
        tenant: "victim".into(),
        ..spec("f", 6)
    };
    let attacker = ObjectSpec {
        tenant: "attacker".into(),
        ..spec("f", 6)
    };
    assert_ne!(victim.temp_name(), attacker.temp_name());
    let v = c.open(&victim, false).await.unwrap();
    v.write_at(0, Bytes::from_static(b"victim")).await.unwrap();
    v.sync().await.unwrap();
    // The attacker opens the same name with the same job id a second later.
    let a = c.open(&attacker, false).await.unwrap();
    a.write_at(0, Bytes::from_static(b"evil!!")).await.unwrap();
    let conf = v.commit().await.unwrap();
    assert_eq!(conf.size, 6);
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"victim");
    // The attacker cannot replace it.
    assert!(matches!(a.commit().await, Err(ConnectorError::Exists(_))));
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"victim");
}

#[tokio::test]
async fn remove_takes_back_only_this_writers_commit() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path());
    let w = c.open(&spec("f", 2), false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"ok")).await.unwrap();
    w.commit().await.unwrap();
    w.remove().await.unwrap();
    assert!(!dir.path().join("f").exists());
}

#[tokio::test]
async fn resume_does_not_claim_a_file_it_never_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let c = connector(&dir.path().join("out"));
    fs::create_dir(dir.path().join("out")).unwrap();
    let s = ObjectSpec {
        state_file: Some(state.clone()),
        ..spec("f", 2)
    };
    let w = c.open(&s, false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"ok")).await.unwrap();
    w.sync().await.unwrap();
    drop(w);
    // Someone else puts a complete-looking file under the final name and removes
    // the temporary file: a resumed job must not call that its own.
    fs::remove_file(dir.path().join("out").join(s.temp_name())).unwrap();
    fs::write(dir.path().join("out/f"), b"xx").unwrap();
    assert!(matches!(
        c.open(&s, true).await,
        Err(ConnectorError::Exists(_))
    ));
}

/// Whether the file system of `dir` keeps user extended attributes (the tests' temporary
/// directory may be on one that does not).
fn user_attributes(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    let f = fs::File::create(&probe).unwrap();
    let ok = rustix::fs::fsetxattr(&f, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    fs::remove_file(&probe).unwrap();
    ok
}

/// A destination directory `out` beside a job's `state` file, and a 2-byte object `f`
/// whose spec names that state file.
fn with_state_file() -> (tempfile::TempDir, PathBuf, PathBuf, ObjectSpec) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let s = ObjectSpec {
        state_file: Some(state.clone()),
        ..spec("f", 2)
    };
    (dir, state, out, s)
}

#[tokio::test]
async fn resume_knows_its_own_commit_by_the_mark_and_writes_no_state_file() {
    let (_dir, state, out, s) = with_state_file();
    let c = connector(&out);
    let w = c.open(&s, false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"ok")).await.unwrap();
    w.sync().await.unwrap();
    w.commit().await.unwrap();
    drop(w);
    if user_attributes(&out) {
        // The mark replaced the state file (no file created, synced and renamed per object).
        assert!(!state.exists());
        let mut value = [0u8; 64];
        let f = fs::File::open(out.join("f")).unwrap();
        let n = rustix::fs::fgetxattr(&f, crate::COMMIT_XATTR, &mut value[..]).unwrap();
        assert_eq!(&value[..n], s.temp_name().as_bytes());
    } else {
        // A file system without them: the state file instead.
        assert_eq!(fs::read(&state).unwrap(), super::COMMITTING);
    }
    // A commit retried after a restart finds it committed, not "exists".
    let again = c.open(&s, true).await.unwrap();
    assert_eq!(again.commit().await.unwrap().size, 2);
    // Another job's object at that name is not this one's, mark or not.
    let other = ObjectSpec {
        job_id: "another-job".into(),
        state_file: Some(state.with_file_name("another-state.json")),
        ..s.clone()
    };
    assert!(matches!(
        c.open(&other, true).await,
        Err(ConnectorError::Exists(_))
    ));
}

#[tokio::test]
async fn without_user_attributes_the_state_file_marks_the_commit() {
    let (_dir, state, out, s) = with_state_file();
    let w = connector(&out).open(&s, false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"ok")).await.unwrap();
    drop(w);
    // What a gateway on a file system without user attributes leaves at a crash after
    // the rename: the file, unmarked, and the state file saying "committing".
    fs::rename(out.join(s.temp_name()), out.join("f")).unwrap();
    if user_attributes(&out) {
        rustix::fs::removexattr(out.join("f"), crate::COMMIT_XATTR).unwrap();
    }
    assert!(matches!(
        connector(&out).open(&s, true).await,
        Err(ConnectorError::Exists(_))
    ));
    fs::write(&state, super::COMMITTING).unwrap();
    let again = connector(&out).open(&s, true).await.unwrap();
    assert_eq!(again.commit().await.unwrap().size, 2);
}

/// Local disk in a fresh directory, as the conformance suite sees it (the workspace's
/// `tests/connectors.rs` runs it again with the 1 GiB case, beside the servers).
struct Local(tempfile::TempDir);

impl crate::conformance::Subject for Local {
    fn name(&self) -> &str {
        "file"
    }
    fn connector(&self, overwrite: bool, verify: VerifyMode) -> Arc<dyn Connector> {
        let uri = format!("file://{}", self.0.path().display());
        let mut dest = crate::Destination::parse(&uri).unwrap();
        if overwrite {
            dest = dest.with_option("overwrite", "true").unwrap();
        }
        crate::connect(&dest, verify, &crate::Settings::Process).unwrap()
    }
    fn capabilities(&self) -> crate::conformance::Capabilities {
        crate::conformance::Capabilities::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_disk_keeps_the_connector_contract() {
    let local = Local(tempfile::tempdir().unwrap());
    crate::conformance::run_all(&local).await;
    // Nothing temporary is left beside the objects.
    let mut left = Vec::new();
    let mut dirs = vec![local.0.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".tspart") {
                left.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
