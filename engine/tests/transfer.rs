//! End-to-end transfers over real QUIC connections on 127.0.0.1: correctness, the
//! post-quantum key exchange, authentication, corrupt chunks, dropped connections, gateway
//! restarts and destination failures.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::crypto::aws_lc_rs;
use trackshift_connectors::{
    Confirmation, Connector, ConnectorError, ObjectSpec, ObjectWriter, VerifyMode,
};
use trackshift_crypto::{Manifest, Receipt, Signable as _};
use trackshift_engine::gateway::{Gateway, GatewayConfig, add_tenant};
use trackshift_engine::scan::Confined;
use trackshift_engine::sender::{
    ConnectionLost, FaultInjection, JobRequest, SendConfig, SendError, SendReport, TestHook,
    send_jobs, send_path,
};
use trackshift_engine::tls::ServerTrust;

const TOKEN: &str = "test-token-0123456789abcdef";

struct Running {
    gateway: Arc<Gateway>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(data: &Path, pq_only: bool) -> Self {
        Self::start_with(data, |cfg| cfg.pq_only = pq_only).await
    }

    async fn start_with(data: &Path, configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        // The tenant may write under ROOT/out (ROOT: the data directory's parent).
        let out = data.parent().unwrap().join("out");
        fs::create_dir_all(&out).unwrap();
        let out = format!("file://{}", out.display());
        add_tenant(data, "acme", TOKEN, &[&out]).unwrap();
        let mut cfg = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), data);
        configure(&mut cfg);
        let gateway = Arc::new(Gateway::bind(cfg).await.unwrap());
        let g = gateway.clone();
        let task = tokio::spawn(async move { g.serve().await });
        Self { gateway, task }
    }

    fn send_config(&self, dest: &Path) -> SendConfig {
        let mut cfg = SendConfig::new(
            self.gateway.local_addr(),
            ServerTrust::fingerprint(&self.gateway.fingerprint()).unwrap(),
            TOKEN,
            format!("file://{}", dest.display()),
        );
        cfg.chunk_size = 64 << 10;
        cfg.in_flight_bytes = 1 << 20;
        cfg.max_reconnects = 5;
        cfg
    }

    async fn stop(self) {
        self.gateway.close();
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A deterministic source tree: an empty file, a small one, a nested multi-chunk one.
fn make_source(root: &Path, big: usize) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("nested/deeper")).unwrap();
    fs::write(src.join("empty.txt"), b"").unwrap();
    fs::write(src.join("hello.txt"), b"hello, trackshift\n").unwrap();
    let data: Vec<u8> = (0..big).map(|i| (i * 31 + i / 977) as u8).collect();
    fs::write(src.join("nested/deeper/big.bin"), data).unwrap();
    src
}

