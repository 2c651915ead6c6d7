//! Envoy API renderer for per-pod proxies (`sidecar`, `envoy`).
//!
//! Shape (names are stable contracts, see CONTRACTS.md):
//! * CDS: `outbound|<port>||<host>` (EDS) per service port, `inbound|<port>||` (STATIC to the
//!   local app) per inbound port, `passthrough-outbound` / `passthrough-inbound`
//!   (ORIGINAL_DST) for traffic to unknown destinations.
//! * EDS: one ClusterLoadAssignment per outbound cluster, endpoints grouped by locality with
//!   locality weights.
//! * LDS: `outbound` on `<listen>:15001` with a filter chain per HTTP port (HCM, RDS named
//!   after the port), per TCP service port (TCP proxy, matched on VIP and port), and one for
//!   clients that talk to 15001 directly as an HTTP proxy (RDS `outbound-http`, every HTTP
//!   service by `Host`); `inbound` on `<listen>:15006` with a chain per inbound port.
//! * RDS: `<port>` and `outbound-http`, built from services and their HTTPRoute/GRPCRoute.
//!
//! mTLS (see [`super::secret`]): outbound clusters carry a transport socket match that turns
//! on mTLS, with a SAN matcher for the endpoints' SPIFFE IDs, for endpoints whose pods run a
//! per-pod proxy (mode `sidecar`); the inbound listener terminates mTLS per port as the
//! port's PeerAuthentication mode says (STRICT, PERMISSIVE via the TLS inspector, DISABLE)
//! and tells the app who called in `x-forwarded-client-cert`.
//!
//! The two kinds differ only in how mTLS endpoints are reached ([`MeshTransport`]):
//! * `sidecar` (Switchyard's micro-sidecar): as above; the sidecar reads the `tlsMode`
//!   transport socket match as "open an HBONE tunnel" and does the rest itself.
//! * `envoy` (stock Envoy 1.40): HBONE, built from Envoy's own extensions. Its bootstrap must
//!   enable `envoy.bootstrap.internal_listener`.
//!   * Originate. In the outbound clusters (same names) an mTLS endpoint is an
//!     `envoy_internal_address` naming internal listener `connect_originate|<spiffe id>`
//!     (one per identity of the scope's mTLS endpoints; `endpoint_id` = `<ip>:<port>`),
//!     with host metadata `envoy.filters.listener.original_dst: {local: "<ip>:<port>"}`.
//!     The cluster's transport socket is `internal_upstream`, which passes that metadata to
//!     the internal listener, whose original destination listener filter restores it as
//!     the connection's local address. Its TCP proxy tunnels the bytes in an HTTP/2
//!     `CONNECT` with authority `%DOWNSTREAM_LOCAL_ADDRESS%` (= `<ip>:<port>`) through
//!     cluster `connect_originate|<spiffe id>`: ORIGINAL_DST with the port overridden to
//!     15008, HTTP/2, TLS 1.3 with ALPN `h2`, SDS `default`, trust from `ROOTCA` and a SAN
//!     matcher for exactly that identity (one cluster per identity, so each destination is
//!     checked against the identity the model gives it, not a union).
//!   * Terminate (when the pod serves any port). Listener `connect_terminate` on
//!     `<listen>:15008`: mTLS (client certificate required, TLS 1.3, ALPN `h2`), an HTTP/2
//!     HCM that accepts `CONNECT` with one virtual host per inbound port (domain
//!     `<pod ip>:<port>`, route `connect_matcher` with `connect_config`), so a port the pod
//!     does not serve, or another IP, answers 404. TCP ports go straight to `inbound|<port>||`. HTTP ports go to
//!     cluster `connect_inbound|<port>`, an internal listener of the same name whose HCM
//!     parses the tunnelled requests, removes any client-sent `x-forwarded-client-cert` and
//!     sets it to `By=<own id>;URI=<caller id>` from filter state `switchyard.hbone.xfcc`,
//!     which `connect_terminate` sets from the client certificate and shares with the
//!     upstream (internal) connection; then `inbound|<port>||`.
//!   * The `inbound` listener on 15006 keeps its STRICT/PERMISSIVE/DISABLE chains.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use switchyard_model::view::{PortView, ProxyView, Scope, ServiceView};
use switchyard_model::{
    AppProtocol, ConnectionLimits, DataplaneMode, Endpoint, Locality, Route, RouteKind, RouteMatch,
    SpiffeId, StringMatch,
};
use switchyard_protos::envoy::envoy::config::cluster::v3 as cluster;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::endpoint::v3 as endpoint;
use switchyard_protos::envoy::envoy::config::listener::v3 as listener;
use switchyard_protos::envoy::envoy::config::route::v3 as route;
use switchyard_protos::envoy::envoy::extensions::filters::http::router::v3::Router;
use switchyard_protos::envoy::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use switchyard_protos::envoy::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use switchyard_protos::envoy::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use switchyard_protos::envoy::envoy::extensions::upstreams::http::v3 as upstream_http;
use switchyard_protos::envoy::envoy::r#type::matcher::v3 as matcher;
use switchyard_protos::{TypeUrl, pack, wkt};

