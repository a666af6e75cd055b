//! Ledger errors.

use std::path::PathBuf;
use trackshift_crypto::IoError;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A file-system operation failed.
    #[error(transparent)]
    Io(#[from] trackshift_crypto::IoError),
    /// Stored data is damaged; `entry` names the first entry found damaged.
    #[error("ledger corrupt at entry {entry}: {what}")]
    Corrupt {
        /// Index of the damaged entry (or the entry whose data could not be checked).
        entry: u64,
        /// What is wrong.
        what: String,
    },
    /// Stored data is damaged in a way not tied to one entry (missing files, bad checkpoint).
    #[error("ledger damaged: {0}")]
    Damaged(String),
    /// A checkpoint or note failed to parse or verify.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A proof did not verify.
    #[error("proof: {0}")]
    Proof(String),
    /// An input (proof file, checkpoint, key) is not well-formed.
    #[error("malformed {0}")]
    Malformed(String),
    /// A key could not be loaded, parsed or used.
    #[error("key: {0}")]
    Key(String),
    /// An entry larger than the ledger accepts.
    #[error("entry of {len} bytes exceeds the limit of {max} bytes")]
    EntryTooLarge {
        /// Entry length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A request the ledger cannot answer (index past the end, sizes out of order).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The ledger takes no appends: it is closed, or open read-only.
    #[error("ledger stopped: {0}")]
    Stopped(String),
    /// A time-stamp does not hold (a signature, the certificate chain, the message).
    #[error("time-stamp rejected: {0}")]
    TimeStamp(String),
}

impl LedgerError {
    /// True when something did not verify (bad signature, proof that does not match,
    /// damaged or altered log data): auditors treat this as a rejection rather than a usage
    /// error.
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Self::Proof(_)
                | Self::Checkpoint(_)
                | Self::Corrupt { .. }
                | Self::Damaged(_)
                | Self::TimeStamp(_)
        )
    }

    /// A copy of this error for each request of a failed batch (an I/O error keeps its
    /// kind and errno, so callers can tell `ENOSPC` from `EIO`).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Io(IoError {
                action,
                path,
                source,
            }) => Self::Io(IoError {
                action,
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::new(source.kind(), source.to_string()),
                },
            }),
            Self::Corrupt { entry, what } => Self::Corrupt {
                entry: *entry,
                what: what.clone(),
            },
            Self::Damaged(s) => Self::Damaged(s.clone()),
            Self::Checkpoint(s) => Self::Checkpoint(s.clone()),
            Self::Proof(s) => Self::Proof(s.clone()),
            Self::Malformed(s) => Self::Malformed(s.clone()),
            Self::Key(s) => Self::Key(s.clone()),
            Self::EntryTooLarge { len, max } => Self::EntryTooLarge {
                len: *len,
                max: *max,
            },
            Self::InvalidRequest(s) => Self::InvalidRequest(s.clone()),
            Self::Stopped(s) => Self::Stopped(s.clone()),
            Self::TimeStamp(s) => Self::TimeStamp(s.clone()),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| {
            Self::Io(IoError {
                action,
                path,
                source,
            })
        }
    }
}

/// Result with [`LedgerError`].
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
