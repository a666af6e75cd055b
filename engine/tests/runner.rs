//! The job service's worker against a real gateway (in process, QUIC on 127.0.0.1):
//! transient destination failures are retried with backoff until they pass or the job is
//! dead-lettered; a busy tenant cannot starve another; the gateway accepts a worker only
//! with a genuine service token.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use trackshift_connectors::{Connector, ConnectorError, ObjectSpec, ObjectWriter};
use trackshift_engine::gateway::{Gateway, GatewayConfig};
use trackshift_engine::jobs::runner::{Runner, RunnerConfig, now_ms};
use trackshift_engine::jobs::store::NewJob;
use trackshift_engine::jobs::{JobSpec, JobState, JobStore, SqlStore};
use trackshift_engine::tenants::{
    DestinationRule, LiveTenants, ServiceKey, TenantEntry, TenantFile,
};
use trackshift_engine::tls::ServerTrust;

/// A destination whose `check` fails transiently while `failures` lasts.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn Connector>,
    failures: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl Connector for Flaky {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    async fn check(&self) -> Result<(), ConnectorError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(ConnectorError::Remote {
                destination: self.uri().to_string(),
                op: "checking",
                transient: true,
                reason: "503 service busy (injected)".into(),
            });
        }
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
        self.inner.open(spec, resume).await
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    gateway: Arc<Gateway>,
    store: Arc<dyn JobStore>,
    runner: Option<Arc<Runner>>,
    stop: tokio::sync::watch::Sender<bool>,
    key: Arc<ServiceKey>,
    tenants: Arc<LiveTenants>,
    max_running: usize,
}

/// Tenants `a` and `b` (sources under ROOT/src), a gateway whose `flaky` destinations fail
/// `failures` checks, a SQLite store and one worker running at most `max_running` jobs.
async fn setup(failures: u32, max_running: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("out")).unwrap();
    let data = root.join("gw");
    let tenants = TenantFile {
        tenants: ["a", "b", "q"]
            .iter()
            .map(|t| TenantEntry {
                sources: vec![root.join("src")],
                // q has a bandwidth quota, slow enough that its jobs run for a while.
                bytes_per_second: (*t == "q").then_some(QUOTA),
                destinations: Some(vec![
                    DestinationRule::prefix(format!("file://{}", root.join("out").display())),
                    DestinationRule::prefix("null://"),
                ]),
                ..TenantEntry::new(t, &format!("{t}-key-0123456789"))
            })
            .collect(),
    };
    tenants.save(&data).unwrap();
    let key = Arc::new(ServiceKey::load_or_create(&data).unwrap());
    let mut cfg = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), &data);
    cfg.service_key = Some(key.clone());
    let left = Arc::new(AtomicU32::new(failures));
    cfg.connectors = Arc::new(move |uri, verify, settings| {
        let inner = trackshift_connectors::connect(uri, verify, settings)?;
        Ok(if uri.to_string().contains("flaky") {
            Arc::new(Flaky {
                inner,
                failures: left.clone(),
            }) as Arc<dyn Connector>
        } else {
            inner
        })
    });
    let gateway = Arc::new(Gateway::bind(cfg).await.unwrap());
    let g = gateway.clone();
    tokio::spawn(async move { g.serve().await });
    let store: Arc<dyn JobStore> = Arc::new(SqlStore::open(&root.join("jobs.db")).unwrap());
    let tenants = Arc::new(LiveTenants::fixed(tenants).unwrap());
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut s = Setup {
        _tmp: tmp,
        root,
        gateway,
        store,
        runner: None,
        stop,
        key,
        tenants,
        max_running,
    };
    s.runner = Some(s.start_worker("w1"));
    s
}

/// q's bandwidth quota (bytes/s).
const QUOTA: u64 = 256 << 10;

impl Setup {
    fn runner(&self) -> &Arc<Runner> {
        self.runner.as_ref().expect("first worker")
    }

    /// Starts a worker named `id` on the store and gateway (stopped with the others).
    fn start_worker(&self, id: &str) -> Arc<Runner> {
        let mut rc = RunnerConfig::new(
            id,
            self.gateway.local_addr(),
            ServerTrust::fingerprint(&self.gateway.fingerprint()).unwrap(),
        );
        rc.max_running = self.max_running;
        rc.poll = Duration::from_millis(20);
        rc.heartbeat = Duration::from_millis(200);
        rc.retry_base = Duration::from_millis(20);
        rc.retry_max = Duration::from_millis(100);
        let runner = Runner::new(
            self.store.clone(),
            self.tenants.clone(),
            self.key.clone(),
            rc,
        );
        tokio::spawn(runner.clone().run(self.stop.subscribe()));
        runner
    }

