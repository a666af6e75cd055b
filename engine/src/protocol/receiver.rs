//! The receiver's view of one job ([`ReceiverJob`]): which chunks it holds, what to do
//! with an incoming chunk header, when the job is complete.

use super::*;

/// Checks a `Hello`: right version. Token checking is the gateway's (it needs the tenant table).
pub fn check_hello(version: u16) -> Result<(), ProtocolError> {
    if version == VERSION {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedVersion(version))
    }
}

pub(super) fn layouts(open: &OpenJob) -> Result<Vec<ChunkLayout>, ProtocolError> {
    check_id("job id", &open.job_id)?;
    if open.files.len() > MAX_FILES_PER_JOB {
        return Err(ProtocolError::InvalidJob(format!(
            "{} files (at most {MAX_FILES_PER_JOB})",
            open.files.len()
        )));
    }
    if open.files.windows(2).any(|w| w[0].path >= w[1].path) {
        return Err(ProtocolError::InvalidJob(
            "files must be unique and sorted by path".into(),
        ));
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(open.files.len());
    for f in &open.files {
        trackshift_crypto::manifest::check_path(&f.path)
            .map_err(|r| ProtocolError::InvalidJob(format!("file {:?}: {r}", f.path)))?;
        // Names the gateway keeps for its temporary objects are not a job's to take.
        if let Some(c) = f.path.split('/').find(|c| {
            trackshift_crypto::reserved::is_reserved(c) || c.chars().any(char::is_control)
        }) {
            return Err(ProtocolError::InvalidJob(format!(
                "file {:?}: the component {c:?} uses a name the gateway reserves ('.trackshift...', '...tspart') or a control character",
                f.path
            )));
        }
        let layout = ChunkLayout::new(f.size, open.chunk_size)
            .map_err(|e| ProtocolError::InvalidJob(e.to_string()))?;
        total = total.saturating_add(layout.chunk_count());
        out.push(layout);
    }
    if total > MAX_CHUNKS_PER_JOB {
        return Err(ProtocolError::InvalidJob(format!(
            "{total} chunks (at most {MAX_CHUNKS_PER_JOB}); use a larger chunk size"
        )));
    }
    Ok(out)
}

/// Checks an identifier used as a directory name (job id, tenant): 1 to 128 characters from
/// `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn check_id(what: &str, id: &str) -> Result<(), ProtocolError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::InvalidJob(format!(
            "{what} must be 1 to 128 characters of A-Z a-z 0-9 . _ - and not start with a dot"
        )))
    }
}

/// A chunk index from the wire as a `usize` slot index, or `None` when it cannot name one
/// (it never wraps: on a 32-bit target, `2^32 + 1` must not alias chunk 1).
pub(super) fn slot_index(index: u64) -> Option<usize> {
    usize::try_from(index).ok()
}

/// What the receiver should do with an incoming chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Read, verify and write the payload.
    Accept(ChunkLayout),
    /// Already held with this hash: discard the payload and acknowledge again.
    AlreadyHeld,
}

/// The gateway's view of one job: which chunks are durably held, with their hashes.
#[derive(Debug, Clone)]
pub struct ReceiverJob {
    pub(super) open: OpenJob,
    pub(super) layouts: Vec<ChunkLayout>,
    pub(super) hashes: Vec<Vec<Option<Hash32>>>,
    /// Chunks held per file.
    pub(super) held_in: Vec<u64>,
    pub(super) held: u64,
    pub(super) total: u64,
}

impl ReceiverJob {
    /// Validates an `OpenJob` and starts with nothing held.
    pub fn new(open: OpenJob) -> Result<Self, ProtocolError> {
        validate_destinations(&open.destinations)?;
        if let Some(c) = &open.classification {
            check_id("classification", c)?;
        }
        let layouts = layouts(&open)?;
        let hashes: Vec<Vec<Option<Hash32>>> = layouts
            .iter()
            .map(|l| vec![None; l.chunk_count() as usize])
            .collect();
        let total = layouts.iter().map(ChunkLayout::chunk_count).sum();
        Ok(Self {
            held_in: vec![0; layouts.len()],
            open,
            layouts,
            hashes,
            held: 0,
            total,
        })
    }

    /// The job as opened.
    pub fn open(&self) -> &OpenJob {
        &self.open
    }

    /// Layout of file `file`.
    pub fn layout(&self, file: u32) -> Option<&ChunkLayout> {
        self.layouts.get(file as usize)
    }

