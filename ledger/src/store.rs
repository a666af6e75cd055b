//! Durable storage of the log: three append-only files and the latest signed checkpoint.
//!
//! ```text
//! DIR/entries.log    frames: u32 BE length ‖ entry ‖ u32 BE CRC-32 of (length ‖ entry)
//! DIR/index.log      u64 BE offset of each entry's frame in entries.log
//! DIR/hashes.log     every stored tree hash (32 bytes), in the Crosby–Wallach order of
//!                    `tlog_tiles::stored_hash_index`: level-0 leaf hashes and completed
//!                    subtree hashes, so any proof reads O(log n) hashes from disk
//! DIR/checkpoint     the latest signed checkpoint (the commit point)
//! DIR/.checkpoint.next  the next checkpoint, written and fsynced before it is renamed
//!                    over `checkpoint` (opened ahead; its content means nothing)
//! DIR/keys/          log-ed25519.key, cosigner-mldsa44.key (0600), or after a rotation
//!                    ledger-keys.json (0600, see [`crate::rotation`])
//! ```
//!
//! Appends are group-committed by one writer thread: every request waiting when a batch
//! starts is written, the three files are fdatasync'ed, the new tree is checked to be
//! consistent with the previous checkpoint, a checkpoint is signed, written to
//! `.checkpoint.next`, fsynced and renamed over `checkpoint` (the commit point), the
//! directory is fsynced, and only then are the appends acknowledged. Memory use does not
//! depend on the log's size: hashes and entries are read from disk with positioned reads.
//!
//! The append path opens no file: the data files, the directory and the next checkpoint's
//! file are held open, so running out of descriptors does not stop the log. Any error
//! (`EMFILE`, `ENOSPC`, `EIO`, ...) fails every append of the batch with
//! [`LedgerError::Io`] and leaves the log at its last checkpoint: before the commit point
//! the batch's bytes are cut (before the next batch, if cutting fails too); after it (the
//! directory's fsync failed) the new checkpoint is kept, because it is on disk and its
//! entries are durable, but the appends still fail, as the rename may not survive a crash.
//! When a failed rename leaves it unknown whether it took place, no batch is written until
//! the writer has found out. The writer keeps taking appends; the first one after the
//! resource is back succeeds.
//!
//! On open, the checkpoint names the committed size. Data past it was never acknowledged
//! (a crash between the write and the checkpoint) and is cut. Data up to it must be intact:
//! a bad frame, a wrong index, missing bytes or a root that does not match refuse the open
//! with an error naming the entry.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use tlog_tiles::{Hash, HashReader};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::error::{LedgerError, Result};
#[cfg(any(test, feature = "fault-injection"))]
use crate::fault::FaultPlan;
use crate::fault::{Faults, FsOp};
use crate::note::{LedgerPublicKeys, VerifiedCheckpoint, verify_checkpoint};
use crate::proof::TlogProof;
use crate::rotation::LiveLedgerKeys;

/// Largest entry the ledger accepts.
pub const MAX_ENTRY_LEN: usize = 16 << 20;
/// Most entries written in one group commit.
pub const MAX_BATCH: usize = 8192;
/// Height of the hash tiles served by [`Ledger::tile`] (C2SP `tlog-tiles`: 256 hashes).
pub const TILE_HEIGHT: u8 = 8;

const ENTRIES: &str = "entries.log";
const INDEX: &str = "index.log";
const HASHES: &str = "hashes.log";
const CHECKPOINT: &str = "checkpoint";
/// The next checkpoint, written and fsynced here before it is renamed over `checkpoint`.
/// The writer opens it ahead of time, so a commit opens no file.
const CHECKPOINT_NEXT: &str = ".checkpoint.next";
/// File in the log directory holding the public keys auditors need (JSON, not secret).
pub const PUBLIC_KEYS_FILE: &str = "public-keys.json";

/// The outcome of an acknowledged append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Index of the first entry of the request; the others follow contiguously.
    pub first_index: u64,
    /// Number of entries appended.
    pub count: u64,
    /// The signed checkpoint of the batch that committed them (its size covers them).
    pub checkpoint: Arc<SignedCheckpoint>,
}

