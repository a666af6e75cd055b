//! The `trackshift/1` wire protocol without any I/O: frames, their codec, and the sender
//! and receiver state machines. The QUIC code feeds bytes and events in and carries out what
//! comes back, so everything here is testable without sockets (`docs/PROTOCOL.md`).

use std::collections::{HashMap, VecDeque};
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use trackshift_crypto::{ChunkLayout, FileEntry, Hash32};

/// Protocol version carried in `Hello`.
pub const VERSION: u16 = 1;
/// Largest control frame (an `OpenJob` listing many files, or a `JobDone` carrying a manifest).
pub const MAX_CONTROL_FRAME: usize = 64 << 20;
/// Largest frame the gateway reads before the peer is authenticated: a `Hello` (version and
/// a token of a few hundred bytes). Raised to [`MAX_CONTROL_FRAME`] once the token checks out.
pub const MAX_HELLO_FRAME: usize = 4 << 10;
/// Largest chunk-stream header.
pub const MAX_CHUNK_HEADER: usize = 1024;
/// Most files in one job.
pub const MAX_FILES_PER_JOB: usize = 1 << 20;
/// Most chunks in one job (bounds the receiver's per-job bookkeeping to ~600 MiB worst case).
pub const MAX_CHUNKS_PER_JOB: u64 = 1 << 24;
/// How often one chunk may be rejected before the sender gives up on the job.
pub const MAX_CHUNK_ATTEMPTS: u32 = 5;

/// Why bytes from the peer were refused. The stream (or connection) is closed with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame declared a length above the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The bytes did not decode as a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    UnsupportedVersion(u16),
    /// A frame arrived where the protocol does not allow it.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// A job's description is invalid.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// A chunk header names a job, file or chunk that does not exist or has the wrong length.
    #[error("invalid chunk: {0}")]
    InvalidChunk(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// A secret string (tenant token): redacted in `Debug`, compared only through hashes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// One file of a job as the sender announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Relative `/`-separated path (manifest path rules).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// A job as the sender opens (or reopens, to resume) it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenJob {
    /// Job id chosen by the sender (a UUID); reopening the same id resumes it.
    pub job_id: String,
    /// Destination URIs at the gateway (`file:///dir`, `s3://...`, `null://`): one or more;
    /// the data crosses the network once and is written to every one of them.
    pub destinations: Vec<String>,
    /// Chunk size for every file.
    pub chunk_size: u64,
    /// Source URI, recorded in the manifest.
    pub source: String,
    /// Files, in manifest order (sorted by path).
    pub files: Vec<FileSpec>,
    /// Correlation id for logs and the receipt.
    pub correlation_id: Option<String>,
    /// Data classification (for example `phi`); the tenant's policy says which
    /// destinations may receive it.
    #[serde(default)]
    pub classification: Option<String>,
    /// Fail-closed for this job even when the gateway is not (`Some(true)`); a job cannot
    /// relax a strict gateway.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// Most destinations one job may write to.
pub const MAX_DESTINATIONS: usize = 16;

/// One to [`MAX_DESTINATIONS`] destinations, none repeated.
fn check_destinations(d: &[String]) -> Result<(), ProtocolError> {
    if d.is_empty() || d.len() > MAX_DESTINATIONS {
        return Err(ProtocolError::InvalidJob(format!(
            "a job needs 1 to {MAX_DESTINATIONS} destinations, not {}",
            d.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = d.iter().find(|u| !seen.insert(u.as_str())) {
        return Err(ProtocolError::InvalidJob(format!(
            "destination {dup} is named twice"
        )));
    }
    Ok(())
}

/// Position of a chunk within a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Index into the job's files.
    pub file: u32,
    /// Chunk index within the file.
    pub index: u64,
}

/// Frames the sender writes on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame: version and tenant token.
    Hello {
        /// Protocol version.
        version: u16,
        /// Tenant token.
        token: Secret,
    },
    /// Open or resume a job.
    OpenJob(OpenJob),
    /// Every chunk was acknowledged: the BLAKE3 of each file as the sender read it.
    FinishJob {
        /// Job handle from `JobReady`.
        handle: u32,
        /// One hash per file, in order.
        file_hashes: Vec<Hash32>,
    },
    /// Abandon a job; the gateway removes its partial data.
    CancelJob {
        /// Job handle.
        handle: u32,
        /// Why.
        reason: String,
    },
}

/// Frames the gateway writes on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Reply to `Hello`: the authenticated tenant.
    Welcome {
        /// Protocol version.
        version: u16,
        /// Tenant the token belongs to.
        tenant: String,
    },
    /// The job is open; `held` lists, per file, the chunks the gateway already holds
    /// durably with their verified hashes (non-empty when resuming).
    JobReady {
        /// Job id.
        job_id: String,
        /// Handle for chunk headers and later frames.
        handle: u32,
        /// Per file: (chunk index, chunk hash) of every held chunk.
        held: Vec<Vec<(u64, Hash32)>>,
    },
    /// These chunks are verified and durable.
    Acks {
        /// Job handle.
        handle: u32,
        /// The chunks.
        chunks: Vec<ChunkRef>,
    },
    /// This chunk failed verification; send it again.
    Reject {
        /// Job handle.
        handle: u32,
        /// The chunk.
        chunk: ChunkRef,
        /// Why.
        reason: String,
    },
    /// The job is complete: signed manifest and one signed receipt per destination (JSON).
    JobDone {
        /// Job handle.
        handle: u32,
        /// Signed manifest JSON.
        manifest: String,
        /// Signed receipt JSON, one per destination, in the job's order.
        receipts: Vec<String>,
    },
    /// The job failed.
    JobFailed {
        /// Job handle (or `u32::MAX` when the job never got one).
        handle: u32,
        /// Job id.
        job_id: String,
        /// Why.
        reason: String,
        /// True when retrying cannot help.
        permanent: bool,
    },
    /// Connection-level refusal (bad token, bad version); the gateway closes after it.
    Refused {
        /// Why.
        reason: String,
    },
    /// The job was not opened because its tenant is at a quota (`max_concurrent_jobs`):
    /// nothing is wrong with it; open it again after `retry_after_ms`.
    Busy {
        /// Job id.
        job_id: String,
        /// Why (names the tenant and the quota).
        reason: String,
        /// How long to wait before opening it again (milliseconds).
        retry_after_ms: u32,
    },
}

/// Header at the start of every chunk stream; `len` payload bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// Job handle.
    pub handle: u32,
    /// Which chunk.
    pub chunk: ChunkRef,
    /// Payload length.
    pub len: u64,
    /// The chunk hash as the sender computed it.
    pub hash: Hash32,
}

/// Encodes a frame: `u32` big-endian length, then the postcard encoding.
pub fn encode_frame<T: Serialize>(frame: &T) -> Bytes {
    let body = postcard::to_allocvec(frame).expect("frames always serialise");
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u32(u32::try_from(body.len()).expect("frames are far below 4 GiB"));
    out.extend_from_slice(&body);
    out.freeze()
}

/// Decodes one postcard value that must fill `bytes` exactly, in its one canonical
/// encoding: trailing bytes, and encodings postcard would not have written (over-long
/// varints, say), are refused, so every accepted frame has exactly one byte form.
pub fn decode_exact<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after the frame",
            rest.len()
        )));
    }
    // Re-encode without allocating, comparing byte by byte with what arrived.
    let canonical = postcard::serialize_with_flavor(&value, SameBytes { expected: bytes })
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !canonical {
        return Err(ProtocolError::Malformed(
            "frame is not in canonical postcard encoding".into(),
        ));
    }
    Ok(value)
}

