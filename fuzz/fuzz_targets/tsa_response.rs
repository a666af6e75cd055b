//! RFC 3161 responses and tokens, verified against a fixed CA. Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tsa_response(data));
