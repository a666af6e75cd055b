//! BLAKE3 hashing of data chunks and whole files.
//!
//! A file of `size` bytes is cut into chunks of `chunk_size` bytes (a power of two, at least
//! 1 KiB); the last chunk may be shorter, and an empty file has one empty chunk. The file hash
//! is the ordinary BLAKE3 hash of the whole file (what `b3sum` prints). Chunk hashes are
//! chosen so that the file hash follows from them without reading the data a second time:
//!
//! * a file with a single chunk: the chunk hash is the BLAKE3 hash of its bytes, equal to the
//!   file hash;
//! * a file with several chunks: chunk `i`'s hash is the BLAKE3 *chaining value* of the
//!   subtree that the chunk forms inside the file's BLAKE3 tree (input offset
//!   `i * chunk_size`, non-root). The chaining values merge into the file hash exactly as
//!   BLAKE3's own tree does (`blake3::hazmat`, BLAKE3 paper section 2.1).
//!
//! Binding each chunk hash to its offset means a chunk delivered at the wrong position never
//! verifies, and a receiver checks the whole file from the chunk hashes alone.

use std::fmt;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::CryptoError;

/// A 32-byte hash value (BLAKE3 or SHA-256), lowercase hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lower-case hex digits (the only spelling FORMATS.md allows).
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        crate::lowhex::decode(s).map(Self).map_err(|e| match e {
            // Only a string of the right length is worth quoting.
            crate::lowhex::HexError::NotLowerHex { .. } => {
                CryptoError::malformed("hash", format!("{s:?}: {e}"))
            }
            crate::lowhex::HexError::Length { .. } => CryptoError::malformed("hash", e.to_string()),
        })
    }

    /// BLAKE3 of `data` (the standard, root hash).
    pub fn blake3(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}

impl From<blake3::Hash> for Hash32 {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_hex())
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash32 {
    /// Hex in human-readable formats (JSON), 32 raw bytes in binary ones (wire frames).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return <[u8; 32]>::deserialize(d).map(Self);
        }
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Smallest allowed chunk size: one BLAKE3 chunk.
pub const MIN_CHUNK_SIZE: u64 = blake3::CHUNK_LEN as u64;
/// Largest allowed chunk size (1 GiB).
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
/// Default chunk size (4 MiB).
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// How a file of a given size is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    size: u64,
    chunk_size: u64,
}

