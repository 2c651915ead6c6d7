//! [`MeshBuilder`]: inputs -> [`Mesh`], resolving modes, identities, endpoints and routes.

use crate::ModeSource;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::identity::SpiffeId;
use crate::input::{
    AuthorizationPolicyInput, EndpointSliceInput, NamespaceInput, NodeInput,
    PeerAuthenticationInput, PodInput, RouteInput, ServiceInput,
};
use crate::mesh::{
    AuthorizationPolicy, Backend, BuildWarning, DataplaneMode, Endpoint, Locality, Mesh,
    MeshConfig, Namespace, Node, ObjectKey, PeerAuthentication, PolicyScope, Route, RouteRule,
    Service, ServiceEndpoints, TargetPort, Workload, WorkloadKind, labels_match,
};

/// Why a set of inputs does not make a mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Two objects of one kind with the same name.
    #[error("duplicate {kind} {key}: each object may be defined once")]
    Duplicate {
        /// Object kind.
        kind: &'static str,
        /// `<namespace>/<name>` or `<name>`.
        key: String,
    },
}

/// Collects inputs and builds a [`Mesh`].
#[derive(Debug, Default)]
pub struct MeshBuilder {
    config: MeshConfig,
    namespaces: BTreeMap<String, NamespaceInput>,
    nodes: BTreeMap<String, NodeInput>,
    services: BTreeMap<ObjectKey, ServiceInput>,
    pods: BTreeMap<ObjectKey, PodInput>,
    slices: BTreeMap<ObjectKey, EndpointSliceInput>,
    routes: BTreeMap<(u8, ObjectKey), RouteInput>,
    policies: BTreeMap<ObjectKey, AuthorizationPolicyInput>,
    peer_authentications: BTreeMap<ObjectKey, PeerAuthenticationInput>,
    service_accounts: BTreeMap<ObjectKey, ()>,
    duplicate: Option<BuildError>,
}

fn insert<K: Ord + ToString, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    kind: &'static str,
    dup: &mut Option<BuildError>,
) {
    if map.contains_key(&key) {
        if dup.is_none() {
            *dup = Some(BuildError::Duplicate {
                kind,
                key: key.to_string(),
            });
        }
        return;
    }
    map.insert(key, value);
}

impl MeshBuilder {
    /// A builder with mesh-wide settings.
    pub fn new(config: MeshConfig) -> Self {
        MeshBuilder {
            config,
            ..Default::default()
        }
    }

    /// Adds a namespace.
    pub fn namespace(&mut self, ns: NamespaceInput) -> &mut Self {
        insert(
            &mut self.namespaces,
            ns.name.clone(),
            ns,
            "Namespace",
            &mut self.duplicate,
        );
        self
    }

    /// Adds a node.
    pub fn node(&mut self, node: NodeInput) -> &mut Self {
        insert(
            &mut self.nodes,
            node.name.clone(),
            node,
            "Node",
            &mut self.duplicate,
        );
        self
    }

    /// Adds a service.
    pub fn service(&mut self, svc: ServiceInput) -> &mut Self {
        insert(
            &mut self.services,
            svc.key.clone(),
            svc,
            "Service",
            &mut self.duplicate,
        );
        self
    }

    /// Adds a pod.
    pub fn pod(&mut self, pod: PodInput) -> &mut Self {
        insert(
            &mut self.pods,
            pod.key.clone(),
            pod,
            "Pod",
            &mut self.duplicate,
        );
        self
    }

    /// Adds an endpoint slice.
    pub fn endpoint_slice(&mut self, slice: EndpointSliceInput) -> &mut Self {
        insert(
            &mut self.slices,
            slice.key.clone(),
            slice,
            "EndpointSlice",
            &mut self.duplicate,
        );
        self
    }

    /// Adds an HTTPRoute or GRPCRoute.
    pub fn route(&mut self, route: RouteInput) -> &mut Self {
        let (kind_id, kind) = match route.kind {
            crate::mesh::RouteKind::Http => (0, "HTTPRoute"),
            crate::mesh::RouteKind::Grpc => (1, "GRPCRoute"),
        };
        match self.routes.entry((kind_id, route.key.clone())) {
            std::collections::btree_map::Entry::Occupied(_) => {
                self.duplicate.get_or_insert(BuildError::Duplicate {
                    kind,
                    key: route.key.to_string(),
                });
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(route);
            }
        }
        self
    }

