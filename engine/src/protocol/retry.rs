//! When the sender opens a job again after the gateway failed it or had no room for it, and
//! when it gives up: a pure state machine. Time is an input (time since the send started)
//! and a pending reopen is a value ([`JobRetry::due`]), not a sleeping task, so the policy
//! is tested without sockets or clocks and the connection loop waits on one deadline.

use std::time::Duration;

/// The bounds of a send's retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLimits {
    /// Most reopens after transient failures, and most waits for room while no other job
    /// of the send is open.
    pub max_reopens: u32,
    /// Longest a job may keep failing before it is given up.
    pub retry_for: Duration,
}

/// What to do about a job the gateway failed or had no room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Settle it with the gateway's error.
    GiveUp,
    /// Open it again after this backoff (due at [`JobRetry::due`]).
    Reopen(Duration),
}

/// One job's retries across the gateway's answers (and across connections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobRetry {
    reopens: u32,
    failing_since: Option<Duration>,
    busy_waits: u32,
    due: Option<Duration>,
}

impl JobRetry {
    /// The gateway failed the job at `at`: give up when it says retrying cannot help, after
    /// `max_reopens` reopens, or once it has been failing for `retry_for`; else reopen after
    /// an exponential backoff (200 ms doubling, at most 5 s).
    pub fn on_failed(&mut self, permanent: bool, at: Duration, limits: &RetryLimits) -> Verdict {
        let since = *self.failing_since.get_or_insert(at);
        if permanent
            || self.reopens >= limits.max_reopens
            || at.saturating_sub(since) >= limits.retry_for
        {
            self.due = None;
            return Verdict::GiveUp;
        }
        self.reopens += 1;
        let backoff = Duration::from_millis((100u64 << self.reopens.min(6)).min(5_000));
        self.due = Some(at + backoff);
        Verdict::Reopen(backoff)
    }

    /// The gateway had no room for the job at `at` (its tenant is at its job quota). While
    /// another job of the send is open (`sibling_open`) a slot will come free, so the job
    /// waits as long as it takes; otherwise it waits at most `max_reopens` times. The
    /// backoff starts at the gateway's `retry_after_ms` (at least 50 ms), doubling, at most
    /// 5 s.
    pub fn on_busy(
        &mut self,
        sibling_open: bool,
        retry_after_ms: u32,
        at: Duration,
        limits: &RetryLimits,
    ) -> Verdict {
        if !sibling_open {
            self.busy_waits += 1;
        }
        if self.busy_waits > limits.max_reopens {
            self.due = None;
            return Verdict::GiveUp;
        }
        let backoff = Duration::from_millis(
            (u64::from(retry_after_ms).max(50) << self.busy_waits.saturating_sub(1).min(4))
                .min(5_000),
        );
        self.due = Some(at + backoff);
        Verdict::Reopen(backoff)
    }

    /// When the job is due to be opened again, if it is waiting to be.
    pub fn due(&self) -> Option<Duration> {
        self.due
    }

    /// Whether the reopen is due at `now`; if so it is taken (the caller sends `OpenJob`).
    pub fn take_due(&mut self, now: Duration) -> bool {
        if self.due.is_some_and(|d| d <= now) {
            self.due = None;
            return true;
        }
        false
    }

    /// Forgets a pending reopen (a new connection opens every unsettled job at once).
    pub fn cancel_due(&mut self) {
        self.due = None;
    }

    /// Reopens after transient failures so far.
    pub fn reopens(&self) -> u32 {
        self.reopens
    }
}

