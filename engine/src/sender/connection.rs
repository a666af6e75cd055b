//! One connection to the gateway, as I/O around the protocol session: the control stream
//! read into frames and written from the session's actions, chunk streams read from the
//! source and sent as the session orders them, time and cancel passed in.

use super::*;

pub(super) enum Event {
    Frame(ServerFrame),
    ControlClosed(ConnectionLost),
    Sent(usize, ChunkRef, Hash32),
    /// A chunk stream failed: (job, handle it was sent under, error).
    SendFailed(usize, u32, ConnectionLost),
    SourceFailed(usize, SourceReadError),
}

/// Drives the send's unsettled jobs over one connection until all are settled (`Ok`) or
/// the connection fails (`Err`; the caller asks the session whether to reconnect). Every
/// protocol decision is the session's; this moves frames, chunks and time between it and
/// quinn.
pub(super) async fn connection(
    endpoint: &quinn::Endpoint,
    cfg: &SendConfig,
    s: &mut Sending,
    started: Instant,
    report: &(impl Fn(usize, u64, u64) + Send + Sync),
) -> Result<(), SendError> {
    // Held from the handshake until every job is open at the gateway (or settled).
    let mut setting_up = match &cfg.setup_slots {
        Some(slots) => Some(slots.clone().acquire_owned().await.expect("never closed")),
        None => None,
    };
    let connecting = crate::transport::connect(endpoint, cfg.gateway, &cfg.server_name);
    let connected = match s.session.connect_deadline() {
        // The first connection is bounded by the connect timeout, handshake included.
        Some(deadline) => tokio::time::timeout_at((started + deadline).into(), connecting)
            .await
            .unwrap_or_else(|_| {
                Err(crate::transport::TransportError::Connect {
                    addr: cfg.gateway,
                    reason: "no answer within the connect timeout".into(),
                })
            }),
        None => connecting.await,
    };
    let conn =
        connected.map_err(|e| SendError::Connection(ConnectionLost::Connect(Arc::new(e))))?;
    let _watched = AbortOnDrop(tokio::spawn(crate::telemetry::watch_connection(
        conn.clone(),
        crate::telemetry::Side::Sender,
    )));
    let (mut control, recv) = conn
        .open_bi()
        .await
        .map_err(|e| SendError::Connection(e.into()))?;
    let now = || started.elapsed();
    s.session.connected(&Secret(cfg.token.clone()), now());

    let (events, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let reader = tokio::spawn(read_control(recv, events.clone()));
    let _reader_guard = AbortOnDrop(reader);
    let reads = Arc::new(Semaphore::new(READS_IN_FLIGHT));
    let mut cancel = cfg.cancel.clone();
    let mut chunks_this_conn = 0u64;

    loop {
        while let Some(action) = s.session.poll_action() {
            if let Action::Frame(frame) = &action {
                let written = control.write_all(&protocol::encode_frame(frame)).await;
                // A cancelled send only tries: the gateway may be gone already.
                if let Err(e) = written
                    && s.session.phase() == Phase::Open
                {
                    return Err(SendError::Connection(e.into()));
                }
            }
            s.apply(&action, cfg, report);
        }
        match s.session.phase() {
            Phase::Finished => {
                let _ = control.finish();
                conn.close(0u32.into(), b"done");
                return Ok(());
            }
            Phase::Cancelled => {
                let _ = control.finish();
                // Give the gateway a moment to read the cancellations before closing.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                conn.close(0u32.into(), b"cancelled");
                return Err(SendError::Cancelled);
            }
            _ => {}
        }
        if setting_up.is_some() && !s.session.setting_up() {
            setting_up = None;
        }
        let want = s.session.want();
        let due = s.session.poll_timeout();
        let open = s.session.phase() == Phase::Open;
        tokio::select! {
            () = async {
                match due {
                    Some(d) => tokio::time::sleep_until((started + d).into()).await,
                    None => std::future::pending().await,
                }
            } => s.session.on_timeout(now()),
            shared = async {
                let n = want.map_or(1, |w| w.len);
                // The rate limit before the shared budget: a throttled job does not hold
                // memory other jobs could use.
                if let Some(rate) = &cfg.rate {
                    rate.take(u64::from(n)).await;
                }
                match &cfg.shared_budget {
                    Some(b) => Some(b.acquire(n).await),
                    None => None,
                }
            }, if want.is_some() => {
                let want = want.expect("guarded");
                let Some(order) = s.session.send_chunk(want.job, now()) else { continue };
                s.held.insert((order.job, order.chunk), shared);
                chunks_this_conn += 1;
                let job = order.job;
                let mut pack = vec![order];
                // Small chunks of the job that are ready now go with it on one stream
                // (many small files: one stream, one task and one read hand-off for many).
                if s.session.packs() && u64::from(want.len) < protocol::PACKED_BELOW && cfg.rate.is_none() {
                    let mut bytes = u64::from(want.len);
                    while pack.len() < PACK_CHUNKS {
                        let Some(next) = s.session.want() else { break };
                        let len = u64::from(next.len);
                        if next.job != job || len >= protocol::PACKED_BELOW || bytes + len > PACK_BYTES {
                            break;
                        }
                        let shared = match &cfg.shared_budget {
                            Some(b) => match b.try_acquire(next.len) {
                                Some(p) => Some(p),
                                None => break,
                            },
                            None => None,
                        };
                        let Some(order) = s.session.send_chunk(job, now()) else { break };
                        s.held.insert((order.job, order.chunk), shared);
                        chunks_this_conn += 1;
                        bytes += len;
                        pack.push(order);
                    }
                }
                spawn_chunks(conn.clone(), s.sources[job].clone(), pack, cfg.faults.clone(), events.clone(), reads.clone());
                let drop_now = {
                    let mut d = cfg.faults.drop_connection_after.lock().expect("fault lock");
                    match *d {
                        Some(n) if chunks_this_conn >= n => { *d = None; true }
                        _ => false,
                    }
                };
                if drop_now {
                    conn.close(9u32.into(), b"fault injection: dropped connection");
                }
            }
            () = cancelled(&mut cancel), if open => s.session.cancel(now()),
            ev = ev_rx.recv() => match ev.expect("the connection task holds a sender") {
                Event::Frame(frame) => s.session.on_frame(frame, now())?,
                Event::ControlClosed(e) => {
                    if s.session.on_control_closed() {
                        return Err(SendError::Connection(e));
                    }
                }
                Event::Sent(job, chunk, hash) => s.session.on_hashed(job, chunk, hash),
                Event::SendFailed(job, handle, e) => {
                    if s.session.on_stream_failed(job, handle) {
                        return Err(SendError::Connection(e));
                    }
                }
                Event::SourceFailed(job, e) => {
                    let reason = e.to_string();
                    s.source_errors.entry(job).or_insert_with(|| Arc::new(e));
                    s.session.on_source_failed(job, reason, now());
                }
            }
        }
    }
}

/// Resolves when `cancel` turns true; never without a cancel signal.
pub(super) async fn cancelled(cancel: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = cancel
        && rx.wait_for(|c| *c).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn read_control(
    mut recv: quinn::RecvStream,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut dec = FrameDecoder::<ServerFrame>::new(protocol::MAX_CONTROL_FRAME);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    if events.send(Event::Frame(f)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send(Event::ControlClosed(e.into()));
                    return;
                }
            }
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => dec.push(&buf[..n]),
            Ok(None) => {
                let _ = events.send(Event::ControlClosed(ConnectionLost::ControlEnded));
                return;
            }
            Err(e) => {
                let _ = events.send(Event::ControlClosed(e.into()));
                return;
            }
        }
    }
}

