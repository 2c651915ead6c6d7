//! `compile`: the mesh and one proxy become the [`ProxyView`] renderers read. Scoping,
//! endpoint selection and policy selection happen here, once; renderers only change shape.
//!
//! Most of a view is shared: every per-pod proxy of a namespace sees the same services, every
//! node agent the same workloads. Those parts are [`Scope`]s, built once per mesh generation by
//! a [`Compiler`] and handed out as `Arc`s, so 10,000 proxies cost 10,000 small views, not
//! 10,000 copies of the mesh. A compiler built with [`Compiler::with_previous`] also keeps the
//! previous generation's [`ServiceView`] and [`WorkloadView`] `Arc`s for everything that did
//! not change, which lets renderers cache by pointer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use crate::mesh::{
    AppProtocol, AuthorizationPolicy, Endpoint, Mesh, MtlsMode, ObjectKey, PolicyScope, Route,
    Service, ServicePort, Workload,
};
use crate::proxy::{ProxyId, ProxyRole};

/// What a group of proxies shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKey {
    /// Per-pod proxies (sidecar, envoy, grpc) of one namespace.
    Namespace(String),
    /// Node agents (ztunnel, ebpf): they see every workload and service.
    NodeAgents,
}

/// A service port with its endpoints and the routes attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    /// The port.
    pub port: ServicePort,
    /// Endpoints, sorted.
    pub endpoints: Vec<Endpoint>,
    /// Routes attached to this port (or to every port of the service), in precedence order.
    pub routes: Vec<Arc<Route>>,
}

/// A service as proxies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// The service.
    pub service: Arc<Service>,
    /// Its ports.
    pub ports: Vec<PortView>,
}

/// Service (`<namespace>/<hostname>`) -> (service port, target port) pairs.
pub type ServicePortMap = BTreeMap<String, Vec<(u16, u16)>>;

/// A workload as node agents see it: with the services it backs and the selector policies
/// that pick it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadView {
    /// The workload.
    pub workload: Arc<Workload>,
    /// Service (`<namespace>/<hostname>`) -> (service port, target port) pairs.
    pub services: ServicePortMap,
    /// Selector-scoped authorization policies (`<namespace>/<name>`) that apply to it.
    pub policies: Vec<String>,
}

/// The shared part of a group of views.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Which group.
    pub key: ScopeKey,
    /// Mesh generation.
    pub generation: u64,
    /// Visible services, by key order.
    pub services: Vec<Arc<ServiceView>>,
    /// Workloads (node agents only), by uid order.
    pub workloads: Vec<Arc<WorkloadView>>,
}

/// A port a per-pod proxy accepts inbound traffic on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPort {
    /// Target (container) port.
    pub port: u16,
    /// Protocol, from the services that target it (the first L7 one wins).
    pub protocol: AppProtocol,
    /// Services that send traffic to this port.
    pub services: Vec<ObjectKey>,
    /// Effective inbound mTLS mode.
    pub mtls: MtlsMode,
}

/// Everything one proxy is sent, before rendering.
#[derive(Debug, Clone)]
pub struct ProxyView {
    /// Who.
    pub proxy: ProxyId,
    /// Mesh generation.
    pub generation: u64,
    /// Trust domain.
    pub trust_domain: String,
    /// Shared part.
    pub scope: Arc<Scope>,
    /// The proxy's own workload (per-pod proxies), when the mesh knows it.
    pub workload: Option<Arc<Workload>>,
    /// Inbound ports of the proxy's workload.
    pub inbound: Vec<InboundPort>,
    /// Authorization policies that apply to the proxy's workload(s).
    pub policies: Vec<Arc<AuthorizationPolicy>>,
    /// Workloads on a node agent's node.
    pub node_workloads: Vec<Arc<Workload>>,
}

/// Builds views for one mesh generation, sharing scopes between proxies.
#[derive(Debug)]
pub struct Compiler {
    mesh: Arc<Mesh>,
    services: BTreeMap<ObjectKey, Arc<ServiceView>>,
    workloads: Mutex<Option<Arc<Vec<Arc<WorkloadView>>>>>,
    previous_workloads: HashMap<String, Arc<WorkloadView>>,
    scopes: Mutex<HashMap<ScopeKey, Arc<Scope>>>,
    backs: OnceLock<HashMap<String, Vec<Backing>>>,
    by_node: OnceLock<HashMap<String, Vec<Arc<Workload>>>>,
}

/// One service port a workload is an endpoint of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backing {
    service: ObjectKey,
    service_port: u16,
    target_port: u16,
}

