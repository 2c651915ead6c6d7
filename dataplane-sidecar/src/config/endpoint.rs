//! Endpoints (EDS `ClusterLoadAssignment`, and the inline assignment of STATIC clusters).
//!
//! A [`LoadAssignment`] is what EDS sent; each endpoint's transport (plaintext or HBONE with
//! the identities to expect) depends on its cluster's transport socket matches, so it is
//! resolved when a snapshot is assembled ([`LoadAssignment::resolve`]), and the snapshot's
//! [`Endpoints`] carry it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use switchyard_model::{Locality, SpiffeId};
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::endpoint::v3 as pb;
use switchyard_protos::wkt;

use super::cluster::Cluster;
use super::error::{At, FieldError, port, reject_rest};
use super::tls::UpstreamMtls;

/// Metadata namespace whose fields select a cluster's transport socket match.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// Typed endpoint metadata key holding the endpoint's SPIFFE ID (a packed
/// `google.protobuf.StringValue`).
pub const IDENTITY_METADATA: &str = "switchyard.io/identity";

/// Envoy's default overprovisioning factor (percent).
pub const DEFAULT_OVERPROVISIONING: u32 = 140;

/// Health as the control plane reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Unknown: treated as healthy, as in Envoy.
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy: not picked unless the cluster is in panic.
    Unhealthy,
    /// Draining: no new requests.
    Draining,
    /// Health check timed out: unhealthy.
    Timeout,
    /// Degraded: used only when not enough healthy endpoints remain.
    Degraded,
}

impl Health {
    /// Whether the endpoint takes new traffic in normal operation.
    pub fn is_healthy(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy)
    }
}

/// How the data path reaches an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP to the endpoint's address.
    Plaintext,
    /// HBONE: HTTP/2 CONNECT to `<address>` over mTLS to the endpoint's IP on port 15008,
    /// checking the peer against [`UpstreamMtls::expected`].
    Hbone(Arc<UpstreamMtls>),
}

impl Transport {
    /// Whether the endpoint is reached over HBONE.
    pub fn is_hbone(&self) -> bool {
        matches!(self, Transport::Hbone(_))
    }

    /// The endpoint's identity: the one it announced in its metadata, or the cluster's when
    /// the cluster's matcher names exactly one.
    pub fn identity(&self) -> Option<&SpiffeId> {
        match self {
            Transport::Hbone(m) => match m.identities.as_slice() {
                [one] => Some(one),
                _ => None,
            },
            Transport::Plaintext => None,
        }
    }
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where the app listens.
    pub address: SocketAddr,
    /// Relative weight within its locality (at least 1).
    pub weight: u32,
    /// Health.
    pub health: Health,
    /// Hostname, if the control plane sent one.
    pub hostname: String,
    /// The endpoint's `envoy.transport_socket_match` metadata (string fields), which selects
    /// the cluster's transport socket.
    pub socket_match: Arc<BTreeMap<String, String>>,
    /// The endpoint's own SPIFFE ID ([`IDENTITY_METADATA`]), if sent.
    pub identity: Option<SpiffeId>,
    /// How to reach it: resolved against the cluster in a snapshot; [`Transport::Plaintext`]
    /// in a bare [`LoadAssignment`].
    pub transport: Transport,
}

/// Endpoints of one locality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityEndpoints {
    /// Region / zone / sub-zone.
    pub locality: Locality,
    /// Locality weight (locality-weighted balancing); `None`: not weighted (such a locality
    /// gets no traffic when the cluster balances by locality, as in Envoy).
    pub weight: Option<u32>,
    /// Priority (0 is highest).
    pub priority: u32,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A cluster's endpoints as EDS sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadAssignment {
    /// The EDS service name (the cluster's name unless the cluster says otherwise).
    pub name: String,
    /// Endpoints by locality.
    pub localities: Vec<LocalityEndpoints>,
    /// Overprovisioning factor in percent (priority and locality spill-over).
    pub overprovisioning_factor: u32,
}

/// A cluster's endpoints with their transports resolved, as a snapshot serves them.
pub type Endpoints = LoadAssignment;

impl LoadAssignment {
    /// Every endpoint with its locality.
    pub fn iter(&self) -> impl Iterator<Item = (&LocalityEndpoints, &Endpoint)> {
        self.localities
            .iter()
            .flat_map(|l| l.endpoints.iter().map(move |e| (l, e)))
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.localities.iter().map(|l| l.endpoints.len()).sum()
    }

