//! The chunk budget several sends share, and the delay-based controller that can size it.
//!
//! A fixed in-flight budget is right for one link and wrong for another. On loopback 32 MiB
//! keeps the pipe full; when the gateway is the bottleneck (a thousand small jobs at once)
//! every byte past what it takes in a round trip only waits in its queues, and each chunk's
//! latency grows with the budget (Little's law). [`DelayControl`] sizes the budget from the
//! latencies the chunks report, as LEDBAT does a congestion window (RFC 6817): the least
//! latency of the last minutes is the path's base delay and anything above it is queueing.
//! While queueing stays under the target the budget grows by up to one [`GROWTH_UNIT`] per
//! round trip (and only when the budget, not the demand, limits the sends); above the
//! target it shrinks in proportion to the excess, by at most half per round trip (LEDBAT++'s
//! multiplicative decrease). A long fat link has a large base delay and keeps a large budget;
//! a loaded gateway gets a small one, and the chunks that wait for it wait unread, holding no
//! memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Least budget a controlled budget keeps (and never less than the largest chunk asked for).
pub const MIN_BUDGET: u64 = 4 << 20;
/// Most the budget grows per round trip while queueing is under the target.
pub const GROWTH_UNIT: u64 = 1 << 20;
/// How many minutes of least latencies the base delay is taken from (RFC 6817's
/// `BASE_HISTORY`).
pub const BASE_HISTORY_MINUTES: usize = 10;
/// How strongly the budget shrinks per round trip per target's worth of excess queueing.
const DECREASE_GAIN: f64 = 0.25;

/// Sizes an in-flight budget from chunk latencies. No I/O and no clock of its own: the caller
/// passes the time since it started with every acknowledgement.
#[derive(Debug, Clone)]
pub struct DelayControl {
    target: Duration,
    floor: u64,
    ceiling: u64,
    limit: f64,
    phase: Phase,
    /// The least latency of each minute (by minute number), oldest first.
    base: VecDeque<(u64, Duration)>,
    /// The minute of the last drain.
    drained: u64,
}

/// What the controller is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// From the floor, doubling per round trip until queueing reaches half the target (or
    /// the ceiling): the first chunks measure the path before a queue builds.
    SlowStart,
    /// Steady state: up by a unit per round trip under the target, down in proportion above.
    Steady,
    /// Down to the floor for about two round trips so that the queue drains and the base
    /// delay is measured afresh (once a minute; LEDBAT++'s periodic slowdown). Without it
    /// a queue that never drains would become the base, and the base would creep up by a
    /// target every [`BASE_HISTORY_MINUTES`].
    Drain {
        /// When to go back.
        until: Duration,
        /// The budget to go back to.
        restore: f64,
    },
}

impl DelayControl {
    /// A controller between [`MIN_BUDGET`] (or `ceiling` if smaller) and `ceiling` bytes,
    /// allowing `target` of queueing above the base delay. It starts at the floor and
    /// doubles per round trip until it sees queueing (slow start).
    pub fn new(ceiling: u64, target: Duration) -> Self {
        let ceiling = ceiling.max(1);
        let floor = MIN_BUDGET.min(ceiling);
        Self {
            target: target.max(Duration::from_millis(1)),
            floor,
            ceiling,
            limit: floor as f64,
            phase: Phase::SlowStart,
            base: VecDeque::with_capacity(BASE_HISTORY_MINUTES + 1),
            drained: 0,
        }
    }

