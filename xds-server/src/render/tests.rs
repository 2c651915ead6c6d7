//! Renderer tests: a small mesh with every feature the renderers handle, rendered for each
//! proxy kind; golden files (`testdata/*.json`, regenerate with `SWITCHYARD_UPDATE_GOLDEN=1`
//! and review the diff) plus targeted assertions on what Envoy and gRPC depend on.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use switchyard_model::input::*;
use switchyard_model::proxy::ProxyMetadata;
use switchyard_model::*;
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::cluster::v3 as cluster;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use switchyard_protos::envoy::envoy::config::listener::v3::Listener;
use switchyard_protos::envoy::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use switchyard_protos::switchyard::workload::v1 as wl;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Rendering does not parse the roots, so a placeholder is enough.
const TEST_ROOT: &str = "-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n";

fn mesh() -> Arc<Mesh> {
    let mut b = MeshBuilder::new(MeshConfig {
        trust_bundle: Arc::from(vec![TEST_ROOT.to_string()]),
        ..MeshConfig::default()
    });
    b.namespace(NamespaceInput {
        name: "default".into(),
        mode: Some(DataplaneMode::Sidecar),
    });
    for (n, zone) in [("node-a", "zone-a"), ("node-b", "zone-b")] {
        b.node(NodeInput {
            name: n.into(),
            address: Some(ip(if n == "node-a" {
                "10.255.0.1"
            } else {
                "10.255.0.2"
            })),
            locality: Locality {
                region: "r1".into(),
                zone: zone.into(),
                subzone: String::new(),
            },
        });
    }
    let mut echo = ServiceInput::new("default", "echo", ip("10.96.0.10")).port("http", 8080, 18080);
    echo.ports.push(ServicePort {
        name: Some("grpc".into()),
        port: 9090,
        target: TargetPort::Number(19090),
        protocol: AppProtocol::Grpc,
    });
    b.service(echo)
        .service(
            ServiceInput::new("default", "echo-v2", ip("10.96.0.11")).port("http", 8080, 18080),
        )
        .service({
            let mut db =
                ServiceInput::new("default", "db", ip("10.96.0.20")).port("tcp", 5432, 5432);
            db.limits = ConnectionLimits {
                max_connections: Some(2),
                max_pending_requests: Some(0),
                ..ConnectionLimits::default()
            };
            db
        });
    b.pod(
        PodInput::new("default", "echo-1", ip("10.244.0.11"))
            .label("app", "echo")
            .on_node("node-a"),
    )
    .pod(
        PodInput::new("default", "echo-2", ip("10.244.0.12"))
            .label("app", "echo")
            .on_node("node-a"),
    )
    .pod(
        PodInput::new("default", "echo-3", ip("10.244.1.13"))
            .label("app", "echo")
            .on_node("node-b"),
    )
    .pod(
        PodInput::new("default", "echo-v2-1", ip("10.244.1.21"))
            .label("app", "echo-v2")
            .on_node("node-b"),
    )
    .pod(
        PodInput::new("default", "db-1", ip("10.244.1.31"))
            .label("app", "db")
            .on_node("node-b"),
    );
    let backend = |name: &str, weight| BackendRefInput {
        namespace: None,
        name: name.into(),
        port: Some(8080),
        weight,
    };
    b.route(RouteInput {
        key: ObjectKey::new("default", "echo-split"),
        kind: RouteKind::Http,
        parents: vec![ParentRefInput {
            namespace: None,
            name: "echo".into(),
            port: Some(8080),
        }],
        rules: vec![
            RouteRuleInput {
                matches: vec![RouteMatch {
                    path: Some(StringMatch::Prefix("/api".into())),
                    ..Default::default()
                }],
                backends: vec![backend("echo", 90), backend("echo-v2", 10)],
                timeout: Some(Duration::from_secs(10)),
                retry: Some(RetryPolicy {
                    attempts: 2,
                    codes: vec![503],
                    backoff: Some(Duration::from_millis(50)),
                    per_try_timeout: None,
                }),
            },
            RouteRuleInput {
                matches: vec![RouteMatch {
                    path: Some(StringMatch::Exact("/api/v2".into())),
                    headers: vec![HeaderMatch {
                        name: "X-Canary".into(),
                        value: StringMatch::Exact("1".into()),
                    }],
                    method: Some("GET".into()),
                    ..Default::default()
                }],
                backends: vec![backend("echo-v2", 1)],
                timeout: None,
                retry: None,
            },
            RouteRuleInput {
                matches: vec![],
                backends: vec![backend("echo", 1)],
                timeout: None,
                retry: None,
            },
        ],
        order: 0,
    });
    Arc::new(b.build(7).unwrap())
}

