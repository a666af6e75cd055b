//! Typed errors of the crypto crate.

use std::path::PathBuf;

use crate::keys::{KeyId, Purpose};
use crate::timestamp::Timestamp;

/// Everything that can go wrong while handling keys, manifests and receipts.
///
/// Messages name what failed (which key, which field, which file) and never contain
/// secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A signature did not verify with the named key.
    #[error("bad signature: {what} does not verify with key {key_id}")]
    BadSignature {
        /// What was being verified (for example `manifest`).
        what: &'static str,
        /// The key the signature claims.
        key_id: KeyId,
    },
    /// The signature names a key the verifier does not know.
    #[error("unknown key: {0} is not in the public key set")]
    UnknownKey(KeyId),
    /// The signing key has been revoked; nothing it signed is accepted.
    #[error("revoked key: {key_id} was revoked{}", .revoked_at.map(|t| format!(" at {t}")).unwrap_or_default())]
    RevokedKey {
        /// The revoked key.
        key_id: KeyId,
        /// When it was revoked, if recorded.
        revoked_at: Option<Timestamp>,
    },
    /// The signature time lies outside the key's validity window.
    #[error("expired key: {key_id} is valid from {not_before} {}, but the signature was made at {signed_at}", .not_after.map(|t| format!("until {t}")).unwrap_or_else(|| "with no end".into()))]
    KeyNotValidAt {
        /// The key.
        key_id: KeyId,
        /// When the signature says it was made.
        signed_at: Timestamp,
        /// Start of the key's window.
        not_before: Timestamp,
        /// End of the key's window (exclusive), if any.
        not_after: Option<Timestamp>,
    },
    /// The key exists but belongs to another purpose or algorithm.
    #[error("wrong key: {key_id} is a {actual} key, but a {expected} signature was expected")]
    WrongKeyPurpose {
        /// The key.
        key_id: KeyId,
        /// The purpose the document needs.
        expected: Purpose,
        /// The purpose the key has.
        actual: Purpose,
    },
    /// A hash recorded in a document does not match the data or the rest of the document.
    #[error("hash mismatch: {0}")]
    HashMismatch(String),
    /// The input could not be parsed or breaks a structural rule of the format.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which kind of input (`manifest`, `receipt`, `public key file`, ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A document that must be signed carries no signature.
    #[error("{0} is not signed")]
    Unsigned(&'static str),
    /// No active key for the purpose exists in the key store.
    #[error("no active {0} key in the key store")]
    NoActiveKey(Purpose),
    /// A secret file (key, token, credentials) is open to users other than its owner.
    #[error(
        "refusing to use secret file {path}: mode {mode:04o} lets group or other users read or \
         change it; run `chmod 600 {path}`"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file is not a regular file (a directory, FIFO, device or socket).
    #[error("refusing to use secret file {path}: it is not a regular file")]
    NotARegularFile {
        /// The path.
        path: PathBuf,
    },
    /// The key store already exists where a new one was to be created.
    #[error("key store already exists at {0}")]
    AlreadyExists(PathBuf),
    /// A file-system operation failed.
    #[error(transparent)]
    Io(#[from] crate::IoError),
    /// The cryptographic backend failed (key generation, signing).
    #[error("crypto backend: {0}")]
    Backend(&'static str),
    /// A PKCS#11 module or token refused an operation (the PIN never appears here).
    #[error("HSM {token}: {action}: {source}")]
    Hsm {
        /// The token (by label) or the module (by path).
        token: String,
        /// What was being done.
        action: &'static str,
        /// The module's answer.
        #[source]
        source: Box<cryptoki::error::Error>,
    },
}

impl CryptoError {
    /// Builds a [`CryptoError::Malformed`].
    pub fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            what,
            reason: reason.into(),
        }
    }

    /// Builds a [`CryptoError::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io(IoError {
            action,
            path: path.into(),
            source,
        })
    }

    /// True when the error means "the document was checked and rejected" (as opposed to
    /// unreadable input or an environment problem). The CLI maps this to its exit code.
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Self::BadSignature { .. }
                | Self::UnknownKey(_)
                | Self::RevokedKey { .. }
                | Self::KeyNotValidAt { .. }
                | Self::WrongKeyPurpose { .. }
                | Self::HashMismatch(_)
                | Self::Unsigned(_)
        )
    }
}

/// A file-system operation that failed: what was being done, where, and the OS error.
/// Every library's error enum carries it as its `Io` variant.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct IoError {
    /// What was being done (`reading`, `writing`, ...).
    pub action: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// The error of `action` on `path`, as a `map_err` argument.
    pub fn at(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self {
            action,
            path,
            source,
        }
    }
}

/// Result alias of the crate.
pub type Result<T, E = CryptoError> = std::result::Result<T, E>;
