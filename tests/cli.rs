//! End-to-end tests of the `trackshift` binary: help text, key management, manifest
//! signing and verification with their exit codes (0 valid, 1 rejected, 2 malformed),
//! secrecy of key material, and the demo.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn ts() -> Command {
    Command::cargo_bin("trackshift").unwrap()
}

fn run(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = ts().args(args).current_dir(cwd).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn data_dir(root: &Path) {
    fs::create_dir_all(root.join("data/sub/deeper")).unwrap();
    fs::write(root.join("data/empty"), b"").unwrap();
    fs::write(root.join("data/hello.txt"), b"hello\n").unwrap();
    let big: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
    fs::write(root.join("data/sub/deeper/big.bin"), big).unwrap();
}

#[test]
fn help_lists_the_commands() {
    ts().arg("--help").assert().success().stdout(
        predicate::str::contains("demo")
            .and(predicate::str::contains("verify"))
            .and(predicate::str::contains("keys")),
    );
    for sub in [
        ["keys", "--help"],
        ["manifest", "--help"],
        ["verify", "--help"],
        ["demo", "--help"],
    ] {
        ts().args(sub)
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage"));
    }
    ts().arg("no-such-command").assert().code(2);
}

#[test]
fn key_store_is_private_and_init_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, _) = run(&["keys", "init", "--dir", "keys"], tmp.path());
    assert_eq!(code, 0);
    let secret = tmp.path().join("keys/secret");
    assert_eq!(
        fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let before = fs::read(tmp.path().join("keys/keyring.json")).unwrap();
    for e in fs::read_dir(&secret).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }
    let (code, _, err) = run(&["keys", "init", "--dir", "keys"], tmp.path());
    assert_ne!(code, 0);
    assert!(err.contains("keys"), "{err}");
    assert_eq!(
        fs::read(tmp.path().join("keys/keyring.json")).unwrap(),
        before
    );
}

