//! Trackshift ledger: the append-only, verifiable log of signed manifests and receipts.
//!
//! - A Merkle-tree log in the RFC 9162 construction (SHA-256, leaf = H(0x00 ‖ entry), node =
//!   H(0x01 ‖ left ‖ right)); tree arithmetic and proofs come from `tlog_tiles`, a port of
//!   Go's `golang.org/x/mod/sumdb/tlog`.
//! - Checkpoints in the C2SP `tlog-checkpoint` format, signed as C2SP `signed-note` with
//!   Ed25519 and co-signed with ML-DSA-44 (C2SP `tlog-cosignature`), see [`note`].
//! - Durable, group-committed storage with crash recovery, see [`store`].
//! - Offline verification of inclusion and consistency proofs and C2SP `tlog-proof` files,
//!   see [`proof`].

pub mod error;
pub mod fault;
pub mod log;
pub mod note;
pub mod pg;
pub mod proof;
pub mod rotation;
pub mod store;
pub mod tsa;

pub use error::{LedgerError, Result};
pub use log::Log;
pub use note::{
    ED25519_TOKEN_FILE, LedgerKeys, LedgerPublicKeys, VerifiedCheckpoint, verify_checkpoint,
};
pub use pg::PgLedger;
pub use proof::{TlogProof, leaf_hash, verify_consistency, verify_inclusion};
pub use rotation::{LiveLedgerKeys, promote_staged, rotate_ledger_keys, stage_ledger_keys};
pub use store::{Appended, Ledger, SignedCheckpoint};
