//! Trackshift's signing story: keys, canonical bytes, signed manifests and receipts.
//!
//! # Algorithms, and why these implementations
//!
//! * **Manifests: ML-DSA-65** (FIPS 204, the standardised CRYSTALS-Dilithium), pure mode
//!   with an empty context string, through **aws-lc-rs** (`aws_lc_rs::signature::ML_DSA_65`,
//!   stable since 1.18). aws-lc-rs is already the one crypto backend of the tree (rustls and
//!   quinn use it for TLS 1.3 and the X25519MLKEM768 key exchange), it is maintained by AWS
//!   and FIPS-validated in its `fips` build, and it signs in about 125 µs and verifies in
//!   about 37 µs here. Not used: `pqcrypto-dilithium` implements the pre-standard round-3
//!   scheme and is retired (RUSTSEC-2024-0380); `pqcrypto-mldsa` wraps the archived PQClean
//!   and is flagged unmaintained (RUSTSEC-2026-0166). The tests cross-check aws-lc-rs
//!   against the independent pure-Rust RustCrypto `ml-dsa` crate (signatures made by each
//!   verify with the other) and against NIST ACVP known-answer vectors.
//! * **Receipts: Ed25519** (RFC 8032) through `ed25519-dalek` with strict verification
//!   (`verify_strict`: no small-order keys, canonical `S`).
//! * **Key ids** are SHA-256 of the raw public key; **data** is hashed with BLAKE3
//!   ([`hash`]).
//!
//! # Layout
//!
//! * [`keys`]: purposes, algorithms, key ids, validity windows, the public key set.
//! * [`keyset`]: the key set as the ledger records it, and the rules of a key history.
//! * [`signer`]: the [`Signer`] / [`KeyBackend`] traits (a KMS or HSM can implement them)
//!   and the in-process [`SoftwareSigner`].
//! * [`filestore`]: the on-disk key store (rotation, keys on a token or in files).
//! * [`secretfile`]: reading secret files (owner-only, checked on the descriptor) and
//!   atomic writes.
//! * [`pkcs11`]: Ed25519 keys held on a PKCS#11 token (an HSM), for a key store that
//!   names one.
//! * [`live`]: the key store a running gateway signs with, following rotations on disk.
//! * [`canonical`]: the byte encoding signatures cover (`docs/FORMATS.md`).
//! * [`manifest`], [`receipt`], [`document`]: the signed documents.
//! * [`lowhex`]: the one strict (lower-case) hex decoder for every hash and key id.

pub mod canonical;
pub mod document;
pub mod error;
pub mod filestore;
pub mod hash;
pub mod keys;
pub mod keyset;
pub mod live;
pub mod lowhex;
pub mod manifest;
pub mod pkcs11;
pub mod receipt;
pub mod reserved;
pub mod secretfile;
pub mod signer;
pub mod timestamp;

pub use document::{Document, Signable, SignatureBlock, verify_signed_bytes};
pub use error::{CryptoError, IoError, Result};
pub use filestore::FileKeyStore;
pub use hash::{ChunkHasher, ChunkLayout, Hash32};
pub use keys::{
    Algorithm, KeyId, KeyStatus, LedgerPublicKeys, PublicKeyRecord, PublicKeyring, Purpose,
    RetiredLedgerKeys,
};
pub use live::LiveKeyStore;
pub use manifest::{FileEntry, Manifest};
pub use receipt::{Confirmation, DeliveryStatus, Receipt};
pub use signer::{KeyBackend, SecretSeed, Signer, SoftwareSigner};
pub use timestamp::Timestamp;
