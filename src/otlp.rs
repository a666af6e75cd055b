//! OTLP export of the gateway's spans (`serve --otlp-endpoint URL`): the HTTP API's request
//! spans and the job service's job spans go to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf), batched on the SDK's own thread. A job submitted with a W3C `traceparent`
//! runs in a span whose parent is the caller's span, so it shows in the caller's trace.

use anyhow::{Context as _, Result, bail};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use trackshift_engine::jobs::Job;
use trackshift_engine::trace::TraceParent;

/// The exporter's endpoint: an `http` or `https` URL; with no path, the OTLP/HTTP traces
/// path `/v1/traces` is added (as `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
pub fn endpoint(url: &str) -> Result<String> {
    let mut u = reqwest::Url::parse(url).context("--otlp-endpoint is not a URL")?;
    if !matches!(u.scheme(), "http" | "https") {
        bail!(
            "--otlp-endpoint: OTLP/HTTP needs an http or https URL, not {}",
            u.scheme()
        );
    }
    if u.path() == "/" || u.path().is_empty() {
        u.set_path("/v1/traces");
    }
    Ok(u.to_string())
}

/// The collector's address for logs: scheme, host and port only (a URL may carry a
/// password).
pub fn shown(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "?".into())
}

/// The tracer provider exporting to `url` (to be shut down at exit, which flushes it).
pub fn provider(url: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint(url)?)
        .build()
        .context("the OTLP exporter")?;
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("trackshift-gateway")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build())
}

/// The tracing layer that turns spans into OTLP spans through `provider`.
pub fn layer<S>(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("trackshift"))
}

/// The OpenTelemetry context of a caller's `traceparent` (a remote parent).
pub fn parent_of(t: &TraceParent) -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(t.trace_id_bytes()),
        SpanId::from_bytes(t.parent_id_bytes()),
        TraceFlags::new(t.flags()),
        true,
        TraceState::default(),
    ))
}

/// Makes `span` a child of the caller's span, when there is a caller's trace.
pub fn adopt(span: &tracing::Span, t: Option<TraceParent>) {
    if let Some(t) = t {
        // Fails only when the span has no OpenTelemetry data (no exporter): nothing to do.
        let _ = span.set_parent(parent_of(&t));
    }
}

/// The job service's job span, in the job's trace when it has one.
pub fn job_span(job: &Job) -> tracing::Span {
    let span = trackshift_engine::jobs::runner::job_span(job);
    adopt(&span, job.traceparent);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_a_path_gets_the_traces_path_and_logs_show_no_password() {
        assert_eq!(
            endpoint("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            endpoint("https://c.example/otlp/v1/traces").unwrap(),
            "https://c.example/otlp/v1/traces"
        );
        assert!(endpoint("grpc://c.example:4317").is_err());
        assert!(endpoint("c.example:4318").is_err());
        assert_eq!(
            shown("https://user:secret@c.example:4318/v1/traces"),
            "https://c.example:4318"
        );
    }
}
