//! A deterministic long-fat-link simulator on quinn-proto, quinn's sans-IO QUIC core.
//!
//! Two `quinn_proto::Endpoint`s (a Trackshift sender as the client, a gateway as the
//! server) and their `Connection`s run single-threaded in virtual time: the clock is a
//! fabricated [`Instant`] (a fixed base plus a simulated offset) that jumps from one event
//! (a datagram arriving, a connection timer) to the next. No sockets, no sleeping.
//!
//! Between them, one [`Link`] per direction: a bottleneck of [`Scenario::rate_bps`] (IPv4 +
//! UDP headers count against it) behind a drop-tail queue of [`Scenario::queue_bdp`]
//! bandwidth-delay products, then a propagation delay of half the round trip, then random
//! independent loss of [`Scenario::loss`] of the datagrams, drawn from a seeded RNG.
//!
//! TLS and transport are Trackshift's own: the gateway identity, the pinned-fingerprint
//! client trust (aws-lc-rs, X25519MLKEM768), `transport::transport_config()` with the
//! sender's controller set by `Congestion::apply`; the gateway's receive window starts at
//! `transport::MIN_RECEIVE_WINDOW` and is sized by `transport::WindowTuner` every
//! `transport::WINDOW_TICK`, as a gateway's connection is.
//!
//! The workload is shaped like `trackshift send`: one unidirectional stream per chunk, at
//! most [`Scenario::in_flight`] bytes of chunks open at application level; the receiver
//! reads everything at once and, when a chunk is complete, sends a 16-byte ack on one
//! bidirectional control stream; only that ack frees the chunk's share of the window.
//!
//! Deterministic: the same scenario and seed give the same report. Handshake (long-header)
//! datagrams skip the bottleneck and the random loss, so that the few bytes by which an
//! ECDSA signature's length varies from handshake to handshake cannot move the clock.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, ReadError, ServerConfig, StreamEvent, StreamId, VarInt, WriteError,
};
use trackshift_engine::tls::{GatewayIdentity, ServerTrust};
use trackshift_engine::transport::{self, Congestion};

/// Trackshift's chunk size: one unidirectional stream each.
pub const CHUNK: u64 = 4 << 20;
/// Length of the receiver's per-chunk ack (stream id and length, two big-endian u64s).
pub const ACK_LEN: usize = 16;
/// IPv4 (20) and UDP (8) header bytes each datagram also puts on the bottleneck.
pub const IP_UDP_OVERHEAD: u64 = 28;
/// Most datagrams one `poll_transmit` may batch (GSO-style); the link splits them.
const MAX_DATAGRAMS: usize = 10;
/// How often the sender's congestion window is sampled (virtual time).
const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// One simulated transfer: the link, the sender's settings and how long to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Round-trip propagation delay (each direction gets half).
    pub rtt: Duration,
    /// Fraction of datagrams lost at random, independently, in each direction (0.01 = 1 %).
    pub loss: f64,
    /// Bottleneck rate in bits per second, each direction.
    pub rate_bps: u64,
    /// Virtual duration of the run, from the first client packet.
    pub duration: Duration,
    /// The application window `W`: most bytes of chunks not yet acked by the receiver.
    pub in_flight: u64,
    /// Chunk size (one stream each).
    pub chunk: u64,
    /// The sender's congestion controller.
    pub congestion: Congestion,
    /// Seed of the loss RNGs and both endpoints' RNGs.
    pub seed: u64,
    /// Drop-tail queue in front of each bottleneck, in bandwidth-delay products.
    pub queue_bdp: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            rtt: Duration::from_millis(50),
            loss: 0.0,
            rate_bps: 1_000_000_000,
            duration: Duration::from_secs(20),
            in_flight: 256 << 20,
            chunk: CHUNK,
            congestion: Congestion::default(),
            seed: 1,
            queue_bdp: 1.0,
        }
    }
}

