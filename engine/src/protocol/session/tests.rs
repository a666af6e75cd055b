//! Scenarios on the harness: a clean send, backpressure on a long link, loss and
//! reordering, cut connections and resume, rejects, failures, quotas, cancel, refusal,
//! an unreachable gateway.

use std::time::Duration;

use super::super::*;
use super::harness::*;
use super::*;

fn sizes(n: usize, each: u64) -> Vec<u64> {
    vec![each; n]
}

#[test]
fn a_clean_send_sends_every_chunk_once_within_the_budget() {
    let jobs = vec![
        job("a", &sizes(3, 10 * CHUNK)),
        job("b", &[0, 1, 5 * CHUNK + 7]),
    ];
    let h = Harness::new(1, jobs, 8 * CHUNK, Net::default(), Gw::default());
    let chunks = h.chunks();
    let (h, run) = h.run(Duration::from_secs(60));
    h.assert_all_done();
    assert_eq!(run.streams, chunks, "each chunk once");
    assert_eq!(run.recorded, chunks);
    assert_eq!(run.connections, 1);
    assert!(run.peak_in_flight <= 8 * CHUNK, "{}", run.peak_in_flight);
    assert!(run.peak_in_flight >= 7 * CHUNK, "the budget is used");
    assert_eq!(h.sender.in_flight_bytes(), 0);
    // Round robin: both jobs were in flight together, so the short one ended first.
    let a = h.sender.job(0).finished_at().unwrap();
    let b = h.sender.job(1).finished_at().unwrap();
    assert!(b < a, "{b:?} {a:?}");
}

#[test]
fn the_budget_bounds_throughput_on_a_long_link() {
    // 40 chunks over a 100 ms one-way link: with 4 chunks of budget a round trip (200 ms
    // plus the commit) moves 4 chunks, so about 10 round trips; with 40, about one.
    let run_with = |budget| {
        let net = Net {
            latency: ms(100),
            ..Net::default()
        };
        let (h, run) = Harness::new(2, vec![job("a", &[40 * CHUNK])], budget, net, Gw::default())
            .run(Duration::from_secs(60));
        h.assert_all_done();
        run.at
    };
    let narrow = run_with(4 * CHUNK);
    let wide = run_with(40 * CHUNK);
    assert!(narrow >= ms(2_000), "{narrow:?}");
    assert!(wide <= ms(800), "{wide:?}");
}

#[test]
fn an_adaptive_window_grows_to_fill_a_long_link() {
    let net = || Net {
        latency: ms(100),
        ..Net::default()
    };
    let run_with = |adaptive: Option<u64>| {
        let mut h = Harness::new(
            2,
            vec![job("a", &[80 * CHUNK])],
            40 * CHUNK,
            net(),
            Gw::default(),
        );
        if let Some(initial) = adaptive {
            h.sender.set_adaptive_window(initial);
        }
        let (h, run) = h.run(Duration::from_secs(60));
        h.assert_all_done();
        run
    };
    let fixed_full = run_with(None).at;
    let adaptive = run_with(Some(4 * CHUNK));
    // 80 chunks over a 200 ms round trip: 4 chunks a trip would take 20 trips; growing by
    // what each trip acknowledges it reaches the 40-chunk cap in about 4.
    assert!(
        adaptive.peak_in_flight >= 32 * CHUNK,
        "{}",
        adaptive.peak_in_flight
    );
    assert!(adaptive.at <= ms(1_800), "{:?}", adaptive.at);
    let mut narrow = Harness::new(
        2,
        vec![job("a", &[80 * CHUNK])],
        4 * CHUNK,
        net(),
        Gw::default(),
    );
    narrow.sender.set_adaptive_window(4 * CHUNK);
    let (_, narrow) = narrow.run(Duration::from_secs(60));
    assert!(
        narrow.at >= ms(4_000),
        "a 4-chunk cap stays 4 chunks: {:?}",
        narrow.at
    );
    assert!(
        fixed_full <= adaptive.at,
        "the fixed full window is the fastest start"
    );
}

