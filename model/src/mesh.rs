//! The resolved mesh: what every translator reads. Built by [`crate::MeshBuilder`], immutable
//! afterwards, cheap to share (`Arc` everywhere a value is shared by many views).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::SpiffeId;

/// Label that picks a namespace's (or a pod's) dataplane.
pub const DATAPLANE_MODE_LABEL: &str = "switchyard.io/dataplane-mode";
/// Service annotation that limits which namespaces see a service: `*` (default), `.` (own
/// namespace) or a comma-separated list of namespaces.
pub const EXPORT_TO_ANNOTATION: &str = "switchyard.io/export-to";
/// Service annotation: most open connections to the service's endpoints, per client proxy
/// (Envoy's `max_connections`; Istio's `connectionPool.tcp.maxConnections`).
pub const MAX_CONNECTIONS_ANNOTATION: &str = "switchyard.io/max-connections";
/// Service annotation: most requests waiting for a connection, per client proxy.
pub const MAX_PENDING_REQUESTS_ANNOTATION: &str = "switchyard.io/max-pending-requests";
/// Service annotation: most requests in flight, per client proxy.
pub const MAX_REQUESTS_ANNOTATION: &str = "switchyard.io/max-requests";
/// Service annotation: most retries in flight, per client proxy.
pub const MAX_RETRIES_ANNOTATION: &str = "switchyard.io/max-retries";
/// Node label for the region part of locality.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label for the zone part of locality.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A workload's dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataplaneMode {
    /// Per-node ztunnel.
    Ztunnel,
    /// Per-node eBPF agent.
    Ebpf,
    /// Per-pod micro-sidecar.
    Sidecar,
    /// Not in the mesh.
    None,
}

/// A label value that is not a dataplane mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {DATAPLANE_MODE_LABEL} value {0:?}: expected ztunnel, ebpf, sidecar or none")]
pub struct InvalidMode(pub String);

impl DataplaneMode {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DataplaneMode::Ztunnel => "ztunnel",
            DataplaneMode::Ebpf => "ebpf",
            DataplaneMode::Sidecar => "sidecar",
            DataplaneMode::None => "none",
        }
    }

    /// A pod's effective mode and where it comes from: its own label, else its namespace's,
    /// else the control plane's `default`. The control plane's model and the local
    /// cluster's injector both decide through this one function.
    pub fn resolve(
        pod_label: Option<DataplaneMode>,
        namespace_label: Option<DataplaneMode>,
        default: DataplaneMode,
    ) -> (DataplaneMode, ModeSource) {
        match (pod_label, namespace_label) {
            (Some(m), _) => (m, ModeSource::PodLabel),
            (None, Some(m)) => (m, ModeSource::NamespaceLabel),
            (None, None) => (default, ModeSource::Default),
        }
    }

    /// Whether workloads in this mode have a mesh identity and speak HBONE.
    pub const fn in_mesh(self) -> bool {
        !matches!(self, DataplaneMode::None)
    }
}

impl FromStr for DataplaneMode {
    type Err = InvalidMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ztunnel" => Ok(DataplaneMode::Ztunnel),
            "ebpf" => Ok(DataplaneMode::Ebpf),
            "sidecar" => Ok(DataplaneMode::Sidecar),
            "none" => Ok(DataplaneMode::None),
            other => Err(InvalidMode(other.to_string())),
        }
    }
}

impl fmt::Display for DataplaneMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Mesh-wide settings (from the control plane's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Kubernetes cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Dataplane of namespaces without the mode label.
    pub default_mode: DataplaneMode,
    /// Namespace whose selector-less policies apply mesh-wide.
    pub root_namespace: String,
    /// Root certificates (PEM) every proxy trusts, from the CA; served as SDS `ROOTCA`.
    pub trust_bundle: Arc<[String]>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            default_mode: DataplaneMode::Ztunnel,
            root_namespace: "switchyard-system".into(),
            trust_bundle: Arc::from(Vec::new()),
        }
    }
}

/// `<namespace>/<name>` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a workload runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub subzone: String,
}

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Mode from the namespace label, if set.
    pub mode_label: Option<DataplaneMode>,
    /// Mode its workloads get unless a pod overrides it.
    pub mode: DataplaneMode,
}

/// A Kubernetes node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Underlay address.
    pub address: Option<IpAddr>,
    /// Locality from topology labels.
    pub locality: Locality,
}

