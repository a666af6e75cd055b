//! The local-disk writer: one object's temporary file, written at offsets (the aligned
//! part of a large write past the page cache with `O_DIRECT`), synced, then committed by
//! rename (see the parent module for the rules).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::filesync::{SyncFs, SyncOp};
use super::{COMMITTING, blocking, hash_file, io, write_state};
use crate::batch::Batch;
use crate::beneath::open_beneath;
use crate::{Confirmation, ConnectorError, ObjectSpec, ObjectWriter, VerifyMode};

/// Alignment of memory, offset and length a write needs to go past the page cache
/// (`O_DIRECT`): the page size, a multiple of every logical block size in use.
pub const DIRECT_ALIGN: usize = 4096;

/// Writes with less than this aligned go through the page cache: a small file's one write
/// would wait for the disk on its own, where the page cache lets many be flushed together.
pub const DIRECT_MIN: usize = 256 << 10;

/// One object being written: its temporary file beside the final name, committed by
/// rename.
pub(super) struct LocalWriter {
    pub(super) spec: ObjectSpec,
    pub(super) final_path: PathBuf,
    pub(super) temp_path: PathBuf,
    /// File names inside `dir`.
    pub(super) name: String,
    pub(super) temp: String,
    /// The object's directory, resolved once beneath the root.
    pub(super) dir: Arc<OwnedFd>,
    /// The connector's syncs, commits and threads for small writes.
    pub(super) batches: Arc<super::Batches>,
    pub(super) file: Option<Arc<File>>,
    /// The file's file system (`st_dev`) and place in the order files were opened
    /// (see [`SyncOp`]).
    pub(super) dev: u64,
    pub(super) opened: u64,
    /// How a resumed job will know this object's commit began (see [`Marker`]).
    pub(super) marker: Marker,
    /// Changes made to the file (its creation counts as one), and how many of them the
    /// last completed sync covered: a commit syncs again only when they differ.
    pub(super) changes: AtomicU64,
    pub(super) synced: AtomicU64,
    /// Whether large aligned writes go with `O_DIRECT` (cleared when the file system
    /// refuses it).
    pub(super) direct: AtomicBool,
    pub(super) committed: AtomicBool,
    pub(super) verify: VerifyMode,
    pub(super) overwrite: bool,
}

/// The extended attribute a temporary file carries from its creation, naming it (its
/// [`ObjectSpec::temp_name`]): kept through the rename, it tells a resumed job that a
/// complete file under the final name is the one it renamed there, with no file of its own.
pub const COMMIT_XATTR: &str = "user.trackshift.temp";

/// How a resumed job recognises a file it committed itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marker {
    /// The file carries [`COMMIT_XATTR`] (set when it was created, synced with its data).
    Xattr,
    /// The file system keeps no user attributes: the object's state file says
    /// "committing" (written and synced before the rename).
    StateFile,
}

/// Marks the new temporary file `file` as `temp`: [`Marker::Xattr`], or
/// [`Marker::StateFile`] where the file system keeps no user attributes.
pub(super) fn mark(file: &File, temp: &str, temp_path: &Path) -> Result<Marker, ConnectorError> {
    match rustix::fs::fsetxattr(
        file,
        COMMIT_XATTR,
        temp.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) => Ok(Marker::Xattr),
        Err(Errno::OPNOTSUPP | Errno::PERM) => Ok(Marker::StateFile),
        Err(e) => Err(io("marking", temp_path)(e.into())),
    }
}

/// Whether the file `name` in `dir` carries the mark of temporary file `temp`.
pub(super) fn marked(dir: &OwnedFd, name: &str, temp: &str) -> bool {
    open_beneath(dir, name, OFlags::RDONLY, Mode::empty()).is_ok_and(|fd| marked_file(&fd, temp))
}

