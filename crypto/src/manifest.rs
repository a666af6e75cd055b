//! Transfer manifests: what was sent, chunk by chunk, signed with ML-DSA-65.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::canonical::Encoder;
use crate::document::{Signable, SignatureBlock};
use crate::error::{CryptoError, Result};
use crate::hash::{ChunkLayout, Hash32};
use crate::keys::Purpose;
use crate::timestamp::Timestamp;

/// Format tag of version 1 manifests.
pub const MANIFEST_FORMAT: &str = "trackshift.manifest.v1";
/// Domain string prefixed to the file list when computing the root hash.
pub const ROOT_HASH_DOMAIN: &str = "trackshift.manifest.files.v1";
/// Longest accepted file path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// One file of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path, `/`-separated, UTF-8, no `.`/`..`/empty components.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes (power of two, 1 KiB to 1 GiB).
    pub chunk_size: u64,
    /// Hash of every chunk, in order (see [`crate::hash`] for how chunks are hashed).
    pub chunks: Vec<Hash32>,
    /// BLAKE3 of the whole file (what `b3sum` prints).
    pub blake3: Hash32,
}

impl FileEntry {
    /// The chunk layout this entry declares.
    pub fn layout(&self) -> Result<ChunkLayout> {
        ChunkLayout::new(self.size, self.chunk_size)
    }

    /// Builds an entry from chunk hashes, deriving the file hash from them.
    pub fn from_chunks(path: String, layout: ChunkLayout, chunks: Vec<Hash32>) -> Result<Self> {
        let blake3 = layout.file_hash(&chunks)?;
        Ok(Self {
            path,
            size: layout.size(),
            chunk_size: layout.chunk_size(),
            chunks,
            blake3,
        })
    }

    fn encode(&self, e: &mut Encoder) {
        e.str(&self.path)
            .u64(self.size)
            .u64(self.chunk_size)
            .list(&self.chunks, |e, h| {
                e.hash(h);
            })
            .hash(&self.blake3);
    }
}

/// A transfer manifest. JSON for people; [`Signable::signing_message`] for signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The transfer job this manifest describes.
    pub job_id: String,
    /// The tenant that owns the job.
    pub tenant: String,
    /// When the manifest was built.
    pub created_at: Timestamp,
    /// Where the data came from (URI, no credentials).
    pub source: String,
    /// Where the data goes (URIs, no credentials).
    pub destinations: Vec<String>,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
    /// BLAKE3 over the canonical file list ([`Manifest::compute_root_hash`]).
    pub root_hash: Hash32,
    /// ML-DSA-65 signature, absent until signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureBlock>,
}

