//! The key-set ledger entry decoder and the key-history rules. Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::key_set(data));
