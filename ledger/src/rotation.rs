//! Rotating the ledger's checkpoint keys on a running gateway.
//!
//! ```text
//! LOG/keys/log-ed25519.key       current Ed25519 log key seed (hex, 0600)
//! LOG/keys/cosigner-mldsa44.key  current ML-DSA-44 cosigner key seed (hex, 0600)
//! LOG/keys/retired.json          public verifier keys of the pairs used before, each with
//!                                the end of its window (JSON, 0644; absent before the
//!                                first rotation)
//! LOG/public-keys.json           what auditors get: the current pair and the retired ones
//! ```
//!
//! [`rotate_ledger_keys`] (`trackshift keys rotate --purpose ledger`) first records the
//! current pair as retired, its window ending at the end of the current second, then
//! writes the new seeds (each file replaced atomically), then the public keys. The writer
//! signs every checkpoint through [`LiveLedgerKeys`], which looks at those files before
//! each signature (one `stat` each) and loads them again when they changed, checking the
//! secrets owner-only as at start; the cosignature's timestamp is taken before that check,
//! so a rotation it does not see happened later, inside the old pair's window. A
//! checkpoint signed by a retired pair verifies while its cosignature's timestamp is inside
//! the pair's window ([`crate::verify_checkpoint`]).
//!
//! A rotation interrupted between its writes leaves a current key that is also listed as
//! retired; the keys then refuse to load ("half rotated") until `keys rotate --purpose
//! ledger` runs again, and nothing is signed with a retired key meanwhile.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use trackshift_crypto::filestore::{read_secret, write_atomic};
use trackshift_crypto::{RetiredLedgerKeys, Timestamp};
use zeroize::Zeroizing;

use crate::error::{LedgerError, Result};
use crate::note::{ED25519_FILE, LedgerKeys, LedgerPublicKeys, MLDSA_FILE};
use crate::store::now_secs;

/// File in the ledger's key directory listing the retired verifier keys.
pub const RETIRED_FILE: &str = "retired.json";

/// The JSON text of the public key file (`LOG/public-keys.json`), as every writer writes it.
pub fn public_keys_json(public: &LedgerPublicKeys) -> String {
    serde_json::to_string_pretty(public).expect("keys serialise") + "\n"
}

