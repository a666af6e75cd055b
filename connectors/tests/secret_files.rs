//! Secret files the connectors read (tenants' credentials files, SSH keys) must be
//! readable by their owner only: anything else is refused naming the file and the fix.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use trackshift_connectors::{ConnectorError, Settings, VerifyMode, from_uri_in};

fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn assert_refused_with_fix(e: &ConnectorError, path: &Path, secret: &str) {
    let msg = e.to_string();
    assert!(matches!(e, ConnectorError::Secret(_)), "{msg}");
    assert!(
        msg.contains(&format!("chmod 600 {}", path.display())),
        "{msg}"
    );
    assert!(!msg.contains(secret), "{msg}");
}

#[test]
fn credentials_files_readable_by_group_or_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acme.env");
    for mode in [0o644, 0o640, 0o604] {
        write_mode(&path, "AWS_SECRET_ACCESS_KEY=hunter2-secret\n", mode);
        let e = Settings::load(&path).unwrap_err();
        assert_refused_with_fix(&e, &path, "hunter2-secret");
    }
    write_mode(&path, "AWS_SECRET_ACCESS_KEY=hunter2-secret\n", 0o600);
    let s = Settings::load(&path).unwrap();
    assert_eq!(
        s.var("AWS_SECRET_ACCESS_KEY").as_deref(),
        Some("hunter2-secret")
    );
}

#[test]
fn an_sftp_key_named_by_a_credentials_file_is_checked_when_the_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let creds = dir.path().join("acme.env");
    write_mode(
        &creds,
        &format!("TRACKSHIFT_SFTP_KEY={}\n", key.display()),
        0o600,
    );
    // Missing: refused now, not at the first job.
    let e = Settings::load(&creds).unwrap_err();
    assert!(e.to_string().contains(&key.display().to_string()), "{e}");
    for mode in [0o644, 0o640] {
        write_mode(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n", mode);
        let e = Settings::load(&creds).unwrap_err();
        assert_refused_with_fix(&e, &key, "BEGIN");
    }
    write_mode(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n", 0o600);
    Settings::load(&creds).unwrap();
}

#[tokio::test]
async fn an_sftp_connector_refuses_a_key_readable_by_others_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    write_mode(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n", 0o644);
    // Port 1 on loopback: nothing listens; the key is refused before any connection.
    let uri = format!(
        "sftp://u@127.0.0.1:1/in?key={}&fingerprint=SHA256:AAAA",
        key.display()
    );
    let c = from_uri_in(&uri, VerifyMode::default(), &Settings::Process).unwrap();
    let e = c.check().await.unwrap_err();
    assert_refused_with_fix(&e, &key, "BEGIN");
}
