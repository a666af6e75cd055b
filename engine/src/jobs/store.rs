//! The job store: the queue, every job's record and its state transitions.
//!
//! [`JobStore`] is the interface; [`SqlStore`] implements it once over either database of
//! [`super::sql`]: SQLite (the embedded default, one file under the data directory,
//! nothing to install) or PostgreSQL (several gateways sharing one queue: a job is
//! claimed by exactly one worker, with `FOR UPDATE SKIP LOCKED`). Every method that changes a job checks the
//! lifecycle ([`JobState::can_become`]) and records the transition with its reason in the
//! same transaction. Tenant-facing methods take the tenant and treat another tenant's job
//! exactly like a job that does not exist.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::sql::{Backend, Row, Tx};

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

/// The job store over a SQL database.
#[derive(Clone)]
pub struct SqlStore {
    db: Arc<dyn Backend>,
}

const JOB_COLUMNS: &str = "id, tenant, correlation_id, spec, state, attempts, created_ms, updated_ms, \
     not_before_ms, last_error, dead_letter, worker, bytes_total, bytes_done, max_attempts";

fn row_to_job(row: &Row) -> Result<Job, StoreError> {
    let id = row.str(0);
    let corrupt = |message: String| StoreError::Corrupt {
        id: id.clone(),
        message,
    };
    let spec: JobSpec =
        serde_json::from_str(&row.str(3)).map_err(|e| corrupt(format!("spec: {e}")))?;
    let state = row.str(4);
    let state =
        JobState::parse(&state).ok_or_else(|| corrupt(format!("unknown state {state:?}")))?;
    let num = |i: usize| u32::try_from(row.i64(i)).unwrap_or(0);
    Ok(Job {
        tenant: row.str(1),
        correlation_id: row.str(2),
        spec,
        state,
        attempts: num(5),
        created_ms: row.i64(6),
        updated_ms: row.i64(7),
        not_before_ms: row.i64(8),
        last_error: row.opt_str(9),
        dead_letter: row.i64(10) != 0,
        worker: row.opt_str(11),
        bytes_total: u64::try_from(row.i64(12)).unwrap_or(0),
        bytes_done: u64::try_from(row.i64(13)).unwrap_or(0),
        id,
    })
}

/// The job and its attempt limit.
async fn load(tx: &mut dyn Tx, id: &str) -> Result<Option<(Job, u32)>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
    match tx.query(&sql, &[id.into()]).await?.first() {
        Some(r) => Ok(Some((
            row_to_job(r)?,
            u32::try_from(r.i64(14)).unwrap_or(1),
        ))),
        None => Ok(None),
    }
}

async fn load_for(tx: &mut dyn Tx, tenant: &str, id: &str) -> Result<Job, StoreError> {
    match load(tx, id).await? {
        Some((j, _)) if j.tenant == tenant => Ok(j),
        _ => Err(StoreError::NotFound),
    }
}

async fn record(
    tx: &mut dyn Tx,
    id: &str,
    from: Option<JobState>,
    to: JobState,
    reason: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO transitions (job_id, at_ms, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $5)",
        &[id.into(), now_ms.into(), from.map(JobState::as_str).into(), to.as_str().into(), reason.into()],
    )
    .await?;
    Ok(())
}

/// Adds `by` to the number of `tenant`'s jobs in `state`: a row of `job_count_deltas`, which
/// [`JobStore::counts`] sums instead of counting every job. Rows are only ever inserted
/// (no row two transactions both update, so no lock order to get wrong on PostgreSQL) and
/// [`JobStore::compact_counts`] folds them into one per tenant and state.
async fn bump(tx: &mut dyn Tx, tenant: &str, state: JobState, by: i64) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO job_count_deltas (tenant, state, d) VALUES ($1, $2, $3)",
        &[tenant.into(), state.as_str().into(), by.into()],
    )
    .await?;
    Ok(())
}

/// Moves `job` to `to` (checked against the lifecycle) and records why.
async fn transition(
    tx: &mut dyn Tx,
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
    tx.exec(
        "UPDATE jobs SET state = $1, updated_ms = $2 WHERE id = $3",
        &[to.as_str().into(), now_ms.into(), job.id.as_str().into()],
    )
    .await?;
    bump(tx, &job.tenant, job.state, -1).await?;
    bump(tx, &job.tenant, to, 1).await?;
    record(tx, &job.id, Some(job.state), to, reason, now_ms).await
}

