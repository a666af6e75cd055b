//! Reads a local file or directory tree and hashes every chunk, streaming: memory stays
//! bounded by two batches of chunks whatever the file size, reading the next batch overlaps
//! hashing the current one, and chunks within a batch are hashed in parallel.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use trackshift_crypto::{ChunkLayout, CryptoError, FileEntry, Hash32};

use crate::protocol::FileSpec;

/// Why a scan failed. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file's size changed while it was being read.
    #[error("{0}: file changed while it was being read")]
    Changed(PathBuf),
    /// Something that cannot be part of a manifest (symlink, device, non-UTF-8 name).
    #[error("{path}: {reason}")]
    Unsupported {
        /// The entry.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Invalid chunk size or similar.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bytes read ahead per batch (per batch; two batches are alive at once).
const BATCH_BYTES: u64 = 16 << 20;

/// Lists the regular files under `root` (or `root` itself when it is a file), in path
/// order, with the name each gets in a manifest: the file name for a single file, the
/// `/`-separated path relative to `root` for a directory. Symlinks and special files are
/// refused, as are names that are not UTF-8.
pub fn list_files(root: &Path) -> Result<Vec<(PathBuf, FileSpec)>, ScanError> {
    let meta = std::fs::symlink_metadata(root).map_err(io_err(root))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(ScanError::Unsupported {
                path: root.to_path_buf(),
                reason: "file name is not valid UTF-8",
            })?;
        let spec = FileSpec {
            path: name.to_string(),
            size: meta.len(),
        };
        return Ok(vec![(root.to_path_buf(), spec)]);
    }
    if !meta.is_dir() {
        return Err(ScanError::Unsupported {
            path: root.to_path_buf(),
            reason: "not a regular file or directory",
        });
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            ScanError::Io {
                path,
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("walk failed")),
            }
        })?;
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        if !ft.is_file() {
            return Err(ScanError::Unsupported {
                path: entry.path().to_path_buf(),
                reason: "symlinks and special files are not transferred",
            });
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walk stays under root");
        let name = rel
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<Vec<_>>>()
            .ok_or(ScanError::Unsupported {
                path: entry.path().to_path_buf(),
                reason: "path is not valid UTF-8",
            })?
            .join("/");
        let size = entry
            .metadata()
            .map_err(|e| ScanError::Io {
                path: entry.path().to_path_buf(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("stat failed")),
            })?
            .len();
        files.push((entry.path().to_path_buf(), FileSpec { path: name, size }));
    }
    // Walk order sorts each directory's entries by name; manifests sort by full path bytes.
    files.sort_by(|a, b| a.1.path.cmp(&b.1.path));
    Ok(files)
}

/// Scans `root` (see [`list_files`]) into manifest file entries with chunks of `chunk_size`
/// bytes.
pub fn scan_path(root: &Path, chunk_size: u64) -> Result<Vec<FileEntry>, ScanError> {
    ChunkLayout::new(0, chunk_size)?;
    list_files(root)?
        .into_iter()
        .map(|(path, spec)| hash_file(&path, spec.path, chunk_size))
        .collect()
}

/// Hashes one file into a manifest entry named `name`.
pub fn hash_file(path: &Path, name: String, chunk_size: u64) -> Result<FileEntry, ScanError> {
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let layout = ChunkLayout::new(size, chunk_size)?;
    let chunks = hash_chunks(&file, path, &layout)?;
    if file.metadata().map_err(io_err(path))?.len() != size {
        return Err(ScanError::Changed(path.to_path_buf()));
    }
    Ok(FileEntry::from_chunks(name, layout, chunks)?)
}

fn hash_chunks(file: &File, path: &Path, layout: &ChunkLayout) -> Result<Vec<Hash32>, ScanError> {
    let count = layout.chunk_count();
    let per_batch = (BATCH_BYTES / layout.chunk_size())
        .max(rayon::current_num_threads() as u64)
        .min(count);
    let mut hashes = Vec::with_capacity(count as usize);
    let read_batch = |first: u64, bufs: &mut Vec<Vec<u8>>| -> Result<(), ScanError> {
        let n = per_batch.min(count - first) as usize;
        bufs.resize_with(n, Vec::new);
        for (i, buf) in bufs.iter_mut().enumerate() {
            let index = first + i as u64;
            buf.resize(layout.chunk_len(index) as usize, 0);
            file.read_exact_at(buf, layout.offset(index)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    ScanError::Changed(path.to_path_buf())
                } else {
                    ScanError::Io {
                        path: path.to_path_buf(),
                        source: e,
                    }
                }
            })?;
        }
        Ok(())
    };
    let mut current = Vec::new();
    let mut next = Vec::new();
    read_batch(0, &mut current)?;
    let mut first = 0u64;
    while first < count {
        let after = first + current.len() as u64;
        let (read_result, batch_hashes) = rayon::join(
            || {
                if after < count {
                    read_batch(after, &mut next)
                } else {
                    next.clear();
                    Ok(())
                }
            },
            || {
                current
                    .par_iter()
                    .enumerate()
                    .map(|(i, buf)| layout.chunk_hash(first + i as u64, buf))
                    .collect::<Vec<_>>()
            },
        );
        read_result?;
        hashes.extend(batch_hashes);
        std::mem::swap(&mut current, &mut next);
        first = after;
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, len: usize, seed: u8) -> Vec<u8> {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &data).unwrap();
        data
    }

    #[test]
    fn file_hash_is_plain_blake3_for_many_batches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.bin");
        // 1 KiB chunks: BATCH_BYTES / 1 KiB chunks per batch, so this crosses batch borders.
        let data = write(&p, (BATCH_BYTES as usize) * 2 + 12_345, 7);
        let e = hash_file(&p, "big.bin".into(), 1024).unwrap();
        assert_eq!(e.blake3, Hash32::blake3(&data));
        assert_eq!(e.chunks.len(), data.len().div_ceil(1024));
        let layout = e.layout().unwrap();
        let last = e.chunks.len() - 1;
        assert!(
            layout
                .verify_chunk(last as u64, &data[last * 1024..], &e.chunks[last])
                .is_ok()
        );
    }

    #[test]
    fn directory_scan_is_sorted_relative_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir.path().join("b/z.txt"), 5000, 3);
        let b = write(&dir.path().join("a.txt"), 0, 1);
        let c = write(&dir.path().join("b/c/d.bin"), 4096, 9);
        let entries = scan_path(dir.path(), 1024).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["a.txt", "b/c/d.bin", "b/z.txt"]);
        assert_eq!(entries[0].blake3, Hash32::blake3(&b));
        assert_eq!(entries[1].blake3, Hash32::blake3(&c));
        assert_eq!(entries[2].blake3, Hash32::blake3(&a));
    }

    #[test]
    fn refuses_symlinks_missing_paths_and_bad_chunk_sizes() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("f"), 10, 1);
        std::os::unix::fs::symlink(dir.path().join("f"), dir.path().join("link")).unwrap();
        assert!(matches!(
            scan_path(dir.path(), 1024),
            Err(ScanError::Unsupported { .. })
        ));
        assert!(matches!(
            scan_path(&dir.path().join("nope"), 1024),
            Err(ScanError::Io { .. })
        ));
        assert!(matches!(
            scan_path(&dir.path().join("f"), 1000),
            Err(ScanError::Crypto(_))
        ));
    }
}