/// A checkpoint the log signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
    /// The signed note text.
    pub note: String,
}

struct Request {
    entries: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<Appended>>,
}

struct Files {
    entries: File,
    index: File,
    hashes: File,
}

#[derive(Clone)]
struct State {
    size: u64,
    /// End of the last committed frame in entries.log.
    entries_len: u64,
    checkpoint: Arc<SignedCheckpoint>,
}

struct Inner {
    dir: PathBuf,
    /// Signing keys (following rotations on disk); `None` when opened read-only.
    keys: Option<LiveLedgerKeys>,
    /// The keys checkpoints are verified with when opened read-only.
    public: LedgerPublicKeys,
    files: Files,
    state: RwLock<State>,
    /// The log directory, held open to fsync it after the checkpoint's rename (so that
    /// needs no new descriptor); `None` when read-only.
    dir_file: Option<File>,
    /// Where the append path's file-system operations go through (fault injection).
    faults: Faults,
    /// Exclusive lock on `DIR/lock` (one writer process per log); `None` when read-only.
    _lock: Option<File>,
}

/// The append-only log.
pub struct Ledger {
    inner: Arc<Inner>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("dir", &self.inner.dir)
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

mod backup;
mod files;
mod read;
mod recovery;
mod writer;

pub use backup::COPIED_FILES;
pub use files::*;
use recovery::*;
use writer::*;

impl Ledger {
    /// Opens (or creates) the log in `dir`, checks it and starts the writer thread.
    /// `origin` names the log in its checkpoints; it must match the stored one.
    pub fn open(dir: impl AsRef<Path>, origin: &str) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(LedgerError::io("creating", &dir))?;
        let keys = LiveLedgerKeys::load_or_generate(&dir.join("keys"), origin)?;
        let public = keys.public_keys();
        let lock_path = dir.join("lock");
        let lock = open_rw(&lock_path)?;
        // A previous instance that is shutting down gets a few seconds to let go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lock.try_lock().is_err() {
            if std::time::Instant::now() >= deadline {
                return Err(LedgerError::InvalidRequest(format!(
                    "{} is in use by another process (a running gateway?)",
                    dir.display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let cp_path = dir.join(CHECKPOINT);
        let fresh = !dir.join(ENTRIES).exists() && !cp_path.exists();
        let files = Files {
            entries: open_rw(&dir.join(ENTRIES))?,
            index: open_rw(&dir.join(INDEX))?,
            hashes: open_rw(&dir.join(HASHES))?,
        };
        let checkpoint = if fresh {
            let root = tlog_tiles::EMPTY_HASH.0;
            let note = keys.sign_checkpoint(0, root)?;
            trackshift_crypto::filestore::write_atomic(&cp_path, note.as_bytes(), 0o644)
                .map_err(|e| LedgerError::Damaged(e.to_string()))?;
            info!(dir = %dir.display(), origin, "created ledger");
            SignedCheckpoint {
                size: 0,
                root,
                note,
            }
        } else {
            load_checkpoint(&cp_path, &public)?
        };
        let entries_len = recover(&dir, &files, &checkpoint)?;
        let dir_file = File::open(&dir).map_err(LedgerError::io("opening", &dir))?;
        let pk_path = dir.join(PUBLIC_KEYS_FILE);
        let pk_json = crate::rotation::public_keys_json(&public);
        if std::fs::read_to_string(&pk_path).ok().as_deref() != Some(pk_json.as_str()) {
            trackshift_crypto::filestore::write_atomic(&pk_path, pk_json.as_bytes(), 0o644)
                .map_err(|e| LedgerError::Damaged(e.to_string()))?;
        }
        let inner = Arc::new(Inner {
            dir,
            keys: Some(keys),
            public,
            files,
            state: RwLock::new(State {
                size: checkpoint.size,
                entries_len,
                checkpoint: Arc::new(checkpoint),
            }),
            dir_file: Some(dir_file),
            faults: Faults::default(),
            _lock: Some(lock),
        });
        let (tx, rx) = mpsc::channel::<Request>();
        let writer_inner = inner.clone();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(&writer_inner, &rx))
            .map_err(LedgerError::io(
                "starting the writer thread for",
                &inner.dir,
            ))?;
        Ok(Self {
            inner,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Opens an existing log, taking its origin from the stored checkpoint.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cp = dir.join(CHECKPOINT);
        let text = std::fs::read_to_string(&cp).map_err(LedgerError::io("reading", &cp))?;
        let origin = text
            .lines()
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| LedgerError::Damaged(format!("{} has no origin line", cp.display())))?
            .to_string();
        Self::open(dir, &origin)
    }

    /// Opens a log for reading only: no lock, no private keys, nothing written or cut, so
    /// it is safe next to a running gateway. It reads only what its checkpoint covers (the
    /// writer makes data durable before it publishes a checkpoint); [`Ledger::refresh`]
    /// moves to a newer checkpoint. Checkpoints are verified with `public` when given (an
    /// auditor's pinned keys), else with the log's own `public-keys.json`. Opening checks
    /// the checkpoint's signatures and root against the stored hashes in O(log n) reads;
    /// [`Ledger::verify_all`] re-checks every entry.
    pub fn open_read_only(dir: impl AsRef<Path>, public: Option<LedgerPublicKeys>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let public = match public {
            Some(p) => p,
            None => {
                let path = dir.join(PUBLIC_KEYS_FILE);
                let text =
                    std::fs::read_to_string(&path).map_err(LedgerError::io("reading", &path))?;
                serde_json::from_str(&text)
                    .map_err(|e| LedgerError::Damaged(format!("{}: {e}", path.display())))?
            }
        };
        let open = |name: &str| {
            let path = dir.join(name);
            File::open(&path).map_err(LedgerError::io("opening", &path))
        };
        let files = Files {
            entries: open(ENTRIES)?,
            index: open(INDEX)?,
            hashes: open(HASHES)?,
        };
        let checkpoint = load_checkpoint(&dir.join(CHECKPOINT), &public)?;
        check_covers(&dir, &files, &checkpoint)?;
        let inner = Arc::new(Inner {
            dir,
            keys: None,
            public,
            files,
            state: RwLock::new(State {
                size: checkpoint.size,
                entries_len: 0,
                checkpoint: Arc::new(checkpoint),
            }),
            dir_file: None,
            faults: Faults::default(),
            _lock: None,
        });
        Ok(Self {
            inner,
            tx: Mutex::new(None),
            writer: Mutex::new(None),
        })
    }

    /// Makes file-system operations of the append path fail as `plan` says (`None`: none
    /// fail), counting operations from now. For fault-injection tests only.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_faults(&self, plan: Option<FaultPlan>) {
        self.inner.faults.set(plan);
    }

    /// The number of append-path operations run since [`Ledger::inject_faults`], and the
    /// ones it made fail.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn fault_counts(&self) -> (u64, Vec<crate::fault::FsOp>) {
        self.inner.faults.counts()
    }

    /// Whether this handle was opened with [`Ledger::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.inner.keys.is_none()
    }

