//! The key bundle an auditor fetches (`trackshift keys fetch`): the gateway's latest key-set
//! entry ([`trackshift_crypto::keyset`]) with its inclusion proof in a signed checkpoint
//! and, when the auditor says which checkpoint it saw last, the consistency proof from it.
//!
//! ```json
//! {"format": "trackshift.key-bundle.v1",
//!  "entry": "<base64 of the key-set entry>",
//!  "proof": "<C2SP tlog-proof of the entry>",
//!  "consistency": {"old_size": M, "new_size": N, "proof": ["<base64>", ...]}}   // optional
//! ```
//!
//! [`verify_bundle`] checks all of it offline: the entry decodes to a valid key file that
//! names the ledger's keys; the proof puts the entry in a checkpoint signed by those keys;
//! with the auditor's previous key file and checkpoint, the new checkpoint extends the old
//! one (consistency proof) and the new key set carries on from the old one (no key
//! dropped, no status moved back, no window changed).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use trackshift_crypto::PublicKeyring;
use trackshift_crypto::keyset::{KeySetEntry, check_history, decode_key_set};
use trackshift_ledger::{TlogProof, VerifiedCheckpoint, verify_checkpoint, verify_consistency};

/// Format tag of a key bundle.
pub const KEY_BUNDLE_FORMAT: &str = "trackshift.key-bundle.v1";
/// Largest key bundle a client reads (key files of thousands of keys fit).
pub const MAX_KEY_BUNDLE: usize = 4 << 20;

/// A consistency proof between two tree sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    /// The older tree size (the auditor's last checkpoint).
    pub old_size: u64,
    /// The newer one (the bundle's checkpoint).
    pub new_size: u64,
    /// The RFC 9162 proof, each hash base64.
    pub proof: Vec<String>,
}

impl Consistency {
    /// The proof's hashes, or `None` when one is not 32 bytes of base64.
    pub fn hashes(&self) -> Option<Vec<[u8; 32]>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.proof
            .iter()
            .map(|h| {
                b64.decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
            })
            .collect()
    }
}

/// What the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBundle {
    /// Always [`KEY_BUNDLE_FORMAT`].
    pub format: String,
    /// The key-set entry, base64.
    pub entry: String,
    /// Its tlog-proof.
    pub proof: String,
    /// From the checkpoint the client named, when it named one the log has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

/// What was fetched and checked.
#[derive(Debug, Clone)]
pub struct FetchedKeys {
    /// The key set entry (its key file verbatim in `json`).
    pub entry: KeySetEntry,
    /// Its index in the ledger.
    pub index: u64,
    /// The checkpoint the proof is in, verified.
    pub checkpoint: VerifiedCheckpoint,
    /// That checkpoint's signed note, for the next fetch's consistency check.
    pub checkpoint_note: String,
    /// What changed since the previous key file, one line each (empty without one).
    pub changes: Vec<String>,
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyBundleError {
    /// Not a bundle, or its parts do not decode.
    #[error("malformed key bundle: {0}")]
    Malformed(String),
    /// A proof or signature does not hold, or the history does not carry on.
    #[error("key bundle rejected: {0}")]
    Rejected(String),
}

/// Checks `bundle`; `previous` is the auditor's last key file and the checkpoint note saved
/// with it. See the module docs.
pub fn verify_bundle(
    bundle: &KeyBundle,
    previous: Option<(&PublicKeyring, &str)>,
) -> Result<FetchedKeys, KeyBundleError> {
    use KeyBundleError::{Malformed, Rejected};
    if bundle.format != KEY_BUNDLE_FORMAT {
        return Err(Malformed(format!("format {:?}", bundle.format)));
    }
    let entry = base64::engine::general_purpose::STANDARD
        .decode(&bundle.entry)
        .map_err(|e| Malformed(format!("entry: {e}")))?;
    let set = decode_key_set(&entry)
        .map_err(|e| Malformed(e.to_string()))?
        .ok_or_else(|| Malformed("the entry is not a key set".into()))?;
    let ledger = set
        .keys
        .ledger
        .clone()
        .ok_or_else(|| Malformed("the key set names no ledger keys".into()))?;
    let proof = TlogProof::parse(&bundle.proof).map_err(|e| Malformed(e.to_string()))?;
    let checkpoint = proof
        .verify(&entry, &ledger)
        .map_err(|e| Rejected(format!("the key set is not in the signed log: {e}")))?;
    let mut changes = Vec::new();
    if let Some((old_keys, old_note)) = previous {
        changes = check_history(old_keys, &set.keys).map_err(|e| Rejected(e.to_string()))?;
        let old_ledger = old_keys
            .ledger
            .as_ref()
            .ok_or_else(|| Malformed("the previous key file names no ledger keys".into()))?;
        // The old checkpoint verifies with the keys the auditor had then.
        let old = verify_checkpoint(old_note, old_ledger)
            .map_err(|e| Rejected(format!("the previous checkpoint: {e}")))?;
        if old.origin != checkpoint.origin {
            return Err(Rejected(format!(
                "the previous checkpoint is of log {}, this one of {}",
                old.origin, checkpoint.origin
            )));
        }
        if old.size > checkpoint.size {
            return Err(Rejected(format!(
                "the log shrank from {} to {} entries",
                old.size, checkpoint.size
            )));
        }
        let c = bundle.consistency.as_ref().ok_or_else(|| {
            Rejected("the gateway sent no consistency proof from the previous checkpoint".into())
        })?;
        if c.old_size != old.size || c.new_size != checkpoint.size {
            return Err(Rejected(format!(
                "the consistency proof is from {} to {}, not from {} to {}",
                c.old_size, c.new_size, old.size, checkpoint.size
            )));
        }
        let hashes = c
            .hashes()
            .ok_or_else(|| Malformed("a consistency hash is not 32 bytes of base64".into()))?;
        verify_consistency(old.size, checkpoint.size, &old.root, &checkpoint.root, &hashes)
            .map_err(|e| {
                Rejected(format!(
                    "the log of {} entries does not extend the one of {} the previous checkpoint signed: {e}",
                    checkpoint.size, old.size
                ))
            })?;
    }
    Ok(FetchedKeys {
        entry: set,
        index: proof.index,
        checkpoint,
        checkpoint_note: proof.checkpoint.clone(),
        changes,
    })
}
