//! Grows a ledger to many entries and reports memory (resident set, peak) as it grows, then
//! the cost of reopening it, of proofs and tiles at that size, and of a read-only open.
//!
//! ```text
//! cargo run --release -p trackshift-ledger --example scale -- [ENTRIES] [ENTRY_BYTES] [DIR]
//! ```
//! Defaults: 10,000,000 entries of 256 bytes in a temporary directory (about 3.3 GB of disk).

use std::sync::Arc;
use std::time::Instant;

use trackshift_ledger::Ledger;

/// (resident, peak resident) in MiB from /proc/self/status.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let total: u64 = args
        .get(1)
        .map_or(10_000_000, |a| a.parse().expect("ENTRIES"));
    let entry_bytes: usize = args.get(2).map_or(256, |a| a.parse().expect("ENTRY_BYTES"));
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = args
        .get(3)
        .map_or_else(|| tmp.path().join("log"), std::path::PathBuf::from);

    let ledger = Arc::new(Ledger::open(&dir, "scale.example/log").expect("open"));
    let (rss, _) = memory();
    println!("opened empty log: rss {rss:.1} MiB");
    // 16 writers appending 512-entry requests: group commit merges them into large batches.
    let writers = 16u64;
    let per_request = 512u64;
    let started = Instant::now();
    let mut next_report = 1_000_000u64.min(total);
    let mut done = 0u64;
    while done < total {
        let round = (writers * per_request).min(total - done);
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let ledger = ledger.clone();
                let start = done + w * per_request;
                let end = (start + per_request).min(done + round);
                std::thread::spawn(move || {
                    if start >= end {
                        return;
                    }
                    let entries = (start..end)
                        .map(|i| {
                            let mut e = format!("entry {i:012} ").into_bytes();
                            e.resize(entry_bytes, b'.');
                            e
                        })
                        .collect();
                    ledger.append_blocking(entries).expect("append");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("writer");
        }
        done += round;
        if done >= next_report {
            let (rss, peak) = memory();
            let rate = done as f64 / started.elapsed().as_secs_f64();
            println!(
                "{done:>11} entries: rss {rss:7.1} MiB, peak {peak:7.1} MiB, {rate:8.0} appends/s"
            );
            next_report += 1_000_000;
        }
    }
    let size = ledger.size();
    let t = Instant::now();
    for i in 0..1000u64 {
        let index = (i * 7_919_993) % size;
        ledger.inclusion_proof(index, size).expect("inclusion");
        ledger
            .consistency_proof(index + 1, size)
            .expect("consistency");
    }
    println!(
        "inclusion + consistency proof at {size}: {:.1} µs per pair",
        t.elapsed().as_secs_f64() * 1e6 / 1000.0
    );
    let t = Instant::now();
    let full_tiles = (size / 256).max(1);
    for n in 0..1000u64 {
        let n = (n * 7919) % full_tiles;
        let path = tlog_tiles::Tile::new(8, 0, n, 256, false).path();
        ledger
            .tile(&path.replacen("tile/8/", "tile/", 1))
            .expect("tile");
    }
    println!(
        "full level-0 tile: {:.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / 1000.0
    );
    let (rss, peak) = memory();
    println!("after proofs: rss {rss:.1} MiB, peak {peak:.1} MiB");
    drop(ledger);

    let t = Instant::now();
    let ro = Ledger::open_read_only(&dir, None).expect("read-only open");
    println!(
        "read-only open at {}: {:.1} ms",
        ro.size(),
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(ro);
    let t = Instant::now();
    let reopened = Ledger::open(&dir, "scale.example/log").expect("reopen");
    let (rss, peak) = memory();
    println!(
        "writable reopen (checks every frame): {:.1} s, rss {rss:.1} MiB, peak {peak:.1} MiB",
        t.elapsed().as_secs_f64()
    );
    drop(reopened);
    let disk: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum();
    println!("on disk: {:.2} GiB", disk as f64 / f64::from(1u32 << 30));
}
