//! Signed checkpoints: C2SP `tlog-checkpoint` bodies in C2SP `signed-note` envelopes, signed by
//! the log with Ed25519 (signature type 0x01) and co-signed with ML-DSA-44 as a C2SP
//! `tlog-cosignature` (type 0x06, timestamped, `subtree/v1` message). Keys, verifier keys
//! (`vkey` strings) and the exact signed bytes are documented in `docs/FORMATS.md`.

use std::path::Path;

use aws_lc_rs::signature::{
    KeyPair as _, ML_DSA_44, ML_DSA_44_SIGNING, PqdsaKeyPair, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use signed_note::{Note, Verifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};
use zeroize::Zeroizing;

use crate::error::{LedgerError, Result};

/// Signature type byte of Ed25519 note signatures (C2SP signed-note).
pub const ALG_ED25519: u8 = 0x01;
/// Signature type byte of ML-DSA-44 timestamped cosignatures (C2SP tlog-cosignature).
pub const ALG_MLDSA44_COSIGNATURE: u8 = 0x06;
/// Length of an ML-DSA-44 public key.
pub const MLDSA44_PUBLIC_KEY_LEN: usize = 1312;
/// Length of an ML-DSA-44 signature.
pub const MLDSA44_SIGNATURE_LEN: usize = 2420;
/// Label that opens the ML-DSA-44 cosigned message.
pub const COSIGNATURE_LABEL: &[u8; 12] = b"subtree/v1\n\0";

/// The name of the ML-DSA cosigner of a log with this origin.
pub fn cosigner_name(origin: &str) -> String {
    format!("{origin}/mldsa44")
}

/// Whether `name` is a valid signed-note key name (non-empty, no whitespace, no `+`).
pub fn valid_key_name(name: &str) -> bool {
    signed_note::is_key_name_valid(name)
}

/// Key id of a note key: the first 4 bytes of SHA-256(name ‖ 0x0A ‖ type ‖ public key).
pub fn key_id(name: &str, alg: u8, public_key: &[u8]) -> u32 {
    let mut material = Vec::with_capacity(1 + public_key.len());
    material.push(alg);
    material.extend_from_slice(public_key);
    signed_note::key_id(name, &material)
}

/// Encodes a verifier key: `name+hex(key id)+base64(type ‖ public key)`.
pub fn encode_vkey(name: &str, alg: u8, public_key: &[u8]) -> String {
    let mut material = Vec::with_capacity(1 + public_key.len());
    material.push(alg);
    material.extend_from_slice(public_key);
    format!(
        "{name}+{:08x}+{}",
        key_id(name, alg, public_key),
        B64.encode(material)
    )
}

/// A parsed verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// Key name.
    pub name: String,
    /// Signature type byte.
    pub alg: u8,
    /// Public key bytes (without the type byte).
    pub public_key: Vec<u8>,
}

impl VerifierKey {
    /// Parses `name+hex8+base64(type ‖ key)`, checking the key id and the key length.
    pub fn parse(vkey: &str) -> Result<Self> {
        let bad = |why: &str| LedgerError::Malformed(format!("verifier key: {why}"));
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+keyid+key"));
        };
        if !valid_key_name(name) {
            return Err(bad("invalid key name"));
        }
        let id = trackshift_crypto::lowhex::decode::<4>(id)
            .map(u32::from_be_bytes)
            .map_err(|e| bad(&format!("key id: {e}")))?;
        let material = B64.decode(key).map_err(|_| bad("key is not base64"))?;
        let Some((&alg, public_key)) = material.split_first() else {
            return Err(bad("empty key"));
        };
        let want = match alg {
            ALG_ED25519 => 32,
            ALG_MLDSA44_COSIGNATURE => MLDSA44_PUBLIC_KEY_LEN,
            other => return Err(bad(&format!("unsupported signature type 0x{other:02x}"))),
        };
        if public_key.len() != want {
            return Err(bad("wrong key length for its type"));
        }
        if id != key_id(name, alg, public_key) {
            return Err(bad("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_string(),
            alg,
            public_key: public_key.to_vec(),
        })
    }

    fn key_id(&self) -> u32 {
        key_id(&self.name, self.alg, &self.public_key)
    }
}

pub use trackshift_crypto::LedgerPublicKeys;

