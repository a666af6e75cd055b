//! Directory fsyncs shared between commits: a rename is durable once its directory is
//! synced, and one `fsync` of a directory covers every rename made in it before the sync
//! began. Commits that run side by side hand their directory to a group; one of them syncs
//! every directory the group holds while the next group gathers (as a group commit does).

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use rustix::io::Errno;

/// A directory as the group knows it: device and inode.
pub(super) type DirKey = (u64, u64);

/// The key of directory `dir`.
pub(super) fn dir_key(dir: &OwnedFd) -> Result<DirKey, Errno> {
    let st = rustix::fs::fstat(dir.as_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// Directory syncs gathered into groups (one per connector, shared by its writers).
#[derive(Debug, Default)]
pub(super) struct DirSyncs {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The directories of the group being gathered.
    pending: HashMap<DirKey, Arc<OwnedFd>>,
    /// The number of the group being gathered (groups before it have started).
    gathering: u64,
    /// Every group numbered below this has ended.
    ended: u64,
    /// A group's syncs are under way.
    running: bool,
    /// Per directory, the last group whose sync of it failed, and how.
    failed: HashMap<DirKey, (u64, Errno)>,
}

impl DirSyncs {
    /// Returns once directory `dir` (with key `key`) has been synced after this call began:
    /// by this thread or by another one's sync of the same group. Blocking.
    pub(super) fn sync(&self, key: DirKey, dir: &Arc<OwnedFd>) -> Result<(), Errno> {
        let mut s = self.state.lock().expect("directory sync lock");
        s.pending.entry(key).or_insert_with(|| dir.clone());
        let group = s.gathering;
        loop {
            if s.ended > group {
                return match s.failed.get(&key) {
                    // A failure in this group or a later one: this rename may not be
                    // durable either.
                    Some(&(g, e)) if g >= group => Err(e),
                    _ => Ok(()),
                };
            }
            if !s.running {
                s.running = true;
                let dirs = std::mem::take(&mut s.pending);
                let this = s.gathering;
                s.gathering += 1;
                drop(s);
                let results: Vec<_> = dirs
                    .into_iter()
                    .map(|(k, fd)| (k, rustix::fs::fsync(fd.as_fd())))
                    .collect();
                s = self.state.lock().expect("directory sync lock");
                for (k, r) in results {
                    if let Err(e) = r {
                        s.failed.insert(k, (this, e));
                    }
                }
                s.running = false;
                s.ended = this + 1;
                self.done.notify_all();
                continue;
            }
            s = self.done.wait(s).expect("directory sync lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_dir(p: &std::path::Path) -> Arc<OwnedFd> {
        Arc::new(
            rustix::fs::open(
                p,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn side_by_side_syncs_share_groups_and_each_returns_after_a_sync_it_follows() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (0..4)
            .map(|i| {
                let p = tmp.path().join(format!("d{i}"));
                std::fs::create_dir(&p).unwrap();
                let fd = open_dir(&p);
                (dir_key(&fd).unwrap(), fd)
            })
            .collect();
        let syncs = Arc::new(DirSyncs::default());
        std::thread::scope(|scope| {
            for t in 0..32 {
                let (syncs, (key, fd)) = (syncs.clone(), dirs[t % 4].clone());
                scope.spawn(move || {
                    for _ in 0..20 {
                        let before = syncs.state.lock().unwrap().gathering;
                        syncs.sync(key, &fd).unwrap();
                        // The group that synced this call's directory began after it.
                        assert!(syncs.state.lock().unwrap().ended > before);
                    }
                });
            }
        });
        let s = syncs.state.lock().unwrap();
        assert!(!s.running && s.pending.is_empty());
        // 640 requests in fewer groups than requests (shared), at least one each round.
        assert!(s.ended >= 20 && s.ended < 640, "{} groups", s.ended);
    }

    #[test]
    fn a_failed_sync_fails_the_callers_of_its_group() {
        let tmp = tempfile::tempdir().unwrap();
        // A descriptor fsync refuses: opened with O_PATH.
        let fd = Arc::new(
            rustix::fs::open(
                tmp.path(),
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap(),
        );
        let syncs = DirSyncs::default();
        assert_eq!(syncs.sync((0, 1), &fd), Err(Errno::BADF));
        // Another directory is unaffected.
        let good = open_dir(tmp.path());
        assert_eq!(syncs.sync(dir_key(&good).unwrap(), &good), Ok(()));
    }
}
