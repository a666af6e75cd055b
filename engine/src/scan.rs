//! Reads a local file or directory tree and hashes every chunk, streaming: memory stays
//! bounded by two batches of chunks whatever the file size, reading the next batch overlaps
//! hashing the current one, and chunks within a batch are hashed in parallel.
//!
//! Two ways to name a source: a plain path ([`list_files`], the user's own files with the
//! user's own permissions: `trackshift send`), or a [`Confined`] source ([`list_confined`],
//! what the job service reads on a tenant's behalf): the tenant's source directory is
//! opened by the operator's path and every path beneath it is resolved from that
//! descriptor, component by component, with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, at listing and again at every read, so no link, rename or `..` the
//! tenant makes at any point of the job moves a read out of the directory.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use trackshift_connectors::beneath::{leaves, open_beneath};
use trackshift_crypto::{ChunkLayout, CryptoError, FileEntry, Hash32};

use crate::protocol::FileSpec;

/// Why a scan failed. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file's size changed while it was being read.
    #[error("{0}: file changed while it was being read")]
    Changed(PathBuf),
    /// Something that cannot be part of a manifest (symlink, device, non-UTF-8 name).
    #[error("{path}: {reason}")]
    Unsupported {
        /// The entry.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A confined source's path leaves the tenant's source directory (a symbolic link, a
    /// mount, the gateway's data directory) or is a file the job service does not read on a
    /// tenant's behalf (one with several hard links). Says nothing of what lies beyond.
    #[error("{path}: not allowed ({reason})")]
    NotAllowed {
        /// The path as the tenant named it (beneath its source directory).
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// Invalid chunk size or similar.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bytes read ahead per batch (per batch; two batches are alive at once).
const BATCH_BYTES: u64 = 16 << 20;

/// Lists the regular files under `root` (or `root` itself when it is a file), in path
/// order, with the name each gets in a manifest: the file name for a single file, the
/// `/`-separated path relative to `root` for a directory. Symlinks and special files are
/// refused, as are names that are not UTF-8.
pub fn list_files(root: &Path) -> Result<Vec<(PathBuf, FileSpec)>, ScanError> {
    let meta = std::fs::symlink_metadata(root).map_err(io_err(root))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(ScanError::Unsupported {
                path: root.to_path_buf(),
                reason: "file name is not valid UTF-8",
            })?;
        let spec = FileSpec {
            path: name.to_string(),
            size: meta.len(),
        };
        return Ok(vec![(root.to_path_buf(), spec)]);
    }
    if !meta.is_dir() {
        return Err(ScanError::Unsupported {
            path: root.to_path_buf(),
            reason: "not a regular file or directory",
        });
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            ScanError::Io {
                path,
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("walk failed")),
            }
        })?;
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        if !ft.is_file() {
            return Err(ScanError::Unsupported {
                path: entry.path().to_path_buf(),
                reason: "symlinks and special files are not transferred",
            });
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walk stays under root");
        let name = rel
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<Vec<_>>>()
            .ok_or(ScanError::Unsupported {
                path: entry.path().to_path_buf(),
                reason: "path is not valid UTF-8",
            })?
            .join("/");
        let size = entry
            .metadata()
            .map_err(|e| ScanError::Io {
                path: entry.path().to_path_buf(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("stat failed")),
            })?
            .len();
        files.push((entry.path().to_path_buf(), FileSpec { path: name, size }));
    }
    // Walk order sorts each directory's entries by name; manifests sort by full path bytes.
    files.sort_by(|a, b| a.1.path.cmp(&b.1.path));
    Ok(files)
}

/// A source the job service reads on a tenant's behalf: the tenant's source directory as
/// the operator configured it, and the job's path beneath it. Built by
/// [`crate::tenants::TenantEntry::check_source`]; read with [`list_confined`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    /// The tenant's source directory, as the operator wrote it (opened by that path, links
    /// the operator put in it followed).
    pub root: PathBuf,
    /// The job's path beneath `root`: relative, `/`-separated, no `.` or `..` components
    /// (`""` for `root` itself). Resolved only beneath `root`, never following a link.
    pub rel: String,
    /// Directories the source may never be, contain or reach (the gateway's data
    /// directory: its keys and ledger).
    pub keep_out: Vec<PathBuf>,
}