/// A postcard serializer output that compares with `expected` instead of storing.
struct SameBytes<'a> {
    expected: &'a [u8],
}

impl postcard::ser_flavors::Flavor for SameBytes<'_> {
    /// True when the encoding equals `expected` exactly.
    type Output = bool;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        match self.expected.split_first() {
            Some((&b, rest)) if b == data => {
                self.expected = rest;
                Ok(())
            }
            // Stop at the first difference (the error is mapped to "not canonical").
            _ => Err(postcard::Error::SerializeBufferFull),
        }
    }

    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.expected.is_empty())
    }
}

/// Encodes a chunk-stream header: `u32` big-endian length, then the postcard encoding.
pub fn encode_chunk_header(header: &ChunkHeader) -> Vec<u8> {
    let body = postcard::to_allocvec(header).expect("headers serialise");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a chunk-stream header body (the bytes after its length prefix, at most
/// [`MAX_CHUNK_HEADER`]); trailing or non-canonical bytes are refused.
pub fn decode_chunk_header(body: &[u8]) -> Result<ChunkHeader, ProtocolError> {
    if body.len() > MAX_CHUNK_HEADER {
        return Err(ProtocolError::FrameTooLarge {
            len: body.len(),
            max: MAX_CHUNK_HEADER,
        });
    }
    decode_exact(body)
}

/// Incremental decoder of length-prefixed frames. It holds only bytes that have arrived
/// (never reserving room for a declared length), refuses a declared length over its limit
/// as soon as the 4-byte prefix is in, and reports how much more it needs
/// ([`Self::wanted`]) so that a reader never takes more than the current frame from the
/// stream.
pub struct FrameDecoder<T> {
    buf: BytesMut,
    max: usize,
    _frame: std::marker::PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> FrameDecoder<T> {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
            _frame: std::marker::PhantomData,
        }
    }

    /// Changes the limit (the gateway raises it from [`MAX_HELLO_FRAME`] to
    /// [`MAX_CONTROL_FRAME`] once the peer is authenticated).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The current limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The declared length of the frame being received, once its prefix is in.
    fn declared(&self) -> Option<usize> {
        let prefix: [u8; 4] = self.buf.get(..4)?.try_into().expect("4 bytes");
        Some(u32::from_be_bytes(prefix) as usize)
    }

    /// How many more bytes the current frame needs (at least 1, at most `4 + max`): what
    /// a reader should ask the stream for, so that it never buffers beyond this frame.
    pub fn wanted(&self) -> usize {
        match self.declared() {
            None => 4 - self.buf.len(),
            Some(len) => (4 + len.min(self.max))
                .saturating_sub(self.buf.len())
                .max(1),
        }
    }

    /// The next complete frame, if buffered.
    pub fn next_frame(&mut self) -> Result<Option<T>, ProtocolError> {
        let Some(len) = self.declared() else {
            return Ok(None);
        };
        if len > self.max {
            return Err(ProtocolError::FrameTooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        decode_exact(&body).map(Some)
    }

    /// Call at end of stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Truncated)
        }
    }
}

/// Checks a `Hello`: right version. Token checking is the gateway's (it needs the tenant table).
pub fn check_hello(version: u16) -> Result<(), ProtocolError> {
    if version == VERSION {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedVersion(version))
    }
}

