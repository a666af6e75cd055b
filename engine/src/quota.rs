//! Per-tenant quotas the gateway enforces itself, whatever path a job came by (a tenant's
//! own `trackshift send`, or a job-service worker holding a service token for it):
//!
//! - `max_concurrent_jobs`: open (unfinished, not failed) jobs at once; one more `OpenJob`
//!   gets a retryable `Busy` frame.
//! - `bytes_per_second`: chunk payload bytes received per second across all the tenant's
//!   jobs and connections on this gateway, taken before the chunk is read (the stream
//!   simply is not read meanwhile, so QUIC flow control holds the sender back).
//! - the gateway's memory budget: each tenant may hold at most its part of it
//!   (`budget × share / total shares`, at least [`MEMORY_FLOOR`] or a quarter of the
//!   budget, whichever is less), taken before the
//!   gateway-wide budget, so a tenant flooding chunks queues on its own part and cannot
//!   fill the budget (or its wait queue) ahead of another tenant.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trackshift_connectors::ByteRate;

/// The least part of the memory budget a tenant gets, however many tenants share it
/// (at most a quarter of the budget): enough for a few chunks in flight.
pub const MEMORY_FLOOR: u32 = 32 << 20;

pub use crate::protocol::BUSY_RETRY_MS;

/// Whether a job still occupies one of its tenant's job slots.
pub(crate) trait Occupies: Send + Sync {
    /// True while the job is neither finished nor failed.
    fn occupies(&self) -> bool;
}

/// What one tenant uses on this gateway now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Jobs open (not finished, not failed) on this gateway.
    pub open_jobs: u32,
    /// Chunk payload bytes of the tenant buffered now.
    pub memory_held: u64,
    /// The most the tenant may buffer (its part of the memory budget).
    pub memory_cap: u64,
    /// Chunks of the tenant waiting for memory now.
    pub memory_waiting: u32,
}

/// An open job of a tenant: who holds it, and (once opened) the job.
struct OpenSlot {
    holders: HashSet<u64>,
    job: Option<Arc<dyn Occupies>>,
}

impl OpenSlot {
    /// A reservation whose open has not finished yet counts.
    fn occupies(&self) -> bool {
        self.job.as_ref().is_none_or(|j| j.occupies())
    }
}

#[derive(Default)]
struct TenantState {
    jobs: HashMap<String, OpenSlot>,
    rate: Option<(u64, Arc<ByteRate>)>,
    memory: Option<(u32, Arc<Semaphore>)>,
    waiting: u32,
}

/// Every tenant's quotas on one gateway.
pub(crate) struct Quotas {
    budget: Arc<Semaphore>,
    budget_max: u32,
    tenants: Mutex<HashMap<String, TenantState>>,
    next_holder: AtomicU64,
}

/// A job slot held for one (connection, handle); released when dropped.
#[derive(Debug)]
pub(crate) struct JobSlot {
    quotas: Arc<Quotas>,
    tenant: String,
    job_id: String,
    holder: u64,
}

/// The tenant is at its `max_concurrent_jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busy(pub String);

/// Chunk memory held by one chunk: the tenant's part and the gateway's.
pub(crate) struct MemoryPermit {
    _tenant: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("budget_max", &self.budget_max)
            .finish_non_exhaustive()
    }
}

impl Quotas {
    pub(crate) fn new(budget: Arc<Semaphore>, budget_max: u32) -> Self {
        Self {
            budget,
            budget_max,
            tenants: Mutex::new(HashMap::new()),
            next_holder: AtomicU64::new(0),
        }
    }

    /// Takes a slot for `tenant`'s job `job_id` (opening a job that is open already takes
    /// no new one), or says why not when the tenant has `max` jobs open.
    pub(crate) fn reserve_job(
        self: &Arc<Self>,
        tenant: &str,
        job_id: &str,
        max: Option<u32>,
    ) -> Result<JobSlot, Busy> {
        let mut tenants = self.tenants.lock().expect("quota lock");
        let t = tenants.entry(tenant.to_string()).or_default();
        let already = t.jobs.get(job_id).is_some_and(OpenSlot::occupies);
        if let Some(max) = max
            && !already
        {
            let open = t.jobs.values().filter(|s| s.occupies()).count();
            if open >= max as usize {
                return Err(Busy(format!(
                    "tenant {tenant} has {open} jobs running (max_concurrent_jobs = {max}); open it again when one has finished"
                )));
            }
        }
        let holder = self.next_holder.fetch_add(1, Ordering::Relaxed);
        let slot = t
            .jobs
            .entry(job_id.to_string())
            .or_insert_with(|| OpenSlot {
                holders: HashSet::new(),
                job: None,
            });
        if !already {
            // A finished or failed job opened again: it counts from now on.
            slot.job = None;
        }
        slot.holders.insert(holder);
        Ok(JobSlot {
            quotas: self.clone(),
            tenant: tenant.to_string(),
            job_id: job_id.to_string(),
            holder,
        })
    }