/// Identity of a file: device and inode.
type FileId = (u64, u64);

#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
fn file_id(st: &Stat) -> FileId {
    (st.st_dev as u64, st.st_ino as u64)
}

/// The flags every confined open adds: never block on a FIFO a tenant put there, never
/// acquire a terminal.
const SAFE_OPEN: OFlags = OFlags::NONBLOCK.union(OFlags::NOCTTY);

const LINK: &str = "the path leaves the source directory or crosses a link";
const DATA_DIR: &str = "the gateway's data directory";
const HARD_LINK: &str = "a file with several hard links is not read on a tenant's behalf";

impl Confined {
    /// The source's path as the tenant named it (`root` joined with `rel`), for messages
    /// and the manifest's source URI; never opened by this path.
    pub fn path(&self) -> PathBuf {
        if self.rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(&self.rel)
        }
    }

    fn open_root(&self) -> Result<OwnedFd, ScanError> {
        rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ScanError::Io {
            path: self.root.clone(),
            source: e.into(),
        })
    }

    /// Opens `rel` (beneath the root) with `flags`, mapping a path that leaves to
    /// [`ScanError::NotAllowed`].
    fn open_rel(&self, root: &OwnedFd, rel: &str, flags: OFlags) -> Result<OwnedFd, ScanError> {
        let name = if rel.is_empty() { "." } else { rel };
        // `O_PATH` takes no other flags (openat2 refuses them).
        let flags = if flags.contains(OFlags::PATH) {
            flags
        } else {
            flags | SAFE_OPEN
        };
        open_beneath(root, name, flags, Mode::empty()).map_err(|e| self.resolve_err(rel, e))
    }

    fn resolve_err(&self, rel: &str, e: Errno) -> ScanError {
        let path = self.root.join(rel);
        if leaves(e) {
            ScanError::NotAllowed { path, reason: LINK }
        } else {
            ScanError::Io {
                path,
                source: e.into(),
            }
        }
    }

    /// Identities of the directories the source may not be: each `keep_out` directory and
    /// every directory above it (a source that is one of those contains it).
    fn kept_out_and_above(&self) -> Vec<FileId> {
        let mut ids = Vec::new();
        for dir in &self.keep_out {
            let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            for d in real.ancestors() {
                if let Ok(st) = rustix::fs::stat(d) {
                    ids.push(file_id(&st));
                }
            }
        }
        ids
    }

    /// The identities of the `keep_out` directories themselves (a walk must not reach them).
    fn kept_out(&self) -> Vec<FileId> {
        // Stated like the tree's entries, so the identities compare.
        self.keep_out
            .iter()
            .filter_map(|d| rustix::fs::stat(d).ok())
            .map(|st| file_id(&st))
            .collect()
    }

    /// Checks the source now, resolving it exactly as [`list_confined`] will: it exists
    /// beneath the root without crossing a link, is a regular file (with one link) or a
    /// directory, and is not the gateway's data directory or above it. A check only: the
    /// reads resolve every path again.
    pub fn probe(&self) -> Result<(), ScanError> {
        let root = self.open_root()?;
        let fd = self.open_rel(&root, &self.rel, OFlags::PATH)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| self.resolve_err(&self.rel, e))?;
        self.check_start(&st)
    }

    fn check_start(&self, st: &Stat) -> Result<(), ScanError> {
        let path = self.path();
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                if self.kept_out_and_above().contains(&file_id(st)) {
                    return Err(ScanError::NotAllowed {
                        path,
                        reason: DATA_DIR,
                    });
                }
                Ok(())
            }
            FileType::RegularFile if st.st_nlink > 1 => Err(ScanError::NotAllowed {
                path,
                reason: HARD_LINK,
            }),
            FileType::RegularFile => Ok(()),
            // Only an `O_PATH` open (the probe) gets this far with a link.
            FileType::Symlink => Err(ScanError::NotAllowed { path, reason: LINK }),
            _ => Err(ScanError::Unsupported {
                path,
                reason: "not a regular file or directory",
            }),
        }
    }
}

