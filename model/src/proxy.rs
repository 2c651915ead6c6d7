//! Who is asking: proxy kinds and the `node.id` format of CONTRACTS.md.
//!
//! `<kind>~<pod-ip>~<pod>.<namespace>~<namespace>.svc.<domain>` for per-pod proxies and
//! proxyless clients, `<kind>~<node-ip>~<node-name>~switchyard-system` for node agents.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The kind of dataplane behind an xDS stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyKind {
    /// Switchyard's micro-sidecar (Envoy API).
    Sidecar,
    /// Stock Envoy as a sidecar or waypoint (Envoy API).
    Envoy,
    /// Per-node ztunnel (workload API).
    Ztunnel,
    /// Per-node eBPF agent (workload API).
    Ebpf,
    /// A proxyless gRPC library (Envoy API, `api_listener` shape).
    Grpc,
}

impl ProxyKind {
    /// Every kind.
    pub const ALL: [ProxyKind; 5] = [
        ProxyKind::Sidecar,
        ProxyKind::Envoy,
        ProxyKind::Ztunnel,
        ProxyKind::Ebpf,
        ProxyKind::Grpc,
    ];

    /// The kind as written in node ids and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Envoy => "envoy",
            ProxyKind::Ztunnel => "ztunnel",
            ProxyKind::Ebpf => "ebpf",
            ProxyKind::Grpc => "grpc",
        }
    }

    /// Node agents serve every mesh pod of a node and read the workload API.
    pub const fn is_node_agent(self) -> bool {
        matches!(self, ProxyKind::Ztunnel | ProxyKind::Ebpf)
    }
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyKind {
    type Err = ProxyIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProxyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ProxyIdError::Kind(s.to_string()))
    }
}

/// What a proxy stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProxyRole {
    /// A proxy for one pod (sidecar, Envoy, proxyless gRPC).
    Pod {
        /// Pod name.
        name: String,
        /// Pod namespace.
        namespace: String,
    },
    /// A node agent.
    Node {
        /// Kubernetes node name.
        name: String,
    },
}

/// Optional facts a proxy sends in `node.metadata` (CONTRACTS.md). Values here complete the
/// node id; they never contradict it (a contradiction is a [`ProxyIdError`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyMetadata {
    /// `NAMESPACE`.
    pub namespace: Option<String>,
    /// `POD_NAME`.
    pub pod_name: Option<String>,
    /// `NODE_NAME`.
    pub node_name: Option<String>,
    /// `SERVICE_ACCOUNT`.
    pub service_account: Option<String>,
    /// `CLUSTER_ID`.
    pub cluster_id: Option<String>,
    /// `LISTEN_ADDRESS`: the address the proxy binds its capture listeners to (default
    /// `0.0.0.0`). Lets several proxies share one network namespace, as in tests on loopback.
    pub listen_address: Option<IpAddr>,
}

impl ProxyMetadata {
    /// Reads the contract's `node.metadata` fields through `field` (which returns a field's
    /// non-empty string value); fails only on a `LISTEN_ADDRESS` that is not an IP address.
    pub fn from_fields(field: impl Fn(&str) -> Option<String>) -> Result<Self, ProxyIdError> {
        let listen_address = match field("LISTEN_ADDRESS") {
            Some(v) => Some(v.parse().map_err(|_| ProxyIdError::MetadataIp {
                field: "LISTEN_ADDRESS",
                value: v.clone(),
            })?),
            None => None,
        };
        Ok(ProxyMetadata {
            namespace: field("NAMESPACE"),
            pod_name: field("POD_NAME"),
            node_name: field("NODE_NAME"),
            service_account: field("SERVICE_ACCOUNT"),
            cluster_id: field("CLUSTER_ID"),
            listen_address,
        })
    }
}

/// A parsed proxy identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyId {
    /// The raw `node.id`.
    pub node_id: String,
    /// Dataplane kind.
    pub kind: ProxyKind,
    /// Pod IP (per-pod proxies) or node IP (node agents).
    pub ip: IpAddr,
    /// Pod or node.
    pub role: ProxyRole,
    /// Service account from metadata, if sent.
    pub service_account: Option<String>,
    /// Cluster id from metadata, if sent.
    pub cluster_id: Option<String>,
    /// Node name of a per-pod proxy, from metadata, if sent.
    pub node_name: Option<String>,
    /// Listener bind address override.
    pub listen_address: Option<IpAddr>,
}

