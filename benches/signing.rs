//! Sign and verify throughput of both schemes over a realistic signing message.
//!
//! `cargo bench --bench signing`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use trackshift_crypto::{Purpose, Signer as _, SoftwareSigner, Timestamp};

fn bench_signing(c: &mut Criterion) {
    let mut group = c.benchmark_group("signature");
    for purpose in Purpose::ALL {
        let (signer, _seed) = SoftwareSigner::generate(purpose, Timestamp::from_unix(0)).unwrap();
        let key = signer.public().clone();
        // A 4 KiB message: the size of the canonical bytes of a small manifest.
        let message: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let signature = signer.sign(&message).unwrap();
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("sign", key.algorithm.as_str()), |b| {
            b.iter(|| signer.sign(black_box(&message)).unwrap())
        });
        group.bench_function(BenchmarkId::new("verify", key.algorithm.as_str()), |b| {
            b.iter(|| {
                assert!(
                    key.algorithm
                        .verify(&key.public_key, black_box(&message), &signature)
                );
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_signing);
criterion_main!(benches);
