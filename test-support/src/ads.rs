//! Fake ADS clients (SotW and delta) that check protocol invariants on every response they
//! receive, so protocol tests state what they expect and the invariants are checked for free:
//!
//! * every response has a nonce never seen before on this stream;
//! * SotW responses carry a version; delta resources each carry name and version;
//! * the type URL is one the client asked for, and every packed resource has that type;
//! * no resource name repeats in a response, and in delta no name is both updated and removed.
//!
//! A violation panics with the offending response.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use switchyard_protos::envoy::envoy::config::core::v3::Node;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use switchyard_protos::envoy::google::rpc::Status as RpcStatus;
use switchyard_protos::{TypeUrl, wkt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// A node with `id` and string metadata.
pub fn node(id: &str, metadata: &[(&str, &str)]) -> Node {
    Node {
        id: id.to_string(),
        cluster: "test".into(),
        metadata: Some(wkt::Struct {
            fields: metadata
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        wkt::Value {
                            kind: Some(wkt::value::Kind::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        }),
        ..Default::default()
    }
}

async fn client(
    addr: SocketAddr,
) -> anyhow::Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to xds at {addr}"))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A SotW client.
#[derive(Debug)]
pub struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
    nonces: HashSet<String>,
    requested: HashSet<String>,
    /// Latest response per type URL.
    pub latest: HashMap<String, DiscoveryResponse>,
    /// Latest ACKed version per type URL.
    pub acked: HashMap<String, String>,
}

impl SotwClient {
    /// Opens a stream; the first request will carry `node`.
    pub async fn connect(addr: SocketAddr, node: Node) -> anyhow::Result<Self> {
        let mut c = client(addr).await?;
        let (tx, rx) = mpsc::channel(16);
        let rx = c
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(SotwClient {
            tx,
            rx,
            node: Some(node),
            nonces: HashSet::new(),
            requested: HashSet::new(),
            latest: HashMap::new(),
            acked: HashMap::new(),
        })
    }

    /// Sends a raw request (the node is added to the first one).
    pub async fn send(&mut self, mut req: DiscoveryRequest) -> anyhow::Result<()> {
        if let Some(n) = self.node.take() {
            req.node = Some(n);
        }
        self.requested.insert(req.type_url.clone());
        self.tx.send(req).await.context("stream closed")
    }

    /// Subscribes (or changes the subscription) to `names` of `t`, acknowledging the latest
    /// response of that type.
    pub async fn request(&mut self, t: TypeUrl, names: &[&str]) -> anyhow::Result<()> {
        let (version, nonce) = self.version_nonce(t);
        self.send(DiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version,
            response_nonce: nonce,
            ..Default::default()
        })
        .await
    }

    fn version_nonce(&self, t: TypeUrl) -> (String, String) {
        self.latest
            .get(t.as_str())
            .map(|r| {
                (
                    self.acked.get(t.as_str()).cloned().unwrap_or_default(),
                    r.nonce.clone(),
                )
            })
            .unwrap_or_default()
    }

    /// ACKs the latest response of `t`, keeping the subscription `names`.
    pub async fn ack(&mut self, t: TypeUrl, names: &[&str]) -> anyhow::Result<()> {
        let r = self
            .latest
            .get(t.as_str())
            .context("nothing to ack")?
            .clone();
        self.acked.insert(t.as_str().into(), r.version_info.clone());
        self.send(DiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: r.version_info,
            response_nonce: r.nonce,
            ..Default::default()
        })
        .await
    }

    /// NACKs the latest response of `t`.
    pub async fn nack(&mut self, t: TypeUrl, names: &[&str], message: &str) -> anyhow::Result<()> {
        let r = self
            .latest
            .get(t.as_str())
            .context("nothing to nack")?
            .clone();
        self.send(DiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: self.acked.get(t.as_str()).cloned().unwrap_or_default(),
            response_nonce: r.nonce,
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await
    }

    /// The next response, checked; errors on timeout or stream end.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<DiscoveryResponse> {
        let r = match tokio::time::timeout(timeout, self.rx.message()).await {
            Err(_) => bail!("no response within {timeout:?}"),
            Ok(Err(status)) => bail!("stream failed: {status}"),
            Ok(Ok(None)) => bail!("stream ended"),
            Ok(Ok(Some(r))) => r,
        };
        self.check(&r);
        self.latest.insert(r.type_url.clone(), r.clone());
        Ok(r)
    }

    /// The stream's end status (for tests of refused streams).
    pub async fn recv_status(&mut self, timeout: Duration) -> anyhow::Result<tonic::Status> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Err(_) => bail!("no status within {timeout:?}"),
            Ok(Err(status)) => Ok(status),
            Ok(Ok(None)) => Ok(tonic::Status::ok("")),
            Ok(Ok(Some(r))) => bail!("expected the stream to fail, got a response: {r:?}"),
        }
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(quiet, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(Ok(Some(r))) => bail!("expected no response, got {} nonce {}", r.type_url, r.nonce),
            Ok(other) => bail!("expected no response, stream ended: {other:?}"),
        }
    }

    fn check(&mut self, r: &DiscoveryResponse) {
        assert!(!r.nonce.is_empty(), "response without nonce: {r:?}");
        assert!(
            self.nonces.insert(r.nonce.clone()),
            "nonce {} reused",
            r.nonce
        );
        assert!(
            !r.version_info.is_empty(),
            "response without version: {}",
            r.type_url
        );
        assert!(
            self.requested.contains(&r.type_url),
            "unrequested type {}",
            r.type_url
        );
        let mut names = HashSet::new();
        for any in &r.resources {
            assert_eq!(
                any.type_url, r.type_url,
                "resource type differs from response type"
            );
            let name = resource_name(r.type_url.as_str(), &any.value);
            assert!(
                names.insert(name.clone()),
                "resource {name} twice in one response"
            );
        }
    }
}

