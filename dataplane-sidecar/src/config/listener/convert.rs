//! `Listener` -> [`Listener`].
//!
//! Supported: the original-destination and TLS-inspector listener filters; chains matched on
//! destination port, destination prefixes and transport protocol; one terminal network filter
//! per chain (HTTP connection manager with only the router filter, or TCP proxy to one
//! cluster); mTLS termination as the renderer writes it. Ignored: stats prefixes, metadata,
//! access logs, buffer limits and listener-filter timeouts. Anything else is rejected.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use switchyard_model::MtlsMode;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::listener::v3 as pb;
use switchyard_protos::envoy::envoy::extensions::filters::http::rbac::v3 as http_rbac_pb;
use switchyard_protos::envoy::envoy::extensions::filters::http::router::v3::Router;
use switchyard_protos::envoy::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use switchyard_protos::envoy::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use switchyard_protos::envoy::envoy::extensions::filters::network::rbac::v3 as network_rbac_pb;
use switchyard_protos::envoy::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;

use super::{
    ChainMatch, ClientCert, Codec, DEFAULT_STREAM_IDLE_TIMEOUT, DEFAULT_TCP_IDLE_TIMEOUT,
    Direction, FilterChain, Handler, HttpHandler, InboundPort, Listener, RouteSource, TcpProxy,
    TransportProtocol,
};
use crate::config::cluster::ads_source;
use crate::config::endpoint::socket_address;
use crate::config::error::{At, FieldError, duration, reject_rest, unpack};
use crate::config::rbac::{self, RbacFilter, RbacLayer};
use crate::config::{route, tls};

/// Converts a `Listener`.
pub(crate) fn convert(mut l: pb::Listener) -> Result<Listener, FieldError> {
    let name = std::mem::take(&mut l.name);
    let address = match l.address.take() {
        Some(a) => socket_address(&a).at("address")?,
        None => return Err(FieldError::invalid("address", "missing")),
    };
    let direction = match core::TrafficDirection::try_from(l.traffic_direction) {
        Ok(core::TrafficDirection::Outbound) => Direction::Outbound,
        Ok(core::TrafficDirection::Inbound) => Direction::Inbound,
        _ => {
            return Err(FieldError::unsupported(
                "traffic_direction",
                "listeners other than the outbound and inbound capture listeners",
            ));
        }
    };
    l.traffic_direction = 0;
    let mut original_dst = l.use_original_dst.take().is_some_and(|b| b.value);
    let mut tls_inspector = false;
    for (i, f) in std::mem::take(&mut l.listener_filters)
        .into_iter()
        .enumerate()
    {
        match listener_filter(f).at_index("listener_filters", i)? {
            ListenerFilter::OriginalDst => original_dst = true,
            ListenerFilter::TlsInspector => tls_inspector = true,
        }
    }
    let mut chains = Vec::with_capacity(l.filter_chains.len());
    for (i, c) in std::mem::take(&mut l.filter_chains).into_iter().enumerate() {
        let chain = filter_chain(c).at_index("filter_chains", i)?;
        if let Some(j) = chains
            .iter()
            .position(|o: &FilterChain| o.matcher == chain.matcher)
        {
            return Err(FieldError::invalid(
                "filter_chain_match",
                format!("same match as filter_chains[{j}]"),
            ))
            .at_index("filter_chains", i);
        }
        if chain.matcher.transport.is_some() && !tls_inspector {
            return Err(FieldError::invalid(
                "transport_protocol",
                "needs the TLS inspector listener filter",
            ))
            .at("filter_chain_match")
            .at_index("filter_chains", i);
        }
        chains.push(chain);
    }
    let default_chain = match l.default_filter_chain.take() {
        Some(c) => Some(filter_chain(c).at("default_filter_chain")?),
        None => None,
    };
    if l.bind_to_port.as_ref().is_some_and(|b| !b.value) {
        return Err(FieldError::unsupported(
            "bind_to_port",
            "listeners that do not bind",
        ));
    }
    l.bind_to_port = None;
    // Naming, logs and tuning.
    l.stat_prefix.clear();
    l.metadata = None;
    l.access_log.clear();
    l.per_connection_buffer_limit_bytes = None;
    l.listener_filters_timeout = None;
    l.continue_on_listener_filters_timeout = false;
    l.tcp_backlog_size = None;
    reject_rest(&l)?;

    let mut by_port: HashMap<Option<u16>, Vec<usize>> = HashMap::new();
    for (i, c) in chains.iter().enumerate() {
        by_port.entry(c.matcher.port).or_default().push(i);
    }
    let inbound = match direction {
        Direction::Inbound => inbound_ports(&chains),
        Direction::Outbound => BTreeMap::new(),
    };
    Ok(Listener {
        name,
        address,
        direction,
        original_dst,
        tls_inspector,
        chains,
        default_chain,
        by_port,
        inbound,
    })
}

