//! Unit tests of the worker's pure parts.

use super::*;

#[test]
fn a_quota_is_split_in_proportion_to_the_jobs_each_worker_runs() {
    assert_eq!(local_share(1 << 20, 1, 1), 1 << 20);
    assert_eq!(local_share(1 << 20, 1, 2), 1 << 19);
    assert_eq!(local_share(1 << 20, 3, 4), 3 << 18);
    // Nothing known to run here: the whole quota (the next job start splits it).
    assert_eq!(local_share(1 << 20, 0, 3), 1 << 20);
    // Never below the limiter's floor, never overflowing.
    assert_eq!(local_share(4096, 1, 1000), 1024);
    assert_eq!(local_share(u64::MAX, 1, 2), u64::MAX / 2);
}

#[test]
fn latency_quantiles_cover_the_window_only() {
    let w = LatencyWindow::default();
    for i in 1..=100u64 {
        w.record("a", 1_000, Duration::from_millis(i));
    }
    w.record("a", 10, Duration::from_secs(9)); // before the window
    let (p95, n) = w.quantile("a", 500, 0.95).unwrap();
    assert_eq!(n, 100);
    assert_eq!(p95, Duration::from_millis(95));
    assert_eq!(
        w.quantile("a", 500, 1.0).unwrap().0,
        Duration::from_millis(100)
    );
    assert!(w.quantile("b", 0, 0.95).is_none());
}

#[test]
fn errors_are_sorted_into_permanent_and_transient() {
    assert!(matches!(
        classify(SendError::Refused("bad token".into())),
        Outcome::Permanent(_)
    ));
    assert!(matches!(
        classify(SendError::JobFailed {
            reason: "auth".into(),
            permanent: true
        }),
        Outcome::Permanent(_)
    ));
    assert!(matches!(
        classify(SendError::JobFailed {
            reason: "503".into(),
            permanent: false
        }),
        Outcome::Transient(_)
    ));
    assert!(matches!(
        classify(SendError::Connection(
            crate::sender::ConnectionLost::ControlEnded
        )),
        Outcome::Transient(_)
    ));
    assert!(matches!(
        classify(SendError::Busy {
            reason: "tenant a has 2 jobs running (max_concurrent_jobs = 2)".into()
        }),
        Outcome::Deferred(_)
    ));
}
