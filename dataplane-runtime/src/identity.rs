//! Workload identity: the key is generated here and never leaves the process; a CSR goes to
//! the control plane's `CertificateService`, the chain comes back into the
//! [`IdentityStore`](crate::tls::IdentityStore), and a rotation loop renews it at half its
//! lifetime (with jitter), at once when the trust bundle changes, and with backoff while the
//! CA cannot be reached. A certificate stays in use until it expires: a failed renewal never
//! removes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use switchyard_model::SpiffeId;
use switchyard_protos::switchyard::ca::v1::CreateCertificateRequest;
use switchyard_protos::switchyard::ca::v1::certificate_service_client::CertificateServiceClient;
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::tls::{CertInfo, Expected, IdentityStore, TlsError, client_config};

/// What can go wrong getting a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Building the key or CSR failed.
    #[error("cannot build a CSR for {identity}: {source}")]
    Csr {
        /// Identity asked for.
        identity: String,
        /// Cause.
        source: rcgen::Error,
    },
    /// The CA address is not usable.
    #[error("bad CA address {address}: {reason}")]
    Address {
        /// Address given.
        address: String,
        /// Why.
        reason: String,
    },
    /// The CA could not be reached.
    #[error("cannot reach the CA at {address}: {source} (is the control plane running?)")]
    Connect {
        /// Address.
        address: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// The CA refused or failed the request.
    #[error("the CA refused the request ({code:?}): {message}")]
    Refused {
        /// gRPC status code.
        code: tonic::Code,
        /// Message from the CA.
        message: String,
    },
    /// The CA answered with something unusable.
    #[error("the CA answered with an unusable certificate: {0}")]
    Certificate(#[from] TlsError),
    /// The certificate is for another identity than asked for.
    #[error("the CA issued a certificate for {got}, expected {want}")]
    WrongIdentity {
        /// Asked for.
        want: String,
        /// Received.
        got: String,
    },
}

/// A certificate as installed: its facts and the PEM an agent hands to a local proxy.
#[derive(Clone)]
pub struct WorkloadCert {
    /// Facts.
    pub info: CertInfo,
    /// PEM chain, leaf first.
    pub chain_pem: Vec<String>,
    /// PEM private key (never logged, never sent to the control plane).
    pub key_pem: String,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("info", &self.info)
            .field("chain_pem", &self.chain_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A fresh P-256 key and a CSR for `identity`: PEM CSR and PEM PKCS#8 key.
pub fn generate_csr(identity: &SpiffeId) -> Result<(String, String), IdentityError> {
    let err = |source| IdentityError::Csr {
        identity: identity.to_string(),
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().map_err(err)?)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(err)?;
    Ok((csr, key.serialize_pem()))
}

/// How to reach the CA.
#[derive(Debug, Clone)]
pub enum CaTransport {
    /// Plaintext gRPC (port 15010, local and development only).
    Plaintext,
    /// gRPC over TLS (port 15012): the server must present `server` from the bundle in the
    /// store; the client presents the store's current certificate, if any (renewal over mTLS).
    Tls {
        /// The control plane's identity.
        server: SpiffeId,
        /// Trust bundle and (for renewal) the current certificate.
        store: IdentityStore,
    },
}

/// The control plane's identity in a trust domain.
pub fn control_plane_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "switchyard-system", "switchyard")
}

/// A lazily connecting gRPC channel to the control plane at `address` (xDS and the CA share
/// it): plaintext, or TLS verifying the control plane's SPIFFE ID and presenting the store's
/// current certificate. With `mark`, every connection carries that `SO_MARK` (a sidecar's
/// own traffic must not be captured by its pod's rules).
pub fn control_plane_channel(
    address: SocketAddr,
    transport: &CaTransport,
    mark: Option<u32>,
) -> Result<Channel, IdentityError> {
    let uri = format!("http://{address}");
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| IdentityError::Address {
            address: uri.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5));
    Ok(match transport {
        CaTransport::Plaintext => endpoint.connect_with_connector_lazy(tower::service_fn(
            move |_: tonic::codegen::http::Uri| async move {
                let tcp = crate::net::connect(address, mark).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
            },
        )),
        CaTransport::Tls { server, store } => {
            let config =
                client_config(store, Expected::Exact(server.clone()), vec![b"h2".to_vec()]);
            let connector = tokio_rustls::TlsConnector::from(config);
            endpoint.connect_with_connector_lazy(tower::service_fn(
                move |_: tonic::codegen::http::Uri| {
                    let connector = connector.clone();
                    async move {
                        let tcp = crate::net::connect(address, mark).await?;
                        // The name is not checked (the verifier checks the SPIFFE ID).
                        let name =
                            rustls_pki_types::ServerName::try_from("switchyard-control-plane")
                                .map_err(std::io::Error::other)?;
                        let tls = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                    }
                },
            ))
        }
    })
}

