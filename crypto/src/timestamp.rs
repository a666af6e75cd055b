//! Whole-second UTC timestamps: RFC 3339 in JSON, seconds since the Unix epoch in
//! canonical bytes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time with one-second resolution, never before 1970.
///
/// JSON form: `"2026-11-24T09:30:00Z"`. Canonical form: `u64` seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The current time, truncated to whole seconds.
    pub fn now() -> Self {
        let secs = OffsetDateTime::now_utc().unix_timestamp();
        Self(u64::try_from(secs).unwrap_or(0))
    }

    /// A timestamp from seconds since the Unix epoch.
    pub const fn from_unix(secs: u64) -> Self {
        Self(secs)
    }

    /// Seconds since the Unix epoch.
    pub const fn unix(self) -> u64 {
        self.0
    }

    /// Parses RFC 3339 (`2026-11-24T09:30:00Z`, any offset); fractions of a second are refused
    /// so that the JSON and canonical forms always agree.
    pub fn parse(s: &str) -> Result<Self, String> {
        // RFC 3339's grammar, narrowed as FORMATS.md 1 says: `T` (or `t`) between date and
        // time, whole seconds (no fraction, not even `.000`), then `Z` or an offset.
        let b = s.as_bytes();
        if b.len() >= 20 && !matches!(b[10], b'T' | b't') {
            return Err(format!("{s:?}: date and time must be joined by T"));
        }
        match b.get(19) {
            Some(b'Z' | b'z' | b'+' | b'-') => {}
            Some(b'.') => return Err(format!("{s:?}: fractions of a second are not allowed")),
            _ => return Err(format!("{s:?}: not an RFC 3339 date-time")),
        }
        let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("{s:?}: {e}"))?;
        if dt.nanosecond() != 0 {
            return Err(format!("{s:?}: fractions of a second are not allowed"));
        }
        u64::try_from(dt.unix_timestamp())
            .map(Self)
            .map_err(|_| format!("{s:?}: before 1970"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = i64::try_from(self.0)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok());
        match dt.and_then(|d| d.format(&Rfc3339).ok()) {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        let t = Timestamp::from_unix(1_795_000_000);
        let s = t.to_string();
        assert_eq!(s, "2026-11-18T11:06:40Z");
        assert_eq!(Timestamp::parse(&s).unwrap(), t);
        assert_eq!(
            Timestamp::parse("2026-11-18T12:06:40+01:00").unwrap(),
            t,
            "offsets are normalised to UTC"
        );
    }

    #[test]
    fn refuses_fractions_and_garbage() {
        assert!(Timestamp::parse("2026-11-17T07:46:40.5Z").is_err());
        // Not even a zero fraction, nor a space for the T (FORMATS.md 1).
        assert!(Timestamp::parse("2026-11-17T07:46:40.000Z").is_err());
        assert!(Timestamp::parse("2026-11-17T07:46:40.0+01:00").is_err());
        assert!(Timestamp::parse("2026-11-17 07:46:40Z").is_err());
        assert!(Timestamp::parse("2026-11-17T07:46Z").is_err());
        // RFC 3339 5.6 allows lower-case t and z.
        assert_eq!(
            Timestamp::parse("2026-11-17t07:46:40z").unwrap(),
            Timestamp::parse("2026-11-17T07:46:40Z").unwrap()
        );
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("1969-12-31T23:59:59Z").is_err());
    }
}
