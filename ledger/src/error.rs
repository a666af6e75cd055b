//! Ledger errors.

use std::path::PathBuf;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
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
    /// An earlier write failed and could not be rolled back; the ledger refuses appends
    /// until it is reopened (which re-checks it).
    #[error("ledger stopped after a failed write: {0}")]
    Stopped(String),
}

impl LedgerError {
    /// True when something did not verify (bad signature, proof that does not match,
    /// damaged or altered log data): auditors treat this as a rejection rather than a usage
    /// error.
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Self::Proof(_) | Self::Checkpoint(_) | Self::Corrupt { .. } | Self::Damaged(_)
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// Result with [`LedgerError`].
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
