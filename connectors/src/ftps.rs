//! `ftps://USER@HOST[:PORT]/DIR`: FTP with explicit TLS (`AUTH TLS`, then `PROT P` for every
//! data connection), passive mode, through suppaftp on tokio with rustls (aws-lc-rs).
//!
//! The password comes from `TRACKSHIFT_FTPS_PASSWORD` (never from the URI). The server
//! certificate is verified against `ca=PATH` (PEM) or `TRACKSHIFT_FTPS_CA`, else the system's
//! roots; the name checked is the URI's host (`server_name=NAME` overrides it).
//!
//! Objects are written to a temporary name beside their final name
//! ([`ObjectSpec::temp_name`]), each chunk in its
//! own `REST offset` + `STOR` transfer, several at once over a small pool of logged-in
//! control connections. FTP truncates a file stored at offset 0, so the first chunk must be
//! stored before any other: chunks that arrive before it are held in memory and stored right
//! after it, and `sync` waits for them (a bounded time); a state file remembers that the
//! first chunk is on the server, so a resumed job never stores at offset 0 again. Commit
//! checks the size (`SIZE`) and renames into place (`RNFR`/`RNTO`); strict mode reads the
//! file back (`RETR`) and hashes it with BLAKE3.
//!
//! Without `overwrite=true` an existing object is refused at open and again right before
//! the rename, on the connection that renames. FTP has no rename that refuses an existing
//! target (vsftpd's `RNTO` replaces one), so an object that appears within that last
//! exchange (between `SIZE` and `RNTO`, one round trip) can still be replaced: the one
//! remaining window on this connector. [`ObjectWriter::remove`] deletes (`DELE`) an
//! object this writer committed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Status};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use tokio::sync::{Mutex, Semaphore, watch};

use crate::{
    Confirmation, Connector, ConnectorError, ObjectSpec, ObjectWriter, ServerUri, VerifyMode,
    check_object_path,
};

/// Control connections per connector (each carries one transfer at a time).
const POOL: usize = 4;
/// Bound on one short FTP exchange (SIZE, MKD, RNFR/RNTO, NOOP, log-in).
const EXCHANGE: Duration = Duration::from_secs(30);

/// Bounds one FTP exchange: a stuck server or connection becomes a transient error (the
/// connection is dropped with its lease) instead of a job that never ends.
async fn bounded<T>(
    uri: &str,
    op: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, ConnectorError>>,
) -> Result<T, ConnectorError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(ConnectorError::Remote {
            destination: uri.to_string(),
            op,
            transient: true,
            reason: format!("no answer within {limit:?}"),
        })
    })
}

/// How long `sync` waits for the first chunk when later ones are held for it.
const FIRST_CHUNK_WAIT: Duration = Duration::from_secs(120);

/// An FTPS destination.
pub struct FtpsConnector {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    /// `overwrite=true`: a job may replace an object it did not create.
    overwrite: bool,
    addr: String,
    server_name: String,
    user: String,
    password: String,
    root: String,
    tls: Arc<rustls::ClientConfig>,
    verify: VerifyMode,
    idle: std::sync::Mutex<Vec<AsyncRustlsFtpStream>>,
    slots: Semaphore,
}

impl std::fmt::Debug for FtpsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpsConnector")
            .field("uri", &self.inner.uri)
            .field("verify", &self.inner.verify)
            .finish_non_exhaustive()
    }
}

fn ftp_err(uri: &str, op: &'static str, e: &FtpError) -> ConnectorError {
    let transient = match e {
        FtpError::ConnectionError(_) | FtpError::DataConnectionAlreadyOpen => true,
        // 4xx replies are transient by the FTP standard; 5xx are permanent.
        FtpError::UnexpectedResponse(r) => (400..500).contains(&(r.status as u32)),
        _ => false,
    };
    ConnectorError::Remote {
        destination: uri.to_string(),
        op,
        transient,
        reason: e.to_string(),
    }
}

fn is_missing(e: &FtpError) -> bool {
    matches!(e, FtpError::UnexpectedResponse(r) if r.status == Status::FileUnavailable)
}

