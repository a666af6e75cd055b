//! One file being written: a temporary file per job written over the lanes, synced,
//! renamed into place on commit, closed and removed on abort or drop.

use super::*;

/// A lane's connection and open handle of the temporary file, once opened.
pub(super) type Lane = Mutex<Option<(Arc<Conn>, String)>>;

pub(super) struct SftpWriter {
    pub(super) inner: Arc<SftpInner>,
    pub(super) spec: ObjectSpec,
    pub(super) full: String,
    pub(super) temp: String,
    /// Per lane, the connection and the open handle of the temporary file; opened when
    /// first used and reopened (without truncating) after the connection drops.
    pub(super) lanes: Vec<Lane>,
    pub(super) committed: std::sync::atomic::AtomicBool,
}

impl SftpWriter {
    pub(super) fn err(&self, op: &'static str, e: &SftpError) -> ConnectorError {
        sftp_err(&self.inner.uri, op, e)
    }

    pub(super) fn is_committed(&self) -> bool {
        self.committed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The lane a write at `offset` goes through (whole chunks round-robin).
    pub(super) fn lane(&self, offset: u64) -> usize {
        let chunk = self.spec.chunk_size.max(1);
        usize::try_from(offset / chunk).unwrap_or(0) % self.lanes.len()
    }

    /// The live connection and file handle of `lane`, reconnecting and reopening when
    /// needed.
    pub(super) async fn session(&self, lane: usize) -> Result<(Arc<Conn>, String), ConnectorError> {
        if self.is_committed() {
            return Err(ConnectorError::Unavailable(format!(
                "{} is already committed",
                self.spec.path
            )));
        }
        let mut slot = self.lanes[lane].lock().await;
        if let Some((c, h)) = slot.as_ref()
            && !c._ssh.is_closed()
        {
            return Ok((c.clone(), h.clone()));
        }
        let c = self.inner.conn_at(lane).await?;
        let handle = c
            .sftp
            .open(
                self.temp.as_str(),
                OpenFlags::WRITE | OpenFlags::CREATE,
                FileAttributes::default(),
            )
            .await
            .map_err(|e| self.err("reopening a file on", &e))?
            .handle;
        *slot = Some((c.clone(), handle.clone()));
        Ok((c, handle))
    }

    /// Forgets a lane's session after a transient failure, so the next attempt starts
    /// afresh.
    pub(super) async fn reset(&self, lane: usize, e: ConnectorError) -> ConnectorError {
        if e.is_transient() {
            *self.lanes[lane].lock().await = None;
        }
        e
    }

    /// The sessions opened so far (lane, connection, handle).
    pub(super) async fn opened(&self) -> Vec<(usize, Arc<Conn>, String)> {
        let mut out = Vec::new();
        for (lane, slot) in self.lanes.iter().enumerate() {
            if let Some((c, h)) = slot.lock().await.clone() {
                out.push((lane, c, h));
            }
        }
        out
    }

    pub(super) async fn write_once(&self, offset: u64, data: &Bytes) -> Result<(), ConnectorError> {
        let lane = self.lane(offset);
        let (c, handle) = self.session(lane).await?;
        // Every piece of the chunk in flight at once.
        let writes = (0..data.len()).step_by(WRITE_LEN).map(|start| {
            let end = (start + WRITE_LEN).min(data.len());
            c.sftp.write(
                handle.as_str(),
                offset + start as u64,
                data[start..end].to_vec(),
            )
        });
        for r in futures::future::join_all(writes).await {
            if let Err(e) = r {
                let mut err = self.err("writing to", &e);
                if matches!(&e, SftpError::Status(s) if s.status_code == StatusCode::Failure)
                    && let Some(free) = self.free_space(&c).await
                    && free < data.len() as u64
                    && let ConnectorError::Remote { reason, .. } = &mut err
                {
                    // SFTP v3 has no "disk full" status: say what the server's file system
                    // reports instead of a bare "Failure".
                    *reason = format!(
                        "no space left on the server: {free} bytes free for this user, \
                         {} needed ({reason})",
                        data.len()
                    );
                }
                return Err(self.reset(lane, err).await);
            }
        }
        Ok(())
    }

    /// Bytes the server's file system holding the object has free for this user, when the
    /// server says (`statvfs@openssh.com`).
    pub(super) async fn free_space(&self, c: &Conn) -> Option<u64> {
        if !c.statvfs {
            return None;
        }
        let dir = self.temp.rsplit_once('/').map_or("/", |(d, _)| d);
        let dir = if dir.is_empty() { "/" } else { dir };
        let st = c.sftp.statvfs(dir).await.ok()?;
        Some(st.blocks_avail.saturating_mul(st.fragment_size))
    }

    pub(super) async fn sync_once(&self) -> Result<(), ConnectorError> {
        if self.is_committed() {
            return Ok(());
        }
        let mut opened = self.opened().await;
        if opened.is_empty() {
            let (c, h) = self.session(0).await?;
            opened.push((0, c, h));
        }
        for (lane, c, handle) in opened {
            if c.fsync
                && let Err(e) = c.sftp.fsync(handle.as_str()).await
            {
                return Err(self.reset(lane, self.err("syncing", &e)).await);
            }
        }
        Ok(())
    }

    pub(super) async fn publish(&self) -> Result<(), ConnectorError> {
        // Make sure the file exists (an object with no writes yet), then flush and close
        // every lane's handle.
        self.session(0).await?;
        let step = async {
            for (_, c, handle) in self.opened().await {
                if c.fsync {
                    c.sftp
                        .fsync(handle.as_str())
                        .await
                        .map_err(|e| self.err("syncing", &e))?;
                }
                c.sftp
                    .close(handle.as_str())
                    .await
                    .map_err(|e| self.err("closing", &e))?;
            }
            let c = self.inner.conn().await?;
            let sftp = &c.sftp;
            let size = sftp
                .stat(self.temp.as_str())
                .await
                .map_err(|e| self.err("checking", &e))?
                .attrs
                .size
                .unwrap_or(0);
            self.spec.check_size(size)?;
            if !self.inner.overwrite {
                // Plain SFTP v3 rename refuses an existing target: never replace an
                // object this job did not create, even one that appeared since open.
                if let Err(e) = sftp.rename(self.temp.as_str(), self.full.as_str()).await {
                    if sftp.stat(self.full.as_str()).await.is_ok() {
                        return Err(ConnectorError::Exists(self.spec.path.clone()));
                    }
                    return Err(self.err("renaming into place on", &e));
                }
            } else if c.posix_rename {
                let mut data = Vec::new();
                ssh_string(&mut data, &self.temp);
                ssh_string(&mut data, &self.full);
                match sftp.extended("posix-rename@openssh.com", data).await {
                    Ok(russh_sftp::protocol::Packet::Status(s))
                        if s.status_code != StatusCode::Ok =>
                    {
                        return Err(self.err("renaming into place on", &SftpError::Status(s)));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(self.err("renaming into place on", &e)),
                }
            } else {
                // Plain SFTP v3 rename does not overwrite.
                let _ = sftp.remove(self.full.as_str()).await;
                sftp.rename(self.temp.as_str(), self.full.as_str())
                    .await
                    .map_err(|e| self.err("renaming into place on", &e))?;
            }
            Ok(())
        };
        let result = step.await;
        // The handles are closed (or in doubt): start from fresh sessions next time.
        for slot in &self.lanes {
            *slot.lock().await = None;
        }
        if result.is_ok() {
            self.committed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        result
    }

    pub(super) async fn confirm(&self) -> Result<Confirmation, ConnectorError> {
        let c = self.inner.conn().await?;
        let size = match c.sftp.stat(self.full.as_str()).await {
            Ok(a) => a.attrs.size.unwrap_or(0),
            Err(e) => return Err(self.err("confirming", &e)),
        };
        self.spec.check_size(size)?;
        // SFTP gives no content hash: strict mode reads the file back.
        let blake3 = if self.inner.verify == VerifyMode::Size {
            None
        } else {
            Some(hash_remote(&self.inner.uri, &c, &self.full).await?.1)
        };
        Ok(Confirmation {
            size,
            etag: None,
            blake3,
        })
    }
}

impl Drop for SftpWriter {
    /// A writer dropped with handles open (neither committed nor aborted: its job failed
    /// or was set aside) closes them: the connection is shared and lives on, and the
    /// server keeps a descriptor per open handle for as long as it does. The temporary
    /// file stays for a resume (or the gateway's sweep) to deal with.
    fn drop(&mut self) {
        let open: Vec<_> = self
            .lanes
            .iter_mut()
            .filter_map(|l| l.get_mut().take())
            .collect();
        if open.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            for (c, handle) in open {
                let _ = c.sftp.close(handle.as_str()).await;
            }
        });
    }
}

#[async_trait]
impl ObjectWriter for SftpWriter {
    fn holds_open(&self) -> bool {
        // The server's handles of the temporary file, one per lane used.
        true
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ConnectorError> {
        self.spec.check_range(offset, data.len() as u64)?;
        crate::retry::transient(&self.inner.uri, "writing", || {
            self.write_once(offset, &data)
        })
        .await
    }

    async fn sync(&self) -> Result<(), ConnectorError> {
        if self.is_committed() {
            return Ok(());
        }
        crate::retry::transient(&self.inner.uri, "syncing", || self.sync_once()).await
    }

    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        if !self.is_committed() {
            crate::retry::transient(&self.inner.uri, "committing", || self.publish()).await?;
        }
        crate::retry::transient(&self.inner.uri, "confirming", || self.confirm()).await
    }