/// Backoff before attempt `attempt + 1` after `attempt` failed: exponential from `base`,
/// capped at `max`, with "full jitter" (`jitter` in 0..1 picks the point in the window).
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let cap = exp.min(max);
    // Never less than half the window, so retries do spread out.
    cap.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The earliest of `dues` (the connection loop's next timer).
pub fn next_due(dues: impl IntoIterator<Item = Option<Duration>>) -> Option<Duration> {
    dues.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RetryLimits = RetryLimits {
        max_reopens: 8,
        retry_for: Duration::from_secs(60),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn transient_failures_back_off_exponentially_then_give_up() {
        let mut r = JobRetry::default();
        let mut at = ms(0);
        let mut backoffs = Vec::new();
        while let Verdict::Reopen(b) = r.on_failed(false, at, &LIMITS) {
            assert_eq!(r.due(), Some(at + b));
            backoffs.push(b.as_millis() as u64);
            at += b;
            assert!(r.take_due(at));
        }
        assert_eq!(backoffs, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(r.reopens(), 8);
        assert_eq!(r.due(), None, "a job given up has nothing due");
    }

    #[test]
    fn a_permanent_failure_or_the_retry_budget_ends_it() {
        let mut r = JobRetry::default();
        assert_eq!(r.on_failed(true, ms(5), &LIMITS), Verdict::GiveUp);
        let mut r = JobRetry::default();
        assert!(matches!(
            r.on_failed(false, ms(1_000), &LIMITS),
            Verdict::Reopen(_)
        ));
        // Still failing a minute after the first failure: given up, reopens left or not.
        assert_eq!(r.on_failed(false, ms(61_000), &LIMITS), Verdict::GiveUp);
        assert_eq!(r.reopens(), 1);
    }

    #[test]
    fn busy_waits_forever_beside_an_open_sibling_and_a_bounded_number_of_times_alone() {
        let mut r = JobRetry::default();
        for k in 0..100 {
            assert!(matches!(
                r.on_busy(true, 100, ms(k * 1_000), &LIMITS),
                Verdict::Reopen(b) if b == ms(100)
            ));
        }
        let mut alone = Vec::new();
        let mut r = JobRetry::default();
        while let Verdict::Reopen(b) = r.on_busy(false, 100, ms(0), &LIMITS) {
            alone.push(b.as_millis() as u64);
        }
        assert_eq!(alone, [100, 200, 400, 800, 1600, 1600, 1600, 1600]);
        // The gateway's hint is respected, at least 50 ms, at most 5 s.
        let mut r = JobRetry::default();
        assert_eq!(r.on_busy(false, 0, ms(0), &LIMITS), Verdict::Reopen(ms(50)));
        let mut r = JobRetry::default();
        assert_eq!(
            r.on_busy(false, 60_000, ms(0), &LIMITS),
            Verdict::Reopen(ms(5_000))
        );
    }

    #[test]
    fn a_reopen_is_due_once_at_its_time_and_the_loop_waits_for_the_earliest() {
        let mut a = JobRetry::default();
        let mut b = JobRetry::default();
        a.on_failed(false, ms(1_000), &LIMITS); // due at 1,200
        b.on_busy(false, 100, ms(1_050), &LIMITS); // due at 1,150
        assert_eq!(next_due([a.due(), b.due(), None]), Some(ms(1_150)));
        assert!(!a.take_due(ms(1_199)));
        assert!(a.take_due(ms(1_200)));
        assert!(!a.take_due(ms(1_300)), "taken once");
        b.cancel_due();
        assert_eq!(next_due([a.due(), b.due()]), None);
    }

    /// Virtual time: a gateway that fails a job three times, then takes it. The loop only
    /// ever sleeps until the next due reopen; the job is open again 200 + 400 + 800 ms
    /// after the first failure, with no timer left.
    #[test]
    fn a_job_failing_three_times_is_reopened_on_schedule_in_virtual_time() {
        let mut r = JobRetry::default();
        let mut now = ms(10_000);
        let mut opens = vec![now];
        for _ in 0..3 {
            assert!(matches!(
                r.on_failed(false, now, &LIMITS),
                Verdict::Reopen(_)
            ));
            now = next_due([r.due()]).expect("a reopen is due");
            assert!(r.take_due(now));
            opens.push(now);
        }
        assert_eq!(opens, [ms(10_000), ms(10_200), ms(10_600), ms(11_400)]);
        assert_eq!(next_due([r.due()]), None);
    }
}
