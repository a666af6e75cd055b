//! The connector conformance suite (`trackshift_connectors::conformance`, which the
//! in-memory connector, `null://` and every wrapper also run in the crate's own tests), run
//! here against local disk and the real servers: S3 (moto), Azure Blob (Azurite), SFTP
//! (OpenSSH sshd) and FTPS (vsftpd), started by `scripts/test-servers.sh` (README's test
//! command does this). A missing server fails the suite with the reason; nothing is
//! skipped. The cases only some backends have (credentials, full disks, server handles)
//! follow the suite's.

mod common;

use std::path::Path;
use std::sync::Arc;

use trackshift_connectors::conformance::{self, Capabilities, Subject, pattern, put, spec};
use trackshift_connectors::{
    Connector, Destination, FtpsConnector, ObjectStoreConnector, Settings, VerifyMode, connect,
    from_uri_with,
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

impl Subject for Dest {
    fn name(&self) -> &str {
        self.name
    }

    fn connector(&self, overwrite: bool, verify: VerifyMode) -> Arc<dyn Connector> {
        let mut dest =
            Destination::parse(&self.uri).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        if overwrite {
            dest = dest
                .with_option("overwrite", "true")
                .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        }
        connect(&dest, verify, &Settings::Process).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            large_objects: true,
            state_file: matches!(self.name, "s3" | "azure"),
            later_commit_fails: self.name == "azure",
            strict_by_etag: self.name == "s3",
            ..Capabilities::default()
        }
    }
}

/// The connector for `d`, allowed to replace objects.
fn connector(d: &Dest, verify: VerifyMode) -> Arc<dyn Connector> {
    d.connector(true, verify)
}

fn blake3(data: &[u8]) -> [u8; 32] {
    *::blake3::hash(data).as_bytes()
}

/// One `#[tokio::test]` per case of the suite, each over every destination.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            for d in destinations() {
                conformance::$case(&d).await;
            }
        }
    )*};
}

suite!(
    round_trip,
    overwrite_replaces,
    existing_objects_are_not_replaced,
    overwrite_replaces_an_object_that_appeared_after_open,
    remove_takes_back_only_its_own_commit,
    a_retried_commit_confirms_only_its_own_object,
    concurrent_uploads,
    abort_leaves_nothing,
    resume_after_the_writer_is_gone,
    large_sparse_object,
    names_and_traversal,
    strict_and_full_confirm_content,
);

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
