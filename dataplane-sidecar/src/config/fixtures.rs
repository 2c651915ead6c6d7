//! Wire resources in the shapes the control plane's Envoy renderer writes, for unit tests
//! (the tests crate checks the real renderer's output end to end).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use switchyard_protos::envoy::envoy::config::cluster::v3 as cds;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::endpoint::v3 as eds;
use switchyard_protos::envoy::envoy::config::listener::v3 as lds;
use switchyard_protos::envoy::envoy::config::route::v3 as rds;
use switchyard_protos::envoy::envoy::extensions::filters::http::router::v3::Router;
use switchyard_protos::envoy::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use switchyard_protos::envoy::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use switchyard_protos::envoy::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
use switchyard_protos::envoy::envoy::r#type::matcher::v3 as matcher;
use switchyard_protos::{pack, wkt};

pub(crate) fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub(crate) fn secs(s: i64) -> wkt::Duration {
    wkt::Duration {
        seconds: s,
        nanos: 0,
    }
}

pub(crate) fn millis(ms: i32) -> wkt::Duration {
    wkt::Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    }
}

pub(crate) fn u32v(v: u32) -> Option<wkt::UInt32Value> {
    Some(wkt::UInt32Value { value: v })
}

pub(crate) fn address(ip: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

fn tls_mode() -> wkt::Struct {
    wkt::Struct {
        fields: HashMap::from([(
            "tlsMode".to_string(),
            wkt::Value {
                kind: Some(wkt::value::Kind::StringValue("switchyard-mtls".into())),
            },
        )]),
    }
}

fn common(sans: &[&str], alpn: &[&str]) -> tls::CommonTlsContext {
    tls::CommonTlsContext {
        tls_params: Some(tls::TlsParameters {
            tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![tls::SdsSecretConfig {
            name: "default".into(),
            ..Default::default()
        }],
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        validation_context_type: Some(
            tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                tls::common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(tls::CertificateValidationContext {
                        match_typed_subject_alt_names: sans
                            .iter()
                            .map(|id| tls::SubjectAltNameMatcher {
                                san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                                matcher: Some(matcher::StringMatcher {
                                    match_pattern: Some(
                                        matcher::string_matcher::MatchPattern::Exact(
                                            id.to_string(),
                                        ),
                                    ),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(tls::SdsSecretConfig {
                        name: "ROOTCA".into(),
                        sds_config: Some(ads()),
                    }),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

/// An `outbound|...` EDS cluster; mTLS for endpoints marked `switchyard-mtls` when `sans`.
pub(crate) fn eds_cluster(name: &str, sans: &[&str]) -> cds::Cluster {
    cds::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
            cds::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cds::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.into(),
        }),
        connect_timeout: Some(secs(1)),
        common_lb_config: Some(cds::cluster::CommonLbConfig {
            locality_config_specifier: Some(
                cds::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    Default::default(),
                ),
            ),
            ..Default::default()
        }),
        transport_socket_matches: if sans.is_empty() {
            Vec::new()
        } else {
            vec![cds::cluster::TransportSocketMatch {
                name: "mtls".into(),
                r#match: Some(tls_mode()),
                transport_socket: Some(core::TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
                        &tls::UpstreamTlsContext {
                            common_tls_context: Some(common(sans, &[])),
                            ..Default::default()
                        },
                    ))),
                }),
            }]
        },
        ..Default::default()
    }
}

/// A `passthrough-*` ORIGINAL_DST cluster.
pub(crate) fn original_dst_cluster(name: &str) -> cds::Cluster {
    cds::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
            cds::cluster::DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(secs(1)),
        lb_policy: cds::cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    }
}

/// An `inbound|<port>||` STATIC cluster to the local app.
pub(crate) fn static_cluster(name: &str, port: u16) -> cds::Cluster {
    cds::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
            cds::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(secs(1)),
        load_assignment: Some(eds::ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![eds::LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint("127.0.0.1", port, true, false)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn lb_endpoint(ip: &str, port: u16, healthy: bool, mtls: bool) -> eds::LbEndpoint {
    eds::LbEndpoint {
        metadata: mtls.then(|| core::Metadata {
            filter_metadata: HashMap::from([(
                "envoy.transport_socket_match".to_string(),
                tls_mode(),
            )]),
            ..Default::default()
        }),
        health_status: if healthy {
            core::HealthStatus::Healthy as i32
        } else {
            core::HealthStatus::Unhealthy as i32
        },
        host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(eds::Endpoint {
            address: Some(address(ip, port)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Endpoints of one zone: `(ip, port, mtls)`.
pub(crate) type Zone<'a> = (&'a str, &'a [(&'a str, u16, bool)]);

/// One locality per zone, all endpoints healthy.
pub(crate) fn cla(name: &str, zones: &[Zone<'_>]) -> eds::ClusterLoadAssignment {
    eds::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: zones
            .iter()
            .map(|(zone, eps)| eds::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: "r".into(),
                    zone: zone.to_string(),
                    sub_zone: String::new(),
                }),
                lb_endpoints: eps
                    .iter()
                    .map(|(ip, port, mtls)| lb_endpoint(ip, *port, true, *mtls))
                    .collect(),
                load_balancing_weight: u32v(eps.len().max(1) as u32),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

pub(crate) fn prefix_route(name: &str, prefix: &str, cluster: &str) -> rds::Route {
    rds::Route {
        name: name.into(),
        r#match: Some(rds::RouteMatch {
            path_specifier: Some(rds::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(rds::route::Action::Route(rds::RouteAction {
            cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub(crate) fn vhost(name: &str, domains: &[&str], routes: Vec<rds::Route>) -> rds::VirtualHost {
    rds::VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

pub(crate) fn route_config(name: &str, vhosts: Vec<rds::VirtualHost>) -> rds::RouteConfiguration {
    rds::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vhosts,
        ..Default::default()
    }
}

fn router() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..Default::default()
    }
}

pub(crate) fn hcm(
    stat_prefix: &str,
    routes: hcm::http_connection_manager::RouteSpecifier,
    peer_cert: bool,
) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        forward_client_cert_details: if peer_cert {
            hcm::http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32
        } else {
            hcm::http_connection_manager::ForwardClientCertDetails::Sanitize as i32
        },
        set_current_client_cert_details: peer_cert.then_some(
            hcm::http_connection_manager::SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            },
        ),
        stat_prefix: stat_prefix.into(),
        http_filters: vec![router()],
        route_specifier: Some(routes),
        normalize_path: Some(wkt::BoolValue { value: true }),
        ..Default::default()
    }
}

pub(crate) fn rds_filter(name: &str) -> lds::Filter {
    network(&hcm(
        &format!("outbound_{name}"),
        hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(ads()),
            route_config_name: name.into(),
        }),
        false,
    ))
}

pub(crate) fn network<M: prost::Name>(m: &M) -> lds::Filter {
    lds::Filter {
        name: "f".into(),
        config_type: Some(lds::filter::ConfigType::TypedConfig(pack(m))),
    }
}

pub(crate) fn tcp_filter(cluster: &str) -> lds::Filter {
    network(&tcp::TcpProxy {
        stat_prefix: "tcp".into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    })
}

pub(crate) fn port_match(port: u16) -> Option<lds::FilterChainMatch> {
    Some(lds::FilterChainMatch {
        destination_port: u32v(port.into()),
        ..Default::default()
    })
}

fn listener_filter<M: prost::Name>(m: &M) -> lds::ListenerFilter {
    lds::ListenerFilter {
        name: "lf".into(),
        config_type: Some(lds::listener_filter::ConfigType::TypedConfig(pack(m))),
        ..Default::default()
    }
}

/// `outbound` on `listen:15001`: HTTP chains per port, TCP chains per `(vip, port,
/// cluster)`, the explicit chain and the passthrough default.
pub(crate) fn outbound_listener(
    listen: &str,
    http_ports: &[u16],
    tcp_chains: &[(&str, u16, &str)],
) -> lds::Listener {
    let mut chains: Vec<lds::FilterChain> = tcp_chains
        .iter()
        .map(|(vip, port, cluster)| lds::FilterChain {
            name: format!("outbound-tcp|{port}|{cluster}"),
            filter_chain_match: Some(lds::FilterChainMatch {
                destination_port: u32v((*port).into()),
                prefix_ranges: vec![core::CidrRange {
                    address_prefix: vip.to_string(),
                    prefix_len: u32v(32),
                }],
                ..Default::default()
            }),
            filters: vec![tcp_filter(cluster)],
            ..Default::default()
        })
        .collect();
    for port in http_ports {
        chains.push(lds::FilterChain {
            name: format!("outbound-http|{port}"),
            filter_chain_match: port_match(*port),
            filters: vec![rds_filter(&port.to_string())],
            ..Default::default()
        });
    }
    chains.push(lds::FilterChain {
        name: "outbound-explicit".into(),
        filter_chain_match: port_match(15001),
        filters: vec![rds_filter("outbound-http")],
        ..Default::default()
    });
    lds::Listener {
        name: "outbound".into(),
        address: Some(address(listen, 15001)),
        listener_filters: vec![listener_filter(&OriginalDst::default())],
        filter_chains: chains,
        default_filter_chain: Some(lds::FilterChain {
            name: "outbound-passthrough".into(),
            filters: vec![tcp_filter("passthrough-outbound")],
            ..Default::default()
        }),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// `inbound` on `listen:15006` with chains per `(port, mtls, plaintext, http)`, as the
/// renderer writes them for STRICT (mtls only), PERMISSIVE (both) and DISABLE (plaintext).
pub(crate) fn inbound_listener(listen: &str, ports: &[(u16, bool, bool, bool)]) -> lds::Listener {
    let mut chains = Vec::new();
    for &(port, mtls, plaintext, http) in ports {
        let name = format!("inbound|{port}||");
        let filter = |peer: bool| {
            if http {
                let rc = route_config(
                    &name,
                    vec![vhost(&name, &["*"], vec![prefix_route("", "/", &name)])],
                );
                network(&hcm(
                    &format!("inbound_{port}"),
                    hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc),
                    peer,
                ))
            } else {
                tcp_filter(&name)
            }
        };
        if mtls {
            chains.push(lds::FilterChain {
                name: format!("inbound-mtls|{port}"),
                filter_chain_match: Some(lds::FilterChainMatch {
                    destination_port: u32v(port.into()),
                    transport_protocol: if plaintext {
                        "tls".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }),
                filters: vec![filter(true)],
                transport_socket: Some(core::TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
                        &tls::DownstreamTlsContext {
                            common_tls_context: Some(common(&[], &["h2", "http/1.1"])),
                            require_client_certificate: Some(wkt::BoolValue { value: true }),
                            ..Default::default()
                        },
                    ))),
                }),
                ..Default::default()
            });
        }
        if plaintext {
            chains.push(lds::FilterChain {
                name: format!("inbound|{port}"),
                filter_chain_match: port_match(port),
                filters: vec![filter(false)],
                ..Default::default()
            });
        }
    }
    lds::Listener {
        name: "inbound".into(),
        address: Some(address(listen, 15006)),
        listener_filters: vec![
            listener_filter(&OriginalDst::default()),
            listener_filter(&TlsInspector::default()),
        ],
        filter_chains: chains,
        default_filter_chain: Some(lds::FilterChain {
            name: "inbound-passthrough".into(),
            filters: vec![tcp_filter("passthrough-inbound")],
            ..Default::default()
        }),
        traffic_direction: core::TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}
