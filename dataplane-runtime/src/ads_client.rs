//! A general ADS client: one stream (State of the World or delta) to the control plane, typed
//! subscriptions per type URL, responses normalised to one shape, and explicit ACK / NACK.
//!
//! It holds no resources and applies nothing: the caller decides what a response means and
//! whether to accept it. What it does keep is the protocol state a request must carry — per
//! type, the subscribed names, the last ACKed version and the latest nonce (SotW), and the
//! names held by a full-state type, to report removals the same way in both variants.
//!
//! The stream runs in a task of its own, fed by a bounded channel of requests, so requests
//! flow whatever the server does with its response headers (some servers send them only with
//! the first response).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use prost::Message;
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::cluster::v3::Cluster;
use switchyard_protos::envoy::envoy::config::core::v3::Node;
use switchyard_protos::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use switchyard_protos::envoy::envoy::config::listener::v3::Listener;
use switchyard_protos::envoy::envoy::config::route::v3::RouteConfiguration;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3::Secret;
use switchyard_protos::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as PbResource,
};
use switchyard_protos::envoy::google::rpc::Status as RpcStatus;
use switchyard_protos::switchyard::workload::v1 as workload;
use switchyard_protos::wkt::Any;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use tracing::{Instrument, debug, debug_span, warn};

/// Requests queued for the stream; past this, [`AdsClient::subscribe`], `ack` and `nack` wait.
const REQUEST_BUFFER: usize = 16;
/// Responses decoded ahead of [`AdsClient::next`].
const RESPONSE_BUFFER: usize = 16;
/// Largest response accepted (the server splits large updates; one resource may be large).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The subscription name that means "every resource of the type".
pub const WILDCARD: &str = "*";

/// The ADS variant of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// State of the World (`StreamAggregatedResources`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
}

impl Variant {
    /// `sotw` or `delta`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Variant::Sotw => "sotw",
            Variant::Delta => "delta",
        }
    }
}

/// Why the stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    /// The server (or the transport under it) refused to open the stream.
    #[error("cannot open the ads stream: {}", status_text(.0))]
    Open(tonic::Status),
    /// The stream ended with an error status.
    #[error("ads stream failed: {}", status_text(.0))]
    Stream(tonic::Status),
    /// The server ended the stream without an error.
    #[error("ads stream closed by the server")]
    Closed,
    /// A response type that the client never asked for cannot be ACKed (an ACK would
    /// subscribe to it).
    #[error("cannot acknowledge {type_url}: it was never subscribed")]
    NotSubscribed {
        /// Type URL of the response.
        type_url: String,
    },
}

fn status_text(s: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", s.code(), s.message());
    // Transport failures hide the useful part (connection refused, TLS) in the source chain.
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// One resource of a [`Response`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Resource name: the delta resource's name, or for SotW read from the resource itself
    /// (empty when it cannot be decoded).
    pub name: String,
    /// The delta resource's version; for SotW the response's `version_info`.
    pub version: String,
    /// The packed resource (an empty `Any` for a delta resource sent without a body).
    pub resource: Any,
}

/// A response, the same shape for both variants.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Type URL of the response.
    pub type_url: String,
    /// SotW `version_info`, delta `system_version_info`.
    pub version: String,
    /// Nonce to ACK or NACK with.
    pub nonce: String,
    /// Resources carried (SotW: all of a full-state type; delta: added or changed ones).
    pub resources: Vec<Resource>,
    /// Names removed: delta `removed_resources`; for SotW full-state types the names the
    /// previous response of the type had and this one has not.
    pub removed: Vec<String>,
}

/// A message on the stream, kept for tracing when [`AdsClient::record_frames`] is on.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A SotW request sent.
    SotwRequest(DiscoveryRequest),
    /// A delta request sent.
    DeltaRequest(DeltaDiscoveryRequest),
    /// A SotW response received.
    SotwResponse(DiscoveryResponse),
    /// A delta response received.
    DeltaResponse(DeltaDiscoveryResponse),
}

impl Frame {
    /// Whether the client sent it.
    pub fn is_request(&self) -> bool {
        matches!(self, Frame::SotwRequest(_) | Frame::DeltaRequest(_))
    }

