//! A file key store that a long-running process keeps in step with the disk: keys rotated
//! or revoked by `trackshift keys rotate` / `keys revoke` (another process) take effect at
//! the next signature, without a restart.
//!
//! Every [`LiveKeyStore::signer`] call first compares the identity of `keyring.json`
//! (device, inode, size, modification and change times, one `stat`) with the file it
//! loaded; the store's writes replace the file by rename, so any change is seen. A changed
//! store is loaded again in full — the public records validated, every secret file checked
//! owner-only as at start ([`FileKeyStore::check_secret_files`]), the active keys' signers
//! built — before anything is signed. The signer returned is for the key valid at the
//! signing time in the store as it is now, carrying that key's current record, so a
//! signature can never be made with a key that the store says was retired before it
//! ([`crate::Signable::sign_with`] checks the record's window once more). If the changed
//! store does not load, nothing is signed until it does: the error names the cause.
//!
//! Why the signing time is always inside a window: `rotate` ends the old key's window at
//! the end of the current second and starts the new one at its start. A caller takes the
//! signing time, then asks for a signer: the store is read after the time was taken, so any
//! rotation it does not see happened later, and the old key is still valid then.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{CryptoError, Result};
use crate::filestore::{FileKeyStore, KEYRING_FILE};
use crate::keys::{KeyId, PublicKeyring, Purpose};
use crate::signer::{KeyBackend, Signer};
use crate::timestamp::Timestamp;

/// Identity of one version of `keyring.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self> {
        let m = std::fs::metadata(path).map_err(|e| CryptoError::io("reading", path, e))?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

struct Loaded {
    stamp: FileStamp,
    store: FileKeyStore,
    /// Signers by key id, built from the records of `store` (so their windows are current).
    signers: HashMap<KeyId, Arc<dyn Signer>>,
    /// How many times the store was loaded (1 at open).
    generation: u64,
}

/// What a reload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Whether the store on disk had changed (and was loaded again).
    pub changed: bool,
    /// Loads since open (1 = the store opened at start).
    pub generation: u64,
    /// The active key of each purpose after the reload.
    pub active: Vec<(Purpose, KeyId)>,
}

