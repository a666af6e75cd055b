//! `trackshift demo`: the whole signing flow on generated data, with embedded defaults.
//!
//! Until the QUIC engine lands, delivery is a local copy (temporary name, fsync, rename);
//! everything else is the real code path: key store, streaming chunk hashing, ML-DSA-65
//! manifest, Ed25519 receipt, offline verification with the public key file only.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use trackshift_crypto::manifest::compute_root_hash;
use trackshift_crypto::{
    Confirmation, DeliveryStatus, FileKeyStore, KeyBackend as _, Manifest, PublicKeyring, Purpose,
    Receipt, Signable as _, Timestamp,
};

const MARKER: &str = ".trackshift-demo";

/// Options of `trackshift demo`; every one has a default.
#[derive(Args)]
pub struct DemoArgs {
    /// Working directory (recreated on each run; must be empty or an earlier demo's).
    #[arg(long, default_value = ".trackshift-demo")]
    dir: PathBuf,
    /// Total size of the generated source data.
    #[arg(long, default_value = "64MiB", value_parser = crate::size::parse_size)]
    size: u64,
    /// Number of generated files.
    #[arg(long, default_value_t = 8)]
    files: u64,
    /// Chunk size.
    #[arg(long, default_value = "4MiB", value_parser = crate::size::parse_size)]
    chunk_size: u64,
}

/// Runs the demo and prints what happened and how to check it.
pub fn run(args: DemoArgs) -> Result<()> {
    if args.files == 0 {
        bail!("--files must be at least 1");
    }
    prepare_dir(&args.dir)?;
    let keys_dir = args.dir.join("keys");
    let source = args.dir.join("source");
    let dest = args.dir.join("destination");
    let public_keys = args.dir.join("public-keys.json");
    let manifest_path = args.dir.join("manifest.json");
    let receipt_path = args.dir.join("receipt.json");
    let now = Timestamp::now();

    let store = FileKeyStore::init(&keys_dir, now)?;
    let ring = store.public_keyring()?;
    crate::write_doc(&public_keys, &ring.to_json())?;
    println!(
        "1. key store {} (ML-DSA-65 manifest key, Ed25519 receipt key)",
        keys_dir.display()
    );

    generate(&source, args.size, args.files)?;
    println!(
        "2. generated {} bytes in {} files under {}",
        args.size,
        args.files,
        source.display()
    );

    let started = Instant::now();
    let files = trackshift_engine::scan_path(&source, args.chunk_size)?;
    let hash_secs = started.elapsed().as_secs_f64();
    let job_id = uuid::Uuid::new_v4().to_string();
    let dest_uri = format!(
        "file://{}",
        fs::canonicalize(&args.dir)?.join("destination").display()
    );
    let mut manifest = Manifest::new(
        job_id.clone(),
        "demo",
        Timestamp::now(),
        format!("file://{}", fs::canonicalize(&source)?.display()),
        vec![dest_uri.clone()],
        files,
    )?;
    manifest.sign_with(
        store.signer(Purpose::Manifest, now)?.as_ref(),
        Timestamp::now(),
    )?;
    crate::write_doc(&manifest_path, &manifest.to_json())?;
    let chunks: usize = manifest.files.iter().map(|f| f.chunks.len()).sum();
    println!(
        "3. manifest {}: {} chunks hashed at {:.2} GB/s, root {}, signed with ML-DSA-65",
        manifest_path.display(),
        chunks,
        args.size as f64 / hash_secs.max(1e-9) / 1e9,
        manifest.root_hash
    );

    deliver(&source, &dest, &manifest)?;
    let delivered = trackshift_engine::scan_path(&dest, args.chunk_size)?;
    let size: u64 = delivered.iter().map(|f| f.size).sum();
    let root = compute_root_hash(&delivered);
    let status = if root == manifest.root_hash && size == manifest.total_bytes() {
        DeliveryStatus::Confirmed
    } else {
        DeliveryStatus::Failed
    };
    let mut receipt = Receipt {
        format: trackshift_crypto::receipt::RECEIPT_FORMAT.to_string(),
        job_id,
        tenant: "demo".into(),
        manifest_hash: manifest.document_hash()?,
        destination: dest_uri,
        bytes: size,
        confirmation: Confirmation {
            size,
            etag: None,
            blake3: Some(root),
        },
        status,
        detail: (status == DeliveryStatus::Failed).then(|| "destination content differs".into()),
        correlation_id: None,
        completed_at: Timestamp::now(),
        signature: None,
        ledger_proof: None,
    };
    receipt.sign_with(
        store.signer(Purpose::Receipt, now)?.as_ref(),
        Timestamp::now(),
    )?;
    crate::write_doc(&receipt_path, &receipt.to_json())?;
    println!(
        "4. delivered to {} and re-hashed: {}; receipt {} signed with Ed25519",
        dest.display(),
        status.as_str(),
        receipt_path.display()
    );

    // The auditor's view: nothing but the public key file and the documents.
    let auditor_ring = PublicKeyring::from_json(&fs::read(&public_keys)?)?;
    let m = Manifest::from_json(&fs::read(&manifest_path)?)?;
    m.verify_signature(&auditor_ring)
        .context("manifest verification")?;
    let r = Receipt::from_json(&fs::read(&receipt_path)?)?;
    r.verify(&auditor_ring, Some(&m))
        .context("receipt verification")?;
    if status != DeliveryStatus::Confirmed {
        bail!("delivery was not confirmed");
    }
    println!(
        "5. verified offline with {} only: manifest OK, receipt OK",
        public_keys.display()
    );
    println!("\nCheck it yourself:");
    let bin = std::env::args()
        .next()
        .unwrap_or_else(|| "trackshift".into());
    println!(
        "  {bin} verify {} --public-keys {} --data {}",
        manifest_path.display(),
        public_keys.display(),
        dest.display()
    );
    println!(
        "  {bin} verify {} --public-keys {} --manifest {}",
        receipt_path.display(),
        public_keys.display(),
        manifest_path.display()
    );
    Ok(())
}

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and is not a demo directory; choose another --dir",
                dir.display()
            );
        }
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(
        dir.join(MARKER),
        b"created by trackshift demo; safe to delete\n",
    )?;
    Ok(())
}

