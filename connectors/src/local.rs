//! Local-disk destination (`file:///DIR`).
//!
//! Each object is written to a temporary file beside its final name, named by
//! [`ObjectSpec::temp_name`] (one per tenant, job and path, in names no tenant file may
//! take) and marked with it ([`COMMIT_XATTR`], so a resumed job knows a file it renamed),
//! made durable on [`ObjectWriter::sync`], and on commit synced again if anything changed
//! since, size-checked, renamed into place and the rename made durable, so the final name
//! only ever shows a complete file. Syncs and commits requested side by side run in
//! batches, one blocking thread each (`batch.rs`): a batch with enough files on one
//! file system makes them durable with one `syncfs`, else each file gets its `fsync` and
//! each directory one `fsync` (`local/filesync.rs`). The rename never replaces an object the job did not create
//! (`renameat2(RENAME_NOREPLACE)`), unless the destination says `overwrite=true`.
//!
//! Every path is resolved at the moment of use beneath the directory the operator vouches
//! for (a tenant rule's prefix, see [`crate::Destination::trusted_segments`]), one
//! descriptor at a time with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no symbolic
//! link, `..` or rename a tenant makes moves a read or a write out of it, and a path that
//! would leave it is "not allowed" whether or not it exists.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use trackshift_crypto::IoError;

