//! Ledger throughput and proof cost, on the real on-disk log (fdatasync per group commit,
//! Ed25519 + ML-DSA-44 signed checkpoint per batch).
//!
//! - `append/writers=N`: N concurrent writers each appending one ~1 KiB entry at a time
//!   and waiting for its acknowledgement; throughput in entries per second.
//! - `proof/inclusion@1M` and `proof/consistency@1M`: proof generation in a log of
//!   1,048,576 entries (positioned reads of stored hashes, page-cache warm).
//!
//! `cargo bench --bench ledger`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trackshift_ledger::Ledger;

const ENTRY: usize = 1024;

fn bench_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("append");
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(10);
    for writers in [1usize, 16, 200] {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(dir.path(), "bench.example/log").unwrap());
        // Each iteration: every writer appends `per` entries, one at a time.
        let per = (4000 / writers).max(20);
        g.throughput(Throughput::Elements((per * writers) as u64));
        g.bench_function(format!("writers={writers}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    rt.block_on(async {
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let l = ledger.clone();
                                tokio::spawn(async move {
                                    for k in 0..per {
                                        let mut e = vec![b'x'; ENTRY];
                                        e[..16].copy_from_slice(
                                            &((w * per + k) as u128).to_be_bytes(),
                                        );
                                        l.append(vec![e]).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    });
                    total += start.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

fn bench_proofs(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), "bench.example/log").unwrap();
    let n: u64 = 1 << 20;
    let mut next = 0u64;
    while next < n {
        let batch: Vec<Vec<u8>> = (next..(next + 8192).min(n))
            .map(|i| format!("entry {i}").into_bytes())
            .collect();
        next += batch.len() as u64;
        ledger.append_blocking(batch).unwrap();
    }
    let mut g = c.benchmark_group("proof");
    let mut i = 0u64;
    g.bench_function("inclusion@1M", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            ledger.inclusion_proof(i, n).unwrap()
        })
    });
    let mut m = 1u64;
    g.bench_function("consistency@1M", |b| {
        b.iter(|| {
            m = (m + 7919) % (n - 1) + 1;
            ledger.consistency_proof(m, n).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_append, bench_proofs);
criterion_main!(benches);
