//! The worker: claims jobs from the store, runs each through the sender to a gateway on
//! its tenant's behalf, renews its lease while it runs, and records how it ended.
//!
//! Several workers (in one process or in several gateways sharing a store) may run at
//! once: a job is claimed by one worker at a time; when a worker dies its lease runs out
//! and another worker (or the restarted one) queues the job again and takes it over, and
//! the gateway resumes from the chunks it already holds (the job id is the gateway's job
//! id). Every log line of a job carries its id, tenant and correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{Instrument as _, info, warn};

use super::model::{Job, Outcome, backoff};
use super::store::{Heartbeat, JobStore, Quota};
use crate::sender::{JobRequest, LatencyHook, SendConfig, SendError, SharedBudget, send_jobs};
use crate::tenants::{JobAsk, LiveTenants, ServiceKey};

mod config;
mod history;
mod latency;
#[cfg(test)]
mod tests;

pub use config::{
    DEFAULT_LATENCY_TARGET, DEFAULT_MAX_CONNECTING, JobSpanHook, RunnerConfig, job_span,
};
pub use history::DEFAULT_JOB_HISTORY;
use history::HISTORY_SWEEP;
pub use latency::LatencyWindow;

/// Why a claimed job cannot run at all (a permanent failure, no attempt made).
#[derive(Debug, thiserror::Error)]
enum Unrunnable {
    /// Its tenant was removed from the tenant file since it was submitted.
    #[error("tenant {0} is no longer configured")]
    TenantGone(String),
    /// Its tenant's policy no longer admits it.
    #[error(transparent)]
    Admission(#[from] crate::tenants::AdmissionError),
}

/// Current time as Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// This worker's part of a tenant's `limit` (bytes/s) when it runs `mine` of the
/// tenant's `all` running jobs: proportional, at least 1 KiB/s (the limiter's floor), the
/// whole limit when nothing is known to run.
pub fn local_share(limit: u64, mine: u32, all: u32) -> u64 {
    if mine == 0 || all == 0 || mine >= all {
        return limit;
    }
    let part = u128::from(limit) * u128::from(mine) / u128::from(all);
    u64::try_from(part).unwrap_or(limit).max(1024)
}

/// A worker.
pub struct Runner {
    store: Arc<dyn JobStore>,
    tenants: Arc<LiveTenants>,
    service_key: Arc<ServiceKey>,
    cfg: RunnerConfig,
    budget: SharedBudget,
    /// Places for jobs setting up their connection (see [`RunnerConfig::max_connecting`]).
    connecting: Arc<tokio::sync::Semaphore>,
    wake: Notify,
    /// Chunk latencies per tenant.
    pub latencies: Arc<LatencyWindow>,
    running: AtomicU64,
    /// Bytes acknowledged by the gateway for this worker's jobs since it started.
    acked: Arc<AtomicU64>,
    /// Cancel signals of the jobs running here, by job id.
    cancels: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Per-tenant bandwidth quotas, shared by the tenant's jobs on this worker: the rate
    /// each limiter was made for, and the limiter (made again when the tenant file
    /// changes the rate).
    rates: Mutex<HashMap<String, (u64, Arc<trackshift_connectors::ByteRate>)>>,
    /// One client endpoint for every job (made on first use): a UDP socket and its
    /// receive buffers per job cost about 0.4 MiB each at a thousand jobs.
    endpoint: Mutex<Option<quinn::Endpoint>>,
}

impl Runner {
    /// A worker over `store`, speaking to its gateway with `service_key`.
    pub fn new(
        store: Arc<dyn JobStore>,
        tenants: Arc<LiveTenants>,
        service_key: Arc<ServiceKey>,
        cfg: RunnerConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            budget: match cfg.latency_target {
                Some(t) => SharedBudget::with_latency_target(cfg.memory_budget, t),
                None => SharedBudget::new(cfg.memory_budget),
            },
            connecting: Arc::new(tokio::sync::Semaphore::new(cfg.max_connecting.max(1))),
            store,
            tenants,
            service_key,
            cfg,
            wake: Notify::new(),
            latencies: Arc::new(LatencyWindow::default()),
            running: AtomicU64::new(0),
            acked: Arc::new(AtomicU64::new(0)),
            cancels: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            endpoint: Mutex::new(None),
        })
    }

    /// The endpoint every job shares, made on first use. `None` if it cannot be made:
    /// the send then makes its own and reports why that failed.
    fn endpoint(&self) -> Option<quinn::Endpoint> {
        let mut held = self.endpoint.lock().expect("endpoint lock");
        if held.is_none() {
            let bind: std::net::SocketAddr = if self.cfg.gateway.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            match crate::transport::client_endpoint_tuned(
                bind,
                &self.cfg.trust,
                self.cfg.pq_only,
                crate::transport::IDLE_TIMEOUT,
                self.cfg.congestion,
            ) {
                Ok(e) => *held = Some(e),
                Err(e) => warn!(error = %e, "making the shared client endpoint"),
            }
        }
        held.clone()
    }

    /// Looks for work now (after a submission).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the job at once if this worker runs it (after the store recorded the
    /// cancellation; workers elsewhere notice at their next heartbeat).
    pub fn cancel_local(&self, job_id: &str) {
        if let Some(tx) = self.cancels.lock().expect("cancels lock").get(job_id) {
            let _ = tx.send(true);
        }
    }

    /// Bytes acknowledged for this worker's jobs since it started.
    pub fn bytes_acknowledged(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Jobs this worker is running now.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// The tenant's bandwidth limiter under the tenant file in force, if it has a quota.
    fn rate(&self, tenant: &str) -> Option<Arc<trackshift_connectors::ByteRate>> {
        let tenants = self.tenants.current();
        let mut rates = self.rates.lock().expect("rates lock");
        let Some(limit) = tenants.file.get(tenant).and_then(|t| t.bytes_per_second) else {
            rates.remove(tenant);
            return None;
        };
        if let Some((made_for, rate)) = rates.get(tenant)
            && *made_for == limit
        {
            return Some(rate.clone());
        }
        let rate = Arc::new(trackshift_connectors::ByteRate::new(limit).ok()?);
        rates.insert(tenant.to_string(), (limit, rate.clone()));
        Some(rate)
    }

    /// The bandwidth this worker allows the tenant's jobs now, if the tenant has a quota
    /// and jobs ran here.
    pub fn tenant_rate(&self, tenant: &str) -> Option<u64> {
        let rates = self.rates.lock().expect("rates lock");
        rates.get(tenant).map(|(_, rate)| rate.rate())
    }

    /// Splits each tenant's bandwidth quota between the workers running its jobs, in
    /// proportion to how many each runs, so that several gateways sharing one store keep
    /// to the quota together. Runs at every job start and every heartbeat period.
    async fn rebalance(&self) {
        if self.rates.lock().expect("rates lock").is_empty() {
            return;
        }
        let shares = match self.store.running_shares(&self.cfg.worker_id).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "reading the running jobs' shares failed; quotas unchanged");
                return;
            }
        };
        let rates = self.rates.lock().expect("rates lock");
        for (tenant, (limit, rate)) in rates.iter() {
            let (mine, all) = shares.get(tenant).copied().unwrap_or((0, 0));
            let _ = rate.set_rate(local_share(*limit, mine, all));
        }
    }

    fn quotas(&self) -> HashMap<String, Quota> {
        self.tenants
            .current()
            .file
            .tenants
            .iter()
            .map(|t| {
                (
                    t.tenant.clone(),
                    Quota {
                        share: t.share,
                        limit: t.max_concurrent_jobs,
                    },
                )
            })
            .collect()
    }

    /// Claims and runs jobs until `shutdown` turns true; then stops claiming and waits
    /// for running jobs to end (their leases lapse if the process is killed instead).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // Made here, in no job's span: quinn's endpoint driver keeps the span it starts
        // in, and would hold the first job's span open (never closed, never exported) for
        // the endpoint's whole life.
        drop(self.endpoint());
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut last_expiry = Instant::now() - self.cfg.heartbeat;
        let mut last_purge = Instant::now() - HISTORY_SWEEP;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_purge.elapsed() >= HISTORY_SWEEP {
                last_purge = Instant::now();
                self.purge_history().await;
            }
            if last_expiry.elapsed() >= self.cfg.heartbeat {
                last_expiry = Instant::now();
                match self.store.expire_leases(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => info!(jobs = n, "took back jobs whose worker stopped"),
                    Err(e) => warn!(error = %e, "expiring leases failed"),
                }
                self.rebalance().await;
            }
            // Read each round: the tenant file may have been reloaded.
            let quotas = self.quotas();
            while tasks.len() < self.cfg.max_running {
                let now = now_ms();
                let lease_until = now + millis(self.cfg.lease);
                match self
                    .store
                    .claim(&self.cfg.worker_id, &quotas, now, lease_until)
                    .await
                {
                    Ok(Some(job)) => {
                        // Waiting since it was submitted, or since its retry's backoff ended.
                        let waited = now - job.created_ms.max(job.not_before_ms);
                        metrics::histogram!("trackshift_job_queue_wait_seconds", "tenant" => job.tenant.clone())
                            .record(waited.max(0) as f64 / 1000.0);
                        let me = self.clone();
                        let span = (self.cfg.job_span.0)(&job);
                        self.running.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(
                            async move {
                                me.run_job(job).await;
                                me.running.fetch_sub(1, Ordering::Relaxed);
                            }
                            .instrument(span),
                        );
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "claiming a job failed");
                        break;
                    }
                }
            }
            tokio::select! {
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.cfg.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Runs one claimed job to its end and records the outcome.
    async fn run_job(self: &Arc<Self>, job: Job) {
        let started = Instant::now();
        info!(attempt = job.attempts, source = %job.spec.source.display(), "job started");
        let outcome = match self.prepare(&job) {
            Ok(request) => self.send(&job, request).await,
            Err(reason) => Some(Outcome::Permanent(reason.to_string())),
        };
        let Some(outcome) = outcome else {
            info!("job stopped (cancelled or taken over)");
            return;
        };
        let delay = backoff(
            job.attempts.saturating_sub(1),
            self.cfg.retry_base,
            self.cfg.retry_max,
            jitter(),
        );
        match &outcome {
            Outcome::Completed { .. } => {
                info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "job completed"
                );
            }
            Outcome::Permanent(r) => warn!(reason = %r, "job failed (permanent)"),
            Outcome::Transient(r) => {
                warn!(reason = %r, retry_in_ms = delay.as_millis() as u64, "job attempt failed (transient)")
            }
            Outcome::Deferred(r) => {
                info!(reason = %r, retry_in_ms = delay.as_millis() as u64, "job deferred (the gateway is at the tenant's quota)")
            }
        }
        let outcome_label = match &outcome {
            Outcome::Completed { .. } => "completed",
            Outcome::Permanent(_) => "failed",
            Outcome::Transient(_) => "retried",
            Outcome::Deferred(_) => "deferred",
        };
        metrics::counter!("trackshift_job_attempts_total", "tenant" => job.tenant.clone(), "outcome" => outcome_label)
            .increment(1);
        metrics::histogram!("trackshift_job_attempt_duration_seconds", "tenant" => job.tenant.clone(), "outcome" => outcome_label)
            .record(started.elapsed().as_secs_f64());
        if let Outcome::Completed { .. } = &outcome {
            // Submission to completion: queueing, every attempt and the backoffs between.
            let total = now_ms() - job.created_ms;
            metrics::histogram!("trackshift_job_duration_seconds", "tenant" => job.tenant.clone())
                .record(total.max(0) as f64 / 1000.0);
        }
        match self
            .store
            .finish(&job.id, &self.cfg.worker_id, outcome, now_ms(), delay)
            .await
        {
            Ok(Some(state)) => info!(%state, "job recorded"),
            Ok(None) => info!("job was cancelled or taken over meanwhile; outcome dropped"),
            Err(e) => {
                warn!(error = %e, "recording the outcome failed; the lease will lapse and the job run again")
            }
        }
    }

    /// Checks the job against its tenant's policy now (the file may have changed since
    /// submission) and builds the send request.
    fn prepare(&self, job: &Job) -> Result<JobRequest, Unrunnable> {
        let tenants = self.tenants.current();
        let tenant = tenants
            .file
            .get(&job.tenant)
            .ok_or_else(|| Unrunnable::TenantGone(job.tenant.clone()))?;
        let admitted = tenant.admit(
            JobAsk {
                source: Some(&job.spec.source),
                destinations: &job.spec.destinations,
                classification: job.spec.classification.as_deref(),
            },
            self.tenants.data_dir(),
        )?;
        let source = admitted.source.expect("a source was asked for");
        Ok(JobRequest {
            destinations: job.spec.destinations.clone(),
            job_id: Some(job.id.clone()),
            correlation_id: Some(job.correlation_id.clone()),
            classification: job.spec.classification.clone(),
            strict: job.spec.strict,
            traceparent: job.traceparent,
            ..JobRequest::confined(source, String::new())
        })
    }

    /// Sends the job, renewing the lease meanwhile. `None` when the job was cancelled or
    /// another worker took it over.
    async fn send(self: &Arc<Self>, job: &Job, request: JobRequest) -> Option<Outcome> {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        self.cancels
            .lock()
            .expect("cancels lock")
            .insert(job.id.clone(), cancel_tx.clone());
        struct Unregister<'a>(&'a Runner, &'a str);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                self.0.cancels.lock().expect("cancels lock").remove(self.1);
            }
        }
        let _unregister = Unregister(self, &job.id);
        let mut cfg = SendConfig::new(
            self.cfg.gateway,
            self.cfg.trust.clone(),
            self.service_key.token_for(&job.tenant),
            request.destinations[0].clone(),
        );
        cfg.server_name = self.cfg.server_name.clone();
        cfg.chunk_size = job.spec.effective_chunk_size();
        cfg.in_flight_bytes = self.cfg.per_job_in_flight;
        cfg.pq_only = self.cfg.pq_only;
        // Reconnect a few times within the attempt; past that the job-level retry (with
        // its longer backoff) takes over.
        cfg.max_reconnects = 3;
        cfg.shared_budget = Some(self.budget.clone());
        cfg.setup_slots = Some(self.connecting.clone());
        cfg.cancel = Some(cancel_rx);
        cfg.endpoint = self.endpoint();
        cfg.rate = self.rate(&job.tenant);
        if cfg.rate.is_some() {
            self.rebalance().await;
        }
        let tenant = job.tenant.clone();
        let latencies = self.latencies.clone();
        let histogram =
            metrics::histogram!("trackshift_chunk_latency_seconds", "tenant" => tenant.clone());
        cfg.chunk_latency = Some(LatencyHook(Arc::new(move |d| {
            histogram.record(d.as_secs_f64());
            latencies.record(&tenant, now_ms(), d);
        })));
        let done = Arc::new(AtomicU64::new(job.bytes_done));
        let total = Arc::new(AtomicU64::new(job.bytes_total));
        let bytes_counter = metrics::counter!("trackshift_bytes_acknowledged_total", "tenant" => job.tenant.clone());
        let progress = {
            let (done, total, acked) = (done.clone(), total.clone(), self.acked.clone());
            move |_: usize, p: crate::sender::Progress| {
                let before = done.swap(p.acked_bytes, Ordering::Relaxed);
                let new = p.acked_bytes.saturating_sub(before);
                bytes_counter.increment(new);
                acked.fetch_add(new, Ordering::Relaxed);
                total.store(p.total_bytes, Ordering::Relaxed);
            }
        };
        let send = send_jobs(vec![request], &cfg, progress);
        tokio::pin!(send);
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.tick().await;
        let mut verifying = false;
        let result = loop {
            tokio::select! {
                mut results = &mut send => break results.pop().expect("one result per job"),
                _ = tick.tick() => {
                    let (d, t) = (done.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
                    let lease_until = now_ms() + millis(self.cfg.lease);
                    let beat = self.store.heartbeat(&job.id, &self.cfg.worker_id, lease_until, d, t).await;
                    let beat = match beat {
                        Ok(Heartbeat::Held) if !verifying && t > 0 && d >= t => {
                            verifying = true;
                            self.store.verifying(&job.id, &self.cfg.worker_id, now_ms()).await
                        }
                        other => other,
                    };
                    match beat {
                        Ok(Heartbeat::Held) => {}
                        Ok(Heartbeat::Cancelled) => {
                            info!("cancelled by the tenant; telling the gateway to drop the partial data");
                            let _ = cancel_tx.send(true);
                        }
                        Ok(Heartbeat::Lost) => {
                            warn!("lease lost to another worker; stopping without touching the job");
                            return None;
                        }
                        Err(e) => warn!(error = %e, "renewing the lease failed; will try again"),
                    }
                }
            }
        };
        Some(match result {
            Ok(report) => Outcome::Completed {
                bytes: report.bytes,
                manifest: report.manifest,
                receipts: report.receipts,
            },
            Err(SendError::Cancelled) => return None,
            Err(e) => classify(e),
        })
    }
}

/// Whether a send error is worth another attempt.
fn classify(e: SendError) -> Outcome {
    let text = e.to_string();
    match e {
        SendError::Source(_) | SendError::SourceRead(_) | SendError::Refused(_) => {
            Outcome::Permanent(text)
        }
        SendError::JobFailed {
            permanent: true, ..
        } => Outcome::Permanent(text),
        SendError::Busy { .. } => Outcome::Deferred(text),
        SendError::JobFailed { .. }
        | SendError::Connection(_)
        | SendError::GaveUp { .. }
        | SendError::Transport(_)
        | SendError::Protocol(_)
        | SendError::Cancelled => Outcome::Transient(text),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// A number in 0..1 for backoff jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    aws_lc_rs::rand::fill(&mut b).expect("system random generator");
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}