/// The process's threads for reading small chunks (shorter than
/// [`protocol::PACKED_BELOW`]): at most 4, a few reads per hand-off.
fn small_reads()
-> &'static trackshift_connectors::batch::Batcher<trackshift_connectors::batch::Closures> {
    static POOL: std::sync::OnceLock<
        trackshift_connectors::batch::Batcher<trackshift_connectors::batch::Closures>,
    > = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        trackshift_connectors::batch::Batcher::with_threads(
            trackshift_connectors::batch::Closures,
            4,
            8,
        )
    })
}

/// Most chunks one stream carries, and most bytes of them; only chunks under
/// [`protocol::PACKED_BELOW`] share a stream.
const PACK_CHUNKS: usize = 32;
const PACK_BYTES: u64 = 1 << 20;

/// Reads chunk `order` of `source` and hashes it (blocking).
fn read_chunk(
    source: &Source,
    order: &ChunkOrder,
    faults: &FaultInjection,
) -> Result<(Bytes, Hash32), SourceReadError> {
    let (c, layout) = (order.chunk, &order.layout);
    let file = source.file(c.file)?;
    // Filled completely by `read_exact_at` before anything reads it.
    let mut buf = BufferPool::global().take(layout.chunk_len(c.index) as usize);
    file.read_exact_at(buf.as_mut_slice(), layout.offset(c.index))
        .map_err(|e| SourceReadError::Read {
            path: source.files[c.file as usize].0.clone(),
            source: e,
        })?;
    let hash = layout.chunk_hash(c.index, buf.as_ref());
    if !buf.as_ref().is_empty() && faults.corrupt_first_chunk.swap(false, Ordering::SeqCst) {
        buf.as_mut_slice()[0] ^= 0x01;
    }
    Ok((buf.freeze(), hash))
}

