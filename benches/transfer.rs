//! End-to-end transfer throughput over QUIC on 127.0.0.1: a real gateway and sender
//! (TLS 1.3, X25519MLKEM768, per-chunk BLAKE3 verification, group-commit acknowledgements,
//! signed manifest and receipt per job), source file page-cache warm.
//!
//! - `null://` destination: the engine alone (read, hash, QUIC, verify, sign).
//! - `file://` destination: plus positional writes, fsync and rename on local disk.
//!
//! `cargo bench --bench transfer`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trackshift_engine::gateway::{Gateway, GatewayConfig, add_tenant};
use trackshift_engine::sender::{SendConfig, send_path};
use trackshift_engine::tls::ServerTrust;

const SIZE: usize = 256 << 20;

fn bench_transfer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let mut data = vec![0u8; SIZE];
    blake3::Hasher::new()
        .update(b"trackshift transfer bench")
        .finalize_xof()
        .fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    drop(data);
    let gw_dir = dir.path().join("gw");
    let allowed = format!("file://{}", dir.path().join("dest").display());
    add_tenant(&gw_dir, "bench", "bench-token", &["null://", &allowed]).unwrap();
    let gateway = rt.block_on(async {
        Arc::new(
            Gateway::bind(GatewayConfig::new("127.0.0.1:0".parse().unwrap(), &gw_dir))
                .await
                .unwrap(),
        )
    });
    let serving = {
        let g = gateway.clone();
        rt.spawn(async move { g.serve().await })
    };
    let trust = ServerTrust::fingerprint(&gateway.fingerprint()).unwrap();
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();

    let mut group = c.benchmark_group("transfer_256MiB");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    for (name, uri) in [
        ("null", "null://".to_string()),
        ("local_disk", format!("file://{}", dest.display())),
    ] {
        let mut cfg = SendConfig::new(gateway.local_addr(), trust.clone(), "bench-token", &uri);
        let mut run = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                // A directory of its own per send: an object is not replaced without
                // overwrite=true (the gateway makes the directory at job open).
                run += 1;
                if uri.starts_with("file://") {
                    cfg.destinations = vec![format!("{uri}/run-{run}")];
                }
                rt.block_on(send_path(&src, &cfg, |_| {})).unwrap()
            });
        });
    }
    group.finish();
    gateway.close();
    serving.abort();
}

criterion_group!(benches, bench_transfer);
criterion_main!(benches);
