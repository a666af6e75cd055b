//! External time-stamps of the gateway's checkpoints (`serve --tsa URL --tsa-ca PEM`):
//! every `--tsa-interval` the latest checkpoint, when the log grew since the last stamp, is
//! sent to an RFC 3161 time-stamp authority (`trackshift_ledger::tsa`), and the answer is
//! checked and kept in `DATA/timestamps/<size>.json`. A receipt's checkpoint is covered by
//! the first stamp at or after it, bound to it by a consistency proof (`GET
//! /v1/ledger/timestamp?size=N`, `trackshift ledger timestamp`, `trackshift verify
//! --timestamp`; docs/FORMATS.md 8.8). An authority that is down delays stamps, never a
//! transfer: the gap shows in `/metrics` (`trackshift_tsa_*`) and in `/ready`'s details.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use trackshift_crypto::Timestamp;
use trackshift_ledger::tsa::{
    TsaTrust, checkpoint_digest, request, token_from_response, verify_token,
};

/// Format tag of a stored (and served) time-stamp.
pub const STAMP_FORMAT: &str = "trackshift.timestamp.v1";
/// The directory under the data directory holding the stamps.
pub const STAMPS_DIR: &str = "timestamps";
/// Largest answer read from an authority.
const MAX_RESPONSE: usize = 1 << 20;

/// One checkpoint's time-stamp, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    /// Always [`STAMP_FORMAT`].
    pub format: String,
    /// The checkpoint's tree size.
    pub size: u64,
    /// The checkpoint's signed note, verbatim: the time-stamp covers SHA-256 of it.
    pub checkpoint: String,
    /// The authority's DER `TimeStampResp`, base64 (`openssl ts -verify -in` takes it).
    pub response: String,
    /// The time the authority gave (its `genTime`).
    pub time: Timestamp,
    /// The authority's signing certificate's subject.
    pub tsa: String,
    /// From the size asked about to this stamp's (when served for a smaller size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<trackshift_engine::keybundle::Consistency>,
}

/// Where time-stamps come from.
#[derive(Debug, Clone)]
pub struct TsaConfig {
    /// The authority's URL (RFC 3161 over HTTP: POST `application/timestamp-query`).
    pub url: reqwest::Url,
    /// Its CA (or its signing certificate).
    pub trust: TsaTrust,
    /// Least time between two stamps.
    pub interval: Duration,
}

/// The stamps this gateway holds and how the authority has been answering.
#[derive(Debug, Default)]
pub struct Stamps {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Stamped tree sizes (the files under the directory).
    sizes: BTreeMap<u64, ()>,
    last_success: Option<Timestamp>,
    last_error: Option<String>,
    failures: u64,
}

impl Stamps {
    /// The stamps in `data_dir/timestamps` (created if missing).
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join(STAMPS_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut sizes = BTreeMap::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let name = e?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                sizes.insert(n, ());
            }
        }
        Ok(Self {
            dir,
            state: Mutex::new(State {
                sizes,
                ..State::default()
            }),
        })
    }

    fn path(&self, size: u64) -> PathBuf {
        self.dir.join(format!("{size:020}.json"))
    }

    /// The largest stamped size.
    pub fn last_size(&self) -> u64 {
        let s = self.state.lock().expect("stamps lock");
        s.sizes.keys().next_back().copied().unwrap_or(0)
    }

    /// The first stamp of a size at or above `size`.
    pub fn covering(&self, size: u64) -> Result<Option<Stamp>> {
        let at = {
            let s = self.state.lock().expect("stamps lock");
            s.sizes.range(size..).next().map(|(k, _)| *k)
        };
        let Some(at) = at else { return Ok(None) };
        let path = self.path(at);
        let stamp: Stamp = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}", path.display()))?;
        Ok(Some(stamp))
    }

    fn store(&self, stamp: &Stamp) -> Result<()> {
        let json = serde_json::to_vec_pretty(stamp).expect("stamp serialises");
        trackshift_crypto::filestore::write_atomic(&self.path(stamp.size), &json, 0o644)?;
        let mut s = self.state.lock().expect("stamps lock");
        s.sizes.insert(stamp.size, ());
        s.last_success = Some(stamp.time);
        s.last_error = None;
        Ok(())
    }

    fn failed(&self, e: &anyhow::Error) {
        let mut s = self.state.lock().expect("stamps lock");
        s.failures += 1;
        s.last_error = Some(format!("{e:#}"));
        metrics::counter!("trackshift_tsa_failures_total").increment(1);
    }

    /// What `/ready` shows an operator: the last stamp, how far the log is ahead of it, the
    /// authority's last error.
    pub fn details(&self, ledger_size: u64) -> serde_json::Value {
        let s = self.state.lock().expect("stamps lock");
        let last = s.sizes.keys().next_back().copied().unwrap_or(0);
        serde_json::json!({
            "last_stamped_size": last,
            "unstamped_entries": ledger_size.saturating_sub(last),
            "last_success": s.last_success.map(|t| t.to_string()),
            "failures": s.failures,
            "last_error": s.last_error,
        })
    }

    /// Sets the `trackshift_tsa_*` gauges for a scrape.
    pub fn export_metrics(&self, ledger_size: u64) {
        let s = self.state.lock().expect("stamps lock");
        let last = s.sizes.keys().next_back().copied().unwrap_or(0);
        metrics::gauge!("trackshift_tsa_last_stamped_size").set(last as f64);
        metrics::gauge!("trackshift_tsa_unstamped_entries")
            .set(ledger_size.saturating_sub(last) as f64);
        if let Some(t) = s.last_success {
            metrics::gauge!("trackshift_tsa_last_success_timestamp_seconds").set(t.unix() as f64);
        }
    }
}

