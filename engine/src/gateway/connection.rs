//! A tenant's connection, as I/O around the protocol session ([`ReceiverSession`]):
//! the per-address and unauthenticated caps, the `Hello` read within the session's
//! deadline, the control stream's frames fed to the session, and its actions (open,
//! finish, cancel, replies) carried out.

use super::*;

impl Shared {
    pub(super) fn authenticate(&self, token: &str) -> Option<String> {
        if let Some(key) = &self.service_key
            && let Some(tenant) = key.verify(token)
        {
            return self
                .tenants
                .current()
                .file
                .get(&tenant)
                .map(|t| t.tenant.clone());
        }
        self.tenants
            .current()
            .file
            .authenticate(token)
            .map(|t| t.tenant.clone())
    }
}

/// What a handle of a connection holds: the job and its place among its tenant's job
/// slots (given back when the last holder lets go).
#[derive(Clone)]
pub(super) struct OpenHandle {
    pub(super) job: Arc<HeldJob>,
    _slot: Arc<crate::quota::JobSlot>,
}

/// A tenant's connection after authentication: the protocol session (its handle table)
/// and the writer of its control stream, shared by the control loop, chunk streams and
/// finishing jobs.
pub(super) struct ConnState {
    pub(super) tenant: String,
    pub(super) session: Mutex<ReceiverSession<OpenHandle>>,
    pub(super) out: mpsc::UnboundedSender<ServerFrame>,
}

impl ConnState {
    /// The job a chunk stream's handle names.
    pub(super) fn job(&self, handle: u32) -> Option<Arc<HeldJob>> {
        let session = self.session.lock().expect("session lock");
        session.job(handle).map(|h| h.job.clone())
    }

    /// Feeds the session one input and takes every action it led to.
    fn input<T>(
        &self,
        f: impl FnOnce(&mut ReceiverSession<OpenHandle>) -> T,
    ) -> (T, Vec<ReceiverAction<OpenHandle>>) {
        let mut session = self.session.lock().expect("session lock");
        let out = f(&mut session);
        (out, std::iter::from_fn(|| session.poll_action()).collect())
    }

    /// Writes the frames among `actions` (the answers to an open or a finish are frames only).
    fn send(&self, actions: Vec<ReceiverAction<OpenHandle>>) {
        for a in actions {
            match a {
                ReceiverAction::Frame(frame) => self.frame(frame),
                other => {
                    debug!(action = ?std::mem::discriminant(&other), "unexpected session action")
                }
            }
        }
    }

    fn frame(&self, frame: ServerFrame) {
        if let ServerFrame::Busy { job_id, reason, .. } = &frame {
            info!(tenant = %self.tenant, job = %job_id, %reason, "job deferred");
        }
        let _ = self.out.send(frame);
    }
}

pub(super) async fn read_frame(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<ClientFrame>,
) -> Result<Option<ClientFrame>, GatewayError> {
    loop {
        if let Some(f) = dec.next_frame()? {
            return Ok(Some(f));
        }
        // Never more than the frame being decoded needs: the decoder holds one frame at most.
        match recv.read_chunk(dec.wanted(), true).await {
            Ok(Some(chunk)) => dec.push(&chunk.bytes),
            Ok(None) => {
                dec.finish()?;
                return Ok(None);
            }
            Err(e) => return Err(GatewayError::stream("control stream")(e.into())),
        }
    }
}

/// Where connections are counted for [`GatewayConfig::max_connections_per_ip`]: the IPv4
/// address (also when IPv4-mapped), or the IPv6 /64 (one host's usual allocation).
pub(super) fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One connection's place in its address's count, given back on drop.
pub(super) struct AddressSlot {
    pub(super) shared: Arc<Shared>,
    pub(super) key: std::net::IpAddr,
}

impl AddressSlot {
    /// A place for a connection from `ip`, or `None` when its address is at the limit.
    pub(super) fn take(shared: &Arc<Shared>, ip: std::net::IpAddr) -> Option<Self> {
        let key = address_key(ip);
        let mut counts = shared.per_address.lock().expect("address lock");
        let n = counts.entry(key).or_insert(0);
        if *n >= shared.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: shared.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.shared.per_address.lock().expect("address lock");
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::UnknownToken => GatewayError::UnknownToken,
            Refusal::HelloTimeout(d) => GatewayError::HelloTimeout(d),
            Refusal::Protocol(e) => GatewayError::Protocol(e),
        }
    }
}

