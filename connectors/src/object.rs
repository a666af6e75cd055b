//! Object stores: `s3://BUCKET/PREFIX` (S3 and compatible servers) and
//! `az://CONTAINER/PREFIX` (Azure Blob Storage), through `object_store`'s multipart API.
//!
//! Each chunk of a job becomes one part (S3 multipart upload part, Azure staged block) with
//! its index taken from its offset, uploaded as soon as it arrives, in any order and
//! concurrently, straight from the pipeline's `Bytes`. Nothing is visible under the final
//! name until [`ObjectWriter::commit`] completes the upload; [`ObjectWriter::abort`] aborts
//! it. The upload id and the ids of uploaded parts are kept in the object's state file (in
//! the gateway's job directory) at every [`ObjectWriter::sync`], so a job resumes after a
//! restart without sending acknowledged chunks again.
//!
//! Without `overwrite=true` a job refuses an existing object at open, and the commit
//! itself is create-only (`If-None-Match: *`, see `create_only.rs`): an object that
//! appeared under the name since open makes it fail with [`ConnectorError::Exists`].
//!
//! Credentials come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ... as `object_store` reads
//! them), never from the URI. Non-secret settings may be given in the URI's query:
//! `s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&allow_http=true`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt as _;
use md5::{Digest as _, Md5};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt as _, PutMode, PutPayload,
    RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell};

use crate::create_only::CreateOnly;
use crate::{
    Confirmation, Connector, ConnectorError, ObjectSpec, ObjectWriter, VerifyMode,
    check_object_path,
};

pub use crate::destination::S3_MIN_PART;
/// The most parts of one S3 multipart upload.
pub const S3_MAX_PARTS: u64 = 10_000;
/// The most blocks of one Azure block blob.
pub const AZURE_MAX_BLOCKS: u64 = 50_000;

/// Which service a connector talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Amazon S3 or an S3-compatible server.
    S3,
    /// Azure Blob Storage (or Azurite).
    Azure,
}

trait Store: ObjectStore + MultipartStore {}
impl<T: ObjectStore + MultipartStore> Store for T {}

/// An S3 or Azure Blob destination.
pub struct ObjectStoreConnector {
    uri: String,
    service: Service,
    store: Arc<dyn Store>,
    prefix: String,
    verify: VerifyMode,
    /// S3 only: whether request bodies are signed (SigV4 payload hash).
    signed_payload: bool,
    /// `overwrite=true`: a job may replace an object it did not create.
    overwrite: bool,
}

impl std::fmt::Debug for ObjectStoreConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the store itself: its configuration holds credentials.
        f.debug_struct("ObjectStoreConnector")
            .field("uri", &self.uri)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: Duration::from_secs(60),
    }
}

/// HTTP client settings, applied as configuration keys (so they combine with the
/// environment's, such as `allow_http`): fail fast on connect, bound each request.
const CLIENT_SETTINGS: &[(&str, &str)] = &[("connect_timeout", "5s"), ("timeout", "300s")];

impl ObjectStoreConnector {
    /// Parses and validates `uri` and builds the client (no request is made: see
    /// [`Connector::check`]). Credentials come from the environment.
    pub fn from_uri(uri: &str, verify: VerifyMode) -> Result<Self, ConnectorError> {
        Self::with_settings(uri, verify, &[])
    }

    /// As [`ObjectStoreConnector::from_uri`], with `settings` (object_store configuration
    /// keys such as `aws_access_key_id` or `azure_storage_account_key`, for example from a
    /// tenant's credentials file) applied over the environment. Values are never logged.
    pub fn with_settings(
        uri: &str,
        verify: VerifyMode,
        extra: &[(String, String)],
    ) -> Result<Self, ConnectorError> {
        Self::build(uri, verify, extra, &crate::Settings::Process)
    }

    /// As [`ObjectStoreConnector::with_settings`], reading `AWS_*` / `AZURE_*` from
    /// `source` (the process environment or a tenant's credentials) instead of the
    /// process environment.
    pub fn build(
        uri: &str,
        verify: VerifyMode,
        extra: &[(String, String)],
        source: &crate::Settings,
    ) -> Result<Self, ConnectorError> {
        Self::from_destination(&crate::Destination::parse(uri)?, verify, extra, source)
    }

