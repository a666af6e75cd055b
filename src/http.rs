//! The gateway's read-only HTTP endpoints for auditors (`/health` and the other operator
//! endpoints are in [`crate::api`]).
//!
//! ```text
//! GET /checkpoint                               latest signed checkpoint (C2SP tlog-tiles)
//! GET /tile/<L>/<N>[.p/<W>]                     hash tiles (C2SP tlog-tiles; no entry bundles)
//! GET /v1/ledger/checkpoint                     the same checkpoint
//! GET /v1/ledger/proof/inclusion?index=I        C2SP tlog-proof of entry I (latest checkpoint)
//! GET /v1/ledger/proof/consistency?old=M&new=N  JSON: consistency proof from size M to N
//! ```
//!
//! Everything served is verifiable by the client with the ledger's public keys (signed
//! checkpoints, Merkle proofs), so a client trusts the signatures, not the connection.
//! Entries themselves are tenants' signed documents and are not served.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde::Deserialize;
use trackshift_ledger::{LedgerError, Log};

/// A consistency proof as served at `/v1/ledger/proof/consistency`.
pub use trackshift_engine::keybundle::Consistency as ConsistencyProof;

/// Errors as JSON: `{"error": "..."}` with a 4xx status for bad requests.
struct ApiError(StatusCode, String);

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::InvalidRequest(m) => ApiError(StatusCode::BAD_REQUEST, m),
            other => {
                tracing::error!(error = %other, "ledger read failed");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the ledger could not be read; see the gateway's log".into(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type Shared = Log;

/// The router over a ledger (the gateway's own handle, or a read-only one).
pub fn router(ledger: Log) -> Router {
    Router::new()
        .route("/checkpoint", get(checkpoint))
        .route("/tile/{*path}", get(tile))
        .route("/v1/ledger/checkpoint", get(checkpoint))
        .route("/v1/ledger/proof/inclusion", get(inclusion))
        .route("/v1/ledger/proof/consistency", get(consistency))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(ledger)
}

/// Binds `addr` and serves [`router`] until the future is dropped. Returns the bound address
/// and the serving future.
/// The key set service over HTTP (`GET /v1/keys[?since=N]`, also at
/// `/.well-known/trackshift-keys`): the key bundle of `trackshift_engine::keybundle`,
/// anonymous like the ledger's endpoints (everything in it is verifiable offline).
pub fn keys_router(gateway: std::sync::Arc<trackshift_engine::gateway::Gateway>) -> Router {
    Router::new()
        .route("/v1/keys", get(keys))
        .route("/.well-known/trackshift-keys", get(keys))
        .with_state(gateway)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysQuery {
    since: Option<u64>,
}

async fn keys(
    State(gateway): State<std::sync::Arc<trackshift_engine::gateway::Gateway>>,
    Query(q): Query<KeysQuery>,
) -> Result<Response, ApiError> {
    let bundle = gateway.key_bundle(q.since).await.map_err(|e| {
        tracing::error!(error = %e, "key bundle not served");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key set could not be recorded or proved; see the gateway's log".into(),
        )
    })?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(bundle)).into_response())
}

/// `GET /v1/ledger/timestamp?size=N`: the first time-stamp of a checkpoint of N entries or
/// more, with the consistency proof from N to it (docs/FORMATS.md 8.8); 404 when none covers
/// N yet, or when the gateway has no time-stamp authority.
pub fn timestamp_router(ledger: Log, stamps: Option<std::sync::Arc<crate::tsa::Stamps>>) -> Router {
    Router::new()
        .route("/v1/ledger/timestamp", get(timestamp))
        .with_state((ledger, stamps))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimestampQuery {
    size: u64,
}

async fn timestamp(
    State((ledger, stamps)): State<(Log, Option<std::sync::Arc<crate::tsa::Stamps>>)>,
    Query(q): Query<TimestampQuery>,
) -> Result<Response, ApiError> {
    let Some(stamps) = stamps else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "this gateway has no time-stamp authority (serve --tsa)".into(),
        ));
    };
    if q.size == 0 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "size must be at least 1".into(),
        ));
    }
    let found = stamps.covering(q.size).map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "time-stamp not read");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the time-stamp could not be read; see the gateway's log".into(),
        )
    })?;
    let Some(mut stamp) = found else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no time-stamp covers {} entries yet (the last covers {}); ask again later",
                q.size,
                stamps.last_size()
            ),
        ));
    };
    if stamp.size > q.size {
        let proof = ledger.consistency_proof(q.size, stamp.size).await?;
        stamp.consistency = Some(trackshift_engine::keybundle::Consistency {
            old_size: q.size,
            new_size: stamp.size,
            proof: proof
                .iter()
                .map(|h| base64::engine::general_purpose::STANDARD.encode(h))
                .collect(),
        });
    }
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(stamp)).into_response())
}

pub async fn bind(
    addr: SocketAddr,
    router: Router,
) -> Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP endpoint {addr}"))?;
    let local = listener.local_addr()?;
    let router = router.layer(axum::middleware::from_fn(access_log));
    Ok((local, axum::serve(listener, router).into_future()))
}

/// The access log and the HTTP metrics: one line per request (method, route template,
/// status, duration; never a header, so no key, and not the raw path: a job id in it would
/// make a line about a job that lacks the job's correlation id), and `trackshift_http_requests_total`
/// and `trackshift_http_request_duration_seconds` by route template (not the raw path: job
/// ids would make the series unbounded), method and status class.
async fn access_log(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(target: "trackshift::access", method = %method, route = %route, status, ms = (secs * 1000.0).round() as u64, "http request");
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let method: &'static str = match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    metrics::counter!("trackshift_http_requests_total", "route" => route.clone(), "method" => method, "status" => class)
        .increment(1);
    metrics::histogram!("trackshift_http_request_duration_seconds", "route" => route, "method" => method)
        .record(secs);
    resp
}

fn text(body: String, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

async fn checkpoint(State(ledger): State<Shared>) -> Result<Response, ApiError> {
    let cp = ledger.refresh().await?;
    Ok(text(cp.note.clone(), "no-store"))
}

async fn tile(
    State(ledger): State<Shared>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    ledger.refresh().await?;
    // A tile the tree does not have (yet) is "not found", as tile clients expect.
    let data = ledger
        .tile(&format!("tile/{path}"))
        .await
        .map_err(|e| match e {
            LedgerError::InvalidRequest(m) => ApiError(StatusCode::NOT_FOUND, m),
            other => other.into(),
        })?;
    // Full tiles never change; partial ones are superseded as the log grows.
    let cache = if path.contains(".p/") {
        "no-store"
    } else {
        "public, max-age=31536000, immutable"
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, cache),
        ],
        data,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    index: u64,
}

async fn inclusion(
    State(ledger): State<Shared>,
    query: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let cp = ledger.refresh().await?;
    let proof = ledger.tlog_proof_in(q.index, &cp).await?;
    Ok(text(proof.to_text(), "no-store"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    old: u64,
    new: Option<u64>,
}

async fn consistency(
    State(ledger): State<Shared>,
    query: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let cp = ledger.refresh().await?;
    let new = q.new.unwrap_or(cp.size);
    let proof = ledger.consistency_proof(q.old, new).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Json(ConsistencyProof {
        old_size: q.old,
        new_size: new,
        proof: proof.iter().map(|h| b64.encode(h)).collect(),
    }))
}

/// Fetches `path` from a gateway's HTTP endpoint (`base` like `http://host:port`), as text.
pub async fn fetch(base: &str, path: &str) -> Result<String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("requesting {url}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("{url}: {status}: {reason}");
    }
    Ok(body)
}