/// The log's Ed25519 key: a seed in a file, or a key on a PKCS#11 token.
pub(crate) enum LogKey {
    Seed(ed25519_dalek::SigningKey),
    Token(trackshift_crypto::pkcs11::TokenKey),
}

impl LogKey {
    fn public_key(&self) -> [u8; 32] {
        match self {
            LogKey::Seed(k) => k.verifying_key().to_bytes(),
            LogKey::Token(k) => k.public_key(),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64]> {
        match self {
            LogKey::Seed(k) => {
                use ed25519_dalek::Signer as _;
                Ok(k.sign(message).to_bytes())
            }
            LogKey::Token(k) => k
                .sign(message)
                .map_err(|e| LedgerError::Key(format!("signing the checkpoint: {e}"))),
        }
    }
}

/// The ledger's signing keys (Ed25519 for the log, ML-DSA-44 for the cosigner).
pub struct LedgerKeys {
    origin: String,
    ed25519: LogKey,
    mldsa: PqdsaKeyPair,
}

impl std::fmt::Debug for LedgerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerKeys")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

pub(crate) const ED25519_FILE: &str = "log-ed25519.key";
/// Instead of [`ED25519_FILE`] for a log key on a PKCS#11 token: its key id (hex, not secret).
pub const ED25519_TOKEN_FILE: &str = "log-ed25519.token";
pub(crate) const MLDSA_FILE: &str = "cosigner-mldsa44.key";

impl LedgerKeys {
    /// Keys from 32-byte seeds (tests and key import).
    pub fn from_seeds(origin: &str, ed25519: &[u8; 32], mldsa: &[u8; 32]) -> Result<Self> {
        Self::with_log_key(
            origin,
            LogKey::Seed(ed25519_dalek::SigningKey::from_bytes(ed25519)),
            mldsa,
        )
    }

    /// Keys whose log key is `log` (a seed or a key on a token).
    pub(crate) fn with_log_key(origin: &str, log: LogKey, mldsa: &[u8; 32]) -> Result<Self> {
        if !valid_key_name(origin) {
            return Err(LedgerError::Key(format!(
                "origin {origin:?} is not a valid key name (no spaces or '+')"
            )));
        }
        let mldsa = PqdsaKeyPair::from_seed(&ML_DSA_44_SIGNING, mldsa)
            .map_err(|_| LedgerError::Key("ML-DSA-44 key from seed".into()))?;
        Ok(Self {
            origin: origin.to_string(),
            ed25519: log,
            mldsa,
        })
    }

