//! Kubernetes manifests -> model inputs.
//!
//! This module owns the reduction of one manifest document (YAML text or an already parsed
//! `serde_json::Value`) into [`K8sObject`]s: it dispatches on `apiVersion`/`kind`, reads core
//! objects through k8s-openapi types, Gateway API routes through [`super::gateway`] and
//! Switchyard's CRDs through [`super::crd`], and reports what is wrong as a
//! [`ManifestError`] naming the field (`spec.ports[0].port`) and, for YAML text, the line.
//! It does not read files or decide what a set of documents means together (duplicates are
//! the caller's business); [`collect_objects`] only assembles a set and orders its routes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchyard_model::input::{
    AuthorizationPolicyInput, EndpointSliceInput, NamespaceInput, NodeInput,
    PeerAuthenticationInput, PodInput, RouteInput, ServiceInput, SliceEndpoint, SlicePort,
};
use switchyard_model::{
    AppProtocol, ConnectionLimits, DATAPLANE_MODE_LABEL, DataplaneMode, EXPORT_TO_ANNOTATION,
    Locality, MAX_CONNECTIONS_ANNOTATION, MAX_PENDING_REQUESTS_ANNOTATION, MAX_REQUESTS_ANNOTATION,
    MAX_RETRIES_ANNOTATION, ObjectKey, REGION_LABEL, RouteKind, ServicePort, TargetPort,
    Visibility, ZONE_LABEL,
};

use super::ClusterObjects;
use super::crd::{AuthorizationPolicy, PeerAuthentication};
use super::gateway::{GrpcRoute, HttpRoute};

mod document;
mod error;
#[cfg(test)]
mod tests;

use document::Doc;
use error::{Bad, bad};
pub use error::{FieldError, FieldPath, Location, ManifestError, PathSegment};

/// EndpointSlice label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The kinds [`parse_yaml_document`] and [`parse_value`] understand, for error messages.
pub const SUPPORTED_KINDS: &str = "v1 Namespace, v1 Node, v1 ServiceAccount, v1 Service, \
     v1 Pod, v1 List, discovery.k8s.io/v1 EndpointSlice, gateway.networking.k8s.io/v1 HTTPRoute \
     (also v1beta1), gateway.networking.k8s.io/v1 GRPCRoute, switchyard.io/v1alpha1 \
     AuthorizationPolicy, switchyard.io/v1alpha1 PeerAuthentication";

const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";
const SWITCHYARD_V1ALPHA1: &str = "switchyard.io/v1alpha1";

// ---------------------------------------------------------------------------------------------
// Parsed objects

/// One object of a manifest, reduced to a model input.
#[derive(Debug, Clone, PartialEq)]
pub enum K8sObject {
    /// `v1 Namespace`.
    Namespace(NamespaceInput),
    /// `v1 Node`.
    Node(NodeInput),
    /// `v1 ServiceAccount`.
    ServiceAccount(ObjectKey),
    /// `v1 Service`.
    Service(ServiceInput),
    /// `v1 Pod`.
    Pod(PodInput),
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice(EndpointSliceInput),
    /// `HTTPRoute` or `GRPCRoute`; `order` is set by [`collect_objects`].
    Route {
        /// The route.
        route: RouteInput,
        /// `metadata.creationTimestamp`, which decides precedence between routes.
        created: Option<Time>,
    },
    /// `switchyard.io/v1alpha1 AuthorizationPolicy`.
    AuthorizationPolicy(AuthorizationPolicyInput),
    /// `switchyard.io/v1alpha1 PeerAuthentication`.
    PeerAuthentication(PeerAuthenticationInput),
}