/// Deterministic pseudo-random files (BLAKE3 XOF stream), sizes spread unevenly.
fn generate(dir: &Path, total: u64, files: u64) -> Result<()> {
    let mut left = total;
    for i in 0..files {
        let size = if i + 1 == files {
            left
        } else {
            (total / files) + (i * 4099) % 65_536
        }
        .min(left);
        left -= size;
        let path = dir.join(format!("part-{i:03}/data-{i:03}.bin"));
        fs::create_dir_all(path.parent().expect("has parent"))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&path)?);
        let mut xof = blake3_xof(i);
        let mut buf = vec![0u8; 1 << 20];
        let mut remaining = size;
        while remaining > 0 {
            let n = remaining.min(buf.len() as u64) as usize;
            xof.fill(&mut buf[..n]);
            out.write_all(&buf[..n])?;
            remaining -= n as u64;
        }
        out.flush()?;
    }
    Ok(())
}

fn blake3_xof(i: u64) -> blake3::OutputReader {
    let mut h = blake3::Hasher::new();
    h.update(b"trackshift demo data");
    h.update(&i.to_le_bytes());
    h.finalize_xof()
}

/// Local delivery: each file goes to a temporary name, is fsynced, then renamed into place.
fn deliver(source: &Path, dest: &Path, manifest: &Manifest) -> Result<()> {
    for f in &manifest.files {
        let target = dest.join(&f.path);
        let parent = target.parent().expect("paths have a parent");
        fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(
            ".{}.partial",
            target.file_name().expect("file name").to_string_lossy()
        ));
        let mut input = fs::File::open(source.join(&f.path))?;
        let mut output = fs::File::create(&tmp)?;
        std::io::copy(&mut input, &mut output)?;
        output.sync_all()?;
        fs::rename(&tmp, &target)?;
    }
    Ok(())
}
