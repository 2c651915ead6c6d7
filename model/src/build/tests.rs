use std::net::IpAddr;

use super::*;
use crate::input::*;
use crate::mesh::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn base() -> MeshBuilder {
    let mut b = MeshBuilder::new(MeshConfig::default());
    b.namespace(NamespaceInput {
        name: "default".into(),
        mode: None,
    })
    .namespace(NamespaceInput {
        name: "side".into(),
        mode: Some(DataplaneMode::Sidecar),
    });
    b
}

#[test]
fn effective_mode_pod_label_beats_namespace_beats_default() {
    let mut b = base();
    b.pod(PodInput::new("default", "a", ip("10.244.0.1")))
        .pod(PodInput::new("side", "b", ip("10.244.0.2")))
        .pod(PodInput::new("side", "c", ip("10.244.0.3")).mode(DataplaneMode::Ebpf))
        .pod(PodInput::new("unlisted", "d", ip("10.244.0.4")))
        .pod(PodInput::new("side", "e", ip("10.244.0.5")).mode(DataplaneMode::None));
    let m = b.build(1).unwrap();
    let mode = |uid: &str| m.workloads[uid].mode;
    assert_eq!(mode("default/a"), DataplaneMode::Ztunnel);
    assert_eq!(mode("side/b"), DataplaneMode::Sidecar);
    assert_eq!(mode("side/c"), DataplaneMode::Ebpf);
    assert_eq!(mode("unlisted/d"), DataplaneMode::Ztunnel);
    assert_eq!(mode("side/e"), DataplaneMode::None);
    assert!(m.workloads["side/e"].identity.is_none());
    let source = |uid: &str| m.workloads[uid].mode_source;
    assert_eq!(source("default/a"), ModeSource::Default);
    assert_eq!(source("side/b"), ModeSource::NamespaceLabel);
    assert_eq!(source("side/c"), ModeSource::PodLabel);
    assert_eq!(source("unlisted/d"), ModeSource::Default);
    assert_eq!(
        m.explain_mode("side", Some("c")),
        Some((DataplaneMode::Ebpf, ModeSource::PodLabel))
    );
    assert_eq!(
        m.explain_mode("side", None),
        Some((DataplaneMode::Sidecar, ModeSource::NamespaceLabel))
    );
    assert_eq!(
        m.explain_mode("nowhere", None),
        Some((DataplaneMode::Ztunnel, ModeSource::Default))
    );
    assert_eq!(m.explain_mode("side", Some("missing")), None);
    assert_eq!(
        m.workloads["side/b"].identity.as_ref().unwrap().to_string(),
        "spiffe://cluster.local/ns/side/sa/default"
    );
}

#[test]
fn selector_endpoints_resolve_named_and_numeric_targets() {
    let mut b = base();
    let mut svc = ServiceInput::new("default", "echo", ip("10.96.0.10")).port("http", 80, 8080);
    svc.ports.push(ServicePort {
        name: Some("grpc".into()),
        port: 9090,
        target: TargetPort::Named("grpc-port".into()),
        protocol: AppProtocol::Grpc,
    });
    b.service(svc)
        .pod(
            PodInput::new("default", "echo-1", ip("10.244.0.2"))
                .label("app", "echo")
                .named_port("grpc-port", 7070),
        )
        .pod(PodInput::new("default", "echo-2", ip("10.244.0.1")).label("app", "echo"))
        .pod(PodInput::new("default", "other", ip("10.244.0.9")).label("app", "other"))
        .pod(PodInput::new("side", "echo-x", ip("10.244.0.8")).label("app", "echo"));
    let m = b.build(1).unwrap();
    let eps = &m.endpoints[&ObjectKey::new("default", "echo")];
    let http: Vec<_> = eps.by_port[&80].iter().map(|e| (e.ip, e.port)).collect();
    assert_eq!(
        http,
        vec![(ip("10.244.0.1"), 8080), (ip("10.244.0.2"), 8080)]
    );
    // echo-2 has no container port named grpc-port: not an endpoint of 9090
    let grpc: Vec<_> = eps.by_port[&9090].iter().map(|e| (e.ip, e.port)).collect();
    assert_eq!(grpc, vec![(ip("10.244.0.2"), 7070)]);
}