fn proxy(id: &str) -> ProxyId {
    ProxyId::parse(
        id,
        ProxyMetadata {
            listen_address: Some(ip("127.0.0.2")),
            ..Default::default()
        },
    )
    .unwrap()
}

fn snapshot(id: &str) -> crate::snapshot::Snapshot {
    let g = Generation::new(
        mesh(),
        None,
        Arc::new(RenderCache::default()),
        Arc::new(RenderOptions::default()),
        Instant::now(),
    );
    g.snapshot(&proxy(id), &mut ProxyRenderState::default())
}

const ENVOY: &str = "envoy~10.244.0.11~echo-1.default~default.svc.cluster.local";
/// The same pod with Switchyard's micro-sidecar: its golden (`sidecar.json`) is the output
/// kind `envoy` had before HBONE, unchanged byte for byte.
const SIDECAR: &str = "sidecar~10.244.0.11~echo-1.default~default.svc.cluster.local";
const GRPC: &str = "grpc~10.244.0.50~client.default~default.svc.cluster.local";
const ZTUNNEL: &str = "ztunnel~10.255.0.1~node-a~switchyard-system";

fn golden(name: &str, snap: &crate::snapshot::Snapshot) {
    let json =
        serde_json::to_string_pretty(&crate::admin::snapshot_json(snap, None)).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("src/render/testdata/{name}.json"));
    if std::env::var_os("SWITCHYARD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &json).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing: run with SWITCHYARD_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        want == json,
        "{name} differs from {}; if the change is intended, regenerate with SWITCHYARD_UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

fn decode<M: Message + Default>(snap: &crate::snapshot::Snapshot, t: TypeUrl, name: &str) -> M {
    let r = snap
        .get(t)
        .and_then(|ts| ts.get(name))
        .unwrap_or_else(|| panic!("{} {name} missing", t.short_name()));
    M::decode(r.bytes.as_slice()).unwrap()
}

#[test]
fn golden_snapshots_per_kind() {
    golden("envoy", &snapshot(ENVOY));
    golden("sidecar", &snapshot(SIDECAR));
    golden("grpc", &snapshot(GRPC));
    golden("ztunnel", &snapshot(ZTUNNEL));
}

#[test]
fn every_reference_resolves() {
    for id in [ENVOY, SIDECAR, GRPC, ZTUNNEL] {
        snapshot(id)
            .check_consistency()
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
}

#[test]
fn routes_follow_gateway_precedence_weights_timeouts_and_retries() {
    let snap = snapshot(ENVOY);
    let rc: RouteConfiguration = decode(&snap, TypeUrl::RouteConfiguration, "8080");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "echo.default.svc.cluster.local:8080")
        .unwrap();
    // exact /api/v2 (with method and header) first, then the longest prefix, then "/"
    let paths: Vec<String> = vh
        .routes
        .iter()
        .map(|r| format!("{:?}", r.r#match.as_ref().unwrap().path_specifier))
        .collect();
    assert!(paths[0].contains("Path(\"/api/v2\")"), "{paths:?}");
    assert!(
        paths[1].contains("PathSeparatedPrefix(\"/api\")"),
        "{paths:?}"
    );
    assert!(paths[2].contains("Prefix(\"/\")"), "{paths:?}");
    let first = vh.routes[0].r#match.as_ref().unwrap();
    let header_names: Vec<&str> = first.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(header_names, vec!["x-canary", ":method"]);
    let Some(route::Action::Route(split)) = &vh.routes[1].action else {
        panic!("route action")
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &split.cluster_specifier else {
        panic!("weighted clusters")
    };
    let weights: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        weights,
        vec![
            ("outbound|8080||echo.default.svc.cluster.local".into(), 90),
            (
                "outbound|8080||echo-v2.default.svc.cluster.local".into(),
                10
            )
        ]
    );
    assert_eq!(split.timeout.as_ref().unwrap().seconds, 10);
    let retry = split.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries.as_ref().unwrap().value, 2);
    assert_eq!(retry.retriable_status_codes, vec![503]);
    assert!(retry.retry_on.contains("retriable-status-codes"));
    // domains: service host, short forms, VIP, with and without port
    for d in [
        "echo.default.svc.cluster.local",
        "echo:8080",
        "echo",
        "10.96.0.10:8080",
    ] {
        assert!(vh.domains.iter().any(|x| x == d), "{d} in {:?}", vh.domains);
    }
}

#[test]
fn endpoints_are_grouped_by_locality_with_weights() {
    let snap = snapshot(ENVOY);
    let cla: ClusterLoadAssignment = decode(
        &snap,
        TypeUrl::ClusterLoadAssignment,
        "outbound|8080||echo.default.svc.cluster.local",
    );
    let by_zone: BTreeMap<String, (usize, u32)> = cla
        .endpoints
        .iter()
        .map(|l| {
            (
                l.locality.as_ref().unwrap().zone.clone(),
                (
                    l.lb_endpoints.len(),
                    l.load_balancing_weight.as_ref().unwrap().value,
                ),
            )
        })
        .collect();
    assert_eq!(by_zone["zone-a"], (2, 2));
    assert_eq!(by_zone["zone-b"], (1, 1));
}

#[test]
fn listeners_capture_tcp_by_vip_and_http_by_port() {
    let snap = snapshot(ENVOY);
    let l: Listener = decode(&snap, TypeUrl::Listener, envoy::OUTBOUND_LISTENER);
    let chains: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
    assert!(
        chains.contains(&"outbound-tcp|5432|db.default.svc.cluster.local"),
        "{chains:?}"
    );
    assert!(chains.contains(&"outbound-http|8080"), "{chains:?}");
    assert!(chains.contains(&"outbound-explicit"), "{chains:?}");
    let tcp = l
        .filter_chains
        .iter()
        .find(|c| c.name.starts_with("outbound-tcp|5432"))
        .unwrap();
    let m = tcp.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.prefix_ranges[0].address_prefix, "10.96.0.20");
    assert_eq!(
        format!("{:?}", l.address),
        format!("{:?}", Some(envoy::socket_address(ip("127.0.0.2"), 15001)))
    );
    let inbound: Listener = decode(&snap, TypeUrl::Listener, envoy::INBOUND_LISTENER);
    let names: Vec<&str> = inbound
        .filter_chains
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "inbound-mtls|18080",
            "inbound|18080",
            "inbound-mtls|19090",
            "inbound|19090"
        ],
        "echo-1 serves 18080 (http) and 19090 (grpc), PERMISSIVE: mTLS and plaintext each"
    );
    let clusters = snap.get(TypeUrl::Cluster).unwrap();
    assert!(clusters.get("inbound|18080||").is_some() && clusters.get("inbound|19090||").is_some());
}

