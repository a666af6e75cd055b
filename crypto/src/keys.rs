//! Key identities, purposes, validity windows and the public key set auditors verify with.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ML_DSA_65, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CryptoError, Result};
use crate::timestamp::Timestamp;

/// What a key signs. Each purpose has exactly one algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Transfer manifests, signed with ML-DSA-65.
    Manifest,
    /// Delivery receipts, signed with Ed25519.
    Receipt,
}

impl Purpose {
    /// Every purpose, in a fixed order.
    pub const ALL: [Purpose; 2] = [Purpose::Manifest, Purpose::Receipt];

    /// The signature algorithm used for this purpose.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Purpose::Manifest => Algorithm::MlDsa65,
            Purpose::Receipt => Algorithm::Ed25519,
        }
    }

    /// Lowercase name (`manifest`, `receipt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Manifest => "manifest",
            Purpose::Receipt => "receipt",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Purpose {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "manifest" => Ok(Purpose::Manifest),
            "receipt" => Ok(Purpose::Receipt),
            other => Err(CryptoError::malformed(
                "purpose",
                format!("{other:?} (expected manifest or receipt)"),
            )),
        }
    }
}

/// A signature algorithm. The identifier strings are part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ML-DSA-65 (FIPS 204), pure mode, empty context string.
    #[serde(rename = "ML-DSA-65")]
    MlDsa65,
    /// Ed25519 (RFC 8032), strict verification.
    #[serde(rename = "Ed25519")]
    Ed25519,
}

impl Algorithm {
    /// Identifier as written in documents and signed bytes.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::MlDsa65 => "ML-DSA-65",
            Algorithm::Ed25519 => "Ed25519",
        }
    }

    /// Public key length in bytes.
    pub fn public_key_len(self) -> usize {
        match self {
            Algorithm::MlDsa65 => 1952,
            Algorithm::Ed25519 => 32,
        }
    }

    /// Signature length in bytes.
    pub fn signature_len(self) -> usize {
        match self {
            Algorithm::MlDsa65 => 3309,
            Algorithm::Ed25519 => 64,
        }
    }

    /// Verifies `signature` over `message` with a raw public key.
    pub fn verify(self, public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        if public_key.len() != self.public_key_len() || signature.len() != self.signature_len() {
            return false;
        }
        match self {
            Algorithm::MlDsa65 => UnparsedPublicKey::new(&ML_DSA_65, public_key)
                .verify(message, signature)
                .is_ok(),
            Algorithm::Ed25519 => {
                let Ok(pk) = <[u8; 32]>::try_from(public_key) else {
                    return false;
                };
                let Ok(sig) = <[u8; 64]>::try_from(signature) else {
                    return false;
                };
                let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
                    return false;
                };
                vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig))
                    .is_ok()
            }
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's identity: SHA-256 of its raw public key bytes (lowercase hex in JSON).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The id of a raw public key.
    pub fn of_public_key(public_key: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, public_key);
        let mut id = [0u8; 32];
        id.copy_from_slice(d.as_ref());
        Self(id)
    }

    /// Lowercase hex (64 digits).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lower-case hex digits (the only spelling FORMATS.md allows).
    pub fn from_hex(s: &str) -> Result<Self> {
        crate::lowhex::decode(s).map(Self).map_err(|e| match e {
            crate::lowhex::HexError::NotLowerHex { .. } => {
                CryptoError::malformed("key id", format!("{s:?}: {e}"))
            }
            crate::lowhex::HexError::Length { .. } => {
                CryptoError::malformed("key id", e.to_string())
            }
        })
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Lifecycle state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Signs new documents; at most one per purpose.
    Active,
    /// Replaced by a newer key; still verifies what it signed inside its window.
    Retired,
    /// Compromised or withdrawn; nothing it signed verifies any more.
    Revoked,
}

/// Serde helper: bytes as standard base64.
pub(crate) mod b64 {
    use super::B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// Public facts about one key: everything a verifier needs, nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyRecord {
    /// SHA-256 of `public_key`.
    pub id: KeyId,
    /// What the key signs.
    pub purpose: Purpose,
    /// Its algorithm (fixed by the purpose).
    pub algorithm: Algorithm,
    /// Raw public key, base64.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    /// Signatures made before this time are refused.
    pub not_before: Timestamp,
    /// Signatures made at or after this time are refused (set when the key is retired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    /// Lifecycle state.
    pub status: KeyStatus,
    /// When the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

impl PublicKeyRecord {
    /// Checks internal consistency: id matches the key, algorithm matches the purpose,
    /// key length matches the algorithm, window is not inverted.
    pub fn validate(&self) -> Result<()> {
        let what = "public key record";
        if self.algorithm != self.purpose.algorithm() {
            return Err(CryptoError::malformed(
                what,
                format!(
                    "key {}: {} keys must use {}, not {}",
                    self.id,
                    self.purpose,
                    self.purpose.algorithm(),
                    self.algorithm
                ),
            ));
        }
        if self.public_key.len() != self.algorithm.public_key_len() {
            return Err(CryptoError::malformed(
                what,
                format!(
                    "key {}: {} public keys are {} bytes, got {}",
                    self.id,
                    self.algorithm,
                    self.algorithm.public_key_len(),
                    self.public_key.len()
                ),
            ));
        }
        if KeyId::of_public_key(&self.public_key) != self.id {
            return Err(CryptoError::malformed(
                what,
                format!("key {}: id is not the SHA-256 of the public key", self.id),
            ));
        }
        if let Some(end) = self.not_after
            && end < self.not_before
        {
            return Err(CryptoError::malformed(
                what,
                format!("key {}: not_after is before not_before", self.id),
            ));
        }
        if (self.status == KeyStatus::Revoked) != self.revoked_at.is_some() {
            return Err(CryptoError::malformed(
                what,
                format!(
                    "key {}: revoked_at must be set exactly when status is revoked",
                    self.id
                ),
            ));
        }
        Ok(())
    }

