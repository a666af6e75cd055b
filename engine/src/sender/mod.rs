//! The sending side: reads a file or directory in chunks, hashes each chunk, and streams
//! them to a gateway over QUIC, one unidirectional stream per chunk, many in flight, within a
//! memory budget. Chunks are read into pooled buffers (`crate::pool`) and handed to QUIC as
//! `Bytes` without another copy.
//! When the connection drops it reconnects and sends only what the gateway does not hold.
//!
//! Rooms: `source` (reading the files, a few open at a time), `job` (one job's state across
//! connections), `connection` (one connection: control events, chunk streams, cancel),
//! `error` (why a send, a read or a connection failed). This file: settings, reports and
//! the reconnect loop (`send_jobs`).

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;
use trackshift_crypto::Hash32;

use crate::budget::BudgetPermit;
pub use crate::budget::SharedBudget;
use crate::pool::BufferPool;
use crate::protocol::retry::RetryLimits;
use crate::protocol::session::{Action, ChunkOrder, JobEnd, Phase, Reconnect, SenderSession};
use crate::protocol::{
    self, ChunkHeader, ChunkRef, FileSpec, FrameDecoder, OpenJob, Secret, ServerFrame,
};
use crate::tls::ServerTrust;

/// Deliberate faults for tests of the recovery paths.
#[derive(Debug, Default)]
pub struct FaultInjection {
    /// Flip one bit of the first non-empty chunk after hashing it, once (the gateway must
    /// reject it and receive a good copy).
    pub corrupt_first_chunk: AtomicBool,
    /// Close the connection after this many chunks were sent, once (the sender must
    /// reconnect and resume).
    pub drop_connection_after: std::sync::Mutex<Option<u64>>,
    /// Run once after every source was listed and before any chunk is read (a test
    /// changes the source tree here).
    pub after_listing: std::sync::Mutex<Option<TestHook>>,
}

/// A test's action for [`FaultInjection::after_listing`].
pub struct TestHook(pub Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for TestHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestHook")
    }
}

/// The most a send waits, at its end, for its own endpoint's connections to finish
/// closing: enough for the close frames to leave and, on a LAN, for quinn's draining
/// period (three probe timeouts); not long enough to hold up a script's next command.
pub const CLOSE_FLUSH: Duration = Duration::from_millis(250);

/// How long a send keeps trying to reach a gateway it lost, by default.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(120);

/// Longest wait between two connection attempts.
pub const MAX_BACKOFF: Duration = crate::protocol::session::sender::MAX_RECONNECT_BACKOFF;

/// The wait before reconnect attempt `attempt` (1, 2, ...), with fresh jitter: see
/// [`crate::protocol::session::sender::reconnect_backoff`], which the send's session uses.
pub fn backoff(attempt: u32, remaining: Duration) -> Duration {
    crate::protocol::session::sender::reconnect_backoff(attempt, remaining, fastrand::f64())
}

