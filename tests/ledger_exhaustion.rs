//! A gateway whose ledger writes fail (a child `trackshift serve` under a low `ulimit -n`
//! and a file-size limit its ledger outgrows after a few jobs, so its writes fail as on a
//! full disk) keeps serving, hands out no receipt for what the ledger did not store, leaves
//! a ledger `trackshift ledger verify` accepts, records a job whose finish waited for room
//! once the disk has it, and after a `kill -9` starts again and takes new jobs.

mod common;

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{get, run, send_args};
use trackshift_ledger::{Ledger, TlogProof};

/// Descriptors the gateway may hold.
const NOFILE: u64 = 128;
/// Size the ledger's entries.log is grown to (with signed manifests) before the limited
/// start; the other files the gateway writes (its job store, job files) stay far below.
const LEDGER_BYTES: u64 = 6 << 20;
/// Room in entries.log under the file-size limit: a few jobs' documents.
const ROOM: u64 = 40 << 10;

/// `trackshift serve` with the soft RLIMIT_NOFILE and RLIMIT_FSIZE lowered (the hard limits
/// stay, so the test can raise them again) and SIGXFSZ ignored, so that a write past the
/// limit fails with EFBIG instead of killing the process.
fn limited_serve(fsize: u64) -> Command {
    let mut cmd = Command::new(common::bin());
    // SAFETY: between fork and exec the closure only makes async-signal-safe calls
    // (getrlimit, setrlimit, signal) on values on its stack.
    unsafe {
        cmd.pre_exec(move || {
            for (resource, limit) in [(libc::RLIMIT_NOFILE, NOFILE), (libc::RLIMIT_FSIZE, fsize)] {
                let mut rl = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(resource, &mut rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                rl.rlim_cur = limit.min(rl.rlim_max);
                if libc::setrlimit(resource, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Gives the running gateway `pid` its file-size limit back (the disk has room again).
fn lift_fsize_limit(pid: u32) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on values on the stack.
    unsafe {
        assert_eq!(
            libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut rl),
            0
        );
        rl.rlim_cur = rl.rlim_max;
        assert_eq!(
            libc::prlimit(pid, libc::RLIMIT_FSIZE, &rl, std::ptr::null_mut()),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// Checks each receipt in `out` against the ledger: its proof verifies with the ledger's
/// public keys and the entry at its index is the receipt.
fn check_receipt(ledger: &Ledger, out: &Path) {
    let text = std::fs::read_to_string(out.join("receipt.json")).unwrap();
    let r = trackshift_crypto::Receipt::from_json(text.as_bytes()).unwrap();
    let bytes = trackshift_crypto::Signable::signed_bytes(&r).unwrap();
    let proof = TlogProof::parse(r.ledger_proof.as_deref().unwrap()).unwrap();
    proof
        .verify(&bytes, &ledger.public_keys())
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    assert!(proof.index < ledger.size(), "{}", out.display());
    assert_eq!(
        ledger.entry(proof.index).unwrap(),
        bytes,
        "{}",
        out.display()
    );
}

/// Grows the gateway's ledger to [`LEDGER_BYTES`] with copies of one large manifest signed
/// by the gateway's manifest key (the log of a gateway that has run for a while); returns
/// the number of entries added.
fn grow_ledger(data: &Path) -> u64 {
    use trackshift_crypto::hash::ChunkLayout;
    use trackshift_crypto::manifest::FileEntry;
    use trackshift_crypto::{
        FileKeyStore, Hash32, KeyBackend as _, Manifest, Purpose, Signable as _, Timestamp,
    };
    let keys = FileKeyStore::open(data.join("keys")).unwrap();
    let now = Timestamp::now();
    let chunks = 16_384u64;
    let layout = ChunkLayout::new(chunks * 1024, 1024).unwrap();
    let hashes = (0..chunks)
        .map(|i| Hash32::blake3(&i.to_be_bytes()))
        .collect();
    let file = FileEntry::from_chunks("big.bin".into(), layout, hashes).unwrap();
    let dest = vec!["file:///elsewhere".to_string()];
    let mut m = Manifest::new("earlier", "default", now, "file:///src", dest, vec![file]).unwrap();
    m.sign_with(keys.signer(Purpose::Manifest, now).unwrap().as_ref(), now)
        .unwrap();
    let entry = m.signed_bytes().unwrap();
    let copies = LEDGER_BYTES.div_ceil(entry.len() as u64);
    let ledger = Ledger::open_existing(data.join("ledger")).unwrap();
    ledger
        .append_blocking(vec![entry; usize::try_from(copies).unwrap()])
        .unwrap();
    ledger.close();
    copies
}

fn ledger_verify(data: &Path, dir: &Path) -> String {
    let (code, out, err) = run(
        &["ledger", "verify", "--data-dir", data.to_str().unwrap()],
        dir,
    );
    assert_eq!(code, 0, "ledger verify refuses the ledger:\n{out}\n{err}");
    out
}

#[test]
fn ledger_writes_that_fail_under_exhaustion_leave_a_ledger_that_verifies_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("gw");
    std::fs::create_dir_all(dir.join("dest")).unwrap();
    let dest = format!("file://{}", dir.join("dest").display());
    let args = ["--default-dest", dest.as_str()];
    // A first start creates the data directory and the ledger; the log then grows.
    drop(common::start_gateway_full(&data, &[], &args, None));
    let grown = grow_ledger(&data);
    let entries_len = std::fs::metadata(data.join("ledger/entries.log"))
        .unwrap()
        .len();
    let mut gw = common::spawn_gateway(
        limited_serve(entries_len + ROOM),
        &data,
        &args,
        Stdio::piped(),
        None,
    );
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (stderr, log) = (gw.child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                log.lock().unwrap().push(line.unwrap());
            }
        });
    }
    let token = data.join("default.token");
    // `retry_for`: how long the sender opens a job again that the gateway failed for a
    // passing reason (its ledger could not write).
    let send = |gw: &common::Gateway, k: usize, retry_for: &str| {
        let file = format!("f{k}.txt");
        std::fs::write(dir.join(&file), format!("job {k}\n")).unwrap();
        std::fs::create_dir_all(dir.join(format!("dest/{k}"))).unwrap();
        let out = dir.join(format!("out{k}"));
        let args = send_args(
            gw,
            &token,
            &file,
            &[&format!("{dest}/{k}")],
            Some(out.to_str().unwrap()),
        );
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--retry-for", retry_for]);
        let (code, stdout, stderr) = run(&args, dir);
        (code == 0, out, format!("{stdout}\n{stderr}"))
    };

    let (mut done, mut failed) = (Vec::new(), 0);
    for k in 0..60 {
        let (ok, out, text) = send(&gw, k, "2s");
        if ok {
            done.push(out);
        } else {
            assert!(
                text.contains("ledger") || text.contains("too large"),
                "{text}"
            );
            failed += 1;
            // The gateway keeps serving while its ledger cannot grow.
            assert_eq!(get(&gw.http, "/health").0, 200);
            if failed == 3 {
                break;
            }
        }
    }
    let ledger_failed = log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("ledger append failed"));
    assert!(
        ledger_failed,
        "the ledger never failed; the gateway said:\n{}",
        log.lock().unwrap().join("\n")
    );
    assert!(
        done.len() >= 2 && failed == 3,
        "{} done, {failed} failed",
        done.len()
    );

    ledger_verify(&data, dir);

    // A job whose finish fails while the ledger cannot grow is not failed: its sender
    // keeps asking, and once the disk has room again the same gateway, never restarted,
    // records it (once).
    let failures = || {
        (log.lock().unwrap().iter())
            .filter(|l| l.contains("ledger append failed"))
            .count()
    };
    let before = failures();
    let (ok, out, text) = std::thread::scope(|scope| {
        let sending = scope.spawn(|| send(&gw, 60, "60s"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while failures() < before + 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            failures() >= before + 2,
            "the finish was tried again while the ledger was full"
        );
        assert!(!sending.is_finished(), "the sender is still waiting");
        lift_fsize_limit(gw.child.id());
        sending.join().unwrap()
    });
    assert!(ok, "a job whose finish waited for the resource: {text}");
    done.push(out);
    ledger_verify(&data, dir);
    drop(gw);
    let out = ledger_verify(&data, dir);
    // The documents of the completed jobs, and the key set recorded before the first.
    let entries = grown as usize + 2 * done.len() + 1;
    assert!(
        out.contains(&format!(
            "{entries} entries ({} manifests, {} receipts, 1 key sets)",
            grown as usize + done.len(),
            done.len()
        )),
        "only the completed jobs are in the ledger: {out}"
    );
    {
        let ledger = Ledger::open_read_only(data.join("ledger"), None).unwrap();
        for out in &done {
            check_receipt(&ledger, out);
        }
    }

    // A restart (without the limits) accepts the log and takes new jobs.
    let gw = common::start_gateway_full(&data, &[], &args, None);
    let (ok, out, text) = send(&gw, 100, "10s");
    assert!(ok, "{text}");
    let out2 = ledger_verify(&data, dir);
    assert!(out2.contains(&format!("{} entries", entries + 2)), "{out2}");
    let ledger = Ledger::open_read_only(data.join("ledger"), None).unwrap();
    check_receipt(&ledger, &out);
}
