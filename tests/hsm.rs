//! A gateway whose receipt keys are on a PKCS#11 token (SoftHSM2, set up by
//! `scripts/test-servers.sh start softhsm`): `keys init --pkcs11`, receipts signed on the
//! token and verified with the public keys alone, the PIN in no output or log.

mod common;

use std::path::{Path, PathBuf};

use common::{run, serve_until_exit, start_gateway_full, write_secret};
use trackshift_crypto::pkcs11::{HsmConfig, Token};
use trackshift_crypto::{FileKeyStore, KeyBackend as _, KeyId, Purpose};

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
    assert!(
        out.contains("checkpoint (log) key: made on the same token"),
        "{out}"
    );
    assert!(!format!("{out}{err}").contains(PIN));
    pin
}

/// Sends `data.txt` through a gateway on `dir/gw` and checks the receipt with the exported
/// public keys; returns the receipt's key id.
fn send_and_verify(dir: &Path, log: &Path, sub: &str) -> String {
    let out = dir.join("out");
    let base = format!("file://{}", out.display());
    let dest = format!("{base}/{sub}");
    let gw = start_gateway_full(&dir.join("gw"), &[], &["--default-dest", &base], Some(log));
    let token = dir.join("gw/default.token");
    common::send_ok(dir, &gw, &token, "data.txt", &dest, Some("docs"));
    drop(gw);
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
    // Every checkpoint of the ledger verifies, those signed on the token included.
    let (code, out, err) = run(&["ledger", "verify", "--data-dir", "gw"], dir);
    assert_eq!(code, 0, "{out}{err}");
    let receipt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("docs/receipt.json")).unwrap()).unwrap();
    receipt["signature"]["key_id"].as_str().unwrap().to_string()
}

/// The raw public key in the log key (`name+id+base64(0x01 || key)`) of the ledger's
/// public key file.
fn ledger_log_key(dir: &Path) -> Vec<u8> {
    use base64::Engine as _;
    let public: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("gw/ledger/public-keys.json")).unwrap())
            .unwrap();
    let vkey = public["log_key"].as_str().unwrap();
    let b = base64::engine::general_purpose::STANDARD
        .decode(vkey.splitn(3, '+').nth(2).unwrap())
        .unwrap();
    assert_eq!(b[0], 0x01, "an Ed25519 log key");
    b[1..].to_vec()
}

fn token_key(dir: &Path, label: &str, pin: &Path, file: &str) -> Vec<u8> {
    let id = std::fs::read_to_string(dir.join("gw/ledger/keys").join(file)).unwrap();
    let cfg = HsmConfig::new(Path::new(&module()), label, pin).unwrap();
    let key = Token::open(&cfg)
        .unwrap()
        .ed25519_key_by_id(&KeyId::from_hex(id.trim()).unwrap())
        .unwrap();
    key.public_key().to_vec()
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

    let log = dir.join("gw.log");
    std::fs::write(dir.join("data.txt"), b"signed on the token").unwrap();
    let key = send_and_verify(dir, &log, "first");
    let store = FileKeyStore::open(dir.join("gw/keys")).unwrap();
    let active = store
        .public_keyring()
        .unwrap()
        .active(Purpose::Receipt)
        .unwrap()
        .id;
    assert_eq!(key, active.to_string());
    assert!(store.is_on_token(&active).unwrap());

    // The ledger's checkpoint key is on the token too: the directory names it, holds no
    // seed, and the public key auditors get is the token's.
    let lk = dir.join("gw/ledger/keys");
    assert!(lk.join(trackshift_ledger::ED25519_TOKEN_FILE).is_file());
    assert!(!lk.join("log-ed25519.key").exists(), "no log seed on disk");
    let pin = dir.join("user.pin");
    assert_eq!(
        ledger_log_key(dir),
        token_key(dir, &label, &pin, trackshift_ledger::ED25519_TOKEN_FILE)
    );

    // Rotating everything makes the new receipt key and the new log key on the token; the
    // gateway signs with them, and the old documents still verify.
    let (code, out, err) = run(
        &["keys", "rotate", "--dir", "gw/keys", "--purpose", "all"],
        dir,
    );
    assert_eq!(code, 0, "{out}{err}");
    std::fs::rename(
        dir.join("docs/receipt.json"),
        dir.join("first-receipt.json"),
    )
    .unwrap();
    let rotated = send_and_verify(dir, &log, "second");
    assert_ne!(rotated, key);
    let store = FileKeyStore::open(dir.join("gw/keys")).unwrap();
    assert!(
        store
            .is_on_token(&KeyId::from_hex(&rotated).unwrap())
            .unwrap()
    );
    let (code, out, err) = run(
        &["verify", "first-receipt.json", "--public-keys", "pub.json"],
        dir,
    );
    assert_eq!(code, 0, "{out}{err}");
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lk.join(trackshift_ledger::rotation::ROTATED_KEYS_FILE)).unwrap(),
    )
    .unwrap();
    assert!(file.get("log_seed").is_none(), "{file}");
    let id = file["log_token_key"].as_str().unwrap();
    let cfg = HsmConfig::new(Path::new(&module()), &label, &pin).unwrap();
    let on_token = Token::open(&cfg)
        .unwrap()
        .ed25519_key_by_id(&KeyId::from_hex(id).unwrap())
        .unwrap();
    assert_eq!(ledger_log_key(dir), on_token.public_key().to_vec());

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