/// Asks the authority for a stamp of `note` (a checkpoint of `size` entries) and checks it.
pub async fn stamp_once(
    http: &reqwest::Client,
    cfg: &TsaConfig,
    size: u64,
    note: &str,
) -> Result<Stamp> {
    let digest = checkpoint_digest(note);
    let seed = trackshift_crypto::SecretSeed::generate()?;
    let nonce = u64::from_be_bytes(seed.expose()[..8].try_into().expect("8 bytes")) >> 1;
    let resp = http
        .post(cfg.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/timestamp-query")
        .body(request(&digest, nonce))
        .send()
        .await
        .with_context(|| format!("asking the time-stamp authority {}", cfg.url))?;
    if !resp.status().is_success() {
        bail!(
            "the time-stamp authority {} answered {}",
            cfg.url,
            resp.status()
        );
    }
    let body = resp
        .bytes()
        .await
        .context("reading the authority's answer")?;
    if body.len() > MAX_RESPONSE {
        bail!("the authority's answer is over {MAX_RESPONSE} bytes");
    }
    let token = token_from_response(&body, &digest, nonce)?;
    let checked = verify_token(&token, &digest, &cfg.trust)
        .context("the authority's token does not verify with --tsa-ca")?;
    Ok(Stamp {
        format: STAMP_FORMAT.into(),
        size,
        checkpoint: note.to_string(),
        response: base64::engine::general_purpose::STANDARD.encode(&body),
        time: Timestamp::from_unix(checked.time),
        tsa: checked.signer,
        consistency: None,
    })
}

/// Stamps the latest checkpoint whenever the log grew, at most every `cfg.interval`, until
/// the process ends. Failures are logged once per kind and retried at the next tick.
pub async fn run(ledger: trackshift_ledger::Log, stamps: Arc<Stamps>, cfg: TsaConfig) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for the time-stamp authority");
            return;
        }
    };
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Option<String> = None;
    loop {
        tick.tick().await;
        let cp = ledger.checkpoint();
        if cp.size == 0 || cp.size <= stamps.last_size() {
            continue;
        }
        match stamp_once(&http, &cfg, cp.size, &cp.note).await {
            Ok(stamp) => match stamps.store(&stamp) {
                Ok(()) => {
                    if reported.take().is_some() {
                        tracing::info!("the time-stamp authority answers again");
                    }
                    tracing::debug!(size = stamp.size, time = %stamp.time, "checkpoint time-stamped");
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "time-stamp not stored");
                    stamps.failed(&e);
                }
            },
            Err(e) => {
                let msg = format!("{e:#}");
                if reported.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, unstamped = cp.size - stamps.last_size(), "checkpoint not time-stamped; transfers go on, the stamp waits");
                }
                stamps.failed(&e);
                reported = Some(msg);
            }
        }
    }
}

/// What `trackshift verify --timestamp` checks for a receipt whose ledger proof is in a
/// checkpoint of `size` entries with `root`: `stamp` is for a checkpoint signed by the
/// ledger keys, at or after it, bound to it by its consistency proof, and its token
/// verifies with `trust`. Returns the time and the authority.
pub fn verify_stamp(
    stamp: &Stamp,
    size: u64,
    root: &[u8; 32],
    ledger_keys: &trackshift_crypto::LedgerPublicKeys,
    trust: &TsaTrust,
) -> Result<trackshift_ledger::tsa::TimeStamp> {
    if stamp.format != STAMP_FORMAT {
        bail!("not a time-stamp file (format {:?})", stamp.format);
    }
    let cp = trackshift_ledger::verify_checkpoint(&stamp.checkpoint, ledger_keys)
        .context("the time-stamped checkpoint")?;
    if cp.size != stamp.size || cp.size < size {
        return Err(trackshift_ledger::LedgerError::TimeStamp(format!(
            "the time-stamped checkpoint has {} entries, the receipt's {size}",
            cp.size
        ))
        .into());
    }
    let proof: Vec<[u8; 32]> = match &stamp.consistency {
        Some(c) if c.old_size == size && c.new_size == cp.size => c
            .hashes()
            .context("a consistency hash is not 32 bytes of base64")?,
        None if cp.size == size => Vec::new(),
        _ => {
            return Err(trackshift_ledger::LedgerError::TimeStamp(format!(
                "no consistency proof from the receipt's checkpoint ({size} entries) to the stamped one ({})",
                cp.size
            ))
            .into());
        }
    };
    trackshift_ledger::verify_consistency(size, cp.size, root, &cp.root, &proof)
        .context("the stamped checkpoint does not extend the receipt's")?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(&stamp.response)
        .context("the time-stamp response is not base64")?;
    let token = trackshift_ledger::tsa::token_of_response(&body)?;
    let ts = verify_token(&token, &checkpoint_digest(&stamp.checkpoint), trust)?;
    Ok(ts)
}
