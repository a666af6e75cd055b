//! `job.json` as the gateway reads it on resume (OpenJob, then ReceiverJob::new).
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::job_json(data));