async fn fail(
    tx: &mut dyn Tx,
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
    transition(tx, job, JobState::Failed, &why, now_ms).await?;
    tx.exec(
        "UPDATE jobs SET last_error = $1, dead_letter = $2, finished_ms = $3, worker = NULL,
         lease_until_ms = NULL WHERE id = $4",
        &[
            reason.into(),
            i64::from(dead_letter).into(),
            now_ms.into(),
            job.id.as_str().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Refuses when `tenant` already has `limit` jobs queued, running or verifying. Takes the
/// tenant's row in `tenant_locks` first (a write: PostgreSQL locks the row until commit,
/// SQLite's write transactions are exclusive), so concurrent submissions for one tenant,
/// from any gateway sharing the store, count one after another and cannot overshoot.
async fn within_queue_limit(
    tx: &mut dyn Tx,
    tenant: &str,
    limit: Option<u32>,
) -> Result<(), StoreError> {
    let Some(limit) = limit else {
        return Ok(());
    };
    tx.exec(
        "INSERT INTO tenant_locks (tenant, submits) VALUES ($1, 1)
         ON CONFLICT (tenant) DO UPDATE SET submits = tenant_locks.submits + 1",
        &[tenant.into()],
    )
    .await?;
    let active = tx
        .query(
            "SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND state IN ('queued', 'running', 'verifying')",
            &[tenant.into()],
        )
        .await?
        .first()
        .map_or(0, |r| u64::try_from(r.i64(0)).unwrap_or(0));
    if active >= u64::from(limit) {
        return Err(StoreError::TooManyJobs {
            tenant: tenant.to_string(),
            active,
            limit,
        });
    }
    Ok(())
}

async fn held_or_not(tx: &mut dyn Tx, id: &str, worker: &str) -> Result<Heartbeat, StoreError> {
    Ok(match load(tx, id).await? {
        Some((j, _)) if j.state == JobState::Cancelled && j.worker.as_deref() == Some(worker) => {
            Heartbeat::Cancelled
        }
        Some((j, _)) if j.state.is_active() && j.worker.as_deref() == Some(worker) => {
            Heartbeat::Held
        }
        _ => Heartbeat::Lost,
    })
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqlStore {
    /// The (tenant, state, number) rows `sql` selects, those with a number above zero.
    async fn counts_of(&self, sql: &str) -> Result<StateCounts, StoreError> {
        let mut tx = self.db.begin().await?;
        let rows = tx.query(sql, &[]).await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let n = u64::try_from(r.i64(2)).unwrap_or(0);
                JobState::parse(&r.str(1))
                    .filter(|_| n > 0)
                    .map(|s| (r.str(0), s, n))
            })
            .collect())
    }

    /// The embedded store: SQLite at `path` (created if absent).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let me = Self {
            db: Arc::new(super::sql::Sqlite::open(path)?),
        };
        // Runs on the connection's thread: no runtime needed (none may be running yet).
        futures::executor::block_on(me.init_counts())?;
        Ok(me)
    }

    /// The shared store: PostgreSQL at `url` (schema created if absent).
    pub async fn connect_postgres(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let me = Self {
            db: Arc::new(super::sql::Postgres::connect(url, max_connections).await?),
        };
        me.init_counts().await?;
        Ok(me)
    }

    /// Fills the job counts from the jobs once, in a store made before they were kept.
    /// The marker and the counts are one transaction: of gateways opening a shared store
    /// at once, one inserts the marker and counts, the others wait on its key and skip.
    async fn init_counts(&self) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let first = tx
            .exec(
                "INSERT INTO store_meta (key, value) VALUES ('job_counts', '1') ON CONFLICT (key) DO NOTHING",
                &[],
            )
            .await?;
        if first == 1 {
            tx.exec("DELETE FROM job_count_deltas", &[]).await?;
            tx.exec(
                "INSERT INTO job_count_deltas (tenant, state, d)
                 SELECT tenant, state, COUNT(*) FROM jobs GROUP BY tenant, state",
                &[],
            )
            .await?;
        }
        tx.commit().await
    }

    async fn insert(&self, job: &NewJob, now_ms: i64) -> Result<Job, StoreError> {
        let mut tx = self.db.begin().await?;
        within_queue_limit(&mut *tx, &job.tenant, job.max_queued).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let correlation = job.correlation_id.clone().unwrap_or_else(|| id.clone());
        let spec = serde_json::to_string(&job.spec).expect("specs serialise");
        tx.exec(
            "INSERT INTO jobs (id, tenant, correlation_id, spec, state, priority, max_attempts,
             created_ms, updated_ms, idempotency_key)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $7, $8)",
            &[
                id.as_str().into(),
                job.tenant.as_str().into(),
                correlation.into(),
                spec.into(),
                i64::from(job.spec.priority.unwrap_or(limits::DEFAULT_PRIORITY)).into(),
                i64::from(job.spec.max_attempts.unwrap_or(limits::DEFAULT_ATTEMPTS)).into(),
                now_ms.into(),
                job.idempotency_key.as_deref().into(),
            ],
        )
        .await?;
        record(&mut *tx, &id, None, JobState::Queued, "submitted", now_ms).await?;
        bump(&mut *tx, &job.tenant, JobState::Queued, 1).await?;
        let created = load_for(&mut *tx, &job.tenant, &id).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// The tenant's job made with `key`, if any; a conflict when its spec differs.
    async fn by_idempotency_key(&self, job: &NewJob, key: &str) -> Result<Option<Job>, StoreError> {
        let mut tx = self.db.begin().await?;
        let rows = tx
            .query(
                "SELECT id FROM jobs WHERE tenant = $1 AND idempotency_key = $2",
                &[job.tenant.as_str().into(), key.into()],
            )
            .await?;
        let existing = match rows.first() {
            Some(r) => Some(load_for(&mut *tx, &job.tenant, &r.str(0)).await?),
            None => None,
        };
        tx.commit().await?;
        match existing {
            Some(e) if e.spec != job.spec => Err(StoreError::Conflict(format!(
                "Idempotency-Key {key:?} was already used for job {} with another request",
                e.id
            ))),
            other => Ok(other),
        }
    }

    /// Which database this is (`sqlite` or `postgresql`).
    pub fn backend(&self) -> &'static str {
        self.db.name()
    }
}

