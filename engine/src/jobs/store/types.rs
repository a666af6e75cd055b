//! The store's interface ([`JobStore`]) and the values it takes and returns.

use super::*;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such job for this tenant.
    #[error("no such job")]
    NotFound,
    /// The job is in a state that does not allow this (message names the state).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (a cursor this store never gave out).
    #[error("{0}")]
    Invalid(String),
    /// The tenant has as many jobs queued or running as it may (`max_queued_jobs`): try
    /// again once some have finished.
    #[error(
        "tenant {tenant} has {active} jobs queued or running (max_queued_jobs = {limit}); submit again once some have finished"
    )]
    TooManyJobs {
        /// The tenant.
        tenant: String,
        /// Its jobs queued, running or verifying.
        active: u64,
        /// Its `max_queued_jobs`.
        limit: u32,
    },
    /// The database failed.
    #[error("job store: {0}")]
    Backend(String),
    /// The store was written by a newer trackshift whose schema this one cannot use.
    #[error(
        "the job store is at schema version {found}, which needs a trackshift that knows version {needs} or later; this one knows up to {supported}: upgrade trackshift (or restore the store from before the upgrade)"
    )]
    SchemaTooNew {
        /// The store's schema version.
        found: u32,
        /// The oldest schema version code must know to use it.
        needs: u32,
        /// The newest version this build knows ([`super::super::schema::SCHEMA_VERSION`]).
        supported: u32,
    },
    /// A stored record could not be read back.
    #[error("job store record {id}: {message}")]
    Corrupt {
        /// The job.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Owning tenant.
    pub tenant: String,
    /// The validated request.
    pub spec: JobSpec,
    /// Correlation id (default: the job id).
    pub correlation_id: Option<String>,
    /// The client's idempotency key: submitting again with the same key returns the job
    /// made the first time instead of a new one.
    pub idempotency_key: Option<String>,
    /// Most jobs the tenant may have queued, running or verifying, this one included
    /// (its `max_queued_jobs`); `None`: no cap.
    pub max_queued: Option<u32>,
    /// The submitter's W3C trace context (not part of the job's identity: a resubmission
    /// with the same idempotency key and another trace returns the first job).
    pub traceparent: Option<crate::trace::TraceParent>,
}

/// Filters and paging of a job listing (newest first).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Page size (1 to 500; default 50).
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
}

/// One page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<Job>,
    /// Cursor of the next page, if there is one.
    pub next: Option<String>,
}

/// A tenant's scheduling quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Weight in fair scheduling.
    pub share: u32,
    /// Most jobs running at once.
    pub limit: Option<u32>,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Keep going; the lease is extended.
    Held,
    /// The tenant cancelled the job: stop and clean up.
    Cancelled,
    /// Another worker owns the job now (this one's lease expired): stop quietly.
    Lost,
}

/// Per tenant and state: how many jobs.
pub type StateCounts = Vec<(String, JobState, u64)>;

/// Jobs that finished in a window, per tenant (for `/reports/kpi`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantKpi {
    /// Completed in the window.
    pub completed: u64,
    /// Failed in the window.
    pub failed: u64,
    /// Cancelled in the window.
    pub cancelled: u64,
    /// Bytes of the completed jobs.
    pub bytes: u64,
    /// Sum over completed jobs of (finished - started), milliseconds.
    pub busy_ms: u64,
}

impl TenantKpi {
    /// Bytes per second of the completed jobs while they ran (0 when none did).
    pub fn throughput_bytes_per_second(&self) -> f64 {
        if self.busy_ms > 0 {
            self.bytes as f64 * 1000.0 / self.busy_ms as f64
        } else {
            0.0
        }
    }

    /// The share of the ended jobs (completed or failed) that failed; `None` when none
    /// ended.
    pub fn failure_rate(&self) -> Option<f64> {
        let ended = self.completed + self.failed;
        (ended > 0).then(|| self.failed as f64 / ended as f64)
    }
}

/// How many of `tenant`'s jobs are in `state` per `counts` (0 when none).
pub fn count_of(counts: &StateCounts, tenant: &str, state: JobState) -> u64 {
    counts
        .iter()
        .find(|(t, s, _)| t == tenant && *s == state)
        .map_or(0, |c| c.2)
}