impl K8sObject {
    /// The Kubernetes kind.
    pub fn kind(&self) -> &'static str {
        match self {
            K8sObject::Namespace(_) => "Namespace",
            K8sObject::Node(_) => "Node",
            K8sObject::ServiceAccount(_) => "ServiceAccount",
            K8sObject::Service(_) => "Service",
            K8sObject::Pod(_) => "Pod",
            K8sObject::EndpointSlice(_) => "EndpointSlice",
            K8sObject::Route { route, .. } => match route.kind {
                RouteKind::Http => "HTTPRoute",
                RouteKind::Grpc => "GRPCRoute",
            },
            K8sObject::AuthorizationPolicy(_) => "AuthorizationPolicy",
            K8sObject::PeerAuthentication(_) => "PeerAuthentication",
        }
    }

    /// The namespace (`None` for cluster-scoped kinds).
    pub fn namespace(&self) -> Option<&str> {
        self.key().map(|k| k.namespace.as_str())
    }

    /// The name.
    pub fn name(&self) -> &str {
        match self {
            K8sObject::Namespace(n) => &n.name,
            K8sObject::Node(n) => &n.name,
            other => other.key().map(|k| k.name.as_str()).unwrap_or_default(),
        }
    }

    fn key(&self) -> Option<&ObjectKey> {
        match self {
            K8sObject::Namespace(_) | K8sObject::Node(_) => None,
            K8sObject::ServiceAccount(k) => Some(k),
            K8sObject::Service(s) => Some(&s.key),
            K8sObject::Pod(p) => Some(&p.key),
            K8sObject::EndpointSlice(s) => Some(&s.key),
            K8sObject::Route { route, .. } => Some(&route.key),
            K8sObject::AuthorizationPolicy(p) => Some(&p.key),
            K8sObject::PeerAuthentication(p) => Some(&p.key),
        }
    }

    /// `<Kind> <namespace>/<name>` (`<Kind> <name>` for cluster-scoped kinds): what makes two
    /// objects the same object.
    pub fn id(&self) -> String {
        object_id(self.kind(), self.namespace(), self.name())
    }
}

fn object_id(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// An object and where it sits in its document.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedObject {
    /// The object.
    pub object: K8sObject,
    /// Its path in the document: the root, or `items[3]` inside a `List`.
    pub path: FieldPath,
    /// Where its `metadata.name` is, for YAML text.
    pub location: Option<Location>,
}

/// Assembles objects (in document order) into [`ClusterObjects`], numbering routes for
/// precedence: routes with a `creationTimestamp` come first, oldest first, then routes without
/// one (objects not created yet), each group in document order.
pub fn collect_objects(objects: impl IntoIterator<Item = K8sObject>) -> ClusterObjects {
    let mut out = ClusterObjects::default();
    let mut routes = Vec::new();
    for object in objects {
        match object {
            K8sObject::Namespace(x) => out.namespaces.push(x),
            K8sObject::Node(x) => out.nodes.push(x),
            K8sObject::ServiceAccount(x) => out.service_accounts.push(x),
            K8sObject::Service(x) => out.services.push(x),
            K8sObject::Pod(x) => out.pods.push(x),
            K8sObject::EndpointSlice(x) => out.endpoint_slices.push(x),
            K8sObject::Route { route, created } => routes.push((route, created)),
            K8sObject::AuthorizationPolicy(x) => out.authorization_policies.push(x),
            K8sObject::PeerAuthentication(x) => out.peer_authentications.push(x),
        }
    }
    let mut rank: Vec<usize> = (0..routes.len()).collect();
    rank.sort_by(|&a, &b| {
        let key = |i: usize| (routes[i].1.is_none(), routes[i].1.clone(), i);
        key(a).cmp(&key(b))
    });
    for (order, i) in rank.into_iter().enumerate() {
        routes[i].0.order = order as u64;
    }
    out.routes = routes.into_iter().map(|(r, _)| r).collect();
    out
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Parses one YAML document (the text between two `---` lines) into objects.
///
/// `line_offset` is the number of file lines before `text`, so that locations count in the
/// file. An empty document gives no objects; a `v1 List` gives one object per item. Every
/// problem of the document is returned (one per `List` item at most).
pub fn parse_yaml_document(
    text: &str,
    line_offset: usize,
) -> Result<Vec<ParsedObject>, Vec<ManifestError>> {
    let doc = Doc::Yaml { text, line_offset };
    let value: serde_json::Value = doc.read().map_err(|e| {
        vec![ManifestError::Yaml {
            message: e.message,
            location: e.location,
        }]
    })?;
    parse_doc(&doc, &value)
}

/// Parses one document that is already a value (from the API server, or from a YAML
/// document read elsewhere). Errors carry no location.
pub fn parse_value(value: &serde_json::Value) -> Result<Vec<ParsedObject>, Vec<ManifestError>> {
    parse_doc(&Doc::Value(value), value)
}

fn parse_doc(
    doc: &Doc<'_>,
    value: &serde_json::Value,
) -> Result<Vec<ParsedObject>, Vec<ManifestError>> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let (api_version, kind) = type_meta(doc, value).map_err(|e| vec![e])?;
    if api_version == "v1" && kind == "List" {
        return parse_list(doc, value);
    }
    let object = parse_object(doc, value, &api_version, &kind).map_err(|e| vec![e])?;
    Ok(vec![ParsedObject {
        object,
        path: FieldPath::root(),
        location: doc.locate_nearest(&FieldPath::at("metadata.name")),
    }])
}

