//! The offline audit: what an auditor checks with public keys only (`trackshift verify`).
//!
//! A manifest passes when its ML-DSA-65 signature verifies with a manifest key of the
//! public key file that was valid when it signed, and (if asked) when the data re-hashes to
//! it file by file. A receipt passes when its Ed25519 signature verifies likewise, when it
//! is bound to the given manifest (which must pass too), and when its ledger proof holds:
//! the checkpoint's signatures verify with the ledger keys of the key file and the receipt's
//! signed bytes are included. Nothing here touches the network or a private key.

use std::path::Path;

use trackshift_crypto::{
    CryptoError, Manifest, PublicKeyRecord, PublicKeyring, Receipt, Signable as _,
};
use trackshift_ledger::{LedgerError, TlogProof, VerifiedCheckpoint};

use crate::ScanError;

/// Why a document did not pass, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A signature, key or hash check failed, or a document is malformed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The manifest a receipt was checked against failed its own check.
    #[error("the manifest: {0}")]
    Manifest(#[source] CryptoError),
    /// The ledger proof failed (checkpoint signature, inclusion) or does not parse.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The receipt carries no ledger proof, though the key file vouches for a ledger.
    #[error(
        "the receipt lacks its ledger proof, but the public key file names ledger {origin:?}: \
         receipts signed with these keys must carry their inclusion proof (FORMATS.md 5.3)"
    )]
    MissingProof {
        /// The ledger the key file names.
        origin: String,
    },
    /// The receipt carries a ledger proof, but the key file has no ledger keys to check it.
    #[error("the receipt carries a ledger proof but the public key file has no ledger keys")]
    NoLedgerKeys,
    /// The data to re-hash could not be read.
    #[error("re-hashing {path}: {source}")]
    Data {
        /// The data's path.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: ScanError,
    },
}

impl AuditError {
    /// True when the document was checked and rejected (as opposed to input that could not
    /// be read or checked): the CLI's exit code 1.
    pub fn is_verification_failure(&self) -> bool {
        match self {
            Self::Crypto(e) | Self::Manifest(e) => e.is_verification_failure(),
            Self::Ledger(e) => e.is_verification_failure(),
            Self::MissingProof { .. } => true,
            Self::NoLedgerKeys | Self::Data { .. } => false,
        }
    }
}

/// What a manifest that passed was signed with.
#[derive(Debug, Clone)]
pub struct ManifestAudit<'k> {
    /// The key whose signature verified.
    pub key: &'k PublicKeyRecord,
    /// Whether the data was re-hashed (and matched).
    pub data_checked: bool,
}

/// What a receipt that passed proved.
#[derive(Debug, Clone)]
pub struct ReceiptAudit<'k> {
    /// The key whose signature verified.
    pub key: &'k PublicKeyRecord,
    /// Whether it was checked against its manifest.
    pub bound: bool,
    /// Its ledger proof and the checkpoint it verified against, when it carries one.
    pub logged: Option<(TlogProof, VerifiedCheckpoint)>,
}

/// Checks a manifest's signature with `ring` and, given `data`, re-hashes the data
/// against it.
pub fn audit_manifest<'k>(
    m: &Manifest,
    ring: &'k PublicKeyring,
    data: Option<&Path>,
) -> Result<ManifestAudit<'k>, AuditError> {
    let key = m.verify_signature(ring)?;
    if let Some(data) = data {
        check_data(m, data)?;
    }
    Ok(ManifestAudit {
        key,
        data_checked: data.is_some(),
    })
}

/// Checks a receipt's signature with `ring`, its binding to `manifest` (whose own
/// signature is checked first) and its ledger proof ([`check_ledger_proof`]).
pub fn audit_receipt<'k>(
    r: &Receipt,
    ring: &'k PublicKeyring,
    manifest: Option<&Manifest>,
) -> Result<ReceiptAudit<'k>, AuditError> {
    if let Some(m) = manifest {
        m.verify_signature(ring).map_err(AuditError::Manifest)?;
    }
    let key = r.verify(ring, manifest)?;
    let logged = check_ledger_proof(r, ring)?;
    Ok(ReceiptAudit {
        key,
        bound: manifest.is_some(),
        logged,
    })
}

/// Checks a receipt's ledger proof (the checkpoint's signatures and the inclusion of the
/// receipt's signed bytes) with the ledger keys of `ring`.
///
/// `None` only when the key file names no ledger and the receipt carries no proof. A key
/// file that names a ledger vouches for receipt keys whose every receipt is logged: a
/// receipt without its proof there is rejected (the proof is not signed, so stripping it
/// must not turn a logged receipt into one nobody can check against the log).
pub fn check_ledger_proof(
    r: &Receipt,
    ring: &PublicKeyring,
) -> Result<Option<(TlogProof, VerifiedCheckpoint)>, AuditError> {
    let Some(text) = &r.ledger_proof else {
        if let Some(ledger) = &ring.ledger {
            return Err(AuditError::MissingProof {
                origin: ledger.origin.clone(),
            });
        }
        return Ok(None);
    };
    let keys = ring.ledger.as_ref().ok_or(AuditError::NoLedgerKeys)?;
    let proof = TlogProof::parse(text)?;
    let cp = proof.verify(&r.signed_bytes()?, keys)?;
    Ok(Some((proof, cp)))
}

/// Re-hashes `data` (a file or a directory) and compares it file by file with the
/// manifest: every file present with its size and BLAKE3 hash, and no other file.
pub fn check_data(m: &Manifest, data: &Path) -> Result<(), AuditError> {
    let chunk_size = m
        .files
        .first()
        .map_or(trackshift_crypto::hash::DEFAULT_CHUNK_SIZE, |f| {
            f.chunk_size
        });
    let found = crate::scan_path(data, chunk_size).map_err(|source| AuditError::Data {
        path: data.to_path_buf(),
        source,
    })?;
    let mismatch = |s: String| AuditError::Crypto(CryptoError::HashMismatch(s));
    for want in &m.files {
        let Some(got) = found.iter().find(|f| f.path == want.path) else {
            return Err(mismatch(format!(
                "file {:?} is missing from {}",
                want.path,
                data.display()
            )));
        };
        if got.size != want.size || got.blake3 != want.blake3 {
            return Err(mismatch(format!(
                "file {:?}: data has {} bytes, BLAKE3 {}; manifest says {} bytes, BLAKE3 {}",
                want.path, got.size, got.blake3, want.size, want.blake3
            )));
        }
    }
    if let Some(extra) = found
        .iter()
        .find(|f| !m.files.iter().any(|w| w.path == f.path))
    {
        return Err(mismatch(format!(
            "file {:?} is in the data but not in the manifest",
            extra.path
        )));
    }
    Ok(())
}
