//! `trackshift serve` and `trackshift send`: the gateway and the sender on the command line.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use trackshift_engine::gateway::{Gateway, GatewayConfig};
use trackshift_engine::jobs::runner::RunnerConfig;
use trackshift_engine::sender::{Progress, SendConfig, SendReport, send_path};
use trackshift_engine::service::{Service, ServiceConfig, Shared};

/// Options of `trackshift serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Data directory: keys, TLS identity, tenants, jobs (created on first start).
    #[arg(long)]
    data_dir: PathBuf,
    /// Refuse senders that cannot use the post-quantum X25519MLKEM768 key exchange.
    #[arg(long)]
    pq_only: bool,
    /// Most received chunk bytes held in memory at once.
    #[arg(long, default_value = "512MiB", value_parser = crate::size::parse_size)]
    memory_budget: u64,
    /// Most bytes per second written to destinations (e.g. 200MiB), across all jobs.
    #[arg(long, value_parser = crate::size::parse_size)]
    dest_rate: Option<u64>,
    /// Most chunk writes in flight to destinations, across all jobs.
    #[arg(long)]
    dest_concurrency: Option<usize>,
    /// TCP address for HTTP: the job API (/v1/jobs), /reports/kpi, /health, /ready,
    /// /metrics, /dashboard, and the ledger's checkpoint, tiles and proofs for auditors
    /// (off unless given). With it the gateway also runs jobs submitted through the API.
    /// /health and /ready say only up or down unless the operator key is presented
    /// (`Authorization: Bearer`, the key in DATA/operator.key); /metrics and /dashboard
    /// need it.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// TCP address serving only the operator endpoints (/health, /ready, /metrics,
    /// /dashboard) with their details and without the operator key: bind it to loopback
    /// or an operators' network, never where tenants can reach it.
    #[arg(long, requires = "http")]
    operator_http: Option<SocketAddr>,
    /// Most API jobs this gateway runs at once.
    #[arg(long, default_value_t = 256)]
    max_jobs: usize,
    /// Most QUIC connections open at once from one source address (IPv6: one /64); more
    /// are closed with a reason saying so. With --http it must be above --max-jobs: the
    /// job service's workers all connect from this host.
    #[arg(
        long,
        default_value_t = trackshift_engine::gateway::DEFAULT_MAX_CONNECTIONS_PER_IP,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    max_connections_per_ip: usize,
    /// Most connections, from all addresses together, still handshaking or not yet
    /// authenticated; more are refused before any handshake work, and above half of it
    /// peers must first prove their address (QUIC Retry).
    #[arg(
        long,
        default_value_t = trackshift_engine::gateway::DEFAULT_MAX_UNAUTHENTICATED,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    max_unauthenticated: usize,
    /// Most files being written at once across all jobs (each holds a writer per
    /// destination: two descriptors at a local one). Default: a quarter of `ulimit -n`.
    #[arg(
        long,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    max_open_files: Option<usize>,
    /// Most jobs one connection may hold open at once; a sender asking for more is told to
    /// wait (Busy) until one of its jobs ends.
    #[arg(
        long,
        default_value_t = trackshift_engine::gateway::DEFAULT_MAX_JOBS_PER_CONNECTION,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    max_jobs_per_connection: usize,
    /// Job directories (DATA/jobs) nothing has touched for this long are removed; an
    /// abandoned job's partial destination objects are discarded with it. A job id sent
    /// again after that is a new job. `never` keeps them.
    #[arg(long, default_value = "7d", value_parser = parse_retention)]
    job_retention: Retention,
    /// Chunk bytes in flight across all API jobs (the job service's sending memory). Chunk
    /// latency is about this over the throughput: raise it for long fat links, keep it
    /// small next to the gateway.
    #[arg(long, default_value = "64MiB", value_parser = crate::size::parse_size)]
    jobs_memory: u64,
    /// Queueing the job service allows its chunks above the path's base delay before it
    /// sends less at once (its in-flight budget, at most `--jobs-memory`, follows measured
    /// chunk latency as LEDBAT does). `off` keeps the budget fixed at `--jobs-memory`.
    #[arg(long, default_value = "100ms", value_parser = parse_latency_target)]
    jobs_latency_target: LatencyTarget,
    /// Congestion controller of the job service's connections: cubic (default: its many
    /// connections share one path, where BBR doubled chunk latency), bbr (a long, lossy
    /// link to the gateway) or newreno.
    #[arg(long, default_value = "cubic")]
    jobs_congestion: trackshift_engine::transport::Congestion,
    /// How long jobs that ended stay in the job store (status, transitions, manifest and
    /// receipts through the API; the ledger keeps its entries forever). `never` keeps them.
    #[arg(long, default_value = "90d", value_parser = parse_retention)]
    job_history: Retention,
    /// How long a worker's claim on a job lasts without renewal (seconds); a job whose
    /// worker died is taken over after this.
    #[arg(long, default_value_t = 30)]
    lease_secs: u64,
    /// Export the HTTP API's request spans and the job service's job spans to an
    /// OpenTelemetry collector over OTLP/HTTP (`http://collector:4318`; a URL without a
    /// path gets `/v1/traces`). A job submitted with a W3C `traceparent` joins that trace.
    #[arg(long, env = "TRACKSHIFT_OTLP_ENDPOINT", hide_env_values = true)]
    pub otlp_endpoint: Option<String>,
    /// Job store and ledger shared with other gateways: `postgres://USER@HOST:PORT/DB`
    /// (TLS as libpq's `?sslmode=verify-full&sslrootcert=CA.pem`; docs/RUNBOOK.md,
    /// "PostgreSQL"). Default: SQLite in DATA/jobs.db and the ledger in
    /// DATA/ledger, for this gateway alone.
    #[arg(long, env = "TRACKSHIFT_STORE", hide_env_values = true)]
    store: Option<String>,
    /// The ledger's signing keys (default DATA/ledger/keys). Gateways sharing a ledger
    /// through `--store` must use the same keys: the first one to connect fixes them.
    #[arg(long)]
    ledger_keys: Option<PathBuf>,
    /// Where the `default` tenant may write: a destination URI prefix, its query the
    /// operator's settings for it (`sftp://u@h/in?known_hosts=/etc/ts/kh`); repeat for more,
    /// added to its rules at every start. Without one it writes nowhere.
    #[arg(long = "default-dest", value_name = "URI_PREFIX")]
    default_dest: Vec<String>,
    /// An RFC 3161 time-stamp authority (`http://...`): the latest checkpoint is
    /// time-stamped there whenever the log grew, at most every --tsa-interval, the answers
    /// kept in DATA/timestamps. One that is down delays stamps, never a transfer.
    #[arg(long, value_name = "URL", requires = "tsa_ca")]
    tsa: Option<reqwest::Url>,
    /// The authority's CA certificate (PEM; or its signing certificate): every answer is
    /// checked against it before it is kept.
    #[arg(long, value_name = "PEM", requires = "tsa")]
    tsa_ca: Option<PathBuf>,
    /// Least time between two time-stamps (seconds).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    tsa_interval: u64,
}

