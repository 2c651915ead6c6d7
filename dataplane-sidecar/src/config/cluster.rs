//! Clusters (CDS): how to find a cluster's endpoints, balance over them, bound them, and
//! which of them are reached over mTLS (HBONE) with which identities.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_model::SpiffeId;
use switchyard_protos::envoy::envoy::config::cluster::v3 as pb;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::extensions::upstreams::http::v3 as upstream_http;

use super::endpoint::{self, LoadAssignment, struct_string};
use super::error::{At, FieldError, duration_or, reject_rest, unpack};
use super::tls::{self, UpstreamMtls};

/// Envoy's default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default healthy panic threshold (percent).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;
/// The one typed protocol option the sidecar reads.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Name (`outbound|<port>||<host>`, `inbound|<port>||`, `passthrough-*`).
    pub name: String,
    /// Where endpoints come from.
    pub discovery: Discovery,
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Endpoint selection.
    pub lb_policy: LbPolicy,
    /// Whether localities are picked by their weights first (locality-weighted balancing).
    pub locality_weighted: bool,
    /// Below this percentage of healthy endpoints, unhealthy ones are used too.
    pub healthy_panic_threshold: f64,
    /// Protocol to the upstream app for HTTP traffic.
    pub protocol: UpstreamProtocol,
    /// Limits (default priority).
    pub circuit_breakers: CircuitBreakers,
    /// mTLS per endpoint.
    pub transport: TransportPolicy,
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// EDS over the same ADS stream, under this service name.
    Eds {
        /// The ClusterLoadAssignment name.
        service_name: String,
    },
    /// Endpoints given in the cluster.
    Static(Arc<LoadAssignment>),
    /// The connection's original destination (passthrough).
    OriginalDst,
}

/// Endpoint selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Least outstanding requests (power of two choices).
    LeastRequest,
    /// Random.
    Random,
    /// The cluster decides (original destination).
    ClusterProvided,
}

/// The protocol to the upstream app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 (gRPC and `http2` app protocols).
    Http2,
    /// Whatever the downstream spoke.
    UseDownstream,
}

/// Circuit-breaker thresholds of the default priority (Envoy's defaults when not set, but
/// for `max_retries`).
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakers {
    /// Connections to the cluster.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight. Unset: unlimited, because the sidecar always bounds retries with
    /// its retry budget, and Envoy ignores `max_retries` when a budget is in use (Envoy's
    /// own default without a budget is 3).
    pub max_retries: u32,
    /// Retry budget, which replaces `max_retries` when set.
    pub retry_budget: Option<RetryBudget>,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: u32::MAX,
            retry_budget: None,
        }
    }
}

/// Retries allowed as a share of active requests.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    /// Percent of active requests (default 20).
    pub budget_percent: f64,
    /// Retries always allowed (default 3).
    pub min_retry_concurrency: u32,
}

/// Which endpoints are reached over mTLS (the sidecar: HBONE) and with which identities.
/// Envoy semantics: the first match whose fields all equal the endpoint's
/// `envoy.transport_socket_match` metadata wins; no match: the cluster's default socket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransportPolicy {
    /// Matches in order.
    pub matches: Vec<TransportMatch>,
    /// The cluster's own transport socket: `None` is plaintext.
    pub default: Option<Arc<UpstreamMtls>>,
}

/// One transport socket match.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportMatch {
    /// Name (`mtls`).
    pub name: String,
    /// Metadata fields that must all be equal (empty matches every endpoint).
    pub criteria: BTreeMap<String, String>,
    /// mTLS config; `None`: plaintext.
    pub mtls: Option<Arc<UpstreamMtls>>,
}

