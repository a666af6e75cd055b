//! Opening a log: the stored checkpoint, what it covers, and cutting what it does not.

use super::*;

/// Reads and verifies the stored checkpoint.
pub(super) fn load_checkpoint(
    cp_path: &Path,
    public: &LedgerPublicKeys,
) -> Result<SignedCheckpoint> {
    let note = match std::fs::read_to_string(cp_path) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LedgerError::Damaged(format!(
                "{} is missing but the log has data; refusing to guess its size",
                cp_path.display()
            )));
        }
        Err(e) => return Err(LedgerError::io("reading", cp_path)(e)),
    };
    let v = verify_checkpoint(&note, public)
        .map_err(|e| LedgerError::Damaged(format!("{}: {e}", cp_path.display())))?;
    Ok(SignedCheckpoint {
        size: v.size,
        root: v.root,
        note,
    })
}

/// Checks that the index and hash files hold everything checkpoint `cp` covers and that the
/// stored hashes give its root (O(log n) reads). Returns the two files' lengths.
pub(super) fn check_covers(dir: &Path, files: &Files, cp: &SignedCheckpoint) -> Result<(u64, u64)> {
    let ipath = dir.join(INDEX);
    let hpath = dir.join(HASHES);
    let n = cp.size;
    let need_hashes = tlog_tiles::stored_hash_count(n) * 32;
    let hashes_len = file_len(&files.hashes, &hpath)?;
    let index_len = file_len(&files.index, &ipath)?;
    if index_len < n * 8 {
        return Err(LedgerError::Corrupt {
            entry: index_len / 8,
            what: format!("index.log is missing entries (the checkpoint covers {n})"),
        });
    }
    if hashes_len < need_hashes {
        return Err(LedgerError::Damaged(format!(
            "hashes.log holds {hashes_len} bytes, the checkpoint of {n} entries needs {need_hashes}"
        )));
    }
    let reader = DiskHashes::committed(&files.hashes, &hpath);
    let root = tlog_tiles::tree_hash(n, &reader)
        .map_err(|e| LedgerError::Damaged(format!("reading tree hashes: {e}")))?;
    if root.0 != cp.root {
        return Err(LedgerError::Damaged(
            "the stored tree hashes do not match the signed checkpoint".into(),
        ));
    }
    Ok((index_len, hashes_len))
}

/// Checks the committed part of the log against the checkpoint and cuts anything after it.
/// Returns the length of the committed part of entries.log.
pub(super) fn recover(dir: &Path, files: &Files, cp: &SignedCheckpoint) -> Result<u64> {
    let epath = dir.join(ENTRIES);
    let ipath = dir.join(INDEX);
    let hpath = dir.join(HASHES);
    let n = cp.size;
    let need_hashes = tlog_tiles::stored_hash_count(n) * 32;
    let (index_len, hashes_len) = check_covers(dir, files, cp)?;
    let mut entries = BufReader::with_capacity(1 << 20, &files.entries);
    let mut index = BufReader::new(&files.index);
    let offset = walk_entries(&mut entries, &mut index, n, |_, _| Ok(()))?;
    // Cut what no checkpoint covers: appends that were written but never acknowledged.
    let entries_len = file_len(&files.entries, &epath)?;
    let mut cut = false;
    for (f, path, keep, len) in [
        (&files.entries, &epath, offset, entries_len),
        (&files.index, &ipath, n * 8, index_len),
        (&files.hashes, &hpath, need_hashes, hashes_len),
    ] {
        if len > keep {
            f.set_len(keep)
                .map_err(LedgerError::io("truncating", path))?;
            f.sync_all().map_err(LedgerError::io("syncing", path))?;
            cut = true;
        }
    }
    if cut {
        warn!(
            size = n,
            dropped_bytes = entries_len - offset,
            "cut an unacknowledged tail from the ledger"
        );
    }
    Ok(offset)
}
