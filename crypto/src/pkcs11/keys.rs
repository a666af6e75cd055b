//! The keys on a token: generating Ed25519 and ML-DSA-65 pairs there, finding them again by
//! key id, and signing with them (`CKM_EDDSA`, `CKM_ML_DSA`), each signature verified with
//! the public key before it is returned, so a token fault never yields a document or a
//! checkpoint that does not verify.

use std::sync::{Arc, Mutex};

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{
    Attribute, AttributeType, KeyType, MlDsaParameterSetType, ObjectClass, ObjectHandle,
};

use super::{ED25519_PARAMS, Token};
use crate::error::{CryptoError, Result};
use crate::keys::{Algorithm, KeyId, KeyStatus, PublicKeyRecord, Purpose};
use crate::signer::Signer;
use crate::timestamp::Timestamp;

impl Token {
    /// Generates an Ed25519 key pair on the token for `purpose`, valid from `not_before`:
    /// the private key non-extractable and sensitive, both objects labelled and identified
    /// by the key id. Returns the public record.
    pub fn generate_ed25519(
        self: &Arc<Self>,
        purpose: Purpose,
        not_before: Timestamp,
    ) -> Result<PublicKeyRecord> {
        if purpose.algorithm() != Algorithm::Ed25519 {
            return Err(CryptoError::malformed(
                "token key",
                format!("{purpose} keys are {}, not Ed25519", purpose.algorithm()),
            ));
        }
        let key = self.generate_ed25519_key(&format!("trackshift {purpose}"))?;
        let record = PublicKeyRecord {
            id: key.id(),
            purpose,
            algorithm: Algorithm::Ed25519,
            public_key: key.public_key().to_vec(),
            not_before,
            not_after: None,
            status: KeyStatus::Active,
            revoked_at: None,
        };
        record.validate()?;
        Ok(record)
    }

    /// Generates an Ed25519 key pair on the token labelled `label` (the private key
    /// non-extractable and sensitive; both objects identified by the key id, SHA-256 of the
    /// public key): for keys outside the key store's purposes, such as the ledger's log key.
    pub fn generate_ed25519_key(self: &Arc<Self>, label: &str) -> Result<TokenKey> {
        let (public, private) = self.generate_pair(
            "generating an Ed25519 key",
            &Mechanism::EccEdwardsKeyPairGen,
            Attribute::EcParams(ED25519_PARAMS.to_vec()),
            label,
        )?;
        let point = self.read_attribute(public, AttributeType::EcPoint)?;
        let public_key = ed25519_point(&point)?;
        let id = KeyId::of_public_key(&public_key);
        self.identify_pair(public, private, &id)?;
        self.ed25519_key(&id, &public_key)
    }

    /// The Ed25519 key `id` on this token, whose public key is `public_key`: checked with
    /// one signature now, so a key that does not match fails at load, not at its first use.
    pub fn ed25519_key(self: &Arc<Self>, id: &KeyId, public_key: &[u8]) -> Result<TokenKey> {
        if KeyId::of_public_key(public_key) != *id {
            return Err(CryptoError::malformed(
                "token key",
                format!("key id {id} is not the SHA-256 of its public key"),
            ));
        }
        let handle = self.find_private(id)?.ok_or_else(|| {
            CryptoError::malformed(
                "token key",
                format!("token {:?} holds no private key {id}", self.cfg.token),
            )
        })?;
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(
            public_key
                .try_into()
                .map_err(|_| CryptoError::malformed("token key", "public key is not 32 bytes"))?,
        )
        .map_err(|_| CryptoError::malformed("token key", "public key is not an Ed25519 point"))?;
        let key = TokenKey {
            token: self.clone(),
            id: *id,
            handle: Mutex::new(handle),
            verifying,
        };
        key.sign(b"trackshift token key check")?;
        Ok(key)
    }

