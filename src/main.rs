//! `trackshift`: the command-line interface and the gateway.

mod api;
mod backup_cmd;
mod bench;
mod demo;
mod exit;
mod files;
mod http;
mod jobs_cmd;
mod keys_cmd;
mod ledger_cmd;
mod logfmt;
mod metrics_catalog;
mod otlp;
mod send_cmd;
mod size;
mod soak;
mod transfer;
mod tsa;

pub(crate) use files::{print_lines, print_text, read, read_secret_text, write_doc};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use trackshift_crypto::{Document, FileKeyStore, KeyBackend as _, Manifest, Receipt, Timestamp};
use trackshift_engine::audit;

/// Exit code when a document was checked and rejected.
const EXIT_REJECTED: u8 = exit::VERIFICATION_FAILED;

#[derive(Parser)]
#[command(
    name = "trackshift",
    version,
    about = "High-throughput data transfer with post-quantum signed manifests",
    long_about = "Trackshift moves data from a source to destinations and proves what arrived:\n\
        every transfer has a manifest (files, sizes, BLAKE3 chunk hashes) signed with ML-DSA-65\n\
        and, per destination, a receipt signed with Ed25519. Auditors check both offline with\n\
        the public key file alone.\n\n\
        Start with `trackshift demo`, which runs the whole flow on generated data.",
    after_help = "Exit codes: 0 success; 1 verification failed (bad signature, unknown, revoked or\n\
        expired key, hash mismatch); 2 usage error, malformed or unreadable input; 3 authentication\n\
        (unknown token, gateway certificate not trusted); 4 refused by the gateway (policy,\n\
        destination); 5 network (gateway unreachable, busy or failing for the whole retry time);\n\
        6 partial (a destination did not confirm the data)."
)]
struct Cli {
    /// Only errors on stderr (no progress, no warnings).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More on stderr: -v info, -vv debug (`RUST_LOG` wins when set).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// `-q` was given: commands print no progress.
pub(crate) fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Subcommand)]
enum Command {
    /// Run the whole flow on generated data: gateway, QUIC transfer, signed manifest and receipt, verification.
    Demo(demo::DemoArgs),
    /// Run the receiving gateway.
    Serve(transfer::ServeArgs),
    /// Send a file or directory to a gateway.
    Send(send_cmd::SendArgs),
    /// Create, rotate, revoke, list and export signing keys.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Build and sign transfer manifests.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Sign delivery receipts.
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// Verify a signed manifest or receipt offline, with public keys only (for auditors).
    Verify(VerifyArgs),
    /// Check the append-only ledger of signed manifests and receipts.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCommand),
    /// Load test: many concurrent jobs from several tenants through the job service and a
    /// gateway over loopback QUIC; reports throughput, latency, CPU and memory (JSON + HTML).
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout,
    /// for example `trackshift completions bash > /etc/bash_completion.d/trackshift`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or with `--out DIR` write one page per command
    /// (`trackshift.1`, `trackshift-send.1`, ...) into DIR.
    Man {
        /// Directory for one page per command.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Back up an embedded gateway's data directory while it runs: the SQLite job store
    /// (online backup API), the ledger up to a signed checkpoint, job directories; keys only
    /// with --with-keys, encrypted. Writes a manifest (sizes, SHA-256) last.
    Backup(backup_cmd::BackupArgs),
    /// Restore a backup from `trackshift backup` into a new data directory: every file is
    /// checked against the backup's manifest first, the restored ledger verified after.
    Restore(backup_cmd::RestoreArgs),
    /// Submit, list, inspect, cancel and wait for jobs through a gateway's job API.
    Jobs {
        /// API location and key.
        #[command(flatten)]
        api: jobs_cmd::ApiArgs,
        /// What to do.
        #[command(subcommand)]
        cmd: jobs_cmd::JobsCommand,
    },
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Hash a local file or directory into a manifest (streaming, constant memory, parallel).
    Create(CreateArgs),
    /// Sign a manifest with the key store's active manifest key (ML-DSA-65).
    Sign {
        /// The manifest JSON file.
        file: PathBuf,
        /// The key store directory.
        #[arg(long)]
        keys: PathBuf,
        /// Where to write the signed manifest (default: replace FILE).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// File or directory to describe.
    path: PathBuf,
    /// Output manifest file.
    #[arg(long)]
    out: PathBuf,
    /// Chunk size: a power of two from 1KiB to 1GiB (accepts KiB, MiB, GiB suffixes).
    #[arg(long, default_value = "4MiB", value_parser = size::parse_size)]
    chunk_size: u64,
    /// Job id (default: a new UUID).
    #[arg(long)]
    job_id: Option<String>,
    /// Tenant owning the job.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Destination URI (repeatable), recorded in the manifest.
    #[arg(long = "dest")]
    destinations: Vec<String>,
    /// Sign right away with this key store's active manifest key.
    #[arg(long)]
    keys: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Sign a receipt with the key store's active receipt key (Ed25519).
    Sign {
        /// The receipt JSON file.
        file: PathBuf,
        /// The key store directory.
        #[arg(long)]
        keys: PathBuf,
        /// Where to write the signed receipt (default: replace FILE).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct VerifyArgs {
    /// The signed manifest or receipt (JSON).
    file: PathBuf,
    /// Public key file from `trackshift keys export-public`.
    #[arg(long)]
    public_keys: PathBuf,
    /// For a receipt: the signed manifest it confirms (checks the binding too).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// For a manifest: the data it describes; every file is re-hashed and compared.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the verdict as one JSON object on stdout (`"ok": true` and what was checked);
    /// a failure is still an error on stderr and exit code 1.
    #[arg(long)]
    json: bool,
    /// For a receipt: its checkpoint's time-stamp from `trackshift ledger timestamp`
    /// (checked against --tsa-ca: the time the authority saw the ledger holding it).
    #[arg(long, value_name = "FILE", requires = "tsa_ca")]
    timestamp: Option<PathBuf>,
    /// The time-stamp authority's CA certificate (PEM).
    #[arg(long, value_name = "PEM", requires = "timestamp")]
    tsa_ca: Option<PathBuf>,
}

/// "valid from A until B (status)" for a key, as `verify` reports it.
/// The report line naming the key that signed a document and when it was valid.
fn signed_line(
    key: &trackshift_crypto::PublicKeyRecord,
    signed_at: &impl std::fmt::Display,
) -> String {
    format!(
        "   signed {} by {} key {} at {} (the key {})",
        key.algorithm,
        key.purpose,
        key.id,
        signed_at,
        key_window(key)
    )
}

fn key_window(key: &trackshift_crypto::PublicKeyRecord) -> String {
    format!(
        "valid from {} {}, {}",
        key.not_before,
        key.not_after
            .map(|t| format!("until {t}"))
            .unwrap_or_else(|| "with no end".into()),
        format!("{:?}", key.status).to_lowercase()
    )
}

/// The process's Prometheus recorder (installed once; every `metrics` macro records here).
pub fn metrics_handle() -> Result<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let h = metrics_exporter_prometheus::PrometheusBuilder::new()
        // Prefix matchers win over suffix ones: jobs take seconds to hours.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Prefix("trackshift_job_".into()),
            &[
                0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                14400.0,
            ],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_bytes".into()),
            &[
                16384.0,
                65536.0,
                262144.0,
                1048576.0,
                4194304.0,
                16777216.0,
                67108864.0,
                268435456.0,
            ],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .install_recorder()?;
    crate::metrics_catalog::describe();
    Ok(HANDLE.get_or_init(|| h).clone())
}

/// mimalloc keeps freed chunk buffers for reuse; glibc's malloc handed each multi-MiB chunk
/// buffer back to the kernel and faulted fresh zeroed pages in for the next (measured: page
/// faults and zeroing were a tenth of a transfer's CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same number in its v2 and v3 headers; a test
/// checks it by its default, 1000 ms in v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc returns it to the OS.
/// Set explicitly because the default differs between mimalloc versions (10 ms in v2, 1 s
/// in v3). Before chunk buffers were pooled, freed ones went back to the OS within that
/// delay and the next chunks faulted in (and the kernel zeroed) fresh pages: a third of
/// the gateway's CPU samples on an SFTP transfer, which a 10 s delay cut by about a tenth.
/// Chunk buffers now come from the engine's own pool (`trackshift_engine::pool`) and never go back; what is left is quinn's and the
/// connectors' short-lived buffers. 1 s keeps the gateway's CPU where 10 s had it (3.9 s
/// against 3.8 s for 2 GiB on loopback, median of three) and its peak at 109–131 MiB
/// instead of 117–163 MiB; no delay at all costs about 30 % more CPU (BENCHMARKS.md).
/// `MIMALLOC_PURGE_DELAY` in the environment wins.
const PURGE_DELAY_MS: std::ffi::c_long = 1_000;

/// [`PURGE_DELAY_MS`] as a duration (what an idle reading of resident memory must wait).
pub(crate) const PURGE_DELAY: std::time::Duration =
    std::time::Duration::from_millis(PURGE_DELAY_MS as u64);

/// Also turns transparent huge pages off for the process, as `MIMALLOC_ALLOW_THP=0` would
/// (that variable in the environment wins): mimalloc asks for them on its arenas, and then
/// every partly used 2 MiB range is resident in full. The 200-job load test peaked at
/// 846 MiB resident with them and 413 MiB without, at the same throughput; the SFTP
/// gateway spends some CPU more per GiB without them (BENCHMARKS.md), a fair price for a
/// footprint that follows the memory budgets.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads its options atomically at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl with integer arguments; it changes only how this process's future
        // page faults are served. Failure (an old kernel) leaves huge pages on.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    let otlp = match &cli.command {
        Command::Serve(a) => a.otlp_endpoint.clone(),
        _ => None,
    };
    let traces = match init_logging(
        matches!(cli.command, Command::Serve(_)),
        cli.quiet,
        cli.verbose,
        otlp.as_deref(),
    ) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("error: {}", exit::message(&err));
            return ExitCode::from(exit::code(&err));
        }
    };
    let result = run(cli);
    // The spans still batched go out before the process ends.
    if let Some(p) = traces
        && let Err(e) = p.shutdown()
    {
        eprintln!("warning: exporting the last spans failed: {e}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = exit::code(&err);
            let label = if code == EXIT_REJECTED {
                "FAILED"
            } else {
                "error"
            };
            eprintln!("{label}: {}", exit::message(&err));
            ExitCode::from(code)
        }
    }
}

