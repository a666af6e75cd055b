//! The job store: lifecycle, leases, retries and dead letters, fair claims, tenant
//! isolation, paging. Every case runs on SQLite and on PostgreSQL (a real server from
//! `scripts/test-servers.sh start postgres`, one fresh database per case).

use std::collections::HashMap;
use std::time::Duration;

use trackshift_engine::jobs::store::{Heartbeat, ListQuery, NewJob, Quota};
use trackshift_engine::jobs::{JobSpec, JobState, JobStore, Outcome, SqlStore, StoreError};

fn spec(priority: Option<u8>, attempts: Option<u32>) -> JobSpec {
    JobSpec {
        source: "/data/x".into(),
        destinations: vec!["null://".into()],
        chunk_size: None,
        priority,
        classification: None,
        strict: None,
        max_attempts: attempts,
    }
}

fn sqlite() -> (tempfile::TempDir, SqlStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqlStore::open(&dir.path().join("jobs.db")).unwrap();
    (dir, s)
}

/// A fresh database on the test PostgreSQL server.
async fn postgres() -> SqlStore {
    let url = std::env::var("TRACKSHIFT_TEST_POSTGRES").expect(
        "TRACKSHIFT_TEST_POSTGRES is not set: start the server with `scripts/test-servers.sh start postgres` \
         and source `scripts/test-servers.sh env` (scripts/test.sh does both)",
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db = format!("ts_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    SqlStore::connect_postgres(&format!("{base}/{db}"), 4)
        .await
        .unwrap()
}

/// Runs each case on both databases.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                let (_dir, s) = super::sqlite();
                super::$case(s).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::postgres().await).await;
            })*
        }
    };
}

on_both!(
    a_jobs_trace_context_is_kept_and_is_not_part_of_its_identity,
    a_job_runs_through_its_lifecycle_with_every_transition_recorded,
    transient_failures_back_off_then_dead_letter_and_permanent_ones_fail_at_once,
    an_expired_lease_puts_the_job_back_for_another_worker,
    cancelling_a_running_job_reaches_its_worker,
    tenants_never_see_each_others_jobs,
    listing_pages_newest_first_and_filters_by_state,
    claims_share_workers_fairly_and_respect_quotas_and_priority,
    counts_and_kpis_reflect_finished_jobs,
    concurrent_claimers_never_take_the_same_job,
    an_idempotency_key_makes_a_resubmission_return_the_first_job,
    running_shares_count_each_workers_jobs_against_all,
    a_tenant_flooding_the_queue_is_refused_at_max_queued_jobs,
    concurrent_submits_cannot_overshoot_max_queued_jobs,
    deferred_attempts_never_spend_attempts_or_dead_letter,
    purging_removes_only_jobs_that_ended_before_the_cutoff,
);

async fn submit(s: &SqlStore, tenant: &str, at: i64) -> String {
    s.create(
        NewJob {
            traceparent: None,
            tenant: tenant.into(),
            spec: spec(None, Some(3)),
            correlation_id: None,
            idempotency_key: None,
            max_queued: None,
        },
        at,
    )
    .await
    .unwrap()
    .0
    .id
}

/// Job counts in a fixed order (tenant, then state), to compare.
fn sorted(mut v: Vec<(String, JobState, u64)>) -> Vec<(String, JobState, u64)> {
    v.sort_by(|x, y| (&x.0, x.1.as_str()).cmp(&(&y.0, y.1.as_str())));
    v
}

const NO_QUOTAS: fn() -> HashMap<String, Quota> = HashMap::new;
const SEC: Duration = Duration::from_secs(1);

