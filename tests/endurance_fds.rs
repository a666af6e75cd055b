//! Descriptors over a gateway's life: a `trackshift serve` child under a small
//! `RLIMIT_NOFILE` runs hundreds of jobs (completed, failed, cancelled, cut off) and holds
//! no more descriptors after them than after its first few; a sender under a small limit
//! sends more files than the limit. Data and destinations live on tmpfs when there is one
//! (fsync is then cheap), so the runs stay short.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Gateway, bin, run, spawn_gateway};
use trackshift_engine::sender::{FaultInjection, JobRequest, SendConfig, SendError, send_jobs};
use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};
use trackshift_engine::tls::ServerTrust;

const TOKEN: &str = "endurance-token-0123456789abcdef";

/// A temporary directory on tmpfs when the machine has one.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(t) = tempfile::tempdir_in(shm)
    {
        return t;
    }
    tempfile::tempdir().unwrap()
}

/// `cmd` runs with at most `n` open descriptors (soft and hard limit: it cannot raise it).
fn limit_descriptors(cmd: &mut Command, n: u64) {
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The process's limit on open descriptors, as the kernel reports it.
fn descriptor_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The count once it has held still for a moment (connections the senders closed are
/// dropped a little after the send returns).
fn settled_descriptors(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = open_descriptors(pid);
    let mut still = 0;
    while still < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(60));
        let now = open_descriptors(pid);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    last
}

/// Waits (at most 10 s) until the gateway holds at most `max` descriptors; the count.
fn descriptors_down_to(pid: u32, max: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = open_descriptors(pid);
        if n <= max || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// A gateway child under `limit` descriptors whose tenant `acme` may write under
/// `dir/out/`; the token in `dir/acme.token`.
fn gateway(dir: &Path, limit: u64) -> Gateway {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    TenantFile {
        tenants: vec![TenantEntry {
            destinations: Some(vec![DestinationRule::prefix(format!(
                "{}/",
                file_uri(&out)
            ))]),
            ..TenantEntry::new("acme", TOKEN)
        }],
    }
    .save(&dir.join("gw"))
    .unwrap();
    std::fs::write(dir.join("acme.token"), TOKEN).unwrap();
    std::fs::set_permissions(
        dir.join("acme.token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    limit_descriptors(&mut cmd, limit);
    let log = dir.join("gw.log");
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let gw = spawn_gateway(cmd, &dir.join("gw"), &[], stderr, Some(&log));
    assert_eq!(descriptor_limit(gw.child.id()), limit, "the limit applies");
    gw
}

fn send_config(gw: &Gateway) -> SendConfig {
    let mut cfg = SendConfig::new(
        gw.quic.parse().unwrap(),
        ServerTrust::fingerprint(&gw.fingerprint).unwrap(),
        TOKEN,
        "unused",
    );
    cfg.chunk_size = 64 << 10;
    cfg.in_flight_bytes = 4 << 20;
    cfg.max_reconnects = 2;
    cfg
}

/// A source tree of `files` small files (some in a subdirectory), distinct contents.
fn source(dir: &Path, name: &str, files: usize, size: usize) -> PathBuf {
    let src = dir.join(name);
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..files {
        let rel = if i % 3 == 0 {
            format!("sub/f{i:05}.bin")
        } else {
            format!("f{i:05}.bin")
        };
        let data: Vec<u8> = (0..size + i).map(|k| (k * 7 + i * 13) as u8).collect();
        std::fs::write(src.join(rel), data).unwrap();
    }
    src
}

/// Sends one job per destination under `dir/out/`, all over one connection.
fn send_batch(
    rt: &tokio::runtime::Runtime,
    cfg: &SendConfig,
    src: &Path,
    dir: &Path,
    names: impl IntoIterator<Item = String>,
) -> Vec<Result<trackshift_engine::sender::SendReport, SendError>> {
    let requests = names
        .into_iter()
        .map(|n| {
            let out = dir.join("out").join(n);
            std::fs::create_dir_all(&out).unwrap();
            JobRequest::new(src, file_uri(&out))
        })
        .collect();
    rt.block_on(send_jobs(requests, cfg, |_, _| {}))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn four_hundred_jobs_under_a_256_descriptor_limit_leave_no_descriptor_behind() {
    let tmp = scratch();
    let dir = tmp.path();
    let gw = gateway(dir, 256);
    let pid = gw.child.id();
    let src = source(dir, "src", 6, 1000);
    let cfg = send_config(&gw);
    let rt = runtime();
    let mut after_ten = None;
    for batch in 0..40 {
        let names = (0..10).map(|k| format!("job-{batch:02}-{k}"));
        for (k, r) in send_batch(&rt, &cfg, &src, dir, names)
            .into_iter()
            .enumerate()
        {
            if let Err(e) = r {
                panic!("job {k} of batch {batch} failed: {e}");
            }
        }
        if batch == 0 {
            after_ten = Some(settled_descriptors(pid));
        }
    }
    let after_ten = after_ten.unwrap();
    let after_all = descriptors_down_to(pid, after_ten + 8);
    assert!(
        after_all <= after_ten + 8,
        "{after_all} descriptors open after 400 jobs, {after_ten} after the first 10"
    );
    // Every job's files arrived, whole.
    for batch in [0, 17, 39] {
        for k in 0..10 {
            let out = dir.join(format!("out/job-{batch:02}-{k}"));
            for i in 0..6 {
                let rel = if i % 3 == 0 {
                    format!("sub/f{i:05}.bin")
                } else {
                    format!("f{i:05}.bin")
                };
                assert_eq!(
                    std::fs::read(out.join(&rel)).unwrap(),
                    std::fs::read(src.join(&rel)).unwrap()
                );
            }
        }
    }
}

#[test]
fn failed_cancelled_and_cut_off_jobs_release_their_descriptors() {
    let tmp = scratch();
    let dir = tmp.path();
    let gw = gateway(dir, 256);
    let pid = gw.child.id();
    let small = source(dir, "small", 4, 500);
    let cfg = send_config(&gw);
    let rt = runtime();
    for r in send_batch(&rt, &cfg, &small, dir, (0..10).map(|k| format!("warm-{k}"))) {
        r.unwrap();
    }
    let baseline = settled_descriptors(pid);

    // Failed at the gateway: `zz/x` (the last file) cannot be written where `zz` is a
    // regular file, after the job opened and the writers of its other files did.
    let failing = source(dir, "failing", 4, 500);
    std::fs::create_dir_all(failing.join("zz")).unwrap();
    std::fs::write(failing.join("zz/x"), b"cannot land").unwrap();
    for round in 0..4 {
        let names: Vec<String> = (0..10).map(|k| format!("fail-{round}-{k}")).collect();
        for n in &names {
            std::fs::create_dir_all(dir.join("out").join(n)).unwrap();
            std::fs::write(dir.join("out").join(n).join("zz"), b"in the way").unwrap();
        }
        for r in send_batch(&rt, &cfg, &failing, dir, names) {
            match r {
                Err(SendError::JobFailed { .. }) => {}
                other => panic!("expected the job to fail at the gateway: {other:?}"),
            }
        }
    }

    // Cut off: the connection drops after a chunk and the sender does not come back.
    for round in 0..4 {
        let mut cut = send_config(&gw);
        cut.max_reconnects = 0;
        cut.faults = Arc::new(FaultInjection::default());
        *cut.faults.drop_connection_after.lock().unwrap() = Some(1);
        let names = (0..10).map(|k| format!("cut-{round}-{k}"));
        for r in send_batch(&rt, &cut, &small, dir, names) {
            assert!(r.is_err(), "a cut-off job completed");
        }
    }

    // Cancelled mid-transfer: a slow send (rate-limited) cancelled once each of its jobs
    // has chunks acknowledged (so each is open at the gateway).
    let big = source(dir, "big", 3, 2 << 20);
    let sends = (0..3).map(|round| {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut slow = send_config(&gw);
        slow.rate = Some(Arc::new(
            trackshift_connectors::ByteRate::new(2 << 20).unwrap(),
        ));
        slow.cancel = Some(rx);
        let requests: Vec<JobRequest> = (0..10)
            .map(|k| {
                let out = dir.join("out").join(format!("cancel-{round}-{k}"));
                std::fs::create_dir_all(&out).unwrap();
                let mut r = JobRequest::new(&big, file_uri(&out));
                r.job_id = Some(format!("cancel-{round}-{k}"));
                r
            })
            .collect();
        let started = std::sync::Mutex::new(std::collections::HashSet::new());
        async move {
            send_jobs(requests, &slow, move |i, p| {
                let mut started = started.lock().unwrap();
                if p.acked_bytes > 0 {
                    started.insert(i);
                }
                if started.len() == 10 {
                    let _ = tx.send(true);
                }
            })
            .await
        }
    });
    let results = rt.block_on(futures::future::join_all(sends));
    for r in results.into_iter().flatten() {
        assert!(
            matches!(r, Err(SendError::Cancelled)),
            "expected a cancellation: {r:?}"
        );
    }

    let after = descriptors_down_to(pid, baseline + 8);
    assert!(
        after <= baseline + 8,
        "{after} descriptors open after 110 failed, cut-off and cancelled jobs, {baseline} before"
    );
    // Cancelled jobs leave nothing behind, and the gateway still serves.
    for round in 0..3 {
        for k in 0..10 {
            let job = dir.join(format!("gw/jobs/acme/cancel-{round}-{k}"));
            assert!(!job.exists(), "{} is left", job.display());
            let out = dir.join(format!("out/cancel-{round}-{k}"));
            let left: Vec<_> = walkdir(&out)
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with(".tspart"))
                .collect();
            assert!(left.is_empty(), "partial objects left: {left:?}");
        }
    }
    for r in send_batch(
        &rt,
        &cfg,
        &small,
        dir,
        (0..10).map(|k| format!("after-{k}")),
    ) {
        r.unwrap();
    }
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_sender_under_a_512_descriptor_limit_sends_3000_files() {
    let tmp = scratch();
    let dir = tmp.path();
    // The gateway too: one job of 3,000 files through a gateway allowed 512 descriptors.
    let gw = gateway(dir, 512);
    let src = source(dir, "many", 3000, 40);
    std::fs::create_dir_all(dir.join("out/many")).unwrap();
    let mut args = common::send_args(
        &gw,
        &dir.join("acme.token"),
        "many",
        &[&file_uri(&dir.join("out/many"))],
        Some("docs"),
    );
    args.extend(["--chunk-size".to_string(), "64KiB".to_string()]);
    let mut cmd = Command::new(bin());
    cmd.args(&args).current_dir(dir);
    limit_descriptors(&mut cmd, 512);
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "send failed: {text}");
    assert_eq!(walkdir(&dir.join("out/many")).len(), 3000);
    let (code, o, e) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            "gw/keys",
            "--out",
            "pub.json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{o}{e}");
    // Every file, by the signed manifest's hashes.
    let (code, o, e) = run(
        &[
            "verify",
            "docs/manifest.json",
            "--public-keys",
            "pub.json",
            "--data",
            "out/many",
        ],
        dir,
    );
    assert_eq!(code, 0, "{o}{e}");
    let (code, o, e) = run(
        &["verify", "docs/receipt.json", "--public-keys", "pub.json"],
        dir,
    );
    assert_eq!(code, 0, "{o}{e}");
    assert_eq!(
        std::fs::read(dir.join("out/many/sub/f02997.bin")).unwrap(),
        std::fs::read(src.join("sub/f02997.bin")).unwrap()
    );
}
