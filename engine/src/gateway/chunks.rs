//! A chunk stream: one chunk or several back to back (the sender packs small files), each
//! header and payload read, the BLAKE3 hash checked, the bytes written to every live
//! destination, then queued for the group commit.

use super::*;

/// How many received bytes are hashed at a time (a multiple of BLAKE3's 1 KiB chunks large
/// enough for its widest SIMD path, small enough to be still in cache).
const HASH_STEP: usize = 256 << 10;

/// What became of one chunk of a stream.
enum Next {
    /// Read to its end: the stream may carry another.
    More,
    /// The stream is done with (stopped, or nothing more is read from it).
    Done,
}

pub(super) async fn handle_chunk_stream(
    shared: &Arc<Shared>,
    state: &Arc<ConnState>,
    mut recv: quinn::RecvStream,
) -> Result<(), GatewayError> {
    let mut first = true;
    loop {
        let Some(header) = read_header(&mut recv, first).await? else {
            return Ok(());
        };
        first = false;
        match handle_chunk(shared, state, &mut recv, header).await? {
            Next::More => {}
            Next::Done => return Ok(()),
        }
    }
}

/// Reads the next chunk header of `recv`; `None` when the stream ends cleanly before it
/// (never for its `first` one).
async fn read_header(
    recv: &mut quinn::RecvStream,
    first: bool,
) -> Result<Option<protocol::ChunkHeader>, GatewayError> {
    // The header is a frame like the control stream's: read exactly as much as it needs,
    // never into the payload behind it.
    let mut dec = FrameDecoder::<protocol::ChunkHeader>::new(protocol::MAX_CHUNK_HEADER);
    // At most the prefix and a header at its limit: on the stack, not allocated per chunk.
    let mut piece = [0u8; 4 + protocol::MAX_CHUNK_HEADER];
    let mut start = true;
    loop {
        match dec.next_frame() {
            Ok(Some(header)) => return Ok(Some(header)),
            Ok(None) => {}
            Err(e) => {
                let _ = recv.stop(1u32.into());
                return Err(e.into());
            }
        }
        let piece = &mut piece[..dec.wanted()];
        match recv.read_exact(piece).await {
            Ok(()) => {}
            // The stream ended where a header would begin: its last chunk was read.
            Err(quinn::ReadExactError::FinishedEarly(0)) if start && !first => return Ok(None),
            Err(e) => return Err(GatewayError::stream("chunk header")(e.into())),
        }
        start = false;
        dec.push(piece);
    }
}