enum ListenerFilter {
    OriginalDst,
    TlsInspector,
}

fn listener_filter(f: pb::ListenerFilter) -> Result<ListenerFilter, FieldError> {
    if f.filter_disabled.is_some() {
        return Err(FieldError::unsupported(
            "filter_disabled",
            "conditionally disabled listener filters",
        ));
    }
    let any = match &f.config_type {
        Some(pb::listener_filter::ConfigType::TypedConfig(any)) => any,
        Some(_) => {
            return Err(FieldError::unsupported(
                "config_discovery",
                "listener filters from discovery",
            ));
        }
        None => return Err(FieldError::invalid("typed_config", "missing")),
    };
    if any.type_url == <OriginalDst as prost::Name>::type_url() {
        let _: OriginalDst = unpack("typed_config", any)?;
        Ok(ListenerFilter::OriginalDst)
    } else if any.type_url == <TlsInspector as prost::Name>::type_url() {
        let mut t: TlsInspector = unpack("typed_config", any)?;
        // Fingerprints only feed logs; the buffer size is tuning.
        t.enable_ja3_fingerprinting = None;
        t.enable_ja4_fingerprinting = None;
        t.initial_read_buffer_size = None;
        reject_rest(&t).at("typed_config")?;
        Ok(ListenerFilter::TlsInspector)
    } else {
        Err(FieldError::unsupported(
            "typed_config",
            format!("listener filter {}", any.type_url),
        ))
    }
}

fn filter_chain(mut c: pb::FilterChain) -> Result<FilterChain, FieldError> {
    let name = std::mem::take(&mut c.name);
    let matcher = match c.filter_chain_match.take() {
        Some(m) => chain_match(m).at("filter_chain_match")?,
        None => ChainMatch::default(),
    };
    let tls = match c.transport_socket.take() {
        Some(ts) => tls::downstream(&ts).at("transport_socket")?,
        None => None,
    };
    // Network RBAC filters, then the terminal filter (HCM or TCP proxy).
    let filters = std::mem::take(&mut c.filters);
    let Some((last, before)) = filters.split_last() else {
        return Err(FieldError::invalid("filters", "empty"));
    };
    let mut rbac = Vec::new();
    for (i, f) in before.iter().enumerate() {
        rbac.push(network_rbac(f).at_index("filters", i)?);
    }
    let (handler, http_rbac) = network_filter(last).at_index("filters", before.len())?;
    rbac.extend(http_rbac);
    c.metadata = None;
    c.transport_socket_connect_timeout = None;
    reject_rest(&c)?;
    Ok(FilterChain {
        name,
        matcher,
        tls,
        handler,
        rbac,
    })
}

fn chain_match(mut m: pb::FilterChainMatch) -> Result<ChainMatch, FieldError> {
    let port = match m.destination_port.take() {
        Some(p) => Some(crate::config::error::port("destination_port", p.value)?),
        None => None,
    };
    let mut prefixes = Vec::with_capacity(m.prefix_ranges.len());
    for (i, r) in std::mem::take(&mut m.prefix_ranges).into_iter().enumerate() {
        prefixes.push(cidr(&r).at_index("prefix_ranges", i)?);
    }
    let transport = match std::mem::take(&mut m.transport_protocol).as_str() {
        "" => None,
        "tls" => Some(TransportProtocol::Tls),
        "raw_buffer" => Some(TransportProtocol::RawBuffer),
        other => {
            return Err(FieldError::unsupported(
                "transport_protocol",
                format!("{other:?}"),
            ));
        }
    };
    reject_rest(&m)?;
    Ok(ChainMatch {
        port,
        prefixes,
        transport,
    })
}

fn cidr(r: &core::CidrRange) -> Result<IpNet, FieldError> {
    let ip: IpAddr = r.address_prefix.parse().map_err(|_| {
        FieldError::invalid(
            "address_prefix",
            format!("{:?} is not an IP address", r.address_prefix),
        )
    })?;
    let len = r
        .prefix_len
        .as_ref()
        .map_or(0, |l| l.value)
        .min(u32::from(u8::MAX));
    IpNet::new(ip, len as u8)
        .map(|n| n.trunc())
        .map_err(|e| FieldError::invalid("prefix_len", e.to_string()))
}

/// An `envoy.filters.network.rbac` filter.
fn network_rbac(f: &pb::Filter) -> Result<RbacFilter, FieldError> {
    let Some(pb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(FieldError::unsupported(
            "typed_config",
            "network filters before the terminal one other than RBAC",
        ));
    };
    if any.type_url != <network_rbac_pb::Rbac as prost::Name>::type_url() {
        return Err(FieldError::unsupported(
            "typed_config",
            format!(
                "network filter {} before the terminal one (only RBAC is)",
                any.type_url
            ),
        ));
    }
    let mut r: network_rbac_pb::Rbac = unpack("typed_config", any)?;
    let rules = r.rules.take();
    r.stat_prefix.clear();
    r.shadow_rules_stat_prefix.clear();
    reject_rest(&r).at("typed_config")?;
    rbac::convert(rules, RbacLayer::Connection).at("typed_config")
}

