//! Trackshift destinations ("connectors").
//!
//! A connector is addressed by a URI (`file:///srv/data`, `null://`) and hands out one
//! [`ObjectWriter`] per file of a job. The engine writes verified chunks at their offsets,
//! calls [`ObjectWriter::sync`] before it acknowledges them (so an acknowledged chunk is
//! durable), and [`ObjectWriter::commit`] once every chunk of the file is in: only then does
//! the object appear under its final name, and the connector reports what the destination
//! confirmed ([`Confirmation`]).
//!
//! Invariants every connector keeps:
//! - No reader ever sees a partial object under the final name.
//! - Reopening an object with `resume = true` keeps every byte already synced.
//! - Errors are typed ([`ConnectorError`]) and never contain credentials.

pub mod batch;
pub mod beneath;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod create_only;
pub mod destination;
mod error;
pub mod ftps;
mod local;
pub mod memory;
mod null;
pub mod object;
pub mod rate;
pub mod retry;
pub mod sftp;
pub mod wrap;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use destination::{Authority, Destination, DestinationError, OptionKind, Scheme};
pub use error::ConnectorError;
pub use ftps::FtpsConnector;
pub use local::{COMMIT_XATTR, DIRECT_ALIGN, LocalConnector};
pub use memory::MemoryConnector;
pub use null::NullConnector;
pub use object::ObjectStoreConnector;
pub use rate::ByteRate;
pub use sftp::SftpConnector;
pub use wrap::{Limits, Wrapping, wrap};

/// How far a connector confirms what it wrote before a job may succeed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum VerifyMode {
    /// The destination reports the expected size.
    #[default]
    Size,
    /// Fail-closed (`CONNECTOR_STRICT=true`): size and content, by the service's own hash
    /// where it gives one (S3's MD5 ETag of the parts sent), else by reading the object back
    /// and hashing it with BLAKE3.
    Strict,
    /// Always read the object back and hash it with BLAKE3 (`verify=full`).
    Full,
}

impl VerifyMode {
    /// `CONNECTOR_STRICT=true|1|yes` gives [`VerifyMode::Strict`], anything else
    /// [`VerifyMode::Size`].
    pub fn from_env() -> Self {
        match std::env::var("CONNECTOR_STRICT")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            Ok(v) if matches!(v.as_str(), "true" | "1" | "yes") => Self::Strict,
            _ => Self::Size,
        }
    }
}

/// The object a job writes: one file of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// Tenant the job belongs to (with `job_id`, keeps temporary names apart).
    pub tenant: String,
    /// Job the object belongs to (keeps temporary names of concurrent jobs apart).
    pub job_id: String,
    /// Relative `/`-separated path of the file inside the destination.
    pub path: String,
    /// Final size in bytes.
    pub size: u64,
    /// The job's chunk size: writes come as whole chunks at multiples of it (the last
    /// chunk may be shorter).
    pub chunk_size: u64,
    /// A local file where the connector may keep what it needs to resume this object after
    /// a restart (upload and part ids); the gateway puts it in the job's directory.
    pub state_file: Option<std::path::PathBuf>,
}

impl ObjectSpec {
    /// The name of this object's temporary file or object beside its final name:
    /// `.trackshift-<128-bit tag>.tspart`, the tag a BLAKE3 hash of tenant, job and path.
    /// No two (tenant, job, path) share one, and no tenant file can take such a name
    /// ([`check_object_path`] refuses it).
    pub fn temp_name(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"trackshift temp name v1\0");
        for part in [&self.tenant, &self.job_id, &self.path] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let tag = hex::encode(&h.finalize().as_bytes()[..16]);
        format!(
            "{}-{tag}{}",
            destination::RESERVED_PREFIX,
            destination::TEMP_SUFFIX
        )
    }

    /// Refuses a destination's report of `actual` bytes when the object should hold `size`.
    pub fn check_size(&self, actual: u64) -> Result<(), ConnectorError> {
        if actual != self.size {
            return Err(ConnectorError::SizeMismatch {
                path: self.path.clone(),
                expected: self.size,
                actual,
            });
        }
        Ok(())
    }

    /// Refuses a write of `len` bytes at `offset` that would reach past the object's size.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), ConnectorError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(ConnectorError::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }
}

/// What a destination confirmed about a committed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// Size the destination reports for the object.
    pub size: u64,
    /// Entity tag or version the destination assigned, where it has one.
    pub etag: Option<String>,
    /// BLAKE3 of the object as read back from the destination, when it was read back
    /// ([`VerifyMode::Full`], or [`VerifyMode::Strict`] where the service gives no hash).
    pub blake3: Option<[u8; 32]>,
}

