//! Delta (incremental) ADS streams.
//!
//! Rules (xDS protocol, "Incremental xDS"):
//! * the server tracks what the client has, name -> version, seeded on a new stream from
//!   `initial_resource_versions`, so a reconnecting client is sent only what changed;
//! * a response carries changed and new resources and, in `removed_resources`, names the
//!   client has that are gone — and names it asked for that do not exist (does-not-exist);
//! * the first request of each type gets a response, even an empty one;
//! * ACK and NACK are matched to responses by nonce; subscription changes in a request are
//!   applied whatever its nonce;
//! * when a cluster changes, its ClusterLoadAssignment is sent again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::core::v3::{ControlPlane, Node};
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};
use tracing::debug;

use super::held::HeldSet;
use super::{
    Outbox, Sent, StreamError, Subscription, chunks, record_ack, record_nack, record_sent,
};
use crate::cache::{Connection, SnapshotCache};
use crate::metrics::Variant;
use crate::snapshot::Snapshot;

/// Responses a stream remembers for matching ACKs; older ones are answered by newer ones.
const PENDING_LIMIT: usize = 64;

#[derive(Debug, Default)]
struct TypeState {
    sub: Subscription,
    held: HeldSet,
    pending: VecDeque<(String, String)>,
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

impl super::Protocol for Stream {
    type Request = DeltaDiscoveryRequest;
    const VARIANT: Variant = Variant::Delta;

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
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

    async fn handle(&mut self, req: Box<DeltaDiscoveryRequest>) -> Result<(), StreamError> {
        self.handle_request(req).await
    }

    async fn push(&mut self) -> Result<(), StreamError> {
        for t in super::push_order() {
            if self.types.contains_key(&t) {
                Box::pin(self.respond(t, false, true)).await?;
            }
        }
        Ok(())
    }
}

impl Stream {
    async fn handle_request(&mut self, req: Box<DeltaDiscoveryRequest>) -> Result<(), StreamError> {
        let t = TypeUrl::parse(&req.type_url)?;
        let first = !self.types.contains_key(&t);
        let st = self.types.entry(t).or_default();
        if first {
            for (name, version) in &req.initial_resource_versions {
                st.held.seed(name, super::parse_version(version));
            }
        }
        if !req.response_nonce.is_empty() {
            match st
                .pending
                .iter()
                .position(|(n, _)| *n == req.response_nonce)
            {
                Some(i) => {
                    let (nonce, version) = st.pending[i].clone();
                    st.pending.drain(..=i);
                    match &req.error_detail {
                        Some(err) => record_nack(&self.cache, &self.conn, t, &nonce, err),
                        // Only the newest response's ACK means the client is up to date.
                        None if st.pending.is_empty() => {
                            record_ack(&self.cache, &self.conn, t, version)
                        }
                        None => {}
                    }
                }
                None => {
                    self.cache.metrics.stale_nonces.inc();
                    debug!(type_url = t.short_name(), nonce = %req.response_nonce, "unknown or old nonce");
                }
            }
        }
        let changed = st.sub.delta_update(
            first,
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
        );
        for n in &req.resource_names_unsubscribe {
            st.held.drop_name(n);
        }
        // A (re-)subscribe asks for the resource again, whatever we think the client holds.
        for n in &req.resource_names_subscribe {
            if !first && n != "*" {
                st.held.forget(&Arc::from(n.as_str()));
            }
        }
        if changed {
            let desc = st.sub.describe();
            self.conn.update_status(t, |s| s.subscription = desc);
        }
        if first || changed || !req.resource_names_subscribe.is_empty() {
            Box::pin(self.respond(t, first, false)).await?;
        }
        Ok(())
    }

    async fn respond(
        &mut self,
        t: TypeUrl,
        always: bool,
        from_push: bool,
    ) -> Result<(), StreamError> {
        let ts = self.snapshot.get(t).cloned().unwrap_or_default();
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        let diff = st.held.diff(&st.sub, &ts, &self.cache.layer_diffs);
        if diff.is_empty() && !always {
            // nothing to send; keep the base on the newest layers so later diffs stay cheap
            st.held.commit(&st.sub, &ts);
            return Ok(());
        }
        // Clusters that changed (not new ones: the client asks for those) get their
        // endpoints again after this, so the rebuilt cluster can finish warming.
        let resend_eds = if t == TypeUrl::Cluster {
            st.held.updated(&st.sub, &diff.upserts)
        } else {
            Vec::new()
        };
        st.held.commit(&st.sub, &ts);
        let mut removed = diff.removed;
        removed.extend(diff.missing);
        removed.sort();
        let version = switchyard_model::hash::version_string(ts.version());
        // Large updates go out in several responses, each a complete delta; removals come
        // last (make before break). Small responses keep per-stream encode buffers small.
        let parts = chunks(&diff.upserts);
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let removed_here = if i == last {
                std::mem::take(&mut removed)
            } else {
                Vec::new()
            };
            self.nonce += 1;
            let nonce = format!("{}-{}", self.conn.id, self.nonce);
            if let Some(st) = self.types.get_mut(&t) {
                st.pending.push_back((nonce.clone(), version.clone()));
                while st.pending.len() > PENDING_LIMIT {
                    st.pending.pop_front();
                }
            }
            let bytes: usize = part.iter().map(|r| r.bytes.len()).sum();
            let response = DeltaDiscoveryResponse {
                system_version_info: self.snapshot.generation.to_string(),
                resources: part
                    .iter()
                    .map(|r| PbResource {
                        name: r.name.to_string(),
                        version: r.version_string(),
                        resource: Some(r.to_any()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: t.as_str().to_string(),
                removed_resources: removed_here.clone(),
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
                    changed_at: from_push.then_some(self.snapshot.changed_at),
                    variant: Variant::Delta,
                },
            );
            debug!(
                type_url = t.short_name(),
                nonce,
                version,
                resources = part.len(),
                removed = removed_here.len(),
                "sent"
            );
            if self.tx.send(super::encode(&response)).await.is_err() {
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

#[cfg(test)]
mod tests {
    use switchyard_protos::envoy::envoy::service::discovery::v3::DeltaDiscoveryRequest;

    /// Every connected proxy holds one stream task; its size is per-proxy memory at 10,000
    /// proxies. Requests are boxed and handlers run boxed so the task stays small.
    #[test]
    fn stream_task_stays_small() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let cache = std::sync::Arc::new(crate::cache::SnapshotCache::new(
            std::sync::Arc::new(switchyard_model::Mesh::default()),
            Default::default(),
            std::sync::Arc::new(crate::metrics::Metrics::new(&mut Default::default())),
        ));
        let streaming = tonic::Streaming::<Box<DeltaDiscoveryRequest>>::new_request(
            super::super::transport::RequestDecoder::<DeltaDiscoveryRequest>::default(),
            tonic::body::Body::empty(),
            None,
            None,
        );
        let task =
            super::super::run::<super::Stream>(cache, streaming, tx, None, Default::default());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 3072, "delta stream task is {size} bytes");
    }
}
