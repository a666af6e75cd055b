//! The seam every file-system operation of the file ledger's append path goes through, so
//! that tests can make the Nth of them fail with a chosen errno (`EMFILE`, `ENOSPC`,
//! `EIO`, ...). Without `cfg(test)` or the `fault-injection` feature it only runs the
//! operation.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

/// A file-system operation of the append path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    /// A positioned write.
    Write,
    /// An `fsync`/`fdatasync` of a file or of the log directory.
    Sync,
    /// Opening (creating) a file.
    Open,
    /// Renaming the new checkpoint into place.
    Rename,
    /// Looking up a file's metadata.
    Stat,
    /// Cutting a file back to a length.
    Truncate,
}

/// Which operations fail, and how (see [`crate::Ledger::inject_faults`]).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// Index of the first operation that fails, counted from 0 when the plan is set.
    pub at: u64,
    /// How many operations fail from there on (`u64::MAX`: all, until the plan is cleared).
    pub times: u64,
    /// The errno they fail with.
    pub errno: i32,
    /// Whether a failing operation takes effect before it reports its error (the write is
    /// written, the rename done: an outcome the caller cannot tell from a failure).
    /// Otherwise nothing happens, except that a failing write writes the first half of
    /// its bytes (a torn write).
    pub takes_effect: bool,
}

#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Default)]
struct FaultState {
    plan: Option<FaultPlan>,
    /// Operations run since the plan was set.
    seen: u64,
    /// The operations the plan made fail, in order.
    fired: Vec<FsOp>,
}

/// The fault plan of one ledger (nothing at all without fault injection compiled in).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    #[cfg(any(test, feature = "fault-injection"))]
    state: std::sync::Mutex<FaultState>,
}

/// What the plan decides for one operation.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Run,
    #[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
    Fail {
        errno: i32,
        takes_effect: bool,
    },
}

impl Faults {
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn set(&self, plan: Option<FaultPlan>) {
        *self.state.lock().expect("fault lock") = FaultState {
            plan,
            seen: 0,
            fired: Vec::new(),
        };
    }

    /// (operations run, the operations made to fail) since the plan was set.
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn counts(&self) -> (u64, Vec<FsOp>) {
        let st = self.state.lock().expect("fault lock");
        (st.seen, st.fired.clone())
    }

    fn decide(&self, op: FsOp) -> Decision {
        #[cfg(any(test, feature = "fault-injection"))]
        {
            let mut st = self.state.lock().expect("fault lock");
            let n = st.seen;
            st.seen += 1;
            if let Some(p) = st.plan
                && n >= p.at
                && n - p.at < p.times
            {
                st.fired.push(op);
                return Decision::Fail {
                    errno: p.errno,
                    takes_effect: p.takes_effect,
                };
            }
        }
        let _ = op;
        Decision::Run
    }

