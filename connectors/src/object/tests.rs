//! Unit tests of `object`.

use super::*;

#[test]
fn client_errors_are_permanent_and_throttling_and_server_errors_are_not() {
    let msg = |code: &str| {
        format!(
            "Error performing GET http://x in 1ms - Server returned non-2xx status code: {code}: body"
        )
    };
    for code in ["400 Bad Request", "403 Forbidden", "404 Not Found"] {
        assert!(is_permanent_http(&msg(code)), "{code}");
    }
    for code in [
        "408 Request Timeout",
        "429 Too Many Requests",
        "500 Internal",
        "503 Slow Down",
    ] {
        assert!(!is_permanent_http(&msg(code)), "{code}");
    }
    assert!(!is_permanent_http("connection reset by peer"));
}

#[test]
fn requests_that_never_left_are_permanent_and_network_failures_are_not() {
    use object_store::client::{HttpError, HttpErrorKind};
    let err = |kind| object_store::Error::Generic {
        store: "S3",
        source: Box::new(HttpError::new(kind, std::io::Error::other("builder error"))),
    };
    let transient = |kind| match remote("s3://b", "writing to", &err(kind)) {
        ConnectorError::Remote { transient, .. } => transient,
        other => panic!("{other:?}"),
    };
    assert!(!transient(HttpErrorKind::Unknown));
    for kind in [
        HttpErrorKind::Connect,
        HttpErrorKind::Request,
        HttpErrorKind::Timeout,
        HttpErrorKind::Interrupted,
        HttpErrorKind::Decode,
    ] {
        assert!(transient(kind), "{kind:?}");
    }
}

/// A connector for `uri` with `extra` settings and nothing from the environment.
fn build(uri: &str, extra: &[(&str, &str)]) -> Result<ObjectStoreConnector, ConnectorError> {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let none = crate::Settings::Tenant(Default::default());
    ObjectStoreConnector::build(uri, VerifyMode::Size, &extra, &none)
}

#[test]
fn a_plain_http_endpoint_needs_allow_http() {
    let Err(err) = build("s3://b?endpoint=http://127.0.0.1:9&region=r", &[]) else {
        panic!("plain HTTP accepted");
    };
    assert!(
        matches!(&err, ConnectorError::InvalidUri(m) if m.contains("AWS_ALLOW_HTTP")),
        "{err}"
    );
    build(
        "s3://b?endpoint=http://127.0.0.1:9&region=r&allow_http=true",
        &[],
    )
    .unwrap();
    build("s3://b?endpoint=https://127.0.0.1:9&region=r", &[]).unwrap();
    let acct = [("azure_storage_account_name", "acct")];
    let Err(err) = build("az://c?endpoint=http://127.0.0.1:9/acct", &acct) else {
        panic!("plain HTTP accepted");
    };
    assert!(
        matches!(&err, ConnectorError::InvalidUri(m) if m.contains("AZURE_ALLOW_HTTP")),
        "{err}"
    );
    build(
        "az://c?endpoint=http://127.0.0.1:9/acct&allow_http=1",
        &acct,
    )
    .unwrap();
    build("az://c?use_emulator=true", &[]).unwrap();
}

#[test]
fn s3_payloads_are_signed_only_where_tls_does_not_protect_them() {
    let signs = |uri: &str, extra: &[(&str, &str)]| build(uri, extra).unwrap().signs_payload();
    assert!(!signs("s3://b", &[]), "AWS itself: HTTPS");
    assert!(!signs("s3://b?endpoint=https://minio.example:9000", &[]));
    assert!(signs(
        "s3://b?endpoint=http://127.0.0.1:9&allow_http=true",
        &[]
    ));
    // An explicit choice wins either way.
    assert!(signs("s3://b", &[("aws_unsigned_payload", "false")]));
    assert!(!signs(
        "s3://b?endpoint=http://127.0.0.1:9&allow_http=true",
        &[("unsigned_payload", "true")]
    ));
    let env = crate::Settings::Tenant(Arc::new(
        [("AWS_UNSIGNED_PAYLOAD".to_string(), "false".to_string())].into(),
    ));
    let c = ObjectStoreConnector::build("s3://b", VerifyMode::Size, &[], &env).unwrap();
    assert!(c.signs_payload());
}

#[test]
fn scrub_removes_signed_query_strings() {
    let s = scrub("GET http://h/o?X-Amz-Signature=abc&X-Amz-Credential=k failed");
    assert!(!s.contains("abc") && !s.contains("=k"), "{s}");
    assert!(scrub("GET http://h/o?sv=1&sig=SECRET failed").contains("[redacted]"));
}

#[test]
fn min_chunk_sizes_follow_the_services_limits() {
    let s3 = ObjectStoreConnector::from_uri("s3://b", VerifyMode::Size).unwrap();
    assert_eq!(s3.min_chunk_size(1 << 30), 8 << 20);
    // 10,000 parts of 8 MiB cover 78 GiB; more needs larger chunks.
    assert_eq!(s3.min_chunk_size(100 << 30), 16 << 20);
    let az = ObjectStoreConnector::with_settings(
        "az://c",
        VerifyMode::Size,
        &[("azure_storage_account_name".into(), "acct".into())],
    )
    .unwrap();
    assert_eq!(az.min_chunk_size(1 << 30), 32 << 10);
}
