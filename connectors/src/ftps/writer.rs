//! One file being written: data connections fed in order, the temporary file renamed into
//! place on commit, removed on abort.

use super::*;
use trackshift_crypto::IoError;

/// Chunks held until the first chunk is stored.
#[derive(Default)]
pub(super) struct Held {
    /// Whether the chunk at offset 0 is on the server.
    pub(super) first_done: bool,
    /// Chunks that arrived before it, by offset.
    pub(super) waiting: BTreeMap<u64, Bytes>,
    /// Why storing held chunks failed.
    pub(super) failed: Option<String>,
}

pub(super) struct FtpsWriter {
    pub(super) inner: Arc<Inner>,
    pub(super) spec: ObjectSpec,
    pub(super) full: String,
    pub(super) temp: String,
    pub(super) held: watch::Sender<Held>,
    pub(super) committed: Mutex<bool>,
}

impl FtpsWriter {
    pub(super) async fn confirm(&self) -> Result<Confirmation, ConnectorError> {
        let size = self.inner.size_of(&self.full).await?.unwrap_or(0);
        self.spec.check_size(size)?;
        let blake3 = if self.inner.verify == VerifyMode::Size {
            None
        } else {
            Some(self.inner.hash_remote(&self.full).await?.1)
        };
        Ok(Confirmation {
            size,
            etag: None,
            blake3,
        })
    }
}

#[async_trait]
impl ObjectWriter for FtpsWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        if offset == 0 {
            // Storing at offset 0 truncates: it goes first, then whatever waited for it.
            self.inner.store_at(&self.temp, 0, &data).await?;
            let mut waiting = BTreeMap::new();
            self.held.send_modify(|h| {
                h.first_done = true;
                waiting = std::mem::take(&mut h.waiting);
            });
            let stores = waiting
                .iter()
                .map(|(off, d)| self.inner.store_at(&self.temp, *off, d));
            let results = futures::future::join_all(stores).await;
            if let Some(e) = results.into_iter().find_map(Result::err) {
                self.held
                    .send_modify(|h| h.failed = Some(format!("storing a held chunk: {e}")));
                return Err(e);
            }
            return Ok(());
        }
        let mut hold = Some(data);
        self.held.send_if_modified(|h| {
            if h.first_done {
                false
            } else {
                h.waiting.insert(offset, hold.take().expect("held once"));
                true
            }
        });
        match hold {
            Some(data) => self.inner.store_at(&self.temp, offset, &data).await,
            // Held in memory; `sync` reports it durable only once it is stored.
            None => Ok(()),
        }
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        // Every STOR ended with the server's 226 (file closed). Held chunks are not stored
        // yet: wait for the first chunk to arrive and take them along.
        let mut rx = self.held.subscribe();
        let waited = tokio::time::timeout(FIRST_CHUNK_WAIT, async {
            rx.wait_for(|h| h.waiting.is_empty() || h.failed.is_some())
                .await
                .map(|h| (h.first_done, h.failed.clone()))
        })
        .await;
        let (first_done, failed) = match waited {
            Ok(Ok(state)) => state,
            Ok(Err(_)) => return Err(ConnectorError::Unavailable("writer closed".into())),
            Err(_) => {
                return Err(ConnectorError::Remote {
                    destination: self.inner.uri.clone(),
                    op: "syncing",
                    transient: true,
                    reason: "the first chunk of the file never arrived; later chunks are \
                             not stored"
                        .into(),
                });
            }
        };
        if let Some(reason) = failed {
            return Err(ConnectorError::Remote {
                destination: self.inner.uri.clone(),
                op: "syncing",
                transient: true,
                reason,
            });
        }
        // Remember that the first chunk is there, so a resumed job never stores at offset 0
        // over acknowledged data.
        if first_done && let Some(p) = &self.spec.state_file {
            tokio::fs::write(p, b"first-chunk-written\n")
                .await
                .map_err(|source| {
                    ConnectorError::Io(IoError {
                        action: "writing",
                        path: p.clone(),
                        source,
                    })
                })?;
        }
        Ok(())
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        let mut committed = self.committed.lock().await;
        if *committed {
            return self.confirm().await;
        }
        if self.spec.size == 0 && !self.held.borrow().first_done {
            self.inner.store_at(&self.temp, 0, &[]).await?;
        }
        let size = self.inner.size_of(&self.temp).await?.unwrap_or(0);
        self.spec.check_size(size)?;
        let attempted = std::sync::atomic::AtomicBool::new(false);
        crate::retry::transient(&self.inner.uri, "renaming into place on", || {
            bounded(&self.inner.uri, "renaming into place on", EXCHANGE, async {
                let mut l = self.inner.lease().await?;
                // FTP has no rename that refuses an existing target (vsftpd's RNTO
                // replaces): look again right before it, on the same connection, so only
                // an object appearing within this one exchange can be replaced.
                if !self.inner.overwrite && self.exists_on(&mut l, &self.full).await? {
                    // A retried rename whose first answer was lost: the temporary file
                    // (a name no other job can use) is gone because it is the final one.
                    let renamed = attempted.load(std::sync::atomic::Ordering::Relaxed)
                        && !self.exists_on(&mut l, &self.temp).await?;
                    l.release();
                    return if renamed {
                        Ok(())
                    } else {
                        Err(ConnectorError::Exists(self.spec.path.clone()))
                    };
                }
                attempted.store(true, std::sync::atomic::Ordering::Relaxed);
                l.ftp()
                    .rename(self.temp.as_str(), self.full.as_str())
                    .await
                    .map_err(|e| self.inner.remote("renaming into place on", &e))?;
                l.release();
                Ok(())
            })
        })
        .await?;
        *committed = true;
        drop(committed);
        self.confirm().await
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        if *self.committed.lock().await {
            return Ok(());
        }
        self.delete(&self.temp).await
    }

    async fn remove(&self) -> Result<(), ConnectorError> {
        let committed = self.committed.lock().await;
        if !*committed {
            drop(committed);
            return self.abort().await;
        }
        // This writer renamed it into place (after refusing an existing object unless
        // overwrite was allowed): the object is its own to take back.
        self.delete(&self.full).await
    }
}

impl FtpsWriter {
    /// Whether `full` exists, asked on the leased connection (`SIZE`).
    pub(super) async fn exists_on(
        &self,
        l: &mut Lease<'_>,
        full: &str,
    ) -> Result<bool, ConnectorError> {
        match l.ftp().size(full).await {
            Ok(_) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(self.inner.remote("checking", &e)),
        }
    }

    /// Deletes `full` (`DELE`); one that is already gone is fine.
    pub(super) async fn delete(&self, full: &str) -> Result<(), ConnectorError> {
        let mut l = self.inner.lease().await?;
        match l.ftp().rm(full).await {
            Ok(()) => {
                l.release();
                Ok(())
            }
            Err(e) if is_missing(&e) => {
                l.release();
                Ok(())
            }
            Err(e) => Err(self.inner.remote("removing", &e)),
        }
    }
}
