//! Connector errors.

use trackshift_crypto::IoError;

impl From<crate::DestinationError> for ConnectorError {
    fn from(e: crate::DestinationError) -> Self {
        ConnectorError::InvalidUri(e.0)
    }
}

/// Why a destination operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A secret file (credentials file, SSH key) is open to other users or unreadable.
    #[error(transparent)]
    Secret(#[from] trackshift_crypto::CryptoError),
    /// The destination URI is not understood.
    #[error("invalid destination: {0}")]
    InvalidUri(String),
    /// An object path is not a safe relative path.
    #[error("invalid object path {0:?}")]
    InvalidPath(String),
    /// A path would leave the destination directory (through a link, `..` or another
    /// mount). Says nothing of what is there.
    #[error("{0}")]
    NotAllowed(String),
    /// The object exists and this job did not create it: it is not replaced unless the
    /// destination allows `overwrite=true`.
    #[error(
        "{0} already exists at the destination and this job did not create it; it is not replaced unless the tenant's policy allows overwrite=true"
    )]
    Exists(String),
    /// The destination does not exist or is not usable.
    #[error("destination unavailable: {0}")]
    Unavailable(String),
    /// A file-system operation failed.
    #[error(transparent)]
    Io(#[from] trackshift_crypto::IoError),
    /// The destination does not hold what was written.
    #[error("{path}: destination holds {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// Object.
        path: String,
        /// Bytes the job wrote.
        expected: u64,
        /// Bytes the destination reports.
        actual: u64,
    },
    /// The destination holds other bytes than were written.
    #[error("{path}: content does not match what was sent: {what}")]
    HashMismatch {
        /// Object.
        path: String,
        /// What differed.
        what: String,
    },
    /// The request cannot be served by this destination (for example chunks too small
    /// for its part-size limits).
    #[error("{0}")]
    Unsupported(String),
    /// A remote service refused or failed an operation.
    #[error("{op} {destination}: {reason}")]
    Remote {
        /// The destination URI (no credentials).
        destination: String,
        /// What was being done.
        op: &'static str,
        /// Whether retrying later may succeed.
        transient: bool,
        /// The service's answer (credentials and signatures removed).
        reason: String,
    },
    /// A write outside the object's declared size.
    #[error("{path}: write of {len} bytes at offset {offset} exceeds size {size}")]
    OutOfRange {
        /// Object.
        path: String,
        /// Write offset.
        offset: u64,
        /// Write length.
        len: u64,
        /// Declared size.
        size: u64,
    },
}

impl ConnectorError {
    /// Whether retrying the same operation later may succeed (network blips, timeouts),
    /// as opposed to permanent failures (bad path, full disk, permissions).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io(IoError { source, .. }) => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ),
            Self::Remote { transient, .. } => *transient,
            _ => false,
        }
    }
}
