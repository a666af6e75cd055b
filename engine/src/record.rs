//! Recording a finished job in the ledger exactly once, whenever the gateway stops.
//!
//! A job's finish signs its manifest and receipts, appends them to the ledger and writes
//! `manifest.json` and the receipt files. A gateway killed after the append but before the
//! files are written used to sign and append a second manifest and receipt set when the
//! sender retried: two ledger records of one job. Now the finish goes:
//!
//! 1. sign the documents and save them with the ledger's size, read before the append, in
//!    `signed.json` (written atomically and fsynced: [`save`]);
//! 2. look for them in the ledger from that size on, and append them only when they are not
//!    there ([`record`]); the ledger's append is atomic, so they are there in full or not
//!    at all;
//! 3. give every receipt its inclusion proof and write the job's files.
//!
//! A retried finish that finds `signed.json` skips signing (and committing the
//! destinations, which happened before step 1) and resumes at step 2 with the same
//! documents, so a crash at any point leaves one manifest and one receipt per destination
//! in the ledger, and the job's files are those entries.

use std::path::Path;
use trackshift_crypto::IoError;

use serde::{Deserialize, Serialize};
use trackshift_crypto::{Manifest, Receipt, Signable as _};

use crate::gateway::GatewayError;

/// File in a job directory holding the signed documents until the job's files are written.
pub const SIGNED_FILE: &str = "signed.json";

/// The signed documents of a finishing job, saved before they go to the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedFinish {
    /// Size of the ledger read before the append: the documents, once appended, are at or
    /// after this index.
    pub ledger_size: u64,
    /// The signed manifest.
    pub manifest: Manifest,
    /// The signed receipts in destination order, without ledger proofs.
    pub receipts: Vec<Receipt>,
}

impl SignedFinish {
    /// The ledger entries of the job: the manifest's signed bytes, then each receipt's.
    fn entries(&self) -> Result<Vec<Vec<u8>>, GatewayError> {
        let mut entries = vec![self.manifest.signed_bytes()?];
        for r in &self.receipts {
            entries.push(r.signed_bytes()?);
        }
        Ok(entries)
    }
}

/// Saves `signed` in `dir` durably (atomic write, file and directory fsynced).
pub fn save(dir: &Path, signed: &SignedFinish) -> Result<(), GatewayError> {
    let json = serde_json::to_vec_pretty(signed).expect("documents serialise");
    trackshift_crypto::filestore::write_atomic(&dir.join(SIGNED_FILE), &json, 0o644)?;
    Ok(())
}

/// The signed documents a previous finish of the job in `dir` saved, if any.
pub fn load(dir: &Path) -> Result<Option<SignedFinish>, GatewayError> {
    let path = dir.join(SIGNED_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(GatewayError::Io(IoError {
                action: "reading",
                path,
                source,
            }));
        }
    };
    let signed: SignedFinish =
        serde_json::from_slice(&bytes).map_err(|e| GatewayError::Stored {
            what: "stored documents",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    Ok(Some(signed))
}

/// Points of a finish where a test can make the gateway "crash" (stop before the next step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// After the documents were saved, before the ledger append.
    BeforeAppend,
    /// After the append, before any job file is written.
    AfterAppend,
    /// After `manifest.json`, before the receipt files.
    AfterManifestFile,
}

/// The crash point a unit test armed (fires once).
#[cfg(test)]
pub(crate) static CRASH_AT: std::sync::Mutex<Option<CrashPoint>> = std::sync::Mutex::new(None);

/// Fails with an "injected crash" when a unit test armed `at`; does nothing otherwise.
fn crash_point(at: CrashPoint) -> Result<(), GatewayError> {
    #[cfg(test)]
    {
        let mut armed = CRASH_AT.lock().expect("crash point lock");
        if *armed == Some(at) {
            *armed = None;
            return Err(GatewayError::InjectedCrash(format!("{at:?}")));
        }
    }
    let _ = at;
    Ok(())
}

