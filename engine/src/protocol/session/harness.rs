//! A deterministic harness in the manner of quinn-proto's `Pair`: a [`SenderSession`] and a
//! gateway made of [`ReceiverSession`]s and [`ReceiverJob`]s run against each other over a
//! simulated network in virtual time. The control stream is ordered (as a QUIC stream is);
//! every chunk stream has its own delay, so chunks overtake each other and the control
//! frames; a lost packet shows as a retransmission delay; a connection can be cut at any
//! point and the sender reconnects. Everything is seeded: a failing seed fails again.
//! The scenarios are in `tests.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use super::super::retry::RetryLimits;
use super::super::*;
use super::*;

pub(super) const CHUNK: u64 = 1024;
pub(super) const TOKEN: &str = "tenant-token";

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The bytes of chunk `index` of file `file` (a pattern, so both sides agree).
pub(super) fn chunk_data(job: &OpenJob, file: u32, index: u64) -> Vec<u8> {
    let layout = ChunkLayout::new(job.files[file as usize].size, job.chunk_size).unwrap();
    let start = layout.offset(index);
    (0..layout.chunk_len(index))
        .map(|k| ((start + k) as u8) ^ (file as u8).wrapping_mul(31))
        .collect()
}

pub(super) fn job(id: &str, sizes: &[u64]) -> OpenJob {
    OpenJob {
        traceparent: None,
        job_id: id.into(),
        destinations: vec!["null://".into(), "file:///tmp/out".into()],
        chunk_size: CHUNK,
        source: format!("file:///src/{id}"),
        files: sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| FileSpec {
                path: format!("f{i:03}"),
                size,
            })
            .collect(),
        correlation_id: None,
        classification: None,
        strict: None,
    }
}

/// The simulated network's behaviour.
#[derive(Debug, Clone)]
pub(super) struct Net {
    /// One-way delay of every message.
    pub(super) latency: Duration,
    /// Extra random delay of each chunk stream, up to this (reordering).
    pub(super) jitter: Duration,
    /// Chance that a message's packet is lost once (it then arrives one retransmission
    /// timeout later).
    pub(super) loss: f64,
    /// Retransmission timeout.
    pub(super) rto: Duration,
    /// Cut the connection after this many chunk streams were sent on it (each entry once,
    /// in order: several entries cut several connections).
    pub(super) cut_after_chunks: Vec<u64>,
    /// The gateway cannot be reached at all (every handshake fails).
    pub(super) unreachable: bool,
}

impl Default for Net {
    fn default() -> Self {
        Self {
            latency: ms(20),
            jitter: Duration::ZERO,
            loss: 0.0,
            rto: ms(200),
            cut_after_chunks: Vec::new(),
            unreachable: false,
        }
    }
}

/// The gateway's behaviour.
#[derive(Debug, Clone, Default)]
pub(super) struct Gw {
    /// Fail this many opens transiently, then open.
    pub(super) fail_opens: u32,
    /// Fail every open permanently.
    pub(super) refuse_jobs: bool,
    /// Defer opens of the tenant beyond this many open jobs (the tenant's job quota).
    pub(super) max_jobs: Option<usize>,
    /// Jobs per connection.
    pub(super) max_per_connection: Option<usize>,
    /// Chunks whose data is corrupted in transit this many times.
    pub(super) corrupt: HashMap<(String, ChunkRef), u32>,
    /// Time the gateway takes to open these jobs (its connectors, the journal).
    pub(super) slow_opens: HashMap<String, Duration>,
    /// The token the gateway knows.
    pub(super) token: Option<String>,
    /// Never answer Hello (a silent sender is tested from the gateway's side).
    pub(super) silent_sender: bool,
    /// Time the gateway spends on each chunk, one after another (hashing and writing: a
    /// gateway that is the bottleneck queues what arrives).
    pub(super) service: Duration,
}

