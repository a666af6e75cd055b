//! The log in PostgreSQL (a real server from `scripts/test-servers.sh start postgres`, one
//! fresh database per test): several handles append to one sequence; it computes exactly
//! the roots, proofs and tiles of the file log; other keys are refused; the keys rotate
//! across gateways while they append.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use trackshift_ledger::{
    Ledger, LedgerPublicKeys, LiveLedgerKeys, PgLedger, leaf_hash, stage_ledger_keys,
    verify_checkpoint, verify_consistency, verify_inclusion,
};

async fn database() -> String {
    let url = std::env::var("TRACKSHIFT_TEST_POSTGRES").expect(
        "TRACKSHIFT_TEST_POSTGRES is not set: start the server with `scripts/test-servers.sh start postgres` \
         and source `scripts/test-servers.sh env` (scripts/test.sh does both)",
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db = format!("ts_{}", uuid_like());
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    // The gateways' connections verify the server's certificate.
    format!(
        "{}/{db}?sslmode=verify-full&sslrootcert={}",
        url.rsplit_once('/').unwrap().0,
        test_ca()
    )
}

/// Overwrites entry `idx` in the database behind the log's back.
async fn forge(client: &tokio_postgres::Client, idx: i64) {
    client
        .execute(
            "UPDATE ledger_entries SET data = 'forged' WHERE idx = $1",
            &[&idx],
        )
        .await
        .unwrap();
}

fn test_ca() -> String {
    std::env::var("TRACKSHIFT_TEST_POSTGRES_CA")
        .expect("TRACKSHIFT_TEST_POSTGRES_CA is not set: source `scripts/test-servers.sh env`")
}

fn uuid_like() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    hex::encode(b)
}

const ORIGIN: &str = "shared.example/log";

/// A gateway's key directory holding the pair of `seed` (a directory of its own on every
/// call, as every gateway has its own), under the test target's scratch directory.
fn key_dir(seed: u8) -> PathBuf {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shared-keys-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, s) in [
        ("log-ed25519.key", seed),
        ("cosigner-mldsa44.key", seed ^ 0x55),
    ] {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(name))
            .unwrap()
            .write_all(hex::encode([s; 32]).as_bytes())
            .unwrap();
    }
    dir
}

fn load(dir: &Path) -> LiveLedgerKeys {
    LiveLedgerKeys::load_or_generate(dir, ORIGIN).unwrap()
}

fn keys(seed: u8) -> LiveLedgerKeys {
    load(&key_dir(seed))
}