/// Compiles one proxy's view (convenience for a single proxy; servers keep a [`Compiler`]).
pub fn compile(mesh: &Arc<Mesh>, proxy: &ProxyId) -> ProxyView {
    Compiler::new(mesh.clone()).compile(proxy)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Compiler {
    /// A compiler for `mesh`.
    pub fn new(mesh: Arc<Mesh>) -> Self {
        Self::with_previous(mesh, None)
    }

    /// A compiler for `mesh` that reuses unchanged views of `previous`.
    pub fn with_previous(mesh: Arc<Mesh>, previous: Option<&Compiler>) -> Self {
        let mut services = BTreeMap::new();
        for (key, svc) in &mesh.services {
            let view = service_view(&mesh, svc);
            let reused = previous
                .and_then(|p| p.services.get(key))
                .filter(|old| ***old == view)
                .cloned();
            services.insert(key.clone(), reused.unwrap_or_else(|| Arc::new(view)));
        }
        let previous_workloads = previous
            .and_then(|p| lock(&p.workloads).clone())
            .map(|list| {
                list.iter()
                    .map(|w| (w.workload.uid.clone(), w.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Compiler {
            mesh,
            services,
            workloads: Mutex::new(None),
            previous_workloads,
            scopes: Mutex::new(HashMap::new()),
            backs: OnceLock::new(),
            by_node: OnceLock::new(),
        }
    }

    /// Workloads by node name; built once.
    fn by_node(&self) -> &HashMap<String, Vec<Arc<Workload>>> {
        self.by_node.get_or_init(|| {
            let mut out: HashMap<String, Vec<Arc<Workload>>> = HashMap::new();
            for w in self.mesh.workloads.values() {
                if let Some(n) = &w.node {
                    out.entry(n.clone()).or_default().push(w.clone());
                }
            }
            out
        })
    }

    /// Workload uid -> the service ports it backs, from the resolved endpoints; built once.
    fn backs(&self) -> &HashMap<String, Vec<Backing>> {
        self.backs.get_or_init(|| {
            let mut out: HashMap<String, Vec<Backing>> = HashMap::new();
            for (key, eps) in &self.mesh.endpoints {
                for (port, list) in &eps.by_port {
                    for ep in list {
                        let b = Backing {
                            service: key.clone(),
                            service_port: *port,
                            target_port: ep.port,
                        };
                        let entry = out.entry(ep.workload.clone()).or_default();
                        if !entry.contains(&b) {
                            entry.push(b);
                        }
                    }
                }
            }
            out
        })
    }

    /// The mesh this compiler reads.
    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.mesh
    }

    /// Every service view of this generation.
    pub fn service_views(&self) -> impl Iterator<Item = &Arc<ServiceView>> {
        self.services.values()
    }

    /// The shared scope for `key`.
    pub fn scope(&self, key: &ScopeKey) -> Arc<Scope> {
        if let Some(s) = lock(&self.scopes).get(key) {
            return s.clone();
        }
        let scope = Arc::new(match key {
            ScopeKey::Namespace(ns) => Scope {
                key: key.clone(),
                generation: self.mesh.generation,
                services: self
                    .services
                    .values()
                    .filter(|v| v.service.visibility.visible_from(ns))
                    .cloned()
                    .collect(),
                workloads: Vec::new(),
            },
            ScopeKey::NodeAgents => Scope {
                key: key.clone(),
                generation: self.mesh.generation,
                services: self.services.values().cloned().collect(),
                workloads: self.workload_views().as_ref().clone(),
            },
        });
        lock(&self.scopes)
            .entry(key.clone())
            .or_insert(scope)
            .clone()
    }

    fn workload_views(&self) -> Arc<Vec<Arc<WorkloadView>>> {
        if let Some(w) = lock(&self.workloads).as_ref() {
            return w.clone();
        }
        let mesh = &self.mesh;
        let backs = self.backs();
        let list: Vec<Arc<WorkloadView>> = mesh
            .workloads
            .values()
            .map(|w| {
                let view = WorkloadView {
                    workload: w.clone(),
                    services: service_ports(mesh, backs.get(&w.uid)),
                    policies: mesh
                        .policies
                        .values()
                        .filter(|p| matches!(p.scope, PolicyScope::Selector(_)))
                        .filter(|p| mesh.policy_applies(&p.scope, &p.key.namespace, w))
                        .map(|p| p.key.to_string())
                        .collect(),
                };
                match self.previous_workloads.get(&w.uid) {
                    Some(old) if **old == view => old.clone(),
                    _ => Arc::new(view),
                }
            })
            .collect();
        let list = Arc::new(list);
        *lock(&self.workloads) = Some(list.clone());
        list
    }

    /// The view of one proxy.
    pub fn compile(&self, proxy: &ProxyId) -> ProxyView {
        let mesh = &self.mesh;
        match &proxy.role {
            ProxyRole::Pod { name, namespace } => {
                let workload = mesh
                    .workloads
                    .get(&format!("{namespace}/{name}"))
                    .or_else(|| mesh.workload_by_ip(proxy.ip))
                    .cloned();
                let (inbound, policies) = match &workload {
                    Some(w) => (
                        inbound_ports(mesh, w, self.backs().get(&w.uid)),
                        mesh.policies_for(w).cloned().collect(),
                    ),
                    None => (Vec::new(), Vec::new()),
                };
                ProxyView {
                    proxy: proxy.clone(),
                    generation: mesh.generation,
                    trust_domain: mesh.config.trust_domain.clone(),
                    scope: self.scope(&ScopeKey::Namespace(namespace.clone())),
                    workload,
                    inbound,
                    policies,
                    node_workloads: Vec::new(),
                }
            }
            ProxyRole::Node { name } => {
                let node_workloads: Vec<Arc<Workload>> =
                    self.by_node().get(name).cloned().unwrap_or_default();
                let mut policies: Vec<Arc<AuthorizationPolicy>> = mesh
                    .policies
                    .values()
                    .filter(|p| {
                        node_workloads
                            .iter()
                            .any(|w| mesh.policy_applies(&p.scope, &p.key.namespace, w))
                    })
                    .cloned()
                    .collect();
                policies.sort_by(|a, b| a.key.cmp(&b.key));
                ProxyView {
                    proxy: proxy.clone(),
                    generation: mesh.generation,
                    trust_domain: mesh.config.trust_domain.clone(),
                    scope: self.scope(&ScopeKey::NodeAgents),
                    workload: None,
                    inbound: Vec::new(),
                    policies,
                    node_workloads,
                }
            }
        }
    }
}

/// The scope key a proxy belongs to.
pub fn scope_key(proxy: &ProxyId) -> ScopeKey {
    match &proxy.role {
        ProxyRole::Pod { namespace, .. } => ScopeKey::Namespace(namespace.clone()),
        ProxyRole::Node { .. } => ScopeKey::NodeAgents,
    }
}

fn service_view(mesh: &Mesh, svc: &Arc<Service>) -> ServiceView {
    let eps = mesh.endpoints.get(&svc.key);
    let routes = mesh.routes.get(&svc.key);
    ServiceView {
        service: svc.clone(),
        ports: svc
            .ports
            .iter()
            .map(|p| PortView {
                port: p.clone(),
                endpoints: eps
                    .and_then(|e| e.by_port.get(&p.port))
                    .cloned()
                    .unwrap_or_default(),
                routes: routes
                    .map(|rs| {
                        rs.iter()
                            .filter(|r| r.port.is_none_or(|rp| rp == p.port))
                            .filter(|r| match r.kind {
                                crate::mesh::RouteKind::Http => p.protocol.is_http(),
                                crate::mesh::RouteKind::Grpc => p.protocol.is_http2(),
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

fn service_ports(mesh: &Mesh, backs: Option<&Vec<Backing>>) -> ServicePortMap {
    let mut out = ServicePortMap::new();
    for b in backs.into_iter().flatten() {
        let Some(svc) = mesh.services.get(&b.service) else {
            continue;
        };
        out.entry(format!("{}/{}", b.service.namespace, svc.hostname))
            .or_default()
            .push((b.service_port, b.target_port));
    }
    out
}

fn inbound_ports(mesh: &Mesh, w: &Workload, backs: Option<&Vec<Backing>>) -> Vec<InboundPort> {
    let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
    for b in backs.into_iter().flatten() {
        let Some(port) = mesh
            .services
            .get(&b.service)
            .and_then(|s| s.port(b.service_port))
        else {
            continue;
        };
        let entry = ports.entry(b.target_port).or_insert_with(|| InboundPort {
            port: b.target_port,
            protocol: port.protocol,
            services: Vec::new(),
            mtls: mesh.mtls_mode(w, Some(b.target_port)),
        });
        if !entry.protocol.is_http() && port.protocol.is_http() {
            entry.protocol = port.protocol;
        }
        if !entry.services.contains(&b.service) {
            entry.services.push(b.service.clone());
        }
    }
    ports.into_values().collect()
}

#[cfg(test)]
mod tests;
