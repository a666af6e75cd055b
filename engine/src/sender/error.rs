//! Why a send failed ([`SendError`]), why a source could not be read once it was under way
//! ([`SourceReadError`]), and why a connection was lost ([`ConnectionLost`]).

use std::path::PathBuf;
use std::sync::Arc;

use crate::protocol::ProtocolError;
use crate::protocol::session::Fatal;

/// Why a send failed. Cheap to clone: a connection that fails gives every job it carried
/// the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The source could not be read.
    #[error(transparent)]
    Source(Arc<crate::scan::ScanError>),
    /// The gateway refused the connection (bad token, version).
    #[error("gateway refused the connection: {0}")]
    Refused(String),
    /// The gateway failed the job.
    #[error("job failed at the gateway: {reason}")]
    JobFailed {
        /// The gateway's reason.
        reason: String,
        /// True when retrying cannot help.
        permanent: bool,
    },
    /// The gateway had no room for the job (its tenant is at `max_concurrent_jobs`)
    /// however long the send waited: nothing is wrong with the job; try again later.
    #[error("the gateway is busy with this tenant's other jobs: {reason}")]
    Busy {
        /// The gateway's reason (names the quota).
        reason: String,
    },
    /// The protocol was broken (by either side).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Connecting or the connection failed.
    #[error("connection: {0}")]
    Connection(ConnectionLost),
    /// Endpoint set-up.
    #[error(transparent)]
    Transport(Arc<crate::transport::TransportError>),
    /// A source file could not be read during the send (removed, changed, I/O error).
    #[error("reading the source: {0}")]
    SourceRead(Arc<SourceReadError>),
    /// The send was cancelled (see [`SendConfig::cancel`]).
    #[error("cancelled")]
    Cancelled,
    /// Gave up after repeated connection failures.
    #[error(
        "gave up after {attempts} connection attempts in {seconds} s without reaching the gateway; last error: {last}"
    )]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Seconds since the gateway was last reachable.
        seconds: u64,
        /// The last error.
        last: String,
    },
}

/// Why a source file could not be read once the send was under way.
#[derive(Debug, thiserror::Error)]
pub enum SourceReadError {
    /// The file could not be opened (again).
    #[error("{}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not the one listed: device, inode, size or modification time differ.
    #[error(
        "{}: the file changed while it was being sent (it is not the file first read: device, inode, size or modification time differ); send it again",
        path.display()
    )]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// Reading a chunk failed (a file truncated while it was sent ends here).
    #[error("{}: {source} (did the file change?)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A confined source refused the open (a link, a path leaving the tenant's root).
    #[error(transparent)]
    Confined(#[from] crate::scan::ScanError),
}

/// Why a connection to the gateway was lost, or never made. Cheap to clone: when a
/// connection fails, every job it carried gets the same one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectionLost {
    /// The local QUIC endpoint could not be set up.
    #[error("setting up the endpoint: {0}")]
    Endpoint(Arc<crate::transport::TransportError>),
    /// The handshake failed or timed out.
    #[error(transparent)]
    Connect(Arc<crate::transport::TransportError>),
    /// The connection closed or failed (a stream could not be opened).
    #[error(transparent)]
    Closed(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    /// Reading the control stream failed.
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
    /// A chunk stream was already finished or reset.
    #[error(transparent)]
    Stream(#[from] quinn::ClosedStream),
    /// The gateway's control frames did not decode.
    #[error(transparent)]
    Frames(#[from] ProtocolError),
    /// The gateway ended the control stream.
    #[error("gateway closed the control stream")]
    ControlEnded,
    /// The task reading a chunk of the source did not finish.
    #[error("reading a chunk: {0}")]
    ReadTask(Arc<tokio::task::JoinError>),
    /// The send stopped before this job was settled.
    #[error("the send ended early")]
    EndedEarly,
}

impl From<crate::scan::ScanError> for SendError {
    fn from(e: crate::scan::ScanError) -> Self {
        Self::Source(Arc::new(e))
    }
}

impl From<crate::transport::TransportError> for SendError {
    fn from(e: crate::transport::TransportError) -> Self {
        Self::Transport(Arc::new(e))
    }
}

impl From<Fatal> for SendError {
    fn from(e: Fatal) -> Self {
        match e {
            Fatal::Refused(reason) => Self::Refused(reason),
            Fatal::Protocol(e) => Self::Protocol(e),
        }
    }
}

impl SendError {
    pub(super) fn retryable(&self) -> bool {
        match self {
            SendError::Connection(ConnectionLost::Connect(e)) => {
                !matches!(**e, crate::transport::TransportError::Untrusted { .. })
            }
            SendError::Connection(_) => true,
            SendError::JobFailed { permanent, .. } => !permanent,
            _ => false,
        }
    }
}
