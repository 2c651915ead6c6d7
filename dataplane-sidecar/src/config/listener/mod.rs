//! Listeners (LDS): the outbound capture listener (`outbound`, 15001) and the inbound one
//! (`inbound`, 15006), as filter chains selected the way Envoy selects them.
//!
//! Outbound, for a captured connection to its original destination `ip:port`
//! ([`Listener::select`]): the chain of an HTTP port (HCM with RDS `<port>`) unless a TCP
//! chain matches the VIP exactly; clients that talk to 15001 itself get the explicit-proxy
//! chain (RDS `outbound-http`); anything else the default chain (TCP proxy to
//! `passthrough-outbound`). Inbound: per port, an mTLS chain and/or a plaintext one, which
//! [`Listener::inbound_port`] summarises as the port's mTLS mode and local cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use switchyard_model::MtlsMode;

use super::rbac::RbacFilter;
use super::route::RouteConfig;
use super::tls::DownstreamMtls;

mod convert;

pub(crate) use convert::convert;

/// Envoy's default HTTP stream idle timeout.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's default TCP proxy idle timeout.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Which capture a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Connections the pod's app makes.
    Outbound,
    /// Connections to the pod's app.
    Inbound,
}

/// A listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Name (`outbound`, `inbound`).
    pub name: String,
    /// Where it binds.
    pub address: SocketAddr,
    /// Which capture it serves.
    pub direction: Direction,
    /// Whether chains are selected on the connection's original destination
    /// (`SO_ORIGINAL_DST`) rather than the listener's address.
    pub original_dst: bool,
    /// Whether the first bytes are inspected for a TLS ClientHello (chains may then match on
    /// [`TransportProtocol::Tls`]).
    pub tls_inspector: bool,
    /// Chains in configuration order.
    pub chains: Vec<FilterChain>,
    /// The chain for connections no other chain matches.
    pub default_chain: Option<FilterChain>,
    /// Chain indexes by destination port (`None`: chains without a port condition).
    by_port: HashMap<Option<u16>, Vec<usize>>,
    /// Inbound listeners: per port summary.
    inbound: BTreeMap<u16, InboundPort>,
}

/// A filter chain.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    /// Name (`outbound-http|<port>`, `outbound-tcp|<port>|<host>`, `inbound-mtls|<port>`,
    /// ...).
    pub name: String,
    /// When it applies.
    pub matcher: ChainMatch,
    /// mTLS termination; `None`: plaintext.
    pub tls: Option<DownstreamMtls>,
    /// What handles the connection.
    pub handler: Handler,
    /// Authorization: the chain's network RBAC filters, then its HCM's HTTP ones, in order.
    pub rbac: Vec<RbacFilter>,
}

/// Conditions of a filter chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    /// Destination port.
    pub port: Option<u16>,
    /// Destination address ranges (empty: any).
    pub prefixes: Vec<IpNet>,
    /// Transport protocol the TLS inspector detected.
    pub transport: Option<TransportProtocol>,
}

/// Detected transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportProtocol {
    /// A TLS ClientHello.
    Tls,
    /// Anything else.
    RawBuffer,
}

/// What handles a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    /// HTTP connection manager.
    Http(HttpHandler),
    /// Opaque TCP to a cluster.
    Tcp(TcpProxy),
}

/// HTTP handling of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpHandler {
    /// Stats prefix.
    pub stat_prefix: String,
    /// The route configuration.
    pub routes: RouteSource,
    /// Downstream protocol.
    pub codec: Codec,
    /// Whether paths are normalised (RFC 3986 dot segments) before routing.
    pub normalize_path: bool,
    /// What happens to `x-forwarded-client-cert`.
    pub client_cert: ClientCert,
    /// Idle timeout of a stream; `None`: none.
    pub stream_idle_timeout: Option<Duration>,
}

/// Where a chain's routes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// RDS, by name.
    Rds(String),
    /// Given in the listener (inbound chains).
    Inline(Arc<RouteConfig>),
}