#[test]
fn an_adaptive_window_stays_small_when_the_gateway_is_the_bottleneck() {
    // Loopback-like: 1 ms each way, but the gateway takes 5 ms per chunk. More in flight
    // only waits in its queue: the adaptive window stays near its start, the fixed one
    // fills, and both finish at the gateway's pace.
    let run_with = |adaptive: bool| {
        let net = Net {
            latency: ms(1),
            ..Net::default()
        };
        let gw = Gw {
            service: ms(5),
            ..Gw::default()
        };
        let mut h = Harness::new(3, vec![job("a", &[200 * CHUNK])], 64 * CHUNK, net, gw);
        if adaptive {
            h.sender.set_adaptive_window(4 * CHUNK);
        }
        let (h, run) = h.run(Duration::from_secs(60));
        h.assert_all_done();
        run
    };
    let fixed = run_with(false);
    let adaptive = run_with(true);
    assert_eq!(fixed.peak_in_flight, 64 * CHUNK);
    assert!(
        adaptive.peak_in_flight <= 12 * CHUNK,
        "{}",
        adaptive.peak_in_flight
    );
    assert!(
        adaptive.at <= fixed.at + ms(100),
        "{:?} vs {:?}",
        adaptive.at,
        fixed.at
    );
    assert!(fixed.at >= ms(1_000), "gateway-bound: {:?}", fixed.at);
}

#[test]
fn loss_and_reordering_lose_nothing_and_resend_nothing() {
    for seed in 0..40 {
        let net = Net {
            jitter: ms(80),
            loss: 0.2,
            ..Net::default()
        };
        let jobs = vec![job("a", &sizes(4, 6 * CHUNK)), job("b", &[13 * CHUNK + 1])];
        let h = Harness::new(seed, jobs, 6 * CHUNK, net, Gw::default());
        let chunks = h.chunks();
        let (h, run) = h.run(Duration::from_secs(600));
        h.assert_all_done();
        // QUIC retransmits lost packets: a late chunk is not a lost one.
        assert_eq!(run.streams, chunks, "seed {seed}");
        assert_eq!(run.recorded, chunks, "seed {seed}");
    }
}

#[test]
fn a_cut_connection_resumes_with_only_what_the_gateway_lacks() {
    for seed in 0..20 {
        let net = Net {
            jitter: ms(30),
            cut_after_chunks: vec![7, 3, 11],
            ..Net::default()
        };
        let jobs = vec![job("a", &sizes(3, 8 * CHUNK)), job("b", &[9 * CHUNK])];
        let budget = 5 * CHUNK;
        let h = Harness::new(seed, jobs, budget, net, Gw::default());
        let chunks = h.chunks();
        let (h, run) = h.run(Duration::from_secs(600));
        h.assert_all_done();
        assert_eq!(run.connections, 4, "seed {seed}");
        assert_eq!(h.sender.reconnects(), 3);
        // Every chunk recorded once; at most a budget's worth resent per cut.
        assert_eq!(run.recorded, chunks, "seed {seed}");
        assert!(
            run.streams > chunks,
            "seed {seed}: the cuts lost chunks in flight"
        );
        assert!(
            run.streams <= chunks + 3 * (budget / CHUNK),
            "seed {seed}: {}",
            run.streams
        );
    }
}

#[test]
fn a_corrupted_chunk_is_rejected_and_sent_again() {
    let mut gw = Gw::default();
    gw.corrupt
        .insert(("a".into(), ChunkRef { file: 1, index: 2 }), 2);
    let h = Harness::new(
        3,
        vec![job("a", &sizes(2, 4 * CHUNK))],
        4 * CHUNK,
        Net::default(),
        gw,
    );
    let chunks = h.chunks();
    let (h, run) = h.run(Duration::from_secs(60));
    h.assert_all_done();
    assert_eq!(run.rejects, 2);
    assert_eq!(run.streams, chunks + 2);
}

#[test]
fn a_chunk_rejected_too_often_ends_the_send() {
    let mut gw = Gw::default();
    gw.corrupt
        .insert(("a".into(), ChunkRef { file: 0, index: 0 }), u32::MAX);
    let (_, run) = Harness::new(
        4,
        vec![job("a", &[3 * CHUNK])],
        4 * CHUNK,
        Net::default(),
        gw,
    )
    .run(Duration::from_secs(60));
    assert_eq!(run.rejects, u64::from(MAX_CHUNK_ATTEMPTS));
    assert!(
        matches!(&run.fatal, Some(Fatal::Protocol(ProtocolError::InvalidChunk(m))) if m.contains("rejected 5 times")),
        "{:?}",
        run.fatal
    );
}

