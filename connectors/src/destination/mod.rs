//! Destinations, parsed once.
//!
//! A destination string (`file:///srv/in/acme`, `s3://bucket/prefix`,
//! `sftp://user@host:2222/dir?connections=2`) is parsed into a [`Destination`]: scheme,
//! authority, normalized path segments and known options. Tenant policy is checked on that
//! value and the connector is built from it ([`crate::connect`]); the raw string is never
//! used as a path or a network address.
//!
//! Anything that cannot be normalized unambiguously is refused with a message naming it:
//! dot segments (`.`, `..`, also percent-encoded), a fragment (`#`), percent-encoded `/`,
//! `.`, `\` or NUL, backslashes, control characters, empty segments (`a//b`), malformed
//! percent escapes, names the gateway reserves for its temporary objects, unknown options
//! and options given twice.
//!
//! Options come in two kinds ([`OptionKind`]): those that choose a network target, a file,
//! a TLS identity or credentials are the operator's alone (a tenant policy sets them, see
//! `DestinationRule::options` in the engine); the others only change how one job's data is
//! written, and a tenant may give them where its policy allows.

use std::collections::BTreeMap;
use std::fmt;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// The longest destination string accepted.
pub const MAX_DESTINATION_LEN: usize = 4096;

pub use trackshift_crypto::reserved::{RESERVED_PREFIX, TEMP_SUFFIX};

/// A destination that cannot be parsed or normalized unambiguously. The message names
/// what is wrong and never repeats a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DestinationError(pub String);

mod parse;
#[cfg(test)]
mod tests;

use parse::{bad, check_option, parse_authority, parse_path, parse_query};

/// Where a destination writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `file:///ABSOLUTE/DIR`: local disk.
    File,
    /// `s3://BUCKET[/PREFIX]`.
    S3,
    /// `az://CONTAINER[/PREFIX]`.
    Azure,
    /// `sftp://USER@HOST[:PORT]/DIR`.
    Sftp,
    /// `ftps://USER@HOST[:PORT]/DIR`.
    Ftps,
    /// `null://`: discards data (benchmarks).
    Null,
}

impl Scheme {
    /// Every scheme.
    pub const ALL: [Scheme; 6] = [
        Scheme::File,
        Scheme::S3,
        Scheme::Azure,
        Scheme::Sftp,
        Scheme::Ftps,
        Scheme::Null,
    ];

    /// The scheme as written in a URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::S3 => "s3",
            Scheme::Azure => "az",
            Scheme::Sftp => "sftp",
            Scheme::Ftps => "ftps",
            Scheme::Null => "null",
        }
    }

    /// The port a server scheme uses when the URI names none.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Sftp => Some(22),
            Scheme::Ftps => Some(21),
            _ => None,
        }
    }

    /// The options this scheme knows.
    pub fn options(self) -> &'static [OptionSpec] {
        match self {
            Scheme::File => FILE_OPTIONS,
            Scheme::S3 => S3_OPTIONS,
            Scheme::Azure => AZURE_OPTIONS,
            Scheme::Sftp => SFTP_OPTIONS,
            Scheme::Ftps => FTPS_OPTIONS,
            Scheme::Null => &[],
        }
    }

    /// The option `name` of this scheme.
    pub fn option(self, name: &str) -> Option<&'static OptionSpec> {
        self.options().iter().find(|o| o.name == name)
    }

    /// The smallest part (but the last) a multipart upload to this kind of destination
    /// takes: [`S3_MIN_PART`] for S3, 1 byte elsewhere. A connector's own
    /// `Connector::min_chunk_size` adds its limits by object size.
    pub fn min_part_size(self) -> u64 {
        match self {
            Scheme::S3 => S3_MIN_PART,
            _ => 1,
        }
    }
}

/// S3's smallest part of a multipart upload, but the last (5 MiB).
pub const S3_MIN_PART: u64 = 5 << 20;

