//! `trackshift backup` and `trackshift restore`: a consistent online copy of an embedded
//! gateway's data directory (SQLite job store and file ledger) and its restore.
//!
//! ```text
//! OUT/backup.json   the backup's manifest, written last: what was copied (path, size,
//!                   mode, SHA-256 of every file), the ledger checkpoint it stops at, the
//!                   trackshift version. A backup without it is incomplete and refused.
//! OUT/data/...      the data directory without its secrets: jobs.db (SQLite online
//!                   backup), ledger/ (cut to one signed checkpoint), jobs/, tenants.json,
//!                   keys/keyring.json, tls/cert.pem, timestamps/, ...
//! OUT/keys.enc      only with --with-keys: every secret file (signing keys, ledger keys,
//!                   TLS key, service and operator keys, tokens), AES-256-GCM under a key
//!                   derived from the passphrase with Argon2id
//! ```
//!
//! The order makes the copy consistent while jobs run: the job store first (a job it calls
//! completed has its documents in the ledger already), then job directories and
//! time-stamps (their documents and stamped checkpoints are in the ledger already), then
//! the ledger up to its latest signed checkpoint (which covers all of them), then the key
//! store (naming every key those documents were signed with) and the secrets. The
//! restored ledger is a prefix of the original log, so its checkpoint is consistent with
//! every later one.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// `format` of `backup.json`.
const BACKUP_FORMAT: &str = "trackshift.backup.v1";
/// The backup's manifest, written last.
const MANIFEST_FILE: &str = "backup.json";
/// Where the data directory's files go in a backup.
const DATA: &str = "data";
/// The encrypted secrets of a backup taken with `--with-keys`.
const KEYS_FILE: &str = "keys.enc";
/// First line of [`KEYS_FILE`].
const KEYS_FORMAT: &str = "trackshift.backup-keys.v1";
/// The SQLite job store in a data directory, and the files SQLite keeps beside it.
const JOB_STORE: &str = "jobs.db";
const JOB_STORE_SIDE: [&str; 3] = ["jobs.db-wal", "jobs.db-shm", "jobs.db-journal"];
/// Shortest passphrase accepted for the keys.
const MIN_PASSPHRASE: usize = 12;
/// Argon2id cost (RFC 9106's second recommended option, one lane): 64 MiB, 3 passes.
const ARGON2_M_COST: u32 = 64 * 1024;
const ARGON2_T_COST: u32 = 3;
const ARGON2_P_COST: u32 = 1;

/// Options of `trackshift backup`.
#[derive(Args)]
pub struct BackupArgs {
    /// The gateway's data directory (embedded mode: SQLite job store and file ledger). The
    /// gateway may keep running; nothing in it is written.
    data: PathBuf,
    /// Where to write the backup: a new or empty directory (outside DATA).
    out: PathBuf,
    /// Also back up the secret files (signing, ledger, TLS, service and operator keys,
    /// tokens), encrypted with the passphrase in --passphrase-file. Keys held on a PKCS#11
    /// token are not exportable: only their references are saved.
    #[arg(long, requires = "passphrase_file")]
    with_keys: bool,
    /// File holding the passphrase the keys are encrypted with (owner-only, mode 0600; at
    /// least 12 characters). Never give the passphrase itself as an argument.
    #[arg(long, value_name = "FILE", requires = "with_keys")]
    passphrase_file: Option<PathBuf>,
}

/// Options of `trackshift restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// The backup directory (from `trackshift backup`).
    backup: PathBuf,
    /// The data directory to restore into: new or empty.
    data: PathBuf,
    /// File holding the passphrase of a backup taken with --with-keys (mode 0600).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// `backup.json`.
#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    /// The version of trackshift that took the backup.
    trackshift_version: String,
    /// When it was finished (RFC 3339).
    created_at: String,
    /// The data directory it was taken from.
    source: String,
    /// The ledger checkpoint the backup stops at.
    ledger: LedgerPoint,
    /// Whether the SQLite job store is in it.
    job_store: bool,
    /// The encrypted secrets, when taken with `--with-keys`.
    keys: Option<KeysInfo>,
    /// Directories to create (relative to the data directory), with their modes.
    dirs: Vec<DirEntry>,
    /// Every file of the backup but this manifest.
    files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct LedgerPoint {
    origin: String,
    size: u64,
    root: String,
}

