//! `trackshift ledger ...`: auditor and operator commands over the gateway's ledger.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use trackshift_crypto::{FileKeyStore, KeyBackend as _, PublicKeyring};
use trackshift_ledger::{Ledger, verify_checkpoint, verify_consistency};

/// Ledger subcommands.
#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Re-check the whole ledger of a gateway: every entry's signature, every hash, the root
    /// against the latest signed checkpoint (read-only: the gateway may keep running).
    ///
    /// For a ledger shared through PostgreSQL (`serve --store`), give the database URL and
    /// every gateway's public key file (`keys export-public --ledger ...`).
    #[command(group(clap::ArgGroup::new("log").required(true).args(["data_dir", "store"])))]
    Verify {
        /// The gateway's data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The shared ledger's database: `postgres://USER@HOST:PORT/DB`.
        #[arg(
            long,
            requires = "public_keys",
            env = "TRACKSHIFT_STORE",
            hide_env_values = true
        )]
        store: Option<String>,
        /// Public key files of the gateways that write the shared ledger (repeatable; the
        /// ledger keys must be in at least one).
        #[arg(long)]
        public_keys: Vec<PathBuf>,
    },
    /// Fetch the time-stamp of a receipt's checkpoint from a gateway with `serve --tsa`:
    /// the first time-stamp at or after the checkpoint the receipt's ledger proof is in,
    /// with the consistency proof from it. Saves OUT (for `verify --timestamp`) and, for
    /// `openssl ts -verify -data OUT.checkpoint -in OUT.tsr -CAfile tsa-ca.pem`, the stamped
    /// checkpoint and the authority's response beside it.
    Timestamp {
        /// The gateway's HTTP endpoint, e.g. http://127.0.0.1:8480 (`serve --http`).
        #[arg(long)]
        gateway: String,
        /// The receipt (with its ledger proof).
        #[arg(long)]
        receipt: PathBuf,
        /// Where to save the time-stamp.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the latest signed checkpoint (save it to check consistency later).
    Checkpoint {
        #[command(flatten)]
        from: Source,
    },
    /// Prove that the log only grew between two saved checkpoints: both signatures and the
    /// consistency proof (from the gateway) are verified locally.
    Consistency {
        /// The earlier signed checkpoint.
        old: PathBuf,
        /// The later signed checkpoint.
        new: PathBuf,
        /// Public key file (with the ledger keys) from `keys export-public`.
        #[arg(long)]
        public_keys: PathBuf,
        #[command(flatten)]
        from: Source,
    },
}

/// Where ledger data comes from: the gateway's data directory or its HTTP endpoint.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// The gateway's data directory (read-only access).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The gateway's HTTP endpoint, e.g. http://127.0.0.1:8480 (`serve --http`).
    #[arg(long)]
    gateway: Option<String>,
}

/// Manifests, receipts and key sets seen while re-checking a ledger.
#[derive(Default)]
struct DocumentCount {
    manifests: u64,
    receipts: u64,
    key_sets: u64,
    /// The last key set seen, when each must carry on from the one before (a ledger one
    /// gateway writes; gateways sharing a log each record their own).
    history: Option<Option<PublicKeyring>>,
}

impl DocumentCount {
    /// A count that also checks the key sets form one history (docs/FORMATS.md 8.7).
    fn with_history() -> Self {
        Self {
            history: Some(None),
            ..Self::default()
        }
    }

    /// Checks one entry (a document's signature against `ring`, or a key set) and counts it.
    fn check(&mut self, entry: &[u8], ring: &PublicKeyring) -> std::result::Result<(), String> {
        if let Some(set) =
            trackshift_crypto::keyset::decode_key_set(entry).map_err(|e| format!("key set: {e}"))?
        {
            self.key_sets += 1;
            if let Some(last) = &mut self.history {
                if let Some(before) = last.as_ref() {
                    trackshift_crypto::keyset::check_history(before, &set.keys)
                        .map_err(|e| format!("key set recorded at {}: {e}", set.recorded_at))?;
                }
                *last = Some(set.keys);
            }
            return Ok(());
        }
        let (format, key) = trackshift_crypto::verify_signed_bytes(entry, ring)
            .map_err(|e| format!("document signature: {e}"))?;
        // Once the ledger records key sets, a document's key must have been published in
        // the one recorded before it.
        if let Some(Some(published)) = &self.history
            && published.get(&key.id).is_none()
        {
            return Err(format!(
                "the {format} is signed with key {}, which no key set recorded before it lists",
                key.id
            ));
        }
        if format.contains("manifest") {
            self.manifests += 1;
        } else {
            self.receipts += 1;
        }
        Ok(())
    }