#[test]
fn transient_open_failures_are_reopened_on_schedule_then_succeed() {
    let gw = Gw {
        fail_opens: 3,
        ..Gw::default()
    };
    let (h, run) = Harness::new(
        5,
        vec![job("a", &[2 * CHUNK])],
        4 * CHUNK,
        Net::default(),
        gw,
    )
    .run(Duration::from_secs(60));
    h.assert_all_done();
    assert_eq!(h.sender.job(0).reopens(), 3);
    assert_eq!(run.connections, 1, "reopened on the same connection");
    // Three failures, 200 + 400 + 800 ms of backoff, each a round trip of 40 ms.
    assert!(run.at >= ms(1_400 + 4 * 40), "{:?}", run.at);
    assert!(run.at < ms(1_400 + 8 * 40), "{:?}", run.at);
}

#[test]
fn a_permanent_failure_ends_only_that_job() {
    let gw = Gw {
        refuse_jobs: true,
        ..Gw::default()
    };
    let (h, run) = Harness::new(
        6,
        vec![job("a", &[CHUNK]), job("b", &[CHUNK])],
        CHUNK,
        Net::default(),
        gw,
    )
    .run(Duration::from_secs(60));
    assert!(run.fatal.is_none());
    for j in h.sender.jobs() {
        assert_eq!(
            j.end(),
            Some(&JobEnd::Failed {
                reason: "destination refused".into(),
                permanent: true
            })
        );
        assert_eq!(j.reopens(), 0);
    }
    assert_eq!(h.sender.phase(), Phase::Finished);
}

#[test]
fn jobs_beyond_the_tenant_quota_wait_for_a_slot_and_all_finish() {
    let gw = Gw {
        max_jobs: Some(1),
        ..Gw::default()
    };
    let jobs = (0..4)
        .map(|i| job(&format!("j{i}"), &[6 * CHUNK]))
        .collect();
    let (h, run) =
        Harness::new(7, jobs, 4 * CHUNK, Net::default(), gw).run(Duration::from_secs(600));
    h.assert_all_done();
    assert!(run.busy >= 3, "{}", run.busy);
    // One at a time: no two jobs' lifetimes overlap at the gateway, so they end in turn.
    let mut ends: Vec<_> = h
        .sender
        .jobs()
        .iter()
        .map(|j| j.finished_at().unwrap())
        .collect();
    ends.dedup();
    assert_eq!(ends.len(), 4);
}

#[test]
fn a_connection_holds_at_most_its_share_of_jobs() {
    let gw = Gw {
        max_per_connection: Some(2),
        ..Gw::default()
    };
    let jobs = (0..5)
        .map(|i| job(&format!("j{i}"), &[3 * CHUNK]))
        .collect();
    let (h, run) =
        Harness::new(8, jobs, 4 * CHUNK, Net::default(), gw).run(Duration::from_secs(600));
    h.assert_all_done();
    assert_eq!(run.busy, 0, "the tenant quota was never reached");
    assert!(run.busy_frames >= 3, "{}", run.busy_frames);
    assert_eq!(run.peak_open, 2);
}

#[test]
fn cancel_removes_open_jobs_and_those_that_turn_ready_during_the_grace() {
    // Job "slow" is opened 500 ms late: cancelled before it is ready, it is cancelled as
    // soon as the gateway answers.
    let gw = Gw {
        slow_opens: [("slow".to_string(), ms(500))].into(),
        ..Gw::default()
    };
    let mut h = Harness::new(
        9,
        vec![job("a", &[50 * CHUNK]), job("slow", &[CHUNK])],
        2 * CHUNK,
        Net::default(),
        gw,
    );
    h.cancel_at = Some(ms(300));
    let (h, run) = h.run(Duration::from_secs(60));
    assert!(run.cancelled);
    assert!(run.recorded > 0, "job a was under way");
    assert!(
        h.held.is_empty(),
        "the gateway removed both: {:?}",
        h.held.keys().collect::<Vec<_>>()
    );
    assert!(run.at < ms(300) + CANCEL_GRACE + ms(100), "{:?}", run.at);
    assert!(h.sender.jobs().iter().all(|j| j.end().is_none()));
}

#[test]
fn cancel_without_an_answer_gives_up_after_the_grace() {
    let gw = Gw {
        slow_opens: [("a".to_string(), ms(60_000))].into(),
        ..Gw::default()
    };
    let mut h = Harness::new(10, vec![job("a", &[CHUNK])], CHUNK, Net::default(), gw);
    h.cancel_at = Some(ms(100));
    let (_, run) = h.run(Duration::from_secs(60));
    assert!(run.cancelled);
    assert_eq!(run.at, ms(100) + CANCEL_GRACE);
}

