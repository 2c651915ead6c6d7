//! State-of-the-World ADS streams.
//!
//! Rules (xDS protocol, "State of the World"):
//! * the first request of each type gets a response, even an empty one;
//! * a request whose `response_nonce` is not the latest nonce of its type is stale and is
//!   ignored entirely;
//! * a request with the latest nonce is an ACK, or a NACK when it carries `error_detail`;
//!   neither is answered unless it also changes the subscription;
//! * LDS, CDS and the workload API are full-state: every response carries every subscribed
//!   resource and absence means deletion; EDS and RDS responses carry what changed;
//! * when a cluster changes, its ClusterLoadAssignment is sent again so Envoy can finish
//!   warming the new cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::core::v3::{ControlPlane, Node};
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
};
use tracing::debug;

use super::held::HeldSet;
use super::{
    Outbox, Sent, StreamError, Subscription, chunks, record_ack, record_nack, record_sent,
};
use crate::cache::{Connection, SnapshotCache};
use crate::metrics::Variant;
use crate::snapshot::{Resource, Snapshot};

#[derive(Debug, Default)]
struct TypeState {
    sub: Subscription,
    nonce: Option<String>,
    held: HeldSet,
}

/// The protocol state of one stream.
pub(crate) struct Stream {
    cache: Arc<SnapshotCache>,
    conn: Arc<Connection>,
    tx: Outbox,
    types: BTreeMap<TypeUrl, TypeState>,
    snapshot: Arc<Snapshot>,
    nonce: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A (first or changed) request: send every wanted resource.
    Requested,
    /// A new snapshot: send only if something the client wants changed.
    Changed,
}

impl super::Protocol for Stream {
    type Request = DiscoveryRequest;
    const VARIANT: Variant = Variant::Sotw;

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn new(cache: Arc<SnapshotCache>, conn: Arc<Connection>, tx: Outbox) -> Self {
        Stream {
            cache,
            snapshot: conn.snapshot(),
            conn,
            tx,
            types: BTreeMap::new(),
            nonce: 0,
        }
    }

    fn set_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        self.snapshot = snapshot;
    }

    async fn handle(&mut self, req: Box<DiscoveryRequest>) -> Result<(), StreamError> {
        self.handle_request(req).await
    }

    async fn push(&mut self) -> Result<(), StreamError> {
        for t in super::push_order() {
            if self.types.contains_key(&t) {
                Box::pin(self.respond(t, Mode::Changed)).await?;
            }
        }
        Ok(())
    }
}

impl Stream {
    async fn handle_request(&mut self, req: Box<DiscoveryRequest>) -> Result<(), StreamError> {
        let t = TypeUrl::parse(&req.type_url)?;
        let first = !self.types.contains_key(&t);
        let st = self.types.entry(t).or_default();
        if !first && !req.response_nonce.is_empty() {
            if st.nonce.as_deref() != Some(req.response_nonce.as_str()) {
                self.cache.metrics.stale_nonces.inc();
                debug!(type_url = t.short_name(), nonce = %req.response_nonce, "stale nonce ignored");
                return Ok(());
            }
            match &req.error_detail {
                Some(err) => record_nack(&self.cache, &self.conn, t, &req.response_nonce, err),
                None => record_ack(&self.cache, &self.conn, t, req.version_info.clone()),
            }
        }
        let changed = st.sub.sotw_update(first, &req.resource_names);
        if changed {
            let desc = st.sub.describe();
            self.conn.update_status(t, |s| s.subscription = desc);
        }
        if first || changed {
            Box::pin(self.respond(t, Mode::Requested)).await?;
        }
        Ok(())
    }

    async fn respond(&mut self, t: TypeUrl, mode: Mode) -> Result<(), StreamError> {
        let ts = self.snapshot.get(t).cloned().unwrap_or_default();
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        let diff = st.held.diff(&st.sub, &ts, &self.cache.layer_diffs);
        if mode == Mode::Changed && diff.upserts.is_empty() && diff.removed.is_empty() {
            st.held.commit(&st.sub, &ts);
            return Ok(());
        }
        let wanted: Vec<Arc<Resource>> = if st.sub.wildcard {
            ts.iter().cloned().collect()
        } else {
            st.sub
                .names
                .iter()
                .filter_map(|n| ts.get(n))
                .cloned()
                .collect()
        };
        // Clusters that changed (not new ones: the client asks for those) get their
        // endpoints again after this, so the rebuilt cluster can finish warming.
        let resend_eds = if t == TypeUrl::Cluster {
            st.held.updated(&st.sub, &diff.upserts)
        } else {
            Vec::new()
        };
        st.held.commit(&st.sub, &ts);
        // Full-state types go in one response (absence means deletion); EDS and RDS carry what
        // changed (or everything asked for, on a request), in parts of bounded size.
        let out: Vec<Arc<Resource>> = if mode == Mode::Requested || t.is_full_state() {
            wanted
        } else {
            diff.upserts
        };
        let parts = if t.is_full_state() {
            vec![out.as_slice()]
        } else {
            chunks(&out)
        };
        let version = switchyard_model::hash::version_string(ts.version());
        for part in parts {
            self.nonce += 1;
            let nonce = format!("{}-{}", self.conn.id, self.nonce);
            if let Some(st) = self.types.get_mut(&t) {
                st.nonce = Some(nonce.clone());
            }
            let bytes: usize = part.iter().map(|r| r.bytes.len()).sum();
            let response = DiscoveryResponse {
                version_info: version.clone(),
                resources: part.iter().map(|r| r.to_any()).collect(),
                type_url: t.as_str().to_string(),
                nonce: nonce.clone(),
                control_plane: Some(ControlPlane {
                    identifier: crate::CONTROL_PLANE_ID.to_string(),
                }),
                ..Default::default()
            };
            record_sent(
                &self.cache,
                &self.conn,
                Sent {
                    t,
                    version: version.clone(),
                    nonce: &nonce,
                    resources: part.len(),
                    bytes,
                    changed_at: (mode == Mode::Changed).then_some(self.snapshot.changed_at),
                    variant: Variant::Sotw,
                },
            );
            debug!(
                type_url = t.short_name(),
                nonce,
                version,
                resources = part.len(),
                "sent"
            );
            if self.tx.send(super::encode(&response)).await.is_err() {
                // The client is gone; the request loop will see the end of its stream.
                debug!("response dropped: client went away");
                break;
            }
        }
        if let Some(eds) = self.types.get_mut(&TypeUrl::ClusterLoadAssignment) {
            for n in &resend_eds {
                eds.held.forget(n);
            }
        }
        Ok(())
    }
}
