//! Tests of the local-disk connector's batched work: syncs side by side sharing a
//! `syncfs` (and falling back to each file's `fsync`), commits side by side each publishing
//! and confirming their own file, large read-backs on several threads.
use super::tests::{aligned, connector, spec};
use super::*;
use bytes::Bytes;
use std::fs;

/// Opens `n` files of 4 KiB under `a/` at `c`, each written with its own bytes.
async fn written(c: &LocalConnector, n: usize) -> Vec<Arc<dyn ObjectWriter>> {
    let mut ws = Vec::new();
    for i in 0..n {
        let w = c
            .open(&spec(&format!("a/f{i}"), 4096), false)
            .await
            .unwrap();
        w.write_at(0, Bytes::from(vec![i as u8; 4096]))
            .await
            .unwrap();
        ws.push(w);
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_side_by_side_share_a_syncfs_and_after_a_failed_one_each_file_syncs_alone() {
    // On a file system whose syncfs is not known to keep files (tmpfs here), each file
    // keeps its own fsync.
    let shm = Path::new("/dev/shm");
    if let Ok(d) = tempfile::tempdir_in(shm)
        && !super::filesync::syncfs_keeps_files(&fs::File::open(d.path()).unwrap())
    {
        let c = connector(d.path());
        let ws = written(&c, 16).await;
        let all = futures::future::join_all(ws.iter().map(|w| w.sync())).await;
        assert!(all.iter().all(Result::is_ok), "{all:?}");
        assert_eq!(
            c.batches.syncs.batch().fs.calls(),
            0,
            "no syncfs on {}",
            d.path().display()
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path());
    let fs_syncs = c.batches.syncs.batch().fs.clone();
    let ws = written(&c, 64).await;
    let all = futures::future::join_all(ws.iter().map(|w| w.sync())).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    if !super::filesync::syncfs_keeps_files(&fs::File::open(dir.path()).unwrap()) {
        eprintln!("the temporary directory's file system takes no syncfs: the rest is moot");
        return;
    }
    let calls = fs_syncs.calls();
    // 64 syncs side by side: at least one batch of 8 or more files took one syncfs.
    assert!((1..=8).contains(&calls), "{calls} syncfs calls");

    // A write-back error reported by syncfs: the group's files are synced one by one
    // (here they all succeed), and the connector gives up syncfs for good.
    fs_syncs
        .fail_next
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for w in &ws {
        w.write_at(0, Bytes::from(vec![9u8; 4096])).await.unwrap();
    }
    let all = futures::future::join_all(ws.iter().map(|w| w.sync())).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    let after_failure = fs_syncs.calls();
    assert!(after_failure > calls, "the failing syncfs was made");
    let all = futures::future::join_all(ws.iter().map(|w| w.sync())).await;
    assert!(all.iter().all(Result::is_ok));
    assert_eq!(
        fs_syncs.calls(),
        after_failure,
        "no syncfs after a failed one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_side_by_side_each_publish_their_own_file_and_confirm_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path()).with_verify(VerifyMode::Full);
    let ws = written(&c, 40).await;
    // One of them is taken: its commit alone fails, the others publish.
    fs::create_dir_all(dir.path().join("a")).unwrap();
    fs::write(dir.path().join("a/f7"), b"someone else's").unwrap();
    let confs = futures::future::join_all(ws.iter().map(|w| w.commit())).await;
    for (i, conf) in confs.into_iter().enumerate() {
        let path = dir.path().join(format!("a/f{i}"));
        if i == 7 {
            assert!(matches!(conf, Err(ConnectorError::Exists(_))), "{conf:?}");
            assert_eq!(fs::read(&path).unwrap(), b"someone else's");
            continue;
        }
        let conf = conf.unwrap();
        assert_eq!(conf.size, 4096);
        let bytes = vec![i as u8; 4096];
        assert_eq!(conf.blake3, Some(*blake3::hash(&bytes).as_bytes()));
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }
    // Nothing temporary is left but the refused file's.
    let left: Vec<_> = fs::read_dir(dir.path().join("a")).unwrap().collect();
    assert_eq!(left.len(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_committed_side_by_side_are_each_read_back_and_confirmed() {
    // 4 × 24 MiB with read-back: more than a batch hashes on one thread.
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path()).with_verify(VerifyMode::Full);
    let size = 24u64 << 20;
    let mut ws = Vec::new();
    for i in 0..4u8 {
        let w = c
            .open(&spec(&format!("big/f{i}"), size), false)
            .await
            .unwrap();
        w.write_at(0, aligned(size as usize, i)).await.unwrap();
        ws.push(w);
    }
    fs::write(dir.path().join("big/f2"), b"taken").unwrap();
    let confs = futures::future::join_all(ws.iter().map(|w| w.commit())).await;
    for (i, conf) in confs.into_iter().enumerate() {
        if i == 2 {
            assert!(matches!(conf, Err(ConnectorError::Exists(_))), "{conf:?}");
            continue;
        }
        let conf = conf.unwrap();
        let expected = aligned(size as usize, i as u8);
        assert_eq!(conf.size, size);
        assert_eq!(
            conf.blake3,
            Some(*blake3::hash(&expected).as_bytes()),
            "file {i}"
        );
        assert_eq!(
            fs::read(dir.path().join(format!("big/f{i}"))).unwrap(),
            expected
        );
    }
}
