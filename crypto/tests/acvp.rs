//! NIST ACVP known-answer tests for ML-DSA-65 key generation (FIPS 204 `KeyGen_internal`),
//! run against both the production backend (aws-lc-rs) and RustCrypto `ml-dsa`.
//!
//! Trackshift stores ML-DSA keys as the 32-byte seed ξ (docs/FORMATS.md section 7), so the
//! seed → key expansion is exactly what these vectors pin down. Signatures made from those
//! keys are then checked across both implementations.

use aws_lc_rs::encoding::AsRawBytes as _;
use aws_lc_rs::signature::{KeyPair as _, UnparsedPublicKey};
use aws_lc_rs::signature::{ML_DSA_65, ML_DSA_65_SIGNING, PqdsaKeyPair};
use ml_dsa::{MlDsa65, Signature, SigningKey, VerifyingKey};
use serde::Deserialize;

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

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/acvp/ML-DSA-65-keyGen.json"
    );
    let file: KeyGenFile = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
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
        "the vector file must hold at least 10 cases"
    );
    cases
}

#[test]
fn aws_lc_rs_key_generation_matches_nist_vectors() {
    for (tc, seed, pk, sk) in cases() {
        let kp = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed).unwrap();
        assert_eq!(kp.public_key().as_ref(), &pk[..], "tcId {tc}: public key");
        let raw = kp.private_key().as_raw_bytes().unwrap();
        assert_eq!(raw.as_ref(), &sk[..], "tcId {tc}: expanded secret key");
    }
}

#[test]
#[allow(deprecated)] // `to_expanded` is the FIPS 204 skEncode the vectors use.
fn rustcrypto_ml_dsa_key_generation_matches_nist_vectors() {
    for (tc, seed, pk, sk) in cases() {
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
    }
}

#[test]
fn a_wrong_seed_does_not_match() {
    // Guards the comparison itself: one flipped seed bit gives a different key.
    let (_, mut seed, pk, _) = cases().remove(0);
    seed[0] ^= 1;
    let kp = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed).unwrap();
    assert_ne!(kp.public_key().as_ref(), &pk[..]);
}

#[test]
fn signatures_cross_verify_between_implementations_on_vector_keys() {
    for (tc, seed, pk, _) in cases().into_iter().take(4) {
        let msg = format!("trackshift cross-check, tcId {tc}").into_bytes();

        // aws-lc-rs signs (pure ML-DSA, empty context) → ml-dsa verifies.
        let kp = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed).unwrap();
        let mut sig = vec![0u8; 3309];
        let n = kp.sign(&msg, &mut sig).unwrap();
        assert_eq!(n, 3309);
        let vk = VerifyingKey::<MlDsa65>::decode(&pk[..].try_into().unwrap());
        let parsed = Signature::<MlDsa65>::try_from(&sig[..]).unwrap();
        assert!(
            vk.verify_with_context(&msg, b"", &parsed),
            "tcId {tc}: aws-lc → ml-dsa"
        );
        assert!(!vk.verify_with_context(b"other message", b"", &parsed));

        // ml-dsa signs deterministically → aws-lc-rs verifies.
        let sk = SigningKey::<MlDsa65>::from_seed(&seed.into());
        let sig2 = sk
            .expanded_key()
            .sign_deterministic(&msg, b"")
            .unwrap()
            .encode();
        UnparsedPublicKey::new(&ML_DSA_65, &pk)
            .verify(&msg, sig2.as_slice())
            .unwrap_or_else(|_| panic!("tcId {tc}: ml-dsa → aws-lc"));
        let mut bad = sig2.as_slice().to_vec();
        bad[100] ^= 1;
        assert!(
            UnparsedPublicKey::new(&ML_DSA_65, &pk)
                .verify(&msg, &bad)
                .is_err()
        );
    }
}
