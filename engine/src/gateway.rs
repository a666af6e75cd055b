//! The receiving gateway: accepts QUIC connections, authenticates tenants, receives and
//! verifies chunks, writes them through connectors, makes them durable before
//! acknowledging (group commit), and on completion signs the manifest and the receipt.
//!
//! Data directory layout:
//!
//! ```text
//! DATA/keys/                       signing keys (crypto::FileKeyStore)
//! DATA/tls/                        gateway certificate and key
//! DATA/tenants.json                tenants and SHA-256 digests of their tokens
//! DATA/jobs/<tenant>/<job id>/
//!     job.json                     the job as opened (OpenJob)
//!     chunks.log                   durable chunks: append-only records (protocol::encode_log_record)
//!     manifest.json, receipt.json  once complete
//! ```

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut as _, BytesMut};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};
use trackshift_connectors::{Connector, ObjectSpec, ObjectWriter, VerifyMode};
use trackshift_crypto::{
    Confirmation, DeliveryStatus, FileKeyStore, Hash32, KeyBackend as _, LiveKeyStore, Manifest,
    PublicKeyring, Purpose, Receipt, Signable as _, Timestamp,
};

use crate::protocol::{
    self, ChunkRef, ClientFrame, Disposition, FrameDecoder, OpenJob, ProtocolError, ReceiverJob,
    ServerFrame,
};
use crate::tenants::LiveTenants;
use crate::tls::GatewayIdentity;

/// Why the gateway could not start or a job failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// File-system problem in the data directory.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Keys or signing.
    #[error(transparent)]
    Crypto(#[from] trackshift_crypto::CryptoError),
    /// The ledger refused or failed an operation.
    #[error(transparent)]
    Ledger(#[from] trackshift_ledger::LedgerError),
    /// The peer broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A destination failed.
    #[error("destination: {0}")]
    Connector(#[from] trackshift_connectors::ConnectorError),
    /// TLS identity or endpoint set-up.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// Tenant configuration problem.
    #[error("tenant configuration: {0}")]
    Tenants(#[from] crate::tenants::TenantError),
    /// A job was refused or failed (message is safe to send to the tenant).
    #[error("{0}")]
    Job(String),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> GatewayError + 'a {
    move |source| GatewayError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Gateway settings.
#[derive(Clone)]
pub struct GatewayConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Data directory (created if absent).
    pub data_dir: PathBuf,
    /// Refuse clients that cannot do the X25519MLKEM768 key exchange.
    pub pq_only: bool,
    /// Most chunk payload bytes buffered at once across all connections.
    pub memory_budget: usize,
    /// Origin line of the gateway's ledger checkpoints (names the log to auditors).
    pub ledger_origin: String,
    /// How destinations confirm what they wrote (`CONNECTOR_STRICT=true`: fail-closed).
    pub verify: VerifyMode,
    /// Makes the connector for a job's destination (default:
    /// [`trackshift_connectors::connect`]); a seam for wrappers such as rate limits,
    /// tenant prefixes or fault injection in tests.
    pub connectors: ConnectorFactory,
    /// Accept job-service workers holding this key (see [`crate::tenants::ServiceKey`]).
    pub service_key: Option<Arc<crate::tenants::ServiceKey>>,
    /// The log to append to (default: files in `DATA/ledger`). Gateways sharing one
    /// ledger sequence pass the same [`trackshift_ledger::PgLedger`].
    pub ledger: Option<trackshift_ledger::Log>,
    /// The tenants to serve (default: `DATA/tenants.json`, loaded at bind). Pass the
    /// handle the job service uses so that one reload reaches both.
    pub tenants: Option<Arc<crate::tenants::LiveTenants>>,
    /// Most connections open at once from one source address (IPv6: one /64); more are
    /// closed right after the handshake with a reason saying so.
    pub max_connections_per_ip: usize,
    /// How long a new connection has to open its control stream and show a valid `Hello`.
    pub auth_timeout: std::time::Duration,
    /// Most connections at once, from all addresses together, that have not authenticated
    /// yet (handshaking or before their `Hello`); beyond it new ones are refused before any
    /// handshake work, and beyond half of it a peer must first prove its address (a QUIC
    /// Retry), so spoofed sources cannot take the places.
    pub max_unauthenticated: usize,
    /// Most files being written at once across all jobs (each holds a writer per
    /// destination: at a local destination two descriptors). A chunk of a file not open
    /// yet waits for a place (up to [`OPEN_FILE_WAIT`], before it takes any memory).
    pub max_open_files: usize,
    /// Most jobs one connection holds open at once; an open beyond it is answered `Busy`
    /// (the sender waits and asks again), so one connection cannot hold unbounded state.
    pub max_jobs_per_connection: usize,
    /// Job directories nothing has touched for this long are removed (see
    /// [`Gateway::sweep_jobs`]); `None` keeps them. A job id sent again after its
    /// directory went is a new job.
    pub job_retention: Option<std::time::Duration>,
}

/// Default [`GatewayConfig::job_retention`]: a week.
pub const DEFAULT_JOB_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Default [`GatewayConfig::max_jobs_per_connection`].
pub const DEFAULT_MAX_JOBS_PER_CONNECTION: usize = 1024;

/// Default [`GatewayConfig::max_connections_per_ip`]: above the job service's default of
/// 256 concurrent jobs, whose connections all come from one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 512;
/// Default [`GatewayConfig::max_unauthenticated`].
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 1024;
/// Default [`GatewayConfig::auth_timeout`].
pub const DEFAULT_AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a chunk of a file not open yet waits for a place among the open files
/// ([`GatewayConfig::max_open_files`]) before it goes ahead anyway: the bound gives way
/// rather than stall a transfer whose open files wait for chunks queued behind it.
pub const OPEN_FILE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Default [`GatewayConfig::max_open_files`]: a quarter of the process's soft limit on
/// open descriptors (`ulimit -n`), so that writers (two descriptors each at a local
/// destination) take at most half of it; between 16 and 65,536.
pub fn default_max_open_files() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(16, 65_536)
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("pq_only", &self.pq_only)
            .field("memory_budget", &self.memory_budget)
            .field("ledger_origin", &self.ledger_origin)
            .field("verify", &self.verify)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_unauthenticated", &self.max_unauthenticated)
            .field("auth_timeout", &self.auth_timeout)
            .field("max_open_files", &self.max_open_files)
            .field("max_jobs_per_connection", &self.max_jobs_per_connection)
            .field("job_retention", &self.job_retention)
            .finish_non_exhaustive()
    }
}

/// Makes a connector from a parsed destination, the verification policy and where the
/// credentials come from (the process environment, or the job's tenant's own).
pub type ConnectorFactory = Arc<
    dyn Fn(
            &trackshift_connectors::Destination,
            VerifyMode,
            &trackshift_connectors::Settings,
        ) -> Result<Arc<dyn Connector>, trackshift_connectors::ConnectorError>
        + Send
        + Sync,
>;

/// A cached connector's identity: the destination (with the operator's options and the
/// part the operator vouches for), verification, and the tenant whose own credentials it
/// uses (empty: the process environment's).
type ConnectorKey = (trackshift_connectors::Destination, VerifyMode, String);

/// Most connectors a gateway keeps for reuse (see `Shared::connector`).
const CONNECTOR_CACHE_MAX: usize = 256;

/// Default ledger origin.
pub const DEFAULT_LEDGER_ORIGIN: &str = "trackshift.local/ledger";

impl GatewayConfig {
    /// Defaults: 512 MiB memory budget, hybrid key exchange preferred but not required.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            pq_only: false,
            memory_budget: 512 << 20,
            ledger_origin: DEFAULT_LEDGER_ORIGIN.to_string(),
            verify: VerifyMode::from_env(),
            connectors: Arc::new(trackshift_connectors::connect),
            service_key: None,
            ledger: None,
            tenants: None,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            max_open_files: default_max_open_files(),
            max_jobs_per_connection: DEFAULT_MAX_JOBS_PER_CONNECTION,
            job_retention: Some(DEFAULT_JOB_RETENTION),
        }
    }
}

/// Adds a key for `tenant` to `DATA/tenants.json`, allowing it the destination prefixes
/// `destinations` (added to its rules; see [`crate::tenants::add_key`]). A tenant without
/// any destination rule writes nowhere.
pub fn add_tenant(
    data_dir: &Path,
    tenant: &str,
    token: &str,
    destinations: &[&str],
) -> Result<(), GatewayError> {
    Ok(crate::tenants::add_key(
        data_dir,
        tenant,
        token,
        destinations,
    )?)
}

/// Creates a random token (256 bits, hex).
pub fn generate_token() -> String {
    crate::tenants::generate_key()
}