fn parse_list(
    doc: &Doc<'_>,
    value: &serde_json::Value,
) -> Result<Vec<ParsedObject>, Vec<ManifestError>> {
    let items_field = FieldPath::at("items");
    let items = match value.get("items") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items,
        Some(other) => {
            return Err(vec![ManifestError::Invalid {
                object: None,
                field: items_field.clone(),
                message: format!("expected a list of objects, found {}", json_type(other)),
                location: doc.locate_nearest(&items_field),
            }]);
        }
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = items_field.clone().index(i);
        match parse_doc(&Doc::Value(item), item) {
            Ok(parsed) => objects.extend(parsed.into_iter().map(|o| {
                let path = prefix.join(&o.path);
                ParsedObject {
                    location: doc.locate_nearest(&path.join(&FieldPath::at("metadata.name"))),
                    object: o.object,
                    path,
                }
            })),
            Err(errs) => errors.extend(errs.into_iter().map(|e| e.nested(&prefix, doc))),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

fn type_meta(doc: &Doc<'_>, value: &serde_json::Value) -> Result<(String, String), ManifestError> {
    let serde_json::Value::Object(map) = value else {
        return Err(ManifestError::NotAnObject {
            found: json_type(value),
            field: FieldPath::root(),
            location: doc.locate_nearest(&FieldPath::root()),
        });
    };
    let string = |name: &str| -> Result<String, ManifestError> {
        let field = FieldPath::root().key(name);
        let message = match map.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => return Ok(s.clone()),
            None | Some(serde_json::Value::Null) => format!("missing field `{name}`"),
            Some(serde_json::Value::String(_)) => "must not be empty".to_string(),
            Some(other) => format!("expected a string, found {}", json_type(other)),
        };
        Err(ManifestError::Invalid {
            object: None,
            location: doc.locate_nearest(&field),
            field,
            message,
        })
    };
    Ok((string("apiVersion")?, string("kind")?))
}

/// Whether objects of this kind live in a namespace.
fn namespaced(kind: &str) -> bool {
    !matches!(kind, "Namespace" | "Node")
}

fn parse_object(
    doc: &Doc<'_>,
    value: &serde_json::Value,
    api_version: &str,
    kind: &str,
) -> Result<K8sObject, ManifestError> {
    let read: fn(&Doc<'_>, &serde_json::Value) -> Result<K8sObject, Bad> = match (api_version, kind)
    {
        ("v1", "Namespace") => read_namespace,
        ("v1", "Node") => read_node,
        ("v1", "ServiceAccount") => read_service_account,
        ("v1", "Service") => read_service,
        ("v1", "Pod") => read_pod,
        ("discovery.k8s.io/v1", "EndpointSlice") => read_endpoint_slice,
        (GATEWAY_V1 | GATEWAY_V1BETA1, "HTTPRoute") => read_http_route,
        (GATEWAY_V1, "GRPCRoute") => read_grpc_route,
        (SWITCHYARD_V1ALPHA1, "AuthorizationPolicy") => read_authorization_policy,
        (SWITCHYARD_V1ALPHA1, "PeerAuthentication") => read_peer_authentication,
        _ => {
            let field = FieldPath::at("kind");
            return Err(ManifestError::UnknownKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                location: doc.locate_nearest(&field),
                field,
            });
        }
    };

    // Name the object in errors as early as possible, from the untyped value.
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str());
    let object = name.filter(|n| !n.is_empty()).map(|name| {
        let ns = namespaced(kind).then(|| {
            meta.and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
        });
        object_id(kind, ns, name)
    });

    read(doc, value).map_err(|b| ManifestError::Invalid {
        object,
        location: b.location.or_else(|| doc.locate_nearest(&b.field)),
        field: b.field,
        message: b.message,
    })
}