/// The job queue and records.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new queued job; with an idempotency key already used by the tenant for the
    /// same spec, returns that job instead (`false`: nothing new was stored). The same key
    /// with another spec is a conflict.
    async fn create(&self, job: NewJob, now_ms: i64) -> Result<(Job, bool), StoreError>;
    /// The tenant's job.
    async fn get(&self, tenant: &str, id: &str) -> Result<Job, StoreError>;
    /// The tenant's jobs, newest first.
    async fn list(&self, tenant: &str, q: &ListQuery) -> Result<JobPage, StoreError>;
    /// The job's transitions, oldest first.
    async fn transitions(&self, tenant: &str, id: &str) -> Result<Vec<Transition>, StoreError>;
    /// The signed manifest and receipts of a completed job.
    async fn documents(&self, tenant: &str, id: &str) -> Result<(String, Vec<String>), StoreError>;
    /// Cancels a queued or running job.
    async fn cancel(&self, tenant: &str, id: &str, now_ms: i64) -> Result<Job, StoreError>;
    /// Queues a failed or cancelled job again with fresh attempts, within `max_queued`
    /// (see [`NewJob::max_queued`]).
    async fn retry(
        &self,
        tenant: &str,
        id: &str,
        max_queued: Option<u32>,
        now_ms: i64,
    ) -> Result<Job, StoreError>;
    /// Takes the next job fairly across tenants (see [`pick_fair`]) for `worker`, leased
    /// until `lease_until_ms`. Tenants missing from `quotas` get share 1 and no limit.
    async fn claim(
        &self,
        worker: &str,
        quotas: &HashMap<String, Quota>,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<Job>, StoreError>;
    /// Extends the lease and records progress.
    async fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        lease_until_ms: i64,
        bytes_done: u64,
        bytes_total: u64,
    ) -> Result<Heartbeat, StoreError>;
    /// Running → verifying.
    async fn verifying(&self, id: &str, worker: &str, now_ms: i64)
    -> Result<Heartbeat, StoreError>;
    /// Ends an attempt; transient failures go back to the queue after `retry_delay`.
    async fn finish(
        &self,
        id: &str,
        worker: &str,
        outcome: Outcome,
        now_ms: i64,
        retry_delay: std::time::Duration,
    ) -> Result<Option<JobState>, StoreError>;
    /// Queues again (or dead-letters) jobs whose worker's lease ran out. Returns how many.
    async fn expire_leases(&self, now_ms: i64) -> Result<u64, StoreError>;
    /// Removes up to `limit` jobs that ended (completed, failed, cancelled) before
    /// `finished_before_ms`, oldest first, with their transitions: the store's history is
    /// kept for a time, not forever. Returns how many went.
    async fn purge_finished(&self, finished_before_ms: i64, limit: u32) -> Result<u64, StoreError>;
    /// Jobs per tenant and state (every job the store holds), from counts kept as jobs
    /// change state: it costs the changes since the last [`JobStore::compact_counts`],
    /// not the jobs.
    async fn counts(&self) -> Result<StateCounts, StoreError>;
    /// Folds the kept counts into one row per tenant and state. Returns the rows folded.
    async fn compact_counts(&self) -> Result<u64, StoreError>;
    /// Jobs per tenant and state for the states a job is still in before it ends (queued,
    /// running, verifying): read from the state index, so it costs what is open, not what
    /// the store ever held.
    async fn open_counts(&self) -> Result<StateCounts, StoreError>;
    /// Per tenant with running (or verifying) jobs: how many `worker` holds, and how many
    /// all workers hold together (for splitting a tenant's bandwidth quota between them).
    async fn running_shares(&self, worker: &str)
    -> Result<HashMap<String, (u32, u32)>, StoreError>;
    /// Per tenant: jobs that ended since `since_ms`.
    async fn kpi(&self, since_ms: i64) -> Result<HashMap<String, TenantKpi>, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_of_a_window_and_the_count_of_a_state() {
        let k = TenantKpi {
            completed: 3,
            failed: 1,
            cancelled: 2,
            bytes: 3000,
            busy_ms: 1500,
        };
        assert_eq!(k.throughput_bytes_per_second(), 2000.0);
        assert_eq!(k.failure_rate(), Some(0.25));
        assert_eq!(TenantKpi::default().failure_rate(), None);
        assert_eq!(TenantKpi::default().throughput_bytes_per_second(), 0.0);
        let counts = vec![
            ("a".to_string(), JobState::Queued, 2),
            ("b".to_string(), JobState::Queued, 5),
        ];
        assert_eq!(count_of(&counts, "b", JobState::Queued), 5);
        assert_eq!(count_of(&counts, "a", JobState::Running), 0);
    }
}
