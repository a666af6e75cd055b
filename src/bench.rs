//! `trackshift bench`: the load test. Starts a gateway and its job service in this
//! process, submits many jobs from several tenants at once, lets the workers send them
//! over loopback QUIC, and reports aggregate throughput, chunk and job latency, failures,
//! CPU and peak memory as JSON and as a self-contained HTML page.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde::Serialize;
use trackshift_engine::gateway::{Gateway, GatewayConfig};
use trackshift_engine::jobs::runner::{Runner, RunnerConfig, now_ms};
use trackshift_engine::jobs::store::{ListQuery, NewJob};
use trackshift_engine::jobs::{JobSpec, JobState, JobStore};
use trackshift_engine::service::{Service, ServiceConfig};
use trackshift_engine::tenants::{TenantEntry, TenantFile};

/// Options of `trackshift bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Jobs submitted at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) jobs: usize,
    /// Bytes per job (accepts KiB, MiB, GiB).
    #[arg(long, default_value = "64MiB", value_parser = crate::size::parse_size)]
    pub(crate) size: u64,
    /// Tenants the jobs are spread over (round robin).
    #[arg(long, default_value_t = 4)]
    pub(crate) tenants: usize,
    /// Destination of every job (default `null://`, which discards the data).
    #[arg(long, default_value = "null://")]
    pub(crate) dest: String,
    /// Chunk size.
    #[arg(long, default_value = "4MiB", value_parser = crate::size::parse_size)]
    pub(crate) chunk_size: u64,
    /// Chunk bytes in flight across all jobs (bounds memory and, by Little's law, chunk
    /// latency: in flight / throughput).
    #[arg(long, default_value = "32MiB", value_parser = crate::size::parse_size)]
    pub(crate) memory: u64,
    /// Queueing allowed above the base delay before the jobs send less at once (as
    /// `serve --jobs-latency-target`); `off` keeps `--memory` in flight.
    #[arg(long, default_value = "100ms", value_parser = crate::transfer::parse_latency_target)]
    pub(crate) latency_target: crate::transfer::LatencyTarget,
    /// Working directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Where to write bench-result.json and bench-report.html.
    #[arg(long, default_value = ".")]
    pub(crate) out: PathBuf,
    /// Fail (exit 1) below this aggregate throughput.
    #[arg(long)]
    pub(crate) min_gbps: Option<f64>,
    /// Fail (exit 1) above this p99 chunk latency.
    #[arg(long)]
    pub(crate) max_p99_ms: Option<f64>,
    /// Soak test instead: keep `--jobs` jobs running for this long (e.g. `30m`), print
    /// descriptors, memory, ledger size and latency every `--report-every`, and fail if
    /// descriptors or memory trend upward or a job fails.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) soak: Option<Duration>,
    /// How often the soak test reports.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub(crate) report_every: Duration,
    /// Job directories untouched this long are removed while the test runs (the gateway's
    /// `--job-retention`; default: 7 days, for a soak 2 minutes, so that the sweep runs
    /// under load).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) job_retention: Option<Duration>,
}

/// Percentiles of a latency distribution, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// `samples` (Unix ms, latency) grouped by the second since `start_ms` they came in.
pub(crate) fn by_second(samples: &[(i64, Duration)], start_ms: i64) -> Vec<(u64, Latency)> {
    let mut seconds: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (at, d) in samples {
        let s = u64::try_from((at - start_ms).max(0) / 1000).unwrap_or(0);
        seconds.entry(s).or_default().push(d.as_secs_f64() * 1000.0);
    }
    seconds
        .into_iter()
        .map(|(s, ms)| (s, Latency::of(ms)))
        .collect()
}

