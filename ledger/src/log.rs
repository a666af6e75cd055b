//! One handle over either store of the log: files in the gateway's data directory
//! ([`Ledger`], one gateway) or PostgreSQL ([`PgLedger`], several gateways, one sequence).

use std::sync::Arc;

use crate::error::Result;
use crate::note::LedgerPublicKeys;
use crate::pg::PgLedger;
use crate::proof::{TlogProof, leaf_hash};
use crate::store::{Appended, Ledger, SignedCheckpoint};

/// The gateway's log, wherever it is stored.
#[derive(Debug, Clone)]
pub enum Log {
    /// Files in a directory (one writer process).
    File(Arc<Ledger>),
    /// PostgreSQL, shared by several gateways.
    Postgres(Arc<PgLedger>),
}

impl Log {
    /// Appends entries contiguously; see [`Ledger::append`].
    pub async fn append(&self, entries: Vec<Vec<u8>>) -> Result<Appended> {
        match self {
            Log::File(l) => l.append(entries).await,
            Log::Postgres(l) => l.append(entries).await,
        }
    }

    /// A C2SP tlog-proof of entry `index` against `checkpoint`.
    pub async fn tlog_proof_in(
        &self,
        index: u64,
        checkpoint: &SignedCheckpoint,
    ) -> Result<TlogProof> {
        match self {
            Log::File(l) => l.tlog_proof_in(index, checkpoint),
            Log::Postgres(l) => l.tlog_proof_in(index, checkpoint).await,
        }
    }

    /// The latest checkpoint, after catching up with other writers (checked).
    pub async fn refresh(&self) -> Result<Arc<SignedCheckpoint>> {
        match self {
            Log::File(l) => l.refresh(),
            Log::Postgres(l) => l.refresh().await,
        }
    }

    /// Leaf hashes of entries `from..to`; see [`Ledger::leaf_hashes`].
    pub async fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>> {
        match self {
            Log::File(l) => l.leaf_hashes(from, to),
            Log::Postgres(l) => l.leaf_hashes(from, to).await,
        }
    }

    /// Where `entries` were appended together (adjacent, in order) at or after index `from`
    /// of the latest checkpoint: the index of the first, or `None` when they are not there.
    /// A writer that may have died after an append looks for it with this before appending
    /// again, from the size the log had before that append.
    pub async fn find_appended(&self, from: u64, entries: &[Vec<u8>]) -> Result<Option<u64>> {
        let want: Vec<[u8; 32]> = entries.iter().map(|e| leaf_hash(e)).collect();
        let n = want.len() as u64;
        if n == 0 {
            return Ok(None);
        }
        const BATCH: u64 = 4096;
        if n > crate::store::MAX_LEAF_HASHES - BATCH {
            return Err(crate::LedgerError::InvalidRequest(format!(
                "cannot look for {n} adjacent entries at once"
            )));
        }
        let size = self.refresh().await?.size;
        let mut lo = from;
        while lo.checked_add(n).is_some_and(|end| end <= size) {
            // Windows starting at lo..=hi-n; the next batch starts at hi-n+1.
            let hi = (lo + BATCH + n - 1).min(size);
            let got = self.leaf_hashes(lo, hi).await?;
            if let Some(k) = got.windows(want.len()).position(|w| w == want.as_slice()) {
                return Ok(Some(lo + k as u64));
            }
            lo = hi - n + 1;
        }
        Ok(None)
    }

    /// Consistency proof from the tree of `old` entries to the tree of `new` entries.
    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        match self {
            Log::File(l) => l.consistency_proof(old, new),
            Log::Postgres(l) => l.consistency_proof(old, new).await,
        }
    }

    /// A hash tile (C2SP tlog-tiles).
    pub async fn tile(&self, path: &str) -> Result<Vec<u8>> {
        match self {
            Log::File(l) => l.tile(path),
            Log::Postgres(l) => l.tile(path).await,
        }
    }

    /// Loads the checkpoint keys again if their files changed (`force`: in any case); a
    /// file log's writer also does it before every checkpoint. The shared PostgreSQL log's
    /// keys are pinned in its database and never reload (`false`).
    pub fn reload_keys(&self, force: bool) -> Result<bool> {
        match self {
            Log::File(l) => l.reload_keys(force),
            Log::Postgres(_) => Ok(false),
        }
    }

    /// The log's public keys.
    pub fn public_keys(&self) -> LedgerPublicKeys {
        match self {
            Log::File(l) => l.public_keys(),
            Log::Postgres(l) => l.public_keys(),
        }
    }

    /// Entries in the checkpoint held.
    pub fn size(&self) -> u64 {
        match self {
            Log::File(l) => l.size(),
            Log::Postgres(l) => l.size(),
        }
    }

    /// The checkpoint held.
    pub fn checkpoint(&self) -> Arc<SignedCheckpoint> {
        match self {
            Log::File(l) => l.checkpoint(),
            Log::Postgres(l) => l.checkpoint(),
        }
    }

    /// Stops the file log's writer (nothing to do for PostgreSQL).
    pub fn close(&self) {
        if let Log::File(l) = self {
            l.close();
        }
    }
}