impl Manifest {
    /// A new unsigned manifest; files are sorted by path and the root hash computed.
    pub fn new(
        job_id: impl Into<String>,
        tenant: impl Into<String>,
        created_at: Timestamp,
        source: impl Into<String>,
        destinations: Vec<String>,
        mut files: Vec<FileEntry>,
    ) -> Result<Self> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let m = Self {
            format: MANIFEST_FORMAT.to_string(),
            job_id: job_id.into(),
            tenant: tenant.into(),
            created_at,
            source: source.into(),
            destinations,
            root_hash: compute_root_hash(&files),
            files,
            signature: None,
        };
        m.validate()?;
        Ok(m)
    }

    /// Parses a manifest JSON file (signed or not) and checks its structure.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes)
            .map_err(|e| CryptoError::malformed("manifest", e.to_string()))?;
        m.check_structure()?;
        Ok(m)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifests always serialise")
    }

    /// BLAKE3 of `str(ROOT_HASH_DOMAIN) || list(files)` in canonical encoding.
    pub fn compute_root_hash(&self) -> Hash32 {
        compute_root_hash(&self.files)
    }

    /// Total bytes over all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Checks everything that does not involve hashes: format, non-empty ids, safe and
    /// unique paths, valid chunk layouts, chunk counts.
    pub fn check_structure(&self) -> Result<()> {
        let bad = |reason: String| Err(CryptoError::malformed("manifest", reason));
        if self.format != MANIFEST_FORMAT {
            return bad(format!(
                "format {:?}, expected {MANIFEST_FORMAT:?}",
                self.format
            ));
        }
        if self.job_id.is_empty() || self.tenant.is_empty() {
            return bad("job_id and tenant must not be empty".into());
        }
        let mut paths = BTreeSet::new();
        for f in &self.files {
            check_path(&f.path).or_else(|r| bad(format!("file {:?}: {r}", f.path)))?;
            if !paths.insert(f.path.as_str()) {
                return bad(format!("file {:?} listed twice", f.path));
            }
            let layout = f.layout()?;
            if f.chunks.len() as u64 != layout.chunk_count() {
                return bad(format!(
                    "file {:?}: {} chunk hashes, expected {} for {} bytes in {}-byte chunks",
                    f.path,
                    f.chunks.len(),
                    layout.chunk_count(),
                    f.size,
                    f.chunk_size
                ));
            }
        }
        if self.files.windows(2).any(|w| w[0].path >= w[1].path) {
            return bad("files must be sorted by path".into());
        }
        // A path may not be both a file and a directory ("a" and "a/b").
        for p in &paths {
            let dir = format!("{p}/");
            if paths
                .range(dir.as_str()..)
                .next()
                .is_some_and(|q| q.starts_with(&dir))
            {
                return bad(format!("{p:?} is both a file and a directory"));
            }
        }
        Ok(())
    }
}

/// The root hash of a file list (`str(ROOT_HASH_DOMAIN) || list(files)`, BLAKE3).
pub fn compute_root_hash(files: &[FileEntry]) -> Hash32 {
    let mut e = Encoder::new();
    e.str(ROOT_HASH_DOMAIN).list(files, |e, f| f.encode(e));
    Hash32::blake3(&e.into_bytes())
}

/// Checks a manifest file path: 1 to [`MAX_PATH_BYTES`] bytes, relative, `/`-separated, no
/// NUL or backslash, no empty, `.` or `..` component. Returns the reason when refused.
pub fn check_path(p: &str) -> std::result::Result<(), String> {
    if p.is_empty() || p.len() > MAX_PATH_BYTES {
        return Err(format!("path must be 1 to {MAX_PATH_BYTES} bytes"));
    }
    if p.contains('\0') || p.contains('\\') {
        return Err("path contains NUL or backslash".into());
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("path must be relative with no empty, '.' or '..' components".into());
    }
    Ok(())
}

impl Signable for Manifest {
    const WHAT: &'static str = "manifest";
    const PURPOSE: Purpose = Purpose::Manifest;
    const FORMAT: &'static str = MANIFEST_FORMAT;

    fn format(&self) -> &str {
        &self.format
    }

    fn encode_body(&self, e: &mut Encoder) {
        e.str(&self.job_id)
            .str(&self.tenant)
            .u64(self.created_at.unix())
            .str(&self.source)
            .list(&self.destinations, |e, d| {
                e.str(d);
            })
            .list(&self.files, |e, f| f.encode(e))
            .hash(&self.root_hash);
    }

    fn signature(&self) -> Option<&SignatureBlock> {
        self.signature.as_ref()
    }

    fn set_signature(&mut self, sig: SignatureBlock) {
        self.signature = Some(sig);
    }

    /// Structure, then every file hash against its chunk hashes, then the root hash.
    fn validate(&self) -> Result<()> {
        self.check_structure()?;
        for f in &self.files {
            let derived = f.layout()?.file_hash(&f.chunks)?;
            if derived != f.blake3 {
                return Err(CryptoError::HashMismatch(format!(
                    "file {:?}: its chunk hashes give {derived}, but the manifest says {}",
                    f.path, f.blake3
                )));
            }
        }
        let root = self.compute_root_hash();
        if root != self.root_hash {
            return Err(CryptoError::HashMismatch(format!(
                "root hash is {root}, but the manifest says {}",
                self.root_hash
            )));
        }
        Ok(())
    }
}