    fn report(&self, location: &str, v: &trackshift_ledger::VerifiedCheckpoint) -> Result<()> {
        crate::print_lines(&self.lines(location, v))
    }

    /// What `ledger verify` prints for a ledger that passed.
    fn lines(&self, location: &str, v: &trackshift_ledger::VerifiedCheckpoint) -> Vec<String> {
        vec![
            format!(
                "OK ledger {location} ({}): {} entries ({} manifests, {} receipts, {} key sets), root {}",
                v.origin,
                v.size,
                self.manifests,
                self.receipts,
                self.key_sets,
                hex::encode(v.root)
            ),
            "   every signature, hash and the signed checkpoint verify".into(),
        ]
    }
}

/// `ledger verify --data-dir`: re-checks the whole ledger of an embedded data directory
/// (every entry's signature with the keys in `DATA/keys`, every hash, the checkpoint).
/// Returns the checkpoint verified and the lines reporting it.
pub(crate) fn verify_data_dir(
    data_dir: &Path,
) -> Result<(trackshift_ledger::VerifiedCheckpoint, Vec<String>)> {
    let ring = FileKeyStore::open(data_dir.join("keys"))?.public_keyring()?;
    let ledger = Ledger::open_read_only(ledger_dir(data_dir), None)?;
    let mut count = DocumentCount::with_history();
    let v = ledger.verify_all(|_, entry| count.check(entry, &ring))?;
    let lines = count.lines(&ledger.dir().display().to_string(), &v);
    Ok((v, lines))
}

/// The ledger directory of a gateway data directory.
pub fn ledger_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger")
}

