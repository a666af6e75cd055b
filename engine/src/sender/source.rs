//! Reading a job's source: its files in manifest order, a few open at a time, each
//! checked to be the file first read (device, inode, size, modification time).

use super::*;

pub(super) struct Source {
    /// Each file's path (for messages) and spec, in manifest order.
    pub(super) files: Vec<(PathBuf, FileSpec)>,
    pub(super) reader: Reader,
}

/// How a job's files are opened for reading.
pub(super) enum Reader {
    /// By path (the sender's own files), through a few open files kept for reuse.
    Plain(OpenFiles),
    /// Beneath a tenant's source directory, opened again for each chunk and closed after it.
    Confined(crate::scan::ConfinedListing),
}

/// Most source files a job keeps open between reads. Chunks go out in file order, so
/// reads of one file follow each other; any other read opens its file again.
pub const OPEN_FILES_PER_JOB: usize = 4;

/// Most chunk reads of one send at once (each holds its file open while it reads).
pub const READS_IN_FLIGHT: usize = 16;

/// What identifies the content of a source file: a reopened file must show the same, or
/// it changed while it was being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileIdentity {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) len: u64,
    pub(super) mtime: (i64, i64),
}

impl FileIdentity {
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// A job's plain source files: the identity each had when first opened, and a small
/// most-recently-used set of open ones ([`OPEN_FILES_PER_JOB`]), so a job holds a few
/// descriptors however many files it has.
pub(super) struct OpenFiles {
    pub(super) identities: Vec<std::sync::OnceLock<FileIdentity>>,
    /// Most recently used last.
    pub(super) open: std::sync::Mutex<Vec<(u32, Arc<File>)>>,
}

impl OpenFiles {
    pub(super) fn new(files: usize) -> Self {
        Self {
            identities: (0..files).map(|_| std::sync::OnceLock::new()).collect(),
            open: std::sync::Mutex::new(Vec::with_capacity(OPEN_FILES_PER_JOB + 1)),
        }
    }

    /// File `i` at `path`, open: kept from an earlier read, or opened now and checked to be
    /// the file first opened (device, inode, size and modification time).
    pub(super) fn get(&self, i: u32, path: &Path) -> Result<Arc<File>, SourceReadError> {
        {
            let mut open = self.open.lock().expect("open files lock");
            if let Some(k) = open.iter().position(|(f, _)| *f == i) {
                let entry = open.remove(k);
                let file = entry.1.clone();
                open.push(entry);
                return Ok(file);
            }
        }
        let open = |source| SourceReadError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open)?;
        let meta = file.metadata().map_err(open)?;
        let seen = FileIdentity::of(&meta);
        let first = *self.identities[i as usize].get_or_init(|| seen);
        if first != seen {
            return Err(SourceReadError::Changed {
                path: path.to_path_buf(),
            });
        }
        let file = Arc::new(file);
        let mut open = self.open.lock().expect("open files lock");
        if !open.iter().any(|(f, _)| *f == i) {
            open.push((i, file.clone()));
            if open.len() > OPEN_FILES_PER_JOB {
                open.remove(0);
            }
        }
        Ok(file)
    }

    /// Closes every file kept open (reads in progress keep theirs until they end).
    pub(super) fn close_all(&self) {
        self.open.lock().expect("open files lock").clear();
    }
}

impl Source {
    pub(super) fn file(&self, i: u32) -> Result<Arc<File>, SourceReadError> {
        match &self.reader {
            Reader::Plain(files) => files.get(i, &self.files[i as usize].0),
            Reader::Confined(listing) => Ok(Arc::new(listing.open(i as usize)?)),
        }
    }

    /// Releases the descriptors the source keeps between reads (the job has ended).
    pub(super) fn close(&self) {
        if let Reader::Plain(files) = &self.reader {
            files.close_all();
        }
    }
}
