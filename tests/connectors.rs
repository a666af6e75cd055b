//! One conformance suite for every connector, run against real servers: local disk, S3
//! (moto), Azure Blob (Azurite), SFTP (OpenSSH sshd) and FTPS (vsftpd), started by `scripts/test-servers.sh` (README's test
//! command does this). A missing server fails the suite with the reason; nothing is skipped.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use trackshift_connectors::{
    Connector, ConnectorError, Destination, FtpsConnector, ObjectSpec, ObjectStoreConnector,
    Settings, VerifyMode, connect, from_uri_with,
};

/// A destination under test: its URI and a unique prefix for this test.
struct Dest {
    name: &'static str,
    uri: String,
    _tmp: Option<tempfile::TempDir>,
}

fn unique() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or("x")
    )
}

/// Every destination kind, each under a fresh prefix.
fn destinations() -> Vec<Dest> {
    let tmp = tempfile::tempdir().unwrap();
    let mut v = vec![Dest {
        name: "file",
        uri: format!("file://{}", tmp.path().display()),
        _tmp: Some(tmp),
    }];
    for (name, var) in [
        ("s3", "TRACKSHIFT_TEST_S3"),
        ("azure", "TRACKSHIFT_TEST_AZURE"),
        ("sftp", "TRACKSHIFT_TEST_SFTP"),
        ("ftps", "TRACKSHIFT_TEST_FTPS"),
    ] {
        let base = std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: the {name} test server is not running. Run the tests with \
                 ./scripts/test.sh, or `scripts/test-servers.sh start` and source \
                 `scripts/test-servers.sh env` first"
            )
        });
        let uri = common::under(&base, &unique());
        v.push(Dest {
            name,
            uri,
            _tmp: None,
        });
    }
    v
}

/// The connector for `d`, allowed to replace objects (the suite writes names again).
fn connector(d: &Dest, verify: VerifyMode) -> Arc<dyn Connector> {
    let dest = Destination::parse(&d.uri)
        .and_then(|x| x.with_option("overwrite", "true"))
        .unwrap_or_else(|e| panic!("{}: {e}", d.name));
    connect(&dest, verify, &Settings::Process).unwrap_or_else(|e| panic!("{}: {e}", d.name))
}

/// Chunk size to use for an object of `size` bytes at `c` (at least 1 MiB).
fn chunk_for(c: &dyn Connector, size: u64) -> u64 {
    c.min_chunk_size(size).max(1 << 20)
}

