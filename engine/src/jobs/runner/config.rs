//! A worker's settings, and the span each job runs in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::info_span;

use super::super::model::Job;
use super::history::DEFAULT_JOB_HISTORY;
use crate::tls::ServerTrust;

/// Makes the span a job runs in (the default: [`job_span`]). A process exporting traces
/// installs one that also makes the span a child of the job's W3C trace context.
#[derive(Clone)]
pub struct JobSpanHook(pub Arc<dyn Fn(&Job) -> tracing::Span + Send + Sync>);

impl std::fmt::Debug for JobSpanHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSpanHook")
    }
}

/// The span a job runs in: its id, tenant, correlation id and trace id, on every line
/// logged while it runs.
pub fn job_span(job: &Job) -> tracing::Span {
    info_span!("job", job = %job.id, tenant = %job.tenant, correlation_id = %job.correlation_id, trace_id = job.traceparent.map(|t| t.trace_id()))
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This worker's id (unique among workers sharing a store).
    pub worker_id: String,
    /// The gateway jobs are sent to.
    pub gateway: SocketAddr,
    /// Name on the gateway's certificate.
    pub server_name: String,
    /// How the gateway's certificate is trusted.
    pub trust: ServerTrust,
    /// Most jobs this worker runs at once.
    pub max_running: usize,
    /// Chunk bytes in flight across all of this worker's jobs.
    pub memory_budget: u64,
    /// Queueing allowed above the base delay before the worker sends less at once: its
    /// in-flight budget (at most `memory_budget`) follows chunk latency (see
    /// [`crate::budget::DelayControl`]). `None`: a fixed `memory_budget`.
    pub latency_target: Option<Duration>,
    /// How long jobs that ended stay in the store (their status, transitions, manifest
    /// and receipts through the API; the ledger keeps its entries forever). `None`: forever.
    pub job_history: Option<Duration>,
    /// Chunk bytes in flight per job.
    pub per_job_in_flight: u64,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// How often a running job renews its lease and records progress.
    pub heartbeat: Duration,
    /// How often an idle worker looks for work (it is also woken on submit).
    pub poll: Duration,
    /// First retry delay; doubles per attempt up to `retry_max` (with jitter).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Offer only the post-quantum key exchange.
    pub pq_only: bool,
    /// The congestion controller of the endpoint the jobs share (CUBIC by default: the
    /// jobs' connections share one path, where BBR's queues doubled chunk latency).
    pub congestion: crate::transport::Congestion,
    /// Most jobs setting up their connection at once (handshake until the gateway has the
    /// job open): when many jobs start together, the rest wait, so that the chunks of the
    /// jobs already sending keep their share of the CPU (their latency).
    pub max_connecting: usize,
    /// Makes the span each job runs in.
    pub job_span: JobSpanHook,
}

/// Default [`RunnerConfig::latency_target`] (RFC 6817's upper bound for LEDBAT's target).
pub const DEFAULT_LATENCY_TARGET: Duration = Duration::from_millis(100);

/// Default [`RunnerConfig::max_connecting`].
pub const DEFAULT_MAX_CONNECTING: usize = 16;

impl RunnerConfig {
    /// Defaults for a worker next to its gateway: 256 jobs, 512 MiB in flight, 30 s
    /// leases renewed every 5 s, retries from 1 s to 60 s.
    pub fn new(worker_id: impl Into<String>, gateway: SocketAddr, trust: ServerTrust) -> Self {
        Self {
            worker_id: worker_id.into(),
            gateway,
            server_name: "localhost".into(),
            trust,
            max_running: 256,
            memory_budget: 512 << 20,
            latency_target: Some(DEFAULT_LATENCY_TARGET),
            job_history: Some(DEFAULT_JOB_HISTORY),
            per_job_in_flight: 64 << 20,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            poll: Duration::from_millis(500),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            pq_only: false,
            congestion: crate::transport::Congestion::default(),
            max_connecting: DEFAULT_MAX_CONNECTING,
            job_span: JobSpanHook(Arc::new(job_span)),
        }
    }
}
