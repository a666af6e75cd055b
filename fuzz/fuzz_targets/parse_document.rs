//! Manifest/receipt parser and verifier on arbitrary bytes: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackshift_crypto::{Document, PublicKeyring, Signable as _};

fuzz_target!(|data: &[u8]| {
    let ring = PublicKeyring::default();
    match Document::from_json(data) {
        Ok(Document::Manifest(m)) => {
            let _ = m.verify_signature(&ring);
            let _ = m.to_json();
        }
        Ok(Document::Receipt(r)) => {
            let _ = r.verify(&ring, None);
            let _ = r.to_json();
        }
        Err(_) => {}
    }
});
