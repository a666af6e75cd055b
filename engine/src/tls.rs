//! TLS 1.3 identities and trust for the QUIC transport (rustls with the aws-lc-rs provider).
//!
//! - Key exchange: the post-quantum hybrid X25519MLKEM768 is offered first; with `pq_only`
//!   it is the only group, so a peer that cannot do it fails the handshake.
//! - The gateway's identity lives in `DIR` (`ca.pem`, `cert.pem`, `key.pem`). If `cert.pem`
//!   and `key.pem` are absent on first start a private CA and a leaf certificate signed by
//!   it are generated (the CA key is discarded after signing; `key.pem` is written 0600).
//!   An operator may instead place their own `cert.pem` (chain, leaf first) and `key.pem`.
//! - Senders pin the gateway: either the SHA-256 fingerprint of its leaf certificate or a
//!   CA file. There is no "accept any certificate" mode.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use trackshift_crypto::IoError;

use rustls::client::danger::ServerCertVerified;
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use trackshift_net::verify::{CertPolicy, PolicyVerifier, Versions};

/// Names the generated gateway certificate is valid for.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["trackshift-gateway", "localhost", "127.0.0.1", "::1"];

/// Name senders expect by default.
pub const DEFAULT_SERVER_NAME: &str = "trackshift-gateway";

/// TLS set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file-system operation failed.
    #[error(transparent)]
    Io(#[from] trackshift_crypto::IoError),
    /// A certificate or key file could not be parsed.
    #[error("{path}: {reason}")]
    BadFile {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("generating the gateway certificate: {0}")]
    Generate(String),
    /// A pinned fingerprint is not 64 hex digits.
    #[error(
        "invalid certificate fingerprint (expected 64 hex digits, optionally with ':' separators)"
    )]
    BadFingerprint,
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The private key file is open to other users, or not a readable regular file.
    #[error("TLS private key: {0}")]
    Secret(#[from] trackshift_crypto::CryptoError),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| {
        TlsError::Io(IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The crypto provider every Trackshift endpoint uses: aws-lc-rs, with X25519MLKEM768 first
/// (and alone when `pq_only`).
pub fn provider(pq_only: bool) -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = if pq_only {
        vec![aws_lc_rs::kx_group::X25519MLKEM768]
    } else {
        vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
            aws_lc_rs::kx_group::SECP256R1,
        ]
    };
    Arc::new(p)
}

/// A key-exchange group that counts the handshakes a server completes with it
/// (`trackshift_tls_key_exchanges_total{group}`: the share of connections with the
/// post-quantum key exchange).
#[derive(Debug)]
struct CountedGroup(&'static dyn rustls::crypto::SupportedKxGroup);

impl rustls::crypto::SupportedKxGroup for CountedGroup {
    fn start(&self) -> Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        self.0.start()
    }

    fn start_and_complete(
        &self,
        peer_pub_key: &[u8],
    ) -> Result<rustls::crypto::CompletedKeyExchange, rustls::Error> {
        let done = self.0.start_and_complete(peer_pub_key)?;
        metrics::counter!("trackshift_tls_key_exchanges_total", "group" => group_name(self.0.name()))
            .increment(1);
        Ok(done)
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        self.0.ffdhe_group()
    }

    fn name(&self) -> rustls::NamedGroup {
        self.0.name()
    }

    fn fips(&self) -> bool {
        self.0.fips()
    }

    fn usable_for_version(&self, version: rustls::ProtocolVersion) -> bool {
        self.0.usable_for_version(version)
    }
}

/// The label of a key-exchange group (its IANA name).
fn group_name(g: rustls::NamedGroup) -> &'static str {
    match g {
        rustls::NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        rustls::NamedGroup::X25519 => "x25519",
        rustls::NamedGroup::secp256r1 => "secp256r1",
        _ => "other",
    }
}

/// [`provider`] for a server: the same groups, each counting the handshakes it completes.
fn server_provider(pq_only: bool) -> Arc<CryptoProvider> {
    let mut p = Arc::unwrap_or_clone(provider(pq_only));
    p.kx_groups = p
        .kx_groups
        .into_iter()
        .map(|g| {
            let counted: &'static dyn rustls::crypto::SupportedKxGroup =
                counted_group(g.name()).unwrap_or(g);
            counted
        })
        .collect();
    Arc::new(p)
}

