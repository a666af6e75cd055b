//! How a failed command ends: its error printed with each cause once, and an exit code
//! per class of failure, so that a script can tell a wrong token from a dead network.
//! The codes are listed in `trackshift --help` and docs/RUNBOOK.md.

use trackshift_crypto::CryptoError;
use trackshift_engine::audit;
use trackshift_engine::sender::{ConnectionLost, SendError};
use trackshift_engine::transport::TransportError;

/// A document was checked and rejected (bad signature; unknown, revoked or expired key;
/// hash mismatch).
pub const VERIFICATION_FAILED: u8 = 1;
/// Bad arguments or input: a usage error (clap's own code), a malformed or unreadable file,
/// a source that does not exist; also any failure without a class of its own.
pub const USAGE: u8 = 2;
/// The gateway did not accept who we are (unknown token), or we did not accept who it is
/// (its certificate does not match `--fingerprint` or `--ca`).
pub const AUTHENTICATION: u8 = 3;
/// The gateway refused the job for good: its tenant's policy, a destination it cannot use.
pub const REFUSED: u8 = 4;
/// The gateway could not be reached, or stayed busy or failing for as long as the send
/// retried (try again later).
pub const NETWORK: u8 = 5;
/// The job completed but not every destination confirmed the data (see the receipts).
pub const PARTIAL: u8 = 6;

/// A completed send some of whose destinations did not confirm the data (exit
/// [`PARTIAL`]).
#[derive(Debug)]
pub struct Partial {
    /// Destinations that did not confirm.
    pub failed: usize,
    /// Destinations of the job.
    pub total: usize,
    /// Each one and why.
    pub detail: String,
}

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} destinations did not confirm the data: {}",
            self.failed, self.total, self.detail
        )
    }
}

impl std::error::Error for Partial {}

/// The exit code for `err`.
pub fn code(err: &anyhow::Error) -> u8 {
    for e in err.chain() {
        let verification = e
            .downcast_ref::<CryptoError>()
            .is_some_and(CryptoError::is_verification_failure)
            || e.downcast_ref::<trackshift_ledger::LedgerError>()
                .is_some_and(trackshift_ledger::LedgerError::is_verification_failure)
            || e.downcast_ref::<audit::AuditError>()
                .is_some_and(audit::AuditError::is_verification_failure)
            || matches!(
                e.downcast_ref::<trackshift_engine::keybundle::KeyBundleError>(),
                Some(trackshift_engine::keybundle::KeyBundleError::Rejected(_))
            );
        if verification {
            return VERIFICATION_FAILED;
        }
        if e.downcast_ref::<Partial>().is_some() {
            return PARTIAL;
        }
        if let Some(s) = e.downcast_ref::<SendError>() {
            return send_code(s);
        }
    }
    USAGE
}

fn send_code(e: &SendError) -> u8 {
    match e {
        SendError::Refused(_) => AUTHENTICATION,
        SendError::Connection(ConnectionLost::Connect(t))
            if matches!(**t, TransportError::Untrusted { .. }) =>
        {
            AUTHENTICATION
        }
        SendError::JobFailed {
            permanent: true, ..
        } => REFUSED,
        SendError::JobFailed { .. }
        | SendError::Busy { .. }
        | SendError::Connection(_)
        | SendError::GaveUp { .. } => NETWORK,
        SendError::Source(_)
        | SendError::SourceRead(_)
        | SendError::Protocol(_)
        | SendError::Transport(_)
        | SendError::Cancelled => USAGE,
    }
}

/// `err` and its causes as one line, each cause once: an error whose message already
/// carries its source's text (`path: No such file or directory`) is not followed by that
/// text again.
pub fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for e in err.chain() {
        let text = e.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_printed_again() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let err = anyhow::Error::new(trackshift_engine::scan::ScanError::Io {
            path: "/nonexistent".into(),
            source: io,
        });
        let m = message(&err);
        assert_eq!(m.matches(&text).count(), 1, "{m}");
        assert!(m.starts_with("/nonexistent"), "{m}");
        let wrapped = err.context("sending /nonexistent");
        assert_eq!(message(&wrapped).matches(&text).count(), 1);
    }

    #[test]
    fn each_class_of_send_failure_has_its_code() {
        let send = |e: SendError| code(&anyhow::Error::new(e));
        assert_eq!(
            send(SendError::Refused("unknown tenant token".into())),
            AUTHENTICATION
        );
        let untrusted = TransportError::Untrusted {
            addr: "127.0.0.1:1".parse().unwrap(),
            reason: "invalid peer certificate".into(),
        };
        assert_eq!(
            send(SendError::Connection(ConnectionLost::Connect(
                untrusted.into()
            ))),
            AUTHENTICATION
        );
        let policy = SendError::JobFailed {
            reason: "refused by policy".into(),
            permanent: true,
        };
        assert_eq!(send(policy), REFUSED);
        let gave_up = SendError::GaveUp {
            attempts: 3,
            seconds: 10,
            last: "timed out".into(),
        };
        assert_eq!(send(gave_up), NETWORK);
        assert_eq!(
            send(SendError::Busy {
                reason: "quota".into()
            }),
            NETWORK
        );
        let partial = Partial {
            failed: 1,
            total: 2,
            detail: "s3://b: failed".into(),
        };
        assert_eq!(code(&anyhow::Error::new(partial)), PARTIAL);
        assert_eq!(code(&anyhow::anyhow!("something else")), USAGE);
    }
}
