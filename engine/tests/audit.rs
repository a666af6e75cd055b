//! The offline audit as a library (`trackshift_engine::audit`): a manifest and a receipt
//! signed with a real key store, the receipt logged in a real ledger, then checked with
//! the public key file only — and every way to tamper with them refused for its reason.

use std::path::Path;

use trackshift_crypto::{
    Confirmation, DeliveryStatus, FileKeyStore, KeyBackend as _, Manifest, PublicKeyring, Purpose,
    Receipt, Signable as _, Timestamp,
};
use trackshift_engine::audit::{AuditError, audit_manifest, audit_receipt, check_ledger_proof};
use trackshift_engine::scan_path;
use trackshift_ledger::Ledger;

struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    ring: PublicKeyring,
    manifest: Manifest,
    receipt: Receipt,
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A job's documents: a manifest of three files, the receipt of one destination logged in
/// a file ledger (its proof attached), and the public key file naming that ledger.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write(&data.join("a/big.bin"), &vec![7u8; 5000]);
    write(&data.join("a/empty"), b"");
    write(&data.join("z.txt"), b"hello");
    let now = Timestamp::now();
    let store = FileKeyStore::init(dir.path().join("keys"), now).unwrap();
    let mut manifest = Manifest::new(
        "job-1",
        "acme",
        now,
        "file:///src",
        vec!["file:///dst".into()],
        scan_path(&data, 1024).unwrap(),
    )
    .unwrap();
    manifest
        .sign_with(store.signer(Purpose::Manifest, now).unwrap().as_ref(), now)
        .unwrap();
    let mut receipt = Receipt {
        format: "trackshift.receipt.v1".into(),
        job_id: manifest.job_id.clone(),
        tenant: manifest.tenant.clone(),
        manifest_hash: manifest.document_hash().unwrap(),
        destination: "file:///dst".into(),
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
    receipt
        .sign_with(store.signer(Purpose::Receipt, now).unwrap().as_ref(), now)
        .unwrap();
    let ledger = Ledger::open(dir.path().join("ledger"), "audit.test/log").unwrap();
    ledger
        .append_blocking(vec![b"an earlier entry".to_vec()])
        .unwrap();
    let appended = ledger
        .append_blocking(vec![receipt.signed_bytes().unwrap()])
        .unwrap();
    let proof = ledger
        .tlog_proof_in(appended.first_index, &appended.checkpoint)
        .unwrap();
    receipt.ledger_proof = Some(proof.to_text());
    let mut ring = store.public_keyring().unwrap();
    ring.ledger = Some(ledger.public_keys());
    Fixture {
        _dir: dir,
        data,
        ring,
        manifest,
        receipt,
    }
}

fn rejected<T: std::fmt::Debug>(r: Result<T, AuditError>, says: &str) {
    let e = r.expect_err("a tampered document passed");
    assert!(e.is_verification_failure(), "not a rejection: {e}");
    assert!(e.to_string().contains(says), "{e} (wanted {says:?})");
}

#[test]
fn a_manifest_passes_with_its_data_and_fails_for_any_change_to_it() {
    let f = fixture();
    let ok = audit_manifest(&f.manifest, &f.ring, Some(&f.data)).unwrap();
    assert_eq!(ok.key.purpose, Purpose::Manifest);
    assert!(ok.data_checked);
    assert!(
        !audit_manifest(&f.manifest, &f.ring, None)
            .unwrap()
            .data_checked
    );

    write(&f.data.join("z.txt"), b"hellO");
    rejected(
        audit_manifest(&f.manifest, &f.ring, Some(&f.data)),
        "\"z.txt\": data has 5 bytes",
    );
    write(&f.data.join("z.txt"), b"hello");
    write(&f.data.join("extra"), b"x");
    rejected(
        audit_manifest(&f.manifest, &f.ring, Some(&f.data)),
        "\"extra\" is in the data but not in the manifest",
    );
    std::fs::remove_file(f.data.join("extra")).unwrap();
    std::fs::remove_file(f.data.join("a/empty")).unwrap();
    rejected(
        audit_manifest(&f.manifest, &f.ring, Some(&f.data)),
        "\"a/empty\" is missing",
    );
    // Data that cannot be read is not a verdict on the manifest.
    let e = audit_manifest(&f.manifest, &f.ring, Some(&f.data.join("nowhere"))).unwrap_err();
    assert!(matches!(e, AuditError::Data { .. }), "{e}");
    assert!(!e.is_verification_failure());

    let mut forged = f.manifest.clone();
    forged.tenant = "other".into();
    rejected(audit_manifest(&forged, &f.ring, None), "signature");
}

#[test]
fn a_receipt_passes_bound_to_its_manifest_and_logged() {
    let f = fixture();
    let ok = audit_receipt(&f.receipt, &f.ring, Some(&f.manifest)).unwrap();
    assert_eq!(ok.key.purpose, Purpose::Receipt);
    assert!(ok.bound);
    let (proof, cp) = ok.logged.expect("the proof was checked");
    assert_eq!(proof.index, 1);
    assert_eq!(cp.size, 2);
    assert_eq!(cp.origin, "audit.test/log");
    assert!(
        !audit_receipt(&f.receipt, &f.ring, None).unwrap().bound,
        "no manifest given"
    );
}

#[test]
fn a_receipt_is_refused_for_its_manifest_its_proof_or_its_fields() {
    let f = fixture();
    // A manifest that fails its own check is named as the cause.
    let mut forged = f.manifest.clone();
    forged.job_id = "job-2".into();
    let e = audit_receipt(&f.receipt, &f.ring, Some(&forged)).unwrap_err();
    assert!(matches!(e, AuditError::Manifest(_)), "{e}");
    assert!(e.is_verification_failure());
    // A changed receipt field breaks its signature.
    let mut r = f.receipt.clone();
    r.bytes += 1;
    rejected(audit_receipt(&r, &f.ring, None), "signature");
    // Stripped of its proof, while the key file vouches for a ledger: refused.
    let mut r = f.receipt.clone();
    r.ledger_proof = None;
    let e = check_ledger_proof(&r, &f.ring).unwrap_err();
    assert!(matches!(e, AuditError::MissingProof { ref origin } if origin == "audit.test/log"));
    assert!(e.is_verification_failure());
    // ... and accepted without one where the key file names no ledger.
    let mut plain = f.ring.clone();
    plain.ledger = None;
    assert!(audit_receipt(&r, &plain, None).unwrap().logged.is_none());
    // A proof nobody can check (no ledger keys): an error, not a verdict.
    let e = audit_receipt(&f.receipt, &plain, None).unwrap_err();
    assert!(matches!(e, AuditError::NoLedgerKeys), "{e}");
    assert!(!e.is_verification_failure());
    // A proof of another entry does not prove this receipt.
    let mut r = f.receipt.clone();
    let text = r.ledger_proof.clone().unwrap();
    r.ledger_proof = Some(text.replacen("index 1", "index 0", 1));
    assert_ne!(r.ledger_proof.as_deref(), Some(text.as_str()), "{text}");
    let e = check_ledger_proof(&r, &f.ring).unwrap_err();
    assert!(matches!(e, AuditError::Ledger(_)), "{e}");
    assert!(e.is_verification_failure(), "{e}");
}
