//! HBONE for stock Envoy (kind `envoy`): the resources that make Envoy originate and
//! terminate HTTP/2 `CONNECT` tunnels over mTLS on port 15008 (see the parent module's doc
//! for the names and how traffic flows through them).
//!
//! Built only from Envoy's own extensions (internal listeners, the internal upstream
//! transport socket, the original destination listener filter and cluster, TCP proxy
//! tunnelling, CONNECT upgrades and `set_filter_state`), so a stock Envoy 1.40 whose
//! bootstrap enables `envoy.bootstrap.internal_listener` needs nothing else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use switchyard_model::SpiffeId;
use switchyard_model::view::InboundPort;
use switchyard_protos::envoy::envoy::config::cluster::v3 as cluster;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::endpoint::v3 as endpoint;
use switchyard_protos::envoy::envoy::config::listener::v3 as listener;
use switchyard_protos::envoy::envoy::config::route::v3 as route;
use switchyard_protos::envoy::envoy::extensions::filters::common::set_filter_state::v3 as set_filter_state;
use switchyard_protos::envoy::envoy::extensions::filters::http::set_filter_state::v3 as http_set_filter_state;
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use switchyard_protos::envoy::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::internal_upstream::v3 as internal_upstream;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use switchyard_protos::envoy::envoy::r#type::metadata::v3 as metadata;
use switchyard_protos::{pack, wkt};

use std::sync::Arc;

use switchyard_model::AuthorizationPolicy;

use super::super::RenderOptions;
use super::super::rbac;
use super::super::secret::{downstream_hbone_mtls, upstream_mtls};
use super::{duration, http2_options, original_dst_filter, router_filter, socket_address};

/// The HBONE port (CONTRACTS.md).
pub const HBONE_PORT: u16 = 15008;
/// Prefix of the per-identity internal listener and cluster that originate HBONE.
pub const CONNECT_ORIGINATE: &str = "connect_originate";
/// Name of the listener on `<listen>:15008` that terminates HBONE.
pub const CONNECT_TERMINATE: &str = "connect_terminate";
/// Prefix of the per-port internal listener and cluster behind [`CONNECT_TERMINATE`] for
/// HTTP ports.
pub const CONNECT_INBOUND: &str = "connect_inbound";
/// Dynamic metadata namespace the original destination listener filter reads on internal
/// listeners (field `local`: the address to restore as the connection's local address).
const ORIGINAL_DST_NAMESPACE: &str = "envoy.filters.listener.original_dst";
/// Filter state object carrying the `x-forwarded-client-cert` value from
/// [`CONNECT_TERMINATE`] (where the client certificate is known) to the
/// [`CONNECT_INBOUND`] listeners (where the tunnelled HTTP request is).
pub const XFCC_FILTER_STATE: &str = "switchyard.hbone.xfcc";
/// Filter state object carrying the tunnel's peer SPIFFE ID from [`CONNECT_TERMINATE`] to
/// the [`CONNECT_INBOUND`] listeners, where authorization policies match it.
pub const PEER_FILTER_STATE: &str = "switchyard.hbone.peer";
/// Filter state object (an IP) carrying the tunnel's source address the same way.
pub const SOURCE_FILTER_STATE: &str = "switchyard.hbone.source";
/// What [`XFCC_FILTER_STATE`] holds: the same fields Envoy's own XFCC handling of the
/// `inbound` listener sets (`By`, and `URI` for the caller's SPIFFE ID).
const XFCC_FORMAT: &str = "By=%DOWNSTREAM_LOCAL_URI_SAN%;URI=%DOWNSTREAM_PEER_URI_SAN%";

/// `connect_originate|<spiffe id>`: internal listener and cluster that tunnel to endpoints
/// holding identity `id`.
pub fn originate_name(id: &SpiffeId) -> String {
    format!("{CONNECT_ORIGINATE}|{id}")
}

/// `connect_inbound|<port>`: internal listener and cluster for an inbound HTTP port.
pub fn inbound_name(port: u16) -> String {
    format!("{CONNECT_INBOUND}|{port}")
}

fn internal_address(listener: &str, endpoint_id: String) -> core::Address {
    core::Address {
        address: Some(core::address::Address::EnvoyInternalAddress(
            core::EnvoyInternalAddress {
                endpoint_id,
                address_name_specifier: Some(
                    core::envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                        listener.to_string(),
                    ),
                ),
            },
        )),
    }
}

