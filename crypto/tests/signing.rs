//! Signing and verification through the public API: round trips, tampering, key rotation,
//! revocation and validity windows, the file key store's secrecy rules, the canonical
//! encoding pinned byte by byte against docs/FORMATS.md, and malformed input.

use std::os::unix::fs::PermissionsExt as _;

use ml_dsa::{MlDsa65, Signature, SigningKey, VerifyingKey};
use proptest::prelude::*;
use serde_json::{Value, json};
use trackshift_crypto::{
    Algorithm, ChunkLayout, Confirmation, CryptoError, DeliveryStatus, Document, FileEntry,
    FileKeyStore, Hash32, KeyBackend as _, KeyId, KeyStatus, Manifest, PublicKeyring, Purpose,
    Receipt, Signable, Timestamp, verify_signed_bytes,
};

const T0: u64 = 1_790_000_000; // 2026-09-21

fn ts(s: u64) -> Timestamp {
    Timestamp::from_unix(s)
}

fn entry(path: &str, data: &[u8], chunk_size: u64) -> FileEntry {
    let layout = ChunkLayout::new(data.len() as u64, chunk_size).unwrap();
    let chunks = (0..layout.chunk_count())
        .map(|i| {
            let start = layout.offset(i) as usize;
            let end = start + layout.chunk_len(i) as usize;
            layout.chunk_hash(i, &data[start..end])
        })
        .collect();
    FileEntry::from_chunks(path.to_string(), layout, chunks).unwrap()
}

fn sample_manifest() -> Manifest {
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    Manifest::new(
        "job-1",
        "acme",
        ts(T0),
        "file:///srv/src",
        vec!["file:///srv/dst".into()],
        vec![
            entry("a/big.bin", &big, 1024),
            entry("a/empty", b"", 1024),
            entry("z.txt", b"hello", 4096),
        ],
    )
    .unwrap()
}

struct Keys {
    _dir: tempfile::TempDir,
    store: FileKeyStore,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let store = FileKeyStore::init(dir.path().join("keys"), ts(T0)).unwrap();
    Keys { _dir: dir, store }
}

fn signed_manifest(k: &Keys, at: u64) -> Manifest {
    let mut m = sample_manifest();
    m.sign_with(
        k.store.signer(Purpose::Manifest, ts(at)).unwrap().as_ref(),
        ts(at),
    )
    .unwrap();
    m
}

fn receipt_for(m: &Manifest) -> Receipt {
    Receipt {
        format: "trackshift.receipt.v1".into(),
        job_id: m.job_id.clone(),
        tenant: m.tenant.clone(),
        manifest_hash: m.document_hash().unwrap(),
        destination: "file:///srv/dst".into(),
        bytes: m.total_bytes(),
        confirmation: Confirmation {
            size: m.total_bytes(),
            etag: Some("\"etag-1\"".into()),
            blake3: Some(m.root_hash),
        },
        status: DeliveryStatus::Confirmed,
        detail: None,
        correlation_id: Some("corr-1".into()),
        completed_at: ts(T0 + 10),
        signature: None,
        ledger_proof: None,
    }
}

fn signed_receipt(k: &Keys, m: &Manifest, at: u64) -> Receipt {
    let mut r = receipt_for(m);
    r.sign_with(
        k.store.signer(Purpose::Receipt, ts(at)).unwrap().as_ref(),
        ts(at),
    )
    .unwrap();
    r
}

fn ring(k: &Keys) -> PublicKeyring {
    // Round-trip through JSON: the auditor only has the exported file.
    PublicKeyring::from_json(k.store.public_keyring().unwrap().to_json().as_bytes()).unwrap()
}

