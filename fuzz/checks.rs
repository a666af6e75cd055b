//! The properties every fuzz target checks, one function per target, each taking the raw
//! input. Shared by the libFuzzer targets (`fuzz_targets/*.rs`, `#[path]`-included) and by
//! the workspace test that replays the committed corpus on stable Rust
//! (`engine/tests/fuzz_corpus.rs`): a function panics exactly when a property fails.
//!
//! The includer provides `crate::engine` with the `protocol` and `jobs` modules (the fuzz
//! crate's copies compiled from the engine's sources, or `trackshift_engine`'s), and the
//! crates `trackshift_crypto`, `trackshift_ledger`, `serde` and `serde_json`.
#![allow(dead_code)]

use std::collections::HashSet;

use crate::engine::jobs::JobSpec;
use crate::engine::protocol::{
    self, ChunkHeader, ChunkRef, ClientFrame, Disposition, FileSpec, FrameDecoder, OpenJob,
    ReceiverJob, SenderJob, ServerFrame,
};

/// A property check: panics exactly when a property fails for the input.
pub type Check = fn(&[u8]);

/// Every target: its name (the corpus directory) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("client_frames", client_frames),
    ("server_frames", server_frames),
    ("frame_decoder_splits", frame_decoder_splits),
    ("chunk_header", chunk_header),
    ("chunk_log", chunk_log),
    ("job_json", job_json),
    ("sender_frames", sender_frames),
    ("tile_path", tile_path),
    ("job_spec", job_spec),
    ("destination", destination),
    ("key_set", key_set),
    ("tsa_response", tsa_response),
];

/// A key-set ledger entry (what `ledger verify` and `keys fetch` read from a gateway's log):
/// one that decodes always carries on from itself, and re-encodes to the same bytes.
pub fn key_set(data: &[u8]) {
    if let Ok(Some(set)) = trackshift_crypto::keyset::decode_key_set(data) {
        assert!(trackshift_crypto::keyset::check_history(&set.keys, &set.keys).is_ok());
        let again = trackshift_crypto::keyset::encode_key_set(&set.json, set.recorded_at);
        assert_eq!(again, data, "a key-set entry re-encodes to its bytes");
    }
}

/// An RFC 3161 response or token (what the gateway reads from a time-stamp authority, and
/// `verify --timestamp` from a stamp file), checked against a fixed test CA and the digest
/// the committed response is for, so that mutations reach the signature and chain checks.
/// Never panics; a token that verifies is for that digest.
pub fn tsa_response(data: &[u8]) {
    use trackshift_ledger::tsa::{TsaTrust, token_of_response, verify_token};
    const CA: &[u8] = include_bytes!("corpus_support/tsa-ca.pem");
    const DIGEST: &[u8; 32] = include_bytes!("corpus_support/tsa-digest.bin");
    static TRUST: std::sync::OnceLock<TsaTrust> = std::sync::OnceLock::new();
    let trust = TRUST.get_or_init(|| TsaTrust::from_pem(CA).expect("the fixed CA parses"));
    if let Ok(token) = token_of_response(data) {
        let _ = verify_token(&token, DIGEST, trust);
    }
    let _ = verify_token(data, DIGEST, trust);
}

/// Decodes `data` as a stream of frames with limit `max`, as one read. Every frame must
/// re-encode to exactly the bytes it came from; decoding stops at the first error.
/// Returns the frames and whether the stream ended in an error.
fn decode_stream<T>(data: &[u8], max: usize) -> (Vec<T>, bool)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut dec = FrameDecoder::<T>::new(max);
    dec.push(data);
    let mut frames = Vec::new();
    let mut pos = 0;
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => {
                let bytes = protocol::encode_frame(&f);
                assert_eq!(
                    &data[pos..pos + bytes.len()],
                    &bytes[..],
                    "a decoded frame re-encodes to the bytes it came from"
                );
                assert!(bytes.len() <= 4 + max, "frame above the limit accepted");
                pos += bytes.len();
                frames.push(f);
            }
            Ok(None) => {
                assert_eq!(dec.buffered(), data.len() - pos);
                assert!(dec.buffered() < 4 + max.min(u32::MAX as usize));
                return (frames, false);
            }
            Err(_) => return (frames, true),
        }
    }
}

