//! The signer: issues SPIFFE leaf certificates under the current root or intermediate.

use std::time::Duration;

use rand::RngCore;
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use switchyard_model::SpiffeId;
use time::OffsetDateTime;

use crate::IssueError;
use crate::csr::CheckedCsr;

/// Lifetimes of issued certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// Trust domain of every identity issued.
    pub trust_domain: String,
    /// Lifetime when the caller does not ask for one.
    pub default_ttl: Duration,
    /// Longest lifetime granted.
    pub max_ttl: Duration,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            trust_domain: "cluster.local".into(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A signed certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM chain: leaf, intermediates, root.
    pub chain: Vec<String>,
    /// Serial number (hex).
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// A CA that signs with one key.
#[derive(Debug)]
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// PEMs after the leaf in every issued chain: our certificate, then its chain up to the
    /// root (a self-signed root issues chains of leaf + root).
    chain_tail: Vec<String>,
    /// Roots clients trust.
    bundle: Vec<String>,
    config: AuthorityConfig,
}

/// Clock skew tolerated between the CA and verifiers.
const BACKDATE: Duration = Duration::from_secs(60);

impl Authority {
    /// An authority signing with `key` as `cert_pem`, whose chain up to (and including) the
    /// root is `chain` (empty when `cert_pem` is the root), trusted via `bundle`.
    pub fn new(
        cert_pem: &str,
        key: KeyPair,
        chain: Vec<String>,
        bundle: Vec<String>,
        config: AuthorityConfig,
    ) -> Result<Self, rcgen::Error> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let mut chain_tail = vec![cert_pem.to_string()];
        chain_tail.extend(chain);
        Ok(Authority {
            issuer,
            chain_tail,
            bundle,
            config,
        })
    }

    /// The trust bundle (root PEMs).
    pub fn bundle(&self) -> &[String] {
        &self.bundle
    }

    /// The root at the top of every issued chain.
    pub fn chain_root(&self) -> Option<&str> {
        self.chain_tail.last().map(String::as_str)
    }

    /// Settings.
    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// Signs `csr` for `identity` (which the caller was authorised for; it may differ from the
    /// CSR's own SAN only when a node agent asks on a pod's behalf — the caller checks that).
    /// The lifetime is `requested` (or the default), capped at the maximum.
    pub fn issue(
        &self,
        csr: &CheckedCsr,
        identity: &SpiffeId,
        requested: Option<Duration>,
    ) -> Result<Issued, IssueError> {
        let ttl = requested
            .filter(|d| !d.is_zero())
            .unwrap_or(self.config.default_ttl)
            .min(self.config.max_ttl);
        let now = OffsetDateTime::now_utc();
        let mut serial = [0u8; 16];
        rand::rng().fill_bytes(&mut serial);
        serial[0] &= 0x7f; // positive
        serial[0] |= 0x01; // and 16 bytes long
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + ttl;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.params.public_key, &self.issuer)?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.chain_tail.iter().cloned());
        Ok(Issued {
            chain,
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
            not_after: params.not_after,
        })
    }
}
