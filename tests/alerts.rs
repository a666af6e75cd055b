//! The alert rules (`deploy/prometheus/alerts.yml`) load in Prometheus and do what their
//! unit tests (`alerts_test.yml`) say: each alert fires on the series that should make it
//! fire, with its labels and texts, and not on healthy ones. promtool comes from Debian's
//! `prometheus` package (`scripts/test-servers.sh start promtool`).

use std::process::Command;

fn promtool(args: &[&str]) -> (bool, String) {
    let tool = std::env::var("TRACKSHIFT_TEST_PROMTOOL")
        .expect("TRACKSHIFT_TEST_PROMTOOL (scripts/test-servers.sh start promtool)");
    let out = Command::new(tool)
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus"))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_alert_rules_load_and_pass_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_unit_test_and_a_runbook() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    let tests = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts_test.yml"
    ))
    .unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for a in &alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {a}\n        exp_alerts:\n          - exp_labels"
            )),
            "no test that {a} fires"
        );
    }
    assert_eq!(
        rules.matches("runbook: ").count(),
        alerts.len(),
        "every alert names its runbook section"
    );
    // And the section is there.
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RUNBOOK.md")).unwrap();
    for l in rules.lines() {
        if let Some(r) = l.trim().strip_prefix("runbook: \"docs/RUNBOOK.md: ") {
            let section = r
                .split([' ', '"'])
                .take_while(|w| !w.starts_with('('))
                .collect::<Vec<_>>()
                .join(" ");
            let section = section.trim();
            assert!(
                runbook
                    .lines()
                    .any(|h| h.starts_with("## ") && h[3..].starts_with(section)),
                "RUNBOOK.md has no section {section:?}"
            );
        }
    }
}