    /// Fully qualified protobuf message name.
    pub fn message_name(&self) -> &'static str {
        match self {
            Frame::SotwRequest(_) => "envoy.service.discovery.v3.DiscoveryRequest",
            Frame::DeltaRequest(_) => "envoy.service.discovery.v3.DeltaDiscoveryRequest",
            Frame::SotwResponse(_) => "envoy.service.discovery.v3.DiscoveryResponse",
            Frame::DeltaResponse(_) => "envoy.service.discovery.v3.DeltaDiscoveryResponse",
        }
    }

    /// The message's wire encoding.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            Frame::SotwRequest(m) => m.encode_to_vec(),
            Frame::DeltaRequest(m) => m.encode_to_vec(),
            Frame::SotwResponse(m) => m.encode_to_vec(),
            Frame::DeltaResponse(m) => m.encode_to_vec(),
        }
    }
}

#[derive(Debug)]
enum Outbound {
    Sotw(mpsc::Sender<DiscoveryRequest>),
    Delta(mpsc::Sender<DeltaDiscoveryRequest>),
}

#[derive(Debug)]
enum Inbound {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

/// Protocol state of one type on this stream.
#[derive(Debug, Default)]
struct TypeState {
    /// Names currently subscribed (`*` for wildcard).
    names: BTreeSet<String>,
    /// Whether a request for the type went out (the first one subscribes).
    requested: bool,
    /// SotW: nonce of the latest response.
    nonce: String,
    /// SotW: version of the latest ACKed response.
    acked: String,
    /// SotW full-state types: names of the latest response.
    held: BTreeSet<String>,
    /// Delta: versions the client already holds, sent once as `initial_resource_versions`
    /// with the first request of the type (a resumed stream is sent only what changed).
    initial: BTreeMap<String, String>,
}

/// An ADS stream impersonating one node. See the module docs.
#[derive(Debug)]
pub struct AdsClient {
    variant: Variant,
    node: Option<Node>,
    node_id: String,
    tx: Outbound,
    rx: mpsc::Receiver<Result<Inbound, AdsError>>,
    task: JoinHandle<()>,
    types: HashMap<String, TypeState>,
    frames: Option<Vec<Frame>>,
}

impl Drop for AdsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AdsClient {
    /// Opens a `variant` stream on `channel`; the first request will carry `node`. Nothing is
    /// sent before the first [`subscribe`](Self::subscribe); a stream the server refuses (or
    /// cannot be reached) shows as an error of the next call.
    pub fn connect(channel: Channel, node: Node, variant: Variant) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (rtx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let span = debug_span!("ads_client", node = %node.id, variant = variant.as_str());
        let (tx, task) = match variant {
            Variant::Sotw => {
                let (tx, reqs) = mpsc::channel(REQUEST_BUFFER);
                let task = tokio::spawn(
                    async move {
                        let opened = client
                            .stream_aggregated_resources(ReceiverStream::new(reqs))
                            .await;
                        pump(opened, rtx, Inbound::Sotw).await;
                    }
                    .instrument(span),
                );
                (Outbound::Sotw(tx), task)
            }
            Variant::Delta => {
                let (tx, reqs) = mpsc::channel(REQUEST_BUFFER);
                let task = tokio::spawn(
                    async move {
                        let opened = client
                            .delta_aggregated_resources(ReceiverStream::new(reqs))
                            .await;
                        pump(opened, rtx, Inbound::Delta).await;
                    }
                    .instrument(span),
                );
                (Outbound::Delta(tx), task)
            }
        };
        AdsClient {
            variant,
            node_id: node.id.clone(),
            node: Some(node),
            tx,
            rx,
            task,
            types: HashMap::new(),
            frames: None,
        }
    }

    /// The stream's variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Keeps every request sent and response received for [`take_frames`](Self::take_frames).
    pub fn record_frames(&mut self, on: bool) {
        self.frames = on.then(Vec::new);
    }

