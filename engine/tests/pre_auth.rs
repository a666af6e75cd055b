//! What a peer that has not authenticated can make the gateway do, over real QUIC on
//! 127.0.0.1: connections per address are capped, a Hello must come within a deadline and
//! fit a small frame limit, and no chunk stream can be opened before it. And what an
//! authenticated tenant speaking the protocol by hand cannot make a chunk stream do.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trackshift_crypto::Hash32;
use trackshift_crypto::hash::ChunkLayout;
use trackshift_engine::gateway::{Gateway, GatewayConfig, add_tenant};
use trackshift_engine::protocol::{self, ClientFrame, FrameDecoder, Secret, ServerFrame};
use trackshift_engine::tls::ServerTrust;
use trackshift_engine::transport;

const TOKEN: &str = "pre-auth-token-0123456789abcdef";

struct Running {
    gateway: Arc<Gateway>,
    task: tokio::task::JoinHandle<()>,
    client: quinn::Endpoint,
}

impl Running {
    async fn start(data: &Path, configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        add_tenant(data, "acme", TOKEN, &["null://"]).unwrap();
        let mut cfg = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), data);
        configure(&mut cfg);
        let gateway = Arc::new(Gateway::bind(cfg).await.unwrap());
        let g = gateway.clone();
        let task = tokio::spawn(async move { g.serve().await });
        let trust = ServerTrust::fingerprint(&gateway.fingerprint()).unwrap();
        let client =
            transport::client_endpoint("127.0.0.1:0".parse().unwrap(), &trust, false).unwrap();
        Self {
            gateway,
            task,
            client,
        }
    }

    async fn connect(&self) -> quinn::Connection {
        transport::connect(&self.client, self.gateway.local_addr(), "localhost")
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.gateway.close();
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Sends a Hello and reads the gateway's answer on the control stream.
async fn hello(
    conn: &quinn::Connection,
    token: &str,
) -> (quinn::SendStream, quinn::RecvStream, ServerFrame) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let frame = ClientFrame::Hello {
        version: protocol::VERSION,
        token: Secret(token.into()),
    };
    send.write_all(&protocol::encode_frame(&frame))
        .await
        .unwrap();
    let mut dec = FrameDecoder::<ServerFrame>::new(protocol::MAX_CONTROL_FRAME);
    let answer = loop {
        if let Some(f) = dec.next_frame().unwrap() {
            break f;
        }
        let chunk = recv.read_chunk(1 << 16, true).await.unwrap().unwrap();
        dec.push(&chunk.bytes);
    };
    (send, recv, answer)
}