#[derive(Serialize, Deserialize)]
struct KeysInfo {
    file: String,
    /// How many secret files it holds.
    count: usize,
    /// Some keys are on a PKCS#11 token: the backup holds their references only.
    on_token: bool,
}

#[derive(Serialize, Deserialize)]
struct DirEntry {
    path: String,
    mode: u32,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    path: String,
    size: u64,
    mode: u32,
    sha256: String,
}

/// One secret file inside [`KEYS_FILE`] (path relative to the data directory), wiped
/// from memory when dropped.
#[derive(Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct SecretFile {
    path: String,
    mode: u32,
    data: String,
}

/// The clear header of [`KEYS_FILE`] (its second line; authenticated with the ciphertext).
#[derive(Serialize, Deserialize)]
struct KeysHeader {
    cipher: String,
    kdf: String,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
    nonce: String,
}

/// Runs `trackshift backup`.
pub fn backup(args: BackupArgs) -> Result<()> {
    let data = std::fs::canonicalize(&args.data)
        .with_context(|| format!("data directory {}", args.data.display()))?;
    if !data.join("ledger").join("checkpoint").is_file() {
        bail!(
            "{} holds no file ledger (ledger/checkpoint): `trackshift backup` is for embedded \
             mode; a gateway with --store backs up PostgreSQL (RUNBOOK \"Backup and restore\")",
            data.display()
        );
    }
    // The passphrase is read (and its file's mode checked) before anything is written.
    let passphrase = match &args.passphrase_file {
        Some(p) => Some(read_passphrase(p)?),
        None => None,
    };
    // Checked before OUT is created: nothing is written in DATA.
    let out = resolve(&args.out)?;
    if out.starts_with(&data) || data.starts_with(&out) {
        bail!(
            "the backup directory {} and the data directory {} must not contain each other",
            out.display(),
            data.display()
        );
    }
    prepare_out(&out)?;
    let copy = out.join(DATA);
    mkdir(&copy, 0o700)?;

    // 1. The job store, one consistent snapshot through SQLite's backup API.
    let job_store = data.join(JOB_STORE).is_file();
    if job_store {
        trackshift_engine::jobs::sql::backup_sqlite(&data.join(JOB_STORE), &copy.join(JOB_STORE))
            .with_context(|| format!("backing up the job store {}", JOB_STORE))?;
    }
    // 2. Job directories, tenants, certificates, time-stamps: before the ledger, so that
    //    every document they hold (written after its append) and every time-stamped
    //    checkpoint is within the ledger copy.
    let mut walk = Walk {
        data: &data,
        copy: &copy,
        with_keys: passphrase.is_some(),
        dirs: Vec::new(),
        secrets: Vec::new(),
        skipped_secrets: Vec::new(),
        on_token: false,
    };
    walk.run(false)?;
    // 3. The ledger, up to its latest signed checkpoint (which covers every job the job
    //    store copy calls completed).
    let ledger = trackshift_ledger::Ledger::open_read_only(data.join("ledger"), None)?;
    mkdir(&copy.join("ledger"), mode_of(&data.join("ledger"))?)?;
    let cp = ledger.copy_to(&copy.join("ledger"))?;
    let verified = trackshift_ledger::verify_checkpoint(&cp.note, &ledger.public_keys())?;
    drop(ledger);
    // 4. The key store (its public records must name every key the ledger copy's
    //    documents were signed with) and the other secrets, into the encrypted bundle.
    walk.run(true)?;
    let Walk {
        dirs,
        mut secrets,
        skipped_secrets,
        mut on_token,
        ..
    } = walk;
    // Keys held on a token are never in a file: a key file that references the token says so.
    on_token |= secrets.iter().any(|s| {
        base64::engine::general_purpose::STANDARD
            .decode(&s.data)
            .is_ok_and(|d| {
                let d = Zeroizing::new(d);
                d.windows(trackshift_crypto::pkcs11::TOKEN_KEY_FORMAT.len())
                    .any(|w| w == trackshift_crypto::pkcs11::TOKEN_KEY_FORMAT.as_bytes())
            })
    });
    let keys = match &passphrase {
        Some(p) => {
            let count = secrets.len();
            let plain = Zeroizing::new(serde_json::to_vec(&secrets)?);
            secrets.clear();
            let sealed = seal(p, &plain)?;
            trackshift_crypto::filestore::write_atomic(&out.join(KEYS_FILE), &sealed, 0o600)?;
            Some(KeysInfo {
                file: KEYS_FILE.into(),
                count,
                on_token,
            })
        }
        None => None,
    };
    // 5. The manifest, last: what is on disk in OUT now, hashed.
    let files = hash_tree(&out)?;
    let manifest = Manifest {
        format: BACKUP_FORMAT.into(),
        trackshift_version: env!("CARGO_PKG_VERSION").into(),
        created_at: trackshift_crypto::Timestamp::now().to_string(),
        source: data.display().to_string(),
        ledger: LedgerPoint {
            origin: verified.origin.clone(),
            size: verified.size,
            root: hex::encode(verified.root),
        },
        job_store,
        keys,
        dirs,
        files,
    };
    // Every entry's document checked before the backup is called complete.
    crate::ledger_cmd::verify_data_dir(&copy).context("checking the backup")?;
    let mut text = serde_json::to_string_pretty(&manifest)?;
    text.push('\n');
    trackshift_crypto::filestore::write_atomic(&out.join(MANIFEST_FILE), text.as_bytes(), 0o600)?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    let mut lines = vec![
        format!(
            "OK backup {} of {}: {} files, {} bytes; ledger {} at checkpoint of {} entries (root {}){}",
            out.display(),
            data.display(),
            manifest.files.len(),
            bytes,
            verified.origin,
            verified.size,
            hex::encode(verified.root),
            if job_store {
                ", job store (SQLite)"
            } else {
                ""
            }
        ),
        format!("   manifest {}", out.join(MANIFEST_FILE).display()),
    ];
    match &manifest.keys {
        Some(k) => lines.push(format!(
            "   {} secret files encrypted in {} (AES-256-GCM, Argon2id passphrase)",
            k.count,
            out.join(KEYS_FILE).display()
        )),
        None => lines.push(format!(
            "   no keys ({} secret files left out; back them up separately or use --with-keys)",
            skipped_secrets.len()
        )),
    }
    if on_token {
        lines.push(
            "   keys held on the PKCS#11 token are not exportable: the backup holds only their \
             references; back the token up by its own means"
                .into(),
        );
    }
    crate::print_lines(&lines)
}