/// A delta client with the resources it holds.
#[derive(Debug)]
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
    nonces: HashSet<String>,
    requested: HashSet<String>,
    /// Held resources: type URL -> name -> (version, resource).
    pub held: HashMap<String, BTreeMap<String, (String, wkt::Any)>>,
    /// Names the server said are removed or do not exist, per type (latest response).
    pub removed: HashMap<String, Vec<String>>,
    /// Latest response per type.
    pub latest: HashMap<String, DeltaDiscoveryResponse>,
}

impl DeltaClient {
    /// Opens a stream.
    pub async fn connect(addr: SocketAddr, node: Node) -> anyhow::Result<Self> {
        let mut c = client(addr).await?;
        let (tx, rx) = mpsc::channel(16);
        let rx = c
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(DeltaClient {
            tx,
            rx,
            node: Some(node),
            nonces: HashSet::new(),
            requested: HashSet::new(),
            held: HashMap::new(),
            removed: HashMap::new(),
            latest: HashMap::new(),
        })
    }

    /// Sends a raw request.
    pub async fn send(&mut self, mut req: DeltaDiscoveryRequest) -> anyhow::Result<()> {
        if let Some(n) = self.node.take() {
            req.node = Some(n);
        }
        self.requested.insert(req.type_url.clone());
        self.tx.send(req).await.context("stream closed")
    }

