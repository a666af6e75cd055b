//! Tenant quotas at the gateway (real QUIC on 127.0.0.1), whatever path a job comes by:
//! `max_concurrent_jobs` holds for direct sends and job-service workers together (a worker
//! refused is deferred, never dead-lettered), `bytes_per_second` holds across a tenant's
//! connections, a tenant flooding chunks cannot take the memory budget from another, and
//! one connection holds no more jobs than the gateway allows.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use trackshift_connectors::Connector;
use trackshift_connectors::wrap::ThrottledConnector;
use trackshift_engine::gateway::{Gateway, GatewayConfig};
use trackshift_engine::jobs::runner::{Runner, RunnerConfig, now_ms};
use trackshift_engine::jobs::store::NewJob;
use trackshift_engine::jobs::{JobSpec, JobState, JobStore, SqlStore};
use trackshift_engine::sender::{JobRequest, SendConfig, SendError, send_jobs, send_path};
use trackshift_engine::tenants::{
    DestinationRule, LiveTenants, ServiceKey, TenantEntry, TenantFile,
};
use trackshift_engine::tls::ServerTrust;

/// Bytes per second `null:///slow...` destinations are written at.
const SLOW: u64 = 256 << 10;

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    gateway: Arc<Gateway>,
    tenants: Arc<LiveTenants>,
    key: Arc<ServiceKey>,
}

fn key(tenant: &str) -> String {
    format!("{tenant}-key-0123456789")
}

/// A gateway serving `tenants` (each may read ROOT/src and write to `null://`); writes
/// to destinations naming `slow` go at [`SLOW`].
async fn setup(tenants: Vec<TenantEntry>, memory_budget: usize) -> Setup {
    setup_with(tenants, memory_budget, |_| {}).await
}

/// [`setup`], with the gateway's configuration changed by `configure` last.
async fn setup_with(
    tenants: Vec<TenantEntry>,
    memory_budget: usize,
    configure: impl FnOnce(&mut GatewayConfig),
) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    std::fs::create_dir_all(root.join("src")).unwrap();
    let data = root.join("gw");
    let file = TenantFile {
        tenants: tenants
            .into_iter()
            .map(|t| TenantEntry {
                sources: vec![root.join("src")],
                destinations: Some(vec![DestinationRule::prefix("null://")]),
                api_keys: vec![trackshift_engine::tenants::key_digest(&key(&t.tenant))],
                ..t
            })
            .collect(),
    };
    file.save(&data).unwrap();
    let tenants = Arc::new(LiveTenants::fixed(file).unwrap());
    let key = Arc::new(ServiceKey::load_or_create(&data).unwrap());
    let mut cfg = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), &data);
    cfg.service_key = Some(key.clone());
    cfg.tenants = Some(tenants.clone());
    cfg.memory_budget = memory_budget;
    cfg.connectors = Arc::new(|dest, verify, settings| {
        let inner = trackshift_connectors::connect(dest, verify, settings)?;
        Ok(if dest.to_string().contains("slow") {
            Arc::new(ThrottledConnector::new(inner, SLOW)?) as Arc<dyn Connector>
        } else {
            inner
        })
    });
    configure(&mut cfg);
    let gateway = Arc::new(Gateway::bind(cfg).await.unwrap());
    let g = gateway.clone();
    tokio::spawn(async move { g.serve().await });
    Setup {
        _tmp: tmp,
        root,
        gateway,
        tenants,
        key,
    }
}

fn tenant(name: &str) -> TenantEntry {
    TenantEntry::new(name, "unused")
}

impl Setup {
    fn send_config(&self, tenant: &str, dest: &str) -> SendConfig {
        let mut cfg = SendConfig::new(
            self.gateway.local_addr(),
            ServerTrust::fingerprint(&self.gateway.fingerprint()).unwrap(),
            key(tenant),
            dest,
        );
        cfg.chunk_size = 64 << 10;
        cfg.in_flight_bytes = 1 << 20;
        cfg.max_reconnects = 0;
        cfg
    }

