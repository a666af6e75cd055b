//! What the remote service said: errors with signed URLs scrubbed, sorted into permanent
//! and transient, and the refusal of plain HTTP endpoints.

use super::*;

/// Removes anything that looks like a signed query string from a message.
pub(super) fn scrub(message: &str) -> String {
    message
        .split_whitespace()
        .map(|w| {
            if w.contains("sig=") || w.contains("X-Amz-Signature") || w.contains("X-Amz-Credential")
            {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether requests go over HTTPS: an `https://` endpoint, or none (the service's own).
pub(super) fn is_https_or_default(endpoint: Option<String>) -> bool {
    endpoint.is_none_or(|e| e.to_ascii_lowercase().starts_with("https://"))
}

/// A configuration flag as object_store reads one (`true`, `1`, `yes`, `on`, `y`).
pub(super) fn truthy(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "true" | "on" | "yes" | "y"
        )
    })
}

/// Refuses a plain-HTTP endpoint unless plain HTTP was allowed: the HTTP client would
/// refuse every request later with only "builder error" to say why.
pub(super) fn refuse_plain_http(
    endpoint: Option<String>,
    allow_http: Option<String>,
    how: &str,
) -> Result<(), ConnectorError> {
    match endpoint {
        Some(e) if e.to_ascii_lowercase().starts_with("http://") && !truthy(allow_http) => {
            Err(ConnectorError::InvalidUri(format!(
                "the endpoint {e} is plain HTTP, which is refused unless allowed ({how})"
            )))
        }
        _ => Ok(()),
    }
}

/// What object_store's HTTP layer says about a failure that carries no status code:
/// `Some(false)` for a request that failed for no network reason (one that could not be
/// built, say; object_store does not retry those), `Some(true)` for the rest (connect,
/// request, timeout, interrupted, and a body that broke off mid-read, which reqwest calls
/// a decoding error), `None` if the error is not an HTTP one.
pub(super) fn http_transient(e: &object_store::Error) -> Option<bool> {
    use object_store::client::{HttpError, HttpErrorKind as K};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(http) = err.downcast_ref::<HttpError>() {
            return Some(!matches!(http.kind(), K::Unknown));
        }
        source = err.source();
    }
    None
}

/// Maps an object_store error to a connector error naming the destination and operation.
pub(super) fn remote(uri: &str, op: &'static str, e: &object_store::Error) -> ConnectorError {
    use object_store::Error as E;
    let transient = match e {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. }
        | E::InvalidPath { .. } => false,
        // Anything else went through object_store's retries (timeouts, 5xx, throttling,
        // connection resets) and may succeed later, unless the server refused it (4xx) or
        // the request never left (object_store does not retry those either).
        _ => !is_permanent_http(&e.to_string()) && http_transient(e) != Some(false),
    };
    ConnectorError::Remote {
        destination: uri.to_string(),
        op,
        transient,
        reason: scrub(&e.to_string()),
    }
}

/// Client errors that retrying cannot fix (bad credentials, missing bucket, refused): any
/// 4xx answer but 408 (timeout) and 429 (throttling).
pub(super) fn is_permanent_http(message: &str) -> bool {
    let status = message
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok());
    matches!(status, Some(code) if (400..500).contains(&code) && code != 408 && code != 429)
}
