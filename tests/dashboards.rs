//! The Grafana dashboards in `deploy/grafana/` against a running gateway: every panel's
//! query parses (`promtool check rules` on the queries as recording rules), and names only
//! families the gateway exports, with label names it puts on them and, for exact matchers,
//! values it reports. The gateway runs what the panels show: a job of the job service with
//! a classification and fail-closed delivery, a fan-out send with one destination failing,
//! and a time-stamp authority that does not answer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{get_with_key, run, start_gateway_full, write_secret};
use serde_json::Value;
use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};

const KEY: &str = "acme-dashboards-key-0123456789";

/// Series Prometheus adds itself, and labels its scrape puts on every series.
const FROM_PROMETHEUS: &[&str] = &["up"];
const SCRAPE_LABELS: &[&str] = &["job", "instance"];

/// One query of a dashboard: where it is, and its PromQL.
struct Query {
    at: String,
    expr: String,
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana");
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 2, "dashboards in {}", dir.display());
    out
}

/// Every panel target's `expr`, in rows too.
fn panel_queries(file: &str, panels: &[Value], out: &mut Vec<Query>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: {title}: no expr"));
            out.push(Query {
                at: format!("{file}: panel {:?} target {}", title, t["refId"]),
                expr: expr.to_string(),
            });
        }
        if let Some(inner) = p["panels"].as_array() {
            panel_queries(file, inner, out);
        }
    }
}

/// The query with Grafana's variables replaced by what Prometheus would get.
fn expand(expr: &str) -> String {
    let mut e = expr.to_string();
    for (var, by) in [
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "6h"),
    ] {
        e = e.replace(var, by);
    }
    replace_vars(&e, ".*")
}

/// `s` with every `$var` and `${var}` (lower-case names) replaced by `by`.
fn replace_vars(s: &str, by: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let braced = b.get(i + 1) == Some(&b'{');
            let start = i + 1 + usize::from(braced);
            let mut j = start;
            while j < b.len() && (b[j].is_ascii_lowercase() || b[j] == b'_') {
                j += 1;
            }
            if j > start {
                if braced && b.get(j) == Some(&b'}') {
                    j += 1;
                }
                out.push_str(by);
                i = j;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// A selector in a query: the metric name and its matchers (label, operator, value).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// Identifier characters of PromQL metric and label names.
fn ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Every `name{...}` selector and every bare series name of our prefixes in `expr`.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            // Skip strings: label values.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !ident(b[i]) || (i > 0 && ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        let name = &expr[start..i];
        let braced = i < b.len() && b[i] == b'{';
        let ours = name.starts_with("trackshift_") || name.starts_with("process_");
        if !braced {
            if ours {
                out.push(Selector {
                    name: name.to_string(),
                    matchers: Vec::new(),
                });
            }
            continue;
        }
        // The matchers up to the closing brace (not one inside a value).
        let mut close = i + 1;
        let mut quoted = false;
        while close < b.len() && (quoted || b[close] != b'}') {
            match b[close] {
                b'\\' if quoted => close += 1,
                b'"' => quoted = !quoted,
                _ => {}
            }
            close += 1;
        }
        assert!(close < b.len(), "an unclosed selector in {expr}");
        let body = &expr[i + 1..close];
        let mut matchers = Vec::new();
        let mut rest = body;
        while let Some(q) = rest.find('"') {
            let head = rest[..q].trim().trim_start_matches(',').trim();
            let op_at = head
                .find(['=', '!'])
                .unwrap_or_else(|| panic!("matcher {head:?} in {expr}"));
            let (label, op) = (head[..op_at].trim(), head[op_at..].trim());
            let end = rest[q + 1..].find('"').expect("a closed value") + q + 1;
            matchers.push((
                label.to_string(),
                op.to_string(),
                rest[q + 1..end].to_string(),
            ));
            rest = &rest[end + 1..];
        }
        out.push(Selector {
            name: name.to_string(),
            matchers,
        });
        i = close + 1;
    }
    out
}

/// The family a series name belongs to (a histogram's `_bucket`, `_sum`, `_count`).
fn family<'a>(name: &'a str, families: &BTreeMap<String, Vec<String>>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|f| families.contains_key(*f))
}

/// The exposition's families, each with its sample lines.
fn parse_exposition(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut families: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            families
                .entry(rest.split(' ').next().unwrap().to_string())
                .or_default();
        }
    }
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = l.split(['{', ' ']).next().unwrap();
        if let Some(f) = family(series, &families).map(str::to_string) {
            families.get_mut(&f).unwrap().push(l.to_string());
        }
    }
    families
}