    /// Subscribes to `names` (`*` for wildcard; empty for the legacy wildcard on a first
    /// request), announcing `initial` versions held from an earlier stream.
    pub async fn subscribe(
        &mut self,
        t: TypeUrl,
        names: &[&str],
        initial: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            initial_resource_versions: initial.clone().into_iter().collect(),
            ..Default::default()
        })
        .await
    }

    /// Unsubscribes from `names`.
    pub async fn unsubscribe(&mut self, t: TypeUrl, names: &[&str]) -> anyhow::Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names_unsubscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    /// ACKs the latest response of `t`.
    pub async fn ack(&mut self, t: TypeUrl) -> anyhow::Result<()> {
        let nonce = self
            .latest
            .get(t.as_str())
            .context("nothing to ack")?
            .nonce
            .clone();
        self.send(DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            response_nonce: nonce,
            ..Default::default()
        })
        .await
    }

    /// NACKs the latest response of `t`.
    pub async fn nack(&mut self, t: TypeUrl, message: &str) -> anyhow::Result<()> {
        let nonce = self
            .latest
            .get(t.as_str())
            .context("nothing to nack")?
            .nonce
            .clone();
        self.send(DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            response_nonce: nonce,
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await
    }

    /// The next response, checked and applied to [`DeltaClient::held`].
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<DeltaDiscoveryResponse> {
        let r = match tokio::time::timeout(timeout, self.rx.message()).await {
            Err(_) => bail!("no response within {timeout:?}"),
            Ok(Err(status)) => bail!("stream failed: {status}"),
            Ok(Ok(None)) => bail!("stream ended"),
            Ok(Ok(Some(r))) => r,
        };
        self.check(&r);
        let held = self.held.entry(r.type_url.clone()).or_default();
        for res in &r.resources {
            if let Some(any) = &res.resource {
                held.insert(res.name.clone(), (res.version.clone(), any.clone()));
            }
        }
        for n in &r.removed_resources {
            held.remove(n);
        }
        self.removed
            .insert(r.type_url.clone(), r.removed_resources.clone());
        self.latest.insert(r.type_url.clone(), r.clone());
        Ok(r)
    }

    /// Receives and ACKs until a response of `t` arrives; returns it (others are ACKed too).
    pub async fn recv_type(
        &mut self,
        t: TypeUrl,
        timeout: Duration,
    ) -> anyhow::Result<DeltaDiscoveryResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.recv(left).await?;
            let rt = TypeUrl::parse(&r.type_url)?;
            self.ack(rt).await?;
            if rt == t {
                return Ok(r);
            }
        }
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(quiet, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(Ok(Some(r))) => bail!(
                "expected no response, got {} with {} resources, removed {:?}",
                r.type_url,
                r.resources.len(),
                r.removed_resources
            ),
            Ok(other) => bail!("expected no response, stream ended: {other:?}"),
        }
    }

    /// Versions held, as `initial_resource_versions` for a new stream.
    pub fn versions(&self, t: TypeUrl) -> BTreeMap<String, String> {
        self.held
            .get(t.as_str())
            .map(|m| m.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Names held of `t`.
    pub fn names(&self, t: TypeUrl) -> Vec<String> {
        self.held
            .get(t.as_str())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn check(&mut self, r: &DeltaDiscoveryResponse) {
        assert!(
            !r.nonce.is_empty(),
            "response without nonce: {}",
            r.type_url
        );
        assert!(
            self.nonces.insert(r.nonce.clone()),
            "nonce {} reused",
            r.nonce
        );
        assert!(
            self.requested.contains(&r.type_url),
            "unrequested type {}",
            r.type_url
        );
        let mut names = HashSet::new();
        for res in &r.resources {
            assert!(!res.name.is_empty(), "resource without name");
            assert!(
                !res.version.is_empty(),
                "resource {} without version",
                res.name
            );
            let any = res.resource.as_ref().expect("resource without body");
            assert_eq!(
                any.type_url, r.type_url,
                "resource type differs from response type"
            );
            assert!(
                names.insert(res.name.clone()),
                "resource {} twice",
                res.name
            );
        }
        for n in &r.removed_resources {
            assert!(!names.contains(n), "{n} both updated and removed");
        }
    }
}

/// The name of an encoded resource as xDS names it (`Service` and `Authorization` are
/// `<namespace>/<name>`), decoded by the runtime's ADS client; empty when it does not decode.
pub fn resource_name(type_url: &str, bytes: &[u8]) -> String {
    let any = switchyard_protos::wkt::Any {
        type_url: type_url.to_string(),
        value: bytes.to_vec(),
    };
    switchyard_dataplane_runtime::ads_client::resource_name(&any).unwrap_or_default()
}
