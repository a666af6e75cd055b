//! One `rustls` server-certificate verifier for every check short of the standard one
//! (`WebPkiServerVerifier`): a [`CertPolicy`] judges the certificate (a pin, a chain that
//! may name another host), and [`PolicyVerifier`] always checks the handshake's signature
//! with the provider's algorithms, so the peer must hold the certificate's private key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What a [`PolicyVerifier`] asks of the server's certificate.
pub trait CertPolicy: Send + Sync + std::fmt::Debug {
    /// Accepts or refuses the certificate the server presented (the handshake signature is
    /// checked separately, by the verifier).
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error>;
}

/// Which TLS versions' handshake signatures a [`PolicyVerifier`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 only (QUIC): a TLS 1.2 signature is refused.
    Tls13,
    /// TLS 1.2 and 1.3.
    Tls12And13,
}

/// A server-certificate verifier from a [`CertPolicy`].
#[derive(Debug)]
pub struct PolicyVerifier<P> {
    policy: P,
    provider: Arc<CryptoProvider>,
    versions: Versions,
}

impl<P: CertPolicy> PolicyVerifier<P> {
    /// A verifier that accepts what `policy` accepts, checking handshake signatures with
    /// `provider`'s algorithms for `versions`.
    pub fn new(policy: P, provider: Arc<CryptoProvider>, versions: Versions) -> Self {
        Self {
            policy,
            provider,
            versions,
        }
    }
}

impl<P: CertPolicy> ServerCertVerifier for PolicyVerifier<P> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.policy
            .check(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.versions {
            Versions::Tls13 => Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls13RequiredForQuic,
            )),
            Versions::Tls12And13 => rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            ),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts or refuses every certificate, and counts the calls.
    #[derive(Debug)]
    struct Verdict(bool, std::sync::atomic::AtomicUsize);

    impl CertPolicy for Verdict {
        fn check(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.0 {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    #[test]
    fn the_policy_decides_the_certificate_and_the_provider_the_signatures() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let name = ServerName::try_from("db").unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        for accept in [true, false] {
            let v = PolicyVerifier::new(
                Verdict(accept, Default::default()),
                provider.clone(),
                Versions::Tls12And13,
            );
            let r = v.verify_server_cert(&der, &[], &name, &[], UnixTime::now());
            assert_eq!(r.is_ok(), accept);
            assert_eq!(v.policy.1.load(std::sync::atomic::Ordering::Relaxed), 1);
            assert!(!v.supported_verify_schemes().is_empty());
        }
    }
}