#[test]
fn manifest_and_receipt_round_trip_through_json() {
    let k = keys();
    let m = signed_manifest(&k, T0 + 5);
    let m2 = Manifest::from_json(m.to_json().as_bytes()).unwrap();
    assert_eq!(m, m2);
    let keyring = ring(&k);
    let key = m2.verify_signature(&keyring).unwrap();
    assert_eq!(key.purpose, Purpose::Manifest);
    assert_eq!(key.algorithm, Algorithm::MlDsa65);

    let r = signed_receipt(&k, &m2, T0 + 11);
    let r2 = Receipt::from_json(r.to_json().as_bytes()).unwrap();
    assert_eq!(r, r2);
    r2.verify(&ring(&k), Some(&m2)).unwrap();
    match Document::from_json(r.to_json().as_bytes()).unwrap() {
        Document::Receipt(_) => {}
        other => panic!("expected a receipt, got {other:?}"),
    }
}

/// A named change to a document's JSON.
type Edit = Box<dyn FnOnce(&mut Value)>;

/// Applies `edit` to the JSON of `doc` and reports whether the result is rejected
/// (unparseable, structurally invalid, or failing verification).
fn rejected_after<F>(json: &str, edit: F, verify: impl Fn(&[u8]) -> Result<(), CryptoError>) -> bool
where
    F: FnOnce(&mut Value),
{
    let mut v: Value = serde_json::from_str(json).unwrap();
    edit(&mut v);
    verify(serde_json::to_string(&v).unwrap().as_bytes()).is_err()
}

#[test]
fn every_manifest_field_is_covered_by_the_signature() {
    let k = keys();
    let keyring = ring(&k);
    let m = signed_manifest(&k, T0 + 5);
    let json = m.to_json();
    let verify =
        |b: &[u8]| Manifest::from_json(b).and_then(|m| m.verify_signature(&keyring).map(|_| ()));
    assert!(verify(json.as_bytes()).is_ok());
    let other = "0".repeat(64);
    let edits: Vec<(&str, Edit)> = vec![
        ("job_id", Box::new(|v| v["job_id"] = json!("job-2"))),
        ("tenant", Box::new(|v| v["tenant"] = json!("mallory"))),
        (
            "created_at",
            Box::new(|v| v["created_at"] = json!("2026-09-21T00:00:01Z")),
        ),
        (
            "source",
            Box::new(|v| v["source"] = json!("file:///elsewhere")),
        ),
        (
            "destinations",
            Box::new(|v| v["destinations"] = json!(["file:///x"])),
        ),
        (
            "path",
            Box::new(|v| v["files"][2]["path"] = json!("zz.txt")),
        ),
        ("size", Box::new(|v| v["files"][2]["size"] = json!(6))),
        (
            "chunk_size",
            Box::new(|v| v["files"][2]["chunk_size"] = json!(8192)),
        ),
        (
            "chunk",
            Box::new(move |v| v["files"][0]["chunks"][2] = json!(other)),
        ),
        (
            "blake3",
            Box::new(|v| v["files"][1]["blake3"] = json!("1".repeat(64))),
        ),
        (
            "root_hash",
            Box::new(|v| v["root_hash"] = json!("2".repeat(64))),
        ),
        (
            "algorithm",
            Box::new(|v| v["signature"]["algorithm"] = json!("Ed25519")),
        ),
        (
            "key_id",
            Box::new(|v| v["signature"]["key_id"] = json!("3".repeat(64))),
        ),
        (
            "signed_at",
            Box::new(|v| v["signature"]["signed_at"] = json!("2026-09-21T00:00:09Z")),
        ),
        (
            "unsigned",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("signature");
            }),
        ),
        (
            "extra field",
            Box::new(|v| v["note"] = json!("unsigned text")),
        ),
    ];
    for (name, edit) in edits {
        assert!(
            rejected_after(&json, edit, verify),
            "tampered {name} accepted"
        );
    }
}

