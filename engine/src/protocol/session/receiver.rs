//! The gateway's side of one connection as a state machine ([`ReceiverSession`]):
//! authentication, the handle table, the per-connection job cap, and which frame answers
//! which. Frames and the answers of the gateway's own work (a token checked, a job opened
//! or finished) go in; [`ReceiverAction`]s come out. The job a handle names is the
//! caller's value `J` (the gateway's held job and its quota slot), dropped when the handle
//! goes.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::super::*;

/// Close codes the gateway gives connections it refuses (the reason text says why).
pub mod close {
    /// The token or version was refused.
    pub const REFUSED: u32 = 1;
    /// The first frame was not a valid `Hello`.
    pub const EXPECTED_HELLO: u32 = 2;
    /// No valid `Hello` within the authentication deadline.
    pub const AUTH_TIMEOUT: u32 = 3;
    /// Too many connections from the peer's address.
    pub const TOO_MANY_CONNECTIONS: u32 = 4;
}

/// Why the gateway ends a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token names no tenant.
    #[error("unknown tenant token")]
    UnknownToken,
    /// No valid `Hello` before the deadline.
    #[error("no Hello within {0:?}")]
    HelloTimeout(Duration),
    /// The peer broke the protocol (another version, a first frame that is not `Hello`, a
    /// frame for a handle it never got).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl Refusal {
    /// The close code the connection gets.
    pub fn code(&self) -> u32 {
        match self {
            Refusal::UnknownToken | Refusal::Protocol(ProtocolError::UnsupportedVersion(_)) => {
                close::REFUSED
            }
            Refusal::HelloTimeout(_) => close::AUTH_TIMEOUT,
            Refusal::Protocol(_) => close::EXPECTED_HELLO,
        }
    }
}

/// Something the gateway must do for the connection, in order.
#[derive(Debug)]
pub enum ReceiverAction<J> {
    /// Write this frame on the control stream.
    Frame(ServerFrame),
    /// Check the token; answer with [`ReceiverSession::authenticated`].
    Authenticate(Secret),
    /// The peer is authenticated: raise the control-frame limit to [`MAX_CONTROL_FRAME`]
    /// and let chunk streams in.
    Admit,
    /// Take the tenant's job slot and open (or resume) the job; answer with
    /// [`ReceiverSession::opened`], [`ReceiverSession::deferred`] or
    /// [`ReceiverSession::open_failed`].
    Open(OpenJob),
    /// Seal the job held under `handle`; answer with [`ReceiverSession::finished`].
    Finish {
        /// Its handle.
        handle: u32,
        /// The job.
        job: J,
        /// The sender's hash of every file.
        file_hashes: Vec<Hash32>,
    },
    /// The sender cancelled the job: remove its partial data.
    Cancel {
        /// The job.
        job: J,
        /// The sender's reason.
        reason: String,
    },
    /// Write any refusal frame already queued, then close the connection with the
    /// refusal's code and text.
    Close(Refusal),
}

/// How a finish ended, as the session answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Sealed: the signed manifest and receipts.
    Done {
        /// Signed manifest (JSON).
        manifest: String,
        /// Signed receipts (JSON), one per destination.
        receipts: Vec<String>,
    },
    /// Not sealed.
    Failed {
        /// Why.
        reason: String,
        /// True when retrying cannot help (else the job stays as it is, and a finish sent
        /// again goes on where this one stopped).
        permanent: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    AwaitingHello { deadline: Duration },
    Authenticating { deadline: Duration },
    Open { tenant: String },
    Closed,
}

struct Entry<J> {
    job_id: String,
    job: J,
}

/// One connection at the gateway.
pub struct ReceiverSession<J> {
    phase: Phase,
    auth_timeout: Duration,
    max_jobs: usize,
    handles: HashMap<u32, Entry<J>>,
    /// Opens handed to the gateway and not answered yet (they count against the cap).
    opening: usize,
    next_handle: u32,
    actions: VecDeque<ReceiverAction<J>>,
}