fn layouts(open: &OpenJob) -> Result<Vec<ChunkLayout>, ProtocolError> {
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
fn slot_index(index: u64) -> Option<usize> {
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
    open: OpenJob,
    layouts: Vec<ChunkLayout>,
    hashes: Vec<Vec<Option<Hash32>>>,
    /// Chunks held per file.
    held_in: Vec<u64>,
    held: u64,
    total: u64,
}

impl ReceiverJob {
    /// Validates an `OpenJob` and starts with nothing held.
    pub fn new(open: OpenJob) -> Result<Self, ProtocolError> {
        check_destinations(&open.destinations)?;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Pending,
    InFlight,
    Acked,
}

/// The sender's view of one job: what to send next, what is in flight, what is done.
#[derive(Debug, Clone)]
pub struct SenderJob {
    layouts: Vec<ChunkLayout>,
    state: Vec<Vec<ChunkState>>,
    hashes: Vec<Vec<Option<Hash32>>>,
    queue: VecDeque<ChunkRef>,
    attempts: HashMap<ChunkRef, u32>,
    acked: u64,
    acked_bytes: u64,
    total: u64,
}

impl SenderJob {
    /// A job over these files; nothing is queued until [`Self::on_ready`].
    pub fn new(open: &OpenJob) -> Result<Self, ProtocolError> {
        let layouts = layouts(open)?;
        let state = layouts
            .iter()
            .map(|l| vec![ChunkState::Pending; l.chunk_count() as usize])
            .collect();
        let total = layouts.iter().map(ChunkLayout::chunk_count).sum();
        let hashes = layouts
            .iter()
            .map(|l| vec![None; l.chunk_count() as usize])
            .collect();
        Ok(Self {
            layouts,
            state,
            hashes,
            queue: VecDeque::new(),
            attempts: HashMap::new(),
            acked: 0,
            acked_bytes: 0,
            total,
        })
    }

    /// Layout of file `file`.
    pub fn layout(&self, file: u32) -> &ChunkLayout {
        &self.layouts[file as usize]
    }

    /// The gateway's `JobReady`: chunks it holds count as acknowledged (with the hashes it
    /// verified); every other chunk, including any in flight on a lost connection, is queued
    /// in file order.
    pub fn on_ready(&mut self, held: &[Vec<(u64, Hash32)>]) -> Result<(), ProtocolError> {
        if held.len() != self.layouts.len() {
            return Err(ProtocolError::Unexpected(format!(
                "JobReady lists {} files, the job has {}",
                held.len(),
                self.layouts.len()
            )));
        }
        self.queue.clear();
        for (f, list) in held.iter().enumerate() {
            for (i, h) in list {
                let slot = slot_index(*i)
                    .and_then(|i| self.hashes[f].get_mut(i))
                    .ok_or_else(|| {
                        ProtocolError::Unexpected(format!(
                            "JobReady lists chunk {i} of file {f}, out of range"
                        ))
                    })?;
                *slot = Some(*h);
            }
        }
        for (f, states) in self.state.iter_mut().enumerate() {
            let held: std::collections::HashSet<u64> = held[f].iter().map(|(i, _)| *i).collect();
            for (i, st) in states.iter_mut().enumerate() {
                let chunk = ChunkRef {
                    file: f as u32,
                    index: i as u64,
                };
                match (*st, held.contains(&(i as u64))) {
                    (ChunkState::Acked, _) => {}
                    (_, true) => {
                        *st = ChunkState::Acked;
                        self.acked += 1;
                        self.acked_bytes += self.layouts[f].chunk_len(i as u64);
                    }
                    (_, false) => {
                        *st = ChunkState::Pending;
                        self.queue.push_back(chunk);
                    }
                }
            }
        }
        Ok(())
    }

    /// The next chunk to send, now marked in flight.
    pub fn next_chunk(&mut self) -> Option<ChunkRef> {
        while let Some(c) = self.queue.pop_front() {
            let st = &mut self.state[c.file as usize][c.index as usize];
            if *st == ChunkState::Pending {
                *st = ChunkState::InFlight;
                return Some(c);
            }
        }
        None
    }

    fn slot(&mut self, c: ChunkRef) -> Result<&mut ChunkState, ProtocolError> {
        self.state
            .get_mut(c.file as usize)
            .and_then(|f| f.get_mut(slot_index(c.index)?))
            .ok_or_else(|| ProtocolError::Unexpected(format!("ack for unknown {c:?}")))
    }

    /// The gateway acknowledged `c` (verified and durable). Duplicate acks are harmless.
    pub fn on_ack(&mut self, c: ChunkRef) -> Result<(), ProtocolError> {
        // The slot first: it exists only for an index within the file, so the length
        // below is computed for a real chunk (never from an arbitrary index on the wire).
        let st = self.slot(c)?;
        if *st != ChunkState::Acked {
            *st = ChunkState::Acked;
            self.acked += 1;
            self.acked_bytes += self.layouts[c.file as usize].chunk_len(c.index);
        }
        Ok(())
    }

    /// The gateway rejected `c`: queue it again (first), up to [`MAX_CHUNK_ATTEMPTS`] times.
    pub fn on_reject(&mut self, c: ChunkRef) -> Result<(), ProtocolError> {
        let st = self.slot(c)?;
        if *st == ChunkState::Acked {
            return Err(ProtocolError::Unexpected(format!(
                "reject of acknowledged {c:?}"
            )));
        }
        *st = ChunkState::Pending;
        let n = self.attempts.entry(c).or_insert(0);
        *n += 1;
        if *n >= MAX_CHUNK_ATTEMPTS {
            return Err(ProtocolError::InvalidChunk(format!(
                "chunk {} of file {} rejected {n} times",
                c.index, c.file
            )));
        }
        self.queue.push_front(c);
        Ok(())
    }

    /// Every chunk is acknowledged.
    pub fn is_complete(&self) -> bool {
        self.acked == self.total
    }

    /// Records the hash the sender computed for a chunk it read (before sending it).
    pub fn set_hash(&mut self, c: ChunkRef, hash: Hash32) {
        if let Some(slot) = self
            .hashes
            .get_mut(c.file as usize)
            .and_then(|f| f.get_mut(slot_index(c.index)?))
        {
            *slot = Some(hash);
        }
    }

    /// The BLAKE3 of every file, merged from the chunk hashes (for `FinishJob`).
    pub fn file_hashes(&self) -> Result<Vec<Hash32>, ProtocolError> {
        self.layouts
            .iter()
            .zip(&self.hashes)
            .enumerate()
            .map(|(f, (layout, hashes))| {
                let chunks: Option<Vec<Hash32>> = hashes.iter().copied().collect();
                let chunks = chunks.ok_or_else(|| {
                    ProtocolError::Unexpected(format!("file {f} has chunks with no known hash"))
                })?;
                layout
                    .file_hash(&chunks)
                    .map_err(|e| ProtocolError::InvalidJob(e.to_string()))
            })
            .collect()
    }

    /// (acknowledged chunks, acknowledged bytes, total chunks).
    pub fn progress(&self) -> (u64, u64, u64) {
        (self.acked, self.acked_bytes, self.total)
    }
}

/// Size of one record in a job's chunk log.
pub const LOG_RECORD_LEN: usize = 4 + 8 + 32 + 4;

/// Encodes a chunk-log record: `u32 file | u64 index | hash | u32 check`, where `check` is
/// the first 4 bytes of BLAKE3 over the preceding 44 bytes (detects torn or flipped records).
pub fn encode_log_record(c: ChunkRef, hash: &Hash32) -> [u8; LOG_RECORD_LEN] {
    let mut r = [0u8; LOG_RECORD_LEN];
    r[..4].copy_from_slice(&c.file.to_be_bytes());
    r[4..12].copy_from_slice(&c.index.to_be_bytes());
    r[12..44].copy_from_slice(hash.as_bytes());
    let check = blake3::hash(&r[..44]);
    r[44..].copy_from_slice(&check.as_bytes()[..4]);
    r
}

/// A parsed chunk log: the records, and how many bytes of the file are valid (a torn last
/// record from a crash is cut off; the caller truncates the file to `valid_len`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLog {
    /// Records in write order.
    pub records: Vec<(ChunkRef, Hash32)>,
    /// Length of the valid prefix.
    pub valid_len: usize,
}

/// Parses a chunk log. Only the tail may be damaged (a crash mid-append); a bad record
/// followed by more data is corruption and refused.
pub fn decode_chunk_log(bytes: &[u8]) -> Result<ChunkLog, ProtocolError> {
    let mut records = Vec::with_capacity(bytes.len() / LOG_RECORD_LEN);
    let mut pos = 0;
    while pos + LOG_RECORD_LEN <= bytes.len() {
        let r = &bytes[pos..pos + LOG_RECORD_LEN];
        let check = blake3::hash(&r[..44]);
        if check.as_bytes()[..4] != r[44..] {
            if pos + LOG_RECORD_LEN == bytes.len() {
                break; // torn final record
            }
            return Err(ProtocolError::Malformed(format!(
                "chunk log record {} is corrupt",
                pos / LOG_RECORD_LEN
            )));
        }
        let file = u32::from_be_bytes(r[..4].try_into().expect("4"));
        let index = u64::from_be_bytes(r[4..12].try_into().expect("8"));
        let mut h = [0u8; 32];
        h.copy_from_slice(&r[12..44]);
        records.push((ChunkRef { file, index }, Hash32(h)));
        pos += LOG_RECORD_LEN;
    }
    Ok(ChunkLog {
        records,
        valid_len: pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(sizes: &[u64], chunk_size: u64) -> OpenJob {
        OpenJob {
            job_id: "job-1".into(),
            destinations: vec!["null://".into()],
            chunk_size,
            source: "file:///src".into(),
            files: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| FileSpec {
                    path: format!("f{i:03}"),
                    size: *s,
                })
                .collect(),
            correlation_id: None,
            classification: None,
            strict: None,
        }
    }

    fn data(len: u64, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_file_is_complete_only_once_each_of_its_chunks_is_held_once() {
        let mut r = ReceiverJob::new(job(&[1500, 0, 3000], 1024)).unwrap();
        let h = |n: u8| Hash32([n; 32]);
        assert!(!r.file_complete(0) && !r.file_complete(2));
        // An empty file still has its one (empty) chunk to receive.
        assert!(!r.file_complete(1));
        r.record(ChunkRef { file: 0, index: 0 }, h(1)).unwrap();
        // The same chunk again does not count twice.
        r.record(ChunkRef { file: 0, index: 0 }, h(1)).unwrap();
        assert_eq!(r.held_in_file(0), 1);
        assert!(!r.file_complete(0));
        r.record(ChunkRef { file: 0, index: 1 }, h(2)).unwrap();
        assert!(r.file_complete(0));
        r.record(ChunkRef { file: 1, index: 0 }, h(3)).unwrap();
        assert!(r.file_complete(1));
        assert!(!r.file_complete(2));
        // Files the job does not have are never complete (and do not panic).
        assert!(!r.file_complete(3) && !r.file_complete(u32::MAX));
        assert_eq!(r.held_in_file(u32::MAX), 0);
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let frames = vec![
            ClientFrame::Hello {
                version: VERSION,
                token: Secret("tok".into()),
            },
            ClientFrame::OpenJob(job(&[10, 5000], 1024)),
            ClientFrame::FinishJob {
                handle: 3,
                file_hashes: vec![Hash32::blake3(b"x")],
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&encode_frame(f));
        }
        let mut dec = FrameDecoder::<ClientFrame>::new(MAX_CONTROL_FRAME);
        let mut got = Vec::new();
        for b in wire {
            dec.push(&[b]);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        dec.finish().unwrap();
        assert_eq!(got, frames);
    }

    #[test]
    fn decoder_refuses_oversized_garbage_and_truncation() {
        let mut dec = FrameDecoder::<ClientFrame>::new(100);
        dec.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(
            dec.buf.capacity() < 1024,
            "nothing allocated for the declared length"
        );

        let mut dec = FrameDecoder::<ClientFrame>::new(100);
        dec.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(dec.next_frame(), Err(ProtocolError::Malformed(_))));

        let mut dec = FrameDecoder::<ClientFrame>::new(100);
        dec.push(&[0, 0, 0, 9, 0]);
        assert_eq!(dec.next_frame().unwrap(), None);
        assert_eq!(dec.finish(), Err(ProtocolError::Truncated));
        assert!(check_hello(2).is_err());
        assert!(check_hello(VERSION).is_ok());
    }

    /// `Acks` naming chunk 2^62 (or any index past the file) used to overflow
    /// `ChunkLayout::offset` while computing the chunk's length, before the index was checked.
    #[test]
    fn acks_with_huge_chunk_index_do_not_panic() {
        let open = job(&[5000, 10], 1024);
        let mut tx = SenderJob::new(&open).unwrap();
        tx.on_ready(&[vec![], vec![]]).unwrap();
        for index in [5, 1 << 62, (u64::MAX / 1024) + 1, u64::MAX] {
            let c = ChunkRef { file: 0, index };
            assert!(tx.on_ack(c).is_err(), "ack of {index}");
            assert!(tx.on_reject(c).is_err(), "reject of {index}");
            assert!(
                tx.on_ready(&[vec![(index, Hash32::default())], vec![]])
                    .is_err()
            );
            tx.set_hash(c, Hash32::default());
        }
        let c = ChunkRef {
            file: u32::MAX,
            index: 0,
        };
        assert!(tx.on_ack(c).is_err());
        assert_eq!(tx.progress(), (0, 0, 6), "nothing was counted");
        let real = ChunkRef { file: 0, index: 4 };
        tx.on_ack(real).unwrap();
        assert_eq!(tx.progress(), (1, 5000 - 4096, 6));

        let mut rx = ReceiverJob::new(open).unwrap();
        let header = ChunkHeader {
            handle: 0,
            chunk: ChunkRef {
                file: 0,
                index: 1 << 62,
            },
            len: 0,
            hash: Hash32::default(),
        };
        assert!(rx.check_header(&header).is_err());
        assert!(rx.record(header.chunk, Hash32::default()).is_err());
    }

    /// `postcard::from_bytes` ignores what follows a value: a frame with junk appended was
    /// accepted as if the junk were not there.
    #[test]
    fn frames_with_trailing_junk_are_refused() {
        let hello = ClientFrame::Hello {
            version: VERSION,
            token: Secret("tok".into()),
        };
        let mut body = postcard::to_allocvec(&hello).unwrap();
        assert_eq!(decode_exact::<ClientFrame>(&body).unwrap(), hello);
        body.extend_from_slice(b"junk");
        let mut wire = (body.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&body);
        let mut dec = FrameDecoder::<ClientFrame>::new(MAX_HELLO_FRAME);
        dec.push(&wire);
        let err = dec.next_frame().unwrap_err();
        assert!(err.to_string().contains("4 trailing bytes"), "{err}");

        let header = ChunkHeader {
            handle: 1,
            chunk: ChunkRef { file: 2, index: 3 },
            len: 1024,
            hash: Hash32::blake3(b"c"),
        };
        let encoded = encode_chunk_header(&header);
        assert_eq!(decode_chunk_header(&encoded[4..]).unwrap(), header);
        let mut junk = encoded[4..].to_vec();
        junk.push(0);
        assert!(decode_chunk_header(&junk).is_err());
        assert!(decode_chunk_header(&vec![0; MAX_CHUNK_HEADER + 1]).is_err());
    }

    /// Over-long varints decode to the same value as the short form: refused, so that a
    /// frame has one byte form (what a fuzzer's re-encoding check relies on).
    #[test]
    fn frames_in_non_canonical_encoding_are_refused() {
        // Hello (variant 0), version 1 as the two-byte varint 0x81 0x00, token "t".
        let overlong = [0u8, 0x81, 0x00, 1, b't'];
        assert!(matches!(
            decode_exact::<ClientFrame>(&overlong),
            Err(ProtocolError::Malformed(_))
        ));
        let canonical = [0u8, 0x01, 1, b't'];
        assert_eq!(
            decode_exact::<ClientFrame>(&canonical).unwrap(),
            ClientFrame::Hello {
                version: 1,
                token: Secret("t".into())
            }
        );
    }

    /// A 4-byte prefix declaring 64 MiB used to make the decoder reserve 64 MiB at once,
    /// before a single byte of the body arrived (and before authentication).
    #[test]
    fn huge_length_prefix_reserves_nothing_before_the_bytes_arrive() {
        let mut dec = FrameDecoder::<ClientFrame>::new(MAX_CONTROL_FRAME);
        dec.push(&(MAX_CONTROL_FRAME as u32).to_be_bytes());
        dec.push(&[0; 10]);
        assert_eq!(dec.next_frame().unwrap(), None);
        assert!(
            dec.buf.capacity() < 4096,
            "reserved {} bytes for a declared length",
            dec.buf.capacity()
        );
        assert_eq!(dec.wanted(), MAX_CONTROL_FRAME - 10);
        assert_eq!(dec.buffered(), 14);
    }

    /// Before authentication the gateway's limit is a Hello's size: a client cannot make
    /// it buffer up to [`MAX_CONTROL_FRAME`] before showing a token.
    #[test]
    fn pre_auth_frames_above_the_hello_limit_are_refused_at_the_prefix() {
        let mut dec = FrameDecoder::<ClientFrame>::new(MAX_HELLO_FRAME);
        dec.push(&((MAX_HELLO_FRAME + 1) as u32).to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(ProtocolError::FrameTooLarge {
                len: MAX_HELLO_FRAME + 1,
                max: MAX_HELLO_FRAME
            })
        );
        assert_eq!(dec.wanted(), MAX_HELLO_FRAME + 4 - 4);
        // The longest real Hello (a job-service token for a 128-character tenant) fits.
        let token = format!("svc.{}.{}", "t".repeat(128), "ab".repeat(32));
        let hello = encode_frame(&ClientFrame::Hello {
            version: VERSION,
            token: Secret(token),
        });
        assert!(hello.len() < MAX_HELLO_FRAME / 4);
        let mut dec = FrameDecoder::<ClientFrame>::new(MAX_HELLO_FRAME);
        dec.push(&hello);
        assert!(matches!(
            dec.next_frame().unwrap(),
            Some(ClientFrame::Hello { .. })
        ));
        // Raised after authentication: an OpenJob larger than the Hello limit then passes.
        let big = encode_frame(&ClientFrame::OpenJob(job(&[1; 900], 1024)));
        assert!(big.len() > MAX_HELLO_FRAME);
        dec.push(&big);
        assert!(dec.next_frame().is_err());
        let mut dec = FrameDecoder::<ClientFrame>::new(MAX_HELLO_FRAME);
        dec.set_max(MAX_CONTROL_FRAME);
        dec.push(&big);
        assert!(matches!(
            dec.next_frame().unwrap(),
            Some(ClientFrame::OpenJob(_))
        ));
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let f = ClientFrame::Hello {
            version: 1,
            token: Secret("hunter2".into()),
        };
        assert!(!format!("{f:?}").contains("hunter2"));
    }

    #[test]
    fn invalid_jobs_are_refused() {
        let mut j = job(&[10], 1024);
        j.files[0].path = "../etc/passwd".into();
        assert!(ReceiverJob::new(j).is_err());
        let mut j = job(&[10, 10], 1024);
        j.files[1].path = j.files[0].path.clone();
        assert!(ReceiverJob::new(j).is_err());
        assert!(ReceiverJob::new(job(&[10], 1000)).is_err());
        assert!(
            ReceiverJob::new(job(&[u64::MAX], 1024)).is_err(),
            "too many chunks"
        );
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            let mut j = job(&[1], 1024);
            j.job_id = bad.to_string();
            assert!(ReceiverJob::new(j).is_err(), "{bad:?}");
        }
    }

    /// Drives a sender and a receiver against each other with no network: a corrupted
    /// chunk is rejected and resent, a lost connection resumes with only missing chunks,
    /// and the result matches the data.
    #[test]
    fn sender_and_receiver_complete_a_job_with_corruption_and_resume() {
        let sizes = [0u64, 1, 1024, 5000, 9000];
        let files: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| data(*s, i as u8))
            .collect();
        let open = job(&sizes, 1024);
        let mut rx = ReceiverJob::new(open.clone()).unwrap();
        let mut tx = SenderJob::new(&open).unwrap();
        tx.on_ready(&rx.held_chunks()).unwrap();

        let mut sent = 0;
        let mut corrupted = false;
        let total = rx.progress().1;
        while let Some(c) = tx.next_chunk() {
            sent += 1;
            let layout = *tx.layout(c.file);
            let start = layout.offset(c.index) as usize;
            let mut payload =
                files[c.file as usize][start..start + layout.chunk_len(c.index) as usize].to_vec();
            let header = ChunkHeader {
                handle: 0,
                chunk: c,
                len: payload.len() as u64,
                hash: layout.chunk_hash(c.index, &payload),
            };
            if !corrupted && payload.len() > 10 {
                payload[7] ^= 1; // bit flip in transit
                corrupted = true;
            }
            // Simulate a dropped connection halfway: in-flight chunks are lost.
            if sent == 8 {
                tx.on_ready(&rx.held_chunks()).unwrap();
                continue;
            }
            tx.set_hash(c, header.hash);
            let Disposition::Accept(l) = rx.check_header(&header).unwrap() else {
                tx.on_ack(c).unwrap();
                continue;
            };
            let got = l.chunk_hash(c.index, &payload);
            if got != header.hash {
                tx.on_reject(c).unwrap();
                continue;
            }
            rx.record(c, got).unwrap();
            tx.on_ack(c).unwrap();
        }
        assert!(tx.is_complete());
        assert_eq!(rx.progress(), (total, total));
        assert!(
            sent > total,
            "the corrupted and the lost chunks were sent again"
        );
        let hashes: Vec<Hash32> = files.iter().map(|f| Hash32::blake3(f)).collect();
        assert_eq!(
            tx.file_hashes().unwrap(),
            hashes,
            "sender merges its chunk hashes"
        );
        let entries = rx.finish(&hashes).unwrap();
        assert_eq!(entries.len(), sizes.len());
        let mut wrong = hashes.clone();
        wrong[3] = Hash32::blake3(b"other");
        assert!(
            rx.finish(&wrong).is_err(),
            "sender/receiver disagreement fails the job"
        );
    }

    #[test]
    fn receiver_checks_headers() {
        let open = job(&[5000], 1024);
        let mut rx = ReceiverJob::new(open).unwrap();
        let h = |index, len| ChunkHeader {
            handle: 0,
            chunk: ChunkRef { file: 0, index },
            len,
            hash: Hash32::default(),
        };
        assert!(rx.check_header(&h(5, 1024)).is_err(), "index out of range");
        assert!(rx.check_header(&h(4, 1024)).is_err(), "last chunk is short");
        assert!(rx.check_header(&h(4, 5000 - 4096)).is_ok());
        let mut bad_file = h(0, 1024);
        bad_file.chunk.file = 1;
        assert!(rx.check_header(&bad_file).is_err());
        rx.record(ChunkRef { file: 0, index: 0 }, Hash32::default())
            .unwrap();
        assert_eq!(
            rx.check_header(&h(0, 1024)).unwrap(),
            Disposition::AlreadyHeld
        );
        let mut other = h(0, 1024);
        other.hash = Hash32::blake3(b"x");
        assert!(rx.check_header(&other).is_err());
        assert!(rx.finish(&[Hash32::default()]).is_err(), "not complete");
        assert_eq!(rx.held_chunks(), vec![vec![(0, Hash32::default())]]);
    }

    #[test]
    fn sender_gives_up_after_repeated_rejects() {
        let open = job(&[10], 1024);
        let mut tx = SenderJob::new(&open).unwrap();
        tx.on_ready(&[vec![]]).unwrap();
        for _ in 0..MAX_CHUNK_ATTEMPTS - 1 {
            let c = tx.next_chunk().unwrap();
            tx.on_reject(c).unwrap();
        }
        let c = tx.next_chunk().unwrap();
        assert!(tx.on_reject(c).is_err());
        assert!(tx.on_ready(&[]).is_err(), "file count mismatch");
    }

    #[test]
    fn chunk_log_cuts_torn_tail_and_refuses_inner_corruption() {
        let mut log = Vec::new();
        for i in 0..5u64 {
            log.extend_from_slice(&encode_log_record(
                ChunkRef { file: 1, index: i },
                &Hash32::blake3(&i.to_be_bytes()),
            ));
        }
        let full = decode_chunk_log(&log).unwrap();
        assert_eq!(full.records.len(), 5);
        for cut in 0..LOG_RECORD_LEN {
            let parsed = decode_chunk_log(&log[..log.len() - cut]).unwrap();
            let expect = if cut == 0 { 5 } else { 4 };
            assert_eq!(parsed.records.len(), expect, "cut {cut}");
            assert_eq!(parsed.valid_len, expect * LOG_RECORD_LEN);
        }
        let mut torn_last = log.clone();
        let n = torn_last.len();
        torn_last[n - 1] ^= 1;
        assert_eq!(decode_chunk_log(&torn_last).unwrap().records.len(), 4);
        let mut inner = log.clone();
        inner[LOG_RECORD_LEN + 3] ^= 1;
        assert!(decode_chunk_log(&inner).is_err());
    }
}
