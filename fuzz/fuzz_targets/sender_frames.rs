//! The sender's state machine driven by arbitrary gateway frames (JobReady, Acks, Reject).
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::sender_frames(data));
