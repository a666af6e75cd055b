//! A deterministic harness in the manner of quinn-proto's `Pair`: a [`SenderSession`] and a
//! gateway made of [`ReceiverSession`]s and [`ReceiverJob`]s run against each other over a
//! simulated network in virtual time. The control stream is ordered (as a QUIC stream is);
//! every chunk stream has its own delay, so chunks overtake each other and the control
//! frames; a lost packet shows as a retransmission delay; a connection can be cut at any
//! point and the sender reconnects. Everything is seeded: a failing seed fails again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use super::super::retry::RetryLimits;
use super::super::*;
use super::*;

const CHUNK: u64 = 1024;
const TOKEN: &str = "tenant-token";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The bytes of chunk `index` of file `file` (a pattern, so both sides agree).
fn chunk_data(job: &OpenJob, file: u32, index: u64) -> Vec<u8> {
    let layout = ChunkLayout::new(job.files[file as usize].size, job.chunk_size).unwrap();
    let start = layout.offset(index);
    (0..layout.chunk_len(index))
        .map(|k| ((start + k) as u8) ^ (file as u8).wrapping_mul(31))
        .collect()
}

fn job(id: &str, sizes: &[u64]) -> OpenJob {
    OpenJob {
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
struct Net {
    /// One-way delay of every message.
    latency: Duration,
    /// Extra random delay of each chunk stream, up to this (reordering).
    jitter: Duration,
    /// Chance that a message's packet is lost once (it then arrives one retransmission
    /// timeout later).
    loss: f64,
    /// Retransmission timeout.
    rto: Duration,
    /// Cut the connection after this many chunk streams were sent on it (each entry once,
    /// in order: several entries cut several connections).
    cut_after_chunks: Vec<u64>,
    /// The gateway cannot be reached at all (every handshake fails).
    unreachable: bool,
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
struct Gw {
    /// Fail this many opens transiently, then open.
    fail_opens: u32,
    /// Fail every open permanently.
    refuse_jobs: bool,
    /// Defer opens of the tenant beyond this many open jobs (the tenant's job quota).
    max_jobs: Option<usize>,
    /// Jobs per connection.
    max_per_connection: Option<usize>,
    /// Chunks whose data is corrupted in transit this many times.
    corrupt: HashMap<(String, ChunkRef), u32>,
    /// Time the gateway takes to open these jobs (its connectors, the journal).
    slow_opens: HashMap<String, Duration>,
    /// The token the gateway knows.
    token: Option<String>,
    /// Never answer Hello (a silent sender is tested from the gateway's side).
    silent_sender: bool,
}

enum Msg {
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

struct Scheduled {
    conn: u64,
    msg: Msg,
}

/// What one run did.
#[derive(Debug, Default)]
struct Run {
    /// Chunk streams that reached the gateway's job.
    delivered: u64,
    /// Chunks recorded durable (first time).
    recorded: u64,
    /// Chunk streams the sender opened.
    streams: u64,
    /// Most bytes in flight at once.
    peak_in_flight: u64,
    /// Connections made.
    connections: u64,
    /// Rejects the gateway sent.
    rejects: u64,
    /// `Busy` answers for the tenant quota.
    busy: u64,
    /// `Busy` frames the sender received (any cause).
    busy_frames: u64,
    /// Most jobs open on one connection at once.
    peak_open: usize,
    /// How the connection-level run ended.
    fatal: Option<Fatal>,
    /// The sender gave up reconnecting.
    gave_up: Option<Reconnect>,
    /// The session ended cancelled.
    cancelled: bool,
    /// Virtual time at the end.
    at: Duration,
    /// The gateway's ends of connections it closed itself.
    refusals: Vec<Refusal>,
}

struct Harness {
    now: Duration,
    rng: fastrand::Rng,
    net: Net,
    gw: Gw,
    sender: SenderSession,
    jobs: Vec<OpenJob>,
    /// The gateway's jobs by id: what it holds survives connections (its job directory).
    held: BTreeMap<String, ReceiverJob>,
    /// Jobs sealed at the gateway.
    sealed: HashSet<String>,
    /// Job ids open at the gateway, for the tenant quota.
    open_at_gateway: HashMap<String, u64>,
    server: Option<ReceiverSession<String>>,
    conn: u64,
    chunks_on_conn: u64,
    queue: BTreeMap<(Duration, u64), Scheduled>,
    seq: u64,
    /// Last delivery time per direction of the control stream (it is ordered).
    control_tail: [Duration; 2],
    reconnect_at: Option<Duration>,
    cancel_at: Option<Duration>,
    unreadable: Option<(usize, ChunkRef)>,
    run: Run,
}

impl Harness {
    fn new(seed: u64, jobs: Vec<OpenJob>, budget: u64, net: Net, gw: Gw) -> Self {
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
            reconnect_at: Some(Duration::ZERO),
            cancel_at: None,
            unreadable: None,
            run: Run::default(),
        }
    }

    fn delay(&mut self, chunk: bool) -> Duration {
        let mut d = self.net.latency;
        if chunk && !self.net.jitter.is_zero() {
            d += self.net.jitter.mul_f64(self.rng.f64());
        }
        while self.rng.f64() < self.net.loss {
            d += self.net.rto;
        }
        d
    }

    fn schedule(&mut self, after: Duration, msg: Msg) {
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

    fn connect(&mut self) {
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
    fn disconnect(&mut self) {
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

    fn sender_actions(&mut self) {
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

    fn server_actions(&mut self) {
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
    fn open_job(&mut self, open: OpenJob) {
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

    fn deliver(&mut self, msg: Msg) {
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
                // The group commit's latency before the ack.
                let d = self.delay(false) + ms(2);
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
    fn run(mut self, limit: Duration) -> (Self, Run) {
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

    fn chunks(&self) -> u64 {
        self.jobs
            .iter()
            .flat_map(|j| &j.files)
            .map(|f| f.size.div_ceil(CHUNK).max(1))
            .sum()
    }

    fn assert_all_done(&self) {
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

fn sizes(n: usize, each: u64) -> Vec<u64> {
    vec![each; n]
}

#[test]
fn a_clean_send_sends_every_chunk_once_within_the_budget() {
    let jobs = vec![
        job("a", &sizes(3, 10 * CHUNK)),
        job("b", &[0, 1, 5 * CHUNK + 7]),
    ];
    let h = Harness::new(1, jobs, 8 * CHUNK, Net::default(), Gw::default());
    let chunks = h.chunks();
    let (h, run) = h.run(Duration::from_secs(60));
    h.assert_all_done();
    assert_eq!(run.streams, chunks, "each chunk once");
    assert_eq!(run.recorded, chunks);
    assert_eq!(run.connections, 1);
    assert!(run.peak_in_flight <= 8 * CHUNK, "{}", run.peak_in_flight);
    assert!(run.peak_in_flight >= 7 * CHUNK, "the budget is used");
    assert_eq!(h.sender.in_flight_bytes(), 0);
    // Round robin: both jobs were in flight together, so the short one ended first.
    let a = h.sender.job(0).finished_at().unwrap();
    let b = h.sender.job(1).finished_at().unwrap();
    assert!(b < a, "{b:?} {a:?}");
}

#[test]
fn the_budget_bounds_throughput_on_a_long_link() {
    // 40 chunks over a 100 ms one-way link: with 4 chunks of budget a round trip (200 ms
    // plus the commit) moves 4 chunks, so about 10 round trips; with 40, about one.
    let run_with = |budget| {
        let net = Net {
            latency: ms(100),
            ..Net::default()
        };
        let (h, run) = Harness::new(2, vec![job("a", &[40 * CHUNK])], budget, net, Gw::default())
            .run(Duration::from_secs(60));
        h.assert_all_done();
        run.at
    };
    let narrow = run_with(4 * CHUNK);
    let wide = run_with(40 * CHUNK);
    assert!(narrow >= ms(2_000), "{narrow:?}");
    assert!(wide <= ms(800), "{wide:?}");
}

#[test]
fn loss_and_reordering_lose_nothing_and_resend_nothing() {
    for seed in 0..40 {
        let net = Net {
            jitter: ms(80),
            loss: 0.2,
            ..Net::default()
        };
        let jobs = vec![job("a", &sizes(4, 6 * CHUNK)), job("b", &[13 * CHUNK + 1])];
        let h = Harness::new(seed, jobs, 6 * CHUNK, net, Gw::default());
        let chunks = h.chunks();
        let (h, run) = h.run(Duration::from_secs(600));
        h.assert_all_done();
        // QUIC retransmits lost packets: a late chunk is not a lost one.
        assert_eq!(run.streams, chunks, "seed {seed}");
        assert_eq!(run.recorded, chunks, "seed {seed}");
    }
}

#[test]
fn a_cut_connection_resumes_with_only_what_the_gateway_lacks() {
    for seed in 0..20 {
        let net = Net {
            jitter: ms(30),
            cut_after_chunks: vec![7, 3, 11],
            ..Net::default()
        };
        let jobs = vec![job("a", &sizes(3, 8 * CHUNK)), job("b", &[9 * CHUNK])];
        let budget = 5 * CHUNK;
        let h = Harness::new(seed, jobs, budget, net, Gw::default());
        let chunks = h.chunks();
        let (h, run) = h.run(Duration::from_secs(600));
        h.assert_all_done();
        assert_eq!(run.connections, 4, "seed {seed}");
        assert_eq!(h.sender.reconnects(), 3);
        // Every chunk recorded once; at most a budget's worth resent per cut.
        assert_eq!(run.recorded, chunks, "seed {seed}");
        assert!(
            run.streams > chunks,
            "seed {seed}: the cuts lost chunks in flight"
        );
        assert!(
            run.streams <= chunks + 3 * (budget / CHUNK),
            "seed {seed}: {}",
            run.streams
        );
    }
}

#[test]
fn a_corrupted_chunk_is_rejected_and_sent_again() {
    let mut gw = Gw::default();
    gw.corrupt
        .insert(("a".into(), ChunkRef { file: 1, index: 2 }), 2);
    let h = Harness::new(
        3,
        vec![job("a", &sizes(2, 4 * CHUNK))],
        4 * CHUNK,
        Net::default(),
        gw,
    );
    let chunks = h.chunks();
    let (h, run) = h.run(Duration::from_secs(60));
    h.assert_all_done();
    assert_eq!(run.rejects, 2);
    assert_eq!(run.streams, chunks + 2);
}

#[test]
fn a_chunk_rejected_too_often_ends_the_send() {
    let mut gw = Gw::default();
    gw.corrupt
        .insert(("a".into(), ChunkRef { file: 0, index: 0 }), u32::MAX);
    let (_, run) = Harness::new(
        4,
        vec![job("a", &[3 * CHUNK])],
        4 * CHUNK,
        Net::default(),
        gw,
    )
    .run(Duration::from_secs(60));
    assert_eq!(run.rejects, u64::from(MAX_CHUNK_ATTEMPTS));
    assert!(
        matches!(&run.fatal, Some(Fatal::Protocol(ProtocolError::InvalidChunk(m))) if m.contains("rejected 5 times")),
        "{:?}",
        run.fatal
    );
}

#[test]
fn transient_open_failures_are_reopened_on_schedule_then_succeed() {
    let gw = Gw {
        fail_opens: 3,
        ..Gw::default()
    };
    let (h, run) = Harness::new(
        5,
        vec![job("a", &[2 * CHUNK])],
        4 * CHUNK,
        Net::default(),
        gw,
    )
    .run(Duration::from_secs(60));
    h.assert_all_done();
    assert_eq!(h.sender.job(0).reopens(), 3);
    assert_eq!(run.connections, 1, "reopened on the same connection");
    // Three failures, 200 + 400 + 800 ms of backoff, each a round trip of 40 ms.
    assert!(run.at >= ms(1_400 + 4 * 40), "{:?}", run.at);
    assert!(run.at < ms(1_400 + 8 * 40), "{:?}", run.at);
}

#[test]
fn a_permanent_failure_ends_only_that_job() {
    let gw = Gw {
        refuse_jobs: true,
        ..Gw::default()
    };
    let (h, run) = Harness::new(
        6,
        vec![job("a", &[CHUNK]), job("b", &[CHUNK])],
        CHUNK,
        Net::default(),
        gw,
    )
    .run(Duration::from_secs(60));
    assert!(run.fatal.is_none());
    for j in h.sender.jobs() {
        assert_eq!(
            j.end(),
            Some(&JobEnd::Failed {
                reason: "destination refused".into(),
                permanent: true
            })
        );
        assert_eq!(j.reopens(), 0);
    }
    assert_eq!(h.sender.phase(), Phase::Finished);
}

#[test]
fn jobs_beyond_the_tenant_quota_wait_for_a_slot_and_all_finish() {
    let gw = Gw {
        max_jobs: Some(1),
        ..Gw::default()
    };
    let jobs = (0..4)
        .map(|i| job(&format!("j{i}"), &[6 * CHUNK]))
        .collect();
    let (h, run) =
        Harness::new(7, jobs, 4 * CHUNK, Net::default(), gw).run(Duration::from_secs(600));
    h.assert_all_done();
    assert!(run.busy >= 3, "{}", run.busy);
    // One at a time: no two jobs' lifetimes overlap at the gateway, so they end in turn.
    let mut ends: Vec<_> = h
        .sender
        .jobs()
        .iter()
        .map(|j| j.finished_at().unwrap())
        .collect();
    ends.dedup();
    assert_eq!(ends.len(), 4);
}

#[test]
fn a_connection_holds_at_most_its_share_of_jobs() {
    let gw = Gw {
        max_per_connection: Some(2),
        ..Gw::default()
    };
    let jobs = (0..5)
        .map(|i| job(&format!("j{i}"), &[3 * CHUNK]))
        .collect();
    let (h, run) =
        Harness::new(8, jobs, 4 * CHUNK, Net::default(), gw).run(Duration::from_secs(600));
    h.assert_all_done();
    assert_eq!(run.busy, 0, "the tenant quota was never reached");
    assert!(run.busy_frames >= 3, "{}", run.busy_frames);
    assert_eq!(run.peak_open, 2);
}

#[test]
fn cancel_removes_open_jobs_and_those_that_turn_ready_during_the_grace() {
    // Job "slow" is opened 500 ms late: cancelled before it is ready, it is cancelled as
    // soon as the gateway answers.
    let gw = Gw {
        slow_opens: [("slow".to_string(), ms(500))].into(),
        ..Gw::default()
    };
    let mut h = Harness::new(
        9,
        vec![job("a", &[50 * CHUNK]), job("slow", &[CHUNK])],
        2 * CHUNK,
        Net::default(),
        gw,
    );
    h.cancel_at = Some(ms(300));
    let (h, run) = h.run(Duration::from_secs(60));
    assert!(run.cancelled);
    assert!(run.recorded > 0, "job a was under way");
    assert!(
        h.held.is_empty(),
        "the gateway removed both: {:?}",
        h.held.keys().collect::<Vec<_>>()
    );
    assert!(run.at < ms(300) + CANCEL_GRACE + ms(100), "{:?}", run.at);
    assert!(h.sender.jobs().iter().all(|j| j.end().is_none()));
}

#[test]
fn cancel_without_an_answer_gives_up_after_the_grace() {
    let gw = Gw {
        slow_opens: [("a".to_string(), ms(60_000))].into(),
        ..Gw::default()
    };
    let mut h = Harness::new(10, vec![job("a", &[CHUNK])], CHUNK, Net::default(), gw);
    h.cancel_at = Some(ms(100));
    let (_, run) = h.run(Duration::from_secs(60));
    assert!(run.cancelled);
    assert_eq!(run.at, ms(100) + CANCEL_GRACE);
}

#[test]
fn an_unreadable_source_cancels_its_job_and_not_the_others() {
    let mut h = Harness::new(
        11,
        vec![job("a", &[4 * CHUNK]), job("b", &[4 * CHUNK])],
        2 * CHUNK,
        Net::default(),
        Gw::default(),
    );
    h.unreadable = Some((0, ChunkRef { file: 0, index: 2 }));
    let (h, run) = h.run(Duration::from_secs(60));
    assert!(run.fatal.is_none());
    assert_eq!(
        h.sender.job(0).end(),
        Some(&JobEnd::SourceRead("f000: file changed".into()))
    );
    assert!(matches!(h.sender.job(1).end(), Some(JobEnd::Done { .. })));
    assert!(
        !h.held.contains_key("a"),
        "the gateway dropped the cancelled job"
    );
}

#[test]
fn a_wrong_token_is_refused_and_not_retried() {
    let gw = Gw::default();
    let mut h = Harness::new(12, vec![job("a", &[CHUNK])], CHUNK, Net::default(), gw);
    h.gw.token = Some("another".into());
    let (_, run) = h.run(Duration::from_secs(60));
    assert_eq!(
        run.fatal,
        Some(Fatal::Refused("unknown tenant token".into()))
    );
    assert_eq!(run.refusals, [Refusal::UnknownToken]);
    assert_eq!(run.connections, 1);
}

#[test]
fn a_sender_that_never_says_hello_is_closed_at_the_deadline() {
    let gw = Gw {
        silent_sender: true,
        ..Gw::default()
    };
    let h = Harness::new(13, vec![job("a", &[CHUNK])], CHUNK, Net::default(), gw);
    let (_, run) = h.run(ms(5_500));
    assert_eq!(run.refusals, [Refusal::HelloTimeout(ms(5_000))]);
    assert_eq!(run.refusals[0].code(), close::AUTH_TIMEOUT);
}

#[test]
fn an_unreachable_gateway_is_given_up_within_the_retry_budget() {
    let net = Net {
        unreachable: true,
        ..Net::default()
    };
    let (h, run) = Harness::new(14, vec![job("a", &[CHUNK])], CHUNK, net, Gw::default())
        .run(Duration::from_secs(600));
    let Some(Reconnect::GiveUp { attempts, seconds }) = run.gave_up else {
        panic!("{:?}", run.gave_up);
    };
    // Eight reconnects (the limit), each after a handshake timeout of 1 s and a backoff.
    assert_eq!(attempts, 9);
    assert!((9..40).contains(&seconds), "{seconds}");
    assert!(h.sender.jobs().iter().all(|j| j.end().is_none()));
}

#[test]
fn the_gateway_refuses_frames_out_of_order() {
    let mut s = ReceiverSession::<String>::new(Duration::ZERO, ms(100), 4);
    assert_eq!(s.max_frame(), MAX_HELLO_FRAME);
    let e = s
        .on_frame(ClientFrame::CancelJob {
            handle: 0,
            reason: String::new(),
        })
        .unwrap_err();
    assert_eq!(e.code(), close::EXPECTED_HELLO);
    let mut s = ReceiverSession::<String>::new(Duration::ZERO, ms(100), 4);
    let e = s
        .on_frame(ClientFrame::Hello {
            version: VERSION + 1,
            token: Secret("t".into()),
        })
        .unwrap_err();
    assert_eq!(e.code(), close::REFUSED);
    assert!(matches!(
        s.poll_action(),
        Some(ReceiverAction::Frame(ServerFrame::Refused { .. }))
    ));
    let mut s = ReceiverSession::<String>::new(Duration::ZERO, ms(100), 4);
    s.on_frame(ClientFrame::Hello {
        version: VERSION,
        token: Secret("t".into()),
    })
    .unwrap();
    assert!(matches!(
        s.poll_action(),
        Some(ReceiverAction::Authenticate(_))
    ));
    s.authenticated(Some("acme".into()));
    assert_eq!(s.tenant(), Some("acme"));
    assert_eq!(s.max_frame(), MAX_CONTROL_FRAME);
    assert_eq!(s.poll_timeout(), None, "no deadline once authenticated");
    let e = s
        .on_frame(ClientFrame::FinishJob {
            handle: 7,
            file_hashes: vec![],
        })
        .unwrap_err();
    assert!(matches!(e, Refusal::Protocol(ProtocolError::Unexpected(_))));
    let e = s
        .on_frame(ClientFrame::Hello {
            version: VERSION,
            token: Secret("t".into()),
        })
        .unwrap_err();
    assert!(e.to_string().contains("second Hello"));
    // Reopening a job drops its earlier handle (and the job with it).
    let h0 = s.opened("j".into(), "first".into(), vec![]);
    s.on_frame(ClientFrame::OpenJob(job("j", &[1]))).unwrap();
    assert!(s.job(h0).is_none());
    let h1 = s.opened("j".into(), "second".into(), vec![]);
    assert_ne!(h0, h1);
    assert_eq!(s.open_jobs(), 1);
}
