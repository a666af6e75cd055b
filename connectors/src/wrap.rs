//! Wrappers that apply to any connector, in the style of object_store's `PrefixStore`,
//! `LimitStore` and `ThrottledStore`:
//!
//! - [`PrefixConnector`]: every object under a fixed sub-path (a tenant's prefix), so a job
//!   can never name an object outside it;
//! - [`LimitConnector`]: at most N chunk writes (and read-backs) in flight across all objects;
//! - [`ThrottledConnector`]: at most a given number of bytes per second written (GCRA rate
//!   limiter from `governor`), shared by all objects.
//!
//! Each is generic over what it wraps (`PrefixConnector<LocalConnector>`), `dyn Connector`
//! by default; [`wrap`] applies the ones a [`Wrapping`] asks for. Every one runs the
//! conformance suite in this module's tests.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

pub use crate::rate::ByteRate;
use crate::{Confirmation, Connector, ConnectorError, ObjectSpec, ObjectWriter, check_object_path};

/// Which wrappers to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wrapping {
    /// Sub-path every object goes under.
    pub prefix: Option<String>,
    /// Most chunk writes in flight.
    pub concurrency: Option<usize>,
    /// Most bytes written per second.
    pub bytes_per_second: Option<u64>,
}

/// Wraps `inner` as `w` asks, with limits of its own (see [`Limits`] to share limits
/// between connectors).
pub fn wrap(inner: Arc<dyn Connector>, w: &Wrapping) -> Result<Arc<dyn Connector>, ConnectorError> {
    Limits::new(w)?.wrap(inner)
}

/// Limits built once and shared by every connector they wrap (for example one rate limit
/// for all of a gateway's jobs).
#[derive(Clone)]
pub struct Limits {
    prefix: Option<String>,
    slots: Option<Arc<Semaphore>>,
    rate: Option<Arc<ByteRate>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("prefix", &self.prefix)
            .field("slots", &self.slots.as_ref().map(|s| s.available_permits()))
            .field("bytes_per_second", &self.rate.as_ref().map(|r| r.rate()))
            .finish()
    }
}

impl Limits {
    /// Validates `w` and creates the shared limiters.
    pub fn new(w: &Wrapping) -> Result<Self, ConnectorError> {
        if let Some(p) = &w.prefix {
            check_object_path(p.trim_matches('/'))?;
        }
        Ok(Self {
            prefix: w.prefix.clone(),
            slots: w.concurrency.map(new_slots).transpose()?,
            rate: w
                .bytes_per_second
                .map(ByteRate::new)
                .transpose()?
                .map(Arc::new),
        })
    }

    /// Wraps `inner`: prefix innermost, then the rate limit, then the concurrency limit (a
    /// write waits for a slot before it takes rate tokens).
    pub fn wrap(&self, inner: Arc<dyn Connector>) -> Result<Arc<dyn Connector>, ConnectorError> {
        let mut c = inner;
        if let Some(p) = &self.prefix {
            c = Arc::new(PrefixConnector::new(c, p)?);
        }
        if let Some(limiter) = &self.rate {
            c = Arc::new(ThrottledConnector {
                inner: c,
                limiter: limiter.clone(),
            });
        }
        if let Some(slots) = &self.slots {
            c = Arc::new(LimitConnector {
                inner: c,
                slots: slots.clone(),
            });
        }
        Ok(c)
    }
}

fn new_slots(n: usize) -> Result<Arc<Semaphore>, ConnectorError> {
    if n == 0 {
        return Err(ConnectorError::InvalidUri(
            "a concurrency limit must be at least 1".into(),
        ));
    }
    Ok(Arc::new(Semaphore::new(n)))
}

/// Puts every object under a fixed prefix.
#[derive(Debug)]
pub struct PrefixConnector<C: ?Sized = dyn Connector> {
    inner: Arc<C>,
    prefix: String,
}

impl<C: Connector + ?Sized> PrefixConnector<C> {
    /// `prefix` must be a safe relative path (no `..`, no leading `/`).
    pub fn new(inner: Arc<C>, prefix: &str) -> Result<Self, ConnectorError> {
        let prefix = prefix.trim_matches('/');
        check_object_path(prefix)?;
        Ok(Self {
            inner,
            prefix: prefix.to_string(),
        })
    }

    fn path(&self, path: &str) -> Result<String, ConnectorError> {
        check_object_path(path)?;
        Ok(format!("{}/{path}", self.prefix))
    }
}