    /// The tenant's shared receive-rate limiter under `limit` (none without a quota).
    pub(crate) fn rate(&self, tenant: &str, limit: Option<u64>) -> Option<Arc<ByteRate>> {
        let mut tenants = self.tenants.lock().expect("quota lock");
        let t = tenants.entry(tenant.to_string()).or_default();
        let Some(limit) = limit else {
            t.rate = None;
            return None;
        };
        if let Some((made_for, rate)) = &t.rate
            && *made_for == limit
        {
            return Some(rate.clone());
        }
        // The tenant file checked the bounds; a limiter that cannot be made is no limit
        // only if the file were bypassed, and then the gateway-wide budget still holds.
        let rate = Arc::new(ByteRate::new(limit).ok()?);
        t.rate = Some((limit, rate.clone()));
        Some(rate)
    }

    /// The tenant's part of the memory budget for a tenant with `share` of `total`.
    pub(crate) fn memory_cap(&self, share: u32, total: u64) -> u32 {
        let fair = u64::from(self.budget_max) * u64::from(share.max(1)) / total.max(1);
        let fair = u32::try_from(fair).unwrap_or(self.budget_max);
        fair.max(MEMORY_FLOOR.min(self.budget_max / 4))
            .min(self.budget_max)
    }

    /// Waits for `bytes` of chunk memory: first from the tenant's part (`cap`), then from
    /// the gateway's budget. A chunk larger than either takes all of it.
    pub(crate) async fn memory(&self, tenant: &str, cap: u32, bytes: u64) -> MemoryPermit {
        let sem = {
            let mut tenants = self.tenants.lock().expect("quota lock");
            let t = tenants.entry(tenant.to_string()).or_default();
            let sem = match &t.memory {
                Some((made_for, sem)) if *made_for == cap => sem.clone(),
                // New, or the tenant file changed the part: chunks holding the old part
                // return it to the old semaphore, which then goes away.
                _ => {
                    let sem = Arc::new(Semaphore::new(cap as usize));
                    t.memory = Some((cap, sem.clone()));
                    sem
                }
            };
            t.waiting += 1;
            sem
        };
        struct Waiting<'a>(&'a Quotas, &'a str);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if let Some(t) = self.0.tenants.lock().expect("quota lock").get_mut(self.1) {
                    t.waiting = t.waiting.saturating_sub(1);
                }
            }
        }
        let waiting = Waiting(self, tenant);
        let n = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        let own = sem
            .acquire_many_owned(n.min(cap))
            .await
            .expect("quota semaphores are never closed");
        let global = self
            .budget
            .clone()
            .acquire_many_owned(n.min(self.budget_max))
            .await
            .expect("the budget semaphore is never closed");
        drop(waiting);
        MemoryPermit {
            _tenant: own,
            _global: global,
        }
    }

    /// What `tenant` uses now.
    pub(crate) fn usage(&self, tenant: &str) -> TenantUsage {
        let tenants = self.tenants.lock().expect("quota lock");
        let Some(t) = tenants.get(tenant) else {
            return TenantUsage::default();
        };
        let (cap, available) = t
            .memory
            .as_ref()
            .map_or((0, 0), |(cap, sem)| (*cap, sem.available_permits()));
        TenantUsage {
            open_jobs: u32::try_from(t.jobs.values().filter(|s| s.occupies()).count())
                .unwrap_or(u32::MAX),
            memory_held: u64::from(cap).saturating_sub(available as u64),
            memory_cap: u64::from(cap),
            memory_waiting: t.waiting,
        }
    }
}

impl JobSlot {
    /// The job is open: from now on it counts while it occupies a slot.
    pub(crate) fn attach(&self, job: Arc<dyn Occupies>) {
        let mut tenants = self.quotas.tenants.lock().expect("quota lock");
        if let Some(slot) = tenants
            .get_mut(&self.tenant)
            .and_then(|t| t.jobs.get_mut(&self.job_id))
        {
            slot.job = Some(job);
        }
    }
}