/// A chunk that is written and waits to become durable before it is acknowledged.
struct Pending {
    chunk: ChunkRef,
    hash: Hash32,
    handle: u32,
    reply: mpsc::UnboundedSender<ServerFrame>,
    _permit: crate::quota::MemoryPermit,
}

/// A job known to the gateway (in progress or finished).
struct Job {
    tenant: String,
    /// Job id and correlation id, for log lines.
    id: String,
    correlation: String,
    dir: PathBuf,
    state: Mutex<ReceiverJob>,
    /// Where the job writes: one or more destinations, each chunk to all of them.
    dests: Vec<Dest>,
    /// Fail-closed: any destination failing fails the job (else a failing destination is
    /// dropped, recorded in its receipt, while the others carry on).
    strict: bool,
    resume: bool,
    commit_tx: mpsc::UnboundedSender<Pending>,
    finished: tokio::sync::Mutex<Option<(String, Vec<String>)>>,
    failed: Mutex<Option<String>>,
    /// The sender cancelled the job: its partial objects are discarded.
    cancelled: std::sync::atomic::AtomicBool,
    /// Per file, its place among the gateway's open files while it is being written.
    open_files: Vec<Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
}

/// One destination of a job.
struct Dest {
    connector: Arc<dyn Connector>,
    /// One slot per file of the job.
    writers: Vec<WriterSlot>,
    /// Why this destination was dropped (non-strict fan-out).
    failed: Mutex<Option<String>>,
}

/// One file's writer at one destination. It is open only while the file is being written:
/// closed once every chunk of the file is durable and again once the file is committed,
/// and opened again (resuming) when it is needed after that, so a job holds writers (and
/// their descriptors) for the files in flight, not for every file it has.
#[derive(Default)]
struct WriterSlot {
    writer: tokio::sync::Mutex<Option<Arc<dyn ObjectWriter>>>,
    /// The destination may hold a partial object of this file (opened here, or chunks held
    /// before a restart): an open resumes it, a cancellation or a drop aborts it.
    touched: std::sync::atomic::AtomicBool,
}

impl WriterSlot {
    fn new(touched: bool) -> Self {
        Self {
            writer: tokio::sync::Mutex::new(None),
            touched: std::sync::atomic::AtomicBool::new(touched),
        }
    }
}

impl Job {
    fn open(&self) -> OpenJob {
        self.state.lock().expect("job lock").open().clone()
    }

    /// What the connector of destination `dest` is told about file `file`.
    fn spec(&self, dest: usize, file: u32) -> ObjectSpec {
        let open = self.open();
        let f = &open.files[file as usize];
        let state = if dest == 0 {
            format!("upload-{file}.json")
        } else {
            format!("upload-{dest}-{file}.json")
        };
        ObjectSpec {
            tenant: self.tenant.clone(),
            job_id: open.job_id.clone(),
            path: f.path.clone(),
            size: f.size,
            chunk_size: open.chunk_size,
            state_file: Some(self.dir.join(state)),
        }
    }

    async fn writer(&self, dest: usize, file: u32) -> Result<Arc<dyn ObjectWriter>, GatewayError> {
        let d = &self.dests[dest];
        let slot = d
            .writers
            .get(file as usize)
            .ok_or_else(|| GatewayError::Job(format!("file index {file} out of range")))?;
        let (w, created) = {
            let mut held = slot.writer.lock().await;
            match held.as_ref() {
                Some(w) => (w.clone(), false),
                None => {
                    if let Some(reason) = self.failed.lock().expect("job lock").clone() {
                        return Err(GatewayError::Job(reason));
                    }
                    // Opened before (and closed since): resume it, keeping what it holds.
                    let resume = self.resume || slot.touched.load(Ordering::Acquire);
                    let w = d.connector.open(&self.spec(dest, file), resume).await?;
                    slot.touched.store(true, Ordering::Release);
                    *held = Some(w.clone());
                    (w, true)
                }
            }
        };
        // A drop or a cancellation racing with this open: it marks first, then aborts the
        // writers it finds; a writer this call opened checks after storing. Whichever comes
        // second aborts. (A job that merely failed keeps its partial objects for resume.)
        if created {
            let gone = if self.cancelled.load(Ordering::Relaxed) {
                Some("the job was cancelled".to_string())
            } else {
                d.failed.lock().expect("dest lock").clone()
            };
            if let Some(reason) = gone {
                let mut held = slot.writer.lock().await;
                if held.as_ref().is_some_and(|h| Arc::ptr_eq(h, &w)) {
                    *held = None;
                }
                drop(held);
                if w.abort().await.is_ok() {
                    slot.touched.store(false, Ordering::Release);
                }
                return Err(GatewayError::Job(reason));
            }
        }
        Ok(w)
    }

    /// Closes file `file`'s writer at destination `dest` (it is opened again if needed);
    /// `early` (the file is complete but not committed): only a writer that holds
    /// something open.
    async fn close_writer(&self, dest: usize, file: u32, early: bool) {
        let Some(slot) = self.dests[dest].writers.get(file as usize) else {
            return;
        };
        let w = {
            let mut held = slot.writer.lock().await;
            if early && held.as_ref().is_some_and(|w| !w.holds_open()) {
                return;
            }
            held.take()
        };
        let Some(w) = w else {
            return;
        };
        // Out of the slot, nobody gets this writer again: when no call holds it now, its
        // remote handles go too (else the last holder's drop releases what a drop can).
        if Arc::strong_count(&w) == 1
            && let Err(e) = w.close().await
        {
            debug!(tenant = %self.tenant, job = %self.id, destination = %self.dests[dest].connector.uri(), error = %e, "closing a writer failed");
        }
    }

    /// The file is complete: closes its writers that hold something open (see
    /// [`ObjectWriter::holds_open`]) and gives up its place among the open files.
    async fn close_writers(&self, file: u32) {
        for d in 0..self.dests.len() {
            self.close_writer(d, file, true).await;
        }
        if let Some(place) = self.open_files.get(file as usize) {
            place.lock().expect("open files lock").take();
        }
    }

    /// Takes a place among the gateway's open files (`pool`) for file `file`, unless it has
    /// one; waits at most [`OPEN_FILE_WAIT`], then goes on without.
    async fn hold_open_file(&self, pool: &Arc<Semaphore>, file: u32) {
        let Some(place) = self.open_files.get(file as usize) else {
            return;
        };
        if place.lock().expect("open files lock").is_some() {
            return;
        }
        let permit = match tokio::time::timeout(OPEN_FILE_WAIT, pool.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => {
                debug!(tenant = %self.tenant, job = %self.id, file, "no place among the open files in time; writing anyway");
                return;
            }
        };
        let mut place = place.lock().expect("open files lock");
        if place.is_none() {
            *place = Some(permit);
        }
    }

    /// Discards every partial object the job may have at destination `d`: the writers
    /// open now, and those closed since (opened again to abort them). Stops reopening at
    /// the first sign that the destination is unreachable.
    async fn abort_dest(&self, d: usize) {
        let dest = &self.dests[d];
        for (file, slot) in dest.writers.iter().enumerate() {
            let mut held = slot.writer.lock().await;
            let w = match held.take() {
                Some(w) => w,
                None if slot.touched.load(Ordering::Acquire) => {
                    match dest.connector.open(&self.spec(d, file as u32), true).await {
                        Ok(w) => w,
                        Err(e) => {
                            warn!(tenant = %self.tenant, job = %self.id, correlation_id = %self.correlation, destination = %dest.connector.uri(), error = %e, "could not reopen a partial object to discard it");
                            if e.is_transient()
                                || matches!(
                                    e,
                                    trackshift_connectors::ConnectorError::Unavailable(_)
                                )
                            {
                                return;
                            }
                            continue;
                        }
                    }
                }
                None => continue,
            };
            drop(held);
            if w.abort().await.is_ok() {
                slot.touched.store(false, Ordering::Release);
            }
        }
    }

    /// Destinations still being written.
    fn live(&self) -> Vec<usize> {
        (0..self.dests.len())
            .filter(|&d| self.dests[d].failed.lock().expect("dest lock").is_none())
            .collect()
    }

