//! `yardctl cert inspect`: the facts of a certificate file and, against a trust bundle, the
//! verdict the dataplanes' own verifier gives.
//!
//! The chain check goes through the runtime's [`SpiffeServerVerifier`] (webpki against the
//! bundle, then the SPIFFE URI SAN), so `chain: ok` here means a dataplane would accept the
//! certificate from a peer; yardctl has no verification logic of its own.

use anyhow::Context;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, OtherError};
use switchyard_dataplane_runtime::tls::{
    Expected, IdentityStore, SpiffeServerVerifier, TrustBundle, peer_identity,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::duration::human;

/// Where dataplanes renew, as a fraction of the lifetime (`RotationPolicy::default`).
const RENEW_FRACTION: f64 = 0.5;
/// Their random spread around it, either way.
const RENEW_JITTER: f64 = 0.1;

/// Whether the certificate is usable now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Between not_before and not_after.
    Valid,
    /// Past not_after.
    Expired,
    /// Before not_before.
    NotYetValid,
}

/// Result of checking the file's chain against a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// The chain leads to this root of the bundle.
    Ok {
        /// The root's subject.
        root_subject: String,
        /// SHA-256 of the root's DER, hex (as `/debug/ca` shows it).
        root_sha256: String,
    },
    /// It does not, and why.
    Failed(String),
}

/// Facts about the first certificate of a PEM file.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Certificates in the file (leaf first).
    pub certificates: usize,
    /// Subject (often empty for workload certificates).
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// URI SANs (a workload certificate has exactly one, its SPIFFE ID).
    pub uri_sans: Vec<String>,
    /// Other SANs (DNS names, IPs, ...).
    pub other_sans: Vec<String>,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Public key algorithm, e.g. `ECDSA P-256`.
    pub key_algorithm: String,
    /// Basic constraints say CA.
    pub is_ca: bool,
    /// When it was inspected.
    pub now: OffsetDateTime,
    /// With a bundle: the chain verdict.
    pub chain: Option<ChainCheck>,
}

impl Inspection {
    /// Total validity.
    pub fn lifetime(&self) -> time::Duration {
        self.not_after - self.not_before
    }

    /// Until expiry (negative once expired).
    pub fn time_left(&self) -> time::Duration {
        self.not_after - self.now
    }

    /// Where a dataplane renews it, ignoring jitter.
    pub fn rotation_due(&self) -> OffsetDateTime {
        self.not_before + self.lifetime() * RENEW_FRACTION
    }

    /// Earliest and latest renewal point with the dataplanes' jitter.
    pub fn rotation_window(&self) -> (OffsetDateTime, OffsetDateTime) {
        (
            self.not_before + self.lifetime() * (RENEW_FRACTION - RENEW_JITTER),
            self.not_before + self.lifetime() * (RENEW_FRACTION + RENEW_JITTER),
        )
    }

    /// Usable now?
    pub fn validity(&self) -> Validity {
        if self.now >= self.not_after {
            Validity::Expired
        } else if self.now < self.not_before {
            Validity::NotYetValid
        } else {
            Validity::Valid
        }
    }

    /// Valid now and, if checked, chains to the bundle.
    pub fn ok(&self) -> bool {
        self.validity() == Validity::Valid && !matches!(self.chain, Some(ChainCheck::Failed(_)))
    }

