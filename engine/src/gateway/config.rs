//! The gateway's settings ([`GatewayConfig`]) and their defaults.

use super::*;

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
