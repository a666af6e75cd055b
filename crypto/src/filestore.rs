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
//! [`read_secret`] is the one way Trackshift reads a secret file of any kind (signing keys,
//! ledger keys, the TLS key, the service key, tokens, tenants' credentials files).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{CryptoError, Result};
use crate::keys::{Algorithm, KeyId, KeyStatus, PublicKeyRecord, PublicKeyring, Purpose, b64};
use crate::pkcs11::{HsmConfig, TOKEN_KEY_FORMAT, Token, TokenKeyRef};
use crate::signer::{KeyBackend, SecretSeed, Signer, SoftwareSigner};
use crate::timestamp::Timestamp;

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

/// Largest secret file [`read_secret`] reads: keys, tokens and credentials files are a few
/// KiB at most, and the limit keeps a wrong path (a log file) from being read whole.
pub const MAX_SECRET_FILE: u64 = 1 << 20;

/// Reads a secret file (private key, token, credentials file) after checking that no one
/// but its owner can read or change it. Returns the bytes, wiped from memory when dropped.
///
/// The checks are made with `fstat` on the descriptor that is then read, not on the path
/// beforehand, so the file checked is the file read even if the path is swapped in
/// between. Symbolic links are followed: what is checked is the file holding the bytes.
/// Refused, with the path in the error:
///
/// * anything but a regular file (a FIFO is opened non-blocking, so it cannot hang the
///   caller; directories, devices and sockets are refused too);
/// * any group or other permission bit (`mode & 0o077 != 0`, the rule OpenSSH applies to
///   private keys): [`CryptoError::InsecurePermissions`], whose message gives the fix,
///   `chmod 600 PATH`;
/// * files over [`MAX_SECRET_FILE`].
///
/// Errors never contain the file's content.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    read_secret_if_exists(path)?.ok_or_else(|| {
        CryptoError::io(
            "reading secret file",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// As [`read_secret`], but a file that does not exist is `Ok(None)` (for secrets created
/// on first start). Every other failure is an error.
pub fn read_secret_if_exists(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt as _;
    let io = |e| CryptoError::io("reading secret file", path, e);
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    let kind = meta.file_type();
    if !kind.is_file() || kind.is_fifo() || kind.is_socket() {
        return Err(CryptoError::NotARegularFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(CryptoError::malformed(
            "secret file",
            format!(
                "{} is {} bytes, over the {} bytes a secret file may hold",
                path.display(),
                meta.len(),
                MAX_SECRET_FILE
            ),
        ));
    }
    // Read into a buffer of the final size, so that no reallocation leaves a copy of the
    // secret behind; a file that changed size since the fstat is refused.
    let mut file = file;
    let mut bytes = Zeroizing::new(vec![0u8; meta.len() as usize]);
    file.read_exact(&mut bytes).map_err(io)?;
    let mut more = [0u8; 1];
    if file.read(&mut more).map_err(io)? != 0 {
        more.zeroize();
        return Err(CryptoError::malformed(
            "secret file",
            format!("{} changed while it was read", path.display()),
        ));
    }
    Ok(Some(bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_at(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, b"s3cr3t-content").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn secrets_open_to_group_or_others_are_refused_with_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o777] {
            let p = secret_at(dir.path(), &format!("k{mode:o}"), mode);
            let e = read_secret(&p).unwrap_err();
            assert!(
                matches!(e, CryptoError::InsecurePermissions { mode: m, .. } if m == mode),
                "{mode:o}: {e}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
            assert!(!msg.contains("s3cr3t"), "{msg}");
            assert!(read_secret_if_exists(&p).is_err(), "{mode:o}");
        }
    }

    #[test]
    fn owner_only_secrets_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400, 0o700] {
            let p = secret_at(dir.path(), &format!("k{mode:o}"), mode);
            assert_eq!(&read_secret(&p).unwrap()[..], b"s3cr3t-content");
        }
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secret(&empty).unwrap().is_empty());
    }

    #[test]
    fn a_missing_secret_is_none_or_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent.key");
        assert!(read_secret_if_exists(&p).unwrap().is_none());
        let e = read_secret(&p).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn symlinks_are_judged_by_the_file_they_reach() {
        let dir = tempfile::tempdir().unwrap();
        let good = secret_at(dir.path(), "good", 0o600);
        let bad = secret_at(dir.path(), "bad", 0o644);
        let to_good = dir.path().join("to-good");
        let to_bad = dir.path().join("to-bad");
        std::os::unix::fs::symlink(&good, &to_good).unwrap();
        std::os::unix::fs::symlink(&bad, &to_bad).unwrap();
        assert_eq!(&read_secret(&to_good).unwrap()[..], b"s3cr3t-content");
        let e = read_secret(&to_bad).unwrap_err();
        assert!(matches!(e, CryptoError::InsecurePermissions { .. }), "{e}");
    }

    #[test]
    fn directories_fifos_and_devices_are_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // A blocking open of a FIFO without a writer would hang this test.
        for p in [sub.as_path(), fifo.as_path(), Path::new("/dev/null")] {
            let e = read_secret(p).unwrap_err();
            assert!(
                matches!(e, CryptoError::NotARegularFile { .. }),
                "{}: {e}",
                p.display()
            );
            assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn oversized_secret_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge");
        let f = fs::File::create(&p).unwrap();
        f.set_len(MAX_SECRET_FILE + 1).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_secret(&p).unwrap_err();
        assert!(e.to_string().contains("huge"), "{e}");
        f.set_len(MAX_SECRET_FILE).unwrap();
        assert_eq!(read_secret(&p).unwrap().len() as u64, MAX_SECRET_FILE);
    }

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
