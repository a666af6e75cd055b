//! TLS to PostgreSQL as libpq's `sslmode` asks, against the real test server
//! (`scripts/test-servers.sh start postgres` offers TLS with a certificate from a test CA).

use trackshift_net::pgconn;

fn server() -> (String, String) {
    let url = std::env::var("TRACKSHIFT_TEST_POSTGRES").expect(
        "TRACKSHIFT_TEST_POSTGRES is not set: start the server with `scripts/test-servers.sh start postgres` \
         and source `scripts/test-servers.sh env` (scripts/test.sh does both)",
    );
    let ca = std::env::var("TRACKSHIFT_TEST_POSTGRES_CA")
        .expect("TRACKSHIFT_TEST_POSTGRES_CA is not set: source `scripts/test-servers.sh env`");
    (url, ca)
}

/// Whether the server sees this connection as TLS, or why there is no connection.
async fn tls_in_use(url: &str) -> Result<bool, String> {
    let pool = pgconn::pool(url, 2).map_err(|e| e.to_string())?;
    let client = pool.get().await.map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn connections_use_tls_as_sslmode_asks() {
    let (url, ca) = server();
    assert!(!tls_in_use(&format!("{url}?sslmode=disable")).await.unwrap());
    // libpq's default: TLS when the server offers it, certificate unchecked.
    assert!(tls_in_use(&url).await.unwrap());
    assert!(tls_in_use(&format!("{url}?sslmode=require")).await.unwrap());
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    assert!(tls_in_use(&verified).await.unwrap());
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_is_refused() {
    let (url, _) = server();
    // The system's roots do not know the test CA.
    let err = tls_in_use(&format!("{url}?sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
    // Another CA: refused even in `require` once a root is named (libpq's rule).
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["other-ca".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(&other, cert.pem()).unwrap();
    for mode in ["verify-full", "verify-ca", "require"] {
        let err = tls_in_use(&format!(
            "{url}?sslmode={mode}&sslrootcert={}",
            other.display()
        ))
        .await
        .unwrap_err();
        assert!(
            err.contains("certificate") || err.contains("Certificate"),
            "{mode}: {err}"
        );
    }
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let (url, ca) = server();
    // The server's certificate names 127.0.0.1 and localhost; reach the same server under
    // another name (`hostaddr` says where to connect, `host` what to expect).
    let elsewhere = url.replacen("@127.0.0.1:", "@db.invalid:", 1);
    assert_ne!(elsewhere, url);
    let under =
        |mode: &str| format!("{elsewhere}?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}");
    let err = tls_in_use(&under("verify-full")).await.unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");
    assert!(tls_in_use(&under("verify-ca")).await.unwrap());
    // libpq: with a named root, `require` checks the chain as `verify-ca` does.
    assert!(tls_in_use(&under("require")).await.unwrap());
}
