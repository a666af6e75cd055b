//! What signed documents share: the signature block, the signed-message layout and the
//! canonical bytes that identify a signed document.

use serde::{Deserialize, Serialize};

use crate::canonical::Encoder;
use crate::error::{CryptoError, Result};
use crate::hash::Hash32;
use crate::keys::{Algorithm, KeyId, PublicKeyRecord, PublicKeyring, Purpose, b64};
use crate::signer::Signer;
use crate::timestamp::Timestamp;

/// A signature over a document, as stored in its JSON file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    /// Algorithm identifier (`ML-DSA-65` or `Ed25519`); covered by the signature.
    pub algorithm: Algorithm,
    /// The signing key's id; covered by the signature.
    pub key_id: KeyId,
    /// When the signature was made; covered by the signature and checked against the
    /// key's validity window.
    pub signed_at: Timestamp,
    /// The raw signature, base64.
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

/// The message a signature covers:
/// `str(format) || str(algorithm) || key_id (32 bytes) || u64(signed_at) || body`.
pub(crate) fn signing_message(
    format: &str,
    algorithm: Algorithm,
    key_id: &KeyId,
    signed_at: Timestamp,
    body: impl FnOnce(&mut Encoder),
) -> Vec<u8> {
    let mut e = Encoder::new();
    e.str(format)
        .str(algorithm.as_str())
        .hash(&Hash32(key_id.0))
        .u64(signed_at.unix());
    body(&mut e);
    e.into_bytes()
}

/// A document type that can be signed: knows its purpose, format tag and canonical body.
pub trait Signable {
    /// Human name for messages (`manifest`, `receipt`).
    const WHAT: &'static str;
    /// Which key purpose signs it.
    const PURPOSE: Purpose;
    /// The format tag this version writes and accepts.
    const FORMAT: &'static str;

    /// The format tag (`trackshift.manifest.v1`, ...).
    fn format(&self) -> &str;
    /// Appends the canonical body (every signed field except the signature block).
    fn encode_body(&self, e: &mut Encoder);
    /// The signature block, if signed.
    fn signature(&self) -> Option<&SignatureBlock>;
    /// Replaces the signature block.
    fn set_signature(&mut self, sig: SignatureBlock);
    /// Structural and hash checks that need no key.
    fn validate(&self) -> Result<()>;

    /// The exact bytes a signature by `key_id` made at `signed_at` covers.
    fn signing_message(
        &self,
        algorithm: Algorithm,
        key_id: &KeyId,
        signed_at: Timestamp,
    ) -> Vec<u8> {
        signing_message(self.format(), algorithm, key_id, signed_at, |e| {
            self.encode_body(e)
        })
    }

    /// Canonical bytes of the signed document: the signing message followed by the
    /// signature as a byte string. This is what the ledger records and what
    /// [`Self::document_hash`] hashes.
    fn signed_bytes(&self) -> Result<Vec<u8>> {
        let sig = self.signature().ok_or(CryptoError::Unsigned(Self::WHAT))?;
        let mut bytes = self.signing_message(sig.algorithm, &sig.key_id, sig.signed_at);
        let mut e = Encoder::new();
        e.bytes(&sig.value);
        bytes.extend_from_slice(&e.into_bytes());
        Ok(bytes)
    }

    /// BLAKE3 of [`Self::signed_bytes`]: how receipts name the manifest they confirm.
    fn document_hash(&self) -> Result<Hash32> {
        Ok(Hash32::blake3(&self.signed_bytes()?))
    }

    /// Validates, signs with `signer` at time `at`, checks the new signature, and stores it.
    fn sign_with(&mut self, signer: &dyn Signer, at: Timestamp) -> Result<()> {
        self.validate()?;
        let key = signer.public();
        key.check_usable(Self::PURPOSE, at)?;
        let message = self.signing_message(key.algorithm, &key.id, at);
        let value = signer.sign(&message)?;
        // Verify before release: a faulty signer (bit flip, broken HSM) must not emit a
        // signature that auditors will later reject.
        if !key.algorithm.verify(&key.public_key, &message, &value) {
            return Err(CryptoError::Backend(
                "fresh signature failed self-verification",
            ));
        }
        self.set_signature(SignatureBlock {
            algorithm: key.algorithm,
            key_id: key.id,
            signed_at: at,
            value,
        });
        Ok(())
    }