    /// The report for people.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<17}{v}\n"));
        match self.uri_sans.as_slice() {
            [] => line("spiffe id:", "(none: no URI SAN)"),
            [one] => line("spiffe id:", one),
            many => line(
                "uri sans:",
                &format!(
                    "{} (a workload certificate has exactly one)",
                    many.join(", ")
                ),
            ),
        }
        if !self.other_sans.is_empty() {
            line("other sans:", &self.other_sans.join(", "));
        }
        if !self.subject.is_empty() {
            line("subject:", &self.subject);
        }
        line("issuer:", or_empty(&self.issuer));
        line("serial:", &self.serial);
        line("not before:", &rfc3339(self.not_before));
        line("not after:", &rfc3339(self.not_after));
        line("lifetime:", &human(self.lifetime()));
        let left = match self.validity() {
            Validity::Valid => human(self.time_left()),
            Validity::Expired => format!("EXPIRED {} ago", human(-self.time_left())),
            Validity::NotYetValid => format!(
                "NOT YET VALID (starts in {})",
                human(self.not_before - self.now)
            ),
        };
        line("time left:", &left);
        // Dataplanes rotate workload certificates; a CA certificate is replaced by hand.
        if !self.is_ca {
            let due = self.rotation_due();
            let when = if due > self.now {
                format!("in {}", human(due - self.now))
            } else {
                format!("{} ago", human(self.now - due))
            };
            let (early, late) = self.rotation_window();
            line("rotation due at:", &format!("{} ({when})", rfc3339(due)));
            line(
                "",
                &format!(
                    "dataplanes renew at 50% ± 10% of the lifetime: {} .. {}",
                    rfc3339(early),
                    rfc3339(late)
                ),
            );
        }
        line("key algorithm:", &self.key_algorithm);
        line("ca:", if self.is_ca { "yes" } else { "no" });
        if self.certificates > 1 {
            line(
                "in file:",
                &format!("{} certificates (leaf first)", self.certificates),
            );
        }
        match &self.chain {
            None => {}
            Some(ChainCheck::Ok {
                root_subject,
                root_sha256,
            }) => out.push_str(&format!(
                "chain: ok (root {}, sha256 {root_sha256})\n",
                or_empty(root_subject)
            )),
            Some(ChainCheck::Failed(reason)) => {
                out.push_str(&format!("chain: FAILED: {reason}\n"));
            }
        }
        match self.validity() {
            Validity::Valid => {}
            Validity::Expired => out.push_str("EXPIRED\n"),
            Validity::NotYetValid => out.push_str("NOT YET VALID\n"),
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let (early, late) = self.rotation_window();
        let chain = match &self.chain {
            None => serde_json::Value::Null,
            Some(ChainCheck::Ok {
                root_subject,
                root_sha256,
            }) => serde_json::json!({
                "ok": true, "root_subject": root_subject, "root_sha256": root_sha256,
            }),
            Some(ChainCheck::Failed(reason)) => {
                serde_json::json!({ "ok": false, "reason": reason })
            }
        };
        serde_json::json!({
            "uri_sans": self.uri_sans,
            "other_sans": self.other_sans,
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": rfc3339(self.not_before),
            "not_after": rfc3339(self.not_after),
            "lifetime_seconds": self.lifetime().whole_seconds(),
            "time_left_seconds": self.time_left().whole_seconds(),
            "rotation_due_at": rfc3339(self.rotation_due()),
            "rotation_window": [rfc3339(early), rfc3339(late)],
            "key_algorithm": self.key_algorithm,
            "is_ca": self.is_ca,
            "certificates_in_file": self.certificates,
            "validity": match self.validity() {
                Validity::Valid => "valid",
                Validity::Expired => "expired",
                Validity::NotYetValid => "not_yet_valid",
            },
            "chain": chain,
        })
    }
}

fn or_empty(s: &str) -> &str {
    if s.is_empty() { "(empty)" } else { s }
}

/// RFC 3339, or the debug form for the (unreachable for X.509 times) case it fails.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| format!("{t:?}"))
}

/// Certificates of a PEM text, in order; anything else in it is an error.
fn certificates(what: &str, text: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let blocks = pem::parse_many(text).with_context(|| format!("{what} is not valid PEM"))?;
    let mut certs = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.into_iter().enumerate() {
        anyhow::ensure!(
            block.tag() == "CERTIFICATE",
            "{what}: block {i} is a {:?} block, expected CERTIFICATE",
            block.tag()
        );
        certs.push(CertificateDer::from(block.into_contents()));
    }
    anyhow::ensure!(!certs.is_empty(), "{what} has no CERTIFICATE block");
    Ok(certs)
}

fn parse(der: &[u8]) -> anyhow::Result<X509Certificate<'_>> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("certificate does not parse: {e}"))?;
    Ok(cert)
}

fn sans(cert: &X509Certificate<'_>) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (mut uris, mut others) = (Vec::new(), Vec::new());
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("subject alternative names do not parse: {e}"))?;
    for name in ext.iter().flat_map(|e| e.value.general_names.iter()) {
        match name {
            GeneralName::URI(u) => uris.push((*u).to_string()),
            GeneralName::DNSName(d) => others.push(format!("DNS:{d}")),
            GeneralName::RFC822Name(m) => others.push(format!("email:{m}")),
            GeneralName::IPAddress(b) => others.push(match *b {
                [a, b, c, d] => format!("IP:{}", std::net::Ipv4Addr::new(*a, *b, *c, *d)),
                _ => match <[u8; 16]>::try_from(*b) {
                    Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                    Err(_) => name.to_string(),
                },
            }),
            other => others.push(other.to_string()),
        }
    }
    Ok((uris, others))
}

