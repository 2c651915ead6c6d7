//! SPIFFE TLS for dataplanes: the workload's certificate and trust bundle, peer verification by
//! SPIFFE ID, and rustls configurations built on them.
//!
//! Workload certificates carry their identity only as a URI SAN
//! (`spiffe://<td>/ns/<ns>/sa/<sa>`), so rustls' DNS-name check is replaced by chain
//! verification against the trust bundle (webpki) followed by a check of that URI SAN.
//!
//! One [`IdentityStore`] per dataplane holds the current certificate and bundle. Its owner (the
//! certificate rotation task) is the only writer; configurations built by [`client_config`]
//! and [`server_config`] read the store at every handshake, so a rotated certificate or trust
//! bundle takes effect on the next handshake without rebuilding any configuration. Session
//! resumption is disabled on both sides for the same reason: every handshake presents the
//! current certificate and verifies the peer against the current bundle.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    ServerName, TrustAnchor, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, InconsistentKeys,
    OtherError, ServerConfig, SignatureScheme,
};
use switchyard_model::{IdentityError, SpiffeId};
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Errors of this module: bad PEM, keys or certificates, and peers without the expected
/// identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Text that should hold PEM blocks does not parse.
    #[error("{what} is not valid PEM: {reason}")]
    Pem {
        /// What was being read (`trust bundle`, `certificate chain`, `private key`).
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// A PEM block of the wrong kind.
    #[error("{what} block {index} is a {tag:?} block, only CERTIFICATE blocks are allowed")]
    UnexpectedBlock {
        /// What was being read.
        what: &'static str,
        /// Position of the block, from 0.
        index: usize,
        /// Its PEM tag.
        tag: String,
    },
    /// A trust bundle without certificates.
    #[error("trust bundle has no CERTIFICATE block")]
    EmptyBundle,
    /// A root in the trust bundle that webpki cannot use as a trust anchor.
    #[error("trust bundle certificate {index} cannot be used as a root: {reason}")]
    BadRoot {
        /// Position of the certificate, from 0.
        index: usize,
        /// What webpki said.
        reason: String,
    },
    /// A certificate chain without certificates.
    #[error("certificate chain has no CERTIFICATE block")]
    EmptyChain,
    /// The private key PEM is unusable.
    #[error("private key is not usable: {0}")]
    Key(String),
    /// The private key is not the one certified by the leaf.
    #[error(
        "private key does not match the leaf certificate's public key (was the key rotated without a new certificate?)"
    )]
    KeyMismatch,
    /// A certificate does not parse.
    #[error("certificate does not parse: {0}")]
    Certificate(String),
    /// The end-entity certificate does not have exactly one URI SAN.
    #[error("certificate has {0} URI SANs, a workload certificate needs exactly one")]
    UriSanCount(usize),
    /// The one URI SAN is not a workload SPIFFE ID.
    #[error("certificate URI SAN is not a workload spiffe id: {0}")]
    NotSpiffe(#[from] IdentityError),
    /// The peer sent no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's identity is not the one expected.
    #[error("peer identity {presented} is not the expected {expected}")]
    IdentityMismatch {
        /// What was expected, as [`Expected`] displays it.
        expected: String,
        /// The SPIFFE ID the peer presented.
        presented: String,
    },
}

fn provider() -> CryptoProvider {
    ring::default_provider()
}

/// The only way building a configuration can fail is a provider without TLS 1.3 cipher
/// suites; ring's default provider has them.
const RING_HAS_TLS13: &str = "the ring provider supports TLS 1.3";

/// Signature algorithms of the ring provider, for chains and handshake signatures.
static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> =
    LazyLock::new(|| provider().signature_verification_algorithms);

fn pem_blocks(what: &'static str, text: &str) -> Result<Vec<pem::Pem>, TlsError> {
    pem::parse_many(text).map_err(|e| TlsError::Pem {
        what,
        reason: e.to_string(),
    })
}

fn certificate_blocks(
    what: &'static str,
    text: &str,
    first_index: usize,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_blocks(what, text)?
        .into_iter()
        .enumerate()
        .map(|(i, block)| {
            if block.tag() == "CERTIFICATE" {
                Ok(CertificateDer::from(block.into_contents()))
            } else {
                Err(TlsError::UnexpectedBlock {
                    what,
                    index: first_index + i,
                    tag: block.tag().to_string(),
                })
            }
        })
        .collect()
}