#[test]
fn grpc_clients_get_api_listeners_named_after_their_target() {
    let snap = snapshot(GRPC);
    for name in [
        "echo.default.svc.cluster.local:9090",
        "echo.default.svc:9090",
        "echo.default:9090",
        "10.96.0.10:9090",
    ] {
        let l: Listener = decode(&snap, TypeUrl::Listener, name);
        let api = l.api_listener.unwrap().api_listener.unwrap();
        let hcm = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
        assert_eq!(
            hcm.http_filters.last().unwrap().name,
            "envoy.filters.http.router"
        );
        let rds = match hcm.route_specifier {
            Some(switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::Rds(r)) => r.route_config_name,
            other => panic!("{other:?}"),
        };
        assert_eq!(rds, "echo.default.svc.cluster.local:9090");
    }
    let rc: RouteConfiguration = decode(
        &snap,
        TypeUrl::RouteConfiguration,
        "echo.default.svc.cluster.local:9090",
    );
    assert!(
        rc.virtual_hosts[0]
            .domains
            .iter()
            .any(|d| d == "echo.default:9090")
    );
}

#[test]
fn node_agents_get_workloads_with_their_services() {
    let snap = snapshot(ZTUNNEL);
    let w: wl::Workload = decode(&snap, TypeUrl::Workload, "default/echo-1");
    assert_eq!(w.identity, "spiffe://cluster.local/ns/default/sa/default");
    assert_eq!(w.dataplane_mode, wl::DataplaneMode::Sidecar as i32);
    assert_eq!(w.tunnel_protocol, wl::TunnelProtocol::Hbone as i32);
    let ports = &w.services["default/echo.default.svc.cluster.local"].ports;
    assert_eq!(ports.len(), 2);
    assert_eq!(w.node_address, vec![10, 255, 0, 1]);
    let s: wl::Service = decode(
        &snap,
        TypeUrl::Service,
        "default/db.default.svc.cluster.local",
    );
    assert_eq!(s.ports[0].app_protocol, "tcp");
}

