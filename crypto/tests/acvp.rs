//! NIST ACVP known-answer tests for ML-DSA-65 (FIPS 204), run against both the production
//! backend (aws-lc-rs) and RustCrypto `ml-dsa`.
//!
//! * keyGen (`KeyGen_internal`): Trackshift stores ML-DSA keys as the 32-byte seed ξ
//!   (docs/FORMATS.md section 7), so the seed → key expansion is exactly what these vectors
//!   pin down, for both implementations.
//! * sigVer (external interface, pure ML-DSA, with a context string): checked with `ml-dsa`.
//!   aws-lc-rs 1.19 only verifies pure ML-DSA with an *empty* context, so it is run on
//!   empty-context cases only; on the vectors' non-empty contexts it must reject.
//! * Signatures made from the vector keys are then checked across both implementations.
//!
//! The vectors live in `tests/data/acvp/` (provenance in the README there).

use aws_lc_rs::encoding::AsRawBytes as _;
use aws_lc_rs::signature::{KeyPair as _, UnparsedPublicKey};
use aws_lc_rs::signature::{ML_DSA_65, ML_DSA_65_SIGNING, PqdsaKeyPair};
use ml_dsa::{MlDsa65, Signature, SigningKey, VerifyingKey};
use serde::Deserialize;

fn read_vectors(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/acvp/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

// ---------------------------------------------------------------------------------------
// keyGen
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct KeyGenFile {
    #[serde(rename = "parameterSet")]
    parameter_set: String,
    tests: Vec<KeyGenCase>,
}

#[derive(Deserialize)]
struct KeyGenCase {
    #[serde(rename = "tcId")]
    tc_id: u32,
    seed: String,
    pk: String,
    sk: String,
}

/// One keyGen case: (tcId, seed ξ, expected pk, expected sk).
type Case = (u32, [u8; 32], Vec<u8>, Vec<u8>);

fn key_gen_cases() -> Vec<Case> {
    let file: KeyGenFile = serde_json::from_slice(&read_vectors("ML-DSA-65-keyGen.json")).unwrap();
    assert_eq!(file.parameter_set, "ML-DSA-65");
    let cases: Vec<_> = file
        .tests
        .into_iter()
        .map(|t| {
            let seed: [u8; 32] = hex::decode(&t.seed).unwrap().try_into().unwrap();
            (
                t.tc_id,
                seed,
                hex::decode(&t.pk).unwrap(),
                hex::decode(&t.sk).unwrap(),
            )
        })
        .collect();
    assert!(
        cases.len() >= 10,
        "the keyGen vector file must hold at least 10 cases, found {}",
        cases.len()
    );
    cases
}

#[test]
fn aws_lc_rs_key_generation_matches_nist_vectors() {
    let mut ran = 0;
    for (tc, seed, pk, sk) in key_gen_cases() {
        let kp = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed).unwrap();
        assert_eq!(kp.public_key().as_ref(), &pk[..], "tcId {tc}: public key");
        let raw = kp.private_key().as_raw_bytes().unwrap();
        assert_eq!(raw.as_ref(), &sk[..], "tcId {tc}: expanded secret key");
        ran += 1;
    }
    assert!(ran >= 10);
}

#[test]
#[allow(deprecated)] // `to_expanded` is the FIPS 204 skEncode the vectors use.
fn rustcrypto_ml_dsa_key_generation_matches_nist_vectors() {
    let mut ran = 0;
    for (tc, seed, pk, sk) in key_gen_cases() {
        let key = SigningKey::<MlDsa65>::from_seed(&seed.into());
        assert_eq!(
            key.expanded_key().verifying_key().encode().as_slice(),
            &pk[..],
            "tcId {tc}: public key"
        );
        assert_eq!(
            key.expanded_key().to_expanded().as_slice(),
            &sk[..],
            "tcId {tc}: secret key"
        );
        ran += 1;
    }
    assert!(ran >= 10);
}

