//! A consistent copy of the log as of one signed checkpoint, taken while a writer appends
//! (for `trackshift backup`).

use super::*;

/// The files of a log, in the order [`Ledger::copy_to`] writes them into a new directory.
pub const COPIED_FILES: [&str; 5] = [ENTRIES, INDEX, HASHES, CHECKPOINT, PUBLIC_KEYS_FILE];

impl Ledger {
    /// Copies the log as of the checkpoint this handle holds into `dst` (a directory that
    /// must not hold a log yet): `entries.log`, `index.log` and `hashes.log` cut to what
    /// the checkpoint covers, the checkpoint itself and `public-keys.json`. The signing
    /// keys are not copied (they are secrets; the caller decides where they go).
    ///
    /// The data files only ever grow past a committed checkpoint, so the prefixes copied
    /// from a log a gateway is appending to are the ones the checkpoint signed. The copy
    /// is then opened read-only and checked: its stored hashes must give the checkpoint's
    /// root (a full re-check of every entry is [`Ledger::verify_all`] on the copy).
    /// Returns the checkpoint the copy holds.
    pub fn copy_to(&self, dst: &Path) -> Result<Arc<SignedCheckpoint>> {
        let cp = self.checkpoint();
        let inner = &self.inner;
        std::fs::create_dir_all(dst).map_err(LedgerError::io("creating", dst))?;
        let n = cp.size;
        let entries_len = if n == 0 {
            0
        } else {
            let mut off = [0u8; 8];
            inner
                .files
                .index
                .read_exact_at(&mut off, (n - 1) * 8)
                .map_err(LedgerError::io("reading", inner.dir.join(INDEX)))?;
            let off = u64::from_be_bytes(off);
            let mut len = [0u8; 4];
            inner
                .files
                .entries
                .read_exact_at(&mut len, off)
                .map_err(LedgerError::io("reading", inner.dir.join(ENTRIES)))?;
            off + 4 + u64::from(u32::from_be_bytes(len)) + 4
        };
        for (file, name, len) in [
            (&inner.files.entries, ENTRIES, entries_len),
            (&inner.files.index, INDEX, n * 8),
            (
                &inner.files.hashes,
                HASHES,
                tlog_tiles::stored_hash_count(n) * 32,
            ),
        ] {
            copy_prefix(file, &inner.dir.join(name), &dst.join(name), len)?;
        }
        let public = self.public_keys();
        for (name, text) in [
            (CHECKPOINT, cp.note.clone()),
            (PUBLIC_KEYS_FILE, crate::rotation::public_keys_json(&public)),
        ] {
            let path = dst.join(name);
            trackshift_crypto::filestore::write_atomic(&path, text.as_bytes(), 0o644)
                .map_err(|e| LedgerError::Damaged(e.to_string()))?;
        }
        let copy = Ledger::open_read_only(dst, Some(public))?;
        if copy.checkpoint().note != cp.note {
            return Err(LedgerError::Damaged(format!(
                "the copy in {} holds another checkpoint than the one copied",
                dst.display()
            )));
        }
        Ok(cp)
    }
}

/// Writes the first `len` bytes of `src` (at `src_path`) to a new file `dst`, fsynced.
fn copy_prefix(src: &File, src_path: &Path, dst: &Path, len: u64) -> Result<()> {
    use std::io::Write as _;
    let have = file_len(src, src_path)?;
    if have < len {
        return Err(LedgerError::Damaged(format!(
            "{} holds {have} bytes, the checkpoint covers {len}",
            src_path.display()
        )));
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dst)
        .map_err(LedgerError::io("creating", dst))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        src.read_exact_at(&mut buf[..want], at)
            .map_err(LedgerError::io("reading", src_path))?;
        out.write_all(&buf[..want])
            .map_err(LedgerError::io("writing", dst))?;
        at += want as u64;
    }
    out.sync_all().map_err(LedgerError::io("syncing", dst))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_taken_between_appends_is_the_prefix_its_checkpoint_signed() {
        let tmp = tempfile::tempdir().unwrap();
        let log = Ledger::open(tmp.path().join("log"), "test/backup").unwrap();
        for i in 0..5u8 {
            log.append_blocking(vec![vec![i; 100 + usize::from(i)]])
                .unwrap();
        }
        // A reader's view (as `trackshift backup` takes it), then the writer goes on.
        let reader = Ledger::open_read_only(tmp.path().join("log"), None).unwrap();
        log.append_blocking(vec![b"after".to_vec()]).unwrap();
        let cp = reader.copy_to(&tmp.path().join("copy")).unwrap();
        assert_eq!(cp.size, 5);
        let copy = Ledger::open_read_only(tmp.path().join("copy"), None).unwrap();
        let v = copy.verify_all(|_, _| Ok(())).unwrap();
        assert_eq!((v.size, v.root), (5, log.root_at(5).unwrap()));
        assert_eq!(copy.entry(4).unwrap(), vec![4u8; 104]);
        assert!(copy.entry(5).is_err());
        // A second copy into the same place is refused rather than mixed in.
        assert!(reader.copy_to(&tmp.path().join("copy")).is_err());
        // The copy's checkpoint is consistent with the original's later one.
        let later = log.checkpoint();
        let proof = log.consistency_proof(5, later.size).unwrap();
        crate::verify_consistency(5, later.size, &cp.root, &later.root, &proof).unwrap();
    }
}
