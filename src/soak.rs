//! `trackshift bench --soak DURATION`: the endurance test. Keeps `--jobs` jobs running
//! through one gateway for DURATION, prints open descriptors, resident memory, ledger size
//! and chunk latency every `--report-every`, and fails if a job failed or descriptors or
//! memory trend upward (the last third of the run against the first third).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;
use trackshift_engine::jobs::JobState;
use trackshift_engine::jobs::runner::now_ms;

use crate::bench::{BenchArgs, Latency, Rig, cpu_seconds};

/// Job retention of a soak's gateway unless `--job-retention` says otherwise.
pub const JOB_RETENTION: Duration = Duration::from_secs(120);

/// Descriptors the last third of a soak may hold above the first third's most.
pub const FD_SLACK: usize = 16;
/// Resident memory the last third may average above the first third: this fraction ...
pub const RSS_SLACK_FRACTION: f64 = 0.10;
/// ... plus this many MiB.
pub const RSS_SLACK_MIB: f64 = 32.0;

/// One report line.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub at_s: f64,
    /// Open descriptors of this process.
    pub fds: usize,
    /// Resident memory, MiB.
    pub rss_mib: f64,
    /// Ledger entries.
    pub ledger_entries: u64,
    /// Ledger files on disk, MiB.
    pub ledger_mib: f64,
    /// Job directories on disk (`DATA/jobs/TENANT/JOB`).
    pub job_dirs: usize,
    /// Jobs completed so far.
    pub completed: u64,
    /// Jobs failed so far.
    pub failed: u64,
    /// Chunk latency over this interval.
    pub chunk_latency: Latency,
    /// CPU cores busy over this interval.
    pub cpu_cores: f64,
}

/// What a soak run found.
#[derive(Debug, Serialize)]
pub struct SoakResult {
    /// Jobs kept running at once.
    pub concurrency: usize,
    /// Bytes per job.
    pub size: u64,
    /// Seconds run.
    pub seconds: f64,
    /// Every report.
    pub samples: Vec<Sample>,
    /// Resident memory before the first job, MiB.
    pub start_rss_mib: f64,
    /// Resident memory a few seconds after the last job, MiB.
    pub idle_rss_mib: f64,
    /// Each check and whether it held.
    pub targets: Vec<(String, bool)>,
}

/// Runs the soak test; `Ok(false)` when a check failed.
pub async fn run(args: &BenchArgs, dir: &Path, duration: Duration) -> Result<bool> {
    let rig = Rig::start(args, dir).await?;
    let ledger_dir = dir.join("gateway").join("ledger");
    let jobs_dir = dir.join("gateway").join("jobs");
    let start_rss = rss_mib();
    eprintln!(
        "soak: {} jobs x {} bytes at once for {:?}, a report every {:?}",
        args.jobs, args.size, duration, args.report_every
    );
    println!(
        "{:>7} {:>5} {:>8} {:>9} {:>9} {:>8} {:>9} {:>6} {:>8} {:>8} {:>5}",
        "time_s",
        "fds",
        "rss_mib",
        "ledger_n",
        "ledger_mb",
        "job_dirs",
        "completed",
        "failed",
        "p50_ms",
        "p99_ms",
        "cpu"
    );
    let t0 = Instant::now();
    let mut submitted = 0usize;
    let mut samples = Vec::new();
    let mut mark = Mark::now();
    while t0.elapsed() < duration {
        let open = rig.open_jobs().await? as usize;
        for _ in open..args.jobs {
            rig.submit(args, submitted).await?;
            submitted += 1;
        }
        rig.runner.wake();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if mark.at.elapsed() >= args.report_every {
            mark.report(&rig, t0, [&ledger_dir, &jobs_dir], &mut samples)
                .await?;
        }
    }
    // Let the last jobs finish, then see what the process gives back when idle.
    while rig.open_jobs().await? > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mark.report(&rig, t0, [&ledger_dir, &jobs_dir], &mut samples)
        .await?;
    let last = samples.last().cloned().expect("just reported");
    let (idle_rss, idle_after) = settled_rss().await;
    let seconds = t0.elapsed().as_secs_f64();
    rig.stop().await;

    let mut targets = vec![(
        format!("no failed jobs ({} completed)", last.completed),
        last.failed == 0,
    )];
    targets.extend(trend_checks(&samples));
    targets.push(job_dirs_check(
        &samples,
        args.job_retention.unwrap_or(JOB_RETENTION),
        args.report_every,
    ));
    let result = SoakResult {
        concurrency: args.jobs,
        size: args.size,
        seconds,
        samples,
        start_rss_mib: start_rss,
        idle_rss_mib: idle_rss,
        targets,
    };
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("soak-result.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "memory: {:.0} MiB before the first job, {:.0} MiB {:.0} s after the last",
        result.start_rss_mib,
        result.idle_rss_mib,
        idle_after.as_secs_f64()
    );
    let mut ok = true;
    for (target, met) in &result.targets {
        println!("target {target}: {}", if *met { "met" } else { "MISSED" });
        ok &= met;
    }
    println!("results: {}", path.display());
    Ok(ok)
}

