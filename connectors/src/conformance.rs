//! The connector contract as a test suite any backend or wrapper calls (feature
//! `conformance`; the crate's own unit tests always have it), in the manner of
//! object_store's `integration` module.
//!
//! A backend's tests implement [`Subject`] (how to build its connector with or without
//! `overwrite=true` and with a verification mode, and what it can do) and call
//! [`run_all`], or one case at a time. Every case panics with the subject's name and what
//! broke. The cases write under fixed names, so a subject hands out connectors on a fresh
//! prefix, bucket or store of its own, shared by every connector it builds (the suite
//! checks what one connector wrote through another).
//!
//! Run here: the in-memory connector, `null://`, every wrapper (over memory), and, in the
//! workspace's `tests/connectors.rs`, local disk and the real S3, Azure, SFTP and FTPS
//! servers.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Confirmation, Connector, ConnectorError, ObjectSpec, VerifyMode};

/// What a subject can do, where connectors differ. The default is a store that keeps
/// objects of any size below 1 GiB, has no upload state file and confirms strict commits
/// by reading back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// It discards what it is given (`null://`): no case that reads an object back runs.
    pub discards: bool,
    /// It takes an object over 1 GiB, written sparsely by concurrent chunks.
    pub large_objects: bool,
    /// It keeps upload state in [`ObjectSpec::state_file`] (S3, Azure), so a commit
    /// retried from a stale state file (a crash after the commit) is checked.
    pub state_file: bool,
    /// Of two concurrent uploads to one name, the later commit fails and replaces nothing
    /// (Azure drops a blob's uncommitted blocks when another upload to it commits).
    pub later_commit_fails: bool,
    /// Strict mode confirms content by the service's own hash (S3's multipart MD5 ETag),
    /// not a read-back.
    pub strict_by_etag: bool,
}

/// A connector under test.
pub trait Subject: Send + Sync {
    /// Its name in failure messages.
    fn name(&self) -> &str;
    /// A connector on this subject's objects: with `overwrite` it may replace an existing
    /// object (the job option `overwrite=true`); `verify` is its verification mode.
    fn connector(&self, overwrite: bool, verify: VerifyMode) -> Arc<dyn Connector>;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
}

/// Every case, one after the other.
pub async fn run_all(s: &dyn Subject) {
    round_trip(s).await;
    overwrite_replaces(s).await;
    existing_objects_are_not_replaced(s).await;
    overwrite_replaces_an_object_that_appeared_after_open(s).await;
    remove_takes_back_only_its_own_commit(s).await;
    a_retried_commit_confirms_only_its_own_object(s).await;
    concurrent_uploads(s).await;
    abort_leaves_nothing(s).await;
    resume_after_the_writer_is_gone(s).await;
    large_sparse_object(s).await;
    names_and_traversal(s).await;
    strict_and_full_confirm_content(s).await;
}

/// Chunk size to use for an object of `size` bytes at `c` (at least 1 MiB).
pub fn chunk_for(c: &dyn Connector, size: u64) -> u64 {
    c.min_chunk_size(size).max(1 << 20)
}