/// The application protocol of a service port, which picks L4 or L7 handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AppProtocol {
    /// HTTP/1.1 (and HTTP/2 when the client chooses it).
    Http,
    /// HTTP/2 prior knowledge (h2c).
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl AppProtocol {
    /// Infers the protocol the way Kubernetes users expect: `appProtocol` first
    /// (`http`, `kubernetes.io/h2c`, `grpc`, `tcp`...), then the port name prefix
    /// (`http-`, `grpc-`, `http2-`, `tcp-`), else TCP.
    pub fn infer(app_protocol: Option<&str>, port_name: Option<&str>) -> AppProtocol {
        let classify = |s: &str| match s.to_ascii_lowercase().as_str() {
            "http" | "http1" | "https" => Some(AppProtocol::Http),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(AppProtocol::Http2),
            "grpc" | "grpc-web" => Some(AppProtocol::Grpc),
            "tcp" | "tls" | "mongo" | "mysql" | "redis" => Some(AppProtocol::Tcp),
            _ => None,
        };
        if let Some(p) = app_protocol.and_then(classify) {
            return p;
        }
        if let Some(name) = port_name {
            let prefix = name.split('-').next().unwrap_or(name);
            if let Some(p) = classify(prefix) {
                return p;
            }
        }
        AppProtocol::Tcp
    }

    /// Whether the port is handled at L7.
    pub const fn is_http(self) -> bool {
        !matches!(self, AppProtocol::Tcp)
    }

    /// Whether upstream connections must use HTTP/2.
    pub const fn is_http2(self) -> bool {
        matches!(self, AppProtocol::Http2 | AppProtocol::Grpc)
    }

    /// Lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
            AppProtocol::Tcp => "tcp",
        }
    }
}

/// A service port's target on its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, looked up on each pod.
    Named(String),
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Port name, if any.
    pub name: Option<String>,
    /// Service port.
    pub port: u16,
    /// Target on endpoints.
    pub target: TargetPort,
    /// Application protocol.
    pub protocol: AppProtocol,
}

/// Which namespaces see a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// Every namespace.
    All,
    /// Only these namespaces.
    Namespaces(Vec<String>),
}

impl Visibility {
    /// Whether proxies in `namespace` see the service.
    pub fn visible_from(&self, namespace: &str) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Namespaces(list) => list.iter().any(|n| n == namespace),
        }
    }
}

/// Circuit-breaker limits a client proxy keeps for a service (unset: the dataplane's
/// defaults: 1024 connections, pending and active requests; retries: Envoy 3 at a time, our
/// sidecar bounded by its retry budget only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ConnectionLimits {
    /// Most open connections.
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// Most requests in flight.
    pub max_requests: Option<u32>,
    /// Most retries in flight.
    pub max_retries: Option<u32>,
}

impl ConnectionLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == ConnectionLimits::default()
    }
}

/// A Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `<name>.<namespace>.svc.<cluster domain>`.
    pub hostname: String,
    /// Cluster IPs (empty for headless services).
    pub vips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Pod selector, if any.
    pub selector: Option<BTreeMap<String, String>>,
    /// Who sees the service.
    pub visibility: Visibility,
    /// Client-side connection limits (circuit breaking).
    pub limits: ConnectionLimits,
}

impl Service {
    /// The port with this number.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// What backs a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// A pod.
    Pod,
    /// An EndpointSlice address that no pod owns.
    Endpoint,
}

/// Where a workload's dataplane mode comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeSource {
    /// The pod's own `switchyard.io/dataplane-mode` label.
    PodLabel,
    /// Its namespace's label.
    NamespaceLabel,
    /// Neither is set: the control plane's `default_mode` (Helm `dataplane.defaultMode`).
    Default,
}

/// A workload: a pod, or an endpoint address that no pod owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `<namespace>/<pod>` or `<namespace>/endpoint/<ip>`.
    pub uid: String,
    /// Pod name (or the address for endpoints).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod or endpoint.
    pub kind: WorkloadKind,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// Node, if known.
    pub node: Option<String>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Effective dataplane mode: pod label > namespace label > mesh default.
    pub mode: DataplaneMode,
    /// Where `mode` comes from.
    pub mode_source: ModeSource,
    /// Identity, when in the mesh.
    pub identity: Option<SpiffeId>,
    /// Named container ports.
    pub named_ports: BTreeMap<String, u16>,
    /// Ready to serve.
    pub ready: bool,
    /// Locality (from its node, or the slice endpoint's zone).
    pub locality: Locality,
    /// Node underlay address.
    pub node_address: Option<IpAddr>,
}

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Workload uid.
    pub workload: String,
    /// Address to connect to.
    pub ip: IpAddr,
    /// Target port.
    pub port: u16,
    /// Ready.
    pub healthy: bool,
    /// Locality.
    pub locality: Locality,
    /// The workload's dataplane (decides plaintext vs HBONE at the client).
    pub mode: DataplaneMode,
    /// The workload's identity, to verify on mTLS.
    pub identity: Option<SpiffeId>,
}