pub(super) enum Msg {
    ToGateway(ClientFrame),
    Chunk {
        header: ChunkHeader,
        data: Vec<u8>,
    },
    ToSender(ServerFrame),
    Opened(OpenJob),
    /// The gateway closes the connection (after the frames written before it).
    Cut,
}

pub(super) struct Scheduled {
    pub(super) conn: u64,
    pub(super) msg: Msg,
}

/// What one run did.
#[derive(Debug, Default)]
pub(super) struct Run {
    /// Chunk streams that reached the gateway's job.
    pub(super) delivered: u64,
    /// Chunks recorded durable (first time).
    pub(super) recorded: u64,
    /// Chunk streams the sender opened.
    pub(super) streams: u64,
    /// Most bytes in flight at once.
    pub(super) peak_in_flight: u64,
    /// Connections made.
    pub(super) connections: u64,
    /// Rejects the gateway sent.
    pub(super) rejects: u64,
    /// `Busy` answers for the tenant quota.
    pub(super) busy: u64,
    /// `Busy` frames the sender received (any cause).
    pub(super) busy_frames: u64,
    /// Most jobs open on one connection at once.
    pub(super) peak_open: usize,
    /// How the connection-level run ended.
    pub(super) fatal: Option<Fatal>,
    /// The sender gave up reconnecting.
    pub(super) gave_up: Option<Reconnect>,
    /// The session ended cancelled.
    pub(super) cancelled: bool,
    /// Virtual time at the end.
    pub(super) at: Duration,
    /// The gateway's ends of connections it closed itself.
    pub(super) refusals: Vec<Refusal>,
}

pub(super) struct Harness {
    pub(super) now: Duration,
    pub(super) rng: fastrand::Rng,
    pub(super) net: Net,
    pub(super) gw: Gw,
    pub(super) sender: SenderSession,
    pub(super) jobs: Vec<OpenJob>,
    /// The gateway's jobs by id: what it holds survives connections (its job directory).
    pub(super) held: BTreeMap<String, ReceiverJob>,
    /// Jobs sealed at the gateway.
    pub(super) sealed: HashSet<String>,
    /// Job ids open at the gateway, for the tenant quota.
    pub(super) open_at_gateway: HashMap<String, u64>,
    pub(super) server: Option<ReceiverSession<String>>,
    pub(super) conn: u64,
    pub(super) chunks_on_conn: u64,
    pub(super) queue: BTreeMap<(Duration, u64), Scheduled>,
    pub(super) seq: u64,
    /// Last delivery time per direction of the control stream (it is ordered).
    pub(super) control_tail: [Duration; 2],
    /// Until when the gateway is busy with chunks already taken.
    pub(super) busy_until: Duration,
    pub(super) reconnect_at: Option<Duration>,
    pub(super) cancel_at: Option<Duration>,
    pub(super) unreadable: Option<(usize, ChunkRef)>,
    pub(super) run: Run,
}

impl Harness {
    pub(super) fn new(seed: u64, jobs: Vec<OpenJob>, budget: u64, net: Net, gw: Gw) -> Self {
        let limits = RetryLimits {
            max_reopens: 8,
            retry_for: Duration::from_secs(60),
        };
        let mut sender = SenderSession::new(limits, budget, Duration::ZERO);
        for j in &jobs {
            sender.add_job(j.clone()).unwrap();
        }
        Self {
            now: Duration::ZERO,
            rng: fastrand::Rng::with_seed(seed),
            net,
            gw: Gw {
                token: Some(TOKEN.into()),
                ..gw
            },
            sender,
            jobs,
            held: BTreeMap::new(),
            sealed: HashSet::new(),
            open_at_gateway: HashMap::new(),
            server: None,
            conn: 0,
            chunks_on_conn: 0,
            queue: BTreeMap::new(),
            seq: 0,
            control_tail: [Duration::ZERO; 2],
            busy_until: Duration::ZERO,
            reconnect_at: Some(Duration::ZERO),
            cancel_at: None,
            unreadable: None,
            run: Run::default(),
        }
    }

