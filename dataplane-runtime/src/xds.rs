//! Following the trust bundle (`ROOTCA`) over delta ADS with the shared
//! [`AdsClient`](crate::ads_client::AdsClient): ACKs what is applied, NACKs a bundle that
//! does not parse (the last good bundle stays in use), reconnects with backoff.

use std::time::Duration;

use prost::Message;
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::core::v3::Node;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::ads_client::{AdsClient, AdsError, Variant};
use crate::tls::{IdentityStore, TrustBundle};

/// The trust bundle secret's name.
pub const ROOT_CA: &str = "ROOTCA";

/// Why one ADS stream ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
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

/// Follows `ROOTCA` from the control plane over `channel` (see
/// [`control_plane_channel`](crate::identity::control_plane_channel); `address` names it in
/// logs) as `node`, installing each good bundle into `store`. Never returns: each ended
/// stream is opened again with backoff (the channel reconnects).
pub async fn follow_bundle(channel: Channel, address: String, node: Node, store: IdentityStore) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match follow_once(channel.clone(), &address, &node, &store).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                warn!(error = %e, %address, retry_in_ms = backoff.as_millis() as u64, "trust bundle stream ended")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

async fn follow_once(
    channel: Channel,
    address: &str,
    node: &Node,
    store: &IdentityStore,
) -> Result<(), XdsError> {
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
