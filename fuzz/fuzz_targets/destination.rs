//! Destination strings as a tenant gives them (`--dest`, `POST /v1/jobs`), and the tenant
//! prefix check on what parses. Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::destination(data));