// ---------------------------------------------------------------------------------------------
// Shared field readers

fn required_name(meta: &ObjectMeta) -> Result<String, Bad> {
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(bad(
            FieldPath::at("metadata.name"),
            "missing field `name`: every object needs a name",
        )),
    }
}

fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_string()
}

/// Namespace and name of a namespaced object (namespace `default` when unset).
fn object_key(meta: &ObjectMeta) -> Result<ObjectKey, Bad> {
    Ok(ObjectKey::new(namespace_of(meta), required_name(meta)?))
}

fn label_field(label: &str) -> FieldPath {
    FieldPath::at("metadata.labels").key(label)
}

fn mode_label(labels: Option<&BTreeMap<String, String>>) -> Result<Option<DataplaneMode>, Bad> {
    labels
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
        .map(|v| {
            v.parse::<DataplaneMode>()
                .map_err(|e| bad(label_field(DATAPLANE_MODE_LABEL), e.to_string()))
        })
        .transpose()
}

fn parse_ip(s: &str, field: FieldPath) -> Result<IpAddr, Bad> {
    s.trim()
        .parse()
        .map_err(|_| bad(field, format!("invalid ip address {s:?}")))
}

/// k8s-openapi fills a missing required scalar with its default (`port: 0`); this tells
/// "missing" from "zero" by looking at the document itself.
fn require(value: &serde_json::Value, field: &FieldPath) -> Result<(), Bad> {
    let mut v = Some(value);
    for segment in field.segments() {
        v = match segment {
            PathSegment::Key(k) => v.and_then(|v| v.get(k.as_str())),
            PathSegment::Index(i) => v.and_then(|v| v.get(*i)),
        };
    }
    match v {
        Some(v) if !v.is_null() => Ok(()),
        _ => {
            let name = match field.segments().last() {
                Some(PathSegment::Key(k)) => k.as_str(),
                _ => "value",
            };
            Err(bad(field.clone(), format!("missing field `{name}`")))
        }
    }
}

/// A port number in 1..=65535.
pub(crate) fn port_number(n: i64, field: FieldPath) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(field, format!("port {n} is out of range 1-65535")))
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

// ---------------------------------------------------------------------------------------------
// Kinds

fn read_namespace(doc: &Doc<'_>, _value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let ns: corev1::Namespace = doc.read()?;
    Ok(K8sObject::Namespace(NamespaceInput {
        name: required_name(&ns.metadata)?,
        mode: mode_label(ns.metadata.labels.as_ref())?,
    }))
}

fn read_node(doc: &Doc<'_>, value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let node: corev1::Node = doc.read()?;
    let name = required_name(&node.metadata)?;
    let mut address = None;
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if a.type_ == "InternalIP" {
            let field = FieldPath::at("status.addresses").index(i).key("address");
            require(value, &field)?;
            address = Some(parse_ip(&a.address, field)?);
            break;
        }
    }
    let labels = node.metadata.labels.unwrap_or_default();
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Ok(K8sObject::Node(NodeInput {
        name,
        address,
        locality: Locality {
            region: label(REGION_LABEL),
            zone: label(ZONE_LABEL),
            subzone: String::new(),
        },
    }))
}

fn read_service_account(doc: &Doc<'_>, _value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let sa: corev1::ServiceAccount = doc.read()?;
    Ok(K8sObject::ServiceAccount(object_key(&sa.metadata)?))
}