use super::secret::{TLS_MODE_KEY, TLS_MODE_MTLS, downstream_mtls, inbound_accepts, upstream_mtls};
use super::{RenderOptions, ServiceResources, cluster_name, duration, hostname};
use crate::snapshot::{Resource, ResourceMap};

mod hbone;

pub use hbone::{
    CONNECT_INBOUND, CONNECT_ORIGINATE, CONNECT_TERMINATE, HBONE_PORT, XFCC_FILTER_STATE,
    inbound_name, originate_name,
};

/// How a kind of Envoy API proxy reaches endpoints whose pods terminate Switchyard mTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeshTransport {
    /// The outbound cluster's `tlsMode` transport socket match (the micro-sidecar tunnels
    /// these endpoints over HBONE itself).
    Mtls,
    /// HBONE through Envoy's internal listeners (stock Envoy).
    Hbone,
}

impl MeshTransport {
    /// The transport of a proxy kind.
    pub fn of(kind: switchyard_model::ProxyKind) -> MeshTransport {
        match kind {
            switchyard_model::ProxyKind::Envoy => MeshTransport::Hbone,
            _ => MeshTransport::Mtls,
        }
    }
}

/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound capture port.
pub const INBOUND_PORT: u16 = 15006;
/// Name of the outbound listener.
pub const OUTBOUND_LISTENER: &str = "outbound";
/// Name of the inbound listener.
pub const INBOUND_LISTENER: &str = "inbound";
/// Route configuration for clients that use 15001 as an explicit HTTP proxy.
pub const EXPLICIT_ROUTE: &str = "outbound-http";
/// ORIGINAL_DST cluster for outbound traffic to unknown destinations.
pub const PASSTHROUGH_OUTBOUND: &str = "passthrough-outbound";
/// ORIGINAL_DST cluster for inbound traffic to ports no service targets.
pub const PASSTHROUGH_INBOUND: &str = "passthrough-inbound";

/// Per-service Envoy parts: resources and fragments scopes assemble.
#[derive(Debug)]
pub struct ServiceParts {
    /// One EDS cluster per port.
    pub clusters: Vec<Arc<Resource>>,
    /// The same clusters without the mTLS transport socket match, for proxyless gRPC
    /// clients (they cannot use SDS-fed Envoy TLS contexts; the same `Arc` when a port has
    /// no mTLS endpoints).
    pub plaintext_clusters: Vec<Arc<Resource>>,
    /// One ClusterLoadAssignment per port.
    pub load_assignments: Vec<Arc<Resource>>,
    /// The clusters for [`MeshTransport::Hbone`] (the same `Arc` when a port has no mTLS
    /// endpoints).
    pub hbone_clusters: Vec<Arc<Resource>>,
    /// The ClusterLoadAssignments for [`MeshTransport::Hbone`] (the same `Arc` when a port
    /// has no mTLS endpoints).
    pub hbone_load_assignments: Vec<Arc<Resource>>,
    /// Identities of the mTLS endpoints over all ports.
    pub identities: BTreeSet<SpiffeId>,
    /// HTTP ports: (port, virtual host with FQDN domains, whether it is the service's primary
    /// HTTP port).
    pub vhosts: Vec<(u16, route::VirtualHost, bool)>,
    /// TCP ports: filter chains matched on VIP and port.
    pub tcp_chains: Vec<listener::FilterChain>,
}

/// The ports a service must not use because the proxy listens on them.
fn reserved(port: u16) -> bool {
    port == OUTBOUND_PORT || port == INBOUND_PORT
}

