//! Signing behind a trait, so a KMS or HSM backend can replace the file backend without
//! touching callers.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{KeyPair as _, ML_DSA_65_SIGNING, PqdsaKeyPair};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{CryptoError, Result};
use crate::keys::{Algorithm, KeyId, PublicKeyRecord, PublicKeyring, Purpose};
use crate::timestamp::Timestamp;

/// Something that signs with one key. Implementations must never expose secret material
/// through `Debug`, `Display` or errors.
pub trait Signer: Send + Sync {
    /// The public record of the key this signer uses.
    fn public(&self) -> &PublicKeyRecord;

    /// Signs `message` (the canonical bytes of a document) and returns the raw signature.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}

/// A source of signing keys: the file store today, a KMS or HSM tomorrow.
pub trait KeyBackend: Send + Sync {
    /// A signer for the key that is active for `purpose` at time `at`.
    fn signer(&self, purpose: Purpose, at: Timestamp) -> Result<Arc<dyn Signer>>;

    /// Public records of every key (active, retired and revoked).
    fn public_keyring(&self) -> Result<PublicKeyring>;
}

/// A 32-byte secret seed, wiped from memory on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretSeed(pub(crate) [u8; 32]);

impl SecretSeed {
    /// A fresh seed from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed)
            .map_err(|_| CryptoError::Backend("random generator failed"))?;
        Ok(Self(seed))
    }

    /// Wraps seed bytes (used when loading a key from storage).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The seed bytes; handle with care.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretSeed([redacted])")
    }
}

enum KeyMaterial {
    MlDsa(PqdsaKeyPair),
    Ed25519(ed25519_dalek::SigningKey),
}

/// An in-process signer over a secret seed: ML-DSA-65 through aws-lc-rs (FIPS 204 key
/// generation from a 32-byte seed) or Ed25519 through ed25519-dalek (RFC 8032 seed).
pub struct SoftwareSigner {
    record: PublicKeyRecord,
    key: KeyMaterial,
}

impl fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareSigner")
            .field("key_id", &self.record.id)
            .field("algorithm", &self.record.algorithm)
            .finish_non_exhaustive()
    }
}

/// Derives the raw public key of `algorithm` from a seed.
pub fn public_key_from_seed(algorithm: Algorithm, seed: &SecretSeed) -> Result<Vec<u8>> {
    Ok(match algorithm {
        Algorithm::MlDsa65 => PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed.0)
            .map_err(|_| CryptoError::Backend("ML-DSA-65 key expansion failed"))?
            .public_key()
            .as_ref()
            .to_vec(),
        Algorithm::Ed25519 => ed25519_dalek::SigningKey::from_bytes(&seed.0)
            .verifying_key()
            .to_bytes()
            .to_vec(),
    })
}

impl SoftwareSigner {
    /// Builds a signer from a seed and the public record it must match.
    ///
    /// Fails if the seed does not produce the record's public key (a swapped or corrupt
    /// key file).
    pub fn new(record: PublicKeyRecord, seed: &SecretSeed) -> Result<Self> {
        let key = match record.algorithm {
            Algorithm::MlDsa65 => KeyMaterial::MlDsa(
                PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed.0)
                    .map_err(|_| CryptoError::Backend("ML-DSA-65 key expansion failed"))?,
            ),
            Algorithm::Ed25519 => {
                KeyMaterial::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed.0))
            }
        };
        let public = match &key {
            KeyMaterial::MlDsa(kp) => kp.public_key().as_ref().to_vec(),
            KeyMaterial::Ed25519(sk) => sk.verifying_key().to_bytes().to_vec(),
        };
        if KeyId::of_public_key(&public) != record.id {
            return Err(CryptoError::malformed(
                "secret key",
                format!("does not belong to key {}", record.id),
            ));
        }
        Ok(Self { record, key })
    }

    /// Generates a fresh key for `purpose`, valid from `not_before`, and returns the signer
    /// with its seed (for the caller to store).
    pub fn generate(purpose: Purpose, not_before: Timestamp) -> Result<(Self, SecretSeed)> {
        let seed = SecretSeed::generate()?;
        let algorithm = purpose.algorithm();
        let public_key = public_key_from_seed(algorithm, &seed)?;
        let record = PublicKeyRecord {
            id: KeyId::of_public_key(&public_key),
            purpose,
            algorithm,
            public_key,
            not_before,
            not_after: None,
            status: crate::keys::KeyStatus::Active,
            revoked_at: None,
        };
        Ok((Self::new(record, &seed)?, seed))
    }
}

impl Signer for SoftwareSigner {
    fn public(&self) -> &PublicKeyRecord {
        &self.record
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        match &self.key {
            KeyMaterial::MlDsa(kp) => {
                let mut sig = vec![0u8; Algorithm::MlDsa65.signature_len()];
                let n = kp
                    .sign(message, &mut sig)
                    .map_err(|_| CryptoError::Backend("ML-DSA-65 signing failed"))?;
                sig.truncate(n);
                Ok(sig)
            }
            KeyMaterial::Ed25519(sk) => {
                use ed25519_dalek::Signer as _;
                Ok(sk.sign(message).to_bytes().to_vec())
            }
        }
    }
}