#[test]
fn key_generation_comparison_detects_a_wrong_key() {
    // Guards the comparisons themselves.
    let (_, seed, pk, _) = key_gen_cases().remove(0);
    let kp = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed).unwrap();

    // One flipped byte of the expected public key no longer matches.
    let mut flipped = pk.clone();
    flipped[1000] ^= 0x01;
    assert_ne!(kp.public_key().as_ref(), &flipped[..]);

    // One flipped seed bit gives a different key.
    let mut other_seed = seed;
    other_seed[0] ^= 1;
    let other = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &other_seed).unwrap();
    assert_ne!(other.public_key().as_ref(), &pk[..]);
}

// ---------------------------------------------------------------------------------------
// sigVer
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct SigVerFile {
    #[serde(rename = "testGroups")]
    test_groups: Vec<SigVerGroup>,
}

#[derive(Deserialize)]
struct SigVerGroup {
    #[serde(rename = "tgId")]
    tg_id: u32,
    #[serde(rename = "parameterSet")]
    parameter_set: String,
    /// "external" (ML-DSA.Verify with a context) or "internal" (Verify_internal over M').
    #[serde(rename = "signatureInterface")]
    signature_interface: String,
    /// "pure" or "preHash" (external interface only).
    #[serde(rename = "preHash", default)]
    pre_hash: Option<String>,
    tests: Vec<SigVerCase>,
}

#[derive(Deserialize)]
struct SigVerCase {
    #[serde(rename = "tcId")]
    tc_id: u32,
    #[serde(rename = "testPassed")]
    test_passed: bool,
    pk: String,
    message: String,
    #[serde(default)]
    context: String,
    signature: String,
    #[serde(default)]
    reason: String,
}

/// `ml-dsa`'s verdict on one case. A signature that does not even decode (wrong length,
/// malformed hint) is a rejection, not a test error.
fn ml_dsa_verifies(interface: &str, pk: &[u8], msg: &[u8], ctx: &[u8], sig: &[u8]) -> bool {
    let vk = VerifyingKey::<MlDsa65>::decode(&pk.try_into().expect("ML-DSA-65 pk length"));
    let Ok(sig) = Signature::<MlDsa65>::try_from(sig) else {
        return false;
    };
    match interface {
        "external" => vk.verify_with_context(msg, ctx, &sig),
        "internal" => {
            assert!(ctx.is_empty(), "internal interface takes no context");
            vk.verify_internal(msg, &sig)
        }
        other => panic!("unknown signatureInterface {other:?}"),
    }
}

/// aws-lc-rs's verdict: pure ML-DSA.Verify with an empty context (its only mode).
fn aws_lc_rs_verifies(pk: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ML_DSA_65, pk)
        .verify(msg, sig)
        .is_ok()
}

