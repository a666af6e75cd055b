//! Delivery receipts: what one destination confirmed, signed with Ed25519.

use serde::{Deserialize, Serialize};

use crate::canonical::Encoder;
use crate::document::{Signable, SignatureBlock};
use crate::error::{CryptoError, Result};
use crate::hash::Hash32;
use crate::keys::{PublicKeyRecord, PublicKeyring, Purpose};
use crate::manifest::Manifest;
use crate::timestamp::Timestamp;

/// Format tag of version 1 receipts.
pub const RECEIPT_FORMAT: &str = "trackshift.receipt.v1";

/// Outcome of a delivery to one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// The destination confirmed size and hash.
    Confirmed,
    /// The data was written but the destination could not confirm it (non-strict mode).
    Unconfirmed,
    /// The delivery failed; `detail` says why.
    Failed,
}

impl DeliveryStatus {
    /// Lowercase name, as written in JSON and in the signed bytes.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Confirmed => "confirmed",
            DeliveryStatus::Unconfirmed => "unconfirmed",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// What the destination's connector reported when the data was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// Bytes the destination reports holding.
    pub size: u64,
    /// The destination's own tag (S3/Azure ETag, or equivalent), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The manifest root hash recomputed over the data the destination holds, if it was
    /// read back or hashed on the way in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<Hash32>,
}

/// A delivery receipt. The `ledger_proof` section is added after signing and is not covered
/// by the signature (it is checked against the ledger's signed checkpoint instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Always [`RECEIPT_FORMAT`].
    pub format: String,
    /// The job delivered.
    pub job_id: String,
    /// The tenant that owns the job.
    pub tenant: String,
    /// [`Signable::document_hash`] of the signed manifest this receipt confirms.
    pub manifest_hash: Hash32,
    /// The destination (URI, no credentials).
    pub destination: String,
    /// Bytes delivered.
    pub bytes: u64,
    /// What the connector confirmed.
    pub confirmation: Confirmation,
    /// Outcome.
    pub status: DeliveryStatus,
    /// Reason for a failed or unconfirmed delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Correlation id of the job, for matching logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// When the delivery finished.
    pub completed_at: Timestamp,
    /// Ed25519 signature, absent until signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureBlock>,
    /// Reserved for the ledger inclusion proof (C2SP tlog-proof text). Not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_proof: Option<String>,
}

impl Receipt {
    /// Parses a receipt JSON file (signed or not) and checks its structure.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let r: Self = serde_json::from_slice(bytes)
            .map_err(|e| CryptoError::malformed("receipt", e.to_string()))?;
        r.check_structure()?;
        Ok(r)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("receipts always serialise")
    }

    /// Format, non-empty ids, and a detail for failed deliveries.
    pub fn check_structure(&self) -> Result<()> {
        let bad = |reason: &str| Err(CryptoError::malformed("receipt", reason));
        if self.format != RECEIPT_FORMAT {
            return Err(CryptoError::malformed(
                "receipt",
                format!("format {:?}, expected {RECEIPT_FORMAT:?}", self.format),
            ));
        }
        if self.job_id.is_empty() || self.tenant.is_empty() || self.destination.is_empty() {
            return bad("job_id, tenant and destination must not be empty");
        }
        if self.status == DeliveryStatus::Failed && self.detail.is_none() {
            return bad("a failed delivery must say why (detail)");
        }
        Ok(())
    }

    /// Verifies the signature, then (if given) that the receipt confirms `manifest`: the
    /// manifest hash matches, and a confirmed delivery holds exactly the manifest's bytes
    /// and root hash.
    pub fn verify<'k>(
        &self,
        keys: &'k PublicKeyring,
        manifest: Option<&Manifest>,
    ) -> Result<&'k PublicKeyRecord> {
        // `ledger_proof` is not covered by the signature; it is checked against the
        // ledger's signed checkpoint by `trackshift_ledger::TlogProof::verify`.
        let key = self.verify_signature(keys)?;
        if let Some(m) = manifest {
            let h = m.document_hash()?;
            if h != self.manifest_hash {
                return Err(CryptoError::HashMismatch(format!(
                    "receipt is for manifest {}, but the given manifest hashes to {h}",
                    self.manifest_hash
                )));
            }
            if m.job_id != self.job_id || m.tenant != self.tenant {
                return Err(CryptoError::HashMismatch(
                    "receipt and manifest name different jobs or tenants".into(),
                ));
            }
            if self.status == DeliveryStatus::Confirmed {
                if self.bytes != m.total_bytes() {
                    return Err(CryptoError::HashMismatch(format!(
                        "receipt confirms {} bytes, the manifest lists {}",
                        self.bytes,
                        m.total_bytes()
                    )));
                }
                if let Some(h) = self.confirmation.blake3
                    && h != m.root_hash
                {
                    return Err(CryptoError::HashMismatch(format!(
                        "destination reported root hash {h}, the manifest says {}",
                        m.root_hash
                    )));
                }
            }
        }
        Ok(key)
    }
}

impl Signable for Receipt {
    const WHAT: &'static str = "receipt";
    const PURPOSE: Purpose = Purpose::Receipt;
    const FORMAT: &'static str = RECEIPT_FORMAT;

    fn format(&self) -> &str {
        &self.format
    }

    fn encode_body(&self, e: &mut Encoder) {
        e.str(&self.job_id)
            .str(&self.tenant)
            .hash(&self.manifest_hash)
            .str(&self.destination)
            .u64(self.bytes)
            .u64(self.confirmation.size)
            .option(self.confirmation.etag.as_deref(), |e, s| {
                e.str(s);
            })
            .option(self.confirmation.blake3.as_ref(), |e, h| {
                e.hash(h);
            })
            .str(self.status.as_str())
            .option(self.detail.as_deref(), |e, s| {
                e.str(s);
            })
            .option(self.correlation_id.as_deref(), |e, s| {
                e.str(s);
            })
            .u64(self.completed_at.unix());
    }

    fn signature(&self) -> Option<&SignatureBlock> {
        self.signature.as_ref()
    }

    fn set_signature(&mut self, sig: SignatureBlock) {
        self.signature = Some(sig);
    }

    fn validate(&self) -> Result<()> {
        self.check_structure()?;
        if self.status == DeliveryStatus::Confirmed && self.confirmation.size != self.bytes {
            return Err(CryptoError::HashMismatch(format!(
                "confirmed delivery of {} bytes, but the destination reports {}",
                self.bytes, self.confirmation.size
            )));
        }
        Ok(())
    }
}
