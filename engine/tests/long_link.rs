//! The long-link simulator (`examples/long_link/sim.rs`, issue 15) on a small link, fast
//! enough for a debug build: CUBIC fills the pipe when the application window is large,
//! and a small application window, not the link, bounds goodput at W / RTT.

#[allow(dead_code)]
#[path = "../examples/long_link/sim.rs"]
mod sim;

use std::time::Duration;

use sim::Scenario;
use trackshift_engine::tls::GatewayIdentity;
use trackshift_engine::transport::Congestion;

fn identity() -> (tempfile::TempDir, GatewayIdentity) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let identity = GatewayIdentity::load_or_generate(dir.path()).expect("gateway identity");
    (dir, identity)
}

/// 100 Mbit/s, 50 ms, no loss, 5 virtual seconds.
fn small_link() -> Scenario {
    Scenario {
        rtt: Duration::from_millis(50),
        loss: 0.0,
        rate_bps: 100_000_000,
        duration: Duration::from_secs(5),
        congestion: Congestion::Cubic,
        ..Scenario::default()
    }
}

#[test]
fn cubic_fills_the_link_and_a_small_window_limits_goodput_to_w_over_rtt() {
    let (_dir, identity) = identity();

    // W = 256 MiB, far above the 625 kB BDP: the link is the limit.
    let open = small_link();
    let r = sim::run(&open, &identity);
    assert!(r.failure.is_none(), "{r:?}");
    let link = open.rate_bps as f64;
    assert!(
        r.steady_bps >= 0.8 * link,
        "CUBIC reached only {:.1} Mbit/s of 100 in the second half: {r:?}",
        r.steady_bps / 1e6
    );
    assert!(
        r.in_flight_steady >= 0.9 * r.bdp,
        "the pipe was not kept full: {r:?}"
    );

    // W = a quarter and a half of the BDP (in 32 KiB chunks): at most W per round trip,
    // and goodput grows with W, so W and not the link is the limit. With the quarter, quinn
    // (application-limited, so its congestion window stays near W) paces each window out
    // over most of a round trip: about half of W / RTT; with the half, close to W / RTT.
    let chunk = 32 << 10;
    let limited = |fraction: f64| {
        let w = (open.bdp() * fraction) as u64 / chunk * chunk;
        Scenario {
            in_flight: w,
            chunk,
            ..small_link()
        }
    };
    let mut steady = Vec::new();
    for (fraction, at_least) in [(0.25, 0.4), (0.5, 0.75)] {
        let sc = limited(fraction);
        let r = sim::run(&sc, &identity);
        assert!(r.failure.is_none(), "{r:?}");
        let bound = sc.in_flight as f64 * 8.0 / sc.rtt.as_secs_f64();
        assert!(
            r.steady_bps <= bound,
            "goodput {:.2} Mbit/s above W/RTT = {:.2} Mbit/s: {r:?}",
            r.steady_bps / 1e6,
            bound / 1e6
        );
        assert!(
            r.steady_bps >= at_least * bound,
            "goodput {:.2} Mbit/s, under {at_least} of W/RTT = {:.2} Mbit/s: {r:?}",
            r.steady_bps / 1e6,
            bound / 1e6
        );
        assert!(r.steady_bps < 0.5 * link, "{r:?}");
        assert_eq!(r.queue_drops + r.lost_packets, 0, "{r:?}");
        steady.push(r.steady_bps);
    }
    assert!(steady[1] > 1.5 * steady[0], "{steady:?}");

    // Same scenario, same seed: the same numbers.
    let sc = limited(0.25);
    let (a, b) = (sim::run(&sc, &identity), sim::run(&sc, &identity));
    assert_eq!(
        (a.delivered, a.datagrams, a.acks, a.srtt),
        (b.delivered, b.datagrams, b.acks, b.srtt)
    );
}
