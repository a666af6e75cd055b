//! An in-memory destination, in the manner of object_store's `InMemory`: it keeps every
//! promise of the [`Connector`] contract (create-only commits, resume of synced data, a
//! `remove` that takes back only its own commit, read-back hashes), so tests of the engine
//! and of wrappers run the conformance suite without a server or a disk.
//!
//! It has no URI scheme a job could name: it is built in code ([`MemoryConnector::new`]),
//! and what it holds is gone with the process. Connectors cloned from one share its
//! objects, as two gateways share one bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use trackshift_crypto::IoError;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Confirmation, Connector, ConnectorError, ObjectSpec, ObjectWriter, VerifyMode};

/// A committed object: its bytes and which commit put it there.
#[derive(Debug)]
struct Object {
    data: Bytes,
    generation: u64,
}

/// What every connector cloned from one [`MemoryConnector::new`] sees.
#[derive(Debug, Default)]
struct Shelf {
    objects: HashMap<String, Object>,
    /// Partial objects by (path, temporary name): one per tenant, job and path.
    partial: HashMap<(String, String), Vec<u8>>,
    commits: u64,
}

/// Objects in memory (see the module documentation).
#[derive(Debug, Clone)]
pub struct MemoryConnector {
    shelf: Arc<Mutex<Shelf>>,
    overwrite: bool,
    verify: VerifyMode,
}

impl Default for MemoryConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryConnector {
    /// An empty store: create-only commits, size verification.
    pub fn new() -> Self {
        Self {
            shelf: Arc::default(),
            overwrite: false,
            verify: VerifyMode::Size,
        }
    }

    /// The same objects, with commits that replace an existing object (`overwrite=true`).
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// The same objects, confirming content as `verify` asks (a read-back hash for
    /// [`VerifyMode::Strict`] and [`VerifyMode::Full`]).
    pub fn with_verify(mut self, verify: VerifyMode) -> Self {
        self.verify = verify;
        self
    }

    /// The committed objects' paths, sorted (what a listing of the bucket would show).
    pub fn paths(&self) -> Vec<String> {
        let mut v: Vec<_> = self.shelf().objects.keys().cloned().collect();
        v.sort();
        v
    }

    /// How many partial objects (opened, neither committed nor discarded) it holds.
    pub fn partial_count(&self) -> usize {
        self.shelf().partial.len()
    }

    fn shelf(&self) -> std::sync::MutexGuard<'_, Shelf> {
        self.shelf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Connector for MemoryConnector {
    fn uri(&self) -> &str {
        "memory://"
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        crate::check_object_path(path)?;
        Ok(self.shelf().objects.get(path).map(|o| o.data.len() as u64))
    }

    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        crate::check_object_path(path)?;
        let data = self
            .shelf()
            .objects
            .get(path)
            .map(|o| o.data.clone())
            .ok_or_else(|| missing("reading back", path))?;
        Ok((data.len() as u64, *blake3::hash(&data).as_bytes()))
    }

    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        crate::check_object_path(&spec.path)?;
        let key = (spec.path.clone(), spec.temp_name());
        let mut shelf = self.shelf();
        if !self.overwrite && !resume && shelf.objects.contains_key(&spec.path) {
            return Err(ConnectorError::Exists(spec.path.clone()));
        }
        match shelf.partial.get_mut(&key) {
            Some(p) if !resume => p.clear(),
            Some(_) => {}
            None => {
                shelf.partial.insert(key.clone(), Vec::new());
            }
        }
        Ok(Arc::new(MemoryWriter {
            connector: self.clone(),
            spec: spec.clone(),
            key,
            committed: Mutex::new(None),
        }))
    }
}

/// The error for an object (or partial object) that is not there.
fn missing(action: &'static str, path: &str) -> ConnectorError {
    ConnectorError::Io(IoError {
        action,
        path: format!("memory://{path}").into(),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

/// One object being written: its bytes live in the shared shelf, so a writer dropped
/// without commit leaves them for a resumed one.
struct MemoryWriter {
    connector: MemoryConnector,
    spec: ObjectSpec,
    key: (String, String),
    /// The generation and confirmation of this writer's commit.
    committed: Mutex<Option<(u64, Confirmation)>>,
}

impl MemoryWriter {
    fn committed(&self) -> std::sync::MutexGuard<'_, Option<(u64, Confirmation)>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gone(&self) -> ConnectorError {
        missing("writing to the partial object of", &self.spec.path)
    }
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        let mut shelf = self.connector.shelf();
        let partial = shelf
            .partial
            .get_mut(&self.key)
            .ok_or_else(|| self.gone())?;
        let (start, end) = (offset as usize, offset as usize + data.len());
        if partial.len() < end {
            partial.resize(end, 0);
        }
        partial[start..end].copy_from_slice(&data);
        Ok(())
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        if let Some((_, conf)) = self.committed().as_ref() {
            return Ok(conf.clone());
        }
        let mut shelf = self.connector.shelf();
        let partial = shelf.partial.get(&self.key).ok_or_else(|| self.gone())?;
        self.spec.check_size(partial.len() as u64)?;
        if !self.connector.overwrite && shelf.objects.contains_key(&self.spec.path) {
            return Err(ConnectorError::Exists(self.spec.path.clone()));
        }
        let data = Bytes::from(shelf.partial.remove(&self.key).unwrap_or_default());
        shelf.commits += 1;
        let generation = shelf.commits;
        let blake3 =
            (self.connector.verify != VerifyMode::Size).then(|| *blake3::hash(&data).as_bytes());
        let conf = Confirmation {
            size: data.len() as u64,
            etag: Some(generation.to_string()),
            blake3,
        };
        shelf
            .objects
            .insert(self.spec.path.clone(), Object { data, generation });
        *self.committed() = Some((generation, conf.clone()));
        Ok(conf)
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        self.connector.shelf().partial.remove(&self.key);
        Ok(())
    }

    async fn remove(&self) -> Result<(), ConnectorError> {
        let mine = self.committed().as_ref().map(|(g, _)| *g);
        let mut shelf = self.connector.shelf();
        shelf.partial.remove(&self.key);
        if let Some(g) = mine
            && shelf
                .objects
                .get(&self.spec.path)
                .is_some_and(|o| o.generation == g)
        {
            shelf.objects.remove(&self.spec.path);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Capabilities, Subject};

    /// Every subject's connectors share one store.
    #[derive(Debug, Default)]
    struct Memory(MemoryConnector);

    impl Subject for Memory {
        fn name(&self) -> &str {
            "memory"
        }
        fn connector(&self, overwrite: bool, verify: VerifyMode) -> Arc<dyn Connector> {
            Arc::new(self.0.clone().with_overwrite(overwrite).with_verify(verify))
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
    }

    #[tokio::test]
    async fn the_in_memory_connector_keeps_the_whole_contract() {
        let m = Memory::default();
        conformance::run_all(&m).await;
        // What the suite left: its committed objects, and no partial object but the ones it
        // left on purpose (none).
        assert!(m.0.paths().contains(&"small.txt".to_string()));
        assert_eq!(m.0.partial_count(), 0, "partial objects left behind");
    }
}
