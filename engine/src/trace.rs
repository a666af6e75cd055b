//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` a client
//! sends with a job, parsed once into a typed value, kept with the job in the store,
//! carried to the gateway in the job's `Open` and logged (`trace_id`) on every line of
//! the job, so a job's lines join the client's trace in a SIEM or tracing backend.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A parsed `traceparent`: trace id, parent id and flags (version 00 on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Why a `traceparent` value is not one (the value itself is not repeated: it came from
/// a client and may be anything).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    /// Not `VERSION-TRACEID-PARENTID-FLAGS` in lower-case hex of 2, 32, 16 and 2 digits.
    #[error("traceparent is not VERSION-TRACEID-PARENTID-FLAGS in lower-case hex (2-32-16-2)")]
    Syntax,
    /// Version `ff` is forbidden; version `00` has nothing after the flags.
    #[error("traceparent version {0:02x} is not valid here")]
    Version(u8),
    /// An all-zero trace id or parent id.
    #[error("traceparent has an all-zero {0}")]
    Zero(&'static str),
}

fn hex<const N: usize>(s: &str) -> Result<[u8; N], TraceParentError> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(TraceParentError::Syntax);
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| TraceParentError::Syntax)?;
    Ok(out)
}

impl TraceParent {
    /// Parses a `traceparent` header value. A later version's value is read by its first
    /// four fields, as the specification asks.
    pub fn parse(s: &str) -> Result<Self, TraceParentError> {
        if s.len() < 55 || !s.is_ascii() {
            return Err(TraceParentError::Syntax);
        }
        let version = hex::<1>(&s[..2])?[0];
        match version {
            0xff => return Err(TraceParentError::Version(version)),
            0x00 if s.len() != 55 => return Err(TraceParentError::Version(version)),
            _ if s.len() > 55 && s.as_bytes()[55] != b'-' => {
                return Err(TraceParentError::Syntax);
            }
            _ => {}
        }
        let b = s.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(TraceParentError::Syntax);
        }
        let trace_id = hex::<16>(&s[3..35])?;
        let parent_id = hex::<8>(&s[36..52])?;
        let flags = hex::<1>(&s[53..55])?[0];
        if trace_id == [0; 16] {
            return Err(TraceParentError::Zero("trace id"));
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::Zero("parent id"));
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace id, 32 lower-case hex digits (the `trace_id` of log lines).
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The trace id's 16 bytes.
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The parent (the caller's span) id's 8 bytes.
    pub fn parent_id_bytes(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

/// Stored and sent values are canonical (version 00, as [`TraceParent`] writes them), so
/// each has one encoding: a header's later version is read by [`TraceParent::parse`] only.
impl TryFrom<String> for TraceParent {
    type Error = TraceParentError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let t = Self::parse(&s)?;
        if t.to_string() != s {
            return Err(TraceParentError::Version(0));
        }
        Ok(t)
    }
}

impl From<TraceParent> for String {
    fn from(t: TraceParent) -> String {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_value_round_trips_and_names_its_trace() {
        let t = TraceParent::parse(GOOD).unwrap();
        assert_eq!(t.to_string(), GOOD);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled());
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, format!("\"{GOOD}\""));
        assert_eq!(serde_json::from_str::<TraceParent>(&json).unwrap(), t);
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let t = TraceParent::parse(later).unwrap();
        assert_eq!(t.to_string(), GOOD, "passed on as version 00");
        let stored = serde_json::to_string(later).unwrap();
        assert!(
            serde_json::from_str::<TraceParent>(&stored).is_err(),
            "only the canonical form is read back from a store or a frame"
        );
        assert!(TraceParent::parse(&format!("{}x", &later[..55])).is_err());
    }

    #[test]
    fn malformed_values_are_refused_by_cause() {
        use TraceParentError::*;
        let cases: &[(&str, TraceParentError)] = &[
            ("", Syntax),
            (&GOOD.to_uppercase(), Syntax),
            (&GOOD.replace('-', "_"), Syntax),
            (&format!("{GOOD}-"), Version(0)),
            (&GOOD.replacen("00-", "ff-", 1), Version(0xff)),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                Zero("trace id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                Zero("parent id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                Syntax,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{e9}",
                Syntax,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(TraceParent::parse(v).as_ref(), Err(want), "{v:?}");
        }
        assert!(serde_json::from_str::<TraceParent>("\"00-zz\"").is_err());
    }
}
