//! The operator key: what the gateway's operator endpoints ask for (`/metrics`,
//! `/dashboard`, and the details of `/health` and `/ready`), so that nothing about tenants
//! is shown to whoever reaches the HTTP port.
//!
//! It lives in `DATA/operator.key` (one line, created on first start with 256 random bits
//! in hex, mode 0600, read like every secret with
//! [`trackshift_crypto::filestore::read_secret`]). An operator may put a key of their own
//! there (at least [`MIN_OPERATOR_KEY_LEN`] characters; several gateways can share one)
//! and restart. Clients present it as `Authorization: Bearer KEY`. Only a SHA-256 digest
//! is kept in memory and keys are compared digest to digest in constant time. A tenant
//! key is never an operator key.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The file name of the operator key in the data directory.
pub const OPERATOR_KEY_FILE: &str = "operator.key";

/// Shortest operator key accepted (characters); the generated ones have 64.
pub const MIN_OPERATOR_KEY_LEN: usize = 32;

/// Why the operator key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum OperatorKeyError {
    /// The file is open to other users, not a regular file, or unreadable; or writing a
    /// new one failed.
    #[error("operator key: {0}")]
    Secret(#[from] trackshift_crypto::CryptoError),
    /// The data directory could not be created.
    #[error("creating {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The key in the file is too short or not one line of visible ASCII.
    #[error(
        "operator key {path}: must be one line of at least {MIN_OPERATOR_KEY_LEN} visible ASCII \
         characters (delete the file to have a new one generated)"
    )]
    Weak {
        /// The file.
        path: PathBuf,
    },
}

/// The operator key of a gateway (its digest; see the module docs).
pub struct OperatorKey {
    digest: [u8; 32],
    path: PathBuf,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl OperatorKey {
    /// Loads `DATA/operator.key`, creating it on first start. Returns the key and whether
    /// the file was created now.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), OperatorKeyError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OperatorKeyError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(OPERATOR_KEY_FILE);
        let (raw, created) = match trackshift_crypto::filestore::read_secret_if_exists(&path)? {
            Some(raw) => (raw, false),
            None => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| {
                    trackshift_crypto::CryptoError::Backend("random generator failed")
                })?;
                let text =
                    Zeroizing::new(format!("{}\n", hex::encode(bytes.as_ref())).into_bytes());
                trackshift_crypto::filestore::write_atomic(&path, &text, 0o600)?;
                (text, true)
            }
        };
        let key = raw.trim_ascii();
        if key.len() < MIN_OPERATOR_KEY_LEN || !key.iter().all(u8::is_ascii_graphic) {
            return Err(OperatorKeyError::Weak { path });
        }
        Ok((
            Self {
                digest: digest(key),
                path,
            },
            created,
        ))
    }

    /// The file the key is in (for messages: never the key itself).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `presented` is the operator key. Constant time in the key: digests of a
    /// fixed length are compared in full.
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            &digest(presented.as_bytes())[..],
            &self.digest[..],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_operator_key_is_created_owner_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) = OperatorKey::load_or_create(dir.path()).unwrap();
        assert!(created);
        let path = dir.path().join(OPERATOR_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(key.matches(text.trim()));
        let (again, created) = OperatorKey::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert!(again.matches(text.trim()), "persisted");
        assert!(!format!("{key:?}").contains(text.trim()), "never in Debug");
    }

    #[test]
    fn wrong_truncated_and_empty_keys_do_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = OperatorKey::load_or_create(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(OPERATOR_KEY_FILE)).unwrap();
        let text = text.trim();
        assert!(!key.matches(""));
        assert!(!key.matches(&text[..text.len() - 1]));
        assert!(!key.matches(&format!("{text}x")));
        assert!(!key.matches(&text.to_uppercase()));
        let other = OperatorKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!other.0.matches(text), "another gateway's key");
    }

    #[test]
    fn an_operator_key_open_to_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        OperatorKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(OPERATOR_KEY_FILE);
        for mode in [0o644, 0o640] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = OperatorKey::load_or_create(dir.path()).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("chmod 600 {}", path.display())),
                "{e}"
            );
        }
    }

    #[test]
    fn weak_operator_keys_chosen_by_hand_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OPERATOR_KEY_FILE);
        for weak in [
            "",
            "\n",
            "secret\n",
            "a key with spaces in it, long enough\n",
        ] {
            std::fs::write(&path, weak).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = OperatorKey::load_or_create(dir.path()).unwrap_err();
            assert!(matches!(e, OperatorKeyError::Weak { .. }), "{weak:?}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        let chosen = "x".repeat(MIN_OPERATOR_KEY_LEN);
        std::fs::write(&path, format!("{chosen}\n")).unwrap();
        let (key, created) = OperatorKey::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert!(key.matches(&chosen));
    }
}
