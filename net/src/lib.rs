//! The connection pieces more than one crate needs, below all of them: one TLS
//! server-certificate verifier built from a policy ([`verify`]: the gateway's pinned
//! certificate, libpq's lenient modes), and the PostgreSQL URL grammar and pool builder of
//! the shared ledger and the job store ([`pgconn`]).

pub mod pgconn;
pub mod verify;