    /// Records that destination `d` failed with `e`. The job goes on without it unless it is
    /// strict or no destination is left; then the error is returned (the job fails).
    async fn drop_dest(&self, d: usize, e: GatewayError) -> Result<(), GatewayError> {
        let uri = self.dests[d].connector.uri().to_string();
        if self.strict || self.dests.len() == 1 {
            return Err(e);
        }
        {
            let mut failed = self.dests[d].failed.lock().expect("dest lock");
            if failed.is_some() {
                return Ok(());
            }
            *failed = Some(e.to_string());
        }
        // Remembered across restarts: chunks acknowledged from now on are not written there,
        // so a resumed job must not bring this destination back.
        let marker = self.dir.join(dropped_file(d));
        if let Err(err) =
            trackshift_crypto::filestore::write_atomic(&marker, e.to_string().as_bytes(), 0o644)
        {
            return Err(GatewayError::Job(format!(
                "recording that {uri} was dropped: {err}"
            )));
        }
        warn!(tenant = %self.tenant, job = %self.id, correlation_id = %self.correlation, destination = %uri, error = %e, "destination dropped from the job");
        // Leave nothing behind there: partial objects are aborted.
        self.abort_dest(d).await;
        if self.live().is_empty() {
            return Err(GatewayError::Job(format!(
                "every destination failed; the last: {uri}: {e}"
            )));
        }
        Ok(())
    }

    /// Writes a chunk to every live destination at once (the same `Bytes`, no copy).
    async fn write_all(
        &self,
        file: u32,
        offset: u64,
        data: bytes::Bytes,
    ) -> Result<(), GatewayError> {
        let live = self.live();
        let writes = live.iter().map(|&d| {
            let data = data.clone();
            async move {
                let w = self.writer(d, file).await?;
                w.write_at(offset, data).await.map_err(GatewayError::from)
            }
        });
        let results = futures::future::join_all(writes).await;
        for (d, r) in live.into_iter().zip(results) {
            if let Err(e) = r {
                self.drop_dest(d, e).await?;
            }
        }
        Ok(())
    }

    /// Makes file `file` durable at every live destination.
    async fn sync_all(&self, file: u32) -> Result<(), GatewayError> {
        for d in self.live() {
            let r = async {
                self.writer(d, file)
                    .await?
                    .sync()
                    .await
                    .map_err(GatewayError::from)
            };
            if let Err(e) = r.await {
                self.drop_dest(d, e).await?;
            }
        }
        Ok(())
    }

    fn fail(&self, reason: String) {
        let mut f = self.failed.lock().expect("job lock");
        if f.is_none() {
            *f = Some(reason);
        }
    }
}

impl crate::quota::Occupies for Job {
    fn occupies(&self) -> bool {
        // A finish in progress holds the lock: the job still counts.
        self.failed.lock().expect("job lock").is_none()
            && !self.cancelled.load(Ordering::Relaxed)
            && self.finished.try_lock().map_or(true, |f| f.is_none())
    }
}

/// The jobs held now (see `Shared::jobs`), with entries of dropped jobs pruned as it grows.
#[derive(Default)]
struct JobMap {
    jobs: HashMap<(String, String), std::sync::Weak<Job>>,
    /// Prune dropped entries when the map reaches this size.
    prune_at: usize,
}

impl JobMap {
    fn get(&self, key: &(String, String)) -> Option<Arc<Job>> {
        self.jobs.get(key).and_then(std::sync::Weak::upgrade)
    }

    fn remove(&mut self, key: &(String, String)) {
        self.jobs.remove(key);
    }

    fn insert(&mut self, key: (String, String), job: std::sync::Weak<Job>) {
        if self.jobs.len() >= self.prune_at {
            self.jobs.retain(|_, j| j.strong_count() > 0);
            self.prune_at = (2 * self.jobs.len()).max(64);
        }
        self.jobs.insert(key, job);
    }
}

struct Shared {
    data_dir: PathBuf,
    /// The signing keys, loaded (and their files checked) at bind, so a job never reaches
    /// its end to find it cannot sign; they follow `keys rotate` on disk (each signature
    /// uses the key valid at its signing time in the store as it is then).
    keys: LiveKeyStore,
    tenants: Arc<LiveTenants>,
    service_key: Option<Arc<crate::tenants::ServiceKey>>,
    /// Jobs some connection (or finish) holds now, by (tenant, job id); weak, so that a job
    /// nothing holds is dropped with everything it owns (writers, chunk log, committer)
    /// and is loaded from its directory when it is opened again.
    jobs: Mutex<JobMap>,
    /// One lock per job being opened now, so opens of one job run one at a time.
    opening: Mutex<HashMap<JobKey, Arc<tokio::sync::Mutex<()>>>>,
    ledger: trackshift_ledger::Log,
    verify: VerifyMode,
    connectors: ConnectorFactory,
    /// Connectors by destination URI, shared by every job that writes there (so jobs to
    /// one server share its connections).
    connector_cache: Mutex<HashMap<ConnectorKey, Arc<dyn Connector>>>,
    /// Per-tenant quotas: open jobs, receive rate, part of the memory budget.
    quotas: Arc<crate::quota::Quotas>,
    connections: AtomicU64,
    jobs_completed: AtomicU64,
    jobs_failed: AtomicU64,
    /// Open connections per source address (see [`address_key`]).
    per_address: Mutex<HashMap<std::net::IpAddr, usize>>,
    max_connections_per_ip: usize,
    auth_timeout: std::time::Duration,
    /// Places for connections not authenticated yet (see
    /// [`GatewayConfig::max_unauthenticated`]).
    unauthenticated: Arc<Semaphore>,
    max_unauthenticated: usize,
    /// Places among the files being written (see [`GatewayConfig::max_open_files`]).
    open_files: Arc<Semaphore>,
    /// See [`GatewayConfig::max_jobs_per_connection`].
    max_jobs_per_connection: usize,
    /// See [`GatewayConfig::job_retention`].
    job_retention: Option<std::time::Duration>,
}

/// Counters of a running gateway since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Sender connections that completed the QUIC handshake.
    pub connections: u64,
    /// Jobs that completed with a signed receipt.
    pub jobs_completed: u64,
    /// Jobs refused at open or failed at finish (verification or commit).
    pub jobs_failed: u64,
}

/// What [`Gateway::reload_keys`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysReloaded {
    /// The manifest and receipt keys.
    pub documents: trackshift_crypto::live::Reloaded,
    /// Whether the ledger's checkpoint keys were loaded again.
    pub ledger: bool,
}

/// A running gateway.
pub struct Gateway {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    identity: GatewayIdentity,
}

