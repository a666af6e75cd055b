//! The gateway's key history in its own ledger ([`trackshift_crypto::keyset`]): the public
//! key set (signing keys and the ledger's checkpoint keys) is appended as an entry whenever
//! it differs from the one last recorded, before the documents of the next finish, so a
//! document signed with a new key always comes after the entry that published the key. The
//! last recorded entry and its index are kept in `DATA/key-set.json` (rewritten atomically)
//! and served to auditors with an inclusion proof (`keys fetch`).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use trackshift_crypto::keyset::{decode_key_set, encode_key_set};
use trackshift_crypto::{KeyBackend as _, LiveKeyStore, Timestamp};

use super::GatewayError;
use crate::keybundle::{Consistency, KEY_BUNDLE_FORMAT, KeyBundle};

/// File in the data directory holding the last key-set entry recorded and its index.
pub const KEY_SET_FILE: &str = "key-set.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded {
    /// The entry's index in the ledger.
    index: u64,
    /// The entry, base64.
    entry: String,
}

/// The last key-set entry recorded: its index, the entry, the key file in it.
type Last = Option<(u64, Vec<u8>, Vec<u8>)>;

/// The last key set recorded, and the lock that keeps two finishes from recording one
/// change twice.
#[derive(Debug)]
pub(super) struct KeyHistory {
    path: PathBuf,
    last: tokio::sync::Mutex<Last>,
}

impl KeyHistory {
    /// The history of the gateway in `data_dir`: the last entry recorded, if its file reads
    /// (a missing or unreadable file only means the key set is recorded again).
    pub(super) fn load(data_dir: &Path) -> Self {
        let path = data_dir.join(KEY_SET_FILE);
        let last = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Recorded>(&bytes)
                .ok()
                .and_then(|r| {
                    let entry = base64::engine::general_purpose::STANDARD
                        .decode(&r.entry)
                        .ok()?;
                    let json = decode_key_set(&entry).ok()??.json;
                    Some((r.index, entry, json))
                }) {
                Some(last) => Some(last),
                None => {
                    warn!(file = %path.display(), "unreadable record of the last key set; it is recorded again");
                    None
                }
            },
            Err(_) => None,
        };
        Self {
            path,
            last: tokio::sync::Mutex::new(last),
        }
    }

    /// Records the key set in force in `ledger` unless it is the one recorded last;
    /// returns the index and bytes of the entry that records it.
    pub(super) async fn ensure(
        &self,
        keys: &LiveKeyStore,
        ledger: &trackshift_ledger::Log,
    ) -> Result<(u64, Vec<u8>), GatewayError> {
        let mut ring = keys.public_keyring()?;
        ring.ledger = Some(ledger.public_keys());
        let json = ring.to_json().into_bytes();
        let mut last = self.last.lock().await;
        if let Some((index, entry, recorded)) = &*last
            && *recorded == json
        {
            return Ok((*index, entry.clone()));
        }
        let entry = encode_key_set(&json, Timestamp::now());
        let index = ledger.append(vec![entry.clone()]).await?.first_index;
        let record = Recorded {
            index,
            entry: base64::engine::general_purpose::STANDARD.encode(&entry),
        };
        let text = serde_json::to_vec_pretty(&record).expect("record serialises");
        trackshift_crypto::filestore::write_atomic(&self.path, &text, 0o644)?;
        info!(
            index,
            keys = ring.keys.len(),
            "key set recorded in the ledger"
        );
        *last = Some((index, entry.clone(), json));
        Ok((index, entry))
    }
}

impl KeyHistory {
    /// The bundle auditors fetch: the key set in force (recorded first if it changed) with
    /// its inclusion proof in the latest checkpoint and, for `since` (a tree size the
    /// auditor saw, 1 to the latest), the consistency proof from there.
    pub(super) async fn bundle(
        &self,
        keys: &LiveKeyStore,
        ledger: &trackshift_ledger::Log,
        since: Option<u64>,
    ) -> Result<KeyBundle, GatewayError> {
        let (index, entry) = self.ensure(keys, ledger).await?;
        let checkpoint = ledger.checkpoint();
        let proof = ledger.tlog_proof_in(index, &checkpoint).await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let consistency = match since {
            Some(old) if (1..=checkpoint.size).contains(&old) => Some(Consistency {
                old_size: old,
                new_size: checkpoint.size,
                proof: ledger
                    .consistency_proof(old, checkpoint.size)
                    .await?
                    .iter()
                    .map(|h| b64.encode(h))
                    .collect(),
            }),
            _ => None,
        };
        Ok(KeyBundle {
            format: KEY_BUNDLE_FORMAT.into(),
            entry: b64.encode(&entry),
            proof: proof.to_text(),
            consistency,
        })
    }
}

/// Largest request a key set client sends (`{"since": N}`).
const MAX_KEYS_REQUEST: usize = 256;

/// Serves one connection that chose [`crate::transport::KEYS_ALPN`]: reads the request on
/// the first bidirectional stream (`{}` or `{"since": N}`), answers with the key bundle
/// and waits for the client to close; all of it within the gateway's authentication
/// timeout (it holds a place among the unauthenticated connections meanwhile).
pub(super) async fn serve_keys(
    shared: &super::Shared,
    conn: quinn::Connection,
) -> Result<(), GatewayError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        #[serde(default)]
        since: Option<u64>,
    }
    let served = tokio::time::timeout(shared.auth_timeout, async {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| GatewayError::stream("key set request")(e.into()))?;
        let request = recv
            .read_to_end(MAX_KEYS_REQUEST)
            .await
            .map_err(|e| GatewayError::stream("key set request")(e.into()))?;
        let request: Request = serde_json::from_slice(&request).map_err(|e| {
            crate::protocol::ProtocolError::Malformed(format!("key set request: {e}"))
        })?;
        let bundle = shared
            .key_history
            .bundle(&shared.keys, &shared.ledger, request.since)
            .await?;
        let body = serde_json::to_vec(&bundle).expect("bundle serialises");
        send.write_all(&body)
            .await
            .map_err(|e| GatewayError::stream("key bundle")(e.into()))?;
        let _ = send.finish();
        let _ = conn.closed().await;
        Ok::<(), GatewayError>(())
    })
    .await;
    match served {
        Ok(r) => r,
        Err(_) => {
            conn.close(0u32.into(), b"key set request timed out");
            Ok(())
        }
    }
}