/// Runs `trackshift restore`.
pub fn restore(args: RestoreArgs) -> Result<()> {
    let backup = &args.backup;
    let mpath = backup.join(MANIFEST_FILE);
    let text = match std::fs::read(&mpath) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} has no {MANIFEST_FILE}: not a complete backup (interrupted, or not a backup); \
             refusing to restore it",
            backup.display()
        ),
        Err(e) => return Err(e).context(format!("reading {}", mpath.display())),
    };
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a backup manifest", mpath.display()))?;
    if manifest.format != BACKUP_FORMAT {
        bail!(
            "{}: format {:?}, this trackshift restores {BACKUP_FORMAT:?}",
            mpath.display(),
            manifest.format
        );
    }
    check_files(backup, &manifest)?;
    let passphrase = match (&manifest.keys, &args.passphrase_file) {
        (Some(_), Some(p)) => Some(read_passphrase(p)?),
        (Some(_), None) => bail!(
            "the backup holds encrypted keys ({KEYS_FILE}): give --passphrase-file with the \
             passphrase it was taken with"
        ),
        (None, Some(_)) => bail!(
            "the backup holds no keys (taken without --with-keys): leave out --passphrase-file \
             and copy the keys into the restored data directory separately"
        ),
        (None, None) => None,
    };
    let secrets: Vec<SecretFile> = match (&manifest.keys, &passphrase) {
        (Some(k), Some(p)) => {
            let sealed = std::fs::read(backup.join(&k.file))?;
            let plain =
                open(p, &sealed).with_context(|| format!("{}", backup.join(&k.file).display()))?;
            serde_json::from_slice(&plain).context("the decrypted keys are malformed")?
        }
        _ => Vec::new(),
    };
    let data = &args.data;
    if data.exists() && std::fs::read_dir(data)?.next().is_some() {
        bail!(
            "{} is not empty: restore into a new or empty directory",
            data.display()
        );
    }
    let parent = match data.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let staging = parent.join(format!(
        ".{}.restoring-{}",
        data.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| -> Result<Vec<String>> {
        mkdir(&staging, 0o700)?;
        for d in &manifest.dirs {
            mkdir(&staging.join(safe_rel(&d.path)?), d.mode)?;
        }
        let prefix = format!("{DATA}/");
        for f in &manifest.files {
            let Some(rel) = f.path.strip_prefix(&prefix) else {
                continue;
            };
            let to = staging.join(safe_rel(rel)?);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::copy(backup.join(&f.path), &to)
                .with_context(|| format!("restoring {}", f.path))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(f.mode))?;
        }
        for s in &secrets {
            let to = staging.join(safe_rel(&s.path)?);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)?;
            }
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(&s.data)
                    .context("a decrypted key is malformed")?,
            );
            trackshift_crypto::filestore::write_atomic(&to, &bytes, s.mode & 0o700)?;
        }
        // The restored ledger must verify in full, at the checkpoint the backup names.
        let (v, lines) =
            crate::ledger_cmd::verify_data_dir(&staging).context("checking the restored ledger")?;
        if v.size != manifest.ledger.size || hex::encode(v.root) != manifest.ledger.root {
            bail!(
                "the restored ledger is at {} entries, the backup manifest names {}",
                v.size,
                manifest.ledger.size
            );
        }
        Ok(lines)
    })();
    let lines = match result {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if data.exists() {
        std::fs::remove_dir(data).with_context(|| format!("replacing {}", data.display()))?;
    }
    std::fs::rename(&staging, data).with_context(|| format!("moving into {}", data.display()))?;
    std::fs::File::open(&parent).and_then(|d| d.sync_all())?;
    let mut report = vec![format!(
        "OK restored {} into {} (taken {} by trackshift {}): {} files; ledger {} at {} entries",
        backup.display(),
        data.display(),
        manifest.created_at,
        manifest.trackshift_version,
        manifest.files.len(),
        manifest.ledger.origin,
        manifest.ledger.size
    )];
    let (from, to) = (staging.display().to_string(), data.display().to_string());
    report.extend(lines.iter().map(|l| l.replace(&from, &to)));
    if manifest.keys.is_some() {
        report.push(format!("   {} secret files decrypted", secrets.len()));
        if manifest.keys.as_ref().is_some_and(|k| k.on_token) {
            report.push(
                "   keys on the PKCS#11 token were not in the backup: the gateway needs the same token"
                    .into(),
            );
        }
    } else {
        report.push(format!(
            "   no keys in the backup: copy DATA/keys/secret, DATA/ledger/keys, DATA/tls/key.pem, \
             service.key and operator.key into {} before starting the gateway",
            data.display()
        ));
    }
    crate::print_lines(&report)
}