#[test]
fn sig_ver_matches_nist_vectors() {
    let file: SigVerFile = serde_json::from_slice(&read_vectors("ML-DSA-65-sigVer.json")).unwrap();
    let (mut ran, mut valid, mut invalid) = (0, 0, 0);
    for group in &file.test_groups {
        let tg = group.tg_id;
        assert_eq!(group.parameter_set, "ML-DSA-65", "tgId {tg}");
        let interface = group.signature_interface.as_str();
        match (interface, group.pre_hash.as_deref()) {
            ("external", Some("pure")) | ("internal", None) => {}
            other => panic!("tgId {tg}: unsupported {other:?} (Trackshift uses pure ML-DSA)"),
        }

        for t in &group.tests {
            let tc = t.tc_id;
            let pk = hex::decode(&t.pk).unwrap();
            let msg = hex::decode(&t.message).unwrap();
            let ctx = hex::decode(&t.context).unwrap();
            let sig = hex::decode(&t.signature).unwrap();
            let what = format!("tgId {tg} tcId {tc} ({})", t.reason);

            assert_eq!(
                ml_dsa_verifies(interface, &pk, &msg, &ctx, &sig),
                t.test_passed,
                "{what}: ml-dsa {interface} verify"
            );

            if interface == "external" {
                if ctx.is_empty() {
                    assert_eq!(
                        aws_lc_rs_verifies(&pk, &msg, &sig),
                        t.test_passed,
                        "{what}: aws-lc-rs verify"
                    );
                } else if t.test_passed {
                    // The context is bound into the signature: verifying the same bytes
                    // with an empty context (aws-lc-rs's only mode) must fail.
                    assert!(
                        !aws_lc_rs_verifies(&pk, &msg, &sig),
                        "{what}: aws-lc-rs accepted a signature made with a context"
                    );
                    assert!(
                        !ml_dsa_verifies(interface, &pk, &msg, b"", &sig),
                        "{what}: ml-dsa accepted a signature without its context"
                    );
                }
            }

            if t.test_passed {
                // The verdict must depend on every input: flip one bit of the signature
                // (in z), of the message and of the key.
                let mut bad_sig = sig.clone();
                bad_sig[1000] ^= 0x01;
                assert!(
                    !ml_dsa_verifies(interface, &pk, &msg, &ctx, &bad_sig),
                    "{what}: sig"
                );
                let mut bad_msg = msg.clone();
                bad_msg[0] ^= 0x01;
                assert!(
                    !ml_dsa_verifies(interface, &pk, &bad_msg, &ctx, &sig),
                    "{what}: msg"
                );
                let mut bad_pk = pk.clone();
                bad_pk[40] ^= 0x01;
                assert!(
                    !ml_dsa_verifies(interface, &bad_pk, &msg, &ctx, &sig),
                    "{what}: pk"
                );
                valid += 1;
            } else {
                invalid += 1;
            }
            ran += 1;
        }
    }
    assert!(ran >= 5, "only {ran} sigVer cases ran");
    assert!(
        valid >= 2 && invalid >= 2,
        "need valid ({valid}) and invalid ({invalid}) sigVer cases"
    );
    // No committed vector has an empty context (ACVP draws contexts at random), so here
    // aws-lc-rs only gets the context-binding check above; its verifier is exercised
    // against ml-dsa signatures in the cross-implementation test below.
}

// ---------------------------------------------------------------------------------------
// Cross-implementation signatures on the vector keys
// ---------------------------------------------------------------------------------------

#[test]
fn signatures_cross_verify_between_implementations_on_vector_keys() {
    for (tc, seed, pk, _) in key_gen_cases().into_iter().take(4) {
        let msg = format!("trackshift cross-check, tcId {tc}").into_bytes();

        // aws-lc-rs signs (pure ML-DSA, empty context) → ml-dsa verifies.
        let kp = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed).unwrap();
        let mut sig = vec![0u8; 3309];
        let n = kp.sign(&msg, &mut sig).unwrap();
        assert_eq!(n, 3309);
        assert!(
            ml_dsa_verifies("external", &pk, &msg, b"", &sig),
            "tcId {tc}: aws-lc → ml-dsa"
        );
        assert!(!ml_dsa_verifies(
            "external",
            &pk,
            b"other message",
            b"",
            &sig
        ));
        assert!(!ml_dsa_verifies("external", &pk, &msg, b"ctx", &sig));

        // ml-dsa signs deterministically → aws-lc-rs verifies.
        let sk = SigningKey::<MlDsa65>::from_seed(&seed.into());
        let sig2 = sk
            .expanded_key()
            .sign_deterministic(&msg, b"")
            .unwrap()
            .encode();
        assert!(
            aws_lc_rs_verifies(&pk, &msg, sig2.as_slice()),
            "tcId {tc}: ml-dsa → aws-lc"
        );
        let mut bad = sig2.as_slice().to_vec();
        bad[100] ^= 1;
        assert!(!aws_lc_rs_verifies(&pk, &msg, &bad));

        // A context-bound ml-dsa signature is not accepted by aws-lc-rs (empty context).
        let sig3 = sk
            .expanded_key()
            .sign_deterministic(&msg, b"trackshift")
            .unwrap()
            .encode();
        assert!(!aws_lc_rs_verifies(&pk, &msg, sig3.as_slice()));
    }
}
