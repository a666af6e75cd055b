//! Parsing the parts of a destination string: authority, path segments, query options,
//! and strict percent-decoding. Everything ambiguous is refused here.

use std::collections::BTreeMap;

use super::{Authority, DestinationError, RESERVED_PREFIX, Scheme, TEMP_SUFFIX};

/// A refusal with message `m`.
pub(super) fn bad<T>(m: impl Into<String>) -> Result<T, DestinationError> {
    Err(DestinationError(m.into()))
}

pub(super) fn parse_authority(scheme: Scheme, a: &str) -> Result<Authority, DestinationError> {
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

pub(super) fn parse_path(path: &str) -> Result<Vec<String>, DestinationError> {
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

pub(super) fn check_option(scheme: Scheme, k: &str, v: &str) -> Result<(), DestinationError> {
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

pub(super) fn parse_query(
    scheme: Scheme,
    q: &str,
) -> Result<BTreeMap<String, String>, DestinationError> {
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
