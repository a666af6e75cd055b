//! The gateway's control frames, as the sender session answers them.

use std::time::Duration;

use super::super::super::retry::Verdict;
use super::super::super::*;
use super::{Action, Fatal, JobEnd, Phase, SenderSession};

impl SenderSession {
    /// A frame from the gateway's control stream.
    pub fn on_frame(&mut self, frame: ServerFrame, now: Duration) -> Result<(), Fatal> {
        if let Phase::Cancelling { .. } = self.phase {
            self.on_frame_cancelling(frame);
            return Ok(());
        }
        if self.phase != Phase::Open {
            return Ok(());
        }
        match frame {
            ServerFrame::Welcome { version, tenant } => {
                tracing::debug!(%tenant, version, "authenticated");
                self.welcomed = true;
                self.gateway_version = version;
                for i in std::mem::take(&mut self.opens_after_welcome) {
                    if !self.jobs[i].settled() {
                        let frame = super::open_frame(&self.jobs[i].open, version);
                        self.actions.push_back(Action::Frame(frame));
                    }
                }
            }
            ServerFrame::Refused { reason } => return Err(Fatal::Refused(reason)),
            ServerFrame::JobReady {
                job_id,
                handle,
                held,
            } => {
                let i = self.by_id(&job_id, "JobReady")?;
                self.jobs[i].awaiting_ready = false;
                if self.jobs[i].settled() {
                    return self.advance();
                }
                self.jobs[i].core.on_ready(&held)?;
                self.detach(i);
                self.jobs[i].handle = Some(handle);
                self.by_handle.insert(handle, i);
                let (held, _, total) = self.jobs[i].core.progress();
                tracing::info!(job = %job_id, held, total, "job ready");
                self.actions.push_back(Action::Progress { job: i });
            }
            ServerFrame::Acks { handle, chunks } => {
                let i = self.by_handle(handle)?;
                let j = &mut self.jobs[i];
                if j.settled() {
                    return self.advance();
                }
                for c in chunks {
                    j.core.on_ack(c)?;
                    let Some(f) = j.in_flight.remove(&c) else {
                        continue;
                    };
                    let latency = now.saturating_sub(f.sent);
                    let before = self.window.size();
                    self.window
                        .on_ack(u64::from(f.len), latency, self.in_flight_bytes, now);
                    if self.window.size() != before {
                        tracing::debug!(
                            bytes = self.window.size(),
                            limit = self.window.limit(),
                            latency_ms = latency.as_millis() as u64,
                            "in-flight window"
                        );
                    }
                    self.in_flight_bytes -= u64::from(f.len);
                    self.actions.push_back(Action::Acked {
                        job: i,
                        chunk: c,
                        latency,
                    });
                }
                self.actions.push_back(Action::Progress { job: i });
            }
            ServerFrame::Reject {
                handle,
                chunk,
                reason,
            } => {
                let i = self.by_handle(handle)?;
                let j = &mut self.jobs[i];
                if j.settled() {
                    return self.advance();
                }
                tracing::warn!(job = %j.open.job_id, ?chunk, %reason, "chunk rejected; sending it again");
                if let Some(f) = j.in_flight.remove(&chunk) {
                    self.in_flight_bytes -= u64::from(f.len);
                    self.actions.push_back(Action::Dropped { job: i, chunk });
                }
                if j.next == Some(chunk) {
                    j.next = None;
                }
                j.core.on_reject(chunk)?;
            }
            ServerFrame::JobDone {
                handle,
                manifest,
                receipts,
            } => {
                let i = self.by_handle(handle)?;
                let j = &self.jobs[i];
                if j.settled() {
                    return self.advance();
                }
                if receipts.len() != j.open.destinations.len() {
                    return Err(ProtocolError::Unexpected(format!(
                        "{} receipts for {} destinations",
                        receipts.len(),
                        j.open.destinations.len()
                    ))
                    .into());
                }
                tracing::info!(job = %j.open.job_id, "job done");
                self.settle(i, JobEnd::Done { manifest, receipts }, now);
            }
            ServerFrame::JobFailed {
                handle,
                job_id,
                reason,
                permanent,
            } => {
                let i = match self.by_handle.get(&handle) {
                    Some(&i) => i,
                    None => self.by_id(&job_id, "JobFailed")?,
                };
                if handle == u32::MAX {
                    self.jobs[i].awaiting_ready = false;
                }
                let j = &self.jobs[i];
                // Already settled, or a repeat for a job being reopened.
                if j.settled() || j.handle.is_none() && handle != u32::MAX {
                    return self.advance();
                }
                self.detach(i);
                let limits = self.limits;
                match self.jobs[i].retry.on_failed(permanent, now, &limits) {
                    Verdict::GiveUp => {
                        tracing::warn!(job = %job_id, %reason, permanent, "job failed");
                        self.settle(i, JobEnd::Failed { reason, permanent }, now);
                    }
                    Verdict::Reopen(backoff) => {
                        tracing::warn!(job = %job_id, %reason, attempt = self.jobs[i].retry.reopens(), ?backoff, "job failed at the gateway; reopening");
                    }
                }
            }
            ServerFrame::Busy {
                job_id,
                reason,
                retry_after_ms,
            } => {
                let i = self.by_id(&job_id, "Busy")?;
                self.jobs[i].awaiting_ready = false;
                if self.jobs[i].settled() {
                    return self.advance();
                }
                // While another job of this send is open a slot will come free: the job
                // waits for it as long as it takes. Otherwise it waits a bounded number of
                // times.
                let sibling_open = (self.jobs.iter().enumerate())
                    .any(|(k, j)| k != i && !j.settled() && j.handle.is_some());
                self.detach(i);
                let limits = self.limits;
                let verdict =
                    self.jobs[i]
                        .retry
                        .on_busy(sibling_open, retry_after_ms, now, &limits);
                match verdict {
                    Verdict::GiveUp => {
                        tracing::warn!(job = %job_id, %reason, "gateway busy; giving up for now");
                        self.settle(i, JobEnd::Busy { reason }, now);
                    }
                    Verdict::Reopen(backoff) => {
                        tracing::info!(job = %job_id, %reason, ?backoff, "gateway busy; opening the job again later");
                    }
                }
            }
        }
        self.advance()
    }

    /// While cancelling, a job whose open was outstanding may be made at the gateway all
    /// the same: each one that turns ready is cancelled too, so that the gateway removes
    /// what it made.
    fn on_frame_cancelling(&mut self, frame: ServerFrame) {
        let job_id = match frame {
            ServerFrame::JobReady { job_id, handle, .. } => {
                self.actions
                    .push_back(Action::Frame(ClientFrame::CancelJob {
                        handle,
                        reason: "cancelled by the sender".into(),
                    }));
                job_id
            }
            ServerFrame::JobFailed { job_id, .. } | ServerFrame::Busy { job_id, .. } => job_id,
            _ => return,
        };
        if let Some(&i) = self.by_id.get(&job_id) {
            self.jobs[i].awaiting_ready = false;
        }
        if !self.setting_up() {
            self.phase = Phase::Cancelled;
        }
    }

    /// The gateway ended the control stream. Returns whether that loses the connection
    /// (it does not while cancelling: the cancel is then over).
    pub fn on_control_closed(&mut self) -> bool {
        match self.phase {
            Phase::Cancelling { .. } => {
                self.phase = Phase::Cancelled;
                false
            }
            Phase::Open => true,
            _ => false,
        }
    }
}
