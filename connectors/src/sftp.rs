//! `sftp://USER@HOST[:PORT]/DIR`: SFTP over SSH (russh + russh-sftp, pure Rust on tokio).
//!
//! Authentication is by key only: the private key file comes from the URI's `key=PATH`
//! query or `TRACKSHIFT_SFTP_KEY`. The server's host key must be pinned, by a known_hosts
//! file (`known_hosts=PATH` or `TRACKSHIFT_SFTP_KNOWN_HOSTS`) or a fingerprint
//! (`fingerprint=SHA256:...`); an unknown or changed host key refuses the connection.
//!
//! Each object is written to `.NAME.JOBID.tspart` beside its final name, with every chunk
//! split into SFTP writes that are all in flight at once,
//! made durable with `fsync@openssh.com`, and on commit size-checked and renamed into place
//! with the plain SFTP rename, which refuses an existing target (with `overwrite=true`:
//! `posix-rename@openssh.com`, atomic overwrite). A connector keeps a few SSH
//! connections (default 4, `connections=N`), shared by all of its objects and re-established
//! when they drop; a file's chunks go round-robin over them, since one connection is one
//! cipher stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::sync::Mutex;

use crate::{
    Confirmation, Connector, ConnectorError, ObjectSpec, ObjectWriter, ServerUri, VerifyMode,
    check_object_path,
};

/// Bytes per SFTP write request (OpenSSH accepts up to 256 KiB messages).
const WRITE_LEN: usize = 255 * 1024;
/// Bytes per SFTP read request when reading back.
const READ_LEN: u32 = 255 * 1024;
/// Read requests in flight when reading back.
const READS_IN_FLIGHT: usize = 16;

/// How the server's host key is trusted.
#[derive(Debug, Clone)]
enum HostTrust {
    KnownHosts(PathBuf),
    Fingerprint(String),
}

/// An SFTP destination.
pub struct SftpConnector {
    inner: Arc<SftpInner>,
}

impl std::ops::Deref for SftpConnector {
    type Target = SftpInner;
    fn deref(&self) -> &SftpInner {
        &self.inner
    }
}

/// The connector's settings and its shared connection (writers keep a handle to it, to
/// reconnect after the connection drops).
pub struct SftpInner {
    uri: String,
    /// `overwrite=true`: a job may replace an object it did not create.
    overwrite: bool,
    host: String,
    port: u16,
    user: String,
    root: String,
    key: PathBuf,
    trust: HostTrust,
    verify: VerifyMode,
    /// SSH connections (lanes); a file's chunks are spread over them, since one
    /// connection is one cipher stream.
    conns: Vec<Mutex<Option<Arc<Conn>>>>,
}

/// SSH connections per destination unless `connections=N` says otherwise.
const LANES: usize = 4;

impl std::fmt::Debug for SftpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpConnector")
            .field("uri", &self.uri)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// SSH ciphers in order of preference: AES-GCM first (hardware AES makes it several times
/// cheaper per byte than ChaCha20-Poly1305 on the CPUs gateways run on; on a 2-core loopback
/// run ChaCha20-Poly1305 was a fifth of the gateway's CPU), then russh's other defaults.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

struct Conn {
    _ssh: client::Handle<Client>,
    sftp: RawSftpSession,
    fsync: bool,
    posix_rename: bool,
    statvfs: bool,
}

struct Client {
    host: String,
    port: u16,
    trust: HostTrust,
    /// Why the host key was refused, for the error message.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        let verdict = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.check(key),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => {
                Err("host certificates are not supported; pin the host key".to_string())
            }
        };
        let ok = match verdict {
            Ok(()) => true,
            Err(why) => {
                *self.refused.lock().expect("refused lock") = Some(why);
                false
            }
        };
        async move { Ok(ok) }
    }
}

