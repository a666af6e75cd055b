//! RFC 3161 time-stamps of checkpoints, from a time-stamp authority outside the gateway.
//!
//! The message a checkpoint's time-stamp covers is SHA-256 of the checkpoint's signed note
//! text, byte for byte (`docs/FORMATS.md` 8.8), so `openssl ts -verify -data checkpoint
//! -in token.tsr -CAfile tsa-ca.pem` checks it with nothing else. [`request`] builds the
//! `TimeStampReq`; [`token_from_response`] takes the token out of the authority's
//! `TimeStampResp`; [`verify_token`] checks a token offline against the authority's CA:
//!
//! * the token is CMS `SignedData` of a `TSTInfo` whose message imprint is SHA-256 of the
//!   message;
//! * one signer, whose certificate is in the token (or is a trusted certificate itself),
//!   chains to a certificate of the trust file (at most 4 links, each signature checked),
//!   is valid at the time-stamp's time and carries the critical extended key usage
//!   `id-kp-timeStamping` (RFC 3161 2.3);
//! * the signed attributes hold the content type `id-ct-TSTInfo` and the digest of the
//!   `TSTInfo`, and the signature over them verifies (RSA PKCS #1 v1.5 or ECDSA P-256 /
//!   P-384 with SHA-256, -384 or -512, through aws-lc-rs).
//!
//! Certificate revocation (CRL, OCSP) is not checked: the trust file names the authority's
//! CA, and an auditor who distrusts a TSA certificate removes it there.

use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use cms::cert::x509::Certificate;
use cms::cert::x509::ext::pkix::ExtendedKeyUsage;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5280, rfc5911, rfc5912};
use der::asn1::{Int, OctetString};
use der::{Decode as _, Encode as _};
use x509_tsp::{MessageImprint, TimeStampReq, TimeStampResp, TspVersion, TstInfo};

use crate::error::{LedgerError, Result};

/// `id-ct-TSTInfo` (RFC 3161 2.4.2).
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
/// Most certificates from the signer to a trusted one.
const MAX_CHAIN: usize = 4;

fn bad(why: impl Into<String>) -> LedgerError {
    LedgerError::Malformed(format!("time-stamp: {}", why.into()))
}

fn rejected(why: impl Into<String>) -> LedgerError {
    LedgerError::TimeStamp(why.into())
}