/// The terminal filter, and the HTTP RBAC filters of an HCM.
fn network_filter(f: &pb::Filter) -> Result<(Handler, Vec<RbacFilter>), FieldError> {
    let any = match &f.config_type {
        Some(pb::filter::ConfigType::TypedConfig(any)) => any,
        Some(_) => {
            return Err(FieldError::unsupported(
                "config_discovery",
                "network filters from discovery",
            ));
        }
        None => return Err(FieldError::invalid("typed_config", "missing")),
    };
    if any.type_url == <hcm::HttpConnectionManager as prost::Name>::type_url() {
        let h = unpack("typed_config", any)?;
        let (handler, rbac) = http(h).at("typed_config")?;
        Ok((Handler::Http(handler), rbac))
    } else if any.type_url == <tcp::TcpProxy as prost::Name>::type_url() {
        let t = unpack("typed_config", any)?;
        Ok((Handler::Tcp(tcp_proxy(t).at("typed_config")?), Vec::new()))
    } else {
        Err(FieldError::unsupported(
            "typed_config",
            format!("network filter {}", any.type_url),
        ))
    }
}

fn http(mut h: hcm::HttpConnectionManager) -> Result<(HttpHandler, Vec<RbacFilter>), FieldError> {
    use hcm::http_connection_manager::{
        CodecType, ForwardClientCertDetails as Fwd, RouteSpecifier,
    };
    let stat_prefix = std::mem::take(&mut h.stat_prefix);
    let codec = match CodecType::try_from(std::mem::take(&mut h.codec_type)) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => return Err(FieldError::unsupported("codec_type", "HTTP/3")),
    };
    let mut router = false;
    let mut rbac = Vec::new();
    for (i, f) in std::mem::take(&mut h.http_filters).into_iter().enumerate() {
        match http_filter(f).at_index("http_filters", i)? {
            HttpFilter::Router => router = true,
            HttpFilter::Rbac(r) if !router => rbac.push(r),
            HttpFilter::Rbac(_) => {
                return Err(FieldError::invalid(
                    format!("http_filters[{i}]"),
                    "RBAC after the router never runs",
                ));
            }
            HttpFilter::Skipped => {}
        }
    }
    if !router {
        return Err(FieldError::invalid("http_filters", "no router filter"));
    }
    let routes = match h.route_specifier.take() {
        Some(RouteSpecifier::Rds(rds)) => {
            ads_source(rds.config_source.as_ref()).at("rds")?;
            if rds.route_config_name.is_empty() {
                return Err(FieldError::invalid("rds.route_config_name", "empty"));
            }
            RouteSource::Rds(rds.route_config_name)
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(Arc::new(route::convert(rc).at("route_config")?))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(FieldError::unsupported("scoped_routes", "scoped routes"));
        }
        None => return Err(FieldError::invalid("route_specifier", "missing")),
    };
    let details = h.set_current_client_cert_details.take();
    let client_cert = match Fwd::try_from(std::mem::take(&mut h.forward_client_cert_details)) {
        Ok(Fwd::Sanitize) => ClientCert::Sanitize,
        Ok(Fwd::SanitizeSet) => {
            let d = details.unwrap_or_default();
            let uri = d.uri;
            reject_rest(&hcm::http_connection_manager::SetCurrentClientCertDetails {
                uri: false,
                ..d
            })
            .at("set_current_client_cert_details")?;
            ClientCert::SanitizeSet { uri }
        }
        _ => {
            return Err(FieldError::unsupported(
                "forward_client_cert_details",
                "forwarding client certificate details the sidecar did not verify",
            ));
        }
    };
    let normalize_path = h.normalize_path.take().is_some_and(|b| b.value);
    let stream_idle_timeout = match h.stream_idle_timeout.take() {
        None => Some(DEFAULT_STREAM_IDLE_TIMEOUT),
        Some(d) => Some(duration("stream_idle_timeout", &d)?).filter(|d| !d.is_zero()),
    };
    // Logs, tracing and request ids: observability only.
    h.access_log.clear();
    h.tracing = None;
    h.generate_request_id = None;
    h.server_name.clear();
    reject_rest(&h)?;
    Ok((
        HttpHandler {
            stat_prefix,
            routes,
            codec,
            normalize_path,
            client_cert,
            stream_idle_timeout,
        },
        rbac,
    ))
}

/// What an HTTP filter is to the sidecar.
enum HttpFilter {
    Router,
    Rbac(RbacFilter),
    /// An optional filter the sidecar does not implement.
    Skipped,
}

