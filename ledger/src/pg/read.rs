//! Reading the shared log: the whole-log audit, proofs and tiles.

use super::*;

impl PgLedger {
    /// Re-checks the whole log against its latest signed checkpoint: every stored hash is
    /// recomputed from the entries (in order, none missing), the root must be the
    /// checkpoint's, and `check_entry` is called on every entry (to verify the documents'
    /// own signatures). Holds the tree's right edge and one batch of hashes in memory, whatever
    /// the log's size.
    pub async fn verify_all(
        &self,
        mut check_entry: impl FnMut(u64, &[u8]) -> std::result::Result<(), String>,
    ) -> Result<VerifiedCheckpoint> {
        let cp = self.refresh().await?;
        let verified = verify_checkpoint(&cp.note, &self.public_keys_held())?;
        let client = self.pool.get().await.map_err(db)?;
        let mut computed: HashMap<u64, Hash> = HashMap::new();
        let mut i = 0u64;
        const BATCH: u64 = 512;
        while i < verified.size {
            let end = (i + BATCH).min(verified.size);
            let (lo, hi) = (as_i64(i), as_i64(end));
            let rows = client
                .query(
                    "SELECT idx, data FROM ledger_entries WHERE origin = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                    &[&self.origin, &lo, &hi],
                )
                .await
                .map_err(db)?;
            let (hlo, hhi) = (
                as_i64(tlog_tiles::stored_hash_count(i)),
                as_i64(tlog_tiles::stored_hash_count(end)),
            );
            let stored: HashMap<i64, Vec<u8>> = client
                .query(
                    "SELECT idx, hash FROM ledger_hashes WHERE origin = $1 AND idx >= $2 AND idx < $3",
                    &[&self.origin, &hlo, &hhi],
                )
                .await
                .map_err(db)?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for r in rows {
                let idx: i64 = r.get(0);
                let corrupt = |what: String| LedgerError::Corrupt { entry: i, what };
                if idx != as_i64(i) {
                    return Err(corrupt("missing from the database".into()));
                }
                let data: Vec<u8> = r.get(1);
                let want = tlog_tiles::stored_hashes(i, &data, &TwoPass::Answer(&computed))
                    .map_err(|e| corrupt(format!("recomputing tree hashes: {e}")))?;
                let first = tlog_tiles::stored_hash_count(i);
                for (k, h) in want.into_iter().enumerate() {
                    let at = first + k as u64;
                    if stored.get(&as_i64(at)).map(Vec::as_slice) != Some(&h.0[..]) {
                        return Err(corrupt(if k == 0 {
                            "stored leaf hash does not match the entry".into()
                        } else {
                            "stored subtree hash does not match the entries".into()
                        }));
                    }
                    computed.insert(at, h);
                }
                check_entry(i, &data).map_err(corrupt)?;
                i += 1;
            }
            if i < end {
                return Err(LedgerError::Corrupt {
                    entry: i,
                    what: "missing from the database".into(),
                });
            }
            // Later entries and the root read only the tree's right edge.
            let edge = right_edge(i);
            computed.retain(|k, _| edge.contains(k));
        }
        let root = tlog_tiles::tree_hash(verified.size, &TwoPass::Answer(&computed))
            .map_err(|e| LedgerError::Damaged(format!("recomputing the root: {e}")))?;
        if root.0 != verified.root {
            return Err(LedgerError::Damaged(
                "the tree's root does not match the signed checkpoint".into(),
            ));
        }
        Ok(verified)
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>> {
        self.check_size(size).await?;
        crate::proof::inclusion_request(index, size)?;
        let client = self.pool.get().await.map_err(db)?;
        let proof = with_hashes(&client, &self.origin, &mut HashMap::new(), |r| {
            tlog_tiles::prove_record(size, index, r)
        })
        .await?;
        Ok(proof.into_iter().map(|h| h.0).collect())
    }

    /// Leaf hashes of entries `from..to`, read from the stored hashes; see
    /// [`crate::Ledger::leaf_hashes`].
    pub async fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>> {
        self.check_size(to).await?;
        let indexes: Vec<i64> = crate::store::leaf_hash_indexes(from, to)?
            .into_iter()
            .map(as_i64)
            .collect();
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query(
                "SELECT idx, hash FROM ledger_hashes WHERE origin = $1 AND idx = ANY($2)",
                &[&self.origin, &indexes],
            )
            .await
            .map_err(db)?;
        let mut found = HashMap::with_capacity(rows.len());
        for r in rows {
            let idx: i64 = r.get(0);
            let bytes: Vec<u8> = r.get(1);
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| LedgerError::Damaged(format!("stored hash {idx} is not 32 bytes")))?;
            found.insert(idx, hash);
        }
        indexes
            .iter()
            .map(|i| {
                found
                    .get(i)
                    .copied()
                    .ok_or_else(|| LedgerError::Damaged(format!("stored hash {i} is missing")))
            })
            .collect()
    }

    /// Consistency proof from the tree of `old` entries to the tree of `new` entries.
    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        self.check_size(new).await?;
        if !crate::proof::consistency_request(old, new)? {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await.map_err(db)?;
        let proof = with_hashes(&client, &self.origin, &mut HashMap::new(), |r| {
            tlog_tiles::prove_tree(new, old, r)
        })
        .await?;
        Ok(proof.into_iter().map(|h| h.0).collect())
    }

    pub(super) async fn check_size(&self, size: u64) -> Result<()> {
        let have = if size > self.size() {
            self.refresh().await?.size
        } else {
            self.size()
        };
        if size > have {
            return Err(LedgerError::InvalidRequest(format!(
                "tree size {size} is larger than the log ({have})"
            )));
        }
        Ok(())
    }

    /// A C2SP tlog-proof of entry `index` against `checkpoint`.
    pub async fn tlog_proof_in(
        &self,
        index: u64,
        checkpoint: &SignedCheckpoint,
    ) -> Result<TlogProof> {
        Ok(TlogProof {
            extra: None,
            index,
            proof: self.inclusion_proof(index, checkpoint.size).await?,
            checkpoint: checkpoint.note.clone(),
        })
    }

    /// Hash tile `path` (C2SP tlog-tiles, height 8), bounded by the checkpoint held.
    pub async fn tile(&self, path: &str) -> Result<Vec<u8>> {
        let tile = crate::store::parse_hash_tile(path, self.size())?;
        let client = self.pool.get().await.map_err(db)?;
        with_hashes(&client, &self.origin, &mut HashMap::new(), |r| {
            tile.read_data(r)
        })
        .await
    }
}