/// `size` bytes of a pattern that differs by `seed` (xorshift).
pub fn pattern(size: usize, seed: u8) -> Bytes {
    let mut v = vec![0u8; size];
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    for b in &mut v {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    Bytes::from(v)
}

/// The spec of object `path` of the suite's job.
pub fn spec(path: &str, size: u64, chunk: u64, state: Option<&Path>) -> ObjectSpec {
    ObjectSpec {
        tenant: "t".into(),
        job_id: "job-conformance".into(),
        path: path.into(),
        size,
        chunk_size: chunk,
        state_file: state.map(Path::to_path_buf),
    }
}

/// Writes `data` as an object in reverse chunk order (order must not matter) and commits
/// it.
pub async fn put(c: &dyn Connector, path: &str, data: &Bytes, chunk: u64) -> Confirmation {
    let w = c
        .open(&spec(path, data.len() as u64, chunk, None), false)
        .await
        .unwrap_or_else(|e| panic!("{} open {path}: {e}", c.uri()));
    let n = (data.len() as u64).div_ceil(chunk).max(1);
    for i in (0..n).rev() {
        let start = (i * chunk) as usize;
        let end = (start + chunk as usize).min(data.len());
        w.write_at(i * chunk, data.slice(start..end)).await.unwrap();
    }
    w.sync().await.unwrap();
    w.commit()
        .await
        .unwrap_or_else(|e| panic!("{} commit {path}: {e}", c.uri()))
}

fn blake3(data: &[u8]) -> [u8; 32] {
    *::blake3::hash(data).as_bytes()
}

/// Small, empty and multi-chunk objects are committed, stat'ed and read back whole.
pub async fn round_trip(s: &dyn Subject) {
    let name = s.name();
    let c = s.connector(true, VerifyMode::Size);
    // What a job open does (prepare), then what a health probe does (check): both pass.
    c.prepare().await.unwrap_or_else(|e| panic!("{name}: {e}"));
    c.check().await.unwrap_or_else(|e| panic!("{name}: {e}"));
    for (path, size) in [
        ("small.txt", 100usize),
        ("empty", 0),
        ("dir/sub/multi.bin", 20 << 20),
    ] {
        let data = pattern(size, 1);
        let chunk = chunk_for(c.as_ref(), size as u64);
        let conf = put(c.as_ref(), path, &data, chunk).await;
        assert_eq!(conf.size, size as u64, "{name} {path}");
        if s.capabilities().discards {
            continue;
        }
        assert_eq!(
            c.stat(path).await.unwrap(),
            Some(size as u64),
            "{name} {path}"
        );
        assert_eq!(
            c.read_back(path).await.unwrap(),
            (size as u64, blake3(&data)),
            "{name} {path}"
        );
    }
    assert_eq!(c.stat("missing").await.unwrap(), None, "{name}");
}

/// With `overwrite=true` a second commit to a name replaces the first.
pub async fn overwrite_replaces(s: &dyn Subject) {
    if s.capabilities().discards {
        return;
    }
    let c = s.connector(true, VerifyMode::Size);
    let first = pattern(3000, 2);
    let second = pattern(1500, 3);
    put(c.as_ref(), "same", &first, 1 << 20).await;
    put(c.as_ref(), "same", &second, 1 << 20).await;
    assert_eq!(
        c.read_back("same").await.unwrap(),
        (1500, blake3(&second)),
        "{}",
        s.name()
    );
}

/// Without `overwrite=true`, an object the job did not create is refused at open, and one
/// that appears between open and commit is refused by the commit itself; taking back what
/// was never committed leaves the other object alone.
pub async fn existing_objects_are_not_replaced(s: &dyn Subject) {
    if s.capabilities().discards {
        return;
    }
    let name = s.name();
    let c = s.connector(true, VerifyMode::Size);
    let first = pattern(3000, 2);
    put(c.as_ref(), "theirs", &first, 1 << 20).await;
    let plain = s.connector(false, VerifyMode::Size);
    let r = plain.open(&spec("theirs", 10, 1 << 20, None), false).await;
    assert!(
        matches!(r, Err(ConnectorError::Exists(_))),
        "{name}: an existing object was opened for replacing"
    );
    assert_eq!(
        c.read_back("theirs").await.unwrap(),
        (3000, blake3(&first)),
        "{name}"
    );
    // One that appears between open and commit: the commit itself refuses it (local disk
    // and SFTP rename without replacing, S3 and Azure commit with `If-None-Match: *`, FTPS
    // looks again right before RNTO).
    for (path, size) in [("late", 100u64), ("late-empty", 0)] {
        let mine = pattern(size as usize, 4);
        // (another job: its own temporary object)
        let late = ObjectSpec {
            job_id: "another-job".into(),
            ..spec(path, size, 1 << 20, None)
        };
        let w = plain.open(&late, false).await.unwrap();
        if size > 0 {
            w.write_at(0, mine).await.unwrap();
        }
        w.sync().await.unwrap();
        put(c.as_ref(), path, &first, 1 << 20).await;
        let r = w.commit().await;
        assert!(
            matches!(r, Err(ConnectorError::Exists(_))),
            "{name} {path}: the commit of an object that appeared after open: {r:?}"
        );
        w.remove().await.unwrap();
        assert_eq!(
            c.read_back(path).await.unwrap(),
            (3000, blake3(&first)),
            "{name} {path}"
        );
    }
}

/// With `overwrite=true` a commit replaces an object another upload committed after this
/// one opened (except where the later of two racing commits fails, see
/// [`Capabilities::later_commit_fails`]).
pub async fn overwrite_replaces_an_object_that_appeared_after_open(s: &dyn Subject) {
    if s.capabilities().discards {
        return;
    }
    let name = s.name();
    let c = s.connector(true, VerifyMode::Size);
    let theirs = pattern(3000, 2);
    let mine = pattern(100, 4);
    let w = c
        .open(&spec("replaced", 100, 1 << 20, None), false)
        .await
        .unwrap();
    w.write_at(0, mine.clone()).await.unwrap();
    w.sync().await.unwrap();
    let other = ObjectSpec {
        job_id: "another-job".into(),
        ..spec("replaced", 3000, 1 << 20, None)
    };
    let o = c.open(&other, false).await.unwrap();
    o.write_at(0, theirs).await.unwrap();
    o.sync().await.unwrap();
    o.commit().await.unwrap();
    let r = w.commit().await;
    if s.capabilities().later_commit_fails {
        assert!(r.is_err(), "{name}: a commit of discarded blocks: {r:?}");
        assert_eq!(c.read_back("replaced").await.unwrap().0, 3000, "{name}");
        return;
    }
    let conf = r.unwrap_or_else(|e| panic!("{name}: overwrite=true was refused: {e}"));
    assert_eq!(conf.size, 100, "{name}");
    assert_eq!(
        c.read_back("replaced").await.unwrap(),
        (100, blake3(&mine)),
        "{name}"
    );
}

/// `remove` deletes what this writer committed (twice is fine: a retried clean-up).
pub async fn remove_takes_back_only_its_own_commit(s: &dyn Subject) {
    if s.capabilities().discards {
        return;
    }
    let name = s.name();
    // Without overwrite: what it committed is its own.
    let c = s.connector(false, VerifyMode::Size);
    for (path, size) in [("removed", 5000usize), ("removed-empty", 0)] {
        let data = pattern(size, 8);
        let w = c
            .open(&spec(path, size as u64, 1 << 20, None), false)
            .await
            .unwrap();
        if size > 0 {
            w.write_at(0, data).await.unwrap();
        }
        w.sync().await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(c.stat(path).await.unwrap(), Some(size as u64), "{name}");
        w.remove()
            .await
            .unwrap_or_else(|e| panic!("{name} {path}: {e}"));
        assert_eq!(c.stat(path).await.unwrap(), None, "{name} {path}");
        w.remove().await.unwrap();
    }
}

/// A commit retried after a crash between completing the upload and recording that it
/// did (the upload state on disk still says "not committed") confirms its own object,
/// and never one that replaced it in between ([`Capabilities::state_file`] only).
pub async fn a_retried_commit_confirms_only_its_own_object(s: &dyn Subject) {
    if !s.capabilities().state_file {
        return;
    }
    let name = s.name();
    let plain = s.connector(false, VerifyMode::Size);
    let other = s.connector(true, VerifyMode::Size);
    for (path, replaced) in [("crash-mine", false), ("crash-replaced", true)] {
        let state_dir = tempfile::tempdir().unwrap();
        let state = state_dir.path().join("upload.json");
        let size = 12u64 << 20;
        let chunk = chunk_for(plain.as_ref(), size);
        let data = pattern(size as usize, 9);
        let sp = spec(path, size, chunk, Some(&state));
        let w = plain.open(&sp, false).await.unwrap();
        for i in 0..size.div_ceil(chunk) {
            let start = (i * chunk) as usize;
            let end = (start + chunk as usize).min(data.len());
            w.write_at(i * chunk, data.slice(start..end)).await.unwrap();
        }
        w.sync().await.unwrap();
        let before_commit = std::fs::read(&state).unwrap();
        w.commit().await.unwrap();
        drop(w);
        // The crash: what was recorded is from before the commit.
        std::fs::write(&state, &before_commit).unwrap();
        let theirs = pattern(size as usize, 10);
        if replaced {
            put(other.as_ref(), path, &theirs, chunk).await;
        }
        let w = plain.open(&sp, true).await.unwrap();
        let r = w.commit().await;
        if replaced {
            assert!(
                matches!(r, Err(ConnectorError::Exists(_))),
                "{name}: a replacement was confirmed as this job's: {r:?}"
            );
            assert_eq!(
                plain.read_back(path).await.unwrap(),
                (size, blake3(&theirs)),
                "{name}"
            );
        } else {
            let conf = r.unwrap_or_else(|e| panic!("{name}: own commit refused: {e}"));
            assert_eq!(conf.size, size, "{name}");
            assert_eq!(
                plain.read_back(path).await.unwrap(),
                (size, blake3(&data)),
                "{name}"
            );
        }
    }
}

/// Eight uploads to different names at once all arrive whole.
pub async fn concurrent_uploads(s: &dyn Subject) {
    let c = s.connector(true, VerifyMode::Size);
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let data = pattern(10_000 + usize::from(i) * 100, i);
                let conf = put(c.as_ref(), &format!("concurrent/{i}.bin"), &data, 1 << 20).await;
                (data, conf)
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (data, conf) = t.await.unwrap();
        assert_eq!(conf.size, data.len() as u64, "{}", s.name());
        if s.capabilities().discards {
            continue;
        }
        assert_eq!(
            c.read_back(&format!("concurrent/{i}.bin")).await.unwrap(),
            (data.len() as u64, blake3(&data)),
            "{}",
            s.name()
        );
    }
}