#[async_trait::async_trait]
impl JobStore for SqlStore {
    async fn create(&self, job: NewJob, now_ms: i64) -> Result<(Job, bool), StoreError> {
        if let Some(key) = &job.idempotency_key {
            if let Some(existing) = self.by_idempotency_key(&job, key).await? {
                return Ok((existing, false));
            }
            return match self.insert(&job, now_ms).await {
                Ok(created) => Ok((created, true)),
                // Another request with the same key won the race: answer with its job.
                Err(e) => match self.by_idempotency_key(&job, key).await? {
                    Some(existing) => Ok((existing, false)),
                    None => Err(e),
                },
            };
        }
        Ok((self.insert(&job, now_ms).await?, true))
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Job, StoreError> {
        let mut tx = self.db.begin().await?;
        let job = load_for(&mut *tx, tenant, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn list(&self, tenant: &str, q: &ListQuery) -> Result<JobPage, StoreError> {
        let limit = q.limit.unwrap_or(50).clamp(1, 500);
        let (c_ms, c_id) = match &q.cursor {
            Some(c) => parse_cursor(c)?,
            None => (i64::MAX, String::new()),
        };
        let state = q.state.map(JobState::as_str);
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND ($2 = '' OR state = $2)
             AND (created_ms < $3 OR (created_ms = $3 AND ($4 = '' OR id < $4)))
             ORDER BY created_ms DESC, id DESC LIMIT $5"
        );
        let mut tx = self.db.begin().await?;
        let rows = tx
            .query(
                &sql,
                &[
                    tenant.into(),
                    state.unwrap_or("").into(),
                    c_ms.into(),
                    c_id.into(),
                    i64::from(limit + 1).into(),
                ],
            )
            .await?;
        tx.commit().await?;
        let mut jobs = rows.iter().map(row_to_job).collect::<Result<Vec<_>, _>>()?;
        let next = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|j| format!("{}.{}", j.created_ms, j.id))
        } else {
            None
        };
        Ok(JobPage { jobs, next })
    }