#[test]
fn an_unreadable_source_cancels_its_job_and_not_the_others() {
    let mut h = Harness::new(
        11,
        vec![job("a", &[4 * CHUNK]), job("b", &[4 * CHUNK])],
        2 * CHUNK,
        Net::default(),
        Gw::default(),
    );
    h.unreadable = Some((0, ChunkRef { file: 0, index: 2 }));
    let (h, run) = h.run(Duration::from_secs(60));
    assert!(run.fatal.is_none());
    assert_eq!(
        h.sender.job(0).end(),
        Some(&JobEnd::SourceRead("f000: file changed".into()))
    );
    assert!(matches!(h.sender.job(1).end(), Some(JobEnd::Done { .. })));
    assert!(
        !h.held.contains_key("a"),
        "the gateway dropped the cancelled job"
    );
}

#[test]
fn a_wrong_token_is_refused_and_not_retried() {
    let gw = Gw::default();
    let mut h = Harness::new(12, vec![job("a", &[CHUNK])], CHUNK, Net::default(), gw);
    h.gw.token = Some("another".into());
    let (_, run) = h.run(Duration::from_secs(60));
    assert_eq!(
        run.fatal,
        Some(Fatal::Refused("unknown tenant token".into()))
    );
    assert_eq!(run.refusals, [Refusal::UnknownToken]);
    assert_eq!(run.connections, 1);
}

#[test]
fn a_sender_that_never_says_hello_is_closed_at_the_deadline() {
    let gw = Gw {
        silent_sender: true,
        ..Gw::default()
    };
    let h = Harness::new(13, vec![job("a", &[CHUNK])], CHUNK, Net::default(), gw);
    let (_, run) = h.run(ms(5_500));
    assert_eq!(run.refusals, [Refusal::HelloTimeout(ms(5_000))]);
    assert_eq!(run.refusals[0].code(), close::AUTH_TIMEOUT);
}

#[test]
fn an_unreachable_gateway_is_given_up_within_the_retry_budget() {
    let net = Net {
        unreachable: true,
        ..Net::default()
    };
    let (h, run) = Harness::new(14, vec![job("a", &[CHUNK])], CHUNK, net, Gw::default())
        .run(Duration::from_secs(600));
    let Some(Reconnect::GiveUp { attempts, seconds }) = run.gave_up else {
        panic!("{:?}", run.gave_up);
    };
    // Eight reconnects (the limit), each after a handshake timeout of 1 s and a backoff.
    assert_eq!(attempts, 9);
    assert!((9..40).contains(&seconds), "{seconds}");
    assert!(h.sender.jobs().iter().all(|j| j.end().is_none()));
}

#[test]
fn the_gateway_refuses_frames_out_of_order() {
    let mut s = ReceiverSession::<String>::new(Duration::ZERO, ms(100), 4);
    assert_eq!(s.max_frame(), MAX_HELLO_FRAME);
    let e = s
        .on_frame(ClientFrame::CancelJob {
            handle: 0,
            reason: String::new(),
        })
        .unwrap_err();
    assert_eq!(e.code(), close::EXPECTED_HELLO);
    let mut s = ReceiverSession::<String>::new(Duration::ZERO, ms(100), 4);
    let e = s
        .on_frame(ClientFrame::Hello {
            version: VERSION + 1,
            token: Secret("t".into()),
        })
        .unwrap_err();
    assert_eq!(e.code(), close::REFUSED);
    assert!(matches!(
        s.poll_action(),
        Some(ReceiverAction::Frame(ServerFrame::Refused { .. }))
    ));
    let mut s = ReceiverSession::<String>::new(Duration::ZERO, ms(100), 4);
    s.on_frame(ClientFrame::Hello {
        version: VERSION,
        token: Secret("t".into()),
    })
    .unwrap();
    assert!(matches!(
        s.poll_action(),
        Some(ReceiverAction::Authenticate(_))
    ));
    s.authenticated(Some("acme".into()));
    assert_eq!(s.tenant(), Some("acme"));
    assert_eq!(s.max_frame(), MAX_CONTROL_FRAME);
    assert_eq!(s.poll_timeout(), None, "no deadline once authenticated");
    let e = s
        .on_frame(ClientFrame::FinishJob {
            handle: 7,
            file_hashes: vec![],
        })
        .unwrap_err();
    assert!(matches!(e, Refusal::Protocol(ProtocolError::Unexpected(_))));
    let e = s
        .on_frame(ClientFrame::Hello {
            version: VERSION,
            token: Secret("t".into()),
        })
        .unwrap_err();
    assert!(e.to_string().contains("second Hello"));
    // Reopening a job drops its earlier handle (and the job with it).
    let h0 = s.opened("j".into(), "first".into(), vec![]);
    s.on_frame(ClientFrame::OpenJob(job("j", &[1]))).unwrap();
    assert!(s.job(h0).is_none());
    let h1 = s.opened("j".into(), "second".into(), vec![]);
    assert_ne!(h0, h1);
    assert_eq!(s.open_jobs(), 1);
}

