//! Trackshift connectors: destinations the gateway writes to (local disk, S3, Azure Blob,
//! SFTP, FTPS). The connector interface lands with the engine; this crate exists now so the
//! workspace layout is fixed from day one.
