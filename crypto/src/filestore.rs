//! The file key store: a directory holding the public key records and one secret file per
//! key.
//!
//! ```text
//! DIR/                   0700
//!   keyring.json         public records of every key (the same format auditors receive)
//!   pkcs11.json          only for a store whose Ed25519 keys are on a token (crate::pkcs11)
//!   secret/              0700
//!     <key id>.json      0600, {"format","key_id","algorithm","seed": base64 of 32 bytes},
//!                        or for a key on the token {"format","key_id","algorithm","token"}
//! ```
//!
//! Every write goes to a temporary file that is fsynced and renamed into place, so a crash
//! never leaves a half-written key file. Secret files are created 0600 and refused on read
//! when group or other users may read them (like OpenSSH does).
//!
//! The secret-file functions ([`read_secret`], [`write_atomic`]) live in
//! [`crate::secretfile`] and are re-exported here.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{CryptoError, Result};
use crate::keys::{Algorithm, KeyId, KeyStatus, PublicKeyRecord, PublicKeyring, Purpose, b64};
use crate::pkcs11::{HsmConfig, TOKEN_KEY_FORMAT, Token, TokenKeyRef};
use crate::signer::{KeyBackend, SecretSeed, Signer, SoftwareSigner};
use crate::timestamp::Timestamp;

pub(crate) use crate::secretfile::create_private_dir;
pub use crate::secretfile::{MAX_SECRET_FILE, read_secret, read_secret_if_exists, write_atomic};

pub(crate) const KEYRING_FILE: &str = "keyring.json";
const SECRET_DIR: &str = "secret";
const SECRET_FORMAT: &str = "trackshift.secret-key.v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    format: String,
    key_id: KeyId,
    algorithm: Algorithm,
    #[serde(with = "b64")]
    seed: Vec<u8>,
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

/// What a key's file under `secret/` holds: its seed, or where on the token it is.
enum KeyFile {
    Seed(SecretSeed),
    Token(TokenKeyRef),
}

/// A key store in a local directory. See the module docs for the layout.
#[derive(Debug)]
pub struct FileKeyStore {
    dir: PathBuf,
    ring: PublicKeyring,
    hsm: Option<HsmConfig>,
}

impl FileKeyStore {
    /// Creates a new store in `dir` with one active key per purpose, valid from `now`.
    ///
    /// Refuses to overwrite an existing store.
    pub fn init(dir: impl AsRef<Path>, now: Timestamp) -> Result<Self> {
        Self::create(dir.as_ref(), now, None)
    }

    /// Creates a new store in `dir` whose Ed25519 (receipt) keys are generated and held on
    /// the PKCS#11 token `hsm` names, non-extractable; the ML-DSA-65 manifest key is kept
    /// in software (module docs of [`crate::pkcs11`]). Later rotations of the receipt key
    /// make the new key on the token too.
    pub fn init_with_hsm(dir: impl AsRef<Path>, now: Timestamp, hsm: HsmConfig) -> Result<Self> {
        Self::create(dir.as_ref(), now, Some(hsm))
    }

    fn create(dir: &Path, now: Timestamp, hsm: Option<HsmConfig>) -> Result<Self> {
        let dir = dir.to_path_buf();
        if dir.join(KEYRING_FILE).exists() {
            return Err(CryptoError::AlreadyExists(dir));
        }
        // The token is reached before anything is written.
        if let Some(cfg) = &hsm {
            Token::open(cfg)?;
        }
        create_private_dir(&dir)?;
        create_private_dir(&dir.join(SECRET_DIR))?;
        if let Some(cfg) = &hsm {
            cfg.save(&dir)?;
        }
        let mut store = Self {
            dir,
            ring: PublicKeyring::default(),
            hsm,
        };
        for purpose in Purpose::ALL {
            store.add_new_key(purpose, now)?;
        }
        store.save_ring()?;
        Ok(store)
    }