impl Gateway {
    /// Loads (or creates on first start) the keys and TLS identity, then binds the
    /// endpoint. Every secret file is read and checked (owner-only, see
    /// [`trackshift_crypto::filestore::read_secret`]) before the endpoint is bound.
    pub async fn bind(cfg: GatewayConfig) -> Result<Self, GatewayError> {
        let data = &cfg.data_dir;
        fs::create_dir_all(data.join("jobs")).map_err(io("creating", data))?;
        let keys_dir = data.join("keys");
        if !keys_dir.join("keyring.json").exists() {
            FileKeyStore::init(&keys_dir, Timestamp::now())?;
        }
        let keys = LiveKeyStore::open(&keys_dir)?;
        let identity = GatewayIdentity::load_or_generate(&data.join("tls"))
            .map_err(crate::transport::TransportError::from)?;
        let tenants = match &cfg.tenants {
            Some(t) => t.clone(),
            None => Arc::new(LiveTenants::load(data)?),
        };
        if tenants.current().file.tenants.is_empty() {
            warn!(
                "no tenants configured in {}: every sender will be refused",
                data.join("tenants.json").display()
            );
        }
        let budget_max = u32::try_from(cfg.memory_budget)
            .unwrap_or(u32::MAX)
            .max(1 << 20);
        let ledger = match &cfg.ledger {
            Some(l) => l.clone(),
            None => trackshift_ledger::Log::File(Arc::new(trackshift_ledger::Ledger::open(
                data.join("ledger"),
                &cfg.ledger_origin,
            )?)),
        };
        let endpoint = crate::transport::server_endpoint(cfg.listen, &identity, cfg.pq_only)?;
        let shared = Arc::new(Shared {
            data_dir: data.clone(),
            ledger,
            verify: cfg.verify,
            connectors: cfg.connectors.clone(),
            connector_cache: Mutex::new(HashMap::new()),
            keys,
            tenants,
            service_key: cfg.service_key.clone(),
            jobs: Mutex::new(JobMap::default()),
            opening: Mutex::new(HashMap::new()),
            quotas: Arc::new(crate::quota::Quotas::new(
                Arc::new(Semaphore::new(budget_max as usize)),
                budget_max,
            )),
            connections: AtomicU64::new(0),
            jobs_completed: AtomicU64::new(0),
            jobs_failed: AtomicU64::new(0),
            per_address: Mutex::new(HashMap::new()),
            max_connections_per_ip: cfg.max_connections_per_ip.max(1),
            auth_timeout: cfg.auth_timeout,
            unauthenticated: Arc::new(Semaphore::new(cfg.max_unauthenticated.max(1))),
            max_unauthenticated: cfg.max_unauthenticated.max(1),
            open_files: Arc::new(Semaphore::new(cfg.max_open_files.max(1))),
            max_jobs_per_connection: cfg.max_jobs_per_connection.max(1),
            job_retention: cfg.job_retention,
        });
        info!(addr = %endpoint.local_addr().map_err(io("binding", data))?, fingerprint = %identity.fingerprint(), max_open_files = cfg.max_open_files, "gateway listening");
        Ok(Self {
            endpoint,
            shared,
            identity,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("bound endpoint has an address")
    }

    /// SHA-256 fingerprint of the gateway certificate (what senders pin).
    pub fn fingerprint(&self) -> String {
        self.identity.fingerprint()
    }

    /// The public keys auditors need to verify this gateway's manifests, receipts and
    /// ledger checkpoints.
    pub fn public_keyring(&self) -> Result<PublicKeyring, GatewayError> {
        let mut ring = self.shared.keys.public_keyring()?;
        ring.ledger = Some(self.shared.ledger.public_keys().clone());
        Ok(ring)
    }

    /// Loads the signing keys (manifest, receipt, and the ledger's checkpoint keys) again
    /// if they changed on disk (`force`: in any case), checking every secret file as at
    /// start. Signing does this by itself before each signature; SIGHUP calls it to load
    /// (and report) a rotation at once.
    pub fn reload_keys(&self, force: bool) -> Result<KeysReloaded, GatewayError> {
        let documents = self.shared.keys.reload(force);
        let ledger = self.shared.ledger.reload_keys(force);
        Ok(KeysReloaded {
            documents: documents?,
            ledger: ledger?,
        })
    }

    /// The gateway's ledger (read-only use: checkpoints and proofs for auditors).
    pub fn ledger(&self) -> &trackshift_ledger::Log {
        &self.shared.ledger
    }

    /// Checks every destination in use (the connectors jobs have opened), each bounded by
    /// `timeout`, concurrently. Returns how many were checked and the failing URIs with
    /// their errors (no credentials: URIs never hold any).
    pub async fn check_destinations(
        &self,
        timeout: std::time::Duration,
    ) -> (usize, Vec<(String, String)>) {
        let connectors: Vec<Arc<dyn Connector>> = self
            .shared
            .connector_cache
            .lock()
            .expect("connector cache lock")
            .values()
            .cloned()
            .collect();
        let checks = connectors.iter().map(|c| async move {
            let res = match tokio::time::timeout(timeout, c.check()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            };
            res.map(|e| (c.uri().to_string(), e))
        });
        let failing = futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        (connectors.len(), failing)
    }

    /// Removes the directories of jobs nothing has touched for longer than `older_than`
    /// and nothing holds now (a finished job's documents stay in the ledger; an abandoned
    /// job's partial destination objects are discarded). The gateway does this by itself
    /// every [`sweep_interval`] when [`GatewayConfig::job_retention`] is set.
    pub async fn sweep_jobs(&self, older_than: std::time::Duration) -> SweepReport {
        retention::sweep(&self.shared, older_than).await
    }

    /// Counters since start.
    pub fn stats(&self) -> GatewayStats {
        GatewayStats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            jobs_completed: self.shared.jobs_completed.load(Ordering::Relaxed),
            jobs_failed: self.shared.jobs_failed.load(Ordering::Relaxed),
        }
    }

    /// What `tenant` uses on this gateway now (open jobs, chunk memory).
    pub fn tenant_usage(&self, tenant: &str) -> crate::quota::TenantUsage {
        self.shared.quotas.usage(tenant)
    }

    /// Serves connections until [`Gateway::close`] is called (or the endpoint fails).
    pub async fn serve(&self) {
        // Job directories past their retention go while the gateway serves.
        let sweeper = self.shared.job_retention.map(|retention| {
            let shared = Arc::downgrade(&self.shared);
            tokio::spawn(async move {
                loop {
                    let Some(s) = shared.upgrade() else { break };
                    let report = retention::sweep(&s, retention).await;
                    drop(s);
                    if report != SweepReport::default() {
                        info!(?report, "job retention sweep");
                    }
                    tokio::time::sleep(sweep_interval(retention)).await;
                }
            })
        });
        self.accept().await;
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
    }

    async fn accept(&self) {
        while let Some(incoming) = self.endpoint.accept().await {
            let shared = self.shared.clone();
            let Ok(place) = shared.unauthenticated.clone().try_acquire_owned() else {
                debug!(peer = %incoming.remote_address(), "too many unauthenticated connections; refused");
                incoming.refuse();
                continue;
            };
            // Under pressure, only peers that proved their address get handshake work.
            if shared.unauthenticated.available_permits() < shared.max_unauthenticated / 2
                && incoming.may_retry()
            {
                drop(place);
                let _ = incoming.retry();
                continue;
            }
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        let peer = conn.remote_address();
                        if let Err(e) = handle_connection(shared, conn, place).await {
                            debug!(%peer, error = %e, "connection ended");
                        }
                    }
                    Err(e) => debug!(error = %e, "handshake failed"),
                }
            });
        }
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"gateway shutting down");
    }
}

impl Shared {
    fn authenticate(&self, token: &str) -> Option<String> {
        if let Some(key) = &self.service_key
            && let Some(tenant) = key.verify(token)
        {
            return self
                .tenants
                .current()
                .file
                .get(&tenant)
                .map(|t| t.tenant.clone());
        }
        self.tenants
            .current()
            .file
            .authenticate(token)
            .map(|t| t.tenant.clone())
    }

    /// The connector for `uri`, made once and then shared by the jobs that write there.
    fn connector(
        &self,
        dest: &trackshift_connectors::Destination,
        verify: VerifyMode,
        tenant: &str,
    ) -> Result<Arc<dyn Connector>, GatewayError> {
        let mut cache = self.connector_cache.lock().expect("connector cache lock");
        // A tenant with its own credentials gets connectors of its own, made again after
        // a reload of the tenant file (the credentials may have changed).
        let tenants = self.tenants.current();
        let (settings, owner) = match tenants.credentials.get(tenant) {
            Some(s) => (s.clone(), format!("{tenant}#{}", tenants.generation)),
            None => (trackshift_connectors::Settings::Process, String::new()),
        };
        let key = (dest.clone(), verify, owner);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let c = (self.connectors)(dest, verify, &settings)?;
        // Bounded: past the limit, forget connectors no job holds any more.
        if cache.len() >= CONNECTOR_CACHE_MAX {
            cache.retain(|_, c| Arc::strong_count(c) > 1);
        }
        cache.insert(key, c.clone());
        Ok(c)
    }