fn key_algorithm(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => "ECDSA P-256".into(),
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384".into(),
            Some(c) => format!("EC (curve {c})"),
            None => "EC (curve not named)".into(),
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(key) => format!("RSA {} bits", key.key_size()),
            Err(_) => "RSA".into(),
        }
    } else if *alg == OID_SIG_ED25519 {
        "Ed25519".into()
    } else {
        format!("unknown ({alg})")
    }
}

fn serial(cert: &X509Certificate<'_>) -> String {
    let raw = cert.raw_serial();
    let significant = raw
        .iter()
        .position(|b| *b != 0)
        .map_or(&raw[raw.len().saturating_sub(1)..], |i| &raw[i..]);
    significant.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Inspects the certificates in `pem_text` (leaf first) at `now`, checking the chain against
/// `bundle_pem` if given.
pub fn inspect(
    pem_text: &str,
    bundle_pem: Option<&str>,
    now: OffsetDateTime,
) -> anyhow::Result<Inspection> {
    let certs = certificates("certificate file", pem_text)?;
    let leaf = parse(&certs[0])?;
    let (uri_sans, other_sans) = sans(&leaf)?;
    let is_ca = leaf
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    let chain = match bundle_pem {
        None => None,
        Some(b) => Some(check_chain(&certs, is_ca, b, now)?),
    };
    Ok(Inspection {
        certificates: certs.len(),
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        uri_sans,
        other_sans,
        serial: serial(&leaf),
        not_before: leaf.validity().not_before.to_datetime(),
        not_after: leaf.validity().not_after.to_datetime(),
        key_algorithm: key_algorithm(&leaf),
        is_ca,
        now,
        chain,
    })
}

/// The runtime verifier's verdict on `certs` (leaf, then intermediates) against `bundle`.
fn verify(
    bundle: &TrustBundle,
    certs: &[CertificateDer<'static>],
    expected: &Expected,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let Some((leaf, intermediates)) = certs.split_first() else {
        return Err(rustls::Error::NoCertificatesPresented);
    };
    let verifier = SpiffeServerVerifier::new(IdentityStore::new(bundle.clone()), expected.clone());
    // The verifier ignores the name: identities are checked by SPIFFE ID.
    let name =
        ServerName::try_from("yardctl").map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map(|_| ())
}

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).unwrap_or(0),
    ))
}

fn root_of(der: &CertificateDer<'_>) -> ChainCheck {
    ChainCheck::Ok {
        root_subject: parse(der)
            .map(|c| c.subject().to_string())
            .unwrap_or_default(),
        root_sha256: sha256_hex(der),
    }
}