/// The message a checkpoint's time-stamp covers: SHA-256 of its signed note.
pub fn checkpoint_digest(note: &str) -> [u8; 32] {
    digest::digest(&digest::SHA256, note.as_bytes())
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

/// A DER `TimeStampReq` for `digest` (SHA-256), with `nonce`, asking for the signer's
/// certificate in the token.
pub fn request(digest: &[u8; 32], nonce: u64) -> Vec<u8> {
    let req = TimeStampReq {
        version: TspVersion::V1,
        message_imprint: MessageImprint {
            hash_algorithm: spki_alg(rfc5912::ID_SHA_256),
            hashed_message: OctetString::new(digest.to_vec()).expect("32 bytes"),
        },
        req_policy: None,
        nonce: Some(Int::new(&nonce_bytes(nonce)).expect("a valid integer")),
        cert_req: true,
        extensions: None,
    };
    req.to_der().expect("the request encodes")
}

fn spki_alg(oid: ObjectIdentifier) -> cms::cert::x509::spki::AlgorithmIdentifier<der::Any> {
    cms::cert::x509::spki::AlgorithmIdentifier {
        oid,
        parameters: Some(der::Any::null()),
    }
}

/// The nonce as a positive DER integer's content (a leading zero when the top bit is set).
fn nonce_bytes(nonce: u64) -> Vec<u8> {
    let mut b = nonce.to_be_bytes().to_vec();
    while b.len() > 1 && b[0] == 0 && b[1] & 0x80 == 0 {
        b.remove(0);
    }
    if b[0] & 0x80 != 0 {
        b.insert(0, 0);
    }
    b
}

/// The time-stamp token (DER `ContentInfo`) in a stored `TimeStampResp`: refused unless
/// the authority granted it. Check it with [`verify_token`].
pub fn token_of_response(response: &[u8]) -> Result<Vec<u8>> {
    let resp = TimeStampResp::from_der(response).map_err(|e| bad(format!("response: {e}")))?;
    granted(resp)
}

fn granted(resp: TimeStampResp<'_>) -> Result<Vec<u8>> {
    use cmpv2::status::PkiStatus;
    if !matches!(
        resp.status.status,
        PkiStatus::Accepted | PkiStatus::GrantedWithMods
    ) {
        return Err(rejected(format!(
            "the authority refused the request ({:?})",
            resp.status.status
        )));
    }
    let token = resp
        .time_stamp_token
        .ok_or_else(|| bad("a granted response without a token"))?;
    token.to_der().map_err(|e| bad(e.to_string()))
}

/// The time-stamp token (DER `ContentInfo`) in an authority's response to a [`request`] for
/// `digest` with `nonce`: refused unless granted, for that digest and nonce.
pub fn token_from_response(response: &[u8], digest: &[u8; 32], nonce: u64) -> Result<Vec<u8>> {
    let resp = TimeStampResp::from_der(response).map_err(|e| bad(format!("response: {e}")))?;
    let token = granted(resp)?;
    let info = tst_info(&token)?;
    if info.nonce.as_ref().map(|n| n.as_bytes()) != Some(nonce_bytes(nonce).as_slice()) {
        return Err(rejected("the token does not answer this request (nonce)"));
    }
    check_imprint(&info, digest)?;
    Ok(token)
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeStamp {
    /// When the authority saw the message (its `genTime`, whole seconds since 1970).
    pub time: u64,
    /// The token's serial number (hex).
    pub serial: String,
    /// The signer certificate's subject.
    pub signer: String,
}

fn signed_data(token: &[u8]) -> Result<SignedData> {
    let ci = ContentInfo::from_der(token).map_err(|e| bad(format!("token: {e}")))?;
    if ci.content_type != rfc5911::ID_SIGNED_DATA {
        return Err(bad("the token is not CMS SignedData"));
    }
    let der = ci.content.to_der().map_err(|e| bad(e.to_string()))?;
    SignedData::from_der(&der).map_err(|e| bad(format!("SignedData: {e}")))
}

/// The `TSTInfo` DER inside a token's `SignedData`.
fn econtent(sd: &SignedData) -> Result<Vec<u8>> {
    if sd.encap_content_info.econtent_type != ID_CT_TST_INFO {
        return Err(bad("the signed content is not a TSTInfo"));
    }
    let any = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| bad("no TSTInfo in the token"))?;
    let octets: OctetString = any.decode_as().map_err(|e| bad(e.to_string()))?;
    Ok(octets.as_bytes().to_vec())
}

fn tst_info(token: &[u8]) -> Result<TstInfo> {
    TstInfo::from_der(&econtent(&signed_data(token)?)?).map_err(|e| bad(format!("TSTInfo: {e}")))
}

fn check_imprint(info: &TstInfo, digest: &[u8; 32]) -> Result<()> {
    if info.message_imprint.hash_algorithm.oid != rfc5912::ID_SHA_256 {
        return Err(rejected("the token's message imprint is not SHA-256"));
    }
    if info.message_imprint.hashed_message.as_bytes() != digest {
        return Err(rejected("the token is for another message"));
    }
    Ok(())
}

/// The trust anchors for time-stamps: the certificates of a PEM file (the authority's CA,
/// or its signing certificate itself).
#[derive(Debug, Clone)]
pub struct TsaTrust {
    roots: Vec<Certificate>,
}

impl TsaTrust {
    /// Reads every certificate of a PEM file.
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let roots = Certificate::load_pem_chain(pem).map_err(|e| bad(format!("CA file: {e}")))?;
        if roots.is_empty() {
            return Err(bad("the CA file holds no certificate"));
        }
        Ok(Self { roots })
    }
}

fn digest_alg(oid: &ObjectIdentifier) -> Result<&'static digest::Algorithm> {
    Ok(match *oid {
        rfc5912::ID_SHA_256 => &digest::SHA256,
        rfc5912::ID_SHA_384 => &digest::SHA384,
        rfc5912::ID_SHA_512 => &digest::SHA512,
        other => {
            return Err(rejected(format!(
                "digest algorithm {other} is not accepted"
            )));
        }
    })
}

