//! The xDS node the sidecar presents: `sidecar~<pod-ip>~<pod>.<ns>~<ns>.svc.<domain>` with
//! the CONTRACTS.md metadata, checked with the same parser the control plane uses
//! ([`ProxyId::parse`]) so that a node the server would refuse is caught before connecting.

use std::collections::BTreeMap;
use std::net::IpAddr;

use switchyard_dataplane_runtime::ads_client::ads_node;
use switchyard_model::proxy::ProxyMetadata;
use switchyard_model::{ProxyId, ProxyIdError, ProxyKind};
use switchyard_protos::envoy::envoy::config::core::v3::Node;

/// The pod a sidecar serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarNode {
    /// Pod IP.
    pub pod_ip: IpAddr,
    /// Pod name.
    pub pod_name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod service account.
    pub service_account: String,
    /// Kubernetes node, if known.
    pub node_name: Option<String>,
    /// Cluster id, if set.
    pub cluster_id: Option<String>,
    /// Address the capture listeners bind to, when not the pod's wildcard (several proxies
    /// in one network namespace, as in tests).
    pub listen_address: Option<IpAddr>,
    /// Kubernetes cluster domain.
    pub cluster_domain: String,
}

impl SidecarNode {
    /// A node for `pod` in `namespace` at `pod_ip`, running as `service_account`.
    pub fn new(
        pod_ip: IpAddr,
        pod: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        SidecarNode {
            pod_ip,
            pod_name: pod.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            node_name: None,
            cluster_id: None,
            listen_address: None,
            cluster_domain: "cluster.local".into(),
        }
    }

    /// `node.id`.
    pub fn node_id(&self) -> String {
        format!(
            "{}~{}~{}.{}~{}.svc.{}",
            ProxyKind::Sidecar,
            self.pod_ip,
            self.pod_name,
            self.namespace,
            self.namespace,
            self.cluster_domain
        )
    }

    /// `node.metadata` fields.
    pub fn metadata(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::from([
            ("DATAPLANE_KIND", ProxyKind::Sidecar.to_string()),
            ("NAMESPACE", self.namespace.clone()),
            ("POD_NAME", self.pod_name.clone()),
            ("SERVICE_ACCOUNT", self.service_account.clone()),
        ]);
        if let Some(n) = &self.node_name {
            m.insert("NODE_NAME", n.clone());
        }
        if let Some(c) = &self.cluster_id {
            m.insert("CLUSTER_ID", c.clone());
        }
        if let Some(a) = self.listen_address {
            m.insert("LISTEN_ADDRESS", a.to_string());
        }
        m
    }

    /// The `Node` for the ADS stream, after checking that the control plane will accept it.
    pub fn to_node(&self) -> Result<Node, ProxyIdError> {
        let id = self.node_id();
        let metadata = self.metadata();
        let md =
            ProxyMetadata::from_fields(|k| metadata.get(k).filter(|v| !v.is_empty()).cloned())?;
        ProxyId::parse(&id, md)?;
        Ok(ads_node(
            id,
            "switchyard-sidecar",
            env!("CARGO_PKG_VERSION"),
            metadata.into_iter().map(|(k, v)| (k.to_string(), v)),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use switchyard_protos::wkt;

    #[test]
    fn node_follows_the_contract() {
        let mut n = SidecarNode::new("10.244.1.5".parse().unwrap(), "web-0", "shop", "web");
        n.listen_address = Some("127.0.0.7".parse().unwrap());
        let node = n.to_node().unwrap();
        assert_eq!(
            node.id,
            "sidecar~10.244.1.5~web-0.shop~shop.svc.cluster.local"
        );
        let md = node.metadata.unwrap().fields;
        let s = |k: &str| match &md[k].kind {
            Some(wkt::value::Kind::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(s("DATAPLANE_KIND"), "sidecar");
        assert_eq!(s("NAMESPACE"), "shop");
        assert_eq!(s("POD_NAME"), "web-0");
        assert_eq!(s("SERVICE_ACCOUNT"), "web");
        assert_eq!(s("LISTEN_ADDRESS"), "127.0.0.7");
        assert!(!md.contains_key("NODE_NAME"));
    }

    #[test]
    fn a_node_the_server_would_refuse_is_an_error() {
        let n = SidecarNode::new("10.0.0.1".parse().unwrap(), "a.b", "ns", "sa");
        assert!(matches!(n.to_node(), Err(ProxyIdError::PodName(_))));
    }
}
