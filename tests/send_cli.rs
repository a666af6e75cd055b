//! `trackshift send` as a script uses it: a gateway named by host, permanent errors at
//! once with an exit code per cause and each message once, a bounded first connection,
//! `--json`, `-q`, no colour codes in a log file, missing directories made.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Gateway, run, start_gateway_full};

fn gateway(dir: &Path) -> (Gateway, String) {
    let out = dir.join("out");
    let dest = format!("file://{}", out.display());
    let gw = start_gateway_full(&dir.join("gw"), &[], &["--default-dest", &dest], None);
    assert!(
        out.is_dir(),
        "serve makes the directory --default-dest names"
    );
    (gw, dest)
}

/// `send` arguments with the default tenant's token.
fn send<'a>(
    dir: &Path,
    src: &'a str,
    to: &'a str,
    fingerprint: &'a str,
    dest: &'a str,
) -> Vec<String> {
    let token = dir.join("gw/default.token");
    [
        "send",
        src,
        "--to",
        to,
        "--fingerprint",
        fingerprint,
        "--token-file",
        token.to_str().unwrap(),
        "--dest",
        dest,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn timed(args: &[String], dir: &Path) -> (i32, String, String, Duration) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let (code, out, err) = run(&args, dir);
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in a captured stderr: {err:?}"
    );
    (code, out, err, started.elapsed())
}

#[test]
fn each_permanent_failure_ends_at_once_with_its_own_exit_code_and_one_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (gw, dest) = gateway(dir);
    std::fs::write(dir.join("data.txt"), b"some data").unwrap();
    let fp = gw.fingerprint.clone();

    // A source that does not exist: usage (2), the OS's words once.
    let (code, _, err, _) = timed(&send(dir, "/no/such/source", &gw.quic, &fp, &dest), dir);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    // Another gateway's fingerprint: authentication (3), at once, naming both prints.
    let wrong = "00".repeat(32);
    let (code, _, err, took) = timed(&send(dir, "data.txt", &gw.quic, &wrong, &dest), dir);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not trust"), "{err}");
    assert!(
        err.contains("fingerprint mismatch") && err.contains(&fp),
        "{err}"
    );
    assert!(
        !err.contains("trying again") && !err.contains("resuming"),
        "retried: {err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A token no tenant holds: authentication (3).
    let bad = dir.join("bad.token");
    common::write_secret(&bad, "not-a-tenant-token-0123456789");
    let mut args = send(dir, "data.txt", &gw.quic, &fp, &dest);
    args[7] = bad.to_str().unwrap().into();
    let (code, _, err, _) = timed(&args, dir);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unknown tenant token"), "{err}");

    // A congestion controller quinn does not have: usage (2), naming the choices.
    let mut args = send(dir, "data.txt", &gw.quic, &fp, &dest);
    args.extend(["--congestion".into(), "vegas".into()]);
    let (code, _, err, _) = timed(&args, dir);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cubic, newreno or bbr"), "{err}");
    // The job service's controller is checked the same way, before the gateway starts.
    let (code, _, err, _) = timed(
        &[
            "serve".into(),
            "--data-dir".into(),
            dir.join("never").to_str().unwrap().into(),
            "--jobs-congestion".into(),
            "vegas".into(),
        ],
        dir,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cubic, newreno or bbr"), "{err}");
    assert!(!dir.join("never").exists(), "nothing was set up");

    // A destination the tenant may not write to: refused (4).
    let (code, _, err, _) = timed(&send(dir, "data.txt", &gw.quic, &fp, "file:///etc"), dir);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not allowed"), "{err}");

    // Nothing listening: network (5), within the connect timeout, saying what it waits for.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = silent.local_addr().unwrap().to_string();
    let mut args = send(dir, "data.txt", &to, &fp, &dest);
    args.extend(["--connect-timeout".into(), "2s".into()]);
    let (code, _, err, took) = timed(&args, dir);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("without reaching the gateway"), "{err}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    drop(gw);
}

#[test]
fn a_send_by_host_name_makes_missing_directories_and_reports_in_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (gw, dest) = gateway(dir);
    std::fs::write(dir.join("data.txt"), b"some data").unwrap();
    let port = gw.quic.rsplit_once(':').unwrap().1;
    let to = format!("localhost:{port}");
    let nested = format!("{dest}/new/deeper");
    let mut args = send(dir, "data.txt", &to, &gw.fingerprint, &nested);
    args.extend([
        "--json".into(),
        "-q".into(),
        "--out-dir".into(),
        "docs".into(),
        "--congestion".into(),
        "bbr".into(),
    ]);
    let (code, out, err, _) = timed(&args, dir);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "-q prints nothing but errors");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["bytes"], 9);
    assert_eq!(v["destinations"][0]["status"], "confirmed");
    assert_eq!(v["destinations"][0]["destination"], nested.as_str());
    assert!(dir.join(v["manifest"].as_str().unwrap()).is_file());
    assert_eq!(
        std::fs::read(dir.join("out/new/deeper/data.txt")).unwrap(),
        b"some data"
    );
    // The manifest it wrote verifies against the gateway's public keys.
    let (code, _, err) = run(
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
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(
        &[
            "verify",
            v["manifest"].as_str().unwrap(),
            "--public-keys",
            "pub.json",
            "--json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let verdict: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(verdict["ok"], true);
    assert_eq!(verdict["kind"], "manifest");
    assert_eq!(verdict["job_id"], v["job_id"]);
    assert_eq!(verdict["bytes"], 9);
    // The job API's listing as JSON (the tenant's token is its API key).
    let (code, out, err) = run(
        &[
            "jobs",
            "--api",
            &gw.http,
            "--key-file",
            "gw/default.token",
            "list",
            "--json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let page: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(page["jobs"].is_array(), "{page}");
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&["completions", shell], dir);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("connect-timeout"), "{shell}: no send options");
    }
    let (code, _, _) = run(&["completions", "tcsh"], dir);
    assert_eq!(code, 2, "an unknown shell is a usage error");
    let (code, out, err) = run(&["man"], dir);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(".ie") || out.contains(".TH trackshift"),
        "{out}"
    );
    let (code, _, err) = run(&["man", "--out", "pages"], dir);
    assert_eq!(code, 0, "{err}");
    let send = std::fs::read_to_string(dir.join("pages/trackshift-send.1")).unwrap();
    assert!(send.contains("connect\\-timeout"), "{send}");
    assert!(dir.join("pages/trackshift-ledger-verify.1").is_file());
}
