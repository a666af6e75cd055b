//! The job API (`/v1/jobs...`, `/reports/kpi`), operator endpoints (`/health`, `/ready`,
//! `/metrics`, `/dashboard`) and the OpenAPI document (`/v1/openapi.json`).
//!
//! Tenants authenticate with `Authorization: Bearer KEY`. A tenant only ever sees its own
//! jobs: another tenant's job id answers exactly like an unknown one (404), and
//! `/reports/kpi` gives the calling tenant's figures only. Every request gets a
//! correlation id (`X-Correlation-Id`, taken from the request when valid, else new) that
//! is logged, returned, and becomes the id of a job it creates.
//!
//! Operators present the operator key ([`trackshift_engine::operator`], in
//! `DATA/operator.key`) the same way. Without it `/health` and `/ready` answer only
//! `{"status":"up"}` or `{"status":"down"}` (200 or 503), and `/metrics` and `/dashboard`
//! answer 401 (no or an unknown key) or 403 (a tenant's key): no tenant name, destination
//! or error text reaches anyone else. [`operator_router`] serves the operator endpoints
//! with their details and no key asked, for `serve --operator-http` on a private address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::{Instrument as _, info, info_span, warn};
use trackshift_engine::jobs::runner::{Runner, now_ms};
use trackshift_engine::jobs::store::{ListQuery, NewJob, StoreError, count_of};
use trackshift_engine::jobs::{Job, JobSpec, JobState, JobStore, Transition};
use trackshift_engine::tenants::{AdmissionError, JobAsk, LiveTenants, TenantEntry};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 << 10;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The job store.
    pub store: Arc<dyn JobStore>,
    /// Tenants, their policy and their own destination credentials (the version in force:
    /// SIGHUP reloads it).
    pub tenants: Arc<LiveTenants>,
    /// This process's worker (woken on submit; its chunk latencies feed the KPIs).
    pub runner: Arc<Runner>,
    /// The ledger (checked by `/ready`).
    pub ledger: trackshift_ledger::Log,
    /// The gateway (its destinations in use are checked by `/ready`).
    pub gateway: Arc<trackshift_engine::gateway::Gateway>,
    /// Prometheus exposition.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The operator key of the operator endpoints.
    pub operator: Arc<trackshift_engine::operator::OperatorKey>,
    /// The last readiness check, shared by every `/ready` caller for [`READY_MAX_AGE`].
    pub readiness: Arc<Readiness>,
    /// The checkpoints' time-stamps, with `serve --tsa`.
    pub stamps: Option<Arc<crate::tsa::Stamps>>,
}

/// How long one readiness check answers every anonymous `/ready` request: however often
/// anyone without the operator key asks, the gateway checks its store, ledger and
/// destinations at most once per this (an operator's request always checks afresh).
pub const READY_MAX_AGE: Duration = Duration::from_secs(2);

/// What `/ready` found.
#[derive(Clone, Debug)]
pub struct ReadyReport {
    store: Result<(), String>,
    ledger: Result<(), String>,
    checked: usize,
    failing: Vec<(String, String)>,
}

impl ReadyReport {
    fn ok(&self) -> bool {
        let destinations_ok = self.checked == 0 || self.failing.len() < self.checked;
        self.store.is_ok() && self.ledger.is_ok() && destinations_ok
    }
}

/// A readiness result and when it was taken; callers that arrive while a check runs
/// wait for it instead of starting their own (single flight).
#[derive(Default)]
pub struct Readiness(tokio::sync::Mutex<Option<(std::time::Instant, ReadyReport)>>);

impl Readiness {
    /// The last report if younger than `max_age`, else a new one from `check`.
    pub async fn get<F>(&self, max_age: Duration, check: impl FnOnce() -> F) -> ReadyReport
    where
        F: std::future::Future<Output = ReadyReport>,
    {
        let mut last = self.0.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < max_age
        {
            return report.clone();
        }
        let report = check().await;
        *last = Some((std::time::Instant::now(), report.clone()));
        report
    }
}

