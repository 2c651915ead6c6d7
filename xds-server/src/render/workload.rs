//! Workload API renderer (kinds `ztunnel`, `ebpf`): one resource per workload, service and
//! policy, so an endpoint change costs one `Workload` resource.

use std::net::IpAddr;
use std::sync::Arc;

use switchyard_model::view::WorkloadView;
use switchyard_model::{
    AuthorizationPolicy, DataplaneMode, PolicyAction, PolicyOperation, PolicyScope, Service,
};
use switchyard_protos::TypeUrl;
use switchyard_protos::switchyard::workload::v1 as pb;

use crate::snapshot::Resource;

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn mode(m: DataplaneMode) -> pb::DataplaneMode {
    match m {
        DataplaneMode::Ztunnel => pb::DataplaneMode::Ztunnel,
        DataplaneMode::Ebpf => pb::DataplaneMode::Ebpf,
        DataplaneMode::Sidecar => pb::DataplaneMode::Sidecar,
        DataplaneMode::None => pb::DataplaneMode::None,
    }
}

/// The resource name of a service: `<namespace>/<hostname>`.
pub fn service_name(svc: &Service) -> String {
    format!("{}/{}", svc.key.namespace, svc.hostname)
}

/// A `Workload` resource.
pub fn workload(view: &WorkloadView) -> Arc<Resource> {
    let w = &view.workload;
    let msg = pb::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.ips.iter().map(ip_bytes).collect(),
        node: w.node.clone().unwrap_or_default(),
        service_account: w.service_account.clone(),
        identity: w
            .identity
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default(),
        dataplane_mode: mode(w.mode) as i32,
        tunnel_protocol: if w.mode.in_mesh() {
            pb::TunnelProtocol::Hbone
        } else {
            pb::TunnelProtocol::None
        } as i32,
        services: view
            .services
            .iter()
            .map(|(name, ports)| {
                (
                    name.clone(),
                    pb::ServicePorts {
                        ports: ports
                            .iter()
                            .map(|(s, t)| pb::PortMapping {
                                service_port: (*s).into(),
                                target_port: (*t).into(),
                            })
                            .collect(),
                    },
                )
            })
            .collect(),
        authorization_policies: view.policies.clone(),
        healthy: w.ready,
        locality: Some(pb::Locality {
            region: w.locality.region.clone(),
            zone: w.locality.zone.clone(),
            subzone: w.locality.subzone.clone(),
        }),
        node_address: w.node_address.as_ref().map(ip_bytes).unwrap_or_default(),
    };
    Resource::new(TypeUrl::Workload, w.uid.as_str(), &msg)
}

/// A `Service` resource.
pub fn service(svc: &Service) -> Arc<Resource> {
    let name = service_name(svc);
    let msg = pb::Service {
        name: svc.key.name.clone(),
        namespace: svc.key.namespace.clone(),
        hostname: svc.hostname.clone(),
        addresses: svc.vips.iter().map(ip_bytes).collect(),
        ports: svc
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                service_port: p.port.into(),
                target_port: match &p.target {
                    switchyard_model::TargetPort::Number(n) => (*n).into(),
                    switchyard_model::TargetPort::Named(_) => 0,
                },
                app_protocol: p.protocol.as_str().to_string(),
                name: p.name.clone().unwrap_or_default(),
            })
            .collect(),
    };
    Resource::new(TypeUrl::Service, name.as_str(), &msg)
}

fn block(b: &ipnet::IpNet) -> pb::IpBlock {
    pb::IpBlock {
        address: ip_bytes(&b.network()),
        prefix_len: b.prefix_len().into(),
    }
}

/// An `Authorization` resource.
pub fn authorization(p: &AuthorizationPolicy) -> Arc<Resource> {
    let name = p.key.to_string();
    let msg = pb::Authorization {
        name: p.key.name.clone(),
        namespace: p.key.namespace.clone(),
        scope: match p.scope {
            PolicyScope::Global => pb::Scope::Global,
            PolicyScope::Namespace => pb::Scope::Namespace,
            PolicyScope::Selector(_) => pb::Scope::WorkloadSelector,
        } as i32,
        action: match p.action {
            PolicyAction::Allow => pb::Action::Allow,
            PolicyAction::Deny => pb::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|r| {
                // A rule matches when any source matches and any destination matches: the
                // cross product of the two lists, each pair one `Match`.
                let froms = if r.from.is_empty() {
                    vec![Default::default()]
                } else {
                    r.from.clone()
                };
                // Node dataplanes see connections, not requests: a destination with paths or
                // methods is dropped from an ALLOW rule (it allows less) and checked on its
                // ports alone in a DENY rule (it refuses more).
                let tos: Vec<PolicyOperation> = if r.to.is_empty() {
                    vec![Default::default()]
                } else {
                    r.to.iter()
                        .filter(|t| !(t.is_l7() && p.action == PolicyAction::Allow))
                        .cloned()
                        .collect()
                };
                let mut matches = Vec::new();
                for f in &froms {
                    for t in &tos {
                        matches.push(pb::Match {
                            principals: f.principals.clone(),
                            not_principals: f.not_principals.clone(),
                            namespaces: f.namespaces.clone(),
                            not_namespaces: f.not_namespaces.clone(),
                            source_ips: f.ip_blocks.iter().map(block).collect(),
                            not_source_ips: f.not_ip_blocks.iter().map(block).collect(),
                            destination_ports: t.ports.iter().map(|p| u32::from(*p)).collect(),
                            not_destination_ports: t
                                .not_ports
                                .iter()
                                .map(|p| u32::from(*p))
                                .collect(),
                        });
                    }
                }
                pb::Rule { matches }
            })
            // A rule whose every destination was dropped matches nothing.
            .filter(|r| !r.matches.is_empty())
            .collect(),
    };
    Resource::new(TypeUrl::Authorization, name.as_str(), &msg)
}