/// A [`FileKeyStore`] that follows the disk. See the module docs.
pub struct LiveKeyStore {
    dir: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for LiveKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKeyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn load(dir: &Path, generation: u64) -> Result<Loaded> {
    let stamp = FileStamp::of(&dir.join(KEYRING_FILE))?;
    let store = FileKeyStore::open(dir)?;
    store.check_secret_files()?;
    let mut signers = HashMap::new();
    for purpose in Purpose::ALL {
        let record = store
            .public_keyring()?
            .active(purpose)
            .cloned()
            .ok_or(CryptoError::NoActiveKey(purpose))?;
        signers.insert(record.id, store.load_signer(&record)?);
    }
    Ok(Loaded {
        stamp,
        store,
        signers,
        generation,
    })
}

impl LiveKeyStore {
    /// Opens the store in `dir`: records validated, every secret file checked, a signer for
    /// each purpose's active key built (so a process never finds at its first signature that
    /// it cannot sign).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let loaded = load(&dir, 1)?;
        Ok(Self {
            dir,
            loaded: Mutex::new(loaded),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the store again if it changed on disk since it was last loaded (`force`: even
    /// if it did not, as on SIGHUP). On error the keys loaded before stay in memory, but
    /// [`Self::signer`] signs nothing until the changed store loads.
    pub fn reload(&self, force: bool) -> Result<Reloaded> {
        let mut loaded = self.loaded.lock().expect("key store lock");
        let changed = self.refresh(&mut loaded, force)?;
        let ring = loaded.store.public_keyring()?;
        Ok(Reloaded {
            changed,
            generation: loaded.generation,
            active: Purpose::ALL
                .iter()
                .filter_map(|&p| ring.active(p).map(|k| (p, k.id)))
                .collect(),
        })
    }

    fn refresh(&self, loaded: &mut Loaded, force: bool) -> Result<bool> {
        let now = FileStamp::of(&self.dir.join(KEYRING_FILE))?;
        if !force && now == loaded.stamp {
            return Ok(false);
        }
        *loaded = load(&self.dir, loaded.generation + 1)?;
        Ok(true)
    }
}

impl KeyBackend for LiveKeyStore {
    /// The signer of the key valid for `purpose` at `at` in the store as it is on disk now
    /// (loaded again first if it changed). Take `at` before calling.
    fn signer(&self, purpose: Purpose, at: Timestamp) -> Result<Arc<dyn Signer>> {
        let mut loaded = self.loaded.lock().expect("key store lock");
        self.refresh(&mut loaded, false)?;
        let record = loaded.store.key_for(purpose, at)?.clone();
        if let Some(s) = loaded.signers.get(&record.id) {
            return Ok(s.clone());
        }
        // A retired key asked for a time inside its window (the second of a rotation).
        let signer = loaded.store.load_signer(&record)?;
        loaded.signers.insert(record.id, signer.clone());
        Ok(signer)
    }

    /// Every key the store on disk holds now (read again: what auditors must be given).
    fn public_keyring(&self) -> Result<PublicKeyring> {
        FileKeyStore::open(&self.dir)?.public_keyring()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::keys::KeyStatus;

    fn ts(s: u64) -> Timestamp {
        Timestamp::from_unix(s)
    }

    const T0: u64 = 1_800_000_000;

    #[test]
    fn a_rotation_by_another_process_is_used_at_the_next_signature_without_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        FileKeyStore::init(&path, ts(T0)).unwrap();
        let live = LiveKeyStore::open(&path).unwrap();
        for purpose in Purpose::ALL {
            let before = live.signer(purpose, ts(T0 + 5)).unwrap().public().clone();
            // `keys rotate` in another process.
            let new = FileKeyStore::open(&path)
                .unwrap()
                .rotate(purpose, ts(T0 + 10))
                .unwrap();
            // A signature timestamped after the rotation's second uses the new key.
            let after = live.signer(purpose, ts(T0 + 11)).unwrap();
            assert_eq!(after.public().id, new, "{purpose}");
            assert_eq!(after.public().status, KeyStatus::Active);
            // One timestamped inside the old key's window (taken before the rotation was
            // seen) gets the old key, with its now-closed window.
            let old = live.signer(purpose, ts(T0 + 9)).unwrap();
            assert_eq!(old.public().id, before.id, "{purpose}");
            assert_eq!(old.public().status, KeyStatus::Retired);
            assert_eq!(old.public().not_after, Some(ts(T0 + 11)));
            old.public().check_usable(purpose, ts(T0 + 10)).unwrap();
            old.public().check_usable(purpose, ts(T0 + 11)).unwrap_err();
        }
        assert_eq!(live.reload(false).unwrap().generation, 3);
    }

    #[test]
    fn a_held_key_retired_on_disk_never_signs_after_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        FileKeyStore::init(&path, ts(T0)).unwrap();
        let live = LiveKeyStore::open(&path).unwrap();
        let held = live.signer(Purpose::Receipt, ts(T0 + 1)).unwrap();
        let mut disk = FileKeyStore::open(&path).unwrap();
        disk.rotate(Purpose::Receipt, ts(T0 + 2)).unwrap();
        // Rotated again: the first key's window ended at T0 + 3.
        disk.rotate(Purpose::Receipt, ts(T0 + 4)).unwrap();
        for at in [T0 + 3, T0 + 4, T0 + 100] {
            let s = live.signer(Purpose::Receipt, ts(at)).unwrap();
            assert_ne!(s.public().id, held.public().id, "{at}");
            s.public().check_usable(Purpose::Receipt, ts(at)).unwrap();
        }
    }

    #[test]
    fn a_revoked_active_key_stops_signing_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        FileKeyStore::init(&path, ts(T0)).unwrap();
        let live = LiveKeyStore::open(&path).unwrap();
        let id = live.signer(Purpose::Manifest, ts(T0)).unwrap().public().id;
        FileKeyStore::open(&path)
            .unwrap()
            .revoke(&id, ts(T0 + 1))
            .unwrap();
        let e = live.signer(Purpose::Manifest, ts(T0 + 1)).err().unwrap();
        assert!(matches!(e, CryptoError::NoActiveKey(_)), "{e}");
    }

    #[test]
    fn a_rotated_store_with_a_secret_others_can_read_signs_nothing_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        FileKeyStore::init(&path, ts(T0)).unwrap();
        let live = LiveKeyStore::open(&path).unwrap();
        let new = FileKeyStore::open(&path)
            .unwrap()
            .rotate(Purpose::Receipt, ts(T0 + 10))
            .unwrap();
        let secret = path.join("secret").join(format!("{new}.json"));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        for purpose in Purpose::ALL {
            // Not even the other purpose, nor a time inside the old key's window: the store
            // in force is unknown until it loads.
            let e = live.signer(purpose, ts(T0 + 5)).err().unwrap();
            assert!(matches!(e, CryptoError::InsecurePermissions { .. }), "{e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        assert!(live.reload(true).is_err());
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = live.signer(Purpose::Receipt, ts(T0 + 11)).unwrap();
        assert_eq!(s.public().id, new);
    }

    #[test]
    fn an_unchanged_store_is_not_read_again_and_a_forced_reload_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        FileKeyStore::init(&path, ts(T0)).unwrap();
        let live = LiveKeyStore::open(&path).unwrap();
        let r = live.reload(false).unwrap();
        assert!(!r.changed);
        assert_eq!(r.generation, 1);
        assert_eq!(r.active.len(), 2);
        let r = live.reload(true).unwrap();
        assert!(r.changed);
        assert_eq!(r.generation, 2);
        // A store whose keyring vanished is an error naming the file, not a panic.
        std::fs::remove_file(path.join(KEYRING_FILE)).unwrap();
        let e = live.signer(Purpose::Manifest, ts(T0)).err().unwrap();
        assert!(e.to_string().contains("keyring.json"), "{e}");
    }
}
