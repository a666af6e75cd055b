//! `DATA/tenants.json`: loading and checking it (owner-only), the snapshot in force and its
//! reload on SIGHUP ([`LiveTenants`]), adding keys and destinations.

use super::*;
use trackshift_crypto::IoError;

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
        use std::io::Read as _;
        use std::os::unix::fs::PermissionsExt as _;
        let path = Self::path(data_dir);
        let io = |source| {
            TenantError::Io(IoError {
                action: "reading",
                path: path.clone(),
                source,
            })
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(io(source)),
        };
        // Key digests and policy: only the gateway's user may read or change them (checked
        // on the descriptor that is read, so a swap after the check changes nothing).
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TenantError::Invalid {
                path: path.clone(),
                message: format!(
                    "mode {mode:04o} lets other users read or change tenants' key digests and \
                     policy; make it owner-only: chmod 600 {}",
                    path.display()
                ),
            });
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
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
            if t.max_queued_jobs == Some(0) {
                return Err(invalid(format!(
                    "tenant {:?}: max_queued_jobs must be at least 1",
                    t.tenant
                )));
            }
            for r in t.destinations.iter().flatten() {
                let d = r
                    .destination()
                    .map_err(|m| invalid(format!("tenant {:?}: {m}", t.tenant)))?;
                if d.scheme() == Scheme::File
                    && overlaps(Path::new(&format!("/{}", d.path())), data_dir)
                {
                    return Err(invalid(format!(
                        "tenant {:?}: destination prefix {:?} overlaps the gateway's data directory {} (its keys and ledger): not allowed",
                        t.tenant,
                        r.prefix,
                        data_dir.display()
                    )));
                }
            }
            for src in &t.sources {
                if overlaps(src, data_dir) {
                    return Err(invalid(format!(
                        "tenant {:?}: source directory {} overlaps the gateway's data directory {} (its keys and ledger): not allowed",
                        t.tenant,
                        src.display(),
                        data_dir.display()
                    )));
                }
            }
        }
        Ok(file)
    }

    /// Writes the file (0600, atomically).
    pub fn save(&self, data_dir: &Path) -> Result<(), TenantError> {
        std::fs::create_dir_all(data_dir).map_err(|source| {
            TenantError::Io(IoError {
                action: "creating",
                path: data_dir.to_path_buf(),
                source,
            })
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
    pub(super) data_dir: Option<PathBuf>,
    pub(super) current: std::sync::RwLock<std::sync::Arc<TenantSnapshot>>,
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

    /// The gateway's data directory the tenants were loaded from (`None` for
    /// [`LiveTenants::fixed`]): no tenant source may be, contain or reach it.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
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
            return Err(TenantError::Io(IoError {
                action: "reading",
                path,
                source,
            }));
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

/// Adds a key to a tenant in `DATA/tenants.json`, creating the tenant when it is new, and
/// adds a rule for each of `destinations` (operator-written URIs, see
/// [`DestinationRule::from_uri`]) it does not have yet; other tenants and the rest of this
/// tenant's policy are kept.
pub fn add_key(
    data_dir: &Path,
    tenant: &str,
    key: &str,
    destinations: &[&str],
) -> Result<(), TenantError> {
    crate::protocol::check_id("tenant", tenant).map_err(|e| TenantError::Invalid {
        path: TenantFile::path(data_dir),
        message: e.to_string(),
    })?;
    let mut file = TenantFile::load(data_dir)?;
    let t = match file.tenants.iter().position(|t| t.tenant == tenant) {
        Some(i) => {
            file.tenants[i].api_keys.push(key_digest(key));
            &mut file.tenants[i]
        }
        None => {
            file.tenants.push(TenantEntry::new(tenant, key));
            file.tenants.last_mut().expect("just pushed")
        }
    };
    let rules = destinations
        .iter()
        .map(|d| DestinationRule::from_uri(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| TenantError::Invalid {
            path: TenantFile::path(data_dir),
            message,
        })?;
    allow_destinations(t, &rules);
    file.save(data_dir)?;
    // What was written must load (a rule over the data directory, say, is refused).
    TenantFile::load(data_dir).map(drop)
}

/// Adds each rule of `destinations` whose prefix `t` has no rule for yet.
pub fn allow_destinations(t: &mut TenantEntry, destinations: &[DestinationRule]) {
    if destinations.is_empty() {
        return;
    }
    let rules = t.destinations.get_or_insert_with(Vec::new);
    for d in destinations {
        if !rules.iter().any(|r| r.prefix == d.prefix) {
            rules.push(d.clone());
        }
    }
}
