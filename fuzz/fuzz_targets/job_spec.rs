//! The job API's request body (JobSpec) as POST /v1/jobs parses and validates it.
//! Properties: fuzz/checks.rs.
#![no_main]

use trackshift_fuzz::checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::job_spec(data));
