//! Tenants and their policy: keys, allowed sources and destinations, data classifications
//! and quotas, read from `DATA/tenants.json`.
//!
//! ```json
//! { "tenants": [ {
//!     "tenant": "acme",
//!     "api_keys": ["<SHA-256 hex of a key>"],
//!     "sources": ["/srv/acme/outgoing"],
//!     "destinations": [
//!       { "prefix": "s3://acme-phi/", "classifications": ["phi", "internal"] },
//!       { "prefix": "file:///srv/incoming/acme/" }
//!     ],
//!     "max_concurrent_jobs": 50,
//!     "share": 2,
//!     "bytes_per_second": 104857600,
//!     "credentials": "/etc/trackshift/acme.env"
//! } ] }
//! ```
//!
//! Keys are stored as SHA-256 digests and compared in constant time; any key of a tenant
//! works for the QUIC sender protocol and the HTTP API. `token_sha256` (one key) is the
//! older spelling and still accepted. Without `destinations` a tenant may write anywhere
//! but only unclassified jobs; without `sources` the job service reads nothing for it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trackshift_crypto::Hash32;

/// A tenant file or policy problem.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is malformed.
    #[error("tenant file {path}: {message}")]
    Invalid {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing the file failed.
    #[error(transparent)]
    Write(#[from] trackshift_crypto::CryptoError),
}

/// A job refused by its tenant's policy (the message is safe to show the tenant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by policy: {0}")]
pub struct PolicyError(pub String);

/// Where a tenant may write, and which data classifications may go there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationRule {
    /// A destination URI prefix, matched at a path boundary (`s3://b/p` allows
    /// `s3://b/p/x`, not `s3://b/px`).
    pub prefix: String,
    /// Classifications (for example `phi`, `pii`, `internal`) jobs may carry to it;
    /// unclassified jobs may always go where a rule allows.
    #[serde(default)]
    pub classifications: Vec<String>,
}

/// One tenant in `tenants.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    /// Tenant id.
    pub tenant: String,
    /// SHA-256 of a key (older single-key form; see `api_keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<Hash32>,
    /// SHA-256 digests of the tenant's keys (several, so keys can be rotated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<Hash32>,
    /// Directories the job service may read as sources for this tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<PathBuf>,
    /// Allowed destinations (absent: any destination, unclassified jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<Vec<DestinationRule>>,
    /// Most jobs of this tenant running at once in the job service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_jobs: Option<u32>,
    /// Weight in fair scheduling (default 1): a tenant with share 2 gets twice the
    /// running jobs of a tenant with share 1 when both have work queued.
    #[serde(default = "default_share")]
    pub share: u32,
    /// Most bytes per second all of this tenant's jobs send together (on each worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// The tenant's own destination credentials: a file of `NAME=VALUE` lines with the
    /// names of the process environment's (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_KEY`,
    /// `TRACKSHIFT_SFTP_KEY`, `TRACKSHIFT_FTPS_PASSWORD`, ...). With it the tenant's jobs use
    /// only these; without it, the gateway's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
}

fn default_share() -> u32 {
    1
}

impl TenantEntry {
    /// A tenant with one key and the default policy.
    pub fn new(tenant: &str, key: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            token_sha256: None,
            api_keys: vec![key_digest(key)],
            sources: Vec::new(),
            destinations: None,
            max_concurrent_jobs: None,
            share: 1,
            bytes_per_second: None,
            credentials: None,
        }
    }

    fn digests(&self) -> impl Iterator<Item = &Hash32> {
        self.token_sha256.iter().chain(&self.api_keys)
    }

    /// Checks that this tenant may send a job with `classification` to `uri`.
    pub fn check_destination(
        &self,
        uri: &str,
        classification: Option<&str>,
    ) -> Result<(), PolicyError> {
        if has_dot_segment(uri) {
            return Err(PolicyError(format!(
                "destination {uri} has a '.' or '..' path segment"
            )));
        }
        let Some(rules) = &self.destinations else {
            return match classification {
                None => Ok(()),
                Some(c) => Err(PolicyError(format!(
                    "no destination is configured to receive {c:?} data"
                ))),
            };
        };
        let matching: Vec<&DestinationRule> = rules
            .iter()
            .filter(|r| prefix_matches(&r.prefix, uri))
            .collect();
        if matching.is_empty() {
            return Err(PolicyError(format!(
                "destination {uri} is not allowed for this tenant"
            )));
        }
        match classification {
            None => Ok(()),
            Some(c)
                if matching
                    .iter()
                    .any(|r| r.classifications.iter().any(|x| x == c)) =>
            {
                Ok(())
            }
            Some(c) => Err(PolicyError(format!(
                "destination {uri} may not receive {c:?} data"
            ))),
        }
    }

    /// Resolves a job's source path and checks it lies under one of the tenant's source
    /// directories (after resolving symbolic links). Returns the canonical path.
    pub fn check_source(&self, path: &Path) -> Result<PathBuf, PolicyError> {
        if !path.is_absolute() {
            return Err(PolicyError(format!(
                "source {} must be an absolute path",
                path.display()
            )));
        }
        if self.sources.is_empty() {
            return Err(PolicyError(
                "no source directories are configured for this tenant".into(),
            ));
        }
        let real = std::fs::canonicalize(path).map_err(|e| {
            PolicyError(if e.kind() == std::io::ErrorKind::NotFound {
                format!("source {} does not exist", path.display())
            } else {
                format!("source {} cannot be read: {e}", path.display())
            })
        })?;
        let allowed = self
            .sources
            .iter()
            .any(|root| std::fs::canonicalize(root).is_ok_and(|root| real.starts_with(root)));
        if allowed {
            Ok(real)
        } else {
            Err(PolicyError(format!(
                "source {} is outside this tenant's source directories",
                path.display()
            )))
        }
    }
}