/// Sends `orders` (chunks of one job, in order) on one chunk stream: each read and hashed,
/// its hash reported, then its header and payload written; the stream finished after the
/// last. A chunk that cannot be read ends the stream there (the job ends with it).
pub(super) fn spawn_chunks(
    conn: quinn::Connection,
    source: Arc<Source>,
    orders: Vec<ChunkOrder>,
    faults: Arc<FaultInjection>,
    events: mpsc::UnboundedSender<Event>,
    reads: Arc<Semaphore>,
) {
    let (job, handle) = (orders[0].job, orders[0].handle);
    tokio::spawn(async move {
        let result = async {
            let reading = reads.acquire_owned().await.expect("never closed");
            let small = orders
                .iter()
                .all(|o| o.layout.chunk_len(o.chunk.index) < protocol::PACKED_BELOW);
            let read_all = move || {
                let _reading = reading;
                let mut out = Vec::with_capacity(orders.len());
                for o in orders {
                    let read = read_chunk(&source, &o, &faults);
                    let failed = read.is_err();
                    out.push((o, read));
                    if failed {
                        break;
                    }
                }
                out
            };
            // Small chunks (small files) read with those beside them on a few shared
            // threads: one hand-off for many; a large one on a blocking thread of its own.
            let read = if small {
                small_reads().call(read_all).await
            } else {
                tokio::task::spawn_blocking(read_all)
                    .await
                    .map_err(|e| ConnectionLost::ReadTask(Arc::new(e)))?
            };
            let mut stream = None;
            for (order, read) in read {
                let (data, hash) = match read {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = events.send(Event::SourceFailed(order.job, e));
                        break;
                    }
                };
                // Report the hash before the data leaves, so it is recorded before any ack.
                let _ = events.send(Event::Sent(order.job, order.chunk, hash));
                let header = ChunkHeader {
                    handle: order.handle,
                    chunk: order.chunk,
                    len: data.len() as u64,
                    hash,
                };
                let prefix = protocol::encode_chunk_header(&header);
                let stream = match &mut stream {
                    Some(s) => s,
                    None => stream.insert(conn.open_uni().await?),
                };
                stream.write_all(&prefix).await?;
                stream.write_chunk(data).await?;
            }
            if let Some(mut stream) = stream {
                stream.finish()?;
            }
            Ok::<(), ConnectionLost>(())
        }
        .await;
        if let Err(e) = result {
            let _ = events.send(Event::SendFailed(job, handle, e));
        }
    });
}