    /// Whether there is no endpoint (an explicitly empty assignment).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy whose endpoints carry the transport `cluster` selects for them.
    pub fn resolve(&self, cluster: &Cluster) -> Endpoints {
        let mut out = self.clone();
        for l in &mut out.localities {
            for e in &mut l.endpoints {
                e.transport = match cluster.mtls_for(&e.socket_match) {
                    // The endpoint's own identity, when the cluster allows it: only that
                    // peer may answer for this endpoint.
                    Some(m) => match &e.identity {
                        Some(id)
                            if m.identities.as_slice() != [id.clone()]
                                && (m.identities.is_empty() || m.identities.contains(id)) =>
                        {
                            Transport::Hbone(Arc::new(UpstreamMtls {
                                identities: vec![id.clone()],
                                alpn: m.alpn.clone(),
                            }))
                        }
                        _ => Transport::Hbone(m.clone()),
                    },
                    None => Transport::Plaintext,
                };
            }
        }
        out
    }
}

/// Converts a `ClusterLoadAssignment` (EDS, or a STATIC cluster's inline one).
pub(crate) fn convert(mut cla: pb::ClusterLoadAssignment) -> Result<LoadAssignment, FieldError> {
    let name = std::mem::take(&mut cla.cluster_name);
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    for (i, l) in std::mem::take(&mut cla.endpoints).into_iter().enumerate() {
        localities.push(locality(l).at_index("endpoints", i)?);
    }
    let mut overprovisioning_factor = DEFAULT_OVERPROVISIONING;
    if let Some(mut p) = cla.policy.take() {
        if let Some(f) = p.overprovisioning_factor.take() {
            if f.value == 0 {
                return Err(FieldError::invalid(
                    "overprovisioning_factor",
                    "must be > 0",
                ))
                .at("policy");
            }
            overprovisioning_factor = f.value;
        }
        reject_rest(&p).at("policy")?;
    }
    reject_rest(&cla)?;
    Ok(LoadAssignment {
        name,
        localities,
        overprovisioning_factor,
    })
}

fn locality(mut l: pb::LocalityLbEndpoints) -> Result<LocalityEndpoints, FieldError> {
    let loc = l.locality.take().unwrap_or_default();
    let weight = match l.load_balancing_weight.take() {
        Some(w) if w.value == 0 => {
            return Err(FieldError::invalid("load_balancing_weight", "must be > 0"));
        }
        w => w.map(|w| w.value),
    };
    let priority = std::mem::take(&mut l.priority);
    let mut endpoints = Vec::with_capacity(l.lb_endpoints.len());
    for (i, e) in std::mem::take(&mut l.lb_endpoints).into_iter().enumerate() {
        endpoints.push(lb_endpoint(e).at_index("lb_endpoints", i)?);
    }
    // Locality metadata and proximity only inform other extensions.
    l.metadata = None;
    l.proximity = None;
    reject_rest(&l)?;
    Ok(LocalityEndpoints {
        locality: Locality {
            region: loc.region,
            zone: loc.zone,
            subzone: loc.sub_zone,
        },
        weight,
        priority,
        endpoints,
    })
}

fn lb_endpoint(mut e: pb::LbEndpoint) -> Result<Endpoint, FieldError> {
    let health = match core::HealthStatus::try_from(e.health_status) {
        Ok(core::HealthStatus::Unknown) => Health::Unknown,
        Ok(core::HealthStatus::Healthy) => Health::Healthy,
        Ok(core::HealthStatus::Unhealthy) => Health::Unhealthy,
        Ok(core::HealthStatus::Draining) => Health::Draining,
        Ok(core::HealthStatus::Timeout) => Health::Timeout,
        Ok(core::HealthStatus::Degraded) => Health::Degraded,
        Err(_) => {
            return Err(FieldError::invalid(
                "health_status",
                format!("unknown value {}", e.health_status),
            ));
        }
    };
    e.health_status = 0;
    let weight = match e.load_balancing_weight.take() {
        None => 1,
        Some(w) if w.value == 0 => {
            return Err(FieldError::invalid("load_balancing_weight", "must be > 0"));
        }
        Some(w) => w.value,
    };
    let (socket_match, identity) = match e.metadata.take() {
        Some(md) => (
            socket_match(&md).at("metadata")?,
            endpoint_identity(&md).at("metadata")?,
        ),
        None => (BTreeMap::new(), None),
    };
    let (address, hostname) = match e.host_identifier.take() {
        Some(pb::lb_endpoint::HostIdentifier::Endpoint(mut ep)) => {
            let address = match ep.address.take() {
                Some(a) => socket_address(&a)
                    .and_then(|a| port("port_value", a.port().into()).map(|_| a))
                    .at("address")
                    .at("endpoint")?,
                None => return Err(FieldError::invalid("endpoint.address", "missing")),
            };
            let hostname = std::mem::take(&mut ep.hostname);
            // Active health checking is not done by the sidecar; these only configure it.
            ep.health_check_config = None;
            ep.observability_name.clear();
            reject_rest(&ep).at("endpoint")?;
            (address, hostname)
        }
        Some(pb::lb_endpoint::HostIdentifier::EndpointName(_)) => {
            return Err(FieldError::unsupported("endpoint_name", "named endpoints"));
        }
        None => return Err(FieldError::invalid("endpoint", "missing")),
    };
    reject_rest(&e)?;
    Ok(Endpoint {
        address,
        weight,
        health,
        hostname,
        socket_match: Arc::new(socket_match),
        identity,
        transport: Transport::Plaintext,
    })
}