/// `prefix` allows `uri` when they are equal or `uri` continues it after a `/` or `?`.
fn prefix_matches(prefix: &str, uri: &str) -> bool {
    match uri.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => prefix.ends_with('/') || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// True when the URI's path (percent-decoded) has a `.` or `..` segment.
fn has_dot_segment(uri: &str) -> bool {
    let path = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.split(['/', '\\']).any(|s| s == "." || s == "..")
}

/// SHA-256 of a key, as stored in the tenant file.
pub fn key_digest(key: &str) -> Hash32 {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Hash32(out)
}

/// Creates a random key (256 bits, hex).
pub fn generate_key() -> String {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).expect("system random generator");
    hex::encode(raw)
}

/// The tenant file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    /// Tenants.
    pub tenants: Vec<TenantEntry>,
}

impl TenantFile {
    /// The file in a data directory.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("tenants.json")
    }

    /// Reads and validates `DATA/tenants.json` (absent: no tenants).
    pub fn load(data_dir: &Path) -> Result<Self, TenantError> {
        let path = Self::path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(TenantError::Io {
                    action: "reading",
                    path,
                    source,
                });
            }
        };
        let invalid = |message: String| TenantError::Invalid {
            path: path.clone(),
            message,
        };
        let file: TenantFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for t in &file.tenants {
            crate::protocol::check_id("tenant", &t.tenant).map_err(|e| invalid(e.to_string()))?;
            if !seen.insert(t.tenant.as_str()) {
                return Err(invalid(format!("tenant {:?} is listed twice", t.tenant)));
            }
            if t.share == 0 {
                return Err(invalid(format!(
                    "tenant {:?}: share must be at least 1",
                    t.tenant
                )));
            }
            if let Some(rate) = t.bytes_per_second
                && trackshift_connectors::ByteRate::new(rate).is_err()
            {
                return Err(invalid(format!(
                    "tenant {:?}: bytes_per_second must be 1024 to 4 TiB",
                    t.tenant
                )));
            }
            if t.max_concurrent_jobs == Some(0) {
                return Err(invalid(format!(
                    "tenant {:?}: max_concurrent_jobs must be at least 1",
                    t.tenant
                )));
            }
        }
        Ok(file)
    }

    /// Writes the file (0600, atomically).
    pub fn save(&self, data_dir: &Path) -> Result<(), TenantError> {
        std::fs::create_dir_all(data_dir).map_err(|source| TenantError::Io {
            action: "creating",
            path: data_dir.to_path_buf(),
            source,
        })?;
        let json = serde_json::to_string_pretty(self).expect("tenant file serialises");
        trackshift_crypto::filestore::write_atomic(&Self::path(data_dir), json.as_bytes(), 0o600)?;
        Ok(())
    }

    /// The tenant whose key this is. Constant time in the key: every digest of every
    /// tenant is compared in full.
    pub fn authenticate(&self, key: &str) -> Option<&TenantEntry> {
        let digest = key_digest(key);
        let mut found = None;
        for t in &self.tenants {
            for d in t.digests() {
                if bool::from(subtle::ConstantTimeEq::ct_eq(&d.0[..], &digest.0[..])) {
                    found = Some(t);
                }
            }
        }
        found
    }

    /// The destination credentials of every tenant that has its own (read from their
    /// files now; the others use the process environment).
    pub fn credentials(
        &self,
    ) -> Result<std::collections::HashMap<String, trackshift_connectors::Settings>, TenantError>
    {
        let mut out = std::collections::HashMap::new();
        for t in &self.tenants {
            if let Some(path) = &t.credentials {
                let settings = trackshift_connectors::Settings::load(path).map_err(|e| {
                    TenantError::Invalid {
                        path: path.clone(),
                        message: format!("credentials of tenant {}: {e}", t.tenant),
                    }
                })?;
                out.insert(t.tenant.clone(), settings);
            }
        }
        Ok(out)
    }

    /// A tenant by id.
    pub fn get(&self, tenant: &str) -> Option<&TenantEntry> {
        self.tenants.iter().find(|t| t.tenant == tenant)
    }
}