#[test]
fn flipping_any_signature_byte_is_rejected() {
    let k = keys();
    let keyring = ring(&k);
    let m = signed_manifest(&k, T0 + 5);
    let r = signed_receipt(&k, &m, T0 + 11);
    let msig = m.signature.clone().unwrap();
    let positions: Vec<usize> = (0..msig.value.len())
        .step_by(7)
        .chain([msig.value.len() - 1])
        .collect();
    for i in positions {
        let mut t = m.clone();
        t.signature.as_mut().unwrap().value[i] ^= 0x01;
        let e = t.verify_signature(&keyring).unwrap_err();
        assert!(e.is_verification_failure(), "byte {i}: {e}");
    }
    for i in 0..64 {
        let mut t = r.clone();
        t.signature.as_mut().unwrap().value[i] ^= 0x80;
        let e = t.verify(&keyring, Some(&m)).unwrap_err();
        assert!(e.is_verification_failure(), "receipt byte {i}: {e}");
    }
    // Truncated and extended signatures.
    let mut t = m.clone();
    t.signature.as_mut().unwrap().value.pop();
    assert!(t.verify_signature(&keyring).is_err());
    let mut t = r.clone();
    t.signature.as_mut().unwrap().value.push(0);
    assert!(t.verify(&keyring, None).is_err());
}

#[test]
fn every_receipt_field_is_covered_and_bound_to_the_manifest() {
    let k = keys();
    let keyring = ring(&k);
    let m = signed_manifest(&k, T0 + 5);
    let r = signed_receipt(&k, &m, T0 + 11);
    let json = r.to_json();
    let verify =
        |b: &[u8]| Receipt::from_json(b).and_then(|r| r.verify(&keyring, Some(&m)).map(|_| ()));
    assert!(verify(json.as_bytes()).is_ok());
    let edits: Vec<(&str, Edit)> = vec![
        ("job_id", Box::new(|v| v["job_id"] = json!("job-2"))),
        ("tenant", Box::new(|v| v["tenant"] = json!("mallory"))),
        (
            "manifest_hash",
            Box::new(|v| v["manifest_hash"] = json!("4".repeat(64))),
        ),
        (
            "destination",
            Box::new(|v| v["destination"] = json!("s3://other")),
        ),
        ("bytes", Box::new(|v| v["bytes"] = json!(1))),
        (
            "confirmation.size",
            Box::new(|v| v["confirmation"]["size"] = json!(1)),
        ),
        (
            "confirmation.etag",
            Box::new(|v| v["confirmation"]["etag"] = json!("\"etag-2\"")),
        ),
        (
            "drop etag",
            Box::new(|v| {
                v["confirmation"].as_object_mut().unwrap().remove("etag");
            }),
        ),
        (
            "confirmation.blake3",
            Box::new(|v| v["confirmation"]["blake3"] = json!("5".repeat(64))),
        ),
        ("status", Box::new(|v| v["status"] = json!("unconfirmed"))),
        ("detail", Box::new(|v| v["detail"] = json!("added"))),
        (
            "correlation_id",
            Box::new(|v| v["correlation_id"] = json!("corr-2")),
        ),
        (
            "completed_at",
            Box::new(|v| v["completed_at"] = json!("2026-09-21T00:00:00Z")),
        ),
        // `ledger_proof` is not signed: it is checked against the ledger's signed checkpoint
        // (trackshift-ledger, and `trackshift verify` end to end).
    ];
    for (name, edit) in edits {
        assert!(
            rejected_after(&json, edit, verify),
            "tampered {name} accepted"
        );
    }
    // A genuine receipt does not confirm a different (also genuine) manifest.
    let mut other = sample_manifest();
    other.job_id = "job-other".into();
    other
        .sign_with(
            k.store
                .signer(Purpose::Manifest, ts(T0 + 6))
                .unwrap()
                .as_ref(),
            ts(T0 + 6),
        )
        .unwrap();
    assert!(r.verify(&keyring, Some(&other)).is_err());
}

#[test]
fn keys_of_the_wrong_purpose_or_another_ring_do_not_verify() {
    let k = keys();
    let other = keys();
    let m = signed_manifest(&k, T0 + 5);
    let e = m.verify_signature(&ring(&other)).unwrap_err();
    assert!(matches!(e, CryptoError::UnknownKey(_)), "{e}");
    // Point the manifest's signature at the receipt key: refused as the wrong purpose.
    let receipt_key = ring(&k).active(Purpose::Receipt).unwrap().id;
    let mut t = m.clone();
    t.signature.as_mut().unwrap().key_id = receipt_key;
    let e = t.verify_signature(&ring(&k)).unwrap_err();
    assert!(e.is_verification_failure(), "{e}");
}

