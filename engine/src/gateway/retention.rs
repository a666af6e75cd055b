//! Retention of job directories. A job's directory (`DATA/jobs/TENANT/JOB`) lets a sender
//! resume it and lets a finish sent again get the same documents; once nothing has touched
//! it for the retention period it goes, so a gateway that runs for months does not keep
//! one directory per job it ever took. A finished job's documents stay in the ledger; an
//! abandoned job (never finished) also has its partial destination objects discarded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::{GatewayError, JobKey, OpenGate, OpenJob, Shared, abort_writers, io};

/// What one sweep of the job directories did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Directories of finished jobs removed.
    pub finished: usize,
    /// Directories of abandoned (unfinished) jobs removed, their partial objects discarded.
    pub abandoned: usize,
    /// Expired directories kept because a connection or a finish holds the job now.
    pub held: usize,
    /// Expired directories kept because something failed (logged; tried again next sweep).
    pub failed: usize,
}

/// How often the gateway sweeps for a retention period: an eighth of it, between a second
/// and an hour.
pub fn sweep_interval(retention: Duration) -> Duration {
    (retention / 8).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// A job directory nothing has written to for longer than the retention period.
struct Expired {
    key: JobKey,
    dir: PathBuf,
    finished: bool,
}

/// The job directories under `root` whose newest file is older than `older_than`.
fn list_expired(root: &Path, older_than: Duration) -> Result<Vec<Expired>, GatewayError> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    let tenants = match std::fs::read_dir(root) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("listing", root)(e)),
    };
    for tenant in tenants {
        let tenant = tenant.map_err(io("listing", root))?;
        let tenant_dir = tenant.path();
        if !tenant
            .file_type()
            .map_err(io("reading", &tenant_dir))?
            .is_dir()
        {
            continue;
        }
        // Directories go away while this runs (a job cancelled, another sweep): gone is
        // not an error, and it must not stop the sweep of the rest.
        let jobs = match std::fs::read_dir(&tenant_dir) {
            Ok(j) => j,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("listing", &tenant_dir)(e)),
        };
        for job in jobs {
            let job = job.map_err(io("listing", &tenant_dir))?;
            let dir = job.path();
            if !job.file_type().map_err(io("reading", &dir))?.is_dir() {
                continue;
            }
            let newest = match newest_mtime(&dir) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("reading", &dir)(e)),
            };
            if now.duration_since(newest).unwrap_or_default() <= older_than {
                continue;
            }
            let (Some(t), Some(j)) = (
                tenant.file_name().to_str().map(str::to_string),
                job.file_name().to_str().map(str::to_string),
            ) else {
                continue;
            };
            out.push(Expired {
                finished: dir.join("manifest.json").exists(),
                key: (t, j),
                dir,
            });
        }
    }
    Ok(out)
}

