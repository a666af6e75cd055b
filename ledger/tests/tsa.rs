//! The time-stamp verifier on a real token: `data/tsa/` holds a response OpenSSL's `ts
//! -reply` made for a checkpoint (`checkpoint`, the exact note text) and the CA of the
//! authority (`openssl ts -verify -data checkpoint -in response.tsr -CAfile ca.pem` accepts
//! it). Each check of `trackshift_ledger::tsa::verify_token` is tried by breaking one thing.

use trackshift_ledger::tsa::{TsaTrust, checkpoint_digest, token_of_response, verify_token};

const CA: &[u8] = include_bytes!("data/tsa/ca.pem");
const RESPONSE: &[u8] = include_bytes!("data/tsa/response.tsr");
const CHECKPOINT: &str = include_str!("data/tsa/checkpoint");

fn trust() -> TsaTrust {
    TsaTrust::from_pem(CA).unwrap()
}

#[test]
fn an_openssl_token_verifies_with_its_ca() {
    let token = token_of_response(RESPONSE).unwrap();
    let ts = verify_token(&token, &checkpoint_digest(CHECKPOINT), &trust()).unwrap();
    assert!(ts.signer.contains("trackshift-test-tsa"), "{ts:?}");
    assert!(ts.time > 1_700_000_000);
}

#[test]
fn another_message_a_changed_byte_or_another_ca_is_refused() {
    let token = token_of_response(RESPONSE).unwrap();
    // Another checkpoint.
    let other = CHECKPOINT.replacen('\n', "\n\n", 1);
    let e = verify_token(&token, &checkpoint_digest(&other), &trust()).unwrap_err();
    assert!(e.to_string().contains("another message"), "{e}");
    // A change anywhere in what is signed or vouched for is refused: the TSTInfo (around
    // the message imprint), the signer's certificate (its subject) and the signature (the
    // token's last 256 bytes, RSA-2048). (Bytes outside them, such as the copy of the CA
    // certificate the authority adds, are not signed and need not be.)
    let digest = checkpoint_digest(CHECKPOINT);
    let find = |needle: &[u8]| {
        token
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("in the token")
    };
    let imprint = find(&digest);
    let subject = find(b"trackshift-test-tsa");
    let ranges = [
        imprint.saturating_sub(40)..imprint + 32 + 40,
        subject..subject + 19,
        token.len() - 256..token.len(),
    ];
    for i in ranges.into_iter().flatten() {
        let mut t = token.clone();
        t[i] ^= 0x01;
        assert!(
            verify_token(&t, &digest, &trust()).is_err(),
            "byte {i} of {} changed and the token still verifies",
            token.len()
        );
    }
    // A CA that did not issue the authority's certificate.
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger".into()]).unwrap();
    let e = verify_token(
        &token,
        &digest,
        &TsaTrust::from_pem(stranger.cert.pem().as_bytes()).unwrap(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("does not chain to the trusted CA"),
        "{e}"
    );
}