/// Copies the files of a data directory beside the ledger into the backup.
struct Walk<'a> {
    data: &'a Path,
    copy: &'a Path,
    /// Secrets go into the bundle (else they are only counted).
    with_keys: bool,
    dirs: Vec<DirEntry>,
    secrets: Vec<SecretFile>,
    skipped_secrets: Vec<String>,
    on_token: bool,
}

impl Walk<'_> {
    /// Copies the plain files outside `keys/` (`late` false), or the key store and every
    /// secret (`late` true). The ledger's own files are left to [`Ledger::copy_to`];
    /// files and job directories that vanish meanwhile (retention) are passed over.
    ///
    /// [`Ledger::copy_to`]: trackshift_ledger::Ledger::copy_to
    fn run(&mut self, late: bool) -> Result<()> {
        let data = self.data;
        for entry in walkdir::WalkDir::new(data).min_depth(1).sort_by_file_name() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.io_error().map(|e| e.kind()) == Some(std::io::ErrorKind::NotFound) => {
                    continue;
                }
                Err(e) => return Err(e).context(format!("reading {}", data.display())),
            };
            let rel = entry.path().strip_prefix(data)?.to_path_buf();
            let rel_s = rel_string(&rel)?;
            if skip(&rel) {
                continue;
            }
            let meta = match entry.path().symlink_metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).context(format!("reading {}", entry.path().display())),
            };
            let mode = meta.mode() & 0o7777;
            let in_ledger = rel.starts_with("ledger");
            let ledger_keys = rel.starts_with("ledger/keys");
            if meta.is_dir() {
                if late != (rel.starts_with("keys") || ledger_keys) {
                    continue;
                }
                if !in_ledger || rel == Path::new("ledger") || ledger_keys {
                    self.dirs.push(DirEntry { path: rel_s, mode });
                }
                if !in_ledger && !is_secret_dir(&rel) {
                    mkdir(&self.copy.join(&rel), mode)?;
                }
                continue;
            }
            if in_ledger && !ledger_keys {
                continue; // copied by the ledger, to its checkpoint
            }
            let secret = is_secret(&rel, mode);
            if late != (secret || rel.starts_with("keys")) {
                continue;
            }
            if !meta.is_file() {
                eprintln!(
                    "warning: {} is not a regular file; not backed up",
                    entry.path().display()
                );
                continue;
            }
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if ledger_keys && name.ends_with(".token")
                || rel == Path::new("keys").join(trackshift_crypto::pkcs11::HSM_CONFIG_FILE)
            {
                self.on_token = true;
            }
            if secret {
                if !self.with_keys {
                    self.skipped_secrets.push(rel_s);
                    continue;
                }
                let Some(bytes) =
                    trackshift_crypto::filestore::read_secret_if_exists(entry.path())?
                else {
                    continue;
                };
                self.secrets.push(SecretFile {
                    path: rel_s,
                    mode,
                    data: base64::engine::general_purpose::STANDARD.encode(&*bytes),
                });
                continue;
            }
            match std::fs::copy(entry.path(), self.copy.join(&rel)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).context(format!("copying {}", entry.path().display())),
            }
        }
        Ok(())
    }
}