impl<J: Clone> ReceiverSession<J> {
    /// A connection accepted at `now`: it must authenticate within `auth_timeout`, and may
    /// hold at most `max_jobs` open jobs.
    pub fn new(now: Duration, auth_timeout: Duration, max_jobs: usize) -> Self {
        Self {
            phase: Phase::AwaitingHello {
                deadline: now + auth_timeout,
            },
            auth_timeout,
            max_jobs,
            handles: HashMap::new(),
            opening: 0,
            next_handle: 0,
            actions: VecDeque::new(),
        }
    }

    /// The largest control frame the peer may send now.
    pub fn max_frame(&self) -> usize {
        match self.phase {
            Phase::Open { .. } => MAX_CONTROL_FRAME,
            _ => MAX_HELLO_FRAME,
        }
    }

    /// The authenticated tenant.
    pub fn tenant(&self) -> Option<&str> {
        match &self.phase {
            Phase::Open { tenant } => Some(tenant),
            _ => None,
        }
    }

    /// The job held under `handle` (for a chunk stream's header).
    pub fn job(&self, handle: u32) -> Option<&J> {
        self.handles.get(&handle).map(|e| &e.job)
    }

    /// Open jobs on this connection.
    pub fn open_jobs(&self) -> usize {
        self.handles.len()
    }

    /// The authentication deadline, while it runs.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.phase {
            Phase::AwaitingHello { deadline } | Phase::Authenticating { deadline } => {
                Some(deadline)
            }
            _ => None,
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<ReceiverAction<J>> {
        self.actions.pop_front()
    }

