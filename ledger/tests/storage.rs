//! Durability and recovery: torn tails, flipped bytes, missing files, a writer killed with
//! SIGKILL during thousands of appends, concurrent writers; and the signed checkpoints and
//! tlog-proofs an auditor checks offline.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use trackshift_ledger::note::{LedgerKeys, cosigned_message};
use trackshift_ledger::{Ledger, LedgerError, TlogProof, verify_checkpoint};

const ORIGIN: &str = "test.example/log";

fn entry(i: usize) -> Vec<u8> {
    format!("{{\"entry\":{i},\"pad\":\"{}\"}}", "p".repeat(i % 13)).into_bytes()
}

#[test]
fn reopening_keeps_every_entry_and_checkpoints_stay_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let (cp1, n1) = {
        let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
        let a = l.append_blocking(vec![entry(0), entry(1)]).unwrap();
        assert_eq!((a.first_index, a.count, a.checkpoint.size), (0, 2, 2));
        let b = l.append_blocking(vec![entry(2)]).unwrap();
        assert_eq!(b.first_index, 2);
        (l.checkpoint(), l.size())
    };
    let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
    assert_eq!(l.size(), n1);
    assert_eq!(*l.checkpoint(), *cp1);
    for i in 0..3 {
        assert_eq!(l.entry(i as u64).unwrap(), entry(i));
    }
    l.append_blocking(vec![entry(3)]).unwrap();
    let cp2 = l.checkpoint();
    let p = l.consistency_proof(cp1.size, cp2.size).unwrap();
    trackshift_ledger::verify_consistency(cp1.size, cp2.size, &cp1.root, &cp2.root, &p).unwrap();
    l.verify_all(|_, _| Ok(())).unwrap();
    assert!(matches!(l.entry(4), Err(LedgerError::InvalidRequest(_))));
}

#[test]
fn a_torn_tail_is_cut_back_at_every_byte_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    {
        let l = Ledger::open(&base, ORIGIN).unwrap();
        for i in 0..5 {
            l.append_blocking(vec![entry(i)]).unwrap();
        }
    }
    let committed = fs::read(base.join("checkpoint")).unwrap();
    let sizes: Vec<u64> = ["entries.log", "index.log", "hashes.log"]
        .iter()
        .map(|f| fs::metadata(base.join(f)).unwrap().len())
        .collect();
    // One more append, then a crash before its checkpoint was written: roll the checkpoint
    // back and cut the new entry's frame at every offset.
    {
        let l = Ledger::open(&base, ORIGIN).unwrap();
        l.append_blocking(vec![entry(5)]).unwrap();
    }
    let full = fs::metadata(base.join("entries.log")).unwrap().len();
    for cut in sizes[0]..full {
        let case = tmp.path().join(format!("cut{cut}"));
        fs::create_dir_all(case.join("keys")).unwrap();
        for f in [
            "entries.log",
            "index.log",
            "hashes.log",
            "keys/log-ed25519.key",
            "keys/cosigner-mldsa44.key",
        ] {
            fs::copy(base.join(f), case.join(f)).unwrap();
        }
        for k in ["keys/log-ed25519.key", "keys/cosigner-mldsa44.key"] {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(case.join(k), fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(case.join("checkpoint"), &committed).unwrap();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(case.join("entries.log"))
            .unwrap();
        f.set_len(cut).unwrap();
        // The index and hashes of the torn entry may or may not have reached the disk.
        if cut % 2 == 0 {
            fs::OpenOptions::new()
                .write(true)
                .open(case.join("index.log"))
                .unwrap()
                .set_len(sizes[1])
                .unwrap();
        }
        let l = Ledger::open(&case, ORIGIN).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(l.size(), 5, "cut at {cut}");
        l.verify_all(|_, _| Ok(())).unwrap();
        for (k, f) in ["entries.log", "index.log", "hashes.log"]
            .iter()
            .enumerate()
        {
            assert_eq!(
                fs::metadata(case.join(f)).unwrap().len(),
                sizes[k],
                "{f} after cut at {cut}"
            );
        }
        // And the log goes on from there.
        let a = l.append_blocking(vec![b"after".to_vec()]).unwrap();
        assert_eq!(a.first_index, 5);
        drop(l);
        fs::remove_dir_all(&case).unwrap();
    }
}

#[test]
fn a_flipped_byte_in_a_committed_entry_is_refused_naming_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
        for i in 0..20 {
            l.append_blocking(vec![entry(i)]).unwrap();
        }
    }
    let path = tmp.path().join("entries.log");
    let original = fs::read(&path).unwrap();
    // Offsets of each frame, to know which entry a byte belongs to.
    let mut starts = vec![0usize];
    for i in 0..20 {
        starts.push(starts[i] + entry(i).len() + 8);
    }
    for pos in (0..original.len()).step_by(7) {
        let owner = starts.iter().rposition(|&s| s <= pos).unwrap() as u64;
        let mut bytes = original.clone();
        bytes[pos] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        match Ledger::open(tmp.path(), ORIGIN) {
            Err(LedgerError::Corrupt { entry, .. }) => {
                assert_eq!(
                    entry, owner,
                    "byte {pos} of entry {owner} reported as {entry}"
                )
            }
            Err(other) => panic!("byte {pos}: expected a corrupt entry, got {other}"),
            Ok(_) => panic!("byte {pos}: a flipped byte was accepted"),
        }
    }
    fs::write(&path, &original).unwrap();
    Ledger::open(tmp.path(), ORIGIN).unwrap();
}

