//! A byte rate shared by every holder: the bandwidth limit of a destination
//! ([`crate::wrap::ThrottledConnector`]), of a tenant at the gateway, and of a job service's
//! tenant (GCRA, from `governor`).

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::ConnectorError;

/// A byte-rate limiter: GCRA cells of one KiB, bursts of up to a tenth of a second. Used
/// by [`crate::wrap::ThrottledConnector`] and by the job service for per-tenant bandwidth quotas; its
/// rate can change while in use ([`ByteRate::set_rate`]).
pub struct ByteRate {
    bucket: std::sync::RwLock<Arc<Bucket>>,
}

struct Bucket {
    rate: u64,
    cells: DefaultDirectRateLimiter,
    burst: u32,
}

const CELL: u64 = 1024;

impl std::fmt::Debug for ByteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteRate")
            .field("bytes_per_second", &self.rate())
            .finish()
    }
}

impl Bucket {
    fn new(bytes_per_second: u64) -> Result<Self, ConnectorError> {
        let per_sec = u32::try_from(bytes_per_second / CELL)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                ConnectorError::InvalidUri(format!(
                    "a rate limit must be 1 KiB/s to 4 TiB/s, got {bytes_per_second} bytes/s"
                ))
            })?;
        let burst = NonZeroU32::new((per_sec.get() / 10).max(1)).expect("at least 1");
        Ok(Self {
            rate: bytes_per_second,
            cells: RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst)),
            burst: burst.get(),
        })
    }
}

impl ByteRate {
    /// At most `bytes_per_second` (1 KiB/s to 4 TiB/s).
    pub fn new(bytes_per_second: u64) -> Result<Self, ConnectorError> {
        Ok(Self {
            bucket: std::sync::RwLock::new(Arc::new(Bucket::new(bytes_per_second)?)),
        })
    }

    /// The rate in force, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.bucket.read().expect("rate lock").rate
    }

    /// Changes the rate for every byte taken from now on (same bounds as
    /// [`ByteRate::new`]); takers already waiting finish their current burst first.
    pub fn set_rate(&self, bytes_per_second: u64) -> Result<(), ConnectorError> {
        if self.rate() == bytes_per_second {
            return Ok(());
        }
        let next = Arc::new(Bucket::new(bytes_per_second)?);
        *self.bucket.write().expect("rate lock") = next;
        Ok(())
    }

    /// Waits until `bytes` may pass.
    pub async fn take(&self, bytes: u64) {
        let mut cells = bytes.div_ceil(CELL);
        while cells > 0 {
            let bucket = self.bucket.read().expect("rate lock").clone();
            let n = cells.min(u64::from(bucket.burst));
            let nz = NonZeroU32::new(u32::try_from(n).expect("n ≤ burst")).expect("n > 0");
            // n never exceeds the burst size, so this cannot fail.
            let _ = bucket.cells.until_n_ready(nz).await;
            cells -= n;
        }
    }
}
