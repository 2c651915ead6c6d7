//! The xDS client pieces dataplanes share. For now: following the trust bundle (`ROOTCA`)
//! over delta ADS, ACKing what is applied and NACKing a bundle that does not parse (the last
//! good bundle stays in use), reconnecting with backoff.

use std::time::Duration;

use prost::Message;
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::core::v3::Node;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
use switchyard_protos::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use switchyard_protos::envoy::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::tls::{IdentityStore, TrustBundle};

/// The trust bundle secret's name.
pub const ROOT_CA: &str = "ROOTCA";

/// Why one ADS stream ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// Connecting failed.
    #[error("cannot connect to {address}: {source} (is the control plane running?)")]
    Connect {
        /// Address.
        address: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// The stream failed.
    #[error("ads stream: {0}")]
    Stream(#[from] tonic::Status),
    /// The server closed the stream.
    #[error("ads stream closed by the server")]
    Closed,
}

/// The PEM roots of a `ROOTCA` secret.
pub fn bundle_pem(secret: &tls::Secret) -> Option<String> {
    use switchyard_protos::envoy::envoy::config::core::v3::data_source::Specifier;
    let tls::secret::Type::ValidationContext(vc) = secret.r#type.as_ref()? else {
        return None;
    };
    match vc.trusted_ca.as_ref()?.specifier.as_ref()? {
        Specifier::InlineString(s) => Some(s.clone()),
        Specifier::InlineBytes(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// Follows `ROOTCA` from the control plane at `address` as `node`, installing each good
/// bundle into `store`. Never returns: reconnects with backoff.
pub async fn follow_bundle(address: String, node: Node, store: IdentityStore) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match follow_once(&address, &node, &store).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "trust bundle stream ended")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

async fn follow_once(address: &str, node: &Node, store: &IdentityStore) -> Result<(), XdsError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| XdsError::Connect {
            address: address.to_string(),
            source: e,
        })?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| XdsError::Connect {
            address: address.to_string(),
            source: e,
        })?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let first = DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: TypeUrl::Secret.as_str().to_string(),
        resource_names_subscribe: vec![ROOT_CA.to_string()],
        ..Default::default()
    };
    let _ = tx.send(first).await;
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    info!(%address, "following the trust bundle");
    while let Some(resp) = responses.next().await {
        let resp: DeltaDiscoveryResponse = resp?;
        let mut error = None;
        for r in &resp.resources {
            if r.name != ROOT_CA {
                continue;
            }
            let parsed = r
                .resource
                .as_ref()
                .ok_or_else(|| "resource body missing".to_string())
                .and_then(|any| {
                    tls::Secret::decode(any.value.as_slice()).map_err(|e| e.to_string())
                })
                .and_then(|s| {
                    bundle_pem(&s).ok_or_else(|| "not an inline validation context".into())
                })
                .and_then(|pem| TrustBundle::from_pem(&pem).map_err(|e| e.to_string()));
            match parsed {
                Ok(bundle) => {
                    if store.set_bundle(bundle) {
                        debug!(version = %r.version, "trust bundle applied");
                    }
                }
                Err(e) => error = Some(format!("ROOTCA: {e}")),
            }
        }
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: error.map(|message| {
                warn!(%message, "trust bundle rejected; the last good one stays in use");
                RpcStatus {
                    code: tonic::Code::InvalidArgument as i32,
                    message,
                    details: Vec::new(),
                }
            }),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    Err(XdsError::Closed)
}