pub(crate) fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Ensures the gateway has a tenant: on first start creates `default` with a fresh token
/// written to DATA/default.token (0600). `default_dest` (from `--default-dest`) are the
/// prefixes it may write to, added at every start; without any it writes nowhere.
fn ensure_default_tenant(data_dir: &Path, default_dest: &[String]) -> Result<()> {
    let tenants = data_dir.join("tenants.json");
    let dests: Vec<&str> = default_dest.iter().map(String::as_str).collect();
    // A local directory named on the command line is the operator's: made if missing
    // (a tenant's job may then create directories beneath it, never the directory itself).
    for d in &dests {
        if let Ok(dest) = trackshift_engine::connectors::destination::Destination::parse(d)
            && dest.scheme() == trackshift_engine::connectors::destination::Scheme::File
        {
            let dir = PathBuf::from(format!("/{}", dest.segments().join("/")));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("--default-dest: creating {}", dir.display()))?;
        }
    }
    let rules = dests
        .iter()
        .map(|d| trackshift_engine::tenants::DestinationRule::from_uri(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--default-dest: {e}"))?;
    if tenants.exists() {
        if !rules.is_empty() {
            let mut file = trackshift_engine::tenants::TenantFile::load(data_dir)?;
            let Some(t) = file.tenants.iter_mut().find(|t| t.tenant == "default") else {
                bail!(
                    "--default-dest: there is no tenant \"default\" in {}",
                    tenants.display()
                );
            };
            trackshift_engine::tenants::allow_destinations(t, &rules);
            file.save(data_dir)?;
            // What was written must load (a rule over the data directory is refused).
            trackshift_engine::tenants::TenantFile::load(data_dir)?;
        }
        return Ok(());
    }
    let token = trackshift_engine::gateway::generate_token();
    trackshift_engine::gateway::add_tenant(data_dir, "default", &token, &dests)?;
    let token_path = data_dir.join("default.token");
    trackshift_crypto::filestore::write_atomic(&token_path, token.as_bytes(), 0o600)?;
    println!(
        "created tenant \"default\"; its token is in {} (mode 0600)",
        token_path.display()
    );
    if dests.is_empty() {
        println!(
            "the default tenant may write nowhere yet: restart with --default-dest URI_PREFIX (or edit {})",
            tenants.display()
        );
    }
    Ok(())
}

/// Loads the operator key (`DATA/operator.key`), creating it on first start, and says
/// where it is (never the key itself).
fn operator_key(data_dir: &Path) -> Result<trackshift_engine::operator::OperatorKey> {
    let (key, created) = trackshift_engine::operator::OperatorKey::load_or_create(data_dir)?;
    if created {
        println!(
            "created the operator key (for /metrics, /dashboard and the details of /health \
             and /ready) in {} (mode 0600)",
            key.path().display()
        );
    } else {
        println!("operator key: {}", key.path().display());
    }
    Ok(key)
}

/// Checks the secret files the gateway itself does not otherwise read at start: the
/// default tenant's token, the operator key (also without `--http`) and the SSH key of
/// the process environment's `TRACKSHIFT_SFTP_KEY` (tenants' credentials files, the
/// signing, ledger, TLS and service keys are checked as they load). Each must be
/// owner-only.
fn check_secret_files(data_dir: &Path) -> Result<()> {
    for name in [
        "default.token",
        trackshift_engine::operator::OPERATOR_KEY_FILE,
    ] {
        trackshift_crypto::filestore::read_secret_if_exists(&data_dir.join(name))?;
    }
    trackshift_engine::connectors::Settings::Process
        .check_secret_files()
        .context("the gateway's TRACKSHIFT_SFTP_KEY")?;
    Ok(())
}

/// Runs the gateway until interrupted. Every secret file is checked before anything is
/// bound or accepted.
pub async fn serve(args: ServeArgs) -> Result<()> {
    ensure_default_tenant(&args.data_dir, &args.default_dest)?;
    check_secret_files(&args.data_dir)?;
    let operator = match args.http {
        Some(_) => Some(std::sync::Arc::new(operator_key(&args.data_dir)?)),
        None => None,
    };
    // Installed before anything says the gateway is up, so that no SIGHUP can find the
    // default action (which ends the process).
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut cfg = GatewayConfig::new(args.listen, &args.data_dir);
    cfg.pq_only = args.pq_only;
    cfg.memory_budget = usize::try_from(args.memory_budget).unwrap_or(usize::MAX);
    if args.http.is_some() && args.max_connections_per_ip <= args.max_jobs {
        bail!(
            "--max-connections-per-ip {} must be above --max-jobs {}: the job service's workers connect from this host",
            args.max_connections_per_ip,
            args.max_jobs
        );
    }
    cfg.max_connections_per_ip = args.max_connections_per_ip;
    cfg.max_unauthenticated = args.max_unauthenticated;
    if let Some(n) = args.max_open_files {
        cfg.max_open_files = n;
    }
    cfg.max_jobs_per_connection = args.max_jobs_per_connection;
    cfg.job_retention = args.job_retention.0;
    let wrapping = trackshift_engine::connectors::Wrapping {
        prefix: None,
        concurrency: args.dest_concurrency,
        bytes_per_second: args.dest_rate,
    };
    if wrapping != trackshift_engine::connectors::Wrapping::default() {
        // One set of limits for the whole gateway: every job's connector shares it.
        let limits = trackshift_engine::connectors::Limits::new(&wrapping)?;
        cfg.connectors = std::sync::Arc::new(move |dest, verify, settings| {
            limits.wrap(trackshift_engine::connectors::connect(
                dest, verify, settings,
            )?)
        });
    }
    let shared = match args.store.as_deref() {
        Some(url) if is_postgres(url) => Some(Shared {
            url: url.to_string(),
            ledger_keys: args
                .ledger_keys
                .clone()
                .unwrap_or_else(|| args.data_dir.join("ledger").join("keys")),
            store_connections: 16,
        }),
        Some(other) => bail!(
            "--store {:?}: only postgres:// URLs (default: SQLite in the data directory)",
            other.split('@').next_back().unwrap_or("")
        ),
        None => None,
    };
    let worker = match (args.http, &operator) {
        (Some(_), Some(_)) => Some(worker_config(&args)),
        _ => None,
    };
    let service = Service::start(ServiceConfig {
        gateway: cfg,
        shared: shared.clone(),
        worker,
    })
    .await?;
    let Service {
        gateway,
        tenants,
        jobs,
        ..
    } = service;
    if let Some(s) = &shared {
        println!(
            "ledger: shared in PostgreSQL, {} entries (keys in {})",
            gateway.ledger().size(),
            s.ledger_keys.display()
        );
    }
    println!(
        "gateway listening on {} (QUIC, ALPN trackshift/1)",
        gateway.local_addr()
    );
    println!("certificate fingerprint: {}", gateway.fingerprint());
    println!(
        "auditors: trackshift keys fetch --gateway {} --fingerprint {} --out keys.json",
        gateway.local_addr(),
        gateway.fingerprint()
    );
    let stamps = match (&args.tsa, &args.tsa_ca) {
        (Some(url), Some(ca)) => {
            let trust = trackshift_ledger::tsa::TsaTrust::from_pem(&crate::read(ca)?)
                .with_context(|| format!("--tsa-ca {}", ca.display()))?;
            let stamps = std::sync::Arc::new(crate::tsa::Stamps::open(&args.data_dir)?);
            tokio::spawn(crate::tsa::run(
                gateway.ledger().clone(),
                stamps.clone(),
                crate::tsa::TsaConfig {
                    url: url.clone(),
                    trust,
                    interval: Duration::from_secs(args.tsa_interval),
                },
            ));
            tracing::info!(tsa = %url, interval_secs = args.tsa_interval, "checkpoints time-stamped by an outside authority (DATA/timestamps)");
            Some(stamps)
        }
        _ => None,
    };
    let (stop_jobs, stop_rx) = tokio::sync::watch::channel(false);
    let mut runner_task = None;
    let http = match (args.http, operator, jobs) {
        (Some(addr), Some(operator), Some(jobs)) => {
            println!("job store: {}", jobs.backend);
            let runner = jobs.runner.clone();
            let state = crate::api::AppState {
                store: jobs.store,
                tenants: tenants.clone(),
                runner: jobs.runner,
                ledger: gateway.ledger().clone(),
                gateway: gateway.clone(),
                metrics: crate::metrics_handle()?,
                operator,
                readiness: Default::default(),
                stamps: stamps.clone(),
            };
            runner_task = Some(tokio::spawn(runner.run(stop_rx)));
            let router = crate::http::router(gateway.ledger().clone())
                .merge(crate::http::keys_router(gateway.clone()))
                .merge(crate::http::timestamp_router(
                    gateway.ledger().clone(),
                    stamps.clone(),
                ))
                .merge(crate::api::router(state.clone()));
            let (local, serving) = crate::http::bind(addr, router).await?;
            println!(
                "HTTP (job API, health, metrics, ledger checkpoint, tiles, proofs) on http://{local}"
            );
            let operator_serving = match args.operator_http {
                Some(addr) => {
                    let (local, serving) =
                        crate::http::bind(addr, crate::api::operator_router(state)).await?;
                    println!(
                        "operator HTTP (health, ready, metrics, dashboard; no key asked: keep it private) on http://{local}"
                    );
                    Some(serving)
                }
                None => None,
            };
            Some(tokio::spawn(async move {
                match operator_serving {
                    Some(op) => tokio::try_join!(serving, op).map(drop),
                    None => serving.await,
                }
            }))
        }
        _ => None,
    };
    tokio::spawn(reload_on_hangup(tenants, gateway.clone(), hangup));
    tokio::select! {
        () = gateway.serve() => {}
        Some(Ok(Err(e))) = async { match http { Some(h) => Some(h.await), None => None } } => {
            gateway.close();
            return Err(e).context("the HTTP endpoint failed");
        }
        _ = async { tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = terminate.recv() => {} } } => {
            println!("shutting down");
            let _ = stop_jobs.send(true);
            if let Some(t) = runner_task {
                // Running jobs get a moment to finish; the rest resume after a restart.
                let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
            }
            gateway.close();
        }
    }
    Ok(())
}

