//! A server killed mid-upload: the upload fails cleanly and promptly with a transient error,
//! nothing appears under the final name, and once the server is back the same connector
//! uploads the object again. A test binary of its own, so no other test uses the servers
//! while one is down (`scripts/test-servers.sh kill|restart`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use trackshift_connectors::{ObjectSpec, VerifyMode, from_uri_with};

fn servers(action: &str, name: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-servers.sh");
    let out = Command::new(script).args([action, name]).output().unwrap();
    assert!(
        out.status.success(),
        "test-servers.sh {action} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restarts a killed server when dropped armed (a failing assertion must not leave it
/// down for the test binaries that run next).
struct Down(&'static str, bool);

impl Down {
    fn kill(name: &'static str) -> Self {
        servers("kill", name);
        Self(name, true)
    }
    fn restart(mut self) {
        self.1 = false;
        servers("restart", self.0);
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if self.1 {
            servers("restart", self.0);
        }
    }
}

fn spec(path: &str, size: u64, chunk: u64) -> ObjectSpec {
    ObjectSpec {
        tenant: "t".into(),
        job_id: "job-faults".into(),
        path: path.into(),
        size,
        chunk_size: chunk,
        state_file: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_mid_upload_fails_cleanly_and_a_retry_succeeds_after_restart() {
    for (name, var) in [
        ("s3", "TRACKSHIFT_TEST_S3"),
        ("azure", "TRACKSHIFT_TEST_AZURE"),
        ("sftp", "TRACKSHIFT_TEST_SFTP"),
        ("ftps", "TRACKSHIFT_TEST_FTPS"),
    ] {
        let base = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: run the tests with ./scripts/test.sh (it starts the servers)")
        });
        let uri = common::under(&base, &format!("faults-{}", uuid::Uuid::new_v4().simple()));
        let c = from_uri_with(&uri, VerifyMode::Size).unwrap();
        c.check().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let chunk = c.min_chunk_size(3 << 23).max(8 << 20);
        let size = 3 * chunk;
        let data = Bytes::from(
            (0..size)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect::<Vec<u8>>(),
        );
        let part = |i: u64| data.slice((i * chunk) as usize..((i + 1) * chunk) as usize);

        let w = c.open(&spec("obj.bin", size, chunk), false).await.unwrap();
        w.write_at(0, part(0)).await.unwrap();
        w.sync().await.unwrap();

        let down = Down::kill(name);
        let started = Instant::now();
        let result = async {
            w.write_at(chunk, part(1)).await?;
            w.write_at(2 * chunk, part(2)).await?;
            w.sync().await?;
            w.commit().await
        }
        .await;
        let err = match result {
            Ok(c) => panic!("{name}: an upload to a dead server succeeded: {c:?}"),
            Err(e) => e,
        };
        assert!(err.is_transient(), "{name}: {err} should be transient");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name}: took {:?} to fail",
            started.elapsed()
        );

        down.restart();
        // Nothing under the final name; the same connector uploads the object again.
        assert_eq!(c.stat("obj.bin").await.unwrap(), None, "{name}");
        let w = c.open(&spec("obj.bin", size, chunk), false).await.unwrap();
        for i in 0..3 {
            w.write_at(i * chunk, part(i)).await.unwrap();
        }
        w.sync().await.unwrap();
        assert_eq!(w.commit().await.unwrap().size, size, "{name}");
        assert_eq!(
            c.read_back("obj.bin").await.unwrap(),
            (size, *blake3::hash(&data).as_bytes()),
            "{name}"
        );
    }
}