/// Records `signed` (saved in `dir` with [`save`]) in `ledger` unless a previous attempt
/// did, gives each receipt its inclusion proof, writes `manifest.json` and the receipt
/// files (`receipt_file(d)` for destination `d`) and removes the saved documents. Returns
/// the manifest's and the receipts' JSON as written.
pub async fn record(
    ledger: &trackshift_ledger::Log,
    dir: &Path,
    signed: SignedFinish,
    receipt_file: impl Fn(usize) -> String,
) -> Result<(String, Vec<String>), GatewayError> {
    crash_point(CrashPoint::BeforeAppend)?;
    let entries = signed.entries()?;
    let first = match ledger.find_appended(signed.ledger_size, &entries).await? {
        Some(first) => {
            tracing::info!(
                job = %signed.manifest.job_id,
                first,
                "documents were already in the ledger (finish retried); not appending again"
            );
            first
        }
        None => ledger.append(entries).await?.first_index,
    };
    crash_point(CrashPoint::AfterAppend)?;
    // The latest checkpoint covers the entries (found in it, or appended under it).
    let checkpoint = ledger.checkpoint();
    let SignedFinish {
        manifest,
        mut receipts,
        ..
    } = signed;
    let m = manifest.to_json();
    let mut texts = Vec::with_capacity(receipts.len());
    for (i, r) in receipts.iter_mut().enumerate() {
        let proof = ledger
            .tlog_proof_in(first + 1 + i as u64, &checkpoint)
            .await?;
        r.ledger_proof = Some(proof.to_text());
        texts.push(r.to_json());
    }
    // Written (and fsynced) off the runtime's threads.
    let files: Vec<(String, String)> = std::iter::once(("manifest.json".to_string(), m.clone()))
        .chain(
            texts
                .iter()
                .enumerate()
                .map(|(d, r)| (receipt_file(d), r.clone())),
        )
        .collect();
    let (dir, job_id) = (dir.to_path_buf(), manifest.job_id.clone());
    tokio::task::spawn_blocking(move || write_job_files(&dir, &job_id, &files))
        .await
        .expect("job file task does not panic")?;
    Ok((m, texts))
}