impl Client {
    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match &self.trust {
            HostTrust::Fingerprint(want) if *want == fingerprint => Ok(()),
            HostTrust::Fingerprint(want) => {
                Err(format!("host key {fingerprint} is not the pinned {want}"))
            }
            HostTrust::KnownHosts(path) => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!(
                        "host key {fingerprint} of {}:{} is not in {}",
                        self.host,
                        self.port,
                        path.display()
                    )),
                    Err(e) => Err(format!(
                        "host key {fingerprint} of {}:{} does not match {}: {e}",
                        self.host,
                        self.port,
                        path.display()
                    )),
                }
            }
        }
    }
}

fn sftp_err(uri: &str, op: &'static str, e: &SftpError) -> ConnectorError {
    let transient = match e {
        SftpError::Status(s) => matches!(
            s.status_code,
            StatusCode::ConnectionLost | StatusCode::NoConnection
        ),
        // A closed session (the server or the connection went away) may work again later.
        SftpError::Timeout | SftpError::IO(_) | SftpError::UnexpectedBehavior(_) => true,
        _ => false,
    };
    ConnectorError::Remote {
        destination: uri.to_string(),
        op,
        transient,
        reason: e.to_string(),
    }
}

fn is_not_found(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

/// An SSH string: u32 BE length, then the bytes.
fn ssh_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl SftpConnector {
    /// Parses and validates `uri` (no connection is made: see [`Connector::check`]).
    pub fn from_uri(uri: &str, verify: VerifyMode) -> Result<Self, ConnectorError> {
        Self::build(uri, verify, &crate::Settings::Process)
    }

    /// As [`SftpConnector::from_uri`], with `TRACKSHIFT_SFTP_KEY` and
    /// `TRACKSHIFT_SFTP_KNOWN_HOSTS` read from `settings`.
    pub fn build(
        uri: &str,
        verify: VerifyMode,
        settings: &crate::Settings,
    ) -> Result<Self, ConnectorError> {
        Self::from_destination(&crate::Destination::parse(uri)?, verify, settings)
    }

    /// As [`SftpConnector::build`], from a parsed destination.
    pub fn from_destination(
        dest: &crate::Destination,
        verify: VerifyMode,
        settings: &crate::Settings,
    ) -> Result<Self, ConnectorError> {
        Ok(Self {
            inner: Arc::new(SftpInner::parse(dest, verify, settings)?),
        })
    }
}

impl SftpInner {
    fn parse(
        dest: &crate::Destination,
        verify: VerifyMode,
        settings: &crate::Settings,
    ) -> Result<Self, ConnectorError> {
        if dest.scheme() != crate::Scheme::Sftp {
            return Err(ConnectorError::InvalidUri(format!(
                "not an sftp URI: {}",
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
        let (mut key, mut known_hosts, mut fingerprint) = (None, None, None);
        let mut lanes = LANES;
        for (k, v) in query {
            match k.as_str() {
                "key" => key = Some(PathBuf::from(v)),
                "known_hosts" => known_hosts = Some(PathBuf::from(v)),
                "fingerprint" => fingerprint = Some(v),
                "connections" => {
                    lanes = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or_else(|| invalid("connections must be 1 to 16".into()))?;
                }
                other => {
                    return Err(invalid(format!(
                        "unknown setting {other:?} (allowed: key, known_hosts, fingerprint, connections)"
                    )));
                }
            }
        }
        let key = key
            .or_else(|| settings.var("TRACKSHIFT_SFTP_KEY").map(PathBuf::from))
            .ok_or_else(|| {
                invalid("no SSH key: set TRACKSHIFT_SFTP_KEY or key=PATH in the URI".into())
            })?;
        let trust = match (fingerprint, known_hosts) {
            (Some(fp), None) => {
                if !fp.starts_with("SHA256:") {
                    return Err(invalid("fingerprint must be SHA256:BASE64".into()));
                }
                HostTrust::Fingerprint(fp)
            }
            (None, Some(path)) => HostTrust::KnownHosts(path),
            (Some(_), Some(_)) => {
                return Err(invalid("give known_hosts or fingerprint, not both".into()));
            }
            (None, None) => match settings.var("TRACKSHIFT_SFTP_KNOWN_HOSTS") {
                Some(p) => HostTrust::KnownHosts(PathBuf::from(p)),
                None => {
                    return Err(invalid(
                        "the host key must be pinned: known_hosts=PATH or fingerprint=SHA256:... \
                         in the URI, or TRACKSHIFT_SFTP_KNOWN_HOSTS"
                            .into(),
                    ));
                }
            },
        };
        Ok(Self {
            uri: dest.to_string(),
            overwrite: dest.overwrite(),
            host,
            port,
            user,
            root: format!("/{root}"),
            key,
            trust,
            verify,
            conns: (0..lanes).map(|_| Mutex::new(None)).collect(),
        })
    }

    fn remote(&self, op: &'static str, reason: String, transient: bool) -> ConnectorError {
        ConnectorError::Remote {
            destination: self.uri.clone(),
            op,
            transient,
            reason,
        }
    }

    /// The first shared connection, (re)established when missing or closed.
    async fn conn(&self) -> Result<Arc<Conn>, ConnectorError> {
        self.conn_at(0).await
    }

    /// Shared connection `lane`, (re)established when missing or closed.
    async fn conn_at(&self, lane: usize) -> Result<Arc<Conn>, ConnectorError> {
        let mut slot = self.conns[lane % self.conns.len()].lock().await;
        if let Some(c) = slot.as_ref()
            && !c._ssh.is_closed()
        {
            return Ok(c.clone());
        }
        let c = Arc::new(self.connect().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn connect(&self) -> Result<Conn, ConnectorError> {
        // Owner-only, checked on the descriptor read (see `read_secret`), as ssh does.
        let pem = trackshift_crypto::filestore::read_secret(&self.key)?;
        let pem = std::str::from_utf8(&pem).map_err(|_| {
            ConnectorError::Unavailable(format!("SSH key {}: not UTF-8", self.key.display()))
        })?;
        let key = russh::keys::decode_secret_key(pem, None).map_err(|e| {
            ConnectorError::Unavailable(format!("SSH key {}: {e}", self.key.display()))
        })?;
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(120)),
            keepalive_interval: Some(Duration::from_secs(15)),
            nodelay: true,
            // Large windows and packets: one connection carries whole files at line rate.
            window_size: 64 << 20,
            maximum_packet_size: 256 << 10,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(CIPHERS),
                ..Default::default()
            },
            ..Default::default()
        });
        let refused = Arc::new(std::sync::Mutex::new(None));
        let handler = Client {
            host: self.host.clone(),
            port: self.port,
            trust: self.trust.clone(),
            refused: refused.clone(),
        };
        let addr = (self.host.as_str(), self.port);
        let mut ssh = tokio::time::timeout(
            Duration::from_secs(10),
            client::connect(config, addr, handler),
        )
        .await
        .map_err(|_| self.remote("connecting to", "timed out".into(), true))?
        .map_err(|e| match refused.lock().expect("refused lock").take() {
            Some(why) => self.remote("connecting to", why, false),
            None => self.remote("connecting to", e.to_string(), true),
        })?;
        let hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
        let auth = ssh
            .authenticate_publickey(
                self.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(|e| self.remote("authenticating to", e.to_string(), true))?;
        if !auth.success() {
            return Err(self.remote(
                "authenticating to",
                format!("the server refused the key for user {:?}", self.user),
                false,
            ));
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| self.remote("opening a session on", e.to_string(), true))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| self.remote("starting SFTP on", e.to_string(), true))?;
        let sftp = RawSftpSession::new(channel.into_stream());
        sftp.set_timeout(120);
        let version = sftp
            .init()
            .await
            .map_err(|e| sftp_err(&self.uri, "starting SFTP on", &e))?;
        Ok(Conn {
            _ssh: ssh,
            sftp,
            fsync: version.extensions.contains_key("fsync@openssh.com"),
            posix_rename: version.extensions.contains_key("posix-rename@openssh.com"),
            statvfs: version.extensions.contains_key("statvfs@openssh.com"),
        })
    }

    fn full(&self, path: &str) -> String {
        if self.root == "/" {
            format!("/{path}")
        } else {
            format!("{}/{path}", self.root)
        }
    }

    async fn size_of(&self, c: &Conn, full: &str) -> Result<Option<u64>, ConnectorError> {
        match c.sftp.stat(full).await {
            Ok(a) => Ok(a.attrs.size),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(sftp_err(&self.uri, "checking", &e)),
        }
    }

    /// Creates the directories above `full` that are missing (the destination directory
    /// included, as object stores create prefixes).
    async fn make_parents(&self, c: &Conn, full: &str) -> Result<(), ConnectorError> {
        match full.rsplit_once('/') {
            Some((parent, _)) => self.make_dirs(c, parent).await,
            None => Ok(()),
        }
    }

    /// Creates directory `path` and its missing ancestors.
    async fn make_dirs(&self, c: &Conn, path: &str) -> Result<(), ConnectorError> {
        let mut missing = Vec::new();
        let mut dir = path.to_string();
        while !dir.is_empty() {
            match c.sftp.stat(dir.as_str()).await {
                Ok(_) => break,
                Err(e) if is_not_found(&e) => {
                    missing.push(dir.clone());
                    dir = dir
                        .rsplit_once('/')
                        .map_or(String::new(), |(p, _)| p.into());
                }
                Err(e) => return Err(sftp_err(&self.uri, "checking", &e)),
            }
        }
        for d in missing.into_iter().rev() {
            if let Err(e) = c.sftp.mkdir(d.as_str(), FileAttributes::default()).await
                && c.sftp.stat(d.as_str()).await.is_err()
            {
                return Err(sftp_err(&self.uri, "creating a directory on", &e));
            }
        }
        Ok(())
    }
}

/// Reads a remote file back: its size and BLAKE3 hash, several reads in flight.
async fn hash_remote(uri: &str, c: &Conn, full: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
    let handle = c
        .sftp
        .open(full, OpenFlags::READ, FileAttributes::default())
        .await
        .map_err(|e| sftp_err(uri, "reading back", &e))?
        .handle;
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    let result = async {
        loop {
            // Several reads in flight, consumed in order.
            let reads = (0..READS_IN_FLIGHT as u64).map(|k| {
                c.sftp
                    .read(handle.as_str(), offset + k * u64::from(READ_LEN), READ_LEN)
            });
            let results = futures::future::join_all(reads).await;
            for r in results {
                match r {
                    Ok(d) if !d.data.is_empty() => {
                        hasher.update(&d.data);
                        offset += d.data.len() as u64;
                        if d.data.len() < READ_LEN as usize {
                            return Ok(());
                        }
                    }
                    Ok(_) => return Ok(()),
                    Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => {
                        return Ok(());
                    }
                    Err(e) => return Err(sftp_err(uri, "reading back", &e)),
                }
            }
        }
    }
    .await;
    let _ = c.sftp.close(handle.as_str()).await;
    result?;
    Ok((offset, *hasher.finalize().as_bytes()))
}

#[async_trait]
impl Connector for SftpConnector {
    fn uri(&self) -> &str {
        &self.uri
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        let c = self.conn().await?;
        self.make_dirs(&c, &self.root).await?;
        match c.sftp.stat(self.root.as_str()).await {
            Ok(a) if a.attrs.is_dir() => Ok(()),
            Ok(_) => Err(ConnectorError::Unavailable(format!(
                "{}: {} is not a directory",
                self.uri, self.root
            ))),
            Err(e) => Err(ConnectorError::Unavailable(format!(
                "{}: directory {}: {e}",
                self.uri, self.root
            ))),
        }
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        check_object_path(path)?;
        let c = self.conn().await?;
        self.size_of(&c, &self.full(path)).await
    }

    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        check_object_path(path)?;
        let c = self.conn().await?;
        hash_remote(&self.uri, &c, &self.full(path)).await
    }

    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        check_object_path(&spec.path)?;
        check_object_path(&spec.job_id)?;
        let c = self.conn().await?;
        let full = self.full(&spec.path);
        let (dir, _) = full.rsplit_once('/').expect("full paths have a slash");
        let temp = format!("{dir}/{}", spec.temp_name());
        self.make_parents(&c, &full).await?;
        let existing = self.size_of(&c, &full).await?;
        let committed =
            resume && self.size_of(&c, &temp).await?.is_none() && existing == Some(spec.size);
        if !committed && existing.is_some() && !self.overwrite {
            return Err(ConnectorError::Exists(spec.path.clone()));
        }
        let open = if committed {
            // Committed before an interruption.
            None
        } else {
            let mut flags = OpenFlags::WRITE | OpenFlags::CREATE;
            if !resume {
                flags |= OpenFlags::TRUNCATE;
            }
            let handle = c
                .sftp
                .open(temp.as_str(), flags, FileAttributes::default())
                .await
                .map_err(|e| sftp_err(&self.uri, "creating a file on", &e))?
                .handle;
            Some((c, handle))
        };
        let mut lanes: Vec<Lane> = (0..self.conns.len()).map(|_| Mutex::new(None)).collect();
        // Lane 0 holds the handle that created (or truncated) the file; the other lanes
        // open it later without truncating.
        lanes[0] = Mutex::new(open);
        Ok(Arc::new(SftpWriter {
            inner: self.inner.clone(),
            spec: spec.clone(),
            full,
            temp,
            lanes,
            committed: std::sync::atomic::AtomicBool::new(committed),
        }))
    }
}

/// A lane's connection and open handle of the temporary file, once opened.
type Lane = Mutex<Option<(Arc<Conn>, String)>>;

struct SftpWriter {
    inner: Arc<SftpInner>,
    spec: ObjectSpec,
    full: String,
    temp: String,
    /// Per lane, the connection and the open handle of the temporary file; opened when
    /// first used and reopened (without truncating) after the connection drops.
    lanes: Vec<Lane>,
    committed: std::sync::atomic::AtomicBool,
}

impl SftpWriter {
    fn err(&self, op: &'static str, e: &SftpError) -> ConnectorError {
        sftp_err(&self.inner.uri, op, e)
    }

    fn is_committed(&self) -> bool {
        self.committed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The lane a write at `offset` goes through (whole chunks round-robin).
    fn lane(&self, offset: u64) -> usize {
        let chunk = self.spec.chunk_size.max(1);
        usize::try_from(offset / chunk).unwrap_or(0) % self.lanes.len()
    }

    /// The live connection and file handle of `lane`, reconnecting and reopening when
    /// needed.
    async fn session(&self, lane: usize) -> Result<(Arc<Conn>, String), ConnectorError> {
        if self.is_committed() {
            return Err(ConnectorError::Unavailable(format!(
                "{} is already committed",
                self.spec.path
            )));
        }
        let mut slot = self.lanes[lane].lock().await;
        if let Some((c, h)) = slot.as_ref()
            && !c._ssh.is_closed()
        {
            return Ok((c.clone(), h.clone()));
        }
        let c = self.inner.conn_at(lane).await?;
        let handle = c
            .sftp
            .open(
                self.temp.as_str(),
                OpenFlags::WRITE | OpenFlags::CREATE,
                FileAttributes::default(),
            )
            .await
            .map_err(|e| self.err("reopening a file on", &e))?
            .handle;
        *slot = Some((c.clone(), handle.clone()));
        Ok((c, handle))
    }

    /// Forgets a lane's session after a transient failure, so the next attempt starts
    /// afresh.
    async fn reset(&self, lane: usize, e: ConnectorError) -> ConnectorError {
        if e.is_transient() {
            *self.lanes[lane].lock().await = None;
        }
        e
    }

    /// The sessions opened so far (lane, connection, handle).
    async fn opened(&self) -> Vec<(usize, Arc<Conn>, String)> {
        let mut out = Vec::new();
        for (lane, slot) in self.lanes.iter().enumerate() {
            if let Some((c, h)) = slot.lock().await.clone() {
                out.push((lane, c, h));
            }
        }
        out
    }

    async fn write_once(&self, offset: u64, data: &Bytes) -> Result<(), ConnectorError> {
        let lane = self.lane(offset);
        let (c, handle) = self.session(lane).await?;
        // Every piece of the chunk in flight at once.
        let writes = (0..data.len()).step_by(WRITE_LEN).map(|start| {
            let end = (start + WRITE_LEN).min(data.len());
            c.sftp.write(
                handle.as_str(),
                offset + start as u64,
                data[start..end].to_vec(),
            )
        });
        for r in futures::future::join_all(writes).await {
            if let Err(e) = r {
                let mut err = self.err("writing to", &e);
                if matches!(&e, SftpError::Status(s) if s.status_code == StatusCode::Failure)
                    && let Some(free) = self.free_space(&c).await
                    && free < data.len() as u64
                    && let ConnectorError::Remote { reason, .. } = &mut err
                {
                    // SFTP v3 has no "disk full" status: say what the server's file system
                    // reports instead of a bare "Failure".
                    *reason = format!(
                        "no space left on the server: {free} bytes free for this user, \
                         {} needed ({reason})",
                        data.len()
                    );
                }
                return Err(self.reset(lane, err).await);
            }
        }
        Ok(())
    }

    /// Bytes the server's file system holding the object has free for this user, when the
    /// server says (`statvfs@openssh.com`).
    async fn free_space(&self, c: &Conn) -> Option<u64> {
        if !c.statvfs {
            return None;
        }
        let dir = self.temp.rsplit_once('/').map_or("/", |(d, _)| d);
        let dir = if dir.is_empty() { "/" } else { dir };
        let st = c.sftp.statvfs(dir).await.ok()?;
        Some(st.blocks_avail.saturating_mul(st.fragment_size))
    }

    async fn sync_once(&self) -> Result<(), ConnectorError> {
        if self.is_committed() {
            return Ok(());
        }
        let mut opened = self.opened().await;
        if opened.is_empty() {
            let (c, h) = self.session(0).await?;
            opened.push((0, c, h));
        }
        for (lane, c, handle) in opened {
            if c.fsync
                && let Err(e) = c.sftp.fsync(handle.as_str()).await
            {
                return Err(self.reset(lane, self.err("syncing", &e)).await);
            }
        }
        Ok(())
    }

    async fn publish(&self) -> Result<(), ConnectorError> {
        // Make sure the file exists (an object with no writes yet), then flush and close
        // every lane's handle.
        self.session(0).await?;
        let step = async {
            for (_, c, handle) in self.opened().await {
                if c.fsync {
                    c.sftp
                        .fsync(handle.as_str())
                        .await
                        .map_err(|e| self.err("syncing", &e))?;
                }
                c.sftp
                    .close(handle.as_str())
                    .await
                    .map_err(|e| self.err("closing", &e))?;
            }
            let c = self.inner.conn().await?;
            let sftp = &c.sftp;
            let size = sftp
                .stat(self.temp.as_str())
                .await
                .map_err(|e| self.err("checking", &e))?
                .attrs
                .size
                .unwrap_or(0);
            self.spec.check_size(size)?;
            if !self.inner.overwrite {
                // Plain SFTP v3 rename refuses an existing target: never replace an
                // object this job did not create, even one that appeared since open.
                if let Err(e) = sftp.rename(self.temp.as_str(), self.full.as_str()).await {
                    if sftp.stat(self.full.as_str()).await.is_ok() {
                        return Err(ConnectorError::Exists(self.spec.path.clone()));
                    }
                    return Err(self.err("renaming into place on", &e));
                }
            } else if c.posix_rename {
                let mut data = Vec::new();
                ssh_string(&mut data, &self.temp);
                ssh_string(&mut data, &self.full);
                match sftp.extended("posix-rename@openssh.com", data).await {
                    Ok(russh_sftp::protocol::Packet::Status(s))
                        if s.status_code != StatusCode::Ok =>
                    {
                        return Err(self.err("renaming into place on", &SftpError::Status(s)));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(self.err("renaming into place on", &e)),
                }
            } else {
                // Plain SFTP v3 rename does not overwrite.
                let _ = sftp.remove(self.full.as_str()).await;
                sftp.rename(self.temp.as_str(), self.full.as_str())
                    .await
                    .map_err(|e| self.err("renaming into place on", &e))?;
            }
            Ok(())
        };
        let result = step.await;
        // The handles are closed (or in doubt): start from fresh sessions next time.
        for slot in &self.lanes {
            *slot.lock().await = None;
        }
        if result.is_ok() {
            self.committed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        result
    }

    async fn confirm(&self) -> Result<Confirmation, ConnectorError> {
        let c = self.inner.conn().await?;
        let size = match c.sftp.stat(self.full.as_str()).await {
            Ok(a) => a.attrs.size.unwrap_or(0),
            Err(e) => return Err(self.err("confirming", &e)),
        };
        self.spec.check_size(size)?;
        // SFTP gives no content hash: strict mode reads the file back.
        let blake3 = if self.inner.verify == VerifyMode::Size {
            None
        } else {
            Some(hash_remote(&self.inner.uri, &c, &self.full).await?.1)
        };
        Ok(Confirmation {
            size,
            etag: None,
            blake3,
        })
    }
}

impl Drop for SftpWriter {
    /// A writer dropped with handles open (neither committed nor aborted: its job failed
    /// or was set aside) closes them: the connection is shared and lives on, and the
    /// server keeps a descriptor per open handle for as long as it does. The temporary
    /// file stays for a resume (or the gateway's sweep) to deal with.
    fn drop(&mut self) {
        let open: Vec<_> = self
            .lanes
            .iter_mut()
            .filter_map(|l| l.get_mut().take())
            .collect();
        if open.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            for (c, handle) in open {
                let _ = c.sftp.close(handle.as_str()).await;
            }
        });
    }
}

#[async_trait]
impl ObjectWriter for SftpWriter {
    fn holds_open(&self) -> bool {
        // The server's handles of the temporary file, one per lane used.
        true
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        crate::retry::transient(&self.inner.uri, "writing", || {
            self.write_once(offset, &data)
        })
        .await
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        if self.is_committed() {
            return Ok(());
        }
        crate::retry::transient(&self.inner.uri, "syncing", || self.sync_once()).await
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        if !self.is_committed() {
            crate::retry::transient(&self.inner.uri, "committing", || self.publish()).await?;
        }
        crate::retry::transient(&self.inner.uri, "confirming", || self.confirm()).await
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        if self.is_committed() {
            return Ok(());
        }
        for slot in &self.lanes {
            if let Some((c, handle)) = slot.lock().await.take() {
                let _ = c.sftp.close(handle.as_str()).await;
            }
        }
        let c = self.inner.conn().await?;
        match c.sftp.remove(self.temp.as_str()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err("removing", &e)),
        }
    }

    async fn remove(&self) -> Result<(), ConnectorError> {
        if !self.is_committed() {
            return self.abort().await;
        }
        // This writer renamed it into place, without replacing anything unless overwrite
        // was allowed: the object is its own to take back.
        crate::retry::transient(&self.inner.uri, "removing", || async {
            let c = self.inner.conn().await?;
            match c.sftp.remove(self.full.as_str()).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(self.err("removing", &e)),
            }
        })
        .await
    }

    async fn close(&self) -> Result<(), ConnectorError> {
        // The server's handles of the temporary file go; a reopen makes new ones.
        let mut first = Ok(());
        for slot in &self.lanes {
            if let Some((c, handle)) = slot.lock().await.take()
                && let Err(e) = c.sftp.close(handle.as_str()).await
                && first.is_ok()
            {
                first = Err(self.err("closing", &e));
            }
        }
        first
    }
}