/// A client of `switchyard.ca.v1.CertificateService`.
#[derive(Debug, Clone)]
pub struct CaClient {
    client: CertificateServiceClient<Channel>,
    address: String,
    token: Option<String>,
}

impl CaClient {
    /// A client for `address` (`host:port`); connects lazily, so a CA that is down now is
    /// retried at the first request.
    pub fn new(
        address: SocketAddr,
        transport: CaTransport,
        token: Option<String>,
    ) -> Result<Self, IdentityError> {
        let channel = control_plane_channel(address, &transport, None)?;
        Ok(Self::with_channel(channel, address, token))
    }

    /// A client over an existing `channel` to the CA at `address` (named in errors).
    pub fn with_channel(channel: Channel, address: SocketAddr, token: Option<String>) -> Self {
        CaClient {
            client: CertificateServiceClient::new(channel),
            address: address.to_string(),
            token,
        }
    }

    /// Asks for a certificate: `csr` PEM, `ttl` requested (the CA caps it), `impersonate` for
    /// node agents asking on behalf of a pod. Returns the PEM chain, leaf first.
    pub async fn create(
        &mut self,
        csr: String,
        ttl: Option<Duration>,
        impersonate: Option<&SpiffeId>,
    ) -> Result<Vec<String>, IdentityError> {
        let mut req = tonic::Request::new(CreateCertificateRequest {
            csr,
            validity_seconds: ttl.map(|t| t.as_secs() as i64).unwrap_or(0),
            impersonated_identity: impersonate.map(|i| i.to_string()).unwrap_or_default(),
            metadata: None,
        });
        req.set_timeout(Duration::from_secs(10));
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| IdentityError::Refused {
                    code: tonic::Code::InvalidArgument,
                    message: "token is not valid header text".into(),
                })?;
            req.metadata_mut().insert("authorization", value);
        }
        match self.client.create_certificate(req).await {
            Ok(resp) => Ok(resp.into_inner().cert_chain),
            Err(status) => Err(IdentityError::Refused {
                code: status.code(),
                message: if status.code() == tonic::Code::Unavailable {
                    format!("{} (CA at {})", status.message(), self.address)
                } else {
                    status.message().to_string()
                },
            }),
        }
    }

    /// Generates a key, asks for `identity`, and installs the result in `store`.
    pub async fn renew(
        &mut self,
        store: &IdentityStore,
        identity: &SpiffeId,
        ttl: Option<Duration>,
        impersonate: bool,
    ) -> Result<WorkloadCert, IdentityError> {
        let (csr, key) = generate_csr(identity)?;
        let chain = self
            .create(csr, ttl, impersonate.then_some(identity))
            .await?;
        // Check before installing: a certificate for someone else must never be used.
        let leaf = chain.first().map(String::as_str).unwrap_or_default();
        let presented = crate::tls::pem_identity(leaf)?;
        if &presented != identity {
            return Err(IdentityError::WrongIdentity {
                want: identity.to_string(),
                got: presented.to_string(),
            });
        }
        let info = store.set_certificate(&chain, &key)?;
        Ok(WorkloadCert {
            info,
            chain_pem: chain,
            key_pem: key,
        })
    }
}

/// When and how often to renew.
#[derive(Debug, Clone)]
pub struct RotationPolicy {
    /// Lifetime to ask for (`None`: the CA's default).
    pub ttl: Option<Duration>,
    /// Fraction of the lifetime after which to renew.
    pub renew_fraction: f64,
    /// Random spread around that point, as a fraction of the lifetime (either way).
    pub jitter_fraction: f64,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Ask on behalf of the identity (node agents) rather than as it.
    pub impersonate: bool,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            ttl: None,
            renew_fraction: 0.5,
            jitter_fraction: 0.1,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            impersonate: false,
        }
    }
}

