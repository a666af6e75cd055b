//! Job directories are released: a sweep removes the directories of finished and abandoned
//! jobs once nothing has touched them for the retention period (an abandoned job's partial
//! objects go with it), keeps those of jobs in progress, and leaves the ledger and the
//! delivered files alone; a send cancelled before the gateway answered its opens leaves
//! nothing behind.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trackshift_crypto::{Manifest, Receipt};
use trackshift_engine::gateway::{Gateway, GatewayConfig, SweepReport, add_tenant};
use trackshift_engine::sender::{JobRequest, SendConfig, SendError, send_jobs, send_path};
use trackshift_engine::tls::ServerTrust;

const TOKEN: &str = "retention-token-0123456789abcdef";

async fn start(
    data: &Path,
    out: &Path,
    rate: Option<u64>,
) -> (Arc<Gateway>, tokio::task::JoinHandle<()>) {
    fs::create_dir_all(out).unwrap();
    add_tenant(data, "acme", TOKEN, &[&format!("file://{}", out.display())]).unwrap();
    let mut cfg = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), data);
    // Swept by hand here.
    cfg.job_retention = None;
    if let Some(rate) = rate {
        let limits =
            trackshift_engine::connectors::Limits::new(&trackshift_engine::connectors::Wrapping {
                bytes_per_second: Some(rate),
                ..Default::default()
            })
            .unwrap();
        cfg.connectors = Arc::new(move |dest, verify, settings| {
            limits.wrap(trackshift_engine::connectors::connect(
                dest, verify, settings,
            )?)
        });
    }
    let gateway = Arc::new(Gateway::bind(cfg).await.unwrap());
    let g = gateway.clone();
    (gateway, tokio::spawn(async move { g.serve().await }))
}

fn send_config(gw: &Gateway, dest: &Path, job_id: &str) -> SendConfig {
    fs::create_dir_all(dest).unwrap();
    let mut cfg = SendConfig::new(
        gw.local_addr(),
        ServerTrust::fingerprint(&gw.fingerprint()).unwrap(),
        TOKEN,
        format!("file://{}", dest.display()),
    );
    cfg.chunk_size = 64 << 10;
    cfg.in_flight_bytes = 256 << 10;
    cfg.job_id = Some(job_id.into());
    cfg
}

fn source(root: &Path, name: &str, size: usize) -> std::path::PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(dir.join("data.bin"), data).unwrap();
    dir
}