impl Scenario {
    /// The link's bandwidth-delay product in bytes (rate × round-trip propagation delay).
    pub fn bdp(&self) -> f64 {
        self.rate_bps as f64 / 8.0 * self.rtt.as_secs_f64()
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Application bytes the receiver read during the run.
    pub delivered: u64,
    /// Of those, bytes read in the second half of the run.
    pub delivered_second_half: u64,
    /// Goodput over the whole run, bits per virtual second.
    pub goodput_bps: f64,
    /// Goodput over the second half of the run (steady state), bits per virtual second.
    pub steady_bps: f64,
    /// Average bytes in flight in the data direction over the second half: each datagram
    /// counts from when it is sent until its ack could be back (its arrival plus the one-way
    /// delay; for a dropped one, when it would have been).
    pub in_flight_steady: f64,
    /// Average congestion window of the sender over the second half, bytes.
    pub cwnd_steady: f64,
    /// The link's bandwidth-delay product, bytes.
    pub bdp: f64,
    /// Chunks fully read by the receiver.
    pub chunks_done: u64,
    /// Chunk acks the sender received.
    pub acks: u64,
    /// Data-direction datagrams the sender put on the link.
    pub datagrams: u64,
    /// Of those, dropped by the full queue.
    pub queue_drops: u64,
    /// Of those, lost at random.
    pub random_drops: u64,
    /// Packets quinn's loss detection declared lost on the sender.
    pub lost_packets: u64,
    /// Congestion events on the sender.
    pub congestion_events: u64,
    /// The sender's smoothed RTT at the end.
    pub srtt: Duration,
    /// When the sender's handshake completed, from the start.
    pub connected_after: Option<Duration>,
    /// The largest receive window the gateway's tuner set, bytes.
    pub max_receive_window: u32,
    /// The connection failed (with why), if it did.
    pub failure: Option<String>,
}

/// Runs `sc` with the gateway identity `identity` and reports what it measured.
pub fn run(sc: &Scenario, identity: &GatewayIdentity) -> Report {
    Sim::new(sc, identity).run()
}

/// A datagram on its way.
struct InTransit {
    arrival: Instant,
    data: BytesMut,
}

/// What became of a datagram handed to a [`Link`].
enum Fate {
    /// It will arrive at this time.
    Arrives(Instant),
    /// The queue was full.
    QueueDrop,
    /// Lost on the wire; it would have arrived at this time.
    Lost(Instant),
}

/// One direction of the path: drop-tail queue, bottleneck, propagation delay, random loss.
struct Link {
    rate_bps: u64,
    delay: Duration,
    queue_limit: u64,
    loss: f64,
    rng: fastrand::Rng,
    /// When the bottleneck has finished sending everything queued so far.
    free_at: Instant,
    /// Departure time and size of each datagram still queued or being sent.
    backlog: VecDeque<(Instant, u64)>,
    backlog_bytes: u64,
    transit: VecDeque<InTransit>,
    datagrams: u64,
    queue_drops: u64,
    random_drops: u64,
}

impl Link {
    fn new(sc: &Scenario, now: Instant, seed: u64) -> Self {
        Self {
            rate_bps: sc.rate_bps.max(1),
            delay: sc.rtt / 2,
            queue_limit: (sc.bdp() * sc.queue_bdp).max(1500.0) as u64,
            loss: sc.loss,
            rng: fastrand::Rng::with_seed(seed),
            free_at: now,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            transit: VecDeque::new(),
            datagrams: 0,
            queue_drops: 0,
            random_drops: 0,
        }
    }

    /// Time the bottleneck takes to send `len` bytes of UDP payload (rounded up to a ns).
    fn serialization(&self, len: u64) -> Duration {
        let bits = u128::from(len + IP_UDP_OVERHEAD) * 8 * 1_000_000_000;
        let rate = u128::from(self.rate_bps);
        Duration::from_nanos(bits.div_ceil(rate) as u64)
    }

    fn send(&mut self, now: Instant, data: BytesMut) -> Fate {
        // A long header (Initial, Handshake): forwarded untouched, see the module docs.
        if data.first().is_some_and(|b| b & 0x80 != 0) {
            let arrival = now + self.delay;
            self.deliver(arrival, data);
            return Fate::Arrives(arrival);
        }
        self.datagrams += 1;
        while self.backlog.front().is_some_and(|&(t, _)| t <= now) {
            let (_, len) = self.backlog.pop_front().expect("front exists");
            self.backlog_bytes -= len;
        }
        let len = data.len() as u64;
        if self.backlog_bytes + len > self.queue_limit {
            self.queue_drops += 1;
            return Fate::QueueDrop;
        }
        let departure = self.free_at.max(now) + self.serialization(len);
        self.free_at = departure;
        self.backlog.push_back((departure, len));
        self.backlog_bytes += len;
        let arrival = departure + self.delay;
        if self.loss > 0.0 && self.rng.f64() < self.loss {
            self.random_drops += 1;
            return Fate::Lost(arrival);
        }
        self.deliver(arrival, data);
        Fate::Arrives(arrival)
    }

