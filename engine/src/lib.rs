//! Trackshift engine: chunking and hashing of sources, the `trackshift/1` wire protocol,
//! the QUIC transport, the receiving gateway and the sender.
//!
//! - [`scan`]: list and hash local sources (manifests without a transfer).
//! - [`protocol`]: frames, codec and the sender/receiver state machines (no I/O).
//! - [`tls`], [`transport`]: rustls + quinn set-up (post-quantum key exchange, tuning).
//! - [`gateway`]: receives jobs, verifies chunks, writes through connectors, signs.
//! - [`budget`]: the in-flight budget sends share, sized by chunk latency (LEDBAT-style).
//! - [`sender`]: reads a source and drives a job to completion, resuming after faults.
//! - [`jobs`]: the job service (queue, lifecycle, leases, fair scheduling, workers).
//! - [`tenants`]: tenant keys and policy (sources, destinations, classifications, quotas).
//! - [`quota`]: the per-tenant quotas the gateway enforces (jobs, bandwidth, memory).
//! - [`pool`]: reusable chunk buffers (no fresh zeroed pages per chunk).
//! - [`operator`]: the operator key of the HTTP operator endpoints.

pub mod audit;
pub mod budget;
pub mod gateway;
pub mod jobs;
pub mod keybundle;
pub mod operator;
pub mod pool;
pub mod protocol;
pub mod quota;
mod record;
pub mod scan;
pub mod sender;
pub mod service;
pub mod telemetry;
pub mod tenants;
pub mod tls;
pub mod trace;
pub mod transport;

pub use scan::{ScanError, scan_path};

/// The destinations jobs write to (re-exported so the binary needs only the engine).
pub use trackshift_connectors as connectors;
