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
//!     "max_queued_jobs": 10000,
//!     "share": 2,
//!     "bytes_per_second": 104857600,
//!     "credentials": "/etc/trackshift/acme.env"
//! } ] }
//! ```
//!
//! Keys are stored as SHA-256 digests and compared in constant time; any key of a tenant
//! works for the QUIC sender protocol and the HTTP API. `token_sha256` (one key) is the
//! older spelling and still accepted. Without `destinations` a tenant writes nowhere;
//! without `sources` the job service reads nothing for it, and with them it reads only
//! beneath them, never through a link (see [`TenantEntry::check_source`]).
//!
//! A destination rule may carry the operator's `options` for everything under its prefix
//! (`endpoint`, `region`, `allow_http`, `known_hosts`, `fingerprint`, `key`, `ca`,
//! `server_name`, ...: whatever chooses a network target, a file, a TLS identity or an
//! account), and `job_options`: the few options a job's URI may carry there (`overwrite`,
//! `connections`). A job URI with any other option is refused, at submit and at the
//! gateway, before any connector is built.
//!
//! Quotas (see [`crate::quota`] and `docs/RUNBOOK.md`): `max_concurrent_jobs` caps the
//! tenant's jobs open at once on each gateway, whether sent directly or by the job
//! service (whose claims keep to it across gateways); `bytes_per_second` caps the chunk
//! bytes each gateway receives for the tenant per second (the job service also divides
//! it between the gateways running the tenant's jobs); `share` weighs the tenant in fair
//! scheduling and in its part of each gateway's memory budget; `max_queued_jobs`
//! (default [`DEFAULT_MAX_QUEUED_JOBS`]) caps its jobs queued or running in the job
//! service, beyond which `POST /v1/jobs` answers 429.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trackshift_connectors::{Destination, OptionKind, Scheme};
use trackshift_crypto::Hash32;

/// A tenant file or policy problem.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// A file-system operation failed.
    #[error(transparent)]
    Io(#[from] trackshift_crypto::IoError),
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

/// What a job asks of its tenant's policy: where the gateway reads (a job-service job's
/// source; a direct send reads on the sender's side, so `None`) and where it writes.
#[derive(Debug, Clone, Copy)]
pub struct JobAsk<'a> {
    /// The source the gateway's worker will read, if it reads one.
    pub source: Option<&'a Path>,
    /// The destination URIs, as the job names them.
    pub destinations: &'a [String],
    /// The job's data classification.
    pub classification: Option<&'a str>,
}

/// A job its tenant's policy admits: every destination parsed and placed under the rule
/// that allows it (with that rule's operator options), and the source confined beneath the
/// directory that holds it.
#[derive(Debug)]
pub struct Admitted {
    /// The source, when [`JobAsk::source`] named one.
    pub source: Option<crate::scan::Confined>,
    /// The destinations to build connectors from, in the job's order.
    pub destinations: Vec<Destination>,
}

/// Why a job was not admitted (safe to show the tenant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// A destination does not parse.
    #[error("refused by policy: destination {:?}: {error}", shorten(.uri))]
    Malformed {
        /// The destination as the job wrote it.
        uri: String,
        /// What is wrong with it.
        error: trackshift_connectors::DestinationError,
    },
    /// The policy does not allow it.
    #[error(transparent)]
    Refused(#[from] PolicyError),
}

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
    /// The operator's settings for every job under the prefix (any option the scheme
    /// knows); a job can neither set nor override them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
    /// Options a job's URI may carry under this prefix (only options that change how a
    /// job's data is written: `overwrite`, `connections`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_options: Vec<String>,
}