    /// Queues a datagram for arrival, keeping arrival order (only a handshake datagram can
    /// overtake queued ones).
    fn deliver(&mut self, arrival: Instant, data: BytesMut) {
        let at = self
            .transit
            .iter()
            .rposition(|p| p.arrival <= arrival)
            .map_or(0, |i| i + 1);
        self.transit.insert(at, InTransit { arrival, data });
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.transit.front().map(|p| p.arrival)
    }

    fn pop_due(&mut self, now: Instant) -> Option<BytesMut> {
        if self.transit.front()?.arrival <= now {
            self.transit.pop_front().map(|p| p.data)
        } else {
            None
        }
    }
}

/// One endpoint and its (single) connection.
struct Peer {
    endpoint: Endpoint,
    addr: SocketAddr,
    conn: Option<(ConnectionHandle, Connection)>,
    timeout: Option<Instant>,
    buf: Vec<u8>,
}

impl Peer {
    fn new(endpoint: Endpoint, addr: SocketAddr) -> Self {
        Self {
            endpoint,
            addr,
            conn: None,
            timeout: None,
            buf: Vec::new(),
        }
    }

    /// Hands a datagram that arrived from `remote` to the endpoint; returns a stateless
    /// response to send, if any.
    fn receive(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        data: BytesMut,
    ) -> Result<Option<Bytes>, String> {
        self.buf.clear();
        match self
            .endpoint
            .handle(now, remote, None, None, data, &mut self.buf)
        {
            None => Ok(None),
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some((own, conn)) = self.conn.as_mut()
                    && *own == ch
                {
                    conn.handle_event(event);
                }
                Ok(None)
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.conn.is_some() {
                    // One connection per run; anything else is refused.
                    self.buf.clear();
                    let t = self.endpoint.refuse(incoming, &mut self.buf);
                    return Ok(Some(Bytes::copy_from_slice(&self.buf[..t.size])));
                }
                self.buf.clear();
                match self.endpoint.accept(incoming, now, &mut self.buf, None) {
                    Ok((ch, conn)) => {
                        self.conn = Some((ch, conn));
                        Ok(None)
                    }
                    Err(e) => Err(format!("the server refused the connection: {}", e.cause)),
                }
            }
            Some(DatagramEvent::Response(t)) => {
                Ok(Some(Bytes::copy_from_slice(&self.buf[..t.size])))
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.timeout.is_some_and(|t| t <= now)
            && let Some((_, conn)) = self.conn.as_mut()
        {
            self.timeout = None;
            conn.handle_timeout(now);
        }
    }

    /// Exchanges endpoint events, then sends everything the connection has to send.
    fn flush(&mut self, now: Instant, mut out: impl FnMut(Instant, BytesMut)) {
        let Some((ch, conn)) = self.conn.as_mut() else {
            return;
        };
        while let Some(event) = conn.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(*ch, event) {
                conn.handle_event(event);
            }
        }
        loop {
            self.buf.clear();
            let Some(t) = conn.poll_transmit(now, MAX_DATAGRAMS, &mut self.buf) else {
                break;
            };
            let segment = t.segment_size.unwrap_or(t.size).max(1);
            for datagram in self.buf[..t.size].chunks(segment) {
                out(now, BytesMut::from(datagram));
            }
        }
        self.timeout = conn.poll_timeout();
    }
}

/// The sender's application: chunk streams within the window `W`, acks on the control stream.
struct SenderApp {
    data: Bytes,
    window: u64,
    in_use: u64,
    control: Option<StreamId>,
    /// Chunk streams opened and not yet fully written (the rest of their data).
    pending: VecDeque<(StreamId, Bytes)>,
    acks_in: Vec<u8>,
    acks: u64,
    connected_at: Option<Instant>,
}

impl SenderApp {
    fn pump(&mut self, conn: &mut Connection, now: Instant) -> Result<(), String> {
        while let Some(event) = conn.poll() {
            match event {
                Event::Connected => {
                    self.connected_at = Some(now);
                    let id = conn
                        .streams()
                        .open(Dir::Bi)
                        .ok_or("no bidirectional stream for control")?;
                    // The receiver learns of the stream with its first bytes.
                    conn.send_stream(id)
                        .write(&[0; ACK_LEN])
                        .map_err(|e| format!("control hello: {e}"))?;
                    self.control = Some(id);
                }
                Event::ConnectionLost { reason } => {
                    return Err(format!("sender lost the connection: {reason}"));
                }
                _ => {}
            }
        }
        let Some(control) = self.control else {
            return Ok(());
        };
        // Acks free the window.
        if let Ok(mut chunks) = conn.recv_stream(control).read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(c)) => self.acks_in.extend_from_slice(&c.bytes),
                    Ok(None) | Err(ReadError::Blocked) => break,
                    Err(e) => return Err(format!("control stream: {e}")),
                }
            }
            let _ = chunks.finalize();
        }
        let whole = self.acks_in.len() / ACK_LEN * ACK_LEN;
        for ack in self.acks_in[..whole].chunks_exact(ACK_LEN) {
            let len = u64::from_be_bytes(ack[8..16].try_into().expect("8 bytes"));
            self.in_use = self.in_use.saturating_sub(len);
            self.acks += 1;
        }
        self.acks_in.drain(..whole);
        // New chunks while the window has room.
        let chunk = self.data.len() as u64;
        while self.in_use + chunk <= self.window {
            let Some(id) = conn.streams().open(Dir::Uni) else {
                break;
            };
            self.pending.push_back((id, self.data.clone()));
            self.in_use += chunk;
        }
        // Hand their data to quinn until its send window is full.
        while let Some((id, rest)) = self.pending.front_mut() {
            let mut stream = conn.send_stream(*id);
            match stream.write_chunks(std::slice::from_mut(rest)) {
                Ok(_) | Err(WriteError::Blocked) => {}
                Err(e) => return Err(format!("writing a chunk: {e}")),
            }
            if !rest.is_empty() {
                break;
            }
            stream
                .finish()
                .map_err(|e| format!("finishing a chunk: {e}"))?;
            self.pending.pop_front();
        }
        Ok(())
    }
}