/// Renders a service's parts.
pub fn service_parts(view: &ServiceView, opts: &RenderOptions) -> ServiceParts {
    let svc = &view.service;
    let mut parts = ServiceParts {
        clusters: Vec::new(),
        plaintext_clusters: Vec::new(),
        load_assignments: Vec::new(),
        hbone_clusters: Vec::new(),
        hbone_load_assignments: Vec::new(),
        identities: BTreeSet::new(),
        vhosts: Vec::new(),
        tcp_chains: Vec::new(),
    };
    let primary_http = view
        .ports
        .iter()
        .filter(|p| p.port.protocol.is_http())
        .map(|p| p.port.port)
        .min_by_key(|p| (*p != 80, *p));
    for pv in &view.ports {
        let name = cluster_name(&svc.hostname, pv.port.port);
        let sans = mtls_identities(&pv.endpoints);
        let cluster = Resource::new(
            TypeUrl::Cluster,
            name.as_str(),
            &eds_cluster(&name, pv.port.protocol, svc.limits, &sans, opts),
        );
        parts.plaintext_clusters.push(if sans.is_empty() {
            cluster.clone()
        } else {
            Resource::new(
                TypeUrl::Cluster,
                name.as_str(),
                &eds_cluster(&name, pv.port.protocol, svc.limits, &[], opts),
            )
        });
        let cla = Resource::new(
            TypeUrl::ClusterLoadAssignment,
            name.as_str(),
            &load_assignment(&name, &pv.endpoints),
        );
        if sans.is_empty() {
            parts.hbone_clusters.push(cluster.clone());
            parts.hbone_load_assignments.push(cla.clone());
        } else {
            let mut hbone_cluster = eds_cluster(&name, pv.port.protocol, svc.limits, &[], opts);
            hbone_cluster.transport_socket = Some(hbone::internal_upstream());
            parts.hbone_clusters.push(Resource::new(
                TypeUrl::Cluster,
                name.as_str(),
                &hbone_cluster,
            ));
            parts.hbone_load_assignments.push(Resource::new(
                TypeUrl::ClusterLoadAssignment,
                name.as_str(),
                &load_assignment_for(&name, &pv.endpoints, MeshTransport::Hbone),
            ));
            parts.identities.extend(sans.iter().map(|id| (*id).clone()));
        }
        parts.clusters.push(cluster);
        parts.load_assignments.push(cla);
        if reserved(pv.port.port) {
            continue;
        }
        if pv.port.protocol.is_http() {
            let vh = virtual_host(view, pv, Flavor::Envoy, opts);
            parts
                .vhosts
                .push((pv.port.port, vh, primary_http == Some(pv.port.port)));
        } else if !svc.vips.is_empty() {
            parts.tcp_chains.push(listener::FilterChain {
                name: format!("outbound-tcp|{}|{}", pv.port.port, svc.hostname),
                filter_chain_match: Some(listener::FilterChainMatch {
                    destination_port: Some(wkt::UInt32Value {
                        value: pv.port.port.into(),
                    }),
                    prefix_ranges: svc.vips.iter().map(|ip| cidr(*ip)).collect(),
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_filter(
                    &format!("outbound|{}", pv.port.port),
                    &name,
                )],
                ..Default::default()
            });
        }
    }
    parts
}

/// Whether the client side talks mTLS to `e`: its pod runs a per-pod proxy that terminates
/// Switchyard mTLS on the target port. (Endpoints of ztunnel and eBPF pods are reached over
/// HBONE by those dataplanes; outside the mesh, plaintext.)
fn is_mtls(e: &Endpoint) -> bool {
    e.mode == DataplaneMode::Sidecar && e.identity.is_some()
}

/// Distinct SPIFFE IDs of the mTLS endpoints, sorted.
fn mtls_identities(eps: &[Endpoint]) -> Vec<&SpiffeId> {
    let set: BTreeSet<&SpiffeId> = eps
        .iter()
        .filter(|e| is_mtls(e))
        .filter_map(|e| e.identity.as_ref())
        .collect();
    set.into_iter().collect()
}

/// Which client reads a route: Envoy or a proxyless gRPC library (which supports fewer
/// path matchers and only gRPC status names as retry conditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Envoy,
    Grpc,
}

/// Domains a service port answers to. `bare` adds the port-less forms.
pub(crate) fn domains(view: &ServiceView, port: u16, bare: bool) -> Vec<String> {
    let svc = &view.service;
    let k = &svc.key;
    let mut names = vec![
        svc.hostname.clone(),
        format!("{}.{}.svc", k.name, k.namespace),
        format!("{}.{}", k.name, k.namespace),
    ];
    names.extend(svc.vips.iter().map(|ip| match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }));
    let mut out = Vec::new();
    for n in names {
        out.push(format!("{n}:{port}"));
        if bare {
            out.push(n);
        }
    }
    out
}

/// Short domains (`<name>`, `<name>:<port>`) valid only inside the service's namespace.
fn short_domains(view: &ServiceView, port: u16, bare: bool) -> Vec<String> {
    let n = &view.service.key.name;
    let mut out = vec![format!("{n}:{port}")];
    if bare {
        out.push(n.clone());
    }
    out
}

pub(crate) fn virtual_host(
    view: &ServiceView,
    pv: &PortView,
    flavor: Flavor,
    opts: &RenderOptions,
) -> route::VirtualHost {
    let svc = &view.service;
    let own_cluster = cluster_name(&svc.hostname, pv.port.port);
    let routes = if pv.routes.is_empty() {
        vec![route::Route {
            name: "default".into(),
            r#match: Some(route::RouteMatch {
                path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route::route::Action::Route(route::RouteAction {
                cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                    own_cluster,
                )),
                ..Default::default()
            })),
            ..Default::default()
        }]
    } else {
        rendered_routes(&pv.routes, pv.port.port, flavor, opts)
    };
    route::VirtualHost {
        name: format!("{}:{}", svc.hostname, pv.port.port),
        domains: domains(view, pv.port.port, true),
        routes,
        ..Default::default()
    }
}