    /// Checks the signature against `keys`, then every hash the document carries.
    /// Returns the key that signed it.
    fn verify_signature<'k>(&self, keys: &'k PublicKeyring) -> Result<&'k PublicKeyRecord> {
        if self.format() != Self::FORMAT {
            return Err(CryptoError::malformed(
                Self::WHAT,
                format!("format {:?}, expected {:?}", self.format(), Self::FORMAT),
            ));
        }
        let sig = self.signature().ok_or(CryptoError::Unsigned(Self::WHAT))?;
        let message = self.signing_message(sig.algorithm, &sig.key_id, sig.signed_at);
        let key = keys.verify(
            Self::WHAT,
            Self::PURPOSE,
            &sig.key_id,
            sig.signed_at,
            &message,
            &sig.value,
        )?;
        if key.algorithm != sig.algorithm {
            return Err(CryptoError::BadSignature {
                what: Self::WHAT,
                key_id: key.id,
            });
        }
        self.validate()?;
        Ok(key)
    }
}

/// Either kind of signed document, told apart by its `format` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// A transfer manifest.
    Manifest(crate::manifest::Manifest),
    /// A delivery receipt.
    Receipt(crate::receipt::Receipt),
}

/// Largest document file accepted (256 MiB: a manifest of a 64 TiB transfer in 4 MiB chunks).
pub const MAX_DOCUMENT_BYTES: usize = 256 << 20;

impl Document {
    /// Parses a manifest or receipt JSON file.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(CryptoError::malformed(
                "document",
                format!(
                    "{} bytes is over the {MAX_DOCUMENT_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        #[derive(Deserialize)]
        struct Probe {
            format: Option<String>,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| CryptoError::malformed("document", e.to_string()))?;
        match probe.format.as_deref() {
            Some(crate::manifest::MANIFEST_FORMAT) => {
                crate::manifest::Manifest::from_json(bytes).map(Document::Manifest)
            }
            Some(crate::receipt::RECEIPT_FORMAT) => {
                crate::receipt::Receipt::from_json(bytes).map(Document::Receipt)
            }
            Some(other) => Err(CryptoError::malformed(
                "document",
                format!("unknown format {other:?}"),
            )),
            None => Err(CryptoError::malformed("document", "no \"format\" field")),
        }
    }
}

/// Verifies a signed document given as its canonical signed bytes ([`Signable::signed_bytes`],
/// what the ledger records) without its JSON form: reads the format, algorithm, key id and
/// signing time from the signed-message header, splits off the signature, and checks it
/// against `keys` (purpose, validity window, revocation). Returns the format and the key.
pub fn verify_signed_bytes<'k>(
    bytes: &[u8],
    keys: &'k PublicKeyring,
) -> Result<(&'static str, &'k PublicKeyRecord)> {
    let bad = |why: &str| CryptoError::malformed("signed document bytes", why);
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let end = pos.checked_add(n).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| bad("cut short"))?;
        let s = &bytes[pos..end];
        pos = end;
        Ok(s)
    };
    let len = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
    let n = len(take(4)?);
    let format = take(n)?;
    let (what, purpose, format) = match format {
        f if f == crate::manifest::MANIFEST_FORMAT.as_bytes() => (
            "manifest",
            Purpose::Manifest,
            crate::manifest::MANIFEST_FORMAT,
        ),
        f if f == crate::receipt::RECEIPT_FORMAT.as_bytes() => {
            ("receipt", Purpose::Receipt, crate::receipt::RECEIPT_FORMAT)
        }
        _ => return Err(bad("unknown document format")),
    };
    let n = len(take(4)?);
    let algorithm = match take(n)? {
        a if a == Algorithm::MlDsa65.as_str().as_bytes() => Algorithm::MlDsa65,
        a if a == Algorithm::Ed25519.as_str().as_bytes() => Algorithm::Ed25519,
        _ => return Err(bad("unknown algorithm")),
    };
    let key_id = KeyId(take(32)?.try_into().expect("32 bytes"));
    let signed_at = Timestamp::from_unix(u64::from_be_bytes(take(8)?.try_into().expect("8 bytes")));
    let sig_len = match algorithm {
        Algorithm::MlDsa65 => 3309,
        Algorithm::Ed25519 => 64,
    };
    let split = bytes
        .len()
        .checked_sub(4 + sig_len)
        .filter(|&s| s >= pos)
        .ok_or_else(|| bad("no room for the signature"))?;
    if len(&bytes[split..split + 4]) != sig_len {
        return Err(bad("signature length does not match the algorithm"));
    }
    let key = keys.verify(
        what,
        purpose,
        &key_id,
        signed_at,
        &bytes[..split],
        &bytes[split + 4..],
    )?;
    if key.algorithm != algorithm {
        return Err(CryptoError::BadSignature { what, key_id });
    }
    Ok((format, key))
}
