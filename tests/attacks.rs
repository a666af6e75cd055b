//! A hostile tenant against a running gateway (`trackshift serve`), over its real QUIC and
//! HTTP interfaces. Each test is named after the attack it tries; docs/SECURITY.md lists
//! them with the trust boundary each one tests and what enforces it.

mod common;

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Gateway, run, send_args, start_gateway_full};
use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};

const VICTIM: &str = "victim-key-0123456789abcdef";
const ATTACKER: &str = "attacker-key-0123456789abcdef";

fn secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// A gateway with tenants `victim` and `attacker`, both allowed `dir/shared` (overlapping
/// destinations, as the auto-created default tenant used to have by default), the
/// attacker also `dir/allowed`, its sources under `dir/src-attacker`; token files
/// `dir/victim.token` and `dir/attacker.token`.
fn two_tenants(dir: &Path) -> Gateway {
    for d in ["shared", "allowed", "outside", "src-attacker"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let shared = DestinationRule::prefix(file_uri(&dir.join("shared")));
    TenantFile {
        tenants: vec![
            TenantEntry {
                destinations: Some(vec![shared.clone()]),
                ..TenantEntry::new("victim", VICTIM)
            },
            TenantEntry {
                destinations: Some(vec![
                    shared,
                    DestinationRule::prefix(format!("{}/", file_uri(&dir.join("allowed")))),
                    DestinationRule::prefix("s3://bucket/in/"),
                ]),
                sources: vec![dir.join("src-attacker")],
                ..TenantEntry::new("attacker", ATTACKER)
            },
        ],
    }
    .save(&dir.join("gw"))
    .unwrap();
    secret(&dir.join("victim.token"), VICTIM);
    secret(&dir.join("attacker.token"), ATTACKER);
    start_gateway_full(&dir.join("gw"), &[], &[], None)
}

fn send(
    gw: &Gateway,
    dir: &Path,
    token: &str,
    src: &str,
    dest: &str,
    extra: &[&str],
) -> (i32, String) {
    let mut args = send_args(
        gw,
        &dir.join(token),
        src,
        &[dest],
        Some(&format!("receipts/{token}/{src}")),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(&args, dir);
    (code, format!("{out}{err}"))
}

fn submit(gw: &Gateway, key: &str, body: serde_json::Value) -> (u16, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/jobs", gw.http))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

#[test]
fn destination_with_a_fragment_or_query_cannot_escape_the_tenant_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = two_tenants(dir);
    std::fs::write(dir.join("outside/victim.txt"), b"precious\n").unwrap();
    // First a directory literally named '#' (and one named '?') under the allowed prefix.
    for name in ["#", "?"] {
        let src = dir.join(format!("src-{}", if name == "#" { "hash" } else { "q" }));
        std::fs::create_dir_all(src.join(name)).unwrap();
        std::fs::write(src.join(name).join("x"), b"x").unwrap();
    }
    let allowed = format!("{}/", file_uri(&dir.join("allowed")));
    let (code, out) = send(&gw, dir, "attacker.token", "src-hash", &allowed, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(dir.join("allowed/#/x").exists());
    // Then the escape, by QUIC send and by the job API.
    std::fs::create_dir_all(dir.join("evil")).unwrap();
    std::fs::write(dir.join("evil/victim.txt"), b"overwritten\n").unwrap();
    std::fs::copy(
        dir.join("evil/victim.txt"),
        dir.join("src-attacker/victim.txt"),
    )
    .unwrap();
    for dest in [
        format!("{allowed}#/../../outside"),
        format!("{allowed}?/../../outside"),
        format!("{allowed}%23/../../outside"),
        format!("{allowed}%2e%2e/outside"),
    ] {
        let (code, out) = send(&gw, dir, "attacker.token", "evil", &dest, &[]);
        assert_ne!(code, 0, "{dest} accepted: {out}");
        assert!(
            out.contains("refused") || out.contains("invalid"),
            "{dest}: {out}"
        );
        let (status, body) = submit(
            &gw,
            ATTACKER,
            serde_json::json!({ "source": dir.join("src-attacker"), "destinations": [dest] }),
        );
        assert!(status == 403 || status == 422, "{dest}: {status} {body}");
    }
    assert_eq!(
        std::fs::read(dir.join("outside/victim.txt")).unwrap(),
        b"precious\n"
    );
}

#[test]
fn a_tenant_with_the_same_job_id_cannot_replace_another_tenants_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = two_tenants(dir);
    for (who, text) in [("v", "the victim's data\n"), ("a", "attacker bytes!!!\n")] {
        std::fs::create_dir_all(dir.join(format!("src-{who}"))).unwrap();
        std::fs::write(dir.join(format!("src-{who}/report.csv")), text).unwrap();
    }
    let shared = file_uri(&dir.join("shared"));
    let job = ["--job-id", "job-7"];
    let (code, out) = send(&gw, dir, "victim.token", "src-v", &shared, &job);
    assert_eq!(code, 0, "{out}");
    // The attacker sends the same name with the same job id a moment later.
    let (code, out) = send(&gw, dir, "attacker.token", "src-a", &shared, &job);
    assert_ne!(code, 0, "the attacker replaced the file: {out}");
    assert!(out.contains("already exists"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("shared/report.csv")).unwrap(),
        b"the victim's data\n"
    );
    // The victim's signed documents still match what is there.
    let (code, out, err) = run(
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
    assert_eq!(code, 0, "{out}{err}");
    let docs = "receipts/victim.token/src-v";
    for doc in ["manifest.json", "receipt.json"] {
        let (code, out, err) = run(
            &[
                "verify",
                &format!("{docs}/{doc}"),
                "--public-keys",
                "pub.json",
            ],
            dir,
        );
        assert_eq!(code, 0, "{doc}: {out}{err}");
    }
    let (code, out, err) = run(
        &[
            "verify",
            &format!("{docs}/manifest.json"),
            "--public-keys",
            "pub.json",
            "--data",
            "shared",
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}{err}");
    // No temporary object of either job is left where the other could reach it.
    let names: Vec<String> = std::fs::read_dir(dir.join("shared"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["report.csv"]);
}

#[test]
fn a_job_uri_cannot_point_the_gateway_at_another_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = two_tenants(dir);
    // A listener the attacker controls: nothing from the gateway may reach it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((mut s, _)) = listener.accept() {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = s.read(&mut buf);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/a.txt"), b"a").unwrap();
    std::fs::write(dir.join("src-attacker/a.txt"), b"a").unwrap();
    for dest in [
        format!("s3://bucket/in/?endpoint=http://127.0.0.1:{port}&allow_http=true"),
        format!("s3://bucket/in/x?endpoint=http%3A%2F%2F127.0.0.1%3A{port}&allow_http=true"),
        format!("s3://bucket/in/?region=x&endpoint=http://127.0.0.1:{port}"),
    ] {
        let (code, out) = send(&gw, dir, "attacker.token", "src", &dest, &[]);
        assert_ne!(code, 0, "{dest}: {out}");
        assert!(out.contains("operator"), "{dest}: {out}");
        let (status, body) = submit(
            &gw,
            ATTACKER,
            serde_json::json!({ "source": dir.join("src-attacker"), "destinations": [dest] }),
        );
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("operator"), "{body}");
    }
    // Files the gateway would read for a job are refused the same way, before anything
    // is opened.
    for dest in [
        "sftp://u@127.0.0.1/in?known_hosts=/etc/shadow",
        "ftps://u@127.0.0.1/in?ca=/dev/zero",
    ] {
        let (status, body) = submit(
            &gw,
            ATTACKER,
            serde_json::json!({ "source": dir.join("src-attacker"), "destinations": [dest] }),
        );
        assert_eq!(status, 403, "{dest}: {body}");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the gateway connected out");
}

#[test]
fn the_default_tenant_writes_nowhere_unless_the_operator_says() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/a.txt"), b"a").unwrap();
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let out_uri = file_uri(&dir.join("out"));
    {
        let gw = start_gateway_full(&dir.join("gw"), &[], &[], None);
        let (code, out) = send(&gw, dir, "gw/default.token", "src", &out_uri, &[]);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("no destinations"), "{out}");
    }
    let gw = start_gateway_full(&dir.join("gw"), &[], &["--default-dest", &out_uri], None);
    let (code, out) = send(&gw, dir, "gw/default.token", "src", &out_uri, &[]);
    assert_eq!(code, 0, "{out}");
    // Still only there.
    let other = file_uri(&dir.join("src"));
    let (code, out) = send(&gw, dir, "gw/default.token", "src", &other, &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not allowed"), "{out}");
    // And never over the gateway's own data directory.
    drop(gw);
    let data = file_uri(&dir.join("gw"));
    let (code, _, err) = run(
        &[
            "serve",
            "--data-dir",
            "gw",
            "--listen",
            "127.0.0.1:0",
            "--default-dest",
            &data,
        ],
        dir,
    );
    assert_ne!(code, 0);
    assert!(err.contains("data directory"), "{err}");
}

#[test]
fn a_file_named_like_a_temporary_object_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = two_tenants(dir);
    let name = ".trackshift-0123456789abcdef0123456789abcdef.tspart";
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src").join(name), b"x").unwrap();
    let (code, out) = send(
        &gw,
        dir,
        "attacker.token",
        "src",
        &file_uri(&dir.join("shared")),
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("reserves"), "{out}");
    assert!(!dir.join("shared").join(name).exists());
}
