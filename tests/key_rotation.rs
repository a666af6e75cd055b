//! Keys rotate on a running gateway: `trackshift keys rotate` (manifest, receipt, ledger and
//! all of them) on the data directory of a `trackshift serve` child while 50 jobs run
//! through it, with and without SIGHUP. No job fails, every document verifies with the
//! public keys exported afterwards (retired keys included), each job was signed with the
//! key valid when it signed, the ledger verifies, and a restart is clean. The same with
//! the ledger and jobs shared through PostgreSQL, whose keys rotate in the database.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::api::Api;
use common::{Gateway, postgres_database, run, start_gateway_full};
use serde_json::Value;
use trackshift_crypto::{Manifest, PublicKeyring, Receipt, Signable as _, verify_signed_bytes};

const ACME: &str = "acme-key-0123456789";
const JOBS: usize = 50;

fn setup(root: &Path) -> PathBuf {
    let data = common::acme_tenant(root, ACME);
    for i in 0..JOBS {
        let body: Vec<u8> = (0..4096 + i * 37).map(|b| (b * 31 + i) as u8).collect();
        std::fs::write(root.join(format!("src/f{i}.bin")), body).unwrap();
        std::fs::create_dir_all(root.join(format!("out/job{i}"))).unwrap();
    }
    data
}

/// Submits job `i`: its file to `null://`, every other one also to its own directory.
async fn submit(api: &Api, root: &Path, i: usize) -> String {
    let mut dests = vec!["null://".to_string()];
    if !i.is_multiple_of(2) {
        dests.insert(0, format!("file://{}/job{i}", root.join("out").display()));
    }
    api.submit(&root.join(format!("src/f{i}.bin")), &dests)
        .await
}