/// How the gateway closed `conn` (code and reason), waiting at most `within`.
async fn closed_with(conn: &quinn::Connection, within: Duration) -> (u64, String) {
    let err = tokio::time::timeout(within, conn.closed())
        .await
        .expect("the gateway closed the connection in time");
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => (
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("closed otherwise: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_limit_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(tmp.path(), |cfg| cfg.max_connections_per_ip = 2).await;
    let a = gw.connect().await;
    let b = gw.connect().await;
    // Both held open (one authenticated, one silent), a third from 127.0.0.1 is refused.
    let (_s, _r, welcome) = hello(&a, TOKEN).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    let c = gw.connect().await;
    let (code, reason) = closed_with(&c, Duration::from_secs(5)).await;
    assert_eq!(code, 4);
    assert!(
        reason.contains("too many connections from 127.0.0.1 (at most 2"),
        "{reason}"
    );
    // A place comes back when a connection ends.
    b.close(0u32.into(), b"bye");
    drop(b);
    let mut admitted = None;
    for _ in 0..50 {
        let d = gw.connect().await;
        let (mut send, _recv) = d.open_bi().await.unwrap();
        let frame = ClientFrame::Hello {
            version: protocol::VERSION,
            token: Secret(TOKEN.into()),
        };
        if send
            .write_all(&protocol::encode_frame(&frame))
            .await
            .is_ok()
            && tokio::time::timeout(Duration::from_millis(300), d.closed())
                .await
                .is_err()
        {
            admitted = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted.is_some(), "no place came back after a close");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_from_everywhere_together_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(tmp.path(), |cfg| {
        cfg.max_unauthenticated = 4;
        cfg.max_connections_per_ip = 100;
    })
    .await;
    // Four silent connections take every place (the last two after a QUIC Retry, which
    // the client answers on its own).
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(gw.connect().await);
    }
    let refused = transport::connect(&gw.client, gw.gateway.local_addr(), "localhost").await;
    let err = refused.expect_err("a fifth unauthenticated connection was admitted");
    assert!(err.to_string().contains("refused"), "{err}");
    // Authenticating gives the place back: the next peer gets in.
    let (_s, _r, welcome) = hello(&silent[0], TOKEN).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    let next = gw.connect().await;
    let (_s2, _r2, welcome) = hello(&next, TOKEN).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_at_the_auth_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(tmp.path(), |cfg| {
        cfg.auth_timeout = Duration::from_millis(500)
    })
    .await;
    // No control stream at all.
    let silent = gw.connect().await;
    let started = std::time::Instant::now();
    let (code, reason) = closed_with(&silent, Duration::from_secs(5)).await;
    assert_eq!(code, 3);
    assert!(reason.contains("no Hello within"), "{reason}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A control stream with a Hello that never completes (slowloris).
    let slow = gw.connect().await;
    let (mut send, _recv) = slow.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 40, 0, 1]).await.unwrap();
    let (code, _) = closed_with(&slow, Duration::from_secs(5)).await;
    assert_eq!(code, 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_frame_larger_than_a_hello_is_refused_at_its_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(tmp.path(), |_| {}).await;
    let conn = gw.connect().await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // Declares 64 MiB: refused from the 4-byte prefix, nothing read or reserved for it.
    let declared = protocol::MAX_CONTROL_FRAME as u32;
    send.write_all(&declared.to_be_bytes()).await.unwrap();
    let (code, reason) = closed_with(&conn, Duration::from_secs(5)).await;
    assert_eq!(code, 2);
    assert!(
        reason.contains(&format!(
            "exceeds the {}-byte limit",
            protocol::MAX_HELLO_FRAME
        )),
        "{reason}"
    );
    // A Hello with junk after it inside the frame is refused as well.
    let conn = gw.connect().await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut body = postcard_hello(TOKEN);
    body.extend_from_slice(b"junk");
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    send.write_all(&wire).await.unwrap();
    let (code, reason) = closed_with(&conn, Duration::from_secs(5)).await;
    assert_eq!(code, 2);
    assert!(reason.contains("trailing bytes"), "{reason}");
    gw.stop().await;
}

/// The body of a valid Hello frame (without its length prefix).
fn postcard_hello(token: &str) -> Vec<u8> {
    protocol::encode_frame(&ClientFrame::Hello {
        version: protocol::VERSION,
        token: Secret(token.into()),
    })[4..]
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_streams_cannot_be_opened_before_authentication() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(tmp.path(), |_| {}).await;
    let conn = gw.connect().await;
    // No stream credit before the Hello: opening a chunk stream waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), conn.open_uni())
            .await
            .is_err(),
        "a chunk stream opened before authentication"
    );
    // Nor a second control stream.
    let (_s, _r) = conn.open_bi().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), conn.open_bi())
            .await
            .is_err(),
        "a second bidirectional stream opened before authentication"
    );
    // A wrong token is refused and closed.
    let bad = gw.connect().await;
    let (_s2, _r2, answer) = hello(&bad, "not-a-token").await;
    assert!(matches!(answer, ServerFrame::Refused { .. }), "{answer:?}");
    assert_eq!(closed_with(&bad, Duration::from_secs(15)).await.0, 1);
    // After a valid Hello the gateway opens the window and the stream limit.
    let good = gw.connect().await;
    let (_s3, _r3, welcome) = hello(&good, TOKEN).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), good.open_uni())
        .await
        .expect("stream credit after Hello")
        .unwrap();
    gw.stop().await;
}