    pub(super) fn delay(&mut self, chunk: bool) -> Duration {
        let mut d = self.net.latency;
        if chunk && !self.net.jitter.is_zero() {
            d += self.net.jitter.mul_f64(self.rng.f64());
        }
        while self.rng.f64() < self.net.loss {
            d += self.net.rto;
        }
        d
    }

    pub(super) fn schedule(&mut self, after: Duration, msg: Msg) {
        let ordered = match &msg {
            Msg::ToGateway(_) => Some(0),
            Msg::ToSender(_) | Msg::Cut => Some(1),
            _ => None,
        };
        let mut at = self.now + after;
        if let Some(dir) = ordered {
            at = at.max(self.control_tail[dir]);
            self.control_tail[dir] = at;
        }
        self.seq += 1;
        self.queue.insert(
            (at, self.seq),
            Scheduled {
                conn: self.conn,
                msg,
            },
        );
    }

    pub(super) fn connect(&mut self) {
        self.conn += 1;
        self.chunks_on_conn = 0;
        self.control_tail = [self.now; 2];
        if self.net.unreachable {
            // The handshake times out.
            self.now += ms(1_000);
            self.disconnect();
            return;
        }
        self.run.connections += 1;
        self.server = Some(ReceiverSession::new(
            self.now,
            ms(5_000),
            self.gw.max_per_connection.unwrap_or(usize::MAX),
        ));
        if !self.gw.silent_sender {
            self.sender.connected(&Secret(TOKEN.into()), self.now);
        }
    }

