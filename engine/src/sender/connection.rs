//! One connection to the gateway: the control stream's events, opening and reopening
//! jobs, chunk streams sent round-robin within the budget, cancel.

use super::*;
use crate::protocol::retry::{RetryLimits, Verdict, next_due};

pub(super) enum Event {
    Frame(ServerFrame),
    ControlClosed(ConnectionLost),
    Sent(usize, ChunkRef, Hash32),
    /// A chunk stream failed: (job, handle it was sent under, error).
    SendFailed(usize, u32, ConnectionLost),
    SourceFailed(usize, String),
}

/// Drives every unfinished job over one connection until all are settled (`Ok`) or the
/// connection fails (`Err`, the caller reconnects).
pub(super) async fn connection(
    endpoint: &quinn::Endpoint,
    cfg: &SendConfig,
    jobs: &mut [ActiveJob],
    started: Instant,
    report: &(impl Fn(usize, u64, u64) + Send + Sync),
    welcomed: &mut bool,
) -> Result<(), SendError> {
    for j in jobs.iter_mut() {
        j.detach();
    }
    // Held from the handshake until every job is open at the gateway (or settled).
    let mut setting_up = match &cfg.setup_slots {
        Some(slots) => Some(slots.clone().acquire_owned().await.expect("never closed")),
        None => None,
    };
    let conn = crate::transport::connect(endpoint, cfg.gateway, &cfg.server_name)
        .await
        .map_err(|e| SendError::Connection(ConnectionLost::Connect(Arc::new(e))))?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| SendError::Connection(e.into()))?;
    let conn_err = |e: quinn::WriteError| SendError::Connection(e.into());
    let hello = ClientFrame::Hello {
        version: protocol::VERSION,
        token: Secret(cfg.token.clone()),
    };
    send.write_all(&protocol::encode_frame(&hello))
        .await
        .map_err(conn_err)?;
    for j in jobs.iter_mut().filter(|j| !j.done) {
        send.write_all(&protocol::encode_frame(&ClientFrame::OpenJob(
            j.open.clone(),
        )))
        .await
        .map_err(conn_err)?;
        j.awaiting_ready = true;
    }

    let (events, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let reader = tokio::spawn(read_control(recv, events.clone()));
    let _reader_guard = AbortOnDrop(reader);

    let budget_max = u32::try_from(cfg.in_flight_bytes)
        .unwrap_or(u32::MAX)
        .max(1);
    let budget = Arc::new(Semaphore::new(budget_max as usize));
    let reads = Arc::new(Semaphore::new(READS_IN_FLIGHT));
    let mut by_handle: HashMap<u32, usize> = HashMap::new();
    let by_id: HashMap<String, usize> = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| !j.done)
        .map(|(i, j)| (j.open.job_id.clone(), i))
        .collect();
    let mut cancel = cfg.cancel.clone();
    let limits = RetryLimits {
        max_reopens: cfg.max_reconnects,
        retry_for: cfg.retry_for,
    };
    // Round-robin cursor: which job gets the next budget grant.
    let mut cursor = 0usize;
    let mut chunks_this_conn = 0u64;

    loop {
        if jobs.iter().all(|j| j.done) {
            let _ = send.finish();
            conn.close(0u32.into(), b"done");
            return Ok(());
        }
        if setting_up.is_some() && !jobs.iter().any(|j| !j.done && j.awaiting_ready) {
            setting_up = None;
        }
        for j in jobs.iter_mut().filter(|j| !j.done) {
            let Some(h) = j.handle else { continue };
            if j.next.is_none() {
                j.next = j.sender().next_chunk();
            }
            if j.sender().is_complete() && !j.finish_sent {
                let frame = ClientFrame::FinishJob {
                    handle: h,
                    file_hashes: j.sender().file_hashes()?,
                };
                send.write_all(&protocol::encode_frame(&frame))
                    .await
                    .map_err(conn_err)?;
                j.finish_sent = true;
            }
        }
        // The next job (round robin from the cursor) with a chunk ready to go.
        let n = jobs.len();
        let pick = (0..n)
            .map(|k| (cursor + k) % n)
            .find(|&i| !jobs[i].done && jobs[i].handle.is_some() && jobs[i].next.is_some());
        let want = pick.map(|i| {
            let j = &mut jobs[i];
            let c = j.next.expect("picked jobs have a next chunk");
            let len = j.sender().layout(c.file).chunk_len(c.index);
            u32::try_from(len).unwrap_or(u32::MAX).clamp(1, budget_max)
        });
        // The next reopen a job is waiting for (a timer as a value: `protocol::retry`).
        let due = next_due(jobs.iter().filter(|j| !j.done).map(|j| j.retry.due()));
        tokio::select! {
            () = async {
                match due {
                    Some(d) => tokio::time::sleep_until((started + d).into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = started.elapsed();
                for j in jobs.iter_mut().filter(|j| !j.done) {
                    if j.retry.take_due(now) {
                        send.write_all(&protocol::encode_frame(&ClientFrame::OpenJob(j.open.clone())))
                            .await
                            .map_err(conn_err)?;
                        j.awaiting_ready = true;
                    }
                }
            }
            (permit, shared) = async {
                let n = want.unwrap_or(1);
                let own = budget.clone().acquire_many_owned(n).await;
                // The rate limit before the shared budget: a throttled job does not hold
                // memory other jobs could use.
                if let Some(rate) = &cfg.rate {
                    rate.take(u64::from(n)).await;
                }
                let shared = match &cfg.shared_budget {
                    Some(b) => Some(b.acquire(n).await),
                    None => None,
                };
                (own, shared)
            }, if want.is_some() => {
                let permit = permit.expect("budget is never closed");
                let i = pick.expect("want implies pick");
                cursor = (i + 1) % n;
                let j = &mut jobs[i];
                let c = j.next.take().expect("picked jobs have a next chunk");
                j.in_flight.insert(c, InFlight { _permit: permit, shared, sent: Instant::now() });
                j.chunks_sent += 1;
                chunks_this_conn += 1;
                let layout = *j.sender().layout(c.file);
                let task = ChunkTask { job: i, handle: j.handle.expect("open"), chunk: c, layout };
                spawn_chunk(conn.clone(), j.source.clone(), task, cfg.faults.clone(), events.clone(), reads.clone());
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
            () = cancelled(&mut cancel) => {
                for j in jobs.iter().filter(|j| !j.done) {
                    if let Some(handle) = j.handle {
                        let frame = ClientFrame::CancelJob { handle, reason: "cancelled by the sender".into() };
                        let _ = send.write_all(&protocol::encode_frame(&frame)).await;
                    }
                }
                // A job whose open is not answered yet may be made at the gateway all the
                // same: each one that turns ready in the next moments is cancelled too, so
                // that the gateway removes what it made.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                while jobs.iter().any(|j| !j.done && j.awaiting_ready) {
                    let Ok(Some(ev)) = tokio::time::timeout_at(deadline, ev_rx.recv()).await else {
                        break;
                    };
                    let job_id = match ev {
                        Event::Frame(ServerFrame::JobReady { job_id, handle, .. }) => {
                            let frame = ClientFrame::CancelJob { handle, reason: "cancelled by the sender".into() };
                            let _ = send.write_all(&protocol::encode_frame(&frame)).await;
                            job_id
                        }
                        Event::Frame(ServerFrame::JobFailed { job_id, .. } | ServerFrame::Busy { job_id, .. }) => job_id,
                        Event::ControlClosed(_) => break,
                        _ => continue,
                    };
                    if let Some(&i) = by_id.get(&job_id) {
                        jobs[i].awaiting_ready = false;
                    }
                }
                let _ = send.finish();
                // Give the gateway a moment to read the cancellations before closing.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                conn.close(0u32.into(), b"cancelled");
                return Err(SendError::Cancelled);
            }
            ev = ev_rx.recv() => {
                let at = started.elapsed();
                match ev.expect("the connection task holds a sender") {
                    Event::Frame(ServerFrame::Welcome { tenant, .. }) => {
                        *welcomed = true;
                        debug!(%tenant, "authenticated");
                    }
                    Event::Frame(ServerFrame::Refused { reason }) => return Err(SendError::Refused(reason)),
                    Event::Frame(ServerFrame::JobReady { job_id, handle: h, held }) => {
                        let Some(&i) = by_id.get(&job_id) else {
                            return Err(ProtocolError::Unexpected(format!("JobReady for a job never opened: {job_id}")).into());
                        };
                        let j = &mut jobs[i];
                        j.awaiting_ready = false;
                        if j.done {
                            continue;
                        }
                        j.sender().on_ready(&held)?;
                        j.detach();
                        j.handle = Some(h);
                        by_handle.insert(h, i);
                        let (acked, bytes, total) = j.sender().progress();
                        info!(job = %job_id, held = acked, total, "job ready");
                        report(i, bytes, j.total_bytes);
                    }
                    Event::Frame(ServerFrame::Acks { handle: h, chunks }) => {
                        let i = job_for(&by_handle, h)?;
                        let j = &mut jobs[i];
                        if j.done {
                            continue;
                        }
                        for c in chunks {
                            j.sender().on_ack(c)?;
                            let Some(f) = j.in_flight.remove(&c) else { continue };
                            let latency = f.sent.elapsed();
                            if let Some(p) = &f.shared {
                                p.observe(latency);
                            }
                            if let Some(hook) = &cfg.chunk_latency {
                                (hook.0)(latency);
                            }
                        }
                        let bytes = j.sender().progress().1;
                        report(i, bytes, j.total_bytes);
                    }
                    Event::Frame(ServerFrame::Reject { handle: h, chunk, reason }) => {
                        let i = job_for(&by_handle, h)?;
                        let j = &mut jobs[i];
                        if j.done {
                            continue;
                        }
                        warn!(job = %j.open.job_id, ?chunk, %reason, "chunk rejected; sending it again");
                        j.in_flight.remove(&chunk);
                        if j.next == Some(chunk) {
                            j.next = None;
                        }
                        j.sender().on_reject(chunk)?;
                    }
                    Event::Frame(ServerFrame::JobDone { handle: h, manifest, receipts }) => {
                        let i = job_for(&by_handle, h)?;
                        if jobs[i].done {
                            continue;
                        }
                        info!(job = %jobs[i].open.job_id, "job done");
                        if receipts.len() != jobs[i].open.destinations.len() {
                            return Err(ProtocolError::Unexpected(format!(
                                "{} receipts for {} destinations",
                                receipts.len(),
                                jobs[i].open.destinations.len()
                            ))
                            .into());
                        }
                        jobs[i].settle(Ok((manifest, receipts)), at);
                    }
                    Event::Frame(ServerFrame::JobFailed { handle: h, job_id, reason, permanent }) => {
                        let i = match by_handle.get(&h) {
                            Some(&i) => i,
                            None => *by_id.get(&job_id).ok_or_else(|| {
                                ProtocolError::Unexpected(format!("JobFailed for a job never opened: {job_id}"))
                            })?,
                        };
                        let j = &mut jobs[i];
                        if h == u32::MAX {
                            j.awaiting_ready = false;
                        }
                        if j.done || j.handle.is_none() && h != u32::MAX {
                            continue; // already settled, or a repeat for a job being reopened
                        }
                        j.detach();
                        match j.retry.on_failed(permanent, at, &limits) {
                            Verdict::GiveUp => {
                                warn!(job = %job_id, %reason, permanent, "job failed");
                                j.settle(Err(SendError::JobFailed { reason, permanent }), at);
                            }
                            Verdict::Reopen(backoff) => {
                                warn!(job = %job_id, %reason, attempt = j.retry.reopens(), ?backoff, "job failed at the gateway; reopening");
                            }
                        }
                    }
                    Event::Frame(ServerFrame::Busy { job_id, reason, retry_after_ms }) => {
                        let Some(&i) = by_id.get(&job_id) else {
                            return Err(ProtocolError::Unexpected(format!("Busy for a job never opened: {job_id}")).into());
                        };
                        jobs[i].awaiting_ready = false;
                        if jobs[i].done {
                            continue;
                        }
                        // While another job of this send is open a slot will come free: the
                        // job waits for it as long as it takes. Otherwise it waits up to
                        // `max_reconnects` times.
                        let sibling_open = jobs
                            .iter()
                            .enumerate()
                            .any(|(k, j)| k != i && !j.done && j.handle.is_some());
                        let j = &mut jobs[i];
                        j.detach();
                        match j.retry.on_busy(sibling_open, retry_after_ms, at, &limits) {
                            Verdict::GiveUp => {
                                warn!(job = %job_id, %reason, "gateway busy; giving up for now");
                                j.settle(Err(SendError::Busy { reason }), at);
                            }
                            Verdict::Reopen(backoff) => {
                                info!(job = %job_id, %reason, ?backoff, "gateway busy; opening the job again later");
                            }
                        }
                    }
                    Event::Sent(i, c, h) => {
                        if !jobs[i].done {
                            jobs[i].sender().set_hash(c, h);
                        }
                    }
                    // A stream of a job that has since settled or been reopened: stale.
                    Event::SendFailed(i, h, _) if jobs[i].done || jobs[i].handle != Some(h) => {}
                    Event::SendFailed(_, _, e) | Event::ControlClosed(e) => return Err(SendError::Connection(e)),
                    Event::SourceFailed(i, e) => {
                        let j = &mut jobs[i];
                        if j.done {
                            continue;
                        }
                        let _ = send.write_all(&protocol::encode_frame(&ClientFrame::CancelJob {
                            handle: j.handle.unwrap_or(u32::MAX),
                            reason: "source unreadable".into(),
                        })).await;
                        warn!(job = %j.open.job_id, error = %e, "source unreadable; job cancelled");
                        j.settle(Err(SendError::SourceRead(e)), at);
                    }
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

pub(super) fn job_for(by_handle: &HashMap<u32, usize>, handle: u32) -> Result<usize, SendError> {
    by_handle.get(&handle).copied().ok_or_else(|| {
        ProtocolError::Unexpected(format!("frame for unknown job handle {handle}")).into()
    })
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

/// Which chunk of which job a chunk stream carries.
#[derive(Clone, Copy)]
pub(super) struct ChunkTask {
    /// Index of the job in the send.
    pub(super) job: usize,
    /// The job's handle on this connection.
    pub(super) handle: u32,
    pub(super) chunk: ChunkRef,
    pub(super) layout: ChunkLayout,
}

pub(super) fn spawn_chunk(
    conn: quinn::Connection,
    source: Arc<Source>,
    task: ChunkTask,
    faults: Arc<FaultInjection>,
    events: mpsc::UnboundedSender<Event>,
    reads: Arc<Semaphore>,
) {
    let ChunkTask {
        job,
        handle,
        chunk: c,
        layout,
    } = task;
    tokio::spawn(async move {
        let result = async {
            let reading = reads.acquire_owned().await.expect("never closed");
            let read = tokio::task::spawn_blocking(move || -> Result<(Bytes, Hash32), String> {
                let _reading = reading;
                let file = source.file(c.file)?;
                let mut buf = vec![0u8; layout.chunk_len(c.index) as usize];
                file.read_exact_at(&mut buf, layout.offset(c.index))
                    .map_err(|e| {
                        format!(
                            "{}: {e} (did the file change?)",
                            source.files[c.file as usize].0.display()
                        )
                    })?;
                let hash = layout.chunk_hash(c.index, &buf);
                if !buf.is_empty() && faults.corrupt_first_chunk.swap(false, Ordering::SeqCst) {
                    buf[0] ^= 0x01;
                }
                Ok((Bytes::from(buf), hash))
            })
            .await
            .map_err(|e| ConnectionLost::ReadTask(Arc::new(e)))?;
            let (data, hash) = match read {
                Ok(r) => r,
                Err(e) => {
                    let _ = events.send(Event::SourceFailed(job, e));
                    return Ok(());
                }
            };
            // Report the hash before the data leaves, so it is recorded before any ack.
            let _ = events.send(Event::Sent(job, c, hash));
            let header = ChunkHeader {
                handle,
                chunk: c,
                len: data.len() as u64,
                hash,
            };
            let prefix = protocol::encode_chunk_header(&header);
            let mut stream = conn.open_uni().await?;
            stream.write_all(&prefix).await?;
            stream.write_chunk(data).await?;
            stream.finish()?;
            Ok::<(), ConnectionLost>(())
        }
        .await;
        if let Err(e) = result {
            let _ = events.send(Event::SendFailed(job, handle, e));
        }
    });
}