/// Reads the next frame from the control stream.
async fn next_frame(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<ServerFrame>,
) -> ServerFrame {
    loop {
        if let Some(f) = dec.next_frame().unwrap() {
            return f;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), recv.read_chunk(1 << 16, true))
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        dec.push(&chunk.bytes);
    }
}

/// Opens a job of one file of `size` bytes in chunks of `chunk` to `null://`; its handle.
async fn open_job(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<ServerFrame>,
    chunk: u64,
    size: u64,
) -> u32 {
    let open = protocol::OpenJob {
        traceparent: None,
        job_id: uuid::Uuid::new_v4().to_string(),
        destinations: vec!["null://".into()],
        chunk_size: chunk,
        source: "file:///attack".into(),
        files: vec![protocol::FileSpec {
            path: "a.bin".into(),
            size,
        }],
        correlation_id: None,
        classification: None,
        strict: None,
    };
    send.write_all(&protocol::encode_frame(&ClientFrame::OpenJob(open)))
        .await
        .unwrap();
    match next_frame(recv, dec).await {
        ServerFrame::JobReady { handle, .. } => handle,
        other => panic!("{other:?}"),
    }
}

/// Sends chunk `index` of file 0 on its own stream: the header, then `payload`.
async fn send_chunk(
    conn: &quinn::Connection,
    handle: u32,
    index: u64,
    len: u64,
    hash: Hash32,
    payload: &[u8],
) {
    let header = protocol::ChunkHeader {
        handle,
        chunk: protocol::ChunkRef { file: 0, index },
        len,
        hash,
    };
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&protocol::encode_chunk_header(&header))
        .await
        .unwrap();
    s.write_all(payload).await.unwrap();
    s.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_shorter_than_its_header_says_cannot_pass_for_stale_bytes_of_a_reused_buffer() {
    // The gateway receives chunks into pooled buffers that keep an earlier chunk's bytes
    // until overwritten. A tenant sends chunk 0 (its buffer goes back to the pool), then a
    // header for chunk 1 of the same length whose hash is that of chunk 0's bytes at
    // chunk 1's place, with no payload or half of it: if the gateway hashed or wrote the
    // whole buffer, the stale bytes would match and be recorded as chunk 1.
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(tmp.path(), |_| {}).await;
    let conn = gw.connect().await;
    let (mut send, mut recv, welcome) = hello(&conn, TOKEN).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    let chunk = 64u64 << 10;
    let mut dec = FrameDecoder::<ServerFrame>::new(protocol::MAX_CONTROL_FRAME);
    let handle = open_job(&mut send, &mut recv, &mut dec, chunk, 2 * chunk).await;
    let layout = ChunkLayout::new(2 * chunk, chunk).unwrap();
    let data = vec![0xabu8; chunk as usize];
    send_chunk(&conn, handle, 0, chunk, layout.chunk_hash(0, &data), &data).await;
    assert_eq!(
        next_frame(&mut recv, &mut dec).await,
        ServerFrame::Acks {
            handle,
            chunks: vec![protocol::ChunkRef { file: 0, index: 0 }]
        }
    );
    let stale = layout.chunk_hash(1, &data);
    for payload in [&data[..0], &data[..data.len() / 2]] {
        send_chunk(&conn, handle, 1, chunk, stale, payload).await;
        match next_frame(&mut recv, &mut dec).await {
            ServerFrame::Reject {
                chunk: c, reason, ..
            } => {
                assert_eq!(c, protocol::ChunkRef { file: 0, index: 1 });
                assert!(reason.contains("payload is not"), "{reason}");
            }
            other => panic!("{} bytes of payload: {other:?}", payload.len()),
        }
    }
    // The honest chunk 1 is still taken.
    send_chunk(&conn, handle, 1, chunk, stale, &data).await;
    assert_eq!(
        next_frame(&mut recv, &mut dec).await,
        ServerFrame::Acks {
            handle,
            chunks: vec![protocol::ChunkRef { file: 0, index: 1 }]
        }
    );
    gw.stop().await;
}

