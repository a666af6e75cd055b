//! The one hex spelling of everything Trackshift signs or verifies: lower-case digits only.
//!
//! `docs/FORMATS.md` gives every hash and key id exactly one spelling (64 lower-case hex
//! digits), so that a document has one form and two readers never disagree about whether it
//! is valid. Every hex field of an untrusted document (manifests, receipts, public key files,
//! secret key files, the key ids of ledger verifier keys) is decoded here; the `hex` crate's
//! decoder also accepts upper case and is used only to encode.

/// Why a string is not the lower-case hex spelling of `N` bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// The string has the wrong number of characters.
    #[error("expected {expected} lower-case hex digits, got {got} characters")]
    Length {
        /// Digits wanted (twice the byte count).
        expected: usize,
        /// Characters given.
        got: usize,
    },
    /// A character other than `0-9` and `a-f` (upper case included).
    #[error(
        "character {found:?} at position {at} is not a lower-case hex digit (0-9, a-f; upper case is refused)"
    )]
    NotLowerHex {
        /// Zero-based character position.
        at: usize,
        /// The character found.
        found: char,
    },
}

/// Decodes exactly `2 * N` lower-case hex digits into `N` bytes.
pub fn decode<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    if s.len() != 2 * N {
        return Err(HexError::Length {
            expected: 2 * N,
            got: s.chars().count(),
        });
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let bad = |byte_at: usize| {
        let at = s[..byte_at].chars().count();
        let found = s[byte_at..].chars().next().unwrap_or('\u{fffd}');
        HexError::NotLowerHex { at, found }
    };
    let bytes = s.as_bytes();
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = digit(bytes[2 * i]).ok_or_else(|| bad(2 * i))?;
        let lo = digit(bytes[2 * i + 1]).ok_or_else(|| bad(2 * i + 1))?;
        *o = hi << 4 | lo;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_case_round_trips() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        assert_eq!(decode::<32>(&hex::encode(bytes)).unwrap(), bytes);
        assert_eq!(decode::<4>("00ff7a10").unwrap(), [0x00, 0xff, 0x7a, 0x10]);
    }

    #[test]
    fn upper_and_mixed_case_are_refused() {
        let lower = hex::encode([0xabu8; 32]);
        for spelling in [lower.to_uppercase(), format!("A{}", &lower[1..])] {
            assert_eq!(
                decode::<32>(&spelling),
                Err(HexError::NotLowerHex { at: 0, found: 'A' }),
                "{spelling}"
            );
        }
        let mixed = format!("{}F", &lower[..63]);
        assert_eq!(
            decode::<32>(&mixed),
            Err(HexError::NotLowerHex { at: 63, found: 'F' })
        );
    }

    #[test]
    fn wrong_length_signs_and_non_ascii_are_refused_without_panicking() {
        assert_eq!(
            decode::<2>("abc"),
            Err(HexError::Length {
                expected: 4,
                got: 3
            })
        );
        assert!(matches!(
            decode::<2>("+abc"),
            Err(HexError::NotLowerHex { at: 0, found: '+' })
        ));
        assert!(matches!(
            decode::<2>(" abc"),
            Err(HexError::NotLowerHex { at: 0, .. })
        ));
        // Four bytes, but two characters: "é" is two bytes of UTF-8.
        assert!(matches!(
            decode::<2>("éab"),
            Err(HexError::NotLowerHex { at: 0, found: 'é' })
        ));
        assert!(matches!(
            decode::<2>("abé"),
            Err(HexError::NotLowerHex { at: 2, found: 'é' })
        ));
        assert!(matches!(
            decode::<2>("ab\u{0}c"),
            Err(HexError::NotLowerHex { at: 2, .. })
        ));
    }
}
