//! Sources of cluster state. A source reads Kubernetes objects (from a directory of YAML
//! manifests today, from the API server later), reduces them to model inputs
//! ([`ClusterObjects`]) and reports them, or what is wrong with them, on a watch channel.
//! Kubernetes types stop here: nothing outside `sources` sees a k8s-openapi type.
//!
//! A source never publishes a partial state: when any object is bad, it reports
//! [`SourceReport::problems`] and keeps [`SourceReport::objects`] at the last good set, so the
//! mesh built from it keeps serving.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use switchyard_model::input::{
    AuthorizationPolicyInput, EndpointSliceInput, NamespaceInput, NodeInput,
    PeerAuthenticationInput, PodInput, RouteInput, ServiceInput,
};
use switchyard_model::{MeshBuilder, MeshConfig, ObjectKey};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod crd;
pub mod dir;
pub mod gateway;
pub mod k8s;

/// Every object a source read, as model inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterObjects {
    /// Namespaces.
    pub namespaces: Vec<NamespaceInput>,
    /// Nodes.
    pub nodes: Vec<NodeInput>,
    /// Service accounts.
    pub service_accounts: Vec<ObjectKey>,
    /// Services.
    pub services: Vec<ServiceInput>,
    /// Pods.
    pub pods: Vec<PodInput>,
    /// Endpoint slices.
    pub endpoint_slices: Vec<EndpointSliceInput>,
    /// HTTPRoutes and GRPCRoutes.
    pub routes: Vec<RouteInput>,
    /// Authorization policies.
    pub authorization_policies: Vec<AuthorizationPolicyInput>,
    /// Peer authentications.
    pub peer_authentications: Vec<PeerAuthenticationInput>,
}

impl ClusterObjects {
    /// A builder holding every object.
    pub fn to_builder(&self, config: MeshConfig) -> MeshBuilder {
        let mut b = MeshBuilder::new(config);
        for x in &self.namespaces {
            b.namespace(x.clone());
        }
        for x in &self.nodes {
            b.node(x.clone());
        }
        for x in &self.service_accounts {
            b.service_account(x.clone());
        }
        for x in &self.services {
            b.service(x.clone());
        }
        for x in &self.pods {
            b.pod(x.clone());
        }
        for x in &self.endpoint_slices {
            b.endpoint_slice(x.clone());
        }
        for x in &self.routes {
            b.route(x.clone());
        }
        for x in &self.authorization_policies {
            b.authorization_policy(x.clone());
        }
        for x in &self.peer_authentications {
            b.peer_authentication(x.clone());
        }
        b
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.nodes.len()
            + self.service_accounts.len()
            + self.services.len()
            + self.pods.len()
            + self.endpoint_slices.len()
            + self.routes.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What is wrong with one input, located as precisely as the source can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceProblem {
    /// File path, or `kubernetes`.
    pub origin: String,
    /// 0-based index of the YAML document in the file.
    pub document: Option<usize>,
    /// 1-based line in the file.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// `<Kind> <namespace>/<name>` when known.
    pub object: Option<String>,
    /// Field path, e.g. `spec.ports[0].port`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " (line {l}, column {c})")?,
            (Some(l), None) => write!(f, " (line {l})")?,
            _ => {}
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What a source last saw.
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    /// Bumped on every report.
    pub revision: u64,
    /// The last good set of objects (`None` until one was read).
    pub objects: Option<Arc<ClusterObjects>>,
    /// Problems of the latest read; empty when it was good.
    pub problems: Vec<SourceProblem>,
}

/// A producer of cluster state.
pub trait Source: Send + 'static {
    /// A short description for logs, e.g. `directory /etc/switchyard/manifests`.
    fn describe(&self) -> String;

    /// Reads the state once and then follows changes until `shutdown`, reporting each result
    /// on `reports`. The first report must come without waiting for a change.
    fn run(
        self: Box<Self>,
        reports: watch::Sender<SourceReport>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}
