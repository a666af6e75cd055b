//! `trackshift serve` checks every secret file before it binds anything: the signing
//! keys, the ledger keys, the TLS key, the service key, the operator key, the default
//! tenant's token, every tenant's credentials file and the gateway's own SSH key. Each one
//! at 0644 or 0640 stops the start with its path and the fix (`chmod 600 PATH`); at 0600
//! the gateway starts. The CLI's token and key files follow the same rule.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::{run, serve_until_exit, start_gateway, start_gateway_with, write_secret};
use trackshift_engine::tenants::{TenantEntry, TenantFile};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn assert_refused(stdout: &str, stderr: &str, code: i32, path: &Path) {
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", path.display())),
        "{}: {stderr}",
        path.display()
    );
    assert!(
        !stdout.contains("gateway listening") && !stdout.contains("http://"),
        "refused only after binding: {stdout}"
    );
}

#[test]
fn serve_refuses_every_secret_file_open_to_group_or_others_before_binding() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    drop(start_gateway(&data));
    let creds = tmp.path().join("acme.env");
    write_secret(&creds, "AWS_SECRET_ACCESS_KEY=never-shown-0123\n");
    let mut file = TenantFile::load(&data).unwrap();
    file.tenants.push(TenantEntry {
        credentials: Some(creds.clone()),
        ..TenantEntry::new("acme", "acme-key-0123456789")
    });
    file.save(&data).unwrap();

    let mut secrets: Vec<PathBuf> = [
        "service.key",
        "operator.key",
        "default.token",
        "tls/key.pem",
        "ledger/keys/log-ed25519.key",
        "ledger/keys/cosigner-mldsa44.key",
    ]
    .iter()
    .map(|f| data.join(f))
    .collect();
    for e in std::fs::read_dir(data.join("keys/secret")).unwrap() {
        secrets.push(e.unwrap().path());
    }
    secrets.push(creds.clone());
    for f in &secrets {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        for bad in [0o644, 0o640] {
            chmod(f, bad);
            let (code, out, err) = serve_until_exit(&data, &[]);
            assert_refused(&out, &err, code, f);
            assert!(!err.contains("never-shown"), "{err}");
        }
        chmod(f, 0o600);
    }

    // The gateway's own SSH key (TRACKSHIFT_SFTP_KEY), checked at start too.
    let ssh = tmp.path().join("id_ed25519");
    write_secret(&ssh, "-----BEGIN OPENSSH PRIVATE KEY-----\n");
    let ssh_env = [("TRACKSHIFT_SFTP_KEY", ssh.to_str().unwrap())];
    for bad in [0o644, 0o640] {
        chmod(&ssh, bad);
        let (code, out, err) = serve_until_exit(&data, &ssh_env);
        assert_refused(&out, &err, code, &ssh);
    }
    chmod(&ssh, 0o600);
    // Everything owner-only again: it starts.
    drop(start_gateway_with(&data, &ssh_env));
}

#[test]
fn token_and_key_files_open_to_others_are_refused_by_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("acme.token");
    write_secret(&token, "acme-key-0123456789\n");
    chmod(&token, 0o644);
    let (code, _, err) = run(
        &[
            "send",
            "nothing",
            "--to",
            "127.0.0.1:9",
            "--fingerprint",
            &"ab".repeat(32),
            "--dest",
            "null://",
            "--token-file",
            token.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("chmod 600 {}", token.display())),
        "{err}"
    );
    assert!(!err.contains("acme-key"), "{err}");
    let (code, _, err) = run(
        &[
            "jobs",
            "list",
            "--api",
            "http://127.0.0.1:9",
            "--key-file",
            token.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("chmod 600 {}", token.display())),
        "{err}"
    );
}