pub(super) async fn handle_connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    unauthenticated: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), GatewayError> {
    let peer = conn.remote_address();
    let Some(_slot) = AddressSlot::take(&shared, peer.ip()) else {
        let e = GatewayError::TooManyConnections {
            address: address_key(peer.ip()).to_string(),
            max: shared.max_connections_per_ip,
        };
        warn!(%peer, "{e}; connection refused");
        conn.close(close::TOO_MANY_CONNECTIONS.into(), e.to_string().as_bytes());
        return Err(e);
    };
    // An auditor asking for the key set: answered, no session.
    if crate::transport::negotiated_alpn(&conn).as_deref() == Some(crate::transport::KEYS_ALPN) {
        return super::keyset::serve_keys(&shared, conn).await;
    }
    let start = tokio::time::Instant::now();
    let mut session = ReceiverSession::new(
        std::time::Duration::ZERO,
        shared.auth_timeout,
        shared.max_jobs_per_connection,
    );
    // Before authentication: one control stream, a Hello-sized frame limit (the transport
    // allows no chunk streams and a small window yet), and the session's deadline.
    let deadline = start
        + session
            .poll_timeout()
            .expect("a new session has a deadline");
    let max = session.max_frame();
    let hello = tokio::time::timeout_at(deadline, async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| GatewayError::stream("no control stream")(e.into()))?;
        let mut dec = FrameDecoder::<ClientFrame>::new(max);
        let first = read_frame(&mut recv, &mut dec).await;
        Ok::<_, GatewayError>((send, recv, dec, first))
    })
    .await;
    let mut streams = None;
    match hello {
        Ok(Ok((send, recv, dec, first))) => {
            match first {
                Ok(Some(frame)) => {
                    let _ = session.on_frame(frame);
                }
                Ok(None) => session.on_control_ended(),
                Err(e) => {
                    let reason = format!("expected Hello: {e}");
                    conn.close(close::EXPECTED_HELLO.into(), reason.as_bytes());
                    return Err(e);
                }
            }
            streams = Some((send, recv, dec));
        }
        Ok(Err(e)) => return Err(e),
        // The deadline passed (timers fire at it or later).
        Err(_) => session.on_timeout(start.elapsed().max(shared.auth_timeout)),
    }
    // The session's answer: authenticate, then welcome or refuse.
    let mut tenant = None;
    let mut queued = Vec::new();
    while let Some(action) = session.poll_action() {
        match action {
            ReceiverAction::Authenticate(token) => {
                session.authenticated(shared.authenticate(&token.0));
            }
            ReceiverAction::Frame(frame @ ServerFrame::Refused { .. }) => queued.push(frame),
            ReceiverAction::Close(why) => {
                if let Some((mut send, _, _)) = streams.take() {
                    // Bounded: a peer that never acknowledges must not hold its slot.
                    let _ = tokio::time::timeout(shared.auth_timeout, async {
                        for frame in &queued {
                            let _ = send.write_all(&protocol::encode_frame(frame)).await;
                        }
                        if !queued.is_empty() {
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        }
                    })
                    .await;
                }
                let reason = match why.code() {
                    close::REFUSED => "refused".to_string(),
                    close::EXPECTED_HELLO => "expected Hello".to_string(),
                    _ => why.to_string(),
                };
                conn.close(why.code().into(), reason.as_bytes());
                return Err(why.into());
            }
            ReceiverAction::Admit => tenant = session.tenant().map(str::to_string),
            ReceiverAction::Frame(frame) => queued.push(frame),
            other => {
                debug!(action = ?std::mem::discriminant(&other), "unexpected action before authentication")
            }
        }
    }
    let (Some(tenant), Some((mut send, mut recv, mut dec))) = (tenant, streams) else {
        return Err(ProtocolError::Unexpected("no Hello".into()).into());
    };
    drop(unauthenticated);
    dec.set_max(session.max_frame());
    crate::transport::open_after_auth(&conn);
    // Ends with the connection (or aborted below with the rest of it).
    let window = tokio::spawn(crate::transport::tune_receive_window(conn.clone()));
    let watched = tokio::spawn(crate::telemetry::watch_connection(
        conn.clone(),
        crate::telemetry::Side::Gateway,
    ));
    info!(tenant = %tenant, peer = %conn.remote_address(), "sender authenticated");
    let (out, mut out_rx) = mpsc::unbounded_channel::<ServerFrame>();
    // The Welcome (and anything else queued with it) goes first.
    for frame in queued {
        let _ = out.send(frame);
    }
    tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if send
                .write_all(&protocol::encode_frame(&frame))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = send.finish();
    });
    let state = Arc::new(ConnState {
        tenant,
        session: Mutex::new(session),
        out,
    });
    let uni = {
        let conn = conn.clone();
        let shared = shared.clone();
        let state = state.clone();
        tokio::spawn(async move {
            while let Ok(stream) = conn.accept_uni().await {
                let shared = shared.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_chunk_stream(&shared, &state, stream).await {
                        debug!(error = %e, "chunk stream failed");
                    }
                });
            }
        })
    };
    let result = control_loop(&shared, &state, &mut recv, &mut dec).await;
    uni.abort();
    window.abort();
    watched.abort();
    // The connection's jobs no longer occupy their tenant's slots.
    state.session.lock().expect("session lock").closed();
    result
}

