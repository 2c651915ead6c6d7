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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::core::v3::ControlPlane;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
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

#[derive(Debug, Default)]
struct TypeState {
    sub: Subscription,
    nonce: Option<String>,
    sent: HashMap<Arc<str>, u64>,
}

struct Stream {
    cache: Arc<SnapshotCache>,
    conn: Arc<Connection>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
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

/// Runs one SotW stream to its end.
pub async fn run(
    cache: Arc<SnapshotCache>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
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
            warn!(?peer, error = %status, "ads stream failed before its first request");
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let proxy = match proxy_from_node(first.node.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            let e = StreamError::from(e);
            cache.metrics.reject(e.reason());
            warn!(?peer, error = %e, "ads stream refused");
            let _ = tx.send(Err(e.status())).await;
            return;
        }
    };
    let conn = cache.connect(proxy, Variant::Sotw, peer);
    let span = info_span!("ads", node = %conn.proxy.node_id, kind = %conn.proxy.kind, variant = "sotw", stream = conn.id);
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
            warn!(error = %e, "ads stream ended with an error");
            let _ = tx.try_send(Err(e.status()));
        }
    }
}

impl Stream {
    async fn serve(
        &mut self,
        first: DiscoveryRequest,
        mut requests: Streaming<DiscoveryRequest>,
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
                            self.respond(t, Mode::Changed).await?;
                        }
                    }
                }
            }
        }
    }

    async fn handle(&mut self, req: DiscoveryRequest) -> Result<(), StreamError> {
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
            self.respond(t, Mode::Requested).await?;
        }
        Ok(())
    }

    async fn respond(&mut self, t: TypeUrl, mode: Mode) -> Result<(), StreamError> {
        let ts = self.snapshot.get(t).cloned().unwrap_or_default();
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        let wanted: Vec<&Arc<Resource>> = if st.sub.wildcard {
            ts.iter().collect()
        } else {
            st.sub.names.iter().filter_map(|n| ts.get(n)).collect()
        };
        let changed: Vec<&Arc<Resource>> = wanted
            .iter()
            .copied()
            .filter(|r| st.sent.get(&r.name) != Some(&r.version))
            .collect();
        let wanted_names: HashSet<&str> = wanted.iter().map(|r| &*r.name).collect();
        let removed = st.sent.keys().any(|n| !wanted_names.contains(&**n));
        let send_all = mode == Mode::Requested || t.is_full_state();
        if mode == Mode::Changed && changed.is_empty() && !(t.is_full_state() && removed) {
            return Ok(());
        }
        let out: Vec<&Arc<Resource>> = if send_all {
            wanted.clone()
        } else {
            changed.clone()
        };
        // Clusters that changed (not new ones: Envoy asks for those) get their endpoints
        // again, after this response, so the rebuilt cluster can finish warming.
        let mut resend_eds = Vec::new();
        if t == TypeUrl::Cluster {
            for r in &changed {
                if st.sent.contains_key(&r.name) {
                    resend_eds.push(r.name.clone());
                }
            }
        }
        if send_all && t.is_full_state() {
            st.sent.clear();
        }
        for r in &out {
            st.sent.insert(r.name.clone(), r.version);
        }
        if t.is_full_state() {
            st.sent.retain(|n, _| wanted_names.contains(&**n));
        }
        self.nonce += 1;
        let nonce = format!("{}-{}", self.conn.id, self.nonce);
        st.nonce = Some(nonce.clone());
        let version = switchyard_model::hash::version_string(ts.version());
        let bytes: usize = out.iter().map(|r| r.bytes.len()).sum();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: out.iter().map(|r| r.to_any()).collect(),
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
                resources: out.len(),
                bytes,
                changed_at: (mode == Mode::Changed).then_some(self.snapshot.changed_at),
                variant: Variant::Sotw,
            },
        );
        debug!(
            type_url = t.short_name(),
            nonce,
            version,
            resources = out.len(),
            "sent"
        );
        if let Some(eds) = self.types.get_mut(&TypeUrl::ClusterLoadAssignment) {
            for n in resend_eds {
                eds.sent.remove(&n);
            }
        }
        if self.tx.send(Ok(response)).await.is_err() {
            // The client is gone; the request loop will see the end of its stream.
            debug!("response dropped: client went away");
        }
        Ok(())
    }
}