/// The chunk size of a job to destinations of these `schemes` that names none: the default
/// (4 MiB), or the power of two at or above the largest smallest part among them (8 MiB
/// when one is S3).
pub fn default_chunk_size(schemes: impl IntoIterator<Item = Scheme>) -> u64 {
    schemes
        .into_iter()
        .map(|s| s.min_part_size().next_power_of_two())
        .fold(trackshift_crypto::hash::DEFAULT_CHUNK_SIZE, u64::max)
}

/// Who may set an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionKind {
    /// Chooses a network target, names a file on the gateway, or sets a TLS identity, a
    /// host-key pin, a region or an account: the operator's alone.
    Operator,
    /// Changes only how this job's data is written: a tenant may give it in a job's URI
    /// where its policy allows.
    Job,
}

/// An option a scheme knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    /// Its name in the query.
    pub name: &'static str,
    /// Who may set it.
    pub kind: OptionKind,
}

const fn op(name: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        kind: OptionKind::Operator,
    }
}

const fn job(name: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        kind: OptionKind::Job,
    }
}

/// `overwrite=true`: the job may replace an object it did not create.
pub const OVERWRITE: &str = "overwrite";

const FILE_OPTIONS: &[OptionSpec] = &[job(OVERWRITE)];
const S3_OPTIONS: &[OptionSpec] = &[
    op("endpoint"),
    op("region"),
    op("allow_http"),
    op("virtual_hosted_style_request"),
    job(OVERWRITE),
];
const AZURE_OPTIONS: &[OptionSpec] = &[
    op("endpoint"),
    op("account"),
    op("allow_http"),
    op("use_emulator"),
    job(OVERWRITE),
];
const SFTP_OPTIONS: &[OptionSpec] = &[
    op("key"),
    op("known_hosts"),
    op("fingerprint"),
    job("connections"),
    job(OVERWRITE),
];
const FTPS_OPTIONS: &[OptionSpec] = &[op("ca"), op("server_name"), job(OVERWRITE)];

/// The part after `scheme://` and before the path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Authority {
    /// `file://` and `null://` name no host.
    None,
    /// An S3 bucket or an Azure container.
    Container(String),
    /// A server (SFTP, FTPS).
    Server {
        /// The user to log in as (percent-decoded).
        user: String,
        /// Host name (lower case), IPv4 address, or IPv6 address without brackets.
        host: String,
        /// Port (the scheme's default when the URI names none).
        port: u16,
    },
}

/// A parsed, normalized destination. See the module documentation for what is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    scheme: Scheme,
    authority: Authority,
    segments: Vec<String>,
    options: BTreeMap<String, String>,
    /// How many leading segments the operator vouches for (a tenant rule's prefix); the
    /// local connector resolves the rest beneath them without following links.
    trusted: usize,
}

