//! Rotating the ledger's checkpoint keys on a running gateway.
//!
//! ```text
//! LOG/keys/log-ed25519.key       first Ed25519 log key seed (hex, 0600)
//! LOG/keys/cosigner-mldsa44.key  first ML-DSA-44 cosigner key seed (hex, 0600)
//! LOG/keys/ledger-keys.json      after the first rotation, instead of the two above (0600):
//!                                {"format", "log_seed", "cosigner_seed" (hex),
//!                                 "retired": the public verifier keys of the pairs used
//!                                 before, each with the end of its window}
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
use crate::note::{ED25519_FILE, LedgerKeys, LedgerPublicKeys, MLDSA_FILE};
use crate::store::now_secs;

/// File in the ledger's key directory holding the keys after the first rotation.
pub const ROTATED_KEYS_FILE: &str = "ledger-keys.json";
const ROTATED_KEYS_FORMAT: &str = "trackshift.ledger-keys.v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotatedKeys {
    format: String,
    log_seed: String,
    cosigner_seed: String,
    retired: Vec<RetiredLedgerKeys>,
}

impl Drop for RotatedKeys {
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

/// The keys in `dir` and the pairs they retired: `ledger-keys.json` when a rotation wrote
/// it, else the first seed files (generated on first use).
fn load_keys(dir: &Path, origin: &str) -> Result<(LedgerKeys, Vec<RetiredLedgerKeys>)> {
    let path = dir.join(ROTATED_KEYS_FILE);
    let Some(bytes) = read_secret_if_exists(&path).map_err(|e| LedgerError::Key(e.to_string()))?
    else {
        return Ok((LedgerKeys::load_or_generate(dir, origin)?, Vec::new()));
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
    let keys = LedgerKeys::from_seeds(
        origin,
        &*seed_from_hex(&file.log_seed, &path)?,
        &*seed_from_hex(&file.cosigner_seed, &path)?,
    )?;
    Ok((keys, file.retired.clone()))
}

fn public_with_history(keys: &LedgerKeys, retired: Vec<RetiredLedgerKeys>) -> LedgerPublicKeys {
    let mut public = keys.public_keys();
    public.retired = retired;
    public
}

/// Identity of the key files' current versions (`None`: absent).
type Stamp = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;

fn stamp(keys_dir: &Path) -> Stamp {
    [ROTATED_KEYS_FILE, ED25519_FILE, MLDSA_FILE]
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
    // next look.
    let stamp = stamp(dir);
    let (keys, retired) = load_keys(dir, origin)?;
    let public = public_with_history(&keys, retired);
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
/// once. Not for a ledger shared through PostgreSQL (its keys are pinned in the database).
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
        for name in [ED25519_FILE, MLDSA_FILE] {
            read_secret(&keys_dir.join(name)).map_err(|e| LedgerError::Key(e.to_string()))?;
        }
    }
    let (current, mut retired) = load_keys(&keys_dir, &old.origin)?;
    let current = current.public_keys();
    retired.push(RetiredLedgerKeys {
        log_key: current.log_key,
        cosigner_key: current.cosigner_key,
        not_after: Timestamp::from_unix(now_secs().saturating_add(1)),
    });
    let mut file = RotatedKeys {
        format: ROTATED_KEYS_FORMAT.to_string(),
        log_seed: new_seed()?.to_string(),
        cosigner_seed: new_seed()?.to_string(),
        retired,
    };
    let new = LedgerKeys::from_seeds(
        &old.origin,
        &*seed_from_hex(&file.log_seed, &keys_dir)?,
        &*seed_from_hex(&file.cosigner_seed, &keys_dir)?,
    )?;
    // The commit point: one rename replaces the old pair by the new one and its history.
    // The writer may sign with the old pair until it sees the file, so the old window must
    // end after the second the file appeared in: when the write ended in a later second
    // than it began, the window is extended to the end of that second and written again.
    loop {
        let json = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("keys serialise"));
        write_atomic(&keys_dir.join(ROTATED_KEYS_FILE), &json, 0o600)
            .map_err(|e| LedgerError::Key(e.to_string()))?;
        let after = now_secs();
        let end = &mut file.retired.last_mut().expect("just pushed").not_after;
        if after < end.unix() {
            break;
        }
        *end = Timestamp::from_unix(after.saturating_add(1));
    }
    let public = public_with_history(&new, file.retired.clone());
    drop(file);
    // The first seeds are no longer read; their secrets need not stay on disk.
    for name in [ED25519_FILE, MLDSA_FILE] {
        match std::fs::remove_file(keys_dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = name, error = %e, "could not remove a retired ledger seed")
            }
        }
    }
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
        let start = now_secs();
        let public = rotate_ledger_keys(&dir).unwrap();
        let end = now_secs();
        assert_eq!(public.retired.len(), 1);
        let not_after = public.retired[0].not_after.unix();
        assert!((start + 1..=end + 1).contains(&not_after), "{not_after}");
        let now = not_after - 1;
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
        let public = rotate_ledger_keys(&dir).unwrap();
        let note = live.sign_checkpoint(1, [1; 32]).unwrap();
        assert_eq!(live.public_keys(), public);
        // Signed by the new pair: it verifies without the retired pair.
        let mut current_only = public.clone();
        current_only.retired.clear();
        verify_checkpoint(&note, &current_only).unwrap();
        verify_checkpoint(&note, &first).unwrap_err();
        // Twice more: the history grows, every pair kept.
        rotate_ledger_keys(&dir).unwrap();
        let public = rotate_ledger_keys(&dir).unwrap();
        assert_eq!(public.retired.len(), 3);
        verify_checkpoint(&note, &public).unwrap();
        verify_checkpoint(&live.sign_checkpoint(2, [2; 32]).unwrap(), &public).unwrap();
    }

    #[test]
    fn the_first_seeds_are_gone_after_a_rotation_and_a_restart_keeps_the_history() {
        let (_tmp, dir) = log_dir();
        let keys_dir = dir.join("keys");
        rotate_ledger_keys(&dir).unwrap();
        let public = rotate_ledger_keys(&dir).unwrap();
        for name in [ED25519_FILE, MLDSA_FILE] {
            assert!(!keys_dir.join(name).exists(), "{name}");
        }
        let mode = std::fs::metadata(keys_dir.join(ROTATED_KEYS_FILE))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restart loads the rotated keys (it does not generate first seeds again).
        let again = LiveLedgerKeys::load_or_generate(&keys_dir, ORIGIN).unwrap();
        assert_eq!(again.public_keys(), public);
        assert!(!keys_dir.join(ED25519_FILE).exists());
        let on_disk: LedgerPublicKeys = serde_json::from_str(
            &std::fs::read_to_string(dir.join(crate::store::PUBLIC_KEYS_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(on_disk, public);
        // The key file's errors never quote it (it holds seeds).
        std::fs::write(keys_dir.join(ROTATED_KEYS_FILE), b"{\"format\": \"s3cr3t").unwrap();
        let e = LiveLedgerKeys::load_or_generate(&keys_dir, ORIGIN).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    fn a_new_secret_others_can_read_is_refused_on_reload() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_tmp, dir) = log_dir();
        let live = LiveLedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
        rotate_ledger_keys(&dir).unwrap();
        let path = dir.join("keys").join(ROTATED_KEYS_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = live.sign_checkpoint(1, [1; 32]).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        live.sign_checkpoint(1, [1; 32]).unwrap();
    }

    #[test]
    fn a_rotation_before_the_first_start_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let e = rotate_ledger_keys(&tmp.path().join("ledger")).unwrap_err();
        assert!(
            e.to_string().contains("once its gateway has started"),
            "{e}"
        );
    }
}
