//! Opening a tenant-named path beneath a directory the operator vouches for, without
//! following any link: the one resolution rule both sides of the gateway use (the local
//! destination's writes, the job service's source reads).
//!
//! The directory is opened by the caller (by the operator's path); everything below it is
//! resolved by the kernel with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` from that descriptor, so no symbolic link, `..` or rename a tenant
//! makes between a check and the use moves the open out of the directory.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Resolution of every tenant-named path: beneath the directory descriptor, no link.
pub const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens `rel` beneath `dir` without following any link (`O_CLOEXEC | O_NOFOLLOW` added
/// to `flags`; retried on `EAGAIN`/`EINTR`).
pub fn open_beneath(
    dir: impl AsFd,
    rel: &str,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    loop {
        match rustix::fs::openat2(
            dir.as_fd(),
            rel,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            mode,
            BENEATH,
        ) {
            Err(Errno::AGAIN | Errno::INTR) => continue,
            r => return r,
        }
    }
}

/// Whether a resolution error means the path left the directory or met a link (`ELOOP`,
/// `EXDEV`, `ENOTDIR`): such paths are "not allowed", without saying what is there.
pub fn leaves(e: Errno) -> bool {
    matches!(e, Errno::LOOP | Errno::XDEV | Errno::NOTDIR)
}
