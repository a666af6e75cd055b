//! Fuzzes signed-checkpoint parsing and verification against fixed ledger keys.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trackshift_ledger::note::{LedgerKeys, VerifierKey};
use trackshift_ledger::{LedgerPublicKeys, verify_checkpoint};

fn keys() -> &'static LedgerPublicKeys {
    static KEYS: OnceLock<LedgerPublicKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        LedgerKeys::from_seeds("fuzz.example/log", &[1; 32], &[2; 32])
            .unwrap()
            .public_keys()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verify_checkpoint(text, keys());
        let _ = VerifierKey::parse(text);
    }
});
