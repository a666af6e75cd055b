//! Checkpoints time-stamped by a real RFC 3161 authority (OpenSSL's `ts -reply` behind an
//! HTTP front, `scripts/test-servers.sh start tsa`): a receipt's checkpoint is covered,
//! `verify --timestamp` and `openssl ts -verify` both accept the stamp, a wrong CA or a
//! changed checkpoint is refused, and an authority that is down delays stamps, never a
//! transfer, the gap shown in `/ready` and `/metrics`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, get_with_key, run, start_gateway_full};

fn tsa() -> (String, String) {
    let need = "(the test TSA: scripts/test-servers.sh start tsa)";
    (
        std::env::var("TRACKSHIFT_TEST_TSA").expect(need),
        std::env::var("TRACKSHIFT_TEST_TSA_CA").expect(need),
    )
}

fn servers(action: &str, name: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-servers.sh");
    let out = Command::new(script).args([action, name]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restarts the authority if a failing assertion left it down.
struct Down(bool);
impl Drop for Down {
    fn drop(&mut self) {
        if self.0 {
            servers("restart", "tsa");
        }
    }
}

fn send(dir: &Path, gw: &Gateway, file: &str) {
    std::fs::write(dir.join(file), format!("data of {file}")).unwrap();
    let dest = format!("file://{}", dir.join("out").display());
    let token = dir.join("gw/default.token");
    common::send_ok(
        dir,
        gw,
        &token,
        file,
        &dest,
        Some(format!("docs-{file}").as_str()),
    );
}

/// `ledger timestamp` for a receipt, retried until a stamp covers it (the stamper runs
/// every second).
fn fetch_stamp(dir: &Path, gw: &Gateway, receipt: &str, out: &str) -> String {
    let start = Instant::now();
    loop {
        let (code, o, err) = run(
            &[
                "ledger",
                "timestamp",
                "--gateway",
                &gw.http,
                "--receipt",
                receipt,
                "--out",
                out,
            ],
            dir,
        );
        if code == 0 {
            return o;
        }
        assert!(err.contains("no time-stamp covers"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no stamp within 30 s: {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn ready_stamps(gw: &Gateway) -> serde_json::Value {
    let (status, body) = get_with_key(&gw.http, "/ready", Some(&gw.operator_key));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["timestamps"].clone()
}

#[test]
fn receipts_checkpoints_are_time_stamped_outside_the_gateway() {
    let (url, ca) = tsa();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dest = format!("file://{}", dir.join("out").display());
    let gw = start_gateway_full(
        &dir.join("gw"),
        &[],
        &[
            "--default-dest",
            &dest,
            "--tsa",
            &url,
            "--tsa-ca",
            &ca,
            "--tsa-interval",
            "1",
        ],
        Some(&dir.join("gw.log")),
    );
    send(dir, &gw, "a.txt");
    let saved = fetch_stamp(dir, &gw, "docs-a.txt/receipt.json", "a.ts.json");
    assert!(saved.contains("saved the time-stamp"), "{saved}");
    let (code, _, err) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            "gw/keys",
            "--out",
            "pk.json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let verify = |ts: &str, ca: &str| {
        run(
            &[
                "verify",
                "docs-a.txt/receipt.json",
                "--public-keys",
                "pk.json",
                "--timestamp",
                ts,
                "--tsa-ca",
                ca,
            ],
            dir,
        )
    };
    let (code, out, err) = verify("a.ts.json", &ca);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("time-stamped: the ledger held it by"), "{out}");
    assert!(out.contains("trackshift-test-tsa"), "{out}");
    // OpenSSL alone checks the same stamp.
    let o = Command::new("openssl")
        .args([
            "ts",
            "-verify",
            "-data",
            "a.ts.json.checkpoint",
            "-in",
            "a.ts.json.tsr",
            "-CAfile",
            &ca,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Verification: OK"),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Another CA (the gateway's own TLS CA) does not vouch for the authority.
    let other_ca = dir.join("gw/tls/ca.pem");
    let (code, out, err) = verify("a.ts.json", other_ca.to_str().unwrap());
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("does not chain to the trusted CA"), "{err}");
    // A changed checkpoint in the stamp file is refused.
    let mut stamp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("a.ts.json")).unwrap()).unwrap();
    let cp = stamp["checkpoint"].as_str().unwrap().to_string();
    let size: u64 = cp.lines().nth(1).unwrap().parse().unwrap();
    stamp["checkpoint"] = cp
        .replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1)
        .into();
    std::fs::write(dir.join("bad.ts.json"), stamp.to_string()).unwrap();
    let (code, out, err) = verify("bad.ts.json", &ca);
    assert_eq!(code, 1, "{out}{err}");
    // So is a token whose signature was changed (its last byte), or one for another
    // checkpoint (the stamp of a later one, given for this receipt with no proof).
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut stamp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("a.ts.json")).unwrap()).unwrap();
    let mut der = b64.decode(stamp["response"].as_str().unwrap()).unwrap();
    *der.last_mut().unwrap() ^= 0x01;
    stamp["response"] = b64.encode(&der).into();
    std::fs::write(dir.join("sig.ts.json"), stamp.to_string()).unwrap();
    let (code, out, err) = verify("sig.ts.json", &ca);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("signature"), "{err}");

    // The authority goes down: transfers go on, the stamps wait, and the gap shows.
    let mut down = Down(true);
    servers("kill", "tsa");
    send(dir, &gw, "b.txt");
    let start = Instant::now();
    loop {
        let t = ready_stamps(&gw);
        if t["failures"].as_u64().unwrap() > 0 && t["unstamped_entries"].as_u64().unwrap() > 0 {
            assert!(
                t["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("time-stamp authority")),
                "{t}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{t}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, metrics) = get_with_key(&gw.http, "/metrics", Some(&gw.operator_key));
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("trackshift_tsa_failures_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trackshift_tsa_unstamped_entries"),
        "{metrics}"
    );
    let (code, _, err) = run(
        &[
            "ledger",
            "timestamp",
            "--gateway",
            &gw.http,
            "--receipt",
            "docs-b.txt/receipt.json",
            "--out",
            "b.ts.json",
        ],
        dir,
    );
    assert_ne!(code, 0);
    assert!(err.contains("no time-stamp covers"), "{err}");
    // Back up: the newer checkpoint is stamped, and it covers the older receipt too, by a
    // consistency proof.
    servers("restart", "tsa");
    down.0 = false;
    fetch_stamp(dir, &gw, "docs-b.txt/receipt.json", "b.ts.json");
    let (code, out, err) = run(
        &[
            "verify",
            "docs-b.txt/receipt.json",
            "--public-keys",
            "pk.json",
            "--timestamp",
            "b.ts.json",
            "--tsa-ca",
            &ca,
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}{err}");
    let start = Instant::now();
    while ready_stamps(&gw)["unstamped_entries"].as_u64() != Some(0) {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = std::fs::read_to_string(dir.join("gw.log")).unwrap();
    assert!(
        log.contains("checkpoint not time-stamped; transfers go on"),
        "{log}"
    );
    assert!(
        log.contains("the time-stamp authority answers again"),
        "{log}"
    );
}
