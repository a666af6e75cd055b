//! Client control-stream frames as the gateway decodes them, before and after authentication.
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::client_frames(data));