    /// The budget now, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit as u64
    }

    /// The base delay (least latency of the last [`BASE_HISTORY_MINUTES`] minutes), once
    /// one chunk was acknowledged.
    pub fn base_delay(&self) -> Option<Duration> {
        self.base.iter().map(|&(_, d)| d).min()
    }

    /// Makes room for a chunk of `bytes` (up to the ceiling): the budget never falls below
    /// the largest chunk that must fit in it, or that chunk would wait forever.
    pub fn fit(&mut self, bytes: u64) {
        self.floor = self.floor.max(bytes.min(self.ceiling));
        self.limit = self.limit.max(self.floor as f64);
    }

    /// A chunk of `bytes` was acknowledged `latency` after it was sent, `now` after the
    /// controller started, with `in_flight` bytes of the budget held (this chunk included).
    /// Returns the new budget.
    pub fn on_ack(&mut self, now: Duration, latency: Duration, bytes: u64, in_flight: u64) -> u64 {
        let minute = now.as_secs() / 60;
        match self.base.back_mut() {
            Some((m, least)) if *m == minute => *least = (*least).min(latency),
            _ => {
                self.base.push_back((minute, latency));
                while self.base.len() > BASE_HISTORY_MINUTES {
                    self.base.pop_front();
                }
            }
        }
        let base = self.base_delay().unwrap_or(latency);
        let queueing = latency.saturating_sub(base).as_secs_f64();
        let target = self.target.as_secs_f64();
        // The share of a round trip's worth of acknowledgements this one is.
        let share = (bytes as f64 / self.limit.max(1.0)).min(1.0);
        // Grow only when the budget is what holds the sends back.
        let full = in_flight as f64 + GROWTH_UNIT as f64 >= self.limit;
        match self.phase {
            Phase::Drain { until, restore } => {
                if now >= until {
                    self.limit = restore;
                    self.phase = Phase::Steady;
                }
            }
            _ if minute > self.drained => {
                self.drained = minute;
                let rtt = latency.max(Duration::from_millis(25));
                self.phase = Phase::Drain {
                    until: now + 2 * rtt,
                    restore: self.limit,
                };
                self.limit = self.floor as f64;
            }
            Phase::SlowStart if queueing < target / 2.0 => {
                if full {
                    self.limit += bytes as f64;
                }
                if self.limit >= self.ceiling as f64 {
                    self.phase = Phase::Steady;
                }
            }
            Phase::SlowStart | Phase::Steady => {
                self.phase = Phase::Steady;
                if queueing <= target {
                    if full {
                        self.limit += GROWTH_UNIT as f64 * (1.0 - queueing / target) * share;
                    }
                } else {
                    let cut = ((queueing / target - 1.0) * DECREASE_GAIN).min(0.5);
                    self.limit -= self.limit * cut * share;
                }
            }
        }
        self.limit = self.limit.clamp(self.floor as f64, self.ceiling as f64);
        self.limit()
    }
}

/// A budget of chunk bytes several sends share (for example every job of a job service),
/// fixed or sized by a [`DelayControl`].
#[derive(Debug, Clone)]
pub struct SharedBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sem: Arc<Semaphore>,
    capacity: u32,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    control: Option<DelayControl>,
    /// The budget now (permits out plus available, less `debt`).
    limit: u64,
    /// Permits to forget as they come back: the budget went down while they were held.
    debt: u64,
}

impl SharedBudget {
    /// A fixed budget of `bytes` (at most 4 GiB - 1, at least 1 MiB).
    pub fn new(bytes: u64) -> Self {
        Self::make(bytes, None)
    }

    /// A budget of at most `bytes` that shrinks while chunks queue more than `target` above
    /// the path's base delay, and grows back while they do not (see [`DelayControl`]).
    pub fn with_latency_target(bytes: u64, target: Duration) -> Self {
        Self::make(bytes, Some(target))
    }

    fn make(bytes: u64, target: Option<Duration>) -> Self {
        let capacity = u32::try_from(bytes).unwrap_or(u32::MAX).max(1 << 20);
        let control = target.map(|t| DelayControl::new(u64::from(capacity), t));
        let limit = control
            .as_ref()
            .map_or(u64::from(capacity), DelayControl::limit);
        Self {
            inner: Arc::new(Inner {
                sem: Arc::new(Semaphore::new(limit as usize)),
                capacity,
                started: Instant::now(),
                state: Mutex::new(State {
                    control,
                    limit,
                    debt: 0,
                }),
            }),
        }
    }

    /// Bytes not held by any chunk now.
    pub fn available(&self) -> usize {
        self.inner.sem.available_permits()
    }

    /// The budget now, in bytes (the fixed size, or what the controller allows).
    pub fn limit(&self) -> u64 {
        self.inner.state.lock().expect("budget lock").limit
    }

