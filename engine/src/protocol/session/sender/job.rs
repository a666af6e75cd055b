//! One job of a send across connections ([`SessionJob`]): its protocol core, its chunks in
//! flight, its retries and how it ended.

use std::collections::HashMap;
use std::time::Duration;

use super::super::super::retry::JobRetry;
use super::super::super::*;
use super::JobEnd;

#[derive(Debug, Clone, Copy)]
pub(super) struct Flight {
    pub(super) sent: Duration,
    pub(super) len: u32,
}

/// One job of a send, across connections.
#[derive(Debug, Clone)]
pub struct SessionJob {
    pub(super) open: OpenJob,
    pub(super) core: SenderJob,
    pub(super) total_bytes: u64,
    pub(super) handle: Option<u32>,
    pub(super) awaiting_ready: bool,
    pub(super) next: Option<ChunkRef>,
    pub(super) in_flight: HashMap<ChunkRef, Flight>,
    pub(super) finish_sent: bool,
    pub(super) chunks_sent: u64,
    pub(super) retry: JobRetry,
    pub(super) end: Option<JobEnd>,
    pub(super) finished: Option<Duration>,
}

impl SessionJob {
    /// The job as it is opened.
    pub fn open(&self) -> &OpenJob {
        &self.open
    }
    /// Bytes in the job.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
    /// Bytes the gateway acknowledged.
    pub fn acked_bytes(&self) -> u64 {
        self.core.progress().1
    }
    /// Chunk streams sent (more than the chunk count when chunks were resent).
    pub fn chunks_sent(&self) -> u64 {
        self.chunks_sent
    }
    /// How it ended, once it has.
    pub fn end(&self) -> Option<&JobEnd> {
        self.end.as_ref()
    }
    /// When it ended (time since the send started).
    pub fn finished_at(&self) -> Option<Duration> {
        self.finished
    }
    /// Its handle on the current connection, once open there.
    pub fn handle(&self) -> Option<u32> {
        self.handle
    }
    /// Reopens after transient failures so far.
    pub fn reopens(&self) -> u32 {
        self.retry.reopens()
    }
    pub(super) fn settled(&self) -> bool {
        self.end.is_some()
    }
}