#[test]
fn damaged_tree_hashes_and_missing_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
        for i in 0..9 {
            l.append_blocking(vec![entry(i)]).unwrap();
        }
    }
    // A flipped byte in any stored hash: refused at open or reported by verify_all.
    let hpath = tmp.path().join("hashes.log");
    let original = fs::read(&hpath).unwrap();
    for pos in (0..original.len()).step_by(11) {
        let mut bytes = original.clone();
        bytes[pos] ^= 1;
        fs::write(&hpath, &bytes).unwrap();
        match Ledger::open(tmp.path(), ORIGIN) {
            Err(LedgerError::Damaged(_)) => {}
            Err(other) => panic!("byte {pos}: {other}"),
            Ok(l) => {
                let err = l.verify_all(|_, _| Ok(())).unwrap_err();
                assert!(
                    matches!(err, LedgerError::Corrupt { .. }),
                    "byte {pos}: {err}"
                );
            }
        }
    }
    fs::write(&hpath, &original).unwrap();
    // The checkpoint is the commit point: without it the log refuses to guess.
    let cp = fs::read(tmp.path().join("checkpoint")).unwrap();
    fs::remove_file(tmp.path().join("checkpoint")).unwrap();
    let err = Ledger::open(tmp.path(), ORIGIN).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    fs::write(tmp.path().join("checkpoint"), &cp).unwrap();
    // A missing index: refused, naming where it stops.
    fs::write(tmp.path().join("index.log"), b"").unwrap();
    let err = Ledger::open(tmp.path(), ORIGIN).unwrap_err();
    assert!(
        matches!(err, LedgerError::Corrupt { entry: 0, .. }),
        "{err}"
    );
}