impl Drop for JobSlot {
    fn drop(&mut self) {
        let mut tenants = self.quotas.tenants.lock().expect("quota lock");
        if let Some(t) = tenants.get_mut(&self.tenant)
            && let Some(slot) = t.jobs.get_mut(&self.job_id)
        {
            slot.holders.remove(&self.holder);
            if slot.holders.is_empty() {
                t.jobs.remove(&self.job_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct J(AtomicBool);
    impl Occupies for J {
        fn occupies(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn quotas(budget: u32) -> Arc<Quotas> {
        Arc::new(Quotas::new(
            Arc::new(Semaphore::new(budget as usize)),
            budget,
        ))
    }

    #[test]
    fn a_tenant_at_max_concurrent_jobs_is_refused_until_one_ends() {
        let q = quotas(1 << 20);
        let a = q.reserve_job("t", "a", Some(2)).unwrap();
        let b = q.reserve_job("t", "b", Some(2)).unwrap();
        let err = q.reserve_job("t", "c", Some(2)).unwrap_err();
        assert!(
            err.0
                .contains("tenant t has 2 jobs running (max_concurrent_jobs = 2)"),
            "{err:?}"
        );
        // Opening an open job again (a reconnect) needs no new slot; another tenant is
        // not affected.
        let a2 = q.reserve_job("t", "a", Some(2)).unwrap();
        q.reserve_job("u", "c", Some(2)).unwrap();
        // A job that finished or failed frees its slot even while its handle lives.
        let job = Arc::new(J(AtomicBool::new(true)));
        b.attach(job.clone());
        assert!(q.reserve_job("t", "c", Some(2)).is_err());
        job.0.store(false, Ordering::SeqCst);
        let c = q.reserve_job("t", "c", Some(2)).unwrap();
        assert_eq!(q.usage("t").open_jobs, 2);
        // Dropping every holder of a frees it; one holder left keeps it.
        drop(a);
        assert!(q.reserve_job("t", "d", Some(2)).is_err());
        drop(a2);
        let _d = q.reserve_job("t", "d", Some(2)).unwrap();
        drop(c);
        drop(b);
        assert_eq!(q.usage("t").open_jobs, 1);
        // No limit: never refused.
        for i in 0..100 {
            std::mem::forget(q.reserve_job("v", &i.to_string(), None).unwrap());
        }
    }

    #[test]
    fn memory_parts_follow_shares_with_a_floor_and_never_exceed_the_budget() {
        let q = quotas(512 << 20);
        assert_eq!(q.memory_cap(1, 1), 512 << 20);
        assert_eq!(q.memory_cap(1, 2), 256 << 20);
        assert_eq!(q.memory_cap(3, 4), 384 << 20);
        assert_eq!(q.memory_cap(1, 1000), MEMORY_FLOOR);
        let small = quotas(4 << 20);
        assert_eq!(small.memory_cap(1, 2), 2 << 20);
        assert_eq!(
            small.memory_cap(1, 1000),
            1 << 20,
            "floor: a quarter of a small budget"
        );
        assert_eq!(small.memory_cap(1, 1), 4 << 20);
        assert_eq!(
            q.memory_cap(0, 0),
            512 << 20,
            "degenerate input stays in bounds"
        );
    }

    #[tokio::test]
    async fn a_tenant_flooding_memory_queues_on_its_own_part() {
        let q = quotas(4 << 20);
        let cap = 2 << 20;
        // Tenant a holds its whole part and has more chunks waiting.
        let held = q.memory("a", cap, 2 << 20).await;
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.memory("a", cap, 1 << 20).await });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let a = q.usage("a");
        assert_eq!(
            (a.memory_held, a.memory_cap, a.memory_waiting),
            (2 << 20, 2 << 20, 1)
        );
        // Tenant b gets memory at once, ahead of a's waiting chunk.
        let b = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            q.memory("b", cap, 2 << 20),
        )
        .await
        .expect("b is not queued behind a");
        assert_eq!(q.usage("b").memory_held, 2 << 20);
        drop(b);
        drop(held);
        let _late = waiter.await.unwrap();
        assert_eq!(q.usage("a").memory_waiting, 0);
    }
}
