//! `/metrics` as Prometheus takes it: every family with HELP text (and its unit where it
//! has one), `promtool check metrics` clean, build information and the process's own
//! figures present. promtool comes from Debian's `prometheus` package
//! (`scripts/test-servers.sh start promtool`).

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{get_with_key, start_gateway_full};

#[test]
fn every_metric_family_is_described_and_promtool_finds_nothing_to_fix() {
    let promtool = std::env::var("TRACKSHIFT_TEST_PROMTOOL")
        .expect("TRACKSHIFT_TEST_PROMTOOL (scripts/test-servers.sh start promtool)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dest = format!("file://{}", dir.join("out").display());
    let (url, ca) = (
        std::env::var("TRACKSHIFT_TEST_TSA").expect("the test TSA"),
        std::env::var("TRACKSHIFT_TEST_TSA_CA").expect("the test TSA's CA"),
    );
    // With the time-stamper, so that its families are there too.
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
        None,
    );
    std::fs::write(dir.join("a.txt"), b"metrics").unwrap();
    let token = dir.join("gw/default.token");
    common::send_ok(dir, &gw, &token, "a.txt", &dest, None);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // A request before, so the HTTP families are there (by route, not by raw path).
    let (status, _) = get_with_key(&gw.http, "/v1/jobs/no-such-job", Some(&gw.operator_key));
    assert_ne!(status, 200);
    let (status, body) = get_with_key(&gw.http, "/metrics", Some(&gw.operator_key));
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for family in [
        "trackshift_build_info",
        "trackshift_ledger_size",
        "trackshift_running_jobs",
        "trackshift_tsa_last_stamped_size",
        "process_resident_memory_bytes",
        "process_open_fds",
        "trackshift_destination_bytes_total",
        "trackshift_destination_commit_seconds",
        "trackshift_destination_receipts_total",
        "trackshift_tls_certificate_expiry_timestamp_seconds",
        "trackshift_ledger_checkpoint_timestamp_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{text}"
        );
    }
    assert!(text.contains("trackshift_build_info{"), "{text}");
    // The destination label is the scheme and host only: no path of the tenant's.
    assert!(
        text.contains("trackshift_destination_bytes_total{destination=\"file://\"} 7"),
        "{text}"
    );
    assert!(
        !text.contains(dir.to_str().unwrap()),
        "a path in the labels:\n{text}"
    );
    // Every family that has samples has its HELP and TYPE.
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .map(|n| {
            n.strip_suffix("_bucket")
                .or_else(|| n.strip_suffix("_sum"))
                .or_else(|| n.strip_suffix("_count"))
                .unwrap_or(n)
        })
        .collect();
    for f in &families {
        assert!(text.contains(&format!("# HELP {f} ")), "no HELP for {f}");
        assert!(text.contains(&format!("# TYPE {f} ")), "no TYPE for {f}");
    }
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n--- the exposition:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