/// A trust bundle: the set of root certificates peers must chain to.
///
/// Equality is by content: two bundles with the same roots are equal whatever their order or
/// PEM formatting.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pem: String,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Parses one or more concatenated PEM `CERTIFICATE` blocks (duplicates are dropped).
    /// Any other kind of block, or no block at all, is an error.
    pub fn from_pem(text: &str) -> Result<Self, TlsError> {
        let certs = certificate_blocks("trust bundle", text, 0)?;
        if certs.is_empty() {
            return Err(TlsError::EmptyBundle);
        }
        let mut seen = HashSet::new();
        let mut roots = Vec::new();
        let mut anchors = Vec::new();
        let mut pem = String::new();
        for (index, der) in certs.into_iter().enumerate() {
            if !seen.insert(der.as_ref().to_vec()) {
                continue;
            }
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| TlsError::BadRoot {
                    index,
                    reason: e.to_string(),
                })?
                .to_owned();
            pem.push_str(&pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.as_ref()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            ));
            anchors.push(anchor);
            roots.push(der);
        }
        Ok(TrustBundle {
            pem,
            roots,
            anchors,
        })
    }

    /// The root certificates, in the order first given.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The bundle as normalized PEM (LF line endings, no duplicates, nothing but certificates).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        // Roots are deduplicated, so equal lengths plus inclusion means equal sets.
        self.roots.len() == other.roots.len() && self.roots.iter().all(|r| other.roots.contains(r))
    }
}

impl Eq for TrustBundle {}

/// Facts about a workload certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The SPIFFE ID in its URI SAN.
    pub id: SpiffeId,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

fn parse_certificate<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, TlsError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(cert)
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, TlsError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate(format!("subject alternative names: {e}")))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [uri] => Ok(uri.parse()?),
        _ => Err(TlsError::UriSanCount(uris.len())),
    }
}

/// Facts about the certificate `der` (the HBONE server reads its clients' serials with it).
pub(crate) fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    let cert = parse_certificate(der)?;
    let id = spiffe_id_of(&cert)?;
    let raw = cert.raw_serial();
    let significant = raw
        .iter()
        .position(|b| *b != 0)
        .map_or(&raw[raw.len().saturating_sub(1)..], |i| &raw[i..]);
    let serial = significant.iter().map(|b| format!("{b:02x}")).collect();
    Ok(CertInfo {
        id,
        serial,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// The SPIFFE ID of the first certificate in `pem_text`.
pub fn pem_identity(pem_text: &str) -> Result<SpiffeId, TlsError> {
    let certs = certificate_blocks("certificate", pem_text, 0)?;
    peer_identity(&certs)
}

/// The SPIFFE ID of a peer: the one URI SAN of the first (end-entity) certificate.
///
/// A server using [`SpiffeClientVerifier`] reads the client's identity after the handshake
/// with this function; the verifier has already checked the chain (and, if configured, the
/// allowed identities):
///
/// ```
/// # use switchyard_dataplane_runtime::tls::{peer_identity, TlsError};
/// # use switchyard_model::SpiffeId;
/// fn client_of(conn: &rustls::ServerConnection) -> Result<SpiffeId, TlsError> {
///     peer_identity(conn.peer_certificates().unwrap_or_default())
/// }
/// ```
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    spiffe_id_of(&parse_certificate(leaf)?)
}

fn private_key(text: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut keys = pem_blocks("private key", text)?
        .into_iter()
        .filter(|b| b.tag() != "EC PARAMETERS")
        .map(|b| match b.tag() {
            "PRIVATE KEY" => Ok(PrivateKeyDer::from(PrivatePkcs8KeyDer::from(
                b.into_contents(),
            ))),
            "EC PRIVATE KEY" => Ok(PrivateKeyDer::from(PrivateSec1KeyDer::from(
                b.into_contents(),
            ))),
            "RSA PRIVATE KEY" => Ok(PrivateKeyDer::from(PrivatePkcs1KeyDer::from(
                b.into_contents(),
            ))),
            other => Err(TlsError::Key(format!(
                "{other:?} blocks are not supported: use PRIVATE KEY (PKCS#8), EC PRIVATE KEY or RSA PRIVATE KEY"
            ))),
        });
    let key = keys
        .next()
        .ok_or_else(|| TlsError::Key("no PEM block".into()))??;
    if keys.next().is_some() {
        return Err(TlsError::Key("more than one key block".into()));
    }
    Ok(key)
}

/// Maps webpki's verdict to the rustls error rustls itself would report.
fn chain_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let cert_error = match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        #[allow(deprecated)]
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

fn identity_error(error: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Verifies `end_entity` (with `intermediates`) against `bundle` for `usage`, then its SPIFFE
/// ID against `expected`.
fn verify_peer(
    bundle: &TrustBundle,
    expected: Option<&Expected>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
    peer: &'static str,
) -> Result<SpiffeId, rustls::Error> {
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if let Err(e) = cert.verify_for_usage(
        ALGORITHMS.all,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    ) {
        let hint = match e {
            webpki::Error::UnknownIssuer => "is the peer's root in the trust bundle?",
            // webpki finds issuers by subject name: a root with the peer issuer's name but
            // another key (a regenerated CA root, another cluster) fails as a bad signature.
            webpki::Error::InvalidSignatureForPublicKey => {
                "a trusted root or intermediate has the issuer's name but another key: was the CA root regenerated, or is the peer from another cluster?"
            }
            _ => "",
        };
        debug!(
            peer,
            error = %e,
            hint,
            roots = bundle.roots().len(),
            "peer certificate does not chain to the trust bundle"
        );
        return Err(chain_error(e));
    }
    let id = parse_certificate(end_entity)
        .and_then(|c| spiffe_id_of(&c))
        .map_err(|e| {
            debug!(peer, error = %e, "peer certificate has no usable spiffe id");
            identity_error(e)
        })?;
    if let Some(expected) = expected
        && !expected.matches(&id)
    {
        let error = TlsError::IdentityMismatch {
            expected: expected.to_string(),
            presented: id.to_string(),
        };
        debug!(peer, identity = %id, %error, "peer identity refused");
        return Err(identity_error(error));
    }
    Ok(id)
}

/// The identities a peer may present.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expected {
    /// Exactly this identity.
    Exact(SpiffeId),
    /// Any of these identities.
    AnyOf(Vec<SpiffeId>),
    /// Any identity in this trust domain.
    TrustDomain(String),
}

impl Expected {
    /// Whether `id` is acceptable.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Expected::Exact(want) => want == id,
            Expected::AnyOf(ids) => ids.contains(id),
            Expected::TrustDomain(td) => &id.trust_domain == td,
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Exact(id) => write!(f, "{id}"),
            Expected::AnyOf(ids) => {
                f.write_str("one of [")?;
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}")?;
                }
                f.write_str("]")
            }
            Expected::TrustDomain(td) => write!(f, "any identity in trust domain {td}"),
        }
    }
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