#[test]
fn connection_limits_become_default_priority_thresholds() {
    let snap = snapshot(SIDECAR);
    let db: cluster::Cluster = decode(
        &snap,
        TypeUrl::Cluster,
        "outbound|5432||db.default.svc.cluster.local",
    );
    let cb = db.circuit_breakers.expect("db has limits");
    assert_eq!(cb.thresholds.len(), 1);
    let t = &cb.thresholds[0];
    assert_eq!(t.priority, core::RoutingPriority::Default as i32);
    assert_eq!(t.max_connections.as_ref().map(|v| v.value), Some(2));
    assert_eq!(t.max_pending_requests.as_ref().map(|v| v.value), Some(0));
    // unset limits stay unset: the proxy's defaults apply
    assert_eq!(t.max_requests, None);
    assert_eq!(t.max_retries, None);
    let echo: cluster::Cluster = decode(
        &snap,
        TypeUrl::Cluster,
        "outbound|8080||echo.default.svc.cluster.local",
    );
    assert_eq!(echo.circuit_breakers, None);
}

#[test]
fn unchanged_services_are_not_rendered_again() {
    let cache = Arc::new(RenderCache::default());
    let opts = Arc::new(RenderOptions::default());
    let g1 = Generation::new(mesh(), None, cache.clone(), opts.clone(), Instant::now());
    let a = g1.snapshot(&proxy(ENVOY), &mut ProxyRenderState::default());
    let g2 = Generation::new(mesh(), Some(&g1), cache.clone(), opts, Instant::now());
    let b = g2.snapshot(&proxy(ENVOY), &mut ProxyRenderState::default());
    for t in [TypeUrl::Cluster, TypeUrl::ClusterLoadAssignment] {
        let (x, y) = (a.get(t).unwrap(), b.get(t).unwrap());
        assert_eq!(x.version(), y.version());
        let rx = x
            .get("outbound|8080||echo.default.svc.cluster.local")
            .unwrap();
        let ry = y
            .get("outbound|8080||echo.default.svc.cluster.local")
            .unwrap();
        assert!(Arc::ptr_eq(rx, ry), "same Arc: rendered once");
    }
}