/// A destination.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// The URI this connector was created from (no credentials).
    fn uri(&self) -> &str;
    /// Checks the destination is reachable and writable, changing nothing (a health
    /// probe, `/ready`).
    async fn check(&self) -> Result<(), ConnectorError>;
    /// Makes the destination ready for a job about to write to it, then checks it as
    /// [`Self::check`] does; called when a job opens. The local disk creates the job's
    /// directories beneath the one its rule allows; by default it is `check`. A wrapper
    /// passes it on.
    async fn prepare(&self) -> Result<(), ConnectorError> {
        self.check().await
    }
    /// Smallest chunk size this destination accepts for an object of `size` bytes.
    fn min_chunk_size(&self, _size: u64) -> u64 {
        1
    }
    /// Size of the committed object at `path`, or `None` when there is none (temporary
    /// and unfinished uploads are not objects).
    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError>;
    /// Reads the committed object at `path` back: its size and BLAKE3 hash.
    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError>;
    /// Opens (or, with `resume`, reopens keeping synced data) the object for `spec`.
    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError>;
}

/// Writes one object.
#[async_trait]
pub trait ObjectWriter: Send + Sync {
    /// Writes `data` at `offset`. Chunks may arrive in any order.
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError>;
    /// Makes every completed `write_at` durable.
    async fn sync(&self) -> Result<(), ConnectorError>;
    /// Publishes the complete object under its final name and reports the confirmation.
    /// Idempotent: committing an already committed object confirms it again.
    async fn commit(&self) -> Result<Confirmation, ConnectorError>;
    /// Discards the partial object.
    async fn abort(&self) -> Result<(), ConnectorError>;
    /// Removes what this writer committed (a commit that then failed verification), or
    /// discards the partial object when it has not committed. Never removes an object
    /// it did not create. Destinations that cannot do this say so.
    async fn remove(&self) -> Result<(), ConnectorError> {
        Err(ConnectorError::Unsupported(
            "this destination cannot remove a committed object".into(),
        ))
    }
    /// Whether the writer holds something open between calls (local descriptors, remote
    /// file handles): the engine then closes it as soon as every chunk of the file is
    /// durable and opens the object again (`resume = true`) to commit it, so a job holds
    /// such writers only for the files in flight. Default: no (the writer is kept).
    fn holds_open(&self) -> bool {
        false
    }
    /// Releases what dropping the writer would not (remote file handles), neither
    /// committing nor discarding: the object stays as synced and is opened again with
    /// `resume = true` when needed. Called on a writer no other call is using, just before
    /// it is dropped. Local descriptors must be released by the drop itself. Default:
    /// nothing to release.
    async fn close(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// Where connectors read credentials and other settings named like environment variables
/// (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_KEY`, `TRACKSHIFT_SFTP_KEY`,
/// `TRACKSHIFT_FTPS_PASSWORD`, ...): the process environment, or one tenant's own set,
/// exclusively (a tenant with its own credentials never falls back on the process's).
#[derive(Clone, Default)]
pub enum Settings {
    /// The process environment.
    #[default]
    Process,
    /// A tenant's credentials: name → value.
    Tenant(Arc<std::collections::BTreeMap<String, String>>),
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Settings::Process => f.write_str("Settings::Process"),
            Settings::Tenant(m) => f
                .debug_tuple("Settings::Tenant")
                .field(&m.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl Settings {
    /// A setting's value.
    pub fn var(&self, name: &str) -> Option<String> {
        match self {
            Settings::Process => std::env::var(name).ok(),
            Settings::Tenant(m) => m.get(name).cloned(),
        }
    }

    /// Every setting whose name starts with `prefix` (for example `AWS_`), as
    /// (lower-case name, value).
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let pick = |k: &str, v: &str| {
            k.starts_with(prefix)
                .then(|| (k.to_ascii_lowercase(), v.to_string()))
        };
        match self {
            Settings::Process => std::env::vars().filter_map(|(k, v)| pick(&k, &v)).collect(),
            Settings::Tenant(m) => m.iter().filter_map(|(k, v)| pick(k, v)).collect(),
        }
    }

    /// Reads a credentials file: `NAME=VALUE` lines (blank lines and `#` comments
    /// ignored). Values are never logged. The file must be readable by its owner only
    /// ([`trackshift_crypto::filestore::read_secret`]), and so must the SSH key a
    /// `TRACKSHIFT_SFTP_KEY` in it names: both are checked now, not at the first job.
    pub fn load(path: &std::path::Path) -> Result<Self, ConnectorError> {
        let raw = trackshift_crypto::filestore::read_secret(path)?;
        let text = std::str::from_utf8(&raw).map_err(|_| {
            ConnectorError::InvalidUri(format!("credentials file {}: not UTF-8", path.display()))
        })?;
        let mut map = std::collections::BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                ConnectorError::InvalidUri(format!(
                    "credentials file {} line {}: expected NAME=VALUE",
                    path.display(),
                    n + 1
                ))
            })?;
            let k = k.trim().trim_start_matches("export ").trim();
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ConnectorError::InvalidUri(format!(
                    "credentials file {} line {}: bad name",
                    path.display(),
                    n + 1
                )));
            }
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(v);
            map.insert(k.to_string(), v.to_string());
        }
        let settings = Settings::Tenant(Arc::new(map));
        settings.check_secret_files()?;
        Ok(settings)
    }

    /// Checks the secret files these settings name (`TRACKSHIFT_SFTP_KEY`) with
    /// [`trackshift_crypto::filestore::read_secret`]: owner-only regular files. A gateway
    /// calls it at start for its own environment; [`Settings::load`] does it for a
    /// tenant's file.
    pub fn check_secret_files(&self) -> Result<(), ConnectorError> {
        if let Some(key) = self.var("TRACKSHIFT_SFTP_KEY") {
            trackshift_crypto::filestore::read_secret(std::path::Path::new(&key))?;
        }
        Ok(())
    }
}

