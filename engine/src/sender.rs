//! The sending side: reads a file or directory in chunks, hashes each chunk, and streams
//! them to a gateway over QUIC, one unidirectional stream per chunk, many in flight, within a
//! memory budget. Chunks are read into `Bytes` and handed to QUIC without another copy.
//! When the connection drops it reconnects and sends only what the gateway does not hold.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, info, warn};
use trackshift_crypto::{ChunkLayout, Hash32};

use crate::budget::BudgetPermit;
pub use crate::budget::SharedBudget;
use crate::protocol::{
    self, ChunkHeader, ChunkRef, ClientFrame, FileSpec, FrameDecoder, OpenJob, ProtocolError,
    Secret, SenderJob, ServerFrame,
};
use crate::tls::ServerTrust;

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The source could not be read.
    #[error(transparent)]
    Source(#[from] crate::scan::ScanError),
    /// The gateway refused the connection (bad token, version).
    #[error("gateway refused the connection: {0}")]
    Refused(String),
    /// The gateway failed the job.
    #[error("job failed at the gateway: {reason}")]
    JobFailed {
        /// The gateway's reason.
        reason: String,
        /// True when retrying cannot help.
        permanent: bool,
    },
    /// The gateway had no room for the job (its tenant is at `max_concurrent_jobs`)
    /// however long the send waited: nothing is wrong with the job; try again later.
    #[error("the gateway is busy with this tenant's other jobs: {reason}")]
    Busy {
        /// The gateway's reason (names the quota).
        reason: String,
    },
    /// The protocol was broken (by either side).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Connecting or the connection failed.
    #[error("connection: {0}")]
    Connection(String),
    /// Endpoint set-up.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// A source file could not be read during the send (removed, truncated, I/O error).
    #[error("reading the source: {0}")]
    SourceRead(String),
    /// The send was cancelled (see [`SendConfig::cancel`]).
    #[error("cancelled")]
    Cancelled,
    /// Gave up after repeated connection failures.
    #[error(
        "gave up after {attempts} connection attempts in {seconds} s without reaching the gateway; last error: {last}"
    )]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Seconds since the gateway was last reachable.
        seconds: u64,
        /// The last error.
        last: String,
    },
}

impl SendError {
    fn retryable(&self) -> bool {
        match self {
            SendError::Connection(_) => true,
            SendError::JobFailed { permanent, .. } => !permanent,
            _ => false,
        }
    }
}

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

/// How long a send keeps trying to reach a gateway it lost, by default.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(120);