#[test]
fn mtls_to_sidecar_endpoints_with_their_identities_and_rootca_for_every_kind() {
    use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
    let snap = snapshot(SIDECAR);
    let c: switchyard_protos::envoy::envoy::config::cluster::v3::Cluster = decode(
        &snap,
        TypeUrl::Cluster,
        "outbound|8080||echo.default.svc.cluster.local",
    );
    assert_eq!(c.transport_socket_matches.len(), 1);
    let ts = c.transport_socket_matches[0]
        .transport_socket
        .clone()
        .unwrap();
    let Some(switchyard_protos::envoy::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
        panic!("no typed config");
    };
    let ctx = tls::UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    let Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("no combined validation context");
    };
    assert_eq!(
        v.validation_context_sds_secret_config.unwrap().name,
        "ROOTCA"
    );
    let sans: Vec<String> = v
        .default_validation_context
        .unwrap()
        .match_typed_subject_alt_names
        .iter()
        .map(|m| format!("{:?}", m.matcher.as_ref().unwrap().match_pattern))
        .collect();
    assert_eq!(sans.len(), 1, "{sans:?}");
    assert!(
        sans[0].contains("spiffe://cluster.local/ns/default/sa/default"),
        "{sans:?}"
    );
    // every endpoint is a sidecar pod: each carries the mTLS match label and its own
    // SPIFFE ID
    let cla: switchyard_protos::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment = decode(
        &snap,
        TypeUrl::ClusterLoadAssignment,
        "outbound|8080||echo.default.svc.cluster.local",
    );
    for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let md = e.metadata.as_ref().expect("mtls endpoint metadata");
        assert!(
            md.filter_metadata
                .contains_key("envoy.transport_socket_match")
        );
        let any = &md.typed_filter_metadata[envoy::ENDPOINT_IDENTITY_METADATA];
        assert_eq!(
            any.type_url,
            "type.googleapis.com/google.protobuf.StringValue"
        );
        let identity = switchyard_protos::wkt::StringValue::decode(any.value.as_slice()).unwrap();
        assert_eq!(
            identity.value,
            "spiffe://cluster.local/ns/default/sa/default"
        );
    }
    // proxyless gRPC cannot use SDS-fed Envoy TLS: its copy of the cluster is plaintext
    let g: switchyard_protos::envoy::envoy::config::cluster::v3::Cluster = decode(
        &snapshot(GRPC),
        TypeUrl::Cluster,
        "outbound|8080||echo.default.svc.cluster.local",
    );
    assert!(g.transport_socket_matches.is_empty());
    // ROOTCA goes to every kind
    for id in [ENVOY, GRPC, ZTUNNEL] {
        let snap = snapshot(id);
        let secret: tls::Secret = decode(&snap, TypeUrl::Secret, "ROOTCA");
        let Some(tls::secret::Type::ValidationContext(vc)) = secret.r#type else {
            panic!("ROOTCA is not a validation context");
        };
        let ca = format!("{:?}", vc.trusted_ca.unwrap().specifier);
        assert!(ca.contains("TEST"), "{ca}");
    }
}

#[test]
fn stock_envoy_originates_hbone_through_one_internal_listener_per_identity() {
    use switchyard_protos::envoy::envoy::config::cluster::v3::{Cluster, cluster};
    use switchyard_protos::envoy::envoy::config::core::v3 as core;
    use switchyard_protos::envoy::envoy::config::endpoint::v3 as endpoint;
    use switchyard_protos::envoy::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
    let snap = snapshot(ENVOY);
    let id = "spiffe://cluster.local/ns/default/sa/default";
    let tunnel = format!("connect_originate|{id}");
    // the outbound cluster keeps its name; its endpoints are the identity's internal listener
    let c: Cluster = decode(
        &snap,
        TypeUrl::Cluster,
        "outbound|8080||echo.default.svc.cluster.local",
    );
    assert!(c.transport_socket_matches.is_empty());
    assert_eq!(
        c.transport_socket.unwrap().name,
        "envoy.transport_sockets.internal_upstream"
    );
    let cla: ClusterLoadAssignment = decode(
        &snap,
        TypeUrl::ClusterLoadAssignment,
        "outbound|8080||echo.default.svc.cluster.local",
    );
    let mut targets = Vec::new();
    for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            panic!("no endpoint");
        };
        let Some(core::address::Address::EnvoyInternalAddress(a)) =
            &ep.address.as_ref().unwrap().address
        else {
            panic!("not an internal address: {ep:?}");
        };
        assert_eq!(
            format!("{:?}", a.address_name_specifier),
            format!(
                "{:?}",
                Some(
                    core::envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                        tunnel.clone()
                    )
                )
            )
        );
        let md = &e.metadata.as_ref().unwrap().filter_metadata;
        let local = &md["envoy.filters.listener.original_dst"].fields["local"];
        assert_eq!(
            format!("{:?}", local.kind),
            format!(
                "{:?}",
                Some(switchyard_protos::wkt::value::Kind::StringValue(
                    a.endpoint_id.clone()
                ))
            )
        );
        targets.push(a.endpoint_id.clone());
    }
    targets.sort();
    assert_eq!(
        targets,
        [
            "10.244.0.11:18080",
            "10.244.0.12:18080",
            "10.244.1.13:18080"
        ]
    );
    // the internal listener tunnels to the restored destination ...
    let l: Listener = decode(&snap, TypeUrl::Listener, &tunnel);
    assert_eq!(
        l.listener_filters[0].name,
        "envoy.filters.listener.original_dst"
    );
    let Some(
        switchyard_protos::envoy::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any),
    ) = &l.filter_chains[0].filters[0].config_type
    else {
        panic!("no tcp proxy");
    };
    let tp = TcpProxy::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        tp.tunneling_config.unwrap().hostname,
        "%DOWNSTREAM_LOCAL_ADDRESS%"
    );
    // ... through a cluster that reaches <pod ip>:15008 over mTLS + h2, expecting the identity
    let t: Cluster = decode(&snap, TypeUrl::Cluster, &tunnel);
    let Some(cluster::LbConfig::OriginalDstLbConfig(od)) = t.lb_config else {
        panic!("no original dst config");
    };
    assert_eq!(od.upstream_port_override.unwrap().value, 15008);
    assert!(!t.typed_extension_protocol_options.is_empty(), "HTTP/2");
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) =
        t.transport_socket.unwrap().config_type
    else {
        panic!("no tls");
    };
    let common = tls::UpstreamTlsContext::decode(any.value.as_slice())
        .unwrap()
        .common_tls_context
        .unwrap();
    assert_eq!(common.alpn_protocols, ["h2"]);
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    assert!(format!("{:?}", common.validation_context_type).contains(id));
    // sidecars keep the transport socket match and plain endpoint addresses
    let sidecar = snapshot(SIDECAR);
    assert!(
        sidecar
            .get(TypeUrl::Listener)
            .unwrap()
            .get(tunnel.as_str())
            .is_none()
    );
}

