//! Sealing a finished job: every destination committed and confirmed, the manifest and
//! receipts signed, appended to the ledger, and written to the job's directory.

use super::*;
use trackshift_crypto::IoError;

/// Why a finish failed, and whether sending it again can succeed.
pub(super) struct FinishFailure {
    pub(super) error: GatewayError,
    /// The failure left the job as it was before the finish (or with its signed documents
    /// saved): an I/O error of the job directory or the ledger (`EMFILE`, `ENOSPC`, `EIO`),
    /// or a ledger that is stopping; the ledger itself is at its last good checkpoint.
    pub(super) retryable: bool,
}

impl From<GatewayError> for FinishFailure {
    fn from(error: GatewayError) -> Self {
        Self {
            error,
            retryable: false,
        }
    }
}

impl FinishFailure {
    /// `error`, retryable when it is an I/O error or a stopping ledger.
    pub(super) fn of(error: GatewayError) -> Self {
        use trackshift_ledger::LedgerError;
        let retryable = matches!(
            &error,
            GatewayError::Io(IoError { .. })
                | GatewayError::Crypto(trackshift_crypto::CryptoError::Io(IoError { .. }))
                | GatewayError::Ledger(LedgerError::Io(IoError { .. }) | LedgerError::Stopped(_))
        );
        Self { error, retryable }
    }
}

pub(super) async fn finish_job(
    shared: &Arc<Shared>,
    job: &Arc<HeldJob>,
    sender_hashes: &[Hash32],
) -> Result<(String, Vec<String>), FinishFailure> {
    let mut finished = job.finished.lock().await;
    if let Some(done) = finished.as_ref() {
        return Ok(done.clone());
    }
    if let Some(reason) = job.failed.lock().expect("job lock").clone() {
        return Err(GatewayError::JobFailed(reason).into());
    }
    let entries = job
        .state
        .lock()
        .expect("job lock")
        .finish(sender_hashes)
        .map_err(GatewayError::from)?;
    let open = job.open();
    // A finish that signed its documents before the gateway stopped resumes with them: the
    // destinations were committed before they were signed, and the documents may be in the
    // ledger already (crate::record).
    let signed = match crate::record::load(&job.dir).map_err(FinishFailure::of)? {
        Some(signed) if signed.manifest.files == entries => signed,
        Some(_) => {
            return Err(GatewayError::StaleDocuments(open.job_id.clone()).into());
        }
        None => {
            // The ledger's size before anything is committed (the documents go at or after
            // it): a ledger that cannot answer fails the finish while it can be sent again.
            let ledger_size = (shared.ledger.refresh().await)
                .map_err(|e| FinishFailure::of(e.into()))?
                .size;
            sign_finish(shared, job, &open, entries, ledger_size).await?
        }
    };
    let bytes = signed.manifest.total_bytes();
    // The key set in force first, when it changed: a document signed with a new key comes
    // after the entry that published it (gateway/keyset.rs).
    shared
        .key_history
        .ensure(&shared.keys, &shared.ledger)
        .await
        .map_err(FinishFailure::of)?;
    // Record them in the ledger once (adjacent: the manifest, then the receipts in
    // destination order), each receipt with its inclusion proof, then the job's files.
    let (m, texts) = crate::record::record(&shared.ledger, &job.dir, signed, receipt_file)
        .await
        .map_err(FinishFailure::of)?;
    info!(tenant = %job.tenant, job = %open.job_id, correlation_id = %job.correlation, bytes, destinations = texts.len(), "job complete; manifest and receipts signed");
    *finished = Some((m.clone(), texts.clone()));
    Ok((m, texts))
}