use async_trait::async_trait;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::beneath::{leaves, open_beneath};
use crate::{
    Connector, ConnectorError, Destination, ObjectSpec, ObjectWriter, Scheme, VerifyMode,
    check_object_path,
};

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ConnectorError + 'a {
    move |source| {
        ConnectorError::Io(IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConnectorError> + Send + 'static,
) -> Result<T, ConnectorError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Maps a resolution error of the tenant's relative path `rel`: leaving the directory
/// (a link, `..`, another mount) is "not allowed", without saying what is there.
fn resolve_err(action: &'static str, root: &Path, rel: &str, e: Errno) -> ConnectorError {
    match e {
        e if leaves(e) => ConnectorError::NotAllowed(format!(
            "{rel}: not allowed (the path leaves the destination directory or crosses a link)"
        )),
        e => ConnectorError::Io(IoError {
            action,
            path: root.join(rel),
            source: e.into(),
        }),
    }
}

/// Writes objects under a local directory.
#[derive(Debug, Clone)]
pub struct LocalConnector {
    uri: String,
    /// The directory the operator vouches for (opened as given, links and all).
    trusted: PathBuf,
    /// The rest of the destination directory, resolved beneath `trusted` ("" for none).
    sub: String,
    verify: VerifyMode,
    overwrite: bool,
    direct: bool,
    /// The blocking work its writers share.
    batches: Arc<Batches>,
}

/// A connector's blocking work, run in batches and shared by its writers: file syncs,
/// commits, and a few threads for opens and small writes.
#[derive(Debug)]
struct Batches {
    syncs: crate::batch::Batcher<filesync::FileSyncs>,
    commits: crate::batch::Batcher<writer::Commits>,
    pool: crate::batch::Batcher<crate::batch::Closures>,
}

/// Threads of a connector's pool for opens and small writes, and the most of them one
/// hand-off to a thread takes.
const POOL_THREADS: usize = 4;
const POOL_BATCH: usize = 16;

impl Batches {
    fn new() -> Arc<Self> {
        let fs = Arc::<filesync::SyncFs>::default();
        Arc::new(Self {
            syncs: crate::batch::Batcher::new(filesync::FileSyncs { fs: fs.clone() }),
            commits: crate::batch::Batcher::new(writer::Commits { fs }),
            pool: crate::batch::Batcher::with_threads(
                crate::batch::Closures,
                POOL_THREADS,
                POOL_BATCH,
            ),
        })
    }
}

impl LocalConnector {
    /// A connector rooted at the absolute directory `root`, all of it trusted (the
    /// operator's own configuration).
    pub fn new(root: &str) -> Result<Self, ConnectorError> {
        let path = PathBuf::from(root);
        if !path.is_absolute() {
            return Err(ConnectorError::InvalidUri(format!(
                "file:// destinations need an absolute path, got {root:?}"
            )));
        }
        Ok(Self {
            uri: format!("file://{root}"),
            trusted: path,
            sub: String::new(),
            verify: VerifyMode::Size,
            overwrite: false,
            direct: true,
            batches: Batches::new(),
        })
    }

    /// A connector for a parsed `file://` destination: the segments its rule vouches for
    /// are the trusted directory, the rest is resolved beneath it.
    pub fn at(dest: &Destination) -> Result<Self, ConnectorError> {
        if dest.scheme() != Scheme::File {
            return Err(ConnectorError::InvalidUri(format!(
                "not a file:// destination: {dest}"
            )));
        }
        let (trusted, sub) = dest.segments().split_at(dest.trusted_segments());
        Ok(Self {
            uri: dest.to_string(),
            trusted: PathBuf::from(format!("/{}", trusted.join("/"))),
            sub: sub.join("/"),
            verify: VerifyMode::Size,
            overwrite: dest.overwrite(),
            direct: true,
            batches: Batches::new(),
        })
    }

    /// The same connector with verification policy `verify` (any mode other than
    /// [`VerifyMode::Size`] reads each committed file back and hashes it with BLAKE3).
    pub fn with_verify(mut self, verify: VerifyMode) -> Self {
        self.verify = verify;
        self
    }

    /// The same connector, allowed (or not) to replace objects it did not create.
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// The same connector writing through the page cache only (`false`), or, where the
    /// data and its place allow, past it with `O_DIRECT` (`true`, the default): the
    /// aligned part of each write of at least [`DIRECT_MIN`] (the gateway's pooled chunk
    /// buffers are page aligned, and so are chunk offsets) goes straight to the disk, the
    /// unaligned rest (the tail of a file) and small writes through the page cache; a file
    /// system that refuses `O_DIRECT` gets every byte through the page cache. Durability
    /// is the same either way: `sync` is `fdatasync`.
    pub fn with_direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// The destination directory.
    pub fn root(&self) -> PathBuf {
        if self.sub.is_empty() {
            self.trusted.clone()
        } else {
            self.trusted.join(&self.sub)
        }
    }

    /// The destination directory, opened: the trusted part as the operator wrote it, the
    /// rest beneath it.
    fn open_root(&self) -> Result<OwnedFd, ConnectorError> {
        let unavailable = |e: std::io::Error| {
            ConnectorError::Unavailable(format!("{}: {e}", self.trusted.display()))
        };
        let top = rustix::fs::open(
            &self.trusted,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| unavailable(e.into()))?;
        if self.sub.is_empty() {
            return Ok(top);
        }
        open_beneath(
            &top,
            &self.sub,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => ConnectorError::Unavailable(format!(
                "{}: No such file or directory",
                self.root().display()
            )),
            e => resolve_err("opening", &self.trusted, &self.sub, e),
        })
    }

    /// The destination directory, opened, with what is missing beneath the trusted part
    /// created (one component at a time, never through a link): a job may name a
    /// directory that does not exist yet under the one its rule allows. The trusted part
    /// itself is not created: missing, it is a misconfiguration or an unmounted volume,
    /// and writing there would put data where the operator does not look.
    fn open_root_creating(&self) -> Result<OwnedFd, ConnectorError> {
        let top = rustix::fs::open(
            &self.trusted,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            ConnectorError::Unavailable(format!(
                "{}: {} (the directory the destination rule names must exist: create it, or check that its volume is mounted)",
                self.trusted.display(),
                std::io::Error::from(e)
            ))
        })?;
        let (dir, _) = self.parent_of(&top, &format!("{}/.", self.sub), true)?;
        Ok(dir)
    }

    /// The directory holding object `path` (created beneath the root if missing, one
    /// component at a time, never through a link), and the object's file name.
    fn parent_of<'p>(
        &self,
        root: &OwnedFd,
        path: &'p str,
        create: bool,
    ) -> Result<(OwnedFd, &'p str), ConnectorError> {
        let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut cur = rustix::io::dup(root).map_err(|e| io("opening", &self.root())(e.into()))?;
        let open = |cur: &OwnedFd, comp: &str| {
            open_beneath(cur, comp, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        };
        for comp in dirs.split('/').filter(|c| !c.is_empty()) {
            // Opened when it is there (the usual case: one call), made when it is not.
            let next = match open(&cur, comp) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(resolve_err("creating directory", &self.root(), dirs, e));
                        }
                    }
                    open(&cur, comp)
                }
                r => r,
            };
            cur = next.map_err(|e| resolve_err("opening directory", &self.root(), dirs, e))?;
        }
        Ok((cur, name))
    }
}

/// What is at `name` in `dir`, links not followed: `Some((is_regular_file, size))`.
fn stat_at(dir: &OwnedFd, name: &str) -> Result<Option<(bool, u64)>, Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((
            rustix::fs::FileType::from_raw_mode(st.st_mode).is_file(),
            st.st_size as u64,
        ))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Size and BLAKE3 of a file, read back from disk.
fn hash_file(f: File, path: &Path) -> Result<(u64, [u8; 32]), ConnectorError> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::io::BufReader::with_capacity(1 << 20, f))
        .map_err(io("reading back", path))?;
    Ok((h.count(), *h.finalize().as_bytes()))
}

/// The state file's content once a commit has begun: from then on a resumed job finding
/// no temporary file and a complete final one knows it renamed that file itself.
const COMMITTING: &[u8] = b"{\"local\":\"committing\"}\n";

fn write_state(path: &Path, bytes: &[u8]) -> Result<(), ConnectorError> {
    let tmp = path.with_extension("tmp");
    let f = File::create(&tmp).map_err(io("writing", &tmp))?;
    f.write_all_at(bytes, 0).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory", dir))?;
    }
    Ok(())
}

