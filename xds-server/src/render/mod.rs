//! Renderers: thin functions from compiled views to wire resources, one per resource family,
//! plus the caches that make a push cost proportional to what changed.
//!
//! * [`envoy`]: LDS/RDS/CDS/EDS for kinds `sidecar` and `envoy` (which differ only in how
//!   mesh endpoints are reached: [`envoy::MeshTransport`]).
//! * [`grpc`]: `api_listener` LDS and RDS for proxyless gRPC (kind `grpc`); shares CDS/EDS
//!   with [`envoy`].
//! * [`workload`]: Switchyard's workload API for `ztunnel` and `ebpf`.
//!
//! Caching: resources of one service are rendered once per [`ServiceView`] `Arc` (which the
//! compiler keeps across generations while the service is unchanged); scope-wide maps once
//! per generation and scope; the per-proxy layer once per proxy and only when its inputs
//! change.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use switchyard_model::view::{Compiler, ProxyView, ScopeKey, ServiceView, WorkloadView};
use switchyard_model::{Mesh, ProxyId, ProxyKind};
use switchyard_protos::TypeUrl;

use crate::snapshot::{Resource, ResourceMap, Snapshot, TypeSnapshot};

pub mod check;
pub mod envoy;
pub mod grpc;
pub mod rbac;
pub mod secret;
pub mod workload;

/// Settings renderers need that are not part of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// Upstream connect timeout of generated clusters.
    pub connect_timeout: Duration,
    /// Kubernetes cluster domain (for backend hostnames).
    pub cluster_domain: String,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            connect_timeout: Duration::from_secs(1),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// The resource family a proxy kind reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Envoy API with listeners that capture traffic (sidecar, envoy).
    EnvoyApi,
    /// Envoy API in the proxyless gRPC shape.
    Grpc,
    /// Switchyard workload API (ztunnel, ebpf).
    WorkloadApi,
}

impl Family {
    /// The family of a kind.
    pub fn of(kind: ProxyKind) -> Family {
        match kind {
            ProxyKind::Sidecar | ProxyKind::Envoy => Family::EnvoyApi,
            ProxyKind::Grpc => Family::Grpc,
            ProxyKind::Ztunnel | ProxyKind::Ebpf => Family::WorkloadApi,
        }
    }

    /// The types a proxy of this family may subscribe to.
    pub fn types(self) -> &'static [TypeUrl] {
        match self {
            Family::EnvoyApi | Family::Grpc => &[
                TypeUrl::Cluster,
                TypeUrl::ClusterLoadAssignment,
                TypeUrl::Listener,
                TypeUrl::RouteConfiguration,
            ],
            Family::WorkloadApi => &[TypeUrl::Service, TypeUrl::Workload, TypeUrl::Authorization],
        }
    }
}

/// Everything rendered from one service, per family, computed on first use.
#[derive(Debug, Default)]
pub struct ServiceResources {
    envoy: OnceLock<envoy::ServiceParts>,
    grpc: OnceLock<grpc::ServiceParts>,
    workload: OnceLock<Arc<Resource>>,
}

/// Entries keyed by the address of the view they were rendered from; the entry holds the
/// view so the address cannot be reused while cached.
type ByView<V, R> = Mutex<HashMap<usize, (Arc<V>, R)>>;

/// Per-type maps of one scope.
type TypeMaps = Arc<BTreeMap<TypeUrl, Arc<ResourceMap>>>;

