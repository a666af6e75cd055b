//! A gateway's public key set as its own ledger records it: every change (a key made,
//! rotated or revoked, a checkpoint key pair rotated) is appended as an entry, before any
//! document signed with a key it introduces. An auditor holding a checkpoint can then tell
//! which keys the gateway had published by then, and a gateway cannot show one auditor a
//! key set another never sees without the consistency proofs between their checkpoints
//! failing.
//!
//! ```text
//! entry = str("trackshift.key-set.v1") ‖ timestamp(recorded_at) ‖ bytes(key file)
//! ```
//!
//! `key file` is the public key file (`docs/FORMATS.md` 2.3, with its `ledger` member)
//! byte for byte as served; an entry is told from a document by its first string.

use crate::canonical::Encoder;
use crate::error::{CryptoError, Result};
use crate::keys::PublicKeyring;
use crate::timestamp::Timestamp;

/// The first string of a key-set entry.
pub const KEY_SET_FORMAT: &str = "trackshift.key-set.v1";

/// A decoded key-set entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetEntry {
    /// When the gateway recorded it.
    pub recorded_at: Timestamp,
    /// The key set, validated.
    pub keys: PublicKeyring,
    /// The key file's bytes, as recorded.
    pub json: Vec<u8>,
}

/// The ledger entry recording `json` (a public key file's text) at `recorded_at`.
pub fn encode_key_set(json: &[u8], recorded_at: Timestamp) -> Vec<u8> {
    let mut e = Encoder::new();
    e.str(KEY_SET_FORMAT).u64(recorded_at.unix()).bytes(json);
    e.into_bytes()
}

fn prefix() -> Vec<u8> {
    let mut e = Encoder::new();
    e.str(KEY_SET_FORMAT);
    e.into_bytes()
}

/// Whether `entry` is a key-set entry (by its first string alone).
pub fn is_key_set(entry: &[u8]) -> bool {
    entry.starts_with(&prefix())
}

/// Decodes a key-set entry; `Ok(None)` for any other entry (a document). A key-set entry
/// that does not decode exactly, or whose key file is not valid, is an error.
pub fn decode_key_set(entry: &[u8]) -> Result<Option<KeySetEntry>> {
    let Some(rest) = entry.strip_prefix(prefix().as_slice()) else {
        return Ok(None);
    };
    let bad = |why: &str| CryptoError::malformed("key-set entry", why.to_string());
    if rest.len() < 12 {
        return Err(bad("truncated"));
    }
    let recorded_at = Timestamp::from_unix(u64::from_be_bytes(rest[..8].try_into().expect("8")));
    let len = u32::from_be_bytes(rest[8..12].try_into().expect("4")) as usize;
    let json = &rest[12..];
    if json.len() != len {
        return Err(bad("the key file's length does not match the entry"));
    }
    let keys = PublicKeyring::from_json(json)?;
    Ok(Some(KeySetEntry {
        recorded_at,
        keys,
        json: json.to_vec(),
    }))
}

/// Checks that `new` carries on from `old` as a key history must: every key of `old` is in
/// `new` with the same public key, purpose and start; statuses only move forward (active,
/// then retired, then revoked; never back); a window's end and a revocation time, once
/// set, never change; the ledger's origin stays and every retired checkpoint key pair of
/// `old` is still listed. Returns what changed, one line per change.
pub fn check_history(old: &PublicKeyring, new: &PublicKeyring) -> Result<Vec<String>> {
    use crate::keys::KeyStatus::{Active, Retired, Revoked};
    let fail = |why: String| CryptoError::malformed("key history", why);
    let mut changes = Vec::new();
    for o in &old.keys {
        let n = new
            .get(&o.id)
            .ok_or_else(|| fail(format!("key {} is no longer listed", o.id)))?;
        if n.public_key != o.public_key || n.purpose != o.purpose || n.not_before != o.not_before {
            return Err(fail(format!(
                "key {} changed its public key, purpose or start",
                o.id
            )));
        }
        match (o.status, n.status) {
            (a, b) if a == b => {
                if o.not_after != n.not_after || o.revoked_at != n.revoked_at {
                    return Err(fail(format!("key {}'s window or revocation changed", o.id)));
                }
            }
            (Active, Retired) => changes.push(format!("{} key {} retired", o.purpose, o.id)),
            (Active | Retired, Revoked) => {
                changes.push(format!("{} key {} revoked", o.purpose, o.id))
            }
            (from, to) => {
                return Err(fail(format!("key {} went from {from:?} to {to:?}", o.id)));
            }
        }
    }
    for n in &new.keys {
        if old.get(&n.id).is_none() {
            changes.push(format!("new {} key {} ({:?})", n.purpose, n.id, n.status));
        }
    }
    match (&old.ledger, &new.ledger) {
        (Some(o), Some(n)) => {
            if o.origin != n.origin {
                return Err(fail(format!(
                    "the ledger's origin changed from {} to {}",
                    o.origin, n.origin
                )));
            }
            if !n.retired.starts_with(&o.retired) {
                return Err(fail(
                    "a retired checkpoint key pair is no longer listed".into(),
                ));
            }
            if o.log_key != n.log_key {
                changes.push(format!("checkpoint keys rotated: log key {}", n.log_key));
            }
        }
        (Some(_), None) => return Err(fail("the ledger's keys are no longer listed".into())),
        _ => {}
    }
    Ok(changes)
}