/// One file of a [`ConfinedListing`].
#[derive(Debug, Clone)]
struct ListedFile {
    /// Path beneath the root.
    rel: String,
    spec: FileSpec,
    id: FileId,
}

/// A confined source, listed: the root held open (one descriptor for the whole job) and
/// the files found beneath it. Each file is opened again, beneath the root, when it is
/// read ([`ConfinedListing::open`]) and closed by the caller after the read: no
/// descriptor per file is held for the job.
#[derive(Debug)]
pub struct ConfinedListing {
    source: Confined,
    root: OwnedFd,
    files: Vec<ListedFile>,
}

impl ConfinedListing {
    /// The files, in manifest order, with the path each was found at (for messages).
    pub fn files(&self) -> impl Iterator<Item = (PathBuf, &FileSpec)> + '_ {
        self.files
            .iter()
            .map(|f| (self.source.root.join(&f.rel), &f.spec))
    }

    /// Opens file `i` for reading, resolving its path beneath the root again without
    /// following any link: a component replaced by a symbolic link since the listing makes
    /// this [`ScanError::NotAllowed`]; a file replaced by another one (a different inode)
    /// [`ScanError::Changed`]; a file that got more hard links [`ScanError::NotAllowed`].
    /// # Panics
    /// If `i` is not the index of a listed file.
    pub fn open(&self, i: usize) -> Result<File, ScanError> {
        let f = &self.files[i];
        let path = || self.source.root.join(&f.rel);
        let fd = self.source.open_rel(&self.root, &f.rel, OFlags::RDONLY)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| self.source.resolve_err(&f.rel, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || file_id(&st) != f.id {
            return Err(ScanError::Changed(path()));
        }
        if st.st_nlink > 1 {
            return Err(ScanError::NotAllowed {
                path: path(),
                reason: HARD_LINK,
            });
        }
        // Reads of a regular file never block; drop O_NONBLOCK all the same (some
        // network file systems honour it).
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| ScanError::Io {
            path: path(),
            source: e.into(),
        })?;
        Ok(File::from(fd))
    }
}

/// Lists a confined source like [`list_files`] lists a path (same names, same order, same
/// refusals of symbolic links, special files and non-UTF-8 names), opening the root by the
/// operator's path and every directory beneath it with `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS)` from the root's descriptor: at most two descriptors are open at
/// once whatever the tree's depth. Also refused, as [`ScanError::NotAllowed`]: a path that
/// crosses a link or leaves the root, the gateway's data directory (or a directory above
/// it) anywhere in the tree, and regular files with more than one hard link (a hard link
/// may name a file the tenant could not read itself; see docs/SECURITY.md).
pub fn list_confined(source: &Confined) -> Result<ConfinedListing, ScanError> {
    let root = source.open_root()?;
    let start = source.open_rel(&root, &source.rel, OFlags::RDONLY)?;
    let st = rustix::fs::fstat(&start).map_err(|e| source.resolve_err(&source.rel, e))?;
    source.check_start(&st)?;
    let mut files = Vec::new();
    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
        let name = source.rel.rsplit('/').next().unwrap_or_default();
        files.push(ListedFile {
            rel: source.rel.clone(),
            spec: FileSpec {
                path: name.to_string(),
                size: st.st_size as u64,
            },
            id: file_id(&st),
        });
        return Ok(ConfinedListing {
            source: source.clone(),
            root,
            files,
        });
    }
    let keep_out = source.kept_out();
    // Directories still to read: (path beneath the root, name prefix in the manifest).
    let mut pending = vec![(source.rel.clone(), String::new())];
    let mut first = Some(start);
    while let Some((rel, prefix)) = pending.pop() {
        let fd = match first.take() {
            Some(fd) => fd,
            None => source.open_rel(&root, &rel, OFlags::RDONLY | OFlags::DIRECTORY)?,
        };
        let dir_path = || source.root.join(&rel);
        let mut dir = rustix::fs::Dir::new(fd).map_err(|e| ScanError::Io {
            path: dir_path(),
            source: e.into(),
        })?;
        let mut names = Vec::new();
        for entry in &mut dir {
            let entry = entry.map_err(|e| ScanError::Io {
                path: dir_path(),
                source: e.into(),
            })?;
            let raw = entry.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            let name = std::str::from_utf8(raw).map_err(|_| ScanError::Unsupported {
                path: dir_path(),
                reason: "path is not valid UTF-8",
            })?;
            names.push(name.to_string());
        }
        let dfd = dir.fd().map_err(|e| ScanError::Io {
            path: dir_path(),
            source: e.into(),
        })?;
        for name in names {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let entry_name = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            // No-follow stat of a name in a directory we hold: never leaves it.
            let st = rustix::fs::statat(dfd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| source.resolve_err(&child, e))?;
            let path = || source.root.join(&child);
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    if keep_out.contains(&file_id(&st)) {
                        return Err(ScanError::NotAllowed {
                            path: path(),
                            reason: DATA_DIR,
                        });
                    }
                    pending.push((child, entry_name));
                }
                FileType::RegularFile if st.st_nlink > 1 => {
                    return Err(ScanError::NotAllowed {
                        path: path(),
                        reason: HARD_LINK,
                    });
                }
                FileType::RegularFile => files.push(ListedFile {
                    rel: child,
                    spec: FileSpec {
                        path: entry_name,
                        size: st.st_size as u64,
                    },
                    id: file_id(&st),
                }),
                _ => {
                    return Err(ScanError::Unsupported {
                        path: path(),
                        reason: "symlinks and special files are not transferred",
                    });
                }
            }
        }
    }
    files.sort_by(|a, b| a.spec.path.cmp(&b.spec.path));
    Ok(ConfinedListing {
        source: source.clone(),
        root,
        files,
    })
}

