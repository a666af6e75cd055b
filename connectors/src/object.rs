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

/// The smallest part S3 accepts (all parts but the last).
pub const S3_MIN_PART: u64 = 5 << 20;
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

/// Removes anything that looks like a signed query string from a message.
fn scrub(message: &str) -> String {
    message
        .split_whitespace()
        .map(|w| {
            if w.contains("sig=") || w.contains("X-Amz-Signature") || w.contains("X-Amz-Credential")
            {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether requests go over HTTPS: an `https://` endpoint, or none (the service's own).
fn is_https_or_default(endpoint: Option<String>) -> bool {
    endpoint.is_none_or(|e| e.to_ascii_lowercase().starts_with("https://"))
}

/// A configuration flag as object_store reads one (`true`, `1`, `yes`, `on`, `y`).
fn truthy(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "true" | "on" | "yes" | "y"
        )
    })
}

/// Refuses a plain-HTTP endpoint unless plain HTTP was allowed: the HTTP client would
/// refuse every request later with only "builder error" to say why.
fn refuse_plain_http(
    endpoint: Option<String>,
    allow_http: Option<String>,
    how: &str,
) -> Result<(), ConnectorError> {
    match endpoint {
        Some(e) if e.to_ascii_lowercase().starts_with("http://") && !truthy(allow_http) => {
            Err(ConnectorError::InvalidUri(format!(
                "the endpoint {e} is plain HTTP, which is refused unless allowed ({how})"
            )))
        }
        _ => Ok(()),
    }
}

/// What object_store's HTTP layer says about a failure that carries no status code:
/// `Some(false)` for a request that failed for no network reason (one that could not be
/// built, say; object_store does not retry those), `Some(true)` for the rest (connect,
/// request, timeout, interrupted, and a body that broke off mid-read, which reqwest calls
/// a decoding error), `None` if the error is not an HTTP one.
fn http_transient(e: &object_store::Error) -> Option<bool> {
    use object_store::client::{HttpError, HttpErrorKind as K};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(http) = err.downcast_ref::<HttpError>() {
            return Some(!matches!(http.kind(), K::Unknown));
        }
        source = err.source();
    }
    None
}

/// Maps an object_store error to a connector error naming the destination and operation.
fn remote(uri: &str, op: &'static str, e: &object_store::Error) -> ConnectorError {
    use object_store::Error as E;
    let transient = match e {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. }
        | E::InvalidPath { .. } => false,
        // Anything else went through object_store's retries (timeouts, 5xx, throttling,
        // connection resets) and may succeed later, unless the server refused it (4xx) or
        // the request never left (object_store does not retry those either).
        _ => !is_permanent_http(&e.to_string()) && http_transient(e) != Some(false),
    };
    ConnectorError::Remote {
        destination: uri.to_string(),
        op,
        transient,
        reason: scrub(&e.to_string()),
    }
}

/// Client errors that retrying cannot fix (bad credentials, missing bucket, refused): any
/// 4xx answer but 408 (timeout) and 429 (throttling).
fn is_permanent_http(message: &str) -> bool {
    let status = message
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok());
    matches!(status, Some(code) if (400..500).contains(&code) && code != 408 && code != 429)
}

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

/// What a writer keeps in its state file to resume after a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct UploadState {
    upload_id: Option<String>,
    /// Part index → (part id, MD5 of the part, hex).
    parts: BTreeMap<u64, (String, String)>,
    /// Set once the upload is complete.
    committed: Option<Committed>,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Committed {
    size: u64,
    etag: Option<String>,
    blake3: Option<String>,
}