impl Destination {
    /// Parses and normalizes `uri`.
    pub fn parse(uri: &str) -> Result<Self, DestinationError> {
        if uri.len() > MAX_DESTINATION_LEN {
            return bad(format!(
                "a destination is at most {MAX_DESTINATION_LEN} bytes"
            ));
        }
        if let Some(c) = uri.chars().find(|c| c.is_control()) {
            return bad(format!("control character {c:?} in the destination"));
        }
        if uri.contains('\\') {
            return bad("backslash in the destination");
        }
        if uri.contains('#') {
            return bad("'#' (a URI fragment) is not allowed in a destination");
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return bad(
                "a destination is SCHEME://...; supported: file://, s3://, az://, sftp://, ftps://, null://",
            );
        };
        let scheme = Scheme::ALL
            .into_iter()
            .find(|s| s.as_str() == scheme)
            .ok_or_else(|| {
                DestinationError(format!(
                    "unsupported destination scheme {scheme:?} (supported: file://, s3://, az://, sftp://, ftps://, null://)"
                ))
            })?;
        let (hier, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match hier.find('/') {
            Some(i) => hier.split_at(i),
            None => (hier, ""),
        };
        let authority = parse_authority(scheme, authority)?;
        let segments = parse_path(path)?;
        if scheme == Scheme::File && segments.is_empty() && !path.starts_with('/') {
            return bad("file:// destinations need an absolute path: file:///DIR");
        }
        let options = match query {
            None => BTreeMap::new(),
            Some(q) => parse_query(scheme, q)?,
        };
        let trusted = segments.len();
        Ok(Self {
            scheme,
            authority,
            segments,
            options,
            trusted,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The normalized path segments (percent-decoded).
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The path, segments joined by `/` ("" for none).
    pub fn path(&self) -> String {
        self.segments.join("/")
    }

    /// The options, by name.
    pub fn options(&self) -> &BTreeMap<String, String> {
        &self.options
    }

    /// An option's value.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    /// Whether `overwrite=true` lets the job replace objects it did not create.
    pub fn overwrite(&self) -> bool {
        self.option(OVERWRITE)
            .is_some_and(|v| matches!(v, "true" | "1" | "yes"))
    }

    /// How many leading path segments the operator vouches for.
    pub fn trusted_segments(&self) -> usize {
        self.trusted
    }

    /// True when `self` lies at or beneath `base`: same scheme and authority, and `base`'s
    /// segments begin `self`'s (whole segments: `s3://b/p` holds `s3://b/p/x`, not
    /// `s3://b/px`). Options do not take part.
    pub fn is_within(&self, base: &Destination) -> bool {
        self.scheme == base.scheme
            && self.authority == base.authority
            && self.segments.starts_with(&base.segments)
    }

    /// The same place without options.
    pub fn without_options(&self) -> Self {
        Self {
            options: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// This destination as the operator's rule `base` makes it: `base`'s options added to
    /// this one's, and only `base`'s segments trusted. `self` must lie within `base`.
    pub fn under_rule(&self, base: &Destination) -> Self {
        debug_assert!(self.is_within(base));
        let mut options = self.options.clone();
        for (k, v) in &base.options {
            options.insert(k.clone(), v.clone());
        }
        Self {
            options,
            trusted: base.segments.len().min(self.segments.len()),
            ..self.clone()
        }
    }

    /// Adds or replaces an option (for operator-written configuration; checked like a
    /// parsed one).
    pub fn with_option(mut self, name: &str, value: &str) -> Result<Self, DestinationError> {
        check_option(self.scheme, name, value)?;
        self.options.insert(name.to_string(), value.to_string());
        Ok(self)
    }

    /// The options of the given kind.
    pub fn options_of(&self, kind: OptionKind) -> impl Iterator<Item = (&str, &str)> {
        self.options.iter().filter_map(move |(k, v)| {
            (self.scheme.option(k).map(|o| o.kind) == Some(kind))
                .then_some((k.as_str(), v.as_str()))
        })
    }
}

/// Characters percent-encoded in the canonical form of a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'[')
    .add(b']');

/// Characters percent-encoded in the canonical form of an option value or a user name.
const VALUE: &AsciiSet = &SEGMENT.add(b'&').add(b'=').add(b'@').add(b':');

impl fmt::Display for Destination {
    /// The canonical form: parsing it gives the same destination back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.authority {
            Authority::None => {}
            Authority::Container(c) => f.write_str(c)?,
            Authority::Server { user, host, port } => {
                write!(f, "{}@", utf8_percent_encode(user, VALUE))?;
                if host.contains(':') {
                    write!(f, "[{host}]")?;
                } else {
                    f.write_str(host)?;
                }
                if Some(*port) != self.scheme.default_port() {
                    write!(f, ":{port}")?;
                }
            }
        }
        for s in &self.segments {
            write!(f, "/{}", utf8_percent_encode(s, SEGMENT))?;
        }
        if self.scheme == Scheme::File && self.segments.is_empty() {
            f.write_str("/")?;
        }
        let mut sep = '?';
        for (k, v) in &self.options {
            write!(f, "{sep}{k}={}", utf8_percent_encode(v, VALUE))?;
            sep = '&';
        }
        Ok(())
    }
}

impl std::str::FromStr for Destination {
    type Err = DestinationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