/// Commits every live destination, signs the manifest and one receipt per destination, and
/// saves them with `ledger_size`, the ledger's size before they go to it (crate::record).
pub(super) async fn sign_finish(
    shared: &Arc<Shared>,
    job: &Arc<HeldJob>,
    open: &OpenJob,
    entries: Vec<trackshift_crypto::manifest::FileEntry>,
    ledger_size: u64,
) -> Result<crate::record::SignedFinish, GatewayError> {
    // Commit every live destination; a destination that fails here is dropped like one
    // that failed a write (or fails the job, in strict mode or when it is the only one).
    let mut outcomes: Vec<Result<Confirmation, String>> = Vec::with_capacity(job.dests.len());
    let started = std::time::Instant::now();
    for d in 0..job.dests.len() {
        if let Some(reason) = job.dests[d].failed.lock().expect("dest lock").clone() {
            // Dropped earlier (a failed write or sync): its receipt says failed.
            job.dests[d].metrics.receipt(false);
            outcomes.push(Err(reason));
            continue;
        }
        let at = std::time::Instant::now();
        let committed = commit_dest(shared, job, d, &entries).await;
        let m = &job.dests[d].metrics;
        m.committed(at.elapsed().as_secs_f64(), committed.is_ok());
        match committed {
            Ok(c) => outcomes.push(Ok(c)),
            Err(e) => {
                m.error("commit", super::dest_metrics::is_transient(&e));
                let reason = e.to_string();
                if let Err(e) = job.drop_dest(d, e).await {
                    job.fail(e.to_string());
                    return Err(e);
                }
                outcomes.push(Err(reason));
            }
        }
    }
    debug!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, files = entries.len(), ms = started.elapsed().as_millis() as u64, "destinations committed");
    let now = Timestamp::now();
    let mut manifest = Manifest::new(
        open.job_id.clone(),
        job.tenant.clone(),
        now,
        open.source.clone(),
        open.destinations.clone(),
        entries,
    )?;
    // The key valid now in the key store as it is now (`now` is taken first: a rotation
    // the store does not show yet happens later, inside the old key's window).
    let manifest_signer = shared.keys.signer(Purpose::Manifest, now)?;
    let receipt_signer = shared.keys.signer(Purpose::Receipt, now)?;
    manifest.sign_with(manifest_signer.as_ref(), now)?;
    let mut receipts = Vec::with_capacity(outcomes.len());
    for (uri, outcome) in open.destinations.iter().zip(outcomes) {
        let (confirmation, status, detail) = match outcome {
            Ok(mut c) => {
                c.blake3 = Some(manifest.root_hash);
                (c, DeliveryStatus::Confirmed, None)
            }
            Err(reason) => (
                Confirmation {
                    size: 0,
                    etag: None,
                    blake3: None,
                },
                DeliveryStatus::Failed,
                Some(reason),
            ),
        };
        let mut receipt = Receipt {
            format: trackshift_crypto::receipt::RECEIPT_FORMAT.to_string(),
            job_id: open.job_id.clone(),
            tenant: job.tenant.clone(),
            manifest_hash: manifest.document_hash()?,
            destination: uri.clone(),
            bytes: manifest.total_bytes(),
            confirmation,
            status,
            detail,
            correlation_id: open.correlation_id.clone(),
            completed_at: now,
            signature: None,
            ledger_proof: None,
        };
        receipt.sign_with(receipt_signer.as_ref(), now)?;
        receipts.push(receipt);
    }
    let signed = crate::record::SignedFinish {
        ledger_size,
        manifest,
        receipts,
    };
    let dir = job.dir.clone();
    // The destinations are committed: a failure to save is not retried (it would commit
    // them again).
    tokio::task::spawn_blocking(move || crate::record::save(&dir, &signed).map(|()| signed))
        .await
        .expect("saving task does not panic")
}

/// Commits every file of the job at destination `d` and checks what it confirms against
/// the manifest's entries (size, and the read-back hash when there is one).
/// Most files of a job committed at once at one destination (each also takes a place
/// among the gateway's open files): the more side by side, the fewer batches the
/// destination makes durable (512 against 128: a fifth off the commit of 20,000 small
/// files to local disk).
const COMMITS_AT_ONCE: usize = 512;

/// Commits file `i` (`entry`) at destination `d` and checks what it confirms.
async fn commit_file(
    shared: &Arc<Shared>,
    job: &Arc<HeldJob>,
    d: usize,
    i: u32,
    entry: &trackshift_crypto::manifest::FileEntry,
) -> Result<trackshift_connectors::Confirmation, GatewayError> {
    // The writer opened again holds descriptors: a place among the open files, as while
    // receiving (waiting at most as long, then going ahead).
    let _place = tokio::time::timeout(OPEN_FILE_WAIT, shared.open_files.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok);
    let w = job.writer(d, i).await?;
    let conf = w.commit().await;
    // Committed (or failed): the writer need not stay open (`w` serves a removal).
    job.close_writer(d, i, false).await;
    let conf = conf?;
    // The destination must hold what the manifest says: its size, and its hash when it
    // read the object back.
    let wrong = if conf.size != entry.size {
        Some(trackshift_connectors::ConnectorError::SizeMismatch {
            path: entry.path.clone(),
            expected: entry.size,
            actual: conf.size,
        })
    } else if conf.blake3.is_some_and(|seen| seen != entry.blake3.0) {
        Some(trackshift_connectors::ConnectorError::HashMismatch {
            path: entry.path.clone(),
            what: "the BLAKE3 of the object read back differs from the file's".into(),
        })
    } else {
        None
    };
    if let Some(e) = wrong {
        // Wrong bytes do not stay under the final name: this writer takes back what it
        // committed (never an object it did not create).
        if let Err(re) = w.remove().await {
            warn!(tenant = %job.tenant, job = %job.id, correlation_id = %job.correlation, destination = %job.dests[d].connector.uri(), path = %entry.path, error = %re, "could not remove an object that failed verification");
        }
        return Err(e.into());
    }
    Ok(conf)
}

pub(super) async fn commit_dest(
    shared: &Arc<Shared>,
    job: &Arc<HeldJob>,
    d: usize,
    entries: &[trackshift_crypto::manifest::FileEntry],
) -> Result<Confirmation, GatewayError> {
    // Side by side: a destination that syncs (local disk's directories, a remote's round
    // trips) serves many commits at once; after a failure those under way finish (each
    // removing its object if it fails verification too).
    let (mut size, mut etag) = (0u64, None);
    let commits = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| commit_file(shared, job, d, i as u32, entry));
    bounded(commits, COMMITS_AT_ONCE, |conf| {
        size += conf.size;
        if entries.len() == 1 {
            etag = conf.etag;
        }
    })
    .await?;
    // The job's root hash is set once the manifest is built.
    Ok(Confirmation {
        size,
        etag,
        blake3: None,
    })
}