async fn load_state(path: &std::path::Path) -> Result<Option<UploadState>, ConnectorError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ConnectorError::Unavailable(format!("upload state {}: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConnectorError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

async fn save_state(path: PathBuf, state: &UploadState) -> Result<(), ConnectorError> {
    let json = serde_json::to_vec(state).expect("state serialises");
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let io = |action, p: &std::path::Path| {
            let p = p.to_path_buf();
            move |source| ConnectorError::Io {
                action,
                path: p,
                source,
            }
        };
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&json).map_err(io("writing", &tmp))?;
        f.sync_data().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", dir))?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Reads an object back: its size and BLAKE3 hash.
async fn read_back(
    uri: &str,
    store: &dyn Store,
    location: &StorePath,
) -> Result<(u64, [u8; 32]), ConnectorError> {
    let got = store
        .get(location)
        .await
        .map_err(|e| remote(uri, "reading back", &e))?;
    let mut stream = got.into_stream();
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(bytes) = stream
        .try_next()
        .await
        .map_err(|e| remote(uri, "reading back", &e))?
    {
        size += bytes.len() as u64;
        hasher.update(&bytes);
    }
    Ok((size, *hasher.finalize().as_bytes()))
}

struct Writer {
    uri: String,
    service: Service,
    verify: VerifyMode,
    store: Arc<dyn Store>,
    location: StorePath,
    spec: ObjectSpec,
    /// `overwrite=true`: commits may replace an existing object.
    overwrite: bool,
    chunk: u64,
    upload: OnceCell<String>,
    state: Mutex<UploadState>,
}

impl Writer {
    fn parts(&self) -> u64 {
        self.spec.size.div_ceil(self.chunk).max(1)
    }

    async fn upload_id(&self) -> Result<&String, ConnectorError> {
        self.upload
            .get_or_try_init(|| async {
                let id = self
                    .store
                    .create_multipart(&self.location)
                    .await
                    .map_err(|e| remote(&self.uri, "starting an upload to", &e))?;
                let mut st = self.state.lock().await;
                st.upload_id = Some(id.clone());
                st.dirty = true;
                Ok(id)
            })
            .await
    }

    /// The S3 ETag of a multipart upload: MD5 of the parts' MD5s, then "-" and the count.
    /// `None` when a part's MD5 is unknown (uploaded without verification, then resumed
    /// strictly).
    fn expected_etag(st: &UploadState) -> Option<String> {
        multipart_etag(
            st.parts.values().map(|(_, part_md5)| part_md5.as_str()),
            st.parts.len(),
        )
    }

    /// A create-only commit refused because an object exists under the name is
    /// [`ConnectorError::Exists`]; anything else a remote error for `op`.
    fn refused_or(&self, e: object_store::Error, op: &'static str) -> ConnectorError {
        match e {
            object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
                if !self.overwrite =>
            {
                ConnectorError::Exists(self.spec.path.clone())
            }
            e => remote(&self.uri, op, &e),
        }
    }

    /// The S3 ETag an upload of these parts gets: MD5 of the parts' ETags (each the MD5
    /// of its part), then "-" and the count. `None` when a part's ETag is not an MD5.
    fn parts_etag(st: &UploadState) -> Option<String> {
        multipart_etag(
            st.parts
                .values()
                .map(|(content_id, _)| content_id.trim_matches('"')),
            st.parts.len(),
        )
    }

    /// After the service said it no longer knows this upload: succeeds only if the object
    /// under the name is the one this upload made (S3: its ETag is the one these parts
    /// give; Azure never forgets uploads this way). Anything else is not this job's.
    async fn completed_before(&self) -> Result<(), ConnectorError> {
        if self.overwrite {
            return Ok(());
        }
        let want = if self.service == Service::S3 {
            Self::parts_etag(&*self.state.lock().await)
        } else {
            None
        };
        let got = match self.store.head(&self.location).await {
            Ok(meta) => meta.e_tag.map(|e| e.trim_matches('"').to_string()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(remote(&self.uri, "confirming", &e)),
        };
        match (want, got) {
            (Some(want), Some(got)) if want == got => Ok(()),
            (_, None) => Err(ConnectorError::Unavailable(format!(
                "{}: the upload is gone and nothing is under the final name",
                self.spec.path
            ))),
            _ => Err(ConnectorError::Exists(self.spec.path.clone())),
        }
    }

    async fn persist(&self) -> Result<(), ConnectorError> {
        let Some(path) = &self.spec.state_file else {
            return Ok(());
        };
        let mut st = self.state.lock().await;
        if !st.dirty {
            return Ok(());
        }
        save_state(path.clone(), &st).await?;
        st.dirty = false;
        Ok(())
    }

    async fn confirm(
        &self,
        etag: Option<String>,
        md5_etag: Option<String>,
    ) -> Result<Confirmation, ConnectorError> {
        let meta = self
            .store
            .head(&self.location)
            .await
            .map_err(|e| remote(&self.uri, "confirming", &e))?;
        let fail = |e: ConnectorError| async {
            // A strict failure must not leave a wrong object under the final name.
            let _ = self.store.delete(&self.location).await;
            Err(e)
        };
        if let Err(e) = self.spec.check_size(meta.size) {
            return fail(e).await;
        }
        let etag = etag.or(meta.e_tag).map(|e| e.trim_matches('"').to_string());
        if self.verify != VerifyMode::Size
            && let (Some(want), Some(got)) = (&md5_etag, &etag)
            && want != got
        {
            return fail(ConnectorError::HashMismatch {
                path: self.spec.path.clone(),
                what: format!("ETag {got}, the parts sent give {want}"),
            })
            .await;
        }
        // Strict without the service's own hash of what was sent reads the object back.
        let reread = self.verify == VerifyMode::Full
            || (self.verify == VerifyMode::Strict
                && (self.service == Service::Azure || md5_etag.is_none()));
        let blake3 = if reread {
            Some(
                read_back(&self.uri, self.store.as_ref(), &self.location)
                    .await?
                    .1,
            )
        } else {
            None
        };
        Ok(Confirmation {
            size: meta.size,
            etag,
            blake3,
        })
    }
}

#[async_trait]
impl ObjectWriter for Writer {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        if self.spec.size == 0 {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        if !offset.is_multiple_of(self.chunk)
            || (data.len() as u64 != self.chunk && end != self.spec.size)
        {
            return Err(ConnectorError::Unsupported(format!(
                "{}: writes must be whole chunks of {} bytes (got {} bytes at {offset})",
                self.spec.path,
                self.chunk,
                data.len()
            )));
        }
        let index = offset / self.chunk;
        // The parts' MD5s only serve the strict ETag check: a size-checked upload skips them
        // (MD5 of every byte was a tenth of the gateway's CPU on an S3 transfer).
        let md5 = if self.service == Service::S3 && self.verify != VerifyMode::Size {
            let data = data.clone();
            tokio::task::spawn_blocking(move || hex::encode(Md5::digest(&data)))
                .await
                .ok()
        } else {
            None
        };
        let id = self.upload_id().await?.clone();
        let part = self
            .store
            .put_part(
                &self.location,
                &id,
                usize::try_from(index).unwrap_or(usize::MAX),
                PutPayload::from(data),
            )
            .await
            .map_err(|e| remote(&self.uri, "uploading a part to", &e))?;
        let mut st = self.state.lock().await;
        st.parts
            .insert(index, (part.content_id, md5.unwrap_or_default()));
        st.dirty = true;
        Ok(())
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        // Parts are durable at the service once put_part returned; what must survive a
        // restart is the list of them.
        self.persist().await
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        if let Some(c) = self.state.lock().await.committed.clone() {
            return Ok(Confirmation {
                size: c.size,
                etag: c.etag,
                blake3: c.blake3.and_then(|h| hex::decode(h).ok()?.try_into().ok()),
            });
        }
        let (etag, md5_etag) = if self.spec.size == 0 {
            let mode = if self.overwrite {
                PutMode::Overwrite
            } else {
                PutMode::Create
            };
            let r = self
                .store
                .put_opts(&self.location, PutPayload::default(), mode.into())
                .await
                .map_err(|e| self.refused_or(e, "writing"))?;
            (r.e_tag, None)
        } else {
            let id = self.upload_id().await?.clone();
            let (parts, md5_etag) = {
                let st = self.state.lock().await;
                let missing: Vec<u64> = (0..self.parts())
                    .filter(|i| !st.parts.contains_key(i))
                    .collect();
                if !missing.is_empty() {
                    return Err(ConnectorError::Unavailable(format!(
                        "{}: {} of {} parts were never uploaded (first: {})",
                        self.spec.path,
                        missing.len(),
                        self.parts(),
                        missing[0]
                    )));
                }
                let parts: Vec<PartId> = st
                    .parts
                    .values()
                    .map(|(content_id, _)| PartId {
                        content_id: content_id.clone(),
                    })
                    .collect();
                let md5 = (self.service == Service::S3)
                    .then(|| Self::expected_etag(&st))
                    .flatten();
                (parts, md5)
            };
            // Without overwrite the completion is create-only (see `create_only`): an
            // object that appeared under the name since open makes it fail, not replace.
            match self
                .store
                .complete_multipart(&self.location, &id, parts)
                .await
            {
                Ok(r) => (r.e_tag, md5_etag),
                // The service no longer knows the upload: completed before (a retried
                // commit after a crash) if what is there is made of this upload's parts.
                Err(object_store::Error::NotFound { .. }) => {
                    self.completed_before().await?;
                    (None, md5_etag)
                }
                Err(e) => {
                    let mut e = self.refused_or(e, "completing an upload to");
                    // Azure drops a blob's uncommitted blocks when another upload to the
                    // name commits: this commit then fails as an invalid block list.
                    if !self.overwrite
                        && !e.is_transient()
                        && !matches!(e, ConnectorError::Exists(_))
                        && self.store.head(&self.location).await.is_ok()
                    {
                        e = ConnectorError::Exists(self.spec.path.clone());
                    }
                    if matches!(e, ConnectorError::Exists(_)) {
                        // Free the parts (S3); the other object stays.
                        let _ = self.store.abort_multipart(&self.location, &id).await;
                    }
                    return Err(e);
                }
            }
        };
        let conf = self.confirm(etag, md5_etag).await?;
        {
            let mut st = self.state.lock().await;
            st.committed = Some(Committed {
                size: conf.size,
                etag: conf.etag.clone(),
                blake3: conf.blake3.map(hex::encode),
            });
            st.dirty = true;
        }
        self.persist().await?;
        Ok(conf)
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        if let Some(id) = self.upload.get() {
            // Azure has nothing to abort (uncommitted blocks expire); S3 frees the parts
            // (an upload already aborted is fine).
            match self.store.abort_multipart(&self.location, id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote(&self.uri, "aborting an upload to", &e)),
            }
        }
        if let Some(path) = &self.spec.state_file {
            let _ = tokio::fs::remove_file(path).await;
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), ConnectorError> {
        if self.state.lock().await.committed.is_none() {
            return self.abort().await;
        }
        // This writer completed the upload (it refused to start over an existing object
        // unless overwrite was allowed): the object is its own to take back.
        match self.store.delete(&self.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote(&self.uri, "removing", &e)),
        }
    }
}

/// An S3 multipart ETag from its parts' MD5s (hex): MD5 of the digests, "-", the count.
/// `None` when one is not a hex MD5.
fn multipart_etag<'a>(md5s: impl Iterator<Item = &'a str>, parts: usize) -> Option<String> {
    let mut md5 = Md5::new();
    for part in md5s {
        let digest = hex::decode(part).ok()?;
        if digest.len() != 16 {
            return None;
        }
        md5.update(digest);
    }
    Some(format!("{}-{parts}", hex::encode(md5.finalize())))
}

#[cfg(test)]
mod tests;