/// Whether `file` carries the mark of temporary file `temp`.
pub(super) fn marked_file(file: impl std::os::fd::AsFd, temp: &str) -> bool {
    let mut value = [0u8; 64];
    matches!(
        rustix::fs::fgetxattr(file, COMMIT_XATTR, &mut value[..]),
        Ok(n) if &value[..n] == temp.as_bytes()
    )
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
        dir: &OwnedFd,
        name: &str,
        final_path: &Path,
        spec: &ObjectSpec,
        verify: VerifyMode,
    ) -> Result<Confirmation, ConnectorError> {
        let fd = open_beneath(dir, name, OFlags::RDONLY, Mode::empty())
            .map_err(|e| io("checking", final_path)(e.into()))?;
        let f = File::from(fd);
        let len = f.metadata().map_err(io("checking", final_path))?.len();
        spec.check_size(len)?;
        let blake3 = if verify == VerifyMode::Size {
            None
        } else {
            Some(hash_file(f, final_path)?.1)
        };
        Ok(Confirmation {
            size: len,
            etag: None,
            blake3,
        })
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    fn holds_open(&self) -> bool {
        // The object's directory, and the temporary file until committed.
        true
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        let file = self.file()?;
        let direct = self.direct.load(Ordering::Relaxed);
        let temp = self.temp_path.clone();
        let small = data.len() < DIRECT_MIN;
        let write = move || {
            let mut done = direct_part(offset, &data);
            let mut refused = false;
            if !direct || done < DIRECT_MIN {
                done = 0;
            }
            if done > 0 {
                // A descriptor of its own for the write, closed after it: a writer holds
                // no more descriptors than without `O_DIRECT`.
                match reopen_direct(&file) {
                    Some(d) => match d.write_all_at(&data[..done], offset) {
                        Ok(()) => {}
                        // Refused for this write after all (alignment the device wants
                        // larger than a page): through the page cache instead.
                        Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
                            done = 0;
                            refused = true;
                        }
                        Err(e) => return Err(io("writing", &temp)(e)),
                    },
                    None => {
                        done = 0;
                        refused = true;
                    }
                }
            }
            file.write_all_at(&data[done..], offset + done as u64)
                .map_err(io("writing", &temp))?;
            Ok(refused)
        };
        // A small write (a small file's whole content) with the others beside it on the
        // connector's few threads; a large one on a thread of its own.
        let refused = if small {
            self.batches.pool.call(write).await?
        } else {
            blocking(write).await?
        };
        self.changes.fetch_add(1, Ordering::AcqRel);
        if refused {
            self.direct.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        if self.committed.load(Ordering::Acquire) {
            return Ok(());
        }
        let op = SyncOp {
            file: self.file()?,
            path: self.temp_path.clone(),
            dev: self.dev,
            opened: self.opened,
        };
        // What this sync covers: every change made before it starts.
        let changes = self.changes.load(Ordering::Acquire);
        // With the syncs beside it: `syncfs` or `fsync`, not `fdatasync`: the file's mark
        // (an attribute) becomes durable with its data, so its commit needs no sync of its
        // own.
        self.batches.syncs.run(op).await?;
        self.synced.fetch_max(changes, Ordering::AcqRel);
        Ok(())
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        let dir = self.dir.clone();
        let (name, final_path, spec, verify) = (
            self.name.clone(),
            self.final_path.clone(),
            self.spec.clone(),
            self.verify,
        );
        if self.committed.load(Ordering::Acquire) {
            return blocking(move || Self::confirm(&dir, &name, &final_path, &spec, verify)).await;
        }
        let op = CommitOp {
            file: self.file()?,
            dir,
            temp: self.temp.clone(),
            temp_path: self.temp_path.clone(),
            name,
            final_path,
            spec,
            verify,
            overwrite: self.overwrite,
            clean: self.synced.load(Ordering::Acquire) == self.changes.load(Ordering::Acquire),
            marker: self.marker,
            dev: self.dev,
            opened: self.opened,
        };
        // With the commits beside it (see [`Commits`]).
        let conf = self.batches.commits.run(op).await?;
        self.committed.store(true, Ordering::Release);
        Ok(conf)
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        if self.committed.load(Ordering::Acquire) {
            return Ok(());
        }
        let (dir, temp, temp_path) = (self.dir.clone(), self.temp.clone(), self.temp_path.clone());
        blocking(
            move || match rustix::fs::unlinkat(&*dir, &temp, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(io("removing", &temp_path)(e.into())),
            },
        )
        .await
    }

    async fn remove(&self) -> Result<(), ConnectorError> {
        if !self.committed.load(Ordering::Acquire) {
            return self.abort().await;
        }
        // Only this writer's own commit is removed: the name was free when it renamed
        // the file there (or overwrite was allowed), and nothing else replaces it.
        let (dir, name, final_path) =
            (self.dir.clone(), self.name.clone(), self.final_path.clone());
        blocking(move || {
            match rustix::fs::unlinkat(&*dir, &name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(io("removing", &final_path)(e.into())),
            }
            rustix::fs::fsync(&*dir).map_err(|e| io("syncing directory", &final_path)(e.into()))
        })
        .await
    }
}