/// The router, an RBAC filter, or a skipped optional filter; others are rejected.
#[allow(deprecated)] // start_child_span: tracing only, still valid xDS
fn http_filter(f: hcm::HttpFilter) -> Result<HttpFilter, FieldError> {
    if f.disabled {
        return Err(FieldError::unsupported(
            "disabled",
            "per-route enabled filters",
        ));
    }
    let any = match &f.config_type {
        Some(hcm::http_filter::ConfigType::TypedConfig(any)) => any,
        Some(_) => {
            return Err(FieldError::unsupported(
                "config_discovery",
                "HTTP filters from discovery",
            ));
        }
        None => return Err(FieldError::invalid("typed_config", "missing")),
    };
    if any.type_url == <Router as prost::Name>::type_url() {
        let mut r: Router = unpack("typed_config", any)?;
        r.dynamic_stats = None;
        r.start_child_span = false;
        r.upstream_log.clear();
        r.upstream_log_options = None;
        r.suppress_envoy_headers = false;
        reject_rest(&r).at("typed_config")?;
        return Ok(HttpFilter::Router);
    }
    if any.type_url == <http_rbac_pb::Rbac as prost::Name>::type_url() {
        let mut r: http_rbac_pb::Rbac = unpack("typed_config", any)?;
        let rules = r.rules.take();
        r.rules_stat_prefix.clear();
        r.shadow_rules_stat_prefix.clear();
        reject_rest(&r).at("typed_config")?;
        return Ok(HttpFilter::Rbac(
            rbac::convert(rules, RbacLayer::Request).at("typed_config")?,
        ));
    }
    if f.is_optional {
        // Envoy's meaning of optional: skip when not supported.
        return Ok(HttpFilter::Skipped);
    }
    Err(FieldError::unsupported(
        "typed_config",
        format!("HTTP filter {}", any.type_url),
    ))
}

#[allow(deprecated)] // access-log flushing fields: logs only, still valid xDS
fn tcp_proxy(mut t: tcp::TcpProxy) -> Result<TcpProxy, FieldError> {
    let cluster = match t.cluster_specifier.take() {
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => c,
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(_)) => {
            return Err(FieldError::invalid("cluster", "empty"));
        }
        Some(_) => {
            return Err(FieldError::unsupported(
                "weighted_clusters",
                "weighted TCP clusters",
            ));
        }
        None => return Err(FieldError::invalid("cluster_specifier", "missing")),
    };
    let idle_timeout = match t.idle_timeout.take() {
        None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
        Some(d) => Some(duration("idle_timeout", &d)?).filter(|d| !d.is_zero()),
    };
    let stat_prefix = std::mem::take(&mut t.stat_prefix);
    t.access_log.clear();
    t.access_log_flush_interval = None;
    t.flush_access_log_on_connected = false;
    t.access_log_options = None;
    reject_rest(&t)?;
    Ok(TcpProxy {
        stat_prefix,
        cluster,
        idle_timeout,
    })
}

/// Per port: the mTLS mode the chains imply and the local cluster.
fn inbound_ports(chains: &[FilterChain]) -> BTreeMap<u16, InboundPort> {
    #[derive(Default)]
    struct Seen {
        tls: bool,
        plain: bool,
        http: bool,
        clusters: Vec<String>,
        rbac: Vec<RbacFilter>,
        plaintext_rbac: Vec<RbacFilter>,
    }
    let mut seen: BTreeMap<u16, Seen> = BTreeMap::new();
    for c in chains {
        let Some(port) = c.matcher.port else { continue };
        let s = seen.entry(port).or_default();
        if c.tls.is_some() {
            s.tls = true;
            s.rbac.extend(c.rbac.iter().cloned());
        } else {
            s.plain = true;
            s.plaintext_rbac.extend(c.rbac.iter().cloned());
        }
        match &c.handler {
            Handler::Tcp(t) => s.clusters.push(t.cluster.clone()),
            Handler::Http(h) => {
                s.http = true;
                if let RouteSource::Inline(rc) = &h.routes {
                    s.clusters.extend(rc.clusters().map(str::to_string));
                }
            }
        }
    }
    seen.into_iter()
        .map(|(port, mut s)| {
            s.clusters.sort();
            s.clusters.dedup();
            let mode = match (s.tls, s.plain) {
                (true, false) => MtlsMode::Strict,
                (true, true) => MtlsMode::Permissive,
                _ => MtlsMode::Disable,
            };
            let cluster = match s.clusters.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            };
            (
                port,
                InboundPort {
                    port,
                    mode,
                    cluster,
                    http: s.http,
                    rbac: s.rbac,
                    plaintext_rbac: s.plaintext_rbac,
                },
            )
        })
        .collect()
}