    async fn open_job(
        self: &Arc<Self>,
        tenant: &str,
        open: OpenJob,
    ) -> Result<Arc<Job>, GatewayError> {
        let state = ReceiverJob::new(open.clone())?;
        let tenants = self.tenants.current();
        let entry = tenants
            .file
            .get(tenant)
            .ok_or_else(|| GatewayError::Job(format!("unknown tenant {tenant}")))?;
        // Parsed and checked once: the connectors are built from these typed values.
        let destinations = open
            .destinations
            .iter()
            .map(|uri| {
                entry
                    .check_destination(uri, open.classification.as_deref())
                    .map_err(|e| GatewayError::Job(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A job may ask for fail-closed delivery; it cannot relax a strict gateway.
        let verify = match (self.verify, open.strict) {
            (VerifyMode::Size, Some(true)) => VerifyMode::Strict,
            (v, _) => v,
        };
        let key = (tenant.to_string(), open.job_id.clone());
        // Opens of one job run one at a time; opens of different jobs run side by side (the
        // map of held jobs is locked only to look up and to insert, never across I/O).
        let gate = OpenGate::enter(self, &key).await;
        {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            // A job that failed (say the disk filled up) is reloaded from its directory
            // when opened again, so it resumes from the chunks it holds once the cause is
            // fixed.
            if jobs
                .get(&key)
                .is_some_and(|j| j.failed.lock().expect("job lock").is_some())
            {
                jobs.remove(&key);
            }
            if let Some(job) = jobs.get(&key) {
                if job.open() != open {
                    return Err(GatewayError::Job(format!(
                        "job {} already exists with different files or destination",
                        open.job_id
                    )));
                }
                return Ok(job);
            }
        }
        let dir = self.data_dir.join("jobs").join(tenant).join(&open.job_id);
        // The job directory's reads, writes and fsyncs, off the runtime's threads.
        let loaded = {
            let (dir, open, tenant) = (dir.clone(), open.clone(), tenant.to_string());
            tokio::task::spawn_blocking(move || load_job_dir(&tenant, &dir, &open, state))
                .await
                .expect("job directory task does not panic")?
        };
        let LoadedDir {
            state,
            resume,
            finished,
        } = loaded;
        // Files with chunks held from before may have partial objects at the destinations.
        let touched: Vec<bool> = (0..open.files.len())
            .map(|f| state.held_in_file(f as u32) > 0)
            .collect();
        let mut dests = Vec::with_capacity(open.destinations.len());
        for dest in &destinations {
            let connector = self.connector(dest, verify, tenant)?;
            let dropped = fs::read_to_string(dir.join(dropped_file(dests.len()))).ok();
            if let Some(reason) = dropped {
                // Dropped before a restart: it stays dropped (it lacks chunks acknowledged
                // since), and its server need not even be reachable now.
                dests.push(Dest {
                    connector,
                    writers: (0..open.files.len())
                        .map(|_| WriterSlot::new(false))
                        .collect(),
                    failed: Mutex::new(Some(reason)),
                });
                continue;
            }
            for f in &open.files {
                let min = connector.min_chunk_size(f.size);
                if f.size > open.chunk_size && open.chunk_size < min {
                    return Err(GatewayError::Job(format!(
                        "{} needs chunks of at least {min} bytes for {} ({} bytes); this job uses {}",
                        connector.uri(),
                        f.path,
                        f.size,
                        open.chunk_size
                    )));
                }
            }
            connector.check().await?;
            dests.push(Dest {
                connector,
                writers: touched.iter().map(|&t| WriterSlot::new(t)).collect(),
                failed: Mutex::new(None),
            });
        }
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let job = Arc::new(Job {
            tenant: tenant.to_string(),
            id: open.job_id.clone(),
            correlation: open.correlation_id.clone().unwrap_or_else(|| "-".into()),
            dir,
            state: Mutex::new(state),
            dests,
            strict: verify != VerifyMode::Size,
            resume,
            commit_tx,
            finished: tokio::sync::Mutex::new(finished),
            failed: Mutex::new(None),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            open_files: (0..open.files.len()).map(|_| Mutex::new(None)).collect(),
        });
        // The committer holds the job weakly: it ends (closing the chunk log) once the job
        // is dropped, when no connection or finish holds it any more.
        tokio::spawn(committer(Arc::downgrade(&job), commit_rx));
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(key.clone(), Arc::downgrade(&job));
        drop(gate);
        Ok(job)
    }
}

/// Key of a job held by the gateway: (tenant, job id).
type JobKey = (String, String);

/// A place in the queue of opens of one job (see `Shared::opening`): held, it keeps other
/// opens of the same job waiting; dropped, it removes the job's lock when nobody waits.
struct OpenGate<'a> {
    shared: &'a Shared,
    key: &'a JobKey,
    lock: Arc<tokio::sync::Mutex<()>>,
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<'a> OpenGate<'a> {
    async fn enter(shared: &'a Shared, key: &'a JobKey) -> Self {
        let lock = (shared.opening.lock().expect("opening lock"))
            .entry(key.clone())
            .or_default()
            .clone();
        let held = lock.clone().lock_owned().await;
        Self {
            shared,
            key,
            lock,
            _held: Some(held),
        }
    }
}

impl Drop for OpenGate<'_> {
    fn drop(&mut self) {
        self._held = None;
        let mut opening = self.shared.opening.lock().expect("opening lock");
        // Clones are taken under this lock only: two left are the map's and this one.
        if Arc::strong_count(&self.lock) == 2 {
            opening.remove(self.key);
        }
    }
}

/// What a job's directory holds, read (or made) by [`load_job_dir`].
struct LoadedDir {
    state: ReceiverJob,
    resume: bool,
    finished: Option<(String, Vec<String>)>,
}

/// Reads the job directory `dir` of `tenant`'s `open` (its stored job, the chunks it holds, its
/// finished documents), or makes it; blocking.
fn load_job_dir(
    tenant: &str,
    dir: &Path,
    open: &OpenJob,
    mut state: ReceiverJob,
) -> Result<LoadedDir, GatewayError> {
    let job_file = dir.join("job.json");
    let resume = job_file.exists();
    if resume {
        let bytes = fs::read(&job_file).map_err(io("reading", &job_file))?;
        let stored: OpenJob = serde_json::from_slice(&bytes)
            .map_err(|e| GatewayError::Job(format!("stored job {}: {e}", job_file.display())))?;
        if stored != *open {
            return Err(GatewayError::Job(format!(
                "job {} already exists with different files or destination",
                open.job_id
            )));
        }
        let log_path = dir.join("chunks.log");
        let bytes = match fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("reading", &log_path)(e)),
        };
        let log = protocol::decode_chunk_log(&bytes)
            .map_err(|e| GatewayError::Job(format!("{}: {e}", log_path.display())))?;
        if log.valid_len != bytes.len() {
            warn!(tenant, job = %open.job_id, correlation_id = open.correlation_id.as_deref().unwrap_or("-"), cut = bytes.len() - log.valid_len, "cutting torn tail of chunk log");
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&log_path)
                .map_err(io("opening", &log_path))?;
            f.set_len(log.valid_len as u64)
                .map_err(io("truncating", &log_path))?;
            f.sync_all().map_err(io("syncing", &log_path))?;
        }
        for (c, h) in log.records {
            state.record(c, h)?;
        }
        info!(tenant, job = %open.job_id, correlation_id = open.correlation_id.as_deref().unwrap_or("-"), held = state.progress().0, "resuming job");
    } else {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let json = serde_json::to_vec_pretty(open).expect("jobs serialise");
        trackshift_crypto::filestore::write_atomic(&job_file, &json, 0o644)?;
    }
    let finished = read_finished(dir, open.destinations.len());
    // Made (and shown writable) now; each group commit opens it for its append only, so a
    // job holds no descriptor of its own between commits.
    let log_path = dir.join("chunks.log");
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("opening", &log_path))?;
    Ok(LoadedDir {
        state,
        resume,
        finished,
    })
}

/// Name of the file recording why destination `d` was dropped from a job.
fn dropped_file(d: usize) -> String {
    format!("dropped-{d}.txt")
}

/// Name of the receipt file of destination `d` in a job directory.
fn receipt_file(d: usize) -> String {
    if d == 0 {
        "receipt.json".into()
    } else {
        format!("receipt-{}.json", d + 1)
    }
}

fn read_finished(dir: &Path, dests: usize) -> Option<(String, Vec<String>)> {
    let m = fs::read_to_string(dir.join("manifest.json")).ok()?;
    let r = (0..dests)
        .map(|d| fs::read_to_string(dir.join(receipt_file(d))).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((m, r))
}

/// Group commit: takes every chunk written since the last round, syncs the files they went
/// to, appends their records to the chunk log with one fsync, then acknowledges them.
/// Ends when the job is gone (every sender of `rx` is the job's).
async fn committer(job: std::sync::Weak<Job>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            batch.push(p);
        }
        // Nobody holds the job any more: nobody waits for these acknowledgements either.
        let Some(job) = job.upgrade() else { break };
        let result = commit_batch(&job, &batch).await;
        match result {
            Ok(()) => {
                // One Acks frame per (connection, handle).
                let mut acks: Vec<(u32, mpsc::UnboundedSender<ServerFrame>, Vec<ChunkRef>)> =
                    Vec::new();
                for p in &batch {
                    match acks
                        .iter_mut()
                        .find(|(h, tx, _)| *h == p.handle && tx.same_channel(&p.reply))
                    {
                        Some((_, _, chunks)) => chunks.push(p.chunk),
                        None => acks.push((p.handle, p.reply.clone(), vec![p.chunk])),
                    }
                }
                for (handle, reply, chunks) in acks {
                    let _ = reply.send(ServerFrame::Acks { handle, chunks });
                }
            }
            Err(e) => {
                let reason = format!("making chunks durable failed: {e}");
                warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, error = %e, "job failed");
                job.fail(reason.clone());
                for p in &batch {
                    let _ = p.reply.send(ServerFrame::JobFailed {
                        handle: p.handle,
                        job_id: job.open().job_id,
                        reason: reason.clone(),
                        permanent: false,
                    });
                }
            }
        }
    }
}

async fn commit_batch(job: &Arc<Job>, batch: &[Pending]) -> Result<(), GatewayError> {
    let mut files: Vec<u32> = batch.iter().map(|p| p.chunk.file).collect();
    files.sort_unstable();
    files.dedup();
    for &f in &files {
        job.sync_all(f).await?;
    }
    let mut records = Vec::with_capacity(batch.len() * protocol::LOG_RECORD_LEN);
    for p in batch {
        records.extend_from_slice(&protocol::encode_log_record(p.chunk, &p.hash));
    }
    let path = job.dir.join("chunks.log");
    let log = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut f = fs::OpenOptions::new().append(true).open(&log)?;
        f.write_all(&records)?;
        f.sync_data()
    })
    .await
    .expect("log task does not panic")
    .map_err(io("appending to", &path))?;
    let complete: Vec<u32> = {
        let mut state = job.state.lock().expect("job lock");
        for p in batch {
            state.record(p.chunk, p.hash)?;
        }
        files.retain(|&f| state.file_complete(f));
        files
    };
    // A file whose every chunk is durable needs its writers again only to commit.
    for f in complete {
        job.close_writers(f).await;
    }
    Ok(())
}