/// One loaded version of the tenant file, with the credentials its tenants name.
#[derive(Debug)]
pub struct TenantSnapshot {
    /// The file as it was read.
    pub file: TenantFile,
    /// Destination credentials of the tenants that have their own.
    pub credentials: std::collections::HashMap<String, trackshift_connectors::Settings>,
    /// Counts loads from 0, so that what was built from an older version (a connector
    /// holding old credentials) can be told apart.
    pub generation: u64,
}

/// The tenants a running gateway serves: the tenant file as last loaded, replaced whole
/// by [`LiveTenants::reload`] (the gateway does it on SIGHUP). A file that does not load
/// leaves the version in force untouched, so a bad edit never half-applies a policy.
#[derive(Debug)]
pub struct LiveTenants {
    data_dir: Option<PathBuf>,
    current: std::sync::RwLock<std::sync::Arc<TenantSnapshot>>,
}

impl LiveTenants {
    /// Loads `DATA/tenants.json` and the credentials files it names.
    pub fn load(data_dir: &Path) -> Result<Self, TenantError> {
        let file = TenantFile::load(data_dir)?;
        let mut me = Self::fixed(file)?;
        me.data_dir = Some(data_dir.to_path_buf());
        Ok(me)
    }

    /// Tenants given in memory (tests, benchmarks); [`LiveTenants::reload`] keeps them.
    pub fn fixed(file: TenantFile) -> Result<Self, TenantError> {
        let credentials = file.credentials()?;
        Ok(Self {
            data_dir: None,
            current: std::sync::RwLock::new(std::sync::Arc::new(TenantSnapshot {
                file,
                credentials,
                generation: 0,
            })),
        })
    }

    /// The version in force.
    pub fn current(&self) -> std::sync::Arc<TenantSnapshot> {
        self.current.read().expect("tenants lock").clone()
    }

    /// Reads the file again and puts it in force if it loads (with every credentials
    /// file it names); otherwise returns why and keeps the version in force. A missing
    /// file is an error here (at start it means "no tenants"): a file moved away by
    /// mistake must not lock every tenant out.
    pub fn reload(&self) -> Result<std::sync::Arc<TenantSnapshot>, TenantError> {
        let Some(dir) = &self.data_dir else {
            return Ok(self.current());
        };
        let path = TenantFile::path(dir);
        if let Err(source) = std::fs::metadata(&path) {
            return Err(TenantError::Io {
                action: "reading",
                path,
                source,
            });
        }
        let file = TenantFile::load(dir)?;
        let credentials = file.credentials()?;
        let mut current = self.current.write().expect("tenants lock");
        let next = std::sync::Arc::new(TenantSnapshot {
            file,
            credentials,
            generation: current.generation + 1,
        });
        *current = next.clone();
        Ok(next)
    }
}

/// Adds a key to a tenant in `DATA/tenants.json`, creating the tenant (default policy)
/// when it is new; other tenants and this tenant's policy are kept.
pub fn add_key(data_dir: &Path, tenant: &str, key: &str) -> Result<(), TenantError> {
    crate::protocol::check_id("tenant", tenant).map_err(|e| TenantError::Invalid {
        path: TenantFile::path(data_dir),
        message: e.to_string(),
    })?;
    let mut file = TenantFile::load(data_dir)?;
    match file.tenants.iter_mut().find(|t| t.tenant == tenant) {
        Some(t) => t.api_keys.push(key_digest(key)),
        None => file.tenants.push(TenantEntry::new(tenant, key)),
    }
    file.save(data_dir)
}

/// The job service's key for speaking to its gateway on a tenant's behalf: a worker
/// presents `svc1.<tenant>.<HMAC-SHA256(key, tenant)>` instead of a tenant key (which the
/// gateway only has hashed). Kept in `DATA/service.key` (0600); never logged.
pub struct ServiceKey(aws_lc_rs::hmac::Key);

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey([redacted])")
    }
}

