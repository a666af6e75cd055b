//! `trackshift demo`: the main job on embedded defaults. Creates a data directory and keys
//! if absent, starts a gateway in-process on loopback, generates a sample dataset, sends it
//! over QUIC, verifies the signed manifest and receipt as an auditor would (public keys
//! only), and prints a summary.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use trackshift_crypto::{Manifest, PublicKeyring, Receipt};
use trackshift_engine::gateway::GatewayConfig;
use trackshift_engine::sender::SendConfig;
use trackshift_engine::service::{Service, ServiceConfig};
use trackshift_engine::tls::ServerTrust;

const MARKER: &str = ".trackshift-demo";

/// Options of `trackshift demo`; every one has a default.
#[derive(Args)]
pub struct DemoArgs {
    /// Working directory (created if absent; must be empty or an earlier demo's).
    #[arg(long, default_value = ".trackshift-demo")]
    dir: std::path::PathBuf,
    /// Total size of the generated source data.
    #[arg(long, default_value = "256MiB", value_parser = crate::size::parse_size)]
    size: u64,
    /// Number of generated files.
    #[arg(long, default_value_t = 8)]
    files: u64,
    /// Chunk size.
    #[arg(long, default_value = "4MiB", value_parser = crate::size::parse_size)]
    chunk_size: u64,
}

/// Runs the demo and prints what happened and how to check it.
pub async fn run(args: DemoArgs) -> Result<()> {
    if args.files == 0 {
        bail!("--files must be at least 1");
    }
    prepare_dir(&args.dir)?;
    let dir = fs::canonicalize(&args.dir)?;
    let data_dir = dir.join("gateway");
    let source = dir.join("source");
    let dest = dir.join("destination");
    // A fresh destination each run, so the final check compares exactly this transfer.
    if dest.exists() {
        fs::remove_dir_all(&dest).with_context(|| format!("clearing {}", dest.display()))?;
    }
    fs::create_dir_all(&dest)?;
    let public_keys = dir.join("public-keys.json");

    let token = trackshift_engine::gateway::generate_token();
    let allowed = format!("file://{}", fs::canonicalize(&dest)?.display());
    trackshift_engine::gateway::add_tenant(&data_dir, "demo", &token, &[&allowed])?;
    let gateway = Service::start(ServiceConfig {
        gateway: GatewayConfig::new("127.0.0.1:0".parse()?, &data_dir),
        shared: None,
        worker: None,
    })
    .await?
    .gateway;
    let serving = {
        let g = gateway.clone();
        tokio::spawn(async move { g.serve().await })
    };
    crate::write_doc(&public_keys, &gateway.public_keyring()?.to_json())?;
    println!(
        "1. gateway on {} (QUIC, TLS 1.3, X25519MLKEM768), data in {}",
        gateway.local_addr(),
        data_dir.display()
    );

    regenerate(&source, args.size, args.files)?;
    println!(
        "2. sample data: {} bytes in {} files under {}",
        args.size,
        args.files,
        source.display()
    );

    let mut pin = [0u8; 32];
    hex::decode_to_slice(gateway.fingerprint(), &mut pin)?;
    let mut cfg = SendConfig::new(
        gateway.local_addr(),
        ServerTrust::Fingerprint(pin),
        token,
        allowed.clone(),
    );
    cfg.chunk_size = args.chunk_size;
    let report = crate::transfer::send_with_progress(&source, &cfg).await?;
    let receipts = dir.join("receipts").join(&report.job_id);
    let (manifest_path, receipt_paths) = crate::transfer::write_documents(&receipts, &report)?;
    let receipt_path = receipt_paths[0].clone();
    println!(
        "3. sent {} bytes in {:.2} s: {:.2} Gbit/s, {} chunk streams, every chunk verified (BLAKE3) before it was acknowledged",
        report.bytes,
        report.elapsed.as_secs_f64(),
        crate::transfer::gbps(report.bytes, report.elapsed),
        report.chunks_sent
    );

    // The auditor's view: only the public key file and the documents.
    let ring = PublicKeyring::from_json(&fs::read(&public_keys)?)?;
    let manifest = Manifest::from_json(&fs::read(&manifest_path)?)?;
    trackshift_engine::audit::audit_manifest(&manifest, &ring, Some(&dest))
        .context("manifest verification and destination check")?;
    let receipt = Receipt::from_json(&fs::read(&receipt_path)?)?;
    let audit = trackshift_engine::audit::audit_receipt(&receipt, &ring, Some(&manifest))
        .context("receipt verification")?;
    println!(
        "4. manifest (ML-DSA-65) and receipt (Ed25519) verified with {} only; destination re-hashed and matches",
        public_keys.display()
    );
    let (proof, cp) = audit
        .logged
        .context("the receipt carries no ledger proof")?;
    println!(
        "5. receipt recorded in the append-only ledger as entry {} of {}: inclusion proof and checkpoint (Ed25519 + ML-DSA-44) verified",
        proof.index, cp.size
    );
    println!("   receipt: {}", receipt_path.display());
    println!("\nCheck it yourself:");
    println!(
        "  trackshift verify {} --public-keys {} --manifest {}",
        receipt_path.display(),
        public_keys.display(),
        manifest_path.display()
    );
    println!(
        "  trackshift verify {} --public-keys {} --data {}",
        manifest_path.display(),
        public_keys.display(),
        dest.display()
    );
    gateway.close();
    serving.abort();
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
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(
        dir.join(MARKER),
        b"created by trackshift demo; safe to delete\n",
    )?;
    Ok(())
}

/// Deterministic pseudo-random files (BLAKE3 XOF stream), sizes spread unevenly; the
/// directory is recreated so it holds exactly this dataset.
fn regenerate(dir: &Path, total: u64, files: u64) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
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
        write_generated(&path, size, b"trackshift demo data", i)?;
    }
    Ok(())
}

/// Writes `len` pseudo-random bytes (the BLAKE3 XOF of `label` and `n`: deterministic,
/// incompressible) to `path`.
pub fn write_generated(path: &Path, len: u64, label: &[u8], n: u64) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    let mut h = blake3::Hasher::new();
    h.update(label);
    h.update(&n.to_le_bytes());
    let mut xof = h.finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut remaining = len;
    while remaining > 0 {
        let k = remaining.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..k]);
        out.write_all(&buf[..k])?;
        remaining -= k as u64;
    }
    out.flush()?;
    Ok(())
}
