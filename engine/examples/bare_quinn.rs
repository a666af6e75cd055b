//! The baseline Trackshift's speed is measured against: bare quinn, shaped like quinn's own
//! `perf` tool (a sender writing a static buffer on a few unidirectional streams, a
//! receiver reading and dropping), with everything Trackshift's transport sets: the
//! aws-lc-rs TLS provider with X25519MLKEM768, the same stream and connection windows, UDP
//! buffers and idle timeout (`trackshift_engine::transport`). No files, hashing, framing,
//! acknowledgements or signatures: what is left is the ceiling. `scripts/compare-quinn.sh`
//! runs it alternately with `trackshift send` (`BENCHMARKS.md`).
//!
//! A second contender, the *floor*, adds only the work Trackshift cannot leave out: the
//! sender reads a file (4 MiB at a time, `pread` into a pooled buffer on a blocking thread)
//! and hashes what it read with BLAKE3; the receiver hashes what it receives (copied into a
//! 256 KiB staging buffer so that BLAKE3 gets its SIMD width). No framing, acknowledgements,
//! manifests or destinations: what a transfer that proves what arrived costs at least.
//!
//! ```text
//! bare_quinn serve DIR [--hash]       # prints `listening ADDR FINGERPRINT`, then one line per connection
//! bare_quinn send ADDR FINGERPRINT BYTES [STREAMS [FILE]]
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
/// What the floor reads and hashes at a time (Trackshift's default chunk).
const FILE_BLOCK: usize = 4 << 20;
/// The receiver's staging buffer for hashing in the floor.
const HASH_STEP: usize = 256 << 10;

fn usage() -> ! {
    eprintln!(
        "usage: bare_quinn serve DIR [--hash] | bare_quinn send ADDR FINGERPRINT BYTES [STREAMS [FILE]]"
    );
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
        Some("serve") if args.len() == 2 => rt.block_on(serve(&args[1], false)),
        Some("serve") if args.len() == 3 && args[2] == "--hash" => {
            rt.block_on(serve(&args[1], true))
        }
        Some("send") if args.len() >= 4 => {
            let addr: SocketAddr = args[1].parse().unwrap_or_else(|_| usage());
            let bytes: u64 = args[3].parse().unwrap_or_else(|_| usage());
            let streams: u64 = args
                .get(4)
                .map_or(8, |s| s.parse().unwrap_or_else(|_| usage()));
            let file = args.get(5).map(std::path::PathBuf::from);
            rt.block_on(send(addr, &args[2], bytes, streams.max(1), file));
        }
        _ => usage(),
    }
}

async fn serve(dir: &str, hash: bool) {
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
                let mut hasher = blake3::Hasher::new();
                let mut staged = Vec::with_capacity(if hash { HASH_STEP } else { 0 });
                while let Ok(Some(k)) = stream.read_chunks(&mut bufs).await {
                    n += bufs[..k].iter().map(|b| b.len() as u64).sum::<u64>();
                    if hash {
                        for piece in &bufs[..k] {
                            stage(&mut hasher, &mut staged, piece);
                        }
                    }
                }
                hasher.update(&staged);
                std::hint::black_box(hasher.finalize());
                n
            });
        }
        while let Some(n) = readers.join_next().await {
            total += n.unwrap_or(0);
        }
        report(total, started);
    }
}

/// Copies `piece` into the staging buffer, hashing it each time it fills.
fn stage(hasher: &mut blake3::Hasher, staged: &mut Vec<u8>, mut piece: &[u8]) {
    while !piece.is_empty() {
        let n = piece.len().min(HASH_STEP - staged.len());
        staged.extend_from_slice(&piece[..n]);
        piece = &piece[n..];
        if staged.len() == HASH_STEP {
            hasher.update(staged);
            staged.clear();
        }
    }
}

/// Reads `len` bytes at `offset` of `file` into a pooled buffer and hashes them, as
/// Trackshift's sender does with a chunk.
fn read_block(file: &std::fs::File, offset: u64, len: usize) -> Bytes {
    use std::os::unix::fs::FileExt as _;
    let mut buf = trackshift_engine::pool::BufferPool::global().take(len);
    file.read_exact_at(buf.as_mut_slice(), offset)
        .expect("read");
    std::hint::black_box(blake3::hash(buf.as_mut_slice()));
    buf.freeze()
}

async fn send(
    addr: SocketAddr,
    fingerprint: &str,
    bytes: u64,
    streams: u64,
    file: Option<std::path::PathBuf>,
) {
    let file = file.map(|p| std::sync::Arc::new(std::fs::File::open(p).expect("open")));
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
        // The floor: stream k sends every `streams`-th block of the file.
        let (conn, block, file) = (conn.clone(), block.clone(), file.clone());
        writers.spawn(async move {
            let mut s = conn.open_uni().await.expect("stream");
            let mut left = if file.is_some() { 0 } else { share };
            if let Some(file) = file {
                let mut offset = k * FILE_BLOCK as u64;
                while offset < bytes {
                    let n = (bytes - offset).min(FILE_BLOCK as u64) as usize;
                    let f = file.clone();
                    let data = tokio::task::spawn_blocking(move || read_block(&f, offset, n))
                        .await
                        .expect("reader");
                    s.write_chunk(data).await.expect("write");
                    offset += streams * FILE_BLOCK as u64;
                }
            }
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