/// An upload aborted after its first chunk leaves nothing under the final name.
pub async fn abort_leaves_nothing(s: &dyn Subject) {
    let c = s.connector(true, VerifyMode::Size);
    let size = 20u64 << 20;
    let chunk = chunk_for(c.as_ref(), size);
    let data = pattern(size as usize, 4);
    let w = c
        .open(&spec("aborted.bin", size, chunk, None), false)
        .await
        .unwrap();
    w.write_at(0, data.slice(0..chunk as usize)).await.unwrap();
    w.sync().await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(c.stat("aborted.bin").await.unwrap(), None, "{}", s.name());
}

/// A writer that goes away after a sync leaves no object; a fresh connector (as after a
/// restart, and strict this time) resumes from what was synced, confirms the content and
/// confirms it again on a retried commit.
pub async fn resume_after_the_writer_is_gone(s: &dyn Subject) {
    if s.capabilities().discards {
        return;
    }
    let name = s.name();
    let c = s.connector(true, VerifyMode::Size);
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("upload-0.json");
    let size = 20u64 << 20;
    let chunk = chunk_for(c.as_ref(), size);
    let data = pattern(size as usize, 5);
    let sp = spec("resumed.bin", size, chunk, Some(&state));
    {
        let w = c.open(&sp, false).await.unwrap();
        w.write_at(0, data.slice(0..chunk as usize)).await.unwrap();
        w.sync().await.unwrap();
        // The writer (and the gateway holding it) goes away here.
    }
    assert_eq!(c.stat("resumed.bin").await.unwrap(), None, "{name}");
    let c = s.connector(true, VerifyMode::Strict);
    let w = c.open(&sp, true).await.unwrap();
    for i in 1..size.div_ceil(chunk) {
        let start = (i * chunk) as usize;
        let end = (start + chunk as usize).min(data.len());
        w.write_at(i * chunk, data.slice(start..end)).await.unwrap();
    }
    w.sync().await.unwrap();
    let conf = w.commit().await.unwrap();
    assert_eq!(conf.size, size, "{name}");
    // Every kind confirms the content: S3 by reading back, as the first part's MD5 (for
    // the ETag check) was never taken.
    assert_eq!(conf.blake3, Some(blake3(&data)), "{name}");
    assert_eq!(
        c.read_back("resumed.bin").await.unwrap(),
        (size, blake3(&data)),
        "{name}"
    );
    assert_eq!(w.commit().await.unwrap().size, size, "{name}");
}

