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

/// Parses a hash tile path (`tile/L/N[.p/W]`, height [`TILE_HEIGHT`]), as the HTTP tile
/// handler receives it from anyone, and checks the tile
/// lies within a tree of `size` entries. Entry bundles are refused.
pub fn parse_hash_tile(path: &str, size: u64) -> Result<tlog_tiles::Tile> {
    let bad = || LedgerError::InvalidRequest(format!("not a hash tile path: {path:?}"));
    let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
    if rest.starts_with("entries/") || rest.starts_with("data/") {
        return Err(LedgerError::InvalidRequest(
            "entry bundles are not served (entries are tenants' documents)".into(),
        ));
    }
    // Tile::new asserts its ranges: check level and width before parsing.
    let level_ok = rest
        .split('/')
        .next()
        .and_then(|l| l.parse::<u8>().ok())
        .is_some_and(|l| l < 64);
    let width_ok = rest.rsplit_once(".p/").is_none_or(|(_, w)| {
        w.parse::<u32>()
            .is_ok_and(|w| (1..1 << TILE_HEIGHT).contains(&w))
    });
    if !level_ok || !width_ok {
        return Err(bad());
    }
    let tile =
        tlog_tiles::Tile::from_path(&format!("tile/{TILE_HEIGHT}/{rest}")).map_err(|_| bad())?;
    let shift = u32::from(tile.level()) * u32::from(TILE_HEIGHT);
    let level_size = size.checked_shr(shift).unwrap_or(0);
    let end = tile
        .level_index()
        .checked_mul(1 << TILE_HEIGHT)
        .and_then(|s| s.checked_add(u64::from(tile.width())));
    if end.is_none_or(|end| end > level_size) {
        return Err(LedgerError::InvalidRequest(format!(
            "tile {path} is beyond the tree of {size} entries"
        )));
    }
    Ok(tile)
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads stored hashes from `hashes.log`, with hashes of the batch being written layered on
/// top (they are not on disk yet).
struct DiskHashes<'a> {
    file: &'a File,
    path: &'a Path,
    /// Stored hashes on disk (committed).
    on_disk: u64,
    pending: &'a [Hash],
}

impl<'a> DiskHashes<'a> {
    /// Reads committed hashes only (nothing pending).
    fn committed(file: &'a File, path: &'a Path) -> Self {
        Self {
            file,
            path,
            on_disk: u64::MAX,
            pending: &[],
        }
    }
}

impl HashReader for DiskHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        // A tile's hashes lie close together on disk: read their span at once.
        if let (Some(&lo), Some(&hi)) = (indexes.iter().min(), indexes.iter().max())
            && indexes.len() > 8
            && hi < self.on_disk
            && hi - lo < 4 * indexes.len() as u64
        {
            let mut buf = vec![0u8; usize::try_from(hi - lo + 1).unwrap_or(0) * 32];
            self.file.read_exact_at(&mut buf, lo * 32).map_err(|e| {
                tlog_tiles::Error::InvalidInput(format!("{}: {e}", self.path.display()))
            })?;
            return Ok(indexes
                .iter()
                .map(|&i| {
                    let at = usize::try_from(i - lo).unwrap_or(0) * 32;
                    Hash(buf[at..at + 32].try_into().expect("32 bytes"))
                })
                .collect());
        }
        let mut out = Vec::with_capacity(indexes.len());
        for &i in indexes {
            if i >= self.on_disk {
                let k = usize::try_from(i - self.on_disk)
                    .map_err(|_| tlog_tiles::Error::IndexesNotInTree)?;
                out.push(
                    *self
                        .pending
                        .get(k)
                        .ok_or(tlog_tiles::Error::IndexesNotInTree)?,
                );
            } else {
                let mut h = [0u8; 32];
                self.file.read_exact_at(&mut h, i * 32).map_err(|e| {
                    tlog_tiles::Error::InvalidInput(format!("{}: {e}", self.path.display()))
                })?;
                out.push(Hash(h));
            }
        }
        Ok(out)
    }
}

/// Most leaf hashes one [`Ledger::leaf_hashes`] call returns.
pub const MAX_LEAF_HASHES: u64 = 1 << 16;

/// Stored-hash indexes of the leaves `from..to` (at most [`MAX_LEAF_HASHES`]).
pub(crate) fn leaf_hash_indexes(from: u64, to: u64) -> Result<Vec<u64>> {
    if from > to || to - from > MAX_LEAF_HASHES {
        return Err(LedgerError::InvalidRequest(format!(
            "leaf hashes {from}..{to}: give an ascending range of at most {MAX_LEAF_HASHES}"
        )));
    }
    Ok((from..to)
        .map(|i| tlog_tiles::stored_hash_index(0, i))
        .collect())
}

/// CRC-32 of a frame's length field and entry.
fn frame_crc(len: [u8; 4], entry: &[u8]) -> [u8; 4] {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(entry);
    h.finalize().to_be_bytes()
}

/// Appends the frame of `entry` (length, entry, checksum) to `out`.
fn append_frame(out: &mut Vec<u8>, entry: &[u8]) {
    let len = (entry.len() as u32).to_be_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(entry);
    out.extend_from_slice(&frame_crc(len, entry));
}