/// Copies the key file of `from` into `to` the way an operator should: one rename.
fn copy_key_file(from: &Path, to: &Path) {
    std::fs::copy(
        from.join("ledger-keys.json"),
        to.join(".ledger-keys.json.new"),
    )
    .unwrap();
    std::fs::rename(
        to.join(".ledger-keys.json.new"),
        to.join("ledger-keys.json"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_append_to_one_sequence_and_every_entry_proves() {
    let url = database().await;
    let a = Arc::new(PgLedger::connect(&url, keys(1)).await.unwrap());
    let b = Arc::new(PgLedger::connect(&url, keys(1)).await.unwrap());
    assert_eq!(a.size(), 0);
    let early = a.append(vec![b"first".to_vec()]).await.unwrap();
    assert_eq!((early.first_index, early.checkpoint.size), (0, 1));
    // Two writers at once, many appends each: one contiguous sequence.
    let mut tasks = Vec::new();
    for (w, l) in [(0u8, a.clone()), (1, b.clone())] {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..20u32 {
                let entries = vec![
                    format!("w{w}-{i}-m").into_bytes(),
                    format!("w{w}-{i}-r").into_bytes(),
                ];
                let done = l.append(entries.clone()).await.unwrap();
                assert_eq!(done.count, 2);
                got.push((done.first_index, entries, done.checkpoint));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let mut firsts: Vec<u64> = all.iter().map(|(f, _, _)| *f).collect();
    firsts.sort_unstable();
    assert_eq!(
        firsts,
        (0..40).map(|k| 1 + 2 * k).collect::<Vec<u64>>(),
        "contiguous, no overlap"
    );
    // Each append's entries prove against the checkpoint it got, and against the latest.
    let latest = a.refresh().await.unwrap();
    assert_eq!(latest.size, 81);
    assert_eq!(
        b.refresh().await.unwrap().root,
        latest.root,
        "both handles see one log"
    );
    for (first, entries, cp) in &all {
        for (k, e) in entries.iter().enumerate() {
            let idx = first + k as u64;
            for target in [cp.as_ref(), latest.as_ref()] {
                let proof = b.inclusion_proof(idx, target.size).await.unwrap();
                verify_inclusion(idx, target.size, &leaf_hash(e), &proof, &target.root).unwrap();
            }
        }
        let c = a.consistency_proof(cp.size, latest.size).await.unwrap();
        verify_consistency(cp.size, latest.size, &cp.root, &latest.root, &c).unwrap();
    }
    let c = a
        .consistency_proof(early.checkpoint.size, latest.size)
        .await
        .unwrap();
    verify_consistency(1, 81, &early.checkpoint.root, &latest.root, &c).unwrap();
    // A tlog-proof verifies like the file log's.
    let tp = a.tlog_proof_in(5, &latest).await.unwrap();
    assert_eq!(tp.index, 5);
    assert!(a.inclusion_proof(81, 81).await.is_err());
    assert!(a.consistency_proof(5, 82).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_log_computes_what_the_file_log_computes() {
    let url = database().await;
    let pg = PgLedger::connect(&url, keys(2)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = Ledger::open(dir.path(), ORIGIN).unwrap();
    // 700 entries in uneven batches: crosses several full tiles (256) and levels.
    let mut n = 0u32;
    for batch in [1usize, 2, 3, 50, 130, 255, 1, 258] {
        let entries: Vec<Vec<u8>> = (0..batch)
            .map(|k| format!("entry {}", n as usize + k).into_bytes())
            .collect();
        n += batch as u32;
        let p = pg.append(entries.clone()).await.unwrap();
        let f = file.append(entries).await.unwrap();
        assert_eq!(
            (p.first_index, p.checkpoint.size),
            (f.first_index, f.checkpoint.size)
        );
        assert_eq!(
            p.checkpoint.root, f.checkpoint.root,
            "root after {n} entries"
        );
    }
    let size = u64::from(n);
    for idx in [0u64, 1, 255, 256, 511, 699] {
        assert_eq!(
            pg.inclusion_proof(idx, size).await.unwrap(),
            file.inclusion_proof(idx, size).unwrap()
        );
    }
    assert_eq!(
        pg.leaf_hashes(0, size).await.unwrap(),
        file.leaf_hashes(0, size).unwrap()
    );
    assert!(pg.leaf_hashes(0, size + 1).await.is_err());
    // A finish retried after a crash finds its entries in the shared log as in the file log.
    let (pg_log, file_log) = (
        trackshift_ledger::Log::Postgres(std::sync::Arc::new(pg)),
        trackshift_ledger::Log::File(std::sync::Arc::new(file)),
    );
    let run = [b"entry 300".to_vec(), b"entry 301".to_vec()];
    assert_eq!(pg_log.find_appended(0, &run).await.unwrap(), Some(300));
    assert_eq!(file_log.find_appended(0, &run).await.unwrap(), Some(300));
    assert_eq!(pg_log.find_appended(301, &run).await.unwrap(), None);
    let (trackshift_ledger::Log::Postgres(pg), trackshift_ledger::Log::File(file)) =
        (&pg_log, &file_log)
    else {
        unreachable!()
    };
    assert!(pg.consistency_proof(0, size).await.is_err());
    for old in [1u64, 7, 256, 400] {
        assert_eq!(
            pg.consistency_proof(old, size).await.unwrap(),
            file.consistency_proof(old, size).unwrap()
        );
    }
    for tile in [
        "tile/0/000",
        "tile/0/001",
        "tile/0/002.p/188",
        "tile/1/000.p/2",
    ] {
        assert_eq!(
            pg.tile(tile).await.unwrap(),
            file.tile(tile).unwrap(),
            "{tile}"
        );
    }
    assert!(pg.tile("tile/0/003").await.is_err(), "beyond the tree");
    assert!(
        pg.tile("tile/entries/000").await.is_err(),
        "entries are not served"
    );
    file.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_other_keys_is_refused() {
    let url = database().await;
    PgLedger::connect(&url, keys(3)).await.unwrap();
    let err = PgLedger::connect(&url, keys(4)).await.unwrap_err();
    assert!(
        err.to_string().contains("does not hold") && err.to_string().contains("same ledger keys"),
        "{err}"
    );
    // The same keys reconnect and find the log as it was.
    let again = PgLedger::connect(&url, keys(3)).await.unwrap();
    again.append(vec![b"x".to_vec()]).await.unwrap();
    let third = PgLedger::connect(&url, keys(3)).await.unwrap();
    assert_eq!(third.size(), 1);
    assert!(third.append(vec![]).await.is_err(), "nothing to append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_re_checks_the_shared_log_and_finds_tampering() {
    let url = database().await;
    let writer = PgLedger::connect(&url, keys(5)).await.unwrap();
    for b in 0..30u32 {
        writer
            .append(vec![
                format!("doc {b}").into_bytes(),
                format!("receipt {b}").into_bytes(),
            ])
            .await
            .unwrap();
    }
    let public = keys(5).public_keys();
    let auditor = PgLedger::open_read_only(&url, public.clone())
        .await
        .unwrap();
    assert!(
        auditor.append(vec![b"x".to_vec()]).await.is_err(),
        "read-only"
    );
    let mut seen = 0u64;
    let v = auditor
        .verify_all(|i, e| {
            assert_eq!(i, seen);
            seen += 1;
            if e.starts_with(b"doc") || e.starts_with(b"receipt") {
                Ok(())
            } else {
                Err("unexpected entry".into())
            }
        })
        .await
        .unwrap();
    assert_eq!((v.size, seen), (60, 60));
    // A document check that fails names the entry.
    let err = auditor
        .verify_all(|i, _| {
            if i == 7 {
                Err("bad signature".into())
            } else {
                Ok(())
            }
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains('7') && err.to_string().contains("bad signature"),
        "{err}"
    );
    // Tampering in the database is found.
    let pool = trackshift_net::pgconn::pool(&url, 2).unwrap();
    let client = pool.get().await.unwrap();
    forge(&client, 11).await;
    let err = auditor.verify_all(|_, _| Ok(())).await.unwrap_err();
    assert!(
        err.to_string().contains("11") && err.to_string().contains("leaf hash"),
        "{err}"
    );
    client
        .execute(
            "UPDATE ledger_entries SET data = $1 WHERE idx = 11",
            &[&b"receipt 5".to_vec()],
        )
        .await
        .unwrap();
    auditor.verify_all(|_, _| Ok(())).await.unwrap();
    client
        .execute("DELETE FROM ledger_entries WHERE idx = 40", &[])
        .await
        .unwrap();
    let err = auditor.verify_all(|_, _| Ok(())).await.unwrap_err();
    assert!(
        err.to_string().contains("40") && err.to_string().contains("missing"),
        "{err}"
    );
    // Other keys cannot even open it.
    assert!(
        PgLedger::open_read_only(&url, keys(6).public_keys())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_checks_a_log_of_many_batches_and_finds_tampering_deep_in_it() {
    let url = database().await;
    let writer = PgLedger::connect(&url, keys(7)).await.unwrap();
    // 1,337 entries: the auditor reads them 512 at a time, keeping only the tree's edge.
    for b in 0..7u32 {
        let n = if b == 6 { 137 } else { 200 };
        writer
            .append(
                (0..n)
                    .map(|k| format!("entry {b}.{k}").into_bytes())
                    .collect(),
            )
            .await
            .unwrap();
    }
    let auditor = PgLedger::open_read_only(&url, keys(7).public_keys())
        .await
        .unwrap();
    let v = auditor.verify_all(|_, _| Ok(())).await.unwrap();
    assert_eq!(v.size, 1_337);
    let pool = trackshift_net::pgconn::pool(&url, 2).unwrap();
    forge(&pool.get().await.unwrap(), 1200).await;
    let err = auditor.verify_all(|_, _| Ok(())).await.unwrap_err();
    assert!(
        err.to_string().contains("1200") && err.to_string().contains("leaf hash"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_commit_durably_even_where_the_database_defaults_to_asynchronous_commit() {
    // With `synchronous_commit = off` a commit returns before its WAL is flushed: a server
    // crash then loses a checkpoint whose receipts are already out, and the next append
    // signs a different tree of the same size (a fork). The append sets it back on.
    let url = database().await;
    let db = url.split('?').next().unwrap().rsplit_once('/').unwrap().1;
    let base = std::env::var("TRACKSHIFT_TEST_POSTGRES").unwrap();
    let plain = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
    let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("ALTER DATABASE {db} SET synchronous_commit = off"))
        .await
        .unwrap();
    let log = PgLedger::connect(&url, keys(7)).await.unwrap();
    let (client, conn) = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Record the setting in force when each checkpoint is stored.
    client
        .batch_execute(
            "CREATE TABLE seen (setting TEXT);
             CREATE FUNCTION note_setting() RETURNS trigger AS $$
               BEGIN INSERT INTO seen VALUES (current_setting('synchronous_commit')); RETURN NEW; END
             $$ LANGUAGE plpgsql;
             CREATE TRIGGER note_setting AFTER INSERT ON ledger_checkpoints
               FOR EACH ROW EXECUTE FUNCTION note_setting();",
        )
        .await
        .unwrap();
    let default: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        default, "off",
        "the database's default applies to new sessions"
    );
    for i in 0..3u8 {
        log.append(vec![vec![i; 10]]).await.unwrap();
    }
    let seen: Vec<String> = client
        .query("SELECT setting FROM seen", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, ["on", "on", "on"]);
}

/// Every checkpoint note in the database, oldest first.
async fn notes(url: &str) -> Vec<String> {
    let pool = trackshift_net::pgconn::pool(url, 1).unwrap();
    let client = pool.get().await.unwrap();
    client
        .query("SELECT note FROM ledger_checkpoints ORDER BY size", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

fn current_only(public: &LedgerPublicKeys) -> LedgerPublicKeys {
    LedgerPublicKeys {
        retired: Vec::new(),
        ..public.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_across_gateways_while_both_append_and_no_append_fails() {
    let url = database().await;
    let (dir_a, dir_b) = (key_dir(10), key_dir(10));
    let first = load(&dir_a).public_keys();
    let a = Arc::new(PgLedger::connect(&url, load(&dir_a)).await.unwrap());
    let b = Arc::new(PgLedger::connect(&url, load(&dir_b)).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let appenders: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, log)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) || n < 5 {
                    log.append(vec![format!("w{w} e{n}").into_bytes()])
                        .await
                        .unwrap_or_else(|e| panic!("appender {w}, entry {n}: {e}"));
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Stage on one gateway, give the file to the other, activate: the gateways load the
    // file as it changes and never stop appending.
    let staged = stage_ledger_keys(&dir_a, ORIGIN).unwrap();
    assert_eq!(
        stage_ledger_keys(&dir_a, ORIGIN).unwrap(),
        staged,
        "staged once"
    );
    assert_ne!(staged.log_key, first.log_key);
    copy_key_file(&dir_a, &dir_b);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = a.size();
    let now = a.activate_staged().await.unwrap();
    assert_eq!(now.log_key, staged.log_key);
    assert_eq!(now.retired.len(), 1);
    assert_eq!(now.retired[0].log_key, first.log_key);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in appenders {
        total += t.await.unwrap();
    }
    let size = b.refresh().await.unwrap().size;
    assert_eq!(u64::from(total), size);
    assert!(size > before + 4, "appends went on after the activation");

    // Both gateways hold the log's keys now, and wrote them for the export.
    assert_eq!(a.public_keys(), now);
    assert_eq!(b.public_keys(), now);
    for dir in [&dir_a, &dir_b] {
        let on_disk: LedgerPublicKeys =
            serde_json::from_slice(&std::fs::read(dir.join("public-keys.json")).unwrap()).unwrap();
        assert_eq!(on_disk, now, "{}", dir.display());
    }
    // The activating gateway's directory was promoted: the new pair is its current one.
    let promoted = load(&dir_a);
    assert_eq!(promoted.public_keys(), now);
    assert_eq!(promoted.staged_public().unwrap(), None);

    // Checkpoints of both pairs; with the history every one verifies, and each pair alone
    // verifies only its own.
    let notes = notes(&url).await;
    let by_first = notes
        .iter()
        .filter(|n| verify_checkpoint(n, &first).is_ok())
        .count();
    let by_new = notes
        .iter()
        .filter(|n| verify_checkpoint(n, &current_only(&now)).is_ok())
        .count();
    assert!(by_first > 0 && by_new > 0, "{by_first} + {by_new}");
    assert_eq!(by_first + by_new, notes.len());
    for n in &notes {
        verify_checkpoint(n, &now).unwrap();
    }
    let auditor = PgLedger::open_read_only(&url, now.clone()).await.unwrap();
    assert_eq!(auditor.verify_all(|_, _| Ok(())).await.unwrap().size, size);
    assert!(
        PgLedger::open_read_only(&url, first.clone()).await.is_err(),
        "the old pair alone does not verify the new checkpoint"
    );

    // The other gateway activating the same pair only promotes its directory; with
    // nothing staged any more, activating again is refused and changes nothing.
    assert_eq!(b.activate_staged().await.unwrap(), now);
    assert_eq!(load(&dir_b).staged_public().unwrap(), None);
    let e = a.activate_staged().await.unwrap_err();
    assert!(e.to_string().contains("no staged pair"), "{e}");
    assert_eq!(a.public_keys(), now);
    // A restart of either gateway signs on.
    for dir in [&dir_a, &dir_b] {
        let again = PgLedger::connect(&url, load(dir)).await.unwrap();
        again.append(vec![b"after restart".to_vec()]).await.unwrap();
    }
    let auditor = PgLedger::open_read_only(&url, now.clone()).await.unwrap();
    auditor.verify_all(|_, _| Ok(())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_the_new_pair_signs_nothing_until_it_gets_the_file() {
    let url = database().await;
    let (dir_a, dir_c) = (key_dir(11), key_dir(11));
    let a = PgLedger::connect(&url, load(&dir_a)).await.unwrap();
    let c = PgLedger::connect(&url, load(&dir_c)).await.unwrap();
    let e = a.activate_staged().await.unwrap_err();
    assert!(e.to_string().contains("no staged pair"), "{e}");
    a.append(vec![b"one".to_vec()]).await.unwrap();
    stage_ledger_keys(&dir_a, ORIGIN).unwrap();
    let now = a.activate_staged().await.unwrap();
    // The gateway that was not given the staged pair refuses to append, naming the cause
    // and the file to copy; the log is as it was.
    let e = c.append(vec![b"two".to_vec()]).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("does not hold") && text.contains("ledger-keys.json"),
        "{text}"
    );
    assert!(
        !text.contains(&hex::encode([11u8; 32])),
        "no seed in errors"
    );
    assert_eq!(a.refresh().await.unwrap().size, 1);
    // Given the promoted file, it signs on without a restart.
    copy_key_file(&dir_a, &dir_c);
    c.append(vec![b"two".to_vec()]).await.unwrap();
    let auditor = PgLedger::open_read_only(&url, now).await.unwrap();
    assert_eq!(auditor.verify_all(|_, _| Ok(())).await.unwrap().size, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_record_naming_a_pair_no_gateway_holds_is_refused() {
    let url = database().await;
    let dir = key_dir(12);
    let log = PgLedger::connect(&url, load(&dir)).await.unwrap();
    log.append(vec![b"one".to_vec()]).await.unwrap();
    let pool = trackshift_net::pgconn::pool(&url, 1).unwrap();
    let client = pool.get().await.unwrap();
    let set = |public: &LedgerPublicKeys| serde_json::to_string(public).unwrap();
    let real = log.public_keys();
    // Whoever can write the table names their own pair: refused.
    let other = keys(99).public_keys();
    client
        .execute("UPDATE ledger_meta SET public_keys = $1", &[&set(&other)])
        .await
        .unwrap();
    let e = log.append(vec![b"two".to_vec()]).await.unwrap_err();
    assert!(e.to_string().contains("does not hold"), "{e}");
    // Or keeps the real pair and adds a retired one of theirs (to pass off checkpoints
    // they signed): refused too.
    let mut forged = real.clone();
    forged.retired.push(trackshift_crypto::RetiredLedgerKeys {
        log_key: other.log_key.clone(),
        cosigner_key: other.cosigner_key.clone(),
        not_after: trackshift_crypto::Timestamp::from_unix(u64::from(u32::MAX)),
    });
    client
        .execute("UPDATE ledger_meta SET public_keys = $1", &[&set(&forged)])
        .await
        .unwrap();
    let e = log.append(vec![b"two".to_vec()]).await.unwrap_err();
    assert!(e.to_string().contains("key files name"), "{e}");
    assert!(PgLedger::connect(&url, load(&dir)).await.is_err());
    // The real record back: appends go on.
    client
        .execute("UPDATE ledger_meta SET public_keys = $1", &[&set(&real)])
        .await
        .unwrap();
    log.append(vec![b"two".to_vec()]).await.unwrap();
    assert_eq!(log.size(), 2);
}