/// Runs a ledger subcommand.
pub fn run(cmd: LedgerCommand) -> Result<()> {
    match cmd {
        LedgerCommand::Verify {
            data_dir: Some(data_dir),
            ..
        } => {
            let (_, lines) = verify_data_dir(&data_dir)?;
            crate::print_lines(&lines)?;
        }
        LedgerCommand::Verify {
            store: Some(url),
            public_keys,
            ..
        } => {
            let mut ring: Option<PublicKeyring> = None;
            for path in &public_keys {
                let r = PublicKeyring::from_json(&crate::read(path)?)
                    .with_context(|| format!("public key file {}", path.display()))?;
                ring = Some(match ring {
                    None => r,
                    Some(mut all) => {
                        // Document keys add up; the ledger keys name one log, so files that
                        // name two different ledgers are refused rather than one picked.
                        if let (Some(a), Some(b)) = (&all.ledger, &r.ledger)
                            && a != b
                        {
                            bail!(
                                "{} names other ledger keys than the files before it: give the \
                                 key files of the gateways that share this one log",
                                path.display()
                            );
                        }
                        all.keys.extend(r.keys);
                        all.ledger = all.ledger.or(r.ledger);
                        all
                    }
                });
            }
            let ring = ring.context("give the gateways' public key files with --public-keys")?;
            let ledger_keys = ring.ledger.clone().context(
                "none of the public key files holds the ledger keys (export them with --ledger)",
            )?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (v, count) = runtime.block_on(async {
                let ledger = trackshift_ledger::PgLedger::open_read_only(&url, ledger_keys).await?;
                let mut count = DocumentCount::default();
                let v = ledger
                    .verify_all(|_, entry| count.check(entry, &ring))
                    .await?;
                anyhow::Ok((v, count))
            })?;
            count.report("(shared, PostgreSQL)", &v)?;
        }
        LedgerCommand::Verify { .. } => unreachable!("clap requires --data-dir or --store"),
        LedgerCommand::Timestamp {
            gateway,
            receipt,
            out,
        } => {
            let r = trackshift_crypto::Receipt::from_json(&crate::read(&receipt)?)
                .with_context(|| format!("{}", receipt.display()))?;
            let proof = r.ledger_proof.as_deref().with_context(|| {
                format!(
                    "{} has no ledger proof to find its checkpoint",
                    receipt.display()
                )
            })?;
            let proof = trackshift_ledger::TlogProof::parse(proof)?;
            let size: u64 = proof
                .checkpoint
                .lines()
                .nth(1)
                .and_then(|l| l.parse().ok())
                .context("the receipt's checkpoint has no tree size")?;
            let body = fetch(&gateway, &format!("/v1/ledger/timestamp?size={size}"))?;
            let stamp: crate::tsa::Stamp =
                serde_json::from_str(&body).context("the gateway's time-stamp")?;
            let der =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &stamp.response)
                    .context("the time-stamp response is not base64")?;
            trackshift_crypto::filestore::write_atomic(&out, body.as_bytes(), 0o644)?;
            let beside = |ext: &str| crate::files::beside(&out, ext);
            trackshift_crypto::filestore::write_atomic(&beside(".tsr"), &der, 0o644)?;
            trackshift_crypto::filestore::write_atomic(
                &beside(".checkpoint"),
                stamp.checkpoint.as_bytes(),
                0o644,
            )?;
            crate::print_lines(&[format!(
                "saved the time-stamp of the checkpoint of {} entries (the receipt's has {size}) to {}, with {} and {}: {} by {}",
                stamp.size,
                out.display(),
                beside(".tsr").display(),
                beside(".checkpoint").display(),
                stamp.time,
                stamp.tsa
            )])?;
        }
        LedgerCommand::Checkpoint { from } => {
            let note = match (&from.data_dir, &from.gateway) {
                (Some(dir), _) => {
                    let path = ledger_dir(dir).join("checkpoint");
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                }
                (None, Some(url)) => fetch(url, "/checkpoint")?,
                (None, None) => unreachable!("clap requires one source"),
            };
            crate::print_text(&note)?;
        }
        LedgerCommand::Consistency {
            old,
            new,
            public_keys,
            from,
        } => {
            let ring = PublicKeyring::from_json(&crate::read(&public_keys)?)
                .with_context(|| format!("public key file {}", public_keys.display()))?;
            let keys = ring.ledger.as_ref().with_context(|| {
                format!(
                    "{} has no ledger keys; export them from the gateway",
                    public_keys.display()
                )
            })?;
            let read = |p: &Path| -> Result<String> {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let a = verify_checkpoint(&read(&old)?, keys)
                .with_context(|| format!("checkpoint {}", old.display()))?;
            let b = verify_checkpoint(&read(&new)?, keys)
                .with_context(|| format!("checkpoint {}", new.display()))?;
            if a.size == 0 {
                bail!(
                    "{} is a checkpoint of the empty log (0 entries): RFC 9162 defines \
                     consistency proofs only from a non-empty tree, so there is nothing to prove",
                    old.display()
                );
            }
            if a.size > b.size {
                bail!(
                    "{} is larger ({}) than {} ({}); pass the earlier checkpoint first",
                    old.display(),
                    a.size,
                    new.display(),
                    b.size
                );
            }
            let proof = match (&from.data_dir, &from.gateway) {
                (Some(dir), _) => Ledger::open_read_only(ledger_dir(dir), Some(keys.clone()))?
                    .consistency_proof(a.size, b.size)?,
                (None, Some(url)) => {
                    let body = fetch(
                        url,
                        &format!("/v1/ledger/proof/consistency?old={}&new={}", a.size, b.size),
                    )?;
                    let served: crate::http::ConsistencyProof = serde_json::from_str(&body)
                        .context("the gateway's consistency proof is malformed")?;
                    served
                        .hashes()
                        .context("the gateway's proof holds a malformed hash")?
                }
                (None, None) => unreachable!("clap requires one source"),
            };
            verify_consistency(a.size, b.size, &a.root, &b.root, &proof)?;
            crate::print_lines(&[format!(
                "OK the log grew from {} to {} entries without rewriting history ({} proof hashes)",
                a.size,
                b.size,
                proof.len()
            )])?;
        }
    }
    Ok(())
}

/// Fetches a path from a gateway's HTTP endpoint (a small runtime of its own: the ledger
/// commands are otherwise synchronous).
fn fetch(base: &str, path: &str) -> Result<String> {
    crate::runtime()?.block_on(crate::http::fetch(base, path))
}
