//! `switchyard.ca.v1.CertificateService`: authenticates the caller (a bootstrap token in
//! `authorization: Bearer <token>`, or, for renewal on the TLS port, a still-valid client
//! certificate from the trust bundle, or a Kubernetes service-account token checked with
//! TokenReview; see [`crate::authn`]), authorises the identity asked for against the caller and
//! the mesh, and has the CA sign. Every decision is one audit log line (target `audit`) with
//! caller, identity asked, verdict and reason.

use std::sync::Arc;
use std::time::Duration;

use switchyard_ca::check_csr;
use switchyard_model::SpiffeId;
use switchyard_protos::switchyard::ca::v1::{
    CreateCertificateRequest, CreateCertificateResponse,
    certificate_service_server::CertificateService,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::authn::{Authenticator, Caller};
use crate::cache::SnapshotCache;
use crate::trust::Trust;

/// Namespace of the node agents.
pub const AGENT_NAMESPACE: &str = "switchyard-system";
/// Service accounts that may ask for pods' identities on their own node.
pub const AGENT_ACCOUNTS: [&str; 2] = ["ztunnel", "ebpf-agent"];

/// The certificate service.
#[derive(Debug, Clone)]
pub struct CaService {
    trust: Arc<Trust>,
    authn: Authenticator,
    cache: Arc<SnapshotCache>,
}

impl CaService {
    /// A service signing with `trust`'s authority, authenticating with `authn`, authorising
    /// against the mesh in `cache`.
    pub fn new(trust: Arc<Trust>, authn: Authenticator, cache: Arc<SnapshotCache>) -> Self {
        CaService {
            trust,
            authn,
            cache,
        }
    }

    async fn authenticate(
        &self,
        req: &Request<CreateCertificateRequest>,
    ) -> Result<Caller, Status> {
        let Some(header) = req.metadata().get("authorization") else {
            // Renewal: the TLS layer has verified the chain against the bundle.
            if let Some(certs) = req.peer_certs() {
                let id = switchyard_dataplane_runtime::tls::peer_identity(&certs)
                    .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
                return Ok(Caller {
                    ns: id.namespace,
                    sa: id.service_account,
                    node: None,
                    via: "client certificate",
                });
            }
            return Err(Status::unauthenticated(
                "no credentials: send `authorization: Bearer <token>`, or renew over TLS with the current certificate",
            ));
        };
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        self.authn.bearer(token).await
    }

    /// Whether `caller` may have a certificate for `asked`; the reason either way.
    fn authorise(
        &self,
        caller: &Caller,
        caller_id: &SpiffeId,
        asked: &SpiffeId,
    ) -> Result<String, String> {
        if asked == caller_id {
            return Ok("caller's own identity".into());
        }
        let is_agent = caller.ns == AGENT_NAMESPACE && AGENT_ACCOUNTS.contains(&caller.sa.as_str());
        if !is_agent {
            return Err(format!(
                "{caller_id} may only ask for its own identity, not {asked}"
            ));
        }
        let Some(node) = &caller.node else {
            return Err(format!(
                "node agent {caller_id} authenticated by {} has no node: asking for a pod's identity needs a token with a node",
                caller.via
            ));
        };
        let mesh = self.cache.generation().mesh().clone();
        let on_node = mesh.workloads.values().any(|w| {
            w.node.as_deref() == Some(node.as_str())
                && w.namespace == asked.namespace
                && w.service_account == asked.service_account
        });
        if on_node {
            Ok(format!("node agent of {node} for a pod on its node"))
        } else {
            Err(format!(
                "node agent of {node} asked for {asked}, but no pod with that service account runs on {node}"
            ))
        }
    }
}

impl CaService {
    /// One decision: an audit line and a count by verdict class.
    fn audit(&self, caller: &str, asked: &str, verdict: &'static str, reason: &str) {
        info!(target: "audit", caller, identity = asked, verdict, reason, "certificate request");
        self.cache
            .metrics
            .ca_requests
            .get_or_create(&crate::metrics::VerdictLabels { verdict })
            .inc();
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let authority = self.trust.authority();
        let claims = match self.authenticate(&request).await {
            Ok(c) => c,
            Err(status) => {
                self.audit("unauthenticated", "", "unauthenticated", status.message());
                return Err(status);
            }
        };
        let td = authority.config().trust_domain.clone();
        let caller_id = SpiffeId::new(&td, &claims.ns, &claims.sa);
        let caller = caller_id.to_string();
        let req = request.into_inner();
        let csr = match check_csr(&req.csr, &td) {
            Ok(c) => c,
            Err(e) => {
                self.audit(&caller, "", "invalid", &e.to_string());
                return Err(Status::invalid_argument(e.to_string()));
            }
        };
        let asked = if req.impersonated_identity.is_empty() {
            csr.identity.clone()
        } else {
            match req.impersonated_identity.parse::<SpiffeId>() {
                Ok(id) => id,
                Err(e) => {
                    self.audit(
                        &caller,
                        &req.impersonated_identity,
                        "invalid",
                        &e.to_string(),
                    );
                    return Err(Status::invalid_argument(e.to_string()));
                }
            }
        };
        if csr.identity != asked {
            let reason = format!("csr is for {}, the request asks for {asked}", csr.identity);
            self.audit(&caller, &asked.to_string(), "invalid", &reason);
            return Err(Status::invalid_argument(reason));
        }
        match self.authorise(&claims, &caller_id, &asked) {
            Ok(reason) => {
                let requested = (req.validity_seconds > 0)
                    .then(|| Duration::from_secs(req.validity_seconds as u64));
                let issued = authority
                    .issue(&csr, &asked, requested)
                    .map_err(|e| Status::internal(e.to_string()))?;
                self.audit(
                    &caller,
                    &asked.to_string(),
                    "allow",
                    &format!("{reason} ({}); serial {}", claims.via, issued.serial),
                );
                Ok(Response::new(CreateCertificateResponse {
                    cert_chain: issued.chain,
                }))
            }
            Err(reason) => {
                self.audit(&caller, &asked.to_string(), "denied", &reason);
                Err(Status::permission_denied(reason))
            }
        }
    }
}