#[derive(Debug)]
struct StoreInner {
    current: ArcSwapOption<Current>,
    bundle: ArcSwap<TrustBundle>,
    bundle_tx: watch::Sender<Arc<TrustBundle>>,
}

/// The workload certificate and trust bundle a dataplane uses, shared lock-free between one
/// writer (the rotation task) and every TLS configuration and reader.
///
/// Cloning is cheap and yields a handle to the same store. Only one owner should call the
/// setters; readers see each update atomically.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    inner: Arc<StoreInner>,
}

impl IdentityStore {
    /// A store trusting `bundle`, without a certificate yet.
    pub fn new(bundle: TrustBundle) -> Self {
        let bundle = Arc::new(bundle);
        let (bundle_tx, _) = watch::channel(bundle.clone());
        IdentityStore {
            inner: Arc::new(StoreInner {
                current: ArcSwapOption::empty(),
                bundle: ArcSwap::new(bundle),
                bundle_tx,
            }),
        }
    }

    /// Installs a new workload certificate: `chain_pem` holds the leaf first, then any
    /// intermediates (and optionally the root); each element may hold one or more PEM
    /// `CERTIFICATE` blocks. `key_pem` is the leaf's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    ///
    /// Refused, leaving the current certificate in place, when the PEM does not parse, the key
    /// does not match the leaf, or the leaf does not have exactly one URI SAN holding a
    /// workload SPIFFE ID. A chain that does not verify against the current bundle is
    /// installed with a warning (the bundle may be about to change).
    pub fn set_certificate<S: AsRef<str>>(
        &self,
        chain_pem: &[S],
        key_pem: &str,
    ) -> Result<CertInfo, TlsError> {
        let mut chain = Vec::new();
        for part in chain_pem {
            let certs = certificate_blocks("certificate chain", part.as_ref(), chain.len())?;
            chain.extend(certs);
        }
        let leaf = chain.first().ok_or(TlsError::EmptyChain)?;
        let info = cert_info(leaf)?;
        let key = provider()
            .key_provider
            .load_private_key(private_key(key_pem)?)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch);
            }
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
                debug!("signing key cannot report its public key; key match not checked");
            }
            Err(e) => return Err(TlsError::Certificate(e.to_string())),
        }
        self.warn_if_untrusted(&certified, &info);
        info!(
            identity = %info.id,
            serial = %info.serial,
            not_after = %info.not_after,
            "workload certificate installed"
        );
        self.inner.current.store(Some(Arc::new(Current {
            key: Arc::new(certified),
            info: info.clone(),
        })));
        Ok(info)
    }

    fn warn_if_untrusted(&self, certified: &CertifiedKey, info: &CertInfo) {
        let Some((leaf, rest)) = certified.cert.split_first() else {
            return;
        };
        let bundle = self.inner.bundle.load();
        if let Err(e) = verify_peer(
            &bundle,
            None,
            leaf,
            rest,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            "self",
        ) {
            warn!(
                identity = %info.id,
                serial = %info.serial,
                error = %e,
                "the new workload certificate does not verify against the current trust bundle; peers may refuse it"
            );
        }
    }

    /// Replaces the trust bundle. Returns whether it changed; subscribers of
    /// [`subscribe_bundle`](Self::subscribe_bundle) are notified only on a change.
    pub fn set_bundle(&self, bundle: TrustBundle) -> bool {
        if **self.inner.bundle.load() == bundle {
            return false;
        }
        let bundle = Arc::new(bundle);
        self.inner.bundle.store(bundle.clone());
        info!(roots = bundle.roots().len(), "trust bundle updated");
        self.inner.bundle_tx.send_replace(bundle);
        true
    }

    /// The current workload certificate and key, if one was installed.
    pub fn certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.inner.current.load().as_ref().map(|c| c.key.clone())
    }

    /// The current certificate chain as PEM (leaf first); never the key.
    pub fn chain_pem(&self) -> Option<String> {
        let ck = self.certificate()?;
        let blocks: Vec<pem::Pem> = ck
            .cert
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
            .collect();
        Some(pem::encode_many(&blocks))
    }

    /// Facts about the current workload certificate, if one was installed.
    pub fn info(&self) -> Option<CertInfo> {
        self.inner.current.load().as_ref().map(|c| c.info.clone())
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.inner.bundle.load_full()
    }

    /// A receiver that sees every change of the trust bundle (rotation code renews the
    /// certificate when it fires). The current bundle counts as seen.
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.inner.bundle_tx.subscribe()
    }
}

