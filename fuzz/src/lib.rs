//! What the fuzz targets run: the engine's pure parsers and state machines compiled from
//! their own sources (`engine/src/protocol/`, `engine/src/jobs/model.rs`), so that the
//! instrumented build does not pull in QUIC, SQLite and the connectors (it stays within
//! CI's few minutes), and the property checks of `checks.rs`.

#[path = "../../engine/src/protocol/mod.rs"]
pub mod protocol;

/// `trackshift_engine::trace`: the W3C trace context frames and jobs carry.
#[path = "../../engine/src/trace.rs"]
pub mod trace;

/// `trackshift_engine::jobs`' submission model (`JobSpec`).
#[path = "../../engine/src/jobs/model.rs"]
pub mod jobs;

/// `trackshift_connectors::destination`: destination strings parsed once (pure).
#[path = "../../connectors/src/destination/mod.rs"]
pub mod destination;

/// What the engine's sources call `crate::connectors`.
mod connectors {
    pub use super::destination;
}

/// What `checks.rs` calls `crate::engine` (in the engine's tests, `trackshift_engine`).
mod engine {
    pub use super::{jobs, protocol};
    pub mod connectors {
        pub use crate::destination;
    }
}

#[path = "../checks.rs"]
pub mod checks;
