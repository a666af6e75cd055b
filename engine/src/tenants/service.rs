//! The job service's key ([`ServiceKey`]): HMAC tokens a worker presents for a tenant.

use super::*;
use trackshift_crypto::IoError;

/// The job service's key for speaking to its gateway on a tenant's behalf: a worker
/// presents `svc1.<tenant>.<HMAC-SHA256(key, tenant)>` instead of a tenant key (which the
/// gateway only has hashed). Kept in `DATA/service.key` (0600); never logged.
pub struct ServiceKey(aws_lc_rs::hmac::Key);

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey([redacted])")
    }
}

pub(super) const SERVICE_PREFIX: &str = "svc1.";

impl ServiceKey {
    /// Loads `DATA/service.key`, creating it (32 random bytes, 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TenantError> {
        std::fs::create_dir_all(data_dir).map_err(|source| {
            TenantError::Io(IoError {
                action: "creating",
                path: data_dir.to_path_buf(),
                source,
            })
        })?;
        let path = data_dir.join("service.key");
        // Owner-only, checked on the descriptor read (see `read_secret`).
        let raw = match trackshift_crypto::filestore::read_secret_if_exists(&path)? {
            Some(b) => b,
            None => {
                let mut b = zeroize::Zeroizing::new(vec![0u8; 32]);
                aws_lc_rs::rand::fill(&mut b).expect("system random generator");
                trackshift_crypto::filestore::write_atomic(&path, &b, 0o600)?;
                b
            }
        };
        if raw.len() != 32 {
            return Err(TenantError::Invalid {
                path,
                message: "a service key is 32 bytes".into(),
            });
        }
        Ok(Self(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &raw,
        )))
    }

    /// The token a worker presents for `tenant`.
    pub fn token_for(&self, tenant: &str) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.0, tenant.as_bytes());
        format!("{SERVICE_PREFIX}{tenant}.{}", hex::encode(tag.as_ref()))
    }

    /// The tenant a service token speaks for, if it is genuine (constant-time check).
    pub fn verify(&self, token: &str) -> Option<String> {
        let rest = token.strip_prefix(SERVICE_PREFIX)?;
        let (tenant, tag) = rest.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        aws_lc_rs::hmac::verify(&self.0, tenant.as_bytes(), &tag).ok()?;
        Some(tenant.to_string())
    }
}
