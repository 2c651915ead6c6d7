//! The ADS service: State-of-the-World and Delta streams on one gRPC port.
//!
//! Each stream is one task that owns its protocol state (subscriptions, nonces, what the
//! client has) and reacts to two things: a request from the client, or a new snapshot from
//! the cache. It answers only the latest nonce, records ACKs and NACKs in the cache, and
//! sends types in make-before-break order (CDS, EDS, LDS, RDS, then the workload API).

use std::collections::BTreeSet;
use std::sync::Arc;

use switchyard_model::ProxyId;
use switchyard_model::proxy::ProxyMetadata;
use switchyard_protos::envoy::envoy::config::core::v3::Node;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use switchyard_protos::{TypeUrl, wkt};
use tokio::sync::mpsc;
use tonic::{Request, Status, Streaming};

use crate::cache::SnapshotCache;

pub mod delta;
pub mod held;
pub mod sotw;
pub mod transport;

/// Responses a stream may have queued for the transport before it waits. One: the transport
/// then encodes responses one at a time, which keeps its per-stream encode buffer at the size
/// of one (chunked) response instead of the size of a burst.
const STREAM_BUFFER: usize = 1;

/// One encoded response, or the status that ends the stream (boxed: the channel allocates 32
/// slots per stream whatever its bound, so items are kept small).
pub(crate) type OutItem = Result<tonic::codegen::Bytes, Box<Status>>;

/// Where a stream task puts its responses.
pub(crate) type Outbox = mpsc::Sender<OutItem>;

/// Encodes and frames a response into one exact-size buffer.
pub(crate) fn encode<M: prost::Message>(m: &M) -> OutItem {
    Ok(transport::frame(m))
}

/// Why a stream ends with an error (as opposed to a rejected resource, which is a NACK).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The first request had no node or node id.
    #[error("the first request of a stream must carry node.id: {0}")]
    Node(#[from] switchyard_model::ProxyIdError),
    /// A type this server does not serve.
    #[error(transparent)]
    TypeUrl(#[from] switchyard_protos::UnknownTypeUrl),
    /// The client stream failed (too large, reset...).
    #[error("client stream failed: {0}")]
    Transport(#[from] Status),
}

impl StreamError {
    /// The gRPC status sent to the client.
    pub fn status(&self) -> Status {
        match self {
            StreamError::Node(e) => Status::invalid_argument(e.to_string()),
            StreamError::TypeUrl(e) => Status::invalid_argument(e.to_string()),
            StreamError::Transport(s) => s.clone(),
        }
    }

    /// Metric reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            StreamError::Node(_) => "bad_node",
            StreamError::TypeUrl(_) => "unknown_type_url",
            StreamError::Transport(_) => "transport",
        }
    }
}