/// Scans `root` (see [`list_files`]) into manifest file entries with chunks of `chunk_size`
/// bytes.
pub fn scan_path(root: &Path, chunk_size: u64) -> Result<Vec<FileEntry>, ScanError> {
    ChunkLayout::new(0, chunk_size)?;
    list_files(root)?
        .into_iter()
        .map(|(path, spec)| hash_file(&path, spec.path, chunk_size))
        .collect()
}

/// Hashes one file into a manifest entry named `name`.
pub fn hash_file(path: &Path, name: String, chunk_size: u64) -> Result<FileEntry, ScanError> {
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let layout = ChunkLayout::new(size, chunk_size)?;
    let chunks = hash_chunks(&file, path, &layout)?;
    if file.metadata().map_err(io_err(path))?.len() != size {
        return Err(ScanError::Changed(path.to_path_buf()));
    }
    Ok(FileEntry::from_chunks(name, layout, chunks)?)
}

fn hash_chunks(file: &File, path: &Path, layout: &ChunkLayout) -> Result<Vec<Hash32>, ScanError> {
    let count = layout.chunk_count();
    let per_batch = (BATCH_BYTES / layout.chunk_size())
        .max(rayon::current_num_threads() as u64)
        .min(count);
    let mut hashes = Vec::with_capacity(count as usize);
    let read_batch = |first: u64, bufs: &mut Vec<Vec<u8>>| -> Result<(), ScanError> {
        let n = per_batch.min(count - first) as usize;
        bufs.resize_with(n, Vec::new);
        for (i, buf) in bufs.iter_mut().enumerate() {
            let index = first + i as u64;
            buf.resize(layout.chunk_len(index) as usize, 0);
            file.read_exact_at(buf, layout.offset(index)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    ScanError::Changed(path.to_path_buf())
                } else {
                    ScanError::Io {
                        path: path.to_path_buf(),
                        source: e,
                    }
                }
            })?;
        }
        Ok(())
    };
    let mut current = Vec::new();
    let mut next = Vec::new();
    read_batch(0, &mut current)?;
    let mut first = 0u64;
    while first < count {
        let after = first + current.len() as u64;
        let (read_result, batch_hashes) = rayon::join(
            || {
                if after < count {
                    read_batch(after, &mut next)
                } else {
                    next.clear();
                    Ok(())
                }
            },
            || {
                current
                    .par_iter()
                    .enumerate()
                    .map(|(i, buf)| layout.chunk_hash(first + i as u64, buf))
                    .collect::<Vec<_>>()
            },
        );
        read_result?;
        hashes.extend(batch_hashes);
        std::mem::swap(&mut current, &mut next);
        first = after;
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests;
