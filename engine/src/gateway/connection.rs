//! A tenant's connection: authentication (`Hello`), the per-address and unauthenticated
//! caps, and the control stream (open, finish, cancel and their replies).

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

pub(super) struct ConnState {
    pub(super) tenant: String,
    pub(super) handles: Mutex<HashMap<u32, Arc<HeldJob>>>,
    /// The job slot each handle holds (see [`crate::quota`]).
    pub(super) slots: Mutex<HashMap<u32, crate::quota::JobSlot>>,
    pub(super) next_handle: AtomicU32,
    pub(super) out: mpsc::UnboundedSender<ServerFrame>,
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

/// Close codes the gateway gives connections it refuses (the reason text says why).
pub(super) mod close {
    /// The token or version was refused.
    pub const REFUSED: u32 = 1;
    /// The first frame was not a valid `Hello`.
    pub const EXPECTED_HELLO: u32 = 2;
    /// No valid `Hello` within the authentication deadline.
    pub const AUTH_TIMEOUT: u32 = 3;
    /// Too many connections from the peer's address.
    pub const TOO_MANY_CONNECTIONS: u32 = 4;
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
    // Before authentication: one control stream, a Hello-sized frame limit (the transport
    // allows no chunk streams and a small window yet), and a deadline.
    let hello = tokio::time::timeout(shared.auth_timeout, async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| GatewayError::stream("no control stream")(e.into()))?;
        let mut dec = FrameDecoder::<ClientFrame>::new(protocol::MAX_HELLO_FRAME);
        let first = read_frame(&mut recv, &mut dec).await;
        Ok::<_, GatewayError>((send, recv, dec, first))
    })
    .await;
    let (mut send, mut recv, mut dec, first) = match hello {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let e = GatewayError::HelloTimeout(shared.auth_timeout);
            conn.close(close::AUTH_TIMEOUT.into(), e.to_string().as_bytes());
            return Err(e);
        }
    };
    let tenant = match first {
        Ok(Some(ClientFrame::Hello { version, token })) => {
            let tenant = protocol::check_hello(version)
                .map_err(GatewayError::from)
                .and_then(|()| {
                    shared
                        .authenticate(&token.0)
                        .ok_or(GatewayError::UnknownToken)
                });
            match tenant {
                Ok(t) => t,
                Err(e) => {
                    let refusal = protocol::encode_frame(&ServerFrame::Refused {
                        reason: e.to_string(),
                    });
                    // Bounded: a peer that never acknowledges must not hold its slot.
                    let _ = tokio::time::timeout(shared.auth_timeout, async {
                        let _ = send.write_all(&refusal).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    })
                    .await;
                    conn.close(close::REFUSED.into(), b"refused");
                    return Err(e);
                }
            }
        }
        Ok(_) => {
            conn.close(close::EXPECTED_HELLO.into(), b"expected Hello");
            return Err(ProtocolError::Unexpected("first frame must be Hello".into()).into());
        }
        Err(e) => {
            let reason = format!("expected Hello: {e}");
            conn.close(close::EXPECTED_HELLO.into(), reason.as_bytes());
            return Err(e);
        }
    };
    drop(unauthenticated);
    dec.set_max(protocol::MAX_CONTROL_FRAME);
    crate::transport::open_after_auth(&conn);
    info!(tenant = %tenant, peer = %conn.remote_address(), "sender authenticated");
    let (out, mut out_rx) = mpsc::unbounded_channel::<ServerFrame>();
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
    let _ = out.send(ServerFrame::Welcome {
        version: protocol::VERSION,
        tenant: tenant.clone(),
    });
    let state = Arc::new(ConnState {
        tenant,
        handles: Mutex::new(HashMap::new()),
        slots: Mutex::new(HashMap::new()),
        next_handle: AtomicU32::new(0),
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
    // The connection's jobs no longer occupy their tenant's slots.
    state.slots.lock().expect("slots lock").clear();
    result
}

pub(super) async fn control_loop(
    shared: &Arc<Shared>,
    state: &Arc<ConnState>,
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<ClientFrame>,
) -> Result<(), GatewayError> {
    while let Some(frame) = read_frame(recv, dec).await? {
        match frame {
            ClientFrame::Hello { .. } => {
                return Err(ProtocolError::Unexpected("second Hello".into()).into());
            }
            ClientFrame::OpenJob(open) => {
                let job_id = open.job_id.clone();
                let correlation = open.correlation_id.clone().unwrap_or_else(|| "-".into());
                // Opening a job again on this connection (after it failed, or was busy)
                // abandons its earlier handle: that handle and its slot go, so handles do
                // not pile up on a long-lived connection.
                let stale: Vec<u32> = (state.handles.lock().expect("handles lock"))
                    .iter()
                    .filter(|(_, j)| j.id == job_id)
                    .map(|(&h, _)| h)
                    .collect();
                for h in stale {
                    state.handles.lock().expect("handles lock").remove(&h);
                    state.slots.lock().expect("slots lock").remove(&h);
                }
                // The connection's share, then the tenant's job slots, before any work.
                let held = state.handles.lock().expect("handles lock").len();
                if held >= shared.max_jobs_per_connection {
                    let reason = format!(
                        "this connection holds {held} open jobs, the most the gateway allows one connection"
                    );
                    defer(state, job_id, &correlation, reason);
                    continue;
                }
                let max = (shared.tenants.current().file.get(&state.tenant))
                    .and_then(|t| t.max_concurrent_jobs);
                let slot = match shared.quotas.reserve_job(&state.tenant, &job_id, max) {
                    Ok(slot) => slot,
                    Err(crate::quota::Busy(reason)) => {
                        defer(state, job_id, &correlation, reason);
                        continue;
                    }
                };
                match shared.open_job(&state.tenant, open).await {
                    Ok(job) => {
                        let handle = state.next_handle.fetch_add(1, Ordering::Relaxed);
                        let held = job.state.lock().expect("job lock").held_chunks();
                        slot.attach(job.clone());
                        state.slots.lock().expect("slots lock").insert(handle, slot);
                        state
                            .handles
                            .lock()
                            .expect("handles lock")
                            .insert(handle, job);
                        info!(tenant = %state.tenant, job = %job_id, correlation_id = %correlation, handle, "job open");
                        let _ = state.out.send(ServerFrame::JobReady {
                            job_id,
                            handle,
                            held,
                        });
                    }
                    Err(e) => {
                        warn!(tenant = %state.tenant, job = %job_id, correlation_id = %correlation, error = %e, "job refused");
                        shared.jobs_failed.fetch_add(1, Ordering::Relaxed);
                        let _ = state.out.send(ServerFrame::JobFailed {
                            handle: u32::MAX,
                            job_id,
                            reason: e.to_string(),
                            permanent: !matches!(&e, GatewayError::Connector(c) if c.is_transient()),
                        });
                    }
                }
            }
            ClientFrame::FinishJob {
                handle,
                file_hashes,
            } => {
                let job = state
                    .handles
                    .lock()
                    .expect("handles lock")
                    .get(&handle)
                    .cloned();
                let Some(job) = job else {
                    return Err(ProtocolError::Unexpected(format!(
                        "FinishJob for unknown handle {handle}"
                    ))
                    .into());
                };
                let state = state.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let frame = match finish_job(&shared, &job, &file_hashes).await {
                        Ok((manifest, receipts)) => {
                            shared.jobs_completed.fetch_add(1, Ordering::Relaxed);
                            ServerFrame::JobDone {
                                handle,
                                manifest,
                                receipts,
                            }
                        }
                        // Nothing is lost: the job stays as it is, and a finish sent again
                        // (on this connection or another) goes on where this one stopped.
                        Err(FinishFailure {
                            error,
                            retryable: true,
                        }) => {
                            warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, %error, "job finish failed; the sender may retry it");
                            ServerFrame::JobFailed {
                                handle,
                                job_id: job.open().job_id,
                                reason: error.to_string(),
                                permanent: false,
                            }
                        }
                        Err(FinishFailure { error, .. }) => {
                            shared.jobs_failed.fetch_add(1, Ordering::Relaxed);
                            warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, %error, "job failed at finish");
                            job.fail(error.to_string());
                            ServerFrame::JobFailed {
                                handle,
                                job_id: job.open().job_id,
                                reason: error.to_string(),
                                permanent: true,
                            }
                        }
                    };
                    // The job has ended on this connection: its handle and slot go (the
                    // sender sends nothing more under it; a repeat open gets a new one).
                    state.handles.lock().expect("handles lock").remove(&handle);
                    state.slots.lock().expect("slots lock").remove(&handle);
                    let _ = state.out.send(frame);
                });
            }
            ClientFrame::CancelJob { handle, reason } => {
                let job = state.handles.lock().expect("handles lock").remove(&handle);
                state.slots.lock().expect("slots lock").remove(&handle);
                if let Some(job) = job {
                    info!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, %reason, "job cancelled");
                    // Marked first: a writer opened from here on aborts itself (see
                    // `HeldJob::writer`); the ones open now are aborted here.
                    job.cancelled.store(true, Ordering::Relaxed);
                    job.fail(format!("cancelled: {reason}"));
                    abort_writers(&job).await;
                    let key = (job.tenant.clone(), job.open().job_id);
                    shared.jobs.lock().expect("jobs lock").remove(&key);
                    let _ = fs::remove_dir_all(&job.dir);
                }
            }
        }
    }
    Ok(())
}

/// Tells the sender to open `job_id` again later (`Busy`), and logs why.
pub(super) fn defer(state: &ConnState, job_id: String, correlation: &str, reason: String) {
    info!(tenant = %state.tenant, job = %job_id, correlation_id = %correlation, %reason, "job deferred");
    let _ = state.out.send(ServerFrame::Busy {
        job_id,
        reason,
        retry_after_ms: crate::quota::BUSY_RETRY_MS,
    });
}

/// Aborts every partial destination object the job may have (idempotent).
pub(super) async fn abort_writers(job: &HeldJob) {
    for d in 0..job.dests.len() {
        job.abort_dest(d).await;
    }
}