    /// Runs `f`, the operation `op`, unless the plan makes it fail.
    pub(crate) fn run<T>(&self, op: FsOp, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        match self.decide(op) {
            Decision::Run => f(),
            Decision::Fail {
                errno,
                takes_effect,
            } => {
                if takes_effect {
                    f()?;
                }
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }

    /// Writes all of `buf` at `offset` of `file` (a torn write when the plan says so).
    pub(crate) fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.decide(FsOp::Write) {
            Decision::Run => file.write_all_at(buf, offset),
            Decision::Fail {
                errno,
                takes_effect,
            } => {
                let n = if takes_effect {
                    buf.len()
                } else {
                    buf.len() / 2
                };
                file.write_all_at(&buf[..n], offset)?;
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::{Ledger, LedgerError};
    use trackshift_crypto::IoError;

    const ORIGIN: &str = "test.example/faults";
    const ERRNOS: [(i32, &str); 3] = [
        (libc::EMFILE, "EMFILE"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EIO, "EIO"),
    ];

    fn batch(tag: &str, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("{tag} {i}").into_bytes()).collect()
    }

    /// What `trackshift ledger verify` runs (a read-only open next to the writer, then every
    /// entry and hash re-checked), with each entry compared to what the test expects there.
    fn verify_like_the_cli(dir: &Path, expect: &[Vec<u8>], ctx: &str) {
        let ro = Ledger::open_read_only(dir, None)
            .unwrap_or_else(|e| panic!("{ctx}: ledger verify refuses the log: {e}"));
        let v = ro
            .verify_all(|i, e| match expect.get(usize::try_from(i).unwrap()) {
                Some(want) if want == e => Ok(()),
                _ => Err("not the entry appended here".into()),
            })
            .unwrap_or_else(|e| panic!("{ctx}: ledger verify fails: {e}"));
        assert_eq!(v.size, expect.len() as u64, "{ctx}");
    }

    /// Copies the files of a log (keys included, modes kept) to a new directory.
    fn copy_log(from: &Path, to: &Path) {
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                copy_log(&e.path(), &target);
            } else if e.file_name() != "lock" {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }

    /// After the failed append: either nothing of it is in the log, or all of it (the
    /// failure came after the commit point). Returns what the log now holds.
    fn outcome(ledger: &Ledger, acked: &[Vec<u8>], b: &[Vec<u8>], ctx: &str) -> Vec<Vec<u8>> {
        let size = ledger.size();
        let mut expect = acked.to_vec();
        if size == (acked.len() + b.len()) as u64 {
            expect.extend_from_slice(b);
        } else {
            assert_eq!(
                size,
                acked.len() as u64,
                "{ctx}: a failed append is all or nothing"
            );
        }
        expect
    }

    /// Appends `entries` and checks where they went and that their inclusion proofs verify
    /// against the checkpoint the append returned.
    fn append_ok(ledger: &Ledger, log: &mut Vec<Vec<u8>>, entries: Vec<Vec<u8>>, ctx: &str) {
        let a = ledger
            .append_blocking(entries.clone())
            .unwrap_or_else(|e| panic!("{ctx}: an append once the fault is gone fails: {e}"));
        assert_eq!(
            a.first_index,
            log.len() as u64,
            "{ctx}: built on the committed tree"
        );
        log.extend(entries);
        assert_eq!(a.checkpoint.size, log.len() as u64, "{ctx}");
        for i in a.first_index..a.checkpoint.size {
            let e = &log[usize::try_from(i).unwrap()];
            let proof = ledger.inclusion_proof(i, a.checkpoint.size).unwrap();
            crate::verify_inclusion(
                i,
                a.checkpoint.size,
                &crate::leaf_hash(e),
                &proof,
                &a.checkpoint.root,
            )
            .unwrap_or_else(|err| panic!("{ctx}: entry {i}: {err}"));
        }
    }

    /// One injected failure (or all operations from the Nth on, `persistent`), for every
    /// operation index N of an append until an append runs with nothing injected; after
    /// each: the error is the injected one, typed; `ledger verify` passes next to the live
    /// writer; the same handle appends once the fault is gone (or, `restart`, a reopened
    /// log does); `ledger verify` passes again. Returns the operations that were made to fail.
    fn every_operation_fails_in_turn(persistent: bool, restart: bool) -> BTreeSet<String> {
        let template = tempfile::tempdir().unwrap();
        let base = batch("earlier", 3);
        {
            let l = Ledger::open(template.path(), ORIGIN).unwrap();
            l.append_blocking(base.clone()).unwrap();
        }
        let mut failed_ops = BTreeSet::new();
        for (errno, name) in ERRNOS {
            for takes_effect in [false, true] {
                let mut completed = false;
                for at in 0..64 {
                    let ctx = format!(
                        "{name} at operation {at} (persistent {persistent}, takes effect \
                         {takes_effect}, restart {restart})"
                    );
                    let tmp = tempfile::tempdir().unwrap();
                    copy_log(template.path(), tmp.path());
                    let ledger = Ledger::open(tmp.path(), ORIGIN).unwrap();
                    ledger.inject_faults(Some(FaultPlan {
                        at,
                        times: if persistent { u64::MAX } else { 1 },
                        errno,
                        takes_effect,
                    }));
                    let b = batch("b", 5);
                    let r = ledger.append_blocking(b.clone());
                    let (_, fired) = ledger.fault_counts();
                    if fired.is_empty() {
                        r.unwrap_or_else(|e| panic!("{ctx}: nothing injected, yet: {e}"));
                        completed = true;
                        break;
                    }
                    failed_ops.extend(fired.iter().map(|op| format!("{op:?}")));
                    let mut log = match r {
                        Ok(a) => {
                            // Only the open of the next checkpoint's file, after the commit,
                            // failed: that is not the append's failure.
                            assert_eq!(fired, [FsOp::Open], "{ctx}");
                            assert_eq!(a.first_index, base.len() as u64, "{ctx}");
                            [base.clone(), b.clone()].concat()
                        }
                        Err(e) => {
                            assert!(
                                matches!(&e, LedgerError::Io(IoError { source, .. })
                                    if source.raw_os_error() == Some(errno)),
                                "{ctx}: not the injected error: {e}"
                            );
                            outcome(&ledger, &base, &b, &ctx)
                        }
                    };
                    verify_like_the_cli(tmp.path(), &log, &format!("{ctx}, after the failure"));
                    if persistent {
                        // Still failing: another append fails (or succeeds) the same way.
                        let b2 = batch("b2", 2);
                        match ledger.append_blocking(b2.clone()) {
                            Ok(a) => {
                                assert_eq!(a.first_index, log.len() as u64, "{ctx}");
                                log.extend(b2);
                            }
                            Err(_) => log = outcome(&ledger, &log, &b2, &ctx),
                        }
                        verify_like_the_cli(tmp.path(), &log, &format!("{ctx}, still failing"));
                    }
                    let ledger = if restart {
                        drop(ledger);
                        Ledger::open(tmp.path(), ORIGIN)
                            .unwrap_or_else(|e| panic!("{ctx}: a restart refuses the log: {e}"))
                    } else {
                        ledger.inject_faults(None);
                        ledger
                    };
                    assert_eq!(ledger.size(), log.len() as u64, "{ctx}");
                    append_ok(&ledger, &mut log, batch("c", 2), &ctx);
                    append_ok(&ledger, &mut log, batch("d", 1), &ctx);
                    verify_like_the_cli(tmp.path(), &log, &format!("{ctx}, appended after"));
                    drop(ledger);
                    let ledger = Ledger::open(tmp.path(), ORIGIN)
                        .unwrap_or_else(|e| panic!("{ctx}: a restart refuses the log: {e}"));
                    assert_eq!(ledger.size(), log.len() as u64, "{ctx}");
                    append_ok(&ledger, &mut log, batch("e", 1), &ctx);
                    verify_like_the_cli(tmp.path(), &log, &format!("{ctx}, restarted"));
                }
                assert!(completed, "an append needs more than 64 operations?");
            }
        }
        failed_ops
    }

    fn names(ops: &[FsOp]) -> BTreeSet<String> {
        ops.iter().map(|op| format!("{op:?}")).collect()
    }

    #[test]
    fn a_single_emfile_enospc_or_eio_at_any_append_operation_leaves_a_log_that_verifies() {
        let failed = every_operation_fails_in_turn(false, false);
        // Every kind of operation of a commit was made to fail at least once.
        let want = names(&[FsOp::Write, FsOp::Sync, FsOp::Rename, FsOp::Open]);
        assert!(failed.is_superset(&want), "{failed:?}");
    }

    #[test]
    fn a_single_failure_at_any_append_operation_then_a_restart_accepts_the_log() {
        every_operation_fails_in_turn(false, true);
    }

    #[test]
    fn exhaustion_that_lasts_fails_every_append_cleanly_and_the_log_recovers_when_it_ends() {
        let failed = every_operation_fails_in_turn(true, false);
        // Lasting failures also reach the cut-back of a failed batch and the check of
        // whether a failed rename took place.
        let want = names(&[
            FsOp::Write,
            FsOp::Sync,
            FsOp::Rename,
            FsOp::Open,
            FsOp::Stat,
            FsOp::Truncate,
        ]);
        assert!(failed.is_superset(&want), "{failed:?}");
    }

    #[test]
    fn exhaustion_that_lasts_until_a_restart_leaves_a_log_the_restart_accepts() {
        every_operation_fails_in_turn(true, true);
    }

    #[test]
    fn a_checkpoint_whose_directory_fsync_fails_is_not_cut_back_under_it() {
        // The bug of issue 13: the checkpoint was renamed into place, fsyncing the
        // directory failed (EMFILE opening it), and the batch was cut back under the new
        // checkpoint: `index.log is missing entries (the checkpoint covers N)`.
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path(), ORIGIN).unwrap();
        ledger.append_blocking(batch("a", 2)).unwrap();
        ledger.inject_faults(None);
        ledger.append_blocking(batch("probe", 1)).unwrap();
        let (ops, _) = ledger.fault_counts();
        // The directory's fsync is the last operation of a commit but the next spare's open.
        let dir_sync = ops - 2;
        ledger.inject_faults(Some(FaultPlan {
            at: dir_sync,
            times: 1,
            errno: libc::EIO,
            takes_effect: false,
        }));
        let e = ledger.append_blocking(batch("b", 4)).unwrap_err();
        assert_eq!(ledger.fault_counts().1, [FsOp::Sync]);
        assert!(e.to_string().contains("syncing the directory"), "{e}");
        // The checkpoint on disk covers the batch, and so does the log.
        assert_eq!(ledger.size(), 7);
        let ro = Ledger::open_read_only(tmp.path(), None).unwrap();
        assert_eq!(ro.verify_all(|_, _| Ok(())).unwrap().size, 7);
        let a = ledger.append_blocking(batch("c", 1)).unwrap();
        assert_eq!(a.first_index, 7);
        drop(ledger);
        let ledger = Ledger::open(tmp.path(), ORIGIN).unwrap();
        assert_eq!(ledger.size(), 8);
        assert_eq!(ledger.entry(3).unwrap(), b"b 0");
    }

    #[test]
    fn every_request_of_a_failed_batch_gets_the_typed_error() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = std::sync::Arc::new(Ledger::open(tmp.path(), ORIGIN).unwrap());
        ledger.append_blocking(batch("a", 1)).unwrap();
        ledger.inject_faults(Some(FaultPlan {
            at: 0,
            times: u64::MAX,
            errno: libc::ENOSPC,
            takes_effect: false,
        }));
        let handles: Vec<_> = (0..8)
            .map(|k| {
                let l = ledger.clone();
                std::thread::spawn(move || l.append_blocking(batch(&format!("t{k}"), 2)))
            })
            .collect();
        for h in handles {
            let e = h.join().unwrap().unwrap_err();
            assert!(
                matches!(&e, LedgerError::Io(IoError { source, .. })
                    if source.raw_os_error() == Some(libc::ENOSPC)),
                "{e}"
            );
        }
        assert_eq!(ledger.size(), 1);
        ledger.inject_faults(None);
        assert_eq!(
            ledger.append_blocking(batch("z", 1)).unwrap().first_index,
            1
        );
    }
}