/// `path` made absolute with its links resolved, for a path that need not exist yet: its
/// nearest existing ancestor canonicalized, the rest appended.
fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    let mut rest = Vec::new();
    let mut at = abs.as_path();
    loop {
        match std::fs::canonicalize(at) {
            Ok(mut p) => {
                p.extend(rest.iter().rev());
                return Ok(p);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (at.parent(), at.file_name()) else {
                    return Err(e).context(format!("{}", path.display()));
                };
                rest.push(name.to_os_string());
                at = parent;
            }
            Err(e) => return Err(e).context(format!("{}", path.display())),
        }
    }
}

/// Refuses an `out` that exists and is not empty, else creates it (owner-only).
fn prepare_out(out: &Path) -> Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty: give a new or empty directory",
                    out.display()
                );
            }
            std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o700))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => mkdir(out, 0o700),
        Err(e) => Err(e).context(format!("{}", out.display())),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => {}
        Err(e) => return Err(e).context(format!("creating {}", path.display())),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn mode_of(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .mode()
        & 0o7777)
}

/// Files of a data directory a backup leaves out: SQLite's files (the job store is copied
/// through its backup API), locks, files being written atomically.
fn skip(rel: &Path) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    rel == Path::new(JOB_STORE)
        || JOB_STORE_SIDE.iter().any(|s| rel == Path::new(s))
        || name == "lock"
        || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// Directories that hold only secrets (created on restore from the manifest, never
/// holding plain files of the backup).
fn is_secret_dir(rel: &Path) -> bool {
    rel == Path::new("keys/secret") || rel.starts_with("ledger/keys")
}

