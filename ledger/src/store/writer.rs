//! The writer thread: group commit of appends, the checkpoint rename as the commit point,
//! and rollback on any I/O error.

use super::*;

/// What the writer thread knows beyond the committed state.
#[derive(Default)]
pub(super) struct Writer {
    /// `CHECKPOINT_NEXT`, opened (empty) ahead of the next commit.
    pub(super) spare: Option<File>,
    /// The files may hold bytes past the committed state (a failed batch's, not cut yet).
    pub(super) dirty: bool,
    /// The rename of a new checkpoint reported an error and whether it took place is not
    /// known yet: the state it commits if it did. No batch is written until it is known.
    pub(super) unresolved: Option<State>,
}

impl Writer {
    /// Brings the files back to the committed state before a batch: settles a checkpoint
    /// rename whose outcome is not known, then cuts what a failed batch left.
    pub(super) fn settle(&mut self, inner: &Inner) -> Result<()> {
        if let Some(st) = self.unresolved.take() {
            match renamed(inner) {
                Ok(true) => {
                    info!(
                        size = st.size,
                        "the checkpoint whose rename reported an error is in place"
                    );
                    *inner.state.write().expect("state lock") = st;
                }
                Ok(false) => self.dirty = true,
                Err(e) => {
                    self.unresolved = Some(st);
                    return Err(e);
                }
            }
        }
        if self.dirty {
            rollback(inner)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Opens the next checkpoint's file ahead of time, if it is not open (a failure only
    /// means the next commit opens it itself).
    pub(super) fn refill(&mut self, inner: &Inner) {
        if self.spare.is_some() || self.unresolved.is_some() {
            return;
        }
        match open_next_checkpoint(inner) {
            Ok(f) => self.spare = Some(f),
            Err(e) => warn!(error = %e, "could not open the next checkpoint's file ahead"),
        }
    }
}

pub(super) fn open_next_checkpoint(inner: &Inner) -> Result<File> {
    let path = inner.dir.join(CHECKPOINT_NEXT);
    inner
        .faults
        .run(FsOp::Open, || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&path)
        })
        .map_err(LedgerError::io("opening", &path))
}

/// Whether the new checkpoint was renamed into place (its temporary name is gone), after a
/// rename that reported an error.
pub(super) fn renamed(inner: &Inner) -> Result<bool> {
    let path = inner.dir.join(CHECKPOINT_NEXT);
    match inner
        .faults
        .run(FsOp::Stat, || std::fs::symlink_metadata(&path))
    {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(LedgerError::io(
            "checking whether the last checkpoint was renamed into place, looking up",
            &path,
        )(e)),
    }
}

pub(super) fn writer_loop(inner: &Inner, rx: &mpsc::Receiver<Request>) {
    let mut w = Writer::default();
    w.refill(inner);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut count = batch[0].entries.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => {
                    count += r.entries.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let result = w.settle(inner).and_then(|()| commit(inner, &mut w, &batch));
        if let Err(e) = &result {
            warn!(error = %e, entries = count, "ledger append failed; the log stays at its last checkpoint");
            // Cut the batch's bytes now; if that fails too, before the next batch.
            if let Err(e) = w.settle(inner) {
                warn!(error = %e, "could not cut a failed append back yet");
            }
        }
        // Before the replies, so a caller that saw its append done sees the writer idle.
        w.refill(inner);
        match result {
            Ok((firsts, cp)) => {
                for (r, first) in batch.into_iter().zip(firsts) {
                    let count = r.entries.len() as u64;
                    let _ = r.reply.send(Ok(Appended {
                        first_index: first,
                        count,
                        checkpoint: cp.clone(),
                    }));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(e.duplicate()));
                }
            }
        }
    }
}

/// Cuts the files back to the committed state after a failed batch.
pub(super) fn rollback(inner: &Inner) -> Result<()> {
    let st = inner.state.read().expect("state lock");
    let n = st.size;
    for (f, name, keep) in [
        (&inner.files.entries, ENTRIES, st.entries_len),
        (&inner.files.index, INDEX, n * 8),
        (
            &inner.files.hashes,
            HASHES,
            tlog_tiles::stored_hash_count(n) * 32,
        ),
    ] {
        let path = inner.dir.join(name);
        inner
            .faults
            .run(FsOp::Truncate, || f.set_len(keep))
            .map_err(LedgerError::io("truncating", &path))?;
    }
    Ok(())
}

pub(super) type Committed = (Vec<u64>, Arc<SignedCheckpoint>);