/// An error as JSON: `{"error": "..."}`.
pub struct ApiError(pub StatusCode, pub String);

/// Seconds a client refused with 429 (a tenant quota) is asked to wait.
pub const RETRY_AFTER_SECS: u32 = 30;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError(StatusCode::NOT_FOUND, "no such job".into()),
            StoreError::Conflict(m) => ApiError(StatusCode::CONFLICT, m),
            StoreError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            e @ StoreError::TooManyJobs { .. } => {
                ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            }
            other => {
                warn!(error = %other, "job store failed");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the job store is unavailable; see the gateway's log".into(),
                )
            }
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let status = match &e {
        JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
        JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_REQUEST,
    };
    let status = if status == StatusCode::PAYLOAD_TOO_LARGE && !e.body_text().contains("limit") {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError(status, e.body_text())
}

/// The key of `Authorization: Bearer KEY`, if the request has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Marks the requests of the operator listen address ([`operator_router`]): an extension
/// set by the server, which no request header can forge.
#[derive(Clone, Copy)]
struct OperatorListener;

/// Who calls an operator endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The operator key, or the operator listen address.
    Operator,
    /// A tenant's key: not an operator's.
    Tenant,
    /// No key, or one nobody has.
    Unknown,
}

fn caller(parts: &Parts, state: &AppState) -> Caller {
    if parts.extensions.get::<OperatorListener>().is_some() {
        return Caller::Operator;
    }
    match bearer(&parts.headers) {
        Some(k) if state.operator.matches(k) => Caller::Operator,
        Some(k) if state.tenants.current().file.authenticate(k).is_some() => Caller::Tenant,
        _ => Caller::Unknown,
    }
}

/// An operator's request: the operator key, or the operator listen address. Otherwise
/// 401 (no or an unknown key) or 403 (a tenant's key).
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match caller(parts, state) {
            Caller::Operator => Ok(Operator),
            Caller::Tenant => Err(ApiError(
                StatusCode::FORBIDDEN,
                "this endpoint is for operators; a tenant key is not an operator key".into(),
            )),
            Caller::Unknown => Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs the operator key (send Authorization: Bearer KEY, the key \
                 in the gateway's DATA/operator.key)"
                    .into(),
            )),
        }
    }
}

/// Whether an endpoint that answers everyone may show an operator its details.
pub struct IsOperator(pub bool);

impl FromRequestParts<AppState> for IsOperator {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(IsOperator(caller(parts, state) == Caller::Operator))
    }
}

/// The authenticated tenant of a request.
pub struct Tenant(pub TenantEntry);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or unknown API key (send Authorization: Bearer KEY)".into(),
            )
        };
        let key = bearer(&parts.headers).ok_or_else(unauthorized)?;
        state
            .tenants
            .current()
            .file
            .authenticate(key)
            .map(|t| Tenant(t.clone()))
            .ok_or_else(unauthorized)
    }
}

/// The request's correlation id.
#[derive(Clone)]
pub struct Correlation(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Correlation {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<Correlation>()
            .cloned()
            .unwrap_or_else(|| Correlation(uuid::Uuid::new_v4().to_string())))
    }
}

/// A valid caller-supplied id, or a new one.
fn correlation_of(headers: &HeaderMap) -> String {
    headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| trackshift_engine::protocol::check_id("correlation id", v).is_ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

/// Tags every request with its correlation id (span, extension, response header).
async fn correlate(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = correlation_of(req.headers());
    req.extensions_mut().insert(Correlation(id.clone()));
    let span = info_span!("request", correlation_id = %id, method = %req.method(), path = %req.uri().path());
    // Exported spans (serve --otlp-endpoint) join the caller's trace.
    let caller = (req.headers().get("traceparent"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| trackshift_engine::trace::TraceParent::parse(v).ok());
    crate::otlp::adopt(&span, caller);
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-correlation-id", v);
    }
    resp
}

/// The routes of this module (merged with the ledger's by the caller).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/jobs", post(create_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/jobs/{id}/manifest", get(job_manifest))
        .route("/v1/jobs/{id}/receipts", get(job_receipts))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/openapi.json", get(openapi))
        .route("/reports/kpi", get(kpi))
        .merge(operator_routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(correlate))
        .with_state(state)
}

fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(prometheus))
        .route("/dashboard", get(dashboard))
}

/// The operator endpoints alone, with their details and no key asked (every request is
/// an operator's): for `serve --operator-http`, an address only operators reach.
pub fn operator_router(state: AppState) -> Router {
    operator_routes()
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(OperatorListener))
        .layer(axum::middleware::from_fn(correlate))
        .with_state(state)
}

/// A job as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Correlation id (also in the receipts and every log line of the job).
    pub correlation_id: String,
    /// State.
    pub state: JobState,
    /// What was asked.
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Attempts started.
    pub attempts: u32,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Earliest next attempt, when waiting to retry (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed after every attempt.
    pub dead_letter: bool,
    /// The worker (gateway process) holding the job while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Bytes in the job (once known).
    pub bytes_total: u64,
    /// Bytes acknowledged by the gateway.
    pub bytes_done: u64,
    /// The W3C `traceparent` the job was submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// State changes, oldest first (single-job responses only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transitions: Option<Vec<TransitionView>>,
}

/// One state change as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TransitionView {
    /// When (RFC 3339).
    pub at: String,
    /// Before (absent for creation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<JobState>,
    /// After.
    pub to: JobState,
    /// Why.
    pub reason: String,
}

/// RFC 3339 (UTC, milliseconds) of Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn view(job: Job, transitions: Option<Vec<Transition>>) -> JobView {
    JobView {
        next_attempt_at: (job.state == JobState::Queued && job.not_before_ms > now_ms())
            .then(|| rfc3339(job.not_before_ms)),
        id: job.id,
        tenant: job.tenant,
        correlation_id: job.correlation_id,
        state: job.state,
        spec: job.spec,
        attempts: job.attempts,
        created_at: rfc3339(job.created_ms),
        updated_at: rfc3339(job.updated_ms),
        last_error: job.last_error,
        dead_letter: job.dead_letter,
        worker: job.worker,
        bytes_total: job.bytes_total,
        bytes_done: job.bytes_done,
        traceparent: job.traceparent.map(|t| t.to_string()),
        transitions: transitions.map(|ts| {
            ts.into_iter()
                .map(|t| TransitionView {
                    at: rfc3339(t.at_ms),
                    from: t.from,
                    to: t.to,
                    reason: t.reason,
                })
                .collect()
        }),
    }
}

/// The request's W3C `traceparent`, if it has a valid one. An invalid one is ignored (the
/// job starts no trace of its own), as the Trace Context specification asks of receivers;
/// the log says why, without the value.
fn traceparent_of(headers: &HeaderMap) -> Option<trackshift_engine::trace::TraceParent> {
    let v = headers.get("traceparent")?;
    match v
        .to_str()
        .map_err(|_| "not visible ASCII".to_string())
        .and_then(|s| trackshift_engine::trace::TraceParent::parse(s).map_err(|e| e.to_string()))
    {
        Ok(t) => Some(t),
        Err(why) => {
            info!(reason = %why, "ignoring the request's traceparent header");
            None
        }
    }
}

