//! `trackshift backup` and `trackshift restore` (embedded mode): a backup taken while jobs
//! run through a `trackshift serve` child, restored into a new directory where a gateway
//! starts; the restored ledger verifies, every receipt logged before the backup's
//! checkpoint verifies against it, new jobs run, and the backup's checkpoint is consistent
//! with later ones of both the original and the restored gateway. Then what an operator
//! or an attacker may do wrong: a passphrase file others can read, an altered, extended or
//! interrupted backup, a wrong passphrase, a non-empty target.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::Api;
use common::{run, start_gateway_full, write_secret};
use serde_json::Value;
use trackshift_crypto::{PublicKeyring, Receipt, Signable as _};
use trackshift_ledger::{Ledger, TlogProof, leaf_hash, verify_checkpoint};

const ACME: &str = "acme-key-0123456789";
const FILES: usize = 20;
const PASSPHRASE: &str = "correct horse battery staple\n";

fn setup(root: &Path) -> PathBuf {
    let data = common::acme_tenant(root, ACME);
    for i in 0..FILES {
        let body: Vec<u8> = (0..8192 + i * 101).map(|b| (b * 13 + i) as u8).collect();
        std::fs::write(root.join(format!("src/f{i}.bin")), body).unwrap();
    }
    std::fs::create_dir_all(root.join("out")).unwrap();
    data
}

/// Submits job `i` as acme: to null:// and, every other one, to a local directory too.
async fn submit(api: &Api, root: &Path, i: usize) -> String {
    let mut dests = vec!["null://".to_string()];
    if !i.is_multiple_of(2) {
        dests.push(format!("file://{}/job{i}", root.join("out").display()));
    }
    api.submit(&root.join(format!("src/f{}.bin", i % FILES)), &dests)
        .await
}