/// The retired pairs recorded in `keys_dir` (none before the first rotation).
pub fn read_retired(keys_dir: &Path) -> Result<Vec<RetiredLedgerKeys>> {
    let path = keys_dir.join(RETIRED_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| LedgerError::Key(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(LedgerError::io("reading", &path)(e)),
    }
}

/// The public keys of `keys` with the retired pairs; refuses a current key that is listed
/// as retired (an interrupted rotation).
fn public_with_history(
    keys: &LedgerKeys,
    retired: Vec<RetiredLedgerKeys>,
    keys_dir: &Path,
) -> Result<LedgerPublicKeys> {
    let mut public = keys.public_keys();
    if retired
        .iter()
        .any(|r| r.log_key == public.log_key || r.cosigner_key == public.cosigner_key)
    {
        return Err(LedgerError::Key(format!(
            "the ledger keys in {} are half rotated (a current key is listed as retired in \
             {RETIRED_FILE}); run `trackshift keys rotate --purpose ledger` again",
            keys_dir.display()
        )));
    }
    public.retired = retired;
    Ok(public)
}

/// Identity of the key files' current versions (`None`: absent).
type Stamp = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;

fn stamp(keys_dir: &Path) -> Stamp {
    [ED25519_FILE, MLDSA_FILE, RETIRED_FILE]
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
    // next check.
    let stamp = stamp(dir);
    let keys = LedgerKeys::load_or_generate(dir, origin)?;
    let public = public_with_history(&keys, read_retired(dir)?, dir)?;
    Ok(Loaded {
        stamp,
        keys,
        public,
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
        *loaded = load(&self.dir, &self.origin)?;
        tracing::info!(
            dir = %self.dir.display(),
            log_key = %loaded.public.log_key,
            retired = loaded.public.retired.len(),
            "ledger keys loaded"
        );
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
}

fn read_seed(path: &Path) -> Result<()> {
    let bytes = read_secret(path).map_err(|e| LedgerError::Key(e.to_string()))?;
    let text = Zeroizing::new(String::from_utf8_lossy(&bytes).trim().to_string());
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.as_bytes(), seed.as_mut_slice())
        .map_err(|_| LedgerError::Key(format!("{} is not a 64-hex-digit seed", path.display())))
}

fn write_new_seed(path: &Path) -> Result<()> {
    let mut seed = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(seed.as_mut_slice())
        .map_err(|_| LedgerError::Key("random generator failed".into()))?;
    let text = Zeroizing::new(hex::encode(seed.as_slice()));
    write_atomic(path, text.as_bytes(), 0o600).map_err(|e| LedgerError::Key(e.to_string()))
}

/// Rotates the checkpoint keys of the log in `log_dir` (a gateway's `DATA/ledger`, running
/// or not): the current pair is retired with its window ending at the end of the current
/// second (`now + 1 s`, exclusive), a new pair is generated (secret files 0600) and the
/// public key file is rewritten with both. Returns the new public keys.
///
/// The log's origin is read from its `public-keys.json`, so the gateway must have started
/// once. Not for a ledger shared through PostgreSQL (its keys are pinned in the database).
pub fn rotate_ledger_keys(log_dir: &Path, now: Timestamp) -> Result<LedgerPublicKeys> {
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
    // Both secret files must be there and owner-only: a rotation never creates a first key.
    for name in [ED25519_FILE, MLDSA_FILE] {
        read_seed(&keys_dir.join(name))?;
    }
    let current = LedgerKeys::load_or_generate(&keys_dir, &old.origin)?.public_keys();
    let mut retired = read_retired(&keys_dir)?;
    // A pair already listed (an interrupted rotation run again) is not listed twice.
    if !retired
        .iter()
        .any(|r| r.log_key == current.log_key && r.cosigner_key == current.cosigner_key)
    {
        retired.push(RetiredLedgerKeys {
            log_key: current.log_key,
            cosigner_key: current.cosigner_key,
            not_after: Timestamp::from_unix(now.unix().saturating_add(1)),
        });
    }
    let json = serde_json::to_string_pretty(&retired).expect("keys serialise") + "\n";
    // The retirement is recorded before the new keys exist: a crash in between leaves
    // keys that refuse to load, never a signature by an unrecorded key.
    write_atomic(&keys_dir.join(RETIRED_FILE), json.as_bytes(), 0o644)
        .map_err(|e| LedgerError::Key(e.to_string()))?;
    for name in [ED25519_FILE, MLDSA_FILE] {
        write_new_seed(&keys_dir.join(name))?;
    }
    let keys = LedgerKeys::load_or_generate(&keys_dir, &old.origin)?;
    let public = public_with_history(&keys, retired, &keys_dir)?;
    write_atomic(&pk_path, public_keys_json(&public).as_bytes(), 0o644)
        .map_err(|e| LedgerError::Damaged(e.to_string()))?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::verify_checkpoint;

    const ORIGIN: &str = "test.example/rotation";

    fn log_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        let keys = LiveLedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
        write_atomic(
            &dir.join(crate::store::PUBLIC_KEYS_FILE),
            public_keys_json(&keys.public_keys()).as_bytes(),
            0o644,
        )
        .unwrap();
        (tmp, dir)
    }

    #[test]
    fn checkpoints_are_judged_by_the_window_of_the_pair_that_signed_them() {
        let (_tmp, dir) = log_dir();
        let old = LedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
        let now = now_secs();
        let public = rotate_ledger_keys(&dir, Timestamp::from_unix(now)).unwrap();
        assert_eq!(public.retired.len(), 1);
        assert_eq!(public.retired[0].not_after.unix(), now + 1);
        assert_ne!(public.log_key, old.public_keys().log_key);
        assert_ne!(public.cosigner_key, old.public_keys().cosigner_key);
        // Signed by the old pair inside its window: valid after the rotation.
        let before = old.sign_checkpoint(3, [7; 32], now).unwrap();
        assert_eq!(verify_checkpoint(&before, &public).unwrap().size, 3);
        // Signed by the old pair (a writer that kept it) after its window: refused.
        let late = old.sign_checkpoint(3, [7; 32], now + 1).unwrap();
        let e = verify_checkpoint(&late, &public).unwrap_err();
        assert!(e.to_string().contains("retired"), "{e}");
        // Without the retired pair, the old checkpoint does not verify at all.
        let mut pinned = public.clone();
        pinned.retired.clear();
        verify_checkpoint(&before, &pinned).unwrap_err();
        // A malformed retired key is an error, not skipped.
        let mut broken = public.clone();
        broken.retired[0].log_key = "nonsense".into();
        verify_checkpoint(&before, &broken).unwrap_err();
    }

    #[test]
    fn a_running_writer_signs_with_the_new_pair_after_a_rotation_without_a_reload() {
        let (_tmp, dir) = log_dir();
        let live = LiveLedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
        let first = live.public_keys();
        let public = rotate_ledger_keys(&dir, Timestamp::from_unix(now_secs())).unwrap();
        let note = live.sign_checkpoint(1, [1; 32]).unwrap();
        assert_eq!(live.public_keys(), public);
        // Signed by the new pair: it verifies without the retired pair.
        let mut current_only = public.clone();
        current_only.retired.clear();
        verify_checkpoint(&note, &current_only).unwrap();
        verify_checkpoint(&note, &first).unwrap_err();
        // Twice more: the history grows, every pair kept.
        rotate_ledger_keys(&dir, Timestamp::from_unix(now_secs())).unwrap();
        let public = rotate_ledger_keys(&dir, Timestamp::from_unix(now_secs())).unwrap();
        assert_eq!(public.retired.len(), 3);
        verify_checkpoint(&note, &public).unwrap();
        verify_checkpoint(&live.sign_checkpoint(2, [2; 32]).unwrap(), &public).unwrap();
    }

    #[test]
    fn an_interrupted_rotation_signs_nothing_until_it_is_run_again() {
        let (_tmp, dir) = log_dir();
        let keys_dir = dir.join("keys");
        let live = LiveLedgerKeys::load_or_generate(&keys_dir, ORIGIN).unwrap();
        // The retirement recorded, then a crash before the new seeds were written.
        let current = live.public_keys();
        let retired = vec![RetiredLedgerKeys {
            log_key: current.log_key.clone(),
            cosigner_key: current.cosigner_key.clone(),
            not_after: Timestamp::from_unix(now_secs() + 1),
        }];
        write_atomic(
            &keys_dir.join(RETIRED_FILE),
            serde_json::to_string(&retired).unwrap().as_bytes(),
            0o644,
        )
        .unwrap();
        let e = live.sign_checkpoint(1, [1; 32]).unwrap_err();
        assert!(e.to_string().contains("half rotated"), "{e}");
        let public = rotate_ledger_keys(&dir, Timestamp::from_unix(now_secs())).unwrap();
        assert_eq!(public.retired.len(), 1, "the pair is not listed twice");
        verify_checkpoint(&live.sign_checkpoint(1, [1; 32]).unwrap(), &public).unwrap();
    }

    #[test]
    fn a_new_secret_others_can_read_is_refused_on_reload() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_tmp, dir) = log_dir();
        let live = LiveLedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
        rotate_ledger_keys(&dir, Timestamp::from_unix(now_secs())).unwrap();
        let path = dir.join("keys").join(ED25519_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = live.sign_checkpoint(1, [1; 32]).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        live.sign_checkpoint(1, [1; 32]).unwrap();
    }

    #[test]
    fn a_rotation_before_the_first_start_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let e =
            rotate_ledger_keys(&tmp.path().join("ledger"), Timestamp::from_unix(1)).unwrap_err();
        assert!(
            e.to_string().contains("once its gateway has started"),
            "{e}"
        );
    }
}
