//! Readers next to a live writer: read-only opens that follow the writer's checkpoints and
//! refuse a log that shrank or forked, and C2SP tlog-tiles served from the stored hashes and
//! checked by a standard tile client (`tlog_tiles::TileHashReader`).

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tlog_tiles::{Hash, HashReader as _, Tile, TileHashReader, TileReader};
use trackshift_ledger::{Ledger, LedgerError, verify_consistency, verify_inclusion};

const ORIGIN: &str = "test.example/log";

fn entry(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

fn file_lengths(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            (e.file_name().to_string_lossy().into_owned(), m.len())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_read_only_handle_follows_a_live_writer_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = Arc::new(Ledger::open(tmp.path(), ORIGIN).unwrap());
    writer
        .append_blocking((0..10).map(entry).collect())
        .unwrap();

    // The writer holds the lock; a read-only open still works and needs no private key.
    let reader = Ledger::open_read_only(tmp.path(), None).unwrap();
    assert!(reader.is_read_only());
    assert_eq!(reader.size(), 10);
    assert!(matches!(
        reader.append_blocking(vec![entry(99)]),
        Err(LedgerError::Stopped(_))
    ));

    let done = Arc::new(AtomicBool::new(false));
    let w = {
        let (writer, done) = (writer.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 10..400 {
                writer.append_blocking(vec![entry(i)]).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut seen = vec![reader.checkpoint()];
    loop {
        let finished = done.load(Ordering::SeqCst);
        let cp = reader.refresh().unwrap();
        // Whatever checkpoint the reader holds, its proofs verify against it.
        let last = cp.size - 1;
        let leaf = trackshift_ledger::leaf_hash(&reader.entry(last).unwrap());
        let proof = reader.inclusion_proof(last, cp.size).unwrap();
        verify_inclusion(last, cp.size, &leaf, &proof, &cp.root).unwrap();
        if seen.last().unwrap().size != cp.size {
            seen.push(cp);
        }
        if finished {
            break;
        }
    }
    w.join().unwrap();
    assert_eq!(reader.refresh().unwrap().size, 400);
    assert!(seen.len() >= 2, "the reader saw the log grow");
    for pair in seen.windows(2) {
        let p = reader
            .consistency_proof(pair[0].size, pair[1].size)
            .unwrap();
        verify_consistency(pair[0].size, pair[1].size, &pair[0].root, &pair[1].root, &p).unwrap();
    }

    // A full re-check while the writer still runs, and nothing on disk changed by reading.
    let before = file_lengths(tmp.path());
    let v = reader.verify_all(|_, _| Ok(())).unwrap();
    assert_eq!(v.size, 400);
    drop(reader);
    assert_eq!(file_lengths(tmp.path()), before);
}

#[test]
fn a_read_only_handle_refuses_a_log_that_shrank_or_forked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let small_cp;
    {
        let l = Ledger::open(&dir, ORIGIN).unwrap();
        l.append_blocking((0..5).map(entry).collect()).unwrap();
        small_cp = fs::read(dir.join("checkpoint")).unwrap();
        l.append_blocking((5..9).map(entry).collect()).unwrap();
    }
    let reader = Ledger::open_read_only(&dir, None).unwrap();
    assert_eq!(reader.size(), 9);

    // An older (validly signed) checkpoint put back: the log would have shrunk.
    let current = fs::read(dir.join("checkpoint")).unwrap();
    fs::write(dir.join("checkpoint"), &small_cp).unwrap();
    let err = reader.refresh().unwrap_err().to_string();
    assert!(err.contains("went back from 9 to 5"), "{err}");
    assert_eq!(reader.size(), 9, "the held checkpoint is kept");
    fs::write(dir.join("checkpoint"), &current).unwrap();

    // A fork: the same keys sign a log with other entries; its checkpoint cannot be
    // followed (the stored hashes do not give its root).
    let fork = tmp.path().join("fork");
    fs::create_dir_all(&fork).unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    copy(&dir.join("keys"), &fork.join("keys"));
    let fork_l = Ledger::open(&fork, ORIGIN).unwrap();
    for (n, more) in [(9u64, 9u64), (12, 3)] {
        // A fork of the same size as the held checkpoint, then a longer one.
        let start = 100 + fork_l.size();
        fork_l
            .append_blocking((start..start + more).map(entry).collect())
            .unwrap();
        assert_eq!(fork_l.size(), n);
        fs::copy(fork.join("checkpoint"), dir.join("checkpoint")).unwrap();
        let err = reader.refresh().unwrap_err();
        assert!(err.is_verification_failure(), "{err}");
        assert_eq!(reader.size(), 9);
    }

    // A checkpoint signed by other keys is refused by a handle pinned to the log's keys.
    fs::write(dir.join("checkpoint"), &current).unwrap();
    let other = Ledger::open(tmp.path().join("other"), ORIGIN).unwrap();
    let pinned = Ledger::open_read_only(&dir, Some(other.public_keys().clone()));
    assert!(matches!(pinned, Err(LedgerError::Damaged(_))));
}

/// A tile client: fetches tiles through `Ledger::tile` by their C2SP path, as a remote
/// auditor would over HTTP.
struct Tiles<'a>(&'a Ledger);

impl TileReader for Tiles<'_> {
    fn height(&self) -> u8 {
        8
    }
    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                // Go-style path "tile/8/L/N" → C2SP "tile/L/N".
                let path = t.path().replacen("tile/8/", "tile/", 1);
                self.0
                    .tile(&path)
                    .map_err(|e| tlog_tiles::Error::InvalidInput(e.to_string()))
            })
            .collect()
    }
    fn save_tiles(&self, _: &[Tile], _: &[Vec<u8>]) {}
}

