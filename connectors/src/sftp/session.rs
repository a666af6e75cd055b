//! Reaching the server: the destination parsed, the host key checked, the SSH sessions
//! and their SFTP channels (lanes) made and remade.

use super::*;

impl SftpInner {
    pub(super) fn parse(
        dest: &crate::Destination,
        verify: VerifyMode,
        settings: &crate::Settings,
    ) -> Result<Self, ConnectorError> {
        if dest.scheme() != crate::Scheme::Sftp {
            return Err(ConnectorError::InvalidUri(format!(
                "not an sftp URI: {}",
                dest.scheme().as_str()
            )));
        }
        let invalid = |m: String| ConnectorError::InvalidUri(m);
        let ServerUri {
            user,
            host,
            port,
            dir: root,
            query,
        } = crate::ServerUri::of(dest)?;
        let (mut key, mut known_hosts, mut fingerprint) = (None, None, None);
        let mut lanes = LANES;
        for (k, v) in query {
            match k.as_str() {
                "key" => key = Some(PathBuf::from(v)),
                "known_hosts" => known_hosts = Some(PathBuf::from(v)),
                "fingerprint" => fingerprint = Some(v),
                "connections" => {
                    lanes = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or_else(|| invalid("connections must be 1 to 16".into()))?;
                }
                other => {
                    return Err(invalid(format!(
                        "unknown setting {other:?} (allowed: key, known_hosts, fingerprint, connections)"
                    )));
                }
            }
        }
        let key = key
            .or_else(|| settings.var("TRACKSHIFT_SFTP_KEY").map(PathBuf::from))
            .ok_or_else(|| {
                invalid("no SSH key: set TRACKSHIFT_SFTP_KEY or key=PATH in the URI".into())
            })?;
        let trust = match (fingerprint, known_hosts) {
            (Some(fp), None) => {
                if !fp.starts_with("SHA256:") {
                    return Err(invalid("fingerprint must be SHA256:BASE64".into()));
                }
                HostTrust::Fingerprint(fp)
            }
            (None, Some(path)) => HostTrust::KnownHosts(path),
            (Some(_), Some(_)) => {
                return Err(invalid("give known_hosts or fingerprint, not both".into()));
            }
            (None, None) => match settings.var("TRACKSHIFT_SFTP_KNOWN_HOSTS") {
                Some(p) => HostTrust::KnownHosts(PathBuf::from(p)),
                None => {
                    return Err(invalid(
                        "the host key must be pinned: known_hosts=PATH or fingerprint=SHA256:... \
                         in the URI, or TRACKSHIFT_SFTP_KNOWN_HOSTS"
                            .into(),
                    ));
                }
            },
        };
        Ok(Self {
            uri: dest.to_string(),
            overwrite: dest.overwrite(),
            host,
            port,
            user,
            root: format!("/{root}"),
            key,
            trust,
            verify,
            conns: (0..lanes).map(|_| Mutex::new(None)).collect(),
        })
    }

    pub(super) fn remote(
        &self,
        op: &'static str,
        reason: String,
        transient: bool,
    ) -> ConnectorError {
        ConnectorError::Remote {
            destination: self.uri.clone(),
            op,
            transient,
            reason,
        }
    }

    /// The first shared connection, (re)established when missing or closed.
    pub(super) async fn conn(&self) -> Result<Arc<Conn>, ConnectorError> {
        self.conn_at(0).await
    }

