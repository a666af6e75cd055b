//! `null://`: a destination that discards data (benchmarks measure the engine alone).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Confirmation, Connector, ConnectorError, ObjectSpec, ObjectWriter};

/// Discards every byte; confirms the number of bytes it was given.
#[derive(Debug, Clone)]
pub struct NullConnector {
    uri: String,
}

impl NullConnector {
    /// A null connector for `uri`.
    pub fn new(uri: &str) -> Self {
        Self {
            uri: uri.to_string(),
        }
    }
}

#[async_trait]
impl Connector for NullConnector {
    fn uri(&self) -> &str {
        &self.uri
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn stat(&self, _path: &str) -> Result<Option<u64>, ConnectorError> {
        Ok(None)
    }

    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        Err(ConnectorError::Unsupported(format!(
            "{}: null:// keeps nothing to read back ({path})",
            self.uri
        )))
    }

    async fn open(
        &self,
        spec: &ObjectSpec,
        _resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        crate::check_object_path(&spec.path)?;
        Ok(Arc::new(NullWriter {
            spec: spec.clone(),
            written: AtomicU64::new(0),
        }))
    }
}

struct NullWriter {
    spec: ObjectSpec,
    written: AtomicU64,
}

#[async_trait]
impl ObjectWriter for NullWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        Ok(Confirmation {
            size: self.spec.size,
            etag: None,
            blake3: None,
        })
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn remove(&self) -> Result<(), ConnectorError> {
        // Nothing was kept.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Capabilities, Subject};

    struct Null;

    impl Subject for Null {
        fn name(&self) -> &str {
            "null"
        }
        fn connector(&self, _overwrite: bool, _verify: crate::VerifyMode) -> Arc<dyn Connector> {
            Arc::new(NullConnector::new("null://"))
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                discards: true,
                ..Capabilities::default()
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn null_keeps_what_of_the_contract_a_discarding_destination_can() {
        conformance::run_all(&Null).await;
    }
}