fn read_service(doc: &Doc<'_>, value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let svc: corev1::Service = doc.read()?;
    let key = object_key(&svc.metadata)?;
    let spec = svc.spec.unwrap_or_default();

    // `clusterIPs` is authoritative when set; `clusterIP` is its first element. "None" marks a
    // headless service, "" one whose address is not allocated yet: both have no VIP.
    let candidates: Vec<(&String, FieldPath)> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (ip, FieldPath::at("spec.clusterIPs").index(i)))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|ip| (ip, FieldPath::at("spec.clusterIP")))
            .collect(),
    };
    let mut cluster_ips = Vec::new();
    for (ip, field) in candidates {
        if !ip.is_empty() && ip != "None" {
            cluster_ips.push(parse_ip(ip, field)?);
        }
    }

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        // The mesh carries TCP only; UDP and SCTP ports keep their plain Kubernetes path.
        if !is_tcp(p.protocol.as_deref()) {
            continue;
        }
        let field = FieldPath::at("spec.ports").index(i);
        require(value, &field.clone().key("port"))?;
        let port = port_number(i64::from(p.port), field.clone().key("port"))?;
        let target = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(port_number(i64::from(*n), field.clone().key("targetPort"))?)
            }
            Some(IntOrString::String(s)) if s.is_empty() => {
                return Err(bad(field.key("targetPort"), "must not be empty"));
            }
            Some(IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => TargetPort::Number(port_number(n, field.clone().key("targetPort"))?),
                Err(_) => TargetPort::Named(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            target,
            protocol: AppProtocol::infer(p.app_protocol.as_deref(), p.name.as_deref()),
        });
    }

    let visibility = export_to(svc.metadata.annotations.as_ref(), &key.namespace)?;
    let limits = connection_limits(svc.metadata.annotations.as_ref())?;
    Ok(K8sObject::Service(ServiceInput {
        key,
        cluster_ips,
        ports,
        // An empty selector selects nothing in Kubernetes (no endpoints are managed).
        selector: spec.selector.filter(|s| !s.is_empty()),
        visibility,
        limits,
    }))
}

/// Reads the circuit-breaker annotations (`switchyard.io/max-connections`,
/// `-pending-requests`, `-requests`, `-retries`): each a whole number of at least 1, except
/// `max-pending-requests` and `max-retries`, which may be 0 (no queueing, no retries).
fn connection_limits(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<ConnectionLimits, Bad> {
    let read = |name: &str, min: u32| -> Result<Option<u32>, Bad> {
        let Some(value) = annotations.and_then(|a| a.get(name)) else {
            return Ok(None);
        };
        match value.trim().parse::<u32>() {
            Ok(n) if n >= min => Ok(Some(n)),
            _ => Err(bad(
                FieldPath::at("metadata.annotations").key(name),
                format!(
                    "invalid value {value:?}: expected a whole number from {min} to 4294967295"
                ),
            )),
        }
    };
    Ok(ConnectionLimits {
        max_connections: read(MAX_CONNECTIONS_ANNOTATION, 1)?,
        max_pending_requests: read(MAX_PENDING_REQUESTS_ANNOTATION, 0)?,
        max_requests: read(MAX_REQUESTS_ANNOTATION, 1)?,
        max_retries: read(MAX_RETRIES_ANNOTATION, 0)?,
    })
}

/// Reads the `switchyard.io/export-to` annotation: `*` (everyone, the default), `.` (own
/// namespace) or a comma-separated list of namespaces (`.` allowed in it).
fn export_to(
    annotations: Option<&BTreeMap<String, String>>,
    own_namespace: &str,
) -> Result<Visibility, Bad> {
    let Some(value) = annotations.and_then(|a| a.get(EXPORT_TO_ANNOTATION)) else {
        return Ok(Visibility::All);
    };
    let mut namespaces = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry {
            "*" => return Ok(Visibility::All),
            "." => namespaces.push(own_namespace.to_string()),
            ns => namespaces.push(ns.to_string()),
        }
    }
    if namespaces.is_empty() {
        return Err(bad(
            FieldPath::at("metadata.annotations").key(EXPORT_TO_ANNOTATION),
            format!(
                "invalid value {value:?}: expected *, . or a comma-separated list of namespaces"
            ),
        ));
    }
    namespaces.sort();
    namespaces.dedup();
    Ok(Visibility::Namespaces(namespaces))
}

