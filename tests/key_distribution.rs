//! Key distribution auditors can trust: the gateway records every change of its public key
//! set in its own ledger and serves the latest with proofs; `keys fetch` (certificate
//! pinned as for `send`) saves the key file only when the proofs hold, and with the file
//! of an earlier fetch it also checks that the log only grew and the key history carries
//! on, so a gateway that shows an auditor another key set is caught.

mod common;

use std::path::Path;

use common::{Gateway, get, run, start_gateway_full};

fn gateway(dir: &Path, name: &str) -> Gateway {
    let out = dir.join(format!("{name}-out"));
    let dest = format!("file://{}", out.display());
    start_gateway_full(&dir.join(name), &[], &["--default-dest", &dest], None)
}

fn send(dir: &Path, gw: &Gateway, name: &str, file: &str) {
    std::fs::write(dir.join(file), format!("content of {file}")).unwrap();
    let token = dir.join(format!("{name}/default.token"));
    let dest = format!("file://{}", dir.join(format!("{name}-out")).display());
    common::send_ok(
        dir,
        gw,
        &token,
        file,
        &dest,
        Some(format!("docs-{file}").as_str()),
    );
}

fn fetch(dir: &Path, gw: &Gateway, out: &str, previous: Option<&str>) -> (i32, String, String) {
    let mut args = vec![
        "keys",
        "fetch",
        "--gateway",
        &gw.quic,
        "--fingerprint",
        &gw.fingerprint,
        "--out",
        out,
    ];
    if let Some(p) = previous {
        args.extend(["--previous", p]);
    }
    run(&args, dir)
}

#[test]
fn an_auditor_fetches_keys_checked_against_the_ledger_and_follows_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = gateway(dir, "gw");
    send(dir, &gw, "gw", "a.txt");

    let (code, out, err) = fetch(dir, &gw, "k1.json", None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("as ledger entry 0"), "{out}");
    assert!(dir.join("k1.json.checkpoint").is_file());
    // The fetched file is what `verify` takes.
    let (code, out, err) = run(
        &[
            "verify",
            "docs-a.txt/receipt.json",
            "--public-keys",
            "k1.json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}{err}");

    // A rotation on the running gateway is recorded (before the next receipt) and shows in
    // the next fetch, checked against the first.
    let (code, _, err) = run(
        &["keys", "rotate", "--dir", "gw/keys", "--purpose", "receipt"],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(std::time::Duration::from_millis(2500)); // the gateway's look at the store
    send(dir, &gw, "gw", "b.txt");
    let (code, out, err) = fetch(dir, &gw, "k2.json", Some("k1.json"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("retired") && out.contains("new receipt key"),
        "{out}"
    );
    assert!(!out.contains("as ledger entry 0"), "{out}");
    // Both receipts verify with the new file (the old key is kept, retired).
    for r in ["docs-a.txt/receipt.json", "docs-b.txt/receipt.json"] {
        let (code, out, err) = run(&["verify", r, "--public-keys", "k2.json"], dir);
        assert_eq!(code, 0, "{r}: {out}{err}");
    }
    // Nothing changed: the same entry, a consistency proof to the newer checkpoint.
    send(dir, &gw, "gw", "c.txt");
    let (code, out, err) = fetch(dir, &gw, "k3.json", Some("k2.json"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("no key changed since the previous fetch"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(dir.join("k2.json")).unwrap(),
        std::fs::read(dir.join("k3.json")).unwrap()
    );

    // The ledger holds both key sets, each carrying on from the one before, and every
    // document after the key set that published its key.
    let (code, out, err) = run(&["ledger", "verify", "--data-dir", "gw"], dir);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("(3 manifests, 3 receipts, 2 key sets)"),
        "{out}"
    );

    // Over HTTP too (no pinning there: the bundle checks out offline all the same).
    let (status, body) = get(&gw.http, "/.well-known/trackshift-keys");
    assert_eq!(status, 200);
    let bundle: trackshift_engine::keybundle::KeyBundle = serde_json::from_slice(&body).unwrap();
    let fetched = trackshift_engine::keybundle::verify_bundle(&bundle, None).unwrap();
    assert_eq!(
        fetched.entry.json,
        std::fs::read(dir.join("k3.json")).unwrap()
    );
}

#[test]
fn a_gateway_showing_another_key_set_or_an_unpinned_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = gateway(dir, "a");
    let b = gateway(dir, "b");
    send(dir, &a, "a", "a.txt");
    send(dir, &b, "b", "b.txt");
    let (code, out, err) = fetch(dir, &a, "from-a.json", None);
    assert_eq!(code, 0, "{out}{err}");

    // Gateway B poses as A to an auditor who fetched from A before (same log origin, other
    // keys, another tree): refused, and nothing is written.
    let (code, out, err) = fetch(dir, &b, "from-b.json", Some("from-a.json"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("key bundle rejected"), "{err}");
    assert!(!dir.join("from-b.json").exists());

    // A wrong pin fails the connection, naming the fingerprint.
    let (code, out, err) = run(
        &[
            "keys",
            "fetch",
            "--gateway",
            &a.quic,
            "--fingerprint",
            &b.fingerprint,
            "--out",
            "wrong.json",
        ],
        dir,
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.to_lowercase().contains("fingerprint"), "{err}");
    assert!(!dir.join("wrong.json").exists());

    // A previous file whose checkpoint was tampered with is refused.
    let note = std::fs::read_to_string(dir.join("from-a.json.checkpoint")).unwrap();
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    std::fs::write(
        dir.join("from-a.json.checkpoint"),
        note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1),
    )
    .unwrap();
    let (code, out, err) = fetch(dir, &a, "again.json", Some("from-a.json"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("previous checkpoint"), "{err}");
}
