//! A running gateway (`trackshift serve --http`) serves its ledger to auditors: checkpoints,
//! C2SP hash tiles and proofs over HTTP, which `trackshift ledger` verifies locally; and the
//! ledger can be re-checked read-only while the gateway keeps running.

mod common;

use common::{get, run, send_args};

#[test]
fn a_running_gateway_serves_its_ledger_and_auditors_verify_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("gw");
    std::fs::create_dir_all(dir.join("dest")).unwrap();
    let allowed = format!("file://{}", dir.join("dest").display());
    let gw = common::start_gateway_full(&data, &[], &["--default-dest", &allowed], None);
    let token = data.join("default.token");
    std::fs::write(dir.join("a.txt"), b"first file\n").unwrap();
    std::fs::write(dir.join("b.txt"), vec![7u8; 100_000]).unwrap();
    let dest = format!("file://{}", dir.join("dest").display());
    let send = |file: &str| {
        let args = send_args(&gw, &token, file, &[&dest], None);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&args, dir);
        assert_eq!(code, 0, "{out}\n{err}");
    };
    let (code, _, err) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            data.join("keys").to_str().unwrap(),
            "--out",
            "pk.json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");

    send("a.txt");
    let (code, old, err) = run(&["ledger", "checkpoint", "--gateway", &gw.http], dir);
    assert_eq!(code, 0, "{err}");
    assert!(old.starts_with("trackshift.local/ledger\n3\n"), "{old}");
    std::fs::write(dir.join("old.cp"), &old).unwrap();
    send("b.txt");
    let (_, new, _) = run(&["ledger", "checkpoint", "--gateway", &gw.http], dir);
    assert!(new.starts_with("trackshift.local/ledger\n5\n"), "{new}");
    std::fs::write(dir.join("new.cp"), &new).unwrap();
    // The served checkpoint is the one on disk.
    let (_, on_disk, _) = run(
        &["ledger", "checkpoint", "--data-dir", data.to_str().unwrap()],
        dir,
    );
    assert_eq!(on_disk, new);

    // Consistency with the gateway's proof, verified locally; a forged checkpoint fails.
    let consistency = |old: &str, new: &str| {
        run(
            &[
                "ledger",
                "consistency",
                old,
                new,
                "--public-keys",
                "pk.json",
                "--gateway",
                &gw.http,
            ],
            dir,
        )
    };
    let (code, out, err) = consistency("old.cp", "new.cp");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("grew from 3 to 5 entries"), "{out}");
    std::fs::write(dir.join("forged.cp"), new.replacen("\n5\n", "\n4\n", 1)).unwrap();
    let (code, _, err) = consistency("old.cp", "forged.cp");
    assert_eq!(code, 1, "{err}");

    // The whole ledger re-checks while the gateway keeps running (read-only open).
    let (code, out, err) = run(
        &["ledger", "verify", "--data-dir", data.to_str().unwrap()],
        dir,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("5 entries (2 manifests, 2 receipts, 1 key sets)"),
        "{out}"
    );

    // Raw endpoints: health, checkpoint, a partial tile of 4 leaf hashes, proofs, errors.
    assert_eq!(
        get(&gw.http, "/health"),
        (200, br#"{"status":"up"}"#.to_vec())
    );
    let (status, body) = get(&gw.http, "/checkpoint");
    assert_eq!(
        (status, String::from_utf8(body).unwrap()),
        (200, new.clone())
    );
    let (status, tile) = get(&gw.http, "/tile/0/000.p/5");
    assert_eq!((status, tile.len()), (200, 5 * 32));
    let (status, proof) = get(&gw.http, "/v1/ledger/proof/inclusion?index=4");
    assert_eq!(status, 200);
    let proof = trackshift_ledger::TlogProof::parse(&String::from_utf8(proof).unwrap()).unwrap();
    assert_eq!((proof.index, proof.proof.len()), (4, 1));
    // The tile's fifth hash is the leaf the inclusion proof is for (the first is the key
    // set recorded before the first job's documents).
    let leaf: [u8; 32] = tile[128..160].try_into().unwrap();
    let pk = std::fs::read(dir.join("pk.json")).unwrap();
    let ring = trackshift_crypto::PublicKeyring::from_json(&pk).unwrap();
    let cp = trackshift_ledger::verify_checkpoint(&proof.checkpoint, ring.ledger.as_ref().unwrap())
        .unwrap();
    trackshift_ledger::verify_inclusion(4, cp.size, &leaf, &proof.proof, &cp.root).unwrap();
    for (path, want) in [
        ("/tile/0/000.p/6", 404),
        ("/tile/0/000", 404),
        ("/tile/entries/000.p/1", 404),
        ("/v1/ledger/proof/inclusion?index=5", 400),
        ("/v1/ledger/proof/inclusion?index=x", 400),
        ("/v1/ledger/proof/inclusion?index=1&extra=2", 400),
        ("/v1/ledger/proof/consistency?old=6", 400),
        ("/v1/nothing", 404),
    ] {
        let (status, body) = get(&gw.http, path);
        assert_eq!(status, want, "{path}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}"
        );
    }
}

#[test]
fn destination_limits_are_validated_when_the_gateway_starts() {
    let tmp = tempfile::tempdir().unwrap();
    for (flag, value, want) in [
        ("--dest-concurrency", "0", "at least 1"),
        ("--dest-rate", "10", "1 KiB/s"),
    ] {
        let (code, _, err) = run(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                tmp.path().join("gw").to_str().unwrap(),
                flag,
                value,
            ],
            tmp.path(),
        );
        assert_ne!(code, 0, "{flag} {value}");
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
}
