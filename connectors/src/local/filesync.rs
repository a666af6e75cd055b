//! Syncs of many files at once. Syncs requested side by side (a group commit's files, and
//! every job writing to the same connector) run as one [`Batch`]: where at least
//! [`SYNCFS_MIN`] of its files are on one local file system of a kind whose `syncfs` is
//! known to keep them (ext4, XFS, Btrfs, F2FS), one `syncfs` makes all of them durable
//! (data, attributes and directory entries: what `rclone copy` followed by `sync` pays
//! once), else each file gets its own `fsync`.
//!
//! Errors: `syncfs` reports a write-back error of its file system that happened since the
//! descriptor it is called on was opened (Linux 5.8 and later). It is called on the
//! descriptor of the group's file opened first, so an error of any file in the group is
//! reported; it cannot say which file failed, so a failed `syncfs` falls back to each
//! file's own `fsync`, which reports its own file's error exactly, and the connector
//! never uses `syncfs` again (an error it consumed may belong to a file outside the
//! group, whose own `fsync` will report it).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::io;
use crate::ConnectorError;
use crate::batch::Batch;

/// Fewest files of one file system in a batch for one `syncfs` instead of their `fsync`s.
pub(super) const SYNCFS_MIN: usize = 8;

/// File systems (`statfs` magic numbers) whose `syncfs` makes every file durable: ext4
/// (also ext2 and ext3), XFS, Btrfs, F2FS. On others `syncfs` may promise less (a FUSE
/// file system whose server does not implement it returns success having synced
/// nothing), so their files keep their own `fsync`.
const SYNCFS_FILE_SYSTEMS: [u64; 4] = [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010];

/// Whether `file`'s file system is one of [`SYNCFS_FILE_SYSTEMS`].
pub(super) fn syncfs_keeps_files(file: &File) -> bool {
    rustix::fs::fstatfs(file.as_fd()).is_ok_and(|st| {
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let magic = st.f_type as u64;
        SYNCFS_FILE_SYSTEMS.contains(&magic)
    })
}

/// Order in which files were opened (see [`SyncOp::opened`]).
static OPENED: AtomicU64 = AtomicU64::new(0);

/// The next number in the order files are opened.
pub(super) fn next_opened() -> u64 {
    OPENED.fetch_add(1, Ordering::Relaxed)
}

/// One file to make durable.
pub(super) struct SyncOp {
    /// The file.
    pub(super) file: Arc<File>,
    /// Its path, for errors.
    pub(super) path: PathBuf,
    /// Its file system (`st_dev`).
    pub(super) dev: u64,
    /// When it was opened ([`next_opened`]), before any write to it.
    pub(super) opened: u64,
}

/// A connector's use of `syncfs`, shared by its syncs and its commits.
#[derive(Debug, Default)]
pub(super) struct SyncFs {
    /// A `syncfs` failed: every file is synced on its own from now on.
    per_file: AtomicBool,
    /// Per file system (`st_dev`): whether `syncfs` may stand for its files' `fsync`s.
    kinds: std::sync::Mutex<HashMap<u64, bool>>,
    /// `syncfs` calls made (for tests).
    calls: AtomicU64,
    /// Tests: the next `syncfs` fails as a write-back error would.
    #[cfg(test)]
    pub(super) fail_next: AtomicBool,
}

impl SyncFs {
    /// How many `syncfs` calls this connector made.
    #[cfg(test)]
    pub(super) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Makes durable, one `syncfs` per file system, every file system holding at least
    /// [`SYNCFS_MIN`] of `files` (each: file, `st_dev`, order opened, path); says which
    /// files are durable now (the others need their own sync).
    pub(super) fn sync_groups<'a>(
        &self,
        files: impl Iterator<Item = (&'a File, u64, u64, &'a Path)>,
    ) -> Vec<bool> {
        let files: Vec<_> = files.collect();
        let mut done = vec![false; files.len()];
        if self.per_file.load(Ordering::Relaxed) {
            return done;
        }
        let mut by_dev: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            by_dev.entry(f.1).or_default().push(i);
        }
        for (&dev, group) in by_dev.iter().filter(|(_, g)| g.len() >= SYNCFS_MIN) {
            let keeps = *self
                .kinds
                .lock()
                .expect("file systems lock")
                .entry(dev)
                .or_insert_with(|| syncfs_keeps_files(files[group[0]].0));
            if !keeps {
                continue;
            }
            let first = *group
                .iter()
                .min_by_key(|&&i| files[i].2)
                .expect("groups are not empty");
            match self.syncfs(files[first].0) {
                Ok(()) => group.iter().for_each(|&i| done[i] = true),
                Err(e) => {
                    tracing::warn!(path = %files[first].3.display(), error = %e, "syncing a file system failed; syncing each file on its own from now on");
                    self.per_file.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        done
    }

    /// Makes every one of `files` durable: by [`Self::sync_groups`] where it can, else by
    /// its own `fsync`; one result per file, in order.
    pub(super) fn sync_each<'a>(
        &self,
        files: impl Iterator<Item = (&'a File, u64, u64, &'a Path)>,
    ) -> Vec<Result<(), ConnectorError>> {
        let files: Vec<_> = files.collect();
        let done = self.sync_groups(files.iter().copied());
        files
            .iter()
            .zip(done)
            .map(|(&(file, _, _, path), done)| {
                if done {
                    Ok(())
                } else {
                    file.sync_all().map_err(io("syncing", path))
                }
            })
            .collect()
    }

    fn syncfs(&self, file: &File) -> Result<(), rustix::io::Errno> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        if self.fail_next.swap(false, Ordering::Relaxed) {
            return Err(rustix::io::Errno::IO);
        }
        rustix::fs::syncfs(file.as_fd())
    }
}

/// The syncs of one connector's files, a [`Batch`].
#[derive(Debug, Default)]
pub(super) struct FileSyncs {
    pub(super) fs: Arc<SyncFs>,
}

impl Batch for FileSyncs {
    type Op = SyncOp;
    type Out = Result<(), ConnectorError>;

    fn run(&self, ops: Vec<SyncOp>) -> Vec<Self::Out> {
        self.fs.sync_each(
            ops.iter()
                .map(|op| (&*op.file, op.dev, op.opened, op.path.as_path())),
        )
    }
}