/// The counting wrapper of one of [`provider`]'s groups (made once per group).
fn counted_group(
    name: rustls::NamedGroup,
) -> Option<&'static dyn rustls::crypto::SupportedKxGroup> {
    static GROUPS: std::sync::OnceLock<[CountedGroup; 3]> = std::sync::OnceLock::new();
    GROUPS
        .get_or_init(|| {
            [
                CountedGroup(aws_lc_rs::kx_group::X25519MLKEM768),
                CountedGroup(aws_lc_rs::kx_group::X25519),
                CountedGroup(aws_lc_rs::kx_group::SECP256R1),
            ]
        })
        .iter()
        .find(|g| g.0.name() == name)
        .map(|g| g as &'static dyn rustls::crypto::SupportedKxGroup)
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint_of(cert: &[u8]) -> String {
    hex::encode(sha256(cert))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The gateway's certificate chain and private key.
pub struct GatewayIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    dir: PathBuf,
}

impl fmt::Debug for GatewayIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayIdentity")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl GatewayIdentity {
    /// Loads `DIR/cert.pem` and `DIR/key.pem`, generating a CA-signed pair (and `DIR/ca.pem`)
    /// when they do not exist yet.
    pub fn load_or_generate(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        if !cert_path.exists() && !key_path.exists() {
            Self::generate(dir, DEFAULT_SERVER_NAMES)?;
        }
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::BadFile {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::BadFile {
                path: cert_path,
                reason: "no certificate".into(),
            });
        }
        // Owner-only, checked on the descriptor read (see `read_secret`).
        let pem = trackshift_crypto::filestore::read_secret(&key_path)?;
        // The parser's error never contains key material.
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadFile {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        drop(pem);
        Ok(Self {
            chain,
            key,
            dir: dir.to_path_buf(),
        })
    }

    fn generate(dir: &Path, names: &[&str]) -> Result<(), TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let g = |e: rcgen::Error| TlsError::Generate(e.to_string());
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let ca_key = KeyPair::generate().map_err(g)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Trackshift gateway CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(g)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().map_err(g)?;
        let mut leaf =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(g)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "Trackshift gateway");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(g)?;
        let write = |name: &str, text: String, mode: u32| {
            trackshift_crypto::filestore::write_atomic(&dir.join(name), text.as_bytes(), mode)
                .map_err(|e| TlsError::Generate(e.to_string()))
        };
        write("ca.pem", ca_cert.pem(), 0o644)?;
        write("key.pem", leaf_key.serialize_pem(), 0o600)?;
        write(
            "cert.pem",
            format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
            0o644,
        )?;
        Ok(())
    }

    /// SHA-256 fingerprint (hex) of the leaf certificate: what senders pin.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.chain[0])
    }

    /// When the leaf certificate expires (seconds since 1970), if it parses.
    pub fn not_after(&self) -> Option<u64> {
        use x509_cert::der::Decode as _;
        let cert = x509_cert::Certificate::from_der(&self.chain[0]).ok()?;
        Some(
            cert.tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs(),
        )
    }

    /// What a sender pins this identity with (its leaf certificate's SHA-256).
    pub fn pin(&self) -> ServerTrust {
        ServerTrust::Fingerprint(sha256(&self.chain[0]))
    }

    /// The directory holding the identity (`ca.pem` there is the CA senders may trust).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// rustls server configuration: TLS 1.3 only, ALPN `trackshift/1` (the wire protocol)
    /// or `trackshift-keys/1` (the key set for auditors, `keys fetch`).
    pub fn server_config(&self, pq_only: bool) -> Result<rustls::ServerConfig, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(server_provider(pq_only))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![
            crate::transport::ALPN.to_vec(),
            crate::transport::KEYS_ALPN.to_vec(),
        ];
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }
}

/// How a sender authenticates the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Accept exactly the leaf certificate with this SHA-256 fingerprint.
    Fingerprint([u8; 32]),
    /// Accept certificates that chain to a CA in this PEM file and match the server name.
    CaFile(PathBuf),
}

impl ServerTrust {
    /// Parses a fingerprint as printed by the gateway (hex, `:` separators allowed).
    pub fn fingerprint(text: &str) -> Result<Self, TlsError> {
        let clean: String = text.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(clean.trim()).map_err(|_| TlsError::BadFingerprint)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| TlsError::BadFingerprint)?;
        Ok(Self::Fingerprint(arr))
    }

    /// rustls client configuration for this trust: TLS 1.3 only, ALPN `trackshift/1`.
    pub fn client_config(&self, pq_only: bool) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_for(pq_only, crate::transport::ALPN)
    }

    /// [`Self::client_config`] offering `alpn` instead.
    pub fn client_config_for(
        &self,
        pq_only: bool,
        alpn: &[u8],
    ) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider(pq_only);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut cfg = match self {
            Self::Fingerprint(fp) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PolicyVerifier::new(
                    Pinned(*fp),
                    provider,
                    Versions::Tls13,
                )))
                .with_no_client_auth(),
            Self::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TlsError::BadFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsError::BadFile {
                        path: path.clone(),
                        reason: "no usable CA certificate".into(),
                    });
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg.enable_early_data = false;
        Ok(cfg)
    }
}

/// Accepts exactly one leaf certificate (by SHA-256, compared in constant time); the
/// verifier around it ([`PolicyVerifier`]) still checks the handshake signature, so the
/// peer must hold the certificate's private key.
#[derive(Debug)]
struct Pinned([u8; 32]);

impl CertPolicy for Pinned {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = sha256(end_entity);
        if bool::from(subtle::ConstantTimeEq::ct_eq(&got[..], &self.0[..])) {
            Ok(ServerCertVerified::assertion())
        } else {
            // Both are public (the gateway prints its own): say which one it was.
            tracing::warn!(
                presented = %hex::encode(got),
                pinned = %hex::encode(self.0),
                "fingerprint mismatch: the gateway's certificate is not the pinned one"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn generates_once_and_reloads_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let a = GatewayIdentity::load_or_generate(dir.path()).unwrap();
        let b = GatewayIdentity::load_or_generate(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_tls_key_readable_by_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        GatewayIdentity::load_or_generate(dir.path()).unwrap();
        let key = dir.path().join("key.pem");
        for mode in [0o644, 0o640] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = GatewayIdentity::load_or_generate(dir.path()).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", key.display())),
                "{msg}"
            );
            assert!(!msg.contains("BEGIN"), "{msg}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        GatewayIdentity::load_or_generate(dir.path()).unwrap();
    }

    #[test]
    fn fingerprints_parse() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            ServerTrust::fingerprint(&hex64).unwrap(),
            ServerTrust::Fingerprint([0xab; 32])
        );
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            ServerTrust::fingerprint(&colons).unwrap(),
            ServerTrust::Fingerprint([0xab; 32])
        );
        assert!(ServerTrust::fingerprint("abcd").is_err());
        assert!(ServerTrust::fingerprint(&"zz".repeat(32)).is_err());
    }
}
