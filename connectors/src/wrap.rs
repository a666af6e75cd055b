//! Wrappers that apply to any connector, in the style of object_store's `PrefixStore`,
//! `LimitStore` and `ThrottledStore`:
//!
//! - [`PrefixConnector`]: every object under a fixed sub-path (a tenant's prefix), so a job
//!   can never name an object outside it;
//! - [`LimitConnector`]: at most N chunk writes (and read-backs) in flight across all objects;
//! - [`ThrottledConnector`]: at most a given number of bytes per second written (GCRA rate
//!   limiter from `governor`), shared by all objects.
//!
//! The last two are one wrapper, [`Gated`], over the [`Gate`] a write passes (a slot, rate
//! tokens): the delegation of every other method is written once.
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
    slots: Option<Arc<Slots>>,
    rate: Option<Arc<ByteRate>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("prefix", &self.prefix)
            .field(
                "slots",
                &self.slots.as_ref().map(|s| s.0.available_permits()),
            )
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
                gate: limiter.clone(),
            });
        }
        if let Some(slots) = &self.slots {
            c = Arc::new(LimitConnector {
                inner: c,
                gate: slots.clone(),
            });
        }
        Ok(c)
    }
}

fn new_slots(n: usize) -> Result<Arc<Slots>, ConnectorError> {
    if n == 0 {
        return Err(ConnectorError::InvalidUri(
            "a concurrency limit must be at least 1".into(),
        ));
    }
    Ok(Arc::new(Slots(Semaphore::new(n))))
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
    async fn prepare(&self) -> Result<(), ConnectorError> {
        self.inner.prepare().await
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

/// What a gated wrapper waits for before a chunk write of `bytes` bytes (and, if the gate
/// says so, before a read-back): a concurrency slot, or rate tokens. The one thing in which
/// [`LimitConnector`] and [`ThrottledConnector`] differ; everything else is delegated once,
/// by [`Gated`] and its writer.
#[async_trait]
pub trait Gate: Send + Sync + std::fmt::Debug + 'static {
    /// Held for the duration of the operation (a semaphore permit; nothing for a rate).
    type Pass<'a>: Send
    where
        Self: 'a;
    /// Whether read-backs pass the gate too.
    const GATES_READS: bool;
    /// Waits until an operation of `bytes` bytes may go.
    async fn pass(&self, bytes: u64) -> Result<Self::Pass<'_>, ConnectorError>;
}

/// At most N operations in flight (the gate of [`LimitConnector`]).
#[derive(Debug)]
pub struct Slots(Semaphore);

#[async_trait]
impl Gate for Slots {
    type Pass<'a> = tokio::sync::SemaphorePermit<'a>;
    const GATES_READS: bool = true;
    async fn pass(&self, _bytes: u64) -> Result<Self::Pass<'_>, ConnectorError> {
        self.0
            .acquire()
            .await
            .map_err(|_| ConnectorError::Unavailable("connector closed".into()))
    }
}

#[async_trait]
impl Gate for ByteRate {
    type Pass<'a> = ();
    const GATES_READS: bool = false;
    async fn pass(&self, bytes: u64) -> Result<(), ConnectorError> {
        self.take(bytes).await;
        Ok(())
    }
}

/// A connector whose chunk writes (and, for some gates, read-backs) pass a [`Gate`]
/// shared by all its objects: [`LimitConnector`], [`ThrottledConnector`].
#[derive(Debug)]
pub struct Gated<G: Gate, C: ?Sized = dyn Connector> {
    inner: Arc<C>,
    gate: Arc<G>,
}

/// Limits how many chunk writes and read-backs are in flight at once.
pub type LimitConnector<C = dyn Connector> = Gated<Slots, C>;

/// Limits the bytes written per second, across all objects of the connector.
pub type ThrottledConnector<C = dyn Connector> = Gated<ByteRate, C>;

impl<C: Connector + ?Sized> Gated<Slots, C> {
    /// At most `n` (at least 1) operations in flight.
    pub fn new(inner: Arc<C>, n: usize) -> Result<Self, ConnectorError> {
        Ok(Self {
            inner,
            gate: new_slots(n)?,
        })
    }
}

impl<C: Connector + ?Sized> Gated<ByteRate, C> {
    /// At most `bytes_per_second` (at least 1 KiB/s) written.
    pub fn new(inner: Arc<C>, bytes_per_second: u64) -> Result<Self, ConnectorError> {
        Ok(Self {
            inner,
            gate: Arc::new(ByteRate::new(bytes_per_second)?),
        })
    }
}

#[async_trait]
impl<G: Gate, C: Connector + ?Sized> Connector for Gated<G, C> {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn min_chunk_size(&self, size: u64) -> u64 {
        self.inner.min_chunk_size(size)
    }
    async fn check(&self) -> Result<(), ConnectorError> {
        self.inner.check().await
    }
    async fn prepare(&self) -> Result<(), ConnectorError> {
        self.inner.prepare().await
    }
    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        self.inner.stat(path).await
    }
    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        let _pass = if G::GATES_READS {
            Some(self.gate.pass(0).await?)
        } else {
            None
        };
        self.inner.read_back(path).await
    }
    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        Ok(Arc::new(GatedWriter {
            inner: self.inner.open(spec, resume).await?,
            gate: self.gate.clone(),
        }))
    }
}

struct GatedWriter<G> {
    inner: Arc<dyn ObjectWriter>,
    gate: Arc<G>,
}

#[async_trait]
impl<G: Gate> ObjectWriter for GatedWriter<G> {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        let _pass = self.gate.pass(data.len() as u64).await?;
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
