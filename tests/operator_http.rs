//! The operator endpoints reveal nothing about tenants to whoever reaches the HTTP port:
//! `/health` and `/ready` say up or down, `/metrics` and `/dashboard` need the operator
//! key (401 without, 403 with a tenant's key), and the operator listen address
//! (`--operator-http`) answers them in full with no key and serves nothing else.

mod common;

use common::{get_with_key, run, start_gateway_full};
use serde_json::Value;
use trackshift_engine::tenants::{TenantEntry, TenantFile};

const ACME: &str = "acme-key-0123456789";

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)))
}

#[test]
fn each_operator_endpoint_answers_by_who_asks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gw");
    TenantFile {
        tenants: vec![TenantEntry::new("acme", ACME)],
    }
    .save(&data)
    .unwrap();
    let gw = start_gateway_full(&data, &[], &["--operator-http", "127.0.0.1:0"], None);
    let op_addr = gw.operator_http.clone().expect("operator address printed");
    assert_ne!(op_addr, gw.http);
    let operator = gw.operator_key.as_str();
    assert_eq!(operator.len(), 64, "256 random bits, hex");
    let wrong = "f".repeat(64);

    // Everyone but the operator: status only, nothing naming a tenant.
    for key in [None, Some(ACME), Some(wrong.as_str())] {
        for path in ["/health", "/ready"] {
            let (status, body) = get_with_key(&gw.http, path, key);
            assert_eq!(status, 200, "{path} {key:?}");
            assert_eq!(json(&body), serde_json::json!({ "status": "up" }), "{path}");
        }
    }
    for path in ["/metrics", "/dashboard"] {
        for (key, expected) in [(None, 401), (Some(wrong.as_str()), 401), (Some(ACME), 403)] {
            let (status, body) = get_with_key(&gw.http, path, key);
            assert_eq!(status, expected, "{path} {key:?}");
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains("acme"), "{path} {key:?}: {text}");
            assert!(json(&body)["error"].is_string(), "{text}");
        }
    }
    // Another scheme than Bearer is no key at all.
    let addr = gw.http.strip_prefix("http://").unwrap();
    let basic = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {operator}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    assert!(basic.starts_with("HTTP/1.1 401"), "{basic}");

    // The operator key, and the operator address without one: the details.
    for (base, key) in [(gw.http.as_str(), Some(operator)), (op_addr.as_str(), None)] {
        let (status, body) = get_with_key(base, "/health", key);
        assert_eq!(status, 200);
        let health = json(&body);
        assert_eq!(health["status"], "up");
        assert_eq!(health["tenants"], 1, "{health}");
        let (status, body) = get_with_key(base, "/ready", key);
        assert_eq!(status, 200);
        let ready = json(&body);
        assert_eq!(ready["status"], "up");
        assert_eq!(ready["ready"], true);
        assert_eq!(ready["store"], "ok", "{ready}");
        assert!(ready["destinations"]["failing"].is_array(), "{ready}");
        let (status, body) = get_with_key(base, "/metrics", key);
        assert_eq!(status, 200);
        let metrics = String::from_utf8(body).unwrap();
        assert!(
            metrics.contains("trackshift_jobs{tenant=\"acme\",state=\"queued\"} 0"),
            "{metrics}"
        );
        let (status, body) = get_with_key(base, "/dashboard", key);
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("<td>acme</td>"));
    }

    // The operator key is not a tenant's: the job API and a tenant's KPIs refuse it.
    for path in ["/v1/jobs", "/reports/kpi"] {
        assert_eq!(
            get_with_key(&gw.http, path, Some(operator)).0,
            401,
            "{path}"
        );
        assert_eq!(get_with_key(&gw.http, path, Some(ACME)).0, 200, "{path}");
    }
    // The operator address serves the operator endpoints only.
    for path in [
        "/v1/jobs",
        "/reports/kpi",
        "/checkpoint",
        "/v1/openapi.json",
    ] {
        assert_eq!(get_with_key(&op_addr, path, Some(ACME)).0, 404, "{path}");
    }
}

#[test]
fn an_operator_address_needs_the_http_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, err) = run(
        &[
            "serve",
            "--data-dir",
            tmp.path().join("gw").to_str().unwrap(),
            "--operator-http",
            "127.0.0.1:0",
        ],
        tmp.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--http"), "{err}");
}