async fn a_job_runs_through_its_lifecycle_with_every_transition_recorded(s: SqlStore) {
    let id = submit(&s, "a", 1_000).await;
    let job = s.get("a", &id).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.correlation_id, id, "defaults to the job id");
    let claimed = s
        .claim("w1", &NO_QUOTAS(), 2_000, 32_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (claimed.id.as_str(), claimed.state, claimed.attempts),
        (id.as_str(), JobState::Running, 1)
    );
    assert!(
        s.claim("w2", &NO_QUOTAS(), 2_000, 32_000)
            .await
            .unwrap()
            .is_none(),
        "claimed once"
    );
    assert_eq!(
        s.heartbeat(&id, "w1", 40_000, 5, 10).await.unwrap(),
        Heartbeat::Held
    );
    assert_eq!(
        s.heartbeat(&id, "w2", 40_000, 5, 10).await.unwrap(),
        Heartbeat::Lost,
        "not w2's"
    );
    assert_eq!(
        s.verifying(&id, "w1", 3_000).await.unwrap(),
        Heartbeat::Held
    );
    let state = s
        .finish(
            &id,
            "w1",
            Outcome::Completed {
                bytes: 10,
                manifest: "{\"m\":1}".into(),
                receipts: vec!["{\"r\":1}".into()],
            },
            4_000,
            SEC,
        )
        .await
        .unwrap();
    assert_eq!(state, Some(JobState::Completed));
    let (m, r) = s.documents("a", &id).await.unwrap();
    assert_eq!(
        (m.as_str(), r),
        ("{\"m\":1}", vec!["{\"r\":1}".to_string()])
    );
    let ts: Vec<(Option<JobState>, JobState)> = s
        .transitions("a", &id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        ts,
        vec![
            (None, JobState::Queued),
            (Some(JobState::Queued), JobState::Running),
            (Some(JobState::Running), JobState::Verifying),
            (Some(JobState::Verifying), JobState::Completed),
        ]
    );
    let job = s.get("a", &id).await.unwrap();
    assert_eq!((job.bytes_done, job.bytes_total), (10, 10));
    // Completed is final.
    assert!(matches!(
        s.cancel("a", &id, 5_000).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.retry("a", &id, None, 5_000).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn transient_failures_back_off_then_dead_letter_and_permanent_ones_fail_at_once(s: SqlStore) {
    let id = submit(&s, "a", 0).await; // max_attempts 3
    for attempt in 1..=3u32 {
        let now = i64::from(attempt) * 100_000;
        let j = s
            .claim("w", &NO_QUOTAS(), now, now + 30_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(j.attempts, attempt);
        let st = s
            .finish(
                &id,
                "w",
                Outcome::Transient(format!("reset {attempt}")),
                now,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let job = s.get("a", &id).await.unwrap();
        if attempt < 3 {
            assert_eq!(st, Some(JobState::Queued));
            assert_eq!(job.not_before_ms, now + 10_000);
            assert!(
                s.claim("w", &NO_QUOTAS(), now + 9_999, now + 40_000)
                    .await
                    .unwrap()
                    .is_none(),
                "backoff respected"
            );
        } else {
            assert_eq!(st, Some(JobState::Failed));
            assert!(job.dead_letter);
            assert_eq!(job.last_error.as_deref(), Some("reset 3"));
        }
    }
    // The tenant retries: fresh attempts.
    let j = s.retry("a", &id, None, 1_000_000).await.unwrap();
    assert_eq!(
        (j.state, j.attempts, j.dead_letter),
        (JobState::Queued, 0, false)
    );
    s.claim("w", &NO_QUOTAS(), 1_000_001, 1_030_000)
        .await
        .unwrap()
        .unwrap();
    let st = s
        .finish(
            &id,
            "w",
            Outcome::Permanent("bad credentials".into()),
            1_000_002,
            SEC,
        )
        .await
        .unwrap();
    assert_eq!(st, Some(JobState::Failed));
    let job = s.get("a", &id).await.unwrap();
    assert!(!job.dead_letter, "a permanent failure is not a dead letter");
}

async fn an_expired_lease_puts_the_job_back_for_another_worker(s: SqlStore) {
    let id = submit(&s, "a", 0).await;
    s.claim("dead", &NO_QUOTAS(), 1_000, 31_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.expire_leases(30_999).await.unwrap(), 0, "not yet");
    assert_eq!(s.expire_leases(31_001).await.unwrap(), 1);
    let j = s.get("a", &id).await.unwrap();
    assert_eq!(j.state, JobState::Queued);
    assert!(j.last_error.unwrap().contains("dead stopped renewing"));
    let j = s
        .claim("alive", &NO_QUOTAS(), 31_002, 61_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((j.worker.as_deref(), j.attempts), (Some("alive"), 2));
    // The dead worker, if it comes back, finds it lost and cannot record an outcome.
    assert_eq!(
        s.heartbeat(&id, "dead", 90_000, 1, 1).await.unwrap(),
        Heartbeat::Lost
    );
    let st = s
        .finish(&id, "dead", Outcome::Transient("x".into()), 31_003, SEC)
        .await
        .unwrap();
    assert_eq!(st, None);
    // A job that keeps killing its workers is dead-lettered when attempts run out.
    s.expire_leases(61_001).await.unwrap();
    s.claim("w3", &NO_QUOTAS(), 61_002, 62_000)
        .await
        .unwrap()
        .unwrap();
    s.expire_leases(62_001).await.unwrap();
    let j = s.get("a", &id).await.unwrap();
    assert_eq!((j.state, j.dead_letter), (JobState::Failed, true));
}

async fn cancelling_a_running_job_reaches_its_worker(s: SqlStore) {
    let id = submit(&s, "a", 0).await;
    s.claim("w", &NO_QUOTAS(), 1, 30_000)
        .await
        .unwrap()
        .unwrap();
    let j = s.cancel("a", &id, 2).await.unwrap();
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(
        s.heartbeat(&id, "w", 40_000, 1, 2).await.unwrap(),
        Heartbeat::Cancelled
    );
    assert_eq!(
        s.finish(&id, "w", Outcome::Transient("x".into()), 3, SEC)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get("a", &id).await.unwrap().state, JobState::Cancelled);
    assert!(
        matches!(s.cancel("a", &id, 4).await, Err(StoreError::Conflict(_))),
        "twice"
    );
    assert_eq!(
        s.retry("a", &id, None, 5).await.unwrap().state,
        JobState::Queued
    );
}

async fn tenants_never_see_each_others_jobs(s: SqlStore) {
    let a = submit(&s, "a", 1).await;
    let b = submit(&s, "b", 2).await;
    assert!(matches!(s.get("b", &a).await, Err(StoreError::NotFound)));
    assert!(matches!(
        s.transitions("b", &a).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.documents("b", &a).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.cancel("b", &a, 3).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.retry("b", &a, None, 3).await,
        Err(StoreError::NotFound)
    ));
    let listed: Vec<String> = s
        .list("b", &ListQuery::default())
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, vec![b]);
    assert_eq!(
        s.get("a", &a).await.unwrap().state,
        JobState::Queued,
        "a's job untouched"
    );
}

async fn listing_pages_newest_first_and_filters_by_state(s: SqlStore) {
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(submit(&s, "a", 1_000 + i).await);
    }
    ids.push(submit(&s, "a", 1_006).await); // same time as the last: ordered by id
    s.cancel("a", &ids[0], 2_000).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list(
                "a",
                &ListQuery {
                    state: None,
                    limit: Some(3),
                    cursor: cursor.clone(),
                },
            )
            .await
            .unwrap();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|j| (j.created_ms, j.id.clone())));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8, "every job once");
    let mut sorted = seen.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(seen, sorted, "newest first, ties by id");
    let cancelled = s
        .list(
            "a",
            &ListQuery {
                state: Some(JobState::Cancelled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cancelled.jobs.len(), 1);
    assert_eq!(cancelled.jobs[0].id, ids[0]);
    assert!(matches!(
        s.list(
            "a",
            &ListQuery {
                cursor: Some("garbage".into()),
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Invalid(_))
    ));
}

async fn claims_share_workers_fairly_and_respect_quotas_and_priority(s: SqlStore) {
    for i in 0..50 {
        submit(&s, "big", i).await;
    }
    for i in 0..5 {
        submit(&s, "small", 100 + i).await;
    }
    let mut quotas = HashMap::new();
    quotas.insert(
        "big".to_string(),
        Quota {
            share: 1,
            limit: None,
        },
    );
    quotas.insert(
        "small".to_string(),
        Quota {
            share: 1,
            limit: Some(2),
        },
    );
    let mut got: HashMap<String, u32> = HashMap::new();
    for n in 0..10 {
        let j = s
            .claim(&format!("w{n}"), &quotas, 1_000, 60_000)
            .await
            .unwrap()
            .unwrap();
        *got.entry(j.tenant).or_default() += 1;
    }
    assert_eq!(
        got["small"], 2,
        "small's quota caps it although it is behind its share"
    );
    assert_eq!(got["big"], 8);
    // Within a tenant, higher priority first.
    let urgent = s
        .create(
            NewJob {
                traceparent: None,
                tenant: "big".into(),
                spec: spec(Some(9), None),
                correlation_id: Some("c-1".into()),
                idempotency_key: None,
                max_queued: None,
            },
            5_000,
        )
        .await
        .unwrap()
        .0;
    assert_eq!(urgent.correlation_id, "c-1");
    let next = s
        .claim("wx", &quotas, 6_000, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, urgent.id);
}

async fn counts_and_kpis_reflect_finished_jobs(s: SqlStore) {
    let ok = submit(&s, "a", 0).await;
    let bad = submit(&s, "a", 1).await;
    s.claim("w", &NO_QUOTAS(), 1_000, 60_000).await.unwrap();
    s.claim("w", &NO_QUOTAS(), 1_000, 60_000).await.unwrap();
    s.finish(
        &ok,
        "w",
        Outcome::Completed {
            bytes: 4_000,
            manifest: "{}".into(),
            receipts: vec![],
        },
        3_000,
        SEC,
    )
    .await
    .unwrap();
    s.finish(&bad, "w", Outcome::Permanent("no".into()), 3_000, SEC)
        .await
        .unwrap();
    let kpi = s.kpi(0).await.unwrap();
    let a = &kpi["a"];
    assert_eq!(
        (a.completed, a.failed, a.bytes, a.busy_ms),
        (1, 1, 4_000, 2_000)
    );
    assert!(s.kpi(3_001).await.unwrap().is_empty(), "outside the window");
    let counts = s.counts().await.unwrap();
    assert!(counts.contains(&("a".into(), JobState::Completed, 1)));
    assert!(counts.contains(&("a".into(), JobState::Failed, 1)));
    // Only what has not ended, read from the state index.
    assert_eq!(s.open_counts().await.unwrap(), vec![]);
    submit(&s, "a", 4_000).await;
    assert_eq!(
        s.open_counts().await.unwrap(),
        vec![("a".into(), JobState::Queued, 1)]
    );
    s.ping().await.unwrap();
}

async fn running_shares_count_each_workers_jobs_against_all(s: SqlStore) {
    for at in 0..4 {
        submit(&s, "a", at).await;
    }
    submit(&s, "b", 10).await;
    // w1 takes two of a's jobs, w2 one of a's and b's; one of a's stays queued.
    for w in ["w1", "w1", "w2", "w2"] {
        s.claim(w, &NO_QUOTAS(), 1_000, 60_000)
            .await
            .unwrap()
            .unwrap();
    }
    let w1 = s.running_shares("w1").await.unwrap();
    let w2 = s.running_shares("w2").await.unwrap();
    let (a1, a2) = (w1["a"], w2["a"]);
    assert_eq!(a1.1, 3, "{w1:?}");
    assert_eq!(a1.0 + a2.0, 3, "{w1:?} {w2:?}");
    assert_eq!(w1.get("b").map_or(0, |b| b.0) + w2["b"].0, 1);
    assert!(
        s.running_shares("w3")
            .await
            .unwrap()
            .values()
            .all(|(mine, _)| *mine == 0)
    );
}

#[tokio::test]
async fn the_store_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let id = {
        let s = SqlStore::open(&path).unwrap();
        let id = submit(&s, "a", 0).await;
        s.claim("w", &NO_QUOTAS(), 1, 2).await.unwrap();
        id
    };
    let s = SqlStore::open(&path).unwrap();
    assert_eq!(s.get("a", &id).await.unwrap().state, JobState::Running);
    assert_eq!(s.expire_leases(3).await.unwrap(), 1);
    assert_eq!(s.get("a", &id).await.unwrap().state, JobState::Queued);
}

#[tokio::test]
async fn a_store_made_before_counts_were_kept_counts_its_jobs_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    {
        let s = SqlStore::open(&path).unwrap();
        submit(&s, "a", 0).await;
        submit(&s, "a", 0).await;
        submit(&s, "b", 0).await;
        s.claim("w", &NO_QUOTAS(), 1_000, 60_000).await.unwrap();
    }
    // As an older version left it: jobs, no counts.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch("DELETE FROM job_count_deltas; DELETE FROM store_meta;")
        .unwrap();
    drop(db);
    let s = SqlStore::open(&path).unwrap();
    let counts = sorted(s.counts().await.unwrap());
    let open = sorted(s.open_counts().await.unwrap());
    assert_eq!(counts, open);
    assert_eq!(counts.iter().map(|c| c.2).sum::<u64>(), 3);
    // Opened again: counted once, not twice.
    drop(s);
    let s = SqlStore::open(&path).unwrap();
    assert_eq!(
        s.counts().await.unwrap().iter().map(|c| c.2).sum::<u64>(),
        3
    );
}

#[tokio::test]
async fn the_sqlite_store_and_its_journal_are_not_readable_by_other_users() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let s = SqlStore::open(&path).unwrap();
    submit(&s, "a", 0).await;
    for name in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
        let p = dir.path().join(name);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
    }
}