/// A directory as a batch of commits knows it: device and inode.
type DirKey = (u64, u64);

/// The key of directory `dir`.
fn dir_key(dir: &OwnedFd) -> Result<DirKey, Errno> {
    let st = rustix::fs::fstat(dir)?;
    Ok((st.st_dev, st.st_ino))
}

/// One writer's commit, as a batch of [`Commits`] runs it.
pub(super) struct CommitOp {
    file: Arc<File>,
    dir: Arc<OwnedFd>,
    temp: String,
    temp_path: PathBuf,
    name: String,
    final_path: PathBuf,
    spec: ObjectSpec,
    verify: VerifyMode,
    overwrite: bool,
    /// Nothing changed since the file's last sync.
    clean: bool,
    marker: Marker,
    dev: u64,
    opened: u64,
}

impl CommitOp {
    /// Checks the file's size, marks the commit (state-file marker) and renames the file
    /// into place (once it is durable); its size.
    fn rename(&self) -> Result<u64, ConnectorError> {
        let len = self
            .file
            .metadata()
            .map_err(io("checking", &self.temp_path))?
            .len();
        self.spec.check_size(len)?;
        if self.marker == Marker::StateFile
            && let Some(state) = &self.spec.state_file
        {
            write_state(state, COMMITTING)?;
        }
        let flags = if self.overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        match rustix::fs::renameat_with(&*self.dir, &self.temp, &*self.dir, &self.name, flags) {
            Ok(()) => Ok(len),
            Err(Errno::EXIST) => Err(ConnectorError::Exists(self.spec.path.clone())),
            Err(e) => Err(io("renaming into place", &self.final_path)(e.into())),
        }
    }

    /// What the renamed, durable file confirms: its size, and its hash read back.
    fn confirm(&self, len: u64) -> Result<Confirmation, ConnectorError> {
        // The file under the final name is the one this writer holds open.
        let blake3 = if self.verify == VerifyMode::Size {
            None
        } else {
            // A second descriptor of this writer's file, read from its start (writes are
            // positioned, so only an earlier read back could have moved it).
            let mut own = self
                .file
                .try_clone()
                .map_err(io("reading back", &self.final_path))?;
            std::io::Seek::rewind(&mut own).map_err(io("reading back", &self.final_path))?;
            Some(hash_file(own, &self.final_path)?.1)
        };
        Ok(Confirmation {
            size: len,
            etag: None,
            blake3,
        })
    }
}

/// The commits of one connector's files, run as a [`Batch`]: each file renamed into
/// place, then every rename made durable together (one `syncfs` where enough of them
/// share a file system, else one `fsync` per directory), then each file read back.
#[derive(Debug, Default)]
pub(super) struct Commits {
    pub(super) fs: Arc<SyncFs>,
}

impl Batch for Commits {
    type Op = CommitOp;
    type Out = Result<Confirmation, ConnectorError>;

