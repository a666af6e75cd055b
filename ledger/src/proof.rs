//! Offline verification: RFC 9162 inclusion and consistency proofs, and the C2SP
//! `tlog-proof` text format that carries an entry's index, its inclusion proof and a signed
//! checkpoint. Nothing here needs access to the log.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tlog_tiles::Hash;

use crate::error::{LedgerError, Result};
use crate::note::{LedgerPublicKeys, VerifiedCheckpoint, verify_checkpoint};

/// First line of a C2SP tlog-proof.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";
/// Most hashes a proof may carry (a tree of 2^63 entries needs at most 2·63).
pub const MAX_PROOF_HASHES: usize = 128;

/// RFC 9162 leaf hash: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> [u8; 32] {
    tlog_tiles::record_hash(entry).0
}

/// RFC 9162 interior node hash: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    tlog_tiles::node_hash(Hash(*left), Hash(*right)).0
}

/// Checks a request for an inclusion proof of entry `index` in the tree of `size` entries
/// (the tree's size against the log is the store's to check).
pub(crate) fn inclusion_request(index: u64, size: u64) -> Result<()> {
    if index >= size {
        return Err(LedgerError::InvalidRequest(format!(
            "entry {index} is not in a tree of {size} entries"
        )));
    }
    Ok(())
}

/// Checks a request for a consistency proof from the tree of `old` entries to the tree of
/// `new`; `Ok(false)` when the proof is empty (the same tree).
pub(crate) fn consistency_request(old: u64, new: u64) -> Result<bool> {
    if old > new {
        return Err(LedgerError::InvalidRequest(format!(
            "old size {old} is larger than new size {new}"
        )));
    }
    if old == 0 {
        return Err(LedgerError::InvalidRequest(
            "no consistency proof from a tree of 0 entries (RFC 9162 defines them only \
             from a non-empty tree)"
                .into(),
        ));
    }
    Ok(old != new)
}

fn to_hashes(proof: &[[u8; 32]]) -> Result<Vec<Hash>> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(LedgerError::Malformed(format!(
            "{} hashes is more than any proof needs",
            proof.len()
        )));
    }
    Ok(proof.iter().map(|h| Hash(*h)).collect())
}

/// Checks that `leaf` (a leaf hash) is entry `index` of the tree of `size` entries with root
/// `root`, given the RFC 9162 inclusion proof (audit path, leaf sibling first).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8; 32],
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> Result<()> {
    if index >= size {
        return Err(LedgerError::Proof(format!(
            "index {index} is not inside a tree of {size} entries"
        )));
    }
    let p = to_hashes(proof)?;
    tlog_tiles::check_record(&p, size, Hash(*root), index, Hash(*leaf))
        .map_err(|e| LedgerError::Proof(format!("inclusion proof does not verify: {e}")))
}

/// Checks that the tree of `old_size` entries with root `old_root` is a prefix of the tree of
/// `new_size` entries with root `new_root`, given the RFC 9162 consistency proof.
///
/// RFC 9162 (2.1.4) defines consistency proofs for `0 < old_size < new_size`; equal sizes are
/// accepted with an empty proof and equal roots. Anything else is refused: an old size of 0
/// ([`LedgerError::Malformed`]: the empty tree is a prefix of every tree and has no proof,
/// so an empty "proof" would vouch for any pair of roots), an old size above the new one
/// and a non-empty proof between equal sizes (both [`LedgerError::Malformed`]); equal sizes
/// with different roots (a fork) and a proof that does not verify are
/// [`LedgerError::Proof`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &[u8; 32],
    new_root: &[u8; 32],
    proof: &[[u8; 32]],
) -> Result<()> {
    if old_size == 0 {
        return Err(LedgerError::Malformed(
            "consistency proof from a tree of 0 entries: RFC 9162 defines them only from a \
             non-empty tree"
                .into(),
        ));
    }
    if old_size > new_size {
        return Err(LedgerError::Malformed(format!(
            "consistency proof from {old_size} entries to fewer ({new_size})"
        )));
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(LedgerError::Proof(format!(
                "two trees of {old_size} entries with different roots (the log forked)"
            )));
        }
        if !proof.is_empty() {
            return Err(LedgerError::Malformed(format!(
                "a consistency proof between trees of equal size is empty, this one has {} hashes",
                proof.len()
            )));
        }
        return Ok(());
    }
    let p = to_hashes(proof)?;
    tlog_tiles::check_tree(&p, new_size, Hash(*new_root), old_size, Hash(*old_root))
        .map_err(|e| LedgerError::Proof(format!("consistency proof does not verify: {e}")))
}