/// Endpoints of one service, per service port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceEndpoints {
    /// Service port -> endpoints, sorted by (ip, port).
    pub by_port: BTreeMap<u16, Vec<Endpoint>>,
}

/// HTTPRoute or GRPCRoute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `gateway.networking.k8s.io/v1` HTTPRoute.
    Http,
    /// `gateway.networking.k8s.io/v1` GRPCRoute.
    Grpc,
}

/// How a string is matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with (path prefix matches whole segments, per Gateway API).
    Prefix(String),
    /// RE2 regular expression over the whole value.
    Regex(String),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Condition on its value.
    pub value: StringMatch,
}

/// One match of a route rule: all conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RouteMatch {
    /// Path condition.
    pub path: Option<StringMatch>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// HTTP method.
    pub method: Option<String>,
    /// Query parameter conditions.
    pub query: Vec<HeaderMatch>,
}

/// A weighted backend of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend service.
    pub service: ObjectKey,
    /// Service port (defaults to the parent port).
    pub port: Option<u16>,
    /// Relative weight.
    pub weight: u32,
}

/// Retry policy of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// HTTP status codes that are retried (empty: connection failures and 5xx).
    pub codes: Vec<u16>,
    /// Base backoff.
    pub backoff: Option<Duration>,
    /// Timeout per attempt.
    pub per_try_timeout: Option<Duration>,
}

/// One rule of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteRule {
    /// Matches (any); empty means match everything.
    pub matches: Vec<RouteMatch>,
    /// Backends; empty means respond 500 (Gateway API).
    pub backends: Vec<Backend>,
    /// Request timeout.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
}

/// A route attached to a service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Namespace and name of the route object.
    pub key: ObjectKey,
    /// HTTP or gRPC.
    pub kind: RouteKind,
    /// Parent service.
    pub parent: ObjectKey,
    /// Parent port; `None` attaches to every port.
    pub port: Option<u16>,
    /// Rules in precedence order.
    pub rules: Vec<RouteRule>,
    /// Creation order tie-breaker (older first), per Gateway API precedence.
    pub order: u64,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyAction {
    /// Allow matching connections (and deny others once any allow policy applies).
    Allow,
    /// Deny matching connections.
    Deny,
}

/// An IP prefix.
pub type IpBlock = ipnet::IpNet;

/// Conditions on the source of a connection (all lists: any element matches; empty: anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicySource {
    /// SPIFFE IDs (or `*` suffix/prefix patterns).
    pub principals: Vec<String>,
    /// Excluded principals.
    pub not_principals: Vec<String>,
    /// Source namespaces.
    pub namespaces: Vec<String>,
    /// Excluded namespaces.
    pub not_namespaces: Vec<String>,
    /// Source address blocks.
    pub ip_blocks: Vec<IpBlock>,
    /// Excluded source blocks.
    pub not_ip_blocks: Vec<IpBlock>,
}

/// Conditions on the destination (all lists: any element matches; empty: anything). Paths
/// and methods are L7 conditions: only a dataplane that sees requests (the sidecar, Envoy)
/// can check them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyOperation {
    /// Destination ports.
    pub ports: Vec<u16>,
    /// Excluded ports.
    pub not_ports: Vec<u16>,
    /// Request paths: exact, `prefix*`, `*suffix` or `*`.
    pub paths: Vec<String>,
    /// Excluded request paths.
    pub not_paths: Vec<String>,
    /// Request methods (`GET`, ...).
    pub methods: Vec<String>,
    /// Excluded request methods.
    pub not_methods: Vec<String>,
}

impl PolicyOperation {
    /// Whether it has conditions only requests can satisfy (paths, methods).
    pub fn is_l7(&self) -> bool {
        !(self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty())
    }
}

/// One rule: matches when any `from` and any `to` match (empty lists match anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    /// Sources.
    pub from: Vec<PolicySource>,
    /// Destinations.
    pub to: Vec<PolicyOperation>,
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicyScope {
    /// All workloads (root namespace, no selector).
    Global,
    /// All workloads of the policy's namespace.
    Namespace,
    /// Workloads of the namespace matching the labels.
    Selector(BTreeMap<String, String>),
}

/// An L4 authorization policy (`AuthorizationPolicy.switchyard.io/v1alpha1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthorizationPolicy {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Where it applies.
    pub scope: PolicyScope,
    /// Allow or deny.
    pub action: PolicyAction,
    /// Rules; a policy with no rules matches nothing for ALLOW (deny-all) and nothing for DENY.
    pub rules: Vec<PolicyRule>,
}