/// The SPIFFE ID under [`IDENTITY_METADATA`]; other typed metadata is ignored.
fn endpoint_identity(md: &core::Metadata) -> Result<Option<SpiffeId>, FieldError> {
    let Some(any) = md.typed_filter_metadata.get(IDENTITY_METADATA) else {
        return Ok(None);
    };
    let field = format!("typed_filter_metadata[{IDENTITY_METADATA:?}]");
    if any.type_url != "type.googleapis.com/google.protobuf.StringValue" {
        return Err(FieldError::unsupported(
            field,
            format!("{} (expected a StringValue)", any.type_url),
        ));
    }
    let s = <wkt::StringValue as prost::Message>::decode(any.value.as_slice())
        .map_err(|e| FieldError::invalid(field.clone(), format!("bad StringValue: {e}")))?
        .value;
    s.parse::<SpiffeId>()
        .map(Some)
        .map_err(|e| FieldError::invalid(field, format!("{s:?} is not a SPIFFE ID: {e}")))
}

/// The string fields under `envoy.transport_socket_match`; other metadata is ignored.
fn socket_match(md: &core::Metadata) -> Result<BTreeMap<String, String>, FieldError> {
    let mut out = BTreeMap::new();
    if let Some(s) = md.filter_metadata.get(TRANSPORT_SOCKET_MATCH) {
        for (k, v) in &s.fields {
            out.insert(
                k.clone(),
                struct_string(v).at(k).at(TRANSPORT_SOCKET_MATCH)?,
            );
        }
    }
    Ok(out)
}

/// A metadata value used for matching; only strings (what the renderer sets) are
/// supported, so that equality is plain string equality.
pub(crate) fn struct_string(v: &wkt::Value) -> Result<String, FieldError> {
    match &v.kind {
        Some(wkt::value::Kind::StringValue(s)) => Ok(s.clone()),
        _ => Err(FieldError::unsupported(
            "",
            "non-string transport socket match values",
        )),
    }
}

/// A TCP socket address with a literal IP.
pub(crate) fn socket_address(a: &core::Address) -> Result<SocketAddr, FieldError> {
    let Some(core::address::Address::SocketAddress(sa)) = &a.address else {
        return Err(FieldError::unsupported(
            "",
            "addresses other than IP socket addresses (pipes, internal listeners)",
        ));
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(FieldError::unsupported("protocol", "UDP"));
    }
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        FieldError::invalid(
            "address",
            format!(
                "{:?} is not an IP address (DNS names are not resolved)",
                sa.address
            ),
        )
    })?;
    let p = match sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) => {
            // port 0 is valid for a listener that lets the kernel choose
            u16::try_from(p).map_err(|_| {
                FieldError::invalid("port_value", format!("{p} is not a port number"))
            })?
        }
        Some(core::socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(FieldError::unsupported("named_port", "named ports"));
        }
        None => return Err(FieldError::invalid("port_value", "missing")),
    };
    let rest = core::SocketAddress {
        protocol: 0,
        address: String::new(),
        port_specifier: None,
        ..sa.clone()
    };
    reject_rest(&rest)?;
    Ok(SocketAddr::new(ip, p))
}

#[cfg(test)]
mod tests;