/// One chunk of a stream, its header read: checked, its payload read and hashed, written
/// to every live destination and queued for the group commit.
async fn handle_chunk(
    shared: &Arc<Shared>,
    state: &Arc<ConnState>,
    recv: &mut quinn::RecvStream,
    header: protocol::ChunkHeader,
) -> Result<Next, GatewayError> {
    let job = state.job(header.handle);
    let Some(job) = job else {
        let _ = recv.stop(1u32.into());
        return Err(
            ProtocolError::InvalidChunk(format!("unknown job handle {}", header.handle)).into(),
        );
    };
    let failed = job.failed.lock().expect("job lock").clone();
    if let Some(reason) = failed {
        let _ = recv.stop(1u32.into());
        // Tell the sender: a stopped stream alone can go unnoticed when its data was
        // already written, and the sender would wait for an ack that never comes.
        let _ = state.out.send(ServerFrame::JobFailed {
            handle: header.handle,
            job_id: job.job_id(),
            reason: reason.clone(),
            permanent: true,
        });
        return Err(GatewayError::JobFailed(reason));
    }
    let disposition = job.state.lock().expect("job lock").check_header(&header);
    let layout = match disposition {
        Ok(Disposition::Accept(layout)) => layout,
        Ok(Disposition::AlreadyHeld) => {
            let _ = state.out.send(ServerFrame::Acks {
                handle: header.handle,
                chunks: vec![header.chunk],
            });
            // A large chunk has its stream to itself: stopped, the sender sends no more
            // of it. Small ones may have others behind them on the stream: their payload
            // is read past (a length checked to fit its file), not written.
            if header.len >= protocol::PACKED_BELOW {
                let _ = recv.stop(0u32.into());
                return Ok(Next::Done);
            }
            // Bytes read past count against the tenant's receive rate like any others
            // (chunks it holds already, sent again and again, are no way around it).
            if let Some(rate) = shared
                .quotas
                .rate(&state.tenant, tenant_quotas(shared, state).0)
            {
                rate.take(header.len).await;
            }
            return match skip(recv, header.len).await {
                Ok(()) => Ok(Next::More),
                Err(_) => {
                    let _ = recv.stop(0u32.into());
                    Ok(Next::Done)
                }
            };
        }
        Err(e) => {
            let _ = recv.stop(1u32.into());
            let _ = state.out.send(ServerFrame::Reject {
                handle: header.handle,
                chunk: header.chunk,
                reason: e.to_string(),
            });
            return Err(e.into());
        }
    };
    // A file not open yet waits for a place among the open files, before it holds memory.
    job.hold_open_file(&shared.open_files, header.chunk.file)
        .await;
    let len = header.len as usize;
    // The tenant's quotas before the gateway spends anything on the payload: its receive
    // rate (the stream is not read meanwhile: QUIC flow control holds the sender), then
    // its part of the memory budget, then the budget.
    let (limit, cap) = tenant_quotas(shared, state);
    if let Some(rate) = shared.quotas.rate(&state.tenant, limit) {
        rate.take(header.len).await;
    }
    let permit = shared.quotas.memory(&state.tenant, cap, header.len).await;
    // A pooled buffer (no fresh zeroed pages per chunk), hashed as it fills, a few hundred
    // KiB at a time while those bytes are still in cache (and in pieces large enough for
    // BLAKE3's SIMD): no second pass over the chunk, no blocking task per chunk.
    let mut buf = crate::pool::BufferPool::global().take(len);
    let mut hasher = layout.chunk_hasher(header.chunk.index);
    let (mut filled, mut hashed) = (0usize, 0usize);
    while filled < len {
        match recv.read(&mut buf.as_mut_slice()[filled..]).await {
            Ok(Some(n)) => filled += n,
            Ok(None) => break,
            Err(e) => return Err(GatewayError::stream("chunk payload")(e.into())),
        }
        if filled - hashed >= HASH_STEP || filled == len {
            hasher.update(&buf.as_ref()[hashed..filled]);
            hashed = filled;
        }
    }
    if filled != len {
        let _ = state.out.send(ServerFrame::Reject {
            handle: header.handle,
            chunk: header.chunk,
            reason: format!("payload is not {len} bytes"),
        });
        return Err(ProtocolError::InvalidChunk("payload length mismatch".into()).into());
    }
    let hash = hasher.finalize();
    let data = buf.freeze();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &hash.0[..],
        &header.hash.0[..],
    )) {
        warn!(tenant = %state.tenant, job = %job.id, correlation_id = %job.correlation, trace_id = job.trace.as_deref(), chunk = ?header.chunk, "chunk failed verification; asking for it again");
        let _ = state.out.send(ServerFrame::Reject {
            handle: header.handle,
            chunk: header.chunk,
            reason: "chunk hash mismatch".into(),
        });
        return Ok(Next::More);
    }
    if let Err(e) = job
        .write_all(header.chunk.file, layout.offset(header.chunk.index), data)
        .await
    {
        let reason = format!("writing to destination: {e}");
        job.fail(reason.clone());
        let _ = state.out.send(ServerFrame::JobFailed {
            handle: header.handle,
            job_id: job.job_id(),
            reason,
            permanent: !matches!(&e, GatewayError::Connector(c) if c.is_transient()),
        });
        return Err(e);
    }
    let _ = job.commit_tx.send(Pending {
        chunk: header.chunk,
        hash,
        handle: header.handle,
        reply: state.out.clone(),
        _permit: permit,
    });
    Ok(Next::More)
}

/// The tenant's receive rate limit (bytes per second, if any) and its part of the memory
/// budget.
fn tenant_quotas(shared: &Shared, state: &ConnState) -> (Option<u64>, u32) {
    let tenants = shared.tenants.current();
    let entry = tenants.file.get(&state.tenant);
    let total: u64 = tenants
        .file
        .tenants
        .iter()
        .map(|t| u64::from(t.share))
        .sum();
    let share = entry.map_or(1, |t| t.share);
    (
        entry.and_then(|t| t.bytes_per_second),
        shared.quotas.memory_cap(share, total),
    )
}

/// Reads `len` bytes of `recv` and drops them.
async fn skip(recv: &mut quinn::RecvStream, len: u64) -> Result<(), GatewayError> {
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX);
        match recv.read_chunk(want, true).await {
            Ok(Some(c)) => left -= c.bytes.len() as u64,
            Ok(None) => {
                return Err(ProtocolError::InvalidChunk("payload length mismatch".into()).into());
            }
            Err(e) => return Err(GatewayError::stream("chunk payload")(e.into())),
        }
    }
    Ok(())
}