/// Logs to stderr: `RUST_LOG` filters (default `warn`, `info` for the gateway; `-q` only
/// errors, `-v` info, `-vv` debug); `TRACKSHIFT_LOG_FORMAT=json|text` picks the format
/// (default JSON for the gateway, one object per line with the fields of the enclosing
/// spans at the top level, so every line of a job carries its job id, tenant and
/// correlation id: [`logfmt`]). Colour
/// only when stderr is a terminal.
fn init_logging(
    gateway: bool,
    quiet: bool,
    verbose: u8,
    otlp: Option<&str>,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match (quiet, verbose) {
            (true, _) => "error",
            (false, 0) if gateway => "info,quinn=warn,tokio_postgres=warn",
            (false, 0) => "warn",
            (false, 1) => "info,quinn=warn,tokio_postgres=warn",
            (false, _) => "debug",
        })
    });
    let json = match std::env::var("TRACKSHIFT_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => gateway,
    };
    let lines = if json {
        tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(logfmt::FlatJson)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed()
    };
    let provider = otlp.map(otlp::provider).transpose()?;
    let spans = provider.as_ref().map(otlp::layer);
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .init();
    if let Some(url) = otlp {
        tracing::info!(collector = %otlp::shown(url), "exporting spans over OTLP/HTTP");
    }
    Ok(provider)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench(args) => {
            if !runtime()?.block_on(bench::run(args))? {
                std::process::exit(i32::from(EXIT_REJECTED));
            }
            Ok(())
        }
        Command::Jobs { api, cmd } => {
            let code = runtime()?.block_on(jobs_cmd::run(api, cmd))?;
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Serve(args) => runtime()?.block_on(transfer::serve(args)),
        Command::Send(args) => runtime()?.block_on(send_cmd::send(args)),
        Command::Keys(cmd) => keys_cmd::run(cmd),
        Command::Manifest(ManifestCommand::Create(args)) => manifest_create(args),
        Command::Manifest(ManifestCommand::Sign { file, keys, out }) => {
            let mut m = Manifest::from_json(&read(&file)?)?;
            sign_with_store(&mut m, &keys)?;
            write_doc(out.as_deref().unwrap_or(&file), &m.to_json())
        }
        Command::Receipt(ReceiptCommand::Sign { file, keys, out }) => {
            let mut r = Receipt::from_json(&read(&file)?)?;
            sign_with_store(&mut r, &keys)?;
            write_doc(out.as_deref().unwrap_or(&file), &r.to_json())
        }
        Command::Verify(args) => verify(args),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "trackshift", &mut out);
            print_text(&String::from_utf8_lossy(&out))
        }
        Command::Man { out } => man(out.as_deref()),
        Command::Ledger(cmd) => ledger_cmd::run(cmd),
        Command::Backup(args) => backup_cmd::backup(args),
        Command::Restore(args) => backup_cmd::restore(args),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    start_purger();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(collect_on_park)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?)
}