    /// A source file of `len` bytes under ROOT/src.
    fn source(&self, name: &str, len: usize) -> PathBuf {
        let p = self.root.join("src").join(name);
        std::fs::write(&p, (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
        p
    }

    /// Samples `tenant`'s open jobs and chunk memory every few milliseconds; returns the
    /// highest seen of each (and the most chunks seen waiting) when stopped.
    fn watch(&self, tenant: &str) -> Watch {
        let (g, t) = (self.gateway.clone(), tenant.to_string());
        let peak = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                let u = g.tenant_usage(&t);
                p[0].fetch_max(u64::from(u.open_jobs), Ordering::Relaxed);
                p[1].fetch_max(u.memory_held, Ordering::Relaxed);
                p[2].fetch_max(u64::from(u.memory_waiting), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Watch { peak, task }
    }
}

struct Watch {
    peak: Arc<[AtomicU64; 3]>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// (open jobs, memory held, chunks waiting for memory), the highest seen.
    fn peaks(&self) -> (u64, u64, u64) {
        let p = &self.peak;
        (
            p[0].load(Ordering::Relaxed),
            p[1].load(Ordering::Relaxed),
            p[2].load(Ordering::Relaxed),
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_sends_on_many_connections_cannot_open_more_than_max_concurrent_jobs() {
    let s = setup(
        vec![TenantEntry {
            max_concurrent_jobs: Some(2),
            ..tenant("a")
        }],
        64 << 20,
    )
    .await;
    // Four sends at once, each on its own connection; each runs about two seconds.
    let src = s.source("x.bin", 512 << 10);
    let watch = s.watch("a");
    let mut tasks = Vec::new();
    for i in 0..4 {
        let cfg = s.send_config("a", &format!("null:///slow{i}"));
        let src = src.clone();
        tasks.push(tokio::spawn(
            async move { send_path(&src, &cfg, |_| {}).await },
        ));
    }
    let (mut done, mut busy) = (0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => done += 1,
            Err(SendError::Busy { reason }) => busy.push(reason),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((done, busy.len()), (2, 2), "{busy:?}");
    for reason in &busy {
        assert!(
            reason.contains("tenant a has 2 jobs running (max_concurrent_jobs = 2)"),
            "{reason}"
        );
    }
    assert_eq!(watch.peaks().0, 2, "never more than two open");
    // Finished jobs free their slots: the next send runs.
    assert_eq!(s.gateway.tenant_usage("a").open_jobs, 0);
    send_path(&src, &s.send_config("a", "null://"), |_| {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_on_one_connection_wait_for_a_slot_instead_of_exceeding_the_cap() {
    let s = setup(
        vec![TenantEntry {
            max_concurrent_jobs: Some(2),
            ..tenant("a")
        }],
        64 << 20,
    )
    .await;
    let src = s.source("x.bin", 128 << 10);
    let watch = s.watch("a");
    // Six jobs in one send (six OpenJob frames on one connection): the ones refused wait
    // while their siblings run (without counting against the few waits allowed), and all
    // complete.
    let requests: Vec<JobRequest> = (0..6)
        .map(|i| JobRequest::new(&src, format!("null:///slow{i}")))
        .collect();
    let mut cfg = s.send_config("a", "null://");
    cfg.max_reconnects = 2;
    let results = send_jobs(requests, &cfg, |_, _| {}).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(watch.peaks().0, 2, "never more than two open at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_no_more_jobs_than_the_gateway_allows_and_the_rest_wait() {
    // No tenant quota: the gateway's own bound per connection holds.
    let s = setup_with(vec![tenant("a")], 64 << 20, |cfg| {
        cfg.max_jobs_per_connection = 3;
    })
    .await;
    let src = s.source("x.bin", 128 << 10);
    let watch = s.watch("a");
    let requests: Vec<JobRequest> = (0..7)
        .map(|i| JobRequest::new(&src, format!("null:///slow{i}")))
        .collect();
    let mut cfg = s.send_config("a", "null://");
    cfg.max_reconnects = 2;
    let results = send_jobs(requests, &cfg, |_, _| {}).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(
        watch.peaks().0,
        3,
        "never more than three open on the connection"
    );
    assert_eq!(s.gateway.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_job_refused_at_the_gateway_cap_is_deferred_not_dead_lettered() {
    let s = setup(
        vec![TenantEntry {
            max_concurrent_jobs: Some(1),
            ..tenant("a")
        }],
        64 << 20,
    )
    .await;
    // The tenant's own send holds its only slot (a slow job, cancelled later).
    let big = s.source("big.bin", 8 << 20);
    let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let mut cfg = s.send_config("a", "null:///slow");
    cfg.cancel = Some(cancel_rx);
    let direct = tokio::spawn(async move { send_path(&big, &cfg, |_| {}).await });
    for _ in 0..200 {
        if s.gateway.tenant_usage("a").open_jobs == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.gateway.tenant_usage("a").open_jobs, 1);
    // A job-service job with a single attempt: the gateway refuses it while the slot is
    // taken; it must wait, not fail.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> = Arc::new(SqlStore::open(&dir.path().join("jobs.db")).unwrap());
    let mut rc = RunnerConfig::new(
        "w1",
        s.gateway.local_addr(),
        ServerTrust::fingerprint(&s.gateway.fingerprint()).unwrap(),
    );
    rc.poll = Duration::from_millis(20);
    rc.heartbeat = Duration::from_millis(200);
    rc.retry_base = Duration::from_millis(20);
    rc.retry_max = Duration::from_millis(100);
    let runner = Runner::new(store.clone(), s.tenants.clone(), s.key.clone(), rc);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(runner.clone().run(stop_rx));
    let small = s.source("small.bin", 100_000);
    let job = store
        .create(
            NewJob {
                traceparent: None,
                tenant: "a".into(),
                spec: JobSpec {
                    source: small,
                    destinations: vec!["null://".into()],
                    chunk_size: Some(65_536),
                    priority: None,
                    classification: None,
                    strict: None,
                    max_attempts: Some(1),
                },
                correlation_id: None,
                idempotency_key: None,
                max_queued: None,
            },
            now_ms(),
        )
        .await
        .unwrap()
        .0;
    runner.wake();
    // Deferred at least once (the worker gave up waiting within its attempt).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = store.transitions("a", &job.id).await.unwrap();
        if t.iter().any(|t| t.reason.starts_with("deferred: ")) {
            break;
        }
        let j = store.get("a", &job.id).await.unwrap();
        assert!(
            !j.state.is_terminal(),
            "ended while the slot was taken: {j:?}"
        );
        assert!(Instant::now() < deadline, "never deferred: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The tenant's own job ends: the worker's job gets the slot and completes.
    cancel.send(true).unwrap();
    assert!(matches!(direct.await.unwrap(), Err(SendError::Cancelled)));
    let deadline = Instant::now() + Duration::from_secs(60);
    let j = loop {
        let j = store.get("a", &job.id).await.unwrap();
        if j.state.is_terminal() {
            break j;
        }
        assert!(Instant::now() < deadline, "never finished: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(j.state, JobState::Completed, "{j:?}");
    assert_eq!((j.attempts, j.dead_letter), (1, false));
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_exceed_bytes_per_second_by_opening_more_connections() {
    const RATE: u64 = 256 << 10;
    let s = setup(
        vec![TenantEntry {
            bytes_per_second: Some(RATE),
            ..tenant("a")
        }],
        64 << 20,
    )
    .await;
    // Four connections of 256 KiB each: 1 MiB at 256 KiB/s (burst 25.6 KiB) is at least
    // 3.9 s however many connections carry it.
    let src = s.source("x.bin", 256 << 10);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let cfg = s.send_config("a", "null://");
        let src = src.clone();
        tasks.push(tokio::spawn(
            async move { send_path(&src, &cfg, |_| {}).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(3_800),
        "1 MiB took only {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_and_the_gateways_rate_limits_together_do_not_halve_the_rate() {
    const RATE: u64 = 1 << 20;
    let s = setup(
        vec![TenantEntry {
            bytes_per_second: Some(RATE),
            ..tenant("a")
        }],
        64 << 20,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> = Arc::new(SqlStore::open(&dir.path().join("jobs.db")).unwrap());
    let mut rc = RunnerConfig::new(
        "w1",
        s.gateway.local_addr(),
        ServerTrust::fingerprint(&s.gateway.fingerprint()).unwrap(),
    );
    rc.poll = Duration::from_millis(20);
    let runner = Runner::new(store.clone(), s.tenants.clone(), s.key.clone(), rc);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(runner.clone().run(stop_rx));
    // 3 MiB at 1 MiB/s: about 3 s through both limiters in series; halved it would be 6 s.
    let src = s.source("x.bin", 3 << 20);
    let started = Instant::now();
    let job = store
        .create(
            NewJob {
                traceparent: None,
                tenant: "a".into(),
                spec: JobSpec {
                    source: src,
                    destinations: vec!["null://".into()],
                    chunk_size: Some(65_536),
                    priority: None,
                    classification: None,
                    strict: None,
                    max_attempts: Some(1),
                },
                correlation_id: None,
                idempotency_key: None,
                max_queued: None,
            },
            now_ms(),
        )
        .await
        .unwrap()
        .0;
    runner.wake();
    let j = loop {
        let j = store.get("a", &job.id).await.unwrap();
        if j.state.is_terminal() {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{j:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    assert_eq!(j.state, JobState::Completed, "{j:?}");
    assert!(
        took >= Duration::from_millis(2_700),
        "3 MiB took only {took:?}"
    );
    assert!(
        took < Duration::from_millis(5_000),
        "3 MiB at 1 MiB/s took {took:?}: the limiters throttle twice"
    );
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_chunks_cannot_starve_another_tenants_job() {
    // 4 MiB of chunk memory shared by two tenants of equal share: 2 MiB each.
    let s = setup(vec![tenant("flood"), tenant("small")], 4 << 20).await;
    let small_src = s.source("small.bin", 512 << 10);
    let small_job = || async {
        let started = Instant::now();
        send_path(&small_src, &s.send_config("small", "null://"), |_| {})
            .await
            .unwrap();
        started.elapsed()
    };
    let baseline = small_job().await;

    // flood: four jobs to one slow destination (16 MiB at 256 KiB/s) with 64 MiB in
    // flight; its chunks hold memory until written, so it always wants more than the
    // budget.
    let big = s.source("big.bin", 4 << 20);
    let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let mut cfg = s.send_config("flood", "null:///slow");
    cfg.in_flight_bytes = 64 << 20;
    cfg.chunk_size = 256 << 10;
    cfg.cancel = Some(cancel_rx);
    let requests: Vec<JobRequest> = (0..4)
        .map(|_| JobRequest::new(&big, "null:///slow"))
        .collect();
    let flood = tokio::spawn(async move { send_jobs(requests, &cfg, |_, _| {}).await });
    let watch = s.watch("flood");
    // Wait until it is saturated: its whole part held and more chunks waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let u = s.gateway.tenant_usage("flood");
        if u.memory_cap > 0 && u.memory_held == u.memory_cap && u.memory_waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "flood never saturated: {u:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let under_flood = small_job().await;
    let flood_usage = s.gateway.tenant_usage("flood");
    assert_eq!(flood_usage.memory_cap, 2 << 20, "{flood_usage:?}");
    assert!(
        watch.peaks().1 <= 2 << 20,
        "flood held more than its part: {:?}",
        watch.peaks()
    );
    assert!(
        flood_usage.memory_waiting > 0,
        "flood was still saturated when small finished: {flood_usage:?}"
    );
    // With one budget for all, small's chunks queue behind flood's waiting chunks, which
    // drain at 256 KiB/s (about a minute here). With its own part, small runs about as
    // fast as alone.
    assert!(
        under_flood < baseline * 20 + Duration::from_secs(5),
        "small took {under_flood:?} under the flood, {baseline:?} alone"
    );
    assert_eq!(s.gateway.tenant_usage("small").memory_held, 0);
    cancel.send(true).unwrap();
    let _ = flood.await;
}