    /// The Ed25519 key `id` on this token, its public key read off the token (for a key
    /// known by id alone, such as the ledger's log key).
    pub fn ed25519_key_by_id(self: &Arc<Self>, id: &KeyId) -> Result<TokenKey> {
        let template = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Id(id.0.to_vec()),
        ];
        let found = self.with_session("finding a key", |s| s.find_objects(&template))?;
        let handle = found.into_iter().next().ok_or_else(|| {
            CryptoError::malformed(
                "token key",
                format!("token {:?} holds no public key {id}", self.cfg.token),
            )
        })?;
        let point = self.read_attribute(handle, AttributeType::EcPoint)?;
        self.ed25519_key(id, &ed25519_point(&point)?)
    }

    /// Generates an ML-DSA-65 key pair (PKCS#11 3.2, `CKM_ML_DSA_KEY_PAIR_GEN`) on the token
    /// for `purpose`, valid from `not_before`, the private key non-extractable and sensitive;
    /// for a token that [offers ML-DSA](Self::offers_ml_dsa). Returns the public record.
    pub fn generate_ml_dsa_65(
        self: &Arc<Self>,
        purpose: Purpose,
        not_before: Timestamp,
    ) -> Result<PublicKeyRecord> {
        if purpose.algorithm() != Algorithm::MlDsa65 {
            return Err(CryptoError::malformed(
                "token key",
                format!("{purpose} keys are {}, not ML-DSA-65", purpose.algorithm()),
            ));
        }
        if !self.offers_ml_dsa()? {
            return Err(CryptoError::malformed(
                "token key",
                format!("token {:?} offers no ML-DSA", self.cfg.token),
            ));
        }
        let (public, private) = self.generate_pair(
            "generating an ML-DSA-65 key",
            &Mechanism::MlDsaKeyPairGen,
            Attribute::ParameterSet(MlDsaParameterSetType::ML_DSA_65.into()),
            &format!("trackshift {purpose}"),
        )?;
        let public_key = self.read_attribute(public, AttributeType::Value)?;
        let id = KeyId::of_public_key(&public_key);
        self.identify_pair(public, private, &id)?;
        let record = PublicKeyRecord {
            id,
            purpose,
            algorithm: Algorithm::MlDsa65,
            public_key,
            not_before,
            not_after: None,
            status: KeyStatus::Active,
            revoked_at: None,
        };
        record.validate()?;
        self.ml_dsa_key(&record)?;
        Ok(record)
    }

    /// The ML-DSA-65 key of `record` on this token, checked with one signature now.
    fn ml_dsa_key(self: &Arc<Self>, record: &PublicKeyRecord) -> Result<TokenMlDsaKey> {
        let handle = self
            .find_private_of(&record.id, KeyType::ML_DSA)?
            .ok_or_else(|| {
                CryptoError::malformed(
                    "token key",
                    format!(
                        "token {:?} holds no private key {}",
                        self.cfg.token, record.id
                    ),
                )
            })?;
        let key = TokenMlDsaKey {
            token: self.clone(),
            id: record.id,
            public_key: record.public_key.clone(),
            handle: Mutex::new(handle),
        };
        key.sign(b"trackshift token key check")?;
        Ok(key)
    }

    /// A signer for `record`, a key on this token: its private key found by id.
    pub fn signer(self: &Arc<Self>, record: &PublicKeyRecord) -> Result<Arc<dyn Signer>> {
        let key = match record.algorithm {
            Algorithm::Ed25519 => {
                TokenKeyKind::Ed25519(self.ed25519_key(&record.id, &record.public_key)?)
            }
            Algorithm::MlDsa65 => TokenKeyKind::MlDsa(self.ml_dsa_key(record)?),
        };
        Ok(Arc::new(TokenSigner {
            record: record.clone(),
            key,
        }))
    }
}

/// The 32-byte Ed25519 public key in a `CKA_EC_POINT`: a DER OCTET STRING around it (as
/// PKCS#11 3.0 says) or, from some tokens, the bare 32 bytes.
fn ed25519_point(v: &[u8]) -> Result<Vec<u8>> {
    match v {
        [0x04, 32, rest @ ..] if rest.len() == 32 => Ok(rest.to_vec()),
        raw if raw.len() == 32 => Ok(raw.to_vec()),
        _ => Err(CryptoError::malformed(
            "token key",
            format!("CKA_EC_POINT of {} bytes is not an Ed25519 point", v.len()),
        )),
    }
}

