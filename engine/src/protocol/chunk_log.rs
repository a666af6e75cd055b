//! A job's chunk log (`chunks.log`): fixed-size, self-checking records of durable chunks.

use super::*;

/// Size of one record in a job's chunk log.
pub const LOG_RECORD_LEN: usize = 4 + 8 + 32 + 4;

/// Encodes a chunk-log record: `u32 file | u64 index | hash | u32 check`, where `check` is
/// the first 4 bytes of BLAKE3 over the preceding 44 bytes (detects torn or flipped records).
pub fn encode_log_record(c: ChunkRef, hash: &Hash32) -> [u8; LOG_RECORD_LEN] {
    let mut r = [0u8; LOG_RECORD_LEN];
    r[..4].copy_from_slice(&c.file.to_be_bytes());
    r[4..12].copy_from_slice(&c.index.to_be_bytes());
    r[12..44].copy_from_slice(hash.as_bytes());
    let check = blake3::hash(&r[..44]);
    r[44..].copy_from_slice(&check.as_bytes()[..4]);
    r
}

/// A parsed chunk log: the records, and how many bytes of the file are valid (a torn last
/// record from a crash is cut off; the caller truncates the file to `valid_len`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLog {
    /// Records in write order.
    pub records: Vec<(ChunkRef, Hash32)>,
    /// Length of the valid prefix.
    pub valid_len: usize,
}

/// Parses a chunk log. Only the tail may be damaged (a crash mid-append); a bad record
/// followed by more data is corruption and refused.
pub fn decode_chunk_log(bytes: &[u8]) -> Result<ChunkLog, ProtocolError> {
    let mut records = Vec::with_capacity(bytes.len() / LOG_RECORD_LEN);
    let mut pos = 0;
    while pos + LOG_RECORD_LEN <= bytes.len() {
        let r = &bytes[pos..pos + LOG_RECORD_LEN];
        let check = blake3::hash(&r[..44]);
        if check.as_bytes()[..4] != r[44..] {
            if pos + LOG_RECORD_LEN == bytes.len() {
                break; // torn final record
            }
            return Err(ProtocolError::Malformed(format!(
                "chunk log record {} is corrupt",
                pos / LOG_RECORD_LEN
            )));
        }
        let file = u32::from_be_bytes(r[..4].try_into().expect("4"));
        let index = u64::from_be_bytes(r[4..12].try_into().expect("8"));
        let mut h = [0u8; 32];
        h.copy_from_slice(&r[12..44]);
        records.push((ChunkRef { file, index }, Hash32(h)));
        pos += LOG_RECORD_LEN;
    }
    Ok(ChunkLog {
        records,
        valid_len: pos,
    })
}
