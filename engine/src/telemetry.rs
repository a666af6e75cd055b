//! Metrics that are not about one job: label values bounded against a tenant's choices, and
//! each QUIC connection's figures from quinn's own statistics (round-trip time, congestion
//! window, packets sent and lost), sampled while the connection lives.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// A set of label values that stops growing at a cap: past it, new values are reported as
/// `other`, so a tenant choosing names (hosts, classifications) cannot add series without
/// bound.
pub struct BoundedLabels {
    cap: usize,
    seen: Mutex<HashSet<String>>,
}

impl BoundedLabels {
    /// A set that takes at most `cap` distinct values.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// `value` if it is already known or there is room for it, else `other`.
    pub fn admit(&self, value: String) -> String {
        let mut seen = self.seen.lock().expect("label lock");
        if seen.contains(&value) {
            return value;
        }
        if seen.len() >= self.cap {
            return "other".into();
        }
        seen.insert(value.clone());
        value
    }
}

/// Which end of a connection the figures are from: the gateway's (it receives chunks) or
/// a sender's (the job service's workers, whose congestion window and losses carry the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A connection the gateway accepted.
    Gateway,
    /// A connection a sender opened to a gateway.
    Sender,
}

impl Side {
    /// The `side` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Gateway => "gateway",
            Side::Sender => "sender",
        }
    }
}

/// How often an open connection's figures are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Counters already added for one connection (quinn's figures are totals since its start).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    sent_packets: u64,
    lost_packets: u64,
    lost_bytes: u64,
    congestion_events: u64,
}

impl Counted {
    /// What `now` adds since `self` (never negative), and the new totals.
    pub fn advance(&mut self, now: &quinn::PathStats) -> Counted {
        let next = Counted {
            sent_packets: now.sent_packets,
            lost_packets: now.lost_packets,
            lost_bytes: now.lost_bytes,
            congestion_events: now.congestion_events,
        };
        let delta = Counted {
            sent_packets: next.sent_packets.saturating_sub(self.sent_packets),
            lost_packets: next.lost_packets.saturating_sub(self.lost_packets),
            lost_bytes: next.lost_bytes.saturating_sub(self.lost_bytes),
            congestion_events: next
                .congestion_events
                .saturating_sub(self.congestion_events),
        };
        *self = Counted {
            sent_packets: self.sent_packets.max(next.sent_packets),
            lost_packets: self.lost_packets.max(next.lost_packets),
            lost_bytes: self.lost_bytes.max(next.lost_bytes),
            congestion_events: self.congestion_events.max(next.congestion_events),
        };
        delta
    }
}

/// Records one sample of `stats` for `side`: RTT and congestion window observed, counters
/// advanced by what they grew since `counted`.
fn sample(side: Side, stats: &quinn::PathStats, counted: &mut Counted) {
    let s = side.as_str();
    metrics::histogram!("trackshift_quic_rtt_seconds", "side" => s).record(stats.rtt.as_secs_f64());
    metrics::histogram!("trackshift_quic_congestion_window_bytes", "side" => s)
        .record(stats.cwnd as f64);
    let d = counted.advance(stats);
    metrics::counter!("trackshift_quic_sent_packets_total", "side" => s).increment(d.sent_packets);
    metrics::counter!("trackshift_quic_lost_packets_total", "side" => s).increment(d.lost_packets);
    metrics::counter!("trackshift_quic_lost_bytes_total", "side" => s).increment(d.lost_bytes);
    metrics::counter!("trackshift_quic_congestion_events_total", "side" => s)
        .increment(d.congestion_events);
}

/// One watched connection: counted among `side`'s open ones while it lives, and sampled
/// once more when dropped (the watching task ended or was aborted with its connection), so
/// the last second's losses count too.
struct Watched {
    conn: quinn::Connection,
    side: Side,
    counted: Counted,
}

impl Watched {
    fn new(conn: quinn::Connection, side: Side) -> Self {
        metrics::gauge!("trackshift_quic_connections", "side" => side.as_str()).increment(1.0);
        Watched {
            conn,
            side,
            counted: Counted::default(),
        }
    }

    fn sample(&mut self) {
        sample(self.side, &self.conn.stats().path, &mut self.counted);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.sample();
        metrics::gauge!("trackshift_quic_connections", "side" => self.side.as_str()).decrement(1.0);
    }
}

/// Samples `conn`'s figures every [`SAMPLE_EVERY`] until it closes or the task is aborted,
/// and once at the end. Spawn it beside the connection (it holds a handle, so abort it
/// when the connection's work is over).
pub async fn watch_connection(conn: quinn::Connection, side: Side) {
    let closed = conn.clone();
    let closed = closed.closed();
    tokio::pin!(closed);
    let mut w = Watched::new(conn, side);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => w.sample(),
            _ = &mut closed => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stop_growing_at_the_cap() {
        let l = BoundedLabels::new(2);
        assert_eq!(l.admit("a".into()), "a");
        assert_eq!(l.admit("b".into()), "b");
        assert_eq!(l.admit("c".into()), "other");
        assert_eq!(l.admit("a".into()), "a", "known values stay");
    }

    #[test]
    fn counters_advance_by_growth_only() {
        let mut stats = quinn::PathStats::default();
        let mut c = Counted::default();
        stats.sent_packets = 10;
        stats.lost_packets = 2;
        stats.lost_bytes = 2400;
        stats.congestion_events = 1;
        let d = c.advance(&stats);
        assert_eq!(
            (d.sent_packets, d.lost_packets, d.lost_bytes),
            (10, 2, 2400)
        );
        stats.sent_packets = 15;
        let d = c.advance(&stats);
        assert_eq!(
            (d.sent_packets, d.lost_packets, d.congestion_events),
            (5, 0, 0)
        );
        // A figure that went down (a path change) adds nothing and is not counted again.
        stats.sent_packets = 3;
        assert_eq!(c.advance(&stats).sent_packets, 0);
        stats.sent_packets = 16;
        assert_eq!(c.advance(&stats).sent_packets, 1);
    }
}