/// Writes the finished job's files (`manifest.json` first) and removes the saved
/// documents; blocking.
fn write_job_files(
    dir: &Path,
    job_id: &str,
    files: &[(String, String)],
) -> Result<(), GatewayError> {
    for (i, (name, text)) in files.iter().enumerate() {
        trackshift_crypto::filestore::write_atomic(&dir.join(name), text.as_bytes(), 0o644)?;
        if i == 0 {
            crash_point(CrashPoint::AfterManifestFile)?;
        }
    }
    // The job's files now say what the saved documents said; a failure to remove them only
    // leaves a file that a later finish (which finds the job complete) never reads.
    if let Err(e) = std::fs::remove_file(dir.join(SIGNED_FILE)) {
        tracing::warn!(job = %job_id, error = %e, "could not remove {SIGNED_FILE}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use trackshift_crypto::hash::ChunkLayout;
    use trackshift_crypto::manifest::FileEntry;
    use trackshift_crypto::{
        Confirmation, DeliveryStatus, FileKeyStore, Hash32, KeyBackend as _, Purpose,
        Signable as _, Timestamp,
    };
    use trackshift_ledger::{Ledger, Log, TlogProof};

    use super::*;

    const ORIGIN: &str = "test.example/ledger";

    fn open_log(dir: &Path) -> Log {
        Log::File(Arc::new(Ledger::open(dir, ORIGIN).unwrap()))
    }

    fn receipt_name(d: usize) -> String {
        format!("receipt-{d}.json")
    }

    /// A signed manifest and one receipt per destination, as a finish signs them.
    fn signed_docs(keys: &FileKeyStore, job: &str, ledger_size: u64) -> SignedFinish {
        let now = Timestamp::now();
        let data = format!("contents of {job}");
        let layout = ChunkLayout::new(data.len() as u64, 1024).unwrap();
        let file = FileEntry::from_chunks(
            "a.txt".into(),
            layout,
            vec![Hash32::blake3(data.as_bytes())],
        )
        .unwrap();
        let dests = vec!["file:///one".to_string(), "file:///two".to_string()];
        let mut manifest =
            Manifest::new(job, "acme", now, "file:///src", dests.clone(), vec![file]).unwrap();
        let signer = keys.signer(Purpose::Manifest, now).unwrap();
        manifest.sign_with(signer.as_ref(), now).unwrap();
        let receipts = dests
            .iter()
            .map(|uri| {
                let mut r = Receipt {
                    format: trackshift_crypto::receipt::RECEIPT_FORMAT.to_string(),
                    job_id: job.into(),
                    tenant: "acme".into(),
                    manifest_hash: manifest.document_hash().unwrap(),
                    destination: uri.clone(),
                    bytes: manifest.total_bytes(),
                    confirmation: Confirmation {
                        size: manifest.total_bytes(),
                        etag: None,
                        blake3: Some(manifest.root_hash),
                    },
                    status: DeliveryStatus::Confirmed,
                    detail: None,
                    correlation_id: None,
                    completed_at: now,
                    signature: None,
                    ledger_proof: None,
                };
                let signer = keys.signer(Purpose::Receipt, now).unwrap();
                r.sign_with(signer.as_ref(), now).unwrap();
                r
            })
            .collect();
        SignedFinish {
            ledger_size,
            manifest,
            receipts,
        }
    }

    fn entries_of(log: &Log) -> Vec<Vec<u8>> {
        let Log::File(l) = log else { unreachable!() };
        (0..l.size()).map(|i| l.entry(i).unwrap()).collect()
    }

    /// The tests that arm [`CRASH_AT`] (one process-wide crash point) run one at a time:
    /// in parallel, one test's crash point fired in the other's finish.
    static CRASH_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn a_finish_retried_after_a_crash_at_any_point_records_the_job_once() {
        let _serial = CRASH_TESTS.lock().await;
        for crash in [
            None,
            Some(CrashPoint::BeforeAppend),
            Some(CrashPoint::AfterAppend),
            Some(CrashPoint::AfterManifestFile),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let (ledger_dir, job_dir) = (tmp.path().join("ledger"), tmp.path().join("job"));
            std::fs::create_dir_all(&job_dir).unwrap();
            let keys = FileKeyStore::init(tmp.path().join("keys"), Timestamp::now()).unwrap();
            let ring = keys.public_keyring().unwrap();
            let mut log = open_log(&ledger_dir);
            // Another job recorded before this one.
            log.append(signed_docs(&keys, "earlier", 0).entries().unwrap())
                .await
                .unwrap();
            let signed = signed_docs(&keys, "job-1", log.size());
            save(&job_dir, &signed).unwrap();

            *CRASH_AT.lock().unwrap() = crash;
            let outcome = record(&log, &job_dir, signed.clone(), receipt_name).await;
            let (m, receipts) = match crash {
                None => outcome.unwrap(),
                Some(at) => {
                    let err = outcome.unwrap_err();
                    assert!(err.to_string().contains("injected crash"), "{at:?}: {err}");
                    // The gateway restarts: the ledger is reopened from disk, and another
                    // job gets recorded before the sender retries this one.
                    log.close();
                    drop(log);
                    log = open_log(&ledger_dir);
                    log.append(
                        signed_docs(&keys, "meanwhile", log.size())
                            .entries()
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                    let saved = load(&job_dir)
                        .unwrap()
                        .expect("the signed documents survive");
                    assert_eq!(saved, signed, "{at:?}");
                    record(&log, &job_dir, saved, receipt_name).await.unwrap()
                }
            };

            // One manifest and one receipt per destination in the ledger, adjacent.
            let all = entries_of(&log);
            let ours = signed.entries().unwrap();
            for e in &ours {
                assert_eq!(all.iter().filter(|x| *x == e).count(), 1, "{crash:?}");
            }
            let first = all.iter().position(|x| *x == ours[0]).unwrap();
            assert_eq!(all[first..first + ours.len()], ours[..], "{crash:?}");
            // The job's files are those entries, and each receipt proves its own.
            assert_eq!(m, signed.manifest.to_json());
            assert_eq!(
                std::fs::read_to_string(job_dir.join("manifest.json")).unwrap(),
                m
            );
            assert_eq!(receipts.len(), 2);
            for (d, text) in receipts.iter().enumerate() {
                assert_eq!(
                    &std::fs::read_to_string(job_dir.join(receipt_name(d))).unwrap(),
                    text
                );
                let r = Receipt::from_json(text.as_bytes()).unwrap();
                let proof = TlogProof::parse(r.ledger_proof.as_deref().unwrap()).unwrap();
                assert_eq!(proof.index, (first + 1 + d) as u64, "{crash:?}");
                assert_eq!(all[first + 1 + d], r.signed_bytes().unwrap());
                proof
                    .verify(&r.signed_bytes().unwrap(), &log.public_keys())
                    .unwrap();
            }
            assert!(!job_dir.join(SIGNED_FILE).exists());
            // What `trackshift ledger verify` checks: every hash, the checkpoint, every
            // document's signature.
            let Log::File(l) = &log else { unreachable!() };
            l.verify_all(|_, e| {
                trackshift_crypto::verify_signed_bytes(e, &ring)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap();
            log.close();
        }
    }

    #[tokio::test]
    async fn a_ledger_write_failure_fails_the_finish_with_no_receipt_and_the_retry_records_it_once()
    {
        let _serial = CRASH_TESTS.lock().await;
        use trackshift_ledger::fault::FaultPlan;
        let tmp = tempfile::tempdir().unwrap();
        let keys = FileKeyStore::init(tmp.path().join("keys"), Timestamp::now()).unwrap();
        let ring = keys.public_keyring().unwrap();
        for (errno, persistent) in [
            (libc::EMFILE, false),
            (libc::ENOSPC, true),
            (libc::EIO, false),
        ] {
            let mut fired_any = true;
            let mut at = 0;
            while fired_any {
                let ctx = format!("errno {errno} at operation {at}, persistent {persistent}");
                let case = tempfile::tempdir().unwrap();
                let (ledger_dir, job_dir) = (case.path().join("ledger"), case.path().join("job"));
                std::fs::create_dir_all(&job_dir).unwrap();
                let log = open_log(&ledger_dir);
                let Log::File(l) = &log else { unreachable!() };
                log.append(signed_docs(&keys, "earlier", 0).entries().unwrap())
                    .await
                    .unwrap();
                let signed = signed_docs(&keys, "job-1", log.size());
                save(&job_dir, &signed).unwrap();
                l.inject_faults(Some(FaultPlan {
                    at,
                    times: if persistent { u64::MAX } else { 1 },
                    errno,
                    takes_effect: at % 2 == 1,
                }));
                let first = record(&log, &job_dir, signed.clone(), receipt_name).await;
                fired_any = !l.fault_counts().1.is_empty();
                l.inject_faults(None);
                if let Err(e) = first {
                    assert!(
                        matches!(&e, GatewayError::Ledger(trackshift_ledger::LedgerError::Io(IoError { source, .. }))
                            if source.raw_os_error() == Some(errno)),
                        "{ctx}: {e}"
                    );
                    // No job file claims a ledger index; the documents wait for the retry.
                    assert!(!job_dir.join("manifest.json").exists(), "{ctx}");
                    assert!(!job_dir.join(receipt_name(0)).exists(), "{ctx}");
                    assert_eq!(load(&job_dir).unwrap().as_ref(), Some(&signed), "{ctx}");
                    // The sender retries the finish (the gateway keeps serving).
                    record(
                        &log,
                        &job_dir,
                        load(&job_dir).unwrap().unwrap(),
                        receipt_name,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: the retry fails: {e}"));
                }
                // One record of the job; every receipt proves its entry; the log verifies.
                let all = entries_of(&log);
                let ours = signed.entries().unwrap();
                for e in &ours {
                    assert_eq!(all.iter().filter(|x| *x == e).count(), 1, "{ctx}");
                }
                for d in 0..2 {
                    let text = std::fs::read_to_string(job_dir.join(receipt_name(d))).unwrap();
                    let r = Receipt::from_json(text.as_bytes()).unwrap();
                    let proof = TlogProof::parse(r.ledger_proof.as_deref().unwrap()).unwrap();
                    assert_eq!(
                        all[proof.index as usize],
                        r.signed_bytes().unwrap(),
                        "{ctx}"
                    );
                    proof
                        .verify(&r.signed_bytes().unwrap(), &log.public_keys())
                        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                }
                log.close();
                drop(log);
                let ro = Ledger::open_read_only(&ledger_dir, None).unwrap();
                ro.verify_all(|_, e| {
                    trackshift_crypto::verify_signed_bytes(e, &ring)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .unwrap_or_else(|e| panic!("{ctx}: ledger verify: {e}"));
                at += 1;
            }
            assert!(at > 5, "the loop reached every operation of an append");
        }
    }

    #[tokio::test]
    async fn documents_appended_before_the_saved_size_are_not_taken_for_this_finish() {
        // find_appended looks only from the saved size on: a stale size can only make it
        // miss (and append), never match entries of the log's past.
        let tmp = tempfile::tempdir().unwrap();
        let keys = FileKeyStore::init(tmp.path().join("keys"), Timestamp::now()).unwrap();
        let log = open_log(&tmp.path().join("ledger"));
        let signed = signed_docs(&keys, "job-1", 0);
        log.append(signed.entries().unwrap()).await.unwrap();
        let size = log.size();
        let entries = signed.entries().unwrap();
        assert_eq!(log.find_appended(0, &entries).await.unwrap(), Some(0));
        assert_eq!(log.find_appended(1, &entries).await.unwrap(), None);
        assert_eq!(log.find_appended(size, &entries).await.unwrap(), None);
        assert_eq!(log.find_appended(u64::MAX, &entries).await.unwrap(), None);
        // The receipts alone, or out of order, are not the job's record.
        assert_eq!(log.find_appended(0, &entries[1..]).await.unwrap(), Some(1));
        let swapped = vec![entries[2].clone(), entries[1].clone()];
        assert_eq!(log.find_appended(0, &swapped).await.unwrap(), None);
        log.close();
    }
}
