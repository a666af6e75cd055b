//! Gateway control-stream frames as the sender decodes them.
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::server_frames(data));
