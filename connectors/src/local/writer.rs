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

use super::dirsync::{DirSyncs, dir_key};
use super::{COMMITTING, blocking, hash_file, io, write_state};
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
    /// The connector's directory syncs, shared by its writers' commits.
    pub(super) dir_syncs: Arc<DirSyncs>,
    pub(super) file: Option<Arc<File>>,
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
        let refused = blocking(move || {
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
        })
        .await?;
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
        let file = self.file()?;
        let temp = self.temp_path.clone();
        // What this sync covers: every change made before it starts.
        let changes = self.changes.load(Ordering::Acquire);
        // `fsync`, not `fdatasync`: the file's mark (an attribute) becomes durable with
        // its data, so its commit needs no sync of its own.
        blocking(move || file.sync_all().map_err(io("syncing", &temp))).await?;
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
        let file = self.file()?;
        let (temp, temp_path, overwrite) =
            (self.temp.clone(), self.temp_path.clone(), self.overwrite);
        let clean = self.synced.load(Ordering::Acquire) == self.changes.load(Ordering::Acquire);
        let (marker, dir_syncs) = (self.marker, self.dir_syncs.clone());
        let conf = blocking(move || {
            if !clean {
                file.sync_all().map_err(io("syncing", &temp_path))?;
            }
            let len = file.metadata().map_err(io("checking", &temp_path))?.len();
            spec.check_size(len)?;
            if marker == Marker::StateFile
                && let Some(state) = &spec.state_file
            {
                write_state(state, COMMITTING)?;
            }
            let flags = if overwrite {
                RenameFlags::empty()
            } else {
                RenameFlags::NOREPLACE
            };
            match rustix::fs::renameat_with(&*dir, &temp, &*dir, &name, flags) {
                Ok(()) => {}
                Err(Errno::EXIST) => return Err(ConnectorError::Exists(spec.path.clone())),
                Err(e) => return Err(io("renaming into place", &final_path)(e.into())),
            }
            // Shared with the commits beside this one in the same directory.
            dir_key(&dir)
                .and_then(|key| dir_syncs.sync(key, &dir))
                .map_err(|e| io("syncing directory", &final_path)(e.into()))?;
            // The file under the final name is the one this writer holds open.
            let blake3 = if verify == VerifyMode::Size {
                None
            } else {
                // A second descriptor of this writer's file, read from its start (writes
                // are positioned, so only an earlier read back could have moved it).
                let mut own = file.try_clone().map_err(io("reading back", &final_path))?;
                std::io::Seek::rewind(&mut own).map_err(io("reading back", &final_path))?;
                Some(hash_file(own, &final_path)?.1)
            };
            Ok(Confirmation {
                size: len,
                etag: None,
                blake3,
            })
        })
        .await?;
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