#[async_trait]
impl<C: Connector + ?Sized> Connector for PrefixConnector<C> {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn min_chunk_size(&self, size: u64) -> u64 {
        self.inner.min_chunk_size(size)
    }
    async fn check(&self) -> Result<(), ConnectorError> {
        self.inner.check().await
    }
    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        self.inner.stat(&self.path(path)?).await
    }
    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        self.inner.read_back(&self.path(path)?).await
    }
    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        let mut spec = spec.clone();
        spec.path = self.path(&spec.path)?;
        self.inner.open(&spec, resume).await
    }
}

/// Limits how many chunk writes and read-backs are in flight at once.
#[derive(Debug)]
pub struct LimitConnector<C: ?Sized = dyn Connector> {
    inner: Arc<C>,
    slots: Arc<Semaphore>,
}

impl<C: Connector + ?Sized> LimitConnector<C> {
    /// At most `n` (at least 1) operations in flight.
    pub fn new(inner: Arc<C>, n: usize) -> Result<Self, ConnectorError> {
        Ok(Self {
            inner,
            slots: new_slots(n)?,
        })
    }
}

async fn slot(slots: &Semaphore) -> Result<tokio::sync::SemaphorePermit<'_>, ConnectorError> {
    slots
        .acquire()
        .await
        .map_err(|_| ConnectorError::Unavailable("connector closed".into()))
}

#[async_trait]
impl<C: Connector + ?Sized> Connector for LimitConnector<C> {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn min_chunk_size(&self, size: u64) -> u64 {
        self.inner.min_chunk_size(size)
    }
    async fn check(&self) -> Result<(), ConnectorError> {
        self.inner.check().await
    }
    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        self.inner.stat(path).await
    }
    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        let _slot = slot(&self.slots).await?;
        self.inner.read_back(path).await
    }
    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        Ok(Arc::new(LimitWriter {
            inner: self.inner.open(spec, resume).await?,
            slots: self.slots.clone(),
        }))
    }
}

struct LimitWriter {
    inner: Arc<dyn ObjectWriter>,
    slots: Arc<Semaphore>,
}

#[async_trait]
impl ObjectWriter for LimitWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        let _slot = slot(&self.slots).await?;
        self.inner.write_at(offset, data).await
    }
    async fn sync(&self) -> Result<(), ConnectorError> {
        self.inner.sync().await
    }
    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        self.inner.commit().await
    }
    async fn abort(&self) -> Result<(), ConnectorError> {
        self.inner.abort().await
    }
    async fn remove(&self) -> Result<(), ConnectorError> {
        self.inner.remove().await
    }
    fn holds_open(&self) -> bool {
        self.inner.holds_open()
    }
    async fn close(&self) -> Result<(), ConnectorError> {
        self.inner.close().await
    }
}

/// Limits the bytes written per second, across all objects of the connector.
pub struct ThrottledConnector<C: ?Sized = dyn Connector> {
    inner: Arc<C>,
    limiter: Arc<ByteRate>,
}

impl<C: Connector + ?Sized> std::fmt::Debug for ThrottledConnector<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottledConnector")
            .field("inner", &self.inner)
            .field("bytes_per_second", &self.limiter.rate())
            .finish()
    }
}

impl<C: Connector + ?Sized> ThrottledConnector<C> {
    /// At most `bytes_per_second` (at least 1 KiB/s) written.
    pub fn new(inner: Arc<C>, bytes_per_second: u64) -> Result<Self, ConnectorError> {
        Ok(Self {
            inner,
            limiter: Arc::new(ByteRate::new(bytes_per_second)?),
        })
    }
}

#[async_trait]
impl<C: Connector + ?Sized> Connector for ThrottledConnector<C> {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn min_chunk_size(&self, size: u64) -> u64 {
        self.inner.min_chunk_size(size)
    }
    async fn check(&self) -> Result<(), ConnectorError> {
        self.inner.check().await
    }
    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        self.inner.stat(path).await
    }
    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        self.inner.read_back(path).await
    }
    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        Ok(Arc::new(ThrottledWriter {
            inner: self.inner.open(spec, resume).await?,
            limiter: self.limiter.clone(),
        }))
    }
}

struct ThrottledWriter {
    inner: Arc<dyn ObjectWriter>,
    limiter: Arc<ByteRate>,
}

#[async_trait]
impl ObjectWriter for ThrottledWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.limiter.take(data.len() as u64).await;
        self.inner.write_at(offset, data).await
    }
    async fn sync(&self) -> Result<(), ConnectorError> {
        self.inner.sync().await
    }
    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        self.inner.commit().await
    }
    async fn abort(&self) -> Result<(), ConnectorError> {
        self.inner.abort().await
    }
    async fn remove(&self) -> Result<(), ConnectorError> {
        self.inner.remove().await
    }
    fn holds_open(&self) -> bool {
        self.inner.holds_open()
    }
    async fn close(&self) -> Result<(), ConnectorError> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests;