    /// Checks that this key may vouch for a `purpose` signature made at `signed_at`.
    pub fn check_usable(&self, purpose: Purpose, signed_at: Timestamp) -> Result<()> {
        if self.purpose != purpose {
            return Err(CryptoError::WrongKeyPurpose {
                key_id: self.id,
                expected: purpose,
                actual: self.purpose,
            });
        }
        if self.status == KeyStatus::Revoked {
            return Err(CryptoError::RevokedKey {
                key_id: self.id,
                revoked_at: self.revoked_at,
            });
        }
        let too_early = signed_at < self.not_before;
        let too_late = self.not_after.is_some_and(|end| signed_at >= end);
        if too_early || too_late {
            return Err(CryptoError::KeyNotValidAt {
                key_id: self.id,
                signed_at,
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        Ok(())
    }
}

/// Format tag of the public key file.
pub const PUBLIC_KEYS_FORMAT: &str = "trackshift.public-keys.v1";

/// The public key set: what `keys export-public` writes and auditors verify with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyring {
    /// Always [`PUBLIC_KEYS_FORMAT`].
    pub format: String,
    /// Every key ever issued, including retired and revoked ones.
    pub keys: Vec<PublicKeyRecord>,
    /// The verifier keys of the gateway's ledger checkpoints, when exported with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerPublicKeys>,
}

/// What an auditor needs to check a ledger's signed checkpoints: the log's origin and its
/// two C2SP signed-note verifier keys (`docs/FORMATS.md`, ledger section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerPublicKeys {
    /// The log's origin line.
    pub origin: String,
    /// Ed25519 verifier key of the log (`vkey`, signature type 0x01).
    pub log_key: String,
    /// ML-DSA-44 verifier key of the log's cosigner (`vkey`, signature type 0x06).
    pub cosigner_key: String,
    /// Key pairs the log signed with before its last rotation (`keys rotate --purpose
    /// ledger`), oldest first: a checkpoint they signed verifies when its cosignature's
    /// timestamp is before the pair's `not_after`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredLedgerKeys>,
}

/// A retired pair of ledger verifier keys and the end of its validity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredLedgerKeys {
    /// Ed25519 verifier key of the log (`vkey`).
    pub log_key: String,
    /// ML-DSA-44 verifier key of the cosigner (`vkey`).
    pub cosigner_key: String,
    /// Checkpoints cosigned at or after this time are refused (exclusive end).
    pub not_after: Timestamp,
}

impl Default for PublicKeyring {
    fn default() -> Self {
        Self {
            format: PUBLIC_KEYS_FORMAT.to_string(),
            keys: Vec::new(),
            ledger: None,
        }
    }
}

impl PublicKeyring {
    /// Parses and validates a public key file.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let ring: Self = serde_json::from_slice(bytes)
            .map_err(|e| CryptoError::malformed("public key file", e.to_string()))?;
        ring.validate()?;
        Ok(ring)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("key records always serialise")
    }

    /// Checks every record, unique ids, and at most one active key per purpose.
    pub fn validate(&self) -> Result<()> {
        if self.format != PUBLIC_KEYS_FORMAT {
            return Err(CryptoError::malformed(
                "public key file",
                format!("format {:?}, expected {PUBLIC_KEYS_FORMAT:?}", self.format),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.keys {
            k.validate()?;
            if !seen.insert(k.id) {
                return Err(CryptoError::malformed(
                    "public key file",
                    format!("key {} listed twice", k.id),
                ));
            }
        }
        for p in Purpose::ALL {
            let active = self
                .keys
                .iter()
                .filter(|k| k.purpose == p && k.status == KeyStatus::Active)
                .count();
            if active > 1 {
                return Err(CryptoError::malformed(
                    "public key file",
                    format!("{active} active {p} keys (at most one allowed)"),
                ));
            }
        }
        Ok(())
    }

    /// The record with this id.
    pub fn get(&self, id: &KeyId) -> Option<&PublicKeyRecord> {
        self.keys.iter().find(|k| &k.id == id)
    }

    /// The active key of a purpose.
    pub fn active(&self, purpose: Purpose) -> Option<&PublicKeyRecord> {
        self.keys
            .iter()
            .find(|k| k.purpose == purpose && k.status == KeyStatus::Active)
    }

    /// Verifies a signature: the key must be known, of the right purpose, not revoked, and
    /// valid at `signed_at`; then the signature must verify over `message`.
    pub fn verify(
        &self,
        what: &'static str,
        purpose: Purpose,
        key_id: &KeyId,
        signed_at: Timestamp,
        message: &[u8],
        signature: &[u8],
    ) -> Result<&PublicKeyRecord> {
        let key = self.get(key_id).ok_or(CryptoError::UnknownKey(*key_id))?;
        key.check_usable(purpose, signed_at)?;
        if key.algorithm.verify(&key.public_key, message, signature) {
            Ok(key)
        } else {
            Err(CryptoError::BadSignature {
                what,
                key_id: *key_id,
            })
        }
    }
}

/// Base64 of `bytes` (standard alphabet, padded), as used in every JSON file.
pub fn to_base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}