fn read_pod(doc: &Doc<'_>, value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let pod: corev1::Pod = doc.read()?;
    let key = object_key(&pod.metadata)?;
    let mode = mode_label(pod.metadata.labels.as_ref())?;
    let status = pod.status.as_ref();

    // `podIPs` is authoritative when set; `podIP` is its first element.
    let mut ips = Vec::new();
    match status
        .and_then(|s| s.pod_ips.as_ref())
        .filter(|v| !v.is_empty())
    {
        Some(pod_ips) => {
            for (i, ip) in pod_ips.iter().enumerate() {
                let field = FieldPath::at("status.podIPs").index(i).key("ip");
                require(value, &field)?;
                let ip = parse_ip(&ip.ip, field)?;
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        None => {
            if let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .filter(|s| !s.is_empty())
            {
                ips.push(parse_ip(ip, FieldPath::at("status.podIP"))?);
            }
        }
    }

    let spec = pod.spec.unwrap_or_default();
    let mut named_ports = BTreeMap::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            if !is_tcp(p.protocol.as_deref()) {
                continue;
            }
            let field = FieldPath::at("spec.containers")
                .index(ci)
                .key("ports")
                .index(pi)
                .key("containerPort");
            require(value, &field)?;
            let port = port_number(i64::from(p.container_port), field)?;
            named_ports.entry(name.to_string()).or_insert(port);
        }
    }

    // A pod without status (a hand-written manifest) or without a Ready condition counts as
    // ready: only an explicit `Ready: False` takes it out of load balancing.
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");

    Ok(K8sObject::Pod(PodInput {
        key,
        ips,
        node: spec.node_name.filter(|n| !n.is_empty()),
        service_account: spec
            .service_account_name
            .or(spec.service_account)
            .filter(|n| !n.is_empty()),
        labels: pod.metadata.labels.unwrap_or_default(),
        mode,
        named_ports,
        ready,
    }))
}

fn read_endpoint_slice(doc: &Doc<'_>, value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let slice: discovery::EndpointSlice = doc.read()?;
    let key = object_key(&slice.metadata)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .cloned()
        .ok_or_else(|| {
            bad(
                label_field(SERVICE_NAME_LABEL),
                "missing label: it names the service the slice belongs to",
            )
        })?;
    require(value, &FieldPath::at("addressType"))?;
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Err(bad(
            FieldPath::at("addressType"),
            format!(
                "unsupported address type {:?}: expected IPv4 or IPv6",
                slice.address_type
            ),
        ));
    }

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports", which a mesh cannot route by.
        let Some(port) = p.port else { continue };
        if !is_tcp(p.protocol.as_deref()) {
            continue;
        }
        ports.push(SlicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: port_number(i64::from(port), FieldPath::at("ports").index(i).key("port"))?,
        });
    }

    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().flatten().enumerate() {
        let field = FieldPath::at("endpoints").index(i);
        require(value, &field.clone().key("addresses"))?;
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            addresses.push(parse_ip(a, field.clone().key("addresses").index(j))?);
        }
        endpoints.push(SliceEndpoint {
            addresses,
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            node: e.node_name.clone(),
            zone: e.zone.clone(),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone()),
        });
    }

    Ok(K8sObject::EndpointSlice(EndpointSliceInput {
        key,
        service,
        ports,
        endpoints,
    }))
}

fn read_http_route(doc: &Doc<'_>, _value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let route: HttpRoute = doc.read()?;
    let key = object_key(&route.metadata)?;
    Ok(K8sObject::Route {
        route: route.to_input(key, 0)?,
        created: route.metadata.creation_timestamp.clone(),
    })
}

fn read_grpc_route(doc: &Doc<'_>, _value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let route: GrpcRoute = doc.read()?;
    let key = object_key(&route.metadata)?;
    Ok(K8sObject::Route {
        route: route.to_input(key, 0)?,
        created: route.metadata.creation_timestamp.clone(),
    })
}

fn read_authorization_policy(doc: &Doc<'_>, _value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let policy: AuthorizationPolicy = doc.read()?;
    let key = object_key(&policy.metadata)?;
    Ok(K8sObject::AuthorizationPolicy(policy.to_input(key)?))
}

fn read_peer_authentication(doc: &Doc<'_>, _value: &serde_json::Value) -> Result<K8sObject, Bad> {
    let pa: PeerAuthentication = doc.read()?;
    let key = object_key(&pa.metadata)?;
    Ok(K8sObject::PeerAuthentication(pa.to_input(key)?))
}
