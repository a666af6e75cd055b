//! A running gateway (`trackshift serve --http`) serves its ledger to auditors: checkpoints,
//! C2SP hash tiles and proofs over HTTP, which `trackshift ledger` verifies locally; and the
//! ledger can be re-checked read-only while the gateway keeps running.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_trackshift")
}

fn run(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The gateway child, killed when dropped.
struct Gateway {
    child: Child,
    quic: String,
    http: String,
    fingerprint: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(data: &Path) -> Gateway {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut quic, mut http, mut fingerprint) = (None, None, None);
    while quic.is_none() || http.is_none() || fingerprint.is_none() {
        let line = lines
            .next()
            .expect("the gateway exited before it was ready")
            .unwrap();
        if let Some(rest) = line.strip_prefix("gateway listening on ") {
            quic = rest.split_whitespace().next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("certificate fingerprint: ") {
            fingerprint = Some(rest.trim().to_string());
        } else if let Some(i) = line.find("http://") {
            http = Some(line[i..].trim().to_string());
        }
    }
    // Keep draining stdout so the gateway never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Gateway {
        child,
        quic: quic.unwrap(),
        http: http.unwrap(),
        fingerprint: fingerprint.unwrap(),
    }
}

/// A plain HTTP/1.1 GET: (status, body).
fn get(base: &str, path: &str) -> (u16, Vec<u8>) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, resp[split + 4..].to_vec())
}

#[test]
fn a_running_gateway_serves_its_ledger_and_auditors_verify_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("gw");
    let gw = start_gateway(&data);
    let token = data.join("default.token");
    std::fs::create_dir_all(dir.join("dest")).unwrap();
    std::fs::write(dir.join("a.txt"), b"first file\n").unwrap();
    std::fs::write(dir.join("b.txt"), vec![7u8; 100_000]).unwrap();
    let send = |file: &str| {
        let (code, out, err) = run(
            &[
                "send",
                file,
                "--to",
                &gw.quic,
                "--fingerprint",
                &gw.fingerprint,
                "--token-file",
                token.to_str().unwrap(),
                "--dest",
                &format!("file://{}", dir.join("dest").display()),
            ],
            dir,
        );
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
    assert!(old.starts_with("trackshift.local/ledger\n2\n"), "{old}");
    std::fs::write(dir.join("old.cp"), &old).unwrap();
    send("b.txt");
    let (_, new, _) = run(&["ledger", "checkpoint", "--gateway", &gw.http], dir);
    assert!(new.starts_with("trackshift.local/ledger\n4\n"), "{new}");
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
    assert!(out.contains("grew from 2 to 4 entries"), "{out}");
    std::fs::write(dir.join("forged.cp"), new.replacen("\n4\n", "\n3\n", 1)).unwrap();
    let (code, _, err) = consistency("old.cp", "forged.cp");
    assert_eq!(code, 1, "{err}");

    // The whole ledger re-checks while the gateway keeps running (read-only open).
    let (code, out, err) = run(
        &["ledger", "verify", "--data-dir", data.to_str().unwrap()],
        dir,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("4 entries (2 manifests, 2 receipts)"), "{out}");

    // Raw endpoints: health, checkpoint, a partial tile of 4 leaf hashes, proofs, errors.
    assert_eq!(get(&gw.http, "/health"), (200, b"ok\n".to_vec()));
    let (status, body) = get(&gw.http, "/checkpoint");
    assert_eq!(
        (status, String::from_utf8(body).unwrap()),
        (200, new.clone())
    );
    let (status, tile) = get(&gw.http, "/tile/0/000.p/4");
    assert_eq!((status, tile.len()), (200, 4 * 32));
    let (status, proof) = get(&gw.http, "/v1/ledger/proof/inclusion?index=3");
    assert_eq!(status, 200);
    let proof = trackshift_ledger::TlogProof::parse(&String::from_utf8(proof).unwrap()).unwrap();
    assert_eq!((proof.index, proof.proof.len()), (3, 2));
    // The tile's fourth hash is the leaf the inclusion proof is for.
    let leaf: [u8; 32] = tile[96..128].try_into().unwrap();
    let pk = std::fs::read(dir.join("pk.json")).unwrap();
    let ring = trackshift_crypto::PublicKeyring::from_json(&pk).unwrap();
    let cp = trackshift_ledger::verify_checkpoint(&proof.checkpoint, ring.ledger.as_ref().unwrap())
        .unwrap();
    trackshift_ledger::verify_inclusion(3, cp.size, &leaf, &proof.proof, &cp.root).unwrap();
    for (path, want) in [
        ("/tile/0/000.p/5", 404),
        ("/tile/0/000", 404),
        ("/tile/entries/000.p/1", 404),
        ("/v1/ledger/proof/inclusion?index=4", 400),
        ("/v1/ledger/proof/inclusion?index=x", 400),
        ("/v1/ledger/proof/inclusion?index=1&extra=2", 400),
        ("/v1/ledger/proof/consistency?old=5", 400),
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