/// Caches that live across generations.
#[derive(Debug, Default)]
pub struct RenderCache {
    services: ByView<ServiceView, Arc<ServiceResources>>,
    workloads: ByView<WorkloadView, Arc<Resource>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RenderCache {
    fn service(&self, view: &Arc<ServiceView>) -> Arc<ServiceResources> {
        let key = Arc::as_ptr(view) as usize;
        lock(&self.services)
            .entry(key)
            .or_insert_with(|| (view.clone(), Arc::new(ServiceResources::default())))
            .1
            .clone()
    }

    fn workload(&self, view: &Arc<WorkloadView>) -> Arc<Resource> {
        let key = Arc::as_ptr(view) as usize;
        if let Some((_, r)) = lock(&self.workloads).get(&key) {
            return r.clone();
        }
        let r = workload::workload(view);
        lock(&self.workloads).insert(key, (view.clone(), r.clone()));
        r
    }

    /// Drops entries of views the compiler no longer hands out.
    pub fn retain_current(&self, compiler: &Compiler) {
        let live_services: std::collections::HashSet<usize> = compiler
            .service_views()
            .map(|v| Arc::as_ptr(v) as usize)
            .collect();
        lock(&self.services).retain(|k, _| live_services.contains(k));
        let workloads = compiler.scope(&ScopeKey::NodeAgents);
        let live: std::collections::HashSet<usize> = workloads
            .workloads
            .iter()
            .map(|v| Arc::as_ptr(v) as usize)
            .collect();
        lock(&self.workloads).retain(|k, _| live.contains(k));
    }

    /// Number of cached service renderings (for tests and metrics).
    pub fn service_entries(&self) -> usize {
        lock(&self.services).len()
    }
}

/// The per-proxy layer and the inputs it was rendered from.
#[derive(Debug, Default)]
pub struct ProxyRenderState {
    own: Option<(OwnKey, Arc<OwnLayers>)>,
}

#[derive(Debug, PartialEq)]
struct OwnKey {
    listen: IpAddr,
    inbound: Vec<switchyard_model::view::InboundPort>,
    policies: Vec<usize>,
}

#[derive(Debug, Default)]
struct OwnLayers {
    types: BTreeMap<TypeUrl, Arc<ResourceMap>>,
}

/// One generation: the compiled mesh plus scope-level renderings, shared by every proxy.
#[derive(Debug)]
pub struct Generation {
    compiler: Compiler,
    changed_at: Instant,
    cache: Arc<RenderCache>,
    options: Arc<RenderOptions>,
    scopes: Mutex<HashMap<(ScopeKey, Family, envoy::MeshTransport), TypeMaps>>,
    listeners: Mutex<HashMap<(ScopeKey, IpAddr), Arc<ResourceMap>>>,
    /// SDS secrets every proxy is sent (`ROOTCA`).
    secrets: OnceLock<Arc<ResourceMap>>,
}

impl Generation {
    /// A generation for `mesh`, reusing what `previous` compiled where unchanged.
    pub fn new(
        mesh: Arc<Mesh>,
        previous: Option<&Generation>,
        cache: Arc<RenderCache>,
        options: Arc<RenderOptions>,
        changed_at: Instant,
    ) -> Self {
        let compiler = Compiler::with_previous(mesh, previous.map(|p| &p.compiler));
        Generation {
            compiler,
            changed_at,
            cache,
            options,
            scopes: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            secrets: OnceLock::new(),
        }
    }

    /// The mesh.
    pub fn mesh(&self) -> &Arc<Mesh> {
        self.compiler.mesh()
    }

    /// The compiler.
    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    /// When the change behind this generation was seen.
    pub fn changed_at(&self) -> Instant {
        self.changed_at
    }

    /// The visible services of a view with their (cached) renderings.
    fn service_resources(
        &self,
        view: &ProxyView,
    ) -> Vec<(Arc<ServiceView>, Arc<ServiceResources>)> {
        view.scope
            .services
            .iter()
            .map(|v| (v.clone(), self.cache.service(v)))
            .collect()
    }

