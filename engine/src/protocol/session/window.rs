//! The sender's in-flight window ([`Window`]): how many chunk bytes may be sent and not yet
//! acknowledged. Fixed, or adaptive: it starts small and grows by what each acknowledgement
//! frees while acknowledgements come back without queueing (a long link: the window, not
//! the gateway, is what limits the send), up to the cap; it shrinks back towards its start
//! while they come back late (the gateway or a link is the bottleneck and more in flight
//! would only wait in a queue, and hold memory).
//!
//! It also measures the delivery rate, one window's worth of acknowledgements at a time (a
//! round), as BBR's start-up does. While the rate grows the window may reach twice the
//! bandwidth-delay product measured so far (best rate × least latency): it doubles per
//! round on a long path, where more in flight means more delivered. Once three rounds in a
//! row brought less than a quarter more than the best rate so far, the path is full, and
//! the window is held to that product plus a quarter (never below the start): a fast path
//! with a short delay (loopback, a LAN) keeps a few chunks in flight instead of growing to
//! the cap, a long one as many as its delay needs. Pure:
//! latencies and time are inputs.

use std::time::Duration;

/// Latency within `2 × base + GROW_SLACK` counts as no queueing: the window may grow.
const GROW_SLACK: Duration = Duration::from_millis(10);
/// Latency beyond `4 × base + SHRINK_SLACK` counts as queueing: the window shrinks.
const SHRINK_SLACK: Duration = Duration::from_millis(50);
/// A round whose rate is less than this much above the best so far did not grow.
const GROWTH: f64 = 1.25;
/// Rounds in a row without growth that mean the path is full.
const FULL_AFTER: u8 = 3;
/// The window held on a full path, as a multiple of its measured bandwidth-delay product.
const BDP_HEADROOM: f64 = 1.25;
/// The most the window may reach while the rate still grows, as a multiple of the
/// bandwidth-delay product measured so far.
const STARTUP_HEADROOM: f64 = 2.0;

/// The in-flight window of one send.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    cap: u64,
    initial: u64,
    current: u64,
    adaptive: bool,
    /// The least acknowledgement latency seen: the path's own delay.
    base: Option<Duration>,
    rate: Rate,
}

/// Delivery-rate rounds (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
struct Rate {
    /// When the current round began, and the bytes acknowledged in it so far.
    round: Option<(Duration, u64)>,
    /// The best rate of any round, in bytes per second.
    best: f64,
    /// The rate the last growth was measured against.
    full_bw: f64,
    stalled: u8,
    /// Set once [`FULL_AFTER`] rounds in a row did not grow.
    full: bool,
}

impl Rate {
    /// Counts `len` acknowledged bytes at `now`; a round ends once `window` bytes were
    /// acknowledged in it and it lasted at least `base` (the least latency): the gateway
    /// acknowledges in groups, and a round shorter than a round trip would measure one
    /// group's burst instead of the rate.
    fn on_ack(&mut self, len: u64, now: Duration, window: u64, base: Duration) {
        let (start, acked) = self.round.get_or_insert((now, 0));
        *acked += len;
        if *acked < window || now <= *start || now - *start < base {
            return;
        }
        let bw = *acked as f64 / (now - *start).as_secs_f64();
        self.round = Some((now, 0));
        self.best = self.best.max(bw);
        if bw >= self.full_bw * GROWTH {
            self.full_bw = bw;
            self.stalled = 0;
        } else {
            self.stalled += 1;
            self.full |= self.stalled >= FULL_AFTER;
        }
    }
}

impl Window {
    /// Always `cap` bytes.
    pub fn fixed(cap: u64) -> Self {
        let cap = cap.max(1);
        Self {
            cap,
            initial: cap,
            current: cap,
            adaptive: false,
            base: None,
            rate: Rate::default(),
        }
    }

    /// From `initial` bytes (at most `cap`), adapting between them.
    pub fn adaptive(initial: u64, cap: u64) -> Self {
        let cap = cap.max(1);
        let initial = initial.clamp(1, cap);
        Self {
            cap,
            initial,
            current: initial,
            adaptive: true,
            base: None,
            rate: Rate::default(),
        }
    }

    /// The window now, in bytes.
    pub fn size(&self) -> u64 {
        self.current
    }