    /// Loads the keys from `dir`, generating them (files 0600) on first use. When `dir`
    /// holds a PKCS#11 configuration ([`trackshift_crypto::pkcs11::HSM_CONFIG_FILE`]) and
    /// no log seed, the log key is made on (and used from) that token, and `dir` keeps its
    /// id in [`ED25519_TOKEN_FILE`].
    pub fn load_or_generate(dir: &Path, origin: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(LedgerError::io("creating", dir))?;
        let ml = load_or_create_seed(&dir.join(MLDSA_FILE))?;
        let hsm = trackshift_crypto::pkcs11::HsmConfig::load(dir).map_err(key_error)?;
        let on_token = dir.join(ED25519_TOKEN_FILE);
        let log = if on_token.exists() || (hsm.is_some() && !dir.join(ED25519_FILE).exists()) {
            LogKey::Token(load_or_create_token_key(dir, hsm.as_ref())?)
        } else {
            let ed = load_or_create_seed(&dir.join(ED25519_FILE))?;
            LogKey::Seed(ed25519_dalek::SigningKey::from_bytes(&ed))
        };
        Self::with_log_key(origin, log, &ml)
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Public verifier keys for auditors.
    pub fn public_keys(&self) -> LedgerPublicKeys {
        LedgerPublicKeys {
            origin: self.origin.clone(),
            log_key: encode_vkey(&self.origin, ALG_ED25519, &self.ed25519.public_key()),
            cosigner_key: encode_vkey(
                &cosigner_name(&self.origin),
                ALG_MLDSA44_COSIGNATURE,
                self.mldsa.public_key().as_ref(),
            ),
            retired: Vec::new(),
        }
    }

    /// Signs a checkpoint of `size` entries with root `root`: returns the signed note text.
    pub fn sign_checkpoint(&self, size: u64, root: [u8; 32], timestamp: u64) -> Result<String> {
        let cp = Checkpoint::new(&self.origin, size, Hash(root), "")
            .map_err(|e| LedgerError::Checkpoint(e.to_string()))?;
        let text = cp.to_bytes();
        let ed_sig = self.ed25519.sign(&text)?;
        let cosigner = cosigner_name(&self.origin);
        let msg = cosigned_message(&cosigner, timestamp, &self.origin, size, &root)?;
        let mut ml_sig = vec![0u8; MLDSA44_SIGNATURE_LEN];
        let n = self
            .mldsa
            .sign(&msg, &mut ml_sig)
            .map_err(|_| LedgerError::Key("ML-DSA-44 signing failed".into()))?;
        ml_sig.truncate(n);
        let mut cosig = Vec::with_capacity(8 + n);
        cosig.extend_from_slice(&timestamp.to_be_bytes());
        cosig.extend_from_slice(&ml_sig);
        let ed_id = key_id(&self.origin, ALG_ED25519, &self.ed25519.public_key());
        let ml_id = key_id(
            &cosigner,
            ALG_MLDSA44_COSIGNATURE,
            self.mldsa.public_key().as_ref(),
        );
        let sigs = [
            signed_note::Signature::new(self.origin.clone(), ed_id, ed_sig.to_vec()),
            signed_note::Signature::new(cosigner, ml_id, cosig),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LedgerError::Checkpoint(e.to_string()))?;
        let note = Note::new(&text, &sigs).map_err(|e| LedgerError::Checkpoint(e.to_string()))?;
        String::from_utf8(note.to_bytes())
            .map_err(|_| LedgerError::Checkpoint("note is not UTF-8".into()))
    }
}

pub(crate) fn key_error(e: trackshift_crypto::CryptoError) -> LedgerError {
    LedgerError::Key(e.to_string())
}

/// The log key on the token `hsm` names: the one [`ED25519_TOKEN_FILE`] in `dir` names, or
/// a new one (its id then written there, 0600).
fn load_or_create_token_key(
    dir: &Path,
    hsm: Option<&trackshift_crypto::pkcs11::HsmConfig>,
) -> Result<trackshift_crypto::pkcs11::TokenKey> {
    let path = dir.join(ED25519_TOKEN_FILE);
    let hsm = hsm.ok_or_else(|| {
        LedgerError::Key(format!(
            "{} names a log key on a PKCS#11 token, but {} has no {}",
            path.display(),
            dir.display(),
            trackshift_crypto::pkcs11::HSM_CONFIG_FILE
        ))
    })?;
    let token = trackshift_crypto::pkcs11::Token::open(hsm).map_err(key_error)?;
    match trackshift_crypto::filestore::read_secret_if_exists(&path).map_err(key_error)? {
        Some(bytes) => {
            let id = token_key_id(&bytes, &path)?;
            token.ed25519_key_by_id(&id).map_err(key_error)
        }
        None => {
            let key = token
                .generate_ed25519_key("trackshift ledger log")
                .map_err(key_error)?;
            trackshift_crypto::filestore::write_atomic(
                &path,
                format!("{}\n", key.id()).as_bytes(),
                0o600,
            )
            .map_err(key_error)?;
            Ok(key)
        }
    }
}

/// The key id in a token key file (64 hex digits).
pub(crate) fn token_key_id(bytes: &[u8], path: &Path) -> Result<trackshift_crypto::KeyId> {
    trackshift_crypto::KeyId::from_hex(String::from_utf8_lossy(bytes).trim()).map_err(|_| {
        LedgerError::Key(format!(
            "{} does not hold a 64-hex-digit key id",
            path.display()
        ))
    })
}

fn load_or_create_seed(path: &Path) -> Result<[u8; 32]> {
    // Owner-only, checked on the descriptor read (see `read_secret`).
    let secret = trackshift_crypto::filestore::read_secret_if_exists(path)
        .map_err(|e| LedgerError::Key(e.to_string()))?;
    match secret {
        Some(bytes) => {
            let text = Zeroizing::new(String::from_utf8_lossy(&bytes).trim().to_string());
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.as_bytes(), &mut seed).map_err(|_| {
                LedgerError::Key(format!("{} is not a 64-hex-digit seed", path.display()))
            })?;
            Ok(seed)
        }
        None => {
            let mut seed = [0u8; 32];
            aws_lc_rs::rand::fill(&mut seed)
                .map_err(|_| LedgerError::Key("random generator failed".into()))?;
            let text = Zeroizing::new(hex::encode(seed));
            trackshift_crypto::filestore::write_atomic(path, text.as_bytes(), 0o600)
                .map_err(|e| LedgerError::Key(e.to_string()))?;
            Ok(seed)
        }
    }
}

/// The ML-DSA-44 cosigned message (C2SP tlog-cosignature `cosigned_message`, start = 0).
pub fn cosigned_message(
    cosigner: &str,
    timestamp: u64,
    origin: &str,
    size: u64,
    root: &[u8; 32],
) -> Result<Vec<u8>> {
    let name_len = u8::try_from(cosigner.len())
        .ok()
        .filter(|&l| l > 0)
        .ok_or_else(|| LedgerError::Checkpoint("cosigner name must be 1..255 bytes".into()))?;
    let origin_len = u8::try_from(origin.len())
        .ok()
        .filter(|&l| l > 0)
        .ok_or_else(|| LedgerError::Checkpoint("origin must be 1..255 bytes".into()))?;
    if timestamp > i64::MAX as u64 {
        return Err(LedgerError::Checkpoint("timestamp exceeds 2^63-1".into()));
    }
    let mut m = Vec::with_capacity(12 + 1 + cosigner.len() + 8 + 1 + origin.len() + 16 + 32);
    m.extend_from_slice(COSIGNATURE_LABEL);
    m.push(name_len);
    m.extend_from_slice(cosigner.as_bytes());
    m.extend_from_slice(&timestamp.to_be_bytes());
    m.push(origin_len);
    m.extend_from_slice(origin.as_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(root);
    Ok(m)
}

struct Ed25519NoteVerifier {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl Verifier for Ed25519NoteVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.key.verify_strict(msg, &sig).is_ok()
    }
}

struct MlDsaCosignatureVerifier {
    name: String,
    id: u32,
    public_key: Vec<u8>,
    /// Timestamp of the last signature this verifier accepted.
    seen_timestamp: std::sync::Mutex<Option<u64>>,
}

impl Verifier for MlDsaCosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        if sig.len() != 8 + MLDSA44_SIGNATURE_LEN {
            return false;
        }
        let (ts, sig) = sig.split_at(8);
        let timestamp = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
        let Ok(cp) = Checkpoint::from_bytes(msg) else {
            return false;
        };
        let Ok(m) = cosigned_message(&self.name, timestamp, cp.origin(), cp.size(), &cp.hash().0)
        else {
            return false;
        };
        let ok = UnparsedPublicKey::new(&ML_DSA_44, &self.public_key)
            .verify(&m, sig)
            .is_ok();
        if ok {
            *self.seen_timestamp.lock().expect("timestamp lock") = Some(timestamp);
        }
        ok
    }
}