    /// Opens an existing store and validates its public records.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(KEYRING_FILE);
        let bytes = fs::read(&path).map_err(|e| CryptoError::io("reading", &path, e))?;
        let ring = PublicKeyring::from_json(&bytes)?;
        let hsm = HsmConfig::load(&dir)?;
        Ok(Self { dir, ring, hsm })
    }

    /// The token this store keeps its Ed25519 keys on, if any.
    pub fn hsm(&self) -> Option<&HsmConfig> {
        self.hsm.as_ref()
    }

    /// Whether key `id` is held on the token (its private key never in this process).
    pub fn is_on_token(&self, id: &KeyId) -> Result<bool> {
        Ok(matches!(self.load_key_file(id)?, KeyFile::Token(_)))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks every secret file the store holds (active, retired and revoked keys) with
    /// [`read_secret`]: a gateway calls it at start, so that a key file other users can
    /// read is refused before anything runs, not when a job needs a signature. Key files
    /// deleted on purpose (a retired key's) are skipped.
    pub fn check_secret_files(&self) -> Result<()> {
        for record in &self.ring.keys {
            read_secret_if_exists(&self.secret_path(&record.id))?;
        }
        Ok(())
    }

    /// Retires the active key of `purpose` and makes a new key active from `now`. Returns
    /// the new key's id. Documents signed by the old key keep verifying: its window ends at
    /// the end of the current second (`now + 1 s`, exclusive), because signing times have
    /// whole-second resolution and a document signed earlier in this second carries
    /// `signed_at = now`.
    pub fn rotate(&mut self, purpose: Purpose, now: Timestamp) -> Result<KeyId> {
        for k in &mut self.ring.keys {
            if k.purpose == purpose && k.status == KeyStatus::Active {
                k.status = KeyStatus::Retired;
                k.not_after = Some(Timestamp::from_unix(now.unix().saturating_add(1)));
            }
        }
        let id = self.add_new_key(purpose, now)?;
        self.save_ring()?;
        Ok(id)
    }

    /// Rotates `purpose` at the current time, for a store a running gateway signs with
    /// (`keys rotate`). The gateway may sign with the old key until it sees the new
    /// keyring, so the old key's window must end after the second in which the new keyring
    /// appeared: when the write ended in a later second than it began, the window is
    /// extended to the end of that second (and written again) until it does.
    pub fn rotate_now(&mut self, purpose: Purpose) -> Result<KeyId> {
        let old = self.ring.active(purpose).map(|k| k.id);
        let id = self.rotate(purpose, Timestamp::now())?;
        let Some(old) = old else { return Ok(id) };
        loop {
            let after = Timestamp::now();
            let key = self
                .ring
                .keys
                .iter_mut()
                .find(|k| k.id == old)
                .expect("the retired key stays in the ring");
            if key.not_after.is_some_and(|end| after < end) {
                return Ok(id);
            }
            key.not_after = Some(Timestamp::from_unix(after.unix().saturating_add(1)));
            self.save_ring()?;
        }
    }

    /// Revokes a key: nothing it signed verifies any more. Revoking the active key leaves
    /// its purpose without one until the next [`Self::rotate`]. A key held on the token is
    /// then destroyed there (after the revocation is written: a failure to reach the token
    /// leaves the key revoked, and the error says so).
    pub fn revoke(&mut self, id: &KeyId, now: Timestamp) -> Result<()> {
        let key = self
            .ring
            .keys
            .iter_mut()
            .find(|k| &k.id == id)
            .ok_or(CryptoError::UnknownKey(*id))?;
        key.status = KeyStatus::Revoked;
        key.revoked_at = Some(now);
        self.save_ring()?;
        if let Some(KeyFile::Token(_)) = self.load_key_file_if_exists(id)? {
            self.token()?.destroy(id)?;
        }
        Ok(())
    }

    fn token(&self) -> Result<Arc<Token>> {
        let cfg = self.hsm.as_ref().ok_or_else(|| {
            CryptoError::malformed(
                "key store",
                format!(
                    "{} holds keys on a PKCS#11 token but has no {}",
                    self.dir.display(),
                    crate::pkcs11::HSM_CONFIG_FILE
                ),
            )
        })?;
        Token::open(cfg)
    }

    fn secret_path(&self, id: &KeyId) -> PathBuf {
        self.dir.join(SECRET_DIR).join(format!("{id}.json"))
    }

    fn add_new_key(&mut self, purpose: Purpose, now: Timestamp) -> Result<KeyId> {
        // On the token: Ed25519 keys always, ML-DSA-65 keys when the token offers ML-DSA.
        let token = match &self.hsm {
            Some(_) => Some(self.token()?),
            None => None,
        };
        let on_token = match (&token, purpose.algorithm()) {
            (Some(_), Algorithm::Ed25519) => true,
            (Some(t), Algorithm::MlDsa65) => t.offers_ml_dsa()?,
            (None, _) => false,
        };
        if let (Some(token), true) = (token, on_token) {
            let record = match purpose.algorithm() {
                Algorithm::Ed25519 => token.generate_ed25519(purpose, now)?,
                Algorithm::MlDsa65 => token.generate_ml_dsa_65(purpose, now)?,
            };
            let file = TokenKeyRef {
                format: TOKEN_KEY_FORMAT.into(),
                key_id: record.id,
                algorithm: record.algorithm,
                token: token.label().into(),
            };
            let json = serde_json::to_vec_pretty(&file).expect("reference serialises");
            write_atomic(&self.secret_path(&record.id), &json, 0o600)?;
            let id = record.id;
            self.ring.keys.push(record);
            return Ok(id);
        }
        let (signer, seed) = SoftwareSigner::generate(purpose, now)?;
        let record = signer.public().clone();
        let file = SecretFile {
            format: SECRET_FORMAT.to_string(),
            key_id: record.id,
            algorithm: record.algorithm,
            seed: seed.expose().to_vec(),
        };
        let mut json = serde_json::to_vec_pretty(&file).expect("secret file serialises");
        let res = write_atomic(&self.secret_path(&record.id), &json, 0o600);
        json.zeroize();
        res?;
        let id = record.id;
        self.ring.keys.push(record);
        Ok(id)
    }

    fn save_ring(&self) -> Result<()> {
        self.ring.validate()?;
        write_atomic(
            &self.dir.join(KEYRING_FILE),
            self.ring.to_json().as_bytes(),
            0o644,
        )
    }

    fn load_key_file(&self, id: &KeyId) -> Result<KeyFile> {
        self.load_key_file_if_exists(id)?.ok_or_else(|| {
            CryptoError::io(
                "reading secret file",
                self.secret_path(id),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    fn load_key_file_if_exists(&self, id: &KeyId) -> Result<Option<KeyFile>> {
        let path = self.secret_path(id);
        let Some(bytes) = read_secret_if_exists(&path)? else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Format {
            format: String,
        }
        let format = serde_json::from_slice::<Format>(&bytes).map(|f| f.format);
        if format.as_deref().ok() == Some(TOKEN_KEY_FORMAT) {
            let r: TokenKeyRef = serde_json::from_slice(&bytes).map_err(|e| {
                CryptoError::malformed("token key reference", format!("{}: {e}", path.display()))
            })?;
            if r.key_id != *id {
                return Err(CryptoError::malformed(
                    "token key reference",
                    format!("{} does not name key {id}", path.display()),
                ));
            }
            return Ok(Some(KeyFile::Token(r)));
        }
        self.parse_seed(id, &path, bytes)
            .map(|s| Some(KeyFile::Seed(s)))
    }

    fn parse_seed(&self, id: &KeyId, path: &Path, bytes: Zeroizing<Vec<u8>>) -> Result<SecretSeed> {
        let parsed: std::result::Result<SecretFile, _> = serde_json::from_slice(&bytes);
        drop(bytes);
        // The serde error could quote input; report only its position, never the content.
        let file = parsed.map_err(|e| {
            CryptoError::malformed(
                "secret key file",
                format!(
                    "{} (line {}, column {})",
                    path.display(),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if file.format != SECRET_FORMAT || file.key_id != *id {
            return Err(CryptoError::malformed(
                "secret key file",
                format!("{} does not hold key {id}", path.display()),
            ));
        }
        let seed: [u8; 32] = file.seed.as_slice().try_into().map_err(|_| {
            CryptoError::malformed(
                "secret key file",
                format!("{}: seed is not 32 bytes", path.display()),
            )
        })?;
        Ok(SecretSeed::from_bytes(seed))
    }
}

impl FileKeyStore {
    /// The key that may sign a `purpose` document at `at`: the active key when its window
    /// holds `at`, else the retired key whose window does (a signature timestamped in the
    /// second a rotation happened, or just before it). Revoked keys never sign.
    pub fn key_for(&self, purpose: Purpose, at: Timestamp) -> Result<&PublicKeyRecord> {
        let active = self
            .ring
            .active(purpose)
            .ok_or(CryptoError::NoActiveKey(purpose))?;
        match active.check_usable(purpose, at) {
            Ok(()) => Ok(active),
            Err(not_valid) => self
                .ring
                .keys
                .iter()
                .filter(|k| k.status == KeyStatus::Retired)
                .find(|k| k.check_usable(purpose, at).is_ok())
                .ok_or(not_valid),
        }
    }

    /// A signer for `record` (a key of this store), its secret file read and checked; for
    /// a key on the token, a signer that signs there.
    pub fn load_signer(&self, record: &PublicKeyRecord) -> Result<Arc<dyn Signer>> {
        match self.load_key_file(&record.id)? {
            KeyFile::Seed(seed) => Ok(Arc::new(SoftwareSigner::new(record.clone(), &seed)?)),
            KeyFile::Token(r) => {
                let token = self.token()?;
                if r.algorithm != record.algorithm {
                    return Err(CryptoError::malformed(
                        "token key reference",
                        format!(
                            "key {} is {}, its reference says {}",
                            record.id, record.algorithm, r.algorithm
                        ),
                    ));
                }
                if r.token != token.label() {
                    return Err(CryptoError::malformed(
                        "token key reference",
                        format!(
                            "key {} was made on token {:?}, the store names {:?}",
                            record.id,
                            r.token,
                            token.label()
                        ),
                    ));
                }
                token.signer(record)
            }
        }
    }
}

impl KeyBackend for FileKeyStore {
    fn signer(&self, purpose: Purpose, at: Timestamp) -> Result<Arc<dyn Signer>> {
        self.load_signer(self.key_for(purpose, at)?)
    }

    fn public_keyring(&self) -> Result<PublicKeyring> {
        Ok(self.ring.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_live_rotation_ends_the_old_window_after_the_second_the_new_keyring_appeared() {
        let dir = tempfile::tempdir().unwrap();
        let before = Timestamp::now();
        let mut store = FileKeyStore::init(dir.path().join("keys"), before).unwrap();
        let old = store.ring.active(Purpose::Manifest).unwrap().id;
        let new = store.rotate_now(Purpose::Manifest).unwrap();
        let after = Timestamp::now();
        let ring = FileKeyStore::open(dir.path().join("keys"))
            .unwrap()
            .public_keyring()
            .unwrap();
        let end = ring.get(&old).unwrap().not_after.unwrap().unix();
        assert!(
            (before.unix() + 1..=after.unix() + 1).contains(&end),
            "{end}"
        );
        assert_eq!(ring.active(Purpose::Manifest).unwrap().id, new);
        assert!(
            ring.get(&new).unwrap().not_before.unix() < end,
            "the windows overlap"
        );
    }

    #[test]
    fn a_store_with_a_readable_retired_key_is_refused_by_the_start_check() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let mut store = FileKeyStore::init(&keys, Timestamp::from_unix(1_000)).unwrap();
        let old = store.ring.active(Purpose::Receipt).unwrap().id;
        store
            .rotate(Purpose::Receipt, Timestamp::from_unix(2_000))
            .unwrap();
        store.check_secret_files().unwrap();
        for entry in fs::read_dir(keys.join(SECRET_DIR)).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "created owner-only");
        }
        let retired = store.secret_path(&old);
        fs::set_permissions(&retired, fs::Permissions::from_mode(0o640)).unwrap();
        let e = FileKeyStore::open(&keys)
            .unwrap()
            .check_secret_files()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("chmod 600 {}", retired.display())),
            "{e}"
        );
        // A retired key's file deleted on purpose is no error.
        fs::remove_file(&retired).unwrap();
        FileKeyStore::open(&keys)
            .unwrap()
            .check_secret_files()
            .unwrap();
    }
}
