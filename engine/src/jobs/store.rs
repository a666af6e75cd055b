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

mod ops;
mod types;

use ops::*;
pub use types::*;

/// The job store over a SQL database.
#[derive(Clone)]
pub struct SqlStore {
    db: Arc<dyn Backend>,
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
