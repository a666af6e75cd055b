//! The canonical byte encoding that signatures cover (`docs/FORMATS.md`, "Canonical encoding").
//!
//! Deliberately small so an auditor can re-implement it in a few lines in any language:
//! integers are fixed-width big-endian, strings and byte strings carry a `u32` big-endian
//! length prefix, lists a `u32` big-endian count, optional values a `0x00`/`0x01` tag, and
//! hashes are 32 raw bytes. Fields appear in the order the format document lists them.

use crate::hash::Hash32;

/// Appends canonical encodings to a byte buffer.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// A `u32`, big-endian.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A `u64`, big-endian.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A length (list count or byte length) as `u32`; lengths over `u32::MAX` cannot occur in
    /// valid documents (the parsers refuse far smaller inputs), so this saturates defensively.
    fn len(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// A byte string: `u32` length, then the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.len(v.len());
        self.buf.extend_from_slice(v);
        self
    }

    /// A UTF-8 string: encoded as a byte string.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// A 32-byte hash, raw (no length prefix).
    pub fn hash(&mut self, v: &Hash32) -> &mut Self {
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    /// An optional value: `0x00`, or `0x01` followed by the value.
    pub fn option<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) -> &mut Self
    where
        T: ?Sized,
    {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
                self
            }
        }
    }

    /// A list: `u32` count, then each item.
    pub fn list<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) -> &mut Self {
        self.len(items.len());
        for item in items {
            f(self, item);
        }
        self
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_each_primitive_as_documented() {
        let mut e = Encoder::new();
        e.u8(7)
            .u32(1)
            .u64(2)
            .str("hé")
            .option(None::<&str>, |e, s| {
                e.str(s);
            })
            .option(Some("x"), |e, s| {
                e.str(s);
            })
            .list(&[1u64, 2], |e, v| {
                e.u64(*v);
            });
        let expected = [
            vec![7],
            vec![0, 0, 0, 1],
            vec![0, 0, 0, 0, 0, 0, 0, 2],
            vec![0, 0, 0, 3, b'h', 0xc3, 0xa9],
            vec![0],
            vec![1, 0, 0, 0, 1, b'x'],
            vec![0, 0, 0, 2],
            vec![0, 0, 0, 0, 0, 0, 0, 1],
            vec![0, 0, 0, 0, 0, 0, 0, 2],
        ]
        .concat();
        assert_eq!(e.into_bytes(), expected);
    }
}
