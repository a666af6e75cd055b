//! The sender's side of a send as a state machine ([`SenderSession`]): every job of the
//! send across its connections. Frames, stream events and time (since the send started)
//! go in; [`Action`]s and the next deadline ([`SenderSession::poll_timeout`]) come out.
//! The QUIC code only moves bytes between it and the network.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::super::retry::{JobRetry, RetryLimits, backoff, next_due};
use super::super::*;

/// How long a cancelled send waits for answers to the opens still outstanding, so that each
/// job the gateway makes meanwhile is cancelled too.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Longest wait between two connection attempts.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// The wait before reconnect attempt `attempt` (1, 2, ...): 200 ms doubling up to
/// [`MAX_RECONNECT_BACKOFF`], with `jitter` in `[0, 1]` picking the point in the window
/// (see [`backoff`]) so that many senders cut off together do not come back in step; never
/// past `remaining`.
pub fn reconnect_backoff(attempt: u32, remaining: Duration, jitter: f64) -> Duration {
    backoff(
        attempt,
        Duration::from_millis(100),
        MAX_RECONNECT_BACKOFF,
        jitter,
    )
    .min(remaining)
}

/// How one job of a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Every chunk is durable: the signed manifest and one signed receipt per destination.
    Done {
        /// Signed manifest (JSON).
        manifest: String,
        /// Signed receipts (JSON), one per destination, in order.
        receipts: Vec<String>,
    },
    /// The gateway failed the job, permanently or more often than the send retries.
    Failed {
        /// The gateway's reason.
        reason: String,
        /// True when retrying cannot help.
        permanent: bool,
    },
    /// The gateway had no room for the job for as long as the send waited.
    Busy {
        /// The gateway's reason (names the quota).
        reason: String,
    },
    /// A source file could not be read; the gateway was told to drop the job.
    SourceRead(String),
}

/// What ends a connection, from the session's point of view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// The gateway refused the connection (token, version).
    #[error("gateway refused the connection: {0}")]
    Refused(String),
    /// The gateway broke the protocol (or a chunk was rejected too often).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Something the I/O layer must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this frame on the control stream.
    Frame(ClientFrame),
    /// A chunk the gateway acknowledged `latency` after it was sent: give back what was
    /// held for it outside the session (shared budget, rate).
    Acked {
        /// Job index.
        job: usize,
        /// The chunk.
        chunk: ChunkRef,
        /// Sent until acknowledged.
        latency: Duration,
    },
    /// A chunk that will not be acknowledged under its stream (rejected): give back what
    /// was held for it.
    Dropped {
        /// Job index.
        job: usize,
        /// The chunk.
        chunk: ChunkRef,
    },
    /// Every chunk of the job in flight is forgotten (the job is reopened or settled).
    DroppedAll {
        /// Job index.
        job: usize,
    },
    /// The job's acknowledged bytes changed ([`SessionJob::acked_bytes`]).
    Progress {
        /// Job index.
        job: usize,
    },
    /// The job ended ([`SessionJob::end`]): close its files.
    Settled {
        /// Job index.
        job: usize,
    },
}

/// A chunk to read, hash and send on a stream of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOrder {
    /// Job index.
    pub job: usize,
    /// The job's handle on this connection (for the chunk header).
    pub handle: u32,
    /// The chunk.
    pub chunk: ChunkRef,
    /// Its file's layout (offset, length, hash rule).
    pub layout: ChunkLayout,
}

/// The chunk the session would send next, once what lies outside it (a rate limit, a
/// budget shared with other sends) allows `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// Job index.
    pub job: usize,
    /// Bytes it will hold in flight.
    pub len: u32,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between connections.
    Disconnected,
    /// Connected: jobs open, chunks flow.
    Open,
    /// Cancelled: waiting (until the deadline) for answers to outstanding opens.
    Cancelling {
        /// When it stops waiting.
        deadline: Duration,
    },
    /// Every job is settled: close the connection.
    Finished,
    /// Cancelled and drained: close the connection.
    Cancelled,
}

/// What to do after a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Connect again after this wait.
    After(Duration),
    /// Give up: the gateway was not reachable in `attempts` attempts over `seconds`.
    GiveUp {
        /// Connection attempts made.
        attempts: u32,
        /// Seconds since the gateway was last reachable.
        seconds: u64,
    },
}

mod frames;
mod job;

use job::Flight;
pub use job::SessionJob;