/// Resident memory once the process is idle: read every second until two readings a second
/// apart agree within 1 MiB, but not before the allocator's purge delay has passed (freed
/// memory stays with the process that long) and not longer than 30 s. Returns the reading
/// and when it was taken.
async fn settled_rss() -> (f64, Duration) {
    let started = Instant::now();
    let earliest = crate::PURGE_DELAY + Duration::from_secs(2);
    let mut last = rss_mib();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_mib();
        let waited = started.elapsed();
        if (waited >= earliest && (now - last).abs() < 1.0) || waited >= Duration::from_secs(30) {
            return (now, waited);
        }
        last = now;
    }
}

/// Descriptors and memory of the last third of the reports against the first third
/// (the very first report, warm-up, left out when there are enough).
pub fn trend_checks(samples: &[Sample]) -> Vec<(String, bool)> {
    let body = if samples.len() > 4 {
        &samples[1..]
    } else {
        samples
    };
    if body.len() < 3 {
        return vec![(
            format!(
                "at least 3 reports to judge trends (got {}; run longer or report more often)",
                body.len()
            ),
            false,
        )];
    }
    let third = body.len() / 3;
    let (first, last) = (&body[..third], &body[body.len() - third..]);
    let max_fds = |s: &[Sample]| s.iter().map(|x| x.fds).max().unwrap_or(0);
    let mean_rss = |s: &[Sample]| s.iter().map(|x| x.rss_mib).sum::<f64>() / s.len() as f64;
    let (f0, f1) = (max_fds(first), max_fds(last));
    let (r0, r1) = (mean_rss(first), mean_rss(last));
    let rss_limit = r0 * (1.0 + RSS_SLACK_FRACTION) + RSS_SLACK_MIB;
    vec![
        (
            format!(
                "descriptors flat (first third at most {f0}, last third at most {f1}, slack {FD_SLACK})"
            ),
            f1 <= f0 + FD_SLACK,
        ),
        (
            format!(
                "memory flat (first third {r0:.0} MiB, last third {r1:.0} MiB, limit {rss_limit:.0} MiB)"
            ),
            r1 <= rss_limit,
        ),
    ]
}

/// Job directories the last third may hold above the first third's most: this fraction.
pub const JOB_DIRS_SLACK_FRACTION: f64 = 0.5;

/// Job directories level off once the sweep removes as many as the jobs make: the last
/// third of the reports holds at most half again the most of the reports after the first
/// retention period. Shorter runs are not judged (they pass, saying so).
pub fn job_dirs_check(samples: &[Sample], retention: Duration, every: Duration) -> (String, bool) {
    let settled = (retention.as_secs_f64() / every.as_secs_f64().max(1e-3)).ceil() as usize + 1;
    let body = samples.get(settled..).unwrap_or_default();
    if body.len() < 3 {
        return (
            format!(
                "job directories flat: not judged (fewer than 3 reports after the first retention period of {})",
                humantime::format_duration(retention)
            ),
            true,
        );
    }
    let third = body.len() / 3;
    let max = |s: &[Sample]| s.iter().map(|x| x.job_dirs).max().unwrap_or(0);
    let (d0, d1) = (max(&body[..third]), max(&body[body.len() - third..]));
    let limit = (d0 as f64 * (1.0 + JOB_DIRS_SLACK_FRACTION)).ceil() as usize + 16;
    (
        format!(
            "job directories flat (first third at most {d0}, last third at most {d1}, limit {limit})"
        ),
        d1 <= limit,
    )
}

/// Where the current report interval began (time, clock for latencies, CPU used).
struct Mark {
    at: Instant,
    at_ms: i64,
    cpu: f64,
}

impl Mark {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            at_ms: now_ms(),
            cpu: cpu_seconds(),
        }
    }

    /// Takes, prints and keeps a report of the interval since the mark; starts the next.
    async fn report(
        &mut self,
        rig: &Rig,
        t0: Instant,
        dirs: [&Path; 2],
        samples: &mut Vec<Sample>,
    ) -> Result<()> {
        let s = sample(rig, t0, dirs, self.at_ms, self.at.elapsed(), self.cpu).await?;
        print_sample(&s);
        samples.push(s);
        *self = Self::now();
        Ok(())
    }
}