fn pattern(size: usize, seed: u8) -> Bytes {
    let mut v = vec![0u8; size];
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    for b in &mut v {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    Bytes::from(v)
}

fn spec(path: &str, size: u64, chunk: u64, state: Option<&Path>) -> ObjectSpec {
    ObjectSpec {
        tenant: "t".into(),
        job_id: "job-conformance".into(),
        path: path.into(),
        size,
        chunk_size: chunk,
        state_file: state.map(Path::to_path_buf),
    }
}

/// Writes `data` as an object in shuffled chunk order and commits it.
async fn put(
    c: &dyn Connector,
    path: &str,
    data: &Bytes,
    chunk: u64,
) -> trackshift_connectors::Confirmation {
    let w = c
        .open(&spec(path, data.len() as u64, chunk, None), false)
        .await
        .unwrap_or_else(|e| panic!("{} open {path}: {e}", c.uri()));
    let n = (data.len() as u64).div_ceil(chunk).max(1);
    // Last chunk first, then the rest in reverse: order must not matter.
    let mut order: Vec<u64> = (0..n).collect();
    order.reverse();
    for i in order {
        let start = (i * chunk) as usize;
        let end = (start + chunk as usize).min(data.len());
        w.write_at(i * chunk, data.slice(start..end)).await.unwrap();
    }
    w.sync().await.unwrap();
    w.commit()
        .await
        .unwrap_or_else(|e| panic!("{} commit {path}: {e}", c.uri()))
}

fn blake3(data: &[u8]) -> [u8; 32] {
    *::blake3::hash(data).as_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_empty_and_multi_chunk_objects_round_trip() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        c.check()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", d.name));
        for (path, size) in [
            ("small.txt", 100usize),
            ("empty", 0),
            ("dir/sub/multi.bin", 20 << 20),
        ] {
            let data = pattern(size, 1);
            let chunk = chunk_for(c.as_ref(), size as u64);
            let conf = put(c.as_ref(), path, &data, chunk).await;
            assert_eq!(conf.size, size as u64, "{} {path}", d.name);
            assert_eq!(
                c.stat(path).await.unwrap(),
                Some(size as u64),
                "{} {path}",
                d.name
            );
            assert_eq!(
                c.read_back(path).await.unwrap(),
                (size as u64, blake3(&data)),
                "{} {path}",
                d.name
            );
        }
        assert_eq!(c.stat("missing").await.unwrap(), None, "{}", d.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrite_replaces_the_object() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        let first = pattern(3000, 2);
        let second = pattern(1500, 3);
        put(c.as_ref(), "same", &first, 1 << 20).await;
        put(c.as_ref(), "same", &second, 1 << 20).await;
        assert_eq!(
            c.read_back("same").await.unwrap(),
            (1500, blake3(&second)),
            "{}",
            d.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_the_job_did_not_create_is_not_replaced_without_overwrite() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        let first = pattern(3000, 2);
        put(c.as_ref(), "theirs", &first, 1 << 20).await;
        let plain = from_uri_with(&d.uri, VerifyMode::Size).unwrap();
        let r = plain.open(&spec("theirs", 10, 1 << 20, None), false).await;
        assert!(
            matches!(r, Err(ConnectorError::Exists(_))),
            "{}: an existing object was opened for replacing",
            d.name
        );
        assert_eq!(
            c.read_back("theirs").await.unwrap(),
            (3000, blake3(&first)),
            "{}",
            d.name
        );
        // One that appears between open and commit: the commit itself refuses it (local
        // disk and SFTP rename without replacing, S3 and Azure commit with
        // `If-None-Match: *`, FTPS looks again right before RNTO).
        for (name, size) in [("late", 100u64), ("late-empty", 0)] {
            let mine = pattern(size as usize, 4);
            // (another job: its own temporary object)
            let late = ObjectSpec {
                job_id: "another-job".into(),
                ..spec(name, size, 1 << 20, None)
            };
            let w = plain.open(&late, false).await.unwrap();
            if size > 0 {
                w.write_at(0, mine).await.unwrap();
            }
            w.sync().await.unwrap();
            put(c.as_ref(), name, &first, 1 << 20).await;
            let r = w.commit().await;
            assert!(
                matches!(r, Err(ConnectorError::Exists(_))),
                "{} {name}: the commit of an object that appeared after open: {r:?}",
                d.name
            );
            // Taking back what it never committed leaves the other object alone.
            w.remove().await.unwrap();
            assert_eq!(
                c.read_back(name).await.unwrap(),
                (3000, blake3(&first)),
                "{} {name}",
                d.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrite_true_replaces_an_object_that_appeared_after_open() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        let theirs = pattern(3000, 2);
        let mine = pattern(100, 4);
        let w = c
            .open(&spec("replaced", 100, 1 << 20, None), false)
            .await
            .unwrap();
        w.write_at(0, mine.clone()).await.unwrap();
        w.sync().await.unwrap();
        let other = ObjectSpec {
            job_id: "another-job".into(),
            ..spec("replaced", 3000, 1 << 20, None)
        };
        let o = c.open(&other, false).await.unwrap();
        o.write_at(0, theirs).await.unwrap();
        o.sync().await.unwrap();
        o.commit().await.unwrap();
        let r = w.commit().await;
        if d.name == "azure" {
            // Azure drops a blob's uncommitted blocks when another upload to the name
            // commits: the later of two concurrent uploads fails, and replaces nothing.
            assert!(r.is_err(), "azure: a commit of discarded blocks: {r:?}");
            assert_eq!(c.read_back("replaced").await.unwrap().0, 3000);
            continue;
        }
        let conf = r.unwrap_or_else(|e| panic!("{}: overwrite=true was refused: {e}", d.name));
        assert_eq!(conf.size, 100, "{}", d.name);
        assert_eq!(
            c.read_back("replaced").await.unwrap(),
            (100, blake3(&mine)),
            "{}",
            d.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_deletes_what_this_job_committed() {
    for d in destinations() {
        // Without overwrite: what it committed is its own.
        let c = from_uri_with(&d.uri, VerifyMode::Size).unwrap();
        for (name, size) in [("removed", 5000usize), ("removed-empty", 0)] {
            let data = pattern(size, 8);
            let w = c
                .open(&spec(name, size as u64, 1 << 20, None), false)
                .await
                .unwrap();
            if size > 0 {
                w.write_at(0, data).await.unwrap();
            }
            w.sync().await.unwrap();
            w.commit().await.unwrap();
            assert_eq!(c.stat(name).await.unwrap(), Some(size as u64), "{}", d.name);
            w.remove()
                .await
                .unwrap_or_else(|e| panic!("{} {name}: {e}", d.name));
            assert_eq!(c.stat(name).await.unwrap(), None, "{} {name}", d.name);
            // Twice is fine (a retried clean-up).
            w.remove().await.unwrap();
        }
    }
}

/// A commit retried after a crash between completing the upload and recording that it
/// did (the upload state on disk still says "not committed") confirms its own object,
/// and never one that replaced it in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_retried_after_a_crash_confirms_only_its_own_object() {
    for d in destinations() {
        if !matches!(d.name, "s3" | "azure") {
            continue;
        }
        let plain = from_uri_with(&d.uri, VerifyMode::Size).unwrap();
        let other = connector(&d, VerifyMode::Size);
        for (name, replaced) in [("crash-mine", false), ("crash-replaced", true)] {
            let state_dir = tempfile::tempdir().unwrap();
            let state = state_dir.path().join("upload.json");
            let size = 12u64 << 20;
            let chunk = chunk_for(plain.as_ref(), size);
            let data = pattern(size as usize, 9);
            let s = spec(name, size, chunk, Some(&state));
            let w = plain.open(&s, false).await.unwrap();
            for i in 0..size.div_ceil(chunk) {
                let start = (i * chunk) as usize;
                let end = (start + chunk as usize).min(data.len());
                w.write_at(i * chunk, data.slice(start..end)).await.unwrap();
            }
            w.sync().await.unwrap();
            let before_commit = std::fs::read(&state).unwrap();
            w.commit().await.unwrap();
            drop(w);
            // The crash: what was recorded is from before the commit.
            std::fs::write(&state, &before_commit).unwrap();
            let theirs = pattern(size as usize, 10);
            if replaced {
                put(other.as_ref(), name, &theirs, chunk).await;
            }
            let w = plain.open(&s, true).await.unwrap();
            let r = w.commit().await;
            if replaced {
                assert!(
                    matches!(r, Err(ConnectorError::Exists(_))),
                    "{}: a replacement was confirmed as this job's: {r:?}",
                    d.name
                );
                assert_eq!(
                    plain.read_back(name).await.unwrap(),
                    (size, blake3(&theirs)),
                    "{}",
                    d.name
                );
            } else {
                let conf = r.unwrap_or_else(|e| panic!("{}: own commit refused: {e}", d.name));
                assert_eq!(conf.size, size, "{}", d.name);
                assert_eq!(
                    plain.read_back(name).await.unwrap(),
                    (size, blake3(&data)),
                    "{}",
                    d.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_to_different_keys() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let data = pattern(10_000 + usize::from(i) * 100, i);
                    put(c.as_ref(), &format!("concurrent/{i}.bin"), &data, 1 << 20).await;
                    data
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let data = t.await.unwrap();
            assert_eq!(
                c.read_back(&format!("concurrent/{i}.bin")).await.unwrap(),
                (data.len() as u64, blake3(&data)),
                "{}",
                d.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_mid_upload_leaves_nothing_under_the_final_name() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        let size = 20u64 << 20;
        let chunk = chunk_for(c.as_ref(), size);
        let data = pattern(size as usize, 4);
        let w = c
            .open(&spec("aborted.bin", size, chunk, None), false)
            .await
            .unwrap();
        w.write_at(0, data.slice(0..chunk as usize)).await.unwrap();
        w.sync().await.unwrap();
        w.abort().await.unwrap();
        assert_eq!(c.stat("aborted.bin").await.unwrap(), None, "{}", d.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_resumes_after_the_writer_is_gone() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        let state_dir = tempfile::tempdir().unwrap();
        let state = state_dir.path().join("upload-0.json");
        let size = 20u64 << 20;
        let chunk = chunk_for(c.as_ref(), size);
        let data = pattern(size as usize, 5);
        let s = spec("resumed.bin", size, chunk, Some(&state));
        {
            let w = c.open(&s, false).await.unwrap();
            w.write_at(0, data.slice(0..chunk as usize)).await.unwrap();
            w.sync().await.unwrap();
            // The writer (and the gateway holding it) goes away here.
        }
        assert_eq!(c.stat("resumed.bin").await.unwrap(), None, "{}", d.name);
        // A fresh connector, as after a restart, resumes from what was synced: strictly this
        // time (a job resubmitted with `strict`), although the first part was sent unverified.
        let c = connector(&d, VerifyMode::Strict);
        let w = c.open(&s, true).await.unwrap();
        let n = size.div_ceil(chunk);
        for i in 1..n {
            let start = (i * chunk) as usize;
            let end = (start + chunk as usize).min(data.len());
            w.write_at(i * chunk, data.slice(start..end)).await.unwrap();
        }
        w.sync().await.unwrap();
        let conf = w.commit().await.unwrap();
        assert_eq!(conf.size, size, "{}", d.name);
        // Every kind confirms the content: S3 by reading back, as the first part's MD5 (for
        // the ETag check) was never taken.
        assert_eq!(conf.blake3, Some(blake3(&data)), "{}", d.name);
        assert_eq!(
            c.read_back("resumed.bin").await.unwrap(),
            (size, blake3(&data)),
            "{}",
            d.name
        );
        // Committing again (a retried finish) confirms the same object.
        assert_eq!(w.commit().await.unwrap().size, size, "{}", d.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_sparse_object_over_one_gib() {
    static ZEROS: [u8; 16 << 20] = [0u8; 16 << 20];
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        let size = (1u64 << 30) + 4096;
        let chunk = 16u64 << 20;
        let w = c
            .open(&spec("large/sparse.bin", size, chunk, None), false)
            .await
            .unwrap();
        let n = size.div_ceil(chunk);
        let mut tasks = Vec::new();
        for i in 0..n {
            let w = w.clone();
            let len = chunk.min(size - i * chunk) as usize;
            tasks.push(tokio::spawn(async move {
                w.write_at(i * chunk, Bytes::from_static(&ZEROS[..len]))
                    .await
            }));
            if tasks.len() >= 8 {
                tasks.remove(0).await.unwrap().unwrap();
            }
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        w.sync().await.unwrap();
        assert_eq!(w.commit().await.unwrap().size, size, "{}", d.name);
        assert_eq!(
            c.stat("large/sparse.bin").await.unwrap(),
            Some(size),
            "{}",
            d.name
        );
        // Give the space back before the next server writes its GiB: the servers share this
        // machine's disk (five GiB at once is more than a small CI runner may have free).
        put(c.as_ref(), "large/sparse.bin", &Bytes::new(), chunk).await;
        assert_eq!(
            c.stat("large/sparse.bin").await.unwrap(),
            Some(0),
            "{}",
            d.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_with_spaces_and_unicode_and_traversal_refused() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Size);
        let name = "dir with spaces/naïve café ☃ 文件.txt";
        let data = pattern(777, 6);
        put(c.as_ref(), name, &data, 1 << 20).await;
        assert_eq!(
            c.read_back(name).await.unwrap(),
            (777, blake3(&data)),
            "{}",
            d.name
        );
        for bad in ["../escape", "a/../../b", "/abs", "a//b", "./x", ""] {
            let r = c.open(&spec(bad, 1, 1 << 20, None), false).await;
            assert!(
                matches!(r, Err(ConnectorError::InvalidPath(_))),
                "{}: {bad:?} was accepted",
                d.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_reads_back_where_the_service_gives_no_hash() {
    for d in destinations() {
        let c = connector(&d, VerifyMode::Strict);
        let data = pattern(5000, 7);
        let conf = put(c.as_ref(), "strict.bin", &data, 1 << 20).await;
        match d.name {
            // S3 confirms content by its MD5 ETag of the parts sent (checked in commit).
            "s3" => assert!(conf.etag.as_deref().is_some_and(|e| e.ends_with("-1"))),
            _ => assert_eq!(conf.blake3, Some(blake3(&data)), "{}", d.name),
        }
        let c = connector(&d, VerifyMode::Full);
        let conf = put(c.as_ref(), "full.bin", &data, 1 << 20).await;
        assert_eq!(conf.blake3, Some(blake3(&data)), "{}", d.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_and_missing_buckets_fail_fast_and_permanently() {
    for d in destinations() {
        let bad: Vec<Arc<dyn Connector>> = match d.name {
            "file" => {
                vec![from_uri_with("file:///nonexistent/trackshift", VerifyMode::Size).unwrap()]
            }
            "s3" => vec![Arc::new(
                ObjectStoreConnector::from_uri("s3://no-such-bucket-trackshift", VerifyMode::Size)
                    .unwrap(),
            )],
            "sftp" => {
                // A valid key the server does not know (the host's own), and a pinned
                // fingerprint that is not the server's.
                let key = std::env::var("TRACKSHIFT_SFTP_KEY").unwrap();
                let other_key = Path::new(&key).with_file_name("host_ed25519");
                let (path, _) = d.uri.split_once('?').unwrap();
                vec![
                    from_uri_with(
                        &format!(
                            "{path}?known_hosts={}&key={}",
                            Path::new(&key).with_file_name("known_hosts").display(),
                            other_key.display()
                        ),
                        VerifyMode::Size,
                    )
                    .unwrap(),
                    from_uri_with(
                        &format!(
                            "{path}?fingerprint=SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                        ),
                        VerifyMode::Size,
                    )
                    .unwrap(),
                ]
            }
            "ftps" => {
                // A wrong password, and a certificate that does not name the host asked for.
                let (path, query) = d.uri.split_once('?').unwrap();
                vec![
                    Arc::new(
                        FtpsConnector::with_password(&d.uri, VerifyMode::Size, "wrong-password")
                            .unwrap(),
                    ),
                    from_uri_with(
                        &format!("{path}?{query}&server_name=other.example"),
                        VerifyMode::Size,
                    )
                    .unwrap(),
                ]
            }
            _ => vec![
                Arc::new(
                    ObjectStoreConnector::with_settings(
                        &d.uri,
                        VerifyMode::Size,
                        &[(
                            "azure_storage_account_key".into(),
                            "d3JvbmcgLSB3cm9uZyAtIHdyb25nIC0gd3JvbmcgLSB3cm9uZyAtIHdyb25nIQ=="
                                .into(),
                        )],
                    )
                    .unwrap(),
                ),
                Arc::new(
                    ObjectStoreConnector::from_uri("az://no-such-container", VerifyMode::Size)
                        .unwrap(),
                ),
            ],
        };
        for c in bad {
            let started = std::time::Instant::now();
            let err = c.check().await.expect_err("a bad destination was accepted");
            assert!(!err.is_transient(), "{}: {err} should be permanent", d.name);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{}: took {:?} to fail",
                d.name,
                started.elapsed()
            );
            let msg = err.to_string();
            assert!(
                !msg.contains("d3JvbmcgLSB3"),
                "{}: key in error: {msg}",
                d.name
            );
            assert!(!msg.contains("trackshift-test-secret"), "{}: {msg}", d.name);
            assert!(!msg.contains("PRIVATE KEY"), "{}: {msg}", d.name);
            if let Ok(p) = std::env::var("TRACKSHIFT_FTPS_PASSWORD") {
                assert!(!msg.contains(&p), "{}: password in error: {msg}", d.name);
            }
        }
    }
}

#[test]
fn uris_are_validated_up_front_without_leaking_secrets() {
    for (uri, want) in [
        ("s3://", "bucket"),
        ("s3://user:secret@bucket/x", "credentials"),
        ("s3://bucket/x?secret_access_key=abc", "unknown or secret"),
        ("s3://bucket/../x", "\"..\""),
        ("az://container/x?account_key=abc", "unknown or secret"),
        ("ftp://host/x", "unsupported"),
    ] {
        let err = match from_uri_with(uri, VerifyMode::Size) {
            Ok(c) => panic!("{uri} accepted: {c:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{uri}: {err}");
        assert!(
            !err.contains("secret") || want == "unknown or secret",
            "{uri}: {err}"
        );
        assert!(!err.contains("abc"), "{uri}: {err}");
    }
    // Debug output never shows the store's configuration (where credentials live).
    let c = ObjectStoreConnector::with_settings(
        "s3://bucket/p",
        VerifyMode::Size,
        &[("aws_secret_access_key".into(), "SUPERSECRETVALUE".into())],
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("SUPERSECRETVALUE"));
}

/// A server whose disk fills mid-object fails the write with a reason that says so (SFTP
/// asks the server's file system; FTPS tells a server that ended the upload from one that
/// went away), and an object already committed beside it is untouched. The servers' `full`
/// directories are 16 MiB file systems mounted by `scripts/test-servers.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_on_the_server_gives_a_clear_error() {
    if let Ok(why) = std::env::var("TRACKSHIFT_TEST_FULL_DISK") {
        eprintln!("full-disk test NOT RUN: {why}");
        return;
    }
    for (name, var, says) in [
        (
            "sftp",
            "TRACKSHIFT_TEST_SFTP",
            &["no space left on the server"][..],
        ),
        (
            "ftps",
            "TRACKSHIFT_TEST_FTPS",
            // vsftpd's own reply when it read the whole chunk, else our diagnosis of the
            // reset data connection.
            &[
                "451 Failure writing to local file",
                "could not store the data",
            ],
        ),
    ] {
        let base = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set"));
        let uri = common::under(&common::under(&base, "full"), &unique());
        let c = from_uri_with(&uri, VerifyMode::Size).unwrap();
        let kept = pattern(300_000, 7);
        put(c.as_ref(), "kept.bin", &kept, 1 << 20).await;

        let chunk = 4u64 << 20;
        let data = pattern(chunk as usize, 9);
        let w = c
            .open(&spec("too-big.bin", 8 * chunk, chunk, None), false)
            .await
            .unwrap();
        let mut failed = None;
        for i in 0..8 {
            if let Err(e) = w.write_at(i * chunk, data.clone()).await {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => match w.sync().await {
                Err(e) => e,
                Ok(()) => w.commit().await.expect_err("32 MiB fit in 16 MiB"),
            },
        };
        let msg = e.to_string();
        assert!(says.iter().any(|s| msg.contains(s)), "{name}: {msg}");
        assert!(msg.starts_with("writing to "), "{name}: {msg}");
        w.abort().await.unwrap();
        assert_eq!(c.stat("too-big.bin").await.unwrap(), None, "{name}");
        assert_eq!(
            c.read_back("kept.bin").await.unwrap(),
            (kept.len() as u64, blake3(&kept)),
            "{name}"
        );
    }
}

/// Descriptors any process on this host holds of files whose name contains `needle`
/// (`/proc/*/fd`; the test servers run here).
fn descriptors_of(needle: &str) -> usize {
    let mut n = 0;
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains(needle)) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sftp_writer_closes_its_handles_on_the_server() {
    let base =
        std::env::var("TRACKSHIFT_TEST_SFTP").expect("TRACKSHIFT_TEST_SFTP (the SFTP test server)");
    let d = Dest {
        name: "sftp",
        uri: common::under(&base, &unique()),
        _tmp: None,
    };
    let c = connector(&d, VerifyMode::Size);
    let chunk = 1 << 20;
    let s = spec("dropped.bin", 4 * chunk, chunk, None);
    let temp = s.temp_name();
    let w = c.open(&s, false).await.unwrap();
    // Two chunks on two lanes: two handles of the temporary file on the server.
    for i in [0, 1] {
        w.write_at(i * chunk, pattern(chunk as usize, 1))
            .await
            .unwrap();
    }
    let held = descriptors_of(&temp);
    assert!(
        held >= 1,
        "the server's descriptors of {temp} are visible in /proc (found none: run as root, as the test servers do)"
    );
    // Neither committed nor aborted (its job failed or was set aside): dropped.
    drop(w);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while descriptors_of(&temp) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        descriptors_of(&temp),
        0,
        "the server still holds {held} descriptor(s) of the dropped writer's file"
    );
    // The connection it shared is still good for the next writer.
    let data = pattern(chunk as usize, 2);
    put(&*c, "after-drop.bin", &data, chunk).await;
}