const SERVICE_PREFIX: &str = "svc1.";

impl ServiceKey {
    /// Loads `DATA/service.key`, creating it (32 random bytes, 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TenantError> {
        std::fs::create_dir_all(data_dir).map_err(|source| TenantError::Io {
            action: "creating",
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("service.key");
        // Owner-only, checked on the descriptor read (see `read_secret`).
        let raw = match trackshift_crypto::filestore::read_secret_if_exists(&path)? {
            Some(b) => b,
            None => {
                let mut b = zeroize::Zeroizing::new(vec![0u8; 32]);
                aws_lc_rs::rand::fill(&mut b).expect("system random generator");
                trackshift_crypto::filestore::write_atomic(&path, &b, 0o600)?;
                b
            }
        };
        if raw.len() != 32 {
            return Err(TenantError::Invalid {
                path,
                message: "a service key is 32 bytes".into(),
            });
        }
        Ok(Self(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &raw,
        )))
    }

    /// The token a worker presents for `tenant`.
    pub fn token_for(&self, tenant: &str) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.0, tenant.as_bytes());
        format!("{SERVICE_PREFIX}{tenant}.{}", hex::encode(tag.as_ref()))
    }

    /// The tenant a service token speaks for, if it is genuine (constant-time check).
    pub fn verify(&self, token: &str) -> Option<String> {
        let rest = token.strip_prefix(SERVICE_PREFIX)?;
        let (tenant, tag) = rest.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        aws_lc_rs::hmac::verify(&self.0, tenant.as_bytes(), &tag).ok()?;
        Some(tenant.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(rules: Option<Vec<DestinationRule>>) -> TenantEntry {
        TenantEntry {
            destinations: rules,
            ..TenantEntry::new("acme", "k")
        }
    }

    fn rule(prefix: &str, classes: &[&str]) -> DestinationRule {
        DestinationRule {
            prefix: prefix.into(),
            classifications: classes.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    #[test]
    fn destinations_match_at_path_boundaries_only() {
        let t = tenant(Some(vec![
            rule("s3://acme/in", &[]),
            rule("file:///srv/a/", &[]),
        ]));
        assert!(t.check_destination("s3://acme/in", None).is_ok());
        assert!(t.check_destination("s3://acme/in/x", None).is_ok());
        assert!(t.check_destination("s3://acme/in?region=x", None).is_ok());
        assert!(t.check_destination("s3://acme/inx", None).is_err());
        assert!(t.check_destination("s3://acme-evil/in", None).is_err());
        assert!(t.check_destination("file:///srv/a/b", None).is_ok());
        assert!(t.check_destination("file:///srv/a/../b", None).is_err());
        assert!(t.check_destination("file:///srv/a/%2e%2e/b", None).is_err());
        assert!(t.check_destination("file:///srv/ab", None).is_err());
    }

    #[test]
    fn classified_jobs_go_only_where_their_class_is_allowed() {
        let t = tenant(Some(vec![
            rule("s3://phi/", &["phi", "internal"]),
            rule("s3://open/", &[]),
        ]));
        assert!(t.check_destination("s3://phi/x", Some("phi")).is_ok());
        assert!(t.check_destination("s3://phi/x", None).is_ok());
        let e = t.check_destination("s3://open/x", Some("phi")).unwrap_err();
        assert!(e.0.contains("may not receive \"phi\""), "{e}");
        // No rules: anywhere, but unclassified only.
        let open = tenant(None);
        assert!(open.check_destination("null://", None).is_ok());
        assert!(open.check_destination("null://", Some("phi")).is_err());
    }

    #[test]
    fn sources_must_lie_under_a_configured_directory() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("acme");
        let other = root.path().join("other");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(allowed.join("f"), b"x").unwrap();
        std::fs::write(other.join("g"), b"y").unwrap();
        std::os::unix::fs::symlink(other.join("g"), allowed.join("link")).unwrap();
        let mut t = tenant(None);
        assert!(
            t.check_source(&allowed.join("f")).is_err(),
            "no sources configured"
        );
        t.sources = vec![allowed.clone()];
        assert!(t.check_source(&allowed.join("f")).is_ok());
        assert!(t.check_source(&allowed).is_ok());
        assert!(t.check_source(&other.join("g")).is_err());
        assert!(t.check_source(&allowed.join("../other/g")).is_err());
        assert!(
            t.check_source(&allowed.join("link")).is_err(),
            "symlink out"
        );
        assert!(t.check_source(Path::new("relative")).is_err());
        let e = t.check_source(&allowed.join("missing")).unwrap_err();
        assert!(e.0.contains("does not exist"));
    }

    #[test]
    fn keys_authenticate_their_tenant_only() {
        let dir = tempfile::tempdir().unwrap();
        add_key(dir.path(), "a", "key-a").unwrap();
        add_key(dir.path(), "b", "key-b").unwrap();
        add_key(dir.path(), "a", "key-a2").unwrap();
        let file = TenantFile::load(dir.path()).unwrap();
        assert_eq!(file.authenticate("key-a").unwrap().tenant, "a");
        assert_eq!(file.authenticate("key-a2").unwrap().tenant, "a");
        assert_eq!(file.authenticate("key-b").unwrap().tenant, "b");
        assert!(file.authenticate("key-c").is_none());
        assert!(file.authenticate("").is_none());
        let text = std::fs::read_to_string(TenantFile::path(dir.path())).unwrap();
        assert!(!text.contains("key-a"), "keys are stored hashed");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(TenantFile::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn service_tokens_speak_for_one_tenant_and_cannot_be_forged() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServiceKey::load_or_create(dir.path()).unwrap();
        let again = ServiceKey::load_or_create(dir.path()).unwrap();
        let t = key.token_for("acme");
        assert_eq!(again.verify(&t).as_deref(), Some("acme"), "persisted");
        let forged = t.replacen("acme", "other", 1);
        assert_eq!(key.verify(&forged), None);
        let other = ServiceKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.verify(&t), None, "another gateway's key");
        assert_eq!(key.verify("svc1.acme.zz"), None);
        assert_eq!(key.verify("acme"), None);
        assert!(!format!("{key:?}").contains(|c: char| c.is_ascii_digit()));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("service.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn older_single_key_files_still_load_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = format!(
            r#"{{"tenants":[{{"tenant":"old","token_sha256":"{}"}}]}}"#,
            hex::encode(key_digest("legacy").0)
        );
        std::fs::write(TenantFile::path(dir.path()), legacy).unwrap();
        let file = TenantFile::load(dir.path()).unwrap();
        assert_eq!(file.authenticate("legacy").unwrap().tenant, "old");
        for bad in [
            r#"{"tenants":[{"tenant":"a","surprise":1}]}"#,
            r#"{"tenants":[{"tenant":"a"},{"tenant":"a"}]}"#,
            r#"{"tenants":[{"tenant":"../x"}]}"#,
            r#"{"tenants":[{"tenant":"a","share":0}]}"#,
        ] {
            std::fs::write(TenantFile::path(dir.path()), bad).unwrap();
            assert!(TenantFile::load(dir.path()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_reload_replaces_the_whole_file_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("b.env");
        std::fs::write(&creds, "AWS_ACCESS_KEY_ID=one\n").unwrap();
        let owner_only = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode;
        std::fs::set_permissions(&creds, owner_only(0o600)).unwrap();
        let save = |tenants: Vec<TenantEntry>| TenantFile { tenants }.save(dir.path()).unwrap();
        save(vec![TenantEntry::new("a", "key-a")]);
        let live = LiveTenants::load(dir.path()).unwrap();
        assert_eq!(live.current().generation, 0);
        assert!(live.current().file.authenticate("key-b").is_none());

        save(vec![TenantEntry {
            credentials: Some(creds.clone()),
            ..TenantEntry::new("b", "key-b")
        }]);
        let next = live.reload().unwrap();
        assert_eq!(next.generation, 1);
        assert_eq!(
            live.current().file.authenticate("key-b").unwrap().tenant,
            "b"
        );
        assert!(live.current().file.authenticate("key-a").is_none());
        let b = &live.current().credentials["b"];
        assert_eq!(b.var("AWS_ACCESS_KEY_ID").as_deref(), Some("one"));

        // A broken file, a missing one, or one naming a credentials file that is gone:
        // nothing changes.
        std::fs::write(TenantFile::path(dir.path()), "{ oops").unwrap();
        assert!(live.reload().is_err());
        std::fs::remove_file(TenantFile::path(dir.path())).unwrap();
        assert!(live.reload().is_err());
        std::fs::remove_file(&creds).unwrap();
        save(vec![TenantEntry {
            credentials: Some(creds.clone()),
            ..TenantEntry::new("c", "key-c")
        }]);
        assert!(live.reload().is_err());
        let kept = live.current();
        assert_eq!(kept.generation, 1);
        assert_eq!(kept.file.authenticate("key-b").unwrap().tenant, "b");
        assert!(kept.file.authenticate("key-c").is_none());
    }
}