    /// Moves a read-only handle to the latest checkpoint on disk, after checking its
    /// signatures, that the stored hashes give its root and that it extends the checkpoint
    /// held so far (a log that shrank or forked is refused). A writable handle is always
    /// current. Returns the checkpoint now held.
    pub fn refresh(&self) -> Result<Arc<SignedCheckpoint>> {
        let held = self.checkpoint();
        if !self.is_read_only() {
            return Ok(held);
        }
        let inner = &self.inner;
        let cp_path = inner.dir.join(CHECKPOINT);
        let text =
            std::fs::read_to_string(&cp_path).map_err(LedgerError::io("reading", &cp_path))?;
        if text == held.note {
            return Ok(held);
        }
        let cp = load_checkpoint(&cp_path, &inner.public)?;
        if cp.size < held.size {
            return Err(LedgerError::Damaged(format!(
                "the log's checkpoint went back from {} to {} entries",
                held.size, cp.size
            )));
        }
        check_covers(&inner.dir, &inner.files, &cp)?;
        let reader = self.reader();
        if held.size > 0 && held.size < cp.size {
            let proof = tlog_tiles::prove_tree(cp.size, held.size, &reader)
                .map_err(|e| LedgerError::Damaged(format!("consistency proof: {e}")))?;
            tlog_tiles::check_tree(&proof, cp.size, Hash(cp.root), held.size, Hash(held.root))
                .map_err(|e| {
                    LedgerError::Damaged(format!(
                        "the new checkpoint does not extend the one held: {e}"
                    ))
                })?;
        } else if held.size == cp.size && held.root != cp.root {
            return Err(LedgerError::Damaged(
                "two signed checkpoints of the same size have different roots".into(),
            ));
        }
        let cp = Arc::new(cp);
        let mut st = inner.state.write().expect("state lock");
        st.size = cp.size;
        st.checkpoint = cp.clone();
        Ok(cp)
    }