    /// Adds an authorization policy.
    pub fn authorization_policy(&mut self, p: AuthorizationPolicyInput) -> &mut Self {
        insert(
            &mut self.policies,
            p.key.clone(),
            p,
            "AuthorizationPolicy",
            &mut self.duplicate,
        );
        self
    }

    /// Adds a peer authentication.
    pub fn peer_authentication(&mut self, p: PeerAuthenticationInput) -> &mut Self {
        insert(
            &mut self.peer_authentications,
            p.key.clone(),
            p,
            "PeerAuthentication",
            &mut self.duplicate,
        );
        self
    }

    /// Adds a service account.
    pub fn service_account(&mut self, key: ObjectKey) -> &mut Self {
        insert(
            &mut self.service_accounts,
            key,
            (),
            "ServiceAccount",
            &mut self.duplicate,
        );
        self
    }

    fn scope(&self, namespace: &str, selector: &Option<BTreeMap<String, String>>) -> PolicyScope {
        match selector {
            Some(s) if !s.is_empty() => PolicyScope::Selector(s.clone()),
            _ if namespace == self.config.root_namespace => PolicyScope::Global,
            _ => PolicyScope::Namespace,
        }
    }

    /// Builds the mesh at `generation`.
    pub fn build(self, generation: u64) -> Result<Mesh, BuildError> {
        if let Some(e) = self.duplicate.clone() {
            return Err(e);
        }
        let mut mesh = Mesh::empty(self.config.clone());
        mesh.generation = generation;
        let mut warnings = Vec::new();

        for (name, ns) in &self.namespaces {
            mesh.namespaces.insert(
                name.clone(),
                Namespace {
                    name: name.clone(),
                    mode_label: ns.mode,
                    mode: ns.mode.unwrap_or(self.config.default_mode),
                },
            );
        }
        for (name, n) in &self.nodes {
            mesh.nodes.insert(
                name.clone(),
                Node {
                    name: name.clone(),
                    address: n.address,
                    locality: n.locality.clone(),
                },
            );
        }
        mesh.service_accounts = self.service_accounts.clone();

        self.build_workloads(&mut mesh, &mut warnings);

        for (key, s) in &self.services {
            let svc = Service {
                key: key.clone(),
                hostname: format!(
                    "{}.{}.svc.{}",
                    key.name, key.namespace, self.config.cluster_domain
                ),
                vips: s.cluster_ips.clone(),
                ports: s.ports.clone(),
                selector: s.selector.clone(),
                visibility: s.visibility.clone(),
                limits: s.limits,
            };
            mesh.service_by_host
                .insert(svc.hostname.clone(), key.clone());
            mesh.services.insert(key.clone(), Arc::new(svc));
        }

        let endpoints = self.build_endpoints(&mut mesh, &mut warnings);
        mesh.endpoints = endpoints;
        self.build_routes(&mut mesh, &mut warnings);

        for (key, p) in &self.policies {
            mesh.policies.insert(
                key.clone(),
                Arc::new(AuthorizationPolicy {
                    key: key.clone(),
                    scope: self.scope(&key.namespace, &p.selector),
                    action: p.action,
                    rules: p.rules.clone(),
                }),
            );
        }
        for (key, p) in &self.peer_authentications {
            mesh.peer_authentications.insert(
                key.clone(),
                Arc::new(PeerAuthentication {
                    key: key.clone(),
                    scope: self.scope(&key.namespace, &p.selector),
                    mode: p.mode,
                    port_modes: p.port_modes.clone(),
                }),
            );
        }
        mesh.warnings = warnings;
        Ok(mesh)
    }

    fn build_workloads(&self, mesh: &mut Mesh, warnings: &mut Vec<BuildWarning>) {
        for (key, pod) in &self.pods {
            let (mode, mode_source) = DataplaneMode::resolve(
                pod.mode,
                mesh.namespaces
                    .get(&key.namespace)
                    .and_then(|n| n.mode_label),
                self.config.default_mode,
            );
            let sa = pod
                .service_account
                .clone()
                .unwrap_or_else(|| "default".to_string());
            let node = pod.node.as_ref().and_then(|n| mesh.nodes.get(n));
            let w = Workload {
                uid: key.to_string(),
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                kind: WorkloadKind::Pod,
                ips: pod.ips.clone(),
                node: pod.node.clone(),
                identity: mode
                    .in_mesh()
                    .then(|| SpiffeId::new(&self.config.trust_domain, &key.namespace, &sa)),
                service_account: sa,
                labels: pod.labels.clone(),
                mode,
                mode_source,
                named_ports: pod.named_ports.clone(),
                ready: pod.ready,
                locality: node.map(|n| n.locality.clone()).unwrap_or_default(),
                node_address: node.and_then(|n| n.address),
            };
            for ip in &w.ips {
                if let Some(other) = mesh.workload_by_ip.insert(*ip, w.uid.clone()) {
                    warnings.push(BuildWarning {
                        object: format!("Pod {}", w.uid),
                        message: format!("address {ip} is also used by {other}"),
                    });
                }
            }
            mesh.workloads.insert(w.uid.clone(), Arc::new(w));
        }
    }

