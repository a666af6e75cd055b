//! The frame decoder fed arbitrary byte splits: same frames, one frame buffered at most.
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::frame_decoder_splits(data));
