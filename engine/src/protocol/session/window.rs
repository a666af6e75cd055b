//! The sender's in-flight window ([`Window`]): how many chunk bytes may be sent and not yet
//! acknowledged. Fixed, or adaptive: it starts small and grows by what each acknowledgement
//! frees while acknowledgements come back without queueing (a long link: the window, not
//! the gateway, is what limits the send), up to the cap; it shrinks back towards its start
//! while they come back late (the gateway or a link is the bottleneck and more in flight
//! would only wait in a queue, and hold memory). Pure: latencies are inputs.

use std::time::Duration;

/// Latency within `2 × base + GROW_SLACK` counts as no queueing: the window may grow.
const GROW_SLACK: Duration = Duration::from_millis(10);
/// Latency beyond `4 × base + SHRINK_SLACK` counts as queueing: the window shrinks.
const SHRINK_SLACK: Duration = Duration::from_millis(50);

/// The in-flight window of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    cap: u64,
    initial: u64,
    current: u64,
    adaptive: bool,
    /// The least acknowledgement latency seen: the path's own delay.
    base: Option<Duration>,
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

    /// Whether `len` more bytes may go with `in_flight` out: when they fit, and always when
    /// nothing is out (a chunk larger than the window still goes, alone).
    pub fn room(&self, in_flight: u64, len: u64) -> bool {
        in_flight == 0 || in_flight + len <= self.current
    }

    /// A chunk of `len` bytes was acknowledged `latency` after it was sent, with
    /// `in_flight` bytes out just before (its own included).
    pub fn on_ack(&mut self, len: u64, latency: Duration, in_flight: u64) {
        let base = *self.base.get_or_insert(latency);
        let base = base.min(latency);
        self.base = Some(base);
        if !self.adaptive {
            return;
        }
        // Full: another chunk of this size would not have fitted.
        let full = in_flight + len > self.current;
        if full && latency <= base * 2 + GROW_SLACK {
            self.current = (self.current + len).min(self.cap);
        } else if latency > base * 4 + SHRINK_SLACK {
            self.current = (self.current - self.current / 8).max(self.initial);
        }
    }

    /// A new connection: from the initial size again (what the new path holds is not known
    /// yet); the base latency is learnt again too.
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.base = None;
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
        for _ in 0..100 {
            w.on_ack(MIB, ms(5), 8 * MIB);
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
        let mut trips = 0;
        while w.size() < w.cap() {
            let size = w.size();
            for _ in 0..size / MIB {
                w.on_ack(MIB, ms(200), w.size());
            }
            trips += 1;
            assert!(w.size() <= 2 * size, "at most doubles per round trip");
        }
        assert_eq!(trips, 4, "4 → 8 → 16 → 32 → 64 MiB");
        w.on_ack(MIB, ms(200), w.size());
        assert_eq!(w.size(), 64 * MIB, "never past the cap");
    }

    #[test]
    fn it_does_not_grow_when_not_full_and_shrinks_back_when_acks_queue() {
        let mut w = Window::adaptive(4 * MIB, 64 * MIB);
        w.on_ack(MIB, ms(5), MIB); // the base: 5 ms, with room to spare
        assert_eq!(w.size(), 4 * MIB, "not full: no reason to grow");
        for _ in 0..12 {
            w.on_ack(MIB, ms(5), w.size());
        }
        let grown = w.size();
        assert_eq!(grown, 16 * MIB);
        // The gateway falls behind: acknowledgements at 100 ms, 20 × the base.
        for _ in 0..50 {
            w.on_ack(MIB, ms(100), w.size());
        }
        assert_eq!(w.size(), 4 * MIB, "back to where it started, not below");
        // A new connection starts over.
        w.on_ack(MIB, ms(5), w.size());
        w.reset();
        assert_eq!(w.size(), 4 * MIB);
    }
}