    /// Shared connection `lane`, (re)established when missing or closed.
    pub(super) async fn conn_at(&self, lane: usize) -> Result<Arc<Conn>, ConnectorError> {
        let mut slot = self.conns[lane % self.conns.len()].lock().await;
        if let Some(c) = slot.as_ref()
            && !c._ssh.is_closed()
        {
            return Ok(c.clone());
        }
        let c = Arc::new(self.connect().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    pub(super) async fn connect(&self) -> Result<Conn, ConnectorError> {
        // Owner-only, checked on the descriptor read (see `read_secret`), as ssh does.
        let pem = trackshift_crypto::filestore::read_secret(&self.key)?;
        let pem = std::str::from_utf8(&pem).map_err(|_| {
            ConnectorError::Unavailable(format!("SSH key {}: not UTF-8", self.key.display()))
        })?;
        let key = russh::keys::decode_secret_key(pem, None).map_err(|e| {
            ConnectorError::Unavailable(format!("SSH key {}: {e}", self.key.display()))
        })?;
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(120)),
            keepalive_interval: Some(Duration::from_secs(15)),
            nodelay: true,
            // Large windows and packets: one connection carries whole files at line rate.
            window_size: 64 << 20,
            maximum_packet_size: 256 << 10,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(CIPHERS),
                ..Default::default()
            },
            ..Default::default()
        });
        let refused = Arc::new(std::sync::Mutex::new(None));
        let handler = Client {
            host: self.host.clone(),
            port: self.port,
            trust: self.trust.clone(),
            refused: refused.clone(),
        };
        let addr = (self.host.as_str(), self.port);
        let mut ssh = tokio::time::timeout(
            Duration::from_secs(10),
            client::connect(config, addr, handler),
        )
        .await
        .map_err(|_| self.remote("connecting to", "timed out".into(), true))?
        .map_err(|e| match refused.lock().expect("refused lock").take() {
            Some(why) => self.remote("connecting to", why, false),
            None => self.remote("connecting to", e.to_string(), true),
        })?;
        let hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
        let auth = ssh
            .authenticate_publickey(
                self.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(|e| self.remote("authenticating to", e.to_string(), true))?;
        if !auth.success() {
            return Err(self.remote(
                "authenticating to",
                format!("the server refused the key for user {:?}", self.user),
                false,
            ));
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| self.remote("opening a session on", e.to_string(), true))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| self.remote("starting SFTP on", e.to_string(), true))?;
        let sftp = RawSftpSession::new(channel.into_stream());
        sftp.set_timeout(120);
        let version = sftp
            .init()
            .await
            .map_err(|e| sftp_err(&self.uri, "starting SFTP on", &e))?;
        Ok(Conn {
            _ssh: ssh,
            sftp,
            fsync: version.extensions.contains_key("fsync@openssh.com"),
            posix_rename: version.extensions.contains_key("posix-rename@openssh.com"),
            statvfs: version.extensions.contains_key("statvfs@openssh.com"),
        })
    }

    pub(super) fn full(&self, path: &str) -> String {
        if self.root == "/" {
            format!("/{path}")
        } else {
            format!("{}/{path}", self.root)
        }
    }

    pub(super) async fn size_of(
        &self,
        c: &Conn,
        full: &str,
    ) -> Result<Option<u64>, ConnectorError> {
        match c.sftp.stat(full).await {
            Ok(a) => Ok(a.attrs.size),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(sftp_err(&self.uri, "checking", &e)),
        }
    }

    /// Creates the directories above `full` that are missing (the destination directory
    /// included, as object stores create prefixes).
    pub(super) async fn make_parents(&self, c: &Conn, full: &str) -> Result<(), ConnectorError> {
        match full.rsplit_once('/') {
            Some((parent, _)) => self.make_dirs(c, parent).await,
            None => Ok(()),
        }
    }

    /// Creates directory `path` and its missing ancestors.
    pub(super) async fn make_dirs(&self, c: &Conn, path: &str) -> Result<(), ConnectorError> {
        let mut missing = Vec::new();
        let mut dir = path.to_string();
        while !dir.is_empty() {
            match c.sftp.stat(dir.as_str()).await {
                Ok(_) => break,
                Err(e) if is_not_found(&e) => {
                    missing.push(dir.clone());
                    dir = dir
                        .rsplit_once('/')
                        .map_or(String::new(), |(p, _)| p.into());
                }
                Err(e) => return Err(sftp_err(&self.uri, "checking", &e)),
            }
        }
        for d in missing.into_iter().rev() {
            if let Err(e) = c.sftp.mkdir(d.as_str(), FileAttributes::default()).await
                && c.sftp.stat(d.as_str()).await.is_err()
            {
                return Err(sftp_err(&self.uri, "creating a directory on", &e));
            }
        }
        Ok(())
    }
}