/// Most threads the runtime runs blocking work on (tokio's default is 512). Blocking work
/// beyond them queues, and a thread that finishes a task takes the next one without going
/// to sleep: a gateway writing 20,000 small files to local disk grew 512 threads and
/// switched between them 16 times per file; with 64 it spent a third less CPU
/// (BENCHMARKS.md, "Many small files": 3.9 against 2.5 s for 20,000 files of 4 KiB).
const MAX_BLOCKING_THREADS: usize = 64;

/// How often a worker thread about to sleep, and the purger thread, ask mimalloc to
/// collect.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Called by each runtime worker as it goes idle: gives mimalloc a chance to retire the
/// thread's empty pages (at most once per [`COLLECT_EVERY`]). mimalloc does that only
/// during the thread's own allocations and frees, so an idle thread kept its last burst
/// of freed memory for good: a gateway back at rest stayed at its peak.
fn collect_on_park() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    LAST.with(|last| {
        if last.get().is_none_or(|t| t.elapsed() >= COLLECT_EVERY) {
            last.set(Some(std::time::Instant::now()));
            // SAFETY: mimalloc's collection of the calling thread's heap; no arguments
            // beyond the flag, callable at any time.
            unsafe { libmimalloc_sys::mi_collect(false) }
        }
    });
}