/// Checks `sig` over `msg` with the public key of `cert`, by `alg` (a signature algorithm,
/// or `rsaEncryption` / `id-ecPublicKey` with the digest `digest_oid`).
fn verify_with(
    cert: &Certificate,
    alg: &ObjectIdentifier,
    digest_oid: &ObjectIdentifier,
    msg: &[u8],
    sig: &[u8],
) -> Result<()> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let key = spki.subject_public_key.raw_bytes();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let rsa = spki.algorithm.oid == rfc5912::RSA_ENCRYPTION;
    let ec = spki.algorithm.oid == rfc5912::ID_EC_PUBLIC_KEY;
    let digest = match *alg {
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION | rfc5912::ECDSA_WITH_SHA_256 => rfc5912::ID_SHA_256,
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION | rfc5912::ECDSA_WITH_SHA_384 => rfc5912::ID_SHA_384,
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION => rfc5912::ID_SHA_512,
        rfc5912::RSA_ENCRYPTION | rfc5912::ID_EC_PUBLIC_KEY => *digest_oid,
        other => {
            return Err(rejected(format!(
                "signature algorithm {other} is not accepted"
            )));
        }
    };
    let verifier: &'static dyn VerificationAlgorithm = match (rsa, ec, digest, curve) {
        (true, _, rfc5912::ID_SHA_256, _) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (true, _, rfc5912::ID_SHA_384, _) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (true, _, rfc5912::ID_SHA_512, _) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (_, true, rfc5912::ID_SHA_256, Some(rfc5912::SECP_256_R_1)) => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        (_, true, rfc5912::ID_SHA_384, Some(rfc5912::SECP_384_R_1)) => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        (_, true, rfc5912::ID_SHA_256, Some(rfc5912::SECP_384_R_1)) => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        _ => {
            return Err(rejected(format!(
                "key {} with digest {digest} is not accepted",
                spki.algorithm.oid
            )));
        }
    };
    UnparsedPublicKey::new(verifier, key)
        .verify(msg, sig)
        .map_err(|_| rejected("a signature does not verify"))
}

/// Whether `cert` was valid at `time` (seconds since 1970).
fn valid_at(cert: &Certificate, time: u64) -> bool {
    let v = &cert.tbs_certificate.validity;
    let t = Duration::from_secs(time);
    v.not_before.to_unix_duration() <= t && t <= v.not_after.to_unix_duration()
}

/// Checks that `cert` chains to a trusted certificate through `pool` (the token's
/// certificates), each link's signature verified and each certificate valid at `time`.
fn chains_to_trust(
    cert: &Certificate,
    pool: &[Certificate],
    trust: &TsaTrust,
    time: u64,
) -> Result<()> {
    let mut current = cert.clone();
    for _ in 0..=MAX_CHAIN {
        if !valid_at(&current, time) {
            return Err(rejected(format!(
                "certificate {} was not valid at the time-stamp's time",
                current.tbs_certificate.subject
            )));
        }
        if trust.roots.contains(&current) {
            return Ok(());
        }
        let issuer_name = &current.tbs_certificate.issuer;
        let tbs = current
            .tbs_certificate
            .to_der()
            .map_err(|e| bad(e.to_string()))?;
        let sig = current
            .signature
            .as_bytes()
            .ok_or_else(|| bad("a certificate signature is not whole bytes"))?;
        let alg = current.signature_algorithm.oid;
        // Signed by a trusted certificate: done; by one of the token's: follow it.
        if let Some(root) = trust.roots.iter().find(|r| {
            &r.tbs_certificate.subject == issuer_name
                && verify_with(r, &alg, &alg, &tbs, sig).is_ok()
        }) {
            if !valid_at(root, time) {
                return Err(rejected(
                    "the trusted CA was not valid at the time-stamp's time",
                ));
            }
            return Ok(());
        }
        let Some(next) = pool.iter().find(|c| {
            &c.tbs_certificate.subject == issuer_name
                && **c != current
                && verify_with(c, &alg, &alg, &tbs, sig).is_ok()
        }) else {
            return Err(rejected(format!(
                "the TSA certificate {} does not chain to the trusted CA",
                cert.tbs_certificate.subject
            )));
        };
        current = next.clone();
    }
    Err(rejected("the certificate chain is too long"))
}

/// The signer certificate's critical `id-kp-timeStamping` (RFC 3161 2.3).
fn check_time_stamping_usage(cert: &Certificate) -> Result<()> {
    let ext = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == rfc5280::ID_CE_EXT_KEY_USAGE)
        .ok_or_else(|| rejected("the TSA certificate has no extended key usage"))?;
    let eku = ExtendedKeyUsage::from_der(ext.extn_value.as_bytes())
        .map_err(|e| bad(format!("extended key usage: {e}")))?;
    if !ext.critical || !eku.0.contains(&rfc5280::ID_KP_TIME_STAMPING) {
        return Err(rejected(
            "the TSA certificate is not for time-stamping (critical id-kp-timeStamping)",
        ));
    }
    Ok(())
}