async fn create_job(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Correlation(correlation): Correlation,
    request_headers: HeaderMap,
    body: Result<Json<JobSpec>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<JobView>), ApiError> {
    let idempotency_key = match request_headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| (1..=200).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::BAD_REQUEST,
                        "Idempotency-Key: 1 to 200 visible ASCII characters".into(),
                    )
                })?
                .to_string(),
        ),
    };
    let traceparent = traceparent_of(&request_headers);
    let Json(spec) = body.map_err(json_rejection)?;
    spec.validate()
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.0))?;
    // Policy first, on the parsed destinations and the source: a refused job builds nothing
    // and reads nothing, so the answer reveals nothing about the gateway's side.
    let admitted = tenant
        .admit(
            JobAsk {
                source: Some(&spec.source),
                destinations: &spec.destinations,
                classification: spec.classification.as_deref(),
            },
            state.tenants.data_dir(),
        )
        .map_err(|e| match e {
            AdmissionError::Malformed { uri, error } => ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("destinations: {uri}: {error}"),
            ),
            AdmissionError::Refused(e) => ApiError(StatusCode::FORBIDDEN, e.to_string()),
        })?;
    let settings = state
        .tenants
        .current()
        .credentials
        .get(&tenant.tenant)
        .cloned()
        .unwrap_or_default();
    for (d, dest) in spec.destinations.iter().zip(&admitted.destinations) {
        trackshift_engine::connectors::connect(dest, Default::default(), &settings)
            .map(drop)
            .map_err(|e| {
                ApiError(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("destinations: {d}: {e}"),
                )
            })?;
    }
    let (job, created) = state
        .store
        .create(
            NewJob {
                traceparent,
                tenant: tenant.tenant.clone(),
                spec,
                correlation_id: Some(correlation),
                idempotency_key,
                max_queued: Some(tenant.queued_jobs_limit()),
            },
            now_ms(),
        )
        .await?;
    if created {
        info!(job = %job.id, tenant = %job.tenant, correlation_id = %job.correlation_id, trace_id = job.traceparent.map(|t| t.trace_id()), "job submitted");
        state.runner.wake();
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, headers, Json(view(job, None))))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only jobs in this state.
    pub state: Option<String>,
    /// Page size, 1 to 500.
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

/// A page of jobs.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobList {
    /// Jobs, newest first.
    pub jobs: Vec<JobView>,
    /// Cursor for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

async fn list_jobs(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(p) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let st = match p.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("state: {s:?} is not one of queued, running, verifying, completed, failed, cancelled"),
            )
        })?),
    };
    if let Some(l) = p.limit
        && !(1..=500).contains(&l)
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit: {l} is not between 1 and 500"),
        ));
    }
    let page = state
        .store
        .list(
            &tenant.tenant,
            &ListQuery {
                state: st,
                limit: p.limit,
                cursor: p.cursor,
            },
        )
        .await?;
    Ok(Json(JobList {
        jobs: page.jobs.into_iter().map(|j| view(j, None)).collect(),
        next: page.next,
    }))
}

/// Job ids are UUIDs; anything else is unknown without asking the store.
fn job_id(id: &str) -> Result<&str, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, "no such job".into()))
}

async fn get_job(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    let job = state.store.get(&tenant.tenant, id).await?;
    let transitions = state.store.transitions(&tenant.tenant, id).await?;
    Ok(Json(view(job, Some(transitions))))
}

async fn cancel_job(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    let job = state.store.cancel(&tenant.tenant, id, now_ms()).await?;
    state.runner.cancel_local(id);
    info!(job = %job.id, tenant = %job.tenant, correlation_id = %job.correlation_id, "job cancelled");
    Ok(Json(view(job, None)))
}

async fn retry_job(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    let job = state
        .store
        .retry(
            &tenant.tenant,
            id,
            Some(tenant.queued_jobs_limit()),
            now_ms(),
        )
        .await?;
    info!(job = %job.id, tenant = %job.tenant, correlation_id = %job.correlation_id, "job queued again");
    state.runner.wake();
    Ok(Json(view(job, None)))
}

fn raw_json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn job_manifest(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (manifest, _) = state.store.documents(&tenant.tenant, job_id(&id)?).await?;
    Ok(raw_json(manifest))
}

async fn job_receipts(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, receipts) = state.store.documents(&tenant.tenant, job_id(&id)?).await?;
    // The signed documents verbatim (signatures cover their exact bytes).
    Ok(raw_json(format!(
        "{{\"receipts\":[{}]}}",
        receipts.join(",")
    )))
}