    /// Frames recorded since the last call, in the order they were sent or received.
    pub fn take_frames(&mut self) -> Vec<Frame> {
        self.frames.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Names currently subscribed for `type_url` (`*` for wildcard).
    pub fn subscribed(&self, type_url: &str) -> Option<&BTreeSet<String>> {
        self.types
            .get(type_url)
            .filter(|t| t.requested)
            .map(|t| &t.names)
    }

    /// Sets the subscription of `type_url` to `names` (the whole set; [`WILDCARD`] for every
    /// resource). SotW sends the new list with the last ACKed version and latest nonce; delta
    /// sends what was added and removed. Nothing is sent when the set does not change, nor
    /// for a first subscription to no names (an empty first request would mean wildcard).
    pub async fn subscribe<S: AsRef<str>>(
        &mut self,
        type_url: &str,
        names: &[S],
    ) -> Result<(), AdsError> {
        let names: BTreeSet<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
        let st = self.types.entry(type_url.to_string()).or_default();
        let first = !st.requested;
        if (first && names.is_empty()) || (!first && st.names == names) {
            return Ok(());
        }
        let subscribe: Vec<String> = names.difference(&st.names).cloned().collect();
        let unsubscribe: Vec<String> = st.names.difference(&names).cloned().collect();
        st.names = names;
        st.requested = true;
        debug!(node = %self.node_id, type_url, ?subscribe, ?unsubscribe, "subscribing");
        match self.variant {
            Variant::Sotw => {
                let req = DiscoveryRequest {
                    version_info: st.acked.clone(),
                    resource_names: st.names.iter().cloned().collect(),
                    type_url: type_url.to_string(),
                    response_nonce: st.nonce.clone(),
                    ..Default::default()
                };
                self.send_sotw(req).await
            }
            Variant::Delta => {
                let initial = if first {
                    std::mem::take(&mut st.initial)
                        .into_iter()
                        .filter(|(n, _)| st.names.contains(n) || st.names.contains(WILDCARD))
                        .collect()
                } else {
                    Default::default()
                };
                let req = DeltaDiscoveryRequest {
                    type_url: type_url.to_string(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    initial_resource_versions: initial,
                    ..Default::default()
                };
                self.send_delta(req).await
            }
        }
    }

    /// Delta: before the first [`subscribe`](Self::subscribe) of `type_url`, the versions the
    /// client holds from an earlier stream (name -> version); the first request sends those of
    /// subscribed names as `initial_resource_versions`, so the server sends only what changed
    /// (and names what is gone). Ignored for SotW and after the first request.
    pub fn hold_versions(&mut self, type_url: &str, versions: BTreeMap<String, String>) {
        let st = self.types.entry(type_url.to_string()).or_default();
        if !st.requested {
            st.initial = versions;
        }
    }

    /// The next response, normalised.
    pub async fn next(&mut self) -> Result<Response, AdsError> {
        let inbound = match self.rx.recv().await {
            Some(r) => r?,
            None => return Err(AdsError::Closed),
        };
        let response = match inbound {
            Inbound::Sotw(r) => {
                let st = self.types.entry(r.type_url.clone()).or_default();
                st.nonce = r.nonce.clone();
                let resources: Vec<Resource> = r
                    .resources
                    .iter()
                    .map(|any| {
                        let (name, any) = unwrap_resource(any);
                        Resource {
                            name,
                            version: r.version_info.clone(),
                            resource: any,
                        }
                    })
                    .collect();
                let mut removed = Vec::new();
                if is_full_state(&r.type_url) {
                    let now: BTreeSet<String> = resources.iter().map(|r| r.name.clone()).collect();
                    removed = st.held.difference(&now).cloned().collect();
                    st.held = now;
                }
                let response = Response {
                    type_url: r.type_url.clone(),
                    version: r.version_info.clone(),
                    nonce: r.nonce.clone(),
                    resources,
                    removed,
                };
                self.record(|| Frame::SotwResponse(r));
                response
            }
            Inbound::Delta(r) => {
                let response = Response {
                    type_url: r.type_url.clone(),
                    version: r.system_version_info.clone(),
                    nonce: r.nonce.clone(),
                    resources: r
                        .resources
                        .iter()
                        .map(|res| Resource {
                            name: res.name.clone(),
                            version: res.version.clone(),
                            resource: res.resource.clone().unwrap_or_default(),
                        })
                        .collect(),
                    removed: r.removed_resources.clone(),
                };
                self.record(|| Frame::DeltaResponse(r));
                response
            }
        };
        debug!(
            node = %self.node_id,
            type_url = %response.type_url,
            version = %response.version,
            nonce = %response.nonce,
            resources = response.resources.len(),
            removed = response.removed.len(),
            "received"
        );
        Ok(response)
    }

    /// Accepts `response`.
    pub async fn ack(&mut self, response: &Response) -> Result<(), AdsError> {
        self.answer(response, None).await
    }

    /// Rejects `response` with `message` (the server keeps the stream and records the NACK).
    pub async fn nack(&mut self, response: &Response, message: &str) -> Result<(), AdsError> {
        self.answer(
            response,
            Some(RpcStatus {
                code: tonic::Code::InvalidArgument as i32,
                message: message.to_string(),
                details: Vec::new(),
            }),
        )
        .await
    }

    async fn answer(
        &mut self,
        response: &Response,
        error: Option<RpcStatus>,
    ) -> Result<(), AdsError> {
        let Some(st) = self
            .types
            .get_mut(&response.type_url)
            .filter(|t| t.requested)
        else {
            return Err(AdsError::NotSubscribed {
                type_url: response.type_url.clone(),
            });
        };
        debug!(
            node = %self.node_id,
            type_url = %response.type_url,
            nonce = %response.nonce,
            version = %response.version,
            nack = error.is_some(),
            "answering"
        );
        match self.variant {
            Variant::Sotw => {
                if error.is_none() {
                    st.acked = response.version.clone();
                }
                let req = DiscoveryRequest {
                    version_info: st.acked.clone(),
                    resource_names: st.names.iter().cloned().collect(),
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    error_detail: error,
                    ..Default::default()
                };
                self.send_sotw(req).await
            }
            Variant::Delta => {
                let req = DeltaDiscoveryRequest {
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    error_detail: error,
                    ..Default::default()
                };
                self.send_delta(req).await
            }
        }
    }

    async fn send_sotw(&mut self, mut req: DiscoveryRequest) -> Result<(), AdsError> {
        if let Some(node) = self.node.take() {
            req.node = Some(node);
        }
        self.record(|| Frame::SotwRequest(req.clone()));
        let sent = match &self.tx {
            Outbound::Sotw(tx) => tx.send(req).await.is_ok(),
            Outbound::Delta(_) => false,
        };
        self.sent(sent).await
    }

    async fn send_delta(&mut self, mut req: DeltaDiscoveryRequest) -> Result<(), AdsError> {
        if let Some(node) = self.node.take() {
            req.node = Some(node);
        }
        self.record(|| Frame::DeltaRequest(req.clone()));
        let sent = match &self.tx {
            Outbound::Delta(tx) => tx.send(req).await.is_ok(),
            Outbound::Sotw(_) => false,
        };
        self.sent(sent).await
    }

    /// A request that could not be queued means the stream is over: report why it ended.
    async fn sent(&mut self, ok: bool) -> Result<(), AdsError> {
        if ok {
            return Ok(());
        }
        let wait = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(item) = self.rx.recv().await {
                if let Err(e) = item {
                    return e;
                }
            }
            AdsError::Closed
        });
        Err(wait.await.unwrap_or(AdsError::Closed))
    }

