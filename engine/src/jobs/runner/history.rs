//! The job history: a worker folds the store's job counts and removes jobs that ended
//! longer than [`RunnerConfig::job_history`](super::RunnerConfig::job_history) ago.

use std::time::Duration;

use tracing::{info, warn};

use super::{Runner, millis, now_ms};

/// Default [`RunnerConfig::job_history`](super::RunnerConfig::job_history): 90 days.
pub const DEFAULT_JOB_HISTORY: Duration = Duration::from_secs(90 * 24 * 3600);

/// How often a worker removes jobs past [`RunnerConfig::job_history`](super::RunnerConfig::job_history).
pub(super) const HISTORY_SWEEP: Duration = Duration::from_secs(60);

/// Most jobs one purge transaction removes (a short write lock; a sweep runs several).
const PURGE_BATCH: u32 = 500;

impl Runner {
    /// Folds the store's job counts, then removes jobs that ended longer than
    /// [`RunnerConfig::job_history`](super::RunnerConfig::job_history) ago, a batch per transaction, at most 20 batches a
    /// sweep (the rest wait for the next). Returns how many jobs went.
    pub async fn purge_history(&self) -> u64 {
        if let Err(e) = self.store.compact_counts().await {
            warn!(error = %e, "compacting the job counts failed");
        }
        let Some(keep) = self.cfg.job_history else {
            return 0;
        };
        let before = now_ms() - millis(keep);
        let mut removed = 0;
        for _ in 0..20 {
            match self.store.purge_finished(before, PURGE_BATCH).await {
                Ok(n) => {
                    removed += n;
                    if n < u64::from(PURGE_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "removing old jobs from the store failed");
                    break;
                }
            }
        }
        if removed > 0 {
            info!(jobs = removed, "removed jobs past the job history");
            metrics::counter!("trackshift_jobs_purged_total").increment(removed);
        }
        removed
    }
}
