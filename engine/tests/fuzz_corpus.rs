//! Replays every committed fuzz corpus input (`fuzz/corpus/<target>/`) through the same
//! property checks the libFuzzer targets run (`fuzz/checks.rs`), on stable Rust with no
//! fuzzer: the corpus is exercised on every `cargo test`, and a crash input committed
//! there stays a regression test.

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../../fuzz/checks.rs"]
mod checks;

/// What `checks.rs` calls `crate::engine` (in the fuzz crate: the same sources compiled there).
mod engine {
    pub use trackshift_engine::{jobs, protocol};
    pub mod connectors {
        pub use trackshift_engine::connectors::destination;
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn every_committed_corpus_input_passes_its_target_checks() {
    let mut failed = Vec::new();
    let mut ran = 0;
    for (target, check) in checks::TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no inputs", dir.display());
        for file in files {
            let data = fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(file.display().to_string());
            }
            ran += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "corpus inputs failing their checks: {failed:?}"
    );
    assert!(ran >= checks::TARGETS.len());
}

/// The seeds are real encodings made by `checks::seeds`; when the wire format changes this
/// fails, and `TRACKSHIFT_WRITE_FUZZ_SEEDS=1 cargo test -p trackshift-engine --test
/// fuzz_corpus` writes them anew.
#[test]
fn committed_seeds_are_what_the_encoders_make_today() {
    let write = std::env::var_os("TRACKSHIFT_WRITE_FUZZ_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target, name, bytes) in checks::seeds() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        if write {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &bytes).unwrap();
        } else if fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(format!("{target}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "seeds missing or stale (regenerate with TRACKSHIFT_WRITE_FUZZ_SEEDS=1): {stale:?}"
    );
}

/// Every check has a libFuzzer target of its name declared in fuzz/Cargo.toml.
#[test]
fn every_check_has_a_fuzz_target() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (target, _) in checks::TARGETS {
        let source = fuzz_dir().join(format!("fuzz_targets/{target}.rs"));
        let text =
            fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("checks::{target}(")),
            "{} does not run checks::{target}",
            source.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml declares no target {target}"
        );
    }
}

/// The checks are not vacuous: each seed set reaches the accepting path of its parser.
#[test]
fn seeds_include_inputs_the_parsers_accept() {
    use trackshift_engine::protocol::{self, ClientFrame, FrameDecoder, OpenJob, ServerFrame};
    let seeds = checks::seeds();
    let accepted = |target: &str, ok: &dyn Fn(&[u8]) -> bool| {
        assert!(
            seeds.iter().any(|(t, _, b)| *t == target && ok(b)),
            "no {target} seed is accepted"
        );
    };
    accepted("client_frames", &|b| {
        let mut d = FrameDecoder::<ClientFrame>::new(protocol::MAX_HELLO_FRAME);
        d.push(b);
        matches!(d.next_frame(), Ok(Some(_)))
    });
    accepted("server_frames", &|b| {
        let mut d = FrameDecoder::<ServerFrame>::new(protocol::MAX_CONTROL_FRAME);
        d.push(b);
        matches!(d.next_frame(), Ok(Some(_)))
    });
    accepted("chunk_header", &|b| {
        protocol::decode_chunk_header(b).is_ok()
    });
    accepted("chunk_log", &|b| {
        protocol::decode_chunk_log(b).is_ok_and(|l| !l.records.is_empty())
    });
    accepted("job_json", &|b| {
        serde_json::from_slice::<OpenJob>(b).is_ok_and(|o| protocol::ReceiverJob::new(o).is_ok())
    });
    accepted("tile_path", &|b| {
        let path = std::str::from_utf8(&b[8..]).unwrap();
        let size = u64::from_be_bytes(b[..8].try_into().unwrap());
        trackshift_ledger::store::parse_hash_tile(path, size).is_ok()
    });
    accepted("job_spec", &|b| {
        serde_json::from_slice::<trackshift_engine::jobs::JobSpec>(b)
            .is_ok_and(|s| s.validate().is_ok())
    });
}