    /// Waits for `n` bytes of the budget (at most its capacity).
    pub(crate) async fn acquire(&self, n: u32) -> BudgetPermit {
        let n = n.min(self.inner.capacity);
        {
            let mut s = self.inner.state.lock().expect("budget lock");
            if let Some(c) = s.control.as_mut() {
                c.fit(u64::from(n));
                let limit = c.limit();
                self.inner.resize(&mut s, limit);
            }
        }
        let permit = self
            .inner
            .sem
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the shared budget is never closed");
        BudgetPermit {
            permit: Some(permit),
            inner: self.inner.clone(),
        }
    }

    /// `n` bytes of the budget if they are free now (at most its capacity), else `None`.
    pub(crate) fn try_acquire(&self, n: u32) -> Option<BudgetPermit> {
        let n = n.min(self.inner.capacity);
        let permit = self.inner.sem.clone().try_acquire_many_owned(n).ok()?;
        Some(BudgetPermit {
            permit: Some(permit),
            inner: self.inner.clone(),
        })
    }

    /// As [`BudgetPermit::observe`], for a chunk of `bytes` (tests drive it directly).
    #[cfg(test)]
    fn observe(&self, latency: Duration, bytes: u64) {
        self.inner.observe(latency, bytes);
    }
}

impl Inner {
    /// Feeds the controller, if any, a chunk of `bytes` acknowledged `latency` after it
    /// was sent (before its permit is dropped).
    fn observe(&self, latency: Duration, bytes: u64) {
        let mut s = self.state.lock().expect("budget lock");
        let held = (s.limit + s.debt).saturating_sub(self.sem.available_permits() as u64);
        let Some(c) = s.control.as_mut() else { return };
        let limit = c.on_ack(self.started.elapsed(), latency, bytes, held);
        self.resize(&mut s, limit);
    }

    /// Makes `n` bytes available again, paying the debt first.
    fn release(&self, s: &mut State, n: u64) {
        let pay = n.min(s.debt);
        s.debt -= pay;
        self.sem.add_permits((n - pay) as usize);
    }

    /// Moves the budget to `limit` bytes: frees permits (paying debt first) or takes them
    /// back (the available ones now, the held ones as they return).
    fn resize(&self, s: &mut State, limit: u64) {
        if limit > s.limit {
            self.release(s, limit - s.limit);
        } else if limit < s.limit {
            let shrink = s.limit - limit;
            let taken = self.sem.forget_permits(shrink as usize) as u64;
            s.debt += shrink - taken;
        }
        s.limit = limit;
        metrics::gauge!("trackshift_worker_in_flight_budget_bytes").set(limit as f64);
    }
}

/// Bytes of a [`SharedBudget`] a chunk holds until it is acknowledged.
#[derive(Debug)]
pub(crate) struct BudgetPermit {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<Inner>,
}