#[test]
fn a_sender_packs_small_chunks_only_for_a_gateway_that_says_it_reads_them() {
    use super::super::retry::RetryLimits;
    let limits = RetryLimits {
        max_reopens: 8,
        retry_for: Duration::from_secs(60),
    };
    let mut s = SenderSession::new(limits, 1 << 20, Duration::ZERO);
    s.add_job(job("j", &[1])).unwrap();
    let token = Secret("t".into());
    let welcome = |version| ServerFrame::Welcome {
        version,
        tenant: "acme".into(),
    };
    s.connected(&token, Duration::ZERO);
    assert!(!s.packs(), "not before the Welcome");
    s.on_frame(welcome(VERSION), Duration::ZERO).unwrap();
    assert!(!s.packs(), "an older gateway reads one chunk per stream");
    s.connected(&token, ms(1));
    s.on_frame(welcome(PACKED_VERSION), ms(1)).unwrap();
    assert!(s.packs());
    // A new connection (perhaps to another gateway) asks again.
    s.connected(&token, ms(2));
    assert!(!s.packs());
}

#[test]
fn a_traced_job_opens_with_its_trace_only_at_a_gateway_that_reads_it() {
    use super::super::retry::RetryLimits;
    let tp =
        crate::trace::TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .unwrap();
    let limits = RetryLimits {
        max_reopens: 8,
        retry_for: Duration::from_secs(60),
    };
    let mut s = SenderSession::new(limits, 1 << 20, Duration::ZERO);
    s.add_job(OpenJob {
        traceparent: Some(tp),
        ..job("traced", &[1])
    })
    .unwrap();
    s.add_job(job("plain", &[1])).unwrap();
    let token = Secret("t".into());
    let frames = |s: &mut SenderSession| {
        let mut out = Vec::new();
        while let Some(a) = s.poll_action() {
            if let Action::Frame(f) = a {
                out.push(f);
            }
        }
        out
    };
    let welcome = |version| ServerFrame::Welcome {
        version,
        tenant: "acme".into(),
    };
    for (version, traced) in [(TRACED_VERSION, true), (PACKED_VERSION, false)] {
        s.connected(&token, ms(1));
        let first = frames(&mut s);
        assert!(matches!(first[0], ClientFrame::Hello { .. }));
        let opened: Vec<&str> = first[1..]
            .iter()
            .map(|f| match f {
                ClientFrame::OpenJob(o) => o.job_id.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(opened, ["plain"], "the traced job waits for the Welcome");
        assert!(s.setting_up());
        s.on_frame(welcome(version), ms(2)).unwrap();
        match (frames(&mut s).as_slice(), traced) {
            ([ClientFrame::OpenTracedJob { open, traceparent }], true) => {
                assert_eq!((open.job_id.as_str(), *traceparent), ("traced", tp));
            }
            ([ClientFrame::OpenJob(open)], false) => assert_eq!(open.job_id, "traced"),
            (other, _) => panic!("gateway version {version}: {other:?}"),
        }
    }
    // The gateway's side: the traced open arrives with its trace, the same job otherwise.
    let mut r = ReceiverSession::<String>::new(Duration::ZERO, ms(100), 4);
    r.on_frame(ClientFrame::Hello {
        version: VERSION,
        token: token.clone(),
    })
    .unwrap();
    r.authenticated(Some("acme".into()));
    while r.poll_action().is_some() {}
    r.on_frame(ClientFrame::OpenTracedJob {
        open: job("traced", &[1]),
        traceparent: tp,
    })
    .unwrap();
    let opened = std::iter::from_fn(|| r.poll_action())
        .find_map(|a| match a {
            ReceiverAction::Open(o) => Some(o),
            _ => None,
        })
        .expect("an open");
    assert_eq!(opened.traceparent, Some(tp));
    assert!(opened.same_job(&job("traced", &[1])));
}