/// Reads one frame from a sequential reader: `Ok(None)` at a clean end.
fn read_frame(r: &mut impl std::io::Read) -> std::result::Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("frame header cut short".into()),
            Ok(n) => got += n,
            Err(e) => return Err(e.to_string()),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_ENTRY_LEN {
        return Err(format!("frame claims {n} bytes, more than any entry"));
    }
    let mut body = vec![0u8; n + 4];
    r.read_exact(&mut body)
        .map_err(|_| "frame cut short".to_string())?;
    let (entry, crc) = body.split_at(n);
    if frame_crc(len, entry) != crc {
        return Err("checksum mismatch (the entry's bytes changed)".into());
    }
    body.truncate(n);
    Ok(Some(body))
}

/// Reads the first `n` frames of entries.log with the matching index.log records, checking
/// each frame's checksum and offset, and hands each entry to `f`. Returns the end offset of
/// the last frame. Errors name the entry.
fn walk_entries(
    entries: &mut impl std::io::Read,
    index: &mut impl std::io::Read,
    n: u64,
    mut f: impl FnMut(u64, Vec<u8>) -> Result<()>,
) -> Result<u64> {
    let mut offset = 0u64;
    for i in 0..n {
        let corrupt = |what: String| LedgerError::Corrupt { entry: i, what };
        let entry = read_frame(entries)
            .map_err(corrupt)?
            .ok_or_else(|| corrupt("entries.log ends before this committed entry".into()))?;
        let mut off = [0u8; 8];
        index
            .read_exact(&mut off)
            .map_err(|e| corrupt(format!("index.log: {e}")))?;
        if u64::from_be_bytes(off) != offset {
            return Err(corrupt("index.log points elsewhere".into()));
        }
        offset += entry.len() as u64 + 8;
        f(i, entry)?;
    }
    Ok(offset)
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(LedgerError::io("opening", path))
}

fn file_len(f: &File, path: &Path) -> Result<u64> {
    Ok(f.metadata()
        .map_err(LedgerError::io("reading", path))?
        .len())
}

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

    fn reader(&self) -> DiskHashes<'_> {
        DiskHashes::committed(&self.inner.files.hashes, Path::new(HASHES))
    }

    /// Root hash of the tree of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Result<[u8; 32]> {
        self.check_size(size)?;
        tlog_tiles::tree_hash(size, &self.reader())
            .map(|h| h.0)
            .map_err(|e| LedgerError::Damaged(format!("reading tree hashes: {e}")))
    }

    fn check_size(&self, size: u64) -> Result<()> {
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
        if index >= size {
            return Err(LedgerError::InvalidRequest(format!(
                "entry {index} is not in a tree of {size} entries"
            )));
        }
        tlog_tiles::prove_record(size, index, &self.reader())
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| LedgerError::Damaged(format!("building an inclusion proof: {e}")))
    }

    /// Consistency proof from the tree of `old` entries to the tree of `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        self.check_size(new)?;
        if old > new {
            return Err(LedgerError::InvalidRequest(format!(
                "old size {old} is larger than new size {new}"
            )));
        }
        if old == 0 {
            return Err(LedgerError::InvalidRequest(
                "no consistency proof from a tree of 0 entries (RFC 9162 defines them only \
                 from a non-empty tree)"
                    .into(),
            ));
        }
        if old == new {
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

/// Reads and verifies the stored checkpoint.
fn load_checkpoint(cp_path: &Path, public: &LedgerPublicKeys) -> Result<SignedCheckpoint> {
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
fn check_covers(dir: &Path, files: &Files, cp: &SignedCheckpoint) -> Result<(u64, u64)> {
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
fn recover(dir: &Path, files: &Files, cp: &SignedCheckpoint) -> Result<u64> {
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

/// What the writer thread knows beyond the committed state.
#[derive(Default)]
struct Writer {
    /// `CHECKPOINT_NEXT`, opened (empty) ahead of the next commit.
    spare: Option<File>,
    /// The files may hold bytes past the committed state (a failed batch's, not cut yet).
    dirty: bool,
    /// The rename of a new checkpoint reported an error and whether it took place is not
    /// known yet: the state it commits if it did. No batch is written until it is known.
    unresolved: Option<State>,
}

impl Writer {
    /// Brings the files back to the committed state before a batch: settles a checkpoint
    /// rename whose outcome is not known, then cuts what a failed batch left.
    fn settle(&mut self, inner: &Inner) -> Result<()> {
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
    fn refill(&mut self, inner: &Inner) {
        if self.spare.is_some() || self.unresolved.is_some() {
            return;
        }
        match open_next_checkpoint(inner) {
            Ok(f) => self.spare = Some(f),
            Err(e) => warn!(error = %e, "could not open the next checkpoint's file ahead"),
        }
    }
}

fn open_next_checkpoint(inner: &Inner) -> Result<File> {
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
fn renamed(inner: &Inner) -> Result<bool> {
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

fn writer_loop(inner: &Inner, rx: &mpsc::Receiver<Request>) {
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
fn rollback(inner: &Inner) -> Result<()> {
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

type Committed = (Vec<u64>, Arc<SignedCheckpoint>);

/// Writes a batch and commits it. The commit point is the rename of the new checkpoint over
/// the old one, after every ledger file is fsynced: an error before it leaves `w.dirty`
/// (the caller cuts the files back), one after it leaves the new state installed (the
/// entries are durable and named by the checkpoint on disk) but still fails the batch,
/// because the rename may not survive a crash.
fn commit(inner: &Inner, w: &mut Writer, batch: &[Request]) -> Result<Committed> {
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