    fn record(&mut self, frame: impl FnOnce() -> Frame) {
        if let Some(frames) = &mut self.frames {
            frames.push(frame());
        }
    }
}

/// Forwards the responses of one opened stream until it ends; the end is forwarded too.
async fn pump<M>(
    opened: Result<tonic::Response<Streaming<M>>, tonic::Status>,
    out: mpsc::Sender<Result<Inbound, AdsError>>,
    wrap: fn(M) -> Inbound,
) {
    let mut stream = match opened {
        Ok(r) => r.into_inner(),
        Err(status) => {
            debug!(error = %status, "stream refused");
            let _ = out.send(Err(AdsError::Open(status))).await;
            return;
        }
    };
    debug!("stream open");
    loop {
        let item = match stream.message().await {
            Ok(Some(m)) => Ok(wrap(m)),
            Ok(None) => Err(AdsError::Closed),
            Err(status) => Err(AdsError::Stream(status)),
        };
        let end = item.is_err();
        if let Err(e) = &item {
            debug!(error = %e, "stream ended");
        }
        if out.send(item).await.is_err() || end {
            return;
        }
    }
}

/// Whether a SotW response of `type_url` carries every subscribed resource (absence means
/// removal). Types this crate does not know are taken as partial: nothing is inferred removed.
fn is_full_state(type_url: &str) -> bool {
    TypeUrl::parse(type_url).is_ok_and(TypeUrl::is_full_state)
}

/// The resource inside `any` (unwrapping an `envoy.service.discovery.v3.Resource` envelope)
/// and its name.
fn unwrap_resource(any: &Any) -> (String, Any) {
    if any.type_url == <PbResource as prost::Name>::type_url() {
        match PbResource::decode(any.value.as_slice()) {
            Ok(r) => return (r.name, r.resource.unwrap_or_default()),
            Err(e) => warn!(error = %e, "undecodable Resource envelope"),
        }
    }
    let name = match resource_name(any) {
        Ok(n) => n,
        Err(e) => {
            warn!(type_url = %any.type_url, error = %e, "cannot read the resource name");
            String::new()
        }
    };
    (name, any.clone())
}

/// The `Node` a Switchyard client sends on an ADS stream: `id`, its own name and version as
/// user agent, and string `metadata` (the contract's `node.metadata` fields).
pub fn ads_node(
    id: String,
    user_agent: &str,
    version: &str,
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Node {
    use switchyard_protos::envoy::envoy::config::core::v3::node::UserAgentVersionType;
    use switchyard_protos::wkt;
    Node {
        id,
        user_agent_name: user_agent.to_string(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(version.to_string())),
        metadata: Some(wkt::Struct {
            fields: metadata
                .into_iter()
                .map(|(k, v)| {
                    let value = wkt::Value {
                        kind: Some(wkt::value::Kind::StringValue(v)),
                    };
                    (k, value)
                })
                .collect(),
        }),
        ..Default::default()
    }
}

/// The resource name of a packed resource of a type Switchyard serves: `Cluster.name`,
/// `ClusterLoadAssignment.cluster_name`, `Listener.name`, `RouteConfiguration.name`,
/// `Secret.name`, `Workload.uid`, `<namespace>/<hostname>` of a `Service` and
/// `<namespace>/<name>` of an `Authorization`. Other types: empty.
pub fn resource_name(any: &Any) -> Result<String, prost::DecodeError> {
    let bytes = any.value.as_slice();
    let Ok(t) = TypeUrl::parse(&any.type_url) else {
        return Ok(String::new());
    };
    Ok(match t {
        TypeUrl::Cluster => Cluster::decode(bytes)?.name,
        TypeUrl::ClusterLoadAssignment => ClusterLoadAssignment::decode(bytes)?.cluster_name,
        TypeUrl::Listener => Listener::decode(bytes)?.name,
        TypeUrl::RouteConfiguration => RouteConfiguration::decode(bytes)?.name,
        TypeUrl::Secret => Secret::decode(bytes)?.name,
        TypeUrl::Workload => workload::Workload::decode(bytes)?.uid,
        TypeUrl::Service => {
            let s = workload::Service::decode(bytes)?;
            format!("{}/{}", s.namespace, s.hostname)
        }
        TypeUrl::Authorization => {
            let a = workload::Authorization::decode(bytes)?;
            format!("{}/{}", a.namespace, a.name)
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use switchyard_protos::pack;

    #[test]
    fn names_come_from_each_type_s_own_field() {
        let c = Cluster {
            name: "outbound|80||a.b.svc.cluster.local".into(),
            ..Default::default()
        };
        assert_eq!(
            resource_name(&pack(&c)).unwrap(),
            "outbound|80||a.b.svc.cluster.local"
        );
        let s = workload::Service {
            name: "a".into(),
            namespace: "b".into(),
            hostname: "a.b.svc.cluster.local".into(),
            ..Default::default()
        };
        assert_eq!(resource_name(&pack(&s)).unwrap(), "b/a.b.svc.cluster.local");
        let w = workload::Workload {
            uid: "b/pod".into(),
            ..Default::default()
        };
        assert_eq!(resource_name(&pack(&w)).unwrap(), "b/pod");
        let other = Any {
            type_url: "type.googleapis.com/some.Other".into(),
            value: vec![1, 2, 3],
        };
        assert_eq!(resource_name(&other).unwrap(), "");
        let broken = Any {
            type_url: TypeUrl::Cluster.as_str().into(),
            value: vec![0xff],
        };
        assert!(resource_name(&broken).is_err());
    }

    #[test]
    fn envelopes_are_unwrapped() {
        let c = Cluster {
            name: "c".into(),
            ..Default::default()
        };
        let envelope = PbResource {
            name: "c".into(),
            resource: Some(pack(&c)),
            ..Default::default()
        };
        let (name, inner) = unwrap_resource(&pack(&envelope));
        assert_eq!(name, "c");
        assert_eq!(inner, pack(&c));
    }

    fn client(variant: Variant) -> (AdsClient, mpsc::Receiver<Frame>) {
        // A client whose requests land in a channel the test reads (no server).
        let (rtx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let (ftx, frx) = mpsc::channel(64);
        let (tx, task) = match variant {
            Variant::Sotw => {
                let (tx, mut reqs) = mpsc::channel::<DiscoveryRequest>(REQUEST_BUFFER);
                let task = tokio::spawn(async move {
                    let _keep = rtx;
                    while let Some(r) = reqs.recv().await {
                        let _ = ftx.send(Frame::SotwRequest(r)).await;
                    }
                });
                (Outbound::Sotw(tx), task)
            }
            Variant::Delta => {
                let (tx, mut reqs) = mpsc::channel::<DeltaDiscoveryRequest>(REQUEST_BUFFER);
                let task = tokio::spawn(async move {
                    let _keep = rtx;
                    while let Some(r) = reqs.recv().await {
                        let _ = ftx.send(Frame::DeltaRequest(r)).await;
                    }
                });
                (Outbound::Delta(tx), task)
            }
        };
        let c = AdsClient {
            variant,
            node_id: "n".into(),
            node: Some(Node {
                id: "n".into(),
                ..Default::default()
            }),
            tx,
            rx,
            task,
            types: HashMap::new(),
            frames: None,
        };
        (c, frx)
    }

    #[tokio::test]
    async fn delta_subscriptions_send_what_changed() {
        let (mut c, mut frames) = client(Variant::Delta);
        let eds = TypeUrl::ClusterLoadAssignment.as_str();
        c.subscribe::<&str>(eds, &[]).await.unwrap(); // nothing: would mean wildcard
        c.subscribe(eds, &["a", "b"]).await.unwrap();
        c.subscribe(eds, &["a", "b"]).await.unwrap(); // unchanged: nothing
        c.subscribe(eds, &["b", "c"]).await.unwrap();
        let Some(Frame::DeltaRequest(first)) = frames.recv().await else {
            panic!()
        };
        assert_eq!(first.node.unwrap().id, "n");
        assert_eq!(first.resource_names_subscribe, ["a", "b"]);
        let Some(Frame::DeltaRequest(second)) = frames.recv().await else {
            panic!()
        };
        assert!(second.node.is_none());
        assert_eq!(second.resource_names_subscribe, ["c"]);
        assert_eq!(second.resource_names_unsubscribe, ["a"]);
        assert!(frames.try_recv().is_err());
    }

    #[tokio::test]
    async fn sotw_requests_carry_names_acked_version_and_latest_nonce() {
        let (mut c, mut frames) = client(Variant::Sotw);
        let cds = TypeUrl::Cluster.as_str();
        c.subscribe(cds, &[WILDCARD]).await.unwrap();
        let r = Response {
            type_url: cds.into(),
            version: "v1".into(),
            nonce: "n1".into(),
            resources: vec![],
            removed: vec![],
        };
        // what next() records
        c.types.get_mut(cds).unwrap().nonce = "n1".into();
        c.ack(&r).await.unwrap();
        let r2 = Response {
            version: "v2".into(),
            nonce: "n2".into(),
            ..r.clone()
        };
        c.types.get_mut(cds).unwrap().nonce = "n2".into();
        c.nack(&r2, "no").await.unwrap();
        c.subscribe(cds, &["x"]).await.unwrap();
        let mut reqs = Vec::new();
        while reqs.len() < 4 {
            match frames.recv().await {
                Some(Frame::SotwRequest(r)) => reqs.push(r),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(reqs[0].resource_names, [WILDCARD]);
        assert_eq!(reqs[1].version_info, "v1");
        assert_eq!(reqs[1].response_nonce, "n1");
        assert_eq!(
            reqs[2].version_info, "v1",
            "a NACK keeps the last ACKed version"
        );
        assert_eq!(reqs[2].response_nonce, "n2");
        assert_eq!(reqs[2].error_detail.as_ref().unwrap().message, "no");
        assert_eq!(reqs[3].resource_names, ["x"]);
        assert_eq!(reqs[3].response_nonce, "n2");
    }

    #[tokio::test]
    async fn answering_an_unsubscribed_type_is_refused() {
        let (mut c, _frames) = client(Variant::Delta);
        let r = Response {
            type_url: TypeUrl::Listener.as_str().into(),
            version: "1".into(),
            nonce: "n".into(),
            resources: vec![],
            removed: vec![],
        };
        assert!(matches!(
            c.ack(&r).await,
            Err(AdsError::NotSubscribed { .. })
        ));
    }
}
