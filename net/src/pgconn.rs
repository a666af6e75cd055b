//! Connections to PostgreSQL, shared by the PostgreSQL ledger and the job store: one URL
//! grammar and one pool builder.
//!
//! URLs are tokio-postgres's (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?...]`) plus
//! libpq's TLS settings in the query, with libpq's meaning:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | chain checked only if `sslrootcert` is given |
//! | `require` | always | chain checked only if `sslrootcert` is given |
//! | `verify-ca` | always | chain checked against `sslrootcert` (a PEM file) or the system's roots |
//! | `verify-full` | always | chain and host name checked |
//!
//! Without verification, TLS keeps passive listeners out but not an active impostor; a
//! chain without the host name, not one who holds another certificate from the same CA:
//! use `verify-full` across networks you do not control.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerified;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::verify::{CertPolicy, PolicyVerifier, Versions};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it.
    Prefer,
    /// TLS or nothing.
    Require,
    /// TLS with a certificate that chains to a trusted root (any host name).
    VerifyCa,
    /// TLS with a verified certificate and host name.
    VerifyFull,
}

impl SslMode {
    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Why a PostgreSQL URL could not become a connection pool. Messages never carry the URL
/// (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum PgConnectError {
    /// The URL did not parse or names an unknown setting or value.
    #[error("PostgreSQL URL: {0}")]
    Url(String),
    /// The `sslrootcert` file could not be read or holds no usable certificate.
    #[error("PostgreSQL sslrootcert {path}: {reason}")]
    RootCert {
        /// The file named in the URL.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The pool could not be built.
    #[error("PostgreSQL pool: {0}")]
    Pool(String),
}

/// A parsed PostgreSQL URL: tokio-postgres's settings and the TLS ones it leaves to us.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// Everything but the TLS settings.
    pub config: tokio_postgres::Config,
    /// How TLS is used.
    pub mode: SslMode,
    /// The CA certificates (PEM) that verify the server, if given.
    pub root_cert: Option<PathBuf>,
}

/// Parses `url`. `sslmode` and `sslrootcert` are read from a URL's query; a `key=value`
/// connection string goes to tokio-postgres as it is (`disable`, `prefer` or `require`).
pub fn parse(url: &str) -> Result<PgTarget, PgConnectError> {
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut rest = url.to_string();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if let (true, Some((base, query))) = (is_url, url.split_once('?')) {
        let mut kept = Vec::new();
        for segment in query.split('&').filter(|s| !s.is_empty()) {
            let (raw_key, raw_value) = segment.split_once('=').unwrap_or((segment, ""));
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    PgConnectError::Url(format!("bad percent-encoding in {raw_key:?}"))
                })
            };
            match decode(raw_key)?.as_str() {
                "sslmode" => {
                    mode = match decode(raw_value)?.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(PgConnectError::Url(format!(
                                "sslmode {other:?} is not one of disable, prefer, require, \
                                 verify-ca, verify-full"
                            )));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(decode(raw_value)?)),
                _ => kept.push(segment),
            }
        }
        rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
    }
    // tokio-postgres's own messages name the option, never its value.
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| PgConnectError::Url(e.to_string()))?;
    if is_url {
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
    } else {
        mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
    }
    Ok(PgTarget {
        config,
        mode,
        root_cert,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The TLS client configuration `target` asks for.
pub fn tls_config(target: &PgTarget) -> Result<rustls::ClientConfig, PgConnectError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgConnectError::Pool(format!("TLS: {e}")))?;
    let verify = target.mode.verifies() || target.root_cert.is_some();
    let config = if verify {
        let mut roots = rustls::RootCertStore::empty();
        match &target.root_cert {
            Some(path) => {
                use rustls::pki_types::pem::PemObject as _;
                let bad = |reason: String| PgConnectError::RootCert {
                    path: path.clone(),
                    reason,
                };
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                    roots
                        .add(cert.map_err(|e| bad(e.to_string()))?)
                        .map_err(|e| bad(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(bad("no certificate in it".into()));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(PgConnectError::Url(
                        "sslmode verify-* needs sslrootcert=PATH: the system has no trusted \
                         certificate authorities"
                            .into(),
                    ));
                }
            }
        }
        if target.mode == SslMode::VerifyFull {
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            // libpq: `verify-ca` (and a named root under `prefer`/`require`) checks the
            // chain but not the host name.
            let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| PgConnectError::Pool(format!("TLS: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PolicyVerifier::new(
                    Lenient { chain: Some(chain) },
                    provider.clone(),
                    Versions::Tls12And13,
                )))
                .with_no_client_auth()
        }
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PolicyVerifier::new(
                Lenient { chain: None },
                provider,
                Versions::Tls12And13,
            )))
            .with_no_client_auth()
    };
    Ok(config)
}

/// libpq's checks short of `verify-full`. With `chain`, the certificate must chain to a
/// trusted root whatever host name it names (`verify-ca`, or a named root under
/// `prefer`/`require`; the chain is checked before the name, so only a name mismatch is
/// forgiven). Without, any certificate is taken (`prefer`/`require` alone). Either way the
/// handshake's signatures are checked, so the session is bound to the certificate's key.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl CertPolicy for Lenient {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        use rustls::client::danger::ServerCertVerifier as _;
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
}

/// A pool of at most `max_size` connections to `url` (TLS as the URL asks). No connection
/// is made until one is taken from the pool.
pub fn pool(url: &str, max_size: usize) -> Result<deadpool_postgres::Pool, PgConnectError> {
    let target = parse(url)?;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&target)?);
    let manager = deadpool_postgres::Manager::from_config(
        target.config,
        tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_size.max(2))
        .build()
        .map_err(|e| PgConnectError::Pool(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_from_the_query_and_the_rest_is_kept() {
        let t = parse(
            "postgres://u:secret@db.example:5433/jobs?sslmode=verify-full&application_name=a%20b&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(
            t.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(t.config.get_application_name(), Some("a b"));
        assert_eq!(t.config.get_dbname(), Some("jobs"));
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let t = parse("postgres://u@h/db").unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        assert!(t.root_cert.is_none());
        let t = parse("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let t = parse("host=h user=u sslmode=require").unwrap();
        assert_eq!(t.mode, SslMode::Require);
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        for url in [
            "postgres://u:hunter2@h/db?sslmode=maybe",
            "postgres://u:hunter2@h/db?bogus=1",
            "postgres://u:hunter2@h/db?sslrootcert=%zz",
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.starts_with("PostgreSQL URL"), "{e}");
        }
    }

    #[test]
    fn a_missing_or_empty_root_file_is_named() {
        let dir = std::env::temp_dir().join(format!("pgconn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        for path in [dir.join("missing.pem"), empty] {
            let url = format!(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert={}",
                path.display()
            );
            let e = pool(&url, 2).unwrap_err();
            assert!(
                matches!(&e, PgConnectError::RootCert { path: p, .. } if *p == path),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