#[test]
fn endpoint_slices_replace_selector_and_create_endpoint_workloads() {
    let mut b = base();
    b.service(ServiceInput::new("default", "echo", ip("10.96.0.10")).port("http", 80, 8080))
        .pod(PodInput::new("default", "echo-1", ip("10.244.0.2")).label("app", "echo"))
        .endpoint_slice(EndpointSliceInput {
            key: ObjectKey::new("default", "echo-abc"),
            service: "echo".into(),
            ports: vec![SlicePort {
                name: Some("http".into()),
                port: 9000,
            }],
            endpoints: vec![
                SliceEndpoint {
                    addresses: vec![ip("192.168.1.1")],
                    ready: true,
                    node: None,
                    zone: Some("z1".into()),
                    pod: None,
                },
                SliceEndpoint {
                    addresses: vec![ip("10.244.0.2")],
                    ready: false,
                    node: None,
                    zone: None,
                    pod: Some("echo-1".into()),
                },
            ],
        });
    let m = b.build(1).unwrap();
    let eps = &m.endpoints[&ObjectKey::new("default", "echo")].by_port[&80];
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0].workload, "default/echo-1");
    assert!(!eps[0].healthy, "slice readiness is honoured");
    assert_eq!(eps[0].port, 9000);
    assert_eq!(eps[1].workload, "default/endpoint/192.168.1.1");
    assert_eq!(eps[1].mode, DataplaneMode::None);
    assert_eq!(eps[1].locality.zone, "z1");
}

#[test]
fn duplicates_are_errors() {
    let mut b = base();
    b.service(ServiceInput::new("default", "echo", ip("10.96.0.10")))
        .service(ServiceInput::new("default", "echo", ip("10.96.0.11")));
    assert_eq!(
        b.build(1).unwrap_err(),
        BuildError::Duplicate {
            kind: "Service",
            key: "default/echo".into()
        }
    );
}

#[test]
fn routes_attach_to_parent_services_and_warn_on_dangling_refs() {
    let mut b = base();
    b.service(ServiceInput::new("default", "echo", ip("10.96.0.10")).port("http", 80, 8080))
        .route(RouteInput {
            key: ObjectKey::new("default", "split"),
            kind: RouteKind::Http,
            parents: vec![
                ParentRefInput {
                    namespace: None,
                    name: "echo".into(),
                    port: Some(80),
                },
                ParentRefInput {
                    namespace: None,
                    name: "missing".into(),
                    port: None,
                },
            ],
            rules: vec![RouteRuleInput {
                matches: vec![],
                backends: vec![
                    BackendRefInput {
                        namespace: None,
                        name: "echo".into(),
                        port: Some(80),
                        weight: 1,
                    },
                    BackendRefInput {
                        namespace: None,
                        name: "gone".into(),
                        port: Some(80),
                        weight: 1,
                    },
                ],
                timeout: None,
                retry: None,
            }],
            order: 0,
        });
    let m = b.build(1).unwrap();
    let routes = &m.routes[&ObjectKey::new("default", "echo")];
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].rules[0].backends.len(), 2);
    assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
    assert!(
        m.warnings
            .iter()
            .any(|w| w.message.contains("default/missing"))
    );
    assert!(
        m.warnings
            .iter()
            .any(|w| w.message.contains("default/gone"))
    );
}

#[test]
fn peer_authentication_most_specific_wins() {
    let mut b = base();
    b.pod(PodInput::new("default", "a", ip("10.244.0.1")).label("app", "a"))
        .peer_authentication(PeerAuthenticationInput {
            key: ObjectKey::new("switchyard-system", "mesh"),
            selector: None,
            mode: Some(MtlsMode::Strict),
            port_modes: Default::default(),
        })
        .peer_authentication(PeerAuthenticationInput {
            key: ObjectKey::new("default", "a"),
            selector: Some([("app".to_string(), "a".to_string())].into()),
            mode: Some(MtlsMode::Permissive),
            port_modes: [(9000, MtlsMode::Disable)].into(),
        });
    let m = b.build(1).unwrap();
    let w = &m.workloads["default/a"];
    assert_eq!(m.mtls_mode(w, Some(80)), MtlsMode::Permissive);
    assert_eq!(m.mtls_mode(w, Some(9000)), MtlsMode::Disable);
}
