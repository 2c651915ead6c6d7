//! The SDS server a local Envoy talks to over a Unix socket: `default` (the workload's
//! certificate chain and key, as the rotation last installed them) and `ROOTCA` (the trust
//! bundle). State of the world per stream; a response goes out whenever a requested secret
//! changes, and a NACK is logged and counted (the proxy keeps its last good secret).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use switchyard_dataplane_runtime::identity::WorkloadCert;
use switchyard_dataplane_runtime::tls::IdentityStore;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use switchyard_protos::envoy::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use switchyard_protos::{TypeUrl, pack};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// The workload certificate secret.
pub const WORKLOAD_CERT: &str = "default";
/// The trust bundle secret.
pub const ROOT_CA: &str = "ROOTCA";

/// Counters of the SDS server.
#[derive(Debug, Clone, Default)]
pub struct SdsMetrics {
    /// Responses sent.
    pub pushes: Counter,
    /// NACKs received.
    pub nacks: Counter,
}

/// The SDS service.
#[derive(Debug, Clone)]
pub struct SdsService {
    store: IdentityStore,
    certs: watch::Receiver<Option<Arc<WorkloadCert>>>,
    metrics: SdsMetrics,
    nonce: Arc<AtomicU64>,
}

impl SdsService {
    /// Serves the certificates `certs` announces and the bundle of `store`.
    pub fn new(
        store: IdentityStore,
        certs: watch::Receiver<Option<Arc<WorkloadCert>>>,
        metrics: SdsMetrics,
    ) -> Self {
        SdsService {
            store,
            certs,
            metrics,
            nonce: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The secret `name` now, with its version; `None` when it does not exist (yet).
    fn secret(&self, name: &str) -> Option<(String, tls::Secret)> {
        let inline = |s: String| core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineString(s)),
            ..Default::default()
        };
        match name {
            WORKLOAD_CERT => {
                let cert = self.certs.borrow().clone()?;
                Some((
                    cert.info.serial.clone(),
                    tls::Secret {
                        name: name.into(),
                        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                            certificate_chain: Some(inline(cert.chain_pem.concat())),
                            private_key: Some(inline(cert.key_pem.clone())),
                            ..Default::default()
                        })),
                    },
                ))
            }
            ROOT_CA => {
                let pem = self.store.bundle().pem().to_string();
                let version = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(pem.as_bytes()));
                Some((
                    version,
                    tls::Secret {
                        name: name.into(),
                        r#type: Some(tls::secret::Type::ValidationContext(
                            tls::CertificateValidationContext {
                                trusted_ca: Some(inline(pem)),
                                ..Default::default()
                            },
                        )),
                    },
                ))
            }
            _ => None,
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let svc = self.clone();
        tokio::spawn(async move {
            let mut certs = svc.certs.clone();
            let mut bundles = svc.store.subscribe_bundle();
            let mut names: Vec<String> = Vec::new();
            let mut sent: BTreeMap<String, String> = BTreeMap::new();
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { return };
                        if let Some(e) = &req.error_detail {
                            svc.metrics.nacks.inc();
                            warn!(nonce = %req.response_nonce, message = %e.message, "proxy rejected a secret");
                        }
                        if req.resource_names != names {
                            debug!(names = ?req.resource_names, "secrets subscribed");
                            names = req.resource_names.clone();
                            sent.clear();
                        }
                    }
                    changed = certs.changed() => if changed.is_err() { return },
                    changed = bundles.changed() => if changed.is_err() { return },
                }
                let current: Vec<(String, String, tls::Secret)> = names
                    .iter()
                    .filter_map(|n| svc.secret(n).map(|(v, s)| (n.clone(), v, s)))
                    .collect();
                let changed = current.iter().any(|(n, v, _)| sent.get(n) != Some(v));
                if !changed {
                    continue;
                }
                let version = current
                    .iter()
                    .map(|(_, v, _)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                let nonce = svc.nonce.fetch_add(1, Ordering::Relaxed).to_string();
                let response = DiscoveryResponse {
                    version_info: version.clone(),
                    resources: current.iter().map(|(_, _, s)| pack(s)).collect(),
                    type_url: TypeUrl::Secret.as_str().to_string(),
                    nonce,
                    ..Default::default()
                };
                sent = current.into_iter().map(|(n, v, _)| (n, v)).collect();
                svc.metrics.pushes.inc();
                info!(%version, names = ?names, "secrets pushed to the proxy");
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "this agent serves SDS as state of the world (api_type GRPC); use GRPC in the proxy's sds_config",
        ))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        let found: Vec<_> = req
            .resource_names
            .iter()
            .filter_map(|n| self.secret(n))
            .collect();
        Ok(Response::new(DiscoveryResponse {
            version_info: found
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join("."),
            resources: found.iter().map(|(_, s)| pack(s)).collect(),
            type_url: TypeUrl::Secret.as_str().to_string(),
            ..Default::default()
        }))
    }
}