impl Cluster {
    /// The EDS name to subscribe to, for EDS clusters.
    pub fn eds_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }

    /// Whether the cluster forwards to the original destination.
    pub fn is_passthrough(&self) -> bool {
        self.discovery == Discovery::OriginalDst
    }

    /// The mTLS config for an endpoint with `metadata` (its transport socket match fields);
    /// `None`: plaintext.
    pub fn mtls_for(&self, metadata: &BTreeMap<String, String>) -> Option<&Arc<UpstreamMtls>> {
        let hit = self.transport.matches.iter().find(|m| {
            m.criteria
                .iter()
                .all(|(k, v)| metadata.get(k).is_some_and(|x| x == v))
        });
        match hit {
            Some(m) => m.mtls.as_ref(),
            None => self.transport.default.as_ref(),
        }
    }

    /// Every identity some endpoint of the cluster may be verified against.
    pub fn identities(&self) -> Vec<&SpiffeId> {
        let mut ids: Vec<&SpiffeId> = self
            .transport
            .matches
            .iter()
            .filter_map(|m| m.mtls.as_deref())
            .chain(self.transport.default.as_deref())
            .flat_map(|m| m.identities.iter())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Converts a `Cluster`.
pub(crate) fn convert(mut c: pb::Cluster) -> Result<Cluster, FieldError> {
    let name = std::mem::take(&mut c.name);
    if name.is_empty() {
        return Err(FieldError::invalid("name", "empty"));
    }
    use pb::cluster::{ClusterDiscoveryType, DiscoveryType};
    let kind = match c.cluster_discovery_type.take() {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t)
            .map_err(|_| FieldError::invalid("type", format!("unknown value {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            return Err(FieldError::unsupported(
                "cluster_type",
                format!("custom cluster type {:?}", t.name),
            ));
        }
    };
    let eds = c.eds_cluster_config.take();
    let discovery = match kind {
        DiscoveryType::Eds => {
            let eds = eds.unwrap_or_default();
            ads_source(eds.eds_config.as_ref()).at("eds_cluster_config")?;
            let service_name = if eds.service_name.is_empty() {
                name.clone()
            } else {
                eds.service_name
            };
            Discovery::Eds { service_name }
        }
        DiscoveryType::Static => {
            let cla = c.load_assignment.take().unwrap_or_default();
            Discovery::Static(Arc::new(endpoint::convert(cla).at("load_assignment")?))
        }
        DiscoveryType::OriginalDst => {
            // The sidecar's own cleanup of idle original-destination hosts applies.
            c.cleanup_interval = None;
            Discovery::OriginalDst
        }
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            return Err(FieldError::unsupported(
                "type",
                "DNS clusters (the sidecar does not resolve names)",
            ));
        }
    };
    let connect_timeout = duration_or(
        "connect_timeout",
        c.connect_timeout.take().as_ref(),
        DEFAULT_CONNECT_TIMEOUT,
    )?;
    let lb_policy = match pb::cluster::LbPolicy::try_from(std::mem::take(&mut c.lb_policy)) {
        Ok(pb::cluster::LbPolicy::RoundRobin) if discovery == Discovery::OriginalDst => {
            LbPolicy::ClusterProvided
        }
        Ok(pb::cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(pb::cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(pb::cluster::LbPolicy::Random) => LbPolicy::Random,
        Ok(pb::cluster::LbPolicy::ClusterProvided) if discovery == Discovery::OriginalDst => {
            LbPolicy::ClusterProvided
        }
        Ok(pb::cluster::LbPolicy::ClusterProvided) => {
            return Err(FieldError::invalid(
                "lb_policy",
                "CLUSTER_PROVIDED needs an ORIGINAL_DST cluster",
            ));
        }
        Ok(other) => {
            return Err(FieldError::unsupported(
                "lb_policy",
                other.as_str_name().to_string(),
            ));
        }
        Err(_) => return Err(FieldError::invalid("lb_policy", "unknown value")),
    };
    let (locality_weighted, healthy_panic_threshold) = match c.common_lb_config.take() {
        Some(l) => common_lb(l).at("common_lb_config")?,
        None => (false, DEFAULT_PANIC_THRESHOLD),
    };
    let protocol = protocol(std::mem::take(&mut c.typed_extension_protocol_options))?;
    let circuit_breakers = match c.circuit_breakers.take() {
        Some(cb) => circuit_breakers(cb).at("circuit_breakers")?,
        None => CircuitBreakers::default(),
    };
    let mut transport = TransportPolicy::default();
    for (i, m) in std::mem::take(&mut c.transport_socket_matches)
        .into_iter()
        .enumerate()
    {
        transport
            .matches
            .push(transport_match(m).at_index("transport_socket_matches", i)?);
    }
    if let Some(ts) = c.transport_socket.take() {
        transport.default = tls::upstream(&ts).at("transport_socket")?.map(Arc::new);
    }
    if c.outlier_detection.is_some() {
        return Err(FieldError::unsupported(
            "outlier_detection",
            "passive outlier ejection is not implemented yet",
        ));
    }
    // Naming, stats and buffer tuning: no effect on where or how traffic goes.
    c.alt_stat_name.clear();
    c.metadata = None;
    c.per_connection_buffer_limit_bytes = None;
    c.track_cluster_stats = None;
    c.upstream_connection_options = None;
    reject_rest(&c)?;
    Ok(Cluster {
        name,
        discovery,
        connect_timeout,
        lb_policy,
        locality_weighted,
        healthy_panic_threshold,
        protocol,
        circuit_breakers,
        transport,
    })
}

/// Config sources other than ADS (or "self") cannot be followed.
pub(crate) fn ads_source(s: Option<&core::ConfigSource>) -> Result<(), FieldError> {
    use core::config_source::ConfigSourceSpecifier;
    match s.and_then(|s| s.config_source_specifier.as_ref()) {
        None | Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_)) => {
            Ok(())
        }
        Some(_) => Err(FieldError::unsupported(
            "config_source",
            "config sources other than ADS",
        )),
    }
}

