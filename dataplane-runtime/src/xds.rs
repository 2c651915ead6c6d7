//! Following the trust bundle (`ROOTCA`) over delta ADS with the shared
//! [`AdsClient`](crate::ads_client::AdsClient): ACKs what is applied, NACKs a bundle that
//! does not parse (the last good bundle stays in use), reconnects with backoff.

use std::time::Duration;

use prost::Message;
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::core::v3::Node;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
use tracing::{debug, info, warn};

use crate::ads_client::{AdsClient, AdsError, Variant};
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
    /// The stream failed or ended.
    #[error(transparent)]
    Ads(#[from] AdsError),
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
    let mut client = AdsClient::connect(channel, node.clone(), Variant::Delta);
    client
        .subscribe(TypeUrl::Secret.as_str(), &[ROOT_CA])
        .await?;
    info!(%address, "following the trust bundle");
    loop {
        let resp = client.next().await?;
        let mut error = None;
        for r in resp.resources.iter().filter(|r| r.name == ROOT_CA) {
            let parsed = tls::Secret::decode(r.resource.value.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    bundle_pem(&s).ok_or_else(|| "not an inline validation context".to_string())
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
        match error {
            Some(message) => {
                warn!(%message, "trust bundle rejected; the last good one stays in use");
                client.nack(&resp, &message).await?;
            }
            None => client.ack(&resp).await?,
        }
    }
}
