//! A job's directory as the journal of what arrived: `job.json`, `chunks.log` (group
//! commit: chunks are acknowledged once durable) and the finished documents.

use super::*;

/// What a job's directory holds, read (or made) by [`load_job_dir`].
pub(super) struct LoadedDir {
    pub(super) state: ReceiverJob,
    pub(super) resume: bool,
    pub(super) finished: Option<(String, Vec<String>)>,
}

/// Reads the job directory `dir` of `tenant`'s `open` (its stored job, the chunks it holds, its
/// finished documents), or makes it; blocking.
pub(super) fn load_job_dir(
    tenant: &str,
    dir: &Path,
    open: &OpenJob,
    mut state: ReceiverJob,
) -> Result<LoadedDir, GatewayError> {
    let job_file = dir.join("job.json");
    let resume = job_file.exists();
    if resume {
        let bytes = fs::read(&job_file).map_err(io("reading", &job_file))?;
        let stored: OpenJob = serde_json::from_slice(&bytes).map_err(|e| GatewayError::Stored {
            what: "stored job",
            path: job_file.clone(),
            source: e.into(),
        })?;
        if !stored.same_job(open) {
            return Err(GatewayError::JobConflict(open.job_id.clone()));
        }
        let log_path = dir.join("chunks.log");
        let bytes = match fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("reading", &log_path)(e)),
        };
        let log = protocol::decode_chunk_log(&bytes).map_err(|e| GatewayError::Stored {
            what: "chunk log",
            path: log_path.clone(),
            source: e.into(),
        })?;
        if log.valid_len != bytes.len() {
            warn!(tenant, job = %open.job_id, correlation_id = open.correlation_id.as_deref().unwrap_or("-"), cut = bytes.len() - log.valid_len, "cutting torn tail of chunk log");
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&log_path)
                .map_err(io("opening", &log_path))?;
            f.set_len(log.valid_len as u64)
                .map_err(io("truncating", &log_path))?;
            f.sync_all().map_err(io("syncing", &log_path))?;
        }
        for (c, h) in log.records {
            state.record(c, h)?;
        }
        info!(tenant, job = %open.job_id, correlation_id = open.correlation_id.as_deref().unwrap_or("-"), held = state.progress().0, "resuming job");
    } else {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let json = serde_json::to_vec_pretty(open).expect("jobs serialise");
        trackshift_crypto::filestore::write_atomic(&job_file, &json, 0o644)?;
    }
    let finished = read_finished(dir, open.destinations.len());
    // Made (and shown writable) now; each group commit opens it for its append only, so a
    // job holds no descriptor of its own between commits.
    let log_path = dir.join("chunks.log");
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("opening", &log_path))?;
    Ok(LoadedDir {
        state,
        resume,
        finished,
    })
}

/// Name of the file recording why destination `d` was dropped from a job.
pub(super) fn dropped_file(d: usize) -> String {
    format!("dropped-{d}.txt")
}

/// Name of the receipt file of destination `d` in a job directory.
pub(super) fn receipt_file(d: usize) -> String {
    if d == 0 {
        "receipt.json".into()
    } else {
        format!("receipt-{}.json", d + 1)
    }
}

pub(super) fn read_finished(dir: &Path, dests: usize) -> Option<(String, Vec<String>)> {
    let m = fs::read_to_string(dir.join("manifest.json")).ok()?;
    let r = (0..dests)
        .map(|d| fs::read_to_string(dir.join(receipt_file(d))).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((m, r))
}

/// Group commit: takes every chunk written since the last round, syncs the files they went
/// to, appends their records to the chunk log with one fsync, then acknowledges them.
/// Ends when the job is gone (every sender of `rx` is the job's).
pub(super) async fn committer(
    job: std::sync::Weak<HeldJob>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            batch.push(p);
        }
        // Nobody holds the job any more: nobody waits for these acknowledgements either.
        let Some(job) = job.upgrade() else { break };
        let result = commit_batch(&job, &batch).await;
        match result {
            Ok(()) => {
                // One Acks frame per (connection, handle).
                let mut acks: Vec<(u32, mpsc::UnboundedSender<ServerFrame>, Vec<ChunkRef>)> =
                    Vec::new();
                for p in &batch {
                    match acks
                        .iter_mut()
                        .find(|(h, tx, _)| *h == p.handle && tx.same_channel(&p.reply))
                    {
                        Some((_, _, chunks)) => chunks.push(p.chunk),
                        None => acks.push((p.handle, p.reply.clone(), vec![p.chunk])),
                    }
                }
                for (handle, reply, chunks) in acks {
                    let _ = reply.send(ServerFrame::Acks { handle, chunks });
                }
            }
            Err(e) => {
                let reason = format!("making chunks durable failed: {e}");
                warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, trace_id = job.trace.as_deref(), error = %e, "job failed");
                job.fail(reason.clone());
                for p in &batch {
                    let _ = p.reply.send(ServerFrame::JobFailed {
                        handle: p.handle,
                        job_id: job.job_id(),
                        reason: reason.clone(),
                        permanent: false,
                    });
                }
            }
        }
    }
}

/// Most files of a group commit synced at once.
const SYNCS_AT_ONCE: usize = 512;

pub(super) async fn commit_batch(
    job: &Arc<HeldJob>,
    batch: &[Pending],
) -> Result<(), GatewayError> {
    let mut files: Vec<u32> = batch.iter().map(|p| p.chunk.file).collect();
    files.sort_unstable();
    files.dedup();
    // Side by side: the disk and its file system take many syncs at once in about the time
    // of one; a failing sync drops its destination completely before the error returns.
    bounded(
        files.iter().map(|&f| job.sync_all(f)),
        SYNCS_AT_ONCE,
        |()| {},
    )
    .await?;
    let mut records = Vec::with_capacity(batch.len() * protocol::LOG_RECORD_LEN);
    for p in batch {
        records.extend_from_slice(&protocol::encode_log_record(p.chunk, &p.hash));
    }
    let path = job.dir.join("chunks.log");
    let log = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut f = fs::OpenOptions::new().append(true).open(&log)?;
        f.write_all(&records)?;
        f.sync_data()
    })
    .await
    .expect("log task does not panic")
    .map_err(io("appending to", &path))?;
    let complete: Vec<u32> = {
        let mut state = job.state.lock().expect("job lock");
        for p in batch {
            state.record(p.chunk, p.hash)?;
        }
        files.retain(|&f| state.file_complete(f));
        files
    };
    // A file whose every chunk is durable needs its writers again only to commit.
    for f in complete {
        job.close_writers(f).await;
    }
    Ok(())
}
