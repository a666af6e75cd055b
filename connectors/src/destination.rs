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

fn bad<T>(m: impl Into<String>) -> Result<T, DestinationError> {
    Err(DestinationError(m.into()))
}

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

fn parse_authority(scheme: Scheme, a: &str) -> Result<Authority, DestinationError> {
    match scheme {
        Scheme::File | Scheme::Null => {
            if !a.is_empty() {
                return bad(format!(
                    "{}:// takes no host ({a:?}): {}",
                    scheme.as_str(),
                    if scheme == Scheme::File {
                        "file:///ABSOLUTE/DIR (file:// destinations need an absolute path)"
                    } else {
                        "null://"
                    }
                ));
            }
            Ok(Authority::None)
        }
        Scheme::S3 | Scheme::Azure => {
            if a.contains('@') || a.contains(':') {
                return bad(
                    "credentials and ports do not belong in an object store URI (credentials go in the environment or the tenant's credentials file)",
                );
            }
            let what = if scheme == Scheme::S3 {
                "bucket"
            } else {
                "container"
            };
            if a.is_empty() {
                return bad(format!("{}:// needs a {what}", scheme.as_str()));
            }
            let allowed = |b: u8| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || (b == b'.' && scheme == Scheme::S3)
            };
            let b = a.as_bytes();
            if a.len() > 63
                || !b.iter().all(|&c| allowed(c))
                || !b[0].is_ascii_alphanumeric()
                || !b[b.len() - 1].is_ascii_alphanumeric()
                || a.contains("..")
            {
                return bad(format!(
                    "{what} name {a:?}: 1 to 63 lower-case letters, digits{} and '-', starting and ending with a letter or digit",
                    if scheme == Scheme::S3 { ", '.'" } else { "" }
                ));
            }
            Ok(Authority::Container(a.to_string()))
        }
        Scheme::Sftp | Scheme::Ftps => {
            let s = scheme.as_str();
            let Some((userinfo, hostport)) = a.rsplit_once('@') else {
                return bad(format!("{s}:// needs a user: {s}://USER@HOST/DIR"));
            };
            if userinfo.contains(':') {
                return bad(format!(
                    "passwords do not belong in the URI; {}",
                    if scheme == Scheme::Sftp {
                        "SFTP uses key authentication"
                    } else {
                        "set TRACKSHIFT_FTPS_PASSWORD"
                    }
                ));
            }
            let user = decode(userinfo, "the user name")?;
            if user.is_empty() {
                return bad(format!("{s}:// needs a user: {s}://USER@HOST/DIR"));
            }
            if user.contains(['/', '@']) {
                return bad("the user name may not contain '/' or '@'");
            }
            let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
                let Some((h, rest)) = v6.split_once(']') else {
                    return bad("unclosed '[' in the host");
                };
                (format!("[{h}]"), rest)
            } else {
                match hostport.find(':') {
                    Some(i) => (hostport[..i].to_string(), &hostport[i..]),
                    None => (hostport.to_string(), ""),
                }
            };
            if host.is_empty() {
                return bad(format!("{s}:// needs a host"));
            }
            let host = url::Host::parse(&host)
                .map_err(|e| DestinationError(format!("host {host:?}: {e}")))?;
            let host = match host {
                url::Host::Ipv6(a) => a.to_string(),
                other => other.to_string(),
            };
            let port = match port {
                "" => scheme.default_port().expect("server scheme"),
                p => p
                    .strip_prefix(':')
                    .and_then(|p| {
                        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                            .then(|| p.parse::<u16>().ok())
                            .flatten()
                    })
                    .filter(|&p| p != 0)
                    .ok_or_else(|| DestinationError(format!("port {p:?}: 1 to 65535")))?,
            };
            Ok(Authority::Server { user, host, port })
        }
    }
}

/// Decodes percent escapes strictly: `%` must start two hex digits, the result must be
/// UTF-8 and hold no NUL or control character.
fn decode(s: &str, what: &str) -> Result<String, DestinationError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|_| b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit());
            match hex {
                Some(v) => out.push(v),
                None => return bad(format!("malformed percent escape in {what}")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let text =
        String::from_utf8(out).map_err(|_| DestinationError(format!("{what} is not UTF-8")))?;
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return bad(format!("{what} holds a control character {c:?}"));
    }
    Ok(text)
}

