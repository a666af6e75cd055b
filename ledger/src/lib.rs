//! Trackshift ledger: the append-only, verifiable log of signed manifests and receipts.
//!
//! The log follows RFC 9162 (SHA-256 Merkle tree) with C2SP checkpoints. It is built in
//! a later issue; this crate exists now so the workspace layout is fixed from day one.