/// Parses `node` into a proxy id.
pub fn proxy_from_node(node: Option<&Node>) -> Result<ProxyId, switchyard_model::ProxyIdError> {
    let node = node.ok_or(switchyard_model::ProxyIdError::Empty)?;
    let md = node.metadata.as_ref();
    let field = |k: &str| -> Option<String> {
        md.and_then(|m| m.fields.get(k))
            .and_then(|v| match &v.kind {
                Some(wkt::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
    };
    ProxyId::parse(&node.id, ProxyMetadata::from_fields(field)?)
}

/// What a client subscribed to for one type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Everything (explicit `*` or legacy empty first request).
    pub wildcard: bool,
    /// Wildcard came from an empty request rather than `*`.
    pub legacy: bool,
    /// Named resources.
    pub names: BTreeSet<String>,
}

impl Subscription {
    /// Applies a SotW request's `resource_names`; returns whether anything changed.
    pub fn sotw_update(&mut self, first: bool, names: &[String]) -> bool {
        let before = self.clone();
        if names.is_empty() {
            // An empty list is the legacy wildcard while the client never named anything;
            // after that it means "nothing".
            if first || self.legacy {
                self.wildcard = true;
                self.legacy = true;
            } else {
                self.wildcard = false;
            }
            self.names.clear();
        } else {
            self.legacy = false;
            self.wildcard = names.iter().any(|n| n == "*");
            self.names = names.iter().filter(|n| *n != "*").cloned().collect();
        }
        *self != before
    }

    /// Applies a delta request's subscribe/unsubscribe lists; returns whether anything
    /// changed.
    pub fn delta_update(
        &mut self,
        first: bool,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> bool {
        let before = self.clone();
        if first && subscribe.is_empty() {
            self.wildcard = true;
            self.legacy = true;
        }
        for n in subscribe {
            if n == "*" {
                self.wildcard = true;
                self.legacy = false;
            } else {
                self.names.insert(n.clone());
            }
        }
        for n in unsubscribe {
            if n == "*" {
                self.wildcard = false;
                self.legacy = false;
            } else {
                self.names.remove(n);
            }
        }
        *self != before
    }

    /// Whether the client wants `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// For status pages.
    pub fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.wildcard {
            v.push("*".to_string());
        }
        v.extend(self.names.iter().cloned());
        v
    }
}

/// The ADS gRPC service.
#[derive(Debug, Clone)]
pub struct AdsService {
    cache: Arc<SnapshotCache>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl AdsService {
    /// A service over `cache`; streams end when `shutdown` is cancelled.
    pub fn new(cache: Arc<SnapshotCache>, shutdown: tokio_util::sync::CancellationToken) -> Self {
        AdsService { cache, shutdown }
    }
}

impl AdsService {
    /// Starts a SotW stream task; returns its responses.
    pub fn start_sotw(
        &self,
        request: Request<Streaming<Box<DiscoveryRequest>>>,
    ) -> mpsc::Receiver<OutItem> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run::<sotw::Stream>(
            self.cache.clone(),
            request.into_inner(),
            tx,
            peer,
            self.shutdown.clone(),
        ));
        rx
    }

    /// Starts a delta stream task; returns its responses.
    pub fn start_delta(
        &self,
        request: Request<Streaming<Box<DeltaDiscoveryRequest>>>,
    ) -> mpsc::Receiver<OutItem> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run::<delta::Stream>(
            self.cache.clone(),
            request.into_inner(),
            tx,
            peer,
            self.shutdown.clone(),
        ));
        rx
    }
}

/// One ADS variant's protocol state. The stream around it — first request, proxy id,
/// registration, the request/snapshot loop, ending with a status — is [`run`], shared by both.
pub(crate) trait Protocol: Send + Sized + 'static {
    /// Request message.
    type Request: Send + 'static;
    /// SotW or delta.
    const VARIANT: crate::metrics::Variant;
    /// The node of a request.
    fn node(req: &Self::Request) -> Option<&Node>;
    /// State for a new stream.
    fn new(cache: Arc<SnapshotCache>, conn: Arc<crate::cache::Connection>, tx: Outbox) -> Self;
    /// Installs the newest snapshot.
    fn set_snapshot(&mut self, snapshot: Arc<crate::snapshot::Snapshot>);
    /// Handles one request.
    fn handle(
        &mut self,
        req: Box<Self::Request>,
    ) -> impl std::future::Future<Output = Result<(), StreamError>> + Send;
    /// Sends what changed in the newest snapshot, type by type in push order.
    fn push(&mut self) -> impl std::future::Future<Output = Result<(), StreamError>> + Send;
}

