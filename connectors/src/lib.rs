//! Trackshift destinations ("connectors").
//!
//! A connector is addressed by a URI (`file:///srv/data`, `null://`) and hands out one
//! [`ObjectWriter`] per file of a job. The engine writes verified chunks at their offsets,
//! calls [`ObjectWriter::sync`] before it acknowledges them (so an acknowledged chunk is
//! durable), and [`ObjectWriter::commit`] once every chunk of the file is in: only then does
//! the object appear under its final name, and the connector reports what the destination
//! confirmed ([`Confirmation`]).
//!
//! Invariants every connector keeps:
//! - No reader ever sees a partial object under the final name.
//! - Reopening an object with `resume = true` keeps every byte already synced.
//! - Errors are typed ([`ConnectorError`]) and never contain credentials.

mod error;
mod local;
mod null;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::ConnectorError;
pub use local::LocalConnector;
pub use null::NullConnector;

/// The object a job writes: one file of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// Job the object belongs to (keeps temporary names of concurrent jobs apart).
    pub job_id: String,
    /// Relative `/`-separated path of the file inside the destination.
    pub path: String,
    /// Final size in bytes.
    pub size: u64,
}

impl ObjectSpec {
    /// Refuses a write of `len` bytes at `offset` that would reach past the object's size.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), ConnectorError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(ConnectorError::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }
}

/// What a destination confirmed about a committed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// Size the destination reports for the object.
    pub size: u64,
    /// Entity tag or version the destination assigned, where it has one.
    pub etag: Option<String>,
}

/// A destination.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// The URI this connector was created from (no credentials).
    fn uri(&self) -> &str;
    /// Checks the destination is reachable and writable; called when a job opens.
    async fn check(&self) -> Result<(), ConnectorError>;
    /// Opens (or, with `resume`, reopens keeping synced data) the object for `spec`.
    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError>;
}

/// Writes one object.
#[async_trait]
pub trait ObjectWriter: Send + Sync {
    /// Writes `data` at `offset`. Chunks may arrive in any order.
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError>;
    /// Makes every completed `write_at` durable.
    async fn sync(&self) -> Result<(), ConnectorError>;
    /// Publishes the complete object under its final name and reports the confirmation.
    /// Idempotent: committing an already committed object confirms it again.
    async fn commit(&self) -> Result<Confirmation, ConnectorError>;
    /// Discards the partial object.
    async fn abort(&self) -> Result<(), ConnectorError>;
}

/// Creates the connector for a destination URI.
///
/// Supported: `file:///ABSOLUTE/DIR` (local disk) and `null://` (discards data; for
/// benchmarks).
pub fn from_uri(uri: &str) -> Result<Arc<dyn Connector>, ConnectorError> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Arc::new(LocalConnector::new(path)?));
    }
    if uri == "null://" || uri.starts_with("null://") {
        return Ok(Arc::new(NullConnector::new(uri)));
    }
    let scheme = uri.split_once("://").map_or("", |(s, _)| s);
    Err(ConnectorError::InvalidUri(format!(
        "unsupported destination scheme {scheme:?} (supported: file://, null://)"
    )))
}

/// Checks that `path` is a safe relative object path: `/`-separated, no empty, `.` or `..`
/// components, no NUL or backslash.
pub fn check_object_path(path: &str) -> Result<(), ConnectorError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path.contains('\\')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(ConnectorError::InvalidPath(path.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert!(from_uri("file:///tmp").is_ok());
        assert!(from_uri("null://").is_ok());
        assert!(matches!(
            from_uri("gopher://x"),
            Err(ConnectorError::InvalidUri(_))
        ));
        assert!(matches!(
            from_uri("file://relative/dir"),
            Err(ConnectorError::InvalidUri(_))
        ));
    }

    #[test]
    fn object_paths() {
        for ok in ["a", "a/b.txt", "x/y/z"] {
            check_object_path(ok).unwrap();
        }
        for bad in ["", "/a", "a//b", "a/../b", "./a", "a\\b", "a/\0", ".."] {
            assert!(check_object_path(bad).is_err(), "{bad:?}");
        }
    }
}