async fn concurrent_claimers_never_take_the_same_job(s: SqlStore) {
    for i in 0..40 {
        submit(&s, if i % 2 == 0 { "a" } else { "b" }, i).await;
    }
    // 8 workers claim at once until the queue is empty.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(j) = s
                .claim(&format!("w{w}"), &HashMap::new(), 1_000, 60_000)
                .await
                .unwrap()
            {
                assert_eq!(j.worker.as_deref(), Some(format!("w{w}").as_str()));
                got.push(j.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (40, 40), "every job claimed exactly once");
}

async fn an_idempotency_key_makes_a_resubmission_return_the_first_job(s: SqlStore) {
    let new = |tenant: &str, key: &str, priority: Option<u8>| NewJob {
        traceparent: None,
        tenant: tenant.into(),
        spec: spec(priority, None),
        correlation_id: None,
        idempotency_key: Some(key.into()),
        max_queued: None,
    };
    let (first, created) = s.create(new("a", "k1", None), 1).await.unwrap();
    assert!(created);
    let (again, created) = s.create(new("a", "k1", None), 2).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id);
    // Same key, another request: refused, nothing stored.
    assert!(matches!(
        s.create(new("a", "k1", Some(9)), 3).await,
        Err(StoreError::Conflict(_))
    ));
    // Keys belong to their tenant.
    let (other, created) = s.create(new("b", "k1", None), 4).await.unwrap();
    assert!(created);
    assert_ne!(other.id, first.id);
    // Concurrent resubmissions still make one job.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.create(new("a", "k2", None), 10 + i).await.unwrap().0.id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        s.list("a", &ListQuery::default()).await.unwrap().jobs.len(),
        2
    );
}

