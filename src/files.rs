//! What every command does with files and stdout: documents read with a size bound,
//! secret files read with the owner-only check, documents written atomically, and output
//! that ends quietly when its reader has gone.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Writes `lines` to stdout, each ending in a newline; see [`print_text`].
pub(crate) fn print_lines(lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    print_text(&text)
}

/// Writes `text` to stdout as it is. A closed stdout (`verify ... | head -1`) ends the
/// output quietly rather than in a panic: callers print only after every check passed, so
/// the exit code still tells the verdict, and the reader asked for no more.
pub(crate) fn print_text(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Reads a document (manifest, receipt, key file), refusing one larger than any document
/// can be before reading it.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > trackshift_crypto::document::MAX_DOCUMENT_BYTES as u64 {
        bail!(
            "{}: {} bytes is too large for a document",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a token or key file (a tenant token, an API key) with the owner-only check of
/// every secret ([`trackshift_crypto::filestore::read_secret`]), trimmed.
pub(crate) fn read_secret_text(path: &Path) -> Result<String> {
    let raw = trackshift_crypto::filestore::read_secret(path)?;
    let text = std::str::from_utf8(&raw)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
    Ok(text.trim().to_string())
}

/// Writes a JSON document atomically (0644), ending in a newline.
pub(crate) fn write_doc(path: &Path, json: &str) -> Result<()> {
    let mut text = json.to_string();
    text.push('\n');
    trackshift_crypto::filestore::write_atomic(path, text.as_bytes(), 0o644)?;
    Ok(())
}

/// `path` with `ext` appended to its file name (`keys.json` → `keys.json.checkpoint`).
pub(crate) fn beside(path: &Path, ext: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(ext);
    std::path::PathBuf::from(name)
}
