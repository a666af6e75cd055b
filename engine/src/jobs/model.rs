//! Jobs as the job service sees them: what a tenant submits, the lifecycle state machine
//! and the retry policy. Pure: no I/O, no clock (times are passed in).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
///
/// ```text
/// queued ──claim──▶ running ──all chunks acknowledged──▶ verifying ──▶ completed
///   ▲  │              │  │                                  │  │
///   │  └──cancel──▶ cancelled ◀────────────cancel───────────┘  │
///   │                 │  └──permanent error / attempts spent──▶ failed
///   └──transient error, lease expired (back to the queue)──────┘
///   failed / cancelled ──retry (by the tenant)──▶ queued
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker (or for its next attempt's time).
    Queued,
    /// A worker is sending the data.
    Running,
    /// Every chunk is acknowledged; the gateway is committing, verifying and signing.
    Verifying,
    /// Done: manifest and receipts signed and in the ledger.
    Completed,
    /// Failed for good (a permanent error, or every attempt spent: dead-lettered).
    Failed,
    /// Cancelled by the tenant.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Verifying,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The lower-case name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Verifying => "verifying",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses [`JobState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No worker will touch the job again (unless the tenant retries it).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    /// A worker holds the job.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Running | JobState::Verifying)
    }

    /// Whether the lifecycle allows going from `self` to `to`.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Running | Cancelled)
                | (Running, Verifying | Queued | Completed | Failed | Cancelled)
                | (Verifying, Completed | Failed | Queued | Cancelled)
                | (Failed | Cancelled, Queued)
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most destinations, chunk size bounds and other limits of a submission.
pub mod limits {
    /// Highest priority (0 lowest, default 5).
    pub const MAX_PRIORITY: u8 = 9;
    /// Default priority.
    pub const DEFAULT_PRIORITY: u8 = 5;
    /// Most attempts a job may ask for.
    pub const MAX_ATTEMPTS: u32 = 20;
    /// Default attempts before a job is dead-lettered.
    pub const DEFAULT_ATTEMPTS: u32 = 5;
}

/// What a tenant asks for: validated by [`JobSpec::validate`] before it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Absolute path of a file or directory on the job service's machine, under one of
    /// the tenant's source directories.
    pub source: PathBuf,
    /// Destination URIs (1 to 16); the data is read once and written to all of them.
    pub destinations: Vec<String>,
    /// Chunk size in bytes (power of two, 1 KiB to 1 GiB; default: 4 MiB, 8 MiB when a
    /// destination is S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// 0 (lowest) to 9; higher runs first within a tenant. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Data classification (for example `phi`); the tenant's policy says where it may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    /// Fail-closed delivery for this job (every destination must confirm content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// Attempts before the job is dead-lettered (1 to 20, default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// Why a submission is refused (the message names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl JobSpec {
    /// Checks everything that can be checked without the file system or the tenant's
    /// policy: destination count and syntax, chunk size, priority, attempts.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |m: String| Err(SpecError(m));
        if !self.source.is_absolute() {
            return err(format!(
                "source: {} is not an absolute path",
                self.source.display()
            ));
        }
        // Written as meant: no `.`, `..`, doubled or trailing slashes.
        let normal: PathBuf = self.source.components().collect();
        if normal.as_os_str() != self.source.as_os_str()
            || self
                .source
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return err(format!(
                "source: {} is not a normalized path (no '.', '..', '//' or trailing '/')",
                self.source.display()
            ));
        }
        if self.destinations.is_empty()
            || self.destinations.len() > crate::protocol::MAX_DESTINATIONS
        {
            return err(format!(
                "destinations: 1 to {} needed, got {}",
                crate::protocol::MAX_DESTINATIONS,
                self.destinations.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.destinations {
            if !seen.insert(d) {
                return err(format!("destinations: {d} is named twice"));
            }
            if d.len() > 2048 {
                return err("destinations: a URI is longer than 2048 bytes".into());
            }
        }
        if let Some(c) = self.chunk_size
            && (!c.is_power_of_two() || !(1 << 10..=1 << 30).contains(&c))
        {
            return err(format!(
                "chunk_size: {c} is not a power of two from 1024 to 1073741824"
            ));
        }
        if let Some(p) = self.priority
            && p > limits::MAX_PRIORITY
        {
            return err(format!("priority: {p} is above {}", limits::MAX_PRIORITY));
        }
        if let Some(c) = &self.classification {
            crate::protocol::check_id("classification", c)
                .map_err(|e| SpecError(format!("classification: {e}")))?;
        }
        if let Some(a) = self.max_attempts
            && !(1..=limits::MAX_ATTEMPTS).contains(&a)
        {
            return err(format!(
                "max_attempts: {a} is not between 1 and {}",
                limits::MAX_ATTEMPTS
            ));
        }
        Ok(())
    }

    /// The chunk size to use.
    pub fn effective_chunk_size(&self) -> u64 {
        use crate::connectors::destination::{Destination, default_chunk_size};
        // (A destination that does not parse is refused before this matters.)
        self.chunk_size.unwrap_or_else(|| {
            default_chunk_size(
                self.destinations
                    .iter()
                    .filter_map(|d| Destination::parse(d).ok())
                    .map(|d| d.scheme()),
            )
        })
    }
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// The state before (none for creation).
    pub from: Option<JobState>,
    /// The state after.
    pub to: JobState,
    /// Why.
    pub reason: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Job id (a UUID, unique across tenants).
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Correlation id: in every log line about the job and in its receipts.
    pub correlation_id: String,
    /// What was asked.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// Last change (Unix ms).
    pub updated_ms: i64,
    /// Not claimed before this time (Unix ms; the backoff of a retry).
    pub not_before_ms: i64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Failed after spending every attempt on transient errors.
    pub dead_letter: bool,
    /// The worker holding the job (running or verifying).
    pub worker: Option<String>,
    /// Bytes in the job (known once a worker scanned the source).
    pub bytes_total: u64,
    /// Bytes acknowledged by the gateway.
    pub bytes_done: u64,
    /// The W3C trace context the job was submitted with (its `traceparent` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<crate::trace::TraceParent>,
}

/// How a worker's attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Manifest and receipts (JSON), all signed.
    Completed {
        /// Bytes delivered.
        bytes: u64,
        /// The signed manifest.
        manifest: String,
        /// One signed receipt per destination.
        receipts: Vec<String>,
    },
    /// Retrying cannot help (bad credentials, policy refusal, missing source).
    Permanent(String),
    /// May work later (connection lost, server busy).
    Transient(String),
    /// The gateway had no room for it now (its tenant is at `max_concurrent_jobs`, for
    /// example with sends of its own): queued again without spending an attempt, so a
    /// busy tenant's jobs wait rather than being dead-lettered.
    Deferred(String),
}