struct ConnState {
    tenant: String,
    handles: Mutex<HashMap<u32, Arc<Job>>>,
    /// The job slot each handle holds (see [`crate::quota`]).
    slots: Mutex<HashMap<u32, crate::quota::JobSlot>>,
    next_handle: AtomicU32,
    out: mpsc::UnboundedSender<ServerFrame>,
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<ClientFrame>,
) -> Result<Option<ClientFrame>, GatewayError> {
    loop {
        if let Some(f) = dec.next_frame()? {
            return Ok(Some(f));
        }
        // Never more than the frame being decoded needs: the decoder holds one frame at most.
        match recv.read_chunk(dec.wanted(), true).await {
            Ok(Some(chunk)) => dec.push(&chunk.bytes),
            Ok(None) => {
                dec.finish()?;
                return Ok(None);
            }
            Err(e) => return Err(GatewayError::Job(format!("control stream: {e}"))),
        }
    }
}

/// Where connections are counted for [`GatewayConfig::max_connections_per_ip`]: the IPv4
/// address (also when IPv4-mapped), or the IPv6 /64 (one host's usual allocation).
fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One connection's place in its address's count, given back on drop.
struct AddressSlot {
    shared: Arc<Shared>,
    key: std::net::IpAddr,
}

impl AddressSlot {
    /// A place for a connection from `ip`, or `None` when its address is at the limit.
    fn take(shared: &Arc<Shared>, ip: std::net::IpAddr) -> Option<Self> {
        let key = address_key(ip);
        let mut counts = shared.per_address.lock().expect("address lock");
        let n = counts.entry(key).or_insert(0);
        if *n >= shared.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: shared.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.shared.per_address.lock().expect("address lock");
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Close codes the gateway gives connections it refuses (the reason text says why).
mod retention;
pub use retention::{SweepReport, sweep_interval};

mod close {
    /// The token or version was refused.
    pub const REFUSED: u32 = 1;
    /// The first frame was not a valid `Hello`.
    pub const EXPECTED_HELLO: u32 = 2;
    /// No valid `Hello` within the authentication deadline.
    pub const AUTH_TIMEOUT: u32 = 3;
    /// Too many connections from the peer's address.
    pub const TOO_MANY_CONNECTIONS: u32 = 4;
}

async fn handle_connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    unauthenticated: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), GatewayError> {
    let peer = conn.remote_address();
    let Some(_slot) = AddressSlot::take(&shared, peer.ip()) else {
        let reason = format!(
            "too many connections from {} (at most {} at once)",
            address_key(peer.ip()),
            shared.max_connections_per_ip
        );
        warn!(%peer, "{reason}; connection refused");
        conn.close(close::TOO_MANY_CONNECTIONS.into(), reason.as_bytes());
        return Err(GatewayError::Job(reason));
    };
    // Before authentication: one control stream, a Hello-sized frame limit (the transport
    // allows no chunk streams and a small window yet), and a deadline.
    let hello = tokio::time::timeout(shared.auth_timeout, async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| GatewayError::Job(format!("no control stream: {e}")))?;
        let mut dec = FrameDecoder::<ClientFrame>::new(protocol::MAX_HELLO_FRAME);
        let first = read_frame(&mut recv, &mut dec).await;
        Ok::<_, GatewayError>((send, recv, dec, first))
    })
    .await;
    let (mut send, mut recv, mut dec, first) = match hello {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let reason = format!("no Hello within {:?}", shared.auth_timeout);
            conn.close(close::AUTH_TIMEOUT.into(), reason.as_bytes());
            return Err(GatewayError::Job(reason));
        }
    };
    let tenant = match first {
        Ok(Some(ClientFrame::Hello { version, token })) => {
            let tenant = protocol::check_hello(version)
                .map_err(GatewayError::from)
                .and_then(|()| {
                    shared
                        .authenticate(&token.0)
                        .ok_or_else(|| GatewayError::Job("unknown tenant token".into()))
                });
            match tenant {
                Ok(t) => t,
                Err(e) => {
                    let refusal = protocol::encode_frame(&ServerFrame::Refused {
                        reason: e.to_string(),
                    });
                    // Bounded: a peer that never acknowledges must not hold its slot.
                    let _ = tokio::time::timeout(shared.auth_timeout, async {
                        let _ = send.write_all(&refusal).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    })
                    .await;
                    conn.close(close::REFUSED.into(), b"refused");
                    return Err(e);
                }
            }
        }
        Ok(_) => {
            conn.close(close::EXPECTED_HELLO.into(), b"expected Hello");
            return Err(ProtocolError::Unexpected("first frame must be Hello".into()).into());
        }
        Err(e) => {
            let reason = format!("expected Hello: {e}");
            conn.close(close::EXPECTED_HELLO.into(), reason.as_bytes());
            return Err(e);
        }
    };
    drop(unauthenticated);
    dec.set_max(protocol::MAX_CONTROL_FRAME);
    crate::transport::open_after_auth(&conn);
    info!(tenant = %tenant, peer = %conn.remote_address(), "sender authenticated");
    let (out, mut out_rx) = mpsc::unbounded_channel::<ServerFrame>();
    tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if send
                .write_all(&protocol::encode_frame(&frame))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = send.finish();
    });
    let _ = out.send(ServerFrame::Welcome {
        version: protocol::VERSION,
        tenant: tenant.clone(),
    });
    let state = Arc::new(ConnState {
        tenant,
        handles: Mutex::new(HashMap::new()),
        slots: Mutex::new(HashMap::new()),
        next_handle: AtomicU32::new(0),
        out,
    });
    let uni = {
        let conn = conn.clone();
        let shared = shared.clone();
        let state = state.clone();
        tokio::spawn(async move {
            while let Ok(stream) = conn.accept_uni().await {
                let shared = shared.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_chunk_stream(&shared, &state, stream).await {
                        debug!(error = %e, "chunk stream failed");
                    }
                });
            }
        })
    };
    let result = control_loop(&shared, &state, &mut recv, &mut dec).await;
    uni.abort();
    // The connection's jobs no longer occupy their tenant's slots.
    state.slots.lock().expect("slots lock").clear();
    result
}