#[test]
fn stock_envoy_terminates_hbone_on_15008_per_inbound_port() {
    use switchyard_protos::envoy::envoy::config::listener::v3::filter::ConfigType;
    let snap = snapshot(ENVOY);
    let l: Listener = decode(&snap, TypeUrl::Listener, envoy::CONNECT_TERMINATE);
    assert_eq!(
        format!("{:?}", l.address),
        format!("{:?}", Some(envoy::socket_address(ip("127.0.0.2"), 15008)))
    );
    let chain = &l.filter_chains[0];
    assert!(chain.transport_socket.is_some(), "mTLS");
    let Some(ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!("no hcm");
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    assert!(hcm.http2_protocol_options.unwrap().allow_connect);
    assert_eq!(hcm.upgrade_configs[0].upgrade_type, "CONNECT");
    let Some(switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
        panic!("no inline routes");
    };
    let by_domain: BTreeMap<String, String> = rc
        .virtual_hosts
        .iter()
        .map(|vh| {
            let Some(route::Action::Route(a)) = &vh.routes[0].action else {
                panic!("no route");
            };
            let Some(route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier else {
                panic!("no cluster");
            };
            (vh.domains[0].clone(), c.clone())
        })
        .collect();
    // HTTP and gRPC ports go through their internal listener, which sets XFCC
    assert_eq!(
        by_domain,
        BTreeMap::from([
            (
                "10.244.0.11:18080".to_string(),
                "connect_inbound|18080".to_string()
            ),
            (
                "10.244.0.11:19090".to_string(),
                "connect_inbound|19090".to_string()
            ),
        ])
    );
    let inner: Listener = decode(&snap, TypeUrl::Listener, "connect_inbound|18080");
    let Some(ConfigType::TypedConfig(any)) = &inner.filter_chains[0].filters[0].config_type else {
        panic!("no hcm");
    };
    let text = format!(
        "{:?}",
        HttpConnectionManager::decode(any.value.as_slice()).unwrap()
    );
    assert!(
        text.contains("x-forwarded-client-cert") && text.contains(envoy::XFCC_FILTER_STATE),
        "{text}"
    );
    assert!(
        snap.get(TypeUrl::Cluster)
            .unwrap()
            .get("connect_inbound|18080")
            .is_some()
    );
    // no 15008 listener for the micro-sidecar: it terminates HBONE itself
    assert!(
        snapshot(SIDECAR)
            .get(TypeUrl::Listener)
            .unwrap()
            .get(envoy::CONNECT_TERMINATE)
            .is_none()
    );
}