    async fn abort(&self) -> Result<(), ConnectorError> {
        if self.is_committed() {
            return Ok(());
        }
        for slot in &self.lanes {
            if let Some((c, handle)) = slot.lock().await.take() {
                let _ = c.sftp.close(handle.as_str()).await;
            }
        }
        let c = self.inner.conn().await?;
        match c.sftp.remove(self.temp.as_str()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err("removing", &e)),
        }
    }

    async fn remove(&self) -> Result<(), ConnectorError> {
        if !self.is_committed() {
            return self.abort().await;
        }
        // This writer renamed it into place, without replacing anything unless overwrite
        // was allowed: the object is its own to take back.
        crate::retry::transient(&self.inner.uri, "removing", || async {
            let c = self.inner.conn().await?;
            match c.sftp.remove(self.full.as_str()).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(self.err("removing", &e)),
            }
        })
        .await
    }

    async fn close(&self) -> Result<(), ConnectorError> {
        // The server's handles of the temporary file go; a reopen makes new ones.
        let mut first = Ok(());
        for slot in &self.lanes {
            if let Some((c, handle)) = slot.lock().await.take()
                && let Err(e) = c.sftp.close(handle.as_str()).await
                && first.is_ok()
            {
                first = Err(self.err("closing", &e));
            }
        }
        first
    }
}