fn seeds(keys: &Path) -> Vec<String> {
    fs::read_dir(keys.join("secret"))
        .unwrap()
        .map(|e| {
            let v: Value = serde_json::from_slice(&fs::read(e.unwrap().path()).unwrap()).unwrap();
            v["seed"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn sign_and_verify_with_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data_dir(dir);
    let mut outputs = String::new();
    let mut step = |args: &[&str], want: i32| {
        let (code, out, err) = run(args, dir);
        assert_eq!(code, want, "{args:?}\nstdout: {out}\nstderr: {err}");
        outputs.push_str(&out);
        outputs.push_str(&err);
        (out, err)
    };
    step(&["keys", "init", "--dir", "keys"], 0);
    step(
        &[
            "manifest",
            "create",
            "data",
            "--out",
            "m1.json",
            "--chunk-size",
            "1KiB",
            "--tenant",
            "acme",
        ],
        0,
    );
    step(&["manifest", "sign", "m1.json", "--keys", "keys"], 0);
    step(
        &[
            "keys",
            "export-public",
            "--dir",
            "keys",
            "--out",
            "pub.json",
        ],
        0,
    );
    step(&["verify", "m1.json", "--public-keys", "pub.json"], 0);
    step(
        &[
            "verify",
            "m1.json",
            "--public-keys",
            "pub.json",
            "--data",
            "data",
        ],
        0,
    );

    // One changed data byte.
    fs::write(dir.join("data/hello.txt"), b"hellO\n").unwrap();
    let (out, err) = step(
        &[
            "verify",
            "m1.json",
            "--public-keys",
            "pub.json",
            "--data",
            "data",
        ],
        1,
    );
    assert!(format!("{out}{err}").contains("hello.txt"), "{out}{err}");
    fs::write(dir.join("data/hello.txt"), b"hello\n").unwrap();

    // Tampered content and signature.
    let m: Value = serde_json::from_slice(&fs::read(dir.join("m1.json")).unwrap()).unwrap();
    let mut t = m.clone();
    t["tenant"] = "mallory".into();
    fs::write(dir.join("t.json"), t.to_string()).unwrap();
    step(&["verify", "t.json", "--public-keys", "pub.json"], 1);
    let mut t = m.clone();
    let sig = t["signature"]["value"].as_str().unwrap().to_string();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('A') { "B" } else { "A" },
        &sig[1..]
    );
    t["signature"]["value"] = flipped.into();
    fs::write(dir.join("t.json"), t.to_string()).unwrap();
    step(&["verify", "t.json", "--public-keys", "pub.json"], 1);

    // Rotation: both generations verify; revoking the old one rejects only its documents.
    step(
        &["keys", "rotate", "--dir", "keys", "--purpose", "manifest"],
        0,
    );
    step(
        &[
            "manifest", "create", "data", "--out", "m2.json", "--keys", "keys",
        ],
        0,
    );
    step(
        &[
            "keys",
            "export-public",
            "--dir",
            "keys",
            "--out",
            "pub2.json",
        ],
        0,
    );
    step(&["verify", "m1.json", "--public-keys", "pub2.json"], 0);
    step(&["verify", "m2.json", "--public-keys", "pub2.json"], 0);
    let (list, _) = step(&["keys", "list", "--dir", "keys"], 0);
    assert!(
        list.contains("retired") && list.contains("active"),
        "{list}"
    );
    let old = m["signature"]["key_id"].as_str().unwrap().to_string();
    step(&["keys", "revoke", "--dir", "keys", "--key-id", &old], 0);
    step(
        &[
            "keys",
            "export-public",
            "--dir",
            "keys",
            "--out",
            "pub3.json",
        ],
        0,
    );
    let (out, err) = step(&["verify", "m1.json", "--public-keys", "pub3.json"], 1);
    assert!(format!("{out}{err}").contains("revoked"), "{out}{err}");
    step(&["verify", "m2.json", "--public-keys", "pub3.json"], 0);

    // Malformed input: exit 2 with a message, never a panic.
    fs::write(dir.join("junk.json"), b"{not json").unwrap();
    step(&["verify", "junk.json", "--public-keys", "pub3.json"], 2);
    fs::write(
        dir.join("trunc.json"),
        &fs::read(dir.join("m2.json")).unwrap()[..200],
    )
    .unwrap();
    step(&["verify", "trunc.json", "--public-keys", "pub3.json"], 2);
    step(&["verify", "m2.json", "--public-keys", "junk.json"], 2);
    let (_, err) = step(&["verify", "missing.json", "--public-keys", "pub3.json"], 2);
    assert!(err.contains("missing.json"), "{err}");

    // No command ever printed secret key material.
    for seed in seeds(&dir.join("keys")) {
        assert!(!outputs.contains(&seed), "a secret seed was printed");
    }
}

#[test]
fn readable_secret_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data_dir(dir);
    assert_eq!(run(&["keys", "init", "--dir", "keys"], dir).0, 0);
    for e in fs::read_dir(dir.join("keys/secret")).unwrap() {
        fs::set_permissions(e.unwrap().path(), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (code, out, err) = run(
        &[
            "manifest", "create", "data", "--out", "m.json", "--keys", "keys",
        ],
        dir,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("chmod") || err.contains("permission") || err.contains("readable"),
        "{err}"
    );
    for seed in seeds(&dir.join("keys")) {
        assert!(!out.contains(&seed) && !err.contains(&seed));
    }
}

#[test]
fn demo_runs_end_to_end_and_its_documents_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (code, out, err) = run(
        &[
            "demo",
            "--dir",
            "demo",
            "--size",
            "2MiB",
            "--files",
            "3",
            "--chunk-size",
            "64KiB",
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("X25519MLKEM768"), "{out}");
    let receipts = dir.join("demo/receipts");
    let job = fs::read_dir(&receipts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (m, r) = (job.join("manifest.json"), job.join("receipt.json"));
    let keys = dir.join("demo/public-keys.json");
    let (code, _, err) = run(
        &[
            "verify",
            r.to_str().unwrap(),
            "--public-keys",
            keys.to_str().unwrap(),
            "--manifest",
            m.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &[
            "verify",
            m.to_str().unwrap(),
            "--public-keys",
            keys.to_str().unwrap(),
            "--data",
            dir.join("demo/destination").to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    // A second run in the same directory works too (the demo is repeatable).
    assert_eq!(
        run(
            &["demo", "--dir", "demo", "--size", "1MiB", "--files", "2"],
            dir
        )
        .0,
        0
    );
}

#[test]
fn ledger_records_every_job_and_auditors_check_it_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let demo = |size: &str| {
        let (code, out, err) = run(
            &["demo", "--dir", "demo", "--size", size, "--files", "2"],
            dir,
        );
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("recorded in the append-only ledger"), "{out}");
    };
    let gw = dir.join("demo/gateway");
    let gw = gw.to_str().unwrap();
    let keys = dir.join("demo/public-keys.json");
    let keys = keys.to_str().unwrap();
    demo("1MiB");
    let (code, old, err) = run(&["ledger", "checkpoint", "--data-dir", gw], dir);
    assert_eq!(code, 0, "{err}");
    assert!(old.starts_with("trackshift.local/ledger\n3\n"), "{old}");
    fs::write(dir.join("old.checkpoint"), &old).unwrap();
    demo("512KiB");
    let (_, new, _) = run(&["ledger", "checkpoint", "--data-dir", gw], dir);
    fs::write(dir.join("new.checkpoint"), &new).unwrap();

    // The log only grew.
    let (code, out, err) = run(
        &[
            "ledger",
            "consistency",
            "old.checkpoint",
            "new.checkpoint",
            "--public-keys",
            keys,
            "--data-dir",
            gw,
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("grew from 3 to 5 entries"), "{out}");
    // Checkpoints in the wrong order are a usage error; a forged one is rejected.
    let (code, _, _) = run(
        &[
            "ledger",
            "consistency",
            "new.checkpoint",
            "old.checkpoint",
            "--public-keys",
            keys,
            "--data-dir",
            gw,
        ],
        dir,
    );
    assert_eq!(code, 2);
    fs::write(
        dir.join("forged.checkpoint"),
        new.replacen("\n5\n", "\n6\n", 1),
    )
    .unwrap();
    let (code, _, err) = run(
        &[
            "ledger",
            "consistency",
            "old.checkpoint",
            "forged.checkpoint",
            "--public-keys",
            keys,
            "--data-dir",
            gw,
        ],
        dir,
    );
    assert_eq!(code, 1, "{err}");

    // Every receipt carries an inclusion proof that `verify` checks.
    let receipts: Vec<_> = fs::read_dir(dir.join("demo/receipts"))
        .unwrap()
        .map(|e| e.unwrap().path().join("receipt.json"))
        .collect();
    assert_eq!(receipts.len(), 2);
    for r in &receipts {
        let (code, out, err) = run(&["verify", r.to_str().unwrap(), "--public-keys", keys], dir);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("recorded in ledger trackshift.local/ledger as entry"),
            "{out}"
        );
    }
    // A receipt whose proof names another index is rejected.
    let text = fs::read_to_string(&receipts[0]).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let proof = json["ledger_proof"].as_str().unwrap().to_string();
    let idx_line = proof.lines().nth(1).unwrap().to_string();
    let other = if idx_line == "index 1" {
        "index 3"
    } else {
        "index 1"
    };
    json["ledger_proof"] = serde_json::Value::String(proof.replacen(&idx_line, other, 1));
    let bad = dir.join("bad-receipt.json");
    fs::write(&bad, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let (code, _, err) = run(
        &["verify", bad.to_str().unwrap(), "--public-keys", keys],
        dir,
    );
    assert_eq!(code, 1, "{err}");

    // The whole ledger re-verifies; a flipped byte in it is reported with its entry.
    let (code, out, err) = run(&["ledger", "verify", "--data-dir", gw], dir);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("5 entries (2 manifests, 2 receipts, 1 key sets)"),
        "{out}"
    );
    let entries = dir.join("demo/gateway/ledger/entries.log");
    let mut bytes = fs::read(&entries).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x01;
    fs::write(&entries, &bytes).unwrap();
    let (code, _, err) = run(&["ledger", "verify", "--data-dir", gw], dir);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("entry 4"), "{err}");
}

/// Runs the binary with its stdout a pipe nobody reads (`... | head -0`): every write to it
/// fails with EPIPE.
fn run_into_closed_pipe(args: &[&str], cwd: &Path) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackshift"))
        .args(args)
        .current_dir(cwd)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rewrites the JSON file `from` into `to` with `edit`.
fn edit_json(from: &Path, to: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&fs::read(from).unwrap()).unwrap();
    edit(&mut v);
    fs::write(to, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn verify_prints_ok_only_when_every_check_passed_and_survives_a_closed_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (code, out, err) = run(
        &["demo", "--dir", "demo", "--size", "256KiB", "--files", "1"],
        dir,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let job = fs::read_dir(dir.join("demo/receipts"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (receipt, manifest) = (job.join("receipt.json"), job.join("manifest.json"));
    let keys = dir.join("demo/public-keys.json");
    let verify = |file: &Path, keys: &Path| {
        run(
            &[
                "verify",
                file.to_str().unwrap(),
                "--public-keys",
                keys.to_str().unwrap(),
            ],
            dir,
        )
    };
    let (code, out, err) = verify(&receipt, &keys);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("OK receipt") && out.contains("recorded in ledger"),
        "{out}"
    );

    // A tampered ledger proof: the signature still verifies, the proof does not. Nothing
    // on stdout says OK.
    let bad = dir.join("tampered.json");
    edit_json(&receipt, &bad, |v| {
        let proof = v["ledger_proof"].as_str().unwrap().to_string();
        let mut lines: Vec<String> = proof.split('\n').map(str::to_string).collect();
        let hash = &mut lines[2];
        let flipped = if hash.starts_with('A') { "B" } else { "A" };
        hash.replace_range(0..1, flipped);
        v["ledger_proof"] = Value::String(lines.join("\n"));
    });
    let (code, out, err) = verify(&bad, &keys);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(out, "", "nothing on stdout when a check fails");
    assert!(
        err.starts_with("FAILED") && err.contains("ledger proof"),
        "{err}"
    );

    // The proof stripped (it is not signed): a key file that names a ledger wants it.
    let stripped = dir.join("stripped.json");
    edit_json(&receipt, &stripped, |v| {
        v.as_object_mut().unwrap().remove("ledger_proof");
    });
    let (code, out, err) = verify(&stripped, &keys);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(out, "");
    assert!(err.contains("lacks its ledger proof"), "{err}");
    // Against a key file without the ledger member it is an ordinary signed receipt.
    let no_ledger = dir.join("no-ledger-keys.json");
    edit_json(&keys, &no_ledger, |v| {
        v.as_object_mut().unwrap().remove("ledger");
    });
    let (code, out, err) = verify(&stripped, &no_ledger);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("OK receipt") && !out.contains("ledger"),
        "{out}"
    );

    // Upper-case hex, in each kind of document: malformed (exit 2), not a rejection.
    fn upper(v: &mut Value) {
        let s = v.as_str().unwrap().to_uppercase();
        *v = Value::String(s);
    }
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&Path, &Path, Edit)> = vec![
        (
            &receipt,
            &keys,
            Box::new(|v| upper(&mut v["manifest_hash"])),
        ),
        (
            &receipt,
            &keys,
            Box::new(|v| upper(&mut v["confirmation"]["blake3"])),
        ),
        (
            &receipt,
            &keys,
            Box::new(|v| upper(&mut v["signature"]["key_id"])),
        ),
        (&manifest, &keys, Box::new(|v| upper(&mut v["root_hash"]))),
        (
            &manifest,
            &keys,
            Box::new(|v| upper(&mut v["files"][0]["chunks"][0])),
        ),
        (
            &manifest,
            &keys,
            Box::new(|v| upper(&mut v["files"][0]["blake3"])),
        ),
    ];
    for (i, (doc, keys, edit)) in cases.into_iter().enumerate() {
        let t = dir.join(format!("upper-{i}.json"));
        edit_json(doc, &t, edit);
        let (code, out, err) = verify(&t, keys);
        assert_eq!(code, 2, "case {i}: {out}\n{err}");
        assert!(err.contains("lower-case"), "case {i}: {err}");
    }
    // A key id of digits only has no upper case (about one id in forty): nothing to test.
    let has_letter = |s: &str| s.chars().any(|c| c.is_ascii_lowercase());
    let key_file: Value = serde_json::from_slice(&std::fs::read(&keys).unwrap()).unwrap();
    if has_letter(key_file["keys"][0]["id"].as_str().unwrap()) {
        let upper_keys = dir.join("upper-keys.json");
        edit_json(&keys, &upper_keys, |v| upper(&mut v["keys"][0]["id"]));
        let (code, _, err) = verify(&receipt, &upper_keys);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("lower-case"), "{err}");
    }
    let vkey = key_file["ledger"]["log_key"].as_str().unwrap().to_string();
    let (name, rest) = vkey.split_once('+').unwrap();
    let (id, key) = rest.split_once('+').unwrap();
    if has_letter(id) {
        let upper_vkey = dir.join("upper-vkey.json");
        let upper = format!("{name}+{}+{key}", id.to_uppercase());
        edit_json(&keys, &upper_vkey, |v| {
            v["ledger"]["log_key"] = Value::String(upper.clone());
        });
        let (code, _, err) = verify(&receipt, &upper_vkey);
        assert_eq!(code, 2, "{err}");
    }

    // Piped into a reader that is gone (`| head -1`): no panic; the verdict is the exit code.
    let gw = dir.join("demo/gateway");
    for args in [
        vec![
            "verify",
            receipt.to_str().unwrap(),
            "--public-keys",
            keys.to_str().unwrap(),
        ],
        vec!["ledger", "verify", "--data-dir", gw.to_str().unwrap()],
        vec!["ledger", "checkpoint", "--data-dir", gw.to_str().unwrap()],
    ] {
        let (code, err) = run_into_closed_pipe(&args, dir);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
    let (code, err) = run_into_closed_pipe(
        &[
            "verify",
            bad.to_str().unwrap(),
            "--public-keys",
            keys.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn ledger_consistency_from_the_empty_tree_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = dir.join("gw");
    let ledger = trackshift_ledger::Ledger::open(gw.join("ledger"), "test.example/ledger").unwrap();
    let empty = ledger.checkpoint();
    assert_eq!(empty.size, 0);
    fs::write(dir.join("empty.cp"), &empty.note).unwrap();
    ledger
        .append_blocking(vec![b"one".to_vec(), b"two".to_vec()])
        .unwrap();
    fs::write(dir.join("two.cp"), &ledger.checkpoint().note).unwrap();
    ledger.close();
    drop(ledger);
    let (code, _, err) = run(&["keys", "init", "--dir", "keys"], dir);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            "keys",
            "--out",
            "pub.json",
            "--ledger",
            gw.join("ledger").to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let consistency = |old: &str, new: &str| {
        run(
            &[
                "ledger",
                "consistency",
                old,
                new,
                "--public-keys",
                "pub.json",
                "--data-dir",
                gw.to_str().unwrap(),
            ],
            dir,
        )
    };
    let (code, out, err) = consistency("two.cp", "two.cp");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("OK"), "{out}");
    // RFC 9162 has no consistency proof from size 0: an empty one vouched for any roots.
    let (code, out, err) = consistency("empty.cp", "two.cp");
    assert_eq!(code, 2, "{out}\n{err}");
    assert_eq!(out, "");
    assert!(err.contains("0 entries"), "{err}");
    let (code, out, err) = consistency("empty.cp", "empty.cp");
    assert_eq!(code, 2, "{out}\n{err}");

    // Key files of a shared log that name two different ledgers: refused, not one picked.
    let other = dir.join("other-ledger");
    trackshift_ledger::Ledger::open(&other, "test.example/ledger")
        .unwrap()
        .close();
    let (code, _, err) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            "keys",
            "--out",
            "other.json",
            "--ledger",
            other.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &[
            "ledger",
            "verify",
            "--store",
            "postgres://trackshift@127.0.0.1:9/none",
            "--public-keys",
            "pub.json",
            "--public-keys",
            "other.json",
        ],
        dir,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("other ledger keys"), "{err}");
}