/// Runs one stream to its end.
pub(crate) async fn run<P: Protocol>(
    cache: Arc<SnapshotCache>,
    mut requests: Streaming<Box<P::Request>>,
    tx: Outbox,
    peer: Option<std::net::SocketAddr>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tracing::{Instrument, info, info_span, warn};
    let variant = match P::VARIANT {
        crate::metrics::Variant::Sotw => "sotw",
        crate::metrics::Variant::Delta => "delta",
    };
    let first = tokio::select! {
        r = requests.message() => r,
        _ = shutdown.cancelled() => return,
    };
    let first = match first {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(status) => {
            cache.metrics.reject("transport");
            warn!(?peer, variant, error = %status, "ads stream failed before its first request");
            let _ = tx.send(Err(Box::new(status))).await;
            return;
        }
    };
    let proxy = match proxy_from_node(P::node(&first)) {
        Ok(p) => p,
        Err(e) => {
            let e = StreamError::from(e);
            cache.metrics.reject(e.reason());
            warn!(?peer, variant, error = %e, "ads stream refused");
            let _ = tx.send(Err(Box::new(e.status()))).await;
            return;
        }
    };
    let conn = cache.connect(proxy, P::VARIANT, peer);
    let span = info_span!("ads", node = %conn.proxy.node_id, kind = %conn.proxy.kind, variant, stream = conn.id);
    let mut state = P::new(cache.clone(), conn.clone(), tx.clone());
    let result = async {
        info!(?peer, "proxy connected");
        serve(&mut state, &conn, first, requests, shutdown).await
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
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                tx.send(Err(Box::new(e.status()))),
            )
            .await;
        }
    }
}

async fn serve<P: Protocol>(
    state: &mut P,
    conn: &crate::cache::Connection,
    first: Box<P::Request>,
    mut requests: Streaming<Box<P::Request>>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), StreamError> {
    let mut snapshots = conn.subscribe();
    state.set_snapshot(snapshots.borrow_and_update().clone());
    // Handlers run boxed: their futures are large and live only while they run.
    Box::pin(state.handle(first)).await?;
    let cancel = conn.cancel.clone();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = cancel.cancelled() => return Ok(()),
            req = requests.message() => match req {
                Ok(Some(r)) => Box::pin(state.handle(r)).await?,
                Ok(None) => return Ok(()),
                Err(status) => return Err(StreamError::Transport(status)),
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                state.set_snapshot(snapshots.borrow_and_update().clone());
                Box::pin(state.push()).await?;
            }
        }
    }
}

/// Parses a version we sent (16 hex digits) back into a hash; anything else is `None`.
pub fn parse_version(v: &str) -> Option<u64> {
    if v.len() == 16 {
        u64::from_str_radix(v, 16).ok()
    } else {
        None
    }
}

/// Resources of one response stay under this many encoded bytes when they can (a single
/// larger resource goes alone). Small responses keep each stream's encode buffer small: the
/// transport keeps the largest buffer a stream ever needed for the stream's lifetime.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024;

/// Splits resources into responses of at most [`MAX_RESPONSE_BYTES`]; always at least one
/// (possibly empty) part.
pub fn chunks(
    resources: &[Arc<crate::snapshot::Resource>],
) -> Vec<&[Arc<crate::snapshot::Resource>]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, r) in resources.iter().enumerate() {
        let len = r.bytes.len() + r.name.len() + 64;
        if i > start && size + len > MAX_RESPONSE_BYTES {
            out.push(&resources[start..i]);
            start = i;
            size = 0;
        }
        size += len;
    }
    out.push(&resources[start..]);
    out
}

/// The order types are sent in.
pub fn push_order() -> impl Iterator<Item = TypeUrl> {
    TypeUrl::ALL.into_iter()
}

/// Records an ACK of `version` for `t` and observes convergence.
pub(crate) fn record_ack(
    cache: &SnapshotCache,
    conn: &crate::cache::Connection,
    t: TypeUrl,
    version: String,
) {
    let changed_at = conn.update_status(t, |s| {
        s.acked_version = Some(version);
        s.acked_at = Some(std::time::SystemTime::now());
        s.nacked = false;
        s.changed_at.take()
    });
    if let Some(at) = changed_at {
        cache
            .metrics
            .convergence_seconds
            .observe(at.elapsed().as_secs_f64());
    }
}