impl DestinationRule {
    /// A rule allowing unclassified jobs under `prefix`, with no options.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            classifications: Vec::new(),
            options: Default::default(),
            job_options: Vec::new(),
        }
    }

    /// A rule from an operator-written URI: its path is the prefix and its query the
    /// operator's options (`sftp://u@h/in?known_hosts=/etc/ts/kh`), unclassified jobs only.
    pub fn from_uri(uri: &str) -> Result<Self, String> {
        let d = Destination::parse(uri).map_err(|e| format!("destination {uri:?}: {e}"))?;
        Ok(Self {
            prefix: d.without_options().to_string(),
            options: d
                .options()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Self::prefix(String::new())
        })
    }

    /// The rule's prefix parsed, with the operator's options.
    pub fn destination(&self) -> Result<Destination, String> {
        let mut d = Destination::parse(&self.prefix)
            .map_err(|e| format!("destination prefix {:?}: {e}", self.prefix))?;
        if !d.options().is_empty() {
            return Err(format!(
                "destination prefix {:?}: settings go in \"options\", not in the prefix",
                self.prefix
            ));
        }
        for (k, v) in &self.options {
            d = d
                .with_option(k, v)
                .map_err(|e| format!("destination prefix {:?}: {e}", self.prefix))?;
        }
        for k in &self.job_options {
            match d.scheme().option(k) {
                Some(o) if o.kind == OptionKind::Job => {}
                Some(_) => {
                    return Err(format!(
                        "destination prefix {:?}: {k:?} is the operator's setting; put it in \"options\", jobs may not choose it",
                        self.prefix
                    ));
                }
                None => {
                    return Err(format!(
                        "destination prefix {:?}: unknown job option {k:?}",
                        self.prefix
                    ));
                }
            }
        }
        Ok(d)
    }
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
    /// Most jobs of this tenant open at once: on each gateway (direct sends and the job
    /// service's together) and in the job service's claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_jobs: Option<u32>,
    /// Most jobs of this tenant queued, running or verifying in the job service at once
    /// (default [`DEFAULT_MAX_QUEUED_JOBS`]); a submission beyond it is refused (429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_jobs: Option<u32>,
    /// Weight in fair scheduling (default 1): a tenant with share 2 gets twice the
    /// running jobs of a tenant with share 1 when both have work queued.
    #[serde(default = "default_share")]
    pub share: u32,
    /// Most chunk bytes per second each gateway receives for this tenant, all its jobs and
    /// connections together (the job service splits it between gateways).
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