fn assert_same_tree(a: &Path, b: &Path) {
    for rel in ["empty.txt", "hello.txt", "nested/deeper/big.bin"] {
        assert_eq!(
            fs::read(a.join(rel)).unwrap(),
            fs::read(b.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
    let leftovers: Vec<_> = walk(b)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tspart"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn check_documents(running: &Running, report: &SendReport, src_bytes: u64) {
    let ring = running.gateway.public_keyring().unwrap();
    let manifest = Manifest::from_json(report.manifest.as_bytes()).unwrap();
    manifest.verify_signature(&ring).unwrap();
    assert_eq!(manifest.total_bytes(), src_bytes);
    assert_eq!(manifest.tenant, "acme");
    let receipt = Receipt::from_json(report.receipt.as_bytes()).unwrap();
    receipt.verify(&ring, Some(&manifest)).unwrap();
    assert_eq!(receipt.bytes, src_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_a_tree_bit_identical_with_signed_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 1_000_003);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let report = send_path(&src, &gw.send_config(&dest), |_| {})
        .await
        .unwrap();
    assert_same_tree(&src, &dest);
    check_documents(&gw, &report, 1_000_003 + 18);
    assert_eq!(report.reconnects, 0);
    // Stored with the job at the gateway.
    let job_dir = tmp.path().join("gw/jobs/acme").join(&report.job_id);
    assert_eq!(
        fs::read_to_string(job_dir.join("manifest.json")).unwrap(),
        report.manifest
    );
    assert_eq!(
        fs::read_to_string(job_dir.join("receipt.json")).unwrap(),
        report.receipt
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 300_000);
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let dest = tmp.path().join(format!("out/dest{i}"));
        fs::create_dir_all(&dest).unwrap();
        let cfg = gw.send_config(&dest);
        let src = src.clone();
        tasks.push(tokio::spawn(async move {
            send_path(&src, &cfg, |_| {}).await.map(|_| dest)
        }));
    }
    for t in tasks {
        let dest = t.await.unwrap().unwrap();
        assert_same_tree(&src, &dest);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pq_only_sender_connects_to_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 10_000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    // Both ends offer only X25519MLKEM768.
    let gw = Running::start(&tmp.path().join("gw"), true).await;
    let mut cfg = gw.send_config(&dest);
    cfg.pq_only = true;
    send_path(&src, &cfg, |_| {}).await.unwrap();
    assert_same_tree(&src, &dest);
    gw.stop().await;
}

/// Connects with a client whose only key-exchange group is `group`.
async fn handshake_with_group(
    gw: &Running,
    ca: &Path,
    group: &'static dyn rustls::crypto::SupportedKxGroup,
) -> Result<(), String> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![group];
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![trackshift_engine::transport::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let result = match ep
        .connect(gw.gateway.local_addr(), "localhost")
        .unwrap()
        .await
    {
        Ok(conn) => {
            conn.close(0u32.into(), b"bye");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    ep.wait_idle().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pq_only_gateway_refuses_classical_only_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    let ca = data.join("tls/ca.pem");
    let gw = Running::start(&data, true).await;
    handshake_with_group(&gw, &ca, aws_lc_rs::kx_group::X25519MLKEM768)
        .await
        .expect("a client offering only X25519MLKEM768 connects");
    let err = handshake_with_group(&gw, &ca, aws_lc_rs::kx_group::X25519)
        .await
        .expect_err("a classical-only client must be refused");
    assert!(
        err.to_lowercase().contains("handshake") || err.contains("failure"),
        "{err}"
    );
    gw.stop().await;

    // The same classical client is accepted by a gateway that is not PQ-only: the refusal
    // above is the key exchange policy, not something else.
    let data2 = tmp.path().join("gw2");
    let gw2 = Running::start(&data2, false).await;
    handshake_with_group(&gw2, &data2.join("tls/ca.pem"), aws_lc_rs::kx_group::X25519)
        .await
        .unwrap();
    gw2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_pins_the_gateway_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 1000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let mut cfg = gw.send_config(&dest);
    cfg.trust = ServerTrust::Fingerprint([7u8; 32]);
    cfg.max_reconnects = 0;
    let err = send_path(&src, &cfg, |_| {}).await.unwrap_err();
    // Not retried: another certificate will not turn into the pinned one.
    assert!(
        matches!(&err, SendError::Connection(ConnectionLost::Connect(e))
            if matches!(**e, trackshift_engine::transport::TransportError::Untrusted { .. })),
        "{err}"
    );
    assert!(fs::read_dir(&dest).unwrap().next().is_none());
    // A CA file works too (the gateway's generated CA).
    cfg.trust = ServerTrust::CaFile(tmp.path().join("gw/tls/ca.pem"));
    send_path(&src, &cfg, |_| {}).await.unwrap();
    assert_same_tree(&src, &dest);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 1000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let mut cfg = gw.send_config(&dest);
    cfg.token = "not-a-valid-token".into();
    let err = send_path(&src, &cfg, |_| {}).await.unwrap_err();
    match &err {
        SendError::Refused(reason) => {
            assert!(reason.contains("unknown tenant"), "{reason}");
            assert!(
                !reason.contains("not-a-valid-token"),
                "token echoed: {reason}"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(fs::read_dir(&dest).unwrap().next().is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_is_rejected_and_sent_again() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 500_000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let cfg = gw.send_config(&dest);
    cfg.faults.corrupt_first_chunk.store(true, Ordering::SeqCst);
    let report = send_path(&src, &cfg, |_| {}).await.unwrap();
    assert!(
        !cfg.faults.corrupt_first_chunk.load(Ordering::SeqCst),
        "fault fired"
    );
    // 500_000 / 64 KiB = 8 chunks + 1 + 1 (empty file) = 10 chunks; one was resent.
    let manifest = Manifest::from_json(report.manifest.as_bytes()).unwrap();
    let chunks: u64 = manifest.files.iter().map(|f| f.chunks.len() as u64).sum();
    assert_eq!(report.chunks_sent, chunks + 1);
    assert_same_tree(&src, &dest);
    check_documents(&gw, &report, 500_018);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_resumes_without_losing_data() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 4_000_000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let cfg = gw.send_config(&dest);
    *cfg.faults.drop_connection_after.lock().unwrap() = Some(20);
    let report = send_path(&src, &cfg, |_| {}).await.unwrap();
    assert!(
        report.reconnects >= 1,
        "the connection was dropped and resumed"
    );
    assert_same_tree(&src, &dest);
    check_documents(&gw, &report, 4_000_018);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_resumes_sending_only_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 4_000_000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    let data = tmp.path().join("gw");
    let gw = Running::start(&data, false).await;
    let mut cfg = gw.send_config(&dest);
    cfg.job_id = Some("resume-job".into());
    cfg.max_reconnects = 0;
    *cfg.faults.drop_connection_after.lock().unwrap() = Some(30);
    let err = send_path(&src, &cfg, |_| {}).await.unwrap_err();
    assert!(matches!(err, SendError::GaveUp { .. }), "{err}");
    let log = fs::metadata(data.join("jobs/acme/resume-job/chunks.log"))
        .unwrap()
        .len();
    assert!(log > 0, "some chunks were made durable before the cut");
    assert!(
        !dest.join("nested/deeper/big.bin").exists(),
        "no partial file under the final name"
    );
    gw.stop().await;

    // A new gateway process on the same data directory; same job id.
    let gw = Running::start(&data, false).await;
    let mut cfg2 = gw.send_config(&dest);
    cfg2.job_id = Some("resume-job".into());
    let report = send_path(&src, &cfg2, |_| {}).await.unwrap();
    let total_chunks = 4_000_000u64.div_ceil(64 << 10) + 2;
    assert!(
        report.chunks_sent < total_chunks,
        "only missing chunks are sent again ({} of {total_chunks})",
        report.chunks_sent
    );
    assert_same_tree(&src, &dest);
    check_documents(&gw, &report, 4_000_018);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_destination_fails_the_job_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 1000);
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    // The directory the tenant's rule names is gone (a volume not mounted, say): the job
    // fails, saying so, and nothing is made in its place. (A job's own directory beneath
    // it is made: the local connector's tests, and `tests/send_cli.rs`.)
    let allowed = tmp.path().join("out");
    fs::remove_dir_all(&allowed).unwrap();
    let dest = allowed.join("dest");
    let err = send_path(&src, &gw.send_config(&dest), |_| {})
        .await
        .unwrap_err();
    match &err {
        SendError::JobFailed { reason, permanent } => {
            assert!(*permanent);
            assert!(reason.contains("must exist"), "{reason}");
        }
        other => panic!("expected a job failure, got {other}"),
    }
    assert!(!allowed.exists());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_source_fails_without_retrying() {
    let tmp = tempfile::tempdir().unwrap();
    let err = send_path(
        &tmp.path().join("missing"),
        &SendConfig::new(
            "127.0.0.1:9".parse().unwrap(),
            ServerTrust::Fingerprint([0; 32]),
            TOKEN,
            "file:///tmp",
        ),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SendError::Source(_)), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_stream_and_the_gateway_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    let gw = Running::start(&data, false).await;
    let trust = ServerTrust::CaFile(data.join("tls/ca.pem"));
    let ep = trackshift_engine::transport::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &trust,
        false,
    )
    .unwrap();
    for garbage in [
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], // absurd length prefix
        vec![0, 0, 0, 3, 0xde, 0xad, 0xbe],    // undecodable body
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let conn = trackshift_engine::transport::connect(&ep, gw.gateway.local_addr(), "localhost")
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&garbage).await.unwrap();
        let _ = send.finish();
        // The gateway closes the connection instead of waiting for more.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let _ = recv.read_to_end(1 << 20).await;
            conn.closed().await
        })
        .await;
        assert!(
            closed.is_ok(),
            "gateway did not close a connection sending {garbage:?}"
        );
    }
    // Still serving.
    let src = make_source(tmp.path(), 1000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    send_path(&src, &gw.send_config(&dest), |_| {})
        .await
        .unwrap();
    assert_same_tree(&src, &dest);
    gw.stop().await;
}

fn job(root: &Path, name: &str, size: usize) -> (PathBuf, PathBuf, JobRequest) {
    let src = make_source(&root.join(name), size);
    let dest = root.join(format!("out/{name}-dest"));
    fs::create_dir_all(&dest).unwrap();
    let req = JobRequest::new(&src, format!("file://{}", dest.display()));
    (src, dest, req)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_jobs_share_one_connection_and_fail_independently() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let sizes = [700_001usize, 3, 1_300_000];
    let mut requests = Vec::new();
    let mut trees = Vec::new();
    for (k, size) in sizes.iter().enumerate() {
        let (src, dest, req) = job(tmp.path(), &format!("j{k}"), *size);
        trees.push((src, dest));
        requests.push(req);
    }
    // A fourth job whose destination the tenant may not write to: it fails, the others
    // do not.
    let missing = tmp.path().join("no-such-dir");
    requests.insert(
        1,
        JobRequest::new(&trees[0].0, format!("file://{}", missing.display())),
    );
    let cfg = gw.send_config(tmp.path());
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    let results = send_jobs(requests, &cfg, |i, _| {
        seen.lock().unwrap().insert(i);
    })
    .await;
    assert_eq!(results.len(), 4);
    match &results[1] {
        Err(SendError::JobFailed { reason, permanent }) => {
            assert!(*permanent);
            assert!(reason.contains("no-such-dir"), "{reason}");
        }
        other => panic!("expected the job to fail, got {other:?}"),
    }
    let ok: Vec<&SendReport> = [0, 2, 3]
        .iter()
        .map(|&i| results[i].as_ref().unwrap())
        .collect();
    for ((src, dest), (report, size)) in trees.iter().zip(ok.iter().zip(sizes)) {
        assert_same_tree(src, dest);
        check_documents(&gw, report, size as u64 + 18);
        assert_eq!(report.reconnects, 0);
    }
    let ids: std::collections::HashSet<_> = ok.iter().map(|r| r.job_id.clone()).collect();
    assert_eq!(ids.len(), 3, "each job has its own id");
    assert!(!missing.exists());
    let stats = gw.gateway.stats();
    assert_eq!(stats.connections, 1, "all jobs used one connection");
    assert_eq!(stats.jobs_completed, 3);
    assert_eq!(stats.jobs_failed, 1);
    assert!(seen.lock().unwrap().contains(&3));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_jobs_resume_together_after_a_dropped_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let mut requests = Vec::new();
    let mut trees = Vec::new();
    for k in 0..3 {
        let (src, dest, req) = job(tmp.path(), &format!("j{k}"), 1_000_000 + k);
        trees.push((src, dest));
        requests.push(req);
    }
    let cfg = gw.send_config(tmp.path());
    *cfg.faults.drop_connection_after.lock().unwrap() = Some(20);
    let results = send_jobs(requests, &cfg, |_, _| {}).await;
    for ((src, dest), result) in trees.iter().zip(&results) {
        let report = result.as_ref().unwrap();
        assert_same_tree(src, dest);
        assert_eq!(report.reconnects, 1);
    }
    assert_eq!(gw.gateway.stats().connections, 2);
    assert_eq!(gw.gateway.stats().jobs_completed, 3);
    gw.stop().await;
}

/// A tmpfs of a given size mounted for one test (the machine runs tests as root), unmounted
/// on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "the full-disk test mounts a small tmpfs and needs root (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_the_job_and_leaves_completed_files_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out/small-disk");
    let disk = Tmpfs::mount(&dest, "1m");
    let gw = Running::start(&tmp.path().join("gw"), false).await;

    // A first job fits and completes.
    let first = make_source(&tmp.path().join("first"), 200_000);
    send_path(&first, &gw.send_config(&dest), |_| {})
        .await
        .unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = walk(&dest)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    assert_eq!(before.len(), 3);

    // A second one does not: clear, permanent failure naming the cause.
    let second = tmp.path().join("second");
    fs::create_dir_all(&second).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(second.join("large.bin"), &data).unwrap();
    let mut cfg = gw.send_config(&dest);
    cfg.job_id = Some("fills-the-disk".into());
    let err = send_path(&second, &cfg, |_| {}).await.unwrap_err();
    match &err {
        SendError::JobFailed { reason, permanent } => {
            assert!(*permanent, "a full disk is not retried blindly");
            assert!(reason.contains("No space left on device"), "{reason}");
        }
        other => panic!("expected a job failure, got {other}"),
    }
    // Nothing completed was touched and no partial file appeared under its final name.
    for (p, b) in &before {
        assert_eq!(&fs::read(p).unwrap(), b, "{} changed", p.display());
    }
    assert!(!dest.join("large.bin").exists());

    // Once there is room, the same job resumes and completes.
    disk.resize("8m");
    let report = send_path(&second, &cfg, |_| {}).await.unwrap();
    assert_eq!(fs::read(dest.join("large.bin")).unwrap(), data);
    assert_eq!(report.bytes, 3_000_000);
    for (p, b) in &before {
        assert_eq!(&fs::read(p).unwrap(), b);
    }
    let leftovers: Vec<_> = walk(&dest)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tspart"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    gw.stop().await;
    drop(disk);
}

/// A destination that writes correctly but misreports what it holds (a test wrapper).
#[derive(Debug)]
struct Misreporting {
    inner: Arc<dyn Connector>,
    lie: Lie,
}

#[derive(Debug, Clone, Copy)]
enum Lie {
    Size,
    Hash,
    /// Every write fails (a destination that breaks during the job).
    Writes,
}

struct MisreportingWriter {
    inner: Arc<dyn ObjectWriter>,
    lie: Lie,
}

#[async_trait::async_trait]
impl Connector for Misreporting {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    async fn check(&self) -> Result<(), ConnectorError> {
        self.inner.check().await
    }
    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        self.inner.stat(path).await
    }
    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        self.inner.read_back(path).await
    }
    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        Ok(Arc::new(MisreportingWriter {
            inner: self.inner.open(spec, resume).await?,
            lie: self.lie,
        }))
    }
}

#[async_trait::async_trait]
impl ObjectWriter for MisreportingWriter {
    async fn write_at(&self, offset: u64, data: bytes::Bytes) -> Result<(), ConnectorError> {
        if let Lie::Writes = self.lie {
            return Err(ConnectorError::Unavailable("injected write failure".into()));
        }
        self.inner.write_at(offset, data).await
    }
    async fn sync(&self) -> Result<(), ConnectorError> {
        self.inner.sync().await
    }
    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        let mut c = self.inner.commit().await?;
        match self.lie {
            Lie::Size => c.size += 1,
            Lie::Hash => c.blake3 = Some([0x5a; 32]),
            Lie::Writes => {}
        }
        Ok(c)
    }
    async fn abort(&self) -> Result<(), ConnectorError> {
        self.inner.abort().await
    }
    async fn remove(&self) -> Result<(), ConnectorError> {
        self.inner.remove().await
    }
}