/// A C2SP tlog-proof: an entry's index, its inclusion proof and the signed checkpoint of the
/// tree it was proved in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    /// Optional opaque extra data (not authenticated).
    pub extra: Option<Vec<u8>>,
    /// Zero-based index of the entry.
    pub index: u64,
    /// Inclusion proof, leaf sibling first.
    pub proof: Vec<[u8; 32]>,
    /// The signed checkpoint (signed note), verbatim.
    pub checkpoint: String,
}

impl TlogProof {
    /// Formats the proof as C2SP tlog-proof text.
    pub fn to_text(&self) -> String {
        let mut s = String::from(TLOG_PROOF_HEADER);
        s.push('\n');
        if let Some(extra) = &self.extra {
            s.push_str("extra ");
            s.push_str(&B64.encode(extra));
            s.push('\n');
        }
        s.push_str(&format!("index {}\n", self.index));
        for h in &self.proof {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    /// Parses C2SP tlog-proof text strictly (canonical numbers and base64, 32-byte hashes,
    /// bounded size).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: String| LedgerError::Malformed(format!("tlog-proof: {why}"));
        if text.len() > crate::note::MAX_NOTE_LEN + MAX_PROOF_HASHES * 50 + 4096 {
            return Err(bad("too long".into()));
        }
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint".into()))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(TLOG_PROOF_HEADER) {
            return Err(bad(format!("first line must be {TLOG_PROOF_HEADER}")));
        }
        let mut line = lines.next().ok_or_else(|| bad("no index line".into()))?;
        let mut extra = None;
        if let Some(e) = line.strip_prefix("extra ") {
            let bytes = B64
                .decode(e)
                .map_err(|_| bad("extra is not base64".into()))?;
            if B64.encode(&bytes) != e {
                return Err(bad("extra is not canonical base64".into()));
            }
            extra = Some(bytes);
            line = lines.next().ok_or_else(|| bad("no index line".into()))?;
        }
        let idx = line
            .strip_prefix("index ")
            .ok_or_else(|| bad("expected `index N`".into()))?;
        let canonical = !idx.is_empty()
            && idx.bytes().all(|b| b.is_ascii_digit())
            && (idx == "0" || !idx.starts_with('0'));
        let index: u64 = idx
            .parse()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| bad(format!("bad index {idx:?}")))?;
        let mut proof = Vec::new();
        for l in lines {
            if proof.len() == MAX_PROOF_HASHES {
                return Err(bad("too many proof hashes".into()));
            }
            let bytes = B64
                .decode(l)
                .map_err(|_| bad("proof line is not base64".into()))?;
            let h: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad("proof hash is not 32 bytes".into()))?;
            if B64.encode(h) != l {
                return Err(bad("proof line is not canonical base64".into()));
            }
            proof.push(h);
        }
        if checkpoint.is_empty() {
            return Err(bad("no checkpoint".into()));
        }
        Ok(Self {
            extra,
            index,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// Verifies that `entry` is in the log: the checkpoint's signatures (Ed25519 log
    /// signature and ML-DSA-44 cosignature) and the inclusion proof against its root.
    pub fn verify(&self, entry: &[u8], keys: &LedgerPublicKeys) -> Result<VerifiedCheckpoint> {
        let cp = verify_checkpoint(&self.checkpoint, keys)?;
        verify_inclusion(
            self.index,
            cp.size,
            &leaf_hash(entry),
            &self.proof,
            &cp.root,
        )?;
        Ok(cp)
    }
}
