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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::core::v3::ControlPlane;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    Sent, StreamError, Subscription, proxy_from_node, record_ack, record_nack, record_sent,
};
use crate::cache::{Connection, SnapshotCache};
use crate::metrics::Variant;
use crate::snapshot::{Resource, Snapshot};

/// What the client holds of one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// This version (or an unknown one, `u64::MAX`, when the client sent a version we did not
    /// make).
    Version(u64),
    /// We told it the resource does not exist.
    Absent,
}

/// Responses a stream remembers for matching ACKs; older ones are answered by newer ones.
const PENDING_LIMIT: usize = 16;

#[derive(Debug, Default)]
struct TypeState {
    sub: Subscription,
    held: HashMap<Arc<str>, Held>,
    pending: VecDeque<(String, String)>,
}

struct Stream {
    cache: Arc<SnapshotCache>,
    conn: Arc<Connection>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    types: BTreeMap<TypeUrl, TypeState>,
    snapshot: Arc<Snapshot>,
    nonce: u64,
}

/// Runs one delta stream to its end.
pub async fn run(
    cache: Arc<SnapshotCache>,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    peer: Option<SocketAddr>,
    shutdown: CancellationToken,
) {
    let first = tokio::select! {
        r = requests.message() => r,
        _ = shutdown.cancelled() => return,
    };
    let first = match first {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(status) => {
            cache.metrics.reject("transport");
            warn!(?peer, error = %status, "delta ads stream failed before its first request");
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let proxy = match proxy_from_node(first.node.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            let e = StreamError::from(e);
            cache.metrics.reject(e.reason());
            warn!(?peer, error = %e, "delta ads stream refused");
            let _ = tx.send(Err(e.status())).await;
            return;
        }
    };
    let conn = cache.connect(proxy, Variant::Delta, peer);
    let span = info_span!("ads", node = %conn.proxy.node_id, kind = %conn.proxy.kind, variant = "delta", stream = conn.id);
    let mut stream = Stream {
        cache: cache.clone(),
        conn: conn.clone(),
        tx: tx.clone(),
        types: BTreeMap::new(),
        snapshot: conn.snapshot(),
        nonce: 0,
    };
    let result = async {
        info!(?peer, "proxy connected");
        stream.serve(first, requests, shutdown).await
    }
    .instrument(span.clone())
    .await;
    cache.disconnect(&conn);
    let _enter = span.enter();
    match result {
        Ok(()) => info!("proxy disconnected"),
        Err(e) => {
            cache.metrics.reject(e.reason());
            warn!(error = %e, "delta ads stream ended with an error");
            let _ = tx.try_send(Err(e.status()));
        }
    }
}

impl Stream {
    async fn serve(
        &mut self,
        first: DeltaDiscoveryRequest,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        shutdown: CancellationToken,
    ) -> Result<(), StreamError> {
        let mut snapshots = self.conn.subscribe();
        self.snapshot = snapshots.borrow_and_update().clone();
        self.handle(first).await?;
        let cancel = self.conn.cancel.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = cancel.cancelled() => return Ok(()),
                req = requests.message() => match req {
                    Ok(Some(r)) => self.handle(r).await?,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(StreamError::Transport(status)),
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.snapshot = snapshots.borrow_and_update().clone();
                    for t in super::push_order() {
                        if self.types.contains_key(&t) {
                            self.respond(t, false, true).await?;
                        }
                    }
                }
            }
        }
    }

    async fn handle(&mut self, req: DeltaDiscoveryRequest) -> Result<(), StreamError> {
        let t = TypeUrl::parse(&req.type_url)?;
        let first = !self.types.contains_key(&t);
        let st = self.types.entry(t).or_default();
        if first {
            for (name, version) in &req.initial_resource_versions {
                let v = super::parse_version(version).unwrap_or(u64::MAX);
                st.held.insert(Arc::from(name.as_str()), Held::Version(v));
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
            st.held.remove(n.as_str());
        }
        // A re-subscribe asks for the resource again, whatever we think the client holds.
        for n in &req.resource_names_subscribe {
            if !first && n != "*" {
                st.held.remove(n.as_str());
            }
        }
        if changed {
            let desc = st.sub.describe();
            self.conn.update_status(t, |s| s.subscription = desc);
        }
        if first || changed || !req.resource_names_subscribe.is_empty() {
            self.respond(t, first, false).await?;
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
        let mut upserts: Vec<&Arc<Resource>> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        if st.sub.wildcard {
            upserts.extend(ts.iter());
        }
        for n in &st.sub.names {
            match ts.get(n) {
                Some(r) if !st.sub.wildcard => upserts.push(r),
                Some(_) => {}
                None => {
                    if st.held.get(n.as_str()) != Some(&Held::Absent) {
                        removed.push(n.clone());
                    }
                }
            }
        }
        upserts.retain(|r| st.held.get(&r.name) != Some(&Held::Version(r.version)));
        // Names the client holds that are gone (or no longer wanted under a wildcard).
        for (n, h) in &st.held {
            if matches!(h, Held::Version(_))
                && ts.get(n).is_none()
                && !removed.iter().any(|r| **r == **n)
            {
                removed.push(n.to_string());
            }
        }
        if upserts.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        let mut resend_eds = Vec::new();
        for r in &upserts {
            if t == TypeUrl::Cluster && matches!(st.held.get(&r.name), Some(Held::Version(_))) {
                resend_eds.push(r.name.clone());
            }
            st.held.insert(r.name.clone(), Held::Version(r.version));
        }
        for n in &removed {
            if st.sub.names.contains(n) {
                st.held.insert(Arc::from(n.as_str()), Held::Absent);
            } else {
                st.held.remove(n.as_str());
            }
        }
        removed.sort();
        self.nonce += 1;
        let nonce = format!("{}-{}", self.conn.id, self.nonce);
        let version = switchyard_model::hash::version_string(ts.version());
        st.pending.push_back((nonce.clone(), version.clone()));
        while st.pending.len() > PENDING_LIMIT {
            st.pending.pop_front();
        }
        let bytes: usize = upserts.iter().map(|r| r.bytes.len()).sum();
        let response = DeltaDiscoveryResponse {
            system_version_info: self.snapshot.generation.to_string(),
            resources: upserts
                .iter()
                .map(|r| PbResource {
                    name: r.name.to_string(),
                    version: r.version_string(),
                    resource: Some(r.to_any()),
                    ..Default::default()
                })
                .collect(),
            type_url: t.as_str().to_string(),
            removed_resources: removed.clone(),
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
                resources: upserts.len(),
                bytes,
                changed_at: from_push.then_some(self.snapshot.changed_at),
                variant: Variant::Delta,
            },
        );
        debug!(
            type_url = t.short_name(),
            nonce,
            version,
            resources = upserts.len(),
            removed = removed.len(),
            "sent"
        );
        if let Some(eds) = self.types.get_mut(&TypeUrl::ClusterLoadAssignment) {
            for n in resend_eds {
                eds.held.remove(&n);
            }
        }
        if self.tx.send(Ok(response)).await.is_err() {
            debug!("response dropped: client went away");
        }
        Ok(())
    }
}