#[async_trait]
impl Connector for LocalConnector {
    fn uri(&self) -> &str {
        &self.uri
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        let this = self.clone();
        blocking(move || this.open_root().map(drop)).await
    }

    /// Creates the job's directories beneath the one its rule trusts.
    async fn prepare(&self) -> Result<(), ConnectorError> {
        let this = self.clone();
        blocking(move || this.open_root_creating().map(drop)).await
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        check_object_path(path)?;
        let (this, path) = (self.clone(), path.to_string());
        blocking(move || {
            let root = this.open_root()?;
            let (dir, name) = match this.parent_of(&root, &path, false) {
                Ok(p) => p,
                Err(ConnectorError::Io(IoError { source, .. }))
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            match stat_at(&dir, name) {
                Ok(Some((true, size))) => Ok(Some(size)),
                Ok(_) => Ok(None),
                Err(e) => Err(resolve_err("checking", &this.root(), &path, e)),
            }
        })
        .await
    }

    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        check_object_path(path)?;
        let (this, path) = (self.clone(), path.to_string());
        blocking(move || {
            let root = this.open_root()?;
            let full = this.root().join(&path);
            let f = open_beneath(&root, &path, OFlags::RDONLY, Mode::empty())
                .map_err(|e| resolve_err("reading back", &this.root(), &path, e))?;
            hash_file(File::from(f), &full)
        })
        .await
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
        let batches = self.batches.clone();
        let writer = batches
            .pool
            .call(move || {
                // The root must still exist: a vanished destination fails instead of being
                // silently re-created somewhere the operator no longer looks.
                let root = this.open_root()?;
                let (dir, name) = this.parent_of(&root, &spec.path, true)?;
                let name = name.to_string();
                let temp = spec.temp_name();
                let final_path = this.root().join(&spec.path);
                let temp_path = final_path.with_file_name(&temp);
                let stat = |n: &str| {
                    stat_at(&dir, n)
                        .map_err(|e| resolve_err("checking", &this.root(), &spec.path, e))
                };
                let temp_exists = stat(&temp)?.is_some();
                let existing = stat(&name)?;
                let dir = Arc::new(dir);
                let writer =
                    |file: Option<Arc<File>>, dev, opened, marker, committed| LocalWriter {
                        spec: spec.clone(),
                        final_path: final_path.clone(),
                        temp_path: temp_path.clone(),
                        name: name.clone(),
                        temp: temp.clone(),
                        dir: dir.clone(),
                        batches: this.batches.clone(),
                        direct: AtomicBool::new(this.direct),
                        dev,
                        opened,
                        file,
                        marker,
                        // Its creation (or whatever an earlier run left unsynced) is a change.
                        changes: AtomicU64::new(1),
                        synced: AtomicU64::new(0),
                        committed: AtomicBool::new(committed),
                        verify: this.verify,
                        overwrite: this.overwrite,
                    };
                if resume && !temp_exists && existing == Some((true, spec.size)) {
                    // A complete file and no temporary one: committed before an interruption
                    // when it carries this object's mark (or its state file says so).
                    let began_commit = writer::marked(&dir, &name, &temp)
                        || match &spec.state_file {
                            Some(p) => std::fs::read(p).is_ok_and(|b| b == COMMITTING),
                            // Without a state file (direct use), a complete file counts as ours.
                            None => true,
                        };
                    if began_commit {
                        return Ok(writer(None, 0, 0, writer::Marker::Xattr, true));
                    }
                }
                if existing.is_some() && !this.overwrite {
                    return Err(ConnectorError::Exists(spec.path.clone()));
                }
                let mut flags = OFlags::CREATE | OFlags::RDWR;
                if !resume {
                    flags |= OFlags::TRUNC;
                }
                // Before the file is opened, so before anything is written to it.
                let opened = filesync::next_opened();
                let fd = open_beneath(&dir, &temp, flags, Mode::from_raw_mode(0o644))
                    .map_err(|e| resolve_err("creating", &this.root(), &spec.path, e))?;
                let st =
                    rustix::fs::fstat(&fd).map_err(|e| io("checking", &temp_path)(e.into()))?;
                let file = File::from(fd);
                // A temporary file resumed as it was left changes nothing (sizing or marking it
                // again would make its next sync write its inode for nothing).
                let resumed = resume && temp_exists;
                let sized = resumed && u64::try_from(st.st_size).ok() == Some(spec.size);
                if !sized {
                    file.set_len(spec.size).map_err(io("sizing", &temp_path))?;
                }
                let marker = if resumed && writer::marked_file(&file, &temp) {
                    writer::Marker::Xattr
                } else {
                    writer::mark(&file, &temp, &temp_path)?
                };
                Ok(writer(
                    Some(Arc::new(file)),
                    st.st_dev,
                    opened,
                    marker,
                    false,
                ))
            })
            .await?;
        Ok(Arc::new(writer))
    }
}

mod filesync;
mod writer;
use writer::LocalWriter;

pub use writer::{COMMIT_XATTR, DIRECT_ALIGN};

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "local_batch_tests.rs"]
mod batch_tests;
