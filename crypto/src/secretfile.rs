//! Secret files of every kind (signing keys, ledger keys, the TLS key, the service key,
//! tokens, tenants' credentials files, PIN files): [`read_secret`] is the one way Trackshift
//! reads one, [`write_atomic`] the one way it writes one (or any file that must never be
//! seen half-written).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use zeroize::{Zeroize as _, Zeroizing};

use crate::error::{CryptoError, Result};

/// Largest secret file [`read_secret`] reads: keys, tokens and credentials files are a few
/// KiB at most, and the limit keeps a wrong path (a log file) from being read whole.
pub const MAX_SECRET_FILE: u64 = 1 << 20;

/// Reads a secret file (private key, token, credentials file) after checking that no one
/// but its owner can read or change it. Returns the bytes, wiped from memory when dropped.
///
/// The checks are made with `fstat` on the descriptor that is then read, not on the path
/// beforehand, so the file checked is the file read even if the path is swapped in
/// between. Symbolic links are followed: what is checked is the file holding the bytes.
/// Refused, with the path in the error:
///
/// * anything but a regular file (a FIFO is opened non-blocking, so it cannot hang the
///   caller; directories, devices and sockets are refused too);
/// * any group or other permission bit (`mode & 0o077 != 0`, the rule OpenSSH applies to
///   private keys): [`CryptoError::InsecurePermissions`], whose message gives the fix,
///   `chmod 600 PATH`;
/// * files over [`MAX_SECRET_FILE`].
///
/// Errors never contain the file's content.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    read_secret_if_exists(path)?.ok_or_else(|| {
        CryptoError::io(
            "reading secret file",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// As [`read_secret`], but a file that does not exist is `Ok(None)` (for secrets created
/// on first start). Every other failure is an error.
pub fn read_secret_if_exists(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt as _;
    let io = |e| CryptoError::io("reading secret file", path, e);
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    let kind = meta.file_type();
    if !kind.is_file() || kind.is_fifo() || kind.is_socket() {
        return Err(CryptoError::NotARegularFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(CryptoError::malformed(
            "secret file",
            format!(
                "{} is {} bytes, over the {} bytes a secret file may hold",
                path.display(),
                meta.len(),
                MAX_SECRET_FILE
            ),
        ));
    }
    // Read into a buffer of the final size, so that no reallocation leaves a copy of the
    // secret behind; a file that changed size since the fstat is refused.
    let mut file = file;
    let mut bytes = Zeroizing::new(vec![0u8; meta.len() as usize]);
    file.read_exact(&mut bytes).map_err(io)?;
    let mut more = [0u8; 1];
    if file.read(&mut more).map_err(io)? != 0 {
        more.zeroize();
        return Err(CryptoError::malformed(
            "secret file",
            format!("{} changed while it was read", path.display()),
        ));
    }
    Ok(Some(bytes))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| CryptoError::io("creating", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| CryptoError::io("setting permissions on", dir, e))
}

/// Writes `bytes` to `path` atomically: a temporary file created with `mode` in the same
/// directory, fsynced, renamed over `path`, and the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| CryptoError::Backend("random generator failed"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CryptoError::io("writing", path, e)
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn secret_at(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, b"s3cr3t-content").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn secrets_open_to_group_or_others_are_refused_with_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o777] {
            let p = secret_at(dir.path(), &format!("k{mode:o}"), mode);
            let e = read_secret(&p).unwrap_err();
            assert!(
                matches!(e, CryptoError::InsecurePermissions { mode: m, .. } if m == mode),
                "{mode:o}: {e}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
            assert!(!msg.contains("s3cr3t"), "{msg}");
            assert!(read_secret_if_exists(&p).is_err(), "{mode:o}");
        }
    }

    #[test]
    fn owner_only_secrets_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400, 0o700] {
            let p = secret_at(dir.path(), &format!("k{mode:o}"), mode);
            assert_eq!(&read_secret(&p).unwrap()[..], b"s3cr3t-content");
        }
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secret(&empty).unwrap().is_empty());
    }

    #[test]
    fn a_missing_secret_is_none_or_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent.key");
        assert!(read_secret_if_exists(&p).unwrap().is_none());
        let e = read_secret(&p).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn symlinks_are_judged_by_the_file_they_reach() {
        let dir = tempfile::tempdir().unwrap();
        let good = secret_at(dir.path(), "good", 0o600);
        let bad = secret_at(dir.path(), "bad", 0o644);
        let to_good = dir.path().join("to-good");
        let to_bad = dir.path().join("to-bad");
        std::os::unix::fs::symlink(&good, &to_good).unwrap();
        std::os::unix::fs::symlink(&bad, &to_bad).unwrap();
        assert_eq!(&read_secret(&to_good).unwrap()[..], b"s3cr3t-content");
        let e = read_secret(&to_bad).unwrap_err();
        assert!(matches!(e, CryptoError::InsecurePermissions { .. }), "{e}");
    }

    #[test]
    fn directories_fifos_and_devices_are_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // A blocking open of a FIFO without a writer would hang this test.
        for p in [sub.as_path(), fifo.as_path(), Path::new("/dev/null")] {
            let e = read_secret(p).unwrap_err();
            assert!(
                matches!(e, CryptoError::NotARegularFile { .. }),
                "{}: {e}",
                p.display()
            );
            assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn oversized_secret_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge");
        let f = fs::File::create(&p).unwrap();
        f.set_len(MAX_SECRET_FILE + 1).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_secret(&p).unwrap_err();
        assert!(e.to_string().contains("huge"), "{e}");
        f.set_len(MAX_SECRET_FILE).unwrap();
        assert_eq!(read_secret(&p).unwrap().len() as u64, MAX_SECRET_FILE);
    }
}