/// Creates the connector for a destination URI, with the verification policy of the
/// environment ([`VerifyMode::from_env`]).
pub fn from_uri(uri: &str) -> Result<Arc<dyn Connector>, ConnectorError> {
    from_uri_with(uri, VerifyMode::from_env())
}

/// Creates the connector for a destination URI.
///
/// Supported: `file:///ABSOLUTE/DIR` (local disk), `s3://BUCKET[/PREFIX]` and
/// `az://CONTAINER[/PREFIX]` (see [`object`]), `sftp://USER@HOST[:PORT]/DIR` (see
/// [`sftp`]), `ftps://USER@HOST[:PORT]/DIR` (see [`ftps`]), and `null://` (discards data;
/// benchmarks).
pub fn from_uri_with(uri: &str, verify: VerifyMode) -> Result<Arc<dyn Connector>, ConnectorError> {
    from_uri_in(uri, verify, &Settings::Process)
}

/// As [`from_uri_with`], with credentials and settings from `settings`. The URI is parsed
/// into a [`Destination`] first (see [`connect`]).
pub fn from_uri_in(
    uri: &str,
    verify: VerifyMode,
    settings: &Settings,
) -> Result<Arc<dyn Connector>, ConnectorError> {
    connect(&Destination::parse(uri)?, verify, settings)
}

/// Creates the connector for a parsed destination: the connector is built from the typed
/// value (its scheme, authority, segments and options), never from a raw string.
pub fn connect(
    dest: &Destination,
    verify: VerifyMode,
    settings: &Settings,
) -> Result<Arc<dyn Connector>, ConnectorError> {
    Ok(match dest.scheme() {
        Scheme::File => Arc::new(LocalConnector::at(dest)?.with_verify(verify)),
        Scheme::S3 | Scheme::Azure => Arc::new(ObjectStoreConnector::from_destination(
            dest,
            verify,
            &[],
            settings,
        )?),
        Scheme::Ftps => Arc::new(FtpsConnector::from_destination(
            dest,
            verify,
            &settings.var("TRACKSHIFT_FTPS_PASSWORD").unwrap_or_default(),
            settings,
        )?),
        Scheme::Sftp => Arc::new(SftpConnector::from_destination(dest, verify, settings)?),
        Scheme::Null => Arc::new(NullConnector::new(&dest.to_string())),
    })
}

/// The parts of a `SCHEME://USER@HOST[:PORT]/DIR?QUERY` destination (SFTP, FTPS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUri {
    /// User name (percent-decoded).
    pub user: String,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// The directory, a checked relative path ("" for the server's root).
    pub dir: String,
    /// Query settings, in order.
    pub query: Vec<(String, String)>,
}

impl ServerUri {
    /// The server parts of a parsed `sftp://` or `ftps://` destination.
    pub fn of(dest: &Destination) -> Result<Self, ConnectorError> {
        let Authority::Server { user, host, port } = dest.authority() else {
            return Err(ConnectorError::InvalidUri(format!(
                "{}:// is not a server destination",
                dest.scheme().as_str()
            )));
        };
        Ok(ServerUri {
            user: user.clone(),
            host: host.clone(),
            port: *port,
            dir: dest.path(),
            query: dest
                .options()
                .iter()
                .filter(|(k, _)| k.as_str() != destination::OVERWRITE)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// Checks that `path` is a safe relative object path: `/`-separated, no empty, `.` or `..`
/// components, no NUL, backslash or control character, and no component in the names the
/// gateway reserves for its temporary objects (`.trackshift...`, `...tspart`), so that no
/// file of a job can collide with another job's temporary state.
pub fn check_object_path(path: &str) -> Result<(), ConnectorError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.chars().any(|c| c.is_control())
        || path.contains('\\')
        || path.split('/').any(|c| {
            c.is_empty()
                || c == "."
                || c == ".."
                || c.len() > 255
                || trackshift_crypto::reserved::is_reserved(c)
        });
    if bad {
        return Err(ConnectorError::InvalidPath(path.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert!(from_uri("file:///tmp").is_ok());
        assert!(from_uri("null://").is_ok());
        assert!(matches!(
            from_uri("gopher://x"),
            Err(ConnectorError::InvalidUri(_))
        ));
        assert!(matches!(
            from_uri("file://relative/dir"),
            Err(ConnectorError::InvalidUri(_))
        ));
    }

    #[test]
    fn object_paths() {
        for ok in ["a", "a/b.txt", "x/y/z"] {
            check_object_path(ok).unwrap();
        }
        for bad in ["", "/a", "a//b", "a/../b", "./a", "a\\b", "a/\0", ".."] {
            assert!(check_object_path(bad).is_err(), "{bad:?}");
        }
    }
}