/// The internal upstream transport socket: plain bytes, plus the host's
/// [`ORIGINAL_DST_NAMESPACE`] metadata handed to the internal listener. On an endpoint
/// with a socket address (a plaintext endpoint of the same cluster) it is a raw buffer.
pub(super) fn internal_upstream() -> core::TransportSocket {
    let cfg = internal_upstream::InternalUpstreamTransport {
        passthrough_metadata: vec![
            internal_upstream::internal_upstream_transport::MetadataValueSource {
                kind: Some(metadata::MetadataKind {
                    kind: Some(metadata::metadata_kind::Kind::Host(
                        metadata::metadata_kind::Host {},
                    )),
                }),
                name: ORIGINAL_DST_NAMESPACE.into(),
            },
        ],
        transport_socket: Some(core::TransportSocket {
            name: "envoy.transport_sockets.raw_buffer".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
                &RawBuffer::default(),
            ))),
        }),
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.internal_upstream".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(&cfg))),
    }
}

/// An mTLS endpoint for kind `envoy`: the internal listener of its identity, told the real
/// destination in [`ORIGINAL_DST_NAMESPACE`] metadata (one namespace, one field: protobuf
/// maps here encode in random order, and resource versions are content hashes).
pub(super) fn lb_endpoint(
    ip: IpAddr,
    port: u16,
    id: &SpiffeId,
    health_status: i32,
) -> endpoint::LbEndpoint {
    let target = SocketAddr::new(ip, port).to_string();
    endpoint::LbEndpoint {
        metadata: Some(core::Metadata {
            filter_metadata: HashMap::from([(
                ORIGINAL_DST_NAMESPACE.to_string(),
                wkt::Struct {
                    fields: HashMap::from([(
                        "local".to_string(),
                        wkt::Value {
                            kind: Some(wkt::value::Kind::StringValue(target.clone())),
                        },
                    )]),
                },
            )]),
            ..Default::default()
        }),
        health_status,
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(internal_address(&originate_name(id), target)),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// Internal listener `connect_originate|<id>`: restores the destination from the
/// endpoint's metadata, then tunnels the bytes in a `CONNECT` to it.
pub(super) fn originate_listener(id: &SpiffeId) -> listener::Listener {
    let name = originate_name(id);
    let proxy = tcp::TcpProxy {
        stat_prefix: CONNECT_ORIGINATE.into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(name.clone())),
        tunneling_config: Some(tcp::tcp_proxy::TunnelingConfig {
            hostname: "%DOWNSTREAM_LOCAL_ADDRESS%".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    listener::Listener {
        name: name.clone(),
        listener_filters: vec![original_dst_filter()],
        filter_chains: vec![listener::FilterChain {
            name: name.clone(),
            filters: vec![listener::Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pack(&proxy))),
            }],
            ..Default::default()
        }],
        traffic_direction: core::TrafficDirection::Outbound as i32,
        listener_specifier: Some(listener::listener::ListenerSpecifier::InternalListener(
            listener::listener::InternalListenerConfig::default(),
        )),
        ..Default::default()
    }
}

/// Cluster `connect_originate|<id>`: the destination's pod IP (restored local address of
/// the internal connection) on port 15008, mTLS presenting `default` and expecting `id`,
/// HTTP/2.
pub(super) fn originate_cluster(id: &SpiffeId, opts: &RenderOptions) -> cluster::Cluster {
    cluster::Cluster {
        name: originate_name(id),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(duration(opts.connect_timeout)),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        lb_config: Some(cluster::cluster::LbConfig::OriginalDstLbConfig(
            cluster::cluster::OriginalDstLbConfig {
                upstream_port_override: Some(wkt::UInt32Value {
                    value: HBONE_PORT.into(),
                }),
                ..Default::default()
            },
        )),
        transport_socket: Some(upstream_mtls(&[id], true)),
        typed_extension_protocol_options: http2_options(),
        ..Default::default()
    }
}

/// The terminating side: listener `connect_terminate` on `<listen>:15008`, and for each
/// inbound HTTP port an internal listener and cluster `connect_inbound|<port>`.
pub(super) struct Terminate {
    /// `connect_terminate` and the `connect_inbound|<port>` internal listeners.
    pub listeners: Vec<listener::Listener>,
    /// The `connect_inbound|<port>` clusters.
    pub clusters: Vec<cluster::Cluster>,
}

/// Renders [`Terminate`] for the inbound `ports` (without reserved ones and 15008) of the
/// pod at `pod_ip`.
pub(super) fn terminate(
    ports: &[&InboundPort],
    pod_ip: IpAddr,
    listen: IpAddr,
    policies: &[Arc<AuthorizationPolicy>],
    trust_domain: &str,
    opts: &RenderOptions,
) -> Terminate {
    let mut out = Terminate {
        listeners: Vec::new(),
        clusters: Vec::new(),
    };
    let mut vhosts = Vec::new();
    let mut connect_rbac = false;
    for p in ports {
        let app = format!("inbound|{}||", p.port);
        // HTTP is handed to an internal listener whose HCM sees the tunnelled requests,
        // sets XFCC and checks authorization per request; other protocols go to the app as
        // bytes once the CONNECT passed the port's connection-level policy.
        let mut per_route = HashMap::new();
        let target = if p.protocol.is_http() {
            let name = inbound_name(p.port);
            let rbac = rbac::http_filters_peer_from_filter_state(
                policies,
                p.port,
                trust_domain,
                PEER_FILTER_STATE,
                SOURCE_FILTER_STATE,
            );
            out.listeners
                .push(inbound_listener(&name, &app, p.port, rbac));
            out.clusters.push(inbound_cluster(&name, opts));
            name
        } else {
            if let Some(config) = rbac::connect_per_route(policies, p.port, trust_domain) {
                connect_rbac = true;
                per_route.insert(rbac::CONNECT_RBAC_FILTER.to_string(), config);
            }
            app
        };
        vhosts.push(route::VirtualHost {
            name: format!("{CONNECT_TERMINATE}|{}", p.port),
            // The CONNECT authority is `<pod ip>:<port>`: only this pod is served.
            domains: vec![SocketAddr::new(pod_ip, p.port).to_string()],
            routes: vec![route::Route {
                name: "connect".into(),
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::ConnectMatcher(
                        route::route_match::ConnectMatcher {},
                    )),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(target)),
                    upgrade_configs: vec![route::route_action::UpgradeConfig {
                        upgrade_type: "CONNECT".into(),
                        connect_config: Some(
                            route::route_action::upgrade_config::ConnectConfig::default(),
                        ),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
                typed_per_filter_config: per_route,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    // Any other authority (a port the pod does not serve, another IP) has no virtual
    // host: 404.
    let set_xfcc = http_set_filter_state::Config {
        on_request_headers: vec![set_filter_state::FilterStateValue {
            key: Some(set_filter_state::filter_state_value::Key::ObjectKey(
                XFCC_FILTER_STATE.into(),
            )),
            factory_key: "envoy.string".into(),
            value: Some(set_filter_state::filter_state_value::Value::FormatString(
                core::SubstitutionFormatString {
                    format: Some(core::substitution_format_string::Format::TextFormatSource(
                        core::DataSource {
                            specifier: Some(core::data_source::Specifier::InlineString(
                                XFCC_FORMAT.into(),
                            )),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            )),
            shared_with_upstream: set_filter_state::filter_state_value::SharedWithUpstream::Once
                as i32,
            ..Default::default()
        }]
        .into_iter()
        .chain([
            // The caller's identity, for authorization on the internal listeners.
            shared_string(
                PEER_FILTER_STATE,
                "envoy.string",
                "%DOWNSTREAM_PEER_URI_SAN%",
            ),
            // The tunnel's source address, for source-IP rules there.
            shared_string(
                SOURCE_FILTER_STATE,
                "envoy.network.ip",
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            ),
        ])
        .collect(),
        ..Default::default()
    };
    let cfg = hcm::HttpConnectionManager {
        stat_prefix: CONNECT_TERMINATE.into(),
        codec_type: hcm::http_connection_manager::CodecType::Http2 as i32,
        http2_protocol_options: Some(core::Http2ProtocolOptions {
            allow_connect: true,
            ..Default::default()
        }),
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "CONNECT".into(),
            ..Default::default()
        }],
        http_filters: [hcm::HttpFilter {
            name: "envoy.filters.http.set_filter_state".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(&set_xfcc))),
            ..Default::default()
        }]
        .into_iter()
        .chain(connect_rbac.then(|| rbac::per_route_only_filter(rbac::CONNECT_RBAC_FILTER)))
        .chain([router_filter()])
        .collect(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            route::RouteConfiguration {
                name: CONNECT_TERMINATE.into(),
                virtual_hosts: vhosts,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    out.listeners.push(listener::Listener {
        name: CONNECT_TERMINATE.into(),
        address: Some(socket_address(listen, HBONE_PORT)),
        filter_chains: vec![listener::FilterChain {
            name: CONNECT_TERMINATE.into(),
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pack(&cfg))),
            }],
            transport_socket: Some(downstream_hbone_mtls()),
            ..Default::default()
        }],
        traffic_direction: core::TrafficDirection::Inbound as i32,
        ..Default::default()
    });
    out
}

/// A filter state value from `format`, shared with the upstream (internal) connection.
/// `factory` empty: the key names its own factory (a well-known object).
fn shared_string(key: &str, factory: &str, format: &str) -> set_filter_state::FilterStateValue {
    set_filter_state::FilterStateValue {
        key: Some(set_filter_state::filter_state_value::Key::ObjectKey(
            key.into(),
        )),
        factory_key: factory.into(),
        value: Some(set_filter_state::filter_state_value::Value::FormatString(
            core::SubstitutionFormatString {
                format: Some(core::substitution_format_string::Format::TextFormatSource(
                    core::DataSource {
                        specifier: Some(core::data_source::Specifier::InlineString(format.into())),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        )),
        shared_with_upstream: set_filter_state::filter_state_value::SharedWithUpstream::Once as i32,
        ..Default::default()
    }
}

/// Internal listener `connect_inbound|<port>`: the tunnelled HTTP to the app's inbound
/// cluster, with `x-forwarded-client-cert` replaced by what [`CONNECT_TERMINATE`] saw and
/// the port's authorization (`rbac`) checked per request.
fn inbound_listener(
    name: &str,
    app: &str,
    port: u16,
    rbac: Vec<hcm::HttpFilter>,
) -> listener::Listener {
    let cfg = hcm::HttpConnectionManager {
        stat_prefix: format!("{CONNECT_INBOUND}_{port}"),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        // Whatever XFCC the client sent is removed; the route sets ours.
        forward_client_cert_details:
            hcm::http_connection_manager::ForwardClientCertDetails::Sanitize as i32,
        http_filters: rbac.into_iter().chain([router_filter()]).collect(),
        normalize_path: Some(wkt::BoolValue { value: true }),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            route::RouteConfiguration {
                name: name.to_string(),
                virtual_hosts: vec![route::VirtualHost {
                    name: name.to_string(),
                    domains: vec!["*".into()],
                    routes: vec![route::Route {
                        r#match: Some(route::RouteMatch {
                            path_specifier: Some(route::route_match::PathSpecifier::Prefix(
                                "/".into(),
                            )),
                            ..Default::default()
                        }),
                        action: Some(route::route::Action::Route(route::RouteAction {
                            cluster_specifier: Some(
                                route::route_action::ClusterSpecifier::Cluster(app.to_string()),
                            ),
                            ..Default::default()
                        })),
                        // Our sidecar's tunnel-only header (see its `ORIG_PROTO`).
                        request_headers_to_remove: vec!["switchyard-orig-proto".into()],
                        request_headers_to_add: vec![core::HeaderValueOption {
                            header: Some(core::HeaderValue {
                                key: "x-forwarded-client-cert".into(),
                                value: format!("%FILTER_STATE({XFCC_FILTER_STATE}:PLAIN)%"),
                                ..Default::default()
                            }),
                            append_action:
                                core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                                    as i32,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    listener::Listener {
        name: name.to_string(),
        filter_chains: vec![listener::FilterChain {
            name: name.to_string(),
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pack(&cfg))),
            }],
            ..Default::default()
        }],
        traffic_direction: core::TrafficDirection::Inbound as i32,
        listener_specifier: Some(listener::listener::ListenerSpecifier::InternalListener(
            listener::listener::InternalListenerConfig::default(),
        )),
        ..Default::default()
    }
}

/// Cluster `connect_inbound|<port>`: its internal listener, through the internal upstream
/// transport so the filter state shared by [`CONNECT_TERMINATE`] reaches it.
fn inbound_cluster(name: &str, opts: &RenderOptions) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(opts.connect_timeout)),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(internal_address(name, String::new())),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        transport_socket: Some(internal_upstream()),
        ..Default::default()
    }
}
