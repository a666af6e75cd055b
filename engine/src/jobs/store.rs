//! The job store: the queue, every job's record and its state transitions.
//!
//! [`JobStore`] is the interface; [`SqliteStore`] is the embedded default (one file under
//! the data directory, nothing to install). Every method that changes a job checks the
//! lifecycle ([`JobState::can_become`]) and records the transition with its reason in the
//! same transaction. Tenant-facing methods take the tenant and treat another tenant's job
//! exactly like a job that does not exist.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{OptionalExtension as _, params};

use super::model::{
    AfterFailure, Candidate, Job, JobSpec, JobState, Outcome, Transition, after_failure, limits,
    pick_fair,
};

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
    /// The database failed.
    #[error("job store: {0}")]
    Backend(String),
    /// A stored record could not be read back.
    #[error("job store record {id}: {message}")]
    Corrupt {
        /// The job.
        id: String,
        /// What is wrong.
        message: String,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
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

/// The job queue and records.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new queued job.
    async fn create(&self, job: NewJob, now_ms: i64) -> Result<Job, StoreError>;
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
    /// Queues a failed or cancelled job again with fresh attempts.
    async fn retry(&self, tenant: &str, id: &str, now_ms: i64) -> Result<Job, StoreError>;
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
    /// Jobs per tenant and state.
    async fn counts(&self) -> Result<StateCounts, StoreError>;
    /// Per tenant: jobs that ended since `since_ms`.
    async fn kpi(&self, since_ms: i64) -> Result<HashMap<String, TenantKpi>, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The embedded store: SQLite in WAL mode, one file.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead_letter INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until_ms INTEGER,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    manifest TEXT,
    receipts TEXT
);
CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, tenant, priority DESC, created_ms);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_ms);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id, seq);
";

const JOB_COLUMNS: &str = "id, tenant, correlation_id, spec, state, attempts, created_ms, updated_ms, \
     not_before_ms, last_error, dead_letter, worker, bytes_total, bytes_done";

fn row_to_job(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Job, StoreError>> {
    let id: String = row.get(0)?;
    let spec: String = row.get(3)?;
    let state: String = row.get(4)?;
    let corrupt = |message: String| StoreError::Corrupt {
        id: id.clone(),
        message,
    };
    let spec: JobSpec = match serde_json::from_str(&spec) {
        Ok(s) => s,
        Err(e) => return Ok(Err(corrupt(format!("spec: {e}")))),
    };
    let Some(state) = JobState::parse(&state) else {
        return Ok(Err(corrupt(format!("unknown state {state:?}"))));
    };
    Ok(Ok(Job {
        tenant: row.get(1)?,
        correlation_id: row.get(2)?,
        spec,
        state,
        attempts: row.get(5)?,
        created_ms: row.get(6)?,
        updated_ms: row.get(7)?,
        not_before_ms: row.get(8)?,
        last_error: row.get(9)?,
        dead_letter: row.get::<_, i64>(10)? != 0,
        worker: row.get(11)?,
        bytes_total: row.get::<_, i64>(12)?.try_into().unwrap_or(0),
        bytes_done: row.get::<_, i64>(13)?.try_into().unwrap_or(0),
        id,
    }))
}

fn load(tx: &rusqlite::Connection, id: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    match tx.query_row(&sql, params![id], row_to_job).optional()? {
        Some(j) => Ok(Some(j?)),
        None => Ok(None),
    }
}

fn load_for(tx: &rusqlite::Connection, tenant: &str, id: &str) -> Result<Job, StoreError> {
    match load(tx, id)? {
        Some(j) if j.tenant == tenant => Ok(j),
        _ => Err(StoreError::NotFound),
    }
}

fn record(
    tx: &rusqlite::Connection,
    id: &str,
    from: Option<JobState>,
    to: JobState,
    reason: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO transitions (job_id, at_ms, from_state, to_state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, now_ms, from.map(JobState::as_str), to.as_str(), reason],
    )?;
    Ok(())
}