/// Whether a file of the data directory is a secret: the key store's private keys, the
/// ledger's keys, and every other owner-only file outside the job directories
/// (`tenants.json` holds hashed keys and is configuration).
fn is_secret(rel: &Path, mode: u32) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if rel.starts_with("keys/secret") || rel.starts_with("ledger/keys") {
        return true;
    }
    if rel.starts_with("jobs") || rel == Path::new("tenants.json") {
        return false;
    }
    mode & 0o077 == 0
        || name.ends_with(".key")
        || name.ends_with(".token")
        || name.ends_with("key.pem")
}

fn rel_string(rel: &Path) -> Result<String> {
    rel.to_str()
        .map(str::to_string)
        .with_context(|| format!("{}: not a UTF-8 path", rel.display()))
}

/// A path of the manifest, refused unless it is relative and stays inside the backup.
fn safe_rel(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("the backup manifest names the path {path:?}, which leaves the backup");
    }
    Ok(p.to_path_buf())
}

/// Every file under `root` (sizes, modes, SHA-256), sorted by path.
fn hash_tree(root: &Path) -> Result<Vec<FileEntry>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = rel_string(entry.path().strip_prefix(root)?)?;
        if rel == MANIFEST_FILE {
            continue;
        }
        let meta = entry.metadata()?;
        files.push(FileEntry {
            path: rel,
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            sha256: sha256_file(entry.path())?,
        });
    }
    Ok(files)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// Checks every file of the backup against the manifest (size and SHA-256) and that the
/// backup holds no file the manifest does not list. Errors name the file.
fn check_files(backup: &Path, manifest: &Manifest) -> Result<()> {
    let mut listed = BTreeMap::new();
    for f in &manifest.files {
        safe_rel(&f.path)?;
        listed.insert(f.path.as_str(), f);
    }
    let mut seen = 0usize;
    for entry in walkdir::WalkDir::new(backup)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = rel_string(entry.path().strip_prefix(backup)?)?;
        if rel == MANIFEST_FILE {
            continue;
        }
        let Some(f) = listed.get(rel.as_str()) else {
            bail!(
                "{}: not in the backup manifest (added after the backup); refusing to restore",
                entry.path().display()
            );
        };
        if !entry.file_type().is_file() {
            bail!("{}: not a regular file", entry.path().display());
        }
        let size = entry.metadata()?.len();
        if size != f.size || sha256_file(entry.path())? != f.sha256 {
            bail!(
                "{}: does not match the backup manifest (size or SHA-256: altered or damaged); \
                 refusing to restore",
                entry.path().display()
            );
        }
        seen += 1;
    }
    if seen != listed.len() {
        let missing = listed
            .keys()
            .find(|p| !backup.join(p).is_file())
            .map(|p| backup.join(p).display().to_string())
            .unwrap_or_default();
        bail!("{missing}: missing from the backup; refusing to restore");
    }
    Ok(())
}

/// Reads the passphrase file (owner-only, like every secret), trimmed of its final newline.
fn read_passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let raw = trackshift_crypto::filestore::read_secret(path)?;
    let mut text = Zeroizing::new(raw.to_vec());
    while text.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        text.pop();
    }
    if text.len() < MIN_PASSPHRASE {
        bail!(
            "the passphrase in {} is shorter than {MIN_PASSPHRASE} characters",
            path.display()
        );
    }
    Ok(text)
}