/// A gateway that has done what the dashboards show; returns its `/metrics` text.
fn exercised_gateway(root: &Path) -> String {
    let (src, out) = (root.join("src"), root.join("out"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), vec![5u8; 200_000]).unwrap();
    // A destination where a.bin already exists and is not this job's: its writes fail.
    std::fs::create_dir_all(out.join("taken/a.bin/inside")).unwrap();
    let data = root.join("gw");
    TenantFile {
        tenants: vec![TenantEntry {
            sources: vec![src.clone()],
            destinations: Some(vec![DestinationRule {
                classifications: vec!["phi".into()],
                ..DestinationRule::prefix(format!("file://{}/", out.display()))
            }]),
            // A bandwidth quota, so this gateway's part of it is exported.
            bytes_per_second: Some(1 << 30),
            ..TenantEntry::new("acme", KEY)
        }],
    }
    .save(&data)
    .unwrap();
    let ca = std::env::var("TRACKSHIFT_TEST_TSA_CA")
        .expect("TRACKSHIFT_TEST_TSA_CA (scripts/test-servers.sh start tsa)");
    // An authority that never answers: time-stamps fall behind and failures count.
    let unanswered = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tsa = format!("http://{}/", unanswered.local_addr().unwrap());
    drop(unanswered);
    let gw = start_gateway_full(
        &data,
        &[],
        &["--tsa", &tsa, "--tsa-ca", &ca, "--tsa-interval", "1"],
        None,
    );
    let dest = |sub: &str| format!("file://{}/{sub}", out.display());
    let (code, o, e) = common::submit_job(
        &gw,
        KEY,
        &dest("served"),
        &src.join("a.bin"),
        &["--classification", "phi", "--strict", "--wait"],
        &[],
        root,
    );
    assert_eq!(code, 0, "{o}{e}");
    // A job of the service that fails: its only destination cannot take the file.
    let (code, o, e) = common::submit_job(
        &gw,
        KEY,
        &dest("taken"),
        &src.join("a.bin"),
        &["--wait"],
        &[],
        root,
    );
    assert_ne!(code, 0, "{o}{e}");
    let token = root.join("acme.token");
    write_secret(&token, KEY);
    let args = common::send_args(
        &gw,
        &token,
        src.join("a.bin").to_str().unwrap(),
        &[&dest("fan"), &dest("taken")],
        Some(root.join("docs").to_str().unwrap()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, o, e) = run(&args, root);
    assert_ne!(
        code, 0,
        "one destination of two cannot take the file: {o}{e}"
    );
    assert!(e.contains("1 of 2 destinations"), "{o}{e}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get_with_key(&gw.http, "/metrics", Some(&gw.operator_key));
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        let ready = ["trackshift_tsa_failures_total", "side=\"sender\""]
            .iter()
            .all(|s| text.contains(s));
        if ready {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's metrics never showed the failed time-stamps and the job service's connection:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn every_dashboard_query_parses_and_names_only_what_a_running_gateway_exports() {
    let promtool = std::env::var("TRACKSHIFT_TEST_PROMTOOL")
        .expect("TRACKSHIFT_TEST_PROMTOOL (scripts/test-servers.sh start promtool)");
    let tmp = tempfile::tempdir().unwrap();
    let text = exercised_gateway(tmp.path());
    let families = parse_exposition(&text);
    // A receipt of a destination dropped before the commit counts as failed.
    assert!(
        families["trackshift_destination_receipts_total"]
            .iter()
            .any(|l| l.contains("status=\"failed\"")),
        "{text}"
    );

    let mut queries = Vec::new();
    let mut variables = Vec::new();
    for (path, d) in dashboards() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            d["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{file}: uid"
        );
        panel_queries(&file, d["panels"].as_array().unwrap(), &mut queries);
        let vars = d["templating"]["list"].as_array().unwrap();
        let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        if file.contains("tenant") {
            assert!(names.contains(&"tenant"), "{file}: a tenant variable");
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let q = v["query"]["query"].as_str().unwrap().to_string();
            variables.push((format!("{file}: variable {}", v["name"]), q));
        }
    }
    assert!(queries.len() >= 30, "{} queries", queries.len());

    // 1. Every query parses: promtool reads them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expand(&q.expr)).unwrap()
        ));
    }
    let file = tmp.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    if !out.status.success() {
        let index: String = queries
            .iter()
            .enumerate()
            .map(|(i, q)| format!("query_{i}: {}\n", q.at))
            .collect();
        panic!(
            "promtool check rules:\n{}{}\n{index}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // 2. Every series, label and exact value is one the gateway exports.
    let mut problems = BTreeSet::new();
    for q in &queries {
        for s in selectors(&q.expr) {
            if FROM_PROMETHEUS.contains(&s.name.as_str()) {
                continue;
            }
            let Some(f) = family(&s.name, &families) else {
                problems.insert(format!("{}: {} is not exported", q.at, s.name));
                continue;
            };
            let lines = &families[f];
            for (label, op, value) in &s.matchers {
                if SCRAPE_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let with_label: Vec<&String> = lines
                    .iter()
                    .filter(|l| l.contains(&format!("{label}=\"")))
                    .collect();
                if with_label.is_empty() {
                    problems.insert(format!("{}: {f} has no label {label}", q.at));
                } else if op == "="
                    && !with_label
                        .iter()
                        .any(|l| l.contains(&format!("{label}=\"{value}\"")))
                {
                    problems.insert(format!("{}: {f} never has {label}=\"{value}\" here", q.at));
                }
            }
        }
    }
    for (at, q) in &variables {
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{at}: {q} is not label_values(METRIC, LABEL)"));
        let (metric, label) = inner.split_once(',').unwrap();
        let (metric, label) = (metric.trim(), label.trim());
        match family(metric, &families) {
            None => {
                problems.insert(format!("{at}: {metric} is not exported"));
            }
            Some(f) if !SCRAPE_LABELS.contains(&label) => {
                if !families[f]
                    .iter()
                    .any(|l| l.contains(&format!("{label}=\"")))
                {
                    problems.insert(format!("{at}: {f} has no label {label}"));
                }
            }
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- the exposition:\n{text}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_selector_reader_finds_names_labels_and_values() {
    let s = selectors(
        r#"sum(rate(trackshift_x_total{tenant=~"$t",outcome="fa}il"}[5m])) / process_y * up{job="a"}"#,
    );
    let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["trackshift_x_total", "process_y", "up"]);
    assert_eq!(
        s[0].matchers,
        [
            ("tenant".into(), "=~".into(), "$t".into()),
            ("outcome".into(), "=".into(), "fa}il".into())
        ]
    );
    assert_eq!(
        expand("rate(a{t=~\"$tenant\",i=~\"${instance}\"}[$__rate_interval])"),
        "rate(a{t=~\".*\",i=~\".*\"}[5m])"
    );
}
