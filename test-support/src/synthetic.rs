//! Synthetic meshes for benchmarks: `services` services spread over `namespaces` namespaces,
//! each with an HTTP and a gRPC port and `endpoints` pods spread over `nodes` nodes, as model
//! inputs (for in-process benchmarks) or as manifests (for whole-system load tests).

use std::net::{IpAddr, Ipv4Addr};

use switchyard_model::input::{NamespaceInput, NodeInput, PodInput, ServiceInput};
use switchyard_model::{
    AppProtocol, DataplaneMode, Locality, MeshBuilder, MeshConfig, ServicePort, TargetPort,
};

/// Shape of a synthetic mesh.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Services.
    pub services: usize,
    /// Pods per service.
    pub endpoints: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Nodes.
    pub nodes: usize,
}

impl Shape {
    /// Service `i`'s namespace.
    pub fn namespace_of(&self, i: usize) -> String {
        format!("ns-{}", i % self.namespaces.max(1))
    }

    /// Pod address of endpoint `j` of service `i` (10.64-127.x.y for the shape's own pods,
    /// 10.128-191.x.y for pods added beyond it; unique up to 4M pods).
    pub fn pod_ip(&self, i: usize, j: usize) -> Ipv4Addr {
        if j >= self.endpoints {
            let n = (i * 256 + (j - self.endpoints) + 1) as u32;
            return Ipv4Addr::new(10, 128 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
        }
        let n = (i * self.endpoints + j + 1) as u32;
        Ipv4Addr::new(10, 64 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
    }

    /// Service VIP.
    pub fn vip(&self, i: usize) -> Ipv4Addr {
        let n = (i + 1) as u32;
        Ipv4Addr::new(10, 96 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
    }

    /// Node of endpoint `j` of service `i`.
    pub fn node_of(&self, i: usize, j: usize) -> String {
        format!("node-{}", (i * self.endpoints + j) % self.nodes.max(1))
    }

    /// Model inputs.
    pub fn builder(&self) -> MeshBuilder {
        let mut b = MeshBuilder::new(MeshConfig::default());
        for n in 0..self.namespaces.max(1) {
            b.namespace(NamespaceInput {
                name: format!("ns-{n}"),
                mode: Some(if n % 2 == 0 {
                    DataplaneMode::Ztunnel
                } else {
                    DataplaneMode::Sidecar
                }),
            });
        }
        for n in 0..self.nodes.max(1) {
            b.node(NodeInput {
                name: format!("node-{n}"),
                address: Some(IpAddr::V4(Ipv4Addr::new(10, 255, (n >> 8) as u8, n as u8))),
                locality: Locality {
                    region: "local".into(),
                    zone: format!("zone-{}", n % 3),
                    subzone: String::new(),
                },
            });
        }
        for i in 0..self.services {
            let ns = self.namespace_of(i);
            let name = format!("svc-{i}");
            let mut s = ServiceInput::new(&ns, &name, IpAddr::V4(self.vip(i)));
            s.ports = vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 8080,
                    target: TargetPort::Number(18080),
                    protocol: AppProtocol::Http,
                },
                ServicePort {
                    name: Some("grpc".into()),
                    port: 9090,
                    target: TargetPort::Number(19090),
                    protocol: AppProtocol::Grpc,
                },
            ];
            b.service(s);
            for j in 0..self.endpoints {
                b.pod(
                    PodInput::new(&ns, &format!("{name}-{j}"), IpAddr::V4(self.pod_ip(i, j)))
                        .label("app", &name)
                        .on_node(&self.node_of(i, j)),
                );
            }
        }
        b
    }

    /// The same mesh as manifests: one file per service (service + its pods), plus one for
    /// namespaces and nodes.
    pub fn manifests(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        let mut base = String::new();
        for n in 0..self.namespaces.max(1) {
            base.push_str(&crate::manifests::namespace(
                &format!("ns-{n}"),
                Some(if n % 2 == 0 { "ztunnel" } else { "sidecar" }),
            ));
            base.push_str("---\n");
        }
        for n in 0..self.nodes.max(1) {
            base.push_str(&crate::manifests::node(
                &format!("node-{n}"),
                &format!("10.255.{}.{}", n >> 8, n & 255),
                &format!("zone-{}", n % 3),
            ));
            base.push_str("---\n");
        }
        files.push(("00-base.yaml".to_string(), base));
        for i in 0..self.services {
            files.push((
                format!("svc-{i}.yaml"),
                self.service_manifest(i, self.endpoints),
            ));
        }
        files
    }

    /// Service `i` with `endpoints` pods, as one manifest file.
    pub fn service_manifest(&self, i: usize, endpoints: usize) -> String {
        let ns = self.namespace_of(i);
        let name = format!("svc-{i}");
        let mut s = crate::manifests::service(
            &ns,
            &name,
            &self.vip(i).to_string(),
            &[
                crate::manifests::http(8080, 18080),
                crate::manifests::grpc(9090, 19090),
            ],
        );
        for j in 0..endpoints {
            s.push_str("---\n");
            s.push_str(&crate::manifests::pod_on(
                &ns,
                &format!("{name}-{j}"),
                &name,
                &self.pod_ip(i, j).to_string(),
                Some(&self.node_of(i, j)),
            ));
        }
        s
    }
}