/// Reads `DATA/tenants.json` and the signing keys again on every SIGHUP: keys, policy,
/// quotas and credentials change for the next connection, request and job, with nothing
/// restarted. A tenant file that does not load is reported and the version in force stays.
///
/// The key store is also watched (every [`KEY_STORE_POLL`]) so a `keys rotate` is loaded,
/// its secret files checked and logged without a signal; signing checks the store once
/// more by itself before every signature, so neither the signal nor the poll is needed for
/// a job to sign with the key valid at its signing time.
async fn reload_on_hangup(
    tenants: std::sync::Arc<trackshift_engine::tenants::LiveTenants>,
    gateway: std::sync::Arc<Gateway>,
    mut hangup: tokio::signal::unix::Signal,
) {
    let mut poll = tokio::time::interval(KEY_STORE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last key reload error logged, so a broken store is reported once, not per poll.
    let mut reported: Option<String> = None;
    loop {
        let force = tokio::select! {
            signal = hangup.recv() => {
                if signal.is_none() {
                    return;
                }
                match tenants.reload() {
                    Ok(t) => tracing::info!(
                        tenants = t.file.tenants.len(),
                        generation = t.generation,
                        "tenant file reloaded"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "tenant file not reloaded; the version loaded before stays in force"
                    ),
                }
                true
            }
            _ = poll.tick() => false,
        };
        match gateway.reload_keys(force) {
            Ok(r) if r.documents.changed || r.ledger => {
                reported = None;
                let active: Vec<String> = r
                    .documents
                    .active
                    .iter()
                    .map(|(p, id)| format!("{p} {id}"))
                    .collect();
                tracing::info!(generation = r.documents.generation, active = %active.join(", "), ledger = r.ledger, "signing keys reloaded");
            }
            Ok(_) => reported = None,
            Err(e) => {
                let msg = e.to_string();
                if force || reported.as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, "signing keys not reloaded; nothing is signed until the key store loads");
                }
                reported = Some(msg);
            }
        }
    }
}