/// Downstream HTTP codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1 or HTTP/2 (prior knowledge or ALPN), detected.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// `x-forwarded-client-cert` handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// Remove whatever the client sent.
    Sanitize,
    /// Remove it, then set it from the verified client certificate (mTLS chains):
    /// `By=<own id>;Hash=<cert sha256>` plus `URI=<client SPIFFE ID>` when `uri`.
    SanitizeSet {
        /// Include the client's URI SAN.
        uri: bool,
    },
}

/// Opaque TCP proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProxy {
    /// Stats prefix.
    pub stat_prefix: String,
    /// Upstream cluster.
    pub cluster: String,
    /// Idle timeout; `None`: none.
    pub idle_timeout: Option<Duration>,
}

/// The inbound handling of one port.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundPort {
    /// The port.
    pub port: u16,
    /// mTLS mode as rendered: STRICT (only an mTLS chain), PERMISSIVE (mTLS when the client
    /// speaks TLS, plaintext otherwise) or DISABLE (only a plaintext chain).
    pub mode: MtlsMode,
    /// The local app's cluster (`inbound|<port>||`), when the chains name exactly one.
    pub cluster: Option<String>,
    /// Whether the port is handled as HTTP.
    pub http: bool,
    /// Authorization of mTLS (HBONE) connections: the mTLS chain's RBAC filters.
    pub rbac: Vec<RbacFilter>,
    /// Authorization of plaintext connections: the plaintext chain's RBAC filters.
    pub plaintext_rbac: Vec<RbacFilter>,
}

impl Listener {
    /// The chain for a connection to `dst` (the original destination on capture listeners)
    /// whose first bytes look like `transport`, as Envoy selects: the most specific
    /// destination port (a port chain over portless ones), then the longest matching
    /// destination prefix, then the transport protocol (exact over unset); no chain left: the
    /// default chain. A more specific level that fails does not fall back to a less specific
    /// one.
    pub fn select(&self, dst: SocketAddr, transport: TransportProtocol) -> Option<&FilterChain> {
        self.select_chain(dst, transport)
            .map(|i| &self.chains[i])
            .or(self.default_chain.as_ref())
    }

    fn select_chain(&self, dst: SocketAddr, transport: TransportProtocol) -> Option<usize> {
        let candidates = self
            .by_port
            .get(&Some(dst.port()))
            .or_else(|| self.by_port.get(&None))?;
        // longest matching prefix; no prefix = any address (length 0)
        let score = |i: &usize| -> Option<u8> {
            let m = &self.chains[*i].matcher;
            if m.prefixes.is_empty() {
                return Some(0);
            }
            m.prefixes
                .iter()
                .filter(|p| p.contains(&dst.ip()))
                .map(IpNet::prefix_len)
                .max()
        };
        let best = candidates.iter().filter_map(score).max()?;
        let by_ip: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|i| score(i) == Some(best))
            .collect();
        let exact = by_ip
            .iter()
            .copied()
            .find(|i| self.chains[*i].matcher.transport == Some(transport));
        exact.or_else(|| {
            by_ip
                .iter()
                .copied()
                .find(|i| self.chains[*i].matcher.transport.is_none())
        })
    }

    /// The chain that clients using this listener's own port as an HTTP proxy reach (the
    /// outbound listener's `outbound-explicit` chain).
    pub fn explicit_chain(&self) -> Option<&FilterChain> {
        self.select_chain(self.address, TransportProtocol::RawBuffer)
            .map(|i| &self.chains[i])
    }

    /// Every chain, the default one last.
    pub fn all_chains(&self) -> impl Iterator<Item = &FilterChain> {
        self.chains.iter().chain(self.default_chain.as_ref())
    }

    /// RDS names the listener's HTTP chains need.
    pub fn route_config_names(&self) -> impl Iterator<Item = &str> {
        self.all_chains().filter_map(|c| match &c.handler {
            Handler::Http(HttpHandler {
                routes: RouteSource::Rds(name),
                ..
            }) => Some(name.as_str()),
            _ => None,
        })
    }

    /// The inbound handling of `port` (inbound listeners).
    pub fn inbound_port(&self, port: u16) -> Option<&InboundPort> {
        self.inbound.get(&port)
    }

    /// Every inbound port (inbound listeners).
    pub fn inbound_ports(&self) -> impl Iterator<Item = &InboundPort> {
        self.inbound.values()
    }
}

#[cfg(test)]
mod tests;