impl Latency {
    pub(crate) fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if ms.is_empty() {
                0.0
            } else {
                ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1]
            }
        };
        Self {
            count: ms.len(),
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// One tenant's share of the run.
#[derive(Debug, Serialize)]
pub struct TenantResult {
    /// Tenant.
    pub tenant: String,
    /// Jobs completed.
    pub completed: usize,
    /// Bytes of completed jobs.
    pub bytes: u64,
    /// Mean job latency (submitted to completed), ms.
    pub mean_job_ms: f64,
}

/// The result file.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// Jobs submitted.
    pub jobs: usize,
    /// Bytes per job.
    pub size: u64,
    /// Tenants.
    pub tenants: usize,
    /// Destination.
    pub dest: String,
    /// Chunk size.
    pub chunk_size: u64,
    /// In-flight budget.
    pub memory_budget: u64,
    /// Jobs completed.
    pub completed: usize,
    /// Jobs failed (or not completed).
    pub failed: usize,
    /// Bytes acknowledged.
    pub bytes: u64,
    /// Wall time from first submission to the last job's end, seconds.
    pub seconds: f64,
    /// Aggregate throughput, Gbit/s.
    pub gbps: f64,
    /// Per-chunk latency (sent until acknowledged as durable).
    pub chunk_latency: Latency,
    /// Chunk latency of the chunks acknowledged in each second of the run (`[second,
    /// latency]`): where in the run the slow chunks were.
    pub chunk_latency_by_second: Vec<(u64, Latency)>,
    /// Per-job latency (submitted until completed).
    pub job_latency: Latency,
    /// CPU time used over wall time (2.0 = two cores busy).
    pub cpu_cores_used: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
    /// Throughput samples: (seconds since start, Gbit/s over the preceding interval).
    pub throughput: Vec<(f64, f64)>,
    /// Per tenant.
    pub per_tenant: Vec<TenantResult>,
    /// Targets given and whether they were met.
    pub targets: Vec<(String, bool)>,
    /// Machine: logical CPUs.
    pub cpus: usize,
}

/// Runs the load test.
/// A gateway and its job service in this process, with tenants whose sources are ready.
pub(crate) struct Rig {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) serving: tokio::task::JoinHandle<()>,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) runner: Arc<Runner>,
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    pub(crate) worker: tokio::task::JoinHandle<()>,
    pub(crate) names: Vec<String>,
    pub(crate) sources: PathBuf,
}

impl Rig {
    /// Sets up `args.tenants` tenants under `dir` (one source file of `args.size` each),
    /// a gateway on loopback and a worker allowed `args.jobs` jobs at once.
    pub(crate) async fn start(args: &BenchArgs, dir: &std::path::Path) -> Result<Self> {
        let data = dir.join("gateway");
        let sources = dir.join("sources");
        std::fs::create_dir_all(&sources)?;
        // One source file per tenant (jobs of a tenant read the same file: the test is of
        // the transfer path, not of the disk).
        let names: Vec<String> = (0..args.tenants).map(|i| format!("tenant-{i}")).collect();
        let mut file = TenantFile::default();
        for (i, t) in names.iter().enumerate() {
            let src = sources.join(t);
            std::fs::create_dir_all(&src)?;
            crate::demo::write_generated(
                &src.join("data.bin"),
                args.size,
                b"trackshift bench data",
                i as u64,
            )?;
            file.tenants.push(TenantEntry {
                sources: vec![src],
                destinations: Some(vec![trackshift_engine::tenants::DestinationRule::prefix(
                    args.dest.clone(),
                )]),
                ..TenantEntry::new(t, &trackshift_engine::tenants::generate_key())
            });
        }
        file.save(&data)?;
        let mut gcfg = GatewayConfig::new("127.0.0.1:0".parse()?, &data);
        gcfg.memory_budget = usize::try_from(args.memory.max(64 << 20) * 2).unwrap_or(usize::MAX);
        gcfg.job_retention = args.job_retention.or(gcfg.job_retention);
        // Every worker connection comes from this host, as `serve --http` requires.
        gcfg.max_connections_per_ip = gcfg.max_connections_per_ip.max(args.jobs + 64);
        let mut rc = RunnerConfig::local("bench");
        rc.max_running = args.jobs;
        rc.memory_budget = args.memory;
        rc.latency_target = args.latency_target.0;
        rc.per_job_in_flight = args.memory.min(64 << 20);
        rc.poll = Duration::from_millis(50);
        rc.heartbeat = Duration::from_secs(1);
        let service = Service::start(ServiceConfig {
            gateway: gcfg,
            shared: None,
            worker: Some(rc),
        })
        .await?;
        let gateway = service.gateway;
        let jobs = service.jobs.expect("a worker was asked for");
        let (store, runner) = (jobs.store, jobs.runner);
        let g = gateway.clone();
        let serving = tokio::spawn(async move { g.serve().await });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(runner.clone().run(stop_rx));
        Ok(Self {
            gateway,
            serving,
            store,
            runner,
            stop,
            worker,
            names,
            sources,
        })
    }