/// Names in `dir` that are partial objects (the local connector's temporary names).
fn partials(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tspart"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_job_directories_go_and_held_ones_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    let out = tmp.path().join("out");
    let (gw, task) = start(&data, &out, None).await;

    // One finished job, one cut off for good (abandoned with a partial object).
    let done_dest = out.join("done");
    let done = send_path(
        &source(tmp.path(), "a", 300_000),
        &send_config(&gw, &done_dest, "done-job"),
        |_| {},
    )
    .await
    .unwrap();
    let cut_dest = out.join("cut");
    let mut cut = send_config(&gw, &cut_dest, "cut-job");
    cut.max_reconnects = 0;
    *cut.faults.drop_connection_after.lock().unwrap() = Some(12);
    let err = send_path(&source(tmp.path(), "b", 2_000_000), &cut, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::GaveUp { .. }), "{err}");
    let jobs = data.join("jobs/acme");
    assert!(jobs.join("done-job/manifest.json").exists());
    assert!(jobs.join("cut-job/chunks.log").exists());
    // The gateway lets go of the cut job once its connection is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while partials(&cut_dest).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !partials(&cut_dest).is_empty(),
        "the cut job left a partial object: {:?}",
        walk(tmp.path())
    );

    // Inside the retention period nothing goes.
    assert_eq!(
        gw.sweep_jobs(Duration::from_secs(3600)).await,
        SweepReport::default()
    );
    assert!(jobs.join("done-job").exists() && jobs.join("cut-job").exists());

    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The cut job is held until the gateway sees its connection gone: at once when the
    // close reaches it, else at the idle timeout (a CONNECTION_CLOSE can wait behind a
    // full congestion window and never leave, as a lost link sends none). Meanwhile a
    // sweep leaves it alone and takes the finished job.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut report = SweepReport::default();
    loop {
        let r = gw.sweep_jobs(Duration::from_millis(500)).await;
        report.finished += r.finished;
        report.abandoned += r.abandoned;
        report.failed += r.failed;
        report.held = r.held;
        if r.held == 0 || std::time::Instant::now() > deadline {
            break;
        }
        assert!(
            jobs.join("cut-job").exists(),
            "a held job's directory stays"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        report,
        SweepReport {
            finished: 1,
            abandoned: 1,
            held: 0,
            failed: 0
        }
    );
    assert!(!jobs.join("done-job").exists() && !jobs.join("cut-job").exists());
    assert!(
        partials(&cut_dest).is_empty(),
        "the abandoned job's partial object was discarded"
    );
    assert!(
        !cut_dest.join("data.bin").exists(),
        "nothing of the abandoned job was committed"
    );
    // What was delivered stays, and its receipt still proves it against the ledger.
    assert_eq!(
        fs::read(done_dest.join("data.bin")).unwrap(),
        fs::read(tmp.path().join("a/data.bin")).unwrap()
    );
    let ring = gw.public_keyring().unwrap();
    let manifest = Manifest::from_json(done.manifest.as_bytes()).unwrap();
    Receipt::from_json(done.receipt.as_bytes())
        .unwrap()
        .verify(&ring, Some(&manifest))
        .unwrap();
    let trackshift_ledger::Log::File(ledger) = gw.ledger() else {
        unreachable!("a file ledger")
    };
    ledger.verify_all(|_, _| Ok(())).unwrap();

    // A sweep again finds nothing.
    assert_eq!(
        gw.sweep_jobs(Duration::from_millis(500)).await,
        SweepReport::default()
    );
    gw.close();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_progress_is_never_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    let out = tmp.path().join("out");
    // 256 KiB/s at the destination: a 1.5 MB job takes about six seconds.
    let (gw, task) = start(&data, &out, Some(256 << 10)).await;
    let src = source(tmp.path(), "slow", 1_500_000);
    let cfg = send_config(&gw, &out.join("slow"), "slow-job");
    let sending = tokio::spawn(async move { send_path(&src, &cfg, |_| {}).await });
    let dir = data.join("jobs/acme/slow-job");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !dir.join("chunks.log").exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Everything is "expired" at a retention of zero, but the job is held.
    let report = gw.sweep_jobs(Duration::ZERO).await;
    assert_eq!(report.held, 1, "{report:?}");
    assert_eq!(report.finished + report.abandoned, 0, "{report:?}");
    let sent = sending.await.unwrap().unwrap();
    assert_eq!(sent.receipts.len(), 1);
    assert!(dir.join("manifest.json").exists());
    gw.close();
    task.abort();
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cancelled_before_its_jobs_are_ready_leaves_no_job_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    let out = tmp.path().join("out");
    let (gw, task) = start(&data, &out, None).await;
    let src = source(tmp.path(), "c", 500_000);
    let requests: Vec<JobRequest> = (0..3)
        .map(|i| {
            let dest = out.join(format!("c{i}"));
            fs::create_dir_all(&dest).unwrap();
            let mut r = JobRequest::new(&src, format!("file://{}", dest.display()));
            r.job_id = Some(format!("early-{i}"));
            r
        })
        .collect();
    let mut cfg = send_config(&gw, &out, "unused");
    // Cancelled from the start: the cancel comes while the opens are on their way.
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(true);
    cfg.cancel = Some(cancel_rx);
    for r in send_jobs(requests, &cfg, |_, _| {}).await {
        assert!(matches!(r, Err(SendError::Cancelled)), "{r:?}");
    }
    let jobs = data.join("jobs/acme");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let left = || fs::read_dir(&jobs).map(|d| d.count()).unwrap_or(0);
    while left() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left(), 0, "job directories left: {:?}", walk(&jobs));
    for i in 0..3 {
        let dest = out.join(format!("c{i}"));
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0, "{:?}", walk(&dest));
    }
    gw.close();
    task.abort();
}
