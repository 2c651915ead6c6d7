//! Plain inputs a source hands to [`crate::MeshBuilder`]: Kubernetes objects reduced to the
//! fields the mesh needs, already checked for syntax by the source.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::mesh::{
    ConnectionLimits, DataplaneMode, Locality, MtlsMode, ObjectKey, PolicyAction, PolicyRule,
    RetryPolicy, RouteKind, RouteMatch, ServicePort, Visibility,
};

/// A Namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInput {
    /// Name.
    pub name: String,
    /// Value of the dataplane-mode label.
    pub mode: Option<DataplaneMode>,
}

/// A Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInput {
    /// Name.
    pub name: String,
    /// InternalIP.
    pub address: Option<IpAddr>,
    /// From topology labels.
    pub locality: Locality,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Cluster IPs.
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Pod selector.
    pub selector: Option<BTreeMap<String, String>>,
    /// Export scope.
    pub visibility: Visibility,
    /// Client-side connection limits.
    pub limits: ConnectionLimits,
}

/// A Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Pod IPs (empty while pending).
    pub ips: Vec<IpAddr>,
    /// Node name.
    pub node: Option<String>,
    /// Service account.
    pub service_account: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value of the dataplane-mode label on the pod.
    pub mode: Option<DataplaneMode>,
    /// Named container ports.
    pub named_ports: BTreeMap<String, u16>,
    /// Ready condition (a pod without status counts as ready).
    pub ready: bool,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// Matches the service port name.
    pub name: Option<String>,
    /// Target port.
    pub port: u16,
}

/// An endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Addresses.
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (unset counts as ready).
    pub ready: bool,
    /// `nodeName`.
    pub node: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `targetRef` name when it is a Pod.
    pub pod: Option<String>,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSliceInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `kubernetes.io/service-name` label.
    pub service: String,
    /// Ports.
    pub ports: Vec<SlicePort>,
    /// Endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// A parent reference of a route (only Services are meaningful to a mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRefInput {
    /// Namespace (defaults to the route's).
    pub namespace: Option<String>,
    /// Service name.
    pub name: String,
    /// Port.
    pub port: Option<u16>,
}

/// A backend reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRefInput {
    /// Namespace (defaults to the route's).
    pub namespace: Option<String>,
    /// Service name.
    pub name: String,
    /// Port.
    pub port: Option<u16>,
    /// Weight (Gateway API default 1).
    pub weight: u32,
}

/// A rule of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRuleInput {
    /// Matches.
    pub matches: Vec<RouteMatch>,
    /// Backends.
    pub backends: Vec<BackendRefInput>,
    /// Request timeout.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
}

/// An HTTPRoute or GRPCRoute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// HTTP or gRPC.
    pub kind: RouteKind,
    /// Service parents.
    pub parents: Vec<ParentRefInput>,
    /// Rules.
    pub rules: Vec<RouteRuleInput>,
    /// Creation order (older first), for precedence between routes.
    pub order: u64,
}

/// An AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicyInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Workload selector.
    pub selector: Option<BTreeMap<String, String>>,
    /// Action.
    pub action: PolicyAction,
    /// Rules.
    pub rules: Vec<PolicyRule>,
}

/// A PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthenticationInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Workload selector.
    pub selector: Option<BTreeMap<String, String>>,
    /// Mode for all ports.
    pub mode: Option<MtlsMode>,
    /// Per-port modes.
    pub port_modes: BTreeMap<u16, MtlsMode>,
}

/// Short constructors for tests, examples and benchmarks.
impl PodInput {
    /// A ready pod with one address and no labels.
    pub fn new(namespace: &str, name: &str, ip: IpAddr) -> Self {
        PodInput {
            key: ObjectKey::new(namespace, name),
            ips: vec![ip],
            node: None,
            service_account: None,
            labels: BTreeMap::new(),
            mode: None,
            named_ports: BTreeMap::new(),
            ready: true,
        }
    }

    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    /// Sets the node.
    pub fn on_node(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Sets the service account.
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = Some(sa.into());
        self
    }

    /// Sets the pod's dataplane-mode label.
    pub fn mode(mut self, mode: DataplaneMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Adds a named container port.
    pub fn named_port(mut self, name: &str, port: u16) -> Self {
        self.named_ports.insert(name.into(), port);
        self
    }
}

impl ServiceInput {
    /// A service selecting `app=<name>`, visible everywhere, without ports.
    pub fn new(namespace: &str, name: &str, vip: IpAddr) -> Self {
        ServiceInput {
            key: ObjectKey::new(namespace, name),
            cluster_ips: vec![vip],
            ports: Vec::new(),
            selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
            visibility: Visibility::All,
            limits: ConnectionLimits::default(),
        }
    }

    /// Adds a port with a numeric target.
    pub fn port(mut self, name: &str, port: u16, target: u16) -> Self {
        self.ports.push(ServicePort {
            name: Some(name.into()),
            port,
            target: crate::mesh::TargetPort::Number(target),
            protocol: crate::mesh::AppProtocol::infer(None, Some(name)),
        });
        self
    }
}