/// Moves `job` to `to` (checked against the lifecycle) and records why.
fn transition(
    tx: &rusqlite::Connection,
    job: &Job,
    to: JobState,
    reason: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    if !job.state.can_become(to) {
        return Err(StoreError::Conflict(format!(
            "job {} is {}; it cannot become {to}",
            job.id, job.state
        )));
    }
    tx.execute(
        "UPDATE jobs SET state = ?2, updated_ms = ?3 WHERE id = ?1",
        params![job.id, to.as_str(), now_ms],
    )?;
    record(tx, &job.id, Some(job.state), to, reason, now_ms)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating) the store file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` in an immediate transaction on a blocking thread.
    async fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task: {e}")))?
    }
}

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn create(&self, job: NewJob, now_ms: i64) -> Result<Job, StoreError> {
        self.tx(move |tx| {
            let id = uuid::Uuid::new_v4().to_string();
            let correlation = job.correlation_id.clone().unwrap_or_else(|| id.clone());
            let spec = serde_json::to_string(&job.spec).expect("specs serialise");
            tx.execute(
                "INSERT INTO jobs (id, tenant, correlation_id, spec, state, priority, max_attempts, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?7)",
                params![
                    id,
                    job.tenant,
                    correlation,
                    spec,
                    job.spec.priority.unwrap_or(limits::DEFAULT_PRIORITY),
                    job.spec.max_attempts.unwrap_or(limits::DEFAULT_ATTEMPTS),
                    now_ms
                ],
            )?;
            record(tx, &id, None, JobState::Queued, "submitted", now_ms)?;
            load(tx, &id)?.ok_or(StoreError::NotFound)
        })
        .await
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Job, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.tx(move |tx| load_for(tx, &tenant, &id)).await
    }

    async fn list(&self, tenant: &str, q: &ListQuery) -> Result<JobPage, StoreError> {
        let tenant = tenant.to_string();
        let q = q.clone();
        self.tx(move |tx| {
            let limit = q.limit.unwrap_or(50).clamp(1, 500);
            let (c_ms, c_id) = match &q.cursor {
                Some(c) => parse_cursor(c)?,
                None => (i64::MAX, String::new()),
            };
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND (?2 IS NULL OR state = ?2)
                 AND (created_ms < ?3 OR (created_ms = ?3 AND (?4 = '' OR id < ?4)))
                 ORDER BY created_ms DESC, id DESC LIMIT ?5"
            );
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map(
                params![tenant, q.state.map(JobState::as_str), c_ms, c_id, limit + 1],
                row_to_job,
            )?;
            let mut jobs = Vec::new();
            for r in rows {
                jobs.push(r??);
            }
            let next = if jobs.len() > limit as usize {
                jobs.truncate(limit as usize);
                jobs.last().map(|j| format!("{}.{}", j.created_ms, j.id))
            } else {
                None
            };
            Ok(JobPage { jobs, next })
        })
        .await
    }

    async fn transitions(&self, tenant: &str, id: &str) -> Result<Vec<Transition>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.tx(move |tx| {
            load_for(tx, &tenant, &id)?;
            let mut stmt = tx.prepare(
                "SELECT at_ms, from_state, to_state, reason FROM transitions WHERE job_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (at_ms, from, to, reason) = r?;
                let bad = |s: &str| StoreError::Corrupt {
                    id: id.clone(),
                    message: format!("unknown state {s:?} in a transition"),
                };
                out.push(Transition {
                    at_ms,
                    from: match from {
                        Some(f) => Some(JobState::parse(&f).ok_or_else(|| bad(&f))?),
                        None => None,
                    },
                    to: JobState::parse(&to).ok_or_else(|| bad(&to))?,
                    reason,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn documents(&self, tenant: &str, id: &str) -> Result<(String, Vec<String>), StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.tx(move |tx| {
            let job = load_for(tx, &tenant, &id)?;
            let docs: (Option<String>, Option<String>) = tx.query_row(
                "SELECT manifest, receipts FROM jobs WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            match docs {
                (Some(m), Some(r)) => {
                    let receipts: Vec<String> =
                        serde_json::from_str(&r).map_err(|e| StoreError::Corrupt {
                            id: id.clone(),
                            message: format!("receipts: {e}"),
                        })?;
                    Ok((m, receipts))
                }
                _ => Err(StoreError::Conflict(format!(
                    "job {id} is {}; its manifest and receipts exist once it is completed",
                    job.state
                ))),
            }
        })
        .await
    }

    async fn cancel(&self, tenant: &str, id: &str, now_ms: i64) -> Result<Job, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.tx(move |tx| {
            let job = load_for(tx, &tenant, &id)?;
            transition(
                tx,
                &job,
                JobState::Cancelled,
                "cancelled by the tenant",
                now_ms,
            )?;
            tx.execute(
                "UPDATE jobs SET finished_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            load_for(tx, &tenant, &id)
        })
        .await
    }

    async fn retry(&self, tenant: &str, id: &str, now_ms: i64) -> Result<Job, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.tx(move |tx| {
            let job = load_for(tx, &tenant, &id)?;
            if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
                return Err(StoreError::Conflict(format!(
                    "job {id} is {}; only failed or cancelled jobs can be retried",
                    job.state
                )));
            }
            transition(tx, &job, JobState::Queued, "retried by the tenant", now_ms)?;
            tx.execute(
                "UPDATE jobs SET attempts = 0, dead_letter = 0, not_before_ms = 0, worker = NULL,
                 lease_until_ms = NULL, finished_ms = NULL WHERE id = ?1",
                params![id],
            )?;
            load_for(tx, &tenant, &id)
        })
        .await
    }

    async fn claim(
        &self,
        worker: &str,
        quotas: &HashMap<String, Quota>,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<Job>, StoreError> {
        let worker = worker.to_string();
        let quotas = quotas.clone();
        self.tx(move |tx| {
            let mut running: HashMap<String, u32> = HashMap::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT tenant, COUNT(*) FROM jobs WHERE state IN ('running', 'verifying') GROUP BY tenant",
                )?;
                for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))? {
                    let (t, n) = r?;
                    running.insert(t, n);
                }
            }
            let mut candidates = Vec::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT id, tenant, created_ms FROM (
                        SELECT id, tenant, created_ms, ROW_NUMBER() OVER (
                            PARTITION BY tenant ORDER BY priority DESC, created_ms, id) AS rn
                        FROM jobs WHERE state = 'queued' AND not_before_ms <= ?1)
                     WHERE rn = 1",
                )?;
                for r in stmt.query_map(params![now_ms], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })? {
                    let (job_id, tenant, created_ms) = r?;
                    let q = quotas.get(&tenant).copied().unwrap_or(Quota { share: 1, limit: None });
                    candidates.push(Candidate {
                        running: running.get(&tenant).copied().unwrap_or(0),
                        tenant,
                        job_id,
                        created_ms,
                        share: q.share,
                        limit: q.limit,
                    });
                }
            }
            let Some(pick) = pick_fair(&candidates) else {
                return Ok(None);
            };
            let job = load(tx, &pick.job_id)?.ok_or(StoreError::NotFound)?;
            transition(tx, &job, JobState::Running, &format!("claimed by {worker}"), now_ms)?;
            tx.execute(
                "UPDATE jobs SET attempts = attempts + 1, worker = ?2, lease_until_ms = ?3,
                 started_ms = ?4 WHERE id = ?1",
                params![job.id, worker, lease_until_ms, now_ms],
            )?;
            load(tx, &job.id)
        })
        .await
    }

    async fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        lease_until_ms: i64,
        bytes_done: u64,
        bytes_total: u64,
    ) -> Result<Heartbeat, StoreError> {
        let (id, worker) = (id.to_string(), worker.to_string());
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE jobs SET lease_until_ms = ?3, bytes_done = ?4, bytes_total = ?5
                 WHERE id = ?1 AND worker = ?2 AND state IN ('running', 'verifying')",
                params![
                    id,
                    worker,
                    lease_until_ms,
                    to_i64(bytes_done),
                    to_i64(bytes_total)
                ],
            )?;
            if n == 1 {
                return Ok(Heartbeat::Held);
            }
            held_or_not(tx, &id, &worker)
        })
        .await
    }

    async fn verifying(
        &self,
        id: &str,
        worker: &str,
        now_ms: i64,
    ) -> Result<Heartbeat, StoreError> {
        let (id, worker) = (id.to_string(), worker.to_string());
        self.tx(move |tx| {
            let Some(job) = load(tx, &id)? else {
                return Err(StoreError::NotFound);
            };
            if job.state != JobState::Running || job.worker.as_deref() != Some(worker.as_str()) {
                return held_or_not(tx, &id, &worker);
            }
            transition(
                tx,
                &job,
                JobState::Verifying,
                "every chunk acknowledged",
                now_ms,
            )?;
            Ok(Heartbeat::Held)
        })
        .await
    }

    async fn finish(
        &self,
        id: &str,
        worker: &str,
        outcome: Outcome,
        now_ms: i64,
        retry_delay: std::time::Duration,
    ) -> Result<Option<JobState>, StoreError> {
        let (id, worker) = (id.to_string(), worker.to_string());
        self.tx(move |tx| {
            let Some(job) = load(tx, &id)? else {
                return Err(StoreError::NotFound);
            };
            if !job.state.is_active() || job.worker.as_deref() != Some(worker.as_str()) {
                // Cancelled meanwhile, or taken over by another worker: not ours to end.
                return Ok(None);
            }
            let max_attempts: u32 = tx.query_row(
                "SELECT max_attempts FROM jobs WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            let state = match outcome {
                Outcome::Completed { bytes, manifest, receipts } => {
                    transition(tx, &job, JobState::Completed, "manifest and receipts signed", now_ms)?;
                    tx.execute(
                        "UPDATE jobs SET manifest = ?2, receipts = ?3, finished_ms = ?4, worker = NULL,
                         lease_until_ms = NULL, bytes_total = ?5, bytes_done = ?5, last_error = NULL WHERE id = ?1",
                        params![
                            id,
                            manifest,
                            serde_json::to_string(&receipts).expect("strings serialise"),
                            now_ms,
                            to_i64(bytes)
                        ],
                    )?;
                    JobState::Completed
                }
                Outcome::Permanent(reason) => {
                    fail(tx, &job, &reason, false, now_ms)?;
                    JobState::Failed
                }
                Outcome::Transient(reason) => {
                    match after_failure(false, job.attempts, max_attempts, now_ms, retry_delay) {
                        AfterFailure::Retry { not_before_ms } => {
                            transition(tx, &job, JobState::Queued, &format!("attempt {} failed: {reason}", job.attempts), now_ms)?;
                            tx.execute(
                                "UPDATE jobs SET not_before_ms = ?2, last_error = ?3, worker = NULL,
                                 lease_until_ms = NULL WHERE id = ?1",
                                params![id, not_before_ms, reason],
                            )?;
                            JobState::Queued
                        }
                        AfterFailure::Fail { dead_letter } => {
                            fail(tx, &job, &reason, dead_letter, now_ms)?;
                            JobState::Failed
                        }
                    }
                }
            };
            Ok(Some(state))
        })
        .await
    }

    async fn expire_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.tx(move |tx| {
            let expired: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT id FROM jobs WHERE state IN ('running', 'verifying') AND lease_until_ms < ?1",
                )?;
                stmt.query_map(params![now_ms], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            for id in &expired {
                let Some(job) = load(tx, id)? else { continue };
                let max_attempts: u32 = tx.query_row(
                    "SELECT max_attempts FROM jobs WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )?;
                let who = job.worker.clone().unwrap_or_default();
                let reason = format!("worker {who} stopped renewing its lease");
                if job.attempts >= max_attempts {
                    fail(tx, &job, &reason, true, now_ms)?;
                } else {
                    transition(tx, &job, JobState::Queued, &reason, now_ms)?;
                    tx.execute(
                        "UPDATE jobs SET worker = NULL, lease_until_ms = NULL, last_error = ?2 WHERE id = ?1",
                        params![id, reason],
                    )?;
                }
            }
            Ok(expired.len() as u64)
        })
        .await
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        self.tx(|tx| {
            let mut stmt =
                tx.prepare("SELECT tenant, state, COUNT(*) FROM jobs GROUP BY tenant, state")?;
            let mut out = Vec::new();
            for r in stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })? {
                let (t, s, n) = r?;
                if let Some(s) = JobState::parse(&s) {
                    out.push((t, s, u64::try_from(n).unwrap_or(0)));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn kpi(&self, since_ms: i64) -> Result<HashMap<String, TenantKpi>, StoreError> {
        self.tx(move |tx| {
            let mut stmt = tx.prepare(
                "SELECT tenant, state, COUNT(*), COALESCE(SUM(bytes_total), 0),
                        COALESCE(SUM(finished_ms - started_ms), 0)
                 FROM jobs WHERE finished_ms >= ?1 AND state IN ('completed', 'failed', 'cancelled')
                 GROUP BY tenant, state",
            )?;
            let mut out: HashMap<String, TenantKpi> = HashMap::new();
            for r in stmt.query_map(params![since_ms], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })? {
                let (t, s, n, bytes, busy) = r?;
                let k = out.entry(t).or_default();
                let n = u64::try_from(n).unwrap_or(0);
                match s.as_str() {
                    "completed" => {
                        k.completed = n;
                        k.bytes = u64::try_from(bytes).unwrap_or(0);
                        k.busy_ms = u64::try_from(busy).unwrap_or(0);
                    }
                    "failed" => k.failed = n,
                    _ => k.cancelled = n,
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

fn fail(
    tx: &rusqlite::Connection,
    job: &Job,
    reason: &str,
    dead_letter: bool,
    now_ms: i64,
) -> Result<(), StoreError> {
    let why = if dead_letter {
        format!("dead-lettered after {} attempts: {reason}", job.attempts)
    } else {
        reason.to_string()
    };
    transition(tx, job, JobState::Failed, &why, now_ms)?;
    tx.execute(
        "UPDATE jobs SET last_error = ?2, dead_letter = ?3, finished_ms = ?4, worker = NULL,
         lease_until_ms = NULL WHERE id = ?1",
        params![job.id, reason, dead_letter, now_ms],
    )?;
    Ok(())
}

fn held_or_not(tx: &rusqlite::Connection, id: &str, worker: &str) -> Result<Heartbeat, StoreError> {
    match load(tx, id)? {
        Some(j) if j.state == JobState::Cancelled && j.worker.as_deref() == Some(worker) => {
            Ok(Heartbeat::Cancelled)
        }
        Some(j) if j.state.is_active() && j.worker.as_deref() == Some(worker) => {
            Ok(Heartbeat::Held)
        }
        _ => Ok(Heartbeat::Lost),
    }
}

fn parse_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let bad = || StoreError::Invalid(format!("cursor {c:?} is not one this API returned"));
    let (ms, id) = c.split_once('.').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(bad());
    }
    Ok((ms, id.to_string()))
}