    async fn transitions(&self, tenant: &str, id: &str) -> Result<Vec<Transition>, StoreError> {
        let mut tx = self.db.begin().await?;
        load_for(&mut *tx, tenant, id).await?;
        let rows = tx
            .query(
                "SELECT at_ms, from_state, to_state, reason FROM transitions WHERE job_id = $1 ORDER BY seq",
                &[id.into()],
            )
            .await?;
        tx.commit().await?;
        let bad = |s: &str| StoreError::Corrupt {
            id: id.to_string(),
            message: format!("unknown state {s:?} in a transition"),
        };
        rows.iter()
            .map(|r| {
                let to = r.str(2);
                Ok(Transition {
                    at_ms: r.i64(0),
                    from: match r.opt_str(1) {
                        Some(f) => Some(JobState::parse(&f).ok_or_else(|| bad(&f))?),
                        None => None,
                    },
                    to: JobState::parse(&to).ok_or_else(|| bad(&to))?,
                    reason: r.str(3),
                })
            })
            .collect()
    }

    async fn documents(&self, tenant: &str, id: &str) -> Result<(String, Vec<String>), StoreError> {
        let mut tx = self.db.begin().await?;
        let job = load_for(&mut *tx, tenant, id).await?;
        let rows = tx
            .query(
                "SELECT manifest, receipts FROM jobs WHERE id = $1",
                &[id.into()],
            )
            .await?;
        tx.commit().await?;
        match rows.first().map(|r| (r.opt_str(0), r.opt_str(1))) {
            Some((Some(m), Some(r))) => {
                let receipts: Vec<String> =
                    serde_json::from_str(&r).map_err(|e| StoreError::Corrupt {
                        id: id.to_string(),
                        message: format!("receipts: {e}"),
                    })?;
                Ok((m, receipts))
            }
            _ => Err(StoreError::Conflict(format!(
                "job {id} is {}; its manifest and receipts exist once it is completed",
                job.state
            ))),
        }
    }

