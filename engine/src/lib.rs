//! Trackshift engine: chunking, hashing and (in later issues) QUIC transport and jobs.
