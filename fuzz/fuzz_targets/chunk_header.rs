//! Chunk-stream headers as the gateway decodes and checks them.
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::chunk_header(data));