/// Gateway API precedence: exact path, then longest prefix, then method, then most headers,
/// then most query parameters; ties go to the older route, then name, then rule order.
fn precedence(
    m: &RouteMatch,
) -> (
    u8,
    std::cmp::Reverse<usize>,
    u8,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
) {
    let (rank, len) = match &m.path {
        Some(StringMatch::Exact(p)) => (0, p.len()),
        Some(StringMatch::Prefix(p)) => (1, p.len()),
        Some(StringMatch::Regex(p)) => (2, p.len()),
        None => (1, 1),
    };
    (
        rank,
        std::cmp::Reverse(len),
        u8::from(m.method.is_none()),
        std::cmp::Reverse(m.headers.len()),
        std::cmp::Reverse(m.query.len()),
    )
}

fn rendered_routes(
    routes: &[Arc<Route>],
    parent_port: u16,
    flavor: Flavor,
    opts: &RenderOptions,
) -> Vec<route::Route> {
    let mut flat = Vec::new();
    for r in routes {
        for (ri, rule) in r.rules.iter().enumerate() {
            let matches = if rule.matches.is_empty() {
                vec![RouteMatch {
                    path: Some(StringMatch::Prefix("/".into())),
                    ..Default::default()
                }]
            } else {
                rule.matches.clone()
            };
            for (mi, m) in matches.into_iter().enumerate() {
                flat.push((precedence(&m), r.order, r.key.clone(), ri, mi, r.clone(), m));
            }
        }
    }
    flat.sort_by(|a, b| (&a.0, a.1, &a.2, a.3, a.4).cmp(&(&b.0, b.1, &b.2, b.3, b.4)));
    flat.into_iter()
        .map(|(_, _, key, ri, mi, r, m)| {
            let rule = &r.rules[ri];
            route::Route {
                name: format!("{key}#{ri}.{mi}"),
                r#match: Some(route_match(&m, r.kind, flavor)),
                action: Some(route_action(rule, parent_port, flavor, opts)),
                ..Default::default()
            }
        })
        .collect()
}

fn string_matcher(m: &StringMatch) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern;
    matcher::StringMatcher {
        match_pattern: Some(match m {
            StringMatch::Exact(v) => MatchPattern::Exact(v.clone()),
            StringMatch::Prefix(v) => MatchPattern::Prefix(v.clone()),
            StringMatch::Regex(v) => MatchPattern::SafeRegex(regex(v)),
        }),
        ..Default::default()
    }
}

fn regex(r: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

fn route_match(m: &RouteMatch, _kind: RouteKind, flavor: Flavor) -> route::RouteMatch {
    use route::route_match::PathSpecifier;
    let path = match &m.path {
        None => PathSpecifier::Prefix("/".into()),
        Some(StringMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(StringMatch::Regex(p)) => PathSpecifier::SafeRegex(regex(p)),
        Some(StringMatch::Prefix(p)) => {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                PathSpecifier::Prefix("/".into())
            } else if flavor == Flavor::Grpc || p.ends_with('/') {
                // gRPC libraries lack path_separated_prefix; a prefix ending in '/' already
                // matches whole segments only.
                PathSpecifier::Prefix(p.clone())
            } else {
                PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
            }
        }
    };
    let mut headers: Vec<route::HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| route::HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(&h.value),
            )),
            ..Default::default()
        })
        .collect();
    if let Some(method) = &m.method {
        headers.push(route::HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(&StringMatch::Exact(method.clone())),
            )),
            ..Default::default()
        });
    }
    route::RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters: m
            .query
            .iter()
            .map(|q| route::QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(
                    route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(&q.value),
                    ),
                ),
            })
            .collect(),
        ..Default::default()
    }
}