/// Progress as server-sent events: a `progress` event on every change (state, bytes),
/// then the stream ends after the job reaches a final state.
async fn job_events(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = job_id(&id)?.to_string();
    // Existence (and ownership) checked up front: a 404, not an empty stream.
    state.store.get(&tenant.tenant, &id).await?;
    let stream = async_stream(state.store.clone(), tenant.tenant.clone(), id);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn async_stream(
    store: Arc<dyn JobStore>,
    tenant: String,
    id: String,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (store, tenant, id, None::<(JobState, u64, u64)>, false),
        |(store, tenant, id, last, done)| async move {
            if done {
                return None;
            }
            let mut last = last;
            loop {
                let job = match store.get(&tenant, &id).await {
                    Ok(j) => j,
                    Err(e) => {
                        let ev = Event::default()
                            .event("error")
                            .data(serde_json::json!({ "error": e.to_string() }).to_string());
                        return Some((Ok(ev), (store, tenant, id, last, true)));
                    }
                };
                let now = (job.state, job.bytes_done, job.bytes_total);
                if last != Some(now) {
                    last = Some(now);
                    let terminal = job.state.is_terminal();
                    let data = serde_json::json!({
                        "id": job.id,
                        "state": job.state,
                        "bytes_done": job.bytes_done,
                        "bytes_total": job.bytes_total,
                        "attempts": job.attempts,
                        "last_error": job.last_error,
                    });
                    let ev = Event::default().event("progress").data(data.to_string());
                    return Some((Ok(ev), (store, tenant, id, last, terminal)));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        },
    )
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../docs/openapi.json"),
    )
        .into_response()
}

/// `/health`: the process answers. `{"status":"up"}`; an operator also gets the version,
/// the running jobs and the number of tenants.
async fn health(State(state): State<AppState>, IsOperator(operator): IsOperator) -> Response {
    if !operator {
        return Json(serde_json::json!({ "status": "up" })).into_response();
    }
    Json(serde_json::json!({
        "status": "up",
        "version": env!("CARGO_PKG_VERSION"),
        "running_jobs": state.runner.running(),
        "tenants": state.tenants.current().file.tenants.len(),
    }))
    .into_response()
}

/// `/ready`: the store answers, the ledger can be read, and the destinations in use are
/// reachable. One failing destination (a tenant's bucket) is reported but does not make
/// the gateway unready, or one tenant could take the whole fleet out of service; every
/// destination failing (this gateway's network) does. Only an operator sees which check
/// failed and why (destination URIs and errors name tenants); everyone else gets
/// `{"status":"up"}` or `{"status":"down"}`.
async fn ready(State(state): State<AppState>, IsOperator(operator): IsOperator) -> Response {
    let max_age = if operator {
        Duration::ZERO
    } else {
        READY_MAX_AGE
    };
    let report = state
        .readiness
        .get(max_age, || async {
            let store = state.store.ping().await.map_err(|e| e.to_string());
            let ledger = state
                .ledger
                .refresh()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let (checked, failing) = state
                .gateway
                .probe_destinations(Duration::from_secs(3))
                .await;
            ReadyReport {
                store,
                ledger,
                checked,
                failing,
            }
        })
        .await;
    let ok = report.ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let up = if ok { "up" } else { "down" };
    if !operator {
        return (status, Json(serde_json::json!({ "status": up }))).into_response();
    }
    let text = |r: &Result<(), String>| r.clone().err().unwrap_or_else(|| "ok".into());
    let body = serde_json::json!({
        "status": up,
        "ready": ok,
        "store": text(&report.store),
        "ledger": text(&report.ledger),
        "destinations": {
            "checked": report.checked,
            "failing": report
                .failing
                .iter()
                .map(|(uri, error)| serde_json::json!({ "uri": uri, "error": error }))
                .collect::<Vec<_>>(),
        },
        "tenants": state.tenants.current().file.tenants.len(),
        "running_jobs": state.runner.running(),
        // A time-stamp authority that is down delays stamps, never transfers: shown, not
        // counted against readiness.
        "timestamps": state.stamps.as_ref().map(|s| s.details(state.ledger.size())),
    });
    (status, Json(body)).into_response()
}

/// `/metrics` (operators only): Prometheus text. Job counts per tenant and state are read
/// from the store at scrape time (so they are right across several gateways sharing it).
async fn prometheus(State(state): State<AppState>, _: Operator) -> Response {
    match state.store.counts().await {
        Ok(counts) => {
            for t in &state.tenants.current().file.tenants {
                for s in JobState::ALL {
                    let n = counts
                        .iter()
                        .find(|(tn, st, _)| *tn == t.tenant && *st == s)
                        .map_or(0, |c| c.2);
                    metrics::gauge!("trackshift_jobs", "tenant" => t.tenant.clone(), "state" => s.as_str())
                        .set(n as f64);
                }
            }
        }
        Err(e) => warn!(error = %e, "job counts unavailable for /metrics"),
    }
    metrics::gauge!("trackshift_ledger_size").set(state.ledger.size() as f64);
    if let Some(stamps) = &state.stamps {
        stamps.export_metrics(state.ledger.size());
    }
    metrics::gauge!("trackshift_running_jobs").set(state.runner.running() as f64);
    crate::metrics_catalog::process().collect();
    if let Some(t) = state.gateway.certificate_not_after() {
        metrics::gauge!("trackshift_tls_certificate_expiry_timestamp_seconds").set(t as f64);
    }
    // The active signing keys' age and, where they have one, their end: rotations due.
    match state.gateway.public_keyring() {
        Ok(ring) => {
            for p in trackshift_crypto::Purpose::ALL {
                let Some(k) = ring.active(p) else { continue };
                metrics::gauge!("trackshift_signing_key_activated_timestamp_seconds", "purpose" => p.as_str())
                    .set(k.not_before.unix() as f64);
                if let Some(end) = k.not_after {
                    metrics::gauge!("trackshift_signing_key_expiry_timestamp_seconds", "purpose" => p.as_str())
                        .set(end.unix() as f64);
                }
            }
        }
        Err(e) => warn!(error = %e, "the key ring is unreadable for /metrics"),
    }
    // When the latest checkpoint was signed (its cosignature's time): a ledger that stops
    // advancing shows here.
    let cp = state.ledger.checkpoint();
    if cp.size > 0
        && let Ok(v) = trackshift_ledger::verify_checkpoint(&cp.note, &state.ledger.public_keys())
    {
        metrics::gauge!("trackshift_ledger_checkpoint_timestamp_seconds").set(v.cosigned_at as f64);
    }
    // This worker's part of each tenant's bandwidth quota (split across gateways).
    for t in &state.tenants.current().file.tenants {
        if let Some(rate) = state.runner.tenant_rate(&t.tenant) {
            metrics::gauge!("trackshift_tenant_rate_bytes_per_second", "tenant" => t.tenant.clone())
                .set(rate as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Query of `/reports/kpi`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiParams {
    /// Window in seconds (default 3600, at most 30 days).
    pub window: Option<u64>,
}

/// `/reports/kpi`: the calling tenant's figures over a window.
async fn kpi(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    query: Result<Query<KpiParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(p) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let window = p.window.unwrap_or(3600);
    if !(1..=30 * 86_400).contains(&window) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("window: {window} is not between 1 and 2592000 seconds"),
        ));
    }
    let since = now_ms() - i64::try_from(window * 1000).unwrap_or(i64::MAX / 2);
    let counts = state.store.counts().await?;
    let ended = state.store.kpi(since).await?;
    let mine = ended.get(&tenant.tenant).cloned().unwrap_or_default();
    let by_state: serde_json::Map<String, serde_json::Value> = JobState::ALL
        .iter()
        .map(|&s| {
            (
                s.as_str().to_string(),
                count_of(&counts, &tenant.tenant, s).into(),
            )
        })
        .collect();
    let p95 = state.runner.latencies.quantile(&tenant.tenant, since, 0.95);
    Ok(Json(serde_json::json!({
        "tenant": tenant.tenant,
        "window_seconds": window,
        "jobs_by_state": by_state,
        "completed": mine.completed,
        "failed": mine.failed,
        "cancelled": mine.cancelled,
        "bytes": mine.bytes,
        "throughput_bytes_per_second": mine.throughput_bytes_per_second(),
        "failure_rate": mine.failure_rate().unwrap_or(0.0),
        "p95_chunk_latency_ms": p95.map(|(d, _)| d.as_secs_f64() * 1000.0),
        "latency_samples": p95.map_or(0, |(_, n)| n),
    })))
}

/// `/dashboard`: a small self-refreshing page for operators: jobs per tenant and state,
/// the last hour's completions, bytes, throughput, failure rate and p95 chunk latency,
/// and this gateway's running jobs and ledger size. Counts only, no job details. Operators
/// only (it names every tenant).
async fn dashboard(State(state): State<AppState>, _: Operator) -> Result<Response, ApiError> {
    use std::fmt::Write as _;
    let since = now_ms() - 3_600_000;
    let counts = state.store.counts().await?;
    let ended = state.store.kpi(since).await?;
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>trackshift</title><style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}\
         th:first-child,td:first-child{text-align:left}</style></head><body><h1>trackshift gateway</h1>",
    );
    let _ = write!(
        html,
        "<p>running here: {} jobs &middot; ledger: {} entries &middot; tenants: {}</p>\
         <h2>Jobs by state</h2><table><tr><th>tenant</th>",
        state.runner.running(),
        state.ledger.size(),
        state.tenants.current().file.tenants.len()
    );
    for st in JobState::ALL {
        let _ = write!(html, "<th>{st}</th>");
    }
    html.push_str("</tr>");
    for t in &state.tenants.current().file.tenants {
        let _ = write!(html, "<tr><td>{}</td>", t.tenant);
        for st in JobState::ALL {
            let _ = write!(html, "<td>{}</td>", count_of(&counts, &t.tenant, st));
        }
        html.push_str("</tr>");
    }
    html.push_str(
        "</table><h2>Last hour</h2><table><tr><th>tenant</th><th>completed</th><th>failed</th>\
         <th>cancelled</th><th>GiB</th><th>MiB/s per job</th><th>failure rate</th><th>p95 chunk latency</th></tr>",
    );
    for t in &state.tenants.current().file.tenants {
        let k = ended.get(&t.tenant).cloned().unwrap_or_default();
        let rate = k.throughput_bytes_per_second() / f64::from(1u32 << 20);
        let failure = k
            .failure_rate()
            .map_or_else(|| "-".into(), |r| format!("{:.1} %", r * 100.0));
        let p95 = state
            .runner
            .latencies
            .quantile(&t.tenant, since, 0.95)
            .map_or_else(
                || "-".into(),
                |(d, _)| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
            );
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{rate:.1}</td><td>{failure}</td><td>{p95}</td></tr>",
            t.tenant,
            k.completed,
            k.failed,
            k.cancelled,
            k.bytes as f64 / f64::from(1u32 << 30)
        );
    }
    html.push_str("</table><p><a href=\"/metrics\">/metrics</a> &middot; <a href=\"/ready\">/ready</a> &middot; <a href=\"/v1/openapi.json\">API</a></p></body></html>\n");
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn report() -> ReadyReport {
        ReadyReport {
            store: Ok(()),
            ledger: Ok(()),
            checked: 0,
            failing: vec![],
        }
    }

    #[tokio::test]
    async fn a_flood_of_ready_requests_runs_one_check_per_window() {
        let readiness = Arc::new(Readiness::default());
        let checks = Arc::new(AtomicUsize::new(0));
        let ask = || {
            let (readiness, checks) = (readiness.clone(), checks.clone());
            async move {
                readiness
                    .get(Duration::from_secs(60), || async move {
                        checks.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        report()
                    })
                    .await
            }
        };
        let all = futures::future::join_all((0..200).map(|_| tokio::spawn(ask()))).await;
        assert!(all.into_iter().all(|r| r.unwrap().ok()));
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        // Once the window has passed, the next request checks again.
        let fresh = Readiness::default();
        fresh.get(Duration::ZERO, || async { report() }).await;
        let again = AtomicUsize::new(0);
        fresh
            .get(Duration::ZERO, || async {
                again.fetch_add(1, Ordering::SeqCst);
                report()
            })
            .await;
        assert_eq!(again.load(Ordering::SeqCst), 1);
    }
}
