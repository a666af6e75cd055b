//! The files' formats: entry frames and their CRC, stored hashes read from disk, hash
//! tile paths.

use super::*;

/// Parses a hash tile path (`tile/L/N[.p/W]`, height [`TILE_HEIGHT`]), as the HTTP tile
/// handler receives it from anyone, and checks the tile
/// lies within a tree of `size` entries. Entry bundles are refused.
pub fn parse_hash_tile(path: &str, size: u64) -> Result<tlog_tiles::Tile> {
    let bad = || LedgerError::InvalidRequest(format!("not a hash tile path: {path:?}"));
    let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
    if rest.starts_with("entries/") || rest.starts_with("data/") {
        return Err(LedgerError::InvalidRequest(
            "entry bundles are not served (entries are tenants' documents)".into(),
        ));
    }
    // Tile::new asserts its ranges: check level and width before parsing.
    let level_ok = rest
        .split('/')
        .next()
        .and_then(|l| l.parse::<u8>().ok())
        .is_some_and(|l| l < 64);
    let width_ok = rest.rsplit_once(".p/").is_none_or(|(_, w)| {
        w.parse::<u32>()
            .is_ok_and(|w| (1..1 << TILE_HEIGHT).contains(&w))
    });
    if !level_ok || !width_ok {
        return Err(bad());
    }
    let tile =
        tlog_tiles::Tile::from_path(&format!("tile/{TILE_HEIGHT}/{rest}")).map_err(|_| bad())?;
    let shift = u32::from(tile.level()) * u32::from(TILE_HEIGHT);
    let level_size = size.checked_shr(shift).unwrap_or(0);
    let end = tile
        .level_index()
        .checked_mul(1 << TILE_HEIGHT)
        .and_then(|s| s.checked_add(u64::from(tile.width())));
    if end.is_none_or(|end| end > level_size) {
        return Err(LedgerError::InvalidRequest(format!(
            "tile {path} is beyond the tree of {size} entries"
        )));
    }
    Ok(tile)
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads stored hashes from `hashes.log`, with hashes of the batch being written layered on
/// top (they are not on disk yet).
pub(super) struct DiskHashes<'a> {
    pub(super) file: &'a File,
    pub(super) path: &'a Path,
    /// Stored hashes on disk (committed).
    pub(super) on_disk: u64,
    pub(super) pending: &'a [Hash],
}

impl<'a> DiskHashes<'a> {
    /// Reads committed hashes only (nothing pending).
    pub(super) fn committed(file: &'a File, path: &'a Path) -> Self {
        Self {
            file,
            path,
            on_disk: u64::MAX,
            pending: &[],
        }
    }
}

impl HashReader for DiskHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        // A tile's hashes lie close together on disk: read their span at once.
        if let (Some(&lo), Some(&hi)) = (indexes.iter().min(), indexes.iter().max())
            && indexes.len() > 8
            && hi < self.on_disk
            && hi - lo < 4 * indexes.len() as u64
        {
            let mut buf = vec![0u8; usize::try_from(hi - lo + 1).unwrap_or(0) * 32];
            self.file.read_exact_at(&mut buf, lo * 32).map_err(|e| {
                tlog_tiles::Error::InvalidInput(format!("{}: {e}", self.path.display()))
            })?;
            return Ok(indexes
                .iter()
                .map(|&i| {
                    let at = usize::try_from(i - lo).unwrap_or(0) * 32;
                    Hash(buf[at..at + 32].try_into().expect("32 bytes"))
                })
                .collect());
        }
        let mut out = Vec::with_capacity(indexes.len());
        for &i in indexes {
            if i >= self.on_disk {
                let k = usize::try_from(i - self.on_disk)
                    .map_err(|_| tlog_tiles::Error::IndexesNotInTree)?;
                out.push(
                    *self
                        .pending
                        .get(k)
                        .ok_or(tlog_tiles::Error::IndexesNotInTree)?,
                );
            } else {
                let mut h = [0u8; 32];
                self.file.read_exact_at(&mut h, i * 32).map_err(|e| {
                    tlog_tiles::Error::InvalidInput(format!("{}: {e}", self.path.display()))
                })?;
                out.push(Hash(h));
            }
        }
        Ok(out)
    }
}

/// Most leaf hashes one [`Ledger::leaf_hashes`] call returns.
pub const MAX_LEAF_HASHES: u64 = 1 << 16;

/// Stored-hash indexes of the leaves `from..to` (at most [`MAX_LEAF_HASHES`]).
pub(crate) fn leaf_hash_indexes(from: u64, to: u64) -> Result<Vec<u64>> {
    if from > to || to - from > MAX_LEAF_HASHES {
        return Err(LedgerError::InvalidRequest(format!(
            "leaf hashes {from}..{to}: give an ascending range of at most {MAX_LEAF_HASHES}"
        )));
    }
    Ok((from..to)
        .map(|i| tlog_tiles::stored_hash_index(0, i))
        .collect())
}

/// CRC-32 of a frame's length field and entry.
pub(super) fn frame_crc(len: [u8; 4], entry: &[u8]) -> [u8; 4] {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(entry);
    h.finalize().to_be_bytes()
}

/// Appends the frame of `entry` (length, entry, checksum) to `out`.
pub(super) fn append_frame(out: &mut Vec<u8>, entry: &[u8]) {
    let len = (entry.len() as u32).to_be_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(entry);
    out.extend_from_slice(&frame_crc(len, entry));
}

/// Reads one frame from a sequential reader: `Ok(None)` at a clean end.
pub(super) fn read_frame(
    r: &mut impl std::io::Read,
) -> std::result::Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("frame header cut short".into()),
            Ok(n) => got += n,
            Err(e) => return Err(e.to_string()),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_ENTRY_LEN {
        return Err(format!("frame claims {n} bytes, more than any entry"));
    }
    let mut body = vec![0u8; n + 4];
    r.read_exact(&mut body)
        .map_err(|_| "frame cut short".to_string())?;
    let (entry, crc) = body.split_at(n);
    if frame_crc(len, entry) != crc {
        return Err("checksum mismatch (the entry's bytes changed)".into());
    }
    body.truncate(n);
    Ok(Some(body))
}

/// Reads the first `n` frames of entries.log with the matching index.log records, checking
/// each frame's checksum and offset, and hands each entry to `f`. Returns the end offset of
/// the last frame. Errors name the entry.
pub(super) fn walk_entries(
    entries: &mut impl std::io::Read,
    index: &mut impl std::io::Read,
    n: u64,
    mut f: impl FnMut(u64, Vec<u8>) -> Result<()>,
) -> Result<u64> {
    let mut offset = 0u64;
    for i in 0..n {
        let corrupt = |what: String| LedgerError::Corrupt { entry: i, what };
        let entry = read_frame(entries)
            .map_err(corrupt)?
            .ok_or_else(|| corrupt("entries.log ends before this committed entry".into()))?;
        let mut off = [0u8; 8];
        index
            .read_exact(&mut off)
            .map_err(|e| corrupt(format!("index.log: {e}")))?;
        if u64::from_be_bytes(off) != offset {
            return Err(corrupt("index.log points elsewhere".into()));
        }
        offset += entry.len() as u64 + 8;
        f(i, entry)?;
    }
    Ok(offset)
}

pub(super) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(LedgerError::io("opening", path))
}

pub(super) fn file_len(f: &File, path: &Path) -> Result<u64> {
    Ok(f.metadata()
        .map_err(LedgerError::io("reading", path))?
        .len())
}