pub use crate::protocol::retry::backoff;

/// Where a failed attempt leaves the job: back in the queue (with the time of the next
/// attempt), or failed (dead-lettered when attempts ran out on transient errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Queue again, not before this time (Unix ms).
    Retry {
        /// Earliest next attempt.
        not_before_ms: i64,
    },
    /// Fail for good.
    Fail {
        /// Attempts ran out on transient errors.
        dead_letter: bool,
    },
}

/// Decides what a failed attempt leads to.
pub fn after_failure(
    permanent: bool,
    attempts: u32,
    max_attempts: u32,
    now_ms: i64,
    delay: Duration,
) -> AfterFailure {
    if permanent {
        AfterFailure::Fail { dead_letter: false }
    } else if attempts >= max_attempts {
        AfterFailure::Fail { dead_letter: true }
    } else {
        AfterFailure::Retry {
            not_before_ms: now_ms + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2),
        }
    }
}

/// Fair scheduling: which tenant's job a free worker takes next. `running` is the
/// tenant's jobs held by workers, `share` its weight, `limit` its concurrency quota.
/// The tenant furthest below its share wins (fewest running per unit of share); ties go
/// to the tenant served longest ago (round robin, so a tenant with a deep queue cannot
/// take every free slot in turn), then to the oldest waiting job. Tenants at their quota
/// are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Tenant.
    pub tenant: String,
    /// The tenant's best queued job (highest priority, then oldest).
    pub job_id: String,
    /// That job's creation time (Unix ms).
    pub created_ms: i64,
    /// The tenant's jobs running now.
    pub running: u32,
    /// The tenant's weight (at least 1).
    pub share: u32,
    /// The tenant's concurrency quota.
    pub limit: Option<u32>,
    /// When the tenant last had a job claimed (Unix ms; `i64::MIN`: not recently).
    pub last_claim_ms: i64,
}

