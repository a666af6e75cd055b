//! One object being written: a multipart upload (S3) or block list (Azure), its state
//! file for resuming after a restart, the commit and its read-back.

use super::*;
use trackshift_crypto::IoError;

/// What a writer keeps in its state file to resume after a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct UploadState {
    pub(super) upload_id: Option<String>,
    /// Part index → (part id, MD5 of the part, hex).
    pub(super) parts: BTreeMap<u64, (String, String)>,
    /// Set once the upload is complete.
    pub(super) committed: Option<Committed>,
    #[serde(skip)]
    pub(super) dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Committed {
    pub(super) size: u64,
    pub(super) etag: Option<String>,
    pub(super) blake3: Option<String>,
}

pub(super) async fn load_state(
    path: &std::path::Path,
) -> Result<Option<UploadState>, ConnectorError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ConnectorError::Unavailable(format!("upload state {}: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConnectorError::Io(IoError {
            action: "reading",
            path: path.to_path_buf(),
            source: e,
        })),
    }
}

pub(super) async fn save_state(path: PathBuf, state: &UploadState) -> Result<(), ConnectorError> {
    let json = serde_json::to_vec(state).expect("state serialises");
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let io = |action, p: &std::path::Path| {
            let p = p.to_path_buf();
            move |source| {
                ConnectorError::Io(IoError {
                    action,
                    path: p,
                    source,
                })
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
pub(super) async fn read_back(
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

pub(super) struct Writer {
    pub(super) uri: String,
    pub(super) service: Service,
    pub(super) verify: VerifyMode,
    pub(super) store: Arc<dyn Store>,
    pub(super) location: StorePath,
    pub(super) spec: ObjectSpec,
    /// `overwrite=true`: commits may replace an existing object.
    pub(super) overwrite: bool,
    pub(super) chunk: u64,
    pub(super) upload: OnceCell<String>,
    pub(super) state: Mutex<UploadState>,
}

impl Writer {
    pub(super) fn parts(&self) -> u64 {
        self.spec.size.div_ceil(self.chunk).max(1)
    }

    pub(super) async fn upload_id(&self) -> Result<&String, ConnectorError> {
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
    pub(super) fn expected_etag(st: &UploadState) -> Option<String> {
        multipart_etag(
            st.parts.values().map(|(_, part_md5)| part_md5.as_str()),
            st.parts.len(),
        )
    }

    /// A create-only commit refused because an object exists under the name is
    /// [`ConnectorError::Exists`]; anything else a remote error for `op`.
    pub(super) fn refused_or(&self, e: object_store::Error, op: &'static str) -> ConnectorError {
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
    pub(super) fn parts_etag(st: &UploadState) -> Option<String> {
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
    pub(super) async fn completed_before(&self) -> Result<(), ConnectorError> {
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

    pub(super) async fn persist(&self) -> Result<(), ConnectorError> {
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

    pub(super) async fn confirm(
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
pub(super) fn multipart_etag<'a>(
    md5s: impl Iterator<Item = &'a str>,
    parts: usize,
) -> Option<String> {
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