impl ChunkLayout {
    /// Layout of a `size`-byte file in chunks of `chunk_size` bytes.
    ///
    /// `chunk_size` must be a power of two between [`MIN_CHUNK_SIZE`] and [`MAX_CHUNK_SIZE`].
    pub fn new(size: u64, chunk_size: u64) -> Result<Self, CryptoError> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(CryptoError::malformed(
                "chunk size",
                format!(
                    "{chunk_size} is not a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
                ),
            ));
        }
        Ok(Self { size, chunk_size })
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Number of chunks: `max(1, ceil(size / chunk_size))`.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size).max(1)
    }

    /// Byte offset of chunk `index`; `index` must be below [`Self::chunk_count`] (check an
    /// index from elsewhere first: a huge one overflows).
    pub fn offset(&self, index: u64) -> u64 {
        index * self.chunk_size
    }

    /// Length in bytes of chunk `index` (0 when out of range, however large the index).
    pub fn chunk_len(&self, index: u64) -> u64 {
        match index.checked_mul(self.chunk_size) {
            Some(start) => self.size.saturating_sub(start).min(self.chunk_size),
            None => 0,
        }
    }

    /// Hash of chunk `index` whose bytes are `data` (see the module docs).
    ///
    /// The caller must pass exactly [`Self::chunk_len`] bytes; [`Self::verify_chunk`] checks that.
    pub fn chunk_hash(&self, index: u64, data: &[u8]) -> Hash32 {
        if self.chunk_count() == 1 {
            return Hash32::blake3(data);
        }
        let mut h = blake3::Hasher::new();
        h.set_input_offset(self.offset(index));
        h.update(data);
        Hash32(h.finalize_non_root())
    }

    /// An incremental hasher for chunk `index`, for data that arrives in pieces.
    pub fn chunk_hasher(&self, index: u64) -> ChunkHasher {
        let mut inner = blake3::Hasher::new();
        let root = self.chunk_count() == 1;
        if !root {
            inner.set_input_offset(self.offset(index));
        }
        ChunkHasher { inner, root }
    }

    /// Checks a received chunk: right length and right hash.
    pub fn verify_chunk(
        &self,
        index: u64,
        data: &[u8],
        expected: &Hash32,
    ) -> Result<(), CryptoError> {
        if index >= self.chunk_count() {
            return Err(CryptoError::malformed(
                "chunk",
                format!(
                    "index {index} beyond the file's {} chunks",
                    self.chunk_count()
                ),
            ));
        }
        if data.len() as u64 != self.chunk_len(index) {
            return Err(CryptoError::HashMismatch(format!(
                "chunk {index} has {} bytes, expected {}",
                data.len(),
                self.chunk_len(index)
            )));
        }
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &self.chunk_hash(index, data).0[..],
            &expected.0[..],
        )) {
            return Err(CryptoError::HashMismatch(format!("chunk {index} content")));
        }
        Ok(())
    }

    /// The file hash (standard BLAKE3 of the whole file) from all chunk hashes.
    pub fn file_hash(&self, chunks: &[Hash32]) -> Result<Hash32, CryptoError> {
        if chunks.len() as u64 != self.chunk_count() {
            return Err(CryptoError::malformed(
                "file entry",
                format!(
                    "{} chunk hashes for a {}-byte file in {}-byte chunks (expected {})",
                    chunks.len(),
                    self.size,
                    self.chunk_size,
                    self.chunk_count()
                ),
            ));
        }
        if chunks.len() == 1 {
            return Ok(chunks[0]);
        }
        let (left, right) = chunks.split_at(left_len(chunks.len()));
        Ok(merge_subtrees_root(&subtree_cv(left), &subtree_cv(right), Mode::Hash).into())
    }
}

/// Hashes one chunk incrementally; gives the same value as [`ChunkLayout::chunk_hash`].
#[derive(Clone)]
pub struct ChunkHasher {
    inner: blake3::Hasher,
    root: bool,
}

impl ChunkHasher {
    /// Feeds the next piece of the chunk.
    pub fn update(&mut self, piece: &[u8]) -> &mut Self {
        self.inner.update(piece);
        self
    }

    /// The chunk hash of everything fed so far.
    pub fn finalize(&self) -> Hash32 {
        if self.root {
            self.inner.finalize().into()
        } else {
            Hash32(self.inner.finalize_non_root())
        }
    }
}

/// Number of chunks in the left subtree of a BLAKE3 tree over `n > 1` equal power-of-two
/// chunks: the largest power of two strictly below `n`.
fn left_len(n: usize) -> usize {
    debug_assert!(n > 1);
    (n / 2 + n % 2).next_power_of_two()
}