/// A thread that asks mimalloc to collect every [`COLLECT_EVERY`], so that memory whose
/// purge delay ran out goes back to the OS even when every worker sleeps (the delayed
/// purge otherwise happens only inside allocator calls).
fn start_purger() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("trackshift-purge".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(COLLECT_EVERY);
                    // SAFETY: as in `collect_on_park`.
                    unsafe { libmimalloc_sys::mi_collect(false) }
                }
            });
    });
}

fn manifest_create(args: CreateArgs) -> Result<()> {
    let files = trackshift_engine::scan_path(&args.path, args.chunk_size)?;
    let source = source_uri(&args.path)?;
    let job_id = args
        .job_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut m = Manifest::new(
        job_id,
        args.tenant,
        Timestamp::now(),
        source,
        args.destinations,
        files,
    )?;
    if let Some(keys) = &args.keys {
        sign_with_store(&mut m, keys)?;
    }
    write_doc(&args.out, &m.to_json())?;
    println!(
        "manifest {}: {} files, {} bytes, root {}{}",
        args.out.display(),
        m.files.len(),
        m.total_bytes(),
        m.root_hash,
        if m.signature.is_some() {
            ", signed"
        } else {
            ""
        }
    );
    Ok(())
}

/// `file://` URI of a local path (absolute).
fn source_uri(path: &Path) -> Result<String> {
    let abs =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    Ok(format!("file://{}", abs.display()))
}

fn sign_with_store<D: trackshift_crypto::Signable>(doc: &mut D, keys: &Path) -> Result<()> {
    let store = FileKeyStore::open(keys)?;
    let now = Timestamp::now();
    let signer = store.signer(D::PURPOSE, now)?;
    doc.sign_with(signer.as_ref(), now)?;
    Ok(())
}

