//! The chunk latencies a worker keeps for KPIs.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Per-chunk latencies of recent jobs, per tenant, for KPIs (bounded).
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: Mutex<HashMap<String, VecDeque<(i64, u32)>>>,
}

/// Most latency samples kept per tenant.
const LATENCY_SAMPLES: usize = 200_000;

impl LatencyWindow {
    /// Records one chunk's latency.
    pub fn record(&self, tenant: &str, at_ms: i64, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut s = self.samples.lock().expect("latency lock");
        let q = s.entry(tenant.to_string()).or_default();
        if q.len() == LATENCY_SAMPLES {
            q.pop_front();
        }
        q.push_back((at_ms, micros));
    }

    /// Every tenant's chunk latencies since `since_ms`, as (time in Unix ms, latency).
    pub fn samples_since(&self, since_ms: i64) -> Vec<(i64, Duration)> {
        let s = self.samples.lock().expect("latency lock");
        s.values()
            .flatten()
            .filter(|(at, _)| *at >= since_ms)
            .map(|(at, us)| (*at, Duration::from_micros(u64::from(*us))))
            .collect()
    }

    /// The `q` quantile (0..1) of the tenant's chunk latencies since `since_ms`, and how
    /// many samples it is over.
    pub fn quantile(&self, tenant: &str, since_ms: i64, q: f64) -> Option<(Duration, usize)> {
        let s = self.samples.lock().expect("latency lock");
        let mut v: Vec<u32> = s
            .get(tenant)?
            .iter()
            .filter(|(at, _)| *at >= since_ms)
            .map(|(_, us)| *us)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let idx = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        Some((Duration::from_micros(u64::from(v[idx])), v.len()))
    }
}