/// Verifies a time-stamp token over `digest` (SHA-256 of the message) against `trust`. See
/// the module docs for every check.
pub fn verify_token(token: &[u8], digest: &[u8; 32], trust: &TsaTrust) -> Result<TimeStamp> {
    let sd = signed_data(token)?;
    let content = econtent(&sd)?;
    let info = TstInfo::from_der(&content).map_err(|e| bad(format!("TSTInfo: {e}")))?;
    check_imprint(&info, digest)?;
    let time = info.gen_time.to_unix_duration().as_secs();
    let signers: Vec<_> = sd.signer_infos.0.iter().collect();
    let [si] = signers.as_slice() else {
        return Err(bad(format!("{} signers, expected one", signers.len())));
    };
    let pool: Vec<Certificate> = sd
        .certificates
        .iter()
        .flat_map(|s| s.0.iter())
        .filter_map(|c| match c {
            cms::cert::CertificateChoices::Certificate(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let candidates = pool.iter().chain(trust.roots.iter());
    let signer = match &si.sid {
        SignerIdentifier::IssuerAndSerialNumber(is) => candidates.into_iter().find(|c| {
            c.tbs_certificate.issuer == is.issuer
                && c.tbs_certificate.serial_number == is.serial_number
        }),
        SignerIdentifier::SubjectKeyIdentifier(ski) => candidates.into_iter().find(|c| {
            c.tbs_certificate.extensions.iter().flatten().any(|e| {
                e.extn_id == rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER
                    && OctetString::from_der(e.extn_value.as_bytes())
                        .is_ok_and(|o| o.as_bytes() == ski.0.as_bytes())
            })
        }),
    }
    .ok_or_else(|| bad("the signer's certificate is not in the token (request it with certReq)"))?
    .clone();
    // The signed attributes: the content type and the digest of the TSTInfo.
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| bad("the signer has no signed attributes"))?;
    let one = |oid: ObjectIdentifier| -> Result<der::Any> {
        let a = attrs
            .iter()
            .find(|a| a.oid == oid)
            .ok_or_else(|| bad(format!("no signed attribute {oid}")))?;
        let values: Vec<_> = a.values.iter().collect();
        match values.as_slice() {
            [v] => Ok((*v).clone()),
            _ => Err(bad(format!("signed attribute {oid} must have one value"))),
        }
    };
    let content_type: ObjectIdentifier = one(rfc5911::ID_CONTENT_TYPE)?
        .decode_as()
        .map_err(|e| bad(e.to_string()))?;
    if content_type != ID_CT_TST_INFO {
        return Err(rejected("the signed content type is not TSTInfo"));
    }
    let md: OctetString = one(rfc5911::ID_MESSAGE_DIGEST)?
        .decode_as()
        .map_err(|e| bad(e.to_string()))?;
    let dalg = digest_alg(&si.digest_alg.oid)?;
    // The SignedData lists the digest algorithms its signers use (RFC 5652 5.1).
    if !sd
        .digest_algorithms
        .iter()
        .any(|a| a.oid == si.digest_alg.oid)
    {
        return Err(bad(
            "the signer's digest algorithm is not among the SignedData's",
        ));
    }
    if digest::digest(dalg, &content).as_ref() != md.as_bytes() {
        return Err(rejected("the signed digest is not the TSTInfo's"));
    }
    // The signature covers the DER of the attributes as a SET OF.
    let signed = attrs.to_der().map_err(|e| bad(e.to_string()))?;
    verify_with(
        &signer,
        &si.signature_algorithm.oid,
        &si.digest_alg.oid,
        &signed,
        si.signature.as_bytes(),
    )
    .map_err(|e| rejected(format!("the token's signature: {e}")))?;
    check_time_stamping_usage(&signer)?;
    chains_to_trust(&signer, &pool, trust, time)?;
    Ok(TimeStamp {
        time,
        serial: hex::encode(info.serial_number.as_bytes()),
        signer: signer.tbs_certificate.subject.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_positive_minimal_integers() {
        assert_eq!(nonce_bytes(0), vec![0]);
        assert_eq!(nonce_bytes(0x7f), vec![0x7f]);
        assert_eq!(nonce_bytes(0x80), vec![0, 0x80]);
        assert_eq!(nonce_bytes(u64::MAX), [&[0u8][..], &[0xff; 8]].concat());
        let der = request(&[7u8; 32], 0x1234);
        let back = TimeStampReq::from_der(&der).unwrap();
        assert!(back.cert_req);
        assert_eq!(back.message_imprint.hashed_message.as_bytes(), &[7u8; 32]);
        assert_eq!(back.nonce.unwrap().as_bytes(), &[0x12, 0x34]);
    }
}