fn cli(args: &[&str], cwd: &Path) -> String {
    let (code, out, err) = run(args, cwd);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

fn hangup(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// How the scenario runs: signal the gateway after each rotation; ledger and jobs in
/// PostgreSQL (`serve --store`) instead of the data directory.
#[derive(Clone, Copy)]
struct Scenario {
    sighup: bool,
    shared: bool,
}

/// Runs the whole scenario.
async fn rotate_while_jobs_run(Scenario { sighup, shared }: Scenario) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = setup(root);
    let log = root.join("gw.log");
    let keys = data.join("keys");
    let keys_arg = keys.to_str().unwrap().to_string();
    let data_arg = data.to_str().unwrap().to_string();
    let store = if shared {
        Some(postgres_database().await)
    } else {
        None
    };
    let serve_args: Vec<&str> = match &store {
        Some(url) => vec!["--store", url],
        None => vec![],
    };
    // Where the ledger is, for the ledger commands and the key export.
    let ledger_keys = data.join("ledger/keys").to_str().unwrap().to_string();
    let gw = start_gateway_full(&data, &[], &serve_args, Some(&log));
    let from_gateway = ["--gateway", gw.http.as_str()];
    let source: Vec<&str> = if shared {
        from_gateway.to_vec()
    } else {
        vec!["--data-dir", &data_arg]
    };
    let api = Api::new(&gw.http, ACME);

    // Jobs go in one every 40 ms; the keys rotate at fixed points in between, while the
    // earlier jobs are still running or finishing.
    let rotations = [
        (10, "manifest"),
        (20, "receipt"),
        (30, "ledger"),
        (40, "all"),
    ];
    let mut ids = Vec::new();
    let mut before_ledger_rotation = None;
    for i in 0..JOBS {
        if let Some((_, purpose)) = rotations.iter().find(|(at, _)| *at == i) {
            if *purpose == "ledger" {
                before_ledger_rotation = Some(cli(
                    &[&["ledger", "checkpoint"][..], &source].concat(),
                    root,
                ));
            }
            let mut args = vec!["keys", "rotate", "--dir", &keys_arg, "--purpose", purpose];
            if let Some(url) = &store {
                args.extend(["--store", url]);
            }
            let out = cli(&args, root);
            assert!(out.contains("next signature"), "{out}");
            if sighup {
                hangup(&gw);
            }
        }
        ids.push(submit(&api, root, i).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut jobs = 0;
    for id in &ids {
        let state = api.wait(id).await;
        assert_eq!(state, "completed", "job {id}");
        jobs += 1;
    }
    assert_eq!(jobs, JOBS);

    // The auditor's export after the rotations: every key ever used, with its window.
    let mut args = vec![
        "keys",
        "export-public",
        "--dir",
        &keys_arg,
        "--out",
        "pk.json",
    ];
    if shared {
        args.extend(["--ledger", &ledger_keys]);
    }
    cli(&args, root);
    let ring = PublicKeyring::from_json(&std::fs::read(root.join("pk.json")).unwrap()).unwrap();
    // Two rotations of each document purpose: three keys each, two retired.
    assert_eq!(ring.keys.len(), 6, "{}", ring.to_json());
    let ledger_keys = ring
        .ledger
        .clone()
        .expect("the export holds the ledger keys");
    assert_eq!(ledger_keys.retired.len(), 2, "two ledger rotations");

    let mut manifest_keys = BTreeSet::new();
    let mut receipt_keys = BTreeSet::new();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let (s, m) = api
            .call("GET", &format!("/v1/jobs/{id}/manifest"), None)
            .await;
        assert_eq!(s, 200, "{m}");
        let manifest = Manifest::from_json(m.as_bytes()).unwrap();
        let key = manifest.verify_signature(&ring).unwrap();
        manifest_keys.insert(key.id);
        verify_signed_bytes(&manifest.signed_bytes().unwrap(), &ring).unwrap();
        let (s, r) = api
            .call("GET", &format!("/v1/jobs/{id}/receipts"), None)
            .await;
        assert_eq!(s, 200, "{r}");
        let receipts: Value = serde_json::from_str(&r).unwrap();
        let receipts = receipts["receipts"].as_array().unwrap();
        assert_eq!(receipts.len(), 1 + i % 2);
        for (d, r) in receipts.iter().enumerate() {
            let receipt = Receipt::from_json(r.to_string().as_bytes()).unwrap();
            let key = receipt.verify(&ring, Some(&manifest)).unwrap();
            receipt_keys.insert(key.id);
            // Every tenth job and the last go through `trackshift verify` too, which also
            // checks the receipt's ledger proof against its (perhaps old-key) checkpoint.
            if i % 10 == 9 || i == JOBS - 1 {
                let (mp, rp) = (format!("docs/m{i}.json"), format!("docs/r{i}-{d}.json"));
                std::fs::write(root.join(&mp), &m).unwrap();
                std::fs::write(root.join(&rp), r.to_string()).unwrap();
                let out = cli(
                    &["verify", &rp, "--public-keys", "pk.json", "--manifest", &mp],
                    root,
                );
                assert!(out.starts_with("OK"), "{out}");
            }
        }
        // A job submitted after the last rotation signs with the keys active now.
        if i == JOBS - 1 {
            let sig = manifest.signature.as_ref().unwrap();
            assert_eq!(
                Some(sig.key_id),
                ring.active(trackshift_crypto::Purpose::Manifest)
                    .map(|k| k.id)
            );
        }
    }
    // The rotations took effect on the running gateway: all three keys of each purpose
    // signed documents.
    assert_eq!(manifest_keys.len(), 3, "{manifest_keys:?}");
    assert_eq!(receipt_keys.len(), 3, "{receipt_keys:?}");

    // The ledger verifies, and the log grew consistently across the ledger key rotation.
    let verify: Vec<&str> = match &store {
        Some(url) => vec![
            "ledger",
            "verify",
            "--store",
            url,
            "--public-keys",
            "pk.json",
        ],
        None => vec!["ledger", "verify", "--data-dir", &data_arg],
    };
    let out = cli(&verify, root);
    assert!(out.starts_with("OK"), "{out}");
    let after = cli(&[&["ledger", "checkpoint"][..], &source].concat(), root);
    std::fs::write(root.join("cp-old"), before_ledger_rotation.unwrap()).unwrap();
    std::fs::write(root.join("cp-new"), &after).unwrap();
    let out = cli(
        &[
            &[
                "ledger",
                "consistency",
                "cp-old",
                "cp-new",
                "--public-keys",
                "pk.json",
            ][..],
            &source,
        ]
        .concat(),
        root,
    );
    assert!(out.starts_with("OK"), "{out}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("not reloaded"), "{text}");

    // A restart is clean: it opens the ledger (its checkpoint signed by the newest pair),
    // runs a job, and the ledger still verifies.
    drop(gw);
    let gw = start_gateway_full(&data, &[], &serve_args, Some(&log));
    let api = Api::new(&gw.http, ACME);
    let id = submit(&api, root, 0).await;
    assert_eq!(api.wait(&id).await, "completed");
    let out = cli(&verify, root);
    assert!(out.starts_with("OK"), "{out}");
    assert!(
        out.contains(&format!("{} manifests", JOBS + 1)),
        "every job recorded once: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_key_while_fifty_jobs_run_fails_none_without_a_signal() {
    rotate_while_jobs_run(Scenario {
        sighup: false,
        shared: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_key_while_fifty_jobs_run_fails_none_with_sighup() {
    rotate_while_jobs_run(Scenario {
        sighup: true,
        shared: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_key_of_a_gateway_sharing_postgresql_while_fifty_jobs_run_fails_none() {
    rotate_while_jobs_run(Scenario {
        sighup: false,
        shared: true,
    })
    .await;
}

/// `keys init` of a key store at `keys`; returns its keyring as it is then.
fn init_key_store(root: &std::path::Path, keys: &std::path::Path) -> Vec<u8> {
    cli(&["keys", "init", "--dir", keys.to_str().unwrap()], root);
    std::fs::read(keys.join("keyring.json")).unwrap()
}

/// `keys rotate --purpose all` of the key store at `keys`: exit code, stdout, stderr.
fn rotate_all(root: &std::path::Path, keys: &std::path::Path) -> (i32, String, String) {
    run(
        &[
            "keys",
            "rotate",
            "--dir",
            keys.to_str().unwrap(),
            "--purpose",
            "all",
        ],
        root,
    )
}

#[test]
fn a_ledger_rotation_without_a_started_ledger_rotates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, keys) = (tmp.path(), tmp.path().join("keys"));
    let before = init_key_store(root, &keys);
    let (code, out, err) = rotate_all(root, &keys);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("nothing was rotated"), "{err}");
    assert_eq!(std::fs::read(keys.join("keyring.json")).unwrap(), before);
}

#[test]
fn a_shared_postgres_ledger_without_its_database_rotates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, keys) = (tmp.path(), tmp.path().join("keys"));
    let before = init_key_store(root, &keys);
    // What `serve --store postgres://...` leaves: the ledger's keys and their public half
    // under ledger/keys, no file log.
    let ledger_keys = root.join("ledger/keys");
    std::fs::create_dir_all(&ledger_keys).unwrap();
    std::fs::write(ledger_keys.join("public-keys.json"), "{}").unwrap();
    let (code, out, err) = rotate_all(root, &keys);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("shared in PostgreSQL") && err.contains("--store"),
        "{err}"
    );
    assert!(err.contains("nothing was rotated"), "{err}");
    assert_eq!(
        err.matches("nothing was rotated").count(),
        1,
        "said once: {err}"
    );
    assert_eq!(std::fs::read(keys.join("keyring.json")).unwrap(), before);
}