    /// Chunks held / chunks in the job.
    pub fn progress(&self) -> (u64, u64) {
        (self.held, self.total)
    }

    /// Checks a chunk header against the job.
    pub fn check_header(&self, h: &ChunkHeader) -> Result<Disposition, ProtocolError> {
        let layout = self.layouts.get(h.chunk.file as usize).ok_or_else(|| {
            ProtocolError::InvalidChunk(format!("file index {} out of range", h.chunk.file))
        })?;
        if h.chunk.index >= layout.chunk_count() {
            return Err(ProtocolError::InvalidChunk(format!(
                "chunk {} of file {} out of range",
                h.chunk.index, h.chunk.file
            )));
        }
        if h.len != layout.chunk_len(h.chunk.index) {
            return Err(ProtocolError::InvalidChunk(format!(
                "chunk {} of file {} is {} bytes, expected {}",
                h.chunk.index,
                h.chunk.file,
                h.len,
                layout.chunk_len(h.chunk.index)
            )));
        }
        match self.hashes[h.chunk.file as usize][h.chunk.index as usize] {
            Some(held) if held == h.hash => Ok(Disposition::AlreadyHeld),
            Some(_) => Err(ProtocolError::InvalidChunk(format!(
                "chunk {} of file {} was already received with different content",
                h.chunk.index, h.chunk.file
            ))),
            None => Ok(Disposition::Accept(*layout)),
        }
    }

    /// Records a chunk as durably held with the hash computed over the received bytes.
    pub fn record(&mut self, chunk: ChunkRef, hash: Hash32) -> Result<(), ProtocolError> {
        let slot = self
            .hashes
            .get_mut(chunk.file as usize)
            .and_then(|f| f.get_mut(slot_index(chunk.index)?))
            .ok_or_else(|| ProtocolError::InvalidChunk(format!("{chunk:?} out of range")))?;
        match slot {
            Some(h) if *h == hash => Ok(()),
            Some(_) => Err(ProtocolError::InvalidChunk(format!(
                "{chunk:?} recorded twice with different hashes"
            ))),
            None => {
                *slot = Some(hash);
                self.held += 1;
                self.held_in[chunk.file as usize] += 1;
                Ok(())
            }
        }
    }

    /// Chunks of file `file` held (0 for a file the job does not have).
    pub fn held_in_file(&self, file: u32) -> u64 {
        self.held_in.get(file as usize).copied().unwrap_or(0)
    }

    /// Every chunk of file `file` is held (false for a file the job does not have).
    pub fn file_complete(&self, file: u32) -> bool {
        self.layouts
            .get(file as usize)
            .is_some_and(|l| self.held_in_file(file) == l.chunk_count())
    }

    /// Held chunks with their hashes, per file (for `JobReady`).
    pub fn held_chunks(&self) -> Vec<Vec<(u64, Hash32)>> {
        self.hashes
            .iter()
            .map(|f| {
                f.iter()
                    .enumerate()
                    .filter_map(|(i, h)| h.map(|h| (i as u64, h)))
                    .collect()
            })
            .collect()
    }

    /// Completes the job: every chunk must be held, and each file's hash (merged from the
    /// verified chunk hashes) must equal what the sender read. Returns the manifest entries.
    pub fn finish(&self, sender_hashes: &[Hash32]) -> Result<Vec<FileEntry>, ProtocolError> {
        if self.held != self.total {
            return Err(ProtocolError::Unexpected(format!(
                "FinishJob with {} of {} chunks held",
                self.held, self.total
            )));
        }
        if sender_hashes.len() != self.layouts.len() {
            return Err(ProtocolError::InvalidJob(format!(
                "{} file hashes for {} files",
                sender_hashes.len(),
                self.layouts.len()
            )));
        }
        let mut entries = Vec::with_capacity(self.layouts.len());
        for ((spec, layout), (hashes, sent)) in self
            .open
            .files
            .iter()
            .zip(&self.layouts)
            .zip(self.hashes.iter().zip(sender_hashes))
        {
            let chunks: Vec<Hash32> = hashes.iter().map(|h| h.expect("all held")).collect();
            let entry = FileEntry::from_chunks(spec.path.clone(), *layout, chunks)
                .map_err(|e| ProtocolError::InvalidJob(e.to_string()))?;
            if entry.blake3 != *sent {
                return Err(ProtocolError::InvalidJob(format!(
                    "file {:?}: received data hashes to {}, the sender read {}",
                    spec.path, entry.blake3, sent
                )));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}