#[test]
fn hash_tiles_serve_a_standard_tile_client() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
    // 70,000 entries: full and partial tiles at levels 0, 1 and 2.
    for start in (0..70_000u64).step_by(8192) {
        l.append_blocking((start..(start + 8192).min(70_000)).map(entry).collect())
            .unwrap();
    }
    let cp = l.checkpoint();
    assert_eq!(cp.size, 70_000);
    let tiles = Tiles(&l);
    let client = TileHashReader::new(cp.size, Hash(cp.root), &tiles);
    for index in [0u64, 1, 255, 256, 65_535, 65_536, 69_999] {
        let proof = tlog_tiles::prove_record(cp.size, index, &client).unwrap();
        let leaf = tlog_tiles::record_hash(&entry(index));
        tlog_tiles::check_record(&proof, cp.size, Hash(cp.root), index, leaf).unwrap();
    }
    let old = 300u64;
    let proof = tlog_tiles::prove_tree(cp.size, old, &client).unwrap();
    tlog_tiles::check_tree(
        &proof,
        cp.size,
        Hash(cp.root),
        old,
        Hash(l.root_at(old).unwrap()),
    )
    .unwrap();
    // Leaf hashes read through tiles are the entries' leaf hashes.
    let got = client
        .read_hashes(&[tlog_tiles::stored_hash_index(0, 4242)])
        .unwrap();
    assert_eq!(got[0], tlog_tiles::record_hash(&entry(4242)));

    // Full tiles are 256 hashes, partial ones their width; nothing beyond the tree.
    assert_eq!(l.tile("tile/0/000").unwrap().len(), 256 * 32);
    assert_eq!(l.tile("tile/0/273.p/112").unwrap().len(), 112 * 32);
    assert_eq!(l.tile("tile/1/000").unwrap().len(), 256 * 32);
    assert_eq!(l.tile("tile/1/001.p/17").unwrap().len(), 17 * 32);
    assert_eq!(l.tile("tile/2/000.p/1").unwrap().len(), 32);
    for bad in [
        "tile/0/273",        // the last level-0 tile is partial
        "tile/0/273.p/113",  // wider than the tree
        "tile/0/274.p/1",    // past the end
        "tile/2/000.p/2",    // level 2 has one hash
        "tile/3/000.p/1",    // level 3 is empty
        "tile/0/x000/001",   // non-canonical number
        "tile/0/001.p/256",  // a full width written as partial
        "tile/entries/000",  // entry bundles are not served
        "tile/0/../../keys", // not a tile
        "checkpoint",
        "tile/0/-01",
        "tile/64/000",
        "tile/255/000.p/1",
        "tile/0/000.p/0",
        "tile/0/x018/x446/x744/x073/x709/x551/616.p/255",
    ] {
        assert!(
            matches!(l.tile(bad), Err(LedgerError::InvalidRequest(_))),
            "{bad} was served"
        );
    }
}

proptest::proptest! {
    /// Any path is answered with a tile or a clear refusal, never a panic.
    #[test]
    fn arbitrary_tile_paths_never_panic(
        free in "tile/[0-9a-z./x-]{0,40}",
        level in 0u32..300,
        number in "(x[0-9]{3}/){0,7}[0-9]{1,4}",
        width in proptest::option::of(0u32..300),
        structured in proptest::bool::ANY,
    ) {
        let path = if structured {
            let w = width.map(|w| format!(".p/{w}")).unwrap_or_default();
            format!("tile/{level}/{number}{w}")
        } else {
            free
        };
        let tmp = tempfile::tempdir().unwrap();
        let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
        l.append_blocking((0..300).map(entry).collect()).unwrap();
        match l.tile(&path) {
            Ok(data) => proptest::prop_assert!(!data.is_empty() && data.len() % 32 == 0),
            Err(e) => proptest::prop_assert!(matches!(e, LedgerError::InvalidRequest(_))),
        }
    }
}
