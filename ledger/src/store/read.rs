//! Reading the log: entries, leaf hashes, roots, inclusion and consistency proofs, and
//! the whole-log check (`verify_all`).

use super::*;

impl Ledger {
    /// Reads entry `index`.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>> {
        let size = self.size();
        if index >= size {
            return Err(LedgerError::InvalidRequest(format!(
                "entry {index} does not exist (the log has {size})"
            )));
        }
        let inner = &self.inner;
        let ipath = inner.dir.join(INDEX);
        let mut off = [0u8; 8];
        inner
            .files
            .index
            .read_exact_at(&mut off, index * 8)
            .map_err(LedgerError::io("reading", &ipath))?;
        let off = u64::from_be_bytes(off);
        let epath = inner.dir.join(ENTRIES);
        let mut len = [0u8; 4];
        inner
            .files
            .entries
            .read_exact_at(&mut len, off)
            .map_err(LedgerError::io("reading", &epath))?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_ENTRY_LEN {
            return Err(LedgerError::Corrupt {
                entry: index,
                what: "frame length out of range".into(),
            });
        }
        let mut body = vec![0u8; n + 4];
        inner
            .files
            .entries
            .read_exact_at(&mut body, off + 4)
            .map_err(LedgerError::io("reading", &epath))?;
        if frame_crc(len, &body[..n]) != body[n..] {
            return Err(LedgerError::Corrupt {
                entry: index,
                what: "checksum mismatch".into(),
            });
        }
        body.truncate(n);
        Ok(body)
    }

    /// Leaf hashes (RFC 9162: `SHA-256(0x00 ‖ entry)`) of entries `from..to`, read from the
    /// stored hashes; at most [`MAX_LEAF_HASHES`] at a time.
    pub fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>> {
        self.check_size(to)?;
        let indexes = leaf_hash_indexes(from, to)?;
        self.reader()
            .read_hashes(&indexes)
            .map(|hs| hs.into_iter().map(|h| h.0).collect())
            .map_err(|e| LedgerError::Damaged(format!("reading leaf hashes: {e}")))
    }

    pub(super) fn reader(&self) -> DiskHashes<'_> {
        DiskHashes::committed(&self.inner.files.hashes, Path::new(HASHES))
    }

    /// Root hash of the tree of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Result<[u8; 32]> {
        self.check_size(size)?;
        tlog_tiles::tree_hash(size, &self.reader())
            .map(|h| h.0)
            .map_err(|e| LedgerError::Damaged(format!("reading tree hashes: {e}")))
    }

    pub(super) fn check_size(&self, size: u64) -> Result<()> {
        let have = self.size();
        if size > have {
            return Err(LedgerError::InvalidRequest(format!(
                "tree size {size} is larger than the log ({have})"
            )));
        }
        Ok(())
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries (RFC 9162 audit path).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>> {
        self.check_size(size)?;
        crate::proof::inclusion_request(index, size)?;
        tlog_tiles::prove_record(size, index, &self.reader())
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| LedgerError::Damaged(format!("building an inclusion proof: {e}")))
    }

    /// Consistency proof from the tree of `old` entries to the tree of `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        self.check_size(new)?;
        if !crate::proof::consistency_request(old, new)? {
            return Ok(Vec::new());
        }
        tlog_tiles::prove_tree(new, old, &self.reader())
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| LedgerError::Damaged(format!("building a consistency proof: {e}")))
    }

    /// A C2SP tlog-proof of entry `index` against the latest checkpoint.
    pub fn tlog_proof(&self, index: u64) -> Result<TlogProof> {
        self.tlog_proof_in(index, &self.checkpoint())
    }

    /// A C2SP tlog-proof of entry `index` against the given checkpoint of this log (for
    /// example the one an append returned).
    pub fn tlog_proof_in(&self, index: u64, checkpoint: &SignedCheckpoint) -> Result<TlogProof> {
        Ok(TlogProof {
            extra: None,
            index,
            proof: self.inclusion_proof(index, checkpoint.size)?,
            checkpoint: checkpoint.note.clone(),
        })
    }

    /// Re-checks the whole log: every frame's checksum and index, every stored hash
    /// recomputed from the entries, the root against the signed checkpoint and the
    /// checkpoint's signatures. `check_entry` is called on every entry (to verify the
    /// documents' own signatures); its error is reported with the entry's index.
    pub fn verify_all(
        &self,
        mut check_entry: impl FnMut(u64, &[u8]) -> std::result::Result<(), String>,
    ) -> Result<VerifiedCheckpoint> {
        let cp = self.checkpoint();
        let verified = verify_checkpoint(&cp.note, &self.public_keys())?;
        let inner = &self.inner;
        let epath = inner.dir.join(ENTRIES);
        let ipath = inner.dir.join(INDEX);
        let hpath = inner.dir.join(HASHES);
        let mut entries = BufReader::with_capacity(
            1 << 20,
            File::open(&epath).map_err(LedgerError::io("opening", &epath))?,
        );
        let mut index =
            BufReader::new(File::open(&ipath).map_err(LedgerError::io("opening", &ipath))?);
        let mut hashes =
            BufReader::new(File::open(&hpath).map_err(LedgerError::io("opening", &hpath))?);
        let reader = DiskHashes::committed(&inner.files.hashes, &hpath);
        walk_entries(&mut entries, &mut index, verified.size, |i, entry| {
            let corrupt = |what: String| LedgerError::Corrupt { entry: i, what };
            let want = tlog_tiles::stored_hashes(i, &entry, &reader)
                .map_err(|e| corrupt(format!("recomputing tree hashes: {e}")))?;
            for (k, w) in want.iter().enumerate() {
                let mut h = [0u8; 32];
                hashes
                    .read_exact(&mut h)
                    .map_err(|_| corrupt("hashes.log ends early".into()))?;
                if h != w.0 {
                    return Err(corrupt(if k == 0 {
                        "stored leaf hash does not match the entry".into()
                    } else {
                        "stored subtree hash does not match the entries".into()
                    }));
                }
            }
            check_entry(i, &entry).map_err(corrupt)
        })?;
        let root = tlog_tiles::tree_hash(verified.size, &reader)
            .map_err(|e| LedgerError::Damaged(format!("reading tree hashes: {e}")))?;
        if root.0 != verified.root {
            return Err(LedgerError::Damaged(
                "the tree's root does not match the signed checkpoint".into(),
            ));
        }
        Ok(verified)
    }
}