/// The receiver's application: reads every stream as data comes, acks whole chunks.
struct ReceiverApp {
    control: Option<StreamId>,
    /// Bytes read so far on each open chunk stream.
    open: Vec<(StreamId, u64)>,
    delivered: u64,
    delivered_second_half: u64,
    chunks_done: u64,
}

impl ReceiverApp {
    fn pump(&mut self, conn: &mut Connection, second_half: bool) -> Result<(), String> {
        while let Some(event) = conn.poll() {
            match event {
                Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                    while let Some(id) = conn.streams().accept(Dir::Uni) {
                        self.open.push((id, 0));
                        self.read(conn, id, second_half)?;
                    }
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(id) = conn.streams().accept(Dir::Bi) {
                        self.control.get_or_insert(id);
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    if Some(id) == self.control {
                        // The sender's hello: read and drop.
                        if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
                            while let Ok(Some(_)) = chunks.next(usize::MAX) {}
                            let _ = chunks.finalize();
                        }
                    } else {
                        self.read(conn, id, second_half)?;
                    }
                }
                Event::ConnectionLost { reason } => {
                    return Err(format!("receiver lost the connection: {reason}"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn read(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        second_half: bool,
    ) -> Result<(), String> {
        let Some(slot) = self.open.iter().position(|(s, _)| *s == id) else {
            return Ok(());
        };
        let mut finished = false;
        let mut got = 0u64;
        {
            let mut recv = conn.recv_stream(id);
            let Ok(mut chunks) = recv.read(true) else {
                return Ok(());
            };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(c)) => got += c.bytes.len() as u64,
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(e) => return Err(format!("chunk stream: {e}")),
                }
            }
            let _ = chunks.finalize();
        }
        self.delivered += got;
        if second_half {
            self.delivered_second_half += got;
        }
        self.open[slot].1 += got;
        if finished {
            let (_, len) = self.open.swap_remove(slot);
            self.chunks_done += 1;
            let control = self
                .control
                .ok_or("a chunk finished before the control stream")?;
            let mut ack = [0u8; ACK_LEN];
            ack[..8].copy_from_slice(&id.index().to_be_bytes());
            ack[8..].copy_from_slice(&len.to_be_bytes());
            let written = conn
                .send_stream(control)
                .write(&ack)
                .map_err(|e| format!("writing an ack: {e}"))?;
            if written != ACK_LEN {
                return Err("the control stream took part of an ack".into());
            }
        }
        Ok(())
    }
}

/// Time-weighted average of data in flight over a window of the run.
struct InFlight {
    from: Instant,
    to: Instant,
    /// Sum of bytes × nanoseconds in flight inside the window.
    byte_ns: f64,
}

impl InFlight {
    fn add(&mut self, len: u64, sent: Instant, back: Instant) {
        let start = sent.max(self.from);
        let end = back.min(self.to);
        if end > start {
            self.byte_ns += len as f64 * (end - start).as_nanos() as f64;
        }
    }

    fn average(&self) -> f64 {
        let span = (self.to - self.from).as_nanos() as f64;
        if span > 0.0 { self.byte_ns / span } else { 0.0 }
    }
}

struct Sim {
    sc: Scenario,
    now: Instant,
    half: Instant,
    end: Instant,
    client: Peer,
    server: Peer,
    up: Link,
    down: Link,
    sender: SenderApp,
    receiver: ReceiverApp,
    in_flight: InFlight,
    cwnd_sum: f64,
    cwnd_samples: u64,
    next_sample: Instant,
    /// The gateway's receive window, sized as a gateway sizes it.
    tuner: transport::WindowTuner,
    next_tune: Instant,
    received: u64,
    /// The largest receive window it reached.
    max_window: u32,
    failure: Option<String>,
}

/// A 32-byte endpoint RNG seed from the scenario's seed.
fn rng_seed(seed: u64, salt: u64) -> [u8; 32] {
    let mut rng = fastrand::Rng::with_seed(seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut out = [0u8; 32];
    rng.fill(&mut out);
    out
}

impl Sim {
    fn new(sc: &Scenario, identity: &GatewayIdentity) -> Self {
        // Fresh TLS configurations every run: no session resumption between runs.
        let server_tls = identity
            .server_config(false)
            .expect("the gateway identity gives a server TLS configuration");
        let trust = ServerTrust::fingerprint(&identity.fingerprint())
            .expect("the identity's own fingerprint parses");
        let client_tls = trust
            .client_config(false)
            .expect("the pinned trust gives a client TLS configuration");
        let server_crypto =
            QuicServerConfig::try_from(server_tls).expect("a TLS 1.3 server configuration");
        let client_crypto =
            QuicClientConfig::try_from(client_tls).expect("a TLS 1.3 client configuration");
        let mut server_config = ServerConfig::with_crypto(Arc::new(server_crypto));
        let mut st = transport::transport_config();
        st.receive_window(VarInt::from_u32(transport::MIN_RECEIVE_WINDOW));
        server_config.transport_config(Arc::new(st));
        let mut client_config = ClientConfig::new(Arc::new(client_crypto));
        let mut t = transport::transport_config();
        sc.congestion.apply(&mut t);
        client_config.transport_config(Arc::new(t));

        let endpoint_config = Arc::new(EndpointConfig::default());
        let server_ep = Endpoint::new(
            endpoint_config.clone(),
            Some(Arc::new(server_config)),
            true,
            Some(rng_seed(sc.seed, 1)),
        );
        let client_ep = Endpoint::new(endpoint_config, None, true, Some(rng_seed(sc.seed, 2)));
        let client_addr: SocketAddr = "10.0.0.1:50000".parse().expect("an address");
        let server_addr: SocketAddr = "10.0.0.2:4433".parse().expect("an address");

        let now = Instant::now();
        let mut client = Peer::new(client_ep, client_addr);
        let server = Peer::new(server_ep, server_addr);
        let (ch, conn) = client
            .endpoint
            .connect(now, client_config, server_addr, "localhost")
            .expect("a client connection");
        client.conn = Some((ch, conn));
        let chunk = sc.chunk.max(1);
        Self {
            sc: sc.clone(),
            now,
            half: now + sc.duration / 2,
            end: now + sc.duration,
            client,
            server,
            up: Link::new(sc, now, sc.seed.wrapping_mul(2).wrapping_add(1)),
            down: Link::new(sc, now, sc.seed.wrapping_mul(2).wrapping_add(2)),
            sender: SenderApp {
                data: Bytes::from(vec![0u8; chunk as usize]),
                window: sc.in_flight,
                in_use: 0,
                control: None,
                pending: VecDeque::new(),
                acks_in: Vec::new(),
                acks: 0,
                connected_at: None,
            },
            receiver: ReceiverApp {
                control: None,
                open: Vec::new(),
                delivered: 0,
                delivered_second_half: 0,
                chunks_done: 0,
            },
            in_flight: InFlight {
                from: now + sc.duration / 2,
                to: now + sc.duration,
                byte_ns: 0.0,
            },
            cwnd_sum: 0.0,
            cwnd_samples: 0,
            next_sample: now + sc.duration / 2,
            tuner: transport::WindowTuner::new(),
            next_tune: now + transport::WINDOW_TICK,
            received: 0,
            max_window: transport::MIN_RECEIVE_WINDOW,
            failure: None,
        }
    }

    fn step(&mut self) -> Result<(), String> {
        let now = self.now;
        while let Some(d) = self.down.pop_due(now) {
            if let Some(r) = self.client.receive(now, self.server.addr, d)? {
                self.up.send(now, BytesMut::from(&r[..]));
            }
        }
        while let Some(d) = self.up.pop_due(now) {
            if let Some(r) = self.server.receive(now, self.client.addr, d)? {
                self.down.send(now, BytesMut::from(&r[..]));
            }
        }
        self.client.handle_timeout(now);
        self.server.handle_timeout(now);
        if let Some((_, conn)) = self.client.conn.as_mut() {
            self.sender.pump(conn, now)?;
        }
        if let Some((_, conn)) = self.server.conn.as_mut() {
            self.receiver.pump(conn, now >= self.half)?;
        }
        let (up, in_flight) = (&mut self.up, &mut self.in_flight);
        let back = up.delay;
        let rtt = self.sc.rtt;
        self.client.flush(now, |at, d| {
            let len = d.len() as u64;
            match up.send(at, d) {
                Fate::Arrives(t) | Fate::Lost(t) => in_flight.add(len, at, t + back),
                Fate::QueueDrop => in_flight.add(len, at, at + rtt),
            }
        });
        let down = &mut self.down;
        self.server.flush(now, |at, d| {
            down.send(at, d);
        });
        if now >= self.next_sample {
            if let Some((_, conn)) = self.client.conn.as_ref() {
                self.cwnd_sum += conn.congestion_state().window() as f64;
                self.cwnd_samples += 1;
            }
            self.next_sample = now + SAMPLE_EVERY;
        }
        if now >= self.next_tune {
            if let Some((_, conn)) = self.server.conn.as_mut() {
                let received = conn.stats().udp_rx.bytes;
                let window = self.tuner.on_tick(
                    received - self.received,
                    transport::WINDOW_TICK,
                    conn.rtt(),
                );
                self.received = received;
                self.max_window = self.max_window.max(window);
                conn.set_receive_window(VarInt::from_u32(window));
            }
            self.next_tune = now + transport::WINDOW_TICK;
        }
        Ok(())
    }

    fn next_event(&self) -> Option<Instant> {
        [
            self.client.timeout,
            self.server.timeout,
            self.up.next_arrival(),
            self.down.next_arrival(),
            Some(self.next_sample),
            Some(self.next_tune),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn run(mut self) -> Report {
        // Steps in a row at one instant: a few are normal, a great many mean a busy loop.
        let mut same_instant = 0u32;
        loop {
            if let Err(e) = self.step() {
                self.failure = Some(e);
                break;
            }
            match self.next_event() {
                Some(t) if t < self.end => {
                    if t <= self.now {
                        same_instant += 1;
                        if same_instant > 10_000 {
                            self.failure = Some("the simulation stopped advancing".into());
                            break;
                        }
                    } else {
                        same_instant = 0;
                        self.now = t;
                    }
                }
                _ => break,
            }
        }
        self.report()
    }

    fn report(self) -> Report {
        let secs = self.sc.duration.as_secs_f64().max(f64::MIN_POSITIVE);
        let r = &self.receiver;
        let (lost_packets, congestion_events, srtt) = match self.client.conn.as_ref() {
            Some((_, c)) => {
                let s = c.stats();
                (s.path.lost_packets, s.path.congestion_events, s.path.rtt)
            }
            None => (0, 0, Duration::ZERO),
        };
        let start = self.end - self.sc.duration;
        Report {
            delivered: r.delivered,
            delivered_second_half: r.delivered_second_half,
            goodput_bps: r.delivered as f64 * 8.0 / secs,
            steady_bps: r.delivered_second_half as f64 * 8.0 / (secs / 2.0),
            in_flight_steady: self.in_flight.average(),
            cwnd_steady: if self.cwnd_samples > 0 {
                self.cwnd_sum / self.cwnd_samples as f64
            } else {
                0.0
            },
            bdp: self.sc.bdp(),
            chunks_done: r.chunks_done,
            acks: self.sender.acks,
            datagrams: self.up.datagrams,
            queue_drops: self.up.queue_drops,
            random_drops: self.up.random_drops,
            lost_packets,
            congestion_events,
            srtt,
            connected_after: self.sender.connected_at.map(|t| t - start),
            max_receive_window: self.max_window,
            failure: self.failure,
        }
    }
}
