//! The SQL steps the store's methods are made of: reading a job, recording a transition,
//! the kept counts, the queue limit, cursors.

use super::*;

pub(super) const JOB_COLUMNS: &str = "id, tenant, correlation_id, spec, state, attempts, created_ms, updated_ms, \
     not_before_ms, last_error, dead_letter, worker, bytes_total, bytes_done, max_attempts, traceparent";

pub(super) fn row_to_job(row: &Row) -> Result<Job, StoreError> {
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
        traceparent: match row.opt_str(15) {
            None => None,
            Some(t) => Some(
                crate::trace::TraceParent::parse(&t)
                    .map_err(|e| corrupt(format!("traceparent: {e}")))?,
            ),
        },
        id,
    })
}

/// The job and its attempt limit.
pub(super) async fn load(tx: &mut dyn Tx, id: &str) -> Result<Option<(Job, u32)>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
    match tx.query(&sql, &[id.into()]).await?.first() {
        Some(r) => Ok(Some((
            row_to_job(r)?,
            u32::try_from(r.i64(14)).unwrap_or(1),
        ))),
        None => Ok(None),
    }
}

pub(super) async fn load_for(tx: &mut dyn Tx, tenant: &str, id: &str) -> Result<Job, StoreError> {
    match load(tx, id).await? {
        Some((j, _)) if j.tenant == tenant => Ok(j),
        _ => Err(StoreError::NotFound),
    }
}

pub(super) async fn record(
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
pub(super) async fn bump(
    tx: &mut dyn Tx,
    tenant: &str,
    state: JobState,
    by: i64,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO job_count_deltas (tenant, state, d) VALUES ($1, $2, $3)",
        &[tenant.into(), state.as_str().into(), by.into()],
    )
    .await?;
    Ok(())
}

/// Moves `job` to `to` (checked against the lifecycle) and records why.
pub(super) async fn transition(
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

pub(super) async fn fail(
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
pub(super) async fn within_queue_limit(
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

pub(super) async fn held_or_not(
    tx: &mut dyn Tx,
    id: &str,
    worker: &str,
) -> Result<Heartbeat, StoreError> {
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

pub(super) fn parse_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let bad = || StoreError::Invalid(format!("cursor {c:?} is not one this API returned"));
    let (ms, id) = c.split_once('.').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(bad());
    }
    Ok((ms, id.to_string()))
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqlStore {
    /// The (tenant, state, number) rows `sql` selects, those with a number above zero.
    pub(super) async fn counts_of(&self, sql: &str) -> Result<StateCounts, StoreError> {
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
            db: Arc::new(crate::jobs::sql::Sqlite::open(path)?),
        };
        // Runs on the connection's thread: no runtime needed (none may be running yet).
        futures::executor::block_on(me.migrate(""))?;
        futures::executor::block_on(me.init_counts())?;
        Ok(me)
    }

    /// The shared store: PostgreSQL at `url` (schema created if absent).
    pub async fn connect_postgres(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let me = Self {
            db: Arc::new(crate::jobs::sql::Postgres::connect(url, max_connections).await?),
        };
        // Gateways starting at once on a shared store migrate it one at a time.
        me.migrate("SELECT pg_advisory_xact_lock(7395001)").await?;
        me.init_counts().await?;
        Ok(me)
    }

    /// Brings the schema to [`crate::jobs::schema::SCHEMA_VERSION`] in one transaction
    /// (after `lock`, a statement that serialises openers; empty: none needed), or refuses
    /// a store a newer trackshift made that this one cannot use.
    pub(super) async fn migrate(&self, lock: &str) -> Result<(), StoreError> {
        use crate::jobs::schema;
        let mut tx = self.db.begin().await?;
        if !lock.is_empty() {
            tx.exec(lock, &[]).await?;
        }
        let rows = tx.query(schema::READ, &[]).await?;
        let meta = |key: &str| rows.iter().find(|r| r.str(0) == key).map(|r| r.str(1));
        let plan = schema::plan(
            meta("schema_version").as_deref(),
            meta("schema_readable_from").as_deref(),
        )?;
        for (done_if, sql) in &plan.statements {
            // Probed in a savepoint: on PostgreSQL a failed statement spoils the transaction.
            tx.exec("SAVEPOINT schema_step", &[]).await?;
            if tx.exec(done_if, &[]).await.is_err() {
                tx.exec("ROLLBACK TO SAVEPOINT schema_step", &[]).await?;
                tx.exec(sql, &[]).await?;
            }
            tx.exec("RELEASE SAVEPOINT schema_step", &[]).await?;
        }
        if let Some((version, readable)) = plan.meta {
            for (key, value) in [
                ("schema_version", version),
                ("schema_readable_from", readable),
            ] {
                tx.exec(schema::RECORD, &[key.into(), value.to_string().into()])
                    .await?;
            }
            tx.commit().await?;
            tracing::info!(from = plan.from, to = version, "job store schema migrated");
        } else {
            tx.commit().await?;
        }
        Ok(())
    }

    /// Fills the job counts from the jobs once, in a store made before they were kept.
    /// The marker and the counts are one transaction: of gateways opening a shared store
    /// at once, one inserts the marker and counts, the others wait on its key and skip.
    pub(super) async fn init_counts(&self) -> Result<(), StoreError> {
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

    pub(super) async fn insert(&self, job: &NewJob, now_ms: i64) -> Result<Job, StoreError> {
        let mut tx = self.db.begin().await?;
        within_queue_limit(&mut *tx, &job.tenant, job.max_queued).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let correlation = job.correlation_id.clone().unwrap_or_else(|| id.clone());
        let spec = serde_json::to_string(&job.spec).expect("specs serialise");
        tx.exec(
            "INSERT INTO jobs (id, tenant, correlation_id, spec, state, priority, max_attempts,
             created_ms, updated_ms, idempotency_key, traceparent)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $7, $8, $9)",
            &[
                id.as_str().into(),
                job.tenant.as_str().into(),
                correlation.into(),
                spec.into(),
                i64::from(job.spec.priority.unwrap_or(limits::DEFAULT_PRIORITY)).into(),
                i64::from(job.spec.max_attempts.unwrap_or(limits::DEFAULT_ATTEMPTS)).into(),
                now_ms.into(),
                job.idempotency_key.as_deref().into(),
                job.traceparent.map(|t| t.to_string()).into(),
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
    pub(super) async fn by_idempotency_key(
        &self,
        job: &NewJob,
        key: &str,
    ) -> Result<Option<Job>, StoreError> {
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
