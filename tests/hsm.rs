//! A gateway whose receipt keys are on a PKCS#11 token (SoftHSM2, set up by
//! `scripts/test-servers.sh start softhsm`): `keys init --pkcs11`, receipts signed on the
//! token and verified with the public keys alone, the PIN in no output or log.

mod common;

use std::path::{Path, PathBuf};

use common::{run, serve_until_exit, start_gateway_full, write_secret};
use trackshift_crypto::{FileKeyStore, KeyBackend as _, Purpose};

const PIN: &str = "pin-7331-never-printed";

fn module() -> String {
    std::env::var("TRACKSHIFT_TEST_PKCS11").expect(
        "TRACKSHIFT_TEST_PKCS11 (the SoftHSM2 module: scripts/test-servers.sh start softhsm)",
    )
}

/// A fresh token, its PIN file, and `gw/keys` made on it by `keys init --pkcs11`.
fn keys_on_a_token(dir: &Path, label: &str) -> PathBuf {
    trackshift_crypto::pkcs11::init_token(Path::new(&module()), label, "so-1234", PIN).unwrap();
    let pin = dir.join("user.pin");
    write_secret(&pin, &format!("{PIN}\n"));
    std::fs::create_dir_all(dir.join("gw")).unwrap();
    let (code, out, err) = run(
        &[
            "keys",
            "init",
            "--dir",
            "gw/keys",
            "--pkcs11",
            &module(),
            "--token",
            label,
            "--pin-file",
            "user.pin",
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("receipt keys on PKCS#11 token \"{label}\"")),
        "{out}"
    );
    assert!(out.contains("the manifest key in software"), "{out}");
    assert!(!format!("{out}{err}").contains(PIN));
    pin
}

#[test]
fn a_gateway_signs_receipts_with_the_key_on_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let label = format!("gw-{}", std::process::id());
    keys_on_a_token(dir, &label);
    let (code, list, _) = run(&["keys", "list", "--dir", "gw/keys"], dir);
    assert_eq!(code, 0);
    let receipt_row = list.lines().find(|l| l.starts_with("receipt")).unwrap();
    assert!(receipt_row.contains(" token "), "{list}");
    assert!(
        list.lines()
            .find(|l| l.starts_with("manifest"))
            .unwrap()
            .contains(" file ")
    );

    let out = dir.join("out");
    let dest = format!("file://{}", out.display());
    let log = dir.join("gw.log");
    let gw = start_gateway_full(&dir.join("gw"), &[], &["--default-dest", &dest], Some(&log));
    std::fs::write(dir.join("data.txt"), b"signed on the token").unwrap();
    let token = dir.join("gw/default.token");
    let (code, sent, err) = run(
        &[
            "send",
            "data.txt",
            "--to",
            &gw.quic,
            "--fingerprint",
            &gw.fingerprint,
            "--token-file",
            token.to_str().unwrap(),
            "--dest",
            &dest,
            "--out-dir",
            "docs",
        ],
        dir,
    );
    assert_eq!(code, 0, "{sent}{err}");
    drop(gw);

    // The receipt verifies with the exported public keys, under the token's key.
    let (code, _, err) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            "gw/keys",
            "--out",
            "pub.json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(
        &["verify", "docs/receipt.json", "--public-keys", "pub.json"],
        dir,
    );
    assert_eq!(code, 0, "{out}{err}");
    let receipt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("docs/receipt.json")).unwrap()).unwrap();
    let store = FileKeyStore::open(dir.join("gw/keys")).unwrap();
    let key = store
        .public_keyring()
        .unwrap()
        .active(Purpose::Receipt)
        .unwrap()
        .id;
    assert_eq!(receipt["signature"]["key_id"], key.to_string());
    assert!(store.is_on_token(&key).unwrap());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("receipt keys on a PKCS#11 token"), "{log}");
    assert!(!log.contains(PIN), "the PIN is in the gateway's log");
}

#[test]
fn a_gateway_with_a_wrong_pin_does_not_start_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let label = format!("pin-{}", std::process::id());
    let pin = keys_on_a_token(dir, &label);
    write_secret(&pin, "wrong-pin-000\n");
    let (code, out, err) = serve_until_exit(&dir.join("gw"), &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("logging in") && err.contains(&label), "{err}");
    assert!(
        !err.contains("wrong-pin-000") && !err.contains(PIN),
        "{err}"
    );
    // A PIN file others may read is refused by name.
    write_secret(&pin, &format!("{PIN}\n"));
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, _, err) = serve_until_exit(&dir.join("gw"), &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("chmod 600") && err.contains("user.pin"),
        "{err}"
    );
}