/// `trackshift verify`: every check runs before anything is printed, so `OK` on stdout
/// means the document passed all of them (signature, key window, binding, ledger proof,
/// data); a failure prints only `FAILED: ...` on stderr (exit 1).
fn verify(args: VerifyArgs) -> Result<()> {
    let ring = trackshift_crypto::PublicKeyring::from_json(&read(&args.public_keys)?)
        .with_context(|| format!("public key file {}", args.public_keys.display()))?;
    let doc = Document::from_json(&read(&args.file)?)
        .with_context(|| format!("{}", args.file.display()))?;
    let mut report = Vec::new();
    let file = args.file.display().to_string();
    let json = match doc {
        Document::Manifest(m) => {
            if args.manifest.is_some() {
                bail!(
                    "--manifest applies to receipts; {} is a manifest",
                    args.file.display()
                );
            }
            let audit = audit::audit_manifest(&m, &ring, args.data.as_deref())?;
            let key = audit.key;
            let sig = m.signature.as_ref().expect("verified manifests are signed");
            report.push(format!(
                "OK manifest {} (job {}, tenant {}): {} files, {} bytes, root {}",
                args.file.display(),
                m.job_id,
                m.tenant,
                m.files.len(),
                m.total_bytes(),
                m.root_hash
            ));
            report.push(signed_line(key, &sig.signed_at));
            if args.timestamp.is_some() {
                bail!(
                    "--timestamp applies to receipts; {} is a manifest",
                    args.file.display()
                );
            }
            if audit.data_checked {
                report.push("   data re-hashed: every file matches".into());
            }
            serde_json::json!({
                "ok": true,
                "kind": "manifest",
                "file": file,
                "job_id": m.job_id,
                "tenant": m.tenant,
                "files": m.files.len(),
                "bytes": m.total_bytes(),
                "root_hash": m.root_hash.to_string(),
                "key": { "id": key.id.to_string(), "algorithm": key.algorithm.to_string(), "purpose": key.purpose.to_string() },
                "signed_at": sig.signed_at.to_string(),
                "data_checked": audit.data_checked,
            })
        }
        Document::Receipt(r) => {
            if args.data.is_some() {
                bail!(
                    "--data applies to manifests; {} is a receipt",
                    args.file.display()
                );
            }
            let manifest = match &args.manifest {
                Some(p) => Some(
                    Manifest::from_json(&read(p)?).with_context(|| format!("{}", p.display()))?,
                ),
                None => None,
            };
            let audit = audit::audit_receipt(&r, &ring, manifest.as_ref()).map_err(|e| {
                let what = match &e {
                    audit::AuditError::Manifest(_) => format!(
                        "manifest {}",
                        args.manifest.as_deref().unwrap_or(Path::new("")).display()
                    ),
                    audit::AuditError::Ledger(_)
                    | audit::AuditError::MissingProof { .. }
                    | audit::AuditError::NoLedgerKeys => {
                        format!("ledger proof (keys from {})", args.public_keys.display())
                    }
                    _ => return anyhow::Error::new(e),
                };
                anyhow::Error::new(e).context(what)
            })?;
            let (key, logged) = (audit.key, audit.logged);
            let sig = r.signature.as_ref().expect("verified receipts are signed");
            report.push(format!(
                "OK receipt {} (job {}, tenant {}): {} to {}, {} bytes",
                args.file.display(),
                r.job_id,
                r.tenant,
                r.status.as_str(),
                r.destination,
                r.bytes
            ));
            report.push(signed_line(key, &sig.signed_at));
            if audit.bound {
                report.push(format!("   bound to manifest {}", r.manifest_hash));
            }
            let ledger = logged.as_ref().map(|(proof, cp)| {
                serde_json::json!({
                    "origin": cp.origin,
                    "index": proof.index,
                    "size": cp.size,
                    "root": hex::encode(cp.root),
                })
            });
            let stamped = match (&args.timestamp, &args.tsa_ca, &logged) {
                (Some(t), Some(ca), Some((_, cp))) => {
                    let stamp: crate::tsa::Stamp = serde_json::from_slice(&read(t)?)
                        .with_context(|| format!("time-stamp file {}", t.display()))?;
                    let trust = trackshift_ledger::tsa::TsaTrust::from_pem(&read(ca)?)
                        .with_context(|| format!("--tsa-ca {}", ca.display()))?;
                    let ledger_keys = ring
                        .ledger
                        .as_ref()
                        .expect("a logged receipt's keys name the ledger");
                    let ts =
                        crate::tsa::verify_stamp(&stamp, cp.size, &cp.root, ledger_keys, &trust)
                            .with_context(|| format!("time-stamp {}", t.display()))?;
                    Some((ts, stamp.size))
                }
                (Some(_), _, None) => bail!(
                    "--timestamp needs the receipt's ledger proof, and key file {} names no ledger",
                    args.public_keys.display()
                ),
                _ => None,
            };
            if let Some((proof, cp)) = logged {
                report.push(format!(
                    "   recorded in ledger {} as entry {} of {} (root {}, cosigned with ML-DSA-44 at {})",
                    cp.origin,
                    proof.index,
                    cp.size,
                    hex::encode(cp.root),
                    trackshift_crypto::Timestamp::from_unix(cp.cosigned_at)
                ));
            }
            if let Some((ts, size)) = &stamped {
                report.push(format!(
                    "   time-stamped: the ledger held it by {} (time-stamp authority {}, serial {}, checkpoint of {size} entries)",
                    trackshift_crypto::Timestamp::from_unix(ts.time),
                    ts.signer,
                    ts.serial
                ));
            }
            let stamped_json = stamped.as_ref().map(|(ts, size)| {
                serde_json::json!({
                    "time": trackshift_crypto::Timestamp::from_unix(ts.time).to_string(),
                    "tsa": ts.signer,
                    "serial": ts.serial,
                    "checkpoint_size": size,
                })
            });
            serde_json::json!({
                "ok": true,
                "kind": "receipt",
                "file": file,
                "job_id": r.job_id,
                "tenant": r.tenant,
                "status": r.status.as_str(),
                "destination": r.destination,
                "bytes": r.bytes,
                "key": { "id": key.id.to_string(), "algorithm": key.algorithm.to_string(), "purpose": key.purpose.to_string() },
                "signed_at": sig.signed_at.to_string(),
                "bound_to_manifest": audit.bound.then(|| r.manifest_hash.to_string()),
                "ledger": ledger,
                "timestamp": stamped_json,
            })
        }
    };
    if args.json {
        return print_text(&format!("{json}\n"));
    }
    print_lines(&report)
}

