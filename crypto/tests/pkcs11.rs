//! Receipt keys on a real PKCS#11 token: SoftHSM2, set up by `scripts/test-servers.sh start
//! softhsm` (`TRACKSHIFT_TEST_PKCS11` names the module, `SOFTHSM2_CONF` its configuration).
//! Each test initialises a token of its own.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use cryptoki::object::{Attribute, AttributeInfo, AttributeType};
use trackshift_crypto::filestore::write_atomic;
use trackshift_crypto::pkcs11::{HsmConfig, Token, init_token};
use trackshift_crypto::{FileKeyStore, KeyBackend as _, KeyStatus, Purpose, Timestamp};

const USER_PIN: &str = "4711-user-pin-do-not-print";

fn module() -> PathBuf {
    std::env::var_os("TRACKSHIFT_TEST_PKCS11")
        .expect(
            "TRACKSHIFT_TEST_PKCS11 (the SoftHSM2 module: scripts/test-servers.sh start softhsm)",
        )
        .into()
}

/// A fresh token (label unique in this run) and the files naming it: its PIN file (0600) and
/// the configuration a key store would keep.
fn token(dir: &Path) -> HsmConfig {
    static N: AtomicUsize = AtomicUsize::new(0);
    let label = format!(
        "ts-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    init_token(&module(), &label, "so-pin-0000", USER_PIN).expect("token initialised");
    let pin = dir.join("pin");
    write_atomic(&pin, format!("{USER_PIN}\n").as_bytes(), 0o600).unwrap();
    HsmConfig::new(&module(), &label, &pin).unwrap()
}

fn t(s: u64) -> Timestamp {
    Timestamp::from_unix(s)
}

#[test]
fn receipt_key_is_made_on_the_token_and_cannot_be_read_off_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = token(dir.path());
    let keys = dir.path().join("keys");
    let store = FileKeyStore::init_with_hsm(&keys, t(1_800_000_000), cfg.clone()).unwrap();
    let ring = store.public_keyring().unwrap();
    let receipt = ring.active(Purpose::Receipt).unwrap().clone();
    let manifest = ring.active(Purpose::Manifest).unwrap().clone();
    assert!(store.is_on_token(&receipt.id).unwrap());
    assert!(
        !store.is_on_token(&manifest.id).unwrap(),
        "ML-DSA-65 stays in software"
    );
    // The store holds only a reference: no seed, no key bytes.
    let reference =
        std::fs::read_to_string(keys.join("secret").join(format!("{}.json", receipt.id))).unwrap();
    assert!(!reference.contains("seed"), "{reference}");

    // Signing goes through the token, and what it signs verifies with the public record.
    let opened = FileKeyStore::open(&keys).unwrap();
    let signer = opened.signer(Purpose::Receipt, t(1_800_000_005)).unwrap();
    assert_eq!(signer.public().id, receipt.id);
    let msg = b"a receipt's canonical bytes";
    let sig = signer.sign(msg).unwrap();
    ring.verify(
        "receipt",
        Purpose::Receipt,
        &receipt.id,
        t(1_800_000_005),
        msg,
        &sig,
    )
    .unwrap();
    assert!(
        ring.verify(
            "receipt",
            Purpose::Receipt,
            &receipt.id,
            t(1_800_000_005),
            b"other",
            &sig
        )
        .is_err()
    );

    // The private key: sensitive, never extractable, its value refused to anyone asking.
    let tok = Token::open(&cfg).unwrap();
    let handle = tok
        .private_key_object(&receipt.id)
        .unwrap()
        .expect("on the token");
    let attrs = tok
        .inspect(|s| {
            s.get_attributes(
                handle,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Value,
                ],
            )
        })
        .unwrap();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(
        attrs.contains(&Attribute::AlwaysSensitive(true)),
        "{attrs:?}"
    );
    assert!(
        attrs.contains(&Attribute::NeverExtractable(true)),
        "{attrs:?}"
    );
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the private key's value came off the token: {attrs:?}"
    );
    let info = tok
        .inspect(|s| s.get_attribute_info_map(handle, &[AttributeType::Value]))
        .unwrap();
    assert!(
        matches!(info[&AttributeType::Value], AttributeInfo::Sensitive),
        "{info:?}"
    );
    // Nor can it be made extractable afterwards.
    assert!(
        tok.inspect(|s| s.update_attributes(handle, &[Attribute::Extractable(true)]))
            .is_err()
    );
}

