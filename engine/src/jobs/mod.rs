//! The job service: tenants submit jobs, workers claim them from a shared store and run
//! them through the sender to a gateway, with leases, retries and fair scheduling.
//!
//! - [`model`]: job spec, lifecycle state machine, retry and fair-share decisions (pure).
//! - [`store`]: the queue and job records ([`store::JobStore`] over [`sql`]: SQLite
//!   embedded, PostgreSQL shared by several gateways).
//! - [`runner`]: the worker loop that claims, runs, heartbeats and finishes jobs.

pub mod model;
pub mod runner;
pub mod schema;
pub mod sql;
pub mod store;

pub use model::{Job, JobSpec, JobState, Outcome, Transition};
pub use store::{JobStore, SqlStore, StoreError};