fn capped(tenant: &str, limit: u32) -> NewJob {
    NewJob {
        traceparent: None,
        tenant: tenant.into(),
        spec: spec(None, Some(1)),
        correlation_id: None,
        idempotency_key: None,
        max_queued: Some(limit),
    }
}

async fn a_tenant_flooding_the_queue_is_refused_at_max_queued_jobs(s: SqlStore) {
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(s.create(capped("a", 3), i).await.unwrap().0.id);
    }
    let refused = s.create(capped("a", 3), 10).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::TooManyJobs { tenant, active: 3, limit: 3 } if tenant == "a"),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("max_queued_jobs = 3"),
        "{refused}"
    );
    // Nothing was stored for the refused one; another tenant is not affected.
    assert_eq!(
        s.list("a", &ListQuery::default()).await.unwrap().jobs.len(),
        3
    );
    s.create(capped("b", 3), 11).await.unwrap();
    // A running job still counts; a finished one does not.
    let j = s
        .claim("w", &NO_QUOTAS(), 20, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        s.create(capped("a", 3), 21).await,
        Err(StoreError::TooManyJobs { .. })
    ));
    s.finish(&j.id, "w", Outcome::Permanent("x".into()), 30, SEC)
        .await
        .unwrap();
    let fourth = s.create(capped("a", 3), 31).await.unwrap().0.id;
    // Cancelling a job and retrying it once the queue is full again gets nothing past it.
    let victim = ids.iter().find(|id| **id != j.id).unwrap();
    s.cancel("a", victim, 40).await.unwrap();
    s.create(capped("a", 3), 41).await.unwrap();
    assert!(matches!(
        s.retry("a", victim, Some(3), 42).await,
        Err(StoreError::TooManyJobs { .. })
    ));
    assert_eq!(s.get("a", victim).await.unwrap().state, JobState::Cancelled);
    // The failed one can be retried once there is room.
    s.cancel("a", &fourth, 50).await.unwrap();
    assert_eq!(
        s.retry("a", &j.id, Some(3), 51).await.unwrap().state,
        JobState::Queued
    );
}

