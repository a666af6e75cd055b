//! `serve --otlp-endpoint`: the gateway exports its spans over OTLP/HTTP (protobuf). The
//! receiver here reads the requests an OpenTelemetry collector would get and decodes them
//! with the OpenTelemetry protocol's own definitions (`opentelemetry-proto`): a job
//! submitted with a W3C `traceparent` runs in a `job` span of that trace, a child of the
//! caller's span, with the job's fields as attributes; the API's request span joins it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const KEY: &str = "acme-otlp-key-0123456789";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Spans received, with the resource's service name, and the paths posted to.
#[derive(Default)]
struct Received {
    spans: Vec<(String, Span)>,
    paths: Vec<String>,
}

/// An OTLP/HTTP receiver on 127.0.0.1 (HTTP/1.1, keep-alive, protobuf bodies).
fn receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Received::default()));
    let store = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let store = store.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut start = String::new();
                    if r.read_line(&mut start).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = start.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap();
                    let req = ExportTraceServiceRequest::decode(body.as_slice())
                        .expect("an OTLP trace export request");
                    let mut g = store.lock().unwrap();
                    g.paths.push(path);
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.as_ref())
                            .and_then(|v| match &v.value {
                                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                g.spans.push((service.clone(), s));
                            }
                        }
                    }
                    drop(g);
                    w.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    )
                    .unwrap();
                }
            });
        }
    });
    (url, got)
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

#[test]
fn a_traced_jobs_spans_reach_the_collector_in_the_callers_trace() {
    let (url, got) = receiver();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = common::acme_tenant(root, KEY);
    let src = root.join("src");
    std::fs::write(src.join("a.bin"), vec![1u8; 50_000]).unwrap();
    let gw = common::start_gateway_full(
        &data,
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        &["--otlp-endpoint", &url],
        Some(&root.join("gw.log")),
    );
    let (code, out, err) = common::submit_job(
        &gw,
        KEY,
        "null://",
        &src.join("a.bin"),
        &["--wait", "--json"],
        &[("TRACEPARENT", &format!("00-{TRACE}-{PARENT}-01"))],
        root,
    );
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let id = job["id"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(20);
    let trace = hex::decode(TRACE).unwrap();
    let parent = hex::decode(PARENT).unwrap();
    loop {
        {
            let g = got.lock().unwrap();
            let job_span = g
                .spans
                .iter()
                .find(|(_, s)| s.name == "job" && attr(s, "job").as_deref() == Some(id.as_str()));
            let request = g.spans.iter().find(|(_, s)| {
                s.name == "request"
                    && s.trace_id == trace
                    && attr(s, "method").as_deref() == Some("POST")
            });
            if let (Some((service, j)), Some((_, r))) = (job_span, request) {
                assert_eq!(service, "trackshift-gateway");
                assert_eq!(j.trace_id, trace, "the job span is in the caller's trace");
                assert_eq!(j.parent_span_id, parent, "a child of the caller's span");
                assert_eq!(attr(j, "tenant").as_deref(), Some("acme"));
                assert_eq!(attr(j, "trace_id").as_deref(), Some(TRACE));
                assert_eq!(r.parent_span_id, parent);
                assert!(j.end_time_unix_nano >= j.start_time_unix_nano);
                assert!(g.paths.iter().all(|p| p == "/v1/traces"), "{:?}", g.paths);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the job's spans never arrived ({}); got {:?}",
                std::fs::read_to_string(root.join("gw.log")).unwrap_or_default(),
                g.spans
                    .iter()
                    .map(|(_, s)| (s.name.clone(), hex::encode(&s.trace_id)))
                    .collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_bad_otlp_endpoint_stops_the_start_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _out, err) = common::run(
        &[
            "serve",
            "--data-dir",
            tmp.path().join("gw").to_str().unwrap(),
            "--otlp-endpoint",
            "grpc://127.0.0.1:4317",
        ],
        tmp.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--otlp-endpoint"), "{err}");
    assert_eq!(
        err.matches("--otlp-endpoint").count(),
        1,
        "said once: {err}"
    );
}