/// Verifies servers (used by clients): the chain must lead to the store's current trust bundle
/// and the URI SAN must be an [`Expected`] identity. The TLS server name is ignored.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    store: IdentityStore,
    expected: Expected,
}

impl SpiffeServerVerifier {
    /// A verifier reading the bundle from `store` at each handshake.
    pub fn new(store: IdentityStore, expected: Expected) -> Self {
        SpiffeServerVerifier { store, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self.store.inner.bundle.load();
        verify_peer(
            &bundle,
            Some(&self.expected),
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            "server",
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

/// Verifies clients (used by servers): the chain must lead to the store's current trust bundle,
/// optionally with an [`Expected`] identity. Whether a certificate is required at all is
/// `mandatory`. After the handshake the server reads the client's identity with
/// [`peer_identity`] on the connection's peer certificates.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    store: IdentityStore,
    mandatory: bool,
    expected: Option<Expected>,
}

impl SpiffeClientVerifier {
    /// A verifier reading the bundle from `store` at each handshake; `mandatory` refuses
    /// clients without a certificate.
    pub fn new(store: IdentityStore, mandatory: bool) -> Self {
        SpiffeClientVerifier {
            store,
            mandatory,
            expected: None,
        }
    }

    /// Also refuses client identities that are not `expected` (typically
    /// [`Expected::TrustDomain`]; authorization policy is applied after the handshake).
    pub fn expecting(mut self, expected: Expected) -> Self {
        self.expected = Some(expected);
        self
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.store.inner.bundle.load();
        verify_peer(
            &bundle,
            self.expected.as_ref(),
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            "client",
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

/// Presents the store's current workload certificate, as client or as server; presents none
/// while the store has no certificate.
#[derive(Debug, Clone)]
pub struct StoreCertResolver {
    store: IdentityStore,
}

impl StoreCertResolver {
    /// A resolver reading `store` at each handshake.
    pub fn new(store: IdentityStore) -> Self {
        StoreCertResolver { store }
    }
}

impl ResolvesClientCert for StoreCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.store.certificate()
    }

    fn has_certs(&self) -> bool {
        self.store.inner.current.load().is_some()
    }
}

impl ResolvesServerCert for StoreCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.certificate()
    }
}

/// A TLS 1.3 client configuration presenting the store's certificate and accepting servers
/// whose certificate chains to the store's bundle and names an `expected` identity. The server
/// name given when connecting is ignored for verification (an IP address is fine).
///
/// The store is read at every handshake: a rotated certificate or bundle applies to the next
/// connection without rebuilding this configuration. Resumption is disabled so that every
/// connection is verified against the current bundle.
pub fn client_config(
    store: &IdentityStore,
    expected: Expected,
    alpn: Vec<Vec<u8>>,
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect(RING_HAS_TLS13)
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            store.clone(),
            expected,
        )))
        .with_client_cert_resolver(Arc::new(StoreCertResolver::new(store.clone())));
    config.alpn_protocols = alpn;
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// A TLS 1.3 server configuration presenting the store's certificate and verifying client
/// certificates against the store's bundle; clients without a certificate are refused when
/// `mandatory_client_auth`. Read the client's identity with [`peer_identity`].
///
/// The store is read at every handshake: a rotated certificate or bundle applies to the next
/// connection without rebuilding this configuration. Session resumption and tickets are off.
pub fn server_config(
    store: &IdentityStore,
    mandatory_client_auth: bool,
    alpn: Vec<Vec<u8>>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect(RING_HAS_TLS13)
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(
            store.clone(),
            mandatory_client_auth,
        )))
        .with_cert_resolver(Arc::new(StoreCertResolver::new(store.clone())));
    config.alpn_protocols = alpn;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io;
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName as Dn, DnType, IsCa, KeyPair,
        KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
    };
    use switchyard_ca::{Authority, AuthorityConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::test_ca::{Ca, TD, id};

    /// What the client saw of the server.
    #[derive(Debug)]
    struct ClientSaw {
        server_id: SpiffeId,
        server_serial: String,
        alpn: Option<Vec<u8>>,
    }

    /// What the server saw of the client.
    #[derive(Debug)]
    struct ServerSaw {
        client_id: Result<SpiffeId, TlsError>,
    }

    #[derive(Debug)]
    struct Outcome {
        client: io::Result<ClientSaw>,
        server: io::Result<ServerSaw>,
    }

    /// Runs one TLS connection over an in-memory pipe. The server writes a byte after its
    /// handshake and the client reads it, so a client certificate refused by the server (which
    /// TLS 1.3 reports after the client's handshake completes) fails on the client side too.
    async fn connect(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Outcome {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut tls = TlsAcceptor::from(server).accept(s).await?;
            let client_id = peer_identity(tls.get_ref().1.peer_certificates().unwrap_or_default());
            tls.write_all(b"k").await?;
            tls.shutdown().await?;
            Ok(ServerSaw { client_id })
        };
        let client_side = async move {
            let name = ServerName::try_from("10.244.1.7").unwrap();
            let mut tls = TlsConnector::from(client).connect(name, c).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            let conn = tls.get_ref().1;
            let certs = conn.peer_certificates().unwrap_or_default();
            Ok(ClientSaw {
                server_id: peer_identity(certs).map_err(io::Error::other)?,
                server_serial: cert_info(&certs[0]).unwrap().serial,
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            })
        };
        let (client, server) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(client_side, server_side)
        })
        .await
        .expect("handshake hung");
        Outcome { client, server }
    }

    fn rustls_error(e: &io::Error) -> &rustls::Error {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a rustls error: {e:?}"))
    }

    /// The [`TlsError`] inside a verifier's `CertificateError::Other`.
    fn verifier_error(e: &io::Error) -> &TlsError {
        match rustls_error(e) {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
                .0
                .downcast_ref::<TlsError>()
                .unwrap_or_else(|| panic!("not a TlsError: {e:?}")),
            other => panic!("expected a verifier error, got {other:?}"),
        }
    }

    /// A chain refused for not leading to a trusted root. Every root our CA generates has the
    /// same subject name and webpki finds issuers by name, so a certificate from a foreign root
    /// usually fails as a bad signature against our root rather than as an unknown issuer.
    fn assert_untrusted(e: &io::Error) {
        assert!(
            matches!(
                rustls_error(e),
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature
                )
            ),
            "expected an untrusted chain, got {e:?}"
        );
    }

    fn h2() -> Vec<Vec<u8>> {
        vec![b"h2".to_vec()]
    }

    #[tokio::test]
    async fn mutual_tls_with_the_right_identities() {
        let ca = Ca::new();
        let (a, b) = (id("default", "client"), id("default", "server"));
        let client_store = ca.store(&a);
        let server_store = ca.store(&b);
        let out = connect(
            client_config(&client_store, Expected::Exact(b.clone()), h2()),
            server_config(&server_store, true, h2()),
        )
        .await;
        let client = out.client.unwrap();
        assert_eq!(client.server_id, b);
        assert_eq!(client.server_serial, server_store.info().unwrap().serial);
        assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(out.server.unwrap().client_id.unwrap(), a);
    }

    #[tokio::test]
    async fn any_of_and_trust_domain_expectations() {
        let ca = Ca::new();
        let b = id("web", "server");
        let client_store = ca.store(&id("default", "client"));
        let server_config = server_config(&ca.store(&b), true, h2());
        for expected in [
            Expected::AnyOf(vec![id("web", "other"), b.clone()]),
            Expected::TrustDomain(TD.into()),
        ] {
            let out = connect(
                client_config(&client_store, expected.clone(), h2()),
                server_config.clone(),
            )
            .await;
            assert_eq!(out.client.unwrap().server_id, b, "{expected}");
        }
        let out = connect(
            client_config(
                &client_store,
                Expected::TrustDomain("other.domain".into()),
                h2(),
            ),
            server_config,
        )
        .await;
        let err = out.client.unwrap_err();
        assert_eq!(
            verifier_error(&err).to_string(),
            format!(
                "peer identity {b} is not the expected any identity in trust domain other.domain"
            )
        );
    }

    #[tokio::test]
    async fn server_with_the_wrong_identity_is_refused_naming_both() {
        let ca = Ca::new();
        let (a, b) = (id("default", "a"), id("default", "b"));
        let client_store = ca.store(&id("default", "client"));
        let out = connect(
            client_config(&client_store, Expected::Exact(b.clone()), h2()),
            server_config(&ca.store(&a), true, h2()),
        )
        .await;
        let err = out.client.unwrap_err();
        let mismatch = verifier_error(&err);
        assert!(matches!(mismatch, TlsError::IdentityMismatch { .. }));
        assert_eq!(
            mismatch.to_string(),
            format!("peer identity {a} is not the expected {b}")
        );
        // Operators see both IDs in the error text too.
        assert!(
            err.to_string().contains(&a.to_string()) && err.to_string().contains(&b.to_string()),
            "{err}"
        );
        // The server learns of it through the client's alert.
        let server_err = out.server.unwrap_err();
        assert!(
            matches!(
                rustls_error(&server_err),
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateUnknown)
            ),
            "{server_err:?}"
        );
    }

    #[tokio::test]
    async fn foreign_server_certificate_is_refused() {
        let (ca, foreign) = (Ca::new(), Ca::new());
        let b = id("default", "server");
        let client_store = ca.store(&id("default", "client"));
        // The server trusts our CA (so it would accept the client) but its own certificate
        // comes from the foreign root.
        let server_store = ca.store_with(&foreign, &b);
        let out = connect(
            client_config(&client_store, Expected::Exact(b), h2()),
            server_config(&server_store, true, h2()),
        )
        .await;
        let err = out.client.unwrap_err();
        assert_untrusted(&err);
        assert!(out.server.is_err());
    }

    #[tokio::test]
    async fn foreign_client_certificate_is_refused() {
        let (ca, foreign) = (Ca::new(), Ca::new());
        let b = id("default", "server");
        let client_store = ca.store_with(&foreign, &id("default", "client"));
        let out = connect(
            client_config(&client_store, Expected::Exact(b.clone()), h2()),
            server_config(&ca.store(&b), false, h2()),
        )
        .await;
        let err = out.server.unwrap_err();
        assert_untrusted(&err);
        let client_err = out.client.unwrap_err();
        assert!(
            matches!(
                rustls_error(&client_err),
                rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA | rustls::AlertDescription::DecryptError
                )
            ),
            "{client_err:?}"
        );
    }

    #[tokio::test]
    async fn client_without_certificate() {
        let ca = Ca::new();
        let b = id("default", "server");
        let anonymous = IdentityStore::new(ca.bundle());
        let client = client_config(&anonymous, Expected::Exact(b.clone()), h2());
        let server_store = ca.store(&b);

        let out = connect(client.clone(), server_config(&server_store, true, h2())).await;
        let err = out.server.unwrap_err();
        assert_eq!(rustls_error(&err), &rustls::Error::NoCertificatesPresented);
        assert!(out.client.is_err());

        // Optional client auth: the connection works and the client has no identity.
        let out = connect(client, server_config(&server_store, false, h2())).await;
        assert_eq!(out.client.unwrap().server_id, b);
        assert!(matches!(
            out.server.unwrap().client_id,
            Err(TlsError::NoPeerCertificate)
        ));
    }

    #[tokio::test]
    async fn client_verifier_can_restrict_identities() {
        let ca = Ca::new();
        let b = id("default", "server");
        let server_store = ca.store(&b);
        let client_store = ca.store(&id("default", "client"));
        let verifier = SpiffeClientVerifier::new(server_store.clone(), true)
            .expecting(Expected::Exact(id("default", "someone-else")));
        let mut server = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(StoreCertResolver::new(server_store)));
        server.alpn_protocols = h2();
        let out = connect(
            client_config(&client_store, Expected::Exact(b), h2()),
            Arc::new(server),
        )
        .await;
        let err = out.server.unwrap_err();
        assert_eq!(
            verifier_error(&err).to_string(),
            "peer identity spiffe://cluster.local/ns/default/sa/client is not the expected \
             spiffe://cluster.local/ns/default/sa/someone-else"
        );
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn bundle_swap_applies_without_rebuilding_the_config() {
        let (old, new) = (Ca::new(), Ca::new());
        let b = id("default", "server");
        let client_store = old.store(&id("default", "client"));
        let mut bundle_changes = client_store.subscribe_bundle();
        let client = client_config(&client_store, Expected::Exact(b.clone()), h2());
        // The server already trusts both roots and was issued by the new one.
        let server_store = old.store_with(&new, &b);
        assert!(
            server_store
                .set_bundle(TrustBundle::from_pem(&(old.root_pem() + &new.root_pem())).unwrap())
        );
        let server = server_config(&server_store, true, h2());

        let out = connect(client.clone(), server.clone()).await;
        assert_untrusted(&out.client.unwrap_err());
        assert!(!bundle_changes.has_changed().unwrap());

        let both = TrustBundle::from_pem(&(new.root_pem() + &old.root_pem())).unwrap();
        assert!(client_store.set_bundle(both.clone()));
        assert!(bundle_changes.has_changed().unwrap());
        assert_eq!(**bundle_changes.borrow_and_update(), both);
        // The same content again is not a change.
        assert!(!client_store.set_bundle(both));
        assert!(!bundle_changes.has_changed().unwrap());

        let out = connect(client.clone(), server.clone()).await;
        assert_eq!(out.client.unwrap().server_id, b);
        assert_eq!(
            out.server.unwrap().client_id.unwrap(),
            id("default", "client")
        );

        // Dropping the new root refuses the server again.
        assert!(client_store.set_bundle(old.bundle()));
        let out = connect(client, server).await;
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn rotated_certificate_is_presented_on_the_next_handshake() {
        let ca = Ca::new();
        let b = id("default", "server");
        let client_store = ca.store(&id("default", "client"));
        let server_store = ca.store(&b);
        let client = client_config(&client_store, Expected::Exact(b.clone()), h2());
        let server = server_config(&server_store, true, h2());
        let first = server_store.info().unwrap().serial;

        let out = connect(client.clone(), server.clone()).await;
        assert_eq!(out.client.unwrap().server_serial, first);

        let (issued, key) = ca.issue(&b);
        let info = server_store.set_certificate(&issued.chain, &key).unwrap();
        assert_eq!(info.serial, issued.serial);
        assert_ne!(info.serial, first);
        assert_eq!(server_store.info().unwrap(), info);

        let out = connect(client, server).await;
        assert_eq!(out.client.unwrap().server_serial, issued.serial);
    }

    /// An authority signing with an intermediate under `root`'s key.
    fn intermediate_under(root: &Ca, root_dir_key: &str) -> Authority {
        let root_key = KeyPair::from_pem(root_dir_key).unwrap();
        let root_pem = root.root_pem();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = Dn::new();
        dn.push(DnType::CommonName, "cluster intermediate");
        params.distinguished_name = dn;
        let cert = params.signed_by(&key, &issuer).unwrap();
        Authority::new(
            &cert.pem(),
            key,
            vec![root_pem.clone()],
            vec![root_pem],
            AuthorityConfig::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn chains_through_an_intermediate() {
        let root = Ca::new();
        let intermediate = Ca::with_authority(intermediate_under(&root, &root.root_key_pem()));
        let b = id("default", "server");
        let (issued, key) = intermediate.issue(&b);
        assert_eq!(issued.chain.len(), 3, "leaf, intermediate, root");
        let server_store = IdentityStore::new(root.bundle());
        // Leaf and intermediate only: the root comes from the peer's bundle.
        server_store
            .set_certificate(&issued.chain[..2], &key)
            .unwrap();
        let client_store = intermediate.store_with(&intermediate, &id("default", "client"));
        assert_eq!(*client_store.bundle(), root.bundle());
        let out = connect(
            client_config(&client_store, Expected::Exact(b.clone()), h2()),
            server_config(&server_store, true, h2()),
        )
        .await;
        assert_eq!(out.client.unwrap().server_id, b);
        assert_eq!(
            out.server.unwrap().client_id.unwrap(),
            id("default", "client")
        );
    }

    fn self_signed(sans: Vec<SanType>) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn set_certificate_refuses_bad_input_and_keeps_the_current_one() {
        let ca = Ca::new();
        let store = ca.store(&id("default", "echo"));
        let before = store.info().unwrap();
        let (issued, _) = ca.issue(&id("default", "echo"));
        let (_, other_key) = ca.issue(&id("default", "echo"));

        let err = store
            .set_certificate(&issued.chain, &other_key)
            .unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch), "{err}");

        let (two, key) = self_signed(vec![
            uri("spiffe://cluster.local/ns/a/sa/b"),
            uri("spiffe://cluster.local/ns/a/sa/c"),
        ]);
        let err = store.set_certificate(&[two], &key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate has 2 URI SANs, a workload certificate needs exactly one"
        );

        let (dns_only, key) = self_signed(vec![SanType::DnsName("echo".try_into().unwrap())]);
        let err = store.set_certificate(&[dns_only], &key).unwrap_err();
        assert!(matches!(err, TlsError::UriSanCount(0)), "{err}");

        let (not_spiffe, key) = self_signed(vec![uri("https://example.invalid/x")]);
        let err = store.set_certificate(&[not_spiffe], &key).unwrap_err();
        assert!(matches!(err, TlsError::NotSpiffe(_)), "{err}");

        let err = store.set_certificate::<&str>(&[], &other_key).unwrap_err();
        assert!(matches!(err, TlsError::EmptyChain), "{err}");

        let err = store
            .set_certificate(&issued.chain, "not a key")
            .unwrap_err();
        assert!(matches!(err, TlsError::Key(_)), "{err}");

        let err = store
            .set_certificate(&[other_key.as_str()], &other_key)
            .unwrap_err();
        assert!(
            matches!(err, TlsError::UnexpectedBlock { ref tag, .. } if tag == "PRIVATE KEY"),
            "{err}"
        );

        assert_eq!(store.info().unwrap(), before);
    }

    #[test]
    fn certificate_facts_match_the_ca() {
        let ca = Ca::new();
        let who = id("prod", "api");
        let store = IdentityStore::new(ca.bundle());
        assert!(store.certificate().is_none() && store.info().is_none());
        let (issued, key) = ca.issue(&who);
        // One concatenated string works as well as one string per certificate.
        let info = store
            .set_certificate(&[issued.chain.concat()], &key)
            .unwrap();
        assert_eq!(info.id, who);
        assert_eq!(info.serial, issued.serial);
        assert_eq!(
            info.not_after,
            issued.not_after.replace_nanosecond(0).unwrap()
        );
        assert!(info.not_before < OffsetDateTime::now_utc());
        assert_eq!(store.certificate().unwrap().cert.len(), 2);
    }

    #[test]
    fn trust_bundle_parsing_and_equality() {
        let (a, b) = (Ca::new(), Ca::new());
        let ab = TrustBundle::from_pem(&(a.root_pem() + &b.root_pem())).unwrap();
        let ba = TrustBundle::from_pem(&(b.root_pem() + "\n" + &a.root_pem())).unwrap();
        assert_eq!(ab.roots().len(), 2);
        assert_eq!(ab, ba);
        assert_ne!(ab, a.bundle());
        let dup = TrustBundle::from_pem(&(a.root_pem() + &a.root_pem())).unwrap();
        assert_eq!(dup, a.bundle());
        assert_eq!(dup.roots().len(), 1);
        assert_eq!(TrustBundle::from_pem(ab.pem()).unwrap(), ab);
        assert_eq!(ab.pem().matches("BEGIN CERTIFICATE").count(), 2);
        let crlf = a.root_pem().replace('\n', "\r\n");
        assert_eq!(
            TrustBundle::from_pem(&crlf).unwrap().pem(),
            a.bundle().pem()
        );

        assert!(matches!(
            TrustBundle::from_pem(""),
            Err(TlsError::EmptyBundle)
        ));
        assert!(matches!(
            TrustBundle::from_pem("hello"),
            Err(TlsError::EmptyBundle)
        ));
        let (_, key) = self_signed(vec![]);
        let err = TrustBundle::from_pem(&(a.root_pem() + &key)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "trust bundle block 1 is a \"PRIVATE KEY\" block, only CERTIFICATE blocks are allowed"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            TrustBundle::from_pem(garbage),
            Err(TlsError::BadRoot { index: 0, .. })
        ));
    }

    #[test]
    fn peer_identity_needs_exactly_one_spiffe_uri() {
        let ca = Ca::new();
        let who = id("default", "echo");
        let (issued, _) = ca.issue(&who);
        let chain = certificate_blocks("test", &issued.chain.concat(), 0).unwrap();
        assert_eq!(peer_identity(&chain).unwrap(), who);
        assert!(matches!(
            peer_identity(&[]),
            Err(TlsError::NoPeerCertificate)
        ));
        let (none, _) = self_signed(vec![]);
        let none = certificate_blocks("test", &none, 0).unwrap();
        assert_eq!(
            peer_identity(&none).unwrap_err().to_string(),
            "certificate has 0 URI SANs, a workload certificate needs exactly one"
        );
        assert!(matches!(
            peer_identity(&[CertificateDer::from(vec![1, 2, 3])]),
            Err(TlsError::Certificate(_))
        ));
    }

    #[test]
    fn expected_matching_and_display() {
        let (a, b) = (id("x", "a"), id("x", "b"));
        assert!(Expected::Exact(a.clone()).matches(&a));
        assert!(!Expected::Exact(a.clone()).matches(&b));
        let any = Expected::AnyOf(vec![a.clone(), b.clone()]);
        assert!(any.matches(&b));
        assert_eq!(
            any.to_string(),
            "one of [spiffe://cluster.local/ns/x/sa/a, spiffe://cluster.local/ns/x/sa/b]"
        );
        assert!(Expected::TrustDomain(TD.into()).matches(&a));
        assert!(!Expected::TrustDomain("other".into()).matches(&a));
        assert!(!Expected::AnyOf(vec![]).matches(&a));
    }
}