    /// Tile `path` of the log's hash tiles in the C2SP `tlog-tiles` layout (height 8), for
    /// example `tile/0/x001/234` or `tile/1/000.p/7`, built from the stored hashes and
    /// bounded by the checkpoint held. Entry bundles (`tile/entries/...`) are not served:
    /// entries are tenants' signed documents, which auditors already hold.
    pub fn tile(&self, path: &str) -> Result<Vec<u8>> {
        let tile = parse_hash_tile(path, self.size())?;
        tile.read_data(&self.reader())
            .map_err(|e| LedgerError::Damaged(format!("reading tile {path}: {e}")))
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Public keys auditors use to verify checkpoints (for a writable log, the keys in force
    /// now, with the pairs retired by `keys rotate --purpose ledger`).
    pub fn public_keys(&self) -> LedgerPublicKeys {
        match &self.inner.keys {
            Some(k) => k.public_keys(),
            None => self.inner.public.clone(),
        }
    }

    /// Loads the signing keys again if their files changed (`force`: in any case); the
    /// writer also does it before every checkpoint it signs. Returns whether they were
    /// loaded again (always `false` read-only).
    pub fn reload_keys(&self, force: bool) -> Result<bool> {
        match &self.inner.keys {
            Some(k) => k.reload(force),
            None => Ok(false),
        }
    }

    /// Number of committed entries.
    pub fn size(&self) -> u64 {
        self.inner.state.read().expect("state lock").size
    }

    /// The latest signed checkpoint.
    pub fn checkpoint(&self) -> Arc<SignedCheckpoint> {
        self.inner
            .state
            .read()
            .expect("state lock")
            .checkpoint
            .clone()
    }

    fn submit(&self, entries: Vec<Vec<u8>>) -> Result<oneshot::Receiver<Result<Appended>>> {
        if entries.is_empty() {
            return Err(LedgerError::InvalidRequest("nothing to append".into()));
        }
        for e in &entries {
            if e.len() > MAX_ENTRY_LEN {
                return Err(LedgerError::EntryTooLarge {
                    len: e.len(),
                    max: MAX_ENTRY_LEN,
                });
            }
        }
        if entries.len() > MAX_BATCH {
            return Err(LedgerError::InvalidRequest(format!(
                "at most {MAX_BATCH} entries per append"
            )));
        }
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.lock().expect("tx lock");
        let tx = tx
            .as_ref()
            .ok_or_else(|| LedgerError::Stopped("closed".into()))?;
        tx.send(Request { entries, reply })
            .map_err(|_| LedgerError::Stopped("the writer thread ended".into()))?;
        Ok(rx)
    }

    /// Appends entries (kept adjacent, in order) and waits until they are durable and
    /// covered by a signed checkpoint.
    pub async fn append(&self, entries: Vec<Vec<u8>>) -> Result<Appended> {
        self.submit(entries)?
            .await
            .map_err(|_| LedgerError::Stopped("the writer thread ended".into()))?
    }

    /// [`Ledger::append`] for callers outside an async runtime.
    pub fn append_blocking(&self, entries: Vec<Vec<u8>>) -> Result<Appended> {
        self.submit(entries)?
            .blocking_recv()
            .map_err(|_| LedgerError::Stopped("the writer thread ended".into()))?
    }

    /// Stops the writer thread after the appends already queued.
    pub fn close(&self) {
        self.tx.lock().expect("tx lock").take();
        if let Some(w) = self.writer.lock().expect("writer lock").take() {
            let _ = w.join();
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}