async fn control_loop(
    shared: &Arc<Shared>,
    state: &Arc<ConnState>,
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<ClientFrame>,
) -> Result<(), GatewayError> {
    while let Some(frame) = read_frame(recv, dec).await? {
        match frame {
            ClientFrame::Hello { .. } => {
                return Err(ProtocolError::Unexpected("second Hello".into()).into());
            }
            ClientFrame::OpenJob(open) => {
                let job_id = open.job_id.clone();
                let correlation = open.correlation_id.clone().unwrap_or_else(|| "-".into());
                // Opening a job again on this connection (after it failed, or was busy)
                // abandons its earlier handle: that handle and its slot go, so handles do
                // not pile up on a long-lived connection.
                let stale: Vec<u32> = (state.handles.lock().expect("handles lock"))
                    .iter()
                    .filter(|(_, j)| j.id == job_id)
                    .map(|(&h, _)| h)
                    .collect();
                for h in stale {
                    state.handles.lock().expect("handles lock").remove(&h);
                    state.slots.lock().expect("slots lock").remove(&h);
                }
                // The connection's share, then the tenant's job slots, before any work.
                let held = state.handles.lock().expect("handles lock").len();
                if held >= shared.max_jobs_per_connection {
                    let reason = format!(
                        "this connection holds {held} open jobs, the most the gateway allows one connection"
                    );
                    defer(state, job_id, &correlation, reason);
                    continue;
                }
                let max = (shared.tenants.current().file.get(&state.tenant))
                    .and_then(|t| t.max_concurrent_jobs);
                let slot = match shared.quotas.reserve_job(&state.tenant, &job_id, max) {
                    Ok(slot) => slot,
                    Err(crate::quota::Busy(reason)) => {
                        defer(state, job_id, &correlation, reason);
                        continue;
                    }
                };
                match shared.open_job(&state.tenant, open).await {
                    Ok(job) => {
                        let handle = state.next_handle.fetch_add(1, Ordering::Relaxed);
                        let held = job.state.lock().expect("job lock").held_chunks();
                        slot.attach(job.clone());
                        state.slots.lock().expect("slots lock").insert(handle, slot);
                        state
                            .handles
                            .lock()
                            .expect("handles lock")
                            .insert(handle, job);
                        info!(tenant = %state.tenant, job = %job_id, correlation_id = %correlation, handle, "job open");
                        let _ = state.out.send(ServerFrame::JobReady {
                            job_id,
                            handle,
                            held,
                        });
                    }
                    Err(e) => {
                        warn!(tenant = %state.tenant, job = %job_id, correlation_id = %correlation, error = %e, "job refused");
                        shared.jobs_failed.fetch_add(1, Ordering::Relaxed);
                        let _ = state.out.send(ServerFrame::JobFailed {
                            handle: u32::MAX,
                            job_id,
                            reason: e.to_string(),
                            permanent: !matches!(&e, GatewayError::Connector(c) if c.is_transient()),
                        });
                    }
                }
            }
            ClientFrame::FinishJob {
                handle,
                file_hashes,
            } => {
                let job = state
                    .handles
                    .lock()
                    .expect("handles lock")
                    .get(&handle)
                    .cloned();
                let Some(job) = job else {
                    return Err(ProtocolError::Unexpected(format!(
                        "FinishJob for unknown handle {handle}"
                    ))
                    .into());
                };
                let state = state.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let frame = match finish_job(&shared, &job, &file_hashes).await {
                        Ok((manifest, receipts)) => {
                            shared.jobs_completed.fetch_add(1, Ordering::Relaxed);
                            ServerFrame::JobDone {
                                handle,
                                manifest,
                                receipts,
                            }
                        }
                        // Nothing is lost: the job stays as it is, and a finish sent again
                        // (on this connection or another) goes on where this one stopped.
                        Err(FinishFailure {
                            error,
                            retryable: true,
                        }) => {
                            warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, %error, "job finish failed; the sender may retry it");
                            ServerFrame::JobFailed {
                                handle,
                                job_id: job.open().job_id,
                                reason: error.to_string(),
                                permanent: false,
                            }
                        }
                        Err(FinishFailure { error, .. }) => {
                            shared.jobs_failed.fetch_add(1, Ordering::Relaxed);
                            warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, %error, "job failed at finish");
                            job.fail(error.to_string());
                            ServerFrame::JobFailed {
                                handle,
                                job_id: job.open().job_id,
                                reason: error.to_string(),
                                permanent: true,
                            }
                        }
                    };
                    // The job has ended on this connection: its handle and slot go (the
                    // sender sends nothing more under it; a repeat open gets a new one).
                    state.handles.lock().expect("handles lock").remove(&handle);
                    state.slots.lock().expect("slots lock").remove(&handle);
                    let _ = state.out.send(frame);
                });
            }
            ClientFrame::CancelJob { handle, reason } => {
                let job = state.handles.lock().expect("handles lock").remove(&handle);
                state.slots.lock().expect("slots lock").remove(&handle);
                if let Some(job) = job {
                    info!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, %reason, "job cancelled");
                    // Marked first: a writer opened from here on aborts itself (see
                    // `Job::writer`); the ones open now are aborted here.
                    job.cancelled.store(true, Ordering::Relaxed);
                    job.fail(format!("cancelled: {reason}"));
                    abort_writers(&job).await;
                    let key = (job.tenant.clone(), job.open().job_id);
                    shared.jobs.lock().expect("jobs lock").remove(&key);
                    let _ = fs::remove_dir_all(&job.dir);
                }
            }
        }
    }
    Ok(())
}

/// Tells the sender to open `job_id` again later (`Busy`), and logs why.
fn defer(state: &ConnState, job_id: String, correlation: &str, reason: String) {
    info!(tenant = %state.tenant, job = %job_id, correlation_id = %correlation, %reason, "job deferred");
    let _ = state.out.send(ServerFrame::Busy {
        job_id,
        reason,
        retry_after_ms: crate::quota::BUSY_RETRY_MS,
    });
}

/// Aborts every partial destination object the job may have (idempotent).
async fn abort_writers(job: &Job) {
    for d in 0..job.dests.len() {
        job.abort_dest(d).await;
    }
}

async fn handle_chunk_stream(
    shared: &Arc<Shared>,
    state: &Arc<ConnState>,
    mut recv: quinn::RecvStream,
) -> Result<(), GatewayError> {
    let hlen = recv
        .read_u32()
        .await
        .map_err(|e| GatewayError::Job(format!("chunk header: {e}")))? as usize;
    if hlen > protocol::MAX_CHUNK_HEADER {
        let _ = recv.stop(1u32.into());
        return Err(ProtocolError::FrameTooLarge {
            len: hlen,
            max: protocol::MAX_CHUNK_HEADER,
        }
        .into());
    }
    let mut hbuf = vec![0u8; hlen];
    recv.read_exact(&mut hbuf)
        .await
        .map_err(|e| GatewayError::Job(format!("chunk header: {e}")))?;
    let header = protocol::decode_chunk_header(&hbuf)?;
    let job = state
        .handles
        .lock()
        .expect("handles lock")
        .get(&header.handle)
        .cloned();
    let Some(job) = job else {
        let _ = recv.stop(1u32.into());
        return Err(
            ProtocolError::InvalidChunk(format!("unknown job handle {}", header.handle)).into(),
        );
    };
    let failed = job.failed.lock().expect("job lock").clone();
    if let Some(reason) = failed {
        let _ = recv.stop(1u32.into());
        // Tell the sender: a stopped stream alone can go unnoticed when its data was
        // already written, and the sender would wait for an ack that never comes.
        let _ = state.out.send(ServerFrame::JobFailed {
            handle: header.handle,
            job_id: job.open().job_id,
            reason: reason.clone(),
            permanent: true,
        });
        return Err(GatewayError::Job(reason));
    }
    let disposition = job.state.lock().expect("job lock").check_header(&header);
    let layout = match disposition {
        Ok(Disposition::Accept(layout)) => layout,
        Ok(Disposition::AlreadyHeld) => {
            let _ = recv.stop(0u32.into());
            let _ = state.out.send(ServerFrame::Acks {
                handle: header.handle,
                chunks: vec![header.chunk],
            });
            return Ok(());
        }
        Err(e) => {
            let _ = recv.stop(1u32.into());
            let _ = state.out.send(ServerFrame::Reject {
                handle: header.handle,
                chunk: header.chunk,
                reason: e.to_string(),
            });
            return Err(e.into());
        }
    };
    // A file not open yet waits for a place among the open files, before it holds memory.
    job.hold_open_file(&shared.open_files, header.chunk.file)
        .await;
    let len = header.len as usize;
    // The tenant's quotas before the gateway spends anything on the payload: its receive
    // rate (the stream is not read meanwhile: QUIC flow control holds the sender), then
    // its part of the memory budget, then the budget.
    let (limit, cap) = {
        let tenants = shared.tenants.current();
        let entry = tenants.file.get(&state.tenant);
        let total: u64 = tenants
            .file
            .tenants
            .iter()
            .map(|t| u64::from(t.share))
            .sum();
        let share = entry.map_or(1, |t| t.share);
        (
            entry.and_then(|t| t.bytes_per_second),
            shared.quotas.memory_cap(share, total),
        )
    };
    if let Some(rate) = shared.quotas.rate(&state.tenant, limit) {
        rate.take(header.len).await;
    }
    let permit = shared.quotas.memory(&state.tenant, cap, header.len).await;
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let before = buf.len();
        let mut limited = (&mut buf).limit(len - before);
        match recv.read_buf(&mut limited).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(GatewayError::Job(format!("chunk payload: {e}"))),
        }
    }
    let extra = recv.read_chunk(1, true).await;
    if buf.len() != len || !matches!(extra, Ok(None)) {
        let _ = state.out.send(ServerFrame::Reject {
            handle: header.handle,
            chunk: header.chunk,
            reason: format!("payload is not {len} bytes"),
        });
        return Err(ProtocolError::InvalidChunk("payload length mismatch".into()).into());
    }
    let data = buf.freeze();
    let (data, hash) = {
        let data = data.clone();
        let index = header.chunk.index;
        tokio::task::spawn_blocking(move || {
            let h = layout.chunk_hash(index, &data);
            (data, h)
        })
        .await
        .expect("hashing does not panic")
    };
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &hash.0[..],
        &header.hash.0[..],
    )) {
        warn!(tenant = %state.tenant, job = %job.id, correlation_id = %job.correlation, chunk = ?header.chunk, "chunk failed verification; asking for it again");
        let _ = state.out.send(ServerFrame::Reject {
            handle: header.handle,
            chunk: header.chunk,
            reason: "chunk hash mismatch".into(),
        });
        return Ok(());
    }
    if let Err(e) = job
        .write_all(header.chunk.file, layout.offset(header.chunk.index), data)
        .await
    {
        let reason = format!("writing to destination: {e}");
        job.fail(reason.clone());
        let _ = state.out.send(ServerFrame::JobFailed {
            handle: header.handle,
            job_id: job.open().job_id,
            reason,
            permanent: !matches!(&e, GatewayError::Connector(c) if c.is_transient()),
        });
        return Err(e);
    }
    let _ = job.commit_tx.send(Pending {
        chunk: header.chunk,
        hash,
        handle: header.handle,
        reply: state.out.clone(),
        _permit: permit,
    });
    Ok(())
}

