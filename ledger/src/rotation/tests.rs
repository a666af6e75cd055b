//! Unit tests of `rotation`.

use super::*;
use crate::note::verify_checkpoint;

const ORIGIN: &str = "test.example/rotation";

fn log_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let keys = LiveLedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
    write_atomic(
        &dir.join(crate::store::PUBLIC_KEYS_FILE),
        public_keys_json(&keys.public_keys()).as_bytes(),
        0o644,
    )
    .unwrap();
    (tmp, dir)
}

#[test]
fn checkpoints_are_judged_by_the_window_of_the_pair_that_signed_them() {
    let (_tmp, dir) = log_dir();
    let old = LedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
    let start = now_secs();
    let public = rotate_ledger_keys(&dir).unwrap();
    let end = now_secs();
    assert_eq!(public.retired.len(), 1);
    let not_after = public.retired[0].not_after.unix();
    assert!((start + 1..=end + 1).contains(&not_after), "{not_after}");
    let now = not_after - 1;
    assert_ne!(public.log_key, old.public_keys().log_key);
    assert_ne!(public.cosigner_key, old.public_keys().cosigner_key);
    // Signed by the old pair inside its window: valid after the rotation.
    let before = old.sign_checkpoint(3, [7; 32], now).unwrap();
    assert_eq!(verify_checkpoint(&before, &public).unwrap().size, 3);
    // Signed by the old pair (a writer that kept it) after its window: refused.
    let late = old.sign_checkpoint(3, [7; 32], now + 1).unwrap();
    let e = verify_checkpoint(&late, &public).unwrap_err();
    assert!(e.to_string().contains("retired"), "{e}");
    // Without the retired pair, the old checkpoint does not verify at all.
    let mut pinned = public.clone();
    pinned.retired.clear();
    verify_checkpoint(&before, &pinned).unwrap_err();
    // A malformed retired key is an error, not skipped.
    let mut broken = public.clone();
    broken.retired[0].log_key = "nonsense".into();
    verify_checkpoint(&before, &broken).unwrap_err();
}

#[test]
fn a_running_writer_signs_with_the_new_pair_after_a_rotation_without_a_reload() {
    let (_tmp, dir) = log_dir();
    let live = LiveLedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
    let first = live.public_keys();
    let public = rotate_ledger_keys(&dir).unwrap();
    let note = live.sign_checkpoint(1, [1; 32]).unwrap();
    assert_eq!(live.public_keys(), public);
    // Signed by the new pair: it verifies without the retired pair.
    let mut current_only = public.clone();
    current_only.retired.clear();
    verify_checkpoint(&note, &current_only).unwrap();
    verify_checkpoint(&note, &first).unwrap_err();
    // Twice more: the history grows, every pair kept.
    rotate_ledger_keys(&dir).unwrap();
    let public = rotate_ledger_keys(&dir).unwrap();
    assert_eq!(public.retired.len(), 3);
    verify_checkpoint(&note, &public).unwrap();
    verify_checkpoint(&live.sign_checkpoint(2, [2; 32]).unwrap(), &public).unwrap();
}

#[test]
fn the_first_seeds_are_gone_after_a_rotation_and_a_restart_keeps_the_history() {
    let (_tmp, dir) = log_dir();
    let keys_dir = dir.join("keys");
    rotate_ledger_keys(&dir).unwrap();
    let public = rotate_ledger_keys(&dir).unwrap();
    for name in [ED25519_FILE, MLDSA_FILE] {
        assert!(!keys_dir.join(name).exists(), "{name}");
    }
    let mode = std::fs::metadata(keys_dir.join(ROTATED_KEYS_FILE))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A restart loads the rotated keys (it does not generate first seeds again).
    let again = LiveLedgerKeys::load_or_generate(&keys_dir, ORIGIN).unwrap();
    assert_eq!(again.public_keys(), public);
    assert!(!keys_dir.join(ED25519_FILE).exists());
    let on_disk: LedgerPublicKeys = serde_json::from_str(
        &std::fs::read_to_string(dir.join(crate::store::PUBLIC_KEYS_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk, public);
    // The key file's errors never quote it (it holds seeds).
    std::fs::write(keys_dir.join(ROTATED_KEYS_FILE), b"{\"format\": \"s3cr3t").unwrap();
    let e = LiveLedgerKeys::load_or_generate(&keys_dir, ORIGIN).unwrap_err();
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
}

#[test]
fn a_new_secret_others_can_read_is_refused_on_reload() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_tmp, dir) = log_dir();
    let live = LiveLedgerKeys::load_or_generate(&dir.join("keys"), ORIGIN).unwrap();
    rotate_ledger_keys(&dir).unwrap();
    let path = dir.join("keys").join(ROTATED_KEYS_FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = live.sign_checkpoint(1, [1; 32]).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    live.sign_checkpoint(1, [1; 32]).unwrap();
}

#[test]
fn a_staged_pair_is_held_not_signing_until_named_and_a_file_rotation_takes_it() {
    let (_tmp, dir) = log_dir();
    let keys_dir = dir.join("keys");
    let live = LiveLedgerKeys::load_or_generate(&keys_dir, ORIGIN).unwrap();
    let first = live.public_keys();
    let staged = stage_ledger_keys(&keys_dir, ORIGIN).unwrap();
    assert_eq!(stage_ledger_keys(&keys_dir, ORIGIN).unwrap(), staged);
    // The first seeds went into ledger-keys.json; the current pair is unchanged.
    assert!(!keys_dir.join(ED25519_FILE).exists());
    assert_eq!(live.public_keys(), first);
    assert_eq!(live.staged_public().unwrap(), Some(staged.clone()));
    assert!(live.holds(&staged).unwrap() && live.holds(&first).unwrap());
    // Signs with the current pair, or with the staged one when asked for it.
    verify_checkpoint(&live.sign_checkpoint(1, [1; 32]).unwrap(), &first).unwrap();
    let by_staged = live.sign_checkpoint_as(&staged, 1, [1; 32]).unwrap();
    verify_checkpoint(&by_staged, &staged).unwrap();
    let mut other = staged.clone();
    other.log_key = first.log_key.clone();
    let e = live.sign_checkpoint_as(&other, 1, [1; 32]).unwrap_err();
    assert!(e.to_string().contains("does not hold"), "{e}");
    // A file ledger's rotation takes the staged pair.
    let public = rotate_ledger_keys(&dir).unwrap();
    assert_eq!(public.log_key, staged.log_key);
    assert_eq!(live.staged_public().unwrap(), None);
    assert!(
        live.knows_pair(&first.log_key, &first.cosigner_key)
            .unwrap()
    );
}

#[test]
fn a_rotation_before_the_first_start_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let e = rotate_ledger_keys(&tmp.path().join("ledger")).unwrap_err();
    assert!(
        e.to_string().contains("once its gateway has started"),
        "{e}"
    );
}