/// An object over 1 GiB written sparsely by eight chunks at a time ([`Capabilities::large_objects`]);
/// emptied afterwards, to give the space back.
pub async fn large_sparse_object(s: &dyn Subject) {
    static ZEROS: [u8; 16 << 20] = [0u8; 16 << 20];
    if !s.capabilities().large_objects {
        return;
    }
    let name = s.name();
    let c = s.connector(true, VerifyMode::Size);
    let size = (1u64 << 30) + 4096;
    let chunk = 16u64 << 20;
    let w = c
        .open(&spec("large/sparse.bin", size, chunk, None), false)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..size.div_ceil(chunk) {
        let w = w.clone();
        let len = chunk.min(size - i * chunk) as usize;
        tasks.push(tokio::spawn(async move {
            w.write_at(i * chunk, Bytes::from_static(&ZEROS[..len]))
                .await
        }));
        if tasks.len() >= 8 {
            tasks.remove(0).await.unwrap().unwrap();
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    w.sync().await.unwrap();
    assert_eq!(w.commit().await.unwrap().size, size, "{name}");
    assert_eq!(
        c.stat("large/sparse.bin").await.unwrap(),
        Some(size),
        "{name}"
    );
    // Give the space back before the next server writes its GiB: the servers share one
    // disk (five GiB at once is more than a small CI runner may have free).
    put(c.as_ref(), "large/sparse.bin", &Bytes::new(), chunk).await;
    assert_eq!(c.stat("large/sparse.bin").await.unwrap(), Some(0), "{name}");
}

/// Names with spaces and Unicode round-trip; traversal, absolute and empty names are
/// refused at open.
pub async fn names_and_traversal(s: &dyn Subject) {
    let name = s.name();
    let c = s.connector(true, VerifyMode::Size);
    let path = "dir with spaces/naïve café ☃ 文件.txt";
    let data = pattern(777, 6);
    put(c.as_ref(), path, &data, 1 << 20).await;
    if !s.capabilities().discards {
        assert_eq!(
            c.read_back(path).await.unwrap(),
            (777, blake3(&data)),
            "{name}"
        );
    }
    for bad in ["../escape", "a/../../b", "/abs", "a//b", "./x", ""] {
        let r = c.open(&spec(bad, 1, 1 << 20, None), false).await;
        assert!(
            matches!(r, Err(ConnectorError::InvalidPath(_))),
            "{name}: {bad:?} was accepted"
        );
    }
}

/// Strict mode confirms content (by the service's hash, or by reading back); full
/// verification always reads back.
pub async fn strict_and_full_confirm_content(s: &dyn Subject) {
    if s.capabilities().discards {
        return;
    }
    let name = s.name();
    let c = s.connector(true, VerifyMode::Strict);
    let data = pattern(5000, 7);
    let conf = put(c.as_ref(), "strict.bin", &data, 1 << 20).await;
    if s.capabilities().strict_by_etag {
        assert!(
            conf.etag.as_deref().is_some_and(|e| e.ends_with("-1")),
            "{name}: {conf:?}"
        );
    } else {
        assert_eq!(conf.blake3, Some(blake3(&data)), "{name}");
    }
    let c = s.connector(true, VerifyMode::Full);
    let conf = put(c.as_ref(), "full.bin", &data, 1 << 20).await;
    assert_eq!(conf.blake3, Some(blake3(&data)), "{name}");
}