fn common_lb(mut l: pb::cluster::CommonLbConfig) -> Result<(bool, f64), FieldError> {
    use pb::cluster::common_lb_config::LocalityConfigSpecifier;
    let weighted = match l.locality_config_specifier.take() {
        None => false,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => true,
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
            return Err(FieldError::unsupported(
                "zone_aware_lb_config",
                "zone-aware balancing",
            ));
        }
    };
    let panic = match l.healthy_panic_threshold.take() {
        Some(p) if !(0.0..=100.0).contains(&p.value) => {
            return Err(FieldError::invalid(
                "healthy_panic_threshold",
                format!("{} is not a percentage", p.value),
            ));
        }
        Some(p) => p.value,
        None => DEFAULT_PANIC_THRESHOLD,
    };
    // Batching of host updates: the sidecar applies updates as they come.
    l.update_merge_window = None;
    reject_rest(&l)?;
    Ok((weighted, panic))
}

fn protocol(
    opts: std::collections::HashMap<String, switchyard_protos::wkt::Any>,
) -> Result<UpstreamProtocol, FieldError> {
    use upstream_http::http_protocol_options::UpstreamProtocolOptions;
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
    let mut protocol = UpstreamProtocol::Http1;
    for (key, any) in opts {
        let field = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_PROTOCOL_OPTIONS {
            return Err(FieldError::unsupported(field, "protocol options extension"));
        }
        let mut o: upstream_http::HttpProtocolOptions = unpack(&field, &any)?;
        protocol = match o.upstream_protocol_options.take() {
            None => UpstreamProtocol::Http1,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                None | Some(ProtocolConfig::HttpProtocolOptions(_)) => UpstreamProtocol::Http1,
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    reject_rest(&h2).at("http2_protocol_options").at(&field)?;
                    UpstreamProtocol::Http2
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(FieldError::unsupported("http3_protocol_options", "HTTP/3"))
                        .at(&field);
                }
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
                UpstreamProtocol::UseDownstream
            }
            Some(UpstreamProtocolOptions::AutoConfig(_)) => {
                return Err(FieldError::unsupported(
                    "auto_config",
                    "ALPN-negotiated upstream protocol",
                ))
                .at(&field);
            }
        };
        reject_rest(&o).at(&field)?;
    }
    Ok(protocol)
}

fn circuit_breakers(mut cb: pb::CircuitBreakers) -> Result<CircuitBreakers, FieldError> {
    let mut out = CircuitBreakers::default();
    for (i, mut t) in std::mem::take(&mut cb.thresholds).into_iter().enumerate() {
        // HIGH-priority thresholds apply to routes of priority HIGH, which the sidecar
        // rejects; they are not needed.
        if t.priority != core::RoutingPriority::Default as i32 {
            continue;
        }
        let set = |v: Option<switchyard_protos::wkt::UInt32Value>, d: u32| v.map_or(d, |v| v.value);
        out.max_connections = set(t.max_connections.take(), out.max_connections);
        out.max_pending_requests = set(t.max_pending_requests.take(), out.max_pending_requests);
        out.max_requests = set(t.max_requests.take(), out.max_requests);
        out.max_retries = set(t.max_retries.take(), out.max_retries);
        if let Some(mut b) = t.retry_budget.take() {
            let budget_percent = b.budget_percent.take().map_or(20.0, |p| p.value);
            let min_retry_concurrency = b.min_retry_concurrency.take().map_or(3, |v| v.value);
            reject_rest(&b)
                .at("retry_budget")
                .at_index("thresholds", i)?;
            out.retry_budget = Some(RetryBudget {
                budget_percent,
                min_retry_concurrency,
            });
        }
        t.priority = 0;
        t.track_remaining = false;
        reject_rest(&t).at_index("thresholds", i)?;
    }
    reject_rest(&cb)?;
    Ok(out)
}

fn transport_match(m: pb::cluster::TransportSocketMatch) -> Result<TransportMatch, FieldError> {
    let mut criteria = BTreeMap::new();
    if let Some(s) = &m.r#match {
        for (k, v) in &s.fields {
            criteria.insert(k.clone(), struct_string(v).at(k).at("match")?);
        }
    }
    let mtls = match &m.transport_socket {
        Some(ts) => tls::upstream(ts).at("transport_socket")?.map(Arc::new),
        None => None,
    };
    Ok(TransportMatch {
        name: m.name,
        criteria,
        mtls,
    })
}

#[cfg(test)]
mod tests;
