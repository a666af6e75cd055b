//! The log in PostgreSQL, so several gateways append to one ledger sequence.
//!
//! Same log as [`crate::Ledger`]: RFC 9162 hashing with the stored-hash layout of
//! `tlog_tiles`, checkpoints signed with the log's Ed25519 key and cosigned with ML-DSA-44,
//! the same proofs. Every gateway sharing the log holds the same keys (one log identity);
//! the first one to connect records their public half in the database, and that record
//! says which pair signs: a gateway signs with the pair it names, and refuses a record
//! naming a pair its key files do not (so whoever can write the table cannot make the
//! gateways accept another key).
//!
//! Rotation is in two steps, so no gateway is ever asked to sign with a pair it lacks:
//! [`crate::stage_ledger_keys`] adds a new pair to a key directory (copy the file to every
//! gateway; they load it on change and keep signing with the current pair), then
//! [`PgLedger::activate_staged`] makes it current in the database, under the log's lock:
//! the old pair is retired with its window ending after the last checkpoint it signed, and
//! every gateway's next append signs with the new one.
//!
//! ```text
//! ledger_meta(origin, public_keys)          the log's public keys (JSON, with the retired)
//! ledger_entries(origin, idx, data)         the entries, 0-based
//! ledger_hashes(origin, idx, hash)          stored tree hashes (tlog_tiles order)
//! ledger_checkpoints(origin, size, note)    every signed checkpoint; the largest is current
//! ```
//!
//! An append runs in one transaction under an advisory lock on the log: it reads the
//! current checkpoint (checking its signatures), writes the entries and their hashes,
//! checks the new tree extends the old one, signs and stores the new checkpoint, commits.
//! A gateway that dies mid-append leaves nothing (the transaction rolls back). The entries,
//! their hashes and the checkpoint covering them are one transaction, committed with
//! `synchronous_commit = on`: no checkpoint is visible, or acknowledged, before its entries
//! are durable. A commit whose outcome is unknown (the connection dropped) fails the append;
//! the entries may be in the log, and a retried finish finds them (`Log::find_appended`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tlog_tiles::{Hash, HashReader};

use crate::error::{LedgerError, Result};
use crate::note::{LedgerPublicKeys, VerifiedCheckpoint, verify_checkpoint};
use crate::proof::TlogProof;
use crate::rotation::{LiveLedgerKeys, public_keys_json};
use crate::store::{Appended, SignedCheckpoint};

mod keys;
mod read;