fn route_action(
    rule: &switchyard_model::RouteRule,
    parent_port: u16,
    flavor: Flavor,
    opts: &RenderOptions,
) -> route::route::Action {
    use route::route_action::ClusterSpecifier;
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        // Gateway API: a rule with no usable backend answers 500.
        return route::route::Action::DirectResponse(route::DirectResponseAction {
            status: 500,
            ..Default::default()
        });
    }
    let names: Vec<(String, u32)> = rule
        .backends
        .iter()
        .map(|b| {
            (
                cluster_name(
                    &hostname(&b.service, &opts.cluster_domain),
                    b.port.unwrap_or(parent_port),
                ),
                b.weight,
            )
        })
        .collect();
    let nonzero: Vec<&(String, u32)> = names.iter().filter(|(_, w)| *w > 0).collect();
    let spec = if nonzero.len() == 1 {
        ClusterSpecifier::Cluster(nonzero[0].0.clone())
    } else {
        ClusterSpecifier::WeightedClusters(route::WeightedCluster {
            clusters: names
                .iter()
                .map(|(n, w)| route::weighted_cluster::ClusterWeight {
                    name: n.clone(),
                    weight: Some(wkt::UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let mut action = route::RouteAction {
        cluster_specifier: Some(spec),
        ..Default::default()
    };
    if let Some(t) = rule.timeout {
        action.timeout = Some(duration(t));
        if flavor == Flavor::Grpc {
            action.max_stream_duration = Some(route::route_action::MaxStreamDuration {
                max_stream_duration: Some(duration(t)),
                ..Default::default()
            });
        }
    }
    if let Some(retry) = &rule.retry
        && retry.attempts > 0
    {
        let retry_on = match flavor {
            Flavor::Grpc => "unavailable,cancelled".to_string(),
            Flavor::Envoy if !retry.codes.is_empty() => {
                "retriable-status-codes,connect-failure,refused-stream,reset".to_string()
            }
            Flavor::Envoy => "5xx,connect-failure,refused-stream,reset".to_string(),
        };
        action.retry_policy = Some(route::RetryPolicy {
            retry_on,
            num_retries: Some(wkt::UInt32Value {
                value: retry.attempts,
            }),
            per_try_timeout: retry.per_try_timeout.map(duration),
            retriable_status_codes: if flavor == Flavor::Envoy {
                retry.codes.iter().map(|c| u32::from(*c)).collect()
            } else {
                Vec::new()
            },
            retry_back_off: retry.backoff.map(|b| route::retry_policy::RetryBackOff {
                base_interval: Some(duration(b)),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    route::route::Action::Route(action)
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn http2_options() -> std::collections::HashMap<String, wkt::Any> {
    let opts = upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(
            upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                upstream_http::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    // One entry only: a map with several entries would encode in random order and break
    // content-hash versions.
    std::collections::HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        pack(&opts),
    )])
}

/// The service's connection limits as the cluster's default-priority thresholds; `None`
/// when none is set (the proxy's defaults apply).
fn circuit_breakers(limits: ConnectionLimits) -> Option<cluster::CircuitBreakers> {
    if limits.is_empty() {
        return None;
    }
    let value = |v: Option<u32>| v.map(|value| wkt::UInt32Value { value });
    Some(cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            priority: core::RoutingPriority::Default as i32,
            max_connections: value(limits.max_connections),
            max_pending_requests: value(limits.max_pending_requests),
            max_requests: value(limits.max_requests),
            max_retries: value(limits.max_retries),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn eds_cluster(
    name: &str,
    protocol: AppProtocol,
    limits: ConnectionLimits,
    sans: &[&SpiffeId],
    opts: &RenderOptions,
) -> cluster::Cluster {
    cluster::Cluster {
        circuit_breakers: circuit_breakers(limits),
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(duration(opts.connect_timeout)),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        common_lb_config: Some(cluster::cluster::CommonLbConfig {
            locality_config_specifier: Some(
                cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    Default::default(),
                ),
            ),
            ..Default::default()
        }),
        typed_extension_protocol_options: if protocol.is_http2() {
            http2_options()
        } else {
            Default::default()
        },
        transport_socket_matches: if sans.is_empty() {
            Vec::new()
        } else {
            vec![cluster::cluster::TransportSocketMatch {
                name: "mtls".into(),
                r#match: Some(tls_mode_struct()),
                transport_socket: Some(upstream_mtls(sans, protocol.is_http2())),
            }]
        },
        ..Default::default()
    }
}

fn tls_mode_struct() -> wkt::Struct {
    wkt::Struct {
        fields: std::collections::HashMap::from([(
            TLS_MODE_KEY.to_string(),
            wkt::Value {
                kind: Some(wkt::value::Kind::StringValue(TLS_MODE_MTLS.into())),
            },
        )]),
    }
}

fn static_cluster(
    name: &str,
    ip: IpAddr,
    port: u16,
    protocol: AppProtocol,
    opts: &RenderOptions,
) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(opts.connect_timeout)),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(ip, port, true, None)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: if protocol.is_http2() {
            http2_options()
        } else {
            Default::default()
        },
        ..Default::default()
    }
}

fn original_dst_cluster(name: &str, opts: &RenderOptions) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(duration(opts.connect_timeout)),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    }
}

pub(crate) fn socket_address(ip: IpAddr, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

fn health_status(healthy: bool) -> i32 {
    if healthy {
        core::HealthStatus::Healthy as i32
    } else {
        core::HealthStatus::Unhealthy as i32
    }
}

/// EDS endpoint typed metadata key of the endpoint's SPIFFE ID (mTLS endpoints), a packed
/// `google.protobuf.StringValue`, so a client proxy can expect exactly that identity rather
/// than any of the service's. Typed metadata, not a second `filter_metadata` key: protobuf
/// maps encode in hash order, and a one-key map keeps the content-hash version stable.
pub const ENDPOINT_IDENTITY_METADATA: &str = "switchyard.io/identity";

/// An endpoint; `identity` (mTLS endpoints) selects the cluster's mTLS socket and names the
/// peer to expect.
fn lb_endpoint(
    ip: IpAddr,
    port: u16,
    healthy: bool,
    identity: Option<&SpiffeId>,
) -> endpoint::LbEndpoint {
    endpoint::LbEndpoint {
        metadata: identity.map(|id| core::Metadata {
            filter_metadata: std::collections::HashMap::from([(
                "envoy.transport_socket_match".to_string(),
                tls_mode_struct(),
            )]),
            typed_filter_metadata: std::collections::HashMap::from([(
                ENDPOINT_IDENTITY_METADATA.to_string(),
                pack(&wkt::StringValue {
                    value: id.to_string(),
                }),
            )]),
        }),
        health_status: health_status(healthy),
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(socket_address(ip, port)),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// Endpoints grouped by locality; each locality weighs as many as its healthy endpoints
/// (at least 1, which Envoy and gRPC both require).
pub(crate) fn load_assignment(name: &str, eps: &[Endpoint]) -> endpoint::ClusterLoadAssignment {
    load_assignment_for(name, eps, MeshTransport::Mtls)
}

/// [`load_assignment`] with the mTLS endpoints in the shape `transport` needs.
fn load_assignment_for(
    name: &str,
    eps: &[Endpoint],
    transport: MeshTransport,
) -> endpoint::ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&Locality, Vec<&Endpoint>> = BTreeMap::new();
    for e in eps {
        by_locality.entry(&e.locality).or_default().push(e);
    }
    endpoint::ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(loc, list)| {
                let healthy = list.iter().filter(|e| e.healthy).count() as u32;
                endpoint::LocalityLbEndpoints {
                    locality: Some(core::Locality {
                        region: loc.region.clone(),
                        zone: loc.zone.clone(),
                        sub_zone: loc.subzone.clone(),
                    }),
                    lb_endpoints: list
                        .iter()
                        .map(|e| match (transport, &e.identity) {
                            (MeshTransport::Hbone, Some(id)) if is_mtls(e) => {
                                hbone::lb_endpoint(e.ip, e.port, id, health_status(e.healthy))
                            }
                            _ => lb_endpoint(
                                e.ip,
                                e.port,
                                e.healthy,
                                e.identity.as_ref().filter(|_| is_mtls(e)),
                            ),
                        })
                        .collect(),
                    load_balancing_weight: Some(wkt::UInt32Value {
                        value: healthy.max(1),
                    }),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

fn cidr(ip: IpAddr) -> core::CidrRange {
    core::CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(wkt::UInt32Value {
            value: if ip.is_ipv4() { 32 } else { 128 },
        }),
    }
}

fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..Default::default()
    }
}

fn hcm_filter(
    stat_prefix: &str,
    route: hcm::http_connection_manager::RouteSpecifier,
) -> listener::Filter {
    hcm_filter_xfcc(stat_prefix, route, false, Vec::new())
}

/// An HCM; with `peer_cert`, the caller's SPIFFE ID (from its client certificate) is set in
/// `x-forwarded-client-cert`; otherwise whatever the client sent there is removed (SANITIZE).
/// `filters` go before the router.
fn hcm_filter_xfcc(
    stat_prefix: &str,
    route: hcm::http_connection_manager::RouteSpecifier,
    peer_cert: bool,
    mut filters: Vec<hcm::HttpFilter>,
) -> listener::Filter {
    filters.push(router_filter());
    let cfg = hcm::HttpConnectionManager {
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
        stat_prefix: stat_prefix.to_string(),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        http_filters: filters,
        route_specifier: Some(route),
        normalize_path: Some(wkt::BoolValue { value: true }),
        ..Default::default()
    };
    listener::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pack(&cfg))),
    }
}

fn rds(name: &str) -> hcm::http_connection_manager::RouteSpecifier {
    hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
        config_source: Some(ads()),
        route_config_name: name.to_string(),
    })
}

fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> listener::Filter {
    let cfg = tcp::TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.to_string(),
        )),
        ..Default::default()
    };
    listener::Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pack(&cfg))),
    }
}