/// Every job of one send and the connection it is on (if any).
#[derive(Debug, Clone)]
pub struct SenderSession {
    jobs: Vec<SessionJob>,
    by_id: HashMap<String, usize>,
    by_handle: HashMap<u32, usize>,
    limits: RetryLimits,
    budget: u32,
    window: super::Window,
    in_flight_bytes: u64,
    cursor: usize,
    phase: Phase,
    welcomed: bool,
    /// The protocol version this connection's gateway said in its `Welcome`.
    gateway_version: u16,
    /// Jobs with a trace context whose open waits for this connection's `Welcome`: only
    /// then is it known whether the gateway reads [`ClientFrame::OpenTracedJob`].
    opens_after_welcome: Vec<usize>,
    /// Some connection of this send was authenticated.
    ever_welcomed: bool,
    /// How long the first connection may take, attempts and waits together.
    connect_timeout: Option<Duration>,
    reconnects: u32,
    outage_since: Duration,
    actions: VecDeque<Action>,
}

impl SenderSession {
    /// A send that holds at most `in_flight_bytes` of chunks unacknowledged and retries
    /// within `limits` (connections and job reopens alike). `now` starts the first outage
    /// window.
    pub fn new(limits: RetryLimits, in_flight_bytes: u64, now: Duration) -> Self {
        Self {
            jobs: Vec::new(),
            by_id: HashMap::new(),
            by_handle: HashMap::new(),
            limits,
            budget: u32::try_from(in_flight_bytes).unwrap_or(u32::MAX).max(1),
            window: super::Window::fixed(in_flight_bytes),
            in_flight_bytes: 0,
            cursor: 0,
            phase: Phase::Disconnected,
            welcomed: false,
            gateway_version: 0,
            opens_after_welcome: Vec::new(),
            ever_welcomed: false,
            connect_timeout: None,
            reconnects: 0,
            outage_since: now,
            actions: VecDeque::new(),
        }
    }

    /// Bounds how long the send tries to make its first connection (time since the send
    /// started); once a connection was authenticated, the retry limits govern alone.
    pub fn set_connect_timeout(&mut self, timeout: Option<Duration>) {
        self.connect_timeout = timeout;
    }

    /// Starts the in-flight window at `initial` bytes and lets it adapt up to the
    /// `in_flight_bytes` given to [`Self::new`] (see [`super::Window`]); without this call
    /// the window is that many bytes, fixed.
    pub fn set_adaptive_window(&mut self, initial: u64) {
        self.window = super::Window::adaptive(initial, u64::from(self.budget));
    }

    /// The in-flight window now, in bytes.
    pub fn window(&self) -> u64 {
        self.window.size()
    }

    /// Until when the first connection may still be made, while none has been.
    pub fn connect_deadline(&self) -> Option<Duration> {
        self.connect_timeout.filter(|_| !self.ever_welcomed)
    }

    /// Some connection of this send reached the gateway and was authenticated.
    pub fn ever_connected(&self) -> bool {
        self.ever_welcomed
    }

    /// Adds a job; its index is the one every [`Action`] names.
    pub fn add_job(&mut self, open: OpenJob) -> Result<usize, ProtocolError> {
        let core = SenderJob::new(&open)?;
        let i = self.jobs.len();
        self.by_id.insert(open.job_id.clone(), i);
        self.jobs.push(SessionJob {
            total_bytes: open.files.iter().map(|f| f.size).sum(),
            open,
            core,
            handle: None,
            awaiting_ready: false,
            next: None,
            in_flight: HashMap::new(),
            finish_sent: false,
            chunks_sent: 0,
            retry: JobRetry::default(),
            end: None,
            finished: None,
        });
        Ok(i)
    }

    /// Job `i`.
    pub fn job(&self, i: usize) -> &SessionJob {
        &self.jobs[i]
    }

    /// Every job.
    pub fn jobs(&self) -> &[SessionJob] {
        &self.jobs
    }

    /// Whether this connection's gateway reads several chunks per stream (its `Welcome`
    /// said [`crate::protocol::PACKED_VERSION`] or later).
    pub fn packs(&self) -> bool {
        self.gateway_version >= crate::protocol::PACKED_VERSION
    }

    /// Where the current connection stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Every job has ended.
    pub fn is_settled(&self) -> bool {
        self.jobs.iter().all(SessionJob::settled)
    }

    /// Connections made again after one was lost.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// Chunk bytes sent and not acknowledged.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }

    /// Some job's `OpenJob` on this connection is not answered yet (the connection is
    /// still being set up).
    pub fn setting_up(&self) -> bool {
        self.jobs.iter().any(|j| !j.settled() && j.awaiting_ready)
    }

