//! The pool of FTPS control connections (TLS, explicit), leased one at a time, and the
//! commands the connector and its writers send over them.

use super::*;

/// A control connection borrowed from the pool; returned to it when dropped healthy.
pub(super) struct Lease<'a> {
    pub(super) inner: &'a Inner,
    pub(super) ftp: Option<AsyncRustlsFtpStream>,
    pub(super) _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Lease<'_> {
    pub(super) fn ftp(&mut self) -> &mut AsyncRustlsFtpStream {
        self.ftp.as_mut().expect("leased connection")
    }

    /// Keeps the connection for reuse (call only after a successful exchange).
    pub(super) fn release(mut self) {
        if let Some(f) = self.ftp.take() {
            self.inner.idle.lock().expect("pool lock").push(f);
        }
    }
}

impl Inner {
    pub(super) fn remote(&self, op: &'static str, e: &FtpError) -> ConnectorError {
        ftp_err(&self.uri, op, e)
    }

    pub(super) async fn lease(&self) -> Result<Lease<'_>, ConnectorError> {
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| ConnectorError::Unavailable("connector closed".into()))?;
        // An idle connection may have died with the server: probe it before use.
        let mut ftp = None;
        loop {
            let idle = self.idle.lock().expect("pool lock").pop();
            match idle {
                Some(mut f) => {
                    if matches!(
                        tokio::time::timeout(Duration::from_secs(5), f.noop()).await,
                        Ok(Ok(()))
                    ) {
                        ftp = Some(f);
                        break;
                    }
                }
                None => break,
            }
        }
        let ftp = match ftp {
            Some(f) => f,
            None => bounded(&self.uri, "connecting to", EXCHANGE, self.connect()).await?,
        };
        Ok(Lease {
            inner: self,
            ftp: Some(ftp),
            _permit: permit,
        })
    }

    pub(super) async fn connect(&self) -> Result<AsyncRustlsFtpStream, ConnectorError> {
        let op = "connecting to";
        let plain = tokio::time::timeout(
            Duration::from_secs(10),
            AsyncRustlsFtpStream::connect(self.addr.as_str()),
        )
        .await
        .map_err(|_| ConnectorError::Remote {
            destination: self.uri.clone(),
            op,
            transient: true,
            reason: "timed out".into(),
        })?
        .map_err(|e| self.remote(op, &e))?;
        let connector = AsyncRustlsConnector::from(suppaftp::tokio_rustls::TlsConnector::from(
            self.tls.clone(),
        ));
        let mut ftp = plain
            .into_secure(connector, &self.server_name)
            .await
            .map_err(|e| ConnectorError::Remote {
                destination: self.uri.clone(),
                op: "starting TLS with",
                // A certificate that does not verify will not start verifying.
                transient: false,
                reason: e.to_string(),
            })?;
        ftp.login(self.user.as_str(), self.password.as_str())
            .await
            .map_err(|e| match e {
                FtpError::UnexpectedResponse(ref r) if r.status == Status::NotLoggedIn => {
                    ConnectorError::Remote {
                        destination: self.uri.clone(),
                        op: "logging in to",
                        transient: false,
                        reason: format!("the server refused user {:?}", self.user),
                    }
                }
                e => self.remote("logging in to", &e),
            })?;
        ftp.transfer_type(FileType::Binary)
            .await
            .map_err(|e| self.remote("setting binary mode on", &e))?;
        Ok(ftp)
    }

    pub(super) fn full(&self, path: &str) -> String {
        if self.root == "/" {
            format!("/{path}")
        } else {
            format!("{}/{path}", self.root)
        }
    }

    pub(super) async fn size_of(&self, full: &str) -> Result<Option<u64>, ConnectorError> {
        crate::retry::transient(&self.uri, "checking", || {
            bounded(&self.uri, "checking", EXCHANGE, self.size_of_once(full))
        })
        .await
    }

    pub(super) async fn size_of_once(&self, full: &str) -> Result<Option<u64>, ConnectorError> {
        let mut l = self.lease().await?;
        let r = l.ftp().size(full).await;
        match r {
            Ok(n) => {
                l.release();
                Ok(Some(n as u64))
            }
            Err(e) if is_missing(&e) => {
                l.release();
                Ok(None)
            }
            Err(e) => Err(self.remote("checking", &e)),
        }
    }

    /// Creates directory `dir` and its missing ancestors.
    pub(super) async fn make_dirs(&self, dir: &str) -> Result<(), ConnectorError> {
        let mut l = self.lease().await?;
        let mut path = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            if l.ftp().cwd(path.as_str()).await.is_err()
                && let Err(e) = l.ftp().mkdir(path.as_str()).await
                && l.ftp().cwd(path.as_str()).await.is_err()
            {
                return Err(self.remote("creating a directory on", &e));
            }
        }
        l.release();
        Ok(())
    }

    /// Stores `data` at `offset` of `full` in one transfer (`REST` then `STOR`), retrying
    /// transient failures on a fresh connection.
    pub(super) async fn store_at(
        &self,
        full: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ConnectorError> {
        // Generous: 30 s plus a second per MiB (a floor of 1 MiB/s).
        let limit = EXCHANGE + Duration::from_secs(data.len() as u64 >> 20);
        crate::retry::transient(&self.uri, "writing", || {
            bounded(
                &self.uri,
                "writing",
                limit,
                self.store_at_once(full, offset, data),
            )
        })
        .await
    }

    pub(super) async fn store_at_once(
        &self,
        full: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ConnectorError> {
        let mut l = self.lease().await?;
        let ftp = l.ftp();
        if offset > 0 {
            ftp.resume_transfer(usize::try_from(offset).unwrap_or(usize::MAX))
                .await
                .map_err(|e| self.remote("positioning a write on", &e))?;
        }
        let mut stream = ftp
            .put_with_stream(full)
            .await
            .map_err(|e| self.remote("writing to", &e))?;
        if let Err(e) = stream.write_all(data).await {
            let mut err = self.remote("writing to", &FtpError::ConnectionError(e));
            // Finishing reads the transfer's reply, so the control connection is in step.
            // If it still answers, the server itself ended the upload: vsftpd resets the data
            // connection when it cannot write the file (a full disk or quota), and its reply
            // is not readable through the reset connection.
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.finish()).await;
            if matches!(
                tokio::time::timeout(Duration::from_secs(5), ftp.noop()).await,
                Ok(Ok(()))
            ) {
                if let ConnectorError::Remote { reason, .. } = &mut err {
                    *reason = format!(
                        "the server ended the upload while its control connection stayed up: \
                         it could not store the data (a full disk or quota, for example) \
                         ({reason})"
                    );
                }
                l.release();
            }
            return Err(err);
        }
        stream
            .finish()
            .await
            .map_err(|e| self.remote("writing to", &e))?;
        l.release();
        Ok(())
    }

    pub(super) async fn hash_remote(&self, full: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        crate::retry::transient(&self.uri, "reading back", || {
            bounded(
                &self.uri,
                "reading back",
                Duration::from_secs(3600),
                self.hash_remote_once(full),
            )
        })
        .await
    }

    pub(super) async fn hash_remote_once(
        &self,
        full: &str,
    ) -> Result<(u64, [u8; 32]), ConnectorError> {
        let mut l = self.lease().await?;
        let mut stream = l
            .ftp()
            .retr_as_stream(full)
            .await
            .map_err(|e| self.remote("reading back", &e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| self.remote("reading back", &FtpError::ConnectionError(e)))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        stream
            .finish()
            .await
            .map_err(|e| self.remote("reading back", &e))?;
        l.release();
        Ok((size, *hasher.finalize().as_bytes()))
    }
}