    /// The most it may grow to.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The most it may grow to now: a multiple of the bandwidth-delay product measured so
    /// far (best rate × least latency): twice it while the rate still grows (room to double
    /// per round, as a window-limited long path needs), a quarter more once the path is
    /// full; at least the start, at most the cap (the cap before a round was measured).
    pub fn limit(&self) -> u64 {
        match self.base {
            Some(base) if self.rate.best > 0.0 => {
                let k = if self.rate.full {
                    BDP_HEADROOM
                } else {
                    STARTUP_HEADROOM
                };
                let bdp = self.rate.best * base.as_secs_f64() * k;
                (bdp as u64).clamp(self.initial, self.cap)
            }
            _ => self.cap,
        }
    }

    /// Whether `len` more bytes may go with `in_flight` out: when they fit, and always when
    /// nothing is out (a chunk larger than the window still goes, alone).
    pub fn room(&self, in_flight: u64, len: u64) -> bool {
        in_flight == 0 || in_flight + len <= self.current
    }

    /// A chunk of `len` bytes was acknowledged at `now` (time since the send started),
    /// `latency` after it was sent, with `in_flight` bytes out just before (its own
    /// included).
    pub fn on_ack(&mut self, len: u64, latency: Duration, in_flight: u64, now: Duration) {
        let base = *self.base.get_or_insert(latency);
        let base = base.min(latency);
        self.base = Some(base);
        if !self.adaptive {
            return;
        }
        self.rate.on_ack(len, now, self.current, base);
        let limit = self.limit();
        // Full: another chunk of this size would not have fitted.
        let full = in_flight + len > self.current;
        if full && latency <= base * 2 + GROW_SLACK && self.current < limit {
            self.current = (self.current + len).min(limit);
        } else if latency > base * 4 + SHRINK_SLACK {
            self.current = (self.current - self.current / 8).max(self.initial);
        }
        self.current = self.current.min(limit);
    }

    /// A new connection: from the initial size again (what the new path holds is not known
    /// yet); the base latency and the rate are learnt again too.
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.base = None;
        self.rate = Rate::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_fixed_window_never_moves_and_always_lets_one_chunk_go() {
        let mut w = Window::fixed(8 * MIB);
        for k in 0..100 {
            w.on_ack(MIB, ms(5), 8 * MIB, ms(k));
        }
        assert_eq!(w.size(), 8 * MIB);
        assert!(
            w.room(0, 64 * MIB),
            "a chunk larger than the window goes alone"
        );
        assert!(!w.room(MIB, 8 * MIB));
        assert!(w.room(4 * MIB, 4 * MIB));
    }

    #[test]
    fn it_doubles_per_round_trip_while_acks_come_back_on_time_up_to_the_cap() {
        let mut w = Window::adaptive(4 * MIB, 64 * MIB);
        // A 200 ms path, the window always full: each round trip acknowledges a window's
        // worth, and the window grows by what was acknowledged.
        // The rate doubles with it, so the path is never found full.
        let mut trips = 0;
        while w.size() < w.cap() {
            let size = w.size();
            for k in 0..size / MIB {
                w.on_ack(MIB, ms(200), w.size(), ms(200 * (trips + 1) + k));
            }
            trips += 1;
            assert!(w.size() <= 2 * size, "at most doubles per round trip");
        }
        assert_eq!(trips, 4, "4 → 8 → 16 → 32 → 64 MiB");
        w.on_ack(MIB, ms(200), w.size(), ms(1_000));
        assert_eq!(w.size(), 64 * MIB, "never past the cap");
    }

    #[test]
    fn it_does_not_grow_when_not_full_and_shrinks_back_when_acks_queue() {
        let mut w = Window::adaptive(4 * MIB, 64 * MIB);
        w.on_ack(MIB, ms(5), MIB, ms(5)); // the base: 5 ms, with room to spare
        assert_eq!(w.size(), 4 * MIB, "not full: no reason to grow");
        // Twelve acknowledgements within 5 ms: too fast to count as a full path.
        for _ in 0..12 {
            w.on_ack(MIB, ms(5), w.size(), ms(5));
        }
        let grown = w.size();
        assert_eq!(grown, 16 * MIB);
        // The gateway falls behind: acknowledgements at 100 ms, 20 × the base.
        for k in 0..50 {
            w.on_ack(MIB, ms(100), w.size(), ms(100 + 5 * k));
        }
        assert_eq!(w.size(), 4 * MIB, "back to where it started, not below");
        // A new connection starts over.
        w.on_ack(MIB, ms(5), w.size(), ms(400));
        w.reset();
        assert_eq!(w.size(), 4 * MIB);
    }