async fn sample(
    rig: &Rig,
    t0: Instant,
    [ledger_dir, jobs_dir]: [&Path; 2],
    since_ms: i64,
    interval: Duration,
    cpu_at_mark: f64,
) -> Result<Sample> {
    let counts = rig.store.counts().await?;
    let in_state = |state: JobState| {
        counts
            .iter()
            .filter(|c| c.1 == state)
            .map(|c| c.2)
            .sum::<u64>()
    };
    let chunk_ms = rig
        .runner
        .latencies
        .samples_since(since_ms)
        .into_iter()
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .collect();
    Ok(Sample {
        at_s: t0.elapsed().as_secs_f64(),
        fds: open_fds(),
        rss_mib: rss_mib(),
        ledger_entries: rig.gateway.ledger().size(),
        ledger_mib: dir_bytes(ledger_dir) as f64 / f64::from(1 << 20),
        job_dirs: subdirs(jobs_dir).iter().map(|t| subdirs(t).len()).sum(),
        completed: in_state(JobState::Completed),
        failed: in_state(JobState::Failed) + in_state(JobState::Cancelled),
        chunk_latency: Latency::of(chunk_ms),
        cpu_cores: (cpu_seconds() - cpu_at_mark) / interval.as_secs_f64().max(1e-3),
    })
}

fn print_sample(s: &Sample) {
    println!(
        "{:>7.0} {:>5} {:>8.0} {:>9} {:>9.1} {:>8} {:>9} {:>6} {:>8.1} {:>8.1} {:>5.2}",
        s.at_s,
        s.fds,
        s.rss_mib,
        s.ledger_entries,
        s.ledger_mib,
        s.job_dirs,
        s.completed,
        s.failed,
        s.chunk_latency.p50_ms,
        s.chunk_latency.p99_ms,
        s.cpu_cores
    );
}

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Resident memory now (VmRSS), MiB.
fn rss_mib() -> f64 {
    crate::bench::status_mib("VmRSS:")
}

/// The directories in `dir`.
fn subdirs(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        },
    )
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(fds: usize, rss_mib: f64) -> Sample {
        Sample {
            at_s: 0.0,
            fds,
            rss_mib,
            ledger_entries: 0,
            ledger_mib: 0.0,
            job_dirs: 0,
            completed: 0,
            failed: 0,
            chunk_latency: Latency::of(vec![]),
            cpu_cores: 0.0,
        }
    }

    #[test]
    fn a_flat_run_passes_and_a_leaking_one_fails() {
        let flat: Vec<_> = (0..9)
            .map(|i| s(40 + i % 3, 200.0 + (i % 2) as f64))
            .collect();
        assert!(trend_checks(&flat).iter().all(|(_, ok)| *ok));
        // One descriptor per job leaked: climbs past the slack.
        let leaking: Vec<_> = (0..9).map(|i| s(40 + i * 10, 200.0)).collect();
        let checks = trend_checks(&leaking);
        assert!(!checks[0].1, "{checks:?}");
        assert!(checks[1].1, "{checks:?}");
        // Memory climbing 30% over the run.
        let growing: Vec<_> = (0..9).map(|i| s(40, 200.0 + 10.0 * i as f64)).collect();
        let checks = trend_checks(&growing);
        assert!(checks[0].1 && !checks[1].1, "{checks:?}");
        // Too few reports to say anything: that is a failure, not a pass.
        assert!(!trend_checks(&flat[..2])[0].1);
    }

    #[test]
    fn job_directories_must_level_off_after_the_retention_period() {
        let (retention, every) = (Duration::from_secs(120), Duration::from_secs(60));
        let with = |dirs: &dyn Fn(usize) -> usize| -> Vec<Sample> {
            (0..12)
                .map(|i| Sample {
                    job_dirs: dirs(i),
                    ..s(40, 200.0)
                })
                .collect()
        };
        // Rising for the first two minutes, then flat: the sweep keeps up.
        let level = with(&|i| 1000 * i.min(2) + i % 2 * 30);
        assert!(job_dirs_check(&level, retention, every).1);
        // Never swept: one more minute's jobs every report.
        let growing = with(&|i| 1000 * i);
        let (what, ok) = job_dirs_check(&growing, retention, every);
        assert!(!ok, "{what}");
        // A run too short to tell says so and does not fail.
        let (what, ok) = job_dirs_check(&growing[..4], retention, every);
        assert!(ok && what.contains("not judged"), "{what}");
    }
}