#[test]
fn rotation_makes_the_new_key_on_the_token_and_revocation_destroys_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = token(dir.path());
    let keys = dir.path().join("keys");
    let mut store = FileKeyStore::init_with_hsm(&keys, t(1_800_000_000), cfg.clone()).unwrap();
    let old = store
        .public_keyring()
        .unwrap()
        .active(Purpose::Receipt)
        .unwrap()
        .id;
    let manifest_old = store
        .public_keyring()
        .unwrap()
        .active(Purpose::Manifest)
        .unwrap()
        .id;
    let new = store.rotate(Purpose::Receipt, t(1_800_000_100)).unwrap();
    store.rotate(Purpose::Manifest, t(1_800_000_100)).unwrap();
    assert!(store.is_on_token(&new).unwrap());
    let ring = store.public_keyring().unwrap();
    assert_eq!(ring.get(&old).unwrap().status, KeyStatus::Retired);
    assert!(
        !store
            .is_on_token(&ring.active(Purpose::Manifest).unwrap().id)
            .unwrap()
    );
    assert_ne!(ring.active(Purpose::Manifest).unwrap().id, manifest_old);
    // The new key signs now; the retired one still signs inside its window.
    assert_eq!(
        store
            .signer(Purpose::Receipt, t(1_800_000_200))
            .unwrap()
            .public()
            .id,
        new
    );
    let retired = store.signer(Purpose::Receipt, t(1_800_000_050)).unwrap();
    assert_eq!(retired.public().id, old);
    retired.sign(b"x").unwrap();

    let tok = Token::open(&cfg).unwrap();
    assert!(tok.private_key_object(&old).unwrap().is_some());
    store.revoke(&old, t(1_800_000_300)).unwrap();
    assert!(
        tok.private_key_object(&old).unwrap().is_none(),
        "a revoked key is gone from the token"
    );
    assert!(tok.private_key_object(&new).unwrap().is_some());
    let ring = store.public_keyring().unwrap();
    assert!(store.load_signer(ring.get(&old).unwrap()).is_err());
    // And a store opened afresh signs with the new key.
    let reopened = FileKeyStore::open(&keys).unwrap();
    let s = reopened.signer(Purpose::Receipt, t(1_800_000_400)).unwrap();
    let sig = s.sign(b"after revocation").unwrap();
    ring.verify(
        "receipt",
        Purpose::Receipt,
        &new,
        t(1_800_000_400),
        b"after revocation",
        &sig,
    )
    .unwrap();
}

#[test]
fn a_wrong_pin_is_named_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = token(dir.path());
    let wrong = dir.path().join("wrong-pin");
    write_atomic(&wrong, b"not-the-pin-9876\n", 0o600).unwrap();
    let bad = HsmConfig::new(&cfg.module, &cfg.token, &wrong).unwrap();
    let e = FileKeyStore::init_with_hsm(dir.path().join("keys"), t(1_800_000_000), bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("logging in"), "{e}");
    assert!(e.contains(&cfg.token), "{e}");
    assert!(
        !e.contains("not-the-pin-9876") && !e.contains(USER_PIN),
        "{e}"
    );
    assert!(
        !dir.path().join("keys").exists(),
        "nothing written before the token answered"
    );

    // A PIN file others may read is refused before the token is asked.
    let loose = dir.path().join("loose-pin");
    write_atomic(&loose, USER_PIN.as_bytes(), 0o600).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = HsmConfig::new(&cfg.module, &cfg.token, &loose)
        .unwrap_err()
        .to_string();
    assert!(e.contains("chmod 600") && !e.contains(USER_PIN), "{e}");

    // A token that does not exist is named.
    let e = HsmConfig::new(&cfg.module, "no-such-token", &cfg.pin_file)
        .and_then(|c| FileKeyStore::init_with_hsm(dir.path().join("k2"), t(1_800_000_000), c))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no token labelled \"no-such-token\""), "{e}");
}
