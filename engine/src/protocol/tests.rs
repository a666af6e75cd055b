//! Unit tests of the protocol core: codec, receiver and sender state machines, chunk log.

use super::*;

fn job(sizes: &[u64], chunk_size: u64) -> OpenJob {
    OpenJob {
        traceparent: None,
        job_id: "job-1".into(),
        destinations: vec!["null://".into()],
        chunk_size,
        source: "file:///src".into(),
        files: sizes
            .iter()
            .enumerate()
            .map(|(i, s)| FileSpec {
                path: format!("f{i:03}"),
                size: *s,
            })
            .collect(),
        correlation_id: None,
        classification: None,
        strict: None,
    }
}

fn data(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_file_is_complete_only_once_each_of_its_chunks_is_held_once() {
    let mut r = ReceiverJob::new(job(&[1500, 0, 3000], 1024)).unwrap();
    let h = |n: u8| Hash32([n; 32]);
    assert!(!r.file_complete(0) && !r.file_complete(2));
    // An empty file still has its one (empty) chunk to receive.
    assert!(!r.file_complete(1));
    r.record(ChunkRef { file: 0, index: 0 }, h(1)).unwrap();
    // The same chunk again does not count twice.
    r.record(ChunkRef { file: 0, index: 0 }, h(1)).unwrap();
    assert_eq!(r.held_in_file(0), 1);
    assert!(!r.file_complete(0));
    r.record(ChunkRef { file: 0, index: 1 }, h(2)).unwrap();
    assert!(r.file_complete(0));
    r.record(ChunkRef { file: 1, index: 0 }, h(3)).unwrap();
    assert!(r.file_complete(1));
    assert!(!r.file_complete(2));
    // Files the job does not have are never complete (and do not panic).
    assert!(!r.file_complete(3) && !r.file_complete(u32::MAX));
    assert_eq!(r.held_in_file(u32::MAX), 0);
}

#[test]
fn frames_round_trip_byte_by_byte() {
    let frames = vec![
        ClientFrame::Hello {
            version: VERSION,
            token: Secret("tok".into()),
        },
        ClientFrame::OpenJob(job(&[10, 5000], 1024)),
        ClientFrame::FinishJob {
            handle: 3,
            file_hashes: vec![Hash32::blake3(b"x")],
        },
    ];
    let mut wire = Vec::new();
    for f in &frames {
        wire.extend_from_slice(&encode_frame(f));
    }
    let mut dec = FrameDecoder::<ClientFrame>::new(MAX_CONTROL_FRAME);
    let mut got = Vec::new();
    for b in wire {
        dec.push(&[b]);
        while let Some(f) = dec.next_frame().unwrap() {
            got.push(f);
        }
    }
    dec.finish().unwrap();
    assert_eq!(got, frames);
}

#[test]
fn decoder_refuses_oversized_garbage_and_truncation() {
    let mut dec = FrameDecoder::<ClientFrame>::new(100);
    dec.push(&u32::MAX.to_be_bytes());
    assert!(matches!(
        dec.next_frame(),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    assert!(
        dec.buf.capacity() < 1024,
        "nothing allocated for the declared length"
    );

    let mut dec = FrameDecoder::<ClientFrame>::new(100);
    dec.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    assert!(matches!(dec.next_frame(), Err(ProtocolError::Malformed(_))));

    let mut dec = FrameDecoder::<ClientFrame>::new(100);
    dec.push(&[0, 0, 0, 9, 0]);
    assert_eq!(dec.next_frame().unwrap(), None);
    assert_eq!(dec.finish(), Err(ProtocolError::Truncated));
    assert!(check_hello(2).is_err());
    assert!(check_hello(VERSION).is_ok());
}

/// `Acks` naming chunk 2^62 (or any index past the file) used to overflow
/// `ChunkLayout::offset` while computing the chunk's length, before the index was checked.
#[test]
fn acks_with_huge_chunk_index_do_not_panic() {
    let open = job(&[5000, 10], 1024);
    let mut tx = SenderJob::new(&open).unwrap();
    tx.on_ready(&[vec![], vec![]]).unwrap();
    for index in [5, 1 << 62, (u64::MAX / 1024) + 1, u64::MAX] {
        let c = ChunkRef { file: 0, index };
        assert!(tx.on_ack(c).is_err(), "ack of {index}");
        assert!(tx.on_reject(c).is_err(), "reject of {index}");
        assert!(
            tx.on_ready(&[vec![(index, Hash32::default())], vec![]])
                .is_err()
        );
        tx.set_hash(c, Hash32::default());
    }
    let c = ChunkRef {
        file: u32::MAX,
        index: 0,
    };
    assert!(tx.on_ack(c).is_err());
    assert_eq!(tx.progress(), (0, 0, 6), "nothing was counted");
    let real = ChunkRef { file: 0, index: 4 };
    tx.on_ack(real).unwrap();
    assert_eq!(tx.progress(), (1, 5000 - 4096, 6));

    let mut rx = ReceiverJob::new(open).unwrap();
    let header = ChunkHeader {
        handle: 0,
        chunk: ChunkRef {
            file: 0,
            index: 1 << 62,
        },
        len: 0,
        hash: Hash32::default(),
    };
    assert!(rx.check_header(&header).is_err());
    assert!(rx.record(header.chunk, Hash32::default()).is_err());
}

/// `postcard::from_bytes` ignores what follows a value: a frame with junk appended was
/// accepted as if the junk were not there.
#[test]
fn frames_with_trailing_junk_are_refused() {
    let hello = ClientFrame::Hello {
        version: VERSION,
        token: Secret("tok".into()),
    };
    let mut body = postcard::to_allocvec(&hello).unwrap();
    assert_eq!(decode_exact::<ClientFrame>(&body).unwrap(), hello);
    body.extend_from_slice(b"junk");
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    let mut dec = FrameDecoder::<ClientFrame>::new(MAX_HELLO_FRAME);
    dec.push(&wire);
    let err = dec.next_frame().unwrap_err();
    assert!(err.to_string().contains("4 trailing bytes"), "{err}");

    let header = ChunkHeader {
        handle: 1,
        chunk: ChunkRef { file: 2, index: 3 },
        len: 1024,
        hash: Hash32::blake3(b"c"),
    };
    let encoded = encode_chunk_header(&header);
    assert_eq!(decode_chunk_header(&encoded[4..]).unwrap(), header);
    let mut junk = encoded[4..].to_vec();
    junk.push(0);
    assert!(decode_chunk_header(&junk).is_err());
    assert!(decode_chunk_header(&vec![0; MAX_CHUNK_HEADER + 1]).is_err());
}

/// Over-long varints decode to the same value as the short form: refused, so that a
/// frame has one byte form (what a fuzzer's re-encoding check relies on).
#[test]
fn frames_in_non_canonical_encoding_are_refused() {
    // Hello (variant 0), version 1 as the two-byte varint 0x81 0x00, token "t".
    let overlong = [0u8, 0x81, 0x00, 1, b't'];
    assert!(matches!(
        decode_exact::<ClientFrame>(&overlong),
        Err(ProtocolError::Malformed(_))
    ));
    let canonical = [0u8, 0x01, 1, b't'];
    assert_eq!(
        decode_exact::<ClientFrame>(&canonical).unwrap(),
        ClientFrame::Hello {
            version: 1,
            token: Secret("t".into())
        }
    );
}

/// A 4-byte prefix declaring 64 MiB used to make the decoder reserve 64 MiB at once,
/// before a single byte of the body arrived (and before authentication).
#[test]
fn huge_length_prefix_reserves_nothing_before_the_bytes_arrive() {
    let mut dec = FrameDecoder::<ClientFrame>::new(MAX_CONTROL_FRAME);
    dec.push(&(MAX_CONTROL_FRAME as u32).to_be_bytes());
    dec.push(&[0; 10]);
    assert_eq!(dec.next_frame().unwrap(), None);
    assert!(
        dec.buf.capacity() < 4096,
        "reserved {} bytes for a declared length",
        dec.buf.capacity()
    );
    assert_eq!(dec.wanted(), MAX_CONTROL_FRAME - 10);
    assert_eq!(dec.buffered(), 14);
}

/// Before authentication the gateway's limit is a Hello's size: a client cannot make
/// it buffer up to [`MAX_CONTROL_FRAME`] before showing a token.
#[test]
fn pre_auth_frames_above_the_hello_limit_are_refused_at_the_prefix() {
    let mut dec = FrameDecoder::<ClientFrame>::new(MAX_HELLO_FRAME);
    dec.push(&((MAX_HELLO_FRAME + 1) as u32).to_be_bytes());
    assert_eq!(
        dec.next_frame(),
        Err(ProtocolError::FrameTooLarge {
            len: MAX_HELLO_FRAME + 1,
            max: MAX_HELLO_FRAME
        })
    );
    assert_eq!(dec.wanted(), MAX_HELLO_FRAME + 4 - 4);
    // The longest real Hello (a job-service token for a 128-character tenant) fits.
    let token = format!("svc.{}.{}", "t".repeat(128), "ab".repeat(32));
    let hello = encode_frame(&ClientFrame::Hello {
        version: VERSION,
        token: Secret(token),
    });
    assert!(hello.len() < MAX_HELLO_FRAME / 4);
    let mut dec = FrameDecoder::<ClientFrame>::new(MAX_HELLO_FRAME);
    dec.push(&hello);
    assert!(matches!(
        dec.next_frame().unwrap(),
        Some(ClientFrame::Hello { .. })
    ));
    // Raised after authentication: an OpenJob larger than the Hello limit then passes.
    let big = encode_frame(&ClientFrame::OpenJob(job(&[1; 900], 1024)));
    assert!(big.len() > MAX_HELLO_FRAME);
    dec.push(&big);
    assert!(dec.next_frame().is_err());
    let mut dec = FrameDecoder::<ClientFrame>::new(MAX_HELLO_FRAME);
    dec.set_max(MAX_CONTROL_FRAME);
    dec.push(&big);
    assert!(matches!(
        dec.next_frame().unwrap(),
        Some(ClientFrame::OpenJob(_))
    ));
}

#[test]
fn secrets_are_not_debug_printed() {
    let f = ClientFrame::Hello {
        version: 1,
        token: Secret("hunter2".into()),
    };
    assert!(!format!("{f:?}").contains("hunter2"));
}

#[test]
fn invalid_jobs_are_refused() {
    let mut j = job(&[10], 1024);
    j.files[0].path = "../etc/passwd".into();
    assert!(ReceiverJob::new(j).is_err());
    let mut j = job(&[10, 10], 1024);
    j.files[1].path = j.files[0].path.clone();
    assert!(ReceiverJob::new(j).is_err());
    assert!(ReceiverJob::new(job(&[10], 1000)).is_err());
    assert!(
        ReceiverJob::new(job(&[u64::MAX], 1024)).is_err(),
        "too many chunks"
    );
    for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
        let mut j = job(&[1], 1024);
        j.job_id = bad.to_string();
        assert!(ReceiverJob::new(j).is_err(), "{bad:?}");
    }
}

/// Drives a sender and a receiver against each other with no network: a corrupted
/// chunk is rejected and resent, a lost connection resumes with only missing chunks,
/// and the result matches the data.
#[test]
fn sender_and_receiver_complete_a_job_with_corruption_and_resume() {
    let sizes = [0u64, 1, 1024, 5000, 9000];
    let files: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| data(*s, i as u8))
        .collect();
    let open = job(&sizes, 1024);
    let mut rx = ReceiverJob::new(open.clone()).unwrap();
    let mut tx = SenderJob::new(&open).unwrap();
    tx.on_ready(&rx.held_chunks()).unwrap();

    let mut sent = 0;
    let mut corrupted = false;
    let total = rx.progress().1;
    while let Some(c) = tx.next_chunk() {
        sent += 1;
        let layout = *tx.layout(c.file);
        let start = layout.offset(c.index) as usize;
        let mut payload =
            files[c.file as usize][start..start + layout.chunk_len(c.index) as usize].to_vec();
        let header = ChunkHeader {
            handle: 0,
            chunk: c,
            len: payload.len() as u64,
            hash: layout.chunk_hash(c.index, &payload),
        };
        if !corrupted && payload.len() > 10 {
            payload[7] ^= 1; // bit flip in transit
            corrupted = true;
        }
        // Simulate a dropped connection halfway: in-flight chunks are lost.
        if sent == 8 {
            tx.on_ready(&rx.held_chunks()).unwrap();
            continue;
        }
        tx.set_hash(c, header.hash);
        let Disposition::Accept(l) = rx.check_header(&header).unwrap() else {
            tx.on_ack(c).unwrap();
            continue;
        };
        let got = l.chunk_hash(c.index, &payload);
        if got != header.hash {
            tx.on_reject(c).unwrap();
            continue;
        }
        rx.record(c, got).unwrap();
        tx.on_ack(c).unwrap();
    }
    assert!(tx.is_complete());
    assert_eq!(rx.progress(), (total, total));
    assert!(
        sent > total,
        "the corrupted and the lost chunks were sent again"
    );
    let hashes: Vec<Hash32> = files.iter().map(|f| Hash32::blake3(f)).collect();
    assert_eq!(
        tx.file_hashes().unwrap(),
        hashes,
        "sender merges its chunk hashes"
    );
    let entries = rx.finish(&hashes).unwrap();
    assert_eq!(entries.len(), sizes.len());
    let mut wrong = hashes.clone();
    wrong[3] = Hash32::blake3(b"other");
    assert!(
        rx.finish(&wrong).is_err(),
        "sender/receiver disagreement fails the job"
    );
}

#[test]
fn receiver_checks_headers() {
    let open = job(&[5000], 1024);
    let mut rx = ReceiverJob::new(open).unwrap();
    let h = |index, len| ChunkHeader {
        handle: 0,
        chunk: ChunkRef { file: 0, index },
        len,
        hash: Hash32::default(),
    };
    assert!(rx.check_header(&h(5, 1024)).is_err(), "index out of range");
    assert!(rx.check_header(&h(4, 1024)).is_err(), "last chunk is short");
    assert!(rx.check_header(&h(4, 5000 - 4096)).is_ok());
    let mut bad_file = h(0, 1024);
    bad_file.chunk.file = 1;
    assert!(rx.check_header(&bad_file).is_err());
    rx.record(ChunkRef { file: 0, index: 0 }, Hash32::default())
        .unwrap();
    assert_eq!(
        rx.check_header(&h(0, 1024)).unwrap(),
        Disposition::AlreadyHeld
    );
    let mut other = h(0, 1024);
    other.hash = Hash32::blake3(b"x");
    assert!(rx.check_header(&other).is_err());
    assert!(rx.finish(&[Hash32::default()]).is_err(), "not complete");
    assert_eq!(rx.held_chunks(), vec![vec![(0, Hash32::default())]]);
}

#[test]
fn sender_gives_up_after_repeated_rejects() {
    let open = job(&[10], 1024);
    let mut tx = SenderJob::new(&open).unwrap();
    tx.on_ready(&[vec![]]).unwrap();
    for _ in 0..MAX_CHUNK_ATTEMPTS - 1 {
        let c = tx.next_chunk().unwrap();
        tx.on_reject(c).unwrap();
    }
    let c = tx.next_chunk().unwrap();
    assert!(tx.on_reject(c).is_err());
    assert!(tx.on_ready(&[]).is_err(), "file count mismatch");
}

#[test]
fn chunk_log_cuts_torn_tail_and_refuses_inner_corruption() {
    let mut log = Vec::new();
    for i in 0..5u64 {
        log.extend_from_slice(&encode_log_record(
            ChunkRef { file: 1, index: i },
            &Hash32::blake3(&i.to_be_bytes()),
        ));
    }
    let full = decode_chunk_log(&log).unwrap();
    assert_eq!(full.records.len(), 5);
    for cut in 0..LOG_RECORD_LEN {
        let parsed = decode_chunk_log(&log[..log.len() - cut]).unwrap();
        let expect = if cut == 0 { 5 } else { 4 };
        assert_eq!(parsed.records.len(), expect, "cut {cut}");
        assert_eq!(parsed.valid_len, expect * LOG_RECORD_LEN);
    }
    let mut torn_last = log.clone();
    let n = torn_last.len();
    torn_last[n - 1] ^= 1;
    assert_eq!(decode_chunk_log(&torn_last).unwrap().records.len(), 4);
    let mut inner = log.clone();
    inner[LOG_RECORD_LEN + 3] ^= 1;
    assert!(decode_chunk_log(&inner).is_err());
}