/// The latest modification time of `dir` and the files in it. A file that goes away while
/// this looks (a record's temporary file, renamed into place) is left out.
fn newest_mtime(dir: &Path) -> std::io::Result<SystemTime> {
    let mut newest = std::fs::metadata(dir)?.modified()?;
    for entry in std::fs::read_dir(dir)? {
        match entry?.metadata() {
            Ok(m) => newest = newest.max(m.modified()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(newest)
}

/// Whether a connection or a finish holds the job now.
fn holds(shared: &Shared, key: &JobKey) -> bool {
    shared.jobs.lock().expect("jobs lock").get(key).is_some()
}

async fn remove_dir(dir: PathBuf) -> Result<(), GatewayError> {
    let path = dir.clone();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
        .await
        .expect("removal task does not panic")
        .map_err(io("removing", &path))
}

/// Removes the directories of jobs nothing has touched for longer than `older_than` and
/// that no connection or finish holds; an unfinished job's partial destination objects are
/// discarded first.
pub(super) async fn sweep(shared: &Arc<Shared>, older_than: Duration) -> SweepReport {
    let mut report = SweepReport::default();
    let root = shared.data_dir.join("jobs");
    let expired = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || list_expired(&root, older_than))
            .await
            .expect("listing task does not panic")
    };
    let expired = match expired {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "job retention: could not list the job directories");
            report.failed += 1;
            return report;
        }
    };
    for job in expired {
        let (tenant, id) = (&job.key.0, &job.key.1);
        if holds(shared, &job.key) {
            report.held += 1;
            continue;
        }
        let outcome = if job.finished {
            // No open of the job runs while its directory goes.
            let _gate = OpenGate::enter(shared, &job.key).await;
            if holds(shared, &job.key) {
                report.held += 1;
                continue;
            }
            remove_dir(job.dir.clone())
                .await
                .map(|()| &mut report.finished)
        } else {
            discard_abandoned(shared, &job)
                .await
                .map(|()| &mut report.abandoned)
        };
        match outcome {
            Ok(count) => {
                *count += 1;
                info!(tenant = %tenant, job = %id, finished = job.finished, "job retention: job directory removed");
            }
            Err(e) => {
                report.failed += 1;
                warn!(tenant = %tenant, job = %id, error = %e, "job retention: job directory kept");
            }
        }
    }
    report
}

/// Loads an abandoned job (its destinations, the chunks it holds), discards its partial
/// objects as a cancellation does, and removes its directory.
async fn discard_abandoned(shared: &Arc<Shared>, expired: &Expired) -> Result<(), GatewayError> {
    let job_file = expired.dir.join("job.json");
    let open: Option<OpenJob> = std::fs::read(&job_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(open) = open else {
        // Never made in full (or damaged): nothing was written under it.
        return remove_dir(expired.dir.clone()).await;
    };
    let tenant = &expired.key.0;
    match shared.open_job(tenant, open).await {
        Ok(job) => {
            job.cancelled
                .store(true, std::sync::atomic::Ordering::Relaxed);
            job.fail("expired: untouched for longer than the job retention period".to_string());
            abort_writers(&job).await;
            shared.jobs.lock().expect("jobs lock").remove(&expired.key);
            remove_dir(expired.dir.clone()).await
        }
        // Its destination may be back by the next sweep.
        Err(GatewayError::Connector(e)) if e.is_transient() => Err(GatewayError::Connector(e)),
        Err(e) => {
            // The tenant, its destinations or the job's files are gone or no longer
            // allowed: nothing can be discarded through it any more.
            warn!(tenant = %tenant, job = %expired.key.1, error = %e, "job retention: partial objects of an abandoned job could not be discarded");
            remove_dir(expired.dir.clone()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_going_away_while_listing_are_not_errors() {
        let root = tempfile::tempdir().unwrap();
        let job = root.path().join("acme/job-1");
        std::fs::create_dir_all(&job).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (started, wait) = std::sync::mpsc::channel();
        // What the gateway does all the time: files made and removed in job directories
        // (records renamed into place, the signing marker), directories made and removed.
        let churn = {
            let (job, stop, root) = (job.clone(), stop.clone(), root.path().to_path_buf());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tmp = |i| job.join(format!("record-{i}.json.tmp"));
                    for i in 0..500 {
                        std::fs::write(tmp(i), b"{}").unwrap();
                    }
                    let _ = started.send(());
                    for i in 0..500 {
                        std::fs::remove_file(tmp(i)).unwrap();
                    }
                    let other = root.join(format!("acme/job-{}", 2 + k % 4));
                    std::fs::create_dir_all(&other).unwrap();
                    std::fs::write(other.join("chunks.log"), b"").unwrap();
                    std::fs::remove_dir_all(&other).unwrap();
                    k += 1;
                }
            })
        };
        wait.recv().unwrap();
        for _ in 0..300 {
            newest_mtime(&job).expect("the newest time of a directory under churn");
            list_expired(root.path(), Duration::ZERO).expect("a listing under churn");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }
}