#[test]
fn verify_all_reports_entries_whose_documents_do_not_check() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
    l.append_blocking((0..6).map(entry).collect()).unwrap();
    let err = l
        .verify_all(|i, _| {
            if i == 4 {
                Err("bad signature".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Corrupt { entry: 4, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_contiguous_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Arc::new(Ledger::open(tmp.path(), ORIGIN).unwrap());
    let mut tasks = Vec::new();
    for w in 0..50 {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for k in 0..20 {
                let e = format!("writer {w} item {k}").into_bytes();
                let a = l.append(vec![e.clone(), e.clone()]).await.unwrap();
                assert!(a.checkpoint.size >= a.first_index + 2);
                got.push((a.first_index, e));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(l.size(), 2000);
    for (k, (first, e)) in all.iter().enumerate() {
        assert_eq!(*first, 2 * k as u64, "requests are contiguous and adjacent");
        assert_eq!(&l.entry(*first).unwrap(), e);
        assert_eq!(&l.entry(first + 1).unwrap(), e);
    }
    l.verify_all(|_, _| Ok(())).unwrap();
}

/// Runs as the child of `killed_writers_lose_no_acknowledged_entry` (does nothing otherwise).
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var("TRACKSHIFT_LEDGER_CHILD_DIR") else {
        return;
    };
    let l = Arc::new(Ledger::open(&dir, ORIGIN).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let l = l.clone();
            std::thread::spawn(move || {
                for k in 0.. {
                    let e = format!("t{t}-k{k}-{}", std::process::id());
                    let a = l.append_blocking(vec![e.clone().into_bytes()]).unwrap();
                    let line = format!("ACK {} {e}\n", a.first_index);
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn killed_writers_lose_no_acknowledged_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut acked: Vec<(u64, String)> = Vec::new();
    // Each round kills the child once it has acknowledged a different number of appends
    // (by count, not by time: the machine's fsync speed does not change what is tested).
    for (round, kill_after) in [200usize, 350, 250, 400, 300, 220].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env("TRACKSHIFT_LEDGER_CHILD_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let (i, e) = rest.split_once(' ').unwrap();
                    lines.push((i.parse::<u64>().unwrap(), e.to_string()));
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            lines
        });
        let start = std::time::Instant::now();
        while seen.load(std::sync::atomic::Ordering::SeqCst) < kill_after
            && start.elapsed().as_secs() < 60
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let got = reader.join().unwrap();
        assert!(
            !got.is_empty() || round > 0,
            "the child acknowledged nothing"
        );
        acked.extend(got);
        let l = Ledger::open(&dir, ORIGIN).unwrap_or_else(|e| panic!("round {round}: {e}"));
        for (i, e) in &acked {
            assert_eq!(
                l.entry(*i)
                    .unwrap_or_else(|err| panic!("round {round}: entry {i}: {err}")),
                e.as_bytes(),
                "round {round}: entry {i}"
            );
        }
        l.verify_all(|_, _| Ok(())).unwrap();
    }
    assert!(
        acked.len() > 1000,
        "only {} appends acknowledged",
        acked.len()
    );
}

fn keys() -> LedgerKeys {
    LedgerKeys::from_seeds(ORIGIN, &[7; 32], &[9; 32]).unwrap()
}

#[test]
fn checkpoints_verify_with_public_keys_only_and_tampering_is_caught() {
    let k = keys();
    let public = k.public_keys();
    let note = k.sign_checkpoint(42, [3; 32], 1_700_000_000).unwrap();
    let v = verify_checkpoint(&note, &public).unwrap();
    assert_eq!(
        (v.size, v.root, v.cosigned_at),
        (42, [3; 32], 1_700_000_000)
    );
    assert!(note.starts_with("test.example/log\n42\n"));
    // Changed size, root or origin.
    for (from, to) in [("\n42\n", "\n43\n"), ("AwMD", "BAMD")] {
        let bad = note.replacen(from, to, 1);
        assert_ne!(bad, note);
        assert!(verify_checkpoint(&bad, &public).is_err(), "{from} -> {to}");
    }
    // Each signature is required: drop one line at a time.
    let lines: Vec<&str> = note.lines().collect();
    let sig_lines: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with('\u{2014}'))
        .collect();
    assert_eq!(sig_lines.len(), 2);
    for drop in &sig_lines {
        let kept: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| i != drop)
            .map(|(_, l)| *l)
            .collect();
        let bad = kept.join("\n") + "\n";
        assert!(
            verify_checkpoint(&bad, &public).is_err(),
            "without line {drop}"
        );
    }
    // Other keys.
    let other = LedgerKeys::from_seeds(ORIGIN, &[8; 32], &[9; 32])
        .unwrap()
        .public_keys();
    assert!(verify_checkpoint(&note, &other).is_err());
    let other = LedgerKeys::from_seeds(ORIGIN, &[7; 32], &[10; 32])
        .unwrap()
        .public_keys();
    assert!(verify_checkpoint(&note, &other).is_err());
    // Garbage never panics.
    for junk in ["", "\n\n", "x\n1\n\n", &note[..note.len() / 2]] {
        assert!(verify_checkpoint(junk, &public).is_err());
    }
}

#[test]
fn the_ml_dsa_cosignature_verifies_with_an_independent_fips_204_implementation() {
    use ml_dsa::signature::Verifier as _;
    let k = keys();
    let public = k.public_keys();
    let note = k.sign_checkpoint(7, [0x11; 32], 1_234_567).unwrap();
    let vkey = trackshift_ledger::note::VerifierKey::parse(&public.cosigner_key).unwrap();
    let cos_line = note
        .lines()
        .find(|l| l.starts_with(&format!("\u{2014} {} ", vkey.name)))
        .unwrap();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(cos_line.rsplit(' ').next().unwrap())
        .unwrap();
    let (id, rest) = raw.split_at(4);
    assert_eq!(
        u32::from_be_bytes(id.try_into().unwrap()),
        trackshift_ledger::note::key_id(&vkey.name, 0x06, &vkey.public_key)
    );
    let (ts, sig) = rest.split_at(8);
    assert_eq!(u64::from_be_bytes(ts.try_into().unwrap()), 1_234_567);
    let msg = cosigned_message(&vkey.name, 1_234_567, ORIGIN, 7, &[0x11; 32]).unwrap();
    let enc = ml_dsa::EncodedVerifyingKey::<ml_dsa::MlDsa44>::try_from(vkey.public_key.as_slice())
        .unwrap();
    let vk = ml_dsa::VerifyingKey::<ml_dsa::MlDsa44>::decode(&enc);
    let sig = ml_dsa::Signature::<ml_dsa::MlDsa44>::try_from(sig).unwrap();
    vk.verify(&msg, &sig).unwrap();
    let mut other = msg.clone();
    *other.last_mut().unwrap() ^= 1;
    assert!(vk.verify(&other, &sig).is_err());
}

#[test]
fn tlog_proofs_round_trip_and_verify_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
    for i in 0..11 {
        l.append_blocking(vec![entry(i)]).unwrap();
    }
    let public = l.public_keys().clone();
    for i in 0..11u64 {
        let p = l.tlog_proof(i).unwrap();
        let text = p.to_text();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nindex "));
        let parsed = TlogProof::parse(&text).unwrap();
        assert_eq!(parsed, p);
        parsed.verify(&entry(i as usize), &public).unwrap();
        assert!(parsed.verify(&entry(i as usize + 1), &public).is_err());
    }
    let good = l.tlog_proof(3).unwrap().to_text();
    let bad_inputs = [
        good.replacen("index 3", "index 03", 1),
        good.replacen("index 3", "index 4", 1),
        good.replacen("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2", 1),
        good.replacen("\n\n", "\n", 1),
        good.replacen("index 3\n", "index 3\nAAAA\n", 1),
        String::new(),
    ];
    for bad in bad_inputs {
        let ok = TlogProof::parse(&bad).and_then(|p| p.verify(&entry(3), &public));
        assert!(ok.is_err(), "accepted:\n{bad}");
    }
}

#[test]
fn oversized_and_empty_appends_are_refused_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
    let big = vec![0u8; trackshift_ledger::store::MAX_ENTRY_LEN + 1];
    assert!(matches!(
        l.append_blocking(vec![big]),
        Err(LedgerError::EntryTooLarge { .. })
    ));
    assert!(matches!(
        l.append_blocking(vec![]),
        Err(LedgerError::InvalidRequest(_))
    ));
    assert_eq!(l.size(), 0);
    assert_eq!(
        fs::metadata(Path::new(tmp.path()).join("entries.log"))
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn find_appended_sees_a_run_wherever_it_lies_across_its_read_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Arc::new(Ledger::open(tmp.path(), ORIGIN).unwrap());
    let n = 4100;
    let all: Vec<Vec<u8>> = (0..n).map(entry).collect();
    l.append(all.clone()).await.unwrap();
    let leaves = l.leaf_hashes(0, n as u64).unwrap();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(leaves[i], trackshift_ledger::leaf_hash(e), "leaf {i}");
    }
    assert!(l.leaf_hashes(0, n as u64 + 1).is_err());
    assert!(l.leaf_hashes(5, 4).is_err());
    let log = trackshift_ledger::Log::File(l.clone());
    // Reads go 4096 leaves at a time: runs before, across and after the seam.
    for start in [0usize, 1, 4094, 4095, 4096, 4097, n - 3] {
        for len in [1usize, 2, 3] {
            if start + len > n {
                continue;
            }
            let run = &all[start..start + len];
            assert_eq!(
                log.find_appended(0, run).await.unwrap(),
                Some(start as u64),
                "{start}+{len}"
            );
            assert_eq!(
                log.find_appended(start as u64, run).await.unwrap(),
                Some(start as u64)
            );
            assert_eq!(
                log.find_appended(start as u64 + 1, run).await.unwrap(),
                None
            );
        }
    }
    assert_eq!(
        log.find_appended(0, &[b"never appended".to_vec()])
            .await
            .unwrap(),
        None
    );
    assert_eq!(log.find_appended(0, &[]).await.unwrap(), None);
    l.close();
}

#[test]
fn verifier_keys_with_upper_case_key_ids_are_refused() {
    let public = LedgerKeys::from_seeds(ORIGIN, &[7; 32], &[9; 32])
        .unwrap()
        .public_keys();
    for vkey in [&public.log_key, &public.cosigner_key] {
        trackshift_ledger::note::VerifierKey::parse(vkey).unwrap();
        let mut parts: Vec<String> = vkey.splitn(3, '+').map(str::to_string).collect();
        assert!(
            parts[1].bytes().any(|b| b.is_ascii_alphabetic()),
            "pick seeds whose key id has a letter: {}",
            parts[1]
        );
        parts[1] = parts[1].to_uppercase();
        let err = trackshift_ledger::note::VerifierKey::parse(&parts.join("+")).unwrap_err();
        assert!(matches!(err, LedgerError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("lower-case"), "{err}");
    }
}

/// Exit code `trackshift verify` gives a ledger error: 1 for a rejection, 2 for malformed
/// input (as src/main.rs maps them; FORMATS.md 8.6 lists the cases).
fn exit_code(e: &LedgerError) -> u8 {
    if e.is_verification_failure() { 1 } else { 2 }
}

#[test]
fn every_malformed_or_failing_proof_has_the_exit_code_formats_md_gives() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
    for i in 0..11 {
        l.append_blocking(vec![entry(i)]).unwrap();
    }
    let public = l.public_keys().clone();
    let good = l.tlog_proof(3).unwrap();
    let text = good.to_text();
    let check =
        |text: &str, keys: &trackshift_ledger::LedgerPublicKeys| -> Result<(), LedgerError> {
            TlogProof::parse(text)?.verify(&entry(3), keys).map(|_| ())
        };
    check(&text, &public).unwrap();
    let hash0 = b64.encode(good.proof[0]);
    let mut non_canonical = hash0.clone();
    // The last character before '=' carries 2 unused bits: set one.
    let at = non_canonical.trim_end_matches('=').len() - 1;
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let c = ALPHABET.find(non_canonical.as_bytes()[at] as char).unwrap();
    non_canonical.replace_range(at..=at, &ALPHABET[c ^ 1..=c ^ 1]);
    let too_many = text.replacen(
        &format!("{hash0}\n"),
        &format!("{hash0}\n").repeat(trackshift_ledger::proof::MAX_PROOF_HASHES + 1),
        1,
    );
    let cp_lines: Vec<&str> = good.checkpoint.lines().collect();
    let without = |pred: &dyn Fn(&str) -> bool| -> String {
        let kept: Vec<&str> = good.checkpoint.lines().filter(|l| !pred(l)).collect();
        text.replacen(&good.checkpoint, &(kept.join("\n") + "\n"), 1)
    };
    let flipped = {
        let mut h = good.proof[0];
        h[0] ^= 1;
        text.replacen(&hash0, &b64.encode(h), 1)
    };
    let cases: Vec<(&str, String, u8)> = vec![
        // tlog-proof text (8.3): malformed.
        (
            "other header",
            text.replacen("tlog-proof@v1", "tlog-proof@v2", 1),
            2,
        ),
        (
            "index with a leading zero",
            text.replacen("index 3", "index 03", 1),
            2,
        ),
        (
            "no empty line before the checkpoint",
            text.replacen("\n\n", "\n", 1),
            2,
        ),
        ("a hash of 3 bytes", text.replacen(&hash0, "AAAA", 1), 2),
        (
            "a hash in non-canonical base64",
            text.replacen(&hash0, &non_canonical, 1),
            2,
        ),
        ("more than 128 hashes", too_many, 2),
        (
            "extra that is not base64",
            text.replacen("index 3", "extra !!\nindex 3", 1),
            2,
        ),
        (
            "no checkpoint",
            text[..text.find("\n\n").unwrap() + 2].to_string(),
            2,
        ),
        // The signed checkpoint (8.2).
        (
            "a signature line without the em dash",
            text.replacen("\u{2014} ", "- ", 1),
            2,
        ),
        (
            "the cosignature removed",
            without(&|l: &str| l.contains("/mldsa44 ")),
            1,
        ),
        (
            "the log signature removed",
            without(&|l: &str| l.starts_with(&format!("\u{2014} {ORIGIN} "))),
            1,
        ),
        (
            "the tree size changed",
            text.replacen(&format!("\n{}\n", cp_lines[1]), "\n12\n", 1),
            1,
        ),
        // The inclusion proof (8.1).
        (
            "the neighbouring index",
            text.replacen("index 3", "index 2", 1),
            1,
        ),
        (
            "an index outside the tree",
            text.replacen("index 3", "index 11", 1),
            1,
        ),
        ("a hash changed", flipped, 1),
        (
            "a hash dropped",
            text.replacen(&format!("{hash0}\n"), "", 1),
            1,
        ),
    ];
    for (what, bad, want) in cases {
        let err = check(&bad, &public).expect_err(what);
        assert_eq!(exit_code(&err), want, "{what}: {err}");
    }
    // Keys (2.3 `ledger` member): malformed verifier keys exit 2; another log's keys reject.
    let mut keys = public.clone();
    keys.log_key = keys.log_key.replacen('+', "+x", 1);
    assert_eq!(exit_code(&check(&text, &keys).unwrap_err()), 2);
    let mut keys = public.clone();
    keys.cosigner_key = public.log_key.clone();
    assert_eq!(
        exit_code(&check(&text, &keys).unwrap_err()),
        2,
        "a log key as cosigner"
    );
    let mut keys = public.clone();
    let cos = trackshift_ledger::note::VerifierKey::parse(&public.cosigner_key).unwrap();
    keys.cosigner_key =
        trackshift_ledger::note::encode_vkey("other.example/mldsa44", cos.alg, &cos.public_key);
    assert_eq!(
        exit_code(&check(&text, &keys).unwrap_err()),
        2,
        "a cosigner of another name"
    );
    let other = LedgerKeys::from_seeds(ORIGIN, &[1; 32], &[2; 32])
        .unwrap()
        .public_keys();
    assert_eq!(
        exit_code(&check(&text, &other).unwrap_err()),
        1,
        "another log's keys"
    );
    l.close();
}

/// CRC-32/ISO-HDLC (the zlib, PNG and Ethernet CRC), bit by bit from its parameters: poly
/// 0x04C11DB7 reflected (0xEDB88320), init and final XOR 0xFFFFFFFF.
fn crc32_iso_hdlc(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn entry_frames_carry_the_crc_32_iso_hdlc_of_length_and_entry_big_endian() {
    assert_eq!(
        crc32_iso_hdlc(b"123456789"),
        0xCBF4_3926,
        "the variant's check value"
    );
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path(), ORIGIN).unwrap();
    l.append_blocking(vec![b"123456789".to_vec()]).unwrap();
    l.close();
    drop(l);
    let log = fs::read(tmp.path().join("entries.log")).unwrap();
    assert_eq!(log.len(), 4 + 9 + 4);
    assert_eq!(&log[..4], &9u32.to_be_bytes());
    assert_eq!(&log[4..13], b"123456789");
    assert_eq!(log[13..], crc32_iso_hdlc(&log[..13]).to_be_bytes());
}

#[test]
fn ledger_keys_open_to_group_or_others_are_refused_naming_the_file_and_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let first = LedgerKeys::load_or_generate(&dir, ORIGIN).unwrap();
    for name in ["log-ed25519.key", "cosigner-mldsa44.key"] {
        let path = dir.join(name);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name} created owner-only");
        let secret = fs::read_to_string(&path).unwrap();
        for bad in [0o644, 0o640] {
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
            let e = LedgerKeys::load_or_generate(&dir, ORIGIN).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
            assert!(!msg.contains(secret.trim()), "{msg}");
            // A file ledger using these keys does not open either.
            let ledger_dir = tmp.path().to_path_buf();
            assert!(Ledger::open(&ledger_dir, ORIGIN).is_err());
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let again = LedgerKeys::load_or_generate(&dir, ORIGIN).unwrap();
    assert_eq!(again.public_keys(), first.public_keys(), "the same keys");
}