    /// The connection is cut (or never made): both sides forget it.
    pub(super) fn disconnect(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.closed();
        }
        self.open_at_gateway.retain(|_, c| *c != self.conn);
        self.queue.clear();
        let jitter = self.rng.f64();
        match self.sender.disconnected(true, self.now, jitter) {
            Reconnect::After(wait) => self.reconnect_at = Some(self.now + wait),
            end @ Reconnect::GiveUp { .. } => self.run.gave_up = Some(end),
        }
    }

    pub(super) fn sender_actions(&mut self) {
        while let Some(a) = self.sender.poll_action() {
            match a {
                Action::Frame(f) => {
                    let d = self.delay(false);
                    self.schedule(d, Msg::ToGateway(f));
                }
                Action::Acked { latency, .. } => assert!(latency <= self.now),
                Action::Dropped { .. } | Action::DroppedAll { .. } | Action::Progress { .. } => {}
                Action::Settled { job } => assert!(self.sender.job(job).end().is_some()),
            }
        }
        while let Some(w) = self.sender.want() {
            let order = self.sender.send_chunk(w.job, self.now).expect("wanted");
            self.run.streams += 1;
            self.run.peak_in_flight = self.run.peak_in_flight.max(self.sender.in_flight_bytes());
            let open = &self.jobs[order.job];
            if self.unreadable == Some((order.job, order.chunk)) {
                self.sender
                    .on_source_failed(order.job, "f000: file changed".into(), self.now);
                return self.sender_actions();
            }
            let mut data = chunk_data(open, order.chunk.file, order.chunk.index);
            let hash = order.layout.chunk_hash(order.chunk.index, &data);
            self.sender.on_hashed(order.job, order.chunk, hash);
            let key = (open.job_id.clone(), order.chunk);
            if let Some(n) = self.gw.corrupt.get_mut(&key).filter(|n| **n > 0) {
                *n -= 1;
                data[0] ^= 1;
            }
            let header = ChunkHeader {
                handle: order.handle,
                chunk: order.chunk,
                len: data.len() as u64,
                hash,
            };
            let d = self.delay(true);
            self.schedule(d, Msg::Chunk { header, data });
            self.chunks_on_conn += 1;
            if self.net.cut_after_chunks.first() == Some(&self.chunks_on_conn) {
                self.net.cut_after_chunks.remove(0);
                self.disconnect();
                return;
            }
        }
    }

    pub(super) fn server_actions(&mut self) {
        loop {
            let Some(server) = self.server.as_mut() else {
                return;
            };
            let Some(a) = server.poll_action() else {
                return;
            };
            match a {
                ReceiverAction::Frame(f) => {
                    let d = self.delay(false);
                    self.schedule(d, Msg::ToSender(f));
                }
                ReceiverAction::Authenticate(token) => {
                    let ok = self.gw.token.as_deref() == Some(token.0.as_str());
                    server.authenticated(ok.then(|| "acme".to_string()));
                }
                ReceiverAction::Admit => {}
                ReceiverAction::Open(open) => {
                    let d = (self.gw.slow_opens.get(&open.job_id).copied()).unwrap_or_default();
                    self.schedule(d, Msg::Opened(open));
                }
                ReceiverAction::Finish {
                    handle,
                    job,
                    file_hashes,
                } => {
                    let outcome = match self.held[&job].finish(&file_hashes) {
                        Ok(entries) => {
                            self.sealed.insert(job.clone());
                            self.open_at_gateway.remove(&job);
                            Finished::Done {
                                manifest: format!("manifest {job}: {} files", entries.len()),
                                receipts: self.held[&job]
                                    .open()
                                    .destinations
                                    .iter()
                                    .map(|d| format!("receipt {job} {d}"))
                                    .collect(),
                            }
                        }
                        Err(e) => Finished::Failed {
                            reason: e.to_string(),
                            permanent: true,
                        },
                    };
                    server.finished(handle, job, outcome);
                }
                ReceiverAction::Cancel { job, .. } => {
                    self.held.remove(&job);
                    self.open_at_gateway.remove(&job);
                }
                ReceiverAction::Close(why) => {
                    self.run.refusals.push(why);
                    self.schedule(Duration::ZERO, Msg::Cut);
                }
            }
        }
    }

    /// The gateway opens (or resumes) a job.
    pub(super) fn open_job(&mut self, open: OpenJob) {
        let conn = self.conn;
        let server = self.server.as_mut().expect("connected");
        if let Some(max) = self.gw.max_jobs
            && !self.open_at_gateway.contains_key(&open.job_id)
            && self.open_at_gateway.len() >= max
        {
            self.run.busy += 1;
            server.deferred(open.job_id, "tenant acme is at 1 job".into(), BUSY_RETRY_MS);
            return;
        }
        if self.gw.refuse_jobs {
            server.open_failed(open.job_id, "destination refused".into(), true);
            return;
        }
        if self.gw.fail_opens > 0 {
            self.gw.fail_opens -= 1;
            server.open_failed(open.job_id, "ledger busy".into(), false);
            return;
        }
        let id = open.job_id.clone();
        let job = match self.held.remove(&id) {
            Some(j) => j,
            None => ReceiverJob::new(open).unwrap(),
        };
        let held = job.held_chunks();
        self.held.insert(id.clone(), job);
        self.open_at_gateway.insert(id.clone(), conn);
        server.opened(id.clone(), id, held);
        self.run.peak_open = self.run.peak_open.max(server.open_jobs());
    }

    pub(super) fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::ToGateway(f) => {
                let server = self.server.as_mut().expect("connected");
                if let Err(e) = server.on_frame(f) {
                    // A close is queued; the actions carry it out.
                    let _ = e;
                }
            }
            Msg::Opened(open) => self.open_job(open),
            Msg::Chunk { header, data } => {
                let server = self.server.as_mut().expect("connected");
                let Some(id) = server.job(header.handle).cloned() else {
                    return; // a stream for an abandoned handle is stopped
                };
                let job = self.held.get_mut(&id).expect("open job");
                self.run.delivered += 1;
                let reply = match job.check_header(&header) {
                    Ok(Disposition::AlreadyHeld) => ServerFrame::Acks {
                        handle: header.handle,
                        chunks: vec![header.chunk],
                    },
                    Ok(Disposition::Accept(layout)) => {
                        let hash = layout.chunk_hash(header.chunk.index, &data);
                        if hash == header.hash {
                            job.record(header.chunk, hash).unwrap();
                            self.run.recorded += 1;
                            ServerFrame::Acks {
                                handle: header.handle,
                                chunks: vec![header.chunk],
                            }
                        } else {
                            self.run.rejects += 1;
                            ServerFrame::Reject {
                                handle: header.handle,
                                chunk: header.chunk,
                                reason: "hash mismatch".into(),
                            }
                        }
                    }
                    Err(e) => ServerFrame::Reject {
                        handle: header.handle,
                        chunk: header.chunk,
                        reason: e.to_string(),
                    },
                };
                // The chunk waits for the chunks before it, then the group commit.
                let start = self.now.max(self.busy_until);
                self.busy_until = start + self.gw.service;
                let d = (self.busy_until - self.now) + self.delay(false) + ms(2);
                self.schedule(d, Msg::ToSender(reply));
            }
            Msg::Cut => self.disconnect(),
            Msg::ToSender(f) => {
                if matches!(f, ServerFrame::Busy { .. }) {
                    self.run.busy_frames += 1;
                }
                if let Err(e) = self.sender.on_frame(f, self.now) {
                    self.run.fatal = Some(e);
                }
            }
        }
    }

    /// Runs until the send is settled, cancelled, failed or given up (or `limit` of
    /// virtual time passed).
    pub(super) fn run(mut self, limit: Duration) -> (Self, Run) {
        while self.now < limit {
            self.sender_actions();
            self.server_actions();
            if self.run.fatal.is_some() || self.run.gave_up.is_some() {
                break;
            }
            match self.sender.phase() {
                Phase::Finished => break,
                Phase::Cancelled => {
                    self.run.cancelled = true;
                    // The gateway reads what was written before the close.
                    while let Some((_, s)) = self.queue.pop_first() {
                        if let Msg::ToGateway(f) = s.msg
                            && let Some(server) = self.server.as_mut()
                        {
                            let _ = server.on_frame(f);
                            self.server_actions();
                        }
                    }
                    break;
                }
                _ => {}
            }
            let next = [
                self.queue.keys().next().map(|k| k.0),
                self.sender.poll_timeout(),
                self.server.as_ref().and_then(|s| s.poll_timeout()),
                self.reconnect_at,
                self.cancel_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { break };
            self.now = self.now.max(next);
            if self.reconnect_at.is_some_and(|t| t <= self.now) {
                self.reconnect_at = None;
                self.connect();
                continue;
            }
            if self.cancel_at.is_some_and(|t| t <= self.now) {
                self.cancel_at = None;
                self.sender.cancel(self.now);
                continue;
            }
            if let Some(first) = self.queue.first_key_value().map(|(k, _)| *k)
                && first.0 <= self.now
            {
                let s = self.queue.remove(&first).expect("present");
                if s.conn == self.conn {
                    self.deliver(s.msg);
                }
                continue;
            }
            self.sender.on_timeout(self.now);
            if let Some(server) = self.server.as_mut() {
                server.on_timeout(self.now);
            }
        }
        self.run.at = self.now;
        let run = std::mem::take(&mut self.run);
        (self, run)
    }

    pub(super) fn chunks(&self) -> u64 {
        self.jobs
            .iter()
            .flat_map(|j| &j.files)
            .map(|f| f.size.div_ceil(CHUNK).max(1))
            .sum()
    }

    pub(super) fn assert_all_done(&self) {
        for (i, j) in self.sender.jobs().iter().enumerate() {
            match j.end() {
                Some(JobEnd::Done { manifest, receipts }) => {
                    assert_eq!(
                        manifest,
                        &format!(
                            "manifest {}: {} files",
                            j.open().job_id,
                            self.jobs[i].files.len()
                        )
                    );
                    assert_eq!(receipts.len(), 2);
                    assert_eq!(j.acked_bytes(), j.total_bytes());
                }
                other => panic!("job {i} ended {other:?}"),
            }
            assert!(self.sealed.contains(&j.open().job_id));
        }
    }
}