    fn build_endpoints(
        &self,
        mesh: &mut Mesh,
        warnings: &mut Vec<BuildWarning>,
    ) -> BTreeMap<ObjectKey, Arc<ServiceEndpoints>> {
        let mut slices_by_service: HashMap<ObjectKey, Vec<&EndpointSliceInput>> = HashMap::new();
        for slice in self.slices.values() {
            let svc = ObjectKey::new(&slice.key.namespace, &slice.service);
            if !mesh.services.contains_key(&svc) {
                warnings.push(BuildWarning {
                    object: format!("EndpointSlice {}", slice.key),
                    message: format!("service {svc} does not exist; the slice is ignored"),
                });
                continue;
            }
            slices_by_service.entry(svc).or_default().push(slice);
        }

        // Pods indexed by namespace and by (namespace, label, value), so selecting endpoints
        // costs the size of the answer, not services x pods.
        let pods: Vec<Arc<Workload>> = mesh
            .workloads
            .values()
            .filter(|w| w.kind == WorkloadKind::Pod)
            .cloned()
            .collect();
        let mut by_namespace: HashMap<&str, Vec<Arc<Workload>>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str, &str), Vec<Arc<Workload>>> = HashMap::new();
        for w in &pods {
            by_namespace
                .entry(w.namespace.as_str())
                .or_default()
                .push(w.clone());
            for (k, v) in &w.labels {
                by_label
                    .entry((w.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(w.clone());
            }
        }
        let mut out = BTreeMap::new();
        let services: Vec<Arc<Service>> = mesh.services.values().cloned().collect();
        for svc in services {
            let mut eps = ServiceEndpoints::default();
            if let Some(slices) = slices_by_service.get(&svc.key) {
                for slice in slices {
                    self.endpoints_from_slice(mesh, &svc, slice, &mut eps);
                }
            } else if let Some(selector) = &svc.selector {
                // Candidates: pods of the namespace carrying the selector's first label (or
                // every pod of the namespace for an empty selector); then the full match.
                let candidates: &[Arc<Workload>] = match selector.iter().next() {
                    Some((k, v)) => by_label
                        .get(&(svc.key.namespace.as_str(), k.as_str(), v.as_str()))
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                    None => by_namespace
                        .get(svc.key.namespace.as_str())
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                };
                for w in candidates {
                    if w.ips.is_empty() || !labels_match(selector, &w.labels) {
                        continue;
                    }
                    for sp in &svc.ports {
                        let port = match &sp.target {
                            TargetPort::Number(n) => Some(*n),
                            TargetPort::Named(name) => w.named_ports.get(name).copied(),
                        };
                        let Some(port) = port else { continue };
                        eps.by_port
                            .entry(sp.port)
                            .or_default()
                            .push(endpoint(w, w.ips[0], port));
                    }
                }
            }
            for list in eps.by_port.values_mut() {
                list.sort_by_key(|e| (e.ip, e.port));
                list.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
            }
            out.insert(svc.key.clone(), Arc::new(eps));
        }
        out
    }

    fn endpoints_from_slice(
        &self,
        mesh: &mut Mesh,
        svc: &Service,
        slice: &EndpointSliceInput,
        eps: &mut ServiceEndpoints,
    ) {
        for sp in &slice.ports {
            let service_port = svc
                .ports
                .iter()
                .find(|p| p.name == sp.name)
                .or_else(|| (svc.ports.len() == 1).then(|| &svc.ports[0]));
            let Some(service_port) = service_port else {
                continue;
            };
            for e in &slice.endpoints {
                for ip in &e.addresses {
                    let by_pod = e
                        .pod
                        .as_ref()
                        .map(|p| format!("{}/{}", slice.key.namespace, p))
                        .filter(|uid| mesh.workloads.contains_key(uid));
                    let uid = by_pod.or_else(|| mesh.workload_by_ip.get(ip).cloned());
                    let w = match uid.and_then(|u| mesh.workloads.get(&u).cloned()) {
                        Some(w) => w,
                        None => self.endpoint_workload(mesh, &slice.key.namespace, *ip, e),
                    };
                    let mut ep = endpoint(&w, *ip, sp.port);
                    ep.healthy = e.ready && w.ready;
                    eps.by_port.entry(service_port.port).or_default().push(ep);
                }
            }
        }
    }

    fn endpoint_workload(
        &self,
        mesh: &mut Mesh,
        namespace: &str,
        ip: IpAddr,
        e: &crate::input::SliceEndpoint,
    ) -> Arc<Workload> {
        let uid = format!("{namespace}/endpoint/{ip}");
        if let Some(w) = mesh.workloads.get(&uid) {
            return w.clone();
        }
        let node = e.node.as_ref().and_then(|n| mesh.nodes.get(n));
        let mut locality = node.map(|n| n.locality.clone()).unwrap_or_default();
        if let Some(zone) = &e.zone {
            locality = Locality {
                zone: zone.clone(),
                ..locality
            };
        }
        let w = Arc::new(Workload {
            uid: uid.clone(),
            name: ip.to_string(),
            namespace: namespace.to_string(),
            kind: WorkloadKind::Endpoint,
            ips: vec![ip],
            node: e.node.clone(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            mode: DataplaneMode::None,
            mode_source: ModeSource::Default,
            identity: None,
            named_ports: BTreeMap::new(),
            ready: e.ready,
            locality,
            node_address: node.and_then(|n| n.address),
        });
        mesh.workload_by_ip.insert(ip, uid.clone());
        mesh.workloads.insert(uid, w.clone());
        w
    }

    fn build_routes(&self, mesh: &mut Mesh, warnings: &mut Vec<BuildWarning>) {
        let mut routes: Vec<&RouteInput> = self.routes.values().collect();
        routes.sort_by(|a, b| (a.order, &a.key).cmp(&(b.order, &b.key)));
        for r in routes {
            let kind_name = match r.kind {
                crate::mesh::RouteKind::Http => "HTTPRoute",
                crate::mesh::RouteKind::Grpc => "GRPCRoute",
            };
            let rules: Vec<RouteRule> = r
                .rules
                .iter()
                .map(|rule| RouteRule {
                    matches: rule.matches.clone(),
                    backends: rule
                        .backends
                        .iter()
                        .map(|b| {
                            let key = ObjectKey::new(
                                b.namespace
                                    .clone()
                                    .unwrap_or_else(|| r.key.namespace.clone()),
                                &b.name,
                            );
                            if !mesh.services.contains_key(&key) {
                                warnings.push(BuildWarning {
                                    object: format!("{kind_name} {}", r.key),
                                    message: format!(
                                        "backend service {key} does not exist; its share of \
                                         requests fails with 503"
                                    ),
                                });
                            }
                            Backend {
                                service: key,
                                port: b.port,
                                weight: b.weight,
                            }
                        })
                        .collect(),
                    timeout: rule.timeout,
                    retry: rule.retry.clone(),
                })
                .collect();
            for parent in &r.parents {
                let key = ObjectKey::new(
                    parent
                        .namespace
                        .clone()
                        .unwrap_or_else(|| r.key.namespace.clone()),
                    &parent.name,
                );
                let Some(svc) = mesh.services.get(&key) else {
                    warnings.push(BuildWarning {
                        object: format!("{kind_name} {}", r.key),
                        message: format!("parent service {key} does not exist; not attached"),
                    });
                    continue;
                };
                if let Some(p) = parent.port
                    && svc.port(p).is_none()
                {
                    warnings.push(BuildWarning {
                        object: format!("{kind_name} {}", r.key),
                        message: format!("parent service {key} has no port {p}; not attached"),
                    });
                    continue;
                }
                mesh.routes
                    .entry(key.clone())
                    .or_default()
                    .push(Arc::new(Route {
                        key: r.key.clone(),
                        kind: r.kind,
                        parent: key,
                        port: parent.port,
                        rules: rules.clone(),
                        order: r.order,
                    }));
            }
        }
    }
}

fn endpoint(w: &Workload, ip: IpAddr, port: u16) -> Endpoint {
    Endpoint {
        workload: w.uid.clone(),
        ip,
        port,
        healthy: w.ready,
        locality: w.locality.clone(),
        mode: w.mode,
        identity: w.identity.clone(),
    }
}

#[cfg(test)]
mod tests;