    /// Queues job number `j` (its tenant round robin) of `args`.
    pub(crate) async fn submit(&self, args: &BenchArgs, j: usize) -> Result<()> {
        let t = &self.names[j % self.names.len()];
        self.store
            .create(
                NewJob {
                    traceparent: None,
                    tenant: t.clone(),
                    spec: JobSpec {
                        source: self.sources.join(t).join("data.bin"),
                        destinations: vec![args.dest.clone()],
                        chunk_size: Some(args.chunk_size),
                        priority: None,
                        classification: None,
                        strict: None,
                        max_attempts: Some(1),
                    },
                    correlation_id: Some(format!("bench-{j}")),
                    idempotency_key: None,
                    max_queued: None,
                },
                now_ms(),
            )
            .await?;
        Ok(())
    }

    /// Jobs queued or running.
    pub(crate) async fn open_jobs(&self) -> Result<u64> {
        let counts = self.store.open_counts().await?;
        Ok(counts
            .iter()
            .filter(|(_, s, _)| !s.is_terminal())
            .map(|c| c.2)
            .sum())
    }

    /// Stops the worker and the gateway.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.worker.await;
        self.gateway.close();
        self.serving.abort();
    }
}

/// Runs the load test (or, with `--soak`, the soak test); `Ok(false)` when a target
/// was missed.
pub async fn run(args: BenchArgs) -> Result<bool> {
    if args.jobs == 0 || args.tenants == 0 {
        bail!("--jobs and --tenants must be at least 1");
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    if let Some(duration) = args.soak {
        let mut args = args;
        args.job_retention = args.job_retention.or(Some(crate::soak::JOB_RETENTION));
        return crate::soak::run(&args, &dir, duration).await;
    }
    let rig = Rig::start(&args, &dir).await?;
    let (store, runner, names) = (rig.store.clone(), rig.runner.clone(), rig.names.clone());

    eprintln!(
        "bench: {} jobs x {} bytes from {} tenants to {} over loopback QUIC",
        args.jobs, args.size, args.tenants, args.dest
    );
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let start_ms = now_ms();
    for j in 0..args.jobs {
        rig.submit(&args, j).await?;
    }
    runner.wake();
    let total = args.size * args.jobs as u64;
    let mut samples = Vec::new();
    let mut last = (0.0f64, 0u64);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = t0.elapsed().as_secs_f64();
        let bytes = runner.bytes_acknowledged();
        let rate = (bytes - last.1) as f64 * 8.0 / (now - last.0).max(1e-6) / 1e9;
        samples.push((now, rate));
        last = (now, bytes);
        let open = rig.open_jobs().await?;
        if open == 0 {
            break;
        }
        if samples.len() % 8 == 0 {
            eprintln!(
                "bench: {:.1} s, {:.0}% acknowledged, {} jobs open, {:.2} Gbit/s",
                now,
                bytes as f64 * 100.0 / total.max(1) as f64,
                open,
                rate
            );
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    rig.stop().await;

    // Results from the store and the worker's latency samples.
    let mut per_tenant = Vec::new();
    let mut job_ms = Vec::new();
    let (mut completed, mut failed, mut bytes) = (0, 0, 0u64);
    for t in &names {
        let mut cursor = None;
        let (mut done, mut tbytes, mut tms) = (0usize, 0u64, 0f64);
        loop {
            let page = store
                .list(
                    t,
                    &ListQuery {
                        state: None,
                        limit: Some(500),
                        cursor: cursor.clone(),
                    },
                )
                .await?;
            for j in &page.jobs {
                if j.state == JobState::Completed {
                    done += 1;
                    tbytes += j.bytes_total;
                    let ms = (j.updated_ms - j.created_ms) as f64;
                    tms += ms;
                    job_ms.push(ms);
                } else {
                    failed += 1;
                    eprintln!(
                        "bench: job {} {}: {}",
                        j.id,
                        j.state,
                        j.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        completed += done;
        bytes += tbytes;
        per_tenant.push(TenantResult {
            tenant: t.clone(),
            completed: done,
            bytes: tbytes,
            mean_job_ms: if done > 0 { tms / done as f64 } else { 0.0 },
        });
    }
    let timed = runner.latencies.samples_since(start_ms);
    let chunk_ms: Vec<f64> = timed
        .iter()
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .collect();
    let chunk_latency_by_second = by_second(&timed, start_ms);
    let gbps = bytes as f64 * 8.0 / seconds / 1e9;
    let chunk_latency = Latency::of(chunk_ms.clone());
    let mut targets = Vec::new();
    targets.push(("no failed jobs".to_string(), failed == 0));
    if let Some(min) = args.min_gbps {
        targets.push((format!("aggregate >= {min} Gbit/s"), gbps >= min));
    }
    if let Some(max) = args.max_p99_ms {
        targets.push((
            format!("p99 chunk latency <= {max} ms"),
            chunk_latency.p99_ms <= max,
        ));
    }
    let result = BenchResult {
        jobs: args.jobs,
        size: args.size,
        tenants: args.tenants,
        dest: args.dest.clone(),
        chunk_size: args.chunk_size,
        memory_budget: args.memory,
        completed,
        failed,
        bytes,
        seconds,
        gbps,
        chunk_latency,
        chunk_latency_by_second,
        job_latency: Latency::of(job_ms),
        cpu_cores_used: cpu / seconds,
        peak_rss_mib: peak_rss_mib(),
        throughput: samples,
        per_tenant,
        targets,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
    };
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join("bench-result.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = args.out.join("bench-report.html");
    std::fs::write(&html_path, html(&result, &chunk_ms))
        .with_context(|| format!("writing {}", html_path.display()))?;
    println!(
        "{} jobs ({} completed, {} failed), {:.2} GiB in {:.1} s: {:.2} Gbit/s aggregate",
        result.jobs,
        result.completed,
        result.failed,
        result.bytes as f64 / (1u64 << 30) as f64,
        result.seconds,
        result.gbps
    );
    println!(
        "chunk latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}  ({} chunks)",
        result.chunk_latency.p50_ms,
        result.chunk_latency.p95_ms,
        result.chunk_latency.p99_ms,
        result.chunk_latency.max_ms,
        result.chunk_latency.count
    );
    println!(
        "job latency ms:   p50 {:.0}  p95 {:.0}  p99 {:.0}  max {:.0}",
        result.job_latency.p50_ms,
        result.job_latency.p95_ms,
        result.job_latency.p99_ms,
        result.job_latency.max_ms
    );
    println!(
        "CPU {:.2} of {} cores, peak memory {:.0} MiB",
        result.cpu_cores_used, result.cpus, result.peak_rss_mib
    );
    for t in &result.per_tenant {
        println!(
            "  {}: {} jobs, {:.2} GiB, mean job {:.0} ms",
            t.tenant,
            t.completed,
            t.bytes as f64 / (1u64 << 30) as f64,
            t.mean_job_ms
        );
    }
    let mut ok = true;
    for (target, met) in &result.targets {
        println!("target {target}: {}", if *met { "met" } else { "MISSED" });
        ok &= met;
    }
    println!(
        "results: {} and {}",
        json_path.display(),
        html_path.display()
    );
    Ok(ok)
}

/// User + system CPU seconds of this process (from /proc).
pub(crate) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based) of the full line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size (VmHWM), MiB.
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory figure of this process from /proc/self/status (`VmRSS:`, `VmHWM:`), MiB.
pub(crate) fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A self-contained HTML report: figures, throughput over time and a latency histogram
/// as inline SVG (no scripts, no external resources).
fn html(r: &BenchResult, chunk_ms: &[f64]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>trackshift bench</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}.bad{{color:#b00}}.ok{{color:#070}}</style>\
         </head><body><h1>trackshift bench</h1><p>{} jobs &times; {} bytes from {} tenants to <code>{}</code>, \
         chunk {} bytes, in-flight budget {} bytes, {} CPUs.</p><table>",
        r.jobs,
        r.size,
        r.tenants,
        escape(&r.dest),
        r.chunk_size,
        r.memory_budget,
        r.cpus
    );
    let rows = [
        (
            "jobs completed / failed",
            format!("{} / {}", r.completed, r.failed),
        ),
        ("aggregate throughput", format!("{:.2} Gbit/s", r.gbps)),
        ("bytes", format!("{}", r.bytes)),
        ("wall time", format!("{:.1} s", r.seconds)),
        (
            "chunk latency p50 / p95 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1} ms ({} chunks)",
                r.chunk_latency.p50_ms,
                r.chunk_latency.p95_ms,
                r.chunk_latency.p99_ms,
                r.chunk_latency.max_ms,
                r.chunk_latency.count
            ),
        ),
        (
            "job latency p50 / p95 / p99 / max",
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} ms",
                r.job_latency.p50_ms,
                r.job_latency.p95_ms,
                r.job_latency.p99_ms,
                r.job_latency.max_ms
            ),
        ),
        ("CPU", format!("{:.2} cores", r.cpu_cores_used)),
        ("peak memory", format!("{:.0} MiB", r.peak_rss_mib)),
    ];
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    for (t, met) in &r.targets {
        let _ = write!(
            s,
            "<tr><th>target: {}</th><td class=\"{}\">{}</td></tr>",
            escape(t),
            if *met { "ok" } else { "bad" },
            if *met { "met" } else { "MISSED" }
        );
    }
    s.push_str("</table><h2>Throughput over time (Gbit/s)</h2>");
    s.push_str(&line_chart(&r.throughput));
    s.push_str("<h2>Chunk latency histogram (ms)</h2>");
    s.push_str(&histogram(chunk_ms));
    s.push_str("<h2>Per tenant</h2><table><tr><th>tenant</th><th>jobs</th><th>bytes</th><th>mean job latency</th></tr>");
    for t in &r.per_tenant {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0} ms</td></tr>",
            escape(&t.tenant),
            t.completed,
            t.bytes,
            t.mean_job_ms
        );
    }
    s.push_str("</table></body></html>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 720.0;
const H: f64 = 240.0;

fn line_chart(points: &[(f64, f64)]) -> String {
    let max_x = points.last().map_or(1.0, |p| p.0).max(1e-3);
    let max_y = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3);
    let mut path = String::new();
    for (i, (x, y)) in points.iter().enumerate() {
        let px = 40.0 + x / max_x * (W - 50.0);
        let py = H - 20.0 - y / max_y * (H - 30.0);
        let _ = write!(path, "{}{px:.1},{py:.1}", if i == 0 { "M" } else { " L" });
    }
    format!(
        "<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"40\" y1=\"{b}\" x2=\"{W}\" y2=\"{b}\" stroke=\"#888\"/>\
         <line x1=\"40\" y1=\"10\" x2=\"40\" y2=\"{b}\" stroke=\"#888\"/>\
         <text x=\"2\" y=\"18\" font-size=\"11\">{max_y:.2}</text>\
         <text x=\"{tx}\" y=\"{H}\" font-size=\"11\">{max_x:.1} s</text>\
         <path d=\"{path}\" fill=\"none\" stroke=\"#2266cc\" stroke-width=\"2\"/></svg>",
        b = H - 20.0,
        tx = W - 60.0
    )
}

fn histogram(ms: &[f64]) -> String {
    const BINS: usize = 40;
    let max = ms.iter().copied().fold(0.0, f64::max).max(1e-3);
    let mut counts = [0usize; BINS];
    for v in ms {
        let i = ((v / max) * BINS as f64) as usize;
        counts[i.min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let bw = (W - 50.0) / BINS as f64;
    let mut bars = String::new();
    for (i, c) in counts.iter().enumerate() {
        let h = *c as f64 / top as f64 * (H - 30.0);
        let _ = write!(
            bars,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#44aa66\"><title>{:.1}-{:.1} ms: {c}</title></rect>",
            40.0 + i as f64 * bw,
            H - 20.0 - h,
            bw - 1.0,
            i as f64 * max / BINS as f64,
            (i + 1) as f64 * max / BINS as f64
        );
    }
    format!(
        "<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"40\" y1=\"{b}\" x2=\"{W}\" y2=\"{b}\" stroke=\"#888\"/>{bars}\
         <text x=\"2\" y=\"18\" font-size=\"11\">{top}</text>\
         <text x=\"{tx}\" y=\"{H}\" font-size=\"11\">{max:.0} ms</text></svg>",
        b = H - 20.0,
        tx = W - 60.0
    )
}