fn subtree_cv(chunks: &[Hash32]) -> ChainingValue {
    if chunks.len() == 1 {
        return chunks[0].0;
    }
    let (left, right) = chunks.split_at(left_len(chunks.len()));
    merge_subtrees_non_root(&subtree_cv(left), &subtree_cv(right), Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn chunk_hashes(layout: &ChunkLayout, bytes: &[u8]) -> Vec<Hash32> {
        (0..layout.chunk_count())
            .map(|i| {
                let start = layout.offset(i) as usize;
                let end = start + layout.chunk_len(i) as usize;
                layout.chunk_hash(i, &bytes[start..end])
            })
            .collect()
    }

    #[test]
    fn chunk_len_of_a_huge_index_is_zero_not_an_overflow() {
        let layout = ChunkLayout::new(10_000, 1024).unwrap();
        for index in [10, 1 << 62, u64::MAX / 1024 + 1, u64::MAX] {
            assert_eq!(layout.chunk_len(index), 0, "index {index}");
        }
        assert_eq!(layout.chunk_len(9), 10_000 - 9 * 1024);
    }

    #[test]
    fn left_len_is_largest_power_of_two_below() {
        for (n, want) in [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (1000, 512)] {
            assert_eq!(left_len(n), want, "n={n}");
        }
    }

    #[test]
    fn file_hash_equals_plain_blake3_at_edges() {
        for chunk_size in [1024u64, 4096] {
            for len in [
                0usize,
                1,
                1023,
                1024,
                1025,
                2048,
                4095,
                4096,
                4097,
                5 * 4096 + 3,
                17 * 1024,
            ] {
                let bytes = data(len);
                let layout = ChunkLayout::new(len as u64, chunk_size).unwrap();
                let hashes = chunk_hashes(&layout, &bytes);
                assert_eq!(
                    layout.file_hash(&hashes).unwrap(),
                    Hash32::blake3(&bytes),
                    "len={len} chunk={chunk_size}"
                );
            }
        }
    }

    #[test]
    fn incremental_hasher_matches_one_shot() {
        let bytes = data(10_000);
        for chunk_size in [1024u64, 16384] {
            let layout = ChunkLayout::new(bytes.len() as u64, chunk_size).unwrap();
            for i in 0..layout.chunk_count() {
                let start = layout.offset(i) as usize;
                let chunk = &bytes[start..start + layout.chunk_len(i) as usize];
                let mut h = layout.chunk_hasher(i);
                for piece in chunk.chunks(333) {
                    h.update(piece);
                }
                assert_eq!(h.finalize(), layout.chunk_hash(i, chunk));
            }
        }
    }

    #[test]
    fn chunk_hash_is_bound_to_its_position() {
        let bytes = [7u8; 4096];
        let layout = ChunkLayout::new(4096, 1024).unwrap();
        let h0 = layout.chunk_hash(0, &bytes[..1024]);
        let h1 = layout.chunk_hash(1, &bytes[1024..2048]);
        assert_ne!(h0, h1, "same bytes at another offset must hash differently");
        assert!(layout.verify_chunk(1, &bytes[..1024], &h0).is_err());
        assert!(layout.verify_chunk(0, &bytes[..1024], &h0).is_ok());
        assert!(
            layout.verify_chunk(0, &bytes[..1000], &h0).is_err(),
            "short chunk"
        );
        assert!(
            layout.verify_chunk(4, &bytes[..1024], &h0).is_err(),
            "out of range"
        );
    }

    #[test]
    fn rejects_bad_chunk_sizes_and_counts() {
        for bad in [0, 512, 1000, 3 << 20, MAX_CHUNK_SIZE * 2] {
            assert!(ChunkLayout::new(10, bad).is_err(), "{bad}");
        }
        let layout = ChunkLayout::new(5000, 1024).unwrap();
        assert_eq!(layout.chunk_count(), 5);
        assert_eq!(layout.chunk_len(4), 5000 - 4096);
        assert!(layout.file_hash(&[Hash32::default(); 4]).is_err());
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash32::blake3(b"abc");
        assert_eq!(Hash32::from_hex(&h.to_hex()).unwrap(), h);
        assert!(Hash32::from_hex("zz").is_err());
        assert!(serde_json::from_str::<Hash32>("\"abcd\"").is_err());
    }

    #[test]
    fn upper_case_hash_is_refused_in_json() {
        let h = Hash32::blake3(b"abc").to_hex();
        let upper = h.to_uppercase();
        let err = serde_json::from_str::<Hash32>(&format!("\"{upper}\"")).unwrap_err();
        assert!(err.to_string().contains("lower-case"), "{err}");
        let mixed = format!("{}{}", &h[..10], &upper[10..]);
        assert!(Hash32::from_hex(&mixed).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn file_hash_matches_blake3_for_any_length(len in 0usize..40_000, shift in 0u32..4) {
            let chunk_size = 1024u64 << shift;
            let bytes = data(len);
            let layout = ChunkLayout::new(len as u64, chunk_size).unwrap();
            let hashes = chunk_hashes(&layout, &bytes);
            prop_assert_eq!(layout.file_hash(&hashes).unwrap(), Hash32::blake3(&bytes));
        }
    }
}