/// Longest wait between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait before reconnect attempt `attempt` (1, 2, ...): 200 ms doubling up to
/// [`MAX_BACKOFF`], with jitter (see [`crate::jobs::model::backoff`]) so that many senders
/// cut off together do not come back in step; never past `remaining`.
pub fn backoff(attempt: u32, remaining: Duration) -> Duration {
    crate::jobs::model::backoff(
        attempt,
        Duration::from_millis(100),
        MAX_BACKOFF,
        fastrand::f64(),
    )
    .min(remaining)
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

struct Source {
    /// Each file's path (for messages) and spec, in manifest order.
    files: Vec<(PathBuf, FileSpec)>,
    reader: Reader,
}

/// How a job's files are opened for reading.
enum Reader {
    /// By path (the sender's own files), through a few open files kept for reuse.
    Plain(OpenFiles),
    /// Beneath a tenant's source directory, opened again for each chunk and closed after it.
    Confined(crate::scan::ConfinedListing),
}

/// Most source files a job keeps open between reads. Chunks go out in file order, so
/// reads of one file follow each other; any other read opens its file again.
pub const OPEN_FILES_PER_JOB: usize = 4;

/// Most chunk reads of one send at once (each holds its file open while it reads).
pub const READS_IN_FLIGHT: usize = 16;

/// What identifies the content of a source file: a reopened file must show the same, or
/// it changed while it was being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// A job's plain source files: the identity each had when first opened, and a small
/// most-recently-used set of open ones ([`OPEN_FILES_PER_JOB`]), so a job holds a few
/// descriptors however many files it has.
struct OpenFiles {
    identities: Vec<std::sync::OnceLock<FileIdentity>>,
    /// Most recently used last.
    open: std::sync::Mutex<Vec<(u32, Arc<File>)>>,
}

impl OpenFiles {
    fn new(files: usize) -> Self {
        Self {
            identities: (0..files).map(|_| std::sync::OnceLock::new()).collect(),
            open: std::sync::Mutex::new(Vec::with_capacity(OPEN_FILES_PER_JOB + 1)),
        }
    }

    /// File `i` at `path`, open: kept from an earlier read, or opened now and checked to be
    /// the file first opened (device, inode, size and modification time).
    fn get(&self, i: u32, path: &Path) -> Result<Arc<File>, String> {
        {
            let mut open = self.open.lock().expect("open files lock");
            if let Some(k) = open.iter().position(|(f, _)| *f == i) {
                let entry = open.remove(k);
                let file = entry.1.clone();
                open.push(entry);
                return Ok(file);
            }
        }
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let seen = FileIdentity::of(&meta);
        let first = *self.identities[i as usize].get_or_init(|| seen);
        if first != seen {
            return Err(format!(
                "{}: the file changed while it was being sent (it is not the file first read: device, inode, size or modification time differ); send it again",
                path.display()
            ));
        }
        let file = Arc::new(file);
        let mut open = self.open.lock().expect("open files lock");
        if !open.iter().any(|(f, _)| *f == i) {
            open.push((i, file.clone()));
            if open.len() > OPEN_FILES_PER_JOB {
                open.remove(0);
            }
        }
        Ok(file)
    }

    /// Closes every file kept open (reads in progress keep theirs until they end).
    fn close_all(&self) {
        self.open.lock().expect("open files lock").clear();
    }
}

impl Source {
    fn file(&self, i: u32) -> Result<Arc<File>, String> {
        match &self.reader {
            Reader::Plain(files) => files.get(i, &self.files[i as usize].0),
            Reader::Confined(listing) => listing
                .open(i as usize)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
        }
    }

    /// Releases the descriptors the source keeps between reads (the job has ended).
    fn close(&self) {
        if let Reader::Plain(files) = &self.reader {
            files.close_all();
        }
    }
}

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
    let mut jobs: Vec<JobState> = Vec::with_capacity(requests.len());
    let mut results: Vec<Option<Result<SendReport, SendError>>> = Vec::new();
    for req in &requests {
        match JobState::prepare(req, cfg.chunk_size) {
            Ok(j) => {
                jobs.push(j);
                results.push(None);
            }
            Err(e) => {
                // Placeholder state so indices line up; it is never opened.
                jobs.push(JobState::failed());
                results.push(Some(Err(e)));
            }
        }
    }
    for (job, res) in jobs.iter_mut().zip(&results) {
        job.done = res.is_some();
    }
    let hook = cfg.faults.after_listing.lock().expect("fault lock").take();
    if let Some(TestHook(hook)) = hook {
        hook();
    }
    let finish = |jobs: Vec<JobState>,
                  mut results: Vec<Option<Result<SendReport, SendError>>>,
                  reconnects: u32| {
        jobs.into_iter()
            .zip(results.iter_mut())
            .map(|(job, slot)| {
                slot.take().unwrap_or_else(|| match job.outcome {
                    Some(Ok((manifest, receipts))) => Ok(SendReport {
                        job_id: job.open.job_id.clone(),
                        manifest,
                        receipt: receipts.first().cloned().unwrap_or_default(),
                        receipts,
                        bytes: job.total_bytes,
                        chunks_sent: job.chunks_sent,
                        reconnects,
                        elapsed: job.finished.unwrap_or_else(|| started.elapsed()),
                    }),
                    Some(Err(e)) => Err(e),
                    None => Err(SendError::Connection("the send ended early".into())),
                })
            })
            .collect::<Vec<_>>()
    };
    if jobs.iter().all(|j| j.done) {
        return finish(jobs, results, 0);
    }
    let bind: SocketAddr = if cfg.gateway.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let own_endpoint = cfg.endpoint.is_none();
    let made = match &cfg.endpoint {
        Some(shared) => Ok(shared.clone()),
        None => {
            crate::transport::client_endpoint_with(bind, &cfg.trust, cfg.pq_only, cfg.idle_timeout)
        }
    };
    let endpoint = match made {
        Ok(e) => e,
        Err(e) => {
            let msg = e.to_string();
            for (job, slot) in jobs.iter().zip(results.iter_mut()) {
                if !job.done {
                    *slot = Some(Err(SendError::Connection(format!(
                        "setting up the endpoint: {msg}"
                    ))));
                }
            }
            return finish(jobs, results, 0);
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
    let mut reconnects = 0u32;
    // Since when the gateway has not been reachable (reset by every authenticated connection).
    let mut outage = Instant::now();
    loop {
        let mut welcomed = false;
        let outcome = connection(&endpoint, cfg, &mut jobs, started, &report, &mut welcomed).await;
        if welcomed {
            outage = Instant::now();
        }
        let remaining = cfg.retry_for.saturating_sub(outage.elapsed());
        match outcome {
            Ok(()) => break,
            Err(e) if e.retryable() && reconnects < cfg.max_reconnects && !remaining.is_zero() => {
                reconnects += 1;
                let wait = backoff(reconnects, remaining);
                warn!(error = %e, attempt = reconnects, backoff = ?wait, "connection lost; resuming");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let e = if e.retryable() {
                    SendError::GaveUp {
                        attempts: reconnects + 1,
                        seconds: outage.elapsed().as_secs(),
                        last: e.to_string(),
                    }
                } else {
                    e
                };
                // Every unfinished job gets the error: the first one the error itself, the
                // others a copy of its text (refusals and cancellations keep their kind).
                let refused = match &e {
                    SendError::Refused(r) => Some(r.clone()),
                    _ => None,
                };
                let cancelled_all = matches!(e, SendError::Cancelled);
                let text = e.to_string();
                let mut original = Some(e);
                for job in jobs.iter_mut().filter(|j| j.outcome.is_none() && !j.done) {
                    let err = original.take().unwrap_or_else(|| match &refused {
                        Some(r) => SendError::Refused(r.clone()),
                        None if cancelled_all => SendError::Cancelled,
                        None => SendError::Connection(text.clone()),
                    });
                    job.outcome = Some(Err(err));
                }
                break;
            }
        }
    }
    if own_endpoint {
        endpoint.close(0u32.into(), b"done");
    }
    finish(jobs, results, reconnects)
}

/// A chunk on its way: the budget it holds (here and in the shared budget) and its start.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    shared: Option<BudgetPermit>,
    sent: Instant,
}

/// One job's sending state across connections.
struct JobState {
    open: OpenJob,
    job: Option<SenderJob>,
    source: Arc<Source>,
    total_bytes: u64,
    /// Handle on the current connection, once the gateway answered `JobReady`.
    handle: Option<u32>,
    /// `OpenJob` sent on the current connection and not answered yet.
    awaiting_ready: bool,
    /// The next chunk to send, taken from `job` and waiting for budget.
    next: Option<ChunkRef>,
    /// Chunks sent and not yet acknowledged: their budget and when they were sent.
    in_flight: HashMap<ChunkRef, InFlight>,
    finish_sent: bool,
    chunks_sent: u64,
    /// Transient gateway failures of this job survived (the job is reopened).
    reopens: u32,
    /// When the first of them came (time since the send started).
    failing_since: Option<Duration>,
    /// Times the gateway had no room for the job while none of this send's other jobs
    /// was open (see `ServerFrame::Busy`).
    busy_waits: u32,
    /// Set when the job can no longer change (success or final error).
    done: bool,
    outcome: Option<Result<(String, Vec<String>), SendError>>,
    finished: Option<Duration>,
}

impl JobState {
    fn prepare(req: &JobRequest, chunk_size: u64) -> Result<Self, SendError> {
        let (listed, reader, source_uri) = match &req.confined {
            Some(confined) => {
                let listing = crate::scan::list_confined(confined)?;
                let listed: Vec<_> = listing.files().map(|(p, f)| (p, f.clone())).collect();
                let uri = format!("file://{}", confined.path().display());
                (listed, Reader::Confined(listing), uri)
            }
            None => {
                let listed = crate::scan::list_files(&req.path)?;
                let uri = format!(
                    "file://{}",
                    std::fs::canonicalize(&req.path)
                        .map_err(|e| crate::scan::ScanError::Io {
                            path: req.path.clone(),
                            source: e
                        })?
                        .display()
                );
                let files = OpenFiles::new(listed.len());
                (listed, Reader::Plain(files), uri)
            }
        };
        let open = OpenJob {
            job_id: req
                .job_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            destinations: req.destinations.clone(),
            chunk_size,
            source: source_uri,
            files: listed.iter().map(|(_, spec)| spec.clone()).collect(),
            correlation_id: req.correlation_id.clone(),
            classification: req.classification.clone(),
            strict: req.strict,
        };
        let job = SenderJob::new(&open)?;
        Ok(Self {
            total_bytes: open.files.iter().map(|f| f.size).sum(),
            source: Arc::new(Source {
                files: listed,
                reader,
            }),
            open,
            job: Some(job),
            handle: None,
            next: None,
            in_flight: HashMap::new(),
            finish_sent: false,
            chunks_sent: 0,
            reopens: 0,
            busy_waits: 0,
            awaiting_ready: false,
            failing_since: None,
            done: false,
            outcome: None,
            finished: None,
        })
    }

    fn failed() -> Self {
        Self {
            open: OpenJob {
                job_id: String::new(),
                destinations: Vec::new(),
                chunk_size: 0,
                source: String::new(),
                files: Vec::new(),
                correlation_id: None,
                classification: None,
                strict: None,
            },
            job: None,
            source: Arc::new(Source {
                files: Vec::new(),
                reader: Reader::Plain(OpenFiles::new(0)),
            }),
            total_bytes: 0,
            handle: None,
            next: None,
            in_flight: HashMap::new(),
            finish_sent: false,
            chunks_sent: 0,
            reopens: 0,
            busy_waits: 0,
            awaiting_ready: false,
            failing_since: None,
            done: true,
            outcome: None,
            finished: None,
        }
    }

    fn sender(&mut self) -> &mut SenderJob {
        self.job.as_mut().expect("only prepared jobs are driven")
    }

    /// Forgets per-connection state (handles, in-flight chunks).
    fn detach(&mut self) {
        self.handle = None;
        self.next = None;
        self.in_flight.clear();
        self.finish_sent = false;
    }

    fn settle(&mut self, outcome: Result<(String, Vec<String>), SendError>, at: Duration) {
        self.detach();
        self.source.close();
        self.done = true;
        self.outcome = Some(outcome);
        self.finished = Some(at);
    }
}

enum Event {
    Frame(ServerFrame),
    ControlClosed(String),
    Sent(usize, ChunkRef, Hash32),
    /// A chunk stream failed: (job, handle it was sent under, error).
    SendFailed(usize, u32, String),
    SourceFailed(usize, String),
    Reopen(usize),
}

/// Drives every unfinished job over one connection until all are settled (`Ok`) or the
/// connection fails (`Err`, the caller reconnects).
async fn connection(
    endpoint: &quinn::Endpoint,
    cfg: &SendConfig,
    jobs: &mut [JobState],
    started: Instant,
    report: &(impl Fn(usize, u64, u64) + Send + Sync),
    welcomed: &mut bool,
) -> Result<(), SendError> {
    for j in jobs.iter_mut() {
        j.detach();
    }
    // Held from the handshake until every job is open at the gateway (or settled).
    let mut setting_up = match &cfg.setup_slots {
        Some(slots) => Some(slots.clone().acquire_owned().await.expect("never closed")),
        None => None,
    };
    let conn = crate::transport::connect(endpoint, cfg.gateway, &cfg.server_name)
        .await
        .map_err(|e| SendError::Connection(e.to_string()))?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| SendError::Connection(e.to_string()))?;
    let conn_err = |e: quinn::WriteError| SendError::Connection(e.to_string());
    let hello = ClientFrame::Hello {
        version: protocol::VERSION,
        token: Secret(cfg.token.clone()),
    };
    send.write_all(&protocol::encode_frame(&hello))
        .await
        .map_err(conn_err)?;
    for j in jobs.iter_mut().filter(|j| !j.done) {
        send.write_all(&protocol::encode_frame(&ClientFrame::OpenJob(
            j.open.clone(),
        )))
        .await
        .map_err(conn_err)?;
        j.awaiting_ready = true;
    }

    let (events, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let reader = tokio::spawn(read_control(recv, events.clone()));
    let _reader_guard = AbortOnDrop(reader);

    let budget_max = u32::try_from(cfg.in_flight_bytes)
        .unwrap_or(u32::MAX)
        .max(1);
    let budget = Arc::new(Semaphore::new(budget_max as usize));
    let reads = Arc::new(Semaphore::new(READS_IN_FLIGHT));
    let mut by_handle: HashMap<u32, usize> = HashMap::new();
    let by_id: HashMap<String, usize> = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| !j.done)
        .map(|(i, j)| (j.open.job_id.clone(), i))
        .collect();
    let mut cancel = cfg.cancel.clone();
    // Round-robin cursor: which job gets the next budget grant.
    let mut cursor = 0usize;
    let mut chunks_this_conn = 0u64;

    loop {
        if jobs.iter().all(|j| j.done) {
            let _ = send.finish();
            conn.close(0u32.into(), b"done");
            return Ok(());
        }
        if setting_up.is_some() && !jobs.iter().any(|j| !j.done && j.awaiting_ready) {
            setting_up = None;
        }
        for j in jobs.iter_mut().filter(|j| !j.done) {
            let Some(h) = j.handle else { continue };
            if j.next.is_none() {
                j.next = j.sender().next_chunk();
            }
            if j.sender().is_complete() && !j.finish_sent {
                let frame = ClientFrame::FinishJob {
                    handle: h,
                    file_hashes: j.sender().file_hashes()?,
                };
                send.write_all(&protocol::encode_frame(&frame))
                    .await
                    .map_err(conn_err)?;
                j.finish_sent = true;
            }
        }
        // The next job (round robin from the cursor) with a chunk ready to go.
        let n = jobs.len();
        let pick = (0..n)
            .map(|k| (cursor + k) % n)
            .find(|&i| !jobs[i].done && jobs[i].handle.is_some() && jobs[i].next.is_some());
        let want = pick.map(|i| {
            let j = &mut jobs[i];
            let c = j.next.expect("picked jobs have a next chunk");
            let len = j.sender().layout(c.file).chunk_len(c.index);
            u32::try_from(len).unwrap_or(u32::MAX).clamp(1, budget_max)
        });
        tokio::select! {
            (permit, shared) = async {
                let n = want.unwrap_or(1);
                let own = budget.clone().acquire_many_owned(n).await;
                // The rate limit before the shared budget: a throttled job does not hold
                // memory other jobs could use.
                if let Some(rate) = &cfg.rate {
                    rate.take(u64::from(n)).await;
                }
                let shared = match &cfg.shared_budget {
                    Some(b) => Some(b.acquire(n).await),
                    None => None,
                };
                (own, shared)
            }, if want.is_some() => {
                let permit = permit.expect("budget is never closed");
                let i = pick.expect("want implies pick");
                cursor = (i + 1) % n;
                let j = &mut jobs[i];
                let c = j.next.take().expect("picked jobs have a next chunk");
                j.in_flight.insert(c, InFlight { _permit: permit, shared, sent: Instant::now() });
                j.chunks_sent += 1;
                chunks_this_conn += 1;
                let layout = *j.sender().layout(c.file);
                let task = ChunkTask { job: i, handle: j.handle.expect("open"), chunk: c, layout };
                spawn_chunk(conn.clone(), j.source.clone(), task, cfg.faults.clone(), events.clone(), reads.clone());
                let drop_now = {
                    let mut d = cfg.faults.drop_connection_after.lock().expect("fault lock");
                    match *d {
                        Some(n) if chunks_this_conn >= n => { *d = None; true }
                        _ => false,
                    }
                };
                if drop_now {
                    conn.close(9u32.into(), b"fault injection: dropped connection");
                }
            }
            () = cancelled(&mut cancel) => {
                for j in jobs.iter().filter(|j| !j.done) {
                    if let Some(handle) = j.handle {
                        let frame = ClientFrame::CancelJob { handle, reason: "cancelled by the sender".into() };
                        let _ = send.write_all(&protocol::encode_frame(&frame)).await;
                    }
                }
                // A job whose open is not answered yet may be made at the gateway all the
                // same: each one that turns ready in the next moments is cancelled too, so
                // that the gateway removes what it made.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                while jobs.iter().any(|j| !j.done && j.awaiting_ready) {
                    let Ok(Some(ev)) = tokio::time::timeout_at(deadline, ev_rx.recv()).await else {
                        break;
                    };
                    let job_id = match ev {
                        Event::Frame(ServerFrame::JobReady { job_id, handle, .. }) => {
                            let frame = ClientFrame::CancelJob { handle, reason: "cancelled by the sender".into() };
                            let _ = send.write_all(&protocol::encode_frame(&frame)).await;
                            job_id
                        }
                        Event::Frame(ServerFrame::JobFailed { job_id, .. } | ServerFrame::Busy { job_id, .. }) => job_id,
                        Event::ControlClosed(_) => break,
                        _ => continue,
                    };
                    if let Some(&i) = by_id.get(&job_id) {
                        jobs[i].awaiting_ready = false;
                    }
                }
                let _ = send.finish();
                // Give the gateway a moment to read the cancellations before closing.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                conn.close(0u32.into(), b"cancelled");
                return Err(SendError::Cancelled);
            }
            ev = ev_rx.recv() => {
                let at = started.elapsed();
                match ev.expect("the connection task holds a sender") {
                    Event::Frame(ServerFrame::Welcome { tenant, .. }) => {
                        *welcomed = true;
                        debug!(%tenant, "authenticated");
                    }
                    Event::Frame(ServerFrame::Refused { reason }) => return Err(SendError::Refused(reason)),
                    Event::Frame(ServerFrame::JobReady { job_id, handle: h, held }) => {
                        let Some(&i) = by_id.get(&job_id) else {
                            return Err(ProtocolError::Unexpected(format!("JobReady for a job never opened: {job_id}")).into());
                        };
                        let j = &mut jobs[i];
                        j.awaiting_ready = false;
                        if j.done {
                            continue;
                        }
                        j.sender().on_ready(&held)?;
                        j.detach();
                        j.handle = Some(h);
                        by_handle.insert(h, i);
                        let (acked, bytes, total) = j.sender().progress();
                        info!(job = %job_id, held = acked, total, "job ready");
                        report(i, bytes, j.total_bytes);
                    }
                    Event::Frame(ServerFrame::Acks { handle: h, chunks }) => {
                        let i = job_for(&by_handle, h)?;
                        let j = &mut jobs[i];
                        if j.done {
                            continue;
                        }
                        for c in chunks {
                            j.sender().on_ack(c)?;
                            let Some(f) = j.in_flight.remove(&c) else { continue };
                            let latency = f.sent.elapsed();
                            if let Some(p) = &f.shared {
                                p.observe(latency);
                            }
                            if let Some(hook) = &cfg.chunk_latency {
                                (hook.0)(latency);
                            }
                        }
                        let bytes = j.sender().progress().1;
                        report(i, bytes, j.total_bytes);
                    }
                    Event::Frame(ServerFrame::Reject { handle: h, chunk, reason }) => {
                        let i = job_for(&by_handle, h)?;
                        let j = &mut jobs[i];
                        if j.done {
                            continue;
                        }
                        warn!(job = %j.open.job_id, ?chunk, %reason, "chunk rejected; sending it again");
                        j.in_flight.remove(&chunk);
                        if j.next == Some(chunk) {
                            j.next = None;
                        }
                        j.sender().on_reject(chunk)?;
                    }
                    Event::Frame(ServerFrame::JobDone { handle: h, manifest, receipts }) => {
                        let i = job_for(&by_handle, h)?;
                        if jobs[i].done {
                            continue;
                        }
                        info!(job = %jobs[i].open.job_id, "job done");
                        if receipts.len() != jobs[i].open.destinations.len() {
                            return Err(ProtocolError::Unexpected(format!(
                                "{} receipts for {} destinations",
                                receipts.len(),
                                jobs[i].open.destinations.len()
                            ))
                            .into());
                        }
                        jobs[i].settle(Ok((manifest, receipts)), at);
                    }
                    Event::Frame(ServerFrame::JobFailed { handle: h, job_id, reason, permanent }) => {
                        let i = match by_handle.get(&h) {
                            Some(&i) => i,
                            None => *by_id.get(&job_id).ok_or_else(|| {
                                ProtocolError::Unexpected(format!("JobFailed for a job never opened: {job_id}"))
                            })?,
                        };
                        let j = &mut jobs[i];
                        if h == u32::MAX {
                            j.awaiting_ready = false;
                        }
                        if j.done || j.handle.is_none() && h != u32::MAX {
                            continue; // already settled, or a repeat for a job being reopened
                        }
                        let since = *j.failing_since.get_or_insert(at);
                        if permanent || j.reopens >= cfg.max_reconnects || at.saturating_sub(since) >= cfg.retry_for {
                            warn!(job = %job_id, %reason, permanent, "job failed");
                            j.settle(Err(SendError::JobFailed { reason, permanent }), at);
                        } else {
                            j.reopens += 1;
                            j.detach();
                            let backoff = Duration::from_millis((100u64 << j.reopens.min(6)).min(5_000));
                            warn!(job = %job_id, %reason, attempt = j.reopens, ?backoff, "job failed at the gateway; reopening");
                            let events = events.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(backoff).await;
                                let _ = events.send(Event::Reopen(i));
                            });
                        }
                    }
                    Event::Frame(ServerFrame::Busy { job_id, reason, retry_after_ms }) => {
                        let Some(&i) = by_id.get(&job_id) else {
                            return Err(ProtocolError::Unexpected(format!("Busy for a job never opened: {job_id}")).into());
                        };
                        jobs[i].awaiting_ready = false;
                        if jobs[i].done {
                            continue;
                        }
                        // While another job of this send is open a slot will come free: the
                        // job waits for it as long as it takes. Otherwise it waits up to
                        // `max_reconnects` times.
                        let sibling_open = jobs
                            .iter()
                            .enumerate()
                            .any(|(k, j)| k != i && !j.done && j.handle.is_some());
                        let j = &mut jobs[i];
                        if !sibling_open {
                            j.busy_waits += 1;
                        }
                        if j.busy_waits > cfg.max_reconnects {
                            warn!(job = %job_id, %reason, "gateway busy; giving up for now");
                            j.settle(Err(SendError::Busy { reason }), at);
                        } else {
                            j.detach();
                            let backoff = Duration::from_millis(
                                (u64::from(retry_after_ms).max(50) << j.busy_waits.saturating_sub(1).min(4))
                                    .min(5_000),
                            );
                            info!(job = %job_id, %reason, ?backoff, "gateway busy; opening the job again later");
                            let events = events.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(backoff).await;
                                let _ = events.send(Event::Reopen(i));
                            });
                        }
                    }
                    Event::Reopen(i) => {
                        if !jobs[i].done {
                            send.write_all(&protocol::encode_frame(&ClientFrame::OpenJob(jobs[i].open.clone())))
                                .await
                                .map_err(conn_err)?;
                            jobs[i].awaiting_ready = true;
                        }
                    }
                    Event::Sent(i, c, h) => {
                        if !jobs[i].done {
                            jobs[i].sender().set_hash(c, h);
                        }
                    }
                    // A stream of a job that has since settled or been reopened: stale.
                    Event::SendFailed(i, h, _) if jobs[i].done || jobs[i].handle != Some(h) => {}
                    Event::SendFailed(_, _, e) | Event::ControlClosed(e) => return Err(SendError::Connection(e)),
                    Event::SourceFailed(i, e) => {
                        let j = &mut jobs[i];
                        if j.done {
                            continue;
                        }
                        let _ = send.write_all(&protocol::encode_frame(&ClientFrame::CancelJob {
                            handle: j.handle.unwrap_or(u32::MAX),
                            reason: "source unreadable".into(),
                        })).await;
                        warn!(job = %j.open.job_id, error = %e, "source unreadable; job cancelled");
                        j.settle(Err(SendError::SourceRead(e)), at);
                    }
                }
            }
        }
    }
}

