//! CSR verification and policy.

use rcgen::{CertificateSigningRequestParams, IsCa, SanType};
use switchyard_model::SpiffeId;
use x509_parser::prelude::FromDer;

/// Largest CSR accepted (a P-256 CSR is ~500 bytes, RSA-4096 ~1.7 KB).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR is refused. Each message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("csr is {0} bytes; the limit is {MAX_CSR_BYTES}")]
    TooLarge(usize),
    /// Not a PEM `CERTIFICATE REQUEST`.
    #[error("csr is not a PEM-encoded certificate request: {0}")]
    NotPem(String),
    /// The DER inside does not parse.
    #[error("csr does not parse as PKCS#10")]
    Malformed,
    /// The self-signature does not verify.
    #[error("csr signature does not verify: the request was not signed by the key it carries")]
    BadSignature,
    /// An extension this CA does not accept.
    #[error("csr requests an extension this CA does not accept")]
    UnsupportedExtension,
    /// Not exactly one URI SAN, or other SAN types.
    #[error("csr must carry exactly one URI SAN (the SPIFFE ID) and no other SAN; found {0}")]
    Sans(String),
    /// The URI SAN is not a SPIFFE ID of ours.
    #[error("csr URI SAN {uri:?} is not a workload SPIFFE ID in trust domain {trust_domain:?}")]
    Identity {
        /// The URI.
        uri: String,
        /// Our trust domain.
        trust_domain: String,
    },
    /// Asks to be a CA.
    #[error("csr asks for CA:true; workload certificates cannot be CAs")]
    CaRequested,
    /// Key type or size not accepted.
    #[error("csr key {0} is not accepted: use ECDSA P-256 or RSA of at least 2048 bits")]
    Key(String),
}

/// A verified CSR: its public key and the identity it asks for.
#[derive(Debug)]
pub struct CheckedCsr {
    pub(crate) params: CertificateSigningRequestParams,
    /// The SPIFFE ID in the CSR.
    pub identity: SpiffeId,
}

fn san_kind(s: &SanType) -> &'static str {
    match s {
        SanType::Rfc822Name(_) => "email",
        SanType::DnsName(_) => "DNS",
        SanType::URI(_) => "URI",
        SanType::IpAddress(_) => "IP",
        SanType::OtherName(_) => "otherName",
        _ => "unknown",
    }
}

/// Parses `pem`, verifies its signature and applies the policy for `trust_domain`.
pub fn check_csr(pem: &str, trust_domain: &str) -> Result<CheckedCsr, CsrError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(pem.len()));
    }
    let block = ::pem::parse(pem).map_err(|e| CsrError::NotPem(e.to_string()))?;
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::NotPem(format!("PEM block is {:?}", block.tag())));
    }
    let der = block.contents();
    // Parse first on our own so "does not parse" and "bad signature" are told apart.
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|_| CsrError::Malformed)?;
    check_key(&req.certification_request_info.subject_pki)?;
    let params =
        CertificateSigningRequestParams::from_der(&der.to_vec().into()).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
            rcgen::Error::UnsupportedExtension => CsrError::UnsupportedExtension,
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                CsrError::Key("signature algorithm".into())
            }
            _ => CsrError::Malformed,
        })?;
    if matches!(params.params.is_ca, IsCa::Ca(_)) {
        return Err(CsrError::CaRequested);
    }
    let sans = &params.params.subject_alt_names;
    let uris: Vec<&str> = sans
        .iter()
        .filter_map(|s| match s {
            SanType::URI(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    if uris.len() != 1 || sans.len() != 1 {
        let found = if sans.is_empty() {
            "none".to_string()
        } else {
            sans.iter().map(san_kind).collect::<Vec<_>>().join(", ")
        };
        return Err(CsrError::Sans(found));
    }
    let identity: SpiffeId = uris[0].parse().map_err(|_| CsrError::Identity {
        uri: uris[0].to_string(),
        trust_domain: trust_domain.to_string(),
    })?;
    if identity.trust_domain != trust_domain {
        return Err(CsrError::Identity {
            uri: uris[0].to_string(),
            trust_domain: trust_domain.to_string(),
        });
    }
    Ok(CheckedCsr { params, identity })
}

fn check_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    use x509_parser::public_key::PublicKey;
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            // P-256 points are 65 bytes uncompressed (33 compressed).
            let curve_ok = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|oid| oid.to_id_string() == "1.2.840.10045.3.1.7");
            if curve_ok {
                Ok(())
            } else {
                Err(CsrError::Key(format!(
                    "EC ({}-byte point, not P-256)",
                    point.data().len()
                )))
            }
        }
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if bits >= 2048 {
                Ok(())
            } else {
                Err(CsrError::Key(format!("RSA {bits} bits")))
            }
        }
        Ok(_) => Err(CsrError::Key("of an unsupported type".into())),
        Err(_) => Err(CsrError::Malformed),
    }
}