/// The gateway's view of a client's control stream: before authentication (a Hello-sized
/// limit) and after. A Hello or OpenJob that decodes goes through the checks the gateway
/// runs on it.
pub fn client_frames(data: &[u8]) {
    let (pre, _) = decode_stream::<ClientFrame>(data, protocol::MAX_HELLO_FRAME);
    let (post, _) = decode_stream::<ClientFrame>(data, protocol::MAX_CONTROL_FRAME);
    assert!(
        post.len() >= pre.len() && post[..pre.len()] == pre[..],
        "the lower limit only cuts the stream short"
    );
    for f in post {
        match f {
            ClientFrame::Hello { version, .. } => {
                assert_eq!(
                    protocol::check_hello(version).is_ok(),
                    version == protocol::VERSION
                );
            }
            ClientFrame::OpenJob(open) | ClientFrame::OpenTracedJob { open, .. } => open_job(open),
            ClientFrame::FinishJob { .. } | ClientFrame::CancelJob { .. } => {}
        }
    }
}

/// The sender's view of the gateway's control stream.
pub fn server_frames(data: &[u8]) {
    decode_stream::<ServerFrame>(data, protocol::MAX_CONTROL_FRAME);
}

/// A frame decoder fed the input in pieces (sizes taken from the first 8 bytes), the way
/// the gateway reads: never more than [`FrameDecoder::wanted`] at once. The frames and the
/// outcome equal decoding the whole input at once, and the decoder never holds more than
/// one frame's bytes.
pub fn frame_decoder_splits(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let (seed, stream) = data.split_at(8);
    let max = 64 + usize::from(seed[0]) * 16;
    let (whole, whole_err) = decode_stream::<ClientFrame>(stream, max);
    let mut dec = FrameDecoder::<ClientFrame>::new(max);
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut piece = 0usize;
    let mut err = false;
    'feed: while pos < stream.len() {
        let size = 1 + usize::from(seed[1 + piece % 7]) % 97;
        piece += 1;
        let take = size.min(dec.wanted()).min(stream.len() - pos);
        dec.push(&stream[pos..pos + take]);
        pos += take;
        assert!(
            dec.buffered() <= 4 + max,
            "decoder holds more than one frame"
        );
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => {
                    err = true;
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(frames, whole, "splitting changes no frame");
    assert_eq!(err, whole_err, "splitting changes no outcome");
    if !err {
        assert_eq!(dec.finish().is_ok(), dec.buffered() == 0);
    }
}

/// A fixed job to check headers and logs against: an empty file, a one-chunk file and a
/// file of several chunks with a short last one.
fn fixed_job() -> OpenJob {
    OpenJob {
        traceparent: None,
        job_id: "fuzz-job".into(),
        destinations: vec!["null://".into()],
        chunk_size: 1024,
        source: "file:///src".into(),
        files: [("a", 0u64), ("b", 700), ("c", 5000)]
            .into_iter()
            .map(|(path, size)| FileSpec {
                path: path.into(),
                size,
            })
            .collect(),
        correlation_id: None,
        classification: None,
        strict: None,
    }
}

/// A chunk-stream header as the gateway decodes it: it re-encodes to the same bytes, and
/// the job's check accepts it only for a real chunk of the right length.
pub fn chunk_header(data: &[u8]) {
    let Ok(h) = protocol::decode_chunk_header(data) else {
        return;
    };
    assert_eq!(&protocol::encode_chunk_header(&h)[4..], data);
    let rx = ReceiverJob::new(fixed_job()).expect("the fixed job is valid");
    if let Ok(Disposition::Accept(layout)) = rx.check_header(&h) {
        assert!(h.chunk.index < layout.chunk_count());
        assert_eq!(h.len, layout.chunk_len(h.chunk.index));
    }
}

/// A job's chunk log as read on resume: only a torn tail is cut, the records re-encode to
/// the valid prefix, and replaying them into the job (as the gateway does) cannot panic.
pub fn chunk_log(data: &[u8]) {
    let Ok(log) = protocol::decode_chunk_log(data) else {
        return;
    };
    assert!(log.valid_len <= data.len());
    assert_eq!(log.valid_len % protocol::LOG_RECORD_LEN, 0);
    assert!(data.len() - log.valid_len <= protocol::LOG_RECORD_LEN);
    let mut again = Vec::with_capacity(log.valid_len);
    for (c, h) in &log.records {
        again.extend_from_slice(&protocol::encode_log_record(*c, h));
    }
    assert_eq!(again, data[..log.valid_len], "records re-encode to the log");
    let mut rx = ReceiverJob::new(fixed_job()).expect("the fixed job is valid");
    let mut held = HashSet::new();
    for (c, h) in log.records {
        if rx.record(c, h).is_ok() {
            held.insert(c);
        }
    }
    assert_eq!(rx.progress().0, held.len() as u64);
}

/// Most chunks a fuzzed job may have before its state machines are built (the real limit,
/// [`protocol::MAX_CHUNKS_PER_JOB`], allocates hundreds of MiB: a bound, not a bug).
const FUZZ_CHUNK_LIMIT: u64 = 1 << 16;

/// A job's description, from a frame or a stored `job.json`: what `ReceiverJob::new`
/// accepts is within the limits, and both state machines agree on it.
fn open_job(open: OpenJob) {
    let chunks = open.files.iter().try_fold(0u64, |n, f| {
        let layout = trackshift_crypto::ChunkLayout::new(f.size, open.chunk_size).ok()?;
        Some(n.saturating_add(layout.chunk_count()))
    });
    if chunks.is_none_or(|c| c > FUZZ_CHUNK_LIMIT) {
        return;
    }
    let Ok(rx) = ReceiverJob::new(open.clone()) else {
        return;
    };
    assert!(!open.destinations.is_empty() && open.destinations.len() <= 16);
    let (held, total) = rx.progress();
    assert_eq!(held, 0);
    assert!(total <= protocol::MAX_CHUNKS_PER_JOB);
    assert_eq!(rx.held_chunks().len(), open.files.len());
    let tx = SenderJob::new(&open).expect("what the receiver accepts, the sender accepts");
    assert_eq!(tx.progress(), (0, 0, total));
}

/// `job.json` read back on resume (`OpenJob` from JSON, then `ReceiverJob::new`, as the
/// gateway's `open_job` does); what parses survives a JSON round trip unchanged.
pub fn job_json(data: &[u8]) {
    let Ok(open) = serde_json::from_slice::<OpenJob>(data) else {
        return;
    };
    let again: OpenJob =
        serde_json::from_slice(&serde_json::to_vec_pretty(&open).unwrap()).unwrap();
    assert_eq!(again, open, "job.json round trip");
    open_job(open);
}

/// The sender's state machine driven by arbitrary gateway frames (JobReady, Acks,
/// Reject): errors, never panics, and its counts always match what it was told.
pub fn sender_frames(data: &[u8]) {
    let open = fixed_job();
    let mut tx = SenderJob::new(&open).expect("the fixed job is valid");
    let layouts: Vec<_> = (0..open.files.len() as u32)
        .map(|f| *tx.layout(f))
        .collect();
    let total_bytes: u64 = open.files.iter().map(|f| f.size).sum();
    let mut acked: HashSet<ChunkRef> = HashSet::new();
    let (frames, _) = decode_stream::<ServerFrame>(data, protocol::MAX_CONTROL_FRAME);
    for frame in frames {
        match frame {
            ServerFrame::JobReady { held, .. } => {
                let accepted = tx.on_ready(&held).is_ok();
                if accepted {
                    for (f, list) in held.iter().enumerate() {
                        for (i, _) in list {
                            acked.insert(ChunkRef {
                                file: f as u32,
                                index: *i,
                            });
                        }
                    }
                }
            }
            ServerFrame::Acks { chunks, .. } => {
                for c in chunks {
                    if tx.on_ack(c).is_ok() {
                        acked.insert(c);
                    }
                }
            }
            ServerFrame::Reject { chunk, .. } => {
                let refused = tx.on_reject(chunk).is_err();
                assert!(
                    refused || !acked.contains(&chunk),
                    "reject of an acked chunk"
                );
            }
            _ => {}
        }
        if let Some(c) = tx.next_chunk() {
            assert!(!acked.contains(&c), "an acknowledged chunk is sent again");
            assert!(c.index < layouts[c.file as usize].chunk_count());
        }
        let (n, bytes, total) = tx.progress();
        assert_eq!(n, acked.len() as u64, "acknowledged chunk count");
        let expect: u64 = acked
            .iter()
            .map(|c| layouts[c.file as usize].chunk_len(c.index))
            .sum();
        assert_eq!(bytes, expect, "acknowledged bytes");
        assert!(bytes <= total_bytes && n <= total);
        assert_eq!(tx.is_complete(), n == total);
    }
}

/// A ledger hash-tile path as the HTTP handler passes it (`tile/` and what the client
/// asked for), against a tree of the size in the first 8 bytes: an accepted tile lies
/// inside the tree and its canonical path is the one asked for.
pub fn tile_path(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (size, path) = data.split_at(8);
    let size = u64::from_be_bytes(size.try_into().unwrap());
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(tile) = trackshift_ledger::store::parse_hash_tile(path, size) else {
        return;
    };
    let height = u32::from(trackshift_ledger::store::TILE_HEIGHT);
    let level_size = size
        .checked_shr(u32::from(tile.level()) * height)
        .unwrap_or(0);
    let end = tile
        .level_index()
        .checked_mul(1 << height)
        .and_then(|s| s.checked_add(u64::from(tile.width())));
    assert!(end.is_some_and(|e| e <= level_size), "tile beyond the tree");
    let canonical = tile.path().replacen(&format!("tile/{height}/"), "tile/", 1);
    assert_eq!(canonical, path, "one path per tile");
}

/// The job API's request body (`POST /v1/jobs`): what validates is within the limits, and
/// survives a JSON round trip unchanged.
pub fn job_spec(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<JobSpec>(data) else {
        return;
    };
    let again: JobSpec = serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
    assert_eq!(again, spec, "job spec round trip");
    if spec.validate().is_err() {
        return;
    }
    assert!(spec.source.is_absolute());
    let n = spec.destinations.len();
    assert!((1..=protocol::MAX_DESTINATIONS).contains(&n));
    let unique: HashSet<&String> = spec.destinations.iter().collect();
    assert_eq!(unique.len(), n);
    let c = spec.effective_chunk_size();
    assert!(c.is_power_of_two() && (1024..=1 << 30).contains(&c));
}

/// Seed inputs for every target, made from real encodings (`fuzz/corpus/<target>/seed-*`;
/// `engine/tests/fuzz_corpus.rs` writes them and checks they are committed as made).
/// A destination string, alone and after the prefix `file:///X/allowed/`: what parses
/// round-trips through its canonical form, every segment is a plain name, and it lies
/// within the rule `file:///X/allowed` exactly when its decoded segments begin with `X`,
/// `allowed`; applying that rule trusts no more than the rule's segments.
pub fn destination(data: &[u8]) {
    use crate::engine::connectors::destination::Destination;
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let rule = Destination::parse("file:///X/allowed").expect("the rule parses");
    for text in [s.to_string(), format!("file:///X/allowed/{s}")] {
        let Ok(d) = Destination::parse(&text) else {
            continue;
        };
        let again = Destination::parse(&d.to_string()).expect("the canonical form parses");
        assert_eq!(again, d, "{text:?} -> {d}");
        for seg in d.segments() {
            assert!(seg != "." && seg != ".." && !seg.is_empty(), "{text:?}");
            assert!(!seg.contains(['/', '\\', '\0']), "{text:?}");
        }
        let under = d.segments().len() >= 2 && d.segments()[..2] == ["X", "allowed"];
        let within = d.is_within(&rule);
        assert_eq!(
            within,
            under && d.scheme() == rule.scheme() && d.authority() == rule.authority(),
            "{text:?}"
        );
        if within {
            let eff = d.under_rule(&rule);
            assert_eq!(eff.trusted_segments(), 2, "{text:?}");
            assert_eq!(eff.segments(), d.segments());
        }
    }
}

pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::engine::protocol::Secret;
    use trackshift_crypto::Hash32;
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, format!("seed-{name}"), bytes));
    };
    let open = fixed_job();
    let hello = ClientFrame::Hello {
        version: protocol::VERSION,
        token: Secret("0123456789abcdef0123456789abcdef".into()),
    };
    let frames = [
        ("hello", hello.clone()),
        ("open-job", ClientFrame::OpenJob(open.clone())),
        (
            "finish-job",
            ClientFrame::FinishJob {
                handle: 0,
                file_hashes: vec![Hash32::blake3(b"a"), Hash32::blake3(b"b")],
            },
        ),
        (
            "cancel-job",
            ClientFrame::CancelJob {
                handle: 1,
                reason: "cancelled by the sender".into(),
            },
        ),
    ];
    let mut session = Vec::new();
    for (name, f) in &frames {
        let bytes = protocol::encode_frame(f).to_vec();
        session.extend_from_slice(&bytes);
        add("client_frames", name, bytes);
    }
    add("client_frames", "session", session.clone());
    let mut split = vec![3, 1, 5, 7, 2, 9, 4, 11];
    split.extend_from_slice(&session);
    add("frame_decoder_splits", "session", split);

    let held = vec![
        vec![],
        vec![(0, Hash32::blake3(b"b"))],
        vec![(1, Hash32::default())],
    ];
    let server = [
        (
            "welcome",
            ServerFrame::Welcome {
                version: protocol::VERSION,
                tenant: "acme".into(),
            },
        ),
        (
            "job-ready",
            ServerFrame::JobReady {
                job_id: open.job_id.clone(),
                handle: 0,
                held,
            },
        ),
        (
            "acks",
            ServerFrame::Acks {
                handle: 0,
                chunks: vec![
                    ChunkRef { file: 0, index: 0 },
                    ChunkRef { file: 2, index: 4 },
                ],
            },
        ),
        (
            "acks-huge-index",
            ServerFrame::Acks {
                handle: 0,
                chunks: vec![ChunkRef {
                    file: 2,
                    index: 1 << 62,
                }],
            },
        ),
        (
            "reject",
            ServerFrame::Reject {
                handle: 0,
                chunk: ChunkRef { file: 2, index: 2 },
                reason: "chunk hash mismatch".into(),
            },
        ),
        (
            "job-done",
            ServerFrame::JobDone {
                handle: 0,
                manifest: "{}".into(),
                receipts: vec!["{}".into()],
            },
        ),
        (
            "job-failed",
            ServerFrame::JobFailed {
                handle: u32::MAX,
                job_id: open.job_id.clone(),
                reason: "destination unreachable".into(),
                permanent: false,
            },
        ),
        (
            "refused",
            ServerFrame::Refused {
                reason: "unknown tenant token".into(),
            },
        ),
    ];
    let mut conversation = Vec::new();
    for (name, f) in &server {
        let bytes = protocol::encode_frame(f).to_vec();
        conversation.extend_from_slice(&bytes);
        add("server_frames", name, bytes.clone());
        if matches!(f, ServerFrame::JobReady { .. } | ServerFrame::Acks { .. }) {
            add("sender_frames", name, bytes);
        }
    }
    add("server_frames", "conversation", conversation.clone());
    add("sender_frames", "conversation", conversation);

    let header = |file, index, len| {
        protocol::encode_chunk_header(&ChunkHeader {
            handle: 0,
            chunk: ChunkRef { file, index },
            len,
            hash: Hash32::blake3(b"chunk"),
        })[4..]
            .to_vec()
    };
    add("chunk_header", "first", header(2, 0, 1024));
    add("chunk_header", "short-last", header(2, 4, 5000 - 4096));
    add("chunk_header", "empty-file", header(0, 0, 0));
    add("chunk_header", "huge-index", header(2, u64::MAX, 1024));

    let mut log = Vec::new();
    for (file, index) in [(1u32, 0u64), (2, 0), (2, 3), (2, 4)] {
        log.extend_from_slice(&protocol::encode_log_record(
            ChunkRef { file, index },
            &Hash32::blake3(&index.to_be_bytes()),
        ));
    }
    add("chunk_log", "four-records", log.clone());
    add("chunk_log", "torn-tail", log[..log.len() - 5].to_vec());

    add("job_json", "job", serde_json::to_vec_pretty(&open).unwrap());
    let mut fanout = open.clone();
    fanout.destinations = vec!["file:///data/out".into(), "s3://bucket/prefix".into()];
    fanout.classification = Some("phi".into());
    fanout.strict = Some(true);
    fanout.correlation_id = Some("req-42".into());
    add(
        "job_json",
        "fan-out",
        serde_json::to_vec_pretty(&fanout).unwrap(),
    );

    for (name, size, path) in [
        ("full", 300_000u64, "tile/0/x001/017"),
        ("partial", 300_000, "tile/0/x001/171.p/224"),
        ("level-one", 300_000, "tile/1/004.p/147"),
        ("beyond", 300_000, "tile/0/x001/172"),
        ("entries", 300_000, "tile/entries/000"),
    ] {
        let mut input = size.to_be_bytes().to_vec();
        input.extend_from_slice(path.as_bytes());
        add("tile_path", name, input);
    }

    for (name, uri) in [
        ("file", "file:///srv/in/acme"),
        ("s3", "s3://bucket/prefix?region=eu-west-1"),
        ("azure", "az://container/p"),
        ("sftp", "sftp://user@host.example:2222/dir?connections=2"),
        ("ftps", "ftps://user@[::1]/dir"),
        ("null", "null://"),
        ("fragment-escape", "#/../../outside"),
        ("query-escape", "?/../../outside"),
        ("encoded-dots", "%2e%2e/%2E%2E/outside"),
        ("encoded-slash", "a%2f..%2f..%2foutside"),
        ("double-slash", "a//b"),
        ("backslash", "..\\..\\outside"),
        ("reserved", ".trackshift-0.tspart"),
        ("hash-directory", "%23/in"),
    ] {
        add("destination", name, uri.as_bytes().to_vec());
    }

    add(
        "job_spec",
        "minimal",
        br#"{"source":"/data/in","destinations":["null://"]}"#.to_vec(),
    );
    add(
        "job_spec",
        "full",
        br#"{"source":"/data/in/2024","destinations":["file:///out","s3://b/p"],"chunk_size":8388608,"priority":9,"classification":"phi","strict":true,"max_attempts":3}"#
            .to_vec(),
    );
    out
}
