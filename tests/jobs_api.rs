//! The job service end to end: a `trackshift serve --http` child runs jobs submitted over
//! its HTTP API (and the `trackshift jobs` CLI) through its own QUIC gateway; tenants are
//! isolated on every endpoint; bad requests get JSON 4xx and store nothing; cancel,
//! retry, progress events, and a gateway killed mid-job that resumes after a restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Gateway, postgres_database, run, start_gateway_full};
use reqwest::StatusCode;
use serde_json::{Value, json};
use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};

const ACME: &str = "acme-key-0123456789";
const BETA: &str = "beta-key-0123456789";

/// acme: sources under `root/src-acme`, may write under `root/out-acme/` (phi allowed)
/// and to null://; beta: sources under `root/src-beta`, null:// for unclassified jobs.
fn tenants(root: &Path) -> PathBuf {
    for d in ["src-acme", "src-beta", "out-acme", "out-beta"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let data = root.join("gw");
    let acme = TenantEntry {
        sources: vec![root.join("src-acme")],
        destinations: Some(vec![
            DestinationRule {
                classifications: vec!["phi".into()],
                ..DestinationRule::prefix(format!("file://{}/", root.join("out-acme").display()))
            },
            DestinationRule::prefix("null://"),
        ]),
        ..TenantEntry::new("acme", ACME)
    };
    let beta = TenantEntry {
        sources: vec![root.join("src-beta")],
        destinations: Some(vec![DestinationRule::prefix("null://")]),
        ..TenantEntry::new("beta", BETA)
    };
    TenantFile {
        tenants: vec![acme, beta],
    }
    .save(&data)
    .unwrap();
    data
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(gw: &Gateway) -> Self {
        Self {
            base: gw.http.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, headers)
    }

    async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call("GET", path, Some(key), None).await;
        (s, v)
    }

    async fn submit(&self, key: &str, spec: Value) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call("POST", "/v1/jobs", Some(key), Some(spec.to_string()))
            .await;
        (s, v)
    }

    /// Polls until the job is in a final state (or `until` says stop); returns the job.
    async fn wait(&self, key: &str, id: &str, until: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (s, job) = self.get(&format!("/v1/jobs/{id}"), key).await;
            assert_eq!(s, StatusCode::OK, "{job}");
            if until(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job never got there: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `trackshift verify` of `ROOT/docs/receipt.json` against `docs/manifest.json` with
/// `pk.json`; must pass. Returns its output.
fn verify_docs(root: &Path) -> String {
    let (code, out, err) = run(
        &[
            "verify",
            "docs/receipt.json",
            "--public-keys",
            "pk.json",
            "--manifest",
            "docs/manifest.json",
        ],
        root,
    );
    assert_eq!(code, 0, "{out}{err}");
    out
}

fn final_state(j: &Value) -> bool {
    matches!(
        j["state"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// Why each transition of a job happened, oldest first.
fn reasons(job: &Value) -> Vec<&str> {
    job["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reason"].as_str().unwrap())
        .collect()
}

fn states(job: &Value) -> Vec<String> {
    job["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap().to_string())
        .collect()
}

fn write_random(path: &Path, len: usize, seed: u8) {
    let mut data = vec![0u8; len];
    let mut x = u32::from(seed) | 1;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_and_tenants_are_isolated() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = tenants(root);
    let log = root.join("gw.log");
    let gw = start_gateway_full(&data, &[], &[], Some(&log));
    let api = Api::new(&gw);
    let src = root.join("src-acme/batch");
    std::fs::create_dir_all(&src).unwrap();
    write_random(&src.join("a.bin"), 3_000_000, 1);
    std::fs::write(src.join("b.txt"), b"hello\n").unwrap();
    let dest = format!("file://{}/batch", root.join("out-acme").display());
    std::fs::create_dir_all(root.join("out-acme/batch")).unwrap();

    // Submit with a correlation id of our own.
    let spec = json!({ "source": src, "destinations": [dest], "chunk_size": 1048576, "classification": "phi" });
    let (status, job, headers) = api
        .call("POST", "/v1/jobs", Some(ACME), Some(spec.to_string()))
        .await;
    let _ = headers;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["state"], "queued");
    assert_eq!(job["tenant"], "acme");
    let req = reqwest::Client::new()
        .post(format!("{}/v1/jobs", gw.http))
        .bearer_auth(ACME)
        .header("content-type", "application/json")
        .header("x-correlation-id", "order-4711")
        .body(json!({ "source": src.join("b.txt"), "destinations": ["null://"] }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(req.status(), StatusCode::CREATED);
    assert_eq!(req.headers()["x-correlation-id"], "order-4711");
    assert!(
        req.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/jobs/")
    );
    let second: Value = serde_json::from_str(&req.text().await.unwrap()).unwrap();
    assert_eq!(second["correlation_id"], "order-4711");
    let second_id = second["id"].as_str().unwrap().to_string();

    // The CLI waits for it and fetches the signed documents.
    let (code, _, err) = run(
        &[
            "jobs", "wait", &id, "--out", "docs", "--api", &gw.http, "--key", ACME,
        ],
        root,
    );
    assert_eq!(code, 0, "{err}");
    for f in ["a.bin", "b.txt"] {
        assert_eq!(
            std::fs::read(root.join("out-acme/batch").join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f} arrived intact"
        );
    }
    let (code, _, err) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            data.join("keys").to_str().unwrap(),
            "--out",
            "pk.json",
        ],
        root,
    );
    assert_eq!(code, 0, "{err}");
    verify_docs(root);
    let receipt = std::fs::read_to_string(root.join("docs/receipt.json")).unwrap();
    let job = api.wait(ACME, &id, final_state).await;
    assert!(
        receipt.contains(job["correlation_id"].as_str().unwrap()),
        "the receipt carries the correlation id"
    );
    assert_eq!(job["state"], "completed");
    assert_eq!(job["bytes_done"], 3_000_006);
    let st = states(&job);
    assert_eq!(st.first().unwrap(), "queued");
    assert!(st.contains(&"running".to_string()));
    assert_eq!(st.last().unwrap(), "completed");
    let second = api.wait(ACME, &second_id, final_state).await;
    assert_eq!(second["state"], "completed", "{second}");

    // Manifest and receipts over the API are the signed documents.
    let (s, manifest) = api.get(&format!("/v1/jobs/{id}/manifest"), ACME).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        manifest["signature"].is_object() || manifest.to_string().contains("ML-DSA"),
        "{manifest}"
    );
    let (s, receipts) = api.get(&format!("/v1/jobs/{id}/receipts"), ACME).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(receipts["receipts"].as_array().unwrap().len(), 1);

    // Listing: acme sees both, beta none.
    let (_, list) = api.get("/v1/jobs", ACME).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let (_, list) = api.get("/v1/jobs?state=completed&limit=1", ACME).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let cursor = list["next"].as_str().unwrap().to_string();
    let (_, page2) = api
        .get(
            &format!("/v1/jobs?state=completed&limit=1&cursor={cursor}"),
            ACME,
        )
        .await;
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 1);
    assert_ne!(page2["jobs"][0]["id"], list["jobs"][0]["id"]);
    let (_, list) = api.get("/v1/jobs", BETA).await;
    assert_eq!(list["jobs"], json!([]));

    // Isolation: every job endpoint answers beta exactly as for a job that does not exist.
    let unknown = "00000000-0000-4000-8000-000000000000";
    for (method, suffix) in [
        ("GET", ""),
        ("GET", "/manifest"),
        ("GET", "/receipts"),
        ("GET", "/events"),
        ("POST", "/cancel"),
        ("POST", "/retry"),
    ] {
        let theirs = api
            .call(method, &format!("/v1/jobs/{id}{suffix}"), Some(BETA), None)
            .await;
        let none = api
            .call(
                method,
                &format!("/v1/jobs/{unknown}{suffix}"),
                Some(BETA),
                None,
            )
            .await;
        assert_eq!(
            theirs.0,
            StatusCode::NOT_FOUND,
            "{method} {suffix}: {}",
            theirs.1
        );
        assert_eq!(
            theirs.1, none.1,
            "{method} {suffix}: no difference to an unknown id"
        );
        let unauth = api
            .call(method, &format!("/v1/jobs/{id}{suffix}"), None, None)
            .await;
        assert_eq!(unauth.0, StatusCode::UNAUTHORIZED, "{method} {suffix}");
        let wrong = api
            .call(
                method,
                &format!("/v1/jobs/{id}{suffix}"),
                Some("nope"),
                None,
            )
            .await;
        assert_eq!(wrong.0, StatusCode::UNAUTHORIZED, "{method} {suffix}");
    }
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}"), ACME).await.1["state"],
        "completed",
        "untouched"
    );
    let (code, _, err) = run(
        &["jobs", "status", &id, "--api", &gw.http, "--key", BETA],
        root,
    );
    assert_ne!(code, 0);
    assert!(err.contains("no such job"), "{err}");

    // KPIs are per tenant.
    let (s, kpi) = api.get("/reports/kpi?window=600", ACME).await;
    assert_eq!(s, StatusCode::OK, "{kpi}");
    assert_eq!(kpi["completed"], 2);
    assert_eq!(kpi["bytes"], 3_000_006 + 6);
    assert!(kpi["p95_chunk_latency_ms"].as_f64().unwrap() > 0.0, "{kpi}");
    let (_, kpi) = api.get("/reports/kpi", BETA).await;
    assert_eq!(kpi["completed"], 0);

    // Operators: readiness, metrics, the OpenAPI document.
    let (s, ready, _) = api
        .call("GET", "/ready", Some(&gw.operator_key), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["destinations"]["checked"], 2, "{ready}");
    // One destination gone (a tenant's problem): reported, the gateway stays ready.
    std::fs::rename(root.join("out-acme/batch"), root.join("out-acme/moved")).unwrap();
    let (s, ready, _) = api
        .call("GET", "/ready", Some(&gw.operator_key), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    let failing = ready["destinations"]["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{ready}");
    assert!(
        failing[0]["uri"].as_str().unwrap().ends_with("/batch"),
        "{ready}"
    );
    std::fs::rename(root.join("out-acme/moved"), root.join("out-acme/batch")).unwrap();
    let (s, metrics, _) = api
        .call("GET", "/metrics", Some(&gw.operator_key), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("trackshift_jobs{tenant=\"acme\",state=\"completed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trackshift_chunk_latency_seconds_count{tenant=\"acme\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trackshift_bytes_acknowledged_total{tenant=\"acme\"} 3000012"),
        "{metrics}"
    );
    // The chunks went through pooled buffers, some made fresh.
    assert!(
        metrics.contains("trackshift_buffer_pool_made_total ")
            && metrics.contains("trackshift_buffer_pool_idle_bytes "),
        "{metrics}"
    );
    let (s, page, headers) = api
        .call("GET", "/dashboard", Some(&gw.operator_key), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = page.as_str().unwrap().to_string();
    assert!(
        page.contains("<td>acme</td><td>0</td><td>0</td><td>0</td><td>2</td>"),
        "{page}"
    );
    assert!(!page.contains(&id), "counts only, no job details");
    let (s, doc, _) = api.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/jobs/{id}/cancel"]["post"].is_object());

    // Every log line about the job carries its job id, tenant and correlation id as
    // top-level fields (what a SIEM indexes), whichever part of the gateway wrote it.
    let corr = job["correlation_id"].as_str().unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &Value| l.to_string().contains(&id))
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    for l in &lines {
        assert!(
            l["job"] == id.as_str() && l["tenant"] == "acme" && l["correlation_id"] == corr,
            "a log line without the job's fields at the top level: {l}"
        );
    }
    let targets: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l["target"].as_str()).collect();
    for part in ["trackshift::api", "trackshift_engine::jobs::runner"] {
        assert!(
            targets.iter().any(|t| t.starts_with(part)),
            "no line from {part}: {targets:?}"
        );
    }
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(ACME),
        "keys never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = tenants(root);
    let gw = start_gateway_full(&data, &[], &[], None);
    let api = Api::new(&gw);
    let src = root.join("src-acme/f");
    std::fs::write(&src, b"x").unwrap();
    std::fs::write(root.join("src-beta/g"), b"y").unwrap();
    let out = format!("file://{}/x", root.join("out-acme").display());
    let ok = json!({ "source": src, "destinations": [out] });
    let cases: Vec<(String, &str, StatusCode, &str)> = vec![
        ("{".into(), ACME, StatusCode::BAD_REQUEST, ""),
        ("[]".into(), ACME, StatusCode::UNPROCESSABLE_ENTITY, ""),
        (json!({ "source": src, "destinations": [out], "surprise": 1 }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "surprise"),
        (json!({ "source": src, "destinations": "null://" }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "destinations"),
        (json!({ "source": src }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "destinations"),
        (json!({ "source": src, "destinations": [] }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "destinations"),
        (json!({ "source": src, "destinations": [out, out] }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "twice"),
        (json!({ "source": src, "destinations": ["gopher://x/y"] }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "unsupported"),
        (json!({ "source": src, "destinations": ["s3://user:secret@bucket/p"] }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "credentials"),
        (json!({ "source": src, "destinations": [out], "chunk_size": 1000 }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "chunk_size"),
        (json!({ "source": src, "destinations": [out], "chunk_size": -1 }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "chunk_size"),
        (json!({ "source": src, "destinations": [out], "priority": 10 }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "priority"),
        (json!({ "source": src, "destinations": [out], "max_attempts": 0 }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "max_attempts"),
        (json!({ "source": "relative/path", "destinations": [out] }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "source"),
        (json!({ "source": root.join("src-beta/g"), "destinations": [out] }).to_string(), ACME, StatusCode::FORBIDDEN, "not allowed"),
        (json!({ "source": root.join("src-beta/no-such-file"), "destinations": [out] }).to_string(), ACME, StatusCode::FORBIDDEN, "not allowed"),
        (json!({ "source": root.join("src-acme/../src-beta/g"), "destinations": [out] }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "normalized"),
        (json!({ "source": root.join("src-acme/missing"), "destinations": [out] }).to_string(), ACME, StatusCode::FORBIDDEN, "does not exist"),
        (json!({ "source": src, "destinations": [format!("file://{}/x", root.join("out-beta").display())] }).to_string(), ACME, StatusCode::FORBIDDEN, "not allowed"),
        (json!({ "source": src, "destinations": [format!("file://{}/../out-beta", root.join("out-acme").display())] }).to_string(), ACME, StatusCode::UNPROCESSABLE_ENTITY, "\"..\""),
        (json!({ "source": src, "destinations": ["null://"], "classification": "phi" }).to_string(), ACME, StatusCode::FORBIDDEN, "phi"),
        (json!({ "source": root.join("src-beta/g"), "destinations": ["null://"], "classification": "phi" }).to_string(), BETA, StatusCode::FORBIDDEN, "phi"),
        (ok.to_string(), "wrong-key", StatusCode::UNAUTHORIZED, "API key"),
        (format!("{{\"source\": \"{}\", \"destinations\": [\"{}\"], \"pad\": \"{}\"}}", src.display(), out, "x".repeat(100_000)), ACME, StatusCode::PAYLOAD_TOO_LARGE, "limit"),
    ];
    for (body, key, want, mention) in cases {
        let (status, value, _) = api
            .call("POST", "/v1/jobs", Some(key), Some(body.clone()))
            .await;
        let shown = &body[..body.len().min(200)];
        assert_eq!(status, want, "{shown}: {value}");
        let msg = value["error"]
            .as_str()
            .unwrap_or_else(|| panic!("JSON error body for {shown}: {value}"));
        assert!(
            msg.contains(mention),
            "{shown}: {msg:?} should mention {mention:?}"
        );
    }
    // Not JSON at all.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/jobs", gw.http))
        .bearer_auth(ACME)
        .header("content-type", "text/plain")
        .body(ok.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Bad queries and ids.
    for path in [
        "/v1/jobs?state=done",
        "/v1/jobs?limit=0",
        "/v1/jobs?limit=abc",
        "/v1/jobs?cursor=zzz",
        "/v1/jobs?bogus=1",
        "/reports/kpi?window=0",
    ] {
        let (s, v) = api.get(path, ACME).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    let (s, v) = api.get("/v1/jobs/not-a-uuid", ACME).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = api.get("/v1/nothing-here", ACME).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Nothing was stored.
    let (_, list) = api.get("/v1/jobs", ACME).await;
    assert_eq!(list["jobs"], json!([]));
    let (_, list) = api.get("/v1/jobs", BETA).await;
    assert_eq!(list["jobs"], json!([]));
    // And a good one still works.
    let (s, v) = api.submit(ACME, ok.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A resubmission with the same Idempotency-Key returns the first job, not a new one.
    let post = |key: &str, body: &Value| {
        reqwest::Client::new()
            .post(format!("{}/v1/jobs", gw.http))
            .bearer_auth(ACME)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let first = post("order-1", &ok).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = serde_json::from_str(&first.text().await.unwrap()).unwrap();
    let again = post("order-1", &ok).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = serde_json::from_str(&again.text().await.unwrap()).unwrap();
    assert_eq!(again["id"], first["id"]);
    let mut other = ok.clone();
    other["priority"] = json!(9);
    let clash = post("order-1", &other).await.unwrap();
    assert_eq!(clash.status(), StatusCode::CONFLICT);
    assert_eq!(
        post(&"k".repeat(201), &ok).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let (_, list) = api.get("/v1/jobs", ACME).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_and_retry_runs_it_again_with_progress_events() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = tenants(root);
    // Destinations written at 1 MiB/s, so the job is still running when cancelled.
    let gw = start_gateway_full(&data, &[], &["--dest-rate", "1MiB"], None);
    let api = Api::new(&gw);
    let src = root.join("src-acme/big.bin");
    write_random(&src, 4 << 20, 7);
    let out_dir = root.join("out-acme/c");
    std::fs::create_dir_all(&out_dir).unwrap();
    let spec = json!({ "source": src, "destinations": [format!("file://{}", out_dir.display())], "chunk_size": 262144 });
    let (s, job) = api.submit(ACME, spec).await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    api.wait(ACME, &id, |j| j["state"] == "running").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, j, _) = api
        .call("POST", &format!("/v1/jobs/{id}/cancel"), Some(ACME), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["state"], "cancelled");
    let (s, j, _) = api
        .call("POST", &format!("/v1/jobs/{id}/cancel"), Some(ACME), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "cancelling twice: {j}");
    // The worker stops and the gateway drops the partial data: nothing under the final name.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "partial data left behind: {left:?}");
    let (s, j) = api.get(&format!("/v1/jobs/{id}/manifest"), ACME).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "no manifest for a cancelled job: {j}"
    );
    let job = api.get(&format!("/v1/jobs/{id}"), ACME).await.1;
    assert_eq!(job["state"], "cancelled", "stays cancelled: {job}");

    // Retry: queued again, and its progress streams as server-sent events to the end.
    let (s, j, _) = api
        .call("POST", &format!("/v1/jobs/{id}/retry"), Some(ACME), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["state"], "queued");
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{id}/events", gw.http))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = tokio::time::timeout(Duration::from_secs(120), resp.text())
        .await
        .expect("the event stream ends when the job does")
        .unwrap();
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(events.len() >= 2, "{body}");
    let last = events.last().unwrap();
    assert_eq!(last["state"], "completed", "{body}");
    assert_eq!(last["bytes_done"], 4 << 20);
    let done: Vec<u64> = events
        .iter()
        .map(|e| e["bytes_done"].as_u64().unwrap())
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {done:?}"
    );
    assert_eq!(
        std::fs::read(out_dir.join("big.bin")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    let job = api.get(&format!("/v1/jobs/{id}"), ACME).await.1;
    let st = states(&job);
    assert!(
        st.windows(2)
            .any(|w| w == ["running", "cancelled"] || w == ["verifying", "cancelled"]),
        "{st:?}"
    );
    assert!(
        st.windows(2).any(|w| w == ["cancelled", "queued"]),
        "{st:?}"
    );
    assert_eq!(st.last().unwrap(), "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_job_resumes_it_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = tenants(root);
    let log = root.join("gw.log");
    let args = ["--dest-rate", "2MiB", "--lease-secs", "2"];
    let mut gw = start_gateway_full(&data, &[], &args, Some(&log));
    let api = Api::new(&gw);
    let src = root.join("src-acme/resume.bin");
    write_random(&src, 8 << 20, 9);
    let out_dir = root.join("out-acme/r");
    std::fs::create_dir_all(&out_dir).unwrap();
    let spec = json!({ "source": src, "destinations": [format!("file://{}", out_dir.display())], "chunk_size": 524288 });
    let (s, job) = api.submit(ACME, spec).await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    api.wait(ACME, &id, |j| j["bytes_done"].as_u64().unwrap() >= 2 << 20)
        .await;
    // Killed without warning: the job stays "running" under a lease nobody renews.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    drop(gw);
    let gw = start_gateway_full(&data, &[], &args, Some(&log));
    let api = Api::new(&gw);
    let job = api.wait(ACME, &id, final_state).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        std::fs::read(out_dir.join("resume.bin")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    let reasons = reasons(&job);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("stopped renewing its lease")),
        "{reasons:?}"
    );
    assert_eq!(job["attempts"], 2);
    // The restarted gateway resumed from the chunks it held.
    let resumed = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "resuming job" && l["job"] == id.as_str())
        .expect("a resuming-job log line");
    assert!(resumed["held"].as_u64().unwrap() >= 4, "{resumed}");
    // The ledger is intact.
    let (code, out, err) = run(
        &["ledger", "verify", "--data-dir", data.to_str().unwrap()],
        root,
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_load_test_reports_its_figures_and_fails_on_missed_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (code, out, err) = run(
        &[
            "bench",
            "--jobs",
            "12",
            "--size",
            "3MiB",
            "--chunk-size",
            "1MiB",
            "--tenants",
            "3",
            "--out",
            "report",
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}{err}");
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("report/bench-result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["completed"], 12);
    assert_eq!(r["failed"], 0);
    assert_eq!(r["bytes"], 12 * 3 * 1_048_576u64);
    assert_eq!(r["chunk_latency"]["count"], 36, "one latency per chunk");
    assert!(r["gbps"].as_f64().unwrap() > 0.0);
    assert!(r["peak_rss_mib"].as_f64().unwrap() > 1.0);
    let per: Vec<u64> = r["per_tenant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["completed"].as_u64().unwrap())
        .collect();
    assert_eq!(per, vec![4, 4, 4]);
    let html = std::fs::read_to_string(dir.join("report/bench-report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Throughput over time"));
    assert!(!html.contains("<script"), "self-contained, no scripts");
    // An impossible target: the run completes, reports the miss and exits 1.
    let (code, out, _) = run(
        &[
            "bench",
            "--jobs",
            "2",
            "--size",
            "1MiB",
            "--tenants",
            "1",
            "--out",
            "r2",
            "--min-gbps",
            "100000",
        ],
        dir,
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MISSED"), "{out}");
}

/// Sends SIGHUP to the gateway child.
fn hangup(gw: &Gateway) {
    signal(gw, "-HUP");
}

fn signal(gw: &Gateway, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `cond` until it holds (30 s at most).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, cond: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tenant_file_and_a_broken_one_changes_nothing_and_sigterm_stops() {
    const GAMMA: &str = "gamma-key-0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = tenants(root);
    let log = root.join("gw.log");
    let mut gw = start_gateway_full(&data, &[], &[], Some(&log));
    let api = Api::new(&gw);
    assert_eq!(api.get("/v1/jobs", GAMMA).await.0, StatusCode::UNAUTHORIZED);

    // gamma joins (reading beta's sources), beta leaves; the gateway keeps running.
    let mut file = TenantFile::load(&data).unwrap();
    file.tenants.retain(|t| t.tenant != "beta");
    file.tenants.push(TenantEntry {
        sources: vec![root.join("src-beta")],
        bytes_per_second: Some(64 << 20),
        destinations: Some(vec![DestinationRule::prefix("null://")]),
        ..TenantEntry::new("gamma", GAMMA)
    });
    file.save(&data).unwrap();
    hangup(&gw);
    eventually("gamma's key accepted", || async {
        api.get("/v1/jobs", GAMMA).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(api.get("/v1/jobs", BETA).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api.get("/v1/jobs", ACME).await.0, StatusCode::OK);
    // The worker and the gateway know gamma too: its job runs to a receipt.
    let src = root.join("src-beta/g.bin");
    write_random(&src, 3 << 20, 9);
    let (s, job) = api
        .submit(GAMMA, json!({ "source": src, "destinations": ["null://"] }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let job = api.wait(GAMMA, &id, final_state).await;
    assert_eq!(job["state"], "completed", "{job}");
    // Its new quota applied, all of it to this gateway (the only one running its jobs).
    let (_, metrics, _) = api
        .call("GET", "/metrics", Some(&gw.operator_key), None)
        .await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("trackshift_tenant_rate_bytes_per_second{tenant=\"gamma\"} 67108864"),
        "{metrics}"
    );

    // A broken file is reported and changes nothing.
    std::fs::write(TenantFile::path(&data), b"{ \"tenants\": [ oops").unwrap();
    hangup(&gw);
    eventually("the broken file reported", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("tenant file not reloaded")
    })
    .await;
    assert_eq!(api.get("/v1/jobs", GAMMA).await.0, StatusCode::OK);
    assert_eq!(api.get("/v1/jobs", ACME).await.0, StatusCode::OK);
    assert_eq!(api.get("/v1/jobs", BETA).await.0, StatusCode::UNAUTHORIZED);

    // SIGTERM is a clean stop (exit status 0), not death by signal.
    signal(&gw, "-TERM");
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

fn ledger_size(gw: &Gateway) -> u64 {
    let (status, body) = common::get(&gw.http, "/checkpoint");
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_postgresql_queue_and_survive_losing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data_a = tenants(root);
    let data_b = root.join("gw-b");
    std::fs::create_dir_all(&data_b).unwrap();
    std::fs::copy(data_a.join("tenants.json"), data_b.join("tenants.json")).unwrap();
    let store = postgres_database().await;
    // One ledger identity for the cluster: both gateways sign the shared log's
    // checkpoints with these keys.
    let ledger_keys = root.join("shared-ledger-keys");
    let args = [
        "--store",
        store.as_str(),
        "--ledger-keys",
        ledger_keys.to_str().unwrap(),
        "--lease-secs",
        "2",
        "--dest-rate",
        "4MiB",
    ];
    let log = root.join("gw.log");
    let gw_a = start_gateway_full(&data_a, &[], &args, Some(&log));
    let gw_b = start_gateway_full(&data_b, &[], &args, Some(&log));
    let (api_a, api_b) = (Api::new(&gw_a), Api::new(&gw_b));
    let src = root.join("src-acme");
    for i in 0..12 {
        std::fs::write(src.join(format!("small-{i}.txt")), format!("file {i}\n")).unwrap();
    }

    // Jobs submitted through either gateway land in one queue; each runs exactly once.
    let mut ids = Vec::new();
    for i in 0..12 {
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        let (s, j) = api
            .submit(ACME, json!({ "source": src.join(format!("small-{i}.txt")), "destinations": ["null://"] }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    let mut workers = std::collections::HashSet::new();
    for id in &ids {
        // Either gateway answers for every job.
        let job = api_b.wait(ACME, id, final_state).await;
        assert_eq!(job["state"], "completed", "{job}");
        let claims: Vec<&str> = reasons(&job)
            .into_iter()
            .filter(|r| r.starts_with("claimed by "))
            .collect();
        assert_eq!(claims.len(), 1, "claimed exactly once: {claims:?}");
        workers.insert(claims[0].to_string());
    }
    let (_, listed) = api_a.get("/v1/jobs?limit=100", ACME).await;
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        12,
        "one queue, seen from A"
    );
    // One ledger sequence: both gateways serve the same log, holding every job's manifest
    // and receipt once, and the key set of each gateway that finished one (one or two).
    let size = ledger_size(&gw_a);
    assert_eq!(ledger_size(&gw_b), size);
    assert!((2 * 12 + 1..=2 * 12 + 2).contains(&size), "{size}");
    let (code, old_cp, err) = run(&["ledger", "checkpoint", "--gateway", &gw_a.http], root);
    assert_eq!(code, 0, "{err}");
    std::fs::write(root.join("old.cp"), &old_cp).unwrap();
    let (_, same, _) = run(&["ledger", "checkpoint", "--gateway", &gw_b.http], root);
    assert_eq!(
        same, old_cp,
        "one signed checkpoint, whichever gateway serves it"
    );

    // A big job; whichever gateway runs it is killed mid-job; the other takes it over.
    let big = src.join("big.bin");
    write_random(&big, 8 << 20, 3);
    let out = root.join("out-acme/cluster");
    std::fs::create_dir_all(&out).unwrap();
    let (s, j) = api_a
        .submit(ACME, json!({ "source": big, "destinations": [format!("file://{}", out.display())], "chunk_size": 524288 }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let id = j["id"].as_str().unwrap().to_string();
    let running = api_a
        .wait(ACME, &id, |j| j["bytes_done"].as_u64().unwrap() >= 1 << 20)
        .await;
    let worker = running["worker"].as_str().unwrap().to_string();
    let a_runs_it = worker.ends_with(&format!("-{}", gw_a.child.id()));
    let both = [data_a.clone(), data_b.clone()];
    let pids = [gw_a.child.id(), gw_b.child.id()];
    let (mut victim, survivor, survivor_data) = if a_runs_it {
        (gw_a, gw_b, data_b)
    } else {
        (gw_b, gw_a, data_a)
    };
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let job = Api::new(&survivor).wait(ACME, &id, final_state).await;
    assert_eq!(job["state"], "completed", "{job}");
    let reasons = reasons(&job);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("stopped renewing its lease")),
        "{reasons:?}"
    );
    let claims = reasons
        .iter()
        .filter(|r| r.starts_with("claimed by "))
        .count();
    assert_eq!(claims, 2, "taken over once: {reasons:?}");
    assert_eq!(
        std::fs::read(out.join("big.bin")).unwrap(),
        std::fs::read(&big).unwrap()
    );

    // The survivor's receipt verifies, with its inclusion proof in the shared log, using the
    // survivor's signing keys and the cluster's ledger keys.
    let (code, _, err) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            survivor_data.join("keys").to_str().unwrap(),
            "--ledger",
            ledger_keys.to_str().unwrap(),
            "--out",
            "pk.json",
        ],
        root,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &[
            "jobs",
            "wait",
            &id,
            "--out",
            "docs",
            "--api",
            &survivor.http,
            "--key",
            ACME,
        ],
        root,
    );
    assert_eq!(code, 0, "{err}");
    let out = verify_docs(root);
    assert!(out.contains("recorded in ledger"), "{out}");
    // The log only grew, whichever gateway appended: a consistency proof from the old
    // checkpoint to the survivor's current one, verified locally.
    let (code, new_cp, err) = run(&["ledger", "checkpoint", "--gateway", &survivor.http], root);
    assert_eq!(code, 0, "{err}");
    std::fs::write(root.join("new.cp"), &new_cp).unwrap();
    let (code, out, err) = run(
        &[
            "ledger",
            "consistency",
            "old.cp",
            "new.cp",
            "--public-keys",
            "pk.json",
            "--gateway",
            &survivor.http,
        ],
        root,
    );
    assert_eq!(code, 0, "{out}{err}");
    // 13 jobs' documents (pairs) and one key set per gateway that finished a job (one or
    // two): 27 or 28 entries, where a duplicated job would make 29 or 30.
    let size = ledger_size(&survivor);
    assert!(
        (2 * 13 + 1..=2 * 13 + 2).contains(&size),
        "the big job's documents joined the shared log once: {size} entries"
    );
    // An auditor re-checks the whole shared log in the database: every document's
    // signature (either gateway's keys), every hash, the signed root.
    let mut key_files = Vec::new();
    for (k, data) in both.iter().enumerate() {
        let out = format!("pk-{k}.json");
        let (code, _, err) = run(
            &[
                "keys",
                "export-public",
                "--dir",
                data.join("keys").to_str().unwrap(),
                "--ledger",
                ledger_keys.to_str().unwrap(),
                "--out",
                &out,
            ],
            root,
        );
        assert_eq!(code, 0, "{err}");
        key_files.push(out);
    }
    let verify = |keys: &[&String]| {
        let mut args = vec!["ledger", "verify", "--store", store.as_str()];
        for k in keys {
            args.extend(["--public-keys", k.as_str()]);
        }
        run(&args, root)
    };
    let (code, out, err) = verify(&[&key_files[0], &key_files[1]]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(13 manifests, 13 receipts,"), "{out}");
    // Without the keys of a gateway that ran jobs, its documents do not verify.
    let ran = (0..2)
        .find(|&k| {
            workers
                .iter()
                .any(|w| w.ends_with(&format!("-{}", pids[k])))
        })
        .expect("some gateway ran the first jobs");
    let (code, out, _) = verify(&[&key_files[1 - ran]]);
    assert_eq!(code, 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_queue_gets_429_with_retry_after_at_max_queued_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = tenants(root);
    // acme may have 2 jobs queued or running; at 1 KiB/s its jobs stay running.
    let mut file = TenantFile::load(&data).unwrap();
    let acme = file
        .tenants
        .iter_mut()
        .find(|t| t.tenant == "acme")
        .unwrap();
    acme.max_queued_jobs = Some(2);
    acme.bytes_per_second = Some(1024);
    file.save(&data).unwrap();
    let gw = start_gateway_full(&data, &[], &[], None);
    let api = Api::new(&gw);
    let src = root.join("src-acme/slow.bin");
    write_random(&src, 1 << 20, 3);
    let spec = json!({ "source": src, "destinations": ["null://"], "chunk_size": 65536 });
    let submit_keyed = |key: &'static str| {
        let body = spec.to_string();
        let http = api.http.clone();
        let url = format!("{}/v1/jobs", api.base);
        async move {
            let resp = http
                .post(url)
                .bearer_auth(ACME)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            (status, retry_after, body)
        }
    };
    let (s, _, first) = submit_keyed("k1").await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let (s, _, second) = submit_keyed("k2").await;
    assert_eq!(s, StatusCode::CREATED, "{second}");
    let (s, retry_after, refused) = submit_keyed("k3").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(retry_after.as_deref(), Some("30"));
    let msg = refused["error"].as_str().unwrap();
    assert!(
        msg.contains("tenant acme has 2 jobs queued or running (max_queued_jobs = 2)"),
        "{msg}"
    );
    // Resubmitting an accepted job (same idempotency key) is not a new job: still fine.
    let (s, _, again) = submit_keyed("k1").await;
    assert_eq!((s, &again["id"]), (StatusCode::OK, &first["id"]), "{again}");
    assert_eq!(
        api.get("/v1/jobs", ACME).await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "the refused submission stored nothing"
    );
    // Cancel one: there is room for one more, after which retrying the cancelled one is
    // refused in turn (cancel-and-retry does not get round the cap).
    let id = first["id"].as_str().unwrap();
    let (s, j, _) = api
        .call("POST", &format!("/v1/jobs/{id}/cancel"), Some(ACME), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let (s, _, third) = submit_keyed("k4").await;
    assert_eq!(s, StatusCode::CREATED, "{third}");
    let (s, j, headers) = api
        .call("POST", &format!("/v1/jobs/{id}/retry"), Some(ACME), None)
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{j}");
    assert_eq!(headers["retry-after"], "30");
    let (_, doc, _) = api.call("GET", "/v1/openapi.json", None, None).await;
    for path in ["/v1/jobs", "/v1/jobs/{id}/retry"] {
        assert!(
            doc["paths"][path]["post"]["responses"]["429"]["headers"]["Retry-After"].is_object(),
            "{path} documents its 429"
        );
    }
    for j in [&second, &third] {
        let id = j["id"].as_str().unwrap();
        api.call("POST", &format!("/v1/jobs/{id}/cancel"), Some(ACME), None)
            .await;
    }
}

/// A W3C `traceparent` on the submission is kept with the job (shown by the API), and its
/// trace id is on the job's lines from the API, the worker and the gateway; one that is not
/// valid is ignored (the job has none) and the log says so without repeating it. The
/// `jobs submit` command passes `TRACEPARENT` on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_follows_the_job_through_the_worker_and_the_gateway() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = tenants(root);
    let log = root.join("gw.log");
    let gw = start_gateway_full(&data, &[], &[], Some(&log));
    let api = Api::new(&gw);
    let src = root.join("src-acme/t.bin");
    write_random(&src, 100_000, 3);
    let submit = async |traceparent: &'static str| -> Value {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/jobs", gw.http))
            .bearer_auth(ACME)
            .header("content-type", "application/json")
            .header("traceparent", traceparent)
            .body(json!({ "source": src, "destinations": ["null://"] }).to_string())
            .send()
            .await
            .unwrap();
        serde_json::from_str(&resp.text().await.unwrap()).unwrap()
    };
    let traced = submit("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").await;
    assert_eq!(
        traced["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    let id = traced["id"].as_str().unwrap().to_string();
    let done = api.wait(ACME, &id, |j| j["state"] == "completed").await;
    assert_eq!(done["traceparent"], traced["traceparent"]);
    let bad = submit("00-not-a-trace-01").await;
    assert!(bad.get("traceparent").is_none(), "{bad}");

    // `jobs submit` inside a trace.
    let (code, out, err) = common::submit_job(
        &gw,
        ACME,
        "null://",
        &src,
        &["--json"],
        &[(
            "TRACEPARENT",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        root,
    );
    assert_eq!(code, 0, "{out}{err}");
    let via_cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        via_cli["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );

    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of_job: Vec<&Value> = lines.iter().filter(|l| l["job"] == id.as_str()).collect();
    let targets: std::collections::BTreeSet<&str> =
        of_job.iter().filter_map(|l| l["target"].as_str()).collect();
    for part in [
        "trackshift::api",
        "trackshift_engine::jobs::runner",
        "trackshift_engine::gateway",
    ] {
        assert!(
            targets.iter().any(|t| t.starts_with(part)),
            "no line of the job from {part}: {targets:?}"
        );
    }
    for l in &of_job {
        assert_eq!(
            l["trace_id"], TRACE,
            "a line of the traced job without its trace: {l}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "ignoring the request's traceparent header"),
        "the invalid header is noted"
    );
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("not-a-trace"),
        "the invalid value itself is not logged"
    );
}