/// Writes a batch and commits it. The commit point is the rename of the new checkpoint over
/// the old one, after every ledger file is fsynced: an error before it leaves `w.dirty`
/// (the caller cuts the files back), one after it leaves the new state installed (the
/// entries are durable and named by the checkpoint on disk) but still fails the batch,
/// because the rename may not survive a crash.
pub(super) fn commit(inner: &Inner, w: &mut Writer, batch: &[Request]) -> Result<Committed> {
    let (old_size, entries_len, old_cp) = {
        let st = inner.state.read().expect("state lock");
        (st.size, st.entries_len, st.checkpoint.clone())
    };
    let hpath = inner.dir.join(HASHES);
    let on_disk = tlog_tiles::stored_hash_count(old_size);
    let mut frames = Vec::new();
    let mut offsets = Vec::new();
    let mut pending: Vec<Hash> = Vec::new();
    let mut firsts = Vec::with_capacity(batch.len());
    let mut n = old_size;
    for r in batch {
        firsts.push(n);
        for e in &r.entries {
            offsets.extend_from_slice(&(entries_len + frames.len() as u64).to_be_bytes());
            append_frame(&mut frames, e);
            let reader = DiskHashes {
                file: &inner.files.hashes,
                path: &hpath,
                on_disk,
                pending: &pending,
            };
            let hs = tlog_tiles::stored_hashes(n, e, &reader)
                .map_err(|e| LedgerError::Damaged(format!("computing tree hashes: {e}")))?;
            pending.extend(hs);
            n += 1;
        }
    }
    let hash_bytes: Vec<u8> = pending.iter().flat_map(|h| h.0).collect();
    let f = &inner.files;
    let faults = &inner.faults;
    let epath = inner.dir.join(ENTRIES);
    let ipath = inner.dir.join(INDEX);
    w.dirty = true;
    faults
        .write_at(&f.entries, &frames, entries_len)
        .map_err(LedgerError::io("writing", &epath))?;
    faults
        .write_at(&f.index, &offsets, old_size * 8)
        .map_err(LedgerError::io("writing", &ipath))?;
    faults
        .write_at(&f.hashes, &hash_bytes, on_disk * 32)
        .map_err(LedgerError::io("writing", &hpath))?;
    for (file, path) in [
        (&f.entries, &epath),
        (&f.index, &ipath),
        (&f.hashes, &hpath),
    ] {
        faults
            .run(FsOp::Sync, || file.sync_data())
            .map_err(LedgerError::io("syncing", path))?;
    }
    let reader = DiskHashes::committed(&f.hashes, &hpath);
    let root = tlog_tiles::tree_hash(n, &reader)
        .map_err(|e| LedgerError::Damaged(format!("computing the root: {e}")))?
        .0;
    // Never sign a checkpoint that is not an extension of the previous one.
    if old_size > 0 {
        let proof = tlog_tiles::prove_tree(n, old_size, &reader)
            .map_err(|e| LedgerError::Damaged(format!("consistency proof: {e}")))?;
        tlog_tiles::check_tree(&proof, n, Hash(root), old_size, Hash(old_cp.root)).map_err(
            |e| {
                LedgerError::Damaged(format!(
                    "new tree is not consistent with the last checkpoint: {e}"
                ))
            },
        )?;
    }
    let keys = inner
        .keys
        .as_ref()
        .ok_or_else(|| LedgerError::InvalidRequest("the ledger is open read-only".into()))?;
    let note = keys.sign_checkpoint(n, root)?;
    let next_path = inner.dir.join(CHECKPOINT_NEXT);
    let cp_path = inner.dir.join(CHECKPOINT);
    // The spare is empty; a failed commit drops it (it may hold part of a note).
    let next = match w.spare.take() {
        Some(file) => file,
        None => open_next_checkpoint(inner)?,
    };
    faults
        .write_at(&next, note.as_bytes(), 0)
        .map_err(LedgerError::io("writing the checkpoint to", &next_path))?;
    faults
        .run(FsOp::Sync, || next.sync_all())
        .map_err(LedgerError::io("syncing the checkpoint in", &next_path))?;
    drop(next);
    let cp = Arc::new(SignedCheckpoint {
        size: n,
        root,
        note,
    });
    let new_state = State {
        size: n,
        entries_len: entries_len + frames.len() as u64,
        checkpoint: cp.clone(),
    };
    if let Err(e) = faults.run(FsOp::Rename, || std::fs::rename(&next_path, &cp_path)) {
        let err = LedgerError::io("renaming the new checkpoint to", &cp_path)(e);
        // A failed rename normally leaves the old name in place; check rather than trust.
        match renamed(inner) {
            Ok(false) => {}
            Ok(true) => {
                w.dirty = false;
                *inner.state.write().expect("state lock") = new_state;
            }
            Err(_) => {
                w.dirty = false;
                w.unresolved = Some(new_state);
            }
        }
        return Err(err);
    }
    // The commit point: the checkpoint on disk covers the batch, which is durable.
    w.dirty = false;
    *inner.state.write().expect("state lock") = new_state;
    let dir_file = inner
        .dir_file
        .as_ref()
        .ok_or_else(|| LedgerError::InvalidRequest("the ledger is open read-only".into()))?;
    faults
        .run(FsOp::Sync, || dir_file.sync_all())
        .map_err(LedgerError::io(
            "syncing the directory (the new checkpoint may not survive a crash)",
            &inner.dir,
        ))?;
    Ok((firsts, cp))
}