/// Settings of one send.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Gateway address.
    pub gateway: SocketAddr,
    /// Name the gateway certificate must carry (`localhost` for generated ones).
    pub server_name: String,
    /// How the gateway's certificate is trusted.
    pub trust: ServerTrust,
    /// Tenant token.
    pub token: String,
    /// Destination URIs at the gateway (one or more; the data is sent once).
    pub destinations: Vec<String>,
    /// Chunk size (power of two).
    pub chunk_size: u64,
    /// Most chunk bytes read but not yet acknowledged.
    pub in_flight_bytes: u64,
    /// Only the X25519MLKEM768 key exchange.
    pub pq_only: bool,
    /// Job id (default: a new UUID).
    pub job_id: Option<String>,
    /// Correlation id recorded in logs and the receipt.
    pub correlation_id: Option<String>,
    /// How often to reconnect after a dropped connection before giving up.
    pub max_reconnects: u32,
    /// How long to keep trying to reach the gateway after the connection is lost (or the
    /// first connection fails) before giving up; restarts after every connection on which
    /// the gateway authenticated the sender. It also bounds how long a job the gateway
    /// failed transiently (say its ledger could not write) is opened again.
    pub retry_for: Duration,
    /// How long the connection may be silent before it counts as dead (QUIC idle timeout;
    /// keep-alives go out every [`crate::transport::KEEP_ALIVE`]).
    pub idle_timeout: Duration,
    /// Test faults.
    pub faults: Arc<FaultInjection>,
    /// A memory budget shared with other sends (bytes as permits); when set, this send's
    /// chunks wait for it as well as for `in_flight_bytes`.
    pub shared_budget: Option<SharedBudget>,
    /// Set to `true` to cancel: the gateway is told to drop the jobs' partial data and the
    /// send ends with [`SendError::Cancelled`].
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// Places, shared by many sends, for setting a connection up (its handshake, until
    /// every job on it is open at the gateway): bounds the setup work done at once, so
    /// that when many jobs start together the chunks already in flight are not starved
    /// of CPU by handshakes (the job runner's [`crate::jobs::runner::RunnerConfig::max_connecting`]).
    pub setup_slots: Option<Arc<Semaphore>>,
    /// Called with each chunk's latency (sent until acknowledged as durable).
    pub chunk_latency: Option<LatencyHook>,
    /// A bandwidth limit shared with other sends (for example one tenant's jobs).
    pub rate: Option<Arc<trackshift_connectors::ByteRate>>,
    /// A client endpoint (one UDP socket and its receive buffers) shared with other sends
    /// to the same gateway, for example every job of a job service; its trust, key
    /// exchange and idle timeout apply instead of this config's. Without it each send
    /// makes and closes its own.
    pub endpoint: Option<quinn::Endpoint>,
    /// How long to try to make the first connection (attempts and the waits between them)
    /// before giving up; `None`: as long as `retry_for` and `max_reconnects` allow.
    pub connect_timeout: Option<Duration>,
    /// Start the in-flight window at this many bytes and let it adapt, up to
    /// `in_flight_bytes` (`protocol::session::Window`): it grows while acknowledgements
    /// come back on time (a long link) and stays small when the gateway is the bottleneck.
    /// `None`: the window is `in_flight_bytes`, fixed.
    pub adaptive_window: Option<u64>,
    /// The congestion controller of the send's own endpoint (not of a shared `endpoint`).
    pub congestion: crate::transport::Congestion,
}

/// Receives per-chunk latencies (see [`SendConfig::chunk_latency`]).
#[derive(Clone)]
pub struct LatencyHook(pub Arc<dyn Fn(Duration) + Send + Sync>);

impl std::fmt::Debug for LatencyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LatencyHook")
    }
}

impl SendConfig {
    /// Defaults: 4 MiB chunks, 256 MiB in flight, 20 reconnects within
    /// [`DEFAULT_RETRY_FOR`], a dead gateway noticed after [`crate::transport::IDLE_TIMEOUT`].
    pub fn new(
        gateway: SocketAddr,
        trust: ServerTrust,
        token: impl Into<String>,
        destination: impl Into<String>,
    ) -> Self {
        Self {
            gateway,
            server_name: "localhost".into(),
            trust,
            token: token.into(),
            destinations: vec![destination.into()],
            chunk_size: trackshift_crypto::hash::DEFAULT_CHUNK_SIZE,
            in_flight_bytes: 256 << 20,
            pq_only: false,
            job_id: None,
            correlation_id: None,
            max_reconnects: 20,
            retry_for: DEFAULT_RETRY_FOR,
            idle_timeout: crate::transport::IDLE_TIMEOUT,
            faults: Arc::new(FaultInjection::default()),
            shared_budget: None,
            cancel: None,
            setup_slots: None,
            chunk_latency: None,
            rate: None,
            endpoint: None,
            connect_timeout: None,
            adaptive_window: None,
            congestion: crate::transport::Congestion::default(),
        }
    }
}

/// Progress of a send, reported as acknowledgements arrive.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Bytes the gateway acknowledged (verified and durable).
    pub acked_bytes: u64,
    /// Bytes in the job.
    pub total_bytes: u64,
    /// Time since the send started.
    pub elapsed: Duration,
}

/// Outcome of a completed send.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// The job id.
    pub job_id: String,
    /// The signed manifest (JSON).
    pub manifest: String,
    /// The signed receipt (JSON) of the first destination.
    pub receipt: String,
    /// The signed receipts (JSON), one per destination, in order (the first is `receipt`).
    pub receipts: Vec<String>,
    /// Bytes in the job.
    pub bytes: u64,
    /// Chunk streams sent (more than the chunk count when chunks were resent).
    pub chunks_sent: u64,
    /// Reconnections needed.
    pub reconnects: u32,
    /// Wall time.
    pub elapsed: Duration,
}

