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

mod session;
mod writer;

use writer::*;

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