    fn scope_maps(&self, view: &ProxyView, family: Family) -> TypeMaps {
        let transport = envoy::MeshTransport::of(view.proxy.kind);
        let key = (view.scope.key.clone(), family, transport);
        if let Some(s) = lock(&self.scopes).get(&key) {
            return s.clone();
        }
        let services = self.service_resources(view);
        let opts = &self.options;
        let maps = match family {
            Family::EnvoyApi => envoy::scope_maps(&view.scope, &services, opts, transport),
            Family::Grpc => grpc::scope_maps(&services, opts),
            Family::WorkloadApi => {
                let svc = ResourceMap::new(services.iter().map(|(v, r)| {
                    r.workload
                        .get_or_init(|| workload::service(&v.service))
                        .clone()
                }));
                let wl =
                    ResourceMap::new(view.scope.workloads.iter().map(|w| self.cache.workload(w)));
                BTreeMap::from([
                    (TypeUrl::Service, Arc::new(svc)),
                    (TypeUrl::Workload, Arc::new(wl)),
                ])
            }
        };
        let maps = Arc::new(maps);
        lock(&self.scopes).entry(key).or_insert(maps).clone()
    }

    fn outbound_listener(&self, view: &ProxyView, listen: IpAddr) -> Arc<ResourceMap> {
        let key = (view.scope.key.clone(), listen);
        if let Some(l) = lock(&self.listeners).get(&key) {
            return l.clone();
        }
        let services = self.service_resources(view);
        let map = Arc::new(ResourceMap::new([envoy::outbound_listener(
            &services,
            listen,
            &self.options,
        )]));
        lock(&self.listeners).entry(key).or_insert(map).clone()
    }

    /// The snapshot of one proxy. `state` keeps the proxy's own layer between generations.
    pub fn snapshot(&self, proxy: &ProxyId, state: &mut ProxyRenderState) -> Snapshot {
        let view = self.compiler.compile(proxy);
        let family = Family::of(proxy.kind);
        let scope = self.scope_maps(&view, family);
        let listen = proxy
            .listen_address
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let own_key = OwnKey {
            listen,
            inbound: view.inbound.clone(),
            policies: view
                .policies
                .iter()
                .map(|p| Arc::as_ptr(p) as usize)
                .collect(),
        };
        let own = match &state.own {
            Some((k, layers)) if *k == own_key => layers.clone(),
            _ => {
                let types = match family {
                    Family::EnvoyApi => envoy::own_maps(
                        &view,
                        listen,
                        &self.options,
                        envoy::MeshTransport::of(proxy.kind),
                    ),
                    Family::Grpc => BTreeMap::new(),
                    Family::WorkloadApi => BTreeMap::from([(
                        TypeUrl::Authorization,
                        Arc::new(ResourceMap::new(
                            view.policies.iter().map(|p| workload::authorization(p)),
                        )),
                    )]),
                };
                let layers = Arc::new(OwnLayers { types });
                state.own = Some((own_key, layers.clone()));
                layers
            }
        };
        let mut types = Vec::new();
        for &t in family.types() {
            let mut layers = Vec::new();
            if family == Family::EnvoyApi && t == TypeUrl::Listener {
                layers.push(self.outbound_listener(&view, listen));
            }
            if let Some(m) = scope.get(&t) {
                layers.push(m.clone());
            }
            if let Some(m) = own.types.get(&t) {
                layers.push(m.clone());
            }
            types.push((t, TypeSnapshot::new(layers)));
        }
        let secrets = self
            .secrets
            .get_or_init(|| {
                Arc::new(ResourceMap::new(secret::root_ca(
                    &self.mesh().config.trust_bundle,
                )))
            })
            .clone();
        types.push((TypeUrl::Secret, TypeSnapshot::new(vec![secrets])));
        Snapshot::new(self.mesh().generation, self.changed_at, types)
    }
}

/// `outbound|<port>||<hostname>`: the cluster (and EDS) name of a service port.
pub fn cluster_name(hostname: &str, port: u16) -> String {
    format!("outbound|{port}||{hostname}")
}

/// `<name>.<namespace>.svc.<domain>`.
pub fn hostname(key: &switchyard_model::ObjectKey, domain: &str) -> String {
    format!("{}.{}.svc.{domain}", key.name, key.namespace)
}

pub(crate) fn duration(d: Duration) -> switchyard_protos::wkt::Duration {
    switchyard_protos::wkt::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests;