/// Signs `message` with the private key in `handle` (key `id`, of `key_type`). Object handles
/// may change when the token reopens (a restarted device): after a failure the key is looked
/// up again by id, once, and the signature tried again.
fn sign_on_token(
    token: &Token,
    id: &KeyId,
    key_type: KeyType,
    handle: &Mutex<ObjectHandle>,
    mechanism: &Mechanism,
    message: &[u8],
) -> Result<Vec<u8>> {
    let current = *handle.lock().expect("handle lock");
    if let Ok(sig) = token.with_session("signing", |s| s.sign(mechanism, current, message)) {
        return Ok(sig);
    }
    let fresh = token.find_private_of(id, key_type)?.ok_or_else(|| {
        CryptoError::malformed(
            "token key",
            format!(
                "token {:?} no longer holds private key {id}",
                token.cfg.token
            ),
        )
    })?;
    *handle.lock().expect("handle lock") = fresh;
    token.with_session("signing", |s| s.sign(mechanism, fresh, message))
}

/// An Ed25519 private key on a token, signing with `CKM_EDDSA`. Every signature is checked
/// with the public key before it is returned: a token fault never yields a receipt or a
/// checkpoint that does not verify.
pub struct TokenKey {
    token: Arc<Token>,
    id: KeyId,
    handle: Mutex<ObjectHandle>,
    verifying: ed25519_dalek::VerifyingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("token", &self.token.cfg.token)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// The key id (SHA-256 of the public key, also its `CKA_ID`).
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.verifying.to_bytes()
    }

    /// Signs `message` on the token (Ed25519, RFC 8032) and checks the signature.
    pub fn sign(&self, message: &[u8]) -> Result<[u8; 64]> {
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let signature = sign_on_token(
            &self.token,
            &self.id,
            KeyType::EC_EDWARDS,
            &self.handle,
            &mechanism,
            message,
        )?;
        let sig = ed25519_dalek::Signature::from_slice(&signature)
            .map_err(|_| CryptoError::Backend("the token's Ed25519 signature is not 64 bytes"))?;
        self.verifying
            .verify_strict(message, &sig)
            .map_err(|_| CryptoError::Backend("the token's signature does not verify"))?;
        Ok(sig.to_bytes())
    }
}

/// An ML-DSA-65 private key on a token, signing with `CKM_ML_DSA` (pure, empty context, as
/// Trackshift's manifests are signed); every signature checked with the public key.
struct TokenMlDsaKey {
    token: Arc<Token>,
    id: KeyId,
    public_key: Vec<u8>,
    handle: Mutex<ObjectHandle>,
}

impl TokenMlDsaKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let mechanism = Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None));
        let signature = sign_on_token(
            &self.token,
            &self.id,
            KeyType::ML_DSA,
            &self.handle,
            &mechanism,
            message,
        )?;
        if !Algorithm::MlDsa65.verify(&self.public_key, message, &signature) {
            return Err(CryptoError::Backend(
                "the token's ML-DSA-65 signature does not verify",
            ));
        }
        Ok(signature)
    }
}

enum TokenKeyKind {
    Ed25519(TokenKey),
    MlDsa(TokenMlDsaKey),
}

/// A key store's key on a token, behind the [`Signer`] seam.
struct TokenSigner {
    record: PublicKeyRecord,
    key: TokenKeyKind,
}

impl Signer for TokenSigner {
    fn public(&self) -> &PublicKeyRecord {
        &self.record
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        match &self.key {
            TokenKeyKind::Ed25519(k) => k.sign(message).map(|s| s.to_vec()),
            TokenKeyKind::MlDsa(k) => k.sign(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_forms() {
        let k = [7u8; 32];
        let mut der = vec![0x04, 32];
        der.extend_from_slice(&k);
        assert_eq!(ed25519_point(&der).unwrap(), k);
        assert_eq!(ed25519_point(&k).unwrap(), k);
        assert!(ed25519_point(&der[..33]).is_err());
        assert!(ed25519_point(&[0x04, 33, 1]).is_err());
    }
}