fn parse_path(path: &str) -> Result<Vec<String>, DestinationError> {
    let Some(p) = path.strip_prefix('/') else {
        return Ok(Vec::new());
    };
    // One trailing slash names the same directory.
    let p = p.strip_suffix('/').unwrap_or(p);
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for raw in p.split('/') {
        if raw.is_empty() {
            return bad("empty path segment ('//') in the destination");
        }
        if raw == "." || raw == ".." {
            return bad(format!("path segment {raw:?} is not allowed"));
        }
        let lower = raw.to_ascii_lowercase();
        for (enc, what) in [
            ("%2f", "'/'"),
            ("%2e", "'.'"),
            ("%5c", "'\\'"),
            ("%00", "NUL"),
        ] {
            if lower.contains(enc) {
                return bad(format!(
                    "percent-encoded {what} in path segment {raw:?} is not allowed"
                ));
            }
        }
        let seg = decode(raw, "a path segment")?;
        if seg.len() > 255 {
            return bad("a path segment is at most 255 bytes");
        }
        if trackshift_crypto::reserved::is_reserved(&seg) {
            return bad(format!(
                "path segment {seg:?} uses a name the gateway reserves ('{RESERVED_PREFIX}...', '...{TEMP_SUFFIX}')"
            ));
        }
        out.push(seg);
    }
    Ok(out)
}