/// How often a running gateway looks for a changed key store.
const KEY_STORE_POLL: Duration = Duration::from_secs(2);

/// The job service's worker settings from the command line.
fn worker_config(args: &ServeArgs) -> RunnerConfig {
    let mut rc = RunnerConfig::local(format!("{}-{}", hostname(), std::process::id()));
    rc.max_running = args.max_jobs.max(1);
    rc.memory_budget = args.jobs_memory;
    rc.latency_target = args.jobs_latency_target.0;
    rc.job_history = args.job_history.0;
    rc.lease = Duration::from_secs(args.lease_secs.max(2));
    rc.heartbeat = (rc.lease / 6).max(Duration::from_millis(300));
    rc.pq_only = args.pq_only;
    rc.congestion = args.jobs_congestion;
    rc.job_span =
        trackshift_engine::jobs::runner::JobSpanHook(std::sync::Arc::new(crate::otlp::job_span));
    rc
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// Writes `manifest.json` and the receipts of a finished send into `dir`: `receipt.json`
/// for the first destination, `receipt-2.json`, `receipt-3.json`, ... for the others.
pub fn write_documents(dir: &Path, report: &SendReport) -> Result<(PathBuf, Vec<PathBuf>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let m = dir.join("manifest.json");
    crate::write_doc(&m, report.manifest.trim_end())?;
    let mut paths = Vec::with_capacity(report.receipts.len());
    for (i, r) in report.receipts.iter().enumerate() {
        let p = dir.join(if i == 0 {
            "receipt.json".to_string()
        } else {
            format!("receipt-{}.json", i + 1)
        });
        crate::write_doc(&p, r.trim_end())?;
        paths.push(p);
    }
    Ok((m, paths))
}

/// Bits per second in Gbit/s.
pub fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e9
}