/// Records a NACK.
pub(crate) fn record_nack(
    cache: &SnapshotCache,
    conn: &crate::cache::Connection,
    t: TypeUrl,
    nonce: &str,
    error: &switchyard_protos::envoy::google::rpc::Status,
) {
    let version = conn.update_status(t, |s| {
        let version = s.sent_version.clone().unwrap_or_default();
        s.nack = Some(crate::cache::NackRecord {
            version: version.clone(),
            nonce: nonce.to_string(),
            message: error.message.clone(),
            code: error.code,
            at: std::time::SystemTime::now(),
        });
        s.nacked = true;
        s.changed_at = None;
        version
    });
    cache
        .metrics
        .nacks
        .get_or_create(&crate::metrics::TypeLabels {
            r#type: t.short_name().to_string(),
        })
        .inc();
    tracing::warn!(
        node = %conn.proxy.node_id,
        type_url = t.short_name(),
        nonce,
        version,
        message = %error.message,
        "proxy rejected configuration (NACK); it keeps its last good config"
    );
}

/// One response, as recorded.
pub(crate) struct Sent<'a> {
    pub t: TypeUrl,
    pub version: String,
    pub nonce: &'a str,
    pub resources: usize,
    pub bytes: usize,
    /// When the change behind it was seen, for pushes (not for answers to requests).
    pub changed_at: Option<std::time::Instant>,
    pub variant: crate::metrics::Variant,
}

/// Records a response in the connection status and metrics.
pub(crate) fn record_sent(cache: &SnapshotCache, conn: &crate::cache::Connection, sent: Sent<'_>) {
    let Sent {
        t,
        version,
        nonce,
        resources,
        bytes,
        changed_at,
        variant,
    } = sent;
    conn.update_status(t, |s| {
        s.sent_version = Some(version);
        s.sent_nonce = Some(nonce.to_string());
        s.sent_at = Some(std::time::SystemTime::now());
        s.sent_resources = resources;
        s.nacked = false;
        if changed_at.is_some() {
            s.changed_at = changed_at;
        }
    });
    cache.count_sent(t, resources, bytes);
    cache
        .metrics
        .responses
        .get_or_create(&crate::metrics::ResponseLabels {
            r#type: t.short_name().to_string(),
            variant,
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sotw_subscription_rules() {
        let mut s = Subscription::default();
        assert!(s.sotw_update(true, &[]));
        assert!(s.wildcard && s.legacy);
        // still wildcard on later empty requests
        assert!(!s.sotw_update(false, &[]));
        assert!(s.wildcard);
        // naming resources ends the legacy wildcard
        assert!(s.sotw_update(false, &["a".into()]));
        assert!(!s.wildcard);
        assert!(s.wants("a") && !s.wants("b"));
        // now an empty list unsubscribes everything
        assert!(s.sotw_update(false, &[]));
        assert!(!s.wildcard && s.names.is_empty());
        // explicit wildcard plus names
        assert!(s.sotw_update(false, &["*".into(), "x".into()]));
        assert!(s.wildcard && s.names.contains("x"));
    }

    #[test]
    fn delta_subscription_rules() {
        let mut s = Subscription::default();
        assert!(s.delta_update(true, &[], &[]));
        assert!(s.wildcard && s.legacy);
        let mut n = Subscription::default();
        assert!(n.delta_update(true, &["a".into(), "b".into()], &[]));
        assert!(!n.wildcard);
        assert!(n.delta_update(false, &["*".into()], &["a".into()]));
        assert!(n.wildcard && !n.names.contains("a") && n.names.contains("b"));
        assert!(!n.delta_update(false, &[], &[]));
        assert!(n.delta_update(false, &[], &["*".into()]));
        assert!(!n.wildcard);
    }

    #[test]
    fn versions_round_trip() {
        let v = switchyard_model::hash::version_string(0xdead_beef);
        assert_eq!(parse_version(&v), Some(0xdead_beef));
        assert_eq!(parse_version("1"), None);
    }
}
