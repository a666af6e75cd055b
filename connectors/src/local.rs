//! Local-disk destination (`file:///DIR`).
//!
//! Each object is written to a hidden temporary file beside its final name
//! (`.NAME.JOBID.tspart`), synced with `fdatasync` on [`ObjectWriter::sync`], and on commit
//! fully synced, size-checked, renamed into place and the directory synced, so the final
//! name only ever shows a complete file.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    Confirmation, Connector, ConnectorError, ObjectSpec, ObjectWriter, VerifyMode,
    check_object_path,
};

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ConnectorError + 'a {
    move |source| ConnectorError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConnectorError> + Send + 'static,
) -> Result<T, ConnectorError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Writes objects under a local directory.
#[derive(Debug, Clone)]
pub struct LocalConnector {
    uri: String,
    root: PathBuf,
    verify: VerifyMode,
}

impl LocalConnector {
    /// A connector rooted at the absolute directory `root` (the part after `file://`).
    pub fn new(root: &str) -> Result<Self, ConnectorError> {
        let path = PathBuf::from(root);
        if !path.is_absolute() {
            return Err(ConnectorError::InvalidUri(format!(
                "file:// destinations need an absolute path, got {root:?}"
            )));
        }
        Ok(Self {
            uri: format!("file://{root}"),
            root: path,
            verify: VerifyMode::Size,
        })
    }

    /// The same connector with verification policy `verify` (any mode other than
    /// [`VerifyMode::Size`] reads each committed file back and hashes it with BLAKE3).
    pub fn with_verify(mut self, verify: VerifyMode) -> Self {
        self.verify = verify;
        self
    }

    /// The destination directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn check_root(&self) -> Result<(), ConnectorError> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ConnectorError::Unavailable(format!(
                "{} is not a directory",
                self.root.display()
            ))),
            Err(e) => Err(ConnectorError::Unavailable(format!(
                "{}: {e}",
                self.root.display()
            ))),
        }
    }
}

/// Size and BLAKE3 of a file, read back from disk.
fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), ConnectorError> {
    let f = File::open(path).map_err(io("reading back", path))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(std::io::BufReader::with_capacity(1 << 20, f))
        .map_err(io("reading back", path))?;
    Ok((h.count(), *h.finalize().as_bytes()))
}

/// Temporary name of `final_path` while `job_id` writes it.
fn temp_path(final_path: &Path, job_id: &str) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.{job_id}.tspart"))
}

#[async_trait]
impl Connector for LocalConnector {
    fn uri(&self) -> &str {
        &self.uri
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        let this = self.clone();
        blocking(move || this.check_root()).await
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        check_object_path(path)?;
        let p = self.root.join(path);
        blocking(move || match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("checking", &p)(e)),
        })
        .await
    }

    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        check_object_path(path)?;
        let p = self.root.join(path);
        blocking(move || hash_file(&p)).await
    }

    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        check_object_path(&spec.path)?;
        check_object_path(&spec.job_id)?;
        let this = self.clone();
        let spec = spec.clone();
        let writer = blocking(move || {
            // The root must still exist: a vanished destination fails instead of being
            // silently re-created somewhere the operator no longer looks.
            this.check_root()?;
            let final_path = this.root.join(&spec.path);
            let temp = temp_path(&final_path, &spec.job_id);
            let parent = final_path.parent().expect("joined path has a parent");
            fs::create_dir_all(parent).map_err(io("creating directory", parent))?;
            if resume
                && !temp.exists()
                && let Ok(m) = fs::metadata(&final_path)
                && m.is_file()
                && m.len() == spec.size
            {
                // Committed before an interruption: nothing left to write.
                return Ok(LocalWriter {
                    spec,
                    final_path,
                    temp,
                    file: None,
                    committed: AtomicBool::new(true),
                    verify: this.verify,
                });
            }
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(!resume)
                .open(&temp)
                .map_err(io("creating", &temp))?;
            file.set_len(spec.size).map_err(io("sizing", &temp))?;
            Ok(LocalWriter {
                spec,
                final_path,
                temp,
                file: Some(Arc::new(file)),
                committed: AtomicBool::new(false),
                verify: this.verify,
            })
        })
        .await?;
        Ok(Arc::new(writer))
    }
}

struct LocalWriter {
    spec: ObjectSpec,
    final_path: PathBuf,
    temp: PathBuf,
    file: Option<Arc<File>>,
    committed: AtomicBool,
    verify: VerifyMode,
}

impl LocalWriter {
    fn file(&self) -> Result<Arc<File>, ConnectorError> {
        match &self.file {
            Some(f) if !self.committed.load(Ordering::Acquire) => Ok(f.clone()),
            _ => Err(ConnectorError::Unavailable(format!(
                "{} is already committed",
                self.spec.path
            ))),
        }
    }