pub(super) async fn control_loop(
    shared: &Arc<Shared>,
    state: &Arc<ConnState>,
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<ClientFrame>,
) -> Result<(), GatewayError> {
    while let Some(frame) = read_frame(recv, dec).await? {
        let (result, actions) = state.input(|s| s.on_frame(frame));
        result?;
        for action in actions {
            match action {
                ReceiverAction::Frame(frame) => state.frame(frame),
                ReceiverAction::Open(open) => open_job(shared, state, open).await,
                ReceiverAction::Finish {
                    handle,
                    job,
                    file_hashes,
                } => {
                    let state = state.clone();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let job = job.job;
                        let outcome = match finish_job(&shared, &job, &file_hashes).await {
                            Ok((manifest, receipts)) => {
                                shared.jobs_completed.fetch_add(1, Ordering::Relaxed);
                                Finished::Done { manifest, receipts }
                            }
                            // Nothing is lost: the job stays as it is, and a finish sent
                            // again (on this connection or another) goes on where this one
                            // stopped.
                            Err(FinishFailure {
                                error,
                                retryable: true,
                            }) => {
                                warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, trace_id = job.trace.as_deref(), %error, "job finish failed; the sender may retry it");
                                Finished::Failed {
                                    reason: error.to_string(),
                                    permanent: false,
                                }
                            }
                            Err(FinishFailure { error, .. }) => {
                                shared.jobs_failed.fetch_add(1, Ordering::Relaxed);
                                warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, trace_id = job.trace.as_deref(), %error, "job failed at finish");
                                job.fail(error.to_string());
                                Finished::Failed {
                                    reason: error.to_string(),
                                    permanent: true,
                                }
                            }
                        };
                        let job_id = job.job_id();
                        let ((), frames) = state.input(|s| s.finished(handle, job_id, outcome));
                        state.send(frames);
                    });
                }
                ReceiverAction::Cancel { job, reason } => {
                    let job = job.job;
                    info!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, trace_id = job.trace.as_deref(), %reason, "job cancelled");
                    // Marked first: a writer opened from here on aborts itself (see
                    // `HeldJob::writer`); the ones open now are aborted here.
                    job.cancelled.store(true, Ordering::Relaxed);
                    job.fail(format!("cancelled: {reason}"));
                    abort_writers(&job).await;
                    let key = (job.tenant.clone(), job.job_id());
                    shared.jobs.lock().expect("jobs lock").remove(&key);
                    let _ = fs::remove_dir_all(&job.dir);
                }
                ReceiverAction::Authenticate(_)
                | ReceiverAction::Admit
                | ReceiverAction::Close(_) => {
                    debug!("authentication action after authentication; ignored");
                }
            }
        }
    }
    Ok(())
}

/// Takes the tenant's job slot and opens (or resumes) the job; the session answers the
/// sender (`JobReady`, `Busy` or `JobFailed`).
async fn open_job(shared: &Arc<Shared>, state: &Arc<ConnState>, open: OpenJob) {
    let job_id = open.job_id.clone();
    let correlation = open.correlation_id.clone().unwrap_or_else(|| "-".into());
    let trace = open.trace_id();
    let max =
        (shared.tenants.current().file.get(&state.tenant)).and_then(|t| t.max_concurrent_jobs);
    let slot = match shared.quotas.reserve_job(&state.tenant, &job_id, max) {
        Ok(slot) => slot,
        Err(crate::quota::Busy(reason)) => {
            let ((), frames) = state.input(|s| s.deferred(job_id, reason, protocol::BUSY_RETRY_MS));
            return state.send(frames);
        }
    };
    let ((), frames) = match shared.open_job(&state.tenant, open).await {
        Ok(job) => {
            let held = job.state.lock().expect("job lock").held_chunks();
            slot.attach(job.clone());
            let entry = OpenHandle {
                job,
                _slot: Arc::new(slot),
            };
            let (handle, frames) = state.input(|s| s.opened(job_id.clone(), entry, held));
            info!(tenant = %state.tenant, job = %job_id, correlation_id = %correlation, trace_id = trace.as_deref(), handle, "job open");
            ((), frames)
        }
        Err(e) => {
            warn!(tenant = %state.tenant, job = %job_id, correlation_id = %correlation, trace_id = trace.as_deref(), error = %e, "job refused");
            shared.jobs_failed.fetch_add(1, Ordering::Relaxed);
            let permanent = !matches!(&e, GatewayError::Connector(c) if c.is_transient());
            state.input(|s| s.open_failed(job_id, e.to_string(), permanent))
        }
    };
    state.send(frames);
}
/// Aborts every partial destination object the job may have (idempotent).
pub(super) async fn abort_writers(job: &HeldJob) {
    for d in 0..job.dests.len() {
        job.abort_dest(d).await;
    }
}
