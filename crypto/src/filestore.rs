//! The file key store: a directory holding the public key records and one secret file per
//! key.
//!
//! ```text
//! DIR/                   0700
//!   keyring.json         public records of every key (the same format auditors receive)
//!   secret/              0700
//!     <key id>.json      0600, {"format","key_id","algorithm","seed": base64 of 32 bytes}
//! ```
//!
//! Every write goes to a temporary file that is fsynced and renamed into place, so a crash
//! never leaves a half-written key file. Secret files are created 0600 and refused on read
//! when group or other users may read them (like OpenSSH does).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::error::{CryptoError, Result};
use crate::keys::{Algorithm, KeyId, KeyStatus, PublicKeyring, Purpose, b64};
use crate::signer::{KeyBackend, SecretSeed, Signer, SoftwareSigner};
use crate::timestamp::Timestamp;

const KEYRING_FILE: &str = "keyring.json";
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

/// A key store in a local directory. See the module docs for the layout.
#[derive(Debug)]
pub struct FileKeyStore {
    dir: PathBuf,
    ring: PublicKeyring,
}

impl FileKeyStore {
    /// Creates a new store in `dir` with one active key per purpose, valid from `now`.
    ///
    /// Refuses to overwrite an existing store.
    pub fn init(dir: impl AsRef<Path>, now: Timestamp) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if dir.join(KEYRING_FILE).exists() {
            return Err(CryptoError::AlreadyExists(dir));
        }
        create_private_dir(&dir)?;
        create_private_dir(&dir.join(SECRET_DIR))?;
        let mut store = Self {
            dir,
            ring: PublicKeyring::default(),
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
        Ok(Self { dir, ring })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Revokes a key: nothing it signed verifies any more. Revoking the active key leaves
    /// its purpose without one until the next [`Self::rotate`].
    pub fn revoke(&mut self, id: &KeyId, now: Timestamp) -> Result<()> {
        let key = self
            .ring
            .keys
            .iter_mut()
            .find(|k| &k.id == id)
            .ok_or(CryptoError::UnknownKey(*id))?;
        key.status = KeyStatus::Revoked;
        key.revoked_at = Some(now);
        self.save_ring()
    }

    fn secret_path(&self, id: &KeyId) -> PathBuf {
        self.dir.join(SECRET_DIR).join(format!("{id}.json"))
    }

    fn add_new_key(&mut self, purpose: Purpose, now: Timestamp) -> Result<KeyId> {
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

    fn load_seed(&self, id: &KeyId) -> Result<SecretSeed> {
        let path = self.secret_path(id);
        let meta =
            fs::metadata(&path).map_err(|e| CryptoError::io("reading secret key", &path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::InsecurePermissions { path, mode });
        }
        let mut bytes =
            fs::read(&path).map_err(|e| CryptoError::io("reading secret key", &path, e))?;
        let parsed: std::result::Result<SecretFile, _> = serde_json::from_slice(&bytes);
        bytes.zeroize();
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

impl KeyBackend for FileKeyStore {
    fn signer(&self, purpose: Purpose, at: Timestamp) -> Result<Arc<dyn Signer>> {
        let record = self
            .ring
            .active(purpose)
            .ok_or(CryptoError::NoActiveKey(purpose))?;
        record.check_usable(purpose, at)?;
        let seed = self.load_seed(&record.id)?;
        Ok(Arc::new(SoftwareSigner::new(record.clone(), &seed)?))
    }

    fn public_keyring(&self) -> Result<PublicKeyring> {
        Ok(self.ring.clone())
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| CryptoError::io("creating", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| CryptoError::io("setting permissions on", dir, e))
}

/// Writes `bytes` to `path` atomically: a temporary file created with `mode` in the same
/// directory, fsynced, renamed over `path`, and the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| CryptoError::Backend("random generator failed"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CryptoError::io("writing", path, e)
    })
}
