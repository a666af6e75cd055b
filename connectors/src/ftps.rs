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

/// A control connection borrowed from the pool; returned to it when dropped healthy.
struct Lease<'a> {
    inner: &'a Inner,
    ftp: Option<AsyncRustlsFtpStream>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn ftp(&mut self) -> &mut AsyncRustlsFtpStream {
        self.ftp.as_mut().expect("leased connection")
    }

    /// Keeps the connection for reuse (call only after a successful exchange).
    fn release(mut self) {
        if let Some(f) = self.ftp.take() {
            self.inner.idle.lock().expect("pool lock").push(f);
        }
    }
}

impl Inner {
    fn remote(&self, op: &'static str, e: &FtpError) -> ConnectorError {
        ftp_err(&self.uri, op, e)
    }

    async fn lease(&self) -> Result<Lease<'_>, ConnectorError> {
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| ConnectorError::Unavailable("connector closed".into()))?;
        // An idle connection may have died with the server: probe it before use.
        let mut ftp = None;
        loop {
            let idle = self.idle.lock().expect("pool lock").pop();
            match idle {
                Some(mut f) => {
                    if matches!(
                        tokio::time::timeout(Duration::from_secs(5), f.noop()).await,
                        Ok(Ok(()))
                    ) {
                        ftp = Some(f);
                        break;
                    }
                }
                None => break,
            }
        }
        let ftp = match ftp {
            Some(f) => f,
            None => bounded(&self.uri, "connecting to", EXCHANGE, self.connect()).await?,
        };
        Ok(Lease {
            inner: self,
            ftp: Some(ftp),
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<AsyncRustlsFtpStream, ConnectorError> {
        let op = "connecting to";
        let plain = tokio::time::timeout(
            Duration::from_secs(10),
            AsyncRustlsFtpStream::connect(self.addr.as_str()),
        )
        .await
        .map_err(|_| ConnectorError::Remote {
            destination: self.uri.clone(),
            op,
            transient: true,
            reason: "timed out".into(),
        })?
        .map_err(|e| self.remote(op, &e))?;
        let connector = AsyncRustlsConnector::from(suppaftp::tokio_rustls::TlsConnector::from(
            self.tls.clone(),
        ));
        let mut ftp = plain
            .into_secure(connector, &self.server_name)
            .await
            .map_err(|e| ConnectorError::Remote {
                destination: self.uri.clone(),
                op: "starting TLS with",
                // A certificate that does not verify will not start verifying.
                transient: false,
                reason: e.to_string(),
            })?;
        ftp.login(self.user.as_str(), self.password.as_str())
            .await
            .map_err(|e| match e {
                FtpError::UnexpectedResponse(ref r) if r.status == Status::NotLoggedIn => {
                    ConnectorError::Remote {
                        destination: self.uri.clone(),
                        op: "logging in to",
                        transient: false,
                        reason: format!("the server refused user {:?}", self.user),
                    }
                }
                e => self.remote("logging in to", &e),
            })?;
        ftp.transfer_type(FileType::Binary)
            .await
            .map_err(|e| self.remote("setting binary mode on", &e))?;
        Ok(ftp)
    }

    fn full(&self, path: &str) -> String {
        if self.root == "/" {
            format!("/{path}")
        } else {
            format!("{}/{path}", self.root)
        }
    }

    async fn size_of(&self, full: &str) -> Result<Option<u64>, ConnectorError> {
        crate::retry::transient(&self.uri, "checking", || {
            bounded(&self.uri, "checking", EXCHANGE, self.size_of_once(full))
        })
        .await
    }

    async fn size_of_once(&self, full: &str) -> Result<Option<u64>, ConnectorError> {
        let mut l = self.lease().await?;
        let r = l.ftp().size(full).await;
        match r {
            Ok(n) => {
                l.release();
                Ok(Some(n as u64))
            }
            Err(e) if is_missing(&e) => {
                l.release();
                Ok(None)
            }
            Err(e) => Err(self.remote("checking", &e)),
        }
    }

    /// Creates directory `dir` and its missing ancestors.
    async fn make_dirs(&self, dir: &str) -> Result<(), ConnectorError> {
        let mut l = self.lease().await?;
        let mut path = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            if l.ftp().cwd(path.as_str()).await.is_err()
                && let Err(e) = l.ftp().mkdir(path.as_str()).await
                && l.ftp().cwd(path.as_str()).await.is_err()
            {
                return Err(self.remote("creating a directory on", &e));
            }
        }
        l.release();
        Ok(())
    }

    /// Stores `data` at `offset` of `full` in one transfer (`REST` then `STOR`), retrying
    /// transient failures on a fresh connection.
    async fn store_at(&self, full: &str, offset: u64, data: &[u8]) -> Result<(), ConnectorError> {
        // Generous: 30 s plus a second per MiB (a floor of 1 MiB/s).
        let limit = EXCHANGE + Duration::from_secs(data.len() as u64 >> 20);
        crate::retry::transient(&self.uri, "writing", || {
            bounded(
                &self.uri,
                "writing",
                limit,
                self.store_at_once(full, offset, data),
            )
        })
        .await
    }

    async fn store_at_once(
        &self,
        full: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ConnectorError> {
        let mut l = self.lease().await?;
        let ftp = l.ftp();
        if offset > 0 {
            ftp.resume_transfer(usize::try_from(offset).unwrap_or(usize::MAX))
                .await
                .map_err(|e| self.remote("positioning a write on", &e))?;
        }
        let mut stream = ftp
            .put_with_stream(full)
            .await
            .map_err(|e| self.remote("writing to", &e))?;
        if let Err(e) = stream.write_all(data).await {
            let mut err = self.remote("writing to", &FtpError::ConnectionError(e));
            // Finishing reads the transfer's reply, so the control connection is in step.
            // If it still answers, the server itself ended the upload: vsftpd resets the data
            // connection when it cannot write the file (a full disk or quota), and its reply
            // is not readable through the reset connection.
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.finish()).await;
            if matches!(
                tokio::time::timeout(Duration::from_secs(5), ftp.noop()).await,
                Ok(Ok(()))
            ) {
                if let ConnectorError::Remote { reason, .. } = &mut err {
                    *reason = format!(
                        "the server ended the upload while its control connection stayed up: \
                         it could not store the data (a full disk or quota, for example) \
                         ({reason})"
                    );
                }
                l.release();
            }
            return Err(err);
        }
        stream
            .finish()
            .await
            .map_err(|e| self.remote("writing to", &e))?;
        l.release();
        Ok(())
    }

    async fn hash_remote(&self, full: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        crate::retry::transient(&self.uri, "reading back", || {
            bounded(
                &self.uri,
                "reading back",
                Duration::from_secs(3600),
                self.hash_remote_once(full),
            )
        })
        .await
    }

    async fn hash_remote_once(&self, full: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        let mut l = self.lease().await?;
        let mut stream = l
            .ftp()
            .retr_as_stream(full)
            .await
            .map_err(|e| self.remote("reading back", &e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| self.remote("reading back", &FtpError::ConnectionError(e)))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        stream
            .finish()
            .await
            .map_err(|e| self.remote("reading back", &e))?;
        l.release();
        Ok((size, *hasher.finalize().as_bytes()))
    }
}

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

/// Chunks held until the first chunk is stored.
#[derive(Default)]
struct Held {
    /// Whether the chunk at offset 0 is on the server.
    first_done: bool,
    /// Chunks that arrived before it, by offset.
    waiting: BTreeMap<u64, Bytes>,
    /// Why storing held chunks failed.
    failed: Option<String>,
}

struct FtpsWriter {
    inner: Arc<Inner>,
    spec: ObjectSpec,
    full: String,
    temp: String,
    held: watch::Sender<Held>,
    committed: Mutex<bool>,
}

impl FtpsWriter {
    async fn confirm(&self) -> Result<Confirmation, ConnectorError> {
        let size = self.inner.size_of(&self.full).await?.unwrap_or(0);
        self.spec.check_size(size)?;
        let blake3 = if self.inner.verify == VerifyMode::Size {
            None
        } else {
            Some(self.inner.hash_remote(&self.full).await?.1)
        };
        Ok(Confirmation {
            size,
            etag: None,
            blake3,
        })
    }
}

#[async_trait]
impl ObjectWriter for FtpsWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        if offset == 0 {
            // Storing at offset 0 truncates: it goes first, then whatever waited for it.
            self.inner.store_at(&self.temp, 0, &data).await?;
            let mut waiting = BTreeMap::new();
            self.held.send_modify(|h| {
                h.first_done = true;
                waiting = std::mem::take(&mut h.waiting);
            });
            let stores = waiting
                .iter()
                .map(|(off, d)| self.inner.store_at(&self.temp, *off, d));
            let results = futures::future::join_all(stores).await;
            if let Some(e) = results.into_iter().find_map(Result::err) {
                self.held
                    .send_modify(|h| h.failed = Some(format!("storing a held chunk: {e}")));
                return Err(e);
            }
            return Ok(());
        }
        let mut hold = Some(data);
        self.held.send_if_modified(|h| {
            if h.first_done {
                false
            } else {
                h.waiting.insert(offset, hold.take().expect("held once"));
                true
            }
        });
        match hold {
            Some(data) => self.inner.store_at(&self.temp, offset, &data).await,
            // Held in memory; `sync` reports it durable only once it is stored.
            None => Ok(()),
        }
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        // Every STOR ended with the server's 226 (file closed). Held chunks are not stored
        // yet: wait for the first chunk to arrive and take them along.
        let mut rx = self.held.subscribe();
        let waited = tokio::time::timeout(FIRST_CHUNK_WAIT, async {
            rx.wait_for(|h| h.waiting.is_empty() || h.failed.is_some())
                .await
                .map(|h| (h.first_done, h.failed.clone()))
        })
        .await;
        let (first_done, failed) = match waited {
            Ok(Ok(state)) => state,
            Ok(Err(_)) => return Err(ConnectorError::Unavailable("writer closed".into())),
            Err(_) => {
                return Err(ConnectorError::Remote {
                    destination: self.inner.uri.clone(),
                    op: "syncing",
                    transient: true,
                    reason: "the first chunk of the file never arrived; later chunks are \
                             not stored"
                        .into(),
                });
            }
        };
        if let Some(reason) = failed {
            return Err(ConnectorError::Remote {
                destination: self.inner.uri.clone(),
                op: "syncing",
                transient: true,
                reason,
            });
        }
        // Remember that the first chunk is there, so a resumed job never stores at offset 0
        // over acknowledged data.
        if first_done && let Some(p) = &self.spec.state_file {
            tokio::fs::write(p, b"first-chunk-written\n")
                .await
                .map_err(|source| ConnectorError::Io {
                    action: "writing",
                    path: p.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        let mut committed = self.committed.lock().await;
        if *committed {
            return self.confirm().await;
        }
        if self.spec.size == 0 && !self.held.borrow().first_done {
            self.inner.store_at(&self.temp, 0, &[]).await?;
        }
        let size = self.inner.size_of(&self.temp).await?.unwrap_or(0);
        self.spec.check_size(size)?;
        let attempted = std::sync::atomic::AtomicBool::new(false);
        crate::retry::transient(&self.inner.uri, "renaming into place on", || {
            bounded(&self.inner.uri, "renaming into place on", EXCHANGE, async {
                let mut l = self.inner.lease().await?;
                // FTP has no rename that refuses an existing target (vsftpd's RNTO
                // replaces): look again right before it, on the same connection, so only
                // an object appearing within this one exchange can be replaced.
                if !self.inner.overwrite && self.exists_on(&mut l, &self.full).await? {
                    // A retried rename whose first answer was lost: the temporary file
                    // (a name no other job can use) is gone because it is the final one.
                    let renamed = attempted.load(std::sync::atomic::Ordering::Relaxed)
                        && !self.exists_on(&mut l, &self.temp).await?;
                    l.release();
                    return if renamed {
                        Ok(())
                    } else {
                        Err(ConnectorError::Exists(self.spec.path.clone()))
                    };
                }
                attempted.store(true, std::sync::atomic::Ordering::Relaxed);
                l.ftp()
                    .rename(self.temp.as_str(), self.full.as_str())
                    .await
                    .map_err(|e| self.inner.remote("renaming into place on", &e))?;
                l.release();
                Ok(())
            })
        })
        .await?;
        *committed = true;
        drop(committed);
        self.confirm().await
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        if *self.committed.lock().await {
            return Ok(());
        }
        self.delete(&self.temp).await
    }

    async fn remove(&self) -> Result<(), ConnectorError> {
        let committed = self.committed.lock().await;
        if !*committed {
            drop(committed);
            return self.abort().await;
        }
        // This writer renamed it into place (after refusing an existing object unless
        // overwrite was allowed): the object is its own to take back.
        self.delete(&self.full).await
    }
}

impl FtpsWriter {
    /// Whether `full` exists, asked on the leased connection (`SIZE`).
    async fn exists_on(&self, l: &mut Lease<'_>, full: &str) -> Result<bool, ConnectorError> {
        match l.ftp().size(full).await {
            Ok(_) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(self.inner.remote("checking", &e)),
        }
    }

    /// Deletes `full` (`DELE`); one that is already gone is fine.
    async fn delete(&self, full: &str) -> Result<(), ConnectorError> {
        let mut l = self.inner.lease().await?;
        match l.ftp().rm(full).await {
            Ok(()) => {
                l.release();
                Ok(())
            }
            Err(e) if is_missing(&e) => {
                l.release();
                Ok(())
            }
            Err(e) => Err(self.inner.remote("removing", &e)),
        }
    }
}