/// Picks the next job among one candidate per tenant (see [`Candidate`]).
pub fn pick_fair(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| c.limit.is_none_or(|l| c.running < l))
        .min_by(|a, b| {
            // running_a / share_a < running_b / share_b, without division.
            let lhs = u64::from(a.running) * u64::from(b.share.max(1));
            let rhs = u64::from(b.running) * u64::from(a.share.max(1));
            lhs.cmp(&rhs)
                .then(a.last_claim_ms.cmp(&b.last_claim_ms))
                .then(a.created_ms.cmp(&b.created_ms))
                .then(a.job_id.cmp(&b.job_id))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_allows_only_the_documented_transitions() {
        use JobState::*;
        let allowed = [
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Verifying),
            (Running, Queued),
            (Running, Completed),
            (Running, Failed),
            (Running, Cancelled),
            (Verifying, Completed),
            (Verifying, Failed),
            (Verifying, Queued),
            (Verifying, Cancelled),
            (Failed, Queued),
            (Cancelled, Queued),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            assert_eq!(JobState::parse(from.as_str()), Some(from));
        }
        assert!(!Completed.can_become(Queued), "completed is final");
        assert_eq!(JobState::parse("done"), None);
    }

    fn spec() -> JobSpec {
        JobSpec {
            source: "/data/x".into(),
            destinations: vec!["null://".into()],
            chunk_size: None,
            priority: None,
            classification: None,
            strict: None,
            max_attempts: None,
        }
    }

    #[test]
    fn specs_are_validated_field_by_field() {
        assert!(spec().validate().is_ok());
        let cases: Vec<(JobSpec, &str)> = vec![
            (
                JobSpec {
                    source: "rel/x".into(),
                    ..spec()
                },
                "source",
            ),
            (
                JobSpec {
                    destinations: vec![],
                    ..spec()
                },
                "destinations",
            ),
            (
                JobSpec {
                    destinations: vec!["null://".into(); 2],
                    ..spec()
                },
                "twice",
            ),
            (
                JobSpec {
                    destinations: (0..17).map(|i| format!("null://{i}")).collect(),
                    ..spec()
                },
                "destinations",
            ),
            (
                JobSpec {
                    chunk_size: Some(1000),
                    ..spec()
                },
                "chunk_size",
            ),
            (
                JobSpec {
                    chunk_size: Some(2 << 30),
                    ..spec()
                },
                "chunk_size",
            ),
            (
                JobSpec {
                    priority: Some(10),
                    ..spec()
                },
                "priority",
            ),
            (
                JobSpec {
                    classification: Some("p h i".into()),
                    ..spec()
                },
                "classification",
            ),
            (
                JobSpec {
                    max_attempts: Some(0),
                    ..spec()
                },
                "max_attempts",
            ),
            (
                JobSpec {
                    max_attempts: Some(21),
                    ..spec()
                },
                "max_attempts",
            ),
        ];
        for (s, field) in cases {
            let e = s.validate().unwrap_err();
            assert!(e.0.contains(field), "{e} should name {field}");
        }
        let s3 = JobSpec {
            destinations: vec!["s3://b/p".into()],
            ..spec()
        };
        assert_eq!(s3.effective_chunk_size(), 8 << 20);
        assert_eq!(spec().effective_chunk_size(), 4 << 20);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        assert_eq!(backoff(0, base, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(30, base, max, 1.0), max);
        assert!(backoff(2, base, max, 0.3) < backoff(2, base, max, 0.7));
    }

    #[test]
    fn failures_retry_until_attempts_run_out_then_dead_letter() {
        let d = Duration::from_secs(2);
        assert_eq!(
            after_failure(false, 1, 3, 1_000, d),
            AfterFailure::Retry {
                not_before_ms: 3_000
            }
        );
        assert_eq!(
            after_failure(false, 3, 3, 1_000, d),
            AfterFailure::Fail { dead_letter: true }
        );
        assert_eq!(
            after_failure(true, 1, 3, 1_000, d),
            AfterFailure::Fail { dead_letter: false }
        );
    }

    fn cand(tenant: &str, running: u32, share: u32, limit: Option<u32>, created: i64) -> Candidate {
        Candidate {
            tenant: tenant.into(),
            job_id: format!("{tenant}-job"),
            created_ms: created,
            running,
            share,
            limit,
            last_claim_ms: i64::MIN,
        }
    }

    #[test]
    fn fair_pick_favours_the_tenant_furthest_below_its_share() {
        // b has fewer running: b goes first even though a's job is older.
        let c = [cand("a", 3, 1, None, 1), cand("b", 1, 1, None, 9)];
        assert_eq!(pick_fair(&c).unwrap().tenant, "b");
        // a has share 4: 3/4 < 1/1.
        let c = [cand("a", 3, 4, None, 9), cand("b", 1, 1, None, 1)];
        assert_eq!(pick_fair(&c).unwrap().tenant, "a");
        // equal standing: the older job.
        let c = [cand("a", 2, 1, None, 5), cand("b", 2, 1, None, 4)];
        assert_eq!(pick_fair(&c).unwrap().tenant, "b");
        // equal standing, one served recently: the other goes first, however old a's job.
        let mut a = cand("a", 0, 1, None, 1);
        a.last_claim_ms = 500;
        let c = [a, cand("b", 0, 1, None, 9)];
        assert_eq!(pick_fair(&c).unwrap().tenant, "b");
        // at quota: skipped, even when furthest below share.
        let c = [cand("a", 2, 1, Some(2), 1), cand("b", 5, 1, None, 9)];
        assert_eq!(pick_fair(&c).unwrap().tenant, "b");
        assert!(pick_fair(&[cand("a", 2, 1, Some(2), 1)]).is_none());
    }

    #[test]
    fn a_busy_tenant_cannot_starve_the_others() {
        // Simulate: tenant "big" has 1000 queued, "small" 10; 20 workers free.
        let mut running = std::collections::HashMap::from([("big", 0u32), ("small", 0u32)]);
        let mut queued = std::collections::HashMap::from([("big", 1000u32), ("small", 10u32)]);
        for _ in 0..20 {
            let c: Vec<Candidate> = ["big", "small"]
                .iter()
                .filter(|t| queued[*t] > 0)
                .map(|t| cand(t, running[t], 1, None, 0))
                .collect();
            let t = pick_fair(&c).unwrap().tenant.clone();
            *running.get_mut(t.as_str()).unwrap() += 1;
            *queued.get_mut(t.as_str()).unwrap() -= 1;
        }
        assert_eq!(running["big"], 10);
        assert_eq!(running["small"], 10);
    }
}