#[test]
fn rotation_keeps_old_signatures_and_revocation_kills_them() {
    let mut k = keys();
    let old = signed_manifest(&k, T0 + 5);
    let old_id = old.signature.as_ref().unwrap().key_id;
    // Rotate in the very second the old key signed: that signature stays valid.
    let new_id = k.store.rotate(Purpose::Manifest, ts(T0 + 5)).unwrap();
    assert_ne!(old_id, new_id);
    let new = signed_manifest(&k, T0 + 6);
    assert_eq!(
        new.signature.as_ref().unwrap().key_id,
        new_id,
        "signing uses the active key"
    );
    let keyring = ring(&k);
    assert_eq!(keyring.get(&old_id).unwrap().status, KeyStatus::Retired);
    old.verify_signature(&keyring).unwrap();
    new.verify_signature(&keyring).unwrap();

    // A signature claiming a time after the old key's window is refused.
    let mut late = sample_manifest();
    let old_record = keyring.get(&old_id).unwrap().clone();
    assert!(
        old_record
            .check_usable(Purpose::Manifest, ts(T0 + 100))
            .is_err()
    );
    assert!(
        k.store.signer(Purpose::Manifest, ts(T0 - 1)).is_err(),
        "before not_before"
    );
    late.signature = old.signature.clone();
    late.signature.as_mut().unwrap().signed_at = ts(T0 + 100);
    assert!(
        late.verify_signature(&keyring)
            .unwrap_err()
            .is_verification_failure()
    );

    k.store.revoke(&old_id, ts(T0 + 50)).unwrap();
    let keyring = ring(&k);
    let e = old.verify_signature(&keyring).unwrap_err();
    assert!(matches!(e, CryptoError::RevokedKey { .. }), "{e}");
    assert!(e.to_string().contains("revoked"));
    new.verify_signature(&keyring).unwrap();
}

/// What a gateway that kept its signer across a rotation produced: genuine signatures by a
/// retired key, timestamped after its window. Verification (of the document and of its
/// ledger bytes) judges each by the key's window at its signing time.
#[test]
fn a_genuine_signature_made_after_the_key_was_retired_is_refused_and_one_made_before_is_not() {
    let mut k = keys();
    // Signers loaded at start, as a gateway held them (their records say "active, no end").
    let stale_m = k.store.signer(Purpose::Manifest, ts(T0 + 1)).unwrap();
    let stale_r = k.store.signer(Purpose::Receipt, ts(T0 + 1)).unwrap();
    let before_m = signed_manifest(&k, T0 + 20);
    let before_r = signed_receipt(&k, &before_m, T0 + 20);
    for p in Purpose::ALL {
        k.store.rotate(p, ts(T0 + 20)).unwrap();
    }
    let keyring = ring(&k);
    // Made in the second of the rotation (inside the window): valid after it.
    before_m.verify_signature(&keyring).unwrap();
    before_r.verify(&keyring, Some(&before_m)).unwrap();
    for bytes in [
        before_m.signed_bytes().unwrap(),
        before_r.signed_bytes().unwrap(),
    ] {
        verify_signed_bytes(&bytes, &keyring).unwrap();
    }
    // Made one second after the window closed, with the stale signers: the signatures are
    // mathematically valid, and still refused.
    let mut late_m = sample_manifest();
    late_m.sign_with(stale_m.as_ref(), ts(T0 + 21)).unwrap();
    let mut late_r = receipt_for(&late_m);
    late_r.sign_with(stale_r.as_ref(), ts(T0 + 21)).unwrap();
    let old_m = keyring
        .get(&late_m.signature.as_ref().unwrap().key_id)
        .unwrap();
    assert_eq!(old_m.status, KeyStatus::Retired);
    assert_eq!(old_m.not_after, Some(ts(T0 + 21)));
    let e = late_m.verify_signature(&keyring).unwrap_err();
    assert!(matches!(e, CryptoError::KeyNotValidAt { .. }), "{e}");
    let e = late_r.verify(&keyring, Some(&late_m)).unwrap_err();
    assert!(matches!(e, CryptoError::KeyNotValidAt { .. }), "{e}");
    for bytes in [
        late_m.signed_bytes().unwrap(),
        late_r.signed_bytes().unwrap(),
    ] {
        let e = verify_signed_bytes(&bytes, &keyring).unwrap_err();
        assert!(matches!(e, CryptoError::KeyNotValidAt { .. }), "{e}");
    }
    // The store itself never hands out that key for that time: it gives the new one.
    let fresh = k.store.signer(Purpose::Receipt, ts(T0 + 21)).unwrap();
    assert_ne!(fresh.public().id, stale_r.public().id);
    // ...and for a time inside the old window it gives the old key, with its window closed.
    let edge = k.store.signer(Purpose::Receipt, ts(T0 + 19)).unwrap();
    assert_eq!(edge.public().id, stale_r.public().id);
    assert_eq!(edge.public().not_after, Some(ts(T0 + 21)));
}

