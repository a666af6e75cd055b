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
    promtool_finds_nothing(&promtool, &text);
}

/// The job service's and the connections' families, with values a job of the service put
/// there: queue wait, attempt and job durations, the sealed job's compliance posture and
/// manifest algorithm, the post-quantum key exchange, and QUIC figures of both sides.
#[test]
fn a_served_job_shows_in_job_compliance_and_connection_families() {
    use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};
    const KEY: &str = "acme-metrics-key-0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (src, out) = (root.join("src"), root.join("out"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(src.join("a.bin"), vec![7u8; 300_000]).unwrap();
    let data = root.join("gw");
    TenantFile {
        tenants: vec![TenantEntry {
            sources: vec![src.clone()],
            destinations: Some(vec![DestinationRule {
                classifications: vec!["phi".into()],
                ..DestinationRule::prefix(format!("file://{}/", out.display()))
            }]),
            ..TenantEntry::new("acme", KEY)
        }],
    }
    .save(&data)
    .unwrap();
    let gw = start_gateway_full(&data, &[], &[], None);
    let dest = format!("file://{}/job", out.display());
    let src_file = src.join("a.bin");
    let (code, stdout, stderr) = common::submit_job(
        &gw,
        KEY,
        &dest,
        &src_file,
        &["--classification", "phi", "--strict", "--wait"],
        &[],
        root,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The sender's connection figures are sampled when its connection ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let (status, body) = get_with_key(&gw.http, "/metrics", Some(&gw.operator_key));
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        if text.contains("trackshift_quic_sent_packets_total{side=\"sender\"}")
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}:\n{text}"))
    };
    assert_eq!(
        value("trackshift_job_queue_wait_seconds_count{tenant=\"acme\"}"),
        1.0
    );
    assert_eq!(
        value(
            "trackshift_job_attempt_duration_seconds_count{tenant=\"acme\",outcome=\"completed\"}"
        ),
        1.0
    );
    assert_eq!(
        value("trackshift_job_duration_seconds_count{tenant=\"acme\"}"),
        1.0
    );
    assert!(value("trackshift_job_duration_seconds_sum{tenant=\"acme\"}") > 0.0);
    assert_eq!(
        value(
            "trackshift_jobs_sealed_total{tenant=\"acme\",strict=\"true\",classification=\"phi\",manifest_algorithm=\"ML-DSA-65\"}"
        ),
        1.0
    );
    // Every handshake with this gateway took the post-quantum hybrid (the job service's
    // own connection among them), none a classical group.
    assert!(value("trackshift_tls_key_exchanges_total{group=\"X25519MLKEM768\"}") >= 1.0);
    assert!(
        !text.contains("trackshift_tls_key_exchanges_total{group=\"x25519\"}"),
        "{text}"
    );
    for side in ["gateway", "sender"] {
        assert!(
            value(&format!(
                "trackshift_quic_sent_packets_total{{side=\"{side}\"}}"
            )) > 0.0,
            "{side}"
        );
        let rtt = value(&format!(
            "trackshift_quic_rtt_seconds_count{{side=\"{side}\"}}"
        ));
        assert!(rtt >= 1.0, "{side}: {rtt}");
        assert!(
            value(&format!(
                "trackshift_quic_congestion_window_bytes_sum{{side=\"{side}\"}}"
            )) > 0.0
        );
        assert!(
            text.contains(&format!(
                "trackshift_quic_lost_packets_total{{side=\"{side}\"}}"
            )),
            "{text}"
        );
    }
    // The sender's connection is gone; the gauge went back down.
    assert_eq!(value("trackshift_quic_connections{side=\"sender\"}"), 0.0);
    let promtool = std::env::var("TRACKSHIFT_TEST_PROMTOOL")
        .expect("TRACKSHIFT_TEST_PROMTOOL (scripts/test-servers.sh start promtool)");
    promtool_finds_nothing(&promtool, &text);
}

/// Every family with samples in `text` has HELP and TYPE, and `promtool check metrics`
/// has nothing to say about it.
fn promtool_finds_nothing(promtool: &str, text: &str) {
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
    let mut check = Command::new(promtool)
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
