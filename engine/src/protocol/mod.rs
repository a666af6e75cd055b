//! The `trackshift/1` wire protocol without any I/O: frames, their codec, and the sender
//! and receiver state machines. The QUIC code feeds bytes and events in and carries out what
//! comes back, so everything here is testable without sockets (`docs/PROTOCOL.md`).
//!
//! Rooms: `codec` (frames, chunk header, decoder), `receiver` ([`ReceiverJob`]), `sender`
//! ([`SenderJob`]), `chunk_log` (the gateway's durable chunk records), `retry` (when a job
//! is opened again), `session` (each side's connection protocol as a state machine, and
//! the deterministic harness that runs both). This file: limits, errors and the frames
//! themselves.

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
/// The version a gateway says in its `Welcome` when it reads several chunks per stream
/// (a sender still says [`VERSION`] in its `Hello`; an older gateway says [`VERSION`] in
/// its `Welcome`, and gets one chunk per stream).
pub const PACKED_VERSION: u16 = 2;
/// The version a gateway says in its `Welcome` when it also reads
/// [`ClientFrame::OpenTracedJob`] (and packs, as [`PACKED_VERSION`]). The newest this
/// gateway speaks.
pub const TRACED_VERSION: u16 = 3;
/// Chunks shorter than this may share a chunk stream with other chunks of their job,
/// back to back (a sender packs small files); a chunk of this size or more has its stream
/// to itself.
pub const PACKED_BELOW: u64 = 256 << 10;
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
    /// The W3C trace context of the job's submission, logged (`trace_id`) with the job's
    /// lines at the gateway. Not part of the job's identity ([`OpenJob::same_job`]), nor of
    /// this frame's encoding: it travels in [`ClientFrame::OpenTracedJob`], to gateways
    /// that say [`TRACED_VERSION`].
    #[serde(skip)]
    pub traceparent: Option<crate::trace::TraceParent>,
}

impl OpenJob {
    /// Whether `other` opens the same job as `self` (everything but the trace context,
    /// which a resumed or retried job may carry anew, must match).
    pub fn same_job(&self, other: &OpenJob) -> bool {
        // Field by field, without copying the file list; a new field must be named here.
        let OpenJob {
            job_id,
            destinations,
            chunk_size,
            source,
            files,
            correlation_id,
            classification,
            strict,
            traceparent: _,
        } = self;
        *job_id == other.job_id
            && *destinations == other.destinations
            && *chunk_size == other.chunk_size
            && *source == other.source
            && *files == other.files
            && *correlation_id == other.correlation_id
            && *classification == other.classification
            && *strict == other.strict
    }

    /// The trace id of [`OpenJob::traceparent`], for log lines.
    pub fn trace_id(&self) -> Option<String> {
        self.traceparent.map(|t| t.trace_id())
    }
}

/// Most destinations one job may write to.
pub const MAX_DESTINATIONS: usize = 16;

/// One to [`MAX_DESTINATIONS`] destinations, none repeated.
fn validate_destinations(d: &[String]) -> Result<(), ProtocolError> {
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
    /// [`ClientFrame::OpenJob`] with the job's W3C trace context (only to a gateway that
    /// said [`TRACED_VERSION`] or later: an older one cannot read this frame).
    OpenTracedJob {
        /// The job.
        open: OpenJob,
        /// Its trace context.
        traceparent: crate::trace::TraceParent,
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

mod chunk_log;
mod codec;
mod receiver;
pub mod retry;
mod sender;
pub mod session;
#[cfg(test)]
mod tests;

pub use chunk_log::*;
pub use codec::*;
pub use receiver::*;
pub use sender::*;
pub use session::receiver::{BUSY_RETRY_MS, close};