fn original_dst_filter() -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pack(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

fn tls_inspector_filter() -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pack(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The route of an inbound HTTP port: everything to the local app.
fn inbound_route(name: &str) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![route::VirtualHost {
            name: name.to_string(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        name.to_string(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn port_match(port: u16) -> Option<listener::FilterChainMatch> {
    Some(listener::FilterChainMatch {
        destination_port: Some(wkt::UInt32Value { value: port.into() }),
        ..Default::default()
    })
}

/// Scope-wide CDS, EDS and RDS maps; with [`MeshTransport::Hbone`] also LDS (the
/// `connect_originate|<id>` internal listeners).
pub fn scope_maps(
    scope: &Scope,
    services: &[(Arc<ServiceView>, Arc<ServiceResources>)],
    opts: &RenderOptions,
    transport: MeshTransport,
) -> BTreeMap<TypeUrl, Arc<ResourceMap>> {
    let parts: Vec<(&Arc<ServiceView>, &ServiceParts)> = services
        .iter()
        .map(|(v, r)| (v, r.envoy.get_or_init(|| service_parts(v, opts))))
        .collect();
    let hbone = transport == MeshTransport::Hbone;
    let mut clusters: Vec<Arc<Resource>> = parts
        .iter()
        .flat_map(|(_, p)| {
            if hbone {
                p.hbone_clusters.iter().cloned()
            } else {
                p.clusters.iter().cloned()
            }
        })
        .collect();
    let mut tunnel_listeners = Vec::new();
    if hbone {
        let identities: BTreeSet<&SpiffeId> = parts
            .iter()
            .flat_map(|(_, p)| p.identities.iter())
            .collect();
        for id in identities {
            let name = originate_name(id);
            clusters.push(Resource::new(
                TypeUrl::Cluster,
                name.as_str(),
                &hbone::originate_cluster(id, opts),
            ));
            tunnel_listeners.push(Resource::new(
                TypeUrl::Listener,
                name.as_str(),
                &hbone::originate_listener(id),
            ));
        }
    }
    clusters.push(Resource::new(
        TypeUrl::Cluster,
        PASSTHROUGH_OUTBOUND,
        &original_dst_cluster(PASSTHROUGH_OUTBOUND, opts),
    ));
    clusters.push(Resource::new(
        TypeUrl::Cluster,
        PASSTHROUGH_INBOUND,
        &original_dst_cluster(PASSTHROUGH_INBOUND, opts),
    ));
    let clas = parts.iter().flat_map(|(_, p)| {
        if hbone {
            p.hbone_load_assignments.iter().cloned()
        } else {
            p.load_assignments.iter().cloned()
        }
    });

    let namespace = match &scope.key {
        switchyard_model::ScopeKey::Namespace(ns) => Some(ns.as_str()),
        switchyard_model::ScopeKey::NodeAgents => None,
    };
    let mut by_port: BTreeMap<u16, Vec<route::VirtualHost>> = BTreeMap::new();
    let mut explicit = Vec::new();
    for (view, p) in &parts {
        let local = namespace == Some(view.service.key.namespace.as_str());
        for (port, vh, primary) in &p.vhosts {
            let mut per_port = vh.clone();
            let mut all = vh.clone();
            all.domains = domains(view, *port, *primary);
            if local {
                per_port.domains.extend(short_domains(view, *port, true));
                all.domains.extend(short_domains(view, *port, *primary));
            }
            by_port.entry(*port).or_default().push(per_port);
            explicit.push(all);
        }
    }
    let mut routes: Vec<Arc<Resource>> = by_port
        .into_iter()
        .map(|(port, vhosts)| {
            let name = port.to_string();
            Resource::new(
                TypeUrl::RouteConfiguration,
                name.as_str(),
                &route::RouteConfiguration {
                    name: name.clone(),
                    virtual_hosts: vhosts,
                    ..Default::default()
                },
            )
        })
        .collect();
    routes.push(Resource::new(
        TypeUrl::RouteConfiguration,
        EXPLICIT_ROUTE,
        &route::RouteConfiguration {
            name: EXPLICIT_ROUTE.into(),
            virtual_hosts: explicit,
            ..Default::default()
        },
    ));
    let mut maps = BTreeMap::from([
        (TypeUrl::Cluster, Arc::new(ResourceMap::new(clusters))),
        (
            TypeUrl::ClusterLoadAssignment,
            Arc::new(ResourceMap::new(clas)),
        ),
        (
            TypeUrl::RouteConfiguration,
            Arc::new(ResourceMap::new(routes)),
        ),
    ]);
    if hbone {
        maps.insert(
            TypeUrl::Listener,
            Arc::new(ResourceMap::new(tunnel_listeners)),
        );
    }
    maps
}

/// The `outbound` listener of a scope, bound to `listen`.
pub fn outbound_listener(
    services: &[(Arc<ServiceView>, Arc<ServiceResources>)],
    listen: IpAddr,
    opts: &RenderOptions,
) -> Arc<Resource> {
    let mut http_ports = BTreeSet::new();
    let mut chains = Vec::new();
    for (v, r) in services {
        let p = r.envoy.get_or_init(|| service_parts(v, opts));
        http_ports.extend(p.vhosts.iter().map(|(port, _, _)| *port));
        chains.extend(p.tcp_chains.iter().cloned());
    }
    for port in http_ports {
        chains.push(listener::FilterChain {
            name: format!("outbound-http|{port}"),
            filter_chain_match: port_match(port),
            filters: vec![hcm_filter(
                &format!("outbound_{port}"),
                rds(&port.to_string()),
            )],
            ..Default::default()
        });
    }
    chains.push(listener::FilterChain {
        name: "outbound-explicit".into(),
        filter_chain_match: port_match(OUTBOUND_PORT),
        filters: vec![hcm_filter("outbound_explicit", rds(EXPLICIT_ROUTE))],
        ..Default::default()
    });
    let l = listener::Listener {
        name: OUTBOUND_LISTENER.into(),
        address: Some(socket_address(listen, OUTBOUND_PORT)),
        listener_filters: vec![original_dst_filter()],
        filter_chains: chains,
        default_filter_chain: Some(listener::FilterChain {
            name: "outbound-passthrough".into(),
            filters: vec![tcp_proxy_filter(
                "outbound_passthrough",
                PASSTHROUGH_OUTBOUND,
            )],
            ..Default::default()
        }),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    Resource::new(TypeUrl::Listener, OUTBOUND_LISTENER, &l)
}

/// The proxy's own resources: the `inbound` listener and its clusters; with
/// [`MeshTransport::Hbone`] also `connect_terminate` and the `connect_inbound|<port>`
/// listeners and clusters.
pub fn own_maps(
    view: &ProxyView,
    listen: IpAddr,
    opts: &RenderOptions,
    transport: MeshTransport,
) -> BTreeMap<TypeUrl, Arc<ResourceMap>> {
    let local: IpAddr = if listen.is_ipv6() {
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    };
    let mut clusters = Vec::new();
    let mut chains = Vec::new();
    for p in view.inbound.iter().filter(|p| !reserved(p.port)) {
        let name = format!("inbound|{}||", p.port);
        clusters.push(Resource::new(
            TypeUrl::Cluster,
            name.as_str(),
            &static_cluster(&name, local, p.port, p.protocol, opts),
        ));
        // Authorization policies: RBAC filters before the HCM's router or the TCP proxy.
        let filters = |tls: bool| {
            if p.protocol.is_http() {
                vec![hcm_filter_xfcc(
                    &format!("inbound_{}", p.port),
                    hcm::http_connection_manager::RouteSpecifier::RouteConfig(inbound_route(&name)),
                    tls,
                    super::rbac::http_filters(&view.policies, p.port, &view.trust_domain),
                )]
            } else {
                let mut f =
                    super::rbac::network_filters(&view.policies, p.port, &view.trust_domain);
                f.push(tcp_proxy_filter(&format!("inbound_{}", p.port), &name));
                f
            }
        };
        let (mtls, plaintext) = inbound_accepts(p.mtls);
        if mtls {
            chains.push(listener::FilterChain {
                name: format!("inbound-mtls|{}", p.port),
                filter_chain_match: Some(listener::FilterChainMatch {
                    destination_port: Some(wkt::UInt32Value {
                        value: p.port.into(),
                    }),
                    // STRICT: every connection to the port must be TLS.
                    transport_protocol: if plaintext {
                        "tls".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }),
                filters: filters(true),
                transport_socket: Some(downstream_mtls()),
                ..Default::default()
            });
        }
        if plaintext {
            chains.push(listener::FilterChain {
                name: format!("inbound|{}", p.port),
                filter_chain_match: port_match(p.port),
                filters: filters(false),
                ..Default::default()
            });
        }
    }
    let l = listener::Listener {
        name: INBOUND_LISTENER.into(),
        address: Some(socket_address(listen, INBOUND_PORT)),
        listener_filters: vec![original_dst_filter(), tls_inspector_filter()],
        filter_chains: chains,
        default_filter_chain: Some(listener::FilterChain {
            name: "inbound-passthrough".into(),
            filters: vec![tcp_proxy_filter("inbound_passthrough", PASSTHROUGH_INBOUND)],
            ..Default::default()
        }),
        traffic_direction: core::TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    let mut listeners = vec![Resource::new(TypeUrl::Listener, INBOUND_LISTENER, &l)];
    let hbone_ports: Vec<&switchyard_model::view::InboundPort> = view
        .inbound
        .iter()
        .filter(|p| !reserved(p.port) && p.port != HBONE_PORT)
        .collect();
    // No port to serve, no 15008 listener: its TLS context would make Envoy wait for an
    // SDS `default` that a proxy without a workload may have no agent for.
    if transport == MeshTransport::Hbone && !hbone_ports.is_empty() {
        let t = hbone::terminate(
            &hbone_ports,
            view.proxy.ip,
            listen,
            &view.policies,
            &view.trust_domain,
            opts,
        );
        listeners.extend(
            t.listeners
                .iter()
                .map(|l| Resource::new(TypeUrl::Listener, l.name.as_str(), l)),
        );
        clusters.extend(
            t.clusters
                .iter()
                .map(|c| Resource::new(TypeUrl::Cluster, c.name.as_str(), c)),
        );
    }
    BTreeMap::from([
        (TypeUrl::Listener, Arc::new(ResourceMap::new(listeners))),
        (TypeUrl::Cluster, Arc::new(ResourceMap::new(clusters))),
    ])
}