    /// The next thing the I/O layer must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next deadline: a due reopen, or the end of the cancel grace.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.phase {
            Phase::Open => next_due(
                self.jobs
                    .iter()
                    .filter(|j| !j.settled())
                    .map(|j| j.retry.due()),
            ),
            Phase::Cancelling { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// A connection is up: `Hello`, then an `OpenJob` for every unsettled job.
    pub fn connected(&mut self, token: &Secret, now: Duration) {
        let _ = now;
        self.phase = Phase::Open;
        self.welcomed = false;
        self.gateway_version = 0;
        self.window.reset();
        self.by_handle.clear();
        self.cursor = 0;
        self.actions.push_back(Action::Frame(ClientFrame::Hello {
            version: VERSION,
            token: token.clone(),
        }));
        self.opens_after_welcome.clear();
        for i in 0..self.jobs.len() {
            self.detach(i);
            let j = &mut self.jobs[i];
            if !j.settled() {
                // Untraced jobs open at once, with the Hello; traced ones after the Welcome.
                if j.open.traceparent.is_some() {
                    self.opens_after_welcome.push(i);
                } else {
                    self.actions
                        .push_back(Action::Frame(ClientFrame::OpenJob(j.open.clone())));
                }
                j.awaiting_ready = true;
            }
        }
        self.check_finished();
    }

    /// The connection ended (any way): per-connection state goes. Returns what to do
    /// next when it ended with jobs unsettled and `retryable`; `jitter` in `[0, 1]` spreads
    /// reconnects of many senders cut off together.
    pub fn disconnected(&mut self, retryable: bool, now: Duration, jitter: f64) -> Reconnect {
        for i in 0..self.jobs.len() {
            self.detach(i);
            self.jobs[i].awaiting_ready = false;
        }
        self.phase = Phase::Disconnected;
        if std::mem::take(&mut self.welcomed) {
            self.outage_since = now;
            self.ever_welcomed = true;
        }
        let mut remaining = self
            .limits
            .retry_for
            .saturating_sub(now.saturating_sub(self.outage_since));
        if !self.ever_welcomed
            && let Some(timeout) = self.connect_timeout
        {
            remaining = remaining.min(timeout.saturating_sub(now));
        }
        if retryable && self.reconnects < self.limits.max_reopens && !remaining.is_zero() {
            self.reconnects += 1;
            let wait = reconnect_backoff(self.reconnects, remaining, jitter);
            return Reconnect::After(wait);
        }
        Reconnect::GiveUp {
            attempts: self.reconnects + 1,
            seconds: now.saturating_sub(self.outage_since).as_secs(),
        }
    }

    /// The chunk the session would send next (round robin over the open jobs), once the
    /// in-flight budget has room for it.
    pub fn want(&self) -> Option<Want> {
        if self.phase != Phase::Open {
            return None;
        }
        let n = self.jobs.len();
        let i = (0..n).map(|k| (self.cursor + k) % n).find(|&i| {
            let j = &self.jobs[i];
            !j.settled() && j.handle.is_some() && j.next.is_some()
        })?;
        let j = &self.jobs[i];
        let c = j.next.expect("found with a next chunk");
        let len = u32::try_from(j.core.layout(c.file).chunk_len(c.index))
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget);
        // Room in the window (a chunk is never counted as more than the whole budget).
        (self.window.room(self.in_flight_bytes, u64::from(len))).then_some(Want { job: i, len })
    }

    /// Sends what [`Self::want`] offered for `job`: the chunk is now in flight. `None`
    /// when the job has nothing to send any more.
    pub fn send_chunk(&mut self, job: usize, now: Duration) -> Option<ChunkOrder> {
        if self.phase != Phase::Open {
            return None;
        }
        let budget = self.budget;
        let j = &mut self.jobs[job];
        let handle = j.handle?;
        let c = j.next.take()?;
        let layout = *j.core.layout(c.file);
        let len = u32::try_from(layout.chunk_len(c.index))
            .unwrap_or(u32::MAX)
            .clamp(1, budget);
        j.in_flight.insert(c, Flight { sent: now, len });
        j.chunks_sent += 1;
        self.in_flight_bytes += u64::from(len);
        self.cursor = (job + 1) % self.jobs.len();
        let _ = self.advance();
        Some(ChunkOrder {
            job,
            handle,
            chunk: c,
            layout,
        })
    }

    /// The hash of a chunk as it was read (reported before its data leaves, so it is
    /// recorded before any ack).
    pub fn on_hashed(&mut self, job: usize, chunk: ChunkRef, hash: Hash32) {
        let j = &mut self.jobs[job];
        if !j.settled() {
            j.core.set_hash(chunk, hash);
        }
    }

    /// A chunk stream of `job` sent under `handle` failed. Returns whether that loses the
    /// connection (a stream of a job since settled or reopened is stale, and a cancelled
    /// send no longer cares).
    pub fn on_stream_failed(&mut self, job: usize, handle: u32) -> bool {
        let j = &self.jobs[job];
        self.phase == Phase::Open && !j.settled() && j.handle == Some(handle)
    }

