//! Each side's connection protocol as a state machine with no I/O, in the manner of
//! quinn-proto: inputs are frames, stream events and time (a `Duration` since a start the
//! caller picks); outputs are actions, polled, and the next deadline. The QUIC code in
//! `crate::sender` and `crate::gateway` only moves bytes between these and quinn, so every
//! protocol decision (Hello and authentication, the handle table, which reply answers what,
//! reopen backoff, round-robin scheduling within the in-flight budget, cancel, reconnect)
//! is tested here, on a simulated network with virtual time (`harness`), without sockets.
//!
//! - `sender`: [`SenderSession`], every job of one send across its connections.
//! - `receiver`: [`ReceiverSession`], one connection at the gateway.
//! - `window`: [`Window`], the sender's in-flight window, fixed or adaptive.

pub mod receiver;
pub mod sender;
pub mod window;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;

pub use receiver::{Finished, ReceiverAction, ReceiverSession, Refusal};
pub use sender::{
    Action, CANCEL_GRACE, ChunkOrder, Fatal, JobEnd, Phase, Reconnect, SenderSession, SessionJob,
    Want,
};
pub use window::Window;