/// Runs a send with a progress bar on a terminal, plain lines every few seconds otherwise.
pub async fn send_with_progress(path: &Path, cfg: &SendConfig) -> Result<SendReport> {
    let quiet = crate::quiet();
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template"),
        );
        bar
    });
    let last_line = std::sync::Mutex::new(Instant::now());
    let progress = |p: Progress| {
        if let Some(bar) = &bar {
            bar.set_length(p.total_bytes);
            bar.set_position(p.acked_bytes);
        } else if !quiet {
            let mut last = last_line.lock().expect("progress lock");
            if last.elapsed() >= Duration::from_secs(2) || p.acked_bytes == p.total_bytes {
                *last = Instant::now();
                eprintln!(
                    "progress: {}/{} bytes, {:.2} Gbit/s",
                    p.acked_bytes,
                    p.total_bytes,
                    gbps(p.acked_bytes, p.elapsed)
                );
            }
        }
    };
    let result = send_path(path, cfg, progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    Ok(result?)
}

/// `--job-retention`: a duration, or `never`.
#[derive(Debug, Clone, Copy)]
struct Retention(Option<std::time::Duration>);

/// A queueing-delay target, or none (`off`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LatencyTarget(pub(crate) Option<std::time::Duration>);

/// Parses `--jobs-latency-target` (a duration such as `100ms`, or `off`).
pub(crate) fn parse_latency_target(s: &str) -> Result<LatencyTarget, String> {
    duration_or(
        s,
        "off",
        "a target of zero would shrink the budget to its floor; use `off` for a fixed budget",
        "100ms",
    )
    .map(LatencyTarget)
}

fn parse_retention(s: &str) -> Result<Retention, String> {
    duration_or(
        s,
        "never",
        "a retention of zero would remove jobs as soon as they end; use `never` to keep them",
        "7d or 12h",
    )
    .map(Retention)
}

/// A duration other than zero (`zero` says why not), or `word` for none; `example` shows
/// the form when `s` is neither.
fn duration_or(
    s: &str,
    word: &str,
    zero: &str,
    example: &str,
) -> Result<Option<std::time::Duration>, String> {
    if s == word {
        return Ok(None);
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err(zero.into()),
        Err(e) => Err(format!("{e} (a duration such as {example}, or `{word}`)")),
    }
}
