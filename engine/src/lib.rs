//! Trackshift engine: chunking and hashing of sources; QUIC transport and jobs follow in
//! later issues.

pub mod protocol;
pub mod scan;

pub use scan::{ScanError, scan_path};