    fn run(&self, ops: Vec<CommitOp>) -> Vec<Self::Out> {
        // Files that changed since their last sync (or were reopened: that counts as a
        // change) are made durable before they get their final name.
        let dirty: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].clean).collect();
        let synced = self.fs.sync_each(dirty.iter().map(|&i| {
            let op = &ops[i];
            (&*op.file, op.dev, op.opened, op.temp_path.as_path())
        }));
        let mut unsynced: Vec<Option<ConnectorError>> = (0..ops.len()).map(|_| None).collect();
        for (&i, synced) in dirty.iter().zip(synced) {
            unsynced[i] = synced.err();
        }
        let mut out: Vec<_> = ops
            .iter()
            .zip(unsynced)
            .map(|(op, failed)| match failed {
                Some(e) => Err(e),
                None => op.rename(),
            })
            .collect();
        let renamed: Vec<usize> = (0..ops.len()).filter(|&i| out[i].is_ok()).collect();
        let durable = self.fs.sync_groups(renamed.iter().map(|&i| {
            let op = &ops[i];
            (&*op.file, op.dev, op.opened, op.final_path.as_path())
        }));
        let mut dirs: std::collections::HashMap<DirKey, Result<(), Errno>> = Default::default();
        for (&i, durable) in renamed.iter().zip(durable) {
            if durable {
                continue;
            }
            let op = &ops[i];
            let synced = dir_key(&op.dir).and_then(|key| {
                *dirs
                    .entry(key)
                    .or_insert_with(|| rustix::fs::fsync(&*op.dir))
            });
            if let Err(e) = synced {
                out[i] = Err(io("syncing directory", &op.final_path)(e.into()));
            }
        }
        confirm_all(&ops, out)
    }
}

/// Bytes of files read back in a batch above which they are hashed on several threads.
const PARALLEL_READ_BACK: u64 = 64 << 20;

/// Each renamed file's confirmation (`out`: its size, or why it was not renamed): read back
/// and hashed where its writer verifies, on up to as many threads as there are cores when
/// there is much to read (a batch of large files is not hashed one after another).
fn confirm_all(
    ops: &[CommitOp],
    out: Vec<Result<u64, ConnectorError>>,
) -> Vec<Result<Confirmation, ConnectorError>> {
    let reading: u64 = ops
        .iter()
        .zip(&out)
        .filter(|(op, len)| op.verify != VerifyMode::Size && len.is_ok())
        .map(|(_, len)| *len.as_ref().unwrap_or(&0))
        .sum();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if reading < PARALLEL_READ_BACK || threads < 2 || ops.len() < 2 {
        return ops
            .iter()
            .zip(out)
            .map(|(op, len)| len.and_then(|len| op.confirm(len)))
            .collect();
    }
    // Each thread takes every `threads`-th file; the answers go back in their places.
    let lens: Vec<Option<u64>> = out.iter().map(|r| r.as_ref().ok().copied()).collect();
    let mut confirmed: Vec<Option<Result<Confirmation, ConnectorError>>> =
        (0..ops.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(ops.len()))
            .map(|t| {
                let (ops, lens) = (&ops, &lens);
                scope.spawn(move || {
                    (t..ops.len())
                        .step_by(threads)
                        .filter_map(|i| lens[i].map(|len| (i, ops[i].confirm(len))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            for (i, conf) in w.join().expect("a read back does not panic") {
                confirmed[i] = Some(conf);
            }
        }
    });
    out.into_iter()
        .zip(confirmed)
        .map(|(len, conf)| len.and_then(|_| conf.expect("every renamed file is confirmed")))
        .collect()
}

/// How many leading bytes of `data`, written at `offset`, may go with `O_DIRECT`: all whole
/// aligned blocks when the memory and the offset are aligned, else none.
pub(super) fn direct_part(offset: u64, data: &[u8]) -> usize {
    let aligned = offset.is_multiple_of(DIRECT_ALIGN as u64)
        && data.as_ptr().addr().is_multiple_of(DIRECT_ALIGN);
    if aligned {
        data.len() - data.len() % DIRECT_ALIGN
    } else {
        0
    }
}

/// `file` opened a second time for writing with `O_DIRECT`, through its own descriptor
/// (`/proc/self/fd`: the same inode, whatever has happened to its name), or `None` where
/// the file system does not take `O_DIRECT`.
fn reopen_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::open(
        path.as_str(),
        OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
    .map(File::from)
}