    /// Time passed: a peer that has not authenticated by the deadline is closed.
    pub fn on_timeout(&mut self, now: Duration) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.refuse(Refusal::HelloTimeout(self.auth_timeout), false);
        }
    }

    /// A control frame from the sender. An `Err` ends the connection (a close is queued).
    pub fn on_frame(&mut self, frame: ClientFrame) -> Result<(), Refusal> {
        match (&self.phase, frame) {
            (Phase::AwaitingHello { deadline }, ClientFrame::Hello { version, token }) => {
                if let Err(e) = check_hello(version) {
                    return Err(self.refuse(e.into(), true));
                }
                self.phase = Phase::Authenticating {
                    deadline: *deadline,
                };
                self.actions.push_back(ReceiverAction::Authenticate(token));
                Ok(())
            }
            (Phase::AwaitingHello { .. }, _) => Err(self.refuse(
                ProtocolError::Unexpected("first frame must be Hello".into()).into(),
                false,
            )),
            (Phase::Authenticating { .. }, _) => Err(self.refuse(
                ProtocolError::Unexpected("frame before Welcome".into()).into(),
                false,
            )),
            (Phase::Closed, _) => Ok(()),
            (Phase::Open { .. }, ClientFrame::Hello { .. }) => {
                Err(ProtocolError::Unexpected("second Hello".into()).into())
            }
            (Phase::Open { .. }, ClientFrame::OpenTracedJob { open, traceparent }) => {
                let open = OpenJob {
                    traceparent: Some(traceparent),
                    ..open
                };
                self.on_frame(ClientFrame::OpenJob(open))
            }
            (Phase::Open { .. }, ClientFrame::OpenJob(open)) => {
                // Opening a job again on this connection (after it failed, or was busy)
                // abandons its earlier handle: that handle and its slot go, so handles do
                // not pile up on a long-lived connection.
                self.handles.retain(|_, e| e.job_id != open.job_id);
                let held = self.handles.len() + self.opening;
                if held >= self.max_jobs {
                    let reason = format!(
                        "this connection holds {held} open jobs, the most the gateway allows one connection"
                    );
                    self.busy(open.job_id, reason, BUSY_RETRY_MS);
                } else {
                    self.opening += 1;
                    self.actions.push_back(ReceiverAction::Open(open));
                }
                Ok(())
            }
            (
                Phase::Open { .. },
                ClientFrame::FinishJob {
                    handle,
                    file_hashes,
                },
            ) => {
                let Some(e) = self.handles.get(&handle) else {
                    return Err(ProtocolError::Unexpected(format!(
                        "FinishJob for unknown handle {handle}"
                    ))
                    .into());
                };
                self.actions.push_back(ReceiverAction::Finish {
                    handle,
                    job: e.job.clone(),
                    file_hashes,
                });
                Ok(())
            }
            (Phase::Open { .. }, ClientFrame::CancelJob { handle, reason }) => {
                if let Some(e) = self.handles.remove(&handle) {
                    self.actions
                        .push_back(ReceiverAction::Cancel { job: e.job, reason });
                }
                Ok(())
            }
        }
    }

    /// The sender ended the control stream. Before `Hello` that is a refusal (the first
    /// frame must be `Hello`); after it, the connection is simply over.
    pub fn on_control_ended(&mut self) {
        if matches!(self.phase, Phase::AwaitingHello { .. }) {
            self.refuse(
                ProtocolError::Unexpected("first frame must be Hello".into()).into(),
                false,
            );
        }
    }

    /// The token checked out as `tenant`'s (`None`: it names no tenant).
    pub fn authenticated(&mut self, tenant: Option<String>) {
        if !matches!(self.phase, Phase::Authenticating { .. }) {
            return;
        }
        match tenant {
            Some(tenant) => {
                self.actions.push_back(ReceiverAction::Admit);
                self.actions
                    .push_back(ReceiverAction::Frame(ServerFrame::Welcome {
                        version: TRACED_VERSION,
                        tenant: tenant.clone(),
                    }));
                self.phase = Phase::Open { tenant };
            }
            None => {
                self.refuse(Refusal::UnknownToken, true);
            }
        }
    }

    /// The job is open (or resumed) holding `held`; it gets the next handle.
    pub fn opened(&mut self, job_id: String, job: J, held: Vec<Vec<(u64, Hash32)>>) -> u32 {
        self.opening = self.opening.saturating_sub(1);
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        self.handles.insert(
            handle,
            Entry {
                job_id: job_id.clone(),
                job,
            },
        );
        self.actions
            .push_back(ReceiverAction::Frame(ServerFrame::JobReady {
                job_id,
                handle,
                held,
            }));
        handle
    }

    /// The job was not opened for want of room (a quota): the sender opens it again after
    /// `retry_after_ms`.
    pub fn deferred(&mut self, job_id: String, reason: String, retry_after_ms: u32) {
        self.opening = self.opening.saturating_sub(1);
        self.busy(job_id, reason, retry_after_ms);
    }

    fn busy(&mut self, job_id: String, reason: String, retry_after_ms: u32) {
        self.actions
            .push_back(ReceiverAction::Frame(ServerFrame::Busy {
                job_id,
                reason,
                retry_after_ms,
            }));
    }

    /// The job could not be opened.
    pub fn open_failed(&mut self, job_id: String, reason: String, permanent: bool) {
        self.opening = self.opening.saturating_sub(1);
        self.actions
            .push_back(ReceiverAction::Frame(ServerFrame::JobFailed {
                handle: u32::MAX,
                job_id,
                reason,
                permanent,
            }));
    }

    /// The finish of the job under `handle` ended: the job has ended on this connection,
    /// so its handle goes (the sender sends nothing more under it; a repeat open gets a new
    /// one), and the sender is told.
    pub fn finished(&mut self, handle: u32, job_id: String, outcome: Finished) {
        self.handles.remove(&handle);
        let frame = match outcome {
            Finished::Done { manifest, receipts } => ServerFrame::JobDone {
                handle,
                manifest,
                receipts,
            },
            Finished::Failed { reason, permanent } => ServerFrame::JobFailed {
                handle,
                job_id,
                reason,
                permanent,
            },
        };
        self.actions.push_back(ReceiverAction::Frame(frame));
    }

    /// The connection is over: every handle goes (their jobs' slots with them).
    pub fn closed(&mut self) {
        self.phase = Phase::Closed;
        self.handles.clear();
    }

    fn refuse(&mut self, why: Refusal, tell: bool) -> Refusal {
        if tell {
            self.actions
                .push_back(ReceiverAction::Frame(ServerFrame::Refused {
                    reason: why.to_string(),
                }));
        }
        self.actions.push_back(ReceiverAction::Close(why.clone()));
        self.phase = Phase::Closed;
        self.handles.clear();
        why
    }
}

/// How long a sender refused with `Busy` is asked to wait before opening again.
pub const BUSY_RETRY_MS: u32 = 500;