mod connection;
mod error;
mod job;
mod source;
#[cfg(test)]
mod tests;

use connection::*;
pub use error::{ConnectionLost, SendError, SourceReadError};
use job::*;
use source::*;
pub use source::{OPEN_FILES_PER_JOB, READS_IN_FLIGHT};

/// One job of a multi-job send: what to send and where.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// File or directory tree to send.
    pub path: PathBuf,
    /// Destination URIs at the gateway (one or more).
    pub destinations: Vec<String>,
    /// Job id (default: a new UUID). Reuse one to resume an interrupted job.
    pub job_id: Option<String>,
    /// Correlation id recorded in logs and the receipt.
    pub correlation_id: Option<String>,
    /// Data classification checked against the tenant's destination policy.
    pub classification: Option<String>,
    /// Fail-closed for this job (see [`OpenJob::strict`]).
    pub strict: Option<bool>,
    /// The W3C trace context to carry to the gateway (see [`OpenJob::traceparent`]).
    pub traceparent: Option<crate::trace::TraceParent>,
    /// Read the source only beneath a tenant's source directory (the job service, reading
    /// on a tenant's behalf): `path` is then only the name shown in the manifest, and every
    /// listing and read resolves `confined` beneath its root without following links
    /// (see [`crate::scan::list_confined`]).
    pub confined: Option<crate::scan::Confined>,
}

impl JobRequest {
    /// A job sending `path` to `destination` with a fresh job id.
    pub fn new(path: impl Into<PathBuf>, destination: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            destinations: vec![destination.into()],
            job_id: None,
            correlation_id: None,
            classification: None,
            strict: None,
            traceparent: None,
            confined: None,
        }
    }

    /// A job sending a tenant's confined source to `destination` with a fresh job id.
    pub fn confined(source: crate::scan::Confined, destination: impl Into<String>) -> Self {
        Self {
            confined: Some(source.clone()),
            ..Self::new(source.path(), destination)
        }
    }
}