fn cli(args: &[&str], cwd: &Path) -> String {
    let (code, out, err) = run(args, cwd);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Tree size of a signed checkpoint (its second line).
fn size_of(checkpoint: &str) -> u64 {
    checkpoint.lines().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_gateway_whose_ledger_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = setup(root);
    let pass = root.join("pass");
    write_secret(&pass, PASSPHRASE);
    let gw = start_gateway_full(&data, &[], &[], Some(&root.join("gw.log")));
    let api = Api::new(&gw.http, ACME);

    // Jobs go in every 25 ms from a task of their own until told to stop.
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (api, ids, stop, root) = (api.clone(), ids.clone(), stop.clone(), root.to_path_buf());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = submit(&api, &root, i).await;
                ids.lock().unwrap().push(id);
                i += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    // Some jobs finished before the backup starts, more run while it does.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let first: Vec<String> = ids.lock().unwrap().iter().take(8).cloned().collect();
        let mut done = 0;
        for id in &first {
            if api.state(id).await == "completed" {
                done += 1;
            }
        }
        if done == 8 {
            break;
        }
        assert!(Instant::now() < deadline, "the first jobs never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_backup: Vec<String> = ids.lock().unwrap().iter().take(8).cloned().collect();
    let bk = root.join("backup");
    let out = {
        let (root, data, bk, pass) = (root.to_path_buf(), data.clone(), bk.clone(), pass.clone());
        tokio::task::spawn_blocking(move || {
            cli(
                &[
                    "backup",
                    s(&data),
                    s(&bk),
                    "--with-keys",
                    "--passphrase-file",
                    s(&pass),
                ],
                &root,
            )
        })
        .await
        .unwrap()
    };
    assert!(out.starts_with("OK backup"), "{out}");
    assert!(out.contains("secret files encrypted"), "{out}");
    let submitted_during = ids.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let ids = ids.lock().unwrap().clone();
    assert!(
        ids.len() > submitted_during,
        "jobs kept coming after the backup"
    );
    for id in &ids {
        assert_eq!(api.wait(id).await, "completed", "job {id}");
    }
    let mut receipts = Vec::new();
    for id in &ids {
        receipts.extend(api.receipts(id).await);
    }
    let original_later = cli(&["ledger", "checkpoint", "--data-dir", s(&data)], root);
    drop(gw);

    // The backup holds no secret in the clear, and stops at a signed checkpoint.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(bk.join("backup.json")).unwrap()).unwrap();
    let paths: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for secret in ["key.pem", "service.key", "operator.key", "log-ed25519.key"] {
        assert!(!paths.iter().any(|p| p.ends_with(secret)), "{paths:?}");
    }
    assert!(
        !paths.iter().any(|p| p.contains("keys/secret")),
        "{paths:?}"
    );
    assert!(paths.contains(&"data/jobs.db") && paths.contains(&"keys.enc"));
    let backup_cp = std::fs::read_to_string(bk.join("data/ledger/checkpoint")).unwrap();
    let n = size_of(&backup_cp);
    assert_eq!(manifest["ledger"]["size"], n);
    assert!(
        size_of(&original_later) > n,
        "the log grew after the backup"
    );

    // Restore into a new directory; its ledger verifies in full.
    let restored = root.join("restored");
    let out = cli(
        &[
            "restore",
            s(&bk),
            s(&restored),
            "--passphrase-file",
            s(&pass),
        ],
        root,
    );
    assert!(out.starts_with("OK restored"), "{out}");
    let out = cli(&["ledger", "verify", "--data-dir", s(&restored)], root);
    assert!(out.starts_with("OK"), "{out}");
    assert!(out.contains(&format!(": {n} entries")), "{out}");

    // The backup's checkpoint is a prefix of the original log.
    std::fs::write(root.join("cp-backup"), &backup_cp).unwrap();
    std::fs::write(root.join("cp-original"), &original_later).unwrap();
    cli(
        &[
            "keys",
            "export-public",
            "--dir",
            s(&restored.join("keys")),
            "--out",
            "pk.json",
        ],
        root,
    );
    let out = cli(
        &[
            "ledger",
            "consistency",
            "cp-backup",
            "cp-original",
            "--public-keys",
            "pk.json",
            "--data-dir",
            s(&data),
        ],
        root,
    );
    assert!(out.starts_with("OK"), "{out}");

    // Every receipt logged before the backup's checkpoint verifies against the restored
    // ledger: its checkpoint's root is the restored log's root at that size, and its entry
    // is the restored log's entry.
    let ring = PublicKeyring::from_json(&std::fs::read(root.join("pk.json")).unwrap()).unwrap();
    let ledger_keys = ring.ledger.clone().unwrap();
    let log = Ledger::open_read_only(restored.join("ledger"), Some(ledger_keys.clone())).unwrap();
    let (mut before, mut after) = (0, 0);
    for (k, text) in receipts.iter().enumerate() {
        let r = Receipt::from_json(text.as_bytes()).unwrap();
        let proof = TlogProof::parse(r.ledger_proof.as_deref().unwrap()).unwrap();
        if proof.index >= n {
            after += 1;
            continue;
        }
        before += 1;
        let cp = verify_checkpoint(&proof.checkpoint, &ledger_keys).unwrap();
        assert!(cp.size <= n);
        assert_eq!(log.root_at(cp.size).unwrap(), cp.root, "receipt {k}");
        let signed = r.signed_bytes().unwrap();
        assert_eq!(
            log.leaf_hashes(proof.index, proof.index + 1).unwrap()[0],
            leaf_hash(&signed)
        );
        assert_eq!(log.entry(proof.index).unwrap(), signed);
        let file = format!("r{k}.json");
        std::fs::write(root.join(&file), text).unwrap();
        let out = cli(&["verify", &file, "--public-keys", "pk.json"], root);
        assert!(out.starts_with("OK receipt"), "{out}");
    }
    eprintln!(
        "{} jobs, {} submitted when the backup ended; backup at {n} entries, original at {}; \
         receipts logged before it {before}, after {after}",
        ids.len(),
        submitted_during,
        size_of(&original_later)
    );
    assert!(before >= 8, "{before} receipts before the backup");
    assert!(after > 0, "{after} receipts after the backup");
    drop(log);

    // A gateway starts on the restored directory: the jobs done before the backup are
    // there, new jobs run, and its later checkpoint is consistent with the backup's.
    let gw = start_gateway_full(&restored, &[], &[], Some(&root.join("restored.log")));
    let api = Api::new(&gw.http, ACME);
    for id in &before_backup {
        assert_eq!(api.state(id).await, "completed", "job {id}");
        assert!(!api.receipts(id).await.is_empty());
    }
    for i in 0..3 {
        let id = submit(&api, root, 100 + i).await;
        assert_eq!(api.wait(&id).await, "completed");
    }
    let restored_later = cli(&["ledger", "checkpoint", "--data-dir", s(&restored)], root);
    assert!(size_of(&restored_later) > n);
    std::fs::write(root.join("cp-restored"), &restored_later).unwrap();
    let out = cli(
        &[
            "ledger",
            "consistency",
            "cp-backup",
            "cp-restored",
            "--public-keys",
            "pk.json",
            "--data-dir",
            s(&restored),
        ],
        root,
    );
    assert!(out.starts_with("OK"), "{out}");
    let out = cli(&["ledger", "verify", "--data-dir", s(&restored)], root);
    assert!(out.starts_with("OK"), "{out}");
}

#[test]
fn backups_refuse_readable_passphrases_and_restores_refuse_altered_or_partial_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = setup(root);
    drop(start_gateway_full(&data, &[], &[], None));
    let pass = root.join("pass");

    // A passphrase file others can read: refused before anything is written.
    std::fs::write(&pass, PASSPHRASE).unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let bk = root.join("bk");
    let args = [
        "backup",
        s(&data),
        s(&bk),
        "--with-keys",
        "--passphrase-file",
        s(&pass),
    ];
    let (code, out, err) = run(&args, root);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!bk.exists());
    // The passphrase is never an argument.
    let (code, _, err) = run(&["backup", s(&data), s(&bk), "--with-keys"], root);
    assert_eq!(code, 2);
    assert!(err.contains("--passphrase-file"), "{err}");

    write_secret(&pass, PASSPHRASE);
    // Into the data directory itself: refused.
    let (code, _, err) = run(&["backup", s(&data), s(&data.join("bk"))], root);
    assert_eq!(code, 2);
    assert!(err.contains("must not contain each other"), "{err}");
    assert!(!data.join("bk").exists());
    // A backup writes nothing in the data directory (but for its read marks in SQLite's
    // shared-memory index, `jobs.db-shm`, which every reader of a WAL database updates).
    let before = listing(&data);
    let out = cli(&args, root);
    assert!(out.starts_with("OK backup"), "{out}");
    assert_eq!(listing(&data), before);
    let text = std::fs::read_to_string(bk.join("keys.enc")).unwrap_or_default();
    assert!(!text.contains(PASSPHRASE.trim()));
    // Into a backup that is there already: refused.
    let (code, _, err) = run(&args, root);
    assert_eq!(code, 2);
    assert!(err.contains("not empty"), "{err}");

    let copy = |name: &str| {
        let to = root.join(name);
        let status = std::process::Command::new("cp")
            .args(["-a", s(&bk), s(&to)])
            .status()
            .unwrap();
        assert!(status.success());
        to
    };
    let restore = |from: &Path, to: &Path| {
        run(
            &["restore", s(from), s(to), "--passphrase-file", s(&pass)],
            root,
        )
    };

    // A changed byte in any file: refused, naming the file, and nothing restored.
    for file in [
        "data/tenants.json",
        "data/jobs.db",
        "data/ledger/checkpoint",
        "keys.enc",
    ] {
        let altered = copy("altered");
        let path = altered.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let target = root.join("target");
        let (code, out, err) = restore(&altered, &target);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains(file), "{file}: {err}");
        assert!(err.contains("does not match the backup manifest"), "{err}");
        assert!(!target.exists());
        std::fs::remove_dir_all(&altered).unwrap();
    }
    // A file slipped in, and one taken away.
    let extended = copy("extended");
    std::fs::write(extended.join("data/keys/extra.json"), "{}").unwrap();
    let (code, _, err) = restore(&extended, &root.join("target"));
    assert_ne!(code, 0);
    assert!(
        err.contains("extra.json") && err.contains("not in the backup manifest"),
        "{err}"
    );
    let cut = copy("cut");
    std::fs::remove_file(cut.join("data/tenants.json")).unwrap();
    let (code, _, err) = restore(&cut, &root.join("target"));
    assert_ne!(code, 0);
    assert!(
        err.contains("tenants.json") && err.contains("missing"),
        "{err}"
    );
    // An interrupted backup (no manifest yet).
    let partial = copy("partial");
    std::fs::remove_file(partial.join("backup.json")).unwrap();
    let (code, _, err) = restore(&partial, &root.join("target"));
    assert_ne!(code, 0);
    assert!(err.contains("not a complete backup"), "{err}");
    assert!(!root.join("target").exists());

    // A wrong passphrase; no passphrase for a backup with keys.
    let wrong = root.join("wrong");
    write_secret(&wrong, "not the right passphrase");
    let (code, _, err) = run(
        &[
            "restore",
            s(&bk),
            s(&root.join("target")),
            "--passphrase-file",
            s(&wrong),
        ],
        root,
    );
    assert_ne!(code, 0);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!err.contains("not the right passphrase"), "{err}");
    let (code, _, err) = run(&["restore", s(&bk), s(&root.join("target"))], root);
    assert_ne!(code, 0);
    assert!(err.contains("--passphrase-file"), "{err}");

    // Into a directory that holds something: refused, and it is left as it was.
    let busy = root.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), "x").unwrap();
    let (code, _, err) = restore(&bk, &busy);
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    // An empty directory is fine, and the restored one verifies.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, out, err) = restore(&bk, &empty);
    assert_eq!(code, 0, "{out}{err}");
    let out = cli(&["ledger", "verify", "--data-dir", s(&empty)], root);
    assert!(out.starts_with("OK"), "{out}");

    // Without --with-keys: no secret leaves the data directory, and the restore says what
    // to copy.
    let plain = root.join("plain");
    let out = cli(&["backup", s(&data), s(&plain)], root);
    assert!(out.contains("no keys"), "{out}");
    assert!(!plain.join("keys.enc").exists());
    let out = cli(
        &["restore", s(&plain), s(&root.join("plain-restored"))],
        root,
    );
    assert!(out.contains("no keys in the backup"), "{out}");
}

/// Every file under `dir` with its size and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else if !e.path().ends_with("jobs.db-shm") {
                all.push((e.path(), meta.len(), meta.modified().unwrap()));
            }
        }
    }
    all.sort();
    all
}