    async fn cancel(&self, tenant: &str, id: &str, now_ms: i64) -> Result<Job, StoreError> {
        let mut tx = self.db.begin().await?;
        let job = load_for(&mut *tx, tenant, id).await?;
        transition(
            &mut *tx,
            &job,
            JobState::Cancelled,
            "cancelled by the tenant",
            now_ms,
        )
        .await?;
        tx.exec(
            "UPDATE jobs SET finished_ms = $1 WHERE id = $2",
            &[now_ms.into(), id.into()],
        )
        .await?;
        let job = load_for(&mut *tx, tenant, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn retry(
        &self,
        tenant: &str,
        id: &str,
        max_queued: Option<u32>,
        now_ms: i64,
    ) -> Result<Job, StoreError> {
        let mut tx = self.db.begin().await?;
        let job = load_for(&mut *tx, tenant, id).await?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(StoreError::Conflict(format!(
                "job {id} is {}; only failed or cancelled jobs can be retried",
                job.state
            )));
        }
        // Queued again, it counts again: cancelling and retrying cannot get round the cap.
        within_queue_limit(&mut *tx, tenant, max_queued).await?;
        transition(
            &mut *tx,
            &job,
            JobState::Queued,
            "retried by the tenant",
            now_ms,
        )
        .await?;
        tx.exec(
            "UPDATE jobs SET attempts = 0, dead_letter = 0, not_before_ms = 0, worker = NULL,
             lease_until_ms = NULL, finished_ms = NULL WHERE id = $1",
            &[id.into()],
        )
        .await?;
        let job = load_for(&mut *tx, tenant, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn claim(
        &self,
        worker: &str,
        quotas: &HashMap<String, Quota>,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<Job>, StoreError> {
        let mut tx = self.db.begin().await?;
        let mut running: HashMap<String, u32> = HashMap::new();
        for r in tx
            .query(
                "SELECT tenant, COUNT(*) FROM jobs WHERE state IN ('running', 'verifying') GROUP BY tenant",
                &[],
            )
            .await?
        {
            running.insert(r.str(0), u32::try_from(r.i64(1)).unwrap_or(u32::MAX));
        }
        let mut candidates: Vec<Candidate> = tx
            .query(
                "SELECT id, tenant, created_ms FROM (
                    SELECT id, tenant, created_ms, ROW_NUMBER() OVER (
                        PARTITION BY tenant ORDER BY priority DESC, created_ms, id) AS rn
                    FROM jobs WHERE state = 'queued' AND not_before_ms <= $1) AS c
                 WHERE rn = 1",
                &[now_ms.into()],
            )
            .await?
            .iter()
            .map(|r| {
                let tenant = r.str(1);
                let q = quotas.get(&tenant).copied().unwrap_or(Quota {
                    share: 1,
                    limit: None,
                });
                Candidate {
                    running: running.get(&tenant).copied().unwrap_or(0),
                    last_claim_ms: i64::MIN,
                    tenant,
                    job_id: r.str(0),
                    created_ms: r.i64(2),
                    share: q.share,
                    limit: q.limit,
                }
            })
            .collect();
        // When each candidate's tenant was last served (within the last hour: enough for
        // round robin), read from the (tenant, started_ms) index: one lookup per tenant
        // with queued jobs, whatever the number of jobs the store has ever held.
        for c in &mut candidates {
            let rows = tx
                .query(
                    "SELECT MAX(started_ms) FROM jobs WHERE tenant = $1 AND started_ms >= $2",
                    &[c.tenant.as_str().into(), (now_ms - 3_600_000).into()],
                )
                .await?;
            c.last_claim_ms = rows.first().and_then(|r| r.opt_i64(0)).unwrap_or(i64::MIN);
        }
        // Fairest first; a candidate another gateway holds right now is skipped.
        let lock = format!(
            "SELECT id FROM jobs WHERE id = $1 AND state = 'queued'{}",
            self.db.skip_locked()
        );
        while let Some(pick) = pick_fair(&candidates).cloned() {
            candidates.retain(|c| c.job_id != pick.job_id);
            if tx
                .query(&lock, &[pick.job_id.as_str().into()])
                .await?
                .is_empty()
            {
                continue;
            }
            let Some((job, _)) = load(&mut *tx, &pick.job_id).await? else {
                continue;
            };
            transition(
                &mut *tx,
                &job,
                JobState::Running,
                &format!("claimed by {worker}"),
                now_ms,
            )
            .await?;
            tx.exec(
                "UPDATE jobs SET attempts = attempts + 1, worker = $1, lease_until_ms = $2,
                 started_ms = $3 WHERE id = $4",
                &[
                    worker.into(),
                    lease_until_ms.into(),
                    now_ms.into(),
                    job.id.as_str().into(),
                ],
            )
            .await?;
            let claimed = load(&mut *tx, &job.id).await?.map(|(j, _)| j);
            tx.commit().await?;
            return Ok(claimed);
        }
        tx.commit().await?;
        Ok(None)
    }

    async fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        lease_until_ms: i64,
        bytes_done: u64,
        bytes_total: u64,
    ) -> Result<Heartbeat, StoreError> {
        let mut tx = self.db.begin().await?;
        let n = tx
            .exec(
                "UPDATE jobs SET lease_until_ms = $1, bytes_done = $2, bytes_total = $3
                 WHERE id = $4 AND worker = $5 AND state IN ('running', 'verifying')",
                &[
                    lease_until_ms.into(),
                    to_i64(bytes_done).into(),
                    to_i64(bytes_total).into(),
                    id.into(),
                    worker.into(),
                ],
            )
            .await?;
        let beat = if n == 1 {
            Heartbeat::Held
        } else {
            held_or_not(&mut *tx, id, worker).await?
        };
        tx.commit().await?;
        Ok(beat)
    }

    async fn verifying(
        &self,
        id: &str,
        worker: &str,
        now_ms: i64,
    ) -> Result<Heartbeat, StoreError> {
        let mut tx = self.db.begin().await?;
        let Some((job, _)) = load(&mut *tx, id).await? else {
            return Err(StoreError::NotFound);
        };
        let beat = if job.state != JobState::Running || job.worker.as_deref() != Some(worker) {
            held_or_not(&mut *tx, id, worker).await?
        } else {
            transition(
                &mut *tx,
                &job,
                JobState::Verifying,
                "every chunk acknowledged",
                now_ms,
            )
            .await?;
            Heartbeat::Held
        };
        tx.commit().await?;
        Ok(beat)
    }

    async fn finish(
        &self,
        id: &str,
        worker: &str,
        outcome: Outcome,
        now_ms: i64,
        retry_delay: std::time::Duration,
    ) -> Result<Option<JobState>, StoreError> {
        let mut tx = self.db.begin().await?;
        let Some((job, max_attempts)) = load(&mut *tx, id).await? else {
            return Err(StoreError::NotFound);
        };
        if !job.state.is_active() || job.worker.as_deref() != Some(worker) {
            // Cancelled meanwhile, or taken over by another worker: not ours to end.
            tx.commit().await?;
            return Ok(None);
        }
        let state = match outcome {
            Outcome::Completed {
                bytes,
                manifest,
                receipts,
            } => {
                transition(
                    &mut *tx,
                    &job,
                    JobState::Completed,
                    "manifest and receipts signed",
                    now_ms,
                )
                .await?;
                tx.exec(
                    "UPDATE jobs SET manifest = $1, receipts = $2, finished_ms = $3, worker = NULL,
                     lease_until_ms = NULL, bytes_total = $4, bytes_done = $4, last_error = NULL WHERE id = $5",
                    &[
                        manifest.into(),
                        serde_json::to_string(&receipts).expect("strings serialise").into(),
                        now_ms.into(),
                        to_i64(bytes).into(),
                        id.into(),
                    ],
                )
                .await?;
                JobState::Completed
            }
            Outcome::Permanent(reason) => {
                fail(&mut *tx, &job, &reason, false, now_ms).await?;
                JobState::Failed
            }
            Outcome::Deferred(reason) => {
                // Not an attempt: the gateway never opened the job.
                let why = format!("deferred: {reason}");
                transition(&mut *tx, &job, JobState::Queued, &why, now_ms).await?;
                tx.exec(
                    "UPDATE jobs SET not_before_ms = $1, last_error = $2, worker = NULL,
                     lease_until_ms = NULL,
                     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE id = $3",
                    &[
                        (now_ms + i64::try_from(retry_delay.as_millis()).unwrap_or(i64::MAX / 2))
                            .into(),
                        reason.into(),
                        id.into(),
                    ],
                )
                .await?;
                JobState::Queued
            }
            Outcome::Transient(reason) => {
                match after_failure(false, job.attempts, max_attempts, now_ms, retry_delay) {
                    AfterFailure::Retry { not_before_ms } => {
                        let why = format!("attempt {} failed: {reason}", job.attempts);
                        transition(&mut *tx, &job, JobState::Queued, &why, now_ms).await?;
                        tx.exec(
                            "UPDATE jobs SET not_before_ms = $1, last_error = $2, worker = NULL,
                             lease_until_ms = NULL WHERE id = $3",
                            &[not_before_ms.into(), reason.into(), id.into()],
                        )
                        .await?;
                        JobState::Queued
                    }
                    AfterFailure::Fail { dead_letter } => {
                        fail(&mut *tx, &job, &reason, dead_letter, now_ms).await?;
                        JobState::Failed
                    }
                }
            }
        };
        tx.commit().await?;
        Ok(Some(state))
    }

    async fn expire_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.db.begin().await?;
        let sql = format!(
            "SELECT id FROM jobs WHERE state IN ('running', 'verifying') AND lease_until_ms < $1{}",
            self.db.skip_locked()
        );
        let expired: Vec<String> = tx
            .query(&sql, &[now_ms.into()])
            .await?
            .iter()
            .map(|r| r.str(0))
            .collect();
        for id in &expired {
            let Some((job, max_attempts)) = load(&mut *tx, id).await? else {
                continue;
            };
            let who = job.worker.clone().unwrap_or_default();
            let reason = format!("worker {who} stopped renewing its lease");
            if job.attempts >= max_attempts {
                fail(&mut *tx, &job, &reason, true, now_ms).await?;
            } else {
                transition(&mut *tx, &job, JobState::Queued, &reason, now_ms).await?;
                tx.exec(
                    "UPDATE jobs SET worker = NULL, lease_until_ms = NULL, last_error = $1 WHERE id = $2",
                    &[reason.into(), id.as_str().into()],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(expired.len() as u64)
    }

    async fn purge_finished(&self, finished_before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.db.begin().await?;
        let sql = format!(
            "SELECT id, tenant, state FROM jobs WHERE finished_ms < $1 AND state IN ('completed', 'failed', 'cancelled')
             ORDER BY finished_ms LIMIT $2{}",
            self.db.skip_locked()
        );
        let ids: Vec<(String, String, String)> = tx
            .query(&sql, &[finished_before_ms.into(), i64::from(limit).into()])
            .await?
            .iter()
            .map(|r| (r.str(0), r.str(1), r.str(2)))
            .collect();
        for (id, tenant, state) in &ids {
            tx.exec(
                "DELETE FROM transitions WHERE job_id = $1",
                &[id.as_str().into()],
            )
            .await?;
            tx.exec("DELETE FROM jobs WHERE id = $1", &[id.as_str().into()])
                .await?;
            if let Some(state) = JobState::parse(state) {
                bump(&mut *tx, tenant, state, -1).await?;
            }
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        self.counts_of(
            "SELECT tenant, state, CAST(SUM(d) AS BIGINT) FROM job_count_deltas GROUP BY tenant, state",
        )
        .await
    }

    async fn compact_counts(&self) -> Result<u64, StoreError> {
        let mut tx = self.db.begin().await?;
        // One compaction at a time (the marker row's lock on PostgreSQL; SQLite's write
        // transactions are exclusive anyway).
        tx.exec(
            "UPDATE store_meta SET value = value WHERE key = 'job_counts'",
            &[],
        )
        .await?;
        // What is deleted is what is summed (a change committed meanwhile is either both
        // or neither).
        let rows = tx
            .query(
                "DELETE FROM job_count_deltas RETURNING tenant, state, d",
                &[],
            )
            .await?;
        let mut sums: HashMap<(String, String), i64> = HashMap::new();
        for r in &rows {
            *sums.entry((r.str(0), r.str(1))).or_default() += r.i64(2);
        }
        for ((tenant, state), n) in &sums {
            if let (Some(state), true) = (JobState::parse(state), *n > 0) {
                bump(&mut *tx, tenant, state, *n).await?;
            }
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    async fn open_counts(&self) -> Result<StateCounts, StoreError> {
        self.counts_of(
            "SELECT tenant, state, COUNT(*) FROM jobs
             WHERE state IN ('queued', 'running', 'verifying') GROUP BY tenant, state",
        )
        .await
    }

    async fn running_shares(
        &self,
        worker: &str,
    ) -> Result<HashMap<String, (u32, u32)>, StoreError> {
        let mut tx = self.db.begin().await?;
        let rows = tx
            .query(
                "SELECT tenant, SUM(CASE WHEN worker = $1 THEN 1 ELSE 0 END), COUNT(*) FROM jobs
                 WHERE state IN ('running', 'verifying') GROUP BY tenant",
                &[worker.into()],
            )
            .await?;
        tx.commit().await?;
        let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(rows
            .iter()
            .map(|r| (r.str(0), (n(r.i64(1)), n(r.i64(2)))))
            .collect())
    }

    async fn kpi(&self, since_ms: i64) -> Result<HashMap<String, TenantKpi>, StoreError> {
        let mut tx = self.db.begin().await?;
        let rows = tx
            .query(
                "SELECT tenant, state, COUNT(*), CAST(COALESCE(SUM(bytes_total), 0) AS BIGINT),
                        CAST(COALESCE(SUM(finished_ms - started_ms), 0) AS BIGINT)
                 FROM jobs WHERE finished_ms >= $1 AND state IN ('completed', 'failed', 'cancelled')
                 GROUP BY tenant, state",
                &[since_ms.into()],
            )
            .await?;
        tx.commit().await?;
        let mut out: HashMap<String, TenantKpi> = HashMap::new();
        for r in rows {
            let k = out.entry(r.str(0)).or_default();
            let n = u64::try_from(r.i64(2)).unwrap_or(0);
            match r.str(1).as_str() {
                "completed" => {
                    k.completed = n;
                    k.bytes = u64::try_from(r.i64(3)).unwrap_or(0);
                    k.busy_ms = u64::try_from(r.i64(4)).unwrap_or(0);
                }
                "failed" => k.failed = n,
                _ => k.cancelled = n,
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        tx.query("SELECT 1", &[]).await?;
        tx.commit().await
    }
}
