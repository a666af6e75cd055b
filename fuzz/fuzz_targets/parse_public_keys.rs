//! Public key file parser on arbitrary bytes: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackshift_crypto::PublicKeyring;

fuzz_target!(|data: &[u8]| {
    if let Ok(ring) = PublicKeyring::from_json(data) {
        let _ = ring.to_json();
    }
});