/// A connector factory whose destinations with `marker` in their URI fail every write.
fn failing_writes_where(marker: &'static str) -> trackshift_engine::gateway::ConnectorFactory {
    Arc::new(move |uri, verify, settings| {
        let inner = trackshift_connectors::connect(uri, verify, settings)?;
        Ok(if uri.to_string().contains(marker) {
            Arc::new(Misreporting {
                inner,
                lie: Lie::Writes,
            }) as Arc<dyn Connector>
        } else {
            inner
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_misreports_size_or_hash_fails_the_job() {
    for lie in [Lie::Size, Lie::Hash] {
        let tmp = tempfile::tempdir().unwrap();
        let src = make_source(tmp.path(), 100_000);
        let gw = Running::start_with(&tmp.path().join("gw"), |cfg| {
            cfg.verify = VerifyMode::Strict;
            cfg.connectors = Arc::new(move |uri, verify, settings| {
                Ok(Arc::new(Misreporting {
                    inner: trackshift_connectors::connect(uri, verify, settings)?,
                    lie,
                }) as Arc<dyn Connector>)
            });
        })
        .await;
        let dest = tmp.path().join("out/dest");
        fs::create_dir_all(&dest).unwrap();
        let err = send_path(&src, &gw.send_config(&dest), |_| {})
            .await
            .expect_err("a misreported object was accepted");
        let want = match lie {
            Lie::Size => "holds",
            Lie::Hash => "differs",
            Lie::Writes => unreachable!(),
        };
        assert!(err.to_string().contains(want), "{lie:?}: {err}");
        // No receipt was signed for the job.
        let receipts = walk(&tmp.path().join("gw/jobs"))
            .into_iter()
            .filter(|p| p.ends_with("receipt.json"))
            .count();
        assert_eq!(receipts, 0, "{lie:?}");
        // And the object that failed verification does not stay under its final name.
        let left: Vec<_> = walk(&dest)
            .into_iter()
            .filter(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(".tspart")
            })
            .collect();
        assert!(left.is_empty(), "{lie:?}: objects stayed: {left:?}");
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_fans_out_to_several_destinations_with_a_receipt_each() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 300_000);
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let (a, b) = (tmp.path().join("out/a"), tmp.path().join("out/b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let mut cfg = gw.send_config(&a);
    cfg.destinations.push(format!("file://{}", b.display()));
    let report = send_path(&src, &cfg, |_| {}).await.unwrap();
    assert_same_tree(&src, &a);
    assert_same_tree(&src, &b);
    // The data crossed the network once.
    let chunks = report.chunks_sent;
    let ring = gw.gateway.public_keyring().unwrap();
    let manifest = Manifest::from_json(report.manifest.as_bytes()).unwrap();
    manifest.verify_signature(&ring).unwrap();
    assert_eq!(manifest.destinations, cfg.destinations);
    assert_eq!(report.receipts.len(), 2);
    for (r, dest) in report.receipts.iter().zip(&cfg.destinations) {
        let r = Receipt::from_json(r.as_bytes()).unwrap();
        r.verify(&ring, Some(&manifest)).unwrap();
        assert_eq!(&r.destination, dest);
        assert_eq!(r.status.as_str(), "confirmed");
        assert_eq!(r.confirmation.size, manifest.total_bytes());
    }
    assert_eq!(
        gw.gateway.ledger().size(),
        4,
        "the key set, the manifest and two receipts"
    );
    let files = walk(&src).len() as u64;
    assert!(
        chunks >= files && chunks < 2 * files + 10,
        "{chunks} chunk streams"
    );

    // The same destination twice is refused.
    let mut twice = gw.send_config(&a);
    twice.destinations.push(twice.destinations[0].clone());
    let err = send_path(&src, &twice, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("named twice"), "{err}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fan_out_destination_is_recorded_or_fails_a_strict_job() {
    for strict in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let src = make_source(tmp.path(), 200_000);
        let gw = Running::start_with(&tmp.path().join("gw"), |cfg| {
            cfg.verify = if strict {
                VerifyMode::Strict
            } else {
                VerifyMode::Size
            };
            cfg.connectors = failing_writes_where("broken");
        })
        .await;
        let (good, broken) = (tmp.path().join("out/good"), tmp.path().join("out/broken"));
        fs::create_dir_all(&good).unwrap();
        fs::create_dir_all(&broken).unwrap();
        let mut cfg = gw.send_config(&good);
        cfg.destinations
            .push(format!("file://{}", broken.display()));
        let result = send_path(&src, &cfg, |_| {}).await;
        if strict {
            let err = result.expect_err("a strict job with a failing destination succeeded");
            assert!(err.to_string().contains("injected"), "{err}");
        } else {
            let report = result.unwrap();
            assert_same_tree(&src, &good);
            let ring = gw.gateway.public_keyring().unwrap();
            let manifest = Manifest::from_json(report.manifest.as_bytes()).unwrap();
            let ok = Receipt::from_json(report.receipts[0].as_bytes()).unwrap();
            ok.verify(&ring, Some(&manifest)).unwrap();
            assert_eq!(ok.status.as_str(), "confirmed");
            let failed = Receipt::from_json(report.receipts[1].as_bytes()).unwrap();
            failed.verify(&ring, Some(&manifest)).unwrap();
            assert_eq!(failed.status.as_str(), "failed");
            assert!(
                failed
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("injected")),
                "{:?}",
                failed.detail
            );
            // Nothing was published at the failed destination, and the gateway remembers
            // it was dropped (a resumed job must not bring it back with holes).
            assert!(walk(&broken).is_empty(), "{:?}", walk(&broken));
            let marker = walk(&tmp.path().join("gw/jobs"))
                .into_iter()
                .find(|p| p.ends_with("dropped-1.txt"))
                .expect("the dropped destination is recorded");
            assert!(fs::read_to_string(marker).unwrap().contains("injected"));
        }
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_to_one_destination_share_its_connector() {
    let tmp = tempfile::tempdir().unwrap();
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = made.clone();
    let gw = Running::start_with(&tmp.path().join("gw"), move |cfg| {
        cfg.connectors = Arc::new(move |uri, verify, settings| {
            counter.fetch_add(1, Ordering::SeqCst);
            trackshift_connectors::connect(uri, verify, settings)
        });
    })
    .await;
    let (dest, other) = (tmp.path().join("out/dest"), tmp.path().join("out/other"));
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&other).unwrap();
    for i in 0..3 {
        let src = tmp.path().join(format!("src{i}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join(format!("f{i}.txt")), format!("job {i}")).unwrap();
        send_path(&src, &gw.send_config(&dest), |_| {})
            .await
            .unwrap();
    }
    assert_eq!(made.load(Ordering::SeqCst), 1, "three jobs, one connector");
    let src = tmp.path().join("src0");
    send_path(&src, &gw.send_config(&other), |_| {})
        .await
        .unwrap();
    assert_eq!(
        made.load(Ordering::SeqCst),
        2,
        "another destination, another connector"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_destination_stays_dropped_after_a_gateway_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 2_000_000);
    let data = tmp.path().join("gw");
    let (good, flaky) = (tmp.path().join("out/good"), tmp.path().join("out/flaky"));
    fs::create_dir_all(&good).unwrap();
    fs::create_dir_all(&flaky).unwrap();
    // First run: `flaky` fails its writes and is dropped; the connection is cut mid-job.
    let gw = Running::start_with(&data, |cfg| {
        cfg.connectors = failing_writes_where("flaky");
    })
    .await;
    let mut cfg = gw.send_config(&good);
    cfg.destinations.push(format!("file://{}", flaky.display()));
    cfg.job_id = Some("fan-resume".into());
    cfg.max_reconnects = 0;
    *cfg.faults.drop_connection_after.lock().unwrap() = Some(20);
    send_path(&src, &cfg, |_| {}).await.unwrap_err();
    gw.stop().await;

    // After a restart `flaky` works again, but it missed acknowledged chunks: it must stay
    // dropped rather than publish files with holes.
    let gw = Running::start(&data, false).await;
    let mut cfg2 = gw.send_config(&good);
    cfg2.destinations = cfg.destinations.clone();
    cfg2.job_id = Some("fan-resume".into());
    let report = send_path(&src, &cfg2, |_| {}).await.unwrap();
    assert_same_tree(&src, &good);
    assert!(walk(&flaky).is_empty(), "{:?}", walk(&flaky));
    let failed = Receipt::from_json(report.receipts[1].as_bytes()).unwrap();
    assert_eq!(failed.status.as_str(), "failed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_sharing_a_rate_limit_and_a_memory_budget_stay_within_both() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path(), 1 << 20);
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    // Two sends share 4 MiB/s (one tenant's quota) and 1 MiB of chunk memory.
    let rate = Arc::new(trackshift_connectors::ByteRate::new(4 << 20).unwrap());
    let budget = trackshift_engine::sender::SharedBudget::new(1 << 20);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..2 {
        let dest = tmp.path().join(format!("out/dest{i}"));
        fs::create_dir_all(&dest).unwrap();
        let mut cfg = gw.send_config(&dest);
        cfg.rate = Some(rate.clone());
        cfg.shared_budget = Some(budget.clone());
        let l = latencies.clone();
        cfg.chunk_latency = Some(trackshift_engine::sender::LatencyHook(Arc::new(move |d| {
            l.lock().unwrap().push(d);
        })));
        let src = src.clone();
        tasks.push(tokio::spawn(async move {
            send_path(&src, &cfg, |_| {}).await.map(|_| dest)
        }));
    }
    for t in tasks {
        let dest = t.await.unwrap().unwrap();
        assert_same_tree(&src, &dest);
    }
    // 2 x (1 MiB + 18 bytes) at 4 MiB/s with a 0.4 MiB burst: at least ~0.4 s.
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(380),
        "2 MiB took only {took:?}"
    );
    assert_eq!(
        budget.available(),
        1 << 20,
        "every byte of the shared budget returned"
    );
    // One latency per chunk: 16 chunks of 64 KiB per send, plus one each for the small
    // and the empty file.
    assert_eq!(latencies.lock().unwrap().len(), 2 * (16 + 2));
    gw.stop().await;
}

/// A tenant's source directory ROOT/acme holding the job tree `src`, and ROOT/secret with
/// a file of the same name and size as one of the tenant's, outside every source directory.
fn tenant_source(root: &Path, big: usize) -> (Confined, PathBuf) {
    let src = make_source(&root.join("acme"), big);
    let secret = root.join("secret/deeper");
    fs::create_dir_all(&secret).unwrap();
    fs::write(secret.join("big.bin"), vec![0x5a; big]).unwrap();
    let confined = Confined {
        root: root.join("acme"),
        rel: "src".into(),
        keep_out: vec![root.join("gw")],
    };
    assert_eq!(confined.path(), src);
    (confined, root.join("secret"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_source_sends_like_a_plain_one() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let (confined, _) = tenant_source(tmp.path(), 300_000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    let cfg = gw.send_config(&dest);
    let req = JobRequest::confined(confined.clone(), cfg.destinations[0].clone());
    let report = send_jobs(vec![req], &cfg, |_, _| {})
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_same_tree(&confined.path(), &dest);
    check_documents(&gw, &report, 300_000 + 18);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_directory_swapped_for_a_symlink_after_listing_ships_nothing_from_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(&tmp.path().join("gw"), false).await;
    let (confined, secret) = tenant_source(tmp.path(), 300_000);
    let dest = tmp.path().join("out/dest");
    fs::create_dir_all(&dest).unwrap();
    let mut cfg = gw.send_config(&dest);
    // Between the listing and the first read, the tenant swaps a directory of its tree
    // for a link to a directory outside (same names, same sizes).
    let nested = confined.path().join("nested");
    let target = secret.clone();
    let faults = Arc::new(FaultInjection::default());
    *faults.after_listing.lock().unwrap() = Some(TestHook(Box::new(move || {
        fs::rename(&nested, nested.with_extension("old")).unwrap();
        std::os::unix::fs::symlink(&target, &nested).unwrap();
    })));
    cfg.faults = faults;
    let req = JobRequest::confined(confined.clone(), cfg.destinations[0].clone());
    let result = send_jobs(vec![req], &cfg, |_, _| {}).await.pop().unwrap();
    match result {
        Err(SendError::SourceRead(e)) => assert!(e.to_string().contains("not allowed"), "{e}"),
        other => panic!("expected the read to be refused, got {other:?}"),
    }
    // Nothing of the secret reached the destination, not even a partial object.
    let secret_bytes = fs::read(secret.join("deeper/big.bin")).unwrap();
    for p in walk(&dest) {
        let got = fs::read(&p).unwrap();
        assert!(
            !got.windows(64).any(|w| secret_bytes[..64] == *w),
            "{} holds secret bytes",
            p.display()
        );
    }
    // The symbolic link is the source itself now: refused at the listing.
    let req = JobRequest::confined(
        Confined {
            rel: "src/nested".into(),
            ..confined
        },
        cfg.destinations[0].clone(),
    );
    cfg.faults = Arc::new(FaultInjection::default());
    match send_jobs(vec![req], &cfg, |_, _| {}).await.pop().unwrap() {
        Err(SendError::Source(e)) => assert!(e.to_string().contains("not allowed"), "{e}"),
        other => panic!("expected the listing to be refused, got {other:?}"),
    }
    gw.stop().await;
}
