//! A job's chunk log as the gateway reads it on resume.
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::chunk_log(data));