    async fn submit(&self, tenant: &str, file: &str, dest: &str, attempts: u32) -> String {
        let path = self.root.join("src").join(file);
        if !path.exists() {
            std::fs::write(&path, vec![7u8; 200_000]).unwrap();
        }
        let job = self
            .store
            .create(
                NewJob {
                    traceparent: None,
                    tenant: tenant.into(),
                    spec: JobSpec {
                        source: path,
                        destinations: vec![dest.into()],
                        chunk_size: Some(65_536),
                        priority: None,
                        classification: None,
                        strict: None,
                        max_attempts: Some(attempts),
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
        self.runner().wake();
        job.id
    }

    async fn wait_final(&self, tenant: &str, id: &str) -> trackshift_engine::jobs::Job {
        for _ in 0..600 {
            let j = self.store.get(tenant, id).await.unwrap();
            if j.state.is_terminal() {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} never ended");
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.gateway.close();
    }
}

fn out(root: &Path, sub: &str) -> String {
    let d = root.join("out").join(sub);
    std::fs::create_dir_all(&d).unwrap();
    format!("file://{}", d.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_destination_failures_are_retried_until_they_pass() {
    // The sender reopens a refused job 3 times within an attempt; 6 failures need a second
    // attempt, after a backoff.
    let s = setup(6, 4).await;
    let dest = out(&s.root, "flaky");
    let id = s.submit("a", "f.bin", &dest, 5).await;
    let job = s.wait_final("a", &id).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(job.attempts, 2, "{job:?}");
    let ts = s.store.transitions("a", &id).await.unwrap();
    let retried = ts
        .iter()
        .find(|t| t.from == Some(JobState::Running) && t.to == JobState::Queued)
        .expect("a retry was recorded");
    assert!(
        retried.reason.contains("503 service busy"),
        "{}",
        retried.reason
    );
    assert_eq!(
        std::fs::read(s.root.join("out/flaky/f.bin")).unwrap(),
        vec![7u8; 200_000]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_stays_down_dead_letters_the_job() {
    let s = setup(u32::MAX, 4).await;
    let dest = out(&s.root, "flaky");
    let id = s.submit("a", "f.bin", &dest, 2).await;
    let job = s.wait_final("a", &id).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.dead_letter, "{job:?}");
    assert_eq!(job.attempts, 2);
    assert!(job.last_error.unwrap().contains("503 service busy"));
    // A permanent failure (source gone) is not retried.
    let gone = s.submit("b", "gone.bin", &out(&s.root, "ok"), 5).await;
    std::fs::remove_file(s.root.join("src/gone.bin")).unwrap();
    let job = s.wait_final("b", &gone).await;
    assert_eq!(
        (job.state, job.attempts, job.dead_letter),
        (JobState::Failed, 1, false),
        "{job:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_tenant_cannot_starve_another() {
    // One worker slot: tenant a queues 6 jobs first, then b queues 1. b's job must run
    // second, not seventh.
    let s = setup(0, 1).await;
    let mut a_jobs = Vec::new();
    for i in 0..6 {
        a_jobs.push(s.submit("a", &format!("a{i}.bin"), "null://", 3).await);
    }
    let b_job = s.submit("b", "b.bin", "null://", 3).await;
    let b = s.wait_final("b", &b_job).await;
    assert_eq!(b.state, JobState::Completed);
    let mut a_done_before_b = 0;
    for id in &a_jobs {
        let a = s.wait_final("a", id).await;
        assert_eq!(a.state, JobState::Completed);
        if a.updated_ms < b.updated_ms {
            a_done_before_b += 1;
        }
    }
    assert!(
        a_done_before_b <= 1,
        "{a_done_before_b} of a's jobs finished before b's one"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_takes_a_worker_only_with_a_genuine_service_token() {
    let s = setup(0, 1).await;
    let src = s.root.join("src/x.bin");
    std::fs::write(&src, b"x").unwrap();
    let forged = ServiceKey::load_or_create(&s.root.join("elsewhere")).unwrap();
    let mut cfg = trackshift_engine::sender::SendConfig::new(
        s.gateway.local_addr(),
        ServerTrust::fingerprint(&s.gateway.fingerprint()).unwrap(),
        forged.token_for("a"),
        "null://",
    );
    cfg.max_reconnects = 0;
    let err = trackshift_engine::sender::send_path(&src, &cfg, |_| {})
        .await
        .expect_err("a token from another service key was accepted");
    assert!(err.to_string().contains("unknown tenant token"), "{err}");
    s.stop().await;
}

/// Polls `cond` every 50 ms until it holds (20 s at most).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_bandwidth_quota_is_split_between_the_workers_running_its_jobs() {
    // One job at a time per worker, so that a second worker takes q's second job.
    let s = setup(0, 1).await;
    for f in ["q1.bin", "q2.bin"] {
        std::fs::write(s.root.join("src").join(f), vec![1u8; 4 << 20]).unwrap();
    }
    let dest = out(&s.root, "q");
    let first = s.submit("q", "q1.bin", &dest, 1).await;
    eventually("the first worker runs q's job with the whole quota", || {
        s.runner().tenant_rate("q") == Some(QUOTA)
    })
    .await;
    let w2 = s.start_worker("w2");
    let second = s.submit("q", "q2.bin", &dest, 1).await;
    w2.wake();
    eventually("both workers keep to half the quota each", || {
        s.runner().tenant_rate("q") == Some(QUOTA / 2) && w2.tenant_rate("q") == Some(QUOTA / 2)
    })
    .await;
    for id in [&first, &second] {
        let job = s.store.get("q", id).await.unwrap();
        assert_eq!(job.state, JobState::Running, "{job:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_turned_into_a_link_to_the_gateway_keys_after_submit_is_not_read() {
    let s = setup(0, 4).await;
    let dest = out(&s.root, "links");
    // The job is queued as if the API had accepted a regular file there (the store takes
    // it as given); by the time the worker runs it, the tenant has put a link to the
    // gateway's service key in its place.
    std::os::unix::fs::symlink(s.root.join("gw/service.key"), s.root.join("src/evil")).unwrap();
    let id = s.submit("a", "evil", &dest, 1).await;
    let job = s.wait_final("a", &id).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    let reason = job.last_error.clone().unwrap_or_default();
    assert!(reason.contains("not allowed"), "{reason}");
    assert!(!s.root.join("out/links/evil").exists());
    s.stop().await;
}