fn check_option(scheme: Scheme, k: &str, v: &str) -> Result<(), DestinationError> {
    if scheme.option(k).is_none() {
        let known: Vec<&str> = scheme.options().iter().map(|o| o.name).collect();
        return bad(format!(
            "unknown or secret setting {k:?} for {}:// (known: {}; credentials go in the environment or the tenant's credentials file)",
            scheme.as_str(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    if v.is_empty() {
        return bad(format!("setting {k:?} has no value"));
    }
    Ok(())
}

fn parse_query(scheme: Scheme, q: &str) -> Result<BTreeMap<String, String>, DestinationError> {
    let mut out = BTreeMap::new();
    if q.is_empty() {
        return bad("empty query ('?') in the destination");
    }
    for pair in q.split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            return bad(format!("setting {pair:?} needs a value (NAME=VALUE)"));
        };
        let k = decode(k, "a setting name")?;
        let v = decode(v, "a setting value")?;
        check_option(scheme, &k, &v)?;
        if out.insert(k.clone(), v).is_some() {
            return bad(format!("setting {k:?} is given twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Destination {
        Destination::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn refused(s: &str, needle: &str) {
        match Destination::parse(s) {
            Ok(d) => panic!("{s} was accepted as {d}"),
            Err(e) => assert!(e.0.contains(needle), "{s}: {e} (wanted {needle:?})"),
        }
    }

    #[test]
    fn parses_every_scheme() {
        let d = p("file:///srv/in/acme/");
        assert_eq!(d.scheme(), Scheme::File);
        assert_eq!(d.segments(), ["srv", "in", "acme"]);
        assert_eq!(d.to_string(), "file:///srv/in/acme");
        let d = p("s3://bucket.x/a/b?region=eu&endpoint=http://127.0.0.1:9000");
        assert_eq!(d.authority(), &Authority::Container("bucket.x".into()));
        assert_eq!(d.option("endpoint"), Some("http://127.0.0.1:9000"));
        let d = p("sftp://me@Example.COM:2222/up/load?connections=2");
        assert_eq!(
            d.authority(),
            &Authority::Server {
                user: "me".into(),
                host: "example.com".into(),
                port: 2222
            }
        );
        let d = p("ftps://me@[::1]/x");
        assert_eq!(d.to_string(), "ftps://me@[::1]/x");
        assert_eq!(p("null://").to_string(), "null://");
        assert_eq!(p("file:///").segments().len(), 0);
        assert_eq!(p("file:///a%20b/%23").segments(), ["a b", "#"]);
    }

    #[test]
    fn refuses_what_is_ambiguous() {
        refused("file:///X/allowed/#/../../outside", "'#'");
        refused("file:///X/allowed/?/../../outside", "setting");
        refused("file:///X/allowed/../outside", "\"..\"");
        refused("file:///X/./a", "\".\"");
        refused("file:///X/%2e%2e/a", "percent-encoded '.'");
        refused("file:///X/%2E/a", "percent-encoded '.'");
        refused("file:///X/a%2fb", "percent-encoded '/'");
        refused("file:///X/a%5cb", "percent-encoded '\\'");
        refused("file:///X/a%00b", "NUL");
        refused("file:///X/a\\b", "backslash");
        refused("file:///X//a", "empty path segment");
        refused("file:///X/a%zz", "malformed percent escape");
        refused("file:///X/a%ff", "not UTF-8");
        refused("file:///X/a\u{7}", "control character");
        refused("file:///X/a%0a", "control character");
        refused("file://host/X", "takes no host");
        refused("file://relative", "takes no host");
        refused("file:", "SCHEME://");
        refused("gopher://x", "unsupported destination scheme");
        refused("FILE:///x", "unsupported destination scheme");
        refused("file:///X/.a.b.tspart", "reserves");
        refused("file:///X/.trackshift-tmp", "reserves");
        refused("s3://Bucket/x", "bucket name");
        refused("s3://b..c/x", "bucket name");
        refused("s3://key:secret@b/x", "credentials");
        refused("s3://b/x?secret_access_key=abc", "unknown or secret");
        refused("az://c/x?account_key=abc", "unknown or secret");
        refused("s3://b/x?region=a&region=b", "twice");
        refused("s3://b/x?region=", "no value");
        refused("s3://b/x?", "empty query");
        refused("sftp://u:pw@h/x", "passwords do not belong");
        refused("sftp://h/x", "needs a user");
        refused("sftp://u@h:0/x", "port");
        refused("sftp://u@h:99999/x", "port");
        refused("sftp://u@h:+22/x", "port");
        refused("null://?overwrite=true", "unknown or secret");
    }

    #[test]
    fn errors_do_not_repeat_passwords() {
        let e = Destination::parse("ftps://u:hunter2@h/x").unwrap_err();
        assert!(!e.0.contains("hunter2"));
    }

    #[test]
    fn within_is_whole_segments_and_authority() {
        let base = p("s3://b/p");
        assert!(p("s3://b/p").is_within(&base));
        assert!(p("s3://b/p/x").is_within(&base));
        assert!(!p("s3://b/px").is_within(&base));
        assert!(!p("s3://b2/p/x").is_within(&base));
        assert!(!p("az://b/p/x").is_within(&base));
        let srv = p("sftp://u@h/d");
        assert!(p("sftp://u@h:22/d/e").is_within(&srv));
        assert!(!p("sftp://v@h/d/e").is_within(&srv));
        assert!(!p("sftp://u@h:23/d/e").is_within(&srv));
    }

    #[test]
    fn rule_options_win_and_trust_stops_at_the_rule() {
        let rule = p("s3://b/in?endpoint=http://127.0.0.1:9000&allow_http=true");
        let job = p("s3://b/in/acme?overwrite=true");
        let eff = job.under_rule(&rule);
        assert_eq!(eff.option("endpoint"), Some("http://127.0.0.1:9000"));
        assert!(eff.overwrite());
        assert_eq!(eff.trusted_segments(), 1);
        assert_eq!(
            eff.options_of(OptionKind::Job).collect::<Vec<_>>(),
            [("overwrite", "true")]
        );
    }

    #[test]
    fn canonical_form_round_trips() {
        for s in [
            "file:///a%20b/%23/%3F/caf%C3%A9",
            "sftp://us%40er@h.example:2222/x?connections=3&overwrite=true",
            "s3://b/p?endpoint=http://127.0.0.1:9000/&region=us-east-1",
            "ftps://u@10.0.0.1/d?ca=/etc/ca%20file.pem",
        ] {
            let d = Destination::parse(s);
            // '@' in a user name is refused; the rest round-trip.
            let Ok(d) = d else { continue };
            assert_eq!(p(&d.to_string()), d, "{s} -> {d}");
        }
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("/".to_string()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%2f".to_string()),
            Just("%5C".to_string()),
            Just("%00".to_string()),
            Just("%".to_string()),
            Just("#".to_string()),
            Just("?".to_string()),
            Just("&".to_string()),
            Just("=".to_string()),
            Just("\\".to_string()),
            Just("%23".to_string()),
            Just("%3F".to_string()),
            Just("@".to_string()),
            Just(":".to_string()),
            Just(".tspart".to_string()),
            Just("overwrite=true".to_string()),
            Just("endpoint=http://127.0.0.1:9".to_string()),
            "[ -~]{0,3}",
            "\\PC{0,2}",
        ]
    }

    proptest::proptest! {
        /// For any input: refused, or every segment is a plain name, the destination lies
        /// beneath the prefix it was written under, and its canonical form parses back to it.
        #[test]
        fn anything_accepted_stays_beneath_its_prefix(
            tail in proptest::collection::vec(piece(), 0..12)
        ) {
            let rule = p("file:///X/allowed");
            let s = format!("file:///X/allowed/{}", tail.concat());
            if let Ok(d) = Destination::parse(&s) {
                proptest::prop_assert!(d.is_within(&rule), "{} not within", d);
                for seg in d.segments() {
                    proptest::prop_assert!(seg != "." && seg != ".." && !seg.is_empty());
                    proptest::prop_assert!(!seg.contains(['/', '\\', '\0']));
                }
                let eff = d.under_rule(&rule);
                let c = crate::LocalConnector::at(&eff).unwrap();
                proptest::prop_assert!(c.root().starts_with("/X/allowed"));
                proptest::prop_assert!(!c.root().components().any(|c| matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )));
                proptest::prop_assert_eq!(Destination::parse(&d.to_string()).unwrap(), d);
            }
        }

        /// Arbitrary text never panics the parser, and what it accepts round-trips.
        #[test]
        fn arbitrary_text_parses_or_is_refused(s in "\\PC{0,64}", scheme in 0usize..6) {
            let s = format!("{}://{s}", Scheme::ALL[scheme].as_str());
            if let Ok(d) = Destination::parse(&s) {
                proptest::prop_assert_eq!(Destination::parse(&d.to_string()).unwrap(), d);
            }
        }
    }
}
