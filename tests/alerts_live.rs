//! The alert rules proven live: a real Prometheus scrapes a test gateway and evaluates the
//! shipped `deploy/prometheus/alerts.yml`, a real Alertmanager routes what fires to a
//! webhook receiver in this test. One destination of the jobs is made slow (an SFTP server
//! behind a proxy that delays every answer by 300 ms) and another fails (a local disk that
//! is full); the chunk-latency and the two replication-error alerts (destination errors,
//! failed receipts) must reach the receiver `firing`, and `resolved` once the faults are
//! gone.
//!
//! The shipped rules have `for:` durations and rate windows of minutes; the test runs them
//! with time compressed 30-fold ([`compressed_rules`]: `for: 5m` becomes `for: 10s`, `[5m]`
//! becomes `[10s]`; nothing else changes), so a broken expression in the shipped file breaks
//! this test. Prometheus and Alertmanager are Debian's packages, SFTP is OpenSSH's sshd and
//! the full disk a 16 MiB tmpfs (`scripts/test-servers.sh start alerting sftp`); the test
//! starts Prometheus and Alertmanager itself on 127.0.0.1 and free ports, and stops them
//! (by their PIDs) when it ends.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{job_dest, start_gateway_full, write_secret};
use serde_json::{Value, json};
use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};

const KEY: &str = "ops-api-key-0123456789";
const LATENCY: &str = "TrackshiftChunkLatencyHigh";
const ERRORS: &str = "TrackshiftDestinationErrors";
const FAILED_RECEIPTS: &str = "TrackshiftDestinationFailedReceipts";
/// The alerts the faults must bring, and take away: chunk latency, and the two of
/// connector replication errors (errors at a destination, and receipts that say failed).
const EXPECTED: [&str; 3] = [LATENCY, ERRORS, FAILED_RECEIPTS];
/// What the slow destination adds to every answer of its server.
const DELAY_MS: u64 = 300;
/// Jobs submitted at once, one after another each (so that errors and latencies keep coming).
const SUBMITTERS: usize = 2;
/// The shipped rules' time scale divided by the test's.
const COMPRESSION: u64 = 30;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: start the servers with `scripts/test-servers.sh start alerting sftp` \
             and source `scripts/test-servers.sh env` (scripts/test.sh does both)"
        )
    })
}