/// Why a node id is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyIdError {
    /// Empty node id.
    #[error("node.id is empty: every first request must carry a node with an id")]
    Empty,
    /// Not four `~`-separated fields.
    #[error("node.id {0:?} must have four '~'-separated fields: <kind>~<ip>~<name>~<domain>")]
    Shape(String),
    /// Unknown kind.
    #[error("unknown proxy kind {0:?}: expected one of sidecar, envoy, ztunnel, ebpf, grpc")]
    Kind(String),
    /// IP field does not parse.
    #[error("node.id ip field {0:?} is not an IP address")]
    Ip(String),
    /// Per-pod proxy name is not `<pod>.<namespace>`.
    #[error("node.id name field {0:?} must be <pod>.<namespace> for a per-pod proxy")]
    PodName(String),
    /// Metadata disagrees with the id.
    #[error("node.metadata {field}={value:?} contradicts node.id {node_id:?}")]
    Contradiction {
        /// Metadata field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The id.
        node_id: String,
    },
    /// A metadata value that must be an address is not one.
    #[error("node.metadata {field}={value:?} is not an IP address")]
    MetadataIp {
        /// Metadata field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

impl ProxyId {
    /// Parses `node.id` and completes it with `node.metadata`.
    pub fn parse(node_id: &str, metadata: ProxyMetadata) -> Result<Self, ProxyIdError> {
        if node_id.is_empty() {
            return Err(ProxyIdError::Empty);
        }
        let fields: Vec<&str> = node_id.split('~').collect();
        let [kind, ip, name, _domain] = fields.as_slice() else {
            return Err(ProxyIdError::Shape(node_id.to_string()));
        };
        let kind: ProxyKind = kind.parse()?;
        let ip: IpAddr = ip.parse().map_err(|_| ProxyIdError::Ip(ip.to_string()))?;
        let contradiction = |field, value: &str| ProxyIdError::Contradiction {
            field,
            value: value.to_string(),
            node_id: node_id.to_string(),
        };
        let role = if kind.is_node_agent() {
            if let Some(n) = &metadata.node_name
                && n != name
            {
                return Err(contradiction("NODE_NAME", n));
            }
            ProxyRole::Node {
                name: name.to_string(),
            }
        } else {
            let (pod, ns) = name
                .split_once('.')
                .filter(|(p, n)| !p.is_empty() && !n.is_empty() && !n.contains('.'))
                .ok_or_else(|| ProxyIdError::PodName(name.to_string()))?;
            if let Some(n) = &metadata.namespace
                && n != ns
            {
                return Err(contradiction("NAMESPACE", n));
            }
            if let Some(p) = &metadata.pod_name
                && p != pod
            {
                return Err(contradiction("POD_NAME", p));
            }
            ProxyRole::Pod {
                name: pod.to_string(),
                namespace: ns.to_string(),
            }
        };
        Ok(ProxyId {
            node_id: node_id.to_string(),
            kind,
            ip,
            role,
            service_account: metadata.service_account,
            cluster_id: metadata.cluster_id,
            node_name: metadata.node_name,
            listen_address: metadata.listen_address,
        })
    }

    /// The pod namespace of a per-pod proxy.
    pub fn namespace(&self) -> Option<&str> {
        match &self.role {
            ProxyRole::Pod { namespace, .. } => Some(namespace),
            ProxyRole::Node { .. } => None,
        }
    }

    /// The node this proxy runs on: the node agent's own name, or a per-pod proxy's
    /// `NODE_NAME` metadata.
    pub fn node(&self) -> Option<&str> {
        match &self.role {
            ProxyRole::Node { name } => Some(name),
            ProxyRole::Pod { .. } => self.node_name.as_deref(),
        }
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pod_and_node_ids() {
        let p = ProxyId::parse(
            "sidecar~10.244.1.5~echo-1.default~default.svc.cluster.local",
            ProxyMetadata::default(),
        )
        .unwrap();
        assert_eq!(p.kind, ProxyKind::Sidecar);
        assert_eq!(p.namespace(), Some("default"));
        assert_eq!(
            p.role,
            ProxyRole::Pod {
                name: "echo-1".into(),
                namespace: "default".into()
            }
        );

        let n = ProxyId::parse(
            "ztunnel~10.255.0.2~node-1~switchyard-system",
            ProxyMetadata::default(),
        )
        .unwrap();
        assert_eq!(n.node(), Some("node-1"));
        assert!(n.kind.is_node_agent());
    }

    #[test]
    fn rejects_bad_ids_with_reasons() {
        let md = ProxyMetadata::default;
        assert_eq!(ProxyId::parse("", md()), Err(ProxyIdError::Empty));
        assert!(matches!(
            ProxyId::parse("sidecar~1.2.3.4~x", md()),
            Err(ProxyIdError::Shape(_))
        ));
        assert!(matches!(
            ProxyId::parse("istio~1.2.3.4~a.b~b.svc", md()),
            Err(ProxyIdError::Kind(_))
        ));
        assert!(matches!(
            ProxyId::parse("envoy~nope~a.b~b.svc", md()),
            Err(ProxyIdError::Ip(_))
        ));
        assert!(matches!(
            ProxyId::parse("envoy~1.2.3.4~nodot~b.svc", md()),
            Err(ProxyIdError::PodName(_))
        ));
        let contra = ProxyMetadata {
            namespace: Some("other".into()),
            ..Default::default()
        };
        assert!(matches!(
            ProxyId::parse("envoy~1.2.3.4~a.b~b.svc", contra),
            Err(ProxyIdError::Contradiction {
                field: "NAMESPACE",
                ..
            })
        ));
    }
}
