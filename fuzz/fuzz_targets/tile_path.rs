//! Ledger hash-tile paths as the HTTP tile handler parses them.
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tile_path(data));