/// A tenant's `max_queued_jobs` when its entry sets none.
pub const DEFAULT_MAX_QUEUED_JOBS: u32 = 10_000;

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
            max_queued_jobs: None,
            share: 1,
            bytes_per_second: None,
            credentials: None,
        }
    }

    /// Most jobs the tenant may have queued or running in the job service.
    pub fn queued_jobs_limit(&self) -> u32 {
        self.max_queued_jobs.unwrap_or(DEFAULT_MAX_QUEUED_JOBS)
    }

    fn digests(&self) -> impl Iterator<Item = &Hash32> {
        self.token_sha256.iter().chain(&self.api_keys)
    }

    /// The one admission check of a job against this tenant's policy, run alike by the job
    /// API at submission, by the worker before every attempt (the file may have changed
    /// meanwhile) and by the gateway when the job opens: every destination in order
    /// ([`TenantEntry::check_parsed_destination`]), then the source
    /// ([`TenantEntry::check_source`], beside the gateway's `data_dir`).
    pub fn admit(
        &self,
        ask: JobAsk<'_>,
        data_dir: Option<&Path>,
    ) -> Result<Admitted, AdmissionError> {
        let destinations = ask
            .destinations
            .iter()
            .map(|uri| {
                let dest = Destination::parse(uri).map_err(|error| AdmissionError::Malformed {
                    uri: uri.clone(),
                    error,
                })?;
                Ok(self.check_parsed_destination(&dest, ask.classification)?)
            })
            .collect::<Result<Vec<_>, AdmissionError>>()?;
        let source = ask
            .source
            .map(|p| self.check_source(p, data_dir))
            .transpose()?;
        Ok(Admitted {
            source,
            destinations,
        })
    }

    /// Checks that this tenant may send a job with `classification` to `uri`, and returns
    /// the destination to build the connector from: `uri` parsed, with the operator's
    /// options of the most specific rule that allows it, trusting only the rule's prefix.
    /// Nothing is built or read here: a refused destination reveals nothing.
    pub fn check_destination(
        &self,
        uri: &str,
        classification: Option<&str>,
    ) -> Result<Destination, PolicyError> {
        let dest = Destination::parse(uri)
            .map_err(|e| PolicyError(format!("destination {:?}: {e}", shorten(uri))))?;
        self.check_parsed_destination(&dest, classification)
    }

    /// As [`TenantEntry::check_destination`], for a destination already parsed.
    pub fn check_parsed_destination(
        &self,
        dest: &Destination,
        classification: Option<&str>,
    ) -> Result<Destination, PolicyError> {
        if let Some((k, _)) = dest.options_of(OptionKind::Operator).next() {
            return Err(PolicyError(format!(
                "destination {dest}: the setting {k:?} is chosen by the gateway's operator, not by a job"
            )));
        }
        let Some(rules) = &self.destinations else {
            return Err(PolicyError(
                "no destinations are configured for this tenant".into(),
            ));
        };
        let holding: Vec<(&DestinationRule, Destination)> = rules
            .iter()
            .filter_map(|r| r.destination().ok().map(|d| (r, d)))
            .filter(|(_, d)| dest.is_within(d))
            .collect();
        if holding.is_empty() {
            return Err(PolicyError(format!(
                "destination {dest} is not allowed for this tenant"
            )));
        }
        let class_ok = |r: &DestinationRule| {
            classification.is_none_or(|c| r.classifications.iter().any(|x| x == c))
        };
        let opts_ok = |r: &DestinationRule| {
            dest.options()
                .keys()
                .all(|k| r.job_options.iter().any(|o| o == k))
        };
        let best = holding
            .iter()
            .filter(|(r, _)| class_ok(r) && opts_ok(r))
            .max_by_key(|(_, d)| d.segments().len());
        match best {
            Some((_, rule)) => Ok(dest.under_rule(rule)),
            None if !holding.iter().any(|(r, _)| class_ok(r)) => Err(PolicyError(format!(
                "destination {dest} may not receive {:?} data",
                classification.unwrap_or_default()
            ))),
            None => {
                let k = dest
                    .options()
                    .keys()
                    .find(|k| !holding.iter().any(|(r, _)| r.job_options.contains(k)))
                    .cloned()
                    .unwrap_or_default();
                Err(PolicyError(format!(
                    "destination {dest}: the setting {k:?} is not allowed for this tenant there"
                )))
            }
        }
    }

    /// Checks a job's source `path` against this tenant's source directories and returns
    /// it confined beneath the one that holds it, to be read with
    /// [`crate::scan::list_confined`] (which resolves it again, beneath that directory,
    /// without following links: what is checked here is not trusted later).
    ///
    /// `path` must be absolute, without `.` or `..`, and lie (as written) beneath a
    /// configured directory (as the operator wrote it, or resolved): anything else is "not
    /// allowed" without looking at the file system, so the answer says nothing about what
    /// exists outside the tenant's directories. Inside them the tenant may learn its own
    /// tree: a missing path "does not exist", a path crossing a link is "not allowed", and
    /// so is the gateway's data directory `data_dir` or any directory holding it.
    pub fn check_source(
        &self,
        path: &Path,
        data_dir: Option<&Path>,
    ) -> Result<crate::scan::Confined, PolicyError> {
        use crate::scan::ScanError;
        use std::path::Component;
        let shown = shorten(&path.display().to_string());
        if !path.is_absolute() {
            return Err(PolicyError(format!(
                "source {shown} must be an absolute path"
            )));
        }
        if self.sources.is_empty() {
            return Err(PolicyError(
                "no source directories are configured for this tenant".into(),
            ));
        }
        let not_allowed = || {
            PolicyError(format!(
                "source {shown} is not allowed for this tenant (not beneath its source directories)"
            ))
        };
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(not_allowed());
        }
        let (root, rel) = self
            .sources
            .iter()
            .flat_map(|root| [Some(root.clone()), std::fs::canonicalize(root).ok()])
            .flatten()
            .filter_map(|root| {
                let rel = path.strip_prefix(&root).ok()?;
                let parts = rel
                    .components()
                    .map(|c| match c {
                        Component::Normal(n) => n.to_str(),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some((root, parts.join("/")))
            })
            .max_by_key(|(root, _)| root.components().count())
            .ok_or_else(not_allowed)?;
        let confined = crate::scan::Confined {
            root,
            rel,
            keep_out: data_dir.map(Path::to_path_buf).into_iter().collect(),
        };
        confined.probe().map_err(|e| {
            PolicyError(match e {
                ScanError::NotAllowed { reason, .. } => {
                    format!("source {shown} is not allowed for this tenant ({reason})")
                }
                ScanError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    format!("source {shown} does not exist")
                }
                ScanError::Io { source, .. } => format!("source {shown} cannot be read: {source}"),
                ScanError::Unsupported { reason, .. } => format!("source {shown}: {reason}"),
                e => format!("source {shown}: {e}"),
            })
        })?;
        Ok(confined)
    }
}

/// At most 200 characters of a tenant's input, for messages.
fn shorten(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Whether one of two local paths lies within the other (compared after resolving links
/// where they exist).
fn overlaps(a: &Path, b: &Path) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (a, b) = (real(a), real(b));
    a.starts_with(&b) || b.starts_with(&a)
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

mod file;
mod service;

pub use file::*;
pub use service::*;

#[cfg(test)]
mod tests;
