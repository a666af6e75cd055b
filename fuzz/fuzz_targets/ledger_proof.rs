//! Fuzzes the tlog-proof parser and the offline proof verifiers: any input is either
//! refused with an error or verified, never a panic or unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackshift_ledger::{TlogProof, verify_consistency, verify_inclusion};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TlogProof::parse(text);
    }
    if data.len() >= 80 {
        let (head, rest) = data.split_at(16);
        let a = u64::from_be_bytes(head[..8].try_into().unwrap());
        let b = u64::from_be_bytes(head[8..].try_into().unwrap());
        let (x, rest) = rest.split_at(32);
        let (y, rest) = rest.split_at(32);
        let x: [u8; 32] = x.try_into().unwrap();
        let y: [u8; 32] = y.try_into().unwrap();
        let proof: Vec<[u8; 32]> = rest.chunks_exact(32).map(|c| c.try_into().unwrap()).collect();
        let _ = verify_inclusion(a, b, &x, &proof, &y);
        let _ = verify_consistency(a, b, &x, &y, &proof);
        let _ = verify_inclusion(a % 4096, b % 4096, &x, &proof, &y);
        let _ = verify_consistency(a % 4096, b % 4096, &x, &y, &proof);
    }
});