    /// A source file of `job` could not be read: the gateway is told to drop the job, and
    /// it ends.
    pub fn on_source_failed(&mut self, job: usize, reason: String, now: Duration) {
        if self.jobs[job].settled() || self.phase != Phase::Open {
            return;
        }
        let handle = self.jobs[job].handle.unwrap_or(u32::MAX);
        self.actions
            .push_back(Action::Frame(ClientFrame::CancelJob {
                handle,
                reason: "source unreadable".into(),
            }));
        tracing::warn!(job = %self.jobs[job].open.job_id, error = %reason, "source unreadable; job cancelled");
        self.settle(job, JobEnd::SourceRead(reason), now);
        self.check_finished();
    }

    /// Time passed: reopens that are due go out; a cancel's grace may end.
    pub fn on_timeout(&mut self, now: Duration) {
        match self.phase {
            Phase::Open => {
                for j in self.jobs.iter_mut().filter(|j| !j.settled()) {
                    if j.retry.take_due(now) {
                        let frame = open_frame(&j.open, self.gateway_version);
                        self.actions.push_back(Action::Frame(frame));
                        j.awaiting_ready = true;
                    }
                }
            }
            Phase::Cancelling { deadline } if now >= deadline => self.phase = Phase::Cancelled,
            _ => {}
        }
    }

    /// Cancels the send: every open job is cancelled at the gateway, and jobs whose open is
    /// outstanding are cancelled as they turn ready, for up to [`CANCEL_GRACE`].
    pub fn cancel(&mut self, now: Duration) {
        if self.phase != Phase::Open {
            return;
        }
        for j in self.jobs.iter().filter(|j| !j.settled()) {
            if let Some(handle) = j.handle {
                self.actions
                    .push_back(Action::Frame(ClientFrame::CancelJob {
                        handle,
                        reason: "cancelled by the sender".into(),
                    }));
            }
        }
        self.phase = if self.setting_up() {
            Phase::Cancelling {
                deadline: now + CANCEL_GRACE,
            }
        } else {
            Phase::Cancelled
        };
    }

    /// Fills each open job's next chunk and sends `FinishJob` for the complete ones.
    fn advance(&mut self) -> Result<(), Fatal> {
        for j in self.jobs.iter_mut().filter(|j| !j.settled()) {
            let Some(handle) = j.handle else { continue };
            if j.next.is_none() {
                j.next = j.core.next_chunk();
            }
            if j.core.is_complete() && !j.finish_sent {
                let file_hashes = j.core.file_hashes()?;
                self.actions
                    .push_back(Action::Frame(ClientFrame::FinishJob {
                        handle,
                        file_hashes,
                    }));
                j.finish_sent = true;
            }
        }
        self.check_finished();
        Ok(())
    }

    fn check_finished(&mut self) {
        if self.phase == Phase::Open && self.is_settled() {
            self.phase = Phase::Finished;
        }
    }

    /// Forgets job `i`'s per-connection state (handle, in-flight chunks, a pending reopen).
    fn detach(&mut self, i: usize) {
        let j = &mut self.jobs[i];
        j.retry.cancel_due();
        j.handle = None;
        j.next = None;
        j.finish_sent = false;
        if !j.in_flight.is_empty() {
            let bytes: u64 = j.in_flight.values().map(|f| u64::from(f.len)).sum();
            self.in_flight_bytes -= bytes;
            j.in_flight.clear();
            self.actions.push_back(Action::DroppedAll { job: i });
        }
    }

    fn settle(&mut self, i: usize, end: JobEnd, now: Duration) {
        self.detach(i);
        let j = &mut self.jobs[i];
        j.awaiting_ready = false;
        j.end = Some(end);
        j.finished = Some(now);
        self.actions.push_back(Action::Settled { job: i });
    }

    fn by_id(&self, job_id: &str, frame: &str) -> Result<usize, Fatal> {
        self.by_id.get(job_id).copied().ok_or_else(|| {
            ProtocolError::Unexpected(format!("{frame} for a job never opened: {job_id}")).into()
        })
    }

    fn by_handle(&self, handle: u32) -> Result<usize, Fatal> {
        self.by_handle.get(&handle).copied().ok_or_else(|| {
            ProtocolError::Unexpected(format!("frame for unknown job handle {handle}")).into()
        })
    }
}

/// The frame that opens `open` at a gateway that said `gateway_version`: with its trace
/// context where the gateway reads one.
fn open_frame(open: &OpenJob, gateway_version: u16) -> ClientFrame {
    match open.traceparent {
        Some(traceparent) if gateway_version >= crate::protocol::TRACED_VERSION => {
            ClientFrame::OpenTracedJob {
                open: open.clone(),
                traceparent,
            }
        }
        _ => ClientFrame::OpenJob(open.clone()),
    }
}