async fn concurrent_submits_cannot_overshoot_max_queued_jobs(s: SqlStore) {
    // Many submissions at once (on PostgreSQL each in its own transaction on its own
    // connection, as from several gateways): exactly the cap gets in. The pool's
    // connections are opened first, so that the submissions do overlap.
    for _ in 0..3 {
        for r in futures::future::join_all((0..8).map(|_| s.ping())).await {
            r.unwrap();
        }
    }
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.create(capped("a", 5), i).await },
        ));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::TooManyJobs { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, refused), (5, 19));
    let queued: u64 = s
        .counts()
        .await
        .unwrap()
        .iter()
        .filter(|(t, st, _)| t == "a" && *st == JobState::Queued)
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(queued, 5);
}

async fn deferred_attempts_never_spend_attempts_or_dead_letter(s: SqlStore) {
    // One attempt allowed; the gateway defers it again and again (tenant at its quota).
    let id = s.create(capped("a", 10), 0).await.unwrap().0.id;
    let mut now = 1_000;
    for _ in 0..5 {
        let j = s
            .claim("w", &NO_QUOTAS(), now, now + 60_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((j.id.as_str(), j.attempts), (id.as_str(), 1));
        let state = s
            .finish(
                &id,
                "w",
                Outcome::Deferred("tenant a has 2 jobs running".into()),
                now,
                SEC,
            )
            .await
            .unwrap();
        assert_eq!(state, Some(JobState::Queued));
        let j = s.get("a", &id).await.unwrap();
        assert_eq!((j.attempts, j.dead_letter), (0, false));
        assert!(j.not_before_ms >= now + 1_000, "deferred with its delay");
        now += 2_000;
    }
    let t = s.transitions("a", &id).await.unwrap();
    assert!(
        t.iter().any(|t| t.reason.starts_with("deferred: ")),
        "{t:?}"
    );
    // A real transient failure still spends the attempt.
    s.claim("w", &NO_QUOTAS(), now, now + 60_000)
        .await
        .unwrap()
        .unwrap();
    s.finish(&id, "w", Outcome::Transient("reset".into()), now, SEC)
        .await
        .unwrap();
    let j = s.get("a", &id).await.unwrap();
    assert_eq!((j.state, j.dead_letter), (JobState::Failed, true));
}

async fn purging_removes_only_jobs_that_ended_before_the_cutoff(s: SqlStore) {
    // Three jobs that end at 10 s, 20 s and 30 s (completed, failed, cancelled), one
    // still running and one queued.
    let done = submit(&s, "a", 0).await;
    let failed = submit(&s, "a", 0).await;
    let cancelled = submit(&s, "b", 0).await;
    let running = submit(&s, "b", 0).await;
    let mut claimed = Vec::new();
    while let Some(j) = s.claim("w", &NO_QUOTAS(), 1_000, 1_000_000).await.unwrap() {
        claimed.push(j.id);
    }
    assert_eq!(claimed.len(), 4);
    let completed = Outcome::Completed {
        bytes: 1,
        manifest: "{}".into(),
        receipts: vec![],
    };
    s.finish(&done, "w", completed, 10_000, SEC).await.unwrap();
    let fatal = Outcome::Permanent("refused".into());
    s.finish(&failed, "w", fatal, 20_000, SEC).await.unwrap();
    s.cancel("b", &cancelled, 30_000).await.unwrap();
    let queued = submit(&s, "a", 5_000).await;

    // Nothing ended before 10 s.
    assert_eq!(s.purge_finished(10_000, 100).await.unwrap(), 0);
    // Before 25 s: the completed and the failed job, oldest first, a batch at a time.
    assert_eq!(s.purge_finished(25_000, 1).await.unwrap(), 1);
    assert!(matches!(s.get("a", &done).await, Err(StoreError::NotFound)));
    assert!(
        s.get("a", &failed).await.is_ok(),
        "the newer one waits for the next batch"
    );
    assert_eq!(s.purge_finished(25_000, 100).await.unwrap(), 1);
    assert!(matches!(
        s.get("a", &failed).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.transitions("a", &failed).await,
        Err(StoreError::NotFound)
    ));
    // Far in the future: the cancelled job goes; running and queued jobs never do.
    assert_eq!(s.purge_finished(i64::MAX, 100).await.unwrap(), 1);
    // The kept counts follow, before and after they are folded, and match a full count.
    let mut expected = vec![
        ("a".to_string(), JobState::Queued, 1),
        ("b".to_string(), JobState::Running, 1),
    ];
    expected = sorted(expected);
    assert_eq!(sorted(s.counts().await.unwrap()), expected);
    assert!(s.compact_counts().await.unwrap() > 2);
    assert_eq!(sorted(s.counts().await.unwrap()), expected);
    assert_eq!(
        s.compact_counts().await.unwrap(),
        2,
        "one row per tenant and state"
    );
    assert_eq!(sorted(s.open_counts().await.unwrap()), expected);
    assert!(s.get("b", &running).await.is_ok());
    assert!(s.get("a", &queued).await.is_ok());
    assert_eq!(
        s.list("a", &ListQuery::default()).await.unwrap().jobs.len(),
        1
    );
    // The store still works as before around the gap.
    assert_eq!(
        s.heartbeat(&running, "w", 2_000_000, 1, 2).await.unwrap(),
        Heartbeat::Held
    );
}

/// A job with a W3C trace context: kept and read back; an idempotent resubmission with
/// another trace still returns the first job.
async fn a_jobs_trace_context_is_kept_and_is_not_part_of_its_identity(s: SqlStore) {
    use trackshift_engine::trace::TraceParent;
    let t1 = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let t2 = TraceParent::parse("00-11111111111111111111111111111111-2222222222222222-00").unwrap();
    let new = |t| NewJob {
        traceparent: Some(t),
        tenant: "acme".into(),
        spec: spec(None, None),
        correlation_id: None,
        idempotency_key: Some("k1".into()),
        max_queued: None,
    };
    let (job, created) = s.create(new(t1), 1).await.unwrap();
    assert!(created);
    assert_eq!(job.traceparent, Some(t1));
    let (again, created) = s.create(new(t2), 2).await.unwrap();
    assert!(!created, "the same idempotency key and spec: the first job");
    assert_eq!((again.id, again.traceparent), (job.id.clone(), Some(t1)));
    assert_eq!(s.get("acme", &job.id).await.unwrap().traceparent, Some(t1));
}

/// A store made before schema versions were kept (no `traceparent` column, no
/// `schema_version`): opening it migrates it, its jobs stay readable, and the version is
/// recorded. A store a newer trackshift made that this one cannot use is refused, naming
/// both versions, and left as it was.
#[test]
fn an_old_store_is_migrated_and_one_too_new_is_refused() {
    use trackshift_engine::jobs::schema::SCHEMA_VERSION;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let id = {
        let s = SqlStore::open(&path).unwrap();
        futures_lite_block_on(submit(&s, "acme", 5))
    };
    // Back to the schema of before: the column and the version gone.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "ALTER TABLE jobs DROP COLUMN traceparent;
             DELETE FROM store_meta WHERE key LIKE 'schema%';",
        )
        .unwrap();
    }
    let s = SqlStore::open(&path).unwrap();
    let job = futures_lite_block_on(s.get("acme", &id)).unwrap();
    assert_eq!((job.state, job.traceparent), (JobState::Queued, None));
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    let meta = |key: &str| -> String {
        c.query_row("SELECT value FROM store_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(meta("schema_version"), SCHEMA_VERSION.to_string());
    assert_eq!(meta("schema_readable_from"), "1");
    // A later trackshift's store: readable by this one when it says so, else refused.
    let later = (SCHEMA_VERSION + 1).to_string();
    c.execute(
        "UPDATE store_meta SET value = ?1 WHERE key = 'schema_version'",
        [&later],
    )
    .unwrap();
    SqlStore::open(&path).expect("a newer store this version can still use");
    c.execute(
        "UPDATE store_meta SET value = ?1 WHERE key = 'schema_readable_from'",
        [&later],
    )
    .unwrap();
    let e = SqlStore::open(&path).err().expect("refused");
    assert!(matches!(e, StoreError::SchemaTooNew { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("schema version {later}"))
            && text.contains(&format!("knows up to {SCHEMA_VERSION}")),
        "{text}"
    );
    assert_eq!(meta("schema_version"), later, "left as it was");
}

/// Runs a future to its end on this thread (the SQLite store needs no runtime).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}
