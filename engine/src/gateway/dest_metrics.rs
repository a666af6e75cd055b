//! Per-destination metrics for the gateway's connectors: bytes and writes, errors by kind,
//! destinations dropped from jobs, receipts by status and commit latency. The `destination`
//! label is the URI's scheme and authority only (`s3://bucket`, `sftp://host:22`,
//! `file://`; no user, path or query, so no secret and no tenant's object name), and at most
//! [`MAX_LABELS`] distinct values are used (then `other`), so a tenant naming many hosts
//! cannot grow the series without bound.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use metrics::{Counter, Histogram};

/// Most distinct `destination` label values.
pub const MAX_LABELS: usize = 64;

/// The counters and histogram of one destination label.
#[derive(Clone)]
pub(super) struct DestMetrics {
    pub(super) label: String,
    bytes: Counter,
    writes: Counter,
}

/// The label for `uri`: scheme and authority without user info, bounded (module docs).
pub fn label(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("unknown", ""));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let scheme: String = scheme
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
        .take(16)
        .collect();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
        .take(128)
        .collect();
    let candidate = format!("{scheme}://{host}");
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .expect("label lock");
    if seen.contains(&candidate) {
        return candidate;
    }
    if seen.len() >= MAX_LABELS {
        return "other".into();
    }
    seen.insert(candidate.clone());
    candidate
}

impl DestMetrics {
    pub(super) fn for_uri(uri: &str) -> Self {
        let label = label(uri);
        Self {
            bytes: metrics::counter!("trackshift_destination_bytes_total", "destination" => label.clone()),
            writes: metrics::counter!("trackshift_destination_writes_total", "destination" => label.clone()),
            label,
        }
    }

    /// A chunk of `len` bytes written.
    pub(super) fn written(&self, len: usize) {
        self.bytes.increment(len as u64);
        self.writes.increment(1);
    }

    /// A write, sync or commit that failed: `transient` (retried by the sender) or not.
    pub(super) fn error(&self, operation: &'static str, transient: bool) {
        metrics::counter!(
            "trackshift_destination_errors_total",
            "destination" => self.label.clone(),
            "operation" => operation,
            "kind" => if transient { "transient" } else { "permanent" },
        )
        .increment(1);
    }

    /// The destination was dropped from a job (non-strict fan-out).
    pub(super) fn dropped(&self) {
        metrics::counter!("trackshift_destination_dropped_total", "destination" => self.label.clone())
            .increment(1);
    }

    /// A job's commit there, with its duration and outcome (and so its receipt's status).
    pub(super) fn committed(&self, seconds: f64, ok: bool) {
        let h: Histogram = metrics::histogram!("trackshift_destination_commit_seconds", "destination" => self.label.clone());
        h.record(seconds);
        self.receipt(ok);
    }

    /// A receipt signed for this destination: `confirmed` or `failed` (also for a
    /// destination dropped before the commit, which gets a failed receipt too).
    pub(super) fn receipt(&self, ok: bool) {
        metrics::counter!(
            "trackshift_destination_receipts_total",
            "destination" => self.label.clone(),
            "status" => if ok { "confirmed" } else { "failed" },
        )
        .increment(1);
    }
}

/// Whether `e` is a connector error the sender retries.
pub(super) fn is_transient(e: &super::GatewayError) -> bool {
    matches!(e, super::GatewayError::Connector(c) if c.is_transient())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_scheme_and_host_only() {
        assert_eq!(label("s3://bucket/tenant/a?endpoint=x"), "s3://bucket");
        assert_eq!(
            label("sftp://user@host.example:22/in?key=/etc/k"),
            "sftp://host.example:22"
        );
        assert_eq!(label("file:///srv/data"), "file://");
        assert_eq!(label("az://c/p"), "az://c");
        assert_eq!(label("ftps://u@[::1]:21/x"), "ftps://[::1]:21");
        assert_eq!(label("weird"), "unknown://");
    }
}