/// A checkpoint whose log signature and ML-DSA cosignature both verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// The log's origin.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
    /// Time the cosignature states (POSIX seconds).
    pub cosigned_at: u64,
    /// The signed note, as given.
    pub note: String,
}

/// Most bytes of a signed checkpoint this verifier reads.
pub const MAX_NOTE_LEN: usize = 64 << 10;

/// Verifies a signed checkpoint against the ledger's public keys. Both the Ed25519 log
/// signature and the ML-DSA-44 cosignature must be present and valid; signatures by other
/// keys are ignored.
///
/// A checkpoint signed by a retired key pair (`keys.retired`, after `keys rotate --purpose
/// ledger`) verifies when its cosignature's timestamp lies before the pair's `not_after`:
/// both signatures are made together, and the cosignature's timestamp is the one signed
/// time a checkpoint carries. One cosigned at or after it is refused.
pub fn verify_checkpoint(note: &str, keys: &LedgerPublicKeys) -> Result<VerifiedCheckpoint> {
    if note.len() > MAX_NOTE_LEN {
        return Err(LedgerError::Malformed(format!(
            "signed checkpoint of {} bytes exceeds {MAX_NOTE_LEN}",
            note.len()
        )));
    }
    let pairs: Vec<(VerifierKey, VerifierKey, Option<u64>)> =
        std::iter::once((&keys.log_key, &keys.cosigner_key, None))
            .chain(
                keys.retired
                    .iter()
                    .rev()
                    .map(|r| (&r.log_key, &r.cosigner_key, Some(r.not_after.unix()))),
            )
            .map(|(log, cos, end)| {
                Ok((
                    checked_key(VerifierKey::parse(log)?, ALG_ED25519, &keys.origin)?,
                    checked_key(
                        VerifierKey::parse(cos)?,
                        ALG_MLDSA44_COSIGNATURE,
                        &cosigner_name(&keys.origin),
                    )?,
                    end,
                ))
            })
            .collect::<Result<_>>()?;
    let mut first_error = None;
    for (log, cos, not_after) in &pairs {
        match verify_with_pair(note, &keys.origin, log, cos) {
            Ok(v) => match not_after {
                Some(end) if v.cosigned_at >= *end => {
                    return Err(LedgerError::Checkpoint(format!(
                        "cosigned at {} by a ledger key pair retired at {end}: signatures made after a key's retirement are refused",
                        v.cosigned_at
                    )));
                }
                _ => return Ok(v),
            },
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("the current pair is always tried"))
}

/// Checks that a verifier key has the type and name the ledger gives that role.
fn checked_key(key: VerifierKey, alg: u8, name: &str) -> Result<VerifierKey> {
    if key.alg == alg && key.name == name {
        return Ok(key);
    }
    Err(LedgerError::Key(if alg == ALG_ED25519 {
        "log key must be an Ed25519 key named after the origin".into()
    } else {
        format!("cosigner key must be an ML-DSA-44 cosignature key (type 0x06) named {name:?}")
    }))
}

fn verify_with_pair(
    note: &str,
    origin: &str,
    log: &VerifierKey,
    cos: &VerifierKey,
) -> Result<VerifiedCheckpoint> {
    // (Types and names were checked by `checked_key`.)
    let ed_key = ed25519_dalek::VerifyingKey::from_bytes(
        log.public_key
            .as_slice()
            .try_into()
            .expect("length checked"),
    )
    .map_err(|_| LedgerError::Key("log key is not a valid Ed25519 point".into()))?;
    let ed = Ed25519NoteVerifier {
        name: log.name.clone(),
        id: log.key_id(),
        key: ed_key,
    };
    let ml = std::sync::Arc::new(MlDsaCosignatureVerifier {
        name: cos.name.clone(),
        id: cos.key_id(),
        public_key: cos.public_key.clone(),
        seen_timestamp: std::sync::Mutex::new(None),
    });
    let parsed = Note::from_bytes(note.as_bytes())
        .map_err(|e| LedgerError::Malformed(format!("signed checkpoint: {e}")))?;
    let list = VerifierList::new(vec![Box::new(ed), Box::new(SharedVerifier(ml.clone()))]);
    let (verified, _unknown) = parsed
        .verify(&list)
        .map_err(|e| LedgerError::Checkpoint(format!("signature check failed: {e}")))?;
    let has = |name: &str, id: u32| verified.iter().any(|s| s.name() == name && s.id() == id);
    if !has(&log.name, log.key_id()) {
        return Err(LedgerError::Checkpoint(
            "no valid Ed25519 signature by the log".into(),
        ));
    }
    if !has(&cos.name, cos.key_id()) {
        return Err(LedgerError::Checkpoint(
            "no valid ML-DSA-44 cosignature".into(),
        ));
    }
    let cp = Checkpoint::from_bytes(parsed.text())
        .map_err(|e| LedgerError::Malformed(format!("signed checkpoint: {e}")))?;
    if cp.origin() != origin {
        return Err(LedgerError::Checkpoint(format!(
            "checkpoint is for origin {:?}, expected {:?}",
            cp.origin(),
            origin
        )));
    }
    let cosigned_at = ml
        .seen_timestamp
        .lock()
        .expect("timestamp lock")
        .ok_or_else(|| LedgerError::Checkpoint("no cosignature timestamp".into()))?;
    Ok(VerifiedCheckpoint {
        origin: cp.origin().to_string(),
        size: cp.size(),
        root: cp.hash().0,
        cosigned_at,
        note: note.to_string(),
    })
}

struct SharedVerifier(std::sync::Arc<MlDsaCosignatureVerifier>);

impl Verifier for SharedVerifier {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn key_id(&self) -> u32 {
        self.0.key_id()
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.0.verify(msg, sig)
    }
}
