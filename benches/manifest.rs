//! Manifest creation throughput: streaming read + parallel BLAKE3 chunk hashing of a real
//! file (page-cache warm), and the raw chunk hashing rate from memory.
//!
//! `cargo bench --bench manifest`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use trackshift_crypto::ChunkLayout;

const SIZE: usize = 256 << 20;

fn data() -> Vec<u8> {
    let mut buf = vec![0u8; SIZE];
    blake3::Hasher::new()
        .update(b"trackshift bench")
        .finalize_xof()
        .fill(&mut buf);
    buf
}

fn bench_manifest(c: &mut Criterion) {
    let bytes = data();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.bin");
    std::fs::write(&path, &bytes).unwrap();

    let mut group = c.benchmark_group("manifest");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    for chunk_size in [1u64 << 20, 4 << 20, 16 << 20] {
        let label = format!("{}MiB-chunks", chunk_size >> 20);
        group.bench_function(BenchmarkId::new("create-from-file", &label), |b| {
            b.iter(|| {
                trackshift_engine::scan::hash_file(&path, "bench.bin".into(), chunk_size).unwrap()
            })
        });
    }
    let layout = ChunkLayout::new(SIZE as u64, 4 << 20).unwrap();
    group.bench_function("chunk-hash-in-memory-4MiB-sequential", |b| {
        b.iter(|| {
            for (i, chunk) in bytes.chunks(4 << 20).enumerate() {
                black_box(layout.chunk_hash(i as u64, chunk));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_manifest);
criterion_main!(benches);