fn load_roots(ca: Option<PathBuf>) -> Result<rustls::RootCertStore, ConnectorError> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path).map_err(|e| {
                ConnectorError::InvalidUri(format!("CA file {}: {e}", path.display()))
            })?;
            for c in certs {
                let c = c.map_err(|e| {
                    ConnectorError::InvalidUri(format!("CA file {}: {e}", path.display()))
                })?;
                roots.add(c).map_err(|e| {
                    ConnectorError::InvalidUri(format!("CA file {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err(ConnectorError::InvalidUri(
            "no trusted certificate authorities (give ca=PATH)".into(),
        ));
    }
    Ok(roots)
}

impl FtpsConnector {
    /// Parses and validates `uri` (no connection is made: see [`Connector::check`]). The
    /// password comes from `TRACKSHIFT_FTPS_PASSWORD`.
    pub fn from_uri(uri: &str, verify: VerifyMode) -> Result<Self, ConnectorError> {
        let password = std::env::var("TRACKSHIFT_FTPS_PASSWORD").unwrap_or_default();
        Self::with_password(uri, verify, &password)
    }

    /// As [`FtpsConnector::from_uri`] with an explicit password (for example from a
    /// tenant's credentials file). It is never logged.
    pub fn with_password(
        uri: &str,
        verify: VerifyMode,
        password: &str,
    ) -> Result<Self, ConnectorError> {
        Self::build(uri, verify, password, &crate::Settings::Process)
    }

    /// As [`FtpsConnector::with_password`], with `TRACKSHIFT_FTPS_CA` read from
    /// `settings`.
    pub fn build(
        uri: &str,
        verify: VerifyMode,
        password: &str,
        settings: &crate::Settings,
    ) -> Result<Self, ConnectorError> {
        Self::from_destination(&crate::Destination::parse(uri)?, verify, password, settings)
    }

    /// As [`FtpsConnector::build`], from a parsed destination.
    pub fn from_destination(
        dest: &crate::Destination,
        verify: VerifyMode,
        password: &str,
        settings: &crate::Settings,
    ) -> Result<Self, ConnectorError> {
        if dest.scheme() != crate::Scheme::Ftps {
            return Err(ConnectorError::InvalidUri(format!(
                "not an ftps URI: {}",
                dest.scheme().as_str()
            )));
        }
        let invalid = |m: String| ConnectorError::InvalidUri(m);
        let ServerUri {
            user,
            host,
            port,
            dir: root,
            query,
        } = crate::ServerUri::of(dest)?;
        let (mut ca, mut server_name) = (None, None);
        for (k, v) in query {
            match k.as_str() {
                "ca" => ca = Some(PathBuf::from(v)),
                "server_name" => server_name = Some(v),
                other => {
                    return Err(invalid(format!(
                        "unknown setting {other:?} (allowed: ca, server_name)"
                    )));
                }
            }
        }
        let ca = ca.or_else(|| settings.var("TRACKSHIFT_FTPS_CA").map(PathBuf::from));
        let roots = load_roots(ca)?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            inner: Arc::new(Inner {
                uri: dest.to_string(),
                overwrite: dest.overwrite(),
                addr: format!("{host}:{port}"),
                server_name: server_name.unwrap_or(host),
                user,
                password: password.to_string(),
                root: format!("/{root}"),
                tls: Arc::new(tls),
                verify,
                idle: std::sync::Mutex::new(Vec::new()),
                slots: Semaphore::new(POOL),
            }),
        })
    }
}

mod session;
mod writer;

use session::*;
use writer::*;

#[async_trait]
impl Connector for FtpsConnector {
    fn uri(&self) -> &str {
        &self.inner.uri
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        let inner = &self.inner;
        bounded(
            &inner.uri,
            "checking",
            EXCHANGE,
            inner.make_dirs(&inner.root),
        )
        .await
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        check_object_path(path)?;
        self.inner.size_of(&self.inner.full(path)).await
    }

    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        check_object_path(path)?;
        self.inner.hash_remote(&self.inner.full(path)).await
    }

    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        check_object_path(&spec.path)?;
        check_object_path(&spec.job_id)?;
        let inner = &self.inner;
        let full = inner.full(&spec.path);
        let (dir, _) = full.rsplit_once('/').expect("full paths have a slash");
        let temp = format!("{dir}/{}", spec.temp_name());
        bounded(
            &inner.uri,
            "creating a directory on",
            EXCHANGE,
            inner.make_dirs(dir),
        )
        .await?;
        let mut committed = false;
        let mut first_done = false;
        if resume {
            let temp_size = inner.size_of(&temp).await?;
            if temp_size.is_none() && inner.size_of(&full).await? == Some(spec.size) {
                committed = true;
            } else if temp_size.is_some() {
                first_done = match &spec.state_file {
                    Some(p) => tokio::fs::read(p)
                        .await
                        .is_ok_and(|b| b == b"first-chunk-written\n"),
                    None => false,
                };
            }
        }
        if !committed && !inner.overwrite && inner.size_of(&full).await?.is_some() {
            return Err(ConnectorError::Exists(spec.path.clone()));
        }
        let (tx, _) = watch::channel(Held {
            first_done,
            ..Held::default()
        });
        Ok(Arc::new(FtpsWriter {
            inner: inner.clone(),
            spec: spec.clone(),
            full,
            temp,
            held: tx,
            committed: Mutex::new(committed),
        }))
    }
}
