//! The baseline Trackshift's speed is measured against: bare quinn, shaped like quinn's own
//! `perf` tool (a sender writing a static buffer on a few unidirectional streams, a
//! receiver reading and dropping), with everything Trackshift's transport sets: the
//! aws-lc-rs TLS provider with X25519MLKEM768, the same stream and connection windows, UDP
//! buffers and idle timeout (`trackshift_engine::transport`). No files, hashing, framing,
//! acknowledgements or signatures: what is left is the ceiling. `scripts/compare-quinn.sh`
//! runs it alternately with `trackshift send` (`BENCHMARKS.md`).
//!
//! ```text
//! bare_quinn serve DIR                # prints `listening ADDR FINGERPRINT`, then one line per connection
//! bare_quinn send ADDR FINGERPRINT BYTES [STREAMS]
//! ```
//!
//! Each prints `bytes=N seconds=S cpu_user=U cpu_sys=S max_rss_kib=K` (its own process).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use trackshift_engine::tls::{GatewayIdentity, ServerTrust};
use trackshift_engine::transport;

#[path = "common/proc_self.rs"]
mod proc_self;

/// The buffer every write sends (quinn's `perf` does the same with its own).
const BLOCK: usize = 1 << 20;

fn usage() -> ! {
    eprintln!("usage: bare_quinn serve DIR | bare_quinn send ADDR FINGERPRINT BYTES [STREAMS]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Like quinn's `perf`: one thread per process, so that on a small machine the two
    // processes do not fight over cores or wake each other's threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 2 => rt.block_on(serve(&args[1])),
        Some("send") if args.len() >= 4 => {
            let addr: SocketAddr = args[1].parse().unwrap_or_else(|_| usage());
            let bytes: u64 = args[3].parse().unwrap_or_else(|_| usage());
            let streams: u64 = args
                .get(4)
                .map_or(8, |s| s.parse().unwrap_or_else(|_| usage()));
            rt.block_on(send(addr, &args[2], bytes, streams.max(1)));
        }
        _ => usage(),
    }
}

async fn serve(dir: &str) {
    let identity = GatewayIdentity::load_or_generate(std::path::Path::new(dir)).expect("identity");
    let endpoint =
        transport::server_endpoint("127.0.0.1:0".parse().expect("addr"), &identity, false)
            .expect("endpoint");
    println!(
        "listening {} {}",
        endpoint.local_addr().expect("bound"),
        identity.fingerprint()
    );
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else { continue };
        // What Trackshift's gateway grants once a sender is authenticated, and its
        // window sized to the path.
        transport::open_after_auth(&conn);
        tokio::spawn(transport::tune_receive_window(conn.clone()));
        let started = Instant::now();
        let mut total = 0u64;
        let mut readers = tokio::task::JoinSet::new();
        while let Ok(mut stream) = conn.accept_uni().await {
            readers.spawn(async move {
                // `perf` reads up to 32 pieces at a time and drops them.
                let mut bufs: [Bytes; 32] = std::array::from_fn(|_| Bytes::new());
                let mut n = 0u64;
                while let Ok(Some(k)) = stream.read_chunks(&mut bufs).await {
                    n += bufs[..k].iter().map(|b| b.len() as u64).sum::<u64>();
                }
                n
            });
        }
        while let Some(n) = readers.join_next().await {
            total += n.unwrap_or(0);
        }
        report(total, started);
    }
}

async fn send(addr: SocketAddr, fingerprint: &str, bytes: u64, streams: u64) {
    let trust = ServerTrust::fingerprint(fingerprint).expect("fingerprint");
    let endpoint = transport::client_endpoint("0.0.0.0:0".parse().expect("addr"), &trust, false)
        .expect("endpoint");
    let started = Instant::now();
    let conn = transport::connect(&endpoint, addr, "localhost")
        .await
        .expect("connect");
    let block = Bytes::from(vec![0x5au8; BLOCK]);
    let mut writers = tokio::task::JoinSet::new();
    for k in 0..streams {
        let share = bytes / streams + u64::from(k < bytes % streams);
        let (conn, block) = (conn.clone(), block.clone());
        writers.spawn(async move {
            let mut s = conn.open_uni().await.expect("stream");
            let mut left = share;
            while left > 0 {
                let n = left.min(BLOCK as u64) as usize;
                s.write_chunk(block.slice(..n)).await.expect("write");
                left -= n as u64;
            }
            s.finish().expect("finish");
            let _ = s.stopped().await;
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    report(bytes, started);
}

/// One line with the bytes moved, the wall time and this process's CPU and peak memory
/// (from `/proc/self`).
fn report(bytes: u64, started: Instant) {
    let (user, sys) = proc_self::cpu_seconds();
    println!(
        "bytes={bytes} seconds={:.3} cpu_user={user:.2} cpu_sys={sys:.2} max_rss_kib={}",
        started.elapsed().as_secs_f64(),
        proc_self::max_rss_kib()
    );
}
