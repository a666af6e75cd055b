//! A whole gateway from one configuration: its tenants (the file in force, reloadable), the
//! service key its job-service workers authenticate with, the ledger (a file log in the
//! data directory, or shared in PostgreSQL), the QUIC endpoint, and the job service (store
//! and worker) when asked for. `trackshift serve`, `trackshift demo` and `trackshift bench`
//! all build theirs here; what they add is their own (HTTP, signals, a load generator).
//!
//! [`Service::start`] binds and opens everything but runs nothing: the caller runs
//! [`Gateway::serve`] and [`Runner::run`] where it wants them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::gateway::{Gateway, GatewayConfig, GatewayError};
use crate::jobs::runner::{Runner, RunnerConfig};
use crate::jobs::store::StoreError;
use crate::jobs::{JobStore, SqlStore};
use crate::tenants::{LiveTenants, ServiceKey, TenantError};
use crate::tls::ServerTrust;

/// Why a service did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The tenant file did not load.
    #[error("tenants: {0}")]
    Tenants(#[from] TenantError),
    /// The gateway did not bind or open its data directory, keys or ledger.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The shared ledger's keys or database.
    #[error("the shared ledger in PostgreSQL: {0}")]
    Ledger(#[from] trackshift_ledger::LedgerError),
    /// The job store did not open.
    #[error("the job store: {0}")]
    Store(#[from] StoreError),
}

/// Where the ledger and the job store live when gateways share them.
#[derive(Debug, Clone)]
pub struct Shared {
    /// `postgres://` URL of the database holding the ledger and the jobs.
    pub url: String,
    /// The ledger's signing keys (every gateway sharing the ledger holds the same).
    pub ledger_keys: PathBuf,
    /// Most connections the job store holds.
    pub store_connections: usize,
}

/// What a gateway with its job service is built from.
#[derive(Clone)]
pub struct ServiceConfig {
    /// The gateway's settings; `tenants`, `service_key` and (with [`ServiceConfig::shared`])
    /// `ledger` are filled in by [`Service::start`] from its data directory.
    pub gateway: GatewayConfig,
    /// The database shared with other gateways; `None`: SQLite jobs (`DATA/jobs.db`) and a
    /// file ledger in the data directory, for this gateway alone.
    pub shared: Option<Shared>,
    /// The job service's worker, if this gateway runs one: its `gateway` and `trust` are
    /// set to this gateway's (loopback, pinned certificate).
    pub worker: Option<RunnerConfig>,
}

/// The job service: its store and its worker (not yet running).
pub struct Jobs {
    /// The store of queued and finished jobs.
    pub store: Arc<dyn JobStore>,
    /// The worker; run it with [`Runner::run`].
    pub runner: Arc<Runner>,
    /// Which database the store is in (`sqlite ...`, `postgresql ...`), for the log.
    pub backend: String,
}

/// A gateway with what it was built with.
pub struct Service {
    /// The gateway, bound; run it with [`Gateway::serve`].
    pub gateway: Arc<Gateway>,
    /// The tenant file in force (one handle for gateway, worker and API).
    pub tenants: Arc<LiveTenants>,
    /// The key that the worker's tokens are derived from.
    pub service_key: Arc<ServiceKey>,
    /// The job service, when [`ServiceConfig::worker`] asked for one.
    pub jobs: Option<Jobs>,
}

impl Service {
    /// Loads the tenants and the service key from the gateway's data directory, connects
    /// the shared ledger (if any), binds the gateway and opens the job store and worker
    /// (if asked for).
    pub async fn start(cfg: ServiceConfig) -> Result<Self, ServiceError> {
        let ServiceConfig {
            mut gateway,
            shared,
            worker,
        } = cfg;
        let tenants = Arc::new(LiveTenants::load(&gateway.data_dir)?);
        let service_key = Arc::new(ServiceKey::load_or_create(&gateway.data_dir)?);
        gateway.tenants = Some(tenants.clone());
        gateway.service_key = Some(service_key.clone());
        if let Some(s) = &shared {
            let keys = trackshift_ledger::LiveLedgerKeys::load_or_generate(
                &s.ledger_keys,
                &gateway.ledger_origin,
            )?;
            let pg = trackshift_ledger::PgLedger::connect(&s.url, keys).await?;
            gateway.ledger = Some(trackshift_ledger::Log::Postgres(Arc::new(pg)));
        }
        let data_dir = gateway.data_dir.clone();
        let gateway = Arc::new(Gateway::bind(gateway).await?);
        let jobs = match worker {
            None => None,
            Some(mut rc) => {
                let sql = match &shared {
                    Some(s) => SqlStore::connect_postgres(&s.url, s.store_connections).await?,
                    None => SqlStore::open(&data_dir.join("jobs.db"))?,
                };
                let backend = sql.backend().to_string();
                let store: Arc<dyn JobStore> = Arc::new(sql);
                rc.gateway = gateway.local_addr();
                if rc.gateway.ip().is_unspecified() {
                    rc.gateway.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                rc.trust = gateway.pin();
                let runner = Runner::new(store.clone(), tenants.clone(), service_key.clone(), rc);
                Some(Jobs {
                    store,
                    runner,
                    backend,
                })
            }
        };
        Ok(Self {
            gateway,
            tenants,
            service_key,
            jobs,
        })
    }
}

impl RunnerConfig {
    /// The settings of a worker in its gateway's process, for [`ServiceConfig::worker`]
    /// (which points it at the gateway).
    pub fn local(worker_id: impl Into<String>) -> Self {
        Self::new(
            worker_id,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ServerTrust::Fingerprint([0; 32]),
        )
    }
}
