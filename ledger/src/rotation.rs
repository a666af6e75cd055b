//! Rotating the ledger's checkpoint keys on a running gateway.
//!
//! ```text
//! LOG/keys/log-ed25519.key       first Ed25519 log key seed (hex, 0600)
//! LOG/keys/cosigner-mldsa44.key  first ML-DSA-44 cosigner key seed (hex, 0600)
//! LOG/keys/ledger-keys.json      after the first rotation, instead of the two above (0600):
//!                                {"format", "log_seed", "cosigner_seed" (hex),
//!                                 "retired": the public verifier keys of the pairs used
//!                                 before, each with the end of its window;
//!                                 "staged": a pair held for a shared log, not yet signing}
//! LOG/public-keys.json           what auditors get: the current pair and the retired ones
//! ```
//!
//! [`rotate_ledger_keys`] (`trackshift keys rotate --purpose ledger`) writes the new pair
//! and the old pair's retirement (its window ending at the end of the current second) in
//! one file that replaces `ledger-keys.json` atomically: a running gateway sees the old
//! keys or the new ones, never a mix. It then removes the first seed files (no longer
//! read) and rewrites the public key file. The writer signs every checkpoint through
//! [`LiveLedgerKeys`], which looks at the key files before each signature (one `stat`
//! each) and loads them again when they changed, checking them owner-only as at start;
//! the cosignature's timestamp is taken before that look, so a rotation it does not see
//! was committed later, inside the old pair's window. A checkpoint signed by a retired
//! pair verifies while its cosignature's timestamp is inside the pair's window
//! ([`crate::verify_checkpoint`]).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use trackshift_crypto::filestore::{read_secret, read_secret_if_exists, write_atomic};
use trackshift_crypto::{RetiredLedgerKeys, Timestamp};
use zeroize::{Zeroize as _, Zeroizing};

use crate::error::{LedgerError, Result};
use crate::note::{
    ED25519_FILE, ED25519_TOKEN_FILE, LedgerKeys, LedgerPublicKeys, LogKey, MLDSA_FILE, key_error,
};
use crate::store::now_secs;
use trackshift_crypto::KeyId;
use trackshift_crypto::pkcs11::{HSM_CONFIG_FILE, HsmConfig, Token};

/// File in the ledger's key directory holding the keys after the first rotation.
pub const ROTATED_KEYS_FILE: &str = "ledger-keys.json";
const ROTATED_KEYS_FORMAT: &str = "trackshift.ledger-keys.v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotatedKeys {
    format: String,
    /// The log key's seed (hex), or empty when the key is on a PKCS#11 token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    log_seed: String,
    /// The id of the log key on the token `pkcs11.json` names, instead of a seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_token_key: Option<KeyId>,
    cosigner_seed: String,
    retired: Vec<RetiredLedgerKeys>,
    /// A pair staged for a log shared through PostgreSQL ([`stage_ledger_keys`]): held,
    /// signing only once the log's database names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    staged: Option<StagedSeeds>,
}

impl Drop for RotatedKeys {
    fn drop(&mut self) {
        self.log_seed.zeroize();
        self.cosigner_seed.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StagedSeeds {
    log_seed: String,
    cosigner_seed: String,
}

impl Drop for StagedSeeds {
    fn drop(&mut self) {
        self.log_seed.zeroize();
        self.cosigner_seed.zeroize();
    }
}

/// The JSON text of the public key file (`LOG/public-keys.json`), as every writer writes it.
pub fn public_keys_json(public: &LedgerPublicKeys) -> String {
    serde_json::to_string_pretty(public).expect("keys serialise") + "\n"
}

fn seed_from_hex(text: &str, path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), seed.as_mut_slice()).map_err(|_| {
        LedgerError::Key(format!("{}: a seed is not 64 hex digits", path.display()))
    })?;
    Ok(seed)
}