fn derive_key(passphrase: &[u8], salt: &[u8], h: &KeysHeader) -> Result<Zeroizing<[u8; 32]>> {
    if h.kdf != "argon2id" || h.cipher != "aes-256-gcm" {
        bail!("unknown key encryption {} / {}", h.kdf, h.cipher);
    }
    // A header from anyone: bound the work it may ask for (at most 1 GiB, 10 passes).
    if h.m_cost > 1 << 20 || h.t_cost > 10 || h.p_cost > 16 {
        bail!("the key file asks for an Argon2id cost beyond the limits");
    }
    let params = argon2::Params::new(h.m_cost, h.t_cost, h.p_cost, Some(32))
        .map_err(|e| anyhow::anyhow!("Argon2id parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut *key)
        .map_err(|e| anyhow::anyhow!("deriving the key: {e}"))?;
    Ok(key)
}

/// Encrypts `plain`: `KEYS_FORMAT\n` ‖ header JSON `\n` ‖ AES-256-GCM(ciphertext ‖ tag),
/// the two text lines authenticated as associated data.
fn seal(passphrase: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| anyhow::anyhow!("random generator failed"))?;
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("random generator failed"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let header = KeysHeader {
        cipher: "aes-256-gcm".into(),
        kdf: "argon2id".into(),
        m_cost: ARGON2_M_COST,
        t_cost: ARGON2_T_COST,
        p_cost: ARGON2_P_COST,
        salt: b64.encode(salt),
        nonce: b64.encode(nonce),
    };
    let mut head = format!("{KEYS_FORMAT}\n{}\n", serde_json::to_string(&header)?).into_bytes();
    let key = derive_key(passphrase, &salt, &header)?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &*key).map_err(|_| anyhow::anyhow!("AES-256-GCM key"))?,
    );
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&head),
        &mut body,
    )
    .map_err(|_| anyhow::anyhow!("encrypting the keys"))?;
    head.extend_from_slice(&body);
    Ok(head)
}

/// Decrypts what [`seal`] wrote. A wrong passphrase and an altered file fail alike.
fn open(passphrase: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    let mut lines = sealed.splitn(3, |b| *b == b'\n');
    let (Some(format), Some(header), Some(body)) = (lines.next(), lines.next(), lines.next())
    else {
        bail!("not an encrypted key file");
    };
    if format != KEYS_FORMAT.as_bytes() {
        bail!("not an encrypted key file of this version ({KEYS_FORMAT})");
    }
    let head_len = format.len() + header.len() + 2;
    let h: KeysHeader = serde_json::from_slice(header).context("the key file's header")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64.decode(&h.salt).context("the key file's salt")?;
    let nonce: [u8; NONCE_LEN] = b64
        .decode(&h.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .context("the key file's nonce")?;
    let key = derive_key(passphrase, &salt, &h)?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &*key).map_err(|_| anyhow::anyhow!("AES-256-GCM key"))?,
    );
    let mut buf = Zeroizing::new(body.to_vec());
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&sealed[..head_len]),
            &mut buf,
        )
        .map_err(|_| {
            anyhow::anyhow!("the keys do not decrypt: wrong passphrase, or the file was altered")
        })?;
    Ok(Zeroizing::new(plain.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_seal_and_open_only_with_the_passphrase_and_unaltered() {
        let sealed = seal(b"correct horse battery", b"secret bytes").unwrap();
        assert_eq!(
            &*open(b"correct horse battery", &sealed).unwrap(),
            b"secret bytes"
        );
        assert!(open(b"wrong horse battery!", &sealed).is_err());
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(open(b"correct horse battery", &altered).is_err());
        // The header is authenticated too: a changed cost parameter fails.
        let at = sealed
            .windows(10)
            .position(|w| w == b"\"t_cost\":3")
            .unwrap();
        let mut cheaper = sealed.clone();
        cheaper[at + 9] = b'2';
        assert!(open(b"correct horse battery", &cheaper).is_err());
    }

    #[test]
    fn secrets_are_told_from_data() {
        assert!(is_secret(Path::new("keys/secret/ab.json"), 0o600));
        assert!(is_secret(Path::new("ledger/keys/log-ed25519.key"), 0o600));
        assert!(is_secret(Path::new("tls/key.pem"), 0o600));
        assert!(is_secret(Path::new("service.key"), 0o644));
        assert!(is_secret(Path::new("default.token"), 0o600));
        assert!(!is_secret(Path::new("tenants.json"), 0o600));
        assert!(!is_secret(Path::new("keys/keyring.json"), 0o644));
        assert!(!is_secret(Path::new("jobs/a/chunks.log"), 0o600));
        assert!(safe_rel("../etc/passwd").is_err());
        assert!(safe_rel("/etc/passwd").is_err());
        assert!(safe_rel("data/jobs.db").is_ok());
    }
}