impl BudgetPermit {
    /// The chunk holding this was acknowledged `latency` after it was sent: feeds the
    /// budget's controller, if any, with the chunk's bytes.
    pub(crate) fn observe(&self, latency: Duration) {
        if let Some(p) = &self.permit {
            self.inner.observe(latency, p.num_permits() as u64);
        }
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let Some(p) = self.permit.take() else { return };
        let n = p.num_permits() as u64;
        p.forget();
        let mut s = self.inner.state.lock().expect("budget lock");
        self.inner.release(&mut s, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives `c` with acknowledgements of 1 MiB chunks at `latency`, the budget full,
    /// for `secs` seconds at `per_sec` acknowledgements a second.
    fn drive(c: &mut DelayControl, from: Duration, secs: u64, per_sec: u64, latency: Duration) {
        for k in 0..secs * per_sec {
            let now = from + Duration::from_secs_f64(k as f64 / per_sec as f64);
            let full = c.limit();
            c.on_ack(now, latency, MIB, full);
        }
    }

    #[test]
    fn climbs_to_the_ceiling_and_stays_there_without_queueing() {
        let mut c = DelayControl::new(32 * MIB, ms(100));
        assert_eq!(c.limit(), MIN_BUDGET, "starts at the floor");
        // Slow start: doubling per round trip (a budget's worth of acknowledgements).
        for _ in 0..4 {
            c.on_ack(Duration::ZERO, ms(8), MIB, c.limit());
        }
        assert_eq!(c.limit(), 2 * MIN_BUDGET);
        drive(&mut c, Duration::ZERO, 10, 100, ms(8));
        assert_eq!(c.limit(), 32 * MIB);
        assert_eq!(c.base_delay(), Some(ms(8)));
    }

    #[test]
    fn shrinks_while_chunks_queue_past_the_target_and_grows_back_after() {
        let mut c = DelayControl::new(32 * MIB, ms(100));
        drive(&mut c, Duration::ZERO, 1, 100, ms(5));
        // A loaded gateway: chunks take 400 ms, 395 of them queueing.
        drive(&mut c, Duration::from_secs(1), 5, 100, ms(400));
        assert_eq!(c.limit(), MIN_BUDGET, "shrunk to the floor");
        // The queue drained: back up by about a unit per round trip.
        drive(&mut c, Duration::from_secs(6), 1, 100, ms(20));
        let grown = c.limit();
        assert!(grown > MIN_BUDGET + 4 * MIB, "grew back: {grown}");
        drive(&mut c, Duration::from_secs(7), 10, 100, ms(20));
        assert_eq!(c.limit(), 32 * MIB);
    }

    #[test]
    fn a_long_link_keeps_its_budget() {
        // 300 ms of path delay is the base, not queueing.
        let mut c = DelayControl::new(256 * MIB, ms(100));
        drive(&mut c, Duration::ZERO, 30, 200, ms(300));
        assert_eq!(c.limit(), 256 * MIB);
        // 50 ms of queueing on top of it is within the target.
        drive(&mut c, Duration::from_secs(30), 30, 200, ms(350));
        assert_eq!(c.limit(), 256 * MIB);
        // 500 ms on top of it is not.
        drive(&mut c, Duration::from_secs(60), 10, 200, ms(800));
        assert!(c.limit() < 64 * MIB, "{}", c.limit());
    }

    #[test]
    fn settles_near_the_target_when_latency_follows_the_budget() {
        // A bottleneck of 100 chunks a second with 10 ms of path delay: latency is the
        // base plus the budget over the rate (Little's law).
        let mut c = DelayControl::new(64 * MIB, ms(100));
        let rate = 100.0 * MIB as f64;
        let mut now = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..3000 {
            let latency = ms(10) + Duration::from_secs_f64(c.limit() as f64 / rate);
            c.on_ack(now, latency, MIB, c.limit());
            now += ms(10);
            seen.push(latency);
        }
        let last = &seen[2000..];
        let worst = last.iter().max().unwrap();
        let least = last.iter().min().unwrap();
        // The base it measures includes the floor's own queue (4 MiB at 100 MiB/s).
        assert!(*worst <= ms(10 + 41 + 100 + 30), "settled at {worst:?}");
        // The budget did not collapse: the bottleneck still has most of a target's queue.
        assert!(*least >= ms(10 + 50), "collapsed to {least:?}");
    }

    #[test]
    fn a_queue_that_never_drains_does_not_become_the_base() {
        // As above, for 25 minutes: past the base history, so the first minutes' least
        // latency is forgotten; the drain each minute measures the base again.
        let mut c = DelayControl::new(64 * MIB, ms(100));
        let rate = 100.0 * MIB as f64;
        let mut now = Duration::ZERO;
        let mut last_minute = Vec::new();
        let mut drains = 0;
        while now < Duration::from_secs(25 * 60) {
            let latency = ms(10) + Duration::from_secs_f64(c.limit() as f64 / rate);
            let before = c.limit();
            c.on_ack(now, latency, MIB, c.limit());
            if c.limit() == MIN_BUDGET && before > 2 * MIN_BUDGET {
                drains += 1;
            }
            if now >= Duration::from_secs(24 * 60) {
                last_minute.push(latency);
            }
            now += ms(10);
        }
        assert!(
            (24..=26).contains(&drains),
            "one drain a minute, not {drains}"
        );
        // The floor's own queue (4 MiB at 100 MiB/s) is the resolution of the base.
        let base = c.base_delay().unwrap();
        assert!(base <= ms(10 + 41), "base crept up to {base:?}");
        let worst = last_minute.iter().max().unwrap();
        assert!(
            *worst <= ms(10 + 41 + 100 + 30),
            "latency crept up to {worst:?}"
        );
    }

    #[test]
    fn the_base_delay_forgets_old_minutes() {
        let mut c = DelayControl::new(32 * MIB, ms(100));
        c.on_ack(Duration::ZERO, ms(2), MIB, 0);
        drive(&mut c, Duration::from_secs(60), 1, 10, ms(50));
        assert_eq!(c.base_delay(), Some(ms(2)));
        for m in 2..=BASE_HISTORY_MINUTES as u64 + 1 {
            drive(&mut c, Duration::from_secs(60 * m), 1, 10, ms(50));
        }
        assert_eq!(c.base_delay(), Some(ms(50)), "the 2 ms minute aged out");
    }

    #[test]
    fn does_not_grow_when_the_demand_is_below_the_budget() {
        let mut c = DelayControl::new(32 * MIB, ms(100));
        c.on_ack(Duration::ZERO, ms(1), MIB, 0);
        drive(&mut c, Duration::ZERO, 3, 100, ms(400));
        let low = c.limit();
        assert!(low < 32 * MIB);
        for k in 0..1000 {
            c.on_ack(Duration::from_secs(3) + ms(k), ms(0), MIB, MIB);
        }
        assert_eq!(c.limit(), low, "one chunk in flight never needs more");
    }

    #[test]
    fn the_budget_fits_the_largest_chunk() {
        let mut c = DelayControl::new(32 * MIB, ms(100));
        c.on_ack(Duration::ZERO, ms(1), MIB, 0);
        drive(&mut c, Duration::ZERO, 5, 100, ms(900));
        assert_eq!(c.limit(), MIN_BUDGET);
        c.fit(16 * MIB);
        assert_eq!(c.limit(), 16 * MIB);
        drive(&mut c, Duration::from_secs(5), 5, 100, ms(900));
        assert_eq!(c.limit(), 16 * MIB);
        c.fit(1 << 40);
        assert_eq!(c.limit(), 32 * MIB, "never past the ceiling");
    }

    async fn hold(b: &SharedBudget, mib: u64) -> Vec<BudgetPermit> {
        futures::future::join_all((0..mib).map(|_| b.acquire(MIB as u32))).await
    }

    #[tokio::test]
    async fn a_shrinking_budget_takes_back_held_bytes_as_they_return() {
        let b = SharedBudget::with_latency_target(16 * MIB, ms(10));
        assert_eq!(b.limit(), MIN_BUDGET);
        assert_eq!(b.available() as u64, MIN_BUDGET);
        while b.limit() < 16 * MIB {
            let full = hold(&b, b.limit() / MIB).await;
            b.observe(ms(1), MIB);
            drop(full);
        }
        assert_eq!(b.available() as u64, 16 * MIB, "grown by freeing bytes");
        let held = hold(&b, 12).await;
        assert_eq!(b.available() as u64, 4 * MIB);
        // Long queueing: the budget goes down to its floor while 12 MiB are held.
        b.observe(ms(1), MIB);
        for _ in 0..200 {
            b.observe(ms(900), MIB);
        }
        assert_eq!(b.limit(), MIN_BUDGET);
        assert_eq!(b.available(), 0, "nothing free past the new limit");
        drop(held);
        assert_eq!(
            b.available() as u64,
            MIN_BUDGET,
            "returned bytes paid the debt first"
        );
        // Queueing gone and the budget full: it grows back and frees the bytes.
        for _ in 0..2000 {
            let full = hold(&b, b.limit() / MIB).await;
            b.observe(ms(1), MIB);
            drop(full);
        }
        assert_eq!(b.limit(), 16 * MIB);
        assert_eq!(b.available() as u64, 16 * MIB);
    }

    #[tokio::test]
    async fn a_fixed_budget_ignores_latencies() {
        let b = SharedBudget::new(8 * MIB);
        let p = b.acquire(MIB as u32).await;
        b.observe(Duration::from_secs(5), MIB);
        assert_eq!(b.limit(), 8 * MIB);
        drop(p);
        assert_eq!(b.available() as u64, 8 * MIB);
    }
}
