//! Connector-only throughput: writes one object of SIZE MiB through a connector from
//! memory (chunks of CHUNK MiB, CONCURRENCY writes in flight), syncs and commits it, and
//! prints MiB/s. Credentials come from the environment, as for the gateway.
//!
//! ```text
//! cargo run --release -p trackshift-connectors --example put -- URI [SIZE_MIB [CHUNK_MIB [CONCURRENCY]]]
//! ```

use std::time::Instant;

use bytes::Bytes;
use trackshift_connectors::{Destination, ObjectSpec, Settings, VerifyMode, connect};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let uri = args
        .get(1)
        .ok_or("usage: put URI [SIZE_MIB [CHUNK_MIB [CONCURRENCY]]]")?;
    let size_mib: u64 = args.get(2).map_or(Ok(2048), |a| a.parse())?;
    let chunk_mib: u64 = args.get(3).map_or(Ok(8), |a| a.parse())?;
    let concurrency: usize = args.get(4).map_or(Ok(8), |a| a.parse())?;
    let (size, chunk) = (size_mib << 20, chunk_mib << 20);
    // One chunk of pseudo-random bytes, reused for every chunk (no copy per write).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let block = Bytes::from(
        (0..chunk)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>(),
    );
    // Benchmarks write the same name again: this operator tool may replace it.
    let dest = Destination::parse(uri)?.with_option("overwrite", "true")?;
    let c = connect(&dest, VerifyMode::Size, &Settings::Process)?;
    c.check().await?;
    let spec = ObjectSpec {
        tenant: "t".into(),
        job_id: format!("bench-{}", std::process::id()),
        path: "put-bench.bin".into(),
        size,
        chunk_size: chunk,
        state_file: None,
    };
    let started = Instant::now();
    let w = c.open(&spec, false).await?;
    let n = size.div_ceil(chunk);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        while tasks.len() >= concurrency {
            tasks.join_next().await.expect("a task")??;
        }
        let w = w.clone();
        let len = chunk.min(size - i * chunk) as usize;
        let data = block.slice(..len);
        tasks.spawn(async move { w.write_at(i * chunk, data).await });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    w.sync().await?;
    let conf = w.commit().await?;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(conf.size, size);
    println!(
        "{uri}: {size_mib} MiB in {secs:.2} s = {:.0} MiB/s ({:.2} Gbit/s), chunks {chunk_mib} MiB, {concurrency} in flight",
        size_mib as f64 / secs,
        size as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}
