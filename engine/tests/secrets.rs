//! Every secret file the gateway reads is checked before it binds anything: signing keys,
//! the ledger keys, the TLS key, the service key and tenants' credentials files must be
//! readable by their owner only. A tenant-file reload naming a credentials file others can
//! read is refused (the version in force stays). A key loosened after start cannot stop a
//! job short of its receipt: the signers are held from start.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use trackshift_engine::gateway::{Gateway, GatewayConfig, add_tenant};
use trackshift_engine::sender::{SendConfig, send_path};
use trackshift_engine::tenants::{LiveTenants, ServiceKey, TenantEntry, TenantFile};
use trackshift_engine::tls::ServerTrust;

const TOKEN: &str = "test-token-0123456789abcdef";

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn bind(data: &Path) -> Result<Gateway, String> {
    let cfg = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), data);
    Gateway::bind(cfg).await.map_err(|e| e.to_string())
}

/// Every secret file a first start creates: all 0600.
fn secret_files(data: &Path) -> Vec<PathBuf> {
    let mut out = vec![
        data.join("tls/key.pem"),
        data.join("ledger/keys/log-ed25519.key"),
        data.join("ledger/keys/cosigner-mldsa44.key"),
    ];
    for e in fs::read_dir(data.join("keys/secret")).unwrap() {
        out.push(e.unwrap().path());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_to_start_with_any_secret_file_open_to_others() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    add_tenant(&data, "acme", TOKEN, &["null://"]).unwrap();
    bind(&data).await.unwrap().close();
    let files = secret_files(&data);
    assert_eq!(files.len(), 5, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{} created owner-only", f.display());
        assert_eq!(mode(&data.join("tenants.json")), 0o600);
        for bad in [0o644, 0o640] {
            chmod(f, bad);
            let e = bind(&data).await.err().unwrap_or_else(|| {
                panic!("started with {} at {bad:o}", f.display());
            });
            assert!(e.contains(&format!("chmod 600 {}", f.display())), "{e}");
            assert!(!e.contains("PRIVATE"), "{e}");
        }
        chmod(f, 0o600);
        bind(&data).await.unwrap().close();
    }
}

#[test]
fn the_service_key_is_refused_when_others_can_read_it() {
    let dir = tempfile::tempdir().unwrap();
    ServiceKey::load_or_create(dir.path()).unwrap();
    let path = dir.path().join("service.key");
    assert_eq!(mode(&path), 0o600);
    for bad in [0o644, 0o640] {
        chmod(&path, bad);
        let e = ServiceKey::load_or_create(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("chmod 600 {}", path.display())),
            "{e}"
        );
    }
    chmod(&path, 0o600);
    ServiceKey::load_or_create(dir.path()).unwrap();
}

#[test]
fn credentials_files_open_to_others_are_refused_at_load_and_at_reload() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let creds = dir.path().join("acme.env");
    fs::write(&creds, "AWS_ACCESS_KEY_ID=acme-id\n").unwrap();
    let file = TenantFile {
        tenants: vec![TenantEntry {
            credentials: Some(creds.clone()),
            ..TenantEntry::new("acme", "acme-key")
        }],
    };
    file.save(&data).unwrap();
    for bad in [0o644, 0o640] {
        chmod(&creds, bad);
        let e = LiveTenants::load(&data).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 600 {}", creds.display())), "{e}");
        assert!(!e.contains("acme-id"), "{e}");
    }
    chmod(&creds, 0o600);
    let live = LiveTenants::load(&data).unwrap();
    assert_eq!(live.current().generation, 0);

    // A reload adding a tenant whose credentials others can read: refused, nothing changes.
    let beta_creds = dir.path().join("beta.env");
    fs::write(&beta_creds, "AWS_ACCESS_KEY_ID=beta-id\n").unwrap();
    chmod(&beta_creds, 0o644);
    let mut next = file.clone();
    next.tenants.push(TenantEntry {
        credentials: Some(beta_creds.clone()),
        ..TenantEntry::new("beta", "beta-key")
    });
    next.save(&data).unwrap();
    let e = live.reload().unwrap_err().to_string();
    assert!(
        e.contains(&format!("chmod 600 {}", beta_creds.display())),
        "{e}"
    );
    assert_eq!(live.current().generation, 0, "the old version stays");
    assert!(live.current().file.authenticate("beta-key").is_none());
    // acme's file loosened after start: a reload is refused too.
    chmod(&beta_creds, 0o600);
    chmod(&creds, 0o604);
    assert!(live.reload().is_err());
    assert!(live.current().file.authenticate("beta-key").is_none());
    chmod(&creds, 0o600);
    assert_eq!(live.reload().unwrap().generation, 1);
    assert!(live.current().file.authenticate("beta-key").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_loosened_after_start_cannot_leave_a_job_without_its_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    let dest = tmp.path().join("dest");
    fs::create_dir_all(&dest).unwrap();
    let allowed = format!("file://{}", dest.display());
    add_tenant(&data, "acme", TOKEN, &[&allowed]).unwrap();
    let gateway = Arc::new(bind(&data).await.unwrap());
    let g = gateway.clone();
    let task = tokio::spawn(async move { g.serve().await });
    // Before, this was found only after the data was committed: no receipt.
    for f in fs::read_dir(data.join("keys/secret")).unwrap() {
        chmod(&f.unwrap().path(), 0o644);
    }
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"signed all the same\n").unwrap();
    let cfg = SendConfig::new(
        gateway.local_addr(),
        ServerTrust::fingerprint(&gateway.fingerprint()).unwrap(),
        TOKEN,
        format!("file://{}", dest.display()),
    );
    let report = send_path(&src, &cfg, |_| {}).await.unwrap();
    let ring = gateway.public_keyring().unwrap();
    let receipt = trackshift_crypto::Receipt::from_json(report.receipt.as_bytes()).unwrap();
    receipt.verify(&ring, None).unwrap();
    gateway.close();
    task.abort();
    let _ = task.await;
    // And the next start refuses those files.
    let e = bind(&data).await.err().expect("started with loose keys");
    assert!(e.contains("chmod 600"), "{e}");
}
