//! The log key on a PKCS#11 token (SoftHSM2: `scripts/test-servers.sh start softhsm`):
//! generated there on first use, checkpoints signed there verify, and a ledger shared
//! through PostgreSQL (whose keys are copied between gateways as files) refuses it.

use std::path::Path;

use trackshift_crypto::filestore::write_atomic;
use trackshift_crypto::pkcs11::{HsmConfig, init_token};
use trackshift_ledger::{ED25519_TOKEN_FILE, LiveLedgerKeys, stage_ledger_keys, verify_checkpoint};

fn token_in(dir: &Path, label: &str) {
    let module = std::env::var_os("TRACKSHIFT_TEST_PKCS11").expect(
        "TRACKSHIFT_TEST_PKCS11 (the SoftHSM2 module: scripts/test-servers.sh start softhsm)",
    );
    init_token(Path::new(&module), label, "so-pin-1", "user-pin-1").unwrap();
    let pin = dir.join("pin");
    write_atomic(&pin, b"user-pin-1\n", 0o600).unwrap();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    HsmConfig::new(Path::new(&module), label, &pin)
        .unwrap()
        .save(&dir.join("keys"))
        .unwrap();
}

#[test]
fn the_log_key_is_made_on_the_token_and_its_checkpoints_verify() {
    let tmp = tempfile::tempdir().unwrap();
    token_in(tmp.path(), &format!("ledger-{}", std::process::id()));
    let keys_dir = tmp.path().join("keys");
    let keys = LiveLedgerKeys::load_or_generate(&keys_dir, "example.org/log").unwrap();
    assert!(keys_dir.join(ED25519_TOKEN_FILE).is_file());
    assert!(!keys_dir.join("log-ed25519.key").exists());
    let note = keys.sign_checkpoint(7, [3u8; 32]).unwrap();
    let v = verify_checkpoint(&note, &keys.public_keys()).unwrap();
    assert_eq!(v.size, 7);
    // Loaded again (a restart), the same key on the token signs.
    let again = LiveLedgerKeys::load_or_generate(&keys_dir, "example.org/log").unwrap();
    assert_eq!(again.public_keys(), keys.public_keys());
    verify_checkpoint(
        &again.sign_checkpoint(8, [4u8; 32]).unwrap(),
        &keys.public_keys(),
    )
    .unwrap();
    // A shared log copies its pairs between gateways as files: refused, by name.
    let e = stage_ledger_keys(&keys_dir, "example.org/log")
        .unwrap_err()
        .to_string();
    assert!(e.contains("PKCS#11 token"), "{e}");
    // Without the configuration, the key directory's token key is not silently replaced.
    std::fs::remove_file(keys_dir.join(trackshift_crypto::pkcs11::HSM_CONFIG_FILE)).unwrap();
    let e = LiveLedgerKeys::load_or_generate(&keys_dir, "example.org/log")
        .unwrap_err()
        .to_string();
    assert!(e.contains("pkcs11.json"), "{e}");
    assert!(!keys_dir.join("log-ed25519.key").exists());
}
