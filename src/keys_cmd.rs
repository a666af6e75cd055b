//! `trackshift keys`: the key store's keys and the ledger's checkpoint keys (rotation on a
//! running gateway, file ledger or shared through PostgreSQL).

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use trackshift_crypto::pkcs11::{HsmConfig, Token};
use trackshift_crypto::{FileKeyStore, KeyBackend as _, KeyId, Purpose, Timestamp};

use crate::{read, write_doc};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key store with one active key per purpose (manifest: ML-DSA-65, receipt: Ed25519).
    ///
    /// With `--pkcs11`, the receipt key is generated on an HSM's token (non-extractable,
    /// never in this process) and so is every later rotation of it; the gateway signs
    /// receipts there, and the gateway's ledger (checkpoint) key goes on the same token. The
    /// ML-DSA-65 manifest key goes there too when the token offers PKCS#11 3.2 ML-DSA, else
    /// it stays in software (docs/RUNBOOK.md, "HSM operations"). The token must exist (made with the HSM's own tools) and the PIN file
    /// must be owner-only; the store keeps the file's path, never the PIN.
    Init {
        /// Directory for the key store (created 0700; secret files are 0600). A gateway's
        /// is `DATA/keys`: initialise it before the first `serve`.
        #[arg(long)]
        dir: PathBuf,
        /// The HSM's PKCS#11 module (shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
        #[arg(long, value_name = "MODULE", requires_all = ["token", "pin_file"])]
        pkcs11: Option<PathBuf>,
        /// The label of the token the receipt keys go on.
        #[arg(long, value_name = "LABEL", requires = "pkcs11")]
        token: Option<String>,
        /// File holding the token's user PIN (one line, mode 0600).
        #[arg(long, value_name = "FILE", requires = "pkcs11")]
        pin_file: Option<PathBuf>,
    },
    /// Retire the active key of a purpose and activate a new one; old signatures keep verifying.
    ///
    /// Safe on a running gateway's store (`DATA/keys`): the gateway signs with the new key
    /// from the next signature on, without a restart. `ledger` rotates the checkpoint keys of
    /// the ledger next to the store (`DATA/ledger`); `all` rotates every purpose.
    ///
    /// A ledger shared through PostgreSQL (`serve --store postgres://...`) rotates in its
    /// database, for every gateway at once: with several gateways, stage the new pair first
    /// (`--prepare`), copy `ledger-keys.json` to each gateway's ledger key directory, then
    /// run without `--prepare` to activate it.
    Rotate {
        /// The key store directory.
        #[arg(long)]
        dir: PathBuf,
        /// Which key to rotate.
        #[arg(long, value_parser = ["manifest", "receipt", "ledger", "all"])]
        purpose: String,
        /// The ledger directory whose checkpoint keys `ledger` rotates (default: the
        /// `ledger` directory next to the key store).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// The key directory of a ledger shared through PostgreSQL (as given to `serve
        /// --ledger-keys`; default: `keys` in the ledger directory).
        #[arg(long)]
        ledger_keys: Option<PathBuf>,
        /// The database of a ledger shared through PostgreSQL (as given to `serve --store`;
        /// better: the TRACKSHIFT_STORE environment variable).
        #[arg(long, env = "TRACKSHIFT_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Shared ledger: only stage a new pair in the key directory (held by the gateways
        /// that load it, signing nothing yet).
        #[arg(long)]
        prepare: bool,
    },
    /// Revoke a key: nothing it ever signed verifies any more. Re-export the public keys after.
    Revoke {
        /// The key store directory.
        #[arg(long)]
        dir: PathBuf,
        /// Id of the key (64 hex digits, see `keys list`).
        #[arg(long)]
        key_id: String,
    },
    /// Fetch a gateway's public keys for auditing, checked against its ledger.
    ///
    /// Asks the gateway (over QUIC, its certificate pinned as for `send`) for the key set
    /// its ledger records last, with the proof that the entry is in a checkpoint signed by
    /// the ledger keys it names. With `--previous`, the file an earlier fetch saved: the
    /// gateway must also prove the log only grew since that fetch's checkpoint, and the
    /// new key set must carry on from the old one (no key dropped, no status moved back,
    /// no window changed). Saves the key file `trackshift verify --public-keys` takes, and
    /// beside it OUT.checkpoint, for the next `--previous`. Exit 1 when the gateway's
    /// answer does not hold.
    Fetch {
        /// The gateway: HOST[:PORT], IPv4[:PORT] or [IPv6][:PORT] (default port 4433).
        #[arg(long)]
        gateway: String,
        /// SHA-256 fingerprint of the gateway's certificate (printed by `serve`).
        #[arg(long)]
        fingerprint: Option<String>,
        /// CA certificate (PEM) the gateway's certificate chains to, instead of a fingerprint.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Server name to expect in the certificate (with --ca; default: the host).
        #[arg(long)]
        server_name: Option<String>,
        /// Where to save the key file (OUT.checkpoint goes beside it).
        #[arg(long)]
        out: PathBuf,
        /// A key file saved by an earlier fetch (with its .checkpoint beside it).
        #[arg(long)]
        previous: Option<PathBuf>,
    },
    /// List keys with their purpose, status and validity window.
    List {
        /// The key store directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write the public key file auditors verify with (no secret material).
    ExportPublic {
        /// The key store directory.
        #[arg(long)]
        dir: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Include the checkpoint keys of this ledger directory (default: the `ledger`
        /// directory next to the key store, when there is one).
        #[arg(long)]
        ledger: Option<PathBuf>,
    },
}

/// Runs `trackshift keys ...`.
pub fn run(cmd: KeysCommand) -> Result<()> {
    let now = Timestamp::now();
    match cmd {
        KeysCommand::Init {
            dir,
            pkcs11,
            token,
            pin_file,
        } => {
            let store = match (pkcs11, token, pin_file) {
                (Some(module), Some(token), Some(pin_file)) => {
                    let cfg = HsmConfig::new(&module, &token, &pin_file)?;
                    let ml_dsa = Token::open(&cfg)?.offers_ml_dsa()?;
                    let store = FileKeyStore::init_with_hsm(&dir, now, cfg.clone())?;
                    let ledger = hsm_for_ledger(&dir, &cfg)?;
                    println!(
                        "created key store {}: receipt keys on PKCS#11 token {token:?} (non-extractable), {}",
                        dir.display(),
                        if ml_dsa {
                            "the manifest key too (the token offers ML-DSA)"
                        } else {
                            "the manifest key in software (the token offers no ML-DSA)"
                        }
                    );
                    println!("{ledger}");
                    store
                }
                _ => {
                    let store = FileKeyStore::init(&dir, now)?;
                    println!("created key store {}", dir.display());
                    store
                }
            };
            print_keys(&store)?;
        }
        KeysCommand::Rotate {
            dir,
            purpose,
            ledger,
            ledger_keys,
            store,
            prepare,
        } => rotate(dir, &purpose, ledger, ledger_keys, store, prepare)?,
        KeysCommand::Revoke { dir, key_id } => {
            let mut store = FileKeyStore::open(&dir)?;
            let id = KeyId::from_hex(&key_id)?;
            store.revoke(&id, now)?;
            println!("revoked {id}; export the public keys again for auditors");
        }
        KeysCommand::List { dir } => print_keys(&FileKeyStore::open(&dir)?)?,
        KeysCommand::Fetch {
            gateway,
            fingerprint,
            ca,
            server_name,
            out,
            previous,
        } => fetch(
            &gateway,
            crate::send_cmd::trust(fingerprint.as_deref(), ca.as_deref())?,
            server_name,
            &out,
            previous.as_deref(),
        )?,
        KeysCommand::ExportPublic { dir, out, ledger } => {
            let mut ring = FileKeyStore::open(&dir)?.public_keyring()?;
            let ledger = ledger.or_else(|| {
                let sibling = dir.parent()?.join("ledger");
                sibling.join("checkpoint").exists().then_some(sibling)
            });
            if let Some(l) = ledger {
                let path = l.join(trackshift_ledger::store::PUBLIC_KEYS_FILE);
                ring.ledger = Some(
                    serde_json::from_slice(&read(&path)?)
                        .with_context(|| format!("ledger public keys {}", path.display()))?,
                );
            }
            write_doc(&out, &ring.to_json())?;
            println!("wrote {} public keys to {}", ring.keys.len(), out.display());
        }
    }
    Ok(())
}

/// The checkpoint file saved beside a fetched key file.
fn checkpoint_beside(keys: &Path) -> PathBuf {
    crate::files::beside(keys, ".checkpoint")
}

/// `keys fetch`: see its help.
fn fetch(
    gateway: &str,
    trust: trackshift_engine::tls::ServerTrust,
    server_name: Option<String>,
    out: &Path,
    previous: Option<&Path>,
) -> Result<()> {
    use trackshift_engine::keybundle::{KeyBundle, MAX_KEY_BUNDLE, verify_bundle};
    let to = crate::send_cmd::GatewayAddr::parse(gateway)?;
    let previous = previous
        .map(|p| -> Result<(trackshift_crypto::PublicKeyring, String)> {
            let ring = trackshift_crypto::PublicKeyring::from_json(&read(p)?)
                .with_context(|| format!("previous key file {}", p.display()))?;
            let note_path = checkpoint_beside(p);
            let note = String::from_utf8(read(&note_path)?)
                .with_context(|| format!("{} is not text", note_path.display()))?;
            Ok((ring, note))
        })
        .transpose()?;
    // The tree size the auditor saw last: the checkpoint's second line (checked below).
    let since = previous
        .as_ref()
        .and_then(|(_, note)| note.lines().nth(1)?.parse::<u64>().ok());
    let name = server_name
        .or_else(|| to.dns_name().map(str::to_string))
        .unwrap_or_else(|| "localhost".into());
    let rt = crate::runtime()?;
    let body = rt.block_on(async {
        let addr = to.resolve().await?;
        let endpoint =
            trackshift_engine::transport::keys_client_endpoint("[::]:0".parse()?, &trust).or_else(
                |_| {
                    trackshift_engine::transport::keys_client_endpoint("0.0.0.0:0".parse()?, &trust)
                        .map_err(anyhow::Error::from)
                },
            )?;
        let exchange = async {
            let conn = trackshift_engine::transport::connect(&endpoint, addr, &name).await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            let request = match since {
                Some(n) => serde_json::json!({ "since": n }),
                None => serde_json::json!({}),
            };
            send.write_all(request.to_string().as_bytes()).await?;
            send.finish()?;
            let body = recv.read_to_end(MAX_KEY_BUNDLE).await?;
            conn.close(0u32.into(), b"done");
            anyhow::Ok(body)
        };
        let body = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .with_context(|| format!("no key bundle from {gateway} within 30 s"))??;
        endpoint.wait_idle().await;
        anyhow::Ok(body)
    })?;
    let bundle: KeyBundle = serde_json::from_slice(&body).context("the gateway's key bundle")?;
    let fetched = verify_bundle(&bundle, previous.as_ref().map(|(r, n)| (r, n.as_str())))
        .map_err(anyhow::Error::new)?;
    // Both byte for byte as the ledger and the checkpoint have them.
    trackshift_crypto::filestore::write_atomic(out, &fetched.entry.json, 0o644)?;
    let cp = checkpoint_beside(out);
    trackshift_crypto::filestore::write_atomic(&cp, fetched.checkpoint_note.as_bytes(), 0o644)?;
    println!(
        "saved {} keys to {}: the key set recorded at {} as ledger entry {}, in the checkpoint \
         of {} entries of {} (saved to {})",
        fetched.entry.keys.keys.len(),
        out.display(),
        fetched.entry.recorded_at,
        fetched.index,
        fetched.checkpoint.size,
        fetched.checkpoint.origin,
        cp.display()
    );
    if previous.is_some() {
        if fetched.changes.is_empty() {
            println!("no key changed since the previous fetch; the log only grew");
        } else {
            println!("since the previous fetch (the log only grew):");
            for c in &fetched.changes {
                println!("  {c}");
            }
        }
    }
    Ok(())
}

/// Puts the ledger next to a key store (`DIR/../ledger`, as a gateway's `DATA/ledger`) on
/// the same token, when it has no log key yet: its first start makes the checkpoint key
/// there. Returns what to tell the operator.
fn hsm_for_ledger(dir: &Path, cfg: &HsmConfig) -> Result<String> {
    let Some(keys) = dir.parent().map(|p| p.join("ledger").join("keys")) else {
        return Ok("no ledger next to the key store: its checkpoint keys are not affected".into());
    };
    let has_keys = [
        trackshift_ledger::rotation::ROTATED_KEYS_FILE,
        "log-ed25519.key",
        trackshift_ledger::ED25519_TOKEN_FILE,
    ]
    .iter()
    .any(|f| keys.join(f).exists());
    if has_keys {
        return Ok(format!(
            "the ledger in {} has its checkpoint keys already: they stay where they are \
             (put {} there and run `keys rotate --purpose ledger` to move the log key to the token)",
            keys.display(),
            trackshift_crypto::pkcs11::HSM_CONFIG_FILE
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&keys)
        .with_context(|| format!("creating {}", keys.display()))?;
    cfg.save(&keys)?;
    Ok(format!(
        "the ledger's checkpoint (log) key: made on the same token at the gateway's first \
         start ({}); its ML-DSA-44 cosigner key in software",
        keys.display()
    ))
}

fn print_keys(store: &FileKeyStore) -> Result<()> {
    for k in store.public_keyring()?.keys {
        let until = k
            .not_after
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        // Where the private key is: a file of the store, the token, or gone (a revoked
        // token key, a retired key's file deleted on purpose).
        let held = match store.is_on_token(&k.id) {
            Ok(true) if k.status == trackshift_crypto::KeyStatus::Revoked => "destroyed",
            Ok(true) => "token",
            Ok(false) => "file",
            Err(_) => "-",
        };
        println!(
            "{:<8} {:<9} {:<8} {:<9} {}  from {} until {}",
            k.purpose.as_str(),
            k.algorithm.as_str(),
            format!("{:?}", k.status).to_lowercase(),
            held,
            k.id,
            k.not_before,
            until
        );
    }
    Ok(())
}

/// Where a rotation of the checkpoint keys goes.
enum LedgerTarget {
    /// The gateway's own file ledger (`DATA/ledger`).
    File(PathBuf),
    /// A ledger shared through PostgreSQL: its key directory, database and origin.
    Shared {
        keys_dir: PathBuf,
        url: String,
        origin: String,
    },
}

/// Finds and checks what `--purpose ledger` rotates, before anything is rotated.
fn ledger_target(
    dir: &Path,
    ledger: Option<PathBuf>,
    ledger_keys: Option<PathBuf>,
    store: Option<String>,
) -> Result<LedgerTarget> {
    let l = match ledger {
        Some(l) => l,
        None => dir
            .parent()
            .map(|p| p.join("ledger"))
            .context("give the ledger directory with --ledger")?,
    };
    let pk_name = trackshift_ledger::store::PUBLIC_KEYS_FILE;
    let keys_dir = ledger_keys.or_else(|| {
        let k = l.join("keys");
        (!l.join(pk_name).exists() && k.join(pk_name).exists()).then_some(k)
    });
    let Some(keys_dir) = keys_dir else {
        let pk = l.join(pk_name);
        if !pk.exists() {
            bail!(
                "{} does not exist: {} is not the ledger of a gateway that has started \
                 (give it with --ledger); nothing was rotated",
                pk.display(),
                l.display()
            );
        }
        return Ok(LedgerTarget::File(l));
    };
    let Some(url) = store.filter(|u| crate::transfer::is_postgres(u)) else {
        bail!(
            "{} is the key directory of a ledger shared in PostgreSQL (serve --store \
             postgres://...): give its database with --store or TRACKSHIFT_STORE; nothing was \
             rotated",
            keys_dir.display()
        );
    };
    let pk = keys_dir.join(pk_name);
    let public: trackshift_ledger::LedgerPublicKeys = serde_json::from_slice(&crate::read(&pk)?)
        .with_context(|| {
            format!(
                "{} is not a shared ledger's public key file (a gateway writes it at start); \
                 nothing was rotated",
                pk.display()
            )
        })?;
    Ok(LedgerTarget::Shared {
        keys_dir,
        url,
        origin: public.origin,
    })
}

fn short_keys(public: &trackshift_ledger::LedgerPublicKeys) -> String {
    format!(
        "{} and {}",
        public.log_key,
        public
            .cosigner_key
            .split('+')
            .take(2)
            .collect::<Vec<_>>()
            .join("+")
    )
}

/// `keys rotate`: see [`KeysCommand::Rotate`].
fn rotate(
    dir: PathBuf,
    purpose: &str,
    ledger: Option<PathBuf>,
    ledger_keys: Option<PathBuf>,
    store: Option<String>,
    prepare: bool,
) -> Result<()> {
    let (documents, rotate_ledger): (Vec<Purpose>, bool) = match purpose {
        "all" => (Purpose::ALL.to_vec(), true),
        "ledger" => (Vec::new(), true),
        p => (vec![p.parse::<Purpose>()?], false),
    };
    // Everything is checked before anything is rotated.
    let target = rotate_ledger
        .then(|| ledger_target(&dir, ledger, ledger_keys, store))
        .transpose()?;
    if prepare {
        let Some(LedgerTarget::Shared {
            keys_dir, origin, ..
        }) = target.filter(|_| documents.is_empty())
        else {
            bail!(
                "--prepare stages checkpoint keys of a ledger shared in PostgreSQL, alone \
                 (--purpose ledger); nothing was rotated"
            );
        };
        let staged = trackshift_ledger::stage_ledger_keys(&keys_dir, &origin)
            .with_context(|| format!("staging ledger keys in {}", keys_dir.display()))?;
        println!(
            "staged ledger keys {} in {}: copy {} to the ledger key directory of every \
             gateway sharing the log (they load it and keep signing with the current keys), \
             then run this again without --prepare to activate them",
            short_keys(&staged),
            keys_dir.display(),
            keys_dir
                .join(trackshift_ledger::rotation::ROTATED_KEYS_FILE)
                .display()
        );
        return Ok(());
    }
    // A shared ledger is reached before anything is rotated; a pair staged before is the
    // one activated (else one is staged now: one gateway, or all given the file already).
    let shared = match &target {
        Some(LedgerTarget::Shared {
            keys_dir,
            url,
            origin,
        }) => {
            trackshift_ledger::stage_ledger_keys(keys_dir, origin)
                .with_context(|| format!("staging ledger keys in {}", keys_dir.display()))?;
            let keys = trackshift_ledger::LiveLedgerKeys::load_or_generate(keys_dir, origin)?;
            let rt = crate::runtime()?;
            let pg = rt
                .block_on(trackshift_ledger::PgLedger::connect_existing(url, keys))
                .context("connecting to the shared ledger; nothing was rotated")?;
            Some((rt, pg))
        }
        _ => None,
    };
    if !documents.is_empty() {
        let mut store = FileKeyStore::open(&dir)?;
        for p in documents {
            let id = store.rotate_now(p)?;
            println!("new active {p} key {id}");
        }
    }
    match (target, shared) {
        (Some(LedgerTarget::File(l)), _) => {
            let public = trackshift_ledger::rotate_ledger_keys(&l)
                .with_context(|| format!("rotating the checkpoint keys of {}", l.display()))?;
            println!(
                "new ledger keys for {}: {} ({} retired pairs kept)",
                l.display(),
                short_keys(&public),
                public.retired.len()
            );
        }
        (Some(LedgerTarget::Shared { keys_dir, .. }), Some((rt, pg))) => {
            let public = rt
                .block_on(pg.activate_staged())
                .context("activating the staged ledger keys in the shared ledger")?;
            println!(
                "new ledger keys for the shared ledger (keys in {}): {} ({} retired pairs \
                 kept); a gateway without them refuses to append until it has {}",
                keys_dir.display(),
                short_keys(&public),
                public.retired.len(),
                trackshift_ledger::rotation::ROTATED_KEYS_FILE
            );
        }
        _ => {}
    }
    println!(
        "a running gateway signs with the new keys from its next signature; export the \
         public keys again for auditors (the export keeps the retired keys)"
    );
    Ok(())
}