/// Whether inbound traffic must be mTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MtlsMode {
    /// mTLS required.
    Strict,
    /// mTLS or plaintext.
    #[default]
    Permissive,
    /// Plaintext only.
    Disable,
}

/// A `PeerAuthentication.switchyard.io/v1alpha1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAuthentication {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Where it applies (same rules as authorization policies).
    pub scope: PolicyScope,
    /// Mode for all ports.
    pub mode: Option<MtlsMode>,
    /// Per-port modes (target ports).
    pub port_modes: BTreeMap<u16, MtlsMode>,
}

/// A problem that does not stop the mesh from being built, reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildWarning {
    /// The object concerned, e.g. `HTTPRoute default/split`.
    pub object: String,
    /// What is wrong.
    pub message: String,
}

/// The whole mesh at one generation.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    /// Monotonic generation, bumped on every successful build.
    pub generation: u64,
    /// Mesh-wide settings.
    pub config: MeshConfig,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Services by key.
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// Workloads by uid.
    pub workloads: BTreeMap<String, Arc<Workload>>,
    /// Endpoints by service.
    pub endpoints: BTreeMap<ObjectKey, Arc<ServiceEndpoints>>,
    /// Routes by parent service.
    pub routes: BTreeMap<ObjectKey, Vec<Arc<Route>>>,
    /// Authorization policies by key.
    pub policies: BTreeMap<ObjectKey, Arc<AuthorizationPolicy>>,
    /// Peer authentications by key.
    pub peer_authentications: BTreeMap<ObjectKey, Arc<PeerAuthentication>>,
    /// Service accounts by key.
    pub service_accounts: BTreeMap<ObjectKey, ()>,
    /// Workload uid by address.
    pub workload_by_ip: HashMap<IpAddr, String>,
    /// Services by hostname.
    pub service_by_host: HashMap<String, ObjectKey>,
    /// Non-fatal problems found while building.
    pub warnings: Vec<BuildWarning>,
}

impl Mesh {
    /// An empty mesh with this config.
    pub fn empty(config: MeshConfig) -> Self {
        Mesh {
            config,
            ..Default::default()
        }
    }

    /// The workload with this address.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip
            .get(&ip)
            .and_then(|uid| self.workloads.get(uid))
    }

    /// The effective dataplane mode of `namespace` (or of `pod` in it) and where it comes
    /// from; `None` when the pod does not exist.
    pub fn explain_mode(
        &self,
        namespace: &str,
        pod: Option<&str>,
    ) -> Option<(DataplaneMode, ModeSource)> {
        if let Some(pod) = pod {
            let w = self.workloads.get(&format!("{namespace}/{pod}"))?;
            return Some((w.mode, w.mode_source));
        }
        Some(match self.namespaces.get(namespace) {
            Some(ns) if ns.mode_label.is_some() => (ns.mode, ModeSource::NamespaceLabel),
            Some(ns) => (ns.mode, ModeSource::Default),
            None => (self.config.default_mode, ModeSource::Default),
        })
    }

    /// Whether `policy` applies to `workload`.
    pub fn policy_applies(
        &self,
        scope: &PolicyScope,
        policy_ns: &str,
        workload: &Workload,
    ) -> bool {
        match scope {
            PolicyScope::Global => true,
            PolicyScope::Namespace => workload.namespace == policy_ns,
            PolicyScope::Selector(labels) => {
                workload.namespace == policy_ns && labels_match(labels, &workload.labels)
            }
        }
    }

    /// Authorization policies that apply to a workload, in key order.
    pub fn policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a Arc<AuthorizationPolicy>> + 'a {
        self.policies
            .values()
            .filter(move |p| self.policy_applies(&p.scope, &p.key.namespace, workload))
    }

    /// Effective inbound mTLS mode for a workload and target port: the most specific peer
    /// authentication wins (selector > namespace > global); port-level beats workload-level.
    pub fn mtls_mode(&self, workload: &Workload, port: Option<u16>) -> MtlsMode {
        let rank = |s: &PolicyScope| match s {
            PolicyScope::Selector(_) => 2,
            PolicyScope::Namespace => 1,
            PolicyScope::Global => 0,
        };
        let best = self
            .peer_authentications
            .values()
            .filter(|p| self.policy_applies(&p.scope, &p.key.namespace, workload))
            .max_by(|a, b| rank(&a.scope).cmp(&rank(&b.scope)).then(b.key.cmp(&a.key)));
        let Some(pa) = best else {
            return MtlsMode::default();
        };
        port.and_then(|p| pa.port_modes.get(&p).copied())
            .or(pa.mode)
            .unwrap_or_default()
    }
}

/// Whether every selector label is present with the same value.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
