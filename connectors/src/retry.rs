//! Retries of transient destination errors: exponential backoff with jitter (100 ms
//! doubling to 5 s, at most 4 retries, so about 10 s at worst); permanent errors return at
//! once. Each retry is logged with the destination and the reason.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use tracing::warn;

use crate::ConnectorError;

/// The backoff policy of [`transient`].
pub fn policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(4)
        .with_jitter()
}

/// Runs `op`, retrying it while it fails with a transient error.
pub async fn transient<T, F, Fut>(
    destination: &str,
    what: &'static str,
    op: F,
) -> Result<T, ConnectorError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ConnectorError>>,
{
    op.retry(policy())
        .when(ConnectorError::is_transient)
        .notify(|e, wait| {
            warn!(destination, op = what, error = %e, retry_in = ?wait, "transient destination error; retrying");
        })
        .await
}