fn check_chain(
    certs: &[CertificateDer<'static>],
    leaf_is_ca: bool,
    bundle_pem: &str,
    now: OffsetDateTime,
) -> anyhow::Result<ChainCheck> {
    let bundle = TrustBundle::from_pem(bundle_pem).context("bundle")?;
    if leaf_is_ca {
        // Roots are not end-entity certificates; the question is only whether it is trusted.
        return Ok(match bundle.roots().iter().find(|r| **r == certs[0]) {
            Some(root) => root_of(root),
            None => ChainCheck::Failed(
                "it is a CA certificate that is not one of the bundle's roots (only workload certificates are verified through a chain)"
                    .into(),
            ),
        });
    }
    let expected = match peer_identity(certs) {
        Ok(id) => Expected::TrustDomain(id.trust_domain),
        Err(e) => {
            return Ok(ChainCheck::Failed(format!(
                "not a workload certificate: {e}"
            )));
        }
    };
    let now = unix_time(now);
    if let Err(e) = verify(&bundle, certs, &expected, now) {
        return Ok(ChainCheck::Failed(reason(&e)));
    }
    // Which root: the first that verifies the chain on its own.
    for root in bundle.roots() {
        let single = pem::encode(&pem::Pem::new("CERTIFICATE", root.as_ref()));
        let single = TrustBundle::from_pem(&single).context("bundle root")?;
        if verify(&single, certs, &expected, now).is_ok() {
            return Ok(root_of(root));
        }
    }
    Ok(ChainCheck::Ok {
        root_subject: "(not identified)".into(),
        root_sha256: String::new(),
    })
}

/// The verifier's error, with the hint for the common causes.
fn reason(e: &rustls::Error) -> String {
    let rustls::Error::InvalidCertificate(ce) = e else {
        return e.to_string();
    };
    match ce {
        CertificateError::UnknownIssuer => {
            "no root in the bundle issued it, directly or through the intermediates in the file (is it from another CA?)".into()
        }
        // webpki finds issuers by name: a root with the issuer's name but another key.
        CertificateError::BadSignature => {
            "signature does not verify: a root in the bundle has the issuer's name but another key (was the CA root regenerated, or is the certificate from another cluster?)".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the certificate is not allowed for TLS server authentication (extended key usage)"
                .into()
        }
        CertificateError::Other(OtherError(inner)) => inner.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use switchyard_ca::{AuthorityConfig, check_csr, load_or_create_root};
    use switchyard_dataplane_runtime::identity::generate_csr;
    use switchyard_model::SpiffeId;

    struct Ca {
        dir: tempfile::TempDir,
        authority: switchyard_ca::Authority,
    }

    impl Ca {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let authority = load_or_create_root(dir.path(), AuthorityConfig::default()).unwrap();
            Ca { dir, authority }
        }

        fn root(&self) -> String {
            std::fs::read_to_string(self.dir.path().join(switchyard_ca::ROOT_CERT_FILE)).unwrap()
        }

        fn chain(&self, id: &SpiffeId) -> String {
            let (csr, _) = generate_csr(id).unwrap();
            let checked = check_csr(&csr, "cluster.local").unwrap();
            self.authority
                .issue(&checked, id, Some(std::time::Duration::from_secs(3600)))
                .unwrap()
                .chain
                .concat()
        }
    }

    fn web() -> SpiffeId {
        SpiffeId::new("cluster.local", "default", "web")
    }

    #[test]
    fn workload_certificate_facts_and_chain() {
        let ca = Ca::new();
        let chain = ca.chain(&web());
        let now = OffsetDateTime::now_utc();
        let i = inspect(&chain, Some(&ca.root()), now).unwrap();
        assert_eq!(i.uri_sans, vec![web().to_string()]);
        assert!(i.other_sans.is_empty());
        assert_eq!(i.certificates, 2);
        assert_eq!(i.serial.len(), 32, "{}", i.serial);
        assert_eq!(i.key_algorithm, "ECDSA P-256");
        assert!(!i.is_ca);
        assert_eq!(i.validity(), Validity::Valid);
        // 1 h plus the CA's 60 s backdate
        assert_eq!(i.lifetime(), time::Duration::seconds(3660));
        assert_eq!(
            i.rotation_due(),
            i.not_before + time::Duration::seconds(1830)
        );
        let root_der = ::pem::parse(ca.root()).unwrap().into_contents();
        assert!(
            matches!(&i.chain, Some(ChainCheck::Ok { root_sha256, .. }) if *root_sha256 == sha256_hex(&root_der)),
            "{:?}",
            i.chain
        );
        assert!(i.ok());
        let text = i.render_text();
        assert!(
            text.contains("spiffe id:       spiffe://cluster.local/ns/default/sa/web"),
            "{text}"
        );
        assert!(text.contains("chain: ok (root "), "{text}");
        assert!(!text.contains("EXPIRED"), "{text}");
        assert_eq!(i.to_json()["chain"]["ok"], true);

        // The root itself, against a bundle holding it.
        let root = inspect(&ca.root(), Some(&ca.root()), now).unwrap();
        assert!(root.is_ca && root.ok(), "{:?}", root.chain);
    }

    #[test]
    fn another_ca_fails_the_chain() {
        let (ca, other) = (Ca::new(), Ca::new());
        let i = inspect(
            &ca.chain(&web()),
            Some(&other.root()),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let Some(ChainCheck::Failed(reason)) = &i.chain else {
            panic!("{:?}", i.chain);
        };
        assert!(
            reason.contains("another key") || reason.contains("no root in the bundle"),
            "{reason}"
        );
        assert!(!i.ok());
        assert!(i.render_text().contains("chain: FAILED: "));
    }

    #[test]
    fn expired_later_on() {
        let ca = Ca::new();
        let chain = ca.chain(&web());
        let later = OffsetDateTime::now_utc() + time::Duration::hours(2);
        let i = inspect(&chain, Some(&ca.root()), later).unwrap();
        assert_eq!(i.validity(), Validity::Expired);
        assert!(!i.ok());
        let text = i.render_text();
        assert!(text.contains("\nEXPIRED\n"), "{text}");
        assert!(text.contains("chain: FAILED: "), "{text}");
    }

    #[test]
    fn unusable_input_is_an_error() {
        let now = OffsetDateTime::now_utc();
        assert!(inspect("", None, now).is_err());
        assert!(inspect("hello", None, now).is_err());
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let err = inspect(&key, None, now).unwrap_err();
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
        let ca = Ca::new();
        assert!(inspect(&ca.chain(&web()), Some("not a bundle"), now).is_err());
    }
}