    fn confirm(
        final_path: &Path,
        spec: &ObjectSpec,
        verify: VerifyMode,
    ) -> Result<Confirmation, ConnectorError> {
        let m = fs::metadata(final_path).map_err(io("checking", final_path))?;
        spec.check_size(m.len())?;
        let blake3 = if verify == VerifyMode::Size {
            None
        } else {
            Some(hash_file(final_path)?.1)
        };
        Ok(Confirmation {
            size: m.len(),
            etag: None,
            blake3,
        })
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        let file = self.file()?;
        let temp = self.temp.clone();
        blocking(move || {
            file.write_all_at(&data, offset)
                .map_err(io("writing", &temp))
        })
        .await
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        if self.committed.load(Ordering::Acquire) {
            return Ok(());
        }
        let file = self.file()?;
        let temp = self.temp.clone();
        blocking(move || file.sync_data().map_err(io("syncing", &temp))).await
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        if self.committed.load(Ordering::Acquire) {
            let (p, s, v) = (self.final_path.clone(), self.spec.clone(), self.verify);
            return blocking(move || Self::confirm(&p, &s, v)).await;
        }
        let file = self.file()?;
        let (temp, final_path, spec, verify) = (
            self.temp.clone(),
            self.final_path.clone(),
            self.spec.clone(),
            self.verify,
        );
        let conf = blocking(move || {
            file.sync_all().map_err(io("syncing", &temp))?;
            let len = file.metadata().map_err(io("checking", &temp))?.len();
            spec.check_size(len)?;
            fs::rename(&temp, &final_path).map_err(io("renaming into place", &final_path))?;
            let dir = final_path.parent().expect("has parent");
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing directory", dir))?;
            Self::confirm(&final_path, &spec, verify)
        })
        .await?;
        self.committed.store(true, Ordering::Release);
        Ok(conf)
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        if self.committed.load(Ordering::Acquire) {
            return Ok(());
        }
        let temp = self.temp.clone();
        blocking(move || match fs::remove_file(&temp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &temp)(e)),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, size: u64) -> ObjectSpec {
        ObjectSpec {
            job_id: "job-1".into(),
            path: path.into(),
            size,
            chunk_size: 1 << 20,
            state_file: None,
        }
    }

    fn connector(dir: &Path) -> LocalConnector {
        LocalConnector::new(dir.to_str().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn writes_out_of_order_and_publishes_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let c = connector(dir.path());
        c.check().await.unwrap();
        let w = c.open(&spec("a/b.bin", 10), false).await.unwrap();
        w.write_at(5, Bytes::from_static(b"world")).await.unwrap();
        w.write_at(0, Bytes::from_static(b"hello")).await.unwrap();
        w.sync().await.unwrap();
        let final_path = dir.path().join("a/b.bin");
        assert!(!final_path.exists(), "no partial file under the final name");
        assert!(dir.path().join("a/.b.bin.job-1.tspart").exists());
        let conf = w.commit().await.unwrap();
        assert_eq!(conf.size, 10);
        assert_eq!(fs::read(&final_path).unwrap(), b"helloworld");
        assert!(!dir.path().join("a/.b.bin.job-1.tspart").exists());
        // Idempotent.
        assert_eq!(w.commit().await.unwrap().size, 10);
        assert!(w.write_at(0, Bytes::from_static(b"x")).await.is_err());
    }

    #[tokio::test]
    async fn resume_keeps_synced_data_and_fresh_open_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let c = connector(dir.path());
        let w = c.open(&spec("f", 4), false).await.unwrap();
        w.write_at(0, Bytes::from_static(b"ab")).await.unwrap();
        w.sync().await.unwrap();
        drop(w);
        let w = c.open(&spec("f", 4), true).await.unwrap();
        w.write_at(2, Bytes::from_static(b"cd")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"abcd");
        // Reopening a committed object for resume confirms it without rewriting.
        let w = c.open(&spec("f", 4), true).await.unwrap();
        assert_eq!(w.commit().await.unwrap().size, 4);
        // A fresh (non-resume) open starts from zero.
        let w = c.open(&spec("g", 2), false).await.unwrap();
        w.write_at(0, Bytes::from_static(b"zz")).await.unwrap();
        drop(w);
        let w = c.open(&spec("g", 2), false).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(fs::read(dir.path().join("g")).unwrap(), b"\0\0");
    }

    #[tokio::test]
    async fn refuses_out_of_range_writes_and_bad_paths() {
        let dir = tempfile::tempdir().unwrap();
        let c = connector(dir.path());
        let w = c.open(&spec("f", 4), false).await.unwrap();
        assert!(matches!(
            w.write_at(2, Bytes::from_static(b"abc")).await,
            Err(ConnectorError::OutOfRange { .. })
        ));
        assert!(matches!(
            w.write_at(u64::MAX, Bytes::from_static(b"a")).await,
            Err(ConnectorError::OutOfRange { .. })
        ));
        for bad in ["../escape", "/abs", "a/../../b"] {
            assert!(matches!(
                c.open(&spec(bad, 1), false).await,
                Err(ConnectorError::InvalidPath(_))
            ));
        }
        w.abort().await.unwrap();
        assert!(!dir.path().join(".f.job-1.tspart").exists());
    }

    #[tokio::test]
    async fn vanished_destination_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dest");
        fs::create_dir(&root).unwrap();
        let c = connector(&root);
        c.check().await.unwrap();
        fs::remove_dir(&root).unwrap();
        let e = c.check().await.unwrap_err();
        assert!(matches!(e, ConnectorError::Unavailable(_)));
        assert!(e.to_string().contains("dest"), "{e}");
        assert!(c.open(&spec("f", 1), false).await.is_err());
        assert!(!root.exists(), "the destination is not silently re-created");
    }

    #[tokio::test]
    async fn full_disk_is_reported_not_swallowed() {
        // /dev/full fails every write with ENOSPC.
        if !Path::new("/dev/full").exists() {
            return;
        }
        let file = Arc::new(OpenOptions::new().write(true).open("/dev/full").unwrap());
        let w = LocalWriter {
            spec: spec("full", 4),
            final_path: PathBuf::from("/nonexistent/full"),
            temp: PathBuf::from("/dev/full"),
            file: Some(file),
            committed: AtomicBool::new(false),
            verify: VerifyMode::Size,
        };
        let e = w
            .write_at(0, Bytes::from_static(b"data"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
        assert!(!e.is_transient());
    }
}