/// `text` (the shipped alerts.yml) with every duration of minutes in a `for:` or a range
/// selector divided by [`COMPRESSION`] (`for: 5m` → `for: 10s`, `[15m]` → `[30s]`). Any
/// other unit there is refused, so that a new rule cannot slip through untransformed.
fn compressed_rules(text: &str) -> Result<String, String> {
    let scale = |d: &str| -> Result<String, String> {
        let minutes: u64 = d
            .strip_suffix('m')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("duration {d:?} is not in minutes; extend compressed_rules"))?;
        Ok(format!("{}s", minutes * 60 / COMPRESSION))
    };
    let mut out = String::new();
    let mut changed = 0;
    for line in text.lines() {
        let mut line = line.to_string();
        if let Some(d) = line.trim().strip_prefix("for: ") {
            let indent = &line[..line.len() - line.trim_start().len()];
            line = format!("{indent}for: {}", scale(d.trim())?);
            changed += 1;
        }
        let mut rest = line.as_str();
        while let Some(i) = rest.find('[') {
            let j = rest[i..]
                .find(']')
                .ok_or_else(|| format!("unclosed [ in {line:?}"))?;
            out.push_str(&rest[..=i]);
            out.push_str(&scale(&rest[i + 1..i + j])?);
            out.push(']');
            changed += 1;
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if changed < 10 {
        return Err(format!("only {changed} durations found"));
    }
    Ok(out)
}

/// `text` (the shipped alertmanager.example.yml) with every receiver's `url:` replaced by
/// `hook` and every `group_wait:` and `group_interval:` by 1s (a notification within a
/// second, not minutes). The routes, matchers and inhibitions stay as shipped.
fn alertmanager_for_test(text: &str, hook: &str) -> String {
    let mut urls = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            let indent = &line[..line.len() - line.trim_start().len()];
            let t = line.trim_start();
            if t.starts_with("- url: ") || t.starts_with("url: ") {
                urls += 1;
                let dash = if t.starts_with('-') { "- " } else { "" };
                format!("{indent}{dash}url: {hook}")
            } else if let Some(key) = ["group_wait:", "group_interval:"]
                .into_iter()
                .find(|k| t.starts_with(k))
            {
                format!("{indent}{key} 1s")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(urls >= 2, "alertmanager.example.yml: {urls} receiver URLs");
    out.join("\n") + "\n"
}

/// A child process (Prometheus, Alertmanager) killed by its PID when dropped.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(name: &'static str, bin: &str, args: &[String], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({bin}): {e}"));
        Self { name, child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until `GET base/-/ready` answers 200.
    fn wait_ready(&mut self, base: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            if try_get(base, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within 30 s:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET (so no chunked answer) of `base` (`http://HOST:PORT`) `path`:
/// (status, body), or `None` when nothing answers (yet).
fn try_get(base: &str, path: &str) -> Option<(u16, String)> {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A port free on 127.0.0.1 now (for the servers that take a port, not a socket).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One alert of a notification the webhook receiver got.
#[derive(Debug, Clone)]
struct Notified {
    /// The Alertmanager receiver that sent it (`pager`, `tickets`).
    receiver: String,
    alert: String,
    /// `firing` or `resolved`.
    status: String,
    labels: Value,
}

/// The webhook receiver Alertmanager posts to: every alert of every notification, in the
/// order they came.
type Received = Arc<Mutex<Vec<Notified>>>;

fn webhook_receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let r = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                for a in v["alerts"].as_array().into_iter().flatten() {
                    r.lock().unwrap().push(Notified {
                        receiver: v["receiver"].as_str().unwrap_or("").to_string(),
                        alert: a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                        status: a["status"].as_str().unwrap_or("").to_string(),
                        labels: a["labels"].clone(),
                    });
                }
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, received)
}

/// A TCP proxy to `upstream` that holds every byte coming back from it for `delay`
/// milliseconds (read at the time it arrives; 0: none) before passing it on, in order:
/// added latency, not a bandwidth limit. Returns its address.
async fn delaying_proxy(upstream: String, delay: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let delay = delay.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let due =
                            Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                while let Some((due, bytes)) = rx.recv().await {
                    tokio::time::sleep_until(due.into()).await;
                    if cw.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    addr
}

/// Fills the file system at `dir` (the 16 MiB tmpfs) with `dir/filler` until it refuses
/// more: a full disk. Panics if it takes more than 256 MiB (not the small disk).
fn fill_disk(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0x5au8; 64 << 10];
    let mut written = 0usize;
    loop {
        match f.write_all(&block).and_then(|()| f.sync_all()) {
            Ok(()) => written += block.len(),
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
        assert!(
            written < 256 << 20,
            "{} took 256 MiB and is not full: TRACKSHIFT_TEST_ALERTING_DISK must be the small file system",
            dir.display()
        );
    }
    // The last partial block may have fitted: nothing at all is left.
    while f.write_all(&[0u8; 512]).and_then(|()| f.sync_all()).is_ok() {}
    filler
}

/// Submits the job `spec` and polls it until it ends: its final state.
async fn run_job(http: &reqwest::Client, base: &str, spec: &Value) -> Result<String, String> {
    let call = |req: reqwest::RequestBuilder| async move {
        let resp = req
            .bearer_auth(KEY)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{status} {text}: {e}"))?;
        Ok::<_, String>((status, v))
    };
    let (status, job) = call(
        http.post(format!("{base}/v1/jobs"))
            .header("content-type", "application/json")
            .body(spec.to_string()),
    )
    .await?;
    if status != reqwest::StatusCode::CREATED {
        return Err(format!("submitting: {status} {job}"));
    }
    let id = job["id"].as_str().ok_or("no job id")?.to_string();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, job) = call(http.get(format!("{base}/v1/jobs/{id}"))).await?;
        let state = job["state"].as_str().unwrap_or("");
        if matches!(state, "completed" | "failed" | "cancelled") {
            return Ok(state.to_string());
        }
    }
}

/// The alerts Prometheus holds now and the gateway's figures the two alerts read, for a
/// failure message.
fn diagnostics(prom: &str, gw_http: &str, gw_key: &str, gw_log: &Path) -> String {
    let alerts = try_get(prom, "/api/v1/alerts")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let (_, metrics) = common::get_with_key(gw_http, "/metrics", Some(gw_key));
    let metrics: String = String::from_utf8_lossy(&metrics)
        .lines()
        .filter(|l| {
            l.starts_with("trackshift_chunk_latency_seconds")
                || l.starts_with("trackshift_destination_errors_total")
                || l.starts_with("trackshift_job_attempts_total")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let log = std::fs::read_to_string(gw_log).unwrap_or_default();
    let log: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let log = log[log.len().saturating_sub(10)..].join("\n");
    format!("Prometheus alerts: {alerts}\ngateway metrics:\n{metrics}\ngateway warnings:\n{log}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_and_a_failing_destination_fire_their_alerts_through_alertmanager_and_resolve() {
    let started = Instant::now();
    let prometheus = env("TRACKSHIFT_TEST_PROMETHEUS");
    let alertmanager = env("TRACKSHIFT_TEST_ALERTMANAGER");
    let disk = PathBuf::from(env("TRACKSHIFT_TEST_ALERTING_DISK"));
    assert!(
        disk.is_dir(),
        "TRACKSHIFT_TEST_ALERTING_DISK: {} (the failing destination is a full 16 MiB tmpfs: \
         scripts/test-servers.sh mounts it, which needs root)",
        disk.display()
    );
    let sftp = env("TRACKSHIFT_TEST_SFTP");
    // The client key the gateway (inheriting this environment) logs in to SFTP with.
    env("TRACKSHIFT_SFTP_KEY");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // The slow destination: the test SFTP server behind the delaying proxy, its host key
    // pinned for the proxy's address.
    let (upstream, known_hosts) = {
        let d = trackshift_connectors::destination::Destination::parse(&sftp).unwrap();
        let server = trackshift_connectors::ServerUri::of(&d).unwrap();
        let kh = server
            .query
            .iter()
            .find(|(k, _)| k == "known_hosts")
            .map(|(_, v)| v.clone())
            .expect("TRACKSHIFT_TEST_SFTP names its known_hosts");
        (format!("{}:{}", server.host, server.port), kh)
    };
    let delay = Arc::new(AtomicU64::new(DELAY_MS));
    let proxy = delaying_proxy(upstream.clone(), delay.clone()).await;
    let proxy_port = proxy.rsplit_once(':').unwrap().1;
    let upstream_port = upstream.rsplit_once(':').unwrap().1;
    let pinned = std::fs::read_to_string(&known_hosts).unwrap().replace(
        &format!("[127.0.0.1]:{upstream_port}"),
        &format!("[127.0.0.1]:{proxy_port}"),
    );
    assert!(pinned.contains(&format!(":{proxy_port}")), "{pinned}");
    std::fs::write(root.join("known_hosts"), pinned).unwrap();
    let sftp_path = sftp
        .split_once('?')
        .unwrap()
        .0
        .replace(&format!(":{upstream_port}/"), &format!(":{proxy_port}/"));
    let slow_base = format!(
        "{sftp_path}?known_hosts={}",
        root.join("known_hosts").display()
    );
    let sub = format!("alerts-{}", uuid::Uuid::new_v4().simple());
    let slow = job_dest(&slow_base, &sub);

    // The failing destination: a directory on the small disk, filled up.
    let disk_dir = disk.join(&sub);
    std::fs::create_dir_all(&disk_dir).unwrap();
    let failing_base = format!("file://{}", disk.display());
    let failing = format!("{failing_base}/{sub}");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(disk_dir.clone());
    let filler = fill_disk(&disk_dir);

    // The gateway, its one tenant allowed both destinations.
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let payload: Vec<u8> = (0..128u32 << 10)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.join("payload.bin"), &payload).unwrap();
    let data = root.join("gw");
    TenantFile {
        tenants: vec![TenantEntry {
            sources: vec![src.clone()],
            destinations: Some(vec![
                DestinationRule::from_uri(&slow_base).unwrap(),
                DestinationRule::from_uri(&format!("{failing_base}/")).unwrap(),
            ]),
            ..TenantEntry::new("ops", KEY)
        }],
    }
    .save(&data)
    .unwrap();
    let gw_log = root.join("gateway.log");
    let gw = start_gateway_full(&data, &[], &[], Some(&gw_log));
    let gw_addr = gw.http.strip_prefix("http://").unwrap().to_string();

    // Alertmanager with the shipped example's routes, sending to the receiver at once.
    let (hook, received) = webhook_receiver();
    let am_port = free_port();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alertmanager.example.yml"
    ))
    .unwrap();
    std::fs::write(
        root.join("alertmanager.yml"),
        alertmanager_for_test(&example, &hook),
    )
    .unwrap();
    let mut am = Server::start(
        "alertmanager",
        &alertmanager,
        &[
            format!("--config.file={}", root.join("alertmanager.yml").display()),
            format!("--storage.path={}", root.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            // No clustering: no gossip port on every interface.
            "--cluster.listen-address=".into(),
        ],
        root,
    );
    let am_url = format!("http://127.0.0.1:{am_port}");
    am.wait_ready(&am_url);

    // Prometheus: scrapes the gateway (with the operator key from a file, never an
    // argument) and evaluates the compressed rules every second.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    let rules = compressed_rules(&shipped).unwrap_or_else(|e| panic!("alerts.yml: {e}"));
    assert!(
        EXPECTED
            .iter()
            .all(|a| rules.contains(&format!("alert: {a}")))
    );
    std::fs::write(root.join("rules.yml"), &rules).unwrap();
    write_secret(&root.join("operator.key"), &gw.operator_key);
    let prom_port = free_port();
    std::fs::write(
        root.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [rules.yml]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: trackshift\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{gw_addr}']\n",
            root.join("operator.key").display()
        ),
    )
    .unwrap();
    let mut prom = Server::start(
        "prometheus",
        &prometheus,
        &[
            format!("--config.file={}", root.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", root.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--rules.alert.resend-delay=1s".into(),
        ],
        root,
    );
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    prom.wait_ready(&prom_url);
    // Every rule of the shipped file loaded (Prometheus keeps running on a rule file it
    // cannot load, with no rules).
    let shipped_alerts = shipped.matches("- alert: ").count();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = try_get(&prom_url, "/api/v1/rules").expect("Prometheus answers");
        let v: Value = serde_json::from_str(&body).unwrap();
        let loaded = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .filter(|r| r["type"] == "alerting")
            .count();
        if loaded == shipped_alerts {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus loaded {loaded} of {shipped_alerts} alerts: {v}\n{}",
            prom.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Jobs to both destinations, one after another, for as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut jobs = Vec::new();
    for worker in 0..SUBMITTERS {
        let (stop, outcomes, base) = (stop.clone(), outcomes.clone(), gw.http.clone());
        let (slow, failing, source) = (slow.clone(), failing.clone(), src.join("payload.bin"));
        let delivered = disk_dir.clone();
        jobs.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            // Each job sends a file of its own name (no job replaces another's objects) to
            // the same two destinations (so that the gateway keeps its connectors, and the
            // SFTP session, from job to job: a healthy destination is fast).
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let file = source.with_file_name(format!("{worker}-{n}.bin"));
                std::fs::copy(&source, &file).unwrap();
                let spec = json!({
                    "source": file,
                    "destinations": [slow, failing],
                    "chunk_size": 65536,
                });
                let end = run_job(&http, &base, &spec)
                    .await
                    .unwrap_or_else(|e| format!("error: {e}"));
                let stopped = end.starts_with("error");
                outcomes.lock().unwrap().push(end);
                // Taken away once delivered, as a consumer of that directory would: the
                // small disk must not fill up again with jobs' files once it has room.
                let name = file.file_name().unwrap();
                let _ = std::fs::remove_file(delivered.join(name));
                let _ = std::fs::remove_file(&file);
                if stopped {
                    return;
                }
            }
        }));
    }

    // Waits until every EXPECTED alert reached the receiver with `status` in a notification after
    // the first `from` it received.
    let wait_for = |status: &'static str,
                    from: usize,
                    limit: Duration,
                    jobs: &[tokio::task::JoinHandle<()>]| {
        let (received, prom_url, gw_http, gw_key) = (
            received.clone(),
            prom_url.clone(),
            gw.http.clone(),
            gw.operator_key.clone(),
        );
        let (outcomes, gw_log) = (outcomes.clone(), gw_log.clone());
        let jobs: Vec<_> = jobs.iter().map(|j| j.abort_handle()).collect();
        async move {
            let deadline = Instant::now() + limit;
            loop {
                let stopped = jobs.iter().any(|j| j.is_finished());
                let got: BTreeSet<String> = received
                    .lock()
                    .unwrap()
                    .iter()
                    .skip(from)
                    .filter(|n| n.status == status)
                    .map(|n| n.alert.clone())
                    .collect();
                if EXPECTED.iter().all(|a| got.contains(*a)) {
                    return;
                }
                if stopped || Instant::now() >= deadline {
                    let all = received.lock().unwrap().clone();
                    let ends = outcomes.lock().unwrap().clone();
                    panic!(
                        "{}, the receiver got {status} only {got:?}; all it got: {all:?}\njobs: {ends:?}\n{}",
                        if stopped {
                            "a job submitter stopped (its error is the last job)".to_string()
                        } else {
                            format!("within {limit:?}")
                        },
                        diagnostics(&prom_url, &gw_http, &gw_key, &gw_log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };

    // Faults on: both alerts fire.
    wait_for("firing", 0, Duration::from_secs(45), &jobs).await;
    let fired_at = started.elapsed();
    {
        let got = received.lock().unwrap();
        let firing = |name: &str| -> Vec<&Notified> {
            got.iter()
                .filter(|n| n.alert == name && n.status == "firing")
                .collect()
        };
        // The latency alert names the tenant and pages (the example's route for critical
        // alerts); the replication-error alerts name the full disk, not the slow
        // destination (slow is not failing), and go to the tickets.
        for n in firing(LATENCY) {
            assert_eq!(n.labels["tenant"], "ops", "{n:?}");
            assert_eq!(n.labels["severity"], "critical", "{n:?}");
            assert_eq!(n.receiver, "pager", "{n:?}");
        }
        for n in firing(ERRORS).into_iter().chain(firing(FAILED_RECEIPTS)) {
            assert_eq!(n.labels["destination"], "file://", "{n:?}");
            assert_eq!(n.receiver, "tickets", "{n:?}");
        }
    }

    // Faults off: the proxy passes answers on at once, the disk has room again.
    delay.store(0, Ordering::Relaxed);
    std::fs::remove_file(&filler).unwrap();
    let before = received.lock().unwrap().len();
    wait_for("resolved", before, Duration::from_secs(60), &jobs).await;
    stop.store(true, Ordering::Relaxed);
    for j in jobs {
        let _ = tokio::time::timeout(Duration::from_secs(30), j).await;
    }
    let outcomes = outcomes.lock().unwrap().clone();
    // Every job went on without the failing destination and completed (non-strict
    // fan-out): the slow destination was slow, never failing.
    assert!(
        !outcomes.is_empty() && outcomes.iter().all(|s| s == "completed"),
        "{outcomes:?}"
    );
    let notified: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|n| {
            let d = n.labels["destination"].as_str().unwrap_or("");
            format!("{} {} {d} ({})", n.alert, n.status, n.receiver)
        })
        .collect();
    eprintln!(
        "alerts fired after {fired_at:?}, resolved after {:?}; {} jobs, all completed; notifications: {notified:?}",
        started.elapsed(),
        outcomes.len()
    );
    drop(prom);
    drop(am);
}

#[test]
fn the_rules_are_compressed_in_time_and_in_nothing_else() {
    let rules = "      - alert: A\n        expr: sum(rate(x[5m])) / sum(rate(y[15m])) > 0.5\n        for: 2m\n        annotations:\n          summary: \"{{ $value }}\"\n";
    let rules = rules.repeat(4);
    let out = compressed_rules(&rules).unwrap();
    assert_eq!(
        out,
        "      - alert: A\n        expr: sum(rate(x[10s])) / sum(rate(y[30s])) > 0.5\n        for: 4s\n        annotations:\n          summary: \"{{ $value }}\"\n"
            .repeat(4)
    );
    let hours = compressed_rules(&rules.replace("[5m]", "[1h]"));
    assert!(
        hours
            .as_ref()
            .is_err_and(|e| e.contains("\"1h\" is not in minutes")),
        "a window in hours is refused, not kept: {hours:?}"
    );
}

#[test]
fn the_example_alertmanager_config_keeps_its_routes_and_sends_to_the_test() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alertmanager.example.yml"
    ))
    .unwrap();
    let out = alertmanager_for_test(&example, "http://127.0.0.1:1/alerts");
    assert!(!out.contains(".example/"), "{out}");
    assert_eq!(
        out.matches("url: http://127.0.0.1:1/alerts").count(),
        2,
        "{out}"
    );
    assert!(out.contains("group_wait: 1s") && out.contains("group_interval: 1s"));
    for kept in [
        "receiver: pager",
        "severity=\"critical\"",
        "repeat_interval: 4h",
        "inhibit_rules:",
    ] {
        assert!(out.contains(kept), "{kept}: {out}");
    }
}