/// Sends `path` (a file or a directory tree) to the gateway and returns the signed manifest
/// and receipt. `progress` is called as chunks are acknowledged.
pub async fn send_path(
    path: &Path,
    cfg: &SendConfig,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<SendReport, SendError> {
    let request = JobRequest {
        path: path.to_path_buf(),
        destinations: cfg.destinations.clone(),
        job_id: cfg.job_id.clone(),
        correlation_id: cfg.correlation_id.clone(),
        classification: None,
        strict: None,
        traceparent: None,
        confined: None,
    };
    send_jobs(vec![request], cfg, |_, p| progress(p))
        .await
        .pop()
        .expect("one result per job")
}

/// Sends several jobs over one QUIC connection (one control stream, chunks of all jobs
/// interleaved on parallel streams, one shared in-flight budget). Returns one result per
/// request, in order: a job that fails (unreadable source, refused destination) does not
/// stop the others. `progress` gets the job's index and its progress. After a dropped
/// connection every unfinished job resumes on the new one. `cfg.destination`, `cfg.job_id`
/// and `cfg.correlation_id` are ignored here; each request carries its own.
pub async fn send_jobs(
    requests: Vec<JobRequest>,
    cfg: &SendConfig,
    progress: impl Fn(usize, Progress) + Send + Sync,
) -> Vec<Result<SendReport, SendError>> {
    let started = Instant::now();
    let limits = RetryLimits {
        max_reopens: cfg.max_reconnects,
        retry_for: cfg.retry_for,
    };
    let mut s = Sending {
        session: SenderSession::new(limits, cfg.in_flight_bytes, Duration::ZERO),
        sources: Vec::new(),
        requests: Vec::new(),
        held: HashMap::new(),
        source_errors: HashMap::new(),
    };
    s.session.set_connect_timeout(cfg.connect_timeout);
    if let Some(initial) = cfg.adaptive_window {
        s.session.set_adaptive_window(initial);
    }
    // Per request: its session job, or why it could not be prepared.
    let mut slots: Vec<Result<usize, SendError>> = Vec::with_capacity(requests.len());
    for (r, req) in requests.iter().enumerate() {
        let prepared = prepare(req, cfg.chunk_size).and_then(|(open, source)| {
            let i = s.session.add_job(open)?;
            s.sources.push(Arc::new(source));
            s.requests.push(r);
            Ok(i)
        });
        slots.push(prepared);
    }
    let hook = cfg.faults.after_listing.lock().expect("fault lock").take();
    if let Some(TestHook(hook)) = hook {
        hook();
    }
    let finish = |s: &Sending, slots: Vec<Result<usize, SendError>>, last: Option<SendError>| {
        let lost = last.unwrap_or(SendError::Connection(ConnectionLost::EndedEarly));
        slots
            .into_iter()
            .map(|slot| {
                let i = slot?;
                let j = s.session.job(i);
                match j.end() {
                    Some(JobEnd::Done { manifest, receipts }) => Ok(SendReport {
                        job_id: j.open().job_id.clone(),
                        manifest: manifest.clone(),
                        receipt: receipts.first().cloned().unwrap_or_default(),
                        receipts: receipts.clone(),
                        bytes: j.total_bytes(),
                        chunks_sent: j.chunks_sent(),
                        reconnects: s.session.reconnects(),
                        elapsed: j.finished_at().unwrap_or_else(|| started.elapsed()),
                    }),
                    Some(JobEnd::Failed { reason, permanent }) => Err(SendError::JobFailed {
                        reason: reason.clone(),
                        permanent: *permanent,
                    }),
                    Some(JobEnd::Busy { reason }) => Err(SendError::Busy {
                        reason: reason.clone(),
                    }),
                    Some(JobEnd::SourceRead(_)) => Err(SendError::SourceRead(
                        (s.source_errors.get(&i).cloned())
                            .expect("a source failure is recorded before the session ends its job"),
                    )),
                    None => Err(lost.clone()),
                }
            })
            .collect::<Vec<_>>()
    };
    if s.session.is_settled() {
        return finish(&s, slots, None);
    }
    let bind: SocketAddr = if cfg.gateway.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let own_endpoint = cfg.endpoint.is_none();
    let made = match &cfg.endpoint {
        Some(shared) => Ok(shared.clone()),
        None => crate::transport::client_endpoint_tuned(
            bind,
            &cfg.trust,
            cfg.pq_only,
            cfg.idle_timeout,
            cfg.congestion,
        ),
    };
    let endpoint = match made {
        Ok(e) => e,
        Err(e) => {
            let lost = SendError::Connection(ConnectionLost::Endpoint(Arc::new(e)));
            return finish(&s, slots, Some(lost));
        }
    };
    let report = |i: usize, acked: u64, total: u64| {
        progress(
            i,
            Progress {
                acked_bytes: acked,
                total_bytes: total,
                elapsed: started.elapsed(),
            },
        )
    };
    let mut last = None;
    loop {
        let Err(e) = connection(&endpoint, cfg, &mut s, started, &report).await else {
            break;
        };
        let next = s
            .session
            .disconnected(e.retryable(), started.elapsed(), fastrand::f64());
        // What the lost connection's chunks held outside the session (a budget shared with
        // other sends) goes back now, not after the backoff.
        while let Some(action) = s.session.poll_action() {
            s.apply(&action, cfg, &report);
        }
        match next {
            Reconnect::After(wait) if !s.session.ever_connected() => {
                warn!(
                    "cannot reach the gateway at {} yet ({e}); trying again in {wait:.1?} (attempt {})",
                    cfg.gateway,
                    s.session.reconnects() + 1
                );
                tokio::time::sleep(wait).await;
            }
            Reconnect::After(wait) => {
                warn!(error = %e, attempt = s.session.reconnects(), backoff = ?wait, "connection lost; resuming");
                tokio::time::sleep(wait).await;
            }
            Reconnect::GiveUp { attempts, seconds } => {
                // Every unsettled job gets the error.
                last = Some(if e.retryable() {
                    SendError::GaveUp {
                        attempts,
                        seconds,
                        last: e.to_string(),
                    }
                } else {
                    e
                });
                break;
            }
        }
    }
    if own_endpoint {
        endpoint.close(0u32.into(), b"done");
        // Let the endpoint's driver send the closes before the process (and its runtime)
        // may end; otherwise the gateway learns of the end only at its idle timeout. (A
        // close made while the congestion window is full never leaves in quinn-proto
        // 0.11.19, quinn-rs/quinn#2785, fixed after it: the gateway then waits for its
        // idle timeout whatever this does.)
        let _ = tokio::time::timeout(CLOSE_FLUSH, endpoint.wait_idle()).await;
    }
    finish(&s, slots, last)
}
