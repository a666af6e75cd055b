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
//!
//! Rooms: `config` (settings and defaults), `connection` (`Hello` and authentication, the
//! connection caps, the control stream), `chunks` (a chunk stream: read, hash check,
//! write), `job` (a held job, its destinations and writers, the connector cache, open and
//! resume), `journal` (the job directory, group commit), `seal` (commit, sign, ledger
//! append), `retention` (old job directories). This file: errors, the shared state and the
//! accept loop.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use trackshift_crypto::IoError;

use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};
use trackshift_connectors::{Connector, ObjectSpec, ObjectWriter, VerifyMode};
use trackshift_crypto::{
    Confirmation, DeliveryStatus, FileKeyStore, Hash32, KeyBackend as _, LiveKeyStore, Manifest,
    PublicKeyring, Purpose, Receipt, Signable as _, Timestamp,
};

use crate::protocol::session::{Finished, ReceiverAction, ReceiverSession, Refusal};
use crate::protocol::{
    self, ChunkRef, ClientFrame, Disposition, FrameDecoder, OpenJob, ProtocolError, ReceiverJob,
    ServerFrame, close,
};
use crate::tenants::{JobAsk, LiveTenants};
use crate::tls::GatewayIdentity;

/// Why the gateway could not start or a job failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The job directories were laid out by a gateway this one cannot follow.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// A file-system operation failed.
    #[error(transparent)]
    Io(#[from] trackshift_crypto::IoError),
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
    /// A QUIC stream or connection failed while it was read (the peer reset it, the
    /// connection closed).
    #[error("{what}: {source}")]
    Stream {
        /// Which stream, doing what.
        what: &'static str,
        /// What quinn or the socket said.
        #[source]
        source: BoxError,
    },
    /// A connection beyond the per-address cap.
    #[error("too many connections from {address} (at most {max} at once)")]
    TooManyConnections {
        /// The address (IPv6: its /64).
        address: String,
        /// The cap.
        max: usize,
    },
    /// The peer sent no `Hello` in time.
    #[error("no Hello within {0:?}")]
    HelloTimeout(std::time::Duration),
    /// A `Hello` whose token no tenant holds.
    #[error("unknown tenant token")]
    UnknownToken,
    /// A tenant the tenant file no longer names.
    #[error("unknown tenant {0}")]
    UnknownTenant(String),
    /// The tenant's policy does not admit the job.
    #[error(transparent)]
    Admission(#[from] crate::tenants::AdmissionError),
    /// The job failed earlier, for this reason (as it was told to the sender).
    #[error("{0}")]
    JobFailed(String),
    /// A chunk named a file the job does not have.
    #[error("file index {0} out of range")]
    FileIndex(u32),
    /// A job id reused for other files or destinations.
    #[error("job {0} already exists with different files or destination")]
    JobConflict(String),
    /// A job's chunks are smaller than a destination takes for one of its files.
    #[error(
        "{destination} needs chunks of at least {min} bytes for {path} ({size} bytes); this job uses {chunk}"
    )]
    ChunkTooSmall {
        /// The destination.
        destination: String,
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The smallest chunk the destination takes for it.
        min: u64,
        /// The job's chunk size.
        chunk: u64,
    },
    /// The marker that keeps a dropped destination dropped across restarts could not be
    /// written.
    #[error("recording that {uri} was dropped: {source}")]
    RecordingDrop {
        /// The destination.
        uri: String,
        /// Why.
        #[source]
        source: trackshift_crypto::CryptoError,
    },
    /// Every destination of the job failed.
    #[error("every destination failed; the last: {uri}: {source}")]
    AllDestinationsFailed {
        /// The last destination to fail.
        uri: String,
        /// Why it failed.
        #[source]
        source: Box<GatewayError>,
    },
    /// A file of the job directory does not parse (a damaged directory).
    #[error("{what} {}: {source}", path.display())]
    Stored {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: BoxError,
    },
    /// The documents signed before a restart describe other files than the job's.
    #[error("job {0}: the documents signed before a restart describe other files")]
    StaleDocuments(String),
    /// A test's crash point fired (`fault-injection` tests only).
    #[error("injected crash at {0}")]
    InjectedCrash(String),
}

/// A boxed error from below (quinn, serde), kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl GatewayError {
    pub(crate) fn stream(
        what: &'static str,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Self {
        move |source| Self::Stream { what, source }
    }
}

/// Runs the futures `work` yields, at most `at_once` at a time, handing each result to
/// `each`. After the first error no further one starts and those under way finish (none is
/// dropped halfway, each cleans up after itself); that error is returned.
async fn bounded<T, F: std::future::Future<Output = Result<T, GatewayError>>>(
    mut work: impl Iterator<Item = F>,
    at_once: usize,
    mut each: impl FnMut(T),
) -> Result<(), GatewayError> {
    use futures::StreamExt as _;
    let mut running = futures::stream::FuturesUnordered::new();
    let mut failed = None;
    loop {
        while failed.is_none() && running.len() < at_once {
            let Some(f) = work.next() else { break };
            running.push(f);
        }
        match running.next().await {
            None => break,
            Some(Ok(t)) => each(t),
            Some(Err(e)) => {
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> GatewayError + 'a {
    move |source| {
        GatewayError::Io(IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

mod chunks;
mod config;
mod connection;
pub mod dest_metrics;
mod job;
mod journal;
pub mod keyset;
pub mod layout;
mod retention;
mod seal;

use chunks::*;
pub use config::*;
use connection::*;
use job::*;
use journal::*;
pub use retention::{SweepReport, sweep_interval};
use seal::*;

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
    /// The key set last recorded in the ledger (recorded again when it changes).
    key_history: keyset::KeyHistory,
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
        layout::check_jobs_layout(&data.join("jobs"))?;
        let keys_dir = data.join("keys");
        if !keys_dir.join("keyring.json").exists() {
            FileKeyStore::init(&keys_dir, Timestamp::now())?;
        }
        let keys = LiveKeyStore::open(&keys_dir)?;
        if let Some(hsm) = trackshift_crypto::pkcs11::HsmConfig::load(&keys_dir)? {
            info!(token = %hsm.token, module = %hsm.module.display(), "receipt keys on a PKCS#11 token, and the ledger's (manifest keys too when it offers ML-DSA)");
        }
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
            key_history: keyset::KeyHistory::load(data),
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

    /// When the gateway's TLS certificate expires (seconds since 1970), if it parses.
    pub fn certificate_not_after(&self) -> Option<u64> {
        self.identity.not_after()
    }

    /// What a sender on this host pins this gateway with.
    pub fn pin(&self) -> crate::tls::ServerTrust {
        self.identity.pin()
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
    pub async fn probe_destinations(
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

    /// The key bundle auditors fetch (`crate::keybundle`): the key set in force, recorded
    /// in the ledger first if it changed, with its proofs; `since`, a tree size the auditor
    /// saw, adds the consistency proof from it.
    pub async fn key_bundle(
        &self,
        since: Option<u64>,
    ) -> Result<crate::keybundle::KeyBundle, GatewayError> {
        self.shared
            .key_history
            .bundle(&self.shared.keys, &self.shared.ledger, since)
            .await
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"gateway shutting down");
    }
}