impl RotationPolicy {
    /// When a certificate received at `received` and valid until `not_after` is renewed.
    pub fn renew_at(&self, received: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
        let lifetime = (not_after - received).max(time::Duration::ZERO);
        let jitter = if self.jitter_fraction > 0.0 {
            rand::rng().random_range(-self.jitter_fraction..self.jitter_fraction)
        } else {
            0.0
        };
        let at = received + lifetime * (self.renew_fraction + jitter).clamp(0.05, 0.95);
        at.min(not_after)
    }
}

/// Keeps one identity's certificate fresh in a store.
#[derive(Debug)]
pub struct Rotation {
    store: IdentityStore,
    client: CaClient,
    identity: SpiffeId,
    policy: RotationPolicy,
    events: watch::Sender<Option<Arc<WorkloadCert>>>,
}

impl Rotation {
    /// A rotation of `identity` into `store`, asking `client`.
    pub fn new(
        store: IdentityStore,
        client: CaClient,
        identity: SpiffeId,
        policy: RotationPolicy,
    ) -> Self {
        Rotation {
            store,
            client,
            identity,
            policy,
            events: watch::channel(None).0,
        }
    }

    /// Receives every certificate installed.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<WorkloadCert>>> {
        self.events.subscribe()
    }

    /// Renews with backoff until it succeeds; the current certificate stays in use meanwhile.
    async fn renew_until_done(&mut self, reason: &str) -> Arc<WorkloadCert> {
        let mut backoff = self.policy.min_backoff;
        loop {
            match self
                .client
                .renew(
                    &self.store,
                    &self.identity,
                    self.policy.ttl,
                    self.policy.impersonate,
                )
                .await
            {
                Ok(cert) => {
                    info!(
                        identity = %cert.info.id,
                        serial = %cert.info.serial,
                        not_after = %cert.info.not_after,
                        reason,
                        "certificate rotated"
                    );
                    let cert = Arc::new(cert);
                    self.events.send_replace(Some(cert.clone()));
                    return cert;
                }
                Err(e) => {
                    let spread = rand::rng().random_range(0.8..1.2);
                    let wait = backoff.mul_f64(spread);
                    warn!(identity = %self.identity, error = %e, retry_in_ms = wait.as_millis() as u64, "certificate request failed");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
            }
        }
    }

    /// Runs until the task is dropped: the first certificate at once, then renewals.
    pub async fn run(mut self) {
        let mut bundles = self.store.subscribe_bundle();
        bundles.mark_unchanged();
        let mut reason = "first certificate";
        loop {
            let cert = self.renew_until_done(reason).await;
            let received = OffsetDateTime::now_utc();
            let at = self.policy.renew_at(received, cert.info.not_after);
            let wait = (at - received).max(time::Duration::ZERO);
            let wait = Duration::try_from(wait).unwrap_or_default();
            debug!(identity = %self.identity, renew_in_ms = wait.as_millis() as u64, "next renewal");
            tokio::select! {
                _ = tokio::time::sleep(wait) => reason = "half of the lifetime passed",
                changed = bundles.changed() => {
                    reason = "trust bundle changed";
                    if changed.is_err() {
                        // The store is gone: nothing left to keep fresh.
                        return;
                    }
                    bundles.mark_unchanged();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn csr_is_accepted_by_the_ca_checks() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap();
        let (csr, key) = generate_csr(&id).unwrap();
        let checked = switchyard_ca::check_csr(&csr, "cluster.local").unwrap();
        assert_eq!(checked.identity, id);
        assert!(key.contains("PRIVATE KEY"));
        assert!(
            !csr.contains("PRIVATE KEY"),
            "the CSR must not carry the key"
        );
    }

    #[test]
    fn renewal_lands_around_half_the_lifetime() {
        let policy = RotationPolicy::default();
        let now = OffsetDateTime::now_utc();
        let end = now + time::Duration::seconds(100);
        for _ in 0..200 {
            let at = policy.renew_at(now, end);
            let secs = (at - now).as_seconds_f64();
            assert!((40.0..=60.0).contains(&secs), "renewal at {secs} s");
        }
        let expired = policy.renew_at(now, now - time::Duration::seconds(5));
        assert!(expired <= now, "an expired certificate is renewed at once");
    }
}