/// `trackshift man`: the page of the whole CLI on stdout, or with `out` one page per command
/// (`trackshift.1` and `trackshift-<command>.1`, sub-subcommands too) in that directory.
fn man(out: Option<&Path>) -> Result<()> {
    let cmd = Cli::command();
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        return print_text(&String::from_utf8_lossy(&page));
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fn write_pages(cmd: clap::Command, name: String, dir: &Path) -> Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.clone())).render(&mut page)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write_pages(sub.clone(), format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    let mut cmd = cmd;
    cmd.build();
    write_pages(cmd, "trackshift".into(), dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_keeps_freed_memory_a_while_and_no_huge_pages() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the environment decides; nothing of ours to check
        }
        let get = || {
            // SAFETY: reads one integer option.
            unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) }
        };
        // The option's default, 1000 ms, identifies it (its neighbours default to 1 and 0).
        assert_eq!(get(), 1000);
        // Away from the value we set, so that setting it shows.
        // SAFETY: sets one integer option.
        unsafe { libmimalloc_sys::mi_option_set(super::MI_OPTION_PURGE_DELAY, 7) };
        assert_eq!(get(), 7);
        super::tune_allocator();
        assert_eq!(get(), super::PURGE_DELAY_MS);
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            // SAFETY: reads one process flag.
            let thp_disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
            assert_eq!(thp_disabled, 1, "transparent huge pages are off");
        }
    }
}