    /// A path whose bottleneck delivers `rate` bytes per second whatever is in flight, with
    /// `delay` besides: every acknowledgement frees a MiB, latency is the queue plus the
    /// delay. Returns the window after `acks` acknowledgements.
    fn bottleneck(w: &mut Window, rate: f64, delay: Duration, acks: u32) -> u64 {
        let mut now = Duration::ZERO;
        for _ in 0..acks {
            let in_flight = w.size();
            let latency = Duration::from_secs_f64(in_flight as f64 / rate) + delay;
            now += Duration::from_secs_f64(MIB as f64 / rate);
            w.on_ack(MIB, latency, in_flight, now);
        }
        w.size()
    }

    #[test]
    fn on_a_fast_short_path_it_stops_at_the_measured_bandwidth_delay_product() {
        // Loopback-like: 1 GiB/s and 1 ms. More in flight only queues; the rate does not
        // grow, so after three rounds the window is held to best rate × least latency
        // (16 MiB / 1 GiB/s + 1 ms ≈ 16.6 ms: 17 MiB) with a quarter more: 21 MiB, where
        // the latency rule alone would let it reach 43 MiB.
        let rate = 1024.0 * MIB as f64;
        let mut w = Window::adaptive(16 * MIB, 256 * MIB);
        let size = bottleneck(&mut w, rate, ms(1), 2_000);
        assert!((16 * MIB..=22 * MIB).contains(&size), "{}", size / MIB);
        assert_eq!(w.limit(), size);
        // The same path without the rate rule: only the latency rule's bound.
        let mut latency_only = Window::adaptive(16 * MIB, 256 * MIB);
        latency_only.rate.full = false;
        let mut now = Duration::ZERO;
        for _ in 0..2_000 {
            let in_flight = latency_only.size();
            let latency = Duration::from_secs_f64(in_flight as f64 / rate) + ms(1);
            now += Duration::from_secs_f64(MIB as f64 / rate);
            latency_only.on_ack(MIB, latency, in_flight, now);
            latency_only.rate = Rate::default();
        }
        assert!(
            latency_only.size() >= 40 * MIB,
            "{}",
            latency_only.size() / MIB
        );
        // A new connection measures again.
        w.reset();
        assert_eq!((w.size(), w.limit()), (16 * MIB, 256 * MIB));
    }

    #[test]
    fn acknowledgements_in_groups_do_not_pass_for_a_faster_path() {
        // As above, but the gateway commits and acknowledges 8 chunks at a time, every
        // 8 ms: within a group the clock stands still. Rounds last at least a round trip,
        // so a group's burst is not taken for the rate.
        let rate = 1024.0 * MIB as f64;
        let mut w = Window::adaptive(16 * MIB, 256 * MIB);
        let mut now = Duration::ZERO;
        for k in 0..2_000u32 {
            let in_flight = w.size();
            if k % 8 == 0 {
                now += Duration::from_secs_f64(8.0 * MIB as f64 / rate);
            }
            let latency = Duration::from_secs_f64(in_flight as f64 / rate) + ms(1);
            w.on_ack(MIB, latency, in_flight, now);
        }
        // Within a group's quantisation (8 MiB) of the 21 MiB above, well short of the
        // 43 MiB the latency rule alone allows.
        assert!(
            (16 * MIB..=28 * MIB).contains(&w.size()),
            "{}",
            w.size() / MIB
        );
        assert!(w.limit() <= 28 * MIB, "{}", w.limit() / MIB);
    }

    #[test]
    fn on_a_long_path_the_held_window_covers_its_delay() {
        // 125 MB/s (1 Gbit/s) at 200 ms: the bandwidth-delay product is 25 MB; starting from
        // 4 MiB the window grows while the rate does, then holds about 1.25 × (rate ×
        // (200 ms + a chunk's time on the link)), far from the cap.
        let rate = 125e6;
        let mut w = Window::adaptive(4 * MIB, 512 * MIB);
        // Window-limited until the link is full: latency is the delay alone.
        let mut now = Duration::ZERO;
        for _ in 0..4_000 {
            let in_flight = w.size();
            let queue = (in_flight as f64 - rate * 0.2).max(0.0) / rate;
            let latency = ms(200) + Duration::from_secs_f64(queue + MIB as f64 / rate);
            let delivered = (in_flight as f64 / latency.as_secs_f64()).min(rate);
            now += Duration::from_secs_f64(MIB as f64 / delivered);
            w.on_ack(MIB, latency, in_flight, now);
        }
        let size = w.size();
        assert!((24 * MIB..=40 * MIB).contains(&size), "{} MiB", size / MIB);
    }
}