#[test]
fn file_store_keeps_secrets_private_and_out_of_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    let store = FileKeyStore::init(&path, ts(T0)).unwrap();
    let secret_dir = path.join("secret");
    assert_eq!(
        std::fs::metadata(&secret_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut secrets = Vec::new();
    for e in std::fs::read_dir(&secret_dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let seed_b64 = v["seed"].as_str().unwrap().to_string();
        let seed = base64_decode(&seed_b64);
        secrets.push((p, seed_b64, hex::encode(&seed), seed));
    }
    assert_eq!(secrets.len(), 2);
    let signer = store.signer(Purpose::Manifest, ts(T0 + 1)).unwrap();
    let debug = format!("{store:?} {:?}", signer.public());
    for (_, b64, hx, _) in &secrets {
        assert!(!debug.contains(b64.as_str()) && !debug.contains(hx.as_str()));
    }

    // A group/world-readable secret is refused, and the error names the file, not the secret.
    let (p, b64, hx, _) = &secrets[0];
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let reopened = FileKeyStore::open(&path).unwrap();
    let errs: Vec<String> = Purpose::ALL
        .iter()
        .filter_map(|&pu| reopened.signer(pu, ts(T0 + 1)).err())
        .map(|e| {
            assert!(matches!(e, CryptoError::InsecurePermissions { .. }), "{e}");
            e.to_string()
        })
        .collect();
    assert_eq!(errs.len(), 1, "exactly the loosened key is refused");
    assert!(!errs[0].contains(b64.as_str()) && !errs[0].contains(hx.as_str()));

    // A corrupt secret file: the error quotes neither the secret nor the file's content.
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(p).unwrap();
    std::fs::write(p, text.replace("\"seed\"", "\"seeed\"")).unwrap();
    let e = Purpose::ALL
        .iter()
        .find_map(|&pu| reopened.signer(pu, ts(T0 + 1)).err())
        .unwrap();
    assert!(!e.to_string().contains(b64.as_str()), "{e}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    // Tiny decoder so the test does not lean on the crate's own helpers.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | alphabet.iter().position(|&a| a == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[test]
fn trackshift_signatures_verify_with_rustcrypto_ml_dsa_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    let store = FileKeyStore::init(&path, ts(T0)).unwrap();
    let record = store
        .public_keyring()
        .unwrap()
        .active(Purpose::Manifest)
        .unwrap()
        .clone();
    let secret: Value = serde_json::from_slice(
        &std::fs::read(path.join("secret").join(format!("{}.json", record.id))).unwrap(),
    )
    .unwrap();
    let seed: [u8; 32] = base64_decode(secret["seed"].as_str().unwrap())
        .try_into()
        .unwrap();

    // Same seed → same public key in both implementations.
    let sk = SigningKey::<MlDsa65>::from_seed(&seed.into());
    let vk_bytes = sk.expanded_key().verifying_key().encode();
    assert_eq!(vk_bytes.as_slice(), &record.public_key[..]);

    // Trackshift (aws-lc-rs) signs a manifest → ml-dsa verifies the documented message.
    let mut m = sample_manifest();
    m.sign_with(
        store
            .signer(Purpose::Manifest, ts(T0 + 1))
            .unwrap()
            .as_ref(),
        ts(T0 + 1),
    )
    .unwrap();
    let sig = m.signature.clone().unwrap();
    let msg = m.signing_message(sig.algorithm, &sig.key_id, sig.signed_at);
    let vk = VerifyingKey::<MlDsa65>::decode(&vk_bytes);
    let parsed = Signature::<MlDsa65>::try_from(&sig.value[..]).unwrap();
    assert!(vk.verify_with_context(&msg, b"", &parsed));

    // ml-dsa signs the same message → Trackshift verifies the manifest.
    let mut m2 = m.clone();
    let sig2 = sk.expanded_key().sign_deterministic(&msg, b"").unwrap();
    m2.signature.as_mut().unwrap().value = sig2.encode().as_slice().to_vec();
    assert_ne!(m2.signature, m.signature);
    m2.verify_signature(&store.public_keyring().unwrap())
        .unwrap();
}

/// The signing message of a fixed manifest, built byte by byte from docs/FORMATS.md
/// (sections 1.1, 3, 4.2) without the crate's encoder.
#[test]
fn canonical_bytes_match_the_written_format() {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let data = b"hello";
    let file_hash = *blake3::hash(data).as_bytes();
    let m = Manifest::new(
        "j",
        "t",
        ts(1),
        "src",
        vec!["d1".into(), "d2".into()],
        vec![entry("f", data, 1024)],
    )
    .unwrap();
    let mut file = Vec::new();
    s(&mut file, "f");
    file.extend_from_slice(&5u64.to_be_bytes());
    file.extend_from_slice(&1024u64.to_be_bytes());
    file.extend_from_slice(&1u32.to_be_bytes());
    file.extend_from_slice(&file_hash); // one chunk: its hash is the file hash
    file.extend_from_slice(&file_hash);
    let mut root_input = Vec::new();
    s(&mut root_input, "trackshift.manifest.files.v1");
    root_input.extend_from_slice(&1u32.to_be_bytes());
    root_input.extend_from_slice(&file);
    let root = *blake3::hash(&root_input).as_bytes();
    assert_eq!(m.root_hash, Hash32(root));

    let key_id = KeyId([0xab; 32]);
    let mut want = Vec::new();
    s(&mut want, "trackshift.manifest.v1");
    s(&mut want, "ML-DSA-65");
    want.extend_from_slice(&[0xab; 32]);
    want.extend_from_slice(&7u64.to_be_bytes());
    s(&mut want, "j");
    s(&mut want, "t");
    want.extend_from_slice(&1u64.to_be_bytes());
    s(&mut want, "src");
    want.extend_from_slice(&2u32.to_be_bytes());
    s(&mut want, "d1");
    s(&mut want, "d2");
    want.extend_from_slice(&1u32.to_be_bytes());
    want.extend_from_slice(&file);
    want.extend_from_slice(&root);
    assert_eq!(m.signing_message(Algorithm::MlDsa65, &key_id, ts(7)), want);

    // FORMATS.md's own example: str("hé") = 00 00 00 03 68 c3 a9.
    let mut ex = Vec::new();
    s(&mut ex, "hé");
    assert_eq!(ex, [0, 0, 0, 3, 0x68, 0xc3, 0xa9]);
}

#[test]
fn oversized_and_odd_inputs_are_refused_cleanly() {
    assert!(Document::from_json(b"").is_err());
    assert!(Document::from_json(b"[]").is_err());
    assert!(Document::from_json(br#"{"format":"trackshift.unknown.v9"}"#).is_err());
    assert!(
        PublicKeyring::from_json(br#"{"format":"trackshift.public-keys.v1","keys":[{}]}"#).is_err()
    );
    let huge = vec![b' '; 257 << 20];
    assert!(Document::from_json(&huge).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Document::from_json(&bytes);
        let _ = Manifest::from_json(&bytes);
        let _ = Receipt::from_json(&bytes);
        let _ = PublicKeyring::from_json(&bytes);
    }

    #[test]
    fn mutated_documents_never_panic_and_never_verify(pos in 0usize..100_000, byte in any::<u8>()) {
        thread_local! {
            static FIXTURE: (String, PublicKeyring, Keys) = {
                let k = keys();
                let m = signed_manifest(&k, T0 + 5);
                (m.to_json(), ring(&k), k)
            };
        }
        FIXTURE.with(|(json, keyring, _)| {
            let mut bytes = json.clone().into_bytes();
            let i = pos % bytes.len();
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            if let Ok(m) = Manifest::from_json(&bytes) {
                // Whitespace or an equivalent JSON spelling may survive parsing; the
                // content must then be exactly the original.
                if m.verify_signature(keyring).is_ok() {
                    let original = Manifest::from_json(json.as_bytes()).unwrap();
                    prop_assert_eq!(m, original);
                }
            }
            Ok(())
        })?;
    }
}

#[test]
fn signed_bytes_verify_on_their_own_as_the_ledger_records_them() {
    let k = keys();
    let m = signed_manifest(&k, T0 + 5);
    let r = signed_receipt(&k, &m, T0 + 11);
    let keyring = ring(&k);
    let mb = m.signed_bytes().unwrap();
    let rb = r.signed_bytes().unwrap();
    let (f, key) = trackshift_crypto::verify_signed_bytes(&mb, &keyring).unwrap();
    assert_eq!(
        (f, key.purpose),
        ("trackshift.manifest.v1", Purpose::Manifest)
    );
    let (f, key) = trackshift_crypto::verify_signed_bytes(&rb, &keyring).unwrap();
    assert_eq!(
        (f, key.purpose),
        ("trackshift.receipt.v1", Purpose::Receipt)
    );
    // Any changed byte, any cut, and another ring are refused (and nothing panics).
    for bytes in [&mb, &rb] {
        for pos in (0..bytes.len()).step_by(97) {
            let mut b = bytes.clone();
            b[pos] ^= 0x04;
            assert!(
                trackshift_crypto::verify_signed_bytes(&b, &keyring).is_err(),
                "byte {pos}"
            );
        }
        for cut in [0, 3, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(trackshift_crypto::verify_signed_bytes(&bytes[..cut], &keyring).is_err());
        }
        assert!(trackshift_crypto::verify_signed_bytes(bytes, &ring(&keys())).is_err());
    }
}

#[test]
fn duplicate_members_and_non_canonical_base64_are_refused() {
    let k = keys();
    let m = signed_manifest(&k, T0 + 5);
    let json = signed_receipt(&k, &m, T0 + 11).to_json();
    assert!(Receipt::from_json(json.as_bytes()).is_ok());
    // A member given twice: which one counts would be up to the reader, so none may.
    let twice = json.replacen('{', "{\"tenant\": \"mallory\",", 1);
    assert!(Receipt::from_json(twice.as_bytes()).is_err());
    // The signature with a non-zero unused bit in its last base64 character: the same
    // bytes for a lenient decoder, a second spelling of them for a strict one.
    let mut v: Value = serde_json::from_str(&json).unwrap();
    let sig = v["signature"]["value"].as_str().unwrap().to_string();
    let data = sig.trim_end_matches('=');
    assert!(
        sig.len() > data.len(),
        "a 64-byte signature ends in padding"
    );
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let last = data.as_bytes()[data.len() - 1];
    let pos = ALPHABET.iter().position(|c| *c == last).unwrap();
    let flipped = ALPHABET[pos ^ 1] as char;
    let odd = format!("{}{flipped}{}", &data[..data.len() - 1], &sig[data.len()..]);
    v["signature"]["value"] = Value::String(odd);
    assert!(Receipt::from_json(v.to_string().as_bytes()).is_err());
}

/// `hex` with its first letter in upper case: one character off the only spelling.
fn one_upper(hex: &str) -> String {
    let at = hex
        .find(|c: char| c.is_ascii_lowercase())
        .expect("64 hex digits with no letter");
    format!(
        "{}{}{}",
        &hex[..at],
        hex[at..=at].to_uppercase(),
        &hex[at + 1..]
    )
}

fn assert_refused_as_malformed<T: std::fmt::Debug>(what: &str, got: Result<T, CryptoError>) {
    let err = got.expect_err(what);
    assert!(
        matches!(err, CryptoError::Malformed { .. }) && !err.is_verification_failure(),
        "{what}: {err}"
    );
    assert!(err.to_string().contains("lower-case"), "{what}: {err}");
}

#[test]
fn upper_case_hex_in_any_hash_or_key_id_is_refused_as_malformed() {
    let k = keys();
    let m = signed_manifest(&k, T0 + 5);
    let r = signed_receipt(&k, &m, T0 + 11);
    type Path = &'static [&'static str];
    let upcase = |json: &str, path: Path| -> String {
        let mut v: Value = serde_json::from_str(json).unwrap();
        let mut at = &mut v;
        for p in path {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        *at = Value::String(one_upper(at.as_str().unwrap()));
        v.to_string()
    };
    let manifest_fields: [Path; 5] = [
        &["root_hash"],
        &["files", "0", "blake3"],
        &["files", "0", "chunks", "0"],
        &["files", "0", "chunks", "4"],
        &["signature", "key_id"],
    ];
    for path in manifest_fields {
        let json = upcase(&m.to_json(), path);
        assert_refused_as_malformed(
            &format!("manifest {path:?}"),
            Manifest::from_json(json.as_bytes()),
        );
        assert_refused_as_malformed(
            &format!("document {path:?}"),
            Document::from_json(json.as_bytes()),
        );
    }
    let receipt_fields: [Path; 3] = [
        &["manifest_hash"],
        &["confirmation", "blake3"],
        &["signature", "key_id"],
    ];
    for path in receipt_fields {
        let json = upcase(&r.to_json(), path);
        assert_refused_as_malformed(
            &format!("receipt {path:?}"),
            Receipt::from_json(json.as_bytes()),
        );
    }
    // Public key file: every key's id.
    let ring_json = k.store.public_keyring().unwrap().to_json();
    for i in 0..2 {
        let json = upcase(
            &ring_json,
            match i {
                0 => &["keys", "0", "id"],
                _ => &["keys", "1", "id"],
            },
        );
        assert_refused_as_malformed(
            &format!("public key file, key {i}"),
            PublicKeyring::from_json(json.as_bytes()),
        );
    }
    // Key ids typed by an operator go through the same parser.
    let id = m.signature.as_ref().unwrap().key_id.to_hex();
    assert_refused_as_malformed("key id argument", KeyId::from_hex(&id.to_uppercase()));
    // Secret key files.
    let secret = k
        ._dir
        .path()
        .join("keys/secret")
        .join(format!("{}.json", r.signature.as_ref().unwrap().key_id));
    let text = std::fs::read_to_string(&secret).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    std::fs::write(&secret, upcase(&v.to_string(), &["key_id"])).unwrap();
    let store = FileKeyStore::open(k._dir.path().join("keys")).unwrap();
    // (Its errors name only the position: the file holds a secret.)
    let err = store
        .signer(Purpose::Receipt, ts(T0 + 20))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, CryptoError::Malformed { .. }), "{err}");
    // The lower-case originals are all fine.
    Manifest::from_json(m.to_json().as_bytes()).unwrap();
    Receipt::from_json(r.to_json().as_bytes()).unwrap();
    PublicKeyring::from_json(ring_json.as_bytes()).unwrap();
}