/// Resolves when `cancel` turns true; never without a cancel signal.
async fn cancelled(cancel: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = cancel
        && rx.wait_for(|c| *c).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

fn job_for(by_handle: &HashMap<u32, usize>, handle: u32) -> Result<usize, SendError> {
    by_handle.get(&handle).copied().ok_or_else(|| {
        ProtocolError::Unexpected(format!("frame for unknown job handle {handle}")).into()
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_control(mut recv: quinn::RecvStream, events: mpsc::UnboundedSender<Event>) {
    let mut dec = FrameDecoder::<ServerFrame>::new(protocol::MAX_CONTROL_FRAME);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    if events.send(Event::Frame(f)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send(Event::ControlClosed(e.to_string()));
                    return;
                }
            }
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => dec.push(&buf[..n]),
            Ok(None) => {
                let _ = events.send(Event::ControlClosed(
                    "gateway closed the control stream".into(),
                ));
                return;
            }
            Err(e) => {
                let _ = events.send(Event::ControlClosed(e.to_string()));
                return;
            }
        }
    }
}

/// Which chunk of which job a chunk stream carries.
#[derive(Clone, Copy)]
struct ChunkTask {
    /// Index of the job in the send.
    job: usize,
    /// The job's handle on this connection.
    handle: u32,
    chunk: ChunkRef,
    layout: ChunkLayout,
}

fn spawn_chunk(
    conn: quinn::Connection,
    source: Arc<Source>,
    task: ChunkTask,
    faults: Arc<FaultInjection>,
    events: mpsc::UnboundedSender<Event>,
    reads: Arc<Semaphore>,
) {
    let ChunkTask {
        job,
        handle,
        chunk: c,
        layout,
    } = task;
    tokio::spawn(async move {
        let result = async {
            let reading = reads.acquire_owned().await.expect("never closed");
            let read = tokio::task::spawn_blocking(move || -> Result<(Bytes, Hash32), String> {
                let _reading = reading;
                let file = source.file(c.file)?;
                let mut buf = vec![0u8; layout.chunk_len(c.index) as usize];
                file.read_exact_at(&mut buf, layout.offset(c.index))
                    .map_err(|e| {
                        format!(
                            "{}: {e} (did the file change?)",
                            source.files[c.file as usize].0.display()
                        )
                    })?;
                let hash = layout.chunk_hash(c.index, &buf);
                if !buf.is_empty() && faults.corrupt_first_chunk.swap(false, Ordering::SeqCst) {
                    buf[0] ^= 0x01;
                }
                Ok((Bytes::from(buf), hash))
            })
            .await
            .map_err(|e| e.to_string())?;
            let (data, hash) = match read {
                Ok(r) => r,
                Err(e) => {
                    let _ = events.send(Event::SourceFailed(job, e));
                    return Ok(());
                }
            };
            // Report the hash before the data leaves, so it is recorded before any ack.
            let _ = events.send(Event::Sent(job, c, hash));
            let header = ChunkHeader {
                handle,
                chunk: c,
                len: data.len() as u64,
                hash,
            };
            let prefix = protocol::encode_chunk_header(&header);
            let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
            stream.write_all(&prefix).await.map_err(|e| e.to_string())?;
            stream.write_chunk(data).await.map_err(|e| e.to_string())?;
            stream.finish().map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = result {
            let _ = events.send(Event::SendFailed(job, handle, e));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_is_bounded_and_never_outlasts_the_budget() {
        let plenty = Duration::from_secs(3600);
        for attempt in 1..100 {
            let b = backoff(attempt, plenty);
            assert!(
                b <= MAX_BACKOFF && b >= Duration::from_millis(100),
                "{attempt}: {b:?}"
            );
        }
        assert!(backoff(30, plenty) >= MAX_BACKOFF / 2);
        assert!(backoff(10, Duration::from_millis(30)) <= Duration::from_millis(30));
        assert_eq!(backoff(3, Duration::ZERO), Duration::ZERO);
    }

    fn tree(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = (0..n)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, format!("file {i}")).unwrap();
                p
            })
            .collect();
        (dir, paths)
    }

    #[test]
    fn reading_many_files_keeps_only_a_few_open() {
        let (_dir, paths) = tree(3 * OPEN_FILES_PER_JOB);
        let files = OpenFiles::new(paths.len());
        for (i, p) in paths.iter().enumerate() {
            let f = files.get(i as u32, p).unwrap();
            let want = format!("file {i}");
            let mut buf = vec![0u8; want.len()];
            f.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(buf, want.as_bytes());
            assert!(files.open.lock().unwrap().len() <= OPEN_FILES_PER_JOB);
        }
        // The most recent ones are kept; an evicted one opens again (the same file).
        let kept: Vec<u32> = files.open.lock().unwrap().iter().map(|(i, _)| *i).collect();
        let last = paths.len() as u32 - 1;
        assert!(kept.contains(&last), "{kept:?}");
        files.get(0, &paths[0]).unwrap();
        files.close_all();
        assert!(files.open.lock().unwrap().is_empty());
    }

    #[test]
    fn a_file_replaced_between_reads_is_refused_not_read() {
        let (dir, paths) = tree(OPEN_FILES_PER_JOB + 2);
        let files = OpenFiles::new(paths.len());
        files.get(0, &paths[0]).unwrap();
        // Push file 0 out of the open set, then swap another file in under its name.
        for (i, p) in paths.iter().enumerate().skip(1) {
            files.get(i as u32, p).unwrap();
        }
        assert!(!files.open.lock().unwrap().iter().any(|(i, _)| *i == 0));
        let other = dir.path().join("other");
        std::fs::write(&other, "file 0").unwrap();
        std::fs::rename(&other, &paths[0]).unwrap();
        let err = files.get(0, &paths[0]).unwrap_err();
        assert!(err.contains("changed while it was being sent"), "{err}");
    }

    #[test]
    fn a_file_grown_between_reads_is_refused_not_read() {
        let (_dir, paths) = tree(OPEN_FILES_PER_JOB + 2);
        let files = OpenFiles::new(paths.len());
        files.get(0, &paths[0]).unwrap();
        for (i, p) in paths.iter().enumerate().skip(1) {
            files.get(i as u32, p).unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&paths[0])
            .unwrap();
        std::io::Write::write_all(&mut f, b" and more").unwrap();
        let err = files.get(0, &paths[0]).unwrap_err();
        assert!(err.contains("changed while it was being sent"), "{err}");
    }
}