/// Sends `chunks` (index, hash, payload) of file 0 back to back on one stream, then
/// `trailer`, then FIN.
async fn send_packed(
    conn: &quinn::Connection,
    handle: u32,
    chunks: &[(u64, Hash32, &[u8])],
    trailer: &[u8],
) {
    let mut s = conn.open_uni().await.unwrap();
    for &(index, hash, payload) in chunks {
        let header = protocol::ChunkHeader {
            handle,
            chunk: protocol::ChunkRef { file: 0, index },
            len: payload.len() as u64,
            hash,
        };
        s.write_all(&protocol::encode_chunk_header(&header))
            .await
            .unwrap();
        s.write_all(payload).await.unwrap();
    }
    s.write_all(trailer).await.unwrap();
    s.finish().unwrap();
}

/// Reads frames until every chunk of `acked` was acknowledged and every one of `rejected`
/// rejected; fails on any other acknowledgement or rejection.
async fn expect_outcomes(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<ServerFrame>,
    acked: &[u64],
    rejected: &[u64],
) {
    let (mut a, mut r) = (Vec::new(), Vec::new());
    while a.len() < acked.len() || r.len() < rejected.len() {
        match next_frame(recv, dec).await {
            ServerFrame::Acks { chunks, .. } => a.extend(chunks.iter().map(|c| c.index)),
            ServerFrame::Reject { chunk, reason, .. } => {
                assert!(reason.contains("hash"), "{reason}");
                r.push(chunk.index);
            }
            other => panic!("{other:?}"),
        }
    }
    a.sort_unstable();
    r.sort_unstable();
    assert_eq!((a.as_slice(), r.as_slice()), (acked, rejected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_several_chunks_is_read_chunk_by_chunk_and_one_bad_chunk_takes_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Running::start(tmp.path(), |_| {}).await;
    let conn = gw.connect().await;
    let (mut send, mut recv, welcome) = hello(&conn, TOKEN).await;
    // The gateway says it reads packed streams.
    assert!(
        matches!(welcome, ServerFrame::Welcome { version, .. } if version >= protocol::PACKED_VERSION),
        "{welcome:?}"
    );
    let chunk = 4096u64;
    let mut dec = FrameDecoder::<ServerFrame>::new(protocol::MAX_CONTROL_FRAME);
    let handle = open_job(&mut send, &mut recv, &mut dec, chunk, 6 * chunk).await;
    let layout = ChunkLayout::new(6 * chunk, chunk).unwrap();
    let data: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; chunk as usize]).collect();
    let hash = |i: u64| layout.chunk_hash(i, &data[i as usize]);
    let wrong = layout.chunk_hash(1, &data[0]);

    // A chunk whose hash does not match in the middle: rejected, the ones around it kept.
    send_packed(
        &conn,
        handle,
        &[
            (0, hash(0), &data[0]),
            (1, wrong, &data[1]),
            (2, hash(2), &data[2]),
        ],
        &[],
    )
    .await;
    expect_outcomes(&mut recv, &mut dec, &[0, 2], &[1]).await;

    // A chunk already held, then new ones: acknowledged again, read past, the next taken.
    send_packed(
        &conn,
        handle,
        &[
            (0, hash(0), &data[0]),
            (1, hash(1), &data[1]),
            (3, hash(3), &data[3]),
        ],
        &[],
    )
    .await;
    expect_outcomes(&mut recv, &mut dec, &[0, 1, 3], &[]).await;

    // Bytes after a chunk that are no header: that chunk counts, the stream is stopped,
    // the connection goes on.
    send_packed(&conn, handle, &[(4, hash(4), &data[4])], &[0xff; 9]).await;
    expect_outcomes(&mut recv, &mut dec, &[4], &[]).await;
    send_chunk(&conn, handle, 5, chunk, hash(5), &data[5]).await;
    expect_outcomes(&mut recv, &mut dec, &[5], &[]).await;
    gw.stop().await;
}