/// The log in PostgreSQL.
pub struct PgLedger {
    pool: deadpool_postgres::Pool,
    origin: String,
    /// Signing keys; `None` for an auditor's read-only handle.
    keys: Option<LiveLedgerKeys>,
    /// The log's public keys: the database's record as last read (a writer) or the
    /// auditor's (read-only), and the record's text.
    public: RwLock<(String, Arc<LedgerPublicKeys>)>,
    /// Advisory lock id of this log (from its origin).
    lock_id: i64,
    latest: RwLock<Arc<SignedCheckpoint>>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("origin", &self.origin)
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

fn db(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Damaged(format!("ledger database: {e}"))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_meta (origin TEXT PRIMARY KEY, public_keys TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_entries (
    origin TEXT NOT NULL, idx BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (origin, idx));
CREATE TABLE IF NOT EXISTS ledger_hashes (
    origin TEXT NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (origin, idx));
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
    origin TEXT NOT NULL, size BIGINT NOT NULL, note TEXT NOT NULL, PRIMARY KEY (origin, size));
";

/// Reads hashes in two passes: first it records which indexes a `tlog_tiles` computation
/// asks for (answering zeros: the indexes depend only on tree sizes), then it answers from
/// the hashes fetched for them.
enum TwoPass<'a> {
    Record(Mutex<Vec<u64>>),
    Answer(&'a HashMap<u64, Hash>),
}

impl HashReader for TwoPass<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> std::result::Result<Vec<Hash>, tlog_tiles::Error> {
        match self {
            TwoPass::Record(seen) => {
                seen.lock().expect("record lock").extend_from_slice(indexes);
                Ok(vec![Hash([0; 32]); indexes.len()])
            }
            TwoPass::Answer(known) => indexes
                .iter()
                .map(|i| {
                    known
                        .get(i)
                        .copied()
                        .ok_or(tlog_tiles::Error::IndexesNotInTree)
                })
                .collect(),
        }
    }
}

/// Runs `f` over the log's stored hashes: `known` first, the rest fetched from `client`.
async fn with_hashes<T>(
    client: &impl deadpool_postgres::GenericClient,
    origin: &str,
    known: &mut HashMap<u64, Hash>,
    f: impl Fn(&TwoPass<'_>) -> std::result::Result<T, tlog_tiles::Error>,
) -> Result<T> {
    let record = TwoPass::Record(Mutex::new(Vec::new()));
    let _ = f(&record);
    let TwoPass::Record(seen) = record else {
        unreachable!("made as Record above")
    };
    let missing: Vec<i64> = seen
        .into_inner()
        .expect("record lock")
        .into_iter()
        .filter(|i| !known.contains_key(i))
        .map(|i| i64::try_from(i).unwrap_or(i64::MAX))
        .collect();
    if !missing.is_empty() {
        let rows = client
            .query(
                "SELECT idx, hash FROM ledger_hashes WHERE origin = $1 AND idx = ANY($2)",
                &[&origin, &missing],
            )
            .await
            .map_err(db)?;
        for r in rows {
            let idx: i64 = r.get(0);
            let bytes: Vec<u8> = r.get(1);
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| LedgerError::Damaged(format!("stored hash {idx} is not 32 bytes")))?;
            known.insert(u64::try_from(idx).unwrap_or(0), Hash(hash));
        }
    }
    f(&TwoPass::Answer(known)).map_err(|e| LedgerError::Damaged(format!("tree hashes: {e}")))
}

/// The largest signed checkpoint of `origin`, verified, or `None` for a new log.
async fn latest_checkpoint(
    client: &impl deadpool_postgres::GenericClient,
    origin: &str,
    public: &LedgerPublicKeys,
) -> Result<Option<SignedCheckpoint>> {
    let row = client
        .query_opt(
            "SELECT note FROM ledger_checkpoints WHERE origin = $1 ORDER BY size DESC LIMIT 1",
            &[&origin],
        )
        .await
        .map_err(db)?;
    let Some(row) = row else { return Ok(None) };
    let note: String = row.get(0);
    let v = verify_checkpoint(&note, public)?;
    Ok(Some(SignedCheckpoint {
        size: v.size,
        root: v.root,
        note,
    }))
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A pool of connections to `url` (TLS as the URL asks: see [`trackshift_net::pgconn`]).
fn pool(url: &str) -> Result<deadpool_postgres::Pool> {
    trackshift_net::pgconn::pool(url, 8).map_err(|e| LedgerError::InvalidRequest(e.to_string()))
}

/// The stored-hash indexes of the complete subtrees a tree of `size` entries is made of
/// (its right edge): all that the next entries' hashes and the tree's root read.
fn right_edge(size: u64) -> Vec<u64> {
    (0..64u8)
        .filter(|l| (size >> l) & 1 == 1)
        .map(|l| tlog_tiles::stored_hash_index(l, (size >> l) - 1))
        .collect()
}

/// The log's advisory lock id: the first 8 bytes of SHA-256 of its origin.
fn lock_id(origin: &str) -> i64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, origin.as_bytes());
    i64::from_be_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PgLedger {
    /// Connects to the log of `keys` in the database at `url`, creating it on first use.
    /// Refuses a log whose recorded keys name a pair `keys` does not hold (see the module
    /// docs). Writes the log's public keys next to the key files (`public-keys.json`).
    pub async fn connect(url: &str, keys: LiveLedgerKeys) -> Result<Self> {
        Self::connect_inner(url, keys, true).await
    }

    /// [`PgLedger::connect`] to a log that must exist already (a tool acting on a running
    /// log: it never creates one in a database given by mistake).
    pub async fn connect_existing(url: &str, keys: LiveLedgerKeys) -> Result<Self> {
        Self::connect_inner(url, keys, false).await
    }

    async fn connect_inner(url: &str, keys: LiveLedgerKeys, create: bool) -> Result<Self> {
        let pool = pool(url)?;
        let mine = keys.public_keys();
        let origin = mine.origin.clone();
        let lock_id = lock_id(&origin);
        let mut ledger = Self {
            pool,
            origin,
            keys: Some(keys),
            public: RwLock::new((String::new(), Arc::new(mine.clone()))),
            lock_id,
            latest: RwLock::new(Arc::new(SignedCheckpoint {
                size: 0,
                root: tlog_tiles::EMPTY_HASH.0,
                note: String::new(),
            })),
        };
        let mut client = ledger.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ledger.lock_id])
            .await
            .map_err(db)?;
        tx.batch_execute(SCHEMA).await.map_err(db)?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM ledger_meta WHERE origin = $1",
                &[&ledger.origin],
            )
            .await
            .map_err(db)?
            .is_some();
        if !exists && !create {
            return Err(LedgerError::InvalidRequest(format!(
                "no log {} in the database",
                ledger.origin
            )));
        }
        if !exists {
            tx.execute(
                "INSERT INTO ledger_meta (origin, public_keys) VALUES ($1, $2)",
                &[
                    &ledger.origin,
                    &serde_json::to_string(&mine).expect("keys serialise"),
                ],
            )
            .await
            .map_err(db)?;
        }
        let public = ledger.read_keys(&tx).await?;
        let latest = match latest_checkpoint(&tx, &ledger.origin, &public).await? {
            Some(cp) => cp,
            None => {
                let root = tlog_tiles::EMPTY_HASH.0;
                let note = ledger.sign(&public, 0, root)?;
                tx.execute(
                    "INSERT INTO ledger_checkpoints (origin, size, note) VALUES ($1, 0, $2)",
                    &[&ledger.origin, &note],
                )
                .await
                .map_err(db)?;
                tracing::info!(origin = ledger.origin, "created the shared ledger");
                SignedCheckpoint {
                    size: 0,
                    root,
                    note,
                }
            }
        };
        tx.commit().await.map_err(db)?;
        drop(client);
        ledger.latest = RwLock::new(Arc::new(latest));
        ledger.write_public_file(&public)?;
        Ok(ledger)
    }

    /// Opens the log `public.origin` for reading only (an auditor: no private keys, nothing
    /// written). Checkpoints are verified with `public`, which must be the log's keys.
    pub async fn open_read_only(url: &str, public: LedgerPublicKeys) -> Result<Self> {
        let pool = pool(url)?;
        let origin = public.origin.clone();
        let client = pool.get().await.map_err(db)?;
        let latest = latest_checkpoint(&client, &origin, &public)
            .await?
            .ok_or_else(|| {
                LedgerError::InvalidRequest(format!("no log {origin} in the database"))
            })?;
        drop(client);
        Ok(Self {
            pool,
            lock_id: lock_id(&origin),
            origin,
            keys: None,
            public: RwLock::new((String::new(), Arc::new(public))),
            latest: RwLock::new(Arc::new(latest)),
        })
    }

    /// The log's public keys (with the retired pairs), as last read.
    pub fn public_keys(&self) -> LedgerPublicKeys {
        (*self.public_keys_held()).clone()
    }

    /// The latest checkpoint this handle has seen.
    pub fn checkpoint(&self) -> Arc<SignedCheckpoint> {
        self.latest.read().expect("checkpoint lock").clone()
    }

    /// Entries in the latest checkpoint this handle has seen.
    pub fn size(&self) -> u64 {
        self.checkpoint().size
    }

    /// Appends `entries` contiguously (whoever else appends meanwhile) and returns where
    /// they went and the signed checkpoint that covers them.
    pub async fn append(&self, entries: Vec<Vec<u8>>) -> Result<Appended> {
        if entries.is_empty() {
            return Err(LedgerError::InvalidRequest("nothing to append".into()));
        }
        if let Some(e) = entries
            .iter()
            .find(|e| e.len() > crate::store::MAX_ENTRY_LEN)
        {
            return Err(LedgerError::InvalidRequest(format!(
                "an entry of {} bytes is larger than {}",
                e.len(),
                crate::store::MAX_ENTRY_LEN
            )));
        }
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock_id])
            .await
            .map_err(db)?;
        // The commit acknowledges the entries: it must be durable whatever the server's or
        // role's default (with `synchronous_commit = off` a crash can lose a committed
        // checkpoint whose receipts are already out, and the log would then fork).
        tx.batch_execute("SET LOCAL synchronous_commit TO on")
            .await
            .map_err(db)?;
        let public = self.read_keys(&tx).await?;
        let old = latest_checkpoint(&tx, &self.origin, &public)
            .await?
            .ok_or_else(|| LedgerError::Damaged("the shared log has no checkpoint".into()))?;
        let mut known = HashMap::new();
        let (mut idx, mut datas, mut hidx, mut hashes) = (vec![], vec![], vec![], vec![]);
        let mut n = old.size;
        for e in &entries {
            let stored = with_hashes(&tx, &self.origin, &mut known, |r| {
                tlog_tiles::stored_hashes(n, e, r)
            })
            .await?;
            let first = tlog_tiles::stored_hash_count(n);
            for (k, h) in stored.into_iter().enumerate() {
                known.insert(first + k as u64, h);
                hidx.push(i64::try_from(first + k as u64).unwrap_or(i64::MAX));
                hashes.push(h.0.to_vec());
            }
            idx.push(i64::try_from(n).unwrap_or(i64::MAX));
            datas.push(e.clone());
            n += 1;
        }
        let root = with_hashes(&tx, &self.origin, &mut known, |r| {
            tlog_tiles::tree_hash(n, r)
        })
        .await?
        .0;
        // Never sign a checkpoint that does not extend the previous one.
        if old.size > 0 {
            let proof = with_hashes(&tx, &self.origin, &mut known, |r| {
                tlog_tiles::prove_tree(n, old.size, r)
            })
            .await?;
            tlog_tiles::check_tree(&proof, n, Hash(root), old.size, Hash(old.root)).map_err(
                |e| {
                    LedgerError::Damaged(format!(
                        "new tree does not extend the last checkpoint: {e}"
                    ))
                },
            )?;
        }
        tx.execute(
            "INSERT INTO ledger_entries (origin, idx, data) SELECT $1, * FROM UNNEST($2::BIGINT[], $3::BYTEA[])",
            &[&self.origin, &idx, &datas],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "INSERT INTO ledger_hashes (origin, idx, hash) SELECT $1, * FROM UNNEST($2::BIGINT[], $3::BYTEA[])",
            &[&self.origin, &hidx, &hashes],
        )
        .await
        .map_err(db)?;
        let note = self.sign(&public, n, root)?;
        let size = i64::try_from(n).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO ledger_checkpoints (origin, size, note) VALUES ($1, $2, $3)",
            &[&self.origin, &size, &note],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let cp = Arc::new(SignedCheckpoint {
            size: n,
            root,
            note,
        });
        self.advance(cp.clone());
        Ok(Appended {
            first_index: old.size,
            count: entries.len() as u64,
            checkpoint: cp,
        })
    }

    /// Holds `cp` if it is newer than the checkpoint held.
    fn advance(&self, cp: Arc<SignedCheckpoint>) {
        let mut held = self.latest.write().expect("checkpoint lock");
        if cp.size > held.size {
            *held = cp;
        }
    }

    /// Moves to the latest checkpoint in the database (other gateways append too), after
    /// checking its signatures and that it extends the one held.
    pub async fn refresh(&self) -> Result<Arc<SignedCheckpoint>> {
        let client = self.pool.get().await.map_err(db)?;
        let held = self.checkpoint();
        let public = self.read_keys(&client).await?;
        let Some(cp) = latest_checkpoint(&client, &self.origin, &public).await? else {
            return Err(LedgerError::Damaged(
                "the shared log has no checkpoint".into(),
            ));
        };
        if cp.size < held.size {
            return Err(LedgerError::Damaged(format!(
                "the shared log's checkpoint went back from {} to {} entries",
                held.size, cp.size
            )));
        }
        if cp.size == held.size {
            if cp.root != held.root {
                return Err(LedgerError::Damaged(
                    "two signed checkpoints of the same size have different roots".into(),
                ));
            }
            return Ok(held);
        }
        let mut known = HashMap::new();
        let root = with_hashes(&client, &self.origin, &mut known, |r| {
            tlog_tiles::tree_hash(cp.size, r)
        })
        .await?;
        if root.0 != cp.root {
            return Err(LedgerError::Damaged(format!(
                "the stored hashes do not give the root of the checkpoint of {} entries",
                cp.size
            )));
        }
        if held.size > 0 {
            let proof = with_hashes(&client, &self.origin, &mut known, |r| {
                tlog_tiles::prove_tree(cp.size, held.size, r)
            })
            .await?;
            tlog_tiles::check_tree(&proof, cp.size, Hash(cp.root), held.size, Hash(held.root))
                .map_err(|e| {
                    LedgerError::Damaged(format!(
                        "the new checkpoint does not extend the one held: {e}"
                    ))
                })?;
        }
        let cp = Arc::new(cp);
        self.advance(cp.clone());
        Ok(self.checkpoint())
    }
}