    /// As [`ObjectStoreConnector::build`], from a parsed destination: bucket or container
    /// from its authority, prefix from its segments, settings from its options.
    pub fn from_destination(
        dest: &crate::Destination,
        verify: VerifyMode,
        extra: &[(String, String)],
        source: &crate::Settings,
    ) -> Result<Self, ConnectorError> {
        let invalid = |m: String| ConnectorError::InvalidUri(m);
        let service = match dest.scheme() {
            crate::Scheme::S3 => Service::S3,
            crate::Scheme::Azure => Service::Azure,
            other => {
                return Err(invalid(format!(
                    "not an object store scheme: {}",
                    other.as_str()
                )));
            }
        };
        let crate::Authority::Container(bucket) = dest.authority() else {
            return Err(invalid(format!(
                "{}:// needs a bucket or container",
                dest.scheme().as_str()
            )));
        };
        let bucket = bucket.clone();
        let prefix = dest.path();
        let uri = dest.to_string();
        let settings: Vec<(String, String)> = dest
            .options()
            .iter()
            .filter(|(k, _)| k.as_str() != crate::destination::OVERWRITE)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut all: Vec<(String, String)> = CLIENT_SETTINGS
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        all.extend(settings);
        all.extend(extra.iter().cloned());
        let settings = all;
        let build_err = |e: object_store::Error| invalid(scrub(&e.to_string()));
        let overwrite = dest.overwrite();
        let mut signed_payload = false;
        let store: Arc<dyn Store> = match service {
            Service::S3 => {
                use object_store::aws::AmazonS3ConfigKey as K;
                let mut b = object_store::aws::AmazonS3Builder::new();
                let mut payload_choice = false;
                for (k, v) in source.with_prefix("AWS_") {
                    if let Ok(key) = k.parse::<K>() {
                        payload_choice |= key == K::UnsignedPayload;
                        b = b.with_config(key, v);
                    }
                }
                let mut b = b.with_bucket_name(&bucket).with_retry(retry_config());
                for (k, v) in settings {
                    let key = k
                        .to_ascii_lowercase()
                        .parse::<K>()
                        .map_err(|_| invalid(format!("unknown S3 setting {k:?}")))?;
                    payload_choice |= key == K::UnsignedPayload;
                    b = b.with_config(key, v);
                }
                // Over HTTPS, TLS already protects the body: skip SigV4's SHA-256 of every
                // part on both ends, as the AWS SDKs do, unless told otherwise.
                if !payload_choice && is_https_or_default(b.get_config_value(&K::Endpoint)) {
                    b = b.with_config(K::UnsignedPayload, "true");
                }
                signed_payload = !truthy(b.get_config_value(&K::UnsignedPayload));
                refuse_plain_http(
                    b.get_config_value(&K::Endpoint),
                    b.get_config_value(&K::Client(ClientConfigKey::AllowHttp)),
                    "allow_http=true in the URI or AWS_ALLOW_HTTP=true",
                )?;
                if !overwrite {
                    b = b.with_http_connector(CreateOnly::S3);
                }
                Arc::new(b.build().map_err(build_err)?)
            }
            Service::Azure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::new();
                for (k, v) in source.with_prefix("AZURE_") {
                    if let Ok(key) = k.parse() {
                        b = b.with_config(key, v);
                    }
                }
                let mut b = b.with_container_name(&bucket).with_retry(retry_config());
                for (k, v) in settings {
                    let key = match k.to_ascii_lowercase().as_str() {
                        "account" => "azure_storage_account_name".to_string(),
                        other => other.to_string(),
                    }
                    .parse()
                    .map_err(|_| invalid(format!("unknown Azure setting {k:?}")))?;
                    b = b.with_config(key, v);
                }
                use object_store::azure::AzureConfigKey as K;
                if !truthy(b.get_config_value(&K::UseEmulator)) {
                    refuse_plain_http(
                        b.get_config_value(&K::Endpoint),
                        b.get_config_value(&K::Client(ClientConfigKey::AllowHttp)),
                        "allow_http=true in the URI or AZURE_ALLOW_HTTP=true",
                    )?;
                }
                if overwrite {
                    Arc::new(b.build().map_err(build_err)?)
                } else {
                    // The account Shared Key signs for (the emulator's unless set).
                    let account = b.get_config_value(&K::AccountName).unwrap_or_else(|| {
                        if truthy(b.get_config_value(&K::UseEmulator)) {
                            "devstoreaccount1".to_string()
                        } else {
                            String::new()
                        }
                    });
                    let credentials = Arc::new(std::sync::OnceLock::new());
                    let store = b
                        .with_http_connector(CreateOnly::Azure {
                            account,
                            credentials: credentials.clone(),
                        })
                        .build()
                        .map_err(build_err)?;
                    let _ = credentials.set(store.credentials().clone());
                    Arc::new(store)
                }
            }
        };
        // The canonical URI (nothing secret: secrets are refused when parsing).
        Ok(Self {
            uri,
            service,
            store,
            prefix,
            verify,
            signed_payload,
            overwrite,
        })
    }

    /// Whether S3 requests sign their bodies (SigV4's payload hash): by default only over
    /// plain HTTP, where nothing else protects them (`aws_unsigned_payload` decides).
    pub fn signs_payload(&self) -> bool {
        self.signed_payload
    }

    /// The service this connector talks to.
    pub fn service(&self) -> Service {
        self.service
    }

    fn location(&self, path: &str) -> Result<StorePath, ConnectorError> {
        check_object_path(path)?;
        let full = if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.prefix)
        };
        StorePath::parse(&full).map_err(|_| ConnectorError::InvalidPath(path.to_string()))
    }

    /// Smallest chunk size this service accepts for an object of `size` bytes (each chunk is
    /// one part): S3 parts are at least 5 MiB (the last may be smaller) and at most 10,000.
    pub fn min_chunk_size(&self, size: u64) -> u64 {
        let max_parts = match self.service {
            Service::S3 => S3_MAX_PARTS,
            Service::Azure => AZURE_MAX_BLOCKS,
        };
        let by_count = size.div_ceil(max_parts).next_power_of_two();
        match self.service {
            Service::S3 => by_count.max(S3_MIN_PART.next_power_of_two()),
            Service::Azure => by_count,
        }
    }
}