/// Why a finish failed, and whether sending it again can succeed.
struct FinishFailure {
    error: GatewayError,
    /// The failure left the job as it was before the finish (or with its signed documents
    /// saved): an I/O error of the job directory or the ledger (`EMFILE`, `ENOSPC`, `EIO`),
    /// or a ledger that is stopping; the ledger itself is at its last good checkpoint.
    retryable: bool,
}

impl From<GatewayError> for FinishFailure {
    fn from(error: GatewayError) -> Self {
        Self {
            error,
            retryable: false,
        }
    }
}

impl FinishFailure {
    /// `error`, retryable when it is an I/O error or a stopping ledger.
    fn of(error: GatewayError) -> Self {
        use trackshift_ledger::LedgerError;
        let retryable = matches!(
            &error,
            GatewayError::Io { .. }
                | GatewayError::Crypto(trackshift_crypto::CryptoError::Io { .. })
                | GatewayError::Ledger(LedgerError::Io { .. } | LedgerError::Stopped(_))
        );
        Self { error, retryable }
    }
}

async fn finish_job(
    shared: &Arc<Shared>,
    job: &Arc<Job>,
    sender_hashes: &[Hash32],
) -> Result<(String, Vec<String>), FinishFailure> {
    let mut finished = job.finished.lock().await;
    if let Some(done) = finished.as_ref() {
        return Ok(done.clone());
    }
    if let Some(reason) = job.failed.lock().expect("job lock").clone() {
        return Err(GatewayError::Job(reason).into());
    }
    let entries = job
        .state
        .lock()
        .expect("job lock")
        .finish(sender_hashes)
        .map_err(GatewayError::from)?;
    let open = job.open();
    // A finish that signed its documents before the gateway stopped resumes with them: the
    // destinations were committed before they were signed, and the documents may be in the
    // ledger already (crate::record).
    let signed = match crate::record::load(&job.dir).map_err(FinishFailure::of)? {
        Some(signed) if signed.manifest.files == entries => signed,
        Some(_) => {
            return Err(GatewayError::Job(format!(
                "job {}: the documents signed before a restart describe other files",
                open.job_id
            ))
            .into());
        }
        None => {
            // The ledger's size before anything is committed (the documents go at or after
            // it): a ledger that cannot answer fails the finish while it can be sent again.
            let ledger_size = (shared.ledger.refresh().await)
                .map_err(|e| FinishFailure::of(e.into()))?
                .size;
            sign_finish(shared, job, &open, entries, ledger_size).await?
        }
    };
    let bytes = signed.manifest.total_bytes();
    // Record them in the ledger once (adjacent: the manifest, then the receipts in
    // destination order), each receipt with its inclusion proof, then the job's files.
    let (m, texts) = crate::record::record(&shared.ledger, &job.dir, signed, receipt_file)
        .await
        .map_err(FinishFailure::of)?;
    info!(tenant = %job.tenant, job = %open.job_id, correlation_id = %job.correlation, bytes, destinations = texts.len(), "job complete; manifest and receipts signed");
    *finished = Some((m.clone(), texts.clone()));
    Ok((m, texts))
}

/// Commits every live destination, signs the manifest and one receipt per destination, and
/// saves them with `ledger_size`, the ledger's size before they go to it (crate::record).
async fn sign_finish(
    shared: &Arc<Shared>,
    job: &Arc<Job>,
    open: &OpenJob,
    entries: Vec<trackshift_crypto::manifest::FileEntry>,
    ledger_size: u64,
) -> Result<crate::record::SignedFinish, GatewayError> {
    // Commit every live destination; a destination that fails here is dropped like one
    // that failed a write (or fails the job, in strict mode or when it is the only one).
    let mut outcomes: Vec<Result<Confirmation, String>> = Vec::with_capacity(job.dests.len());
    for d in 0..job.dests.len() {
        if let Some(reason) = job.dests[d].failed.lock().expect("dest lock").clone() {
            outcomes.push(Err(reason));
            continue;
        }
        match commit_dest(job, d, &entries).await {
            Ok(c) => outcomes.push(Ok(c)),
            Err(e) => {
                let reason = e.to_string();
                if let Err(e) = job.drop_dest(d, e).await {
                    job.fail(e.to_string());
                    return Err(e);
                }
                outcomes.push(Err(reason));
            }
        }
    }
    let now = Timestamp::now();
    let mut manifest = Manifest::new(
        open.job_id.clone(),
        job.tenant.clone(),
        now,
        open.source.clone(),
        open.destinations.clone(),
        entries,
    )?;
    // The key valid now in the key store as it is now (`now` is taken first: a rotation
    // the store does not show yet happens later, inside the old key's window).
    let manifest_signer = shared.keys.signer(Purpose::Manifest, now)?;
    let receipt_signer = shared.keys.signer(Purpose::Receipt, now)?;
    manifest.sign_with(manifest_signer.as_ref(), now)?;
    let mut receipts = Vec::with_capacity(outcomes.len());
    for (uri, outcome) in open.destinations.iter().zip(outcomes) {
        let (confirmation, status, detail) = match outcome {
            Ok(mut c) => {
                c.blake3 = Some(manifest.root_hash);
                (c, DeliveryStatus::Confirmed, None)
            }
            Err(reason) => (
                Confirmation {
                    size: 0,
                    etag: None,
                    blake3: None,
                },
                DeliveryStatus::Failed,
                Some(reason),
            ),
        };
        let mut receipt = Receipt {
            format: trackshift_crypto::receipt::RECEIPT_FORMAT.to_string(),
            job_id: open.job_id.clone(),
            tenant: job.tenant.clone(),
            manifest_hash: manifest.document_hash()?,
            destination: uri.clone(),
            bytes: manifest.total_bytes(),
            confirmation,
            status,
            detail,
            correlation_id: open.correlation_id.clone(),
            completed_at: now,
            signature: None,
            ledger_proof: None,
        };
        receipt.sign_with(receipt_signer.as_ref(), now)?;
        receipts.push(receipt);
    }
    let signed = crate::record::SignedFinish {
        ledger_size,
        manifest,
        receipts,
    };
    let dir = job.dir.clone();
    // The destinations are committed: a failure to save is not retried (it would commit
    // them again).
    tokio::task::spawn_blocking(move || crate::record::save(&dir, &signed).map(|()| signed))
        .await
        .expect("saving task does not panic")
}

/// Commits every file of the job at destination `d` and checks what it confirms against
/// the manifest's entries (size, and the read-back hash when there is one).
async fn commit_dest(
    job: &Arc<Job>,
    d: usize,
    entries: &[trackshift_crypto::manifest::FileEntry],
) -> Result<Confirmation, GatewayError> {
    let mut size = 0u64;
    let mut etag = None;
    for (i, entry) in entries.iter().enumerate() {
        let w = job.writer(d, i as u32).await?;
        let conf = w.commit().await;
        // Committed (or failed): the writer need not stay open (`w` serves a removal).
        job.close_writer(d, i as u32, false).await;
        let conf = conf?;
        // The destination must hold what the manifest says: its size, and its hash when it
        // read the object back.
        let wrong = if conf.size != entry.size {
            Some(trackshift_connectors::ConnectorError::SizeMismatch {
                path: entry.path.clone(),
                expected: entry.size,
                actual: conf.size,
            })
        } else if conf.blake3.is_some_and(|seen| seen != entry.blake3.0) {
            Some(trackshift_connectors::ConnectorError::HashMismatch {
                path: entry.path.clone(),
                what: "the BLAKE3 of the object read back differs from the file's".into(),
            })
        } else {
            None
        };
        if let Some(e) = wrong {
            // Wrong bytes do not stay under the final name: this writer takes back what
            // it committed (never an object it did not create).
            if let Err(re) = w.remove().await {
                warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, destination = %job.dests[d].connector.uri(), path = %entry.path, error = %re, "could not remove an object that failed verification");
            }
            return Err(e.into());
        }
        size += conf.size;
        if entries.len() == 1 {
            etag = conf.etag;
        }
    }
    // The job's root hash is set once the manifest is built.
    Ok(Confirmation {
        size,
        etag,
        blake3: None,
    })
}