/// `ledger-keys.json` in `dir`, if a rotation wrote it.
fn read_rotated(dir: &Path) -> Result<Option<RotatedKeys>> {
    let path = dir.join(ROTATED_KEYS_FILE);
    let Some(bytes) = read_secret_if_exists(&path).map_err(|e| LedgerError::Key(e.to_string()))?
    else {
        return Ok(None);
    };
    // The serde error could quote input; report only its position, never the content.
    let file: RotatedKeys = serde_json::from_slice(&bytes).map_err(|e| {
        LedgerError::Key(format!(
            "{} (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    if file.format != ROTATED_KEYS_FORMAT {
        return Err(LedgerError::Key(format!(
            "{}: format is not {ROTATED_KEYS_FORMAT}",
            path.display()
        )));
    }
    Ok(Some(file))
}

/// What a key directory holds.
struct KeyFile {
    keys: LedgerKeys,
    retired: Vec<RetiredLedgerKeys>,
    staged: Option<LedgerKeys>,
}

/// The keys in `dir`, the pairs they retired and a staged pair: `ledger-keys.json` when a
/// rotation wrote it, else the first seed files (generated on first use).
fn load_keys(dir: &Path, origin: &str) -> Result<KeyFile> {
    let Some(file) = read_rotated(dir)? else {
        return Ok(KeyFile {
            keys: LedgerKeys::load_or_generate(dir, origin)?,
            retired: Vec::new(),
            staged: None,
        });
    };
    let path = dir.join(ROTATED_KEYS_FILE);
    let pair = |log: &str, cosigner: &str| {
        LedgerKeys::from_seeds(
            origin,
            &*seed_from_hex(log, &path)?,
            &*seed_from_hex(cosigner, &path)?,
        )
    };
    let keys = match &file.log_token_key {
        Some(id) => LedgerKeys::with_log_key(
            origin,
            LogKey::Token(token_log_key(dir, id)?),
            &*seed_from_hex(&file.cosigner_seed, &path)?,
        )?,
        None => pair(&file.log_seed, &file.cosigner_seed)?,
    };
    Ok(KeyFile {
        keys,
        retired: file.retired.clone(),
        staged: file
            .staged
            .as_ref()
            .map(|s| pair(&s.log_seed, &s.cosigner_seed))
            .transpose()?,
    })
}

/// The log key `id` on the token the configuration in `dir` names.
fn token_log_key(dir: &Path, id: &KeyId) -> Result<trackshift_crypto::pkcs11::TokenKey> {
    let hsm = HsmConfig::load(dir).map_err(key_error)?.ok_or_else(|| {
        LedgerError::Key(format!(
            "{} names log key {id} on a PKCS#11 token, but {} has no {HSM_CONFIG_FILE}",
            dir.join(ROTATED_KEYS_FILE).display(),
            dir.display()
        ))
    })?;
    Token::open(&hsm)
        .and_then(|t| t.ed25519_key_by_id(id))
        .map_err(key_error)
}

fn public_with_history(keys: &LedgerKeys, retired: Vec<RetiredLedgerKeys>) -> LedgerPublicKeys {
    let mut public = keys.public_keys();
    public.retired = retired;
    public
}

/// Identity of the key files' current versions (`None`: absent).
type Stamp = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;

fn stamp(keys_dir: &Path) -> Stamp {
    [
        ROTATED_KEYS_FILE,
        ED25519_FILE,
        ED25519_TOKEN_FILE,
        MLDSA_FILE,
        HSM_CONFIG_FILE,
    ]
    .iter()
    .map(|name| {
        std::fs::metadata(keys_dir.join(name)).ok().map(|m| {
            (
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        })
    })
    .collect()
}

struct Loaded {
    stamp: Stamp,
    keys: LedgerKeys,
    public: LedgerPublicKeys,
    staged: Option<(LedgerKeys, LedgerPublicKeys)>,
}

impl Loaded {
    /// The held pair (current or staged) whose verifier keys are `log_key`/`cosigner_key`.
    fn pair(&self, log_key: &str, cosigner_key: &str) -> Option<&LedgerKeys> {
        std::iter::once((&self.keys, &self.public))
            .chain(self.staged.as_ref().map(|(k, p)| (k, p)))
            .find(|(_, p)| p.log_key == log_key && p.cosigner_key == cosigner_key)
            .map(|(k, _)| k)
    }
}

/// The ledger's signing keys as a running writer holds them: loaded again whenever the key
/// files change on disk. See the module docs.
pub struct LiveLedgerKeys {
    dir: PathBuf,
    origin: String,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for LiveLedgerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveLedgerKeys")
            .field("dir", &self.dir)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn load(dir: &Path, origin: &str) -> Result<Loaded> {
    // The identity is taken before the files are read: a change in between is seen by the
    // next look.
    let stamp = stamp(dir);
    let file = load_keys(dir, origin)?;
    let public = public_with_history(&file.keys, file.retired);
    Ok(Loaded {
        stamp,
        keys: file.keys,
        public,
        staged: file.staged.map(|k| {
            let p = k.public_keys();
            (k, p)
        }),
    })
}

impl LiveLedgerKeys {
    /// Loads the keys in `dir` (the log's `keys/` directory), generating them on first use.
    pub fn load_or_generate(dir: &Path, origin: &str) -> Result<Self> {
        let loaded = load(dir, origin)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            origin: origin.to_string(),
            loaded: Mutex::new(loaded),
        })
    }

    /// The public keys in force: the current pair and the retired ones.
    pub fn public_keys(&self) -> LedgerPublicKeys {
        self.loaded.lock().expect("ledger keys lock").public.clone()
    }

    /// Loads the keys again if their files changed (`force`: in any case). Returns whether
    /// they were loaded again. On error nothing is signed until they load.
    pub fn reload(&self, force: bool) -> Result<bool> {
        let mut loaded = self.loaded.lock().expect("ledger keys lock");
        self.refresh(&mut loaded, force)
    }

    fn refresh(&self, loaded: &mut Loaded, force: bool) -> Result<bool> {
        if !force && stamp(&self.dir) == loaded.stamp {
            return Ok(false);
        }
        let new = load(&self.dir, &self.origin)?;
        if new.public != loaded.public {
            tracing::info!(
                dir = %self.dir.display(),
                log_key = %new.public.log_key,
                retired = new.public.retired.len(),
                "ledger keys loaded"
            );
        }
        *loaded = new;
        Ok(true)
    }

    /// Signs a checkpoint of `size` entries with root `root`, cosigned now, with the pair in
    /// force on disk now (loaded again first if the files changed).
    pub fn sign_checkpoint(&self, size: u64, root: [u8; 32]) -> Result<String> {
        // The time first, then the look at the disk (see the module docs).
        let timestamp = now_secs();
        let mut loaded = self.loaded.lock().expect("ledger keys lock");
        self.refresh(&mut loaded, false)?;
        loaded.keys.sign_checkpoint(size, root, timestamp)
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The public keys of the pair staged for a shared log ([`stage_ledger_keys`]), if any.
    pub fn staged_public(&self) -> Result<Option<LedgerPublicKeys>> {
        let mut loaded = self.loaded.lock().expect("ledger keys lock");
        self.refresh(&mut loaded, false)?;
        Ok(loaded.staged.as_ref().map(|(_, p)| p.clone()))
    }

    /// Whether the files name the pair `log_key`/`cosigner_key`: held (current or staged)
    /// or retired.
    pub fn knows_pair(&self, log_key: &str, cosigner_key: &str) -> Result<bool> {
        let mut loaded = self.loaded.lock().expect("ledger keys lock");
        self.refresh(&mut loaded, false)?;
        Ok(loaded.pair(log_key, cosigner_key).is_some()
            || loaded
                .public
                .retired
                .iter()
                .any(|r| r.log_key == log_key && r.cosigner_key == cosigner_key))
    }

    /// Whether a held pair (current or staged) has the verifier keys `signer` names as
    /// current.
    pub fn holds(&self, signer: &LedgerPublicKeys) -> Result<bool> {
        let mut loaded = self.loaded.lock().expect("ledger keys lock");
        self.refresh(&mut loaded, false)?;
        Ok(loaded.pair(&signer.log_key, &signer.cosigner_key).is_some())
    }

    /// Signs a checkpoint, cosigned now, with the held pair (current or staged) that
    /// `signer` names as current: for a shared log, whose database says which pair signs.
    pub fn sign_checkpoint_as(
        &self,
        signer: &LedgerPublicKeys,
        size: u64,
        root: [u8; 32],
    ) -> Result<String> {
        let timestamp = now_secs();
        let mut loaded = self.loaded.lock().expect("ledger keys lock");
        self.refresh(&mut loaded, false)?;
        let pair = loaded
            .pair(&signer.log_key, &signer.cosigner_key)
            .ok_or_else(|| {
                LedgerError::Key(format!(
                    "the shared log {} signs with the ledger key {}, which {} does not hold: \
                     copy {ROTATED_KEYS_FILE} from the gateway that rotated the keys into it \
                     (stage keys with `keys rotate --prepare` and copy them before activating)",
                    signer.origin,
                    signer.log_key,
                    self.dir.display()
                ))
            })?;
        pair.sign_checkpoint(size, root, timestamp)
    }
}

fn new_seed() -> Result<Zeroizing<String>> {
    let mut seed = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(seed.as_mut_slice())
        .map_err(|_| LedgerError::Key("random generator failed".into()))?;
    Ok(Zeroizing::new(hex::encode(seed.as_slice())))
}

/// Rotates the checkpoint keys of the log in `log_dir` (a gateway's `DATA/ledger`, running
/// or not): the current pair is retired with its window ending at the end of the current
/// second (`now + 1 s`, exclusive), a new pair is generated (in one file, 0600, replacing
/// the keys atomically) and the public key file is rewritten with both. Returns the new
/// public keys.
///
/// The log's origin is read from its `public-keys.json`, so the gateway must have started
/// once. A pair staged before ([`stage_ledger_keys`]) is the new pair. A ledger shared
/// through PostgreSQL rotates in its database instead ([`crate::PgLedger::activate_staged`]).
pub fn rotate_ledger_keys(log_dir: &Path) -> Result<LedgerPublicKeys> {
    let keys_dir = log_dir.join("keys");
    let pk_path = log_dir.join(crate::store::PUBLIC_KEYS_FILE);
    let text = std::fs::read_to_string(&pk_path).map_err(|e| {
        LedgerError::Key(format!(
            "reading {}: {e} (a ledger's keys rotate once its gateway has started)",
            pk_path.display()
        ))
    })?;
    let old: LedgerPublicKeys = serde_json::from_str(&text)
        .map_err(|e| LedgerError::Damaged(format!("{}: {e}", pk_path.display())))?;
    // The current keys must be there and owner-only: a rotation never creates a first key.
    if !keys_dir.join(ROTATED_KEYS_FILE).exists() {
        let log = if keys_dir.join(ED25519_TOKEN_FILE).exists() {
            ED25519_TOKEN_FILE
        } else {
            ED25519_FILE
        };
        for name in [log, MLDSA_FILE] {
            read_secret(&keys_dir.join(name)).map_err(|e| LedgerError::Key(e.to_string()))?;
        }
    }
    // With a PKCS#11 configuration in the key directory, the new log key is made on its token.
    let hsm = HsmConfig::load(&keys_dir).map_err(key_error)?;
    let KeyFile {
        keys: current,
        mut retired,
        ..
    } = load_keys(&keys_dir, &old.origin)?;
    let current = current.public_keys();
    retired.push(RetiredLedgerKeys {
        log_key: current.log_key,
        cosigner_key: current.cosigner_key,
        not_after: Timestamp::from_unix(now_secs().saturating_add(1)),
    });
    // A staged pair is the one the operator prepared: it becomes the new pair.
    let staged = read_rotated(&keys_dir)?.and_then(|mut f| f.staged.take());
    let (log_seed, log_token, cosigner_seed) = match (staged, &hsm) {
        (Some(s), _) => (s.log_seed.clone(), None, s.cosigner_seed.clone()),
        (None, Some(hsm)) => {
            let key = Token::open(hsm)
                .and_then(|t| t.generate_ed25519_key("trackshift ledger log"))
                .map_err(key_error)?;
            (String::new(), Some(key), new_seed()?.to_string())
        }
        (None, None) => (new_seed()?.to_string(), None, new_seed()?.to_string()),
    };
    let mut file = RotatedKeys {
        format: ROTATED_KEYS_FORMAT.to_string(),
        log_seed,
        log_token_key: log_token.as_ref().map(|k| k.id()),
        cosigner_seed,
        retired,
        staged: None,
    };
    let cosigner = seed_from_hex(&file.cosigner_seed, &keys_dir)?;
    let new = match log_token {
        Some(key) => LedgerKeys::with_log_key(&old.origin, LogKey::Token(key), &cosigner)?,
        None => LedgerKeys::from_seeds(
            &old.origin,
            &*seed_from_hex(&file.log_seed, &keys_dir)?,
            &cosigner,
        )?,
    };
    // The commit point: one rename replaces the old pair by the new one and its history.
    // The writer may sign with the old pair until it sees the file, so the old window must
    // end after the second the file appeared in: when the write ended in a later second
    // than it began, the window is extended to the end of that second and written again.
    loop {
        write_rotated(&keys_dir, &file)?;
        let after = now_secs();
        let end = &mut file.retired.last_mut().expect("just pushed").not_after;
        if after < end.unix() {
            break;
        }
        *end = Timestamp::from_unix(after.saturating_add(1));
    }
    let public = public_with_history(&new, file.retired.clone());
    drop(file);
    remove_first_seeds(&keys_dir);
    write_atomic(&pk_path, public_keys_json(&public).as_bytes(), 0o644)
        .map_err(|e| LedgerError::Damaged(e.to_string()))?;
    Ok(public)
}

/// Removes the first seed files once `ledger-keys.json` holds the keys: they are no longer
/// read, and their secrets need not stay on disk.
fn remove_first_seeds(keys_dir: &Path) {
    for name in [ED25519_FILE, ED25519_TOKEN_FILE, MLDSA_FILE] {
        match std::fs::remove_file(keys_dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = name, error = %e, "could not remove a retired ledger seed")
            }
        }
    }
}

fn write_rotated(keys_dir: &Path, file: &RotatedKeys) -> Result<()> {
    let json = Zeroizing::new(serde_json::to_vec_pretty(file).expect("keys serialise"));
    write_atomic(&keys_dir.join(ROTATED_KEYS_FILE), &json, 0o600)
        .map_err(|e| LedgerError::Key(e.to_string()))
}

mod shared;

pub use shared::{promote_staged, stage_ledger_keys};

#[cfg(test)]
mod tests;