mod remote;
mod writer;

use remote::*;
use writer::*;

#[async_trait]
impl Connector for ObjectStoreConnector {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn min_chunk_size(&self, size: u64) -> u64 {
        ObjectStoreConnector::min_chunk_size(self, size)
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        // Listing one key proves the bucket exists and the credentials are accepted.
        let prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(
                StorePath::parse(&self.prefix)
                    .map_err(|_| ConnectorError::InvalidUri("bad prefix".into()))?,
            )
        };
        let mut list = self.store.list(prefix.as_ref());
        list.try_next()
            .await
            .map_err(|e| remote(&self.uri, "checking", &e))?;
        Ok(())
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>, ConnectorError> {
        match self.store.head(&self.location(path)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote(&self.uri, "checking", &e)),
        }
    }

    async fn read_back(&self, path: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        read_back(&self.uri, self.store.as_ref(), &self.location(path)?).await
    }

    async fn open(
        &self,
        spec: &ObjectSpec,
        resume: bool,
    ) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        let location = self.location(&spec.path)?;
        let chunk = spec.chunk_size.max(1);
        let min = self.min_chunk_size(spec.size);
        if spec.size > chunk && chunk < min {
            return Err(ConnectorError::Unsupported(format!(
                "{}: chunks of {chunk} bytes are too small for an object of {} bytes here; \
                 use a chunk size of at least {min}",
                self.uri, spec.size
            )));
        }
        let state = match (&spec.state_file, resume) {
            (Some(path), true) => load_state(path).await?,
            _ => None,
        };
        // An object this job did not create is not replaced (unless overwrite=true). A
        // resumed job holding upload state is finishing its own upload.
        if !self.overwrite && state.is_none() {
            match self.store.head(&location).await {
                Ok(_) => return Err(ConnectorError::Exists(spec.path.clone())),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote(&self.uri, "checking", &e)),
            }
        }
        let upload = OnceCell::new();
        if let Some(id) = state.as_ref().and_then(|s| s.upload_id.clone()) {
            let _ = upload.set(id);
        }
        Ok(Arc::new(Writer {
            uri: self.uri.clone(),
            service: self.service,
            verify: self.verify,
            store: self.store.clone(),
            location,
            spec: spec.clone(),
            overwrite: self.overwrite,
            chunk,
            upload,
            state: Mutex::new(state.unwrap_or_default()),
        }))
    }
}

#[cfg(test)]
mod tests;
