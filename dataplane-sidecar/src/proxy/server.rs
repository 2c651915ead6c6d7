//! The L4 proxy: the sidecar's listeners wired to its configuration.
//!
//! - Outbound capture (15001): original destination → [`SidecarConfig::outbound`] → an
//!   endpoint of the cluster picked by that cluster's [`Balancer`] → HBONE (mTLS endpoints)
//!   or plain TCP carrying the proxy mark; passthrough goes to the original destination.
//!   On HTTP chains the protocol is detected first: HTTP/1.1 and HTTP/2 are served request
//!   by request ([`http`]: routes, retries, timeouts, pooled upstream connections); anything
//!   else goes as opaque TCP to the cluster the route configuration's virtual host for
//!   `<dst ip>:<port>` forwards to.
//! - HBONE (15008): [`TunnelHandler`] lets peers of our trust domain reach this pod's own IP;
//!   tunnels to HTTP ports are served request by request, telling the app the caller's
//!   identity.
//! - Plaintext inbound capture (15006): forwarded to the original destination only when
//!   [`SidecarConfig::inbound`] says the port is PERMISSIVE or DISABLE.
//!
//! Listeners are bound at once but accept only after the first configuration snapshot
//! (connections wait in the backlog meanwhile), so nothing is ever routed without
//! configuration. Every upstream socket carries `SO_MARK` so the capture lets it go.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::Rng as _;
use switchyard_dataplane_runtime::hbone::{
    HBONE_PORT, HboneClient, HboneError, InboundHandler, Peer, Refusal, TunnelEnd,
};
use switchyard_dataplane_runtime::tls::Expected;
use switchyard_model::MtlsMode;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::balance::{Balancer, BalancerConfig, EndpointSpec, Outcome};
use super::circuit::{CircuitBreaker, CircuitLimits, Overloaded};
use super::copy::{CopyConfig, CopyError, CopyStats, copy_bidirectional};
use super::detect::{Detector, Prefixed, Protocol};
use super::original_dst::{OriginalDstError, original_dst};
use super::pool::{Pool, PoolGroup, Proto};
use super::retry::{RetryBudget, RetryBudgetConfig};
use crate::config::rbac::{RbacInput, RbacLayer, evaluate};
use crate::config::route::RouteAction;
use crate::config::{ConfigReader, Outbound, SidecarConfig, Transport};

mod http;
mod metrics;

pub use http::{MAX_REPLAY_BODY, XFCC, request_matches};
pub use metrics::{HttpMetrics, UpstreamCollector};

/// Settings of a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The pod's IP: the only inbound target, and the HBONE address of our own endpoints.
    pub pod_ip: IpAddr,
    /// Our trust domain: HBONE peers must belong to it.
    pub trust_domain: String,
    /// This pod's SPIFFE ID (`By=` in the identity header, the access log).
    pub identity: String,
    /// `SO_MARK` on every upstream socket ([`crate::capture::PROXY_MARK`]).
    pub mark: u32,
    /// Limit for a plain TCP connect upstream.
    pub connect_timeout: Duration,
    /// Byte copying.
    pub copy: CopyConfig,
    /// HTTP/1.1 to mesh endpoints goes as HTTP/2 in one tunnel per endpoint.
    pub http2_upgrade: bool,
    /// Ports the proxy itself listens on: a connection whose original destination is one of
    /// them (on a local address) is a capture loop.
    pub own_ports: Vec<u16>,
}

impl ProxySettings {
    /// Whether `dst` is one of the proxy's own listeners (a capture loop).
    pub fn is_own_listener(&self, dst: SocketAddr) -> bool {
        let ip = dst.ip();
        self.own_ports.contains(&dst.port())
            && (ip.is_loopback() || ip.is_unspecified() || ip == self.pod_ip)
    }
}

/// Counters of the proxy, exported on `/stats` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ProxyMetrics {
    /// Outbound connections accepted.
    pub outbound_accepted: Counter,
    /// Outbound connections carried over HBONE.
    pub outbound_hbone: Counter,
    /// Outbound connections carried over plain TCP to a cluster endpoint.
    pub outbound_plaintext: Counter,
    /// Outbound connections passed through to their original destination.
    pub outbound_passthrough: Counter,
    /// Outbound connections refused as capture loops.
    pub outbound_loops: Counter,
    /// Outbound connections no configuration matched.
    pub outbound_no_route: Counter,
    /// Outbound connections that failed (no endpoint, connect or copy failure).
    pub outbound_failed: Counter,
    /// Outbound HTTP connections the client closed or reset with a request unfinished
    /// (Envoy's `downstream_cx_destroy_remote_active_rq`): the client's doing, not a failure.
    pub outbound_client_closed: Counter,
    /// Outbound connections to an HTTP chain, carried as opaque TCP.
    pub outbound_http_as_tcp: Counter,
    /// Plaintext inbound connections accepted.
    pub inbound_plaintext_accepted: Counter,
    /// Plaintext inbound connections forwarded to the app.
    pub inbound_plaintext_forwarded: Counter,
    /// Plaintext inbound connections closed because the port is STRICT.
    pub inbound_strict_refused: Counter,
    /// Plaintext inbound connections closed because no inbound configuration covers the port.
    pub inbound_unconfigured_refused: Counter,
    /// Plaintext inbound connections that failed (connect or copy).
    pub inbound_plaintext_failed: Counter,
    /// HBONE tunnels refused by the inbound handler.
    pub inbound_hbone_refused: Counter,
    /// HBONE tunnels connected to the app.
    pub inbound_hbone_forwarded: Counter,
    /// Inbound connections and requests refused by authorization policy.
    pub inbound_rbac_denied: Counter,
    /// Connections and HBONE tunnels each worker thread took (Envoy's per-worker
    /// `downstream_cx_total`): shows how `SO_REUSEPORT` spread the load.
    pub worker_accepted: Family<WorkerLabels, Counter>,
}

/// The most worker threads a proxy runs ([`Proxy::fork`]).
pub const MAX_WORKERS: u32 = 256;

/// Labels of [`ProxyMetrics::worker_accepted`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker thread, from 0.
    pub worker: u32,
    /// `outbound`, `inbound_plaintext` or `hbone_tunnel`.
    pub kind: &'static str,
}

impl ProxyMetrics {
    /// Name (without `switchyard_sidecar_` and `_total`), help and counter of each.
    fn each(&self) -> [(&'static str, &'static str, &Counter); 17] {
        [
            (
                "outbound_accepted",
                "outbound connections accepted",
                &self.outbound_accepted,
            ),
            (
                "outbound_hbone",
                "outbound connections carried over HBONE",
                &self.outbound_hbone,
            ),
            (
                "outbound_plaintext",
                "outbound connections carried over plain TCP to a cluster endpoint",
                &self.outbound_plaintext,
            ),
            (
                "outbound_passthrough",
                "outbound connections passed through to their original destination",
                &self.outbound_passthrough,
            ),
            (
                "outbound_loops",
                "outbound connections refused as capture loops",
                &self.outbound_loops,
            ),
            (
                "outbound_no_route",
                "outbound connections no configuration matched",
                &self.outbound_no_route,
            ),
            (
                "outbound_failed",
                "outbound connections that failed",
                &self.outbound_failed,
            ),
            (
                "outbound_client_closed",
                "outbound HTTP connections the client closed with a request unfinished",
                &self.outbound_client_closed,
            ),
            (
                "outbound_http_as_tcp",
                "outbound HTTP connections carried as opaque TCP",
                &self.outbound_http_as_tcp,
            ),
            (
                "inbound_plaintext_accepted",
                "plaintext inbound connections accepted",
                &self.inbound_plaintext_accepted,
            ),
            (
                "inbound_plaintext_forwarded",
                "plaintext inbound connections forwarded to the app",
                &self.inbound_plaintext_forwarded,
            ),
            (
                "inbound_strict_refused",
                "plaintext inbound connections closed on a STRICT port",
                &self.inbound_strict_refused,
            ),
            (
                "inbound_unconfigured_refused",
                "plaintext inbound connections closed on a port without inbound configuration",
                &self.inbound_unconfigured_refused,
            ),
            (
                "inbound_plaintext_failed",
                "plaintext inbound connections that failed",
                &self.inbound_plaintext_failed,
            ),
            (
                "inbound_hbone_refused",
                "HBONE tunnels refused",
                &self.inbound_hbone_refused,
            ),
            (
                "inbound_hbone_forwarded",
                "HBONE tunnels connected to the app",
                &self.inbound_hbone_forwarded,
            ),
            (
                "inbound_rbac_denied",
                "inbound connections and requests refused by authorization policy",
                &self.inbound_rbac_denied,
            ),
        ]
    }

    /// Registers every counter as `switchyard_sidecar_<name>` (a `_total` is appended).
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, counter) in self.each() {
            registry.register(format!("switchyard_sidecar_{name}"), help, counter.clone());
        }
        registry.register(
            "switchyard_sidecar_worker_accepted",
            "connections (outbound, inbound_plaintext) and HBONE tunnels (hbone_tunnel) each worker thread took",
            self.worker_accepted.clone(),
        );
    }

    /// Counts one connection or tunnel of `kind` taken by `worker`.
    fn count_worker(&self, worker: u32, kind: &'static str) {
        self.worker_accepted
            .get_or_create(&WorkerLabels { worker, kind })
            .inc();
    }

    /// `name: value` lines, for `/stats`.
    pub fn render(&self, out: &mut String) {
        for (name, _, counter) in self.each() {
            let _ = writeln!(out, "{name}: {}", counter.get());
        }
        for worker in 0..MAX_WORKERS {
            for kind in ["outbound", "inbound_plaintext", "hbone_tunnel"] {
                if let Some(n) = self.worker_accepted.get(&WorkerLabels { worker, kind }) {
                    let _ = writeln!(out, "worker_{worker}_{kind}: {}", n.get());
                }
            }
        }
    }
}

/// Why a connection ended without being proxied, or failed while proxied.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The capture did not leave an original destination.
    #[error("no original destination: {0}")]
    OriginalDst(#[from] OriginalDstError),
    /// The original destination is the proxy itself.
    #[error(
        "connection to the proxy's own port {0} refused as a capture loop (does the capture exempt the proxy mark?)"
    )]
    Loop(SocketAddr),
    /// No outbound chain matches.
    #[error("no outbound configuration matches {0}")]
    NoRoute(SocketAddr),
    /// The cluster has no endpoint to pick.
    #[error("cluster {cluster} has no endpoints")]
    NoEndpoints {
        /// The cluster.
        cluster: String,
    },
    /// Plain TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The HBONE tunnel could not be opened.
    #[error("hbone tunnel to {target} via {via} failed: {source} (is port 15008 blocked?)")]
    Hbone {
        /// The endpoint.
        target: SocketAddr,
        /// Its HBONE server.
        via: SocketAddr,
        /// Why.
        #[source]
        source: Box<HboneError>,
    },
    /// The inbound port is STRICT: plaintext is not allowed.
    #[error("port {0} requires mTLS (STRICT); plaintext connection closed")]
    Strict(u16),
    /// No inbound configuration covers the port.
    #[error("no inbound configuration for port {0}; plaintext connection closed")]
    Unconfigured(u16),
    /// Copying failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Authorization policy refused the connection.
    #[error("refused by authorization policy: {0}")]
    Denied(String),
    /// Serving HTTP on the connection failed.
    #[error("http: {0}")]
    Http(#[source] hyper::Error),
    /// Reading the first bytes failed.
    #[error("protocol detection: {0}")]
    Detect(#[from] super::detect::DetectError),
    /// The cluster's connection limit is reached (Envoy's `upstream_cx_overflow`).
    #[error("cluster {cluster}: {source}")]
    Overloaded {
        /// The cluster.
        cluster: String,
        /// Which limit.
        #[source]
        source: Overloaded,
    },
}

impl ConnectionError {
    /// Whether the client side of the connection went away mid-request: it closed before a
    /// request was complete, or reset the connection. Only errors of the downstream
    /// connection itself qualify: an upstream failure before the answer becomes a `502` or
    /// `503`, and one in the middle of an answer's body is a `User` error of the downstream
    /// connection (the body it was sending failed), whose source chain holds the upstream's
    /// I/O error; that stays a failure.
    pub fn client_gone(&self) -> bool {
        let ConnectionError::Http(e) = self else {
            return false;
        };
        if e.is_incomplete_message() {
            return true;
        }
        if e.is_user() {
            return false;
        }
        let mut source = std::error::Error::source(e);
        while let Some(err) = source {
            // Another HTTP error below this one is not the downstream socket's.
            if err.is::<hyper::Error>() {
                return false;
            }
            let kind = err
                .downcast_ref::<io::Error>()
                .map(io::Error::kind)
                .or_else(|| {
                    err.downcast_ref::<h2::Error>()
                        .and_then(h2::Error::get_io)
                        .map(io::Error::kind)
                });
            if matches!(
                kind,
                Some(
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof
                )
            ) {
                return true;
            }
            source = err.source();
        }
        false
    }
}

/// One cluster's runtime state: endpoint picking and limits. Clones share both.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Picks endpoints, ejects failing ones.
    pub balancer: Balancer,
    /// The cluster's circuit-breaker counters.
    pub breaker: CircuitBreaker,
}

/// Every cluster's [`Upstream`], by name; replaced as a whole when the configuration changes.
pub type Upstreams = Arc<ArcSwap<HashMap<String, Upstream>>>;

/// Connects to `addr` from a socket marked with `mark` (`SO_MARK`, needs `CAP_NET_ADMIN`), so
/// the pod's capture does not redirect it back to the proxy.
pub async fn connect_marked(
    addr: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    tokio::time::timeout(
        timeout,
        switchyard_dataplane_runtime::net::connect(addr, Some(mark)),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// What the plaintext inbound listener does with a connection to `port`.
pub fn inbound_plaintext_allowed(config: &SidecarConfig, port: u16) -> Result<(), ConnectionError> {
    match config.inbound(port).map(|p| p.mode) {
        Some(MtlsMode::Permissive | MtlsMode::Disable) => Ok(()),
        Some(MtlsMode::Strict) => Err(ConnectionError::Strict(port)),
        None => Err(ConnectionError::Unconfigured(port)),
    }
}

/// The HBONE inbound handler: peers of our trust domain may reach this pod's own IP (no
/// authorization policy yet); the app is dialed with the proxy mark.
#[derive(Debug, Clone)]
pub struct TunnelHandler {
    pod_ip: IpAddr,
    trust_domain: String,
    identity: String,
    mark: u32,
    connect_timeout: Duration,
    config: ConfigReader,
    pool: Arc<Pool>,
    /// Every worker's pool of connections to the app.
    pools: Arc<PoolGroup>,
    /// Limits of the connections to the app (Envoy's defaults).
    inbound_breaker: CircuitBreaker,
    metrics: ProxyMetrics,
    http_metrics: HttpMetrics,
    /// The worker thread serving this handler's tunnels.
    worker: u32,
}

impl TunnelHandler {
    /// A handler for the pod at `settings.pod_ip`; `config` says which ports are HTTP.
    pub fn new(
        settings: &ProxySettings,
        config: ConfigReader,
        metrics: ProxyMetrics,
        http_metrics: HttpMetrics,
    ) -> Self {
        let pools = Arc::new(PoolGroup::default());
        TunnelHandler {
            pool: pools.join(),
            pools,
            pod_ip: settings.pod_ip,
            trust_domain: settings.trust_domain.clone(),
            identity: settings.identity.clone(),
            mark: settings.mark,
            connect_timeout: settings.connect_timeout,
            config,
            inbound_breaker: CircuitBreaker::default(),
            metrics,
            http_metrics,
            worker: 0,
        }
    }

    /// The handler for worker thread `worker`: everything shared but the pool of connections
    /// to the app, whose tasks run on the worker's own runtime.
    fn fork(&self, worker: u32) -> Self {
        TunnelHandler {
            pool: self.pools.join(),
            worker,
            ..self.clone()
        }
    }

    fn check(&self, peer: &Peer, target: SocketAddr) -> Result<(), Refusal> {
        if peer.identity.trust_domain != self.trust_domain {
            return Err(Refusal::new(format!(
                "peer {} is not in trust domain {}",
                peer.identity, self.trust_domain
            )));
        }
        if target.ip() != self.pod_ip {
            return Err(Refusal::new(format!(
                "target {target} is not this pod ({}); the sidecar only serves its own pod",
                self.pod_ip
            )));
        }
        if target.port() == HBONE_PORT {
            return Err(Refusal::new("tunnels to the HBONE port itself are refused"));
        }
        // Connection-level authorization (network RBAC of the port's mTLS chain).
        if let Some(config) = self.config.current()
            && let Some(port) = config.inbound(target.port())
        {
            let identity = peer.identity.to_string();
            evaluate(
                &port.rbac,
                RbacLayer::Connection,
                &RbacInput {
                    peer: Some(&identity),
                    source_ip: peer.addr.ip(),
                    port: target.port(),
                    request: None,
                },
            )
            .map_err(|denied| {
                self.metrics.inbound_rbac_denied.inc();
                Refusal::new(format!("RBAC: {denied}"))
            })?;
        }
        Ok(())
    }
}

impl InboundHandler for TunnelHandler {
    async fn authorize(&self, peer: &Peer, target: SocketAddr) -> Result<(), Refusal> {
        let decision = self.check(peer, target);
        if let Err(refusal) = &decision {
            self.metrics.inbound_hbone_refused.inc();
            info!(identity = %peer.identity, %target, reason = %refusal, "hbone tunnel refused");
        }
        decision
    }

    async fn connect(&self, peer: &Peer, target: SocketAddr) -> io::Result<TunnelEnd> {
        let http = self
            .config
            .current()
            .is_some_and(|c| c.inbound(target.port()).is_some_and(|p| p.http));
        self.metrics.inbound_hbone_forwarded.inc();
        self.metrics.count_worker(self.worker, "hbone_tunnel");
        if http {
            // The tunnel itself is served by the in-process HTTP server that forwards each
            // request to the app with the caller's identity.
            let (handler, caller) = (self.clone(), http::Caller::from(peer));
            return Ok(TunnelEnd::Serve(Box::new(move |io, draining| {
                Box::pin(handler.serve_http_inbound(io, caller, target, draining))
            })));
        }
        let stream = connect_marked(target, self.mark, self.connect_timeout).await?;
        Ok(TunnelEnd::Stream(Box::new(stream)))
    }
}

/// The proxy: configuration, per-cluster balancers, the HBONE client and counters. Shared as
/// `Arc<Proxy>` by the listeners.
#[derive(Debug)]
pub struct Proxy {
    settings: ProxySettings,
    config: ConfigReader,
    hbone: HboneClient,
    /// One balancer and circuit breaker per cluster; written only by
    /// [`Proxy::follow_endpoints`].
    upstreams: Upstreams,
    metrics: ProxyMetrics,
    http_metrics: HttpMetrics,
    pool: Arc<Pool>,
    /// Every worker's pool of upstream connections.
    pools: Arc<PoolGroup>,
    retry_budget: Arc<RetryBudget>,
    detector: Detector,
    /// The inbound side (HBONE tunnels and plaintext HTTP ports).
    inbound: TunnelHandler,
    /// Cancelled when the proxy drains: the listeners stop accepting.
    shutdown: CancellationToken,
    /// Connections being served (by every worker).
    connections: TaskTracker,
    /// The worker thread whose listeners this proxy serves: 0, or the number given to
    /// [`Proxy::fork`].
    worker: u32,
}

impl Proxy {
    /// A proxy reading `config`, tunnelling with `hbone`.
    pub fn new(
        settings: ProxySettings,
        config: ConfigReader,
        hbone: HboneClient,
        metrics: ProxyMetrics,
        http_metrics: HttpMetrics,
        detector: Detector,
    ) -> Arc<Self> {
        let inbound = TunnelHandler::new(
            &settings,
            config.clone(),
            metrics.clone(),
            http_metrics.clone(),
        );
        let pools = Arc::new(PoolGroup::default());
        Arc::new(Proxy {
            pool: pools.join(),
            pools,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            inbound,
            settings,
            config,
            hbone,
            upstreams: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            metrics,
            http_metrics,
            retry_budget: Arc::new(RetryBudget::new(RetryBudgetConfig::default())),
            detector,
            worker: 0,
        })
    }

    /// The proxy of another worker thread (Envoy's `--concurrency`): it shares the
    /// configuration, balancers, circuit breakers, retry budget, counters and drain with this
    /// one, and owns what is driven by tasks on its thread's runtime: the pools of upstream
    /// connections and of HBONE connections. Serve it from that thread, on its own
    /// `SO_REUSEPORT` listeners.
    pub fn fork(self: &Arc<Self>, worker: u32) -> Arc<Self> {
        Arc::new(Proxy {
            settings: self.settings.clone(),
            config: self.config.clone(),
            hbone: self.hbone.fork(),
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            http_metrics: self.http_metrics.clone(),
            pool: self.pools.join(),
            pools: self.pools.clone(),
            retry_budget: self.retry_budget.clone(),
            detector: self.detector.clone(),
            inbound: self.inbound.fork(worker),
            shutdown: self.shutdown.clone(),
            connections: self.connections.clone(),
            worker,
        })
    }

    /// Which worker thread this proxy serves.
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// Every cluster's balancer and breaker (for metrics and `/stats`).
    pub fn upstreams(&self) -> Upstreams {
        self.upstreams.clone()
    }

    /// The upstream of `cluster`.
    fn upstream(&self, cluster: &str) -> Option<Upstream> {
        self.upstreams.load().get(cluster).cloned()
    }

    /// Each cluster's balancer counters (ejections), by cluster name.
    pub fn balancer_counts(&self) -> Vec<(String, super::balance::BalancerCounts)> {
        let mut out: Vec<_> = self
            .upstreams
            .load()
            .iter()
            .map(|(name, u)| (name.clone(), u.balancer.counts()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Drains: the capture listeners stop accepting, HTTP connections close after the
    /// requests in flight, and this waits up to `grace` for every connection to end.
    /// Returns how many were still open at the deadline.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.shutdown.cancel();
        self.connections.close();
        let _ = tokio::time::timeout(grace, self.connections.wait()).await;
        self.connections.len()
    }

    /// Whether [`Proxy::drain`] has begun.
    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The inbound handler, for the HBONE server.
    pub fn tunnel_handler(&self) -> TunnelHandler {
        self.inbound.clone()
    }

    /// The HTTP counters.
    pub fn http_metrics(&self) -> &HttpMetrics {
        &self.http_metrics
    }

    /// The protocol detector (for its counts).
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The counters.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// The HBONE client (for its stats).
    pub fn hbone(&self) -> &HboneClient {
        &self.hbone
    }

    /// Keeps one balancer per cluster in step with the configuration; the single writer of
    /// the balancer map. Runs until the follower is gone.
    pub async fn follow_endpoints(self: Arc<Self>) {
        let mut rx = self.config.subscribe();
        loop {
            let config = rx.borrow_and_update().clone();
            if let Some(config) = config {
                self.update_upstreams(&config);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn update_upstreams(&self, config: &SidecarConfig) {
        let old = self.upstreams.load();
        let mut next = HashMap::with_capacity(config.clusters().len());
        for (name, cluster) in config.clusters() {
            let specs: Vec<EndpointSpec> = config
                .endpoints(name)
                .map(|eps| {
                    eps.iter()
                        .filter(|(_, e)| e.health.is_healthy())
                        .map(|(_, e)| EndpointSpec::weighted(e.address, e.weight))
                        .collect()
                })
                .unwrap_or_default();
            let limits = CircuitLimits::from(&cluster.circuit_breakers);
            // Kept across updates: ejections, EWMA and slots in use carry over.
            let upstream = old.get(name).cloned().unwrap_or_else(|| Upstream {
                balancer: Balancer::new(BalancerConfig::default()),
                breaker: CircuitBreaker::new(limits),
            });
            upstream.balancer.set_endpoints(&specs);
            upstream.breaker.set_limits(limits);
            next.insert(name.clone(), upstream);
        }
        debug!(
            clusters = next.len(),
            version = config.version(),
            "upstreams updated"
        );
        self.upstreams.store(Arc::new(next));
    }

    /// Serves captured outbound connections on `listener`, once configuration is ready.
    pub async fn serve_outbound(self: Arc<Self>, listener: TcpListener) {
        self.accept_loop(listener, Side::Outbound).await;
    }

    /// Serves captured plaintext inbound connections on `listener`, once configuration is
    /// ready.
    pub async fn serve_inbound_plaintext(self: Arc<Self>, listener: TcpListener) {
        self.accept_loop(listener, Side::InboundPlaintext).await;
    }

    /// The accept loop both capture listeners share: one task per connection, failures
    /// counted by kind.
    async fn accept_loop(self: Arc<Self>, listener: TcpListener, side: Side) {
        if self.config.ready().await.is_none() {
            return;
        }
        info!(addr = ?listener.local_addr().ok(), side = side.name(), "listener accepting");
        loop {
            let accepted = tokio::select! {
                // Shutdown first: nothing is accepted once the drain has begun.
                biased;
                () = self.shutdown.cancelled() => {
                    info!(side = side.name(), "listener closed: draining");
                    return;
                }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, side = side.name(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proxy = self.clone();
            let span = info_span!("connection", side = side.name(), %peer);
            self.connections.spawn(
                async move {
                    let result = match side {
                        Side::Outbound => {
                            proxy.metrics.outbound_accepted.inc();
                            proxy.metrics.count_worker(proxy.worker, "outbound");
                            proxy.outbound(stream).await
                        }
                        Side::InboundPlaintext => {
                            proxy.metrics.inbound_plaintext_accepted.inc();
                            proxy
                                .metrics
                                .count_worker(proxy.worker, "inbound_plaintext");
                            proxy.inbound_plaintext(stream).await
                        }
                    };
                    if let Err(e) = result {
                        proxy.count_failure(side, &e);
                        match side {
                            Side::Outbound if e.client_gone() => {
                                debug!(error = %e, "outbound connection closed by the client mid-request")
                            }
                            Side::Outbound => warn!(error = %e, "outbound connection failed"),
                            // Refusals (STRICT, unconfigured ports) are policy, not faults.
                            Side::InboundPlaintext => {
                                info!(error = %e, "plaintext inbound connection closed")
                            }
                        }
                    }
                }
                .instrument(span),
            );
        }
    }

    fn count_failure(&self, side: Side, e: &ConnectionError) {
        let m = &self.metrics;
        let counter = match (side, e) {
            (Side::Outbound, ConnectionError::Loop(_)) => &m.outbound_loops,
            (Side::Outbound, ConnectionError::NoRoute(_)) => &m.outbound_no_route,
            (Side::Outbound, e) if e.client_gone() => &m.outbound_client_closed,
            (Side::Outbound, _) => &m.outbound_failed,
            (Side::InboundPlaintext, ConnectionError::Strict(_)) => &m.inbound_strict_refused,
            (Side::InboundPlaintext, ConnectionError::Denied(_)) => &m.inbound_rbac_denied,
            (Side::InboundPlaintext, ConnectionError::Unconfigured(_)) => {
                &m.inbound_unconfigured_refused
            }
            (Side::InboundPlaintext, _) => &m.inbound_plaintext_failed,
        };
        counter.inc();
    }

    async fn outbound(self: &Arc<Self>, client: TcpStream) -> Result<(), ConnectionError> {
        client.set_nodelay(true).ok();
        let dst = original_dst(&client)?;
        if self.settings.is_own_listener(dst) {
            return Err(ConnectionError::Loop(dst));
        }
        let config = self.config.current().ok_or(ConnectionError::NoRoute(dst))?;
        // HTTP chains: HTTP/1.1 and HTTP/2 are served request by request; other bytes
        // (TLS, opaque, a detection timeout) go on as TCP below.
        let mut client = if matches!(config.outbound(dst), Some(Outbound::Http { .. })) {
            let detected = self.detector.detect(client).await?;
            match detected.protocol {
                Protocol::Http1 => {
                    return self
                        .serve_http_outbound(detected.io, Proto::Http1, dst)
                        .await;
                }
                Protocol::Http2 => {
                    return self
                        .serve_http_outbound(detected.io, Proto::Http2, dst)
                        .await;
                }
                Protocol::Tls | Protocol::Opaque => detected.io,
            }
        } else {
            Prefixed::new(bytes::Bytes::new(), client)
        };
        let cluster = match config.outbound(dst) {
            None => return Err(ConnectionError::NoRoute(dst)),
            Some(Outbound::Passthrough { .. }) => return self.passthrough(client, dst).await,
            Some(Outbound::Tcp { proxy, .. }) => proxy.cluster.clone(),
            Some(Outbound::Http { routes, .. }) => {
                self.metrics.outbound_http_as_tcp.inc();
                let host = dst.to_string();
                let backends = routes.and_then(|r| r.virtual_host(&host)).and_then(|vh| {
                    vh.routes.iter().find_map(|r| match &r.action {
                        RouteAction::Forward(f) => Some(&f.backends),
                        RouteAction::DirectResponse(_) => None,
                    })
                });
                match backends {
                    Some(b) => b.pick(rand::rng().random()).to_string(),
                    // No route for the VIP: as Envoy's PassthroughCluster would.
                    None => return self.passthrough(client, dst).await,
                }
            }
        };
        let upstream = self
            .upstream(&cluster)
            .ok_or_else(|| ConnectionError::NoEndpoints {
                cluster: cluster.clone(),
            })?;
        // Held while the connection lasts.
        let _slot =
            upstream
                .breaker
                .try_connection()
                .map_err(|source| ConnectionError::Overloaded {
                    cluster: cluster.clone(),
                    source,
                })?;
        let mut pick = upstream.balancer.pick(&mut rand::rng()).ok_or_else(|| {
            ConnectionError::NoEndpoints {
                cluster: cluster.clone(),
            }
        })?;
        let addr = pick.addr();
        let transport = http::transport_of(&config, &cluster, addr);
        let stats = CopyStats::default();
        match transport {
            Some(Transport::Hbone(mtls)) => {
                let via = SocketAddr::new(addr.ip(), HBONE_PORT);
                let expected = mtls
                    .expected()
                    .unwrap_or_else(|| Expected::TrustDomain(self.settings.trust_domain.clone()));
                let mut upstream = match self.hbone.connect(addr, via, expected).await {
                    Ok(s) => s,
                    Err(source) => {
                        pick.record(Outcome::ConnectFailure);
                        return Err(ConnectionError::Hbone {
                            target: addr,
                            via,
                            source: Box::new(source),
                        });
                    }
                };
                pick.record(Outcome::Success);
                self.metrics.outbound_hbone.inc();
                debug!(%dst, %cluster, endpoint = %addr, "outbound over hbone");
                copy_bidirectional(&mut client, &mut upstream, &self.settings.copy, &stats).await?;
            }
            _ => {
                let mut upstream = match self.connect(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        pick.record(Outcome::ConnectFailure);
                        return Err(e);
                    }
                };
                pick.record(Outcome::Success);
                self.metrics.outbound_plaintext.inc();
                debug!(%dst, %cluster, endpoint = %addr, "outbound over plain tcp");
                copy_bidirectional(&mut client, &mut upstream, &self.settings.copy, &stats).await?;
            }
        }
        Ok(())
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ConnectionError> {
        connect_marked(addr, self.settings.mark, self.settings.connect_timeout)
            .await
            .map_err(|source| ConnectionError::Connect { addr, source })
    }

    async fn passthrough<S>(&self, mut client: S, dst: SocketAddr) -> Result<(), ConnectionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut upstream = self.connect(dst).await?;
        self.metrics.outbound_passthrough.inc();
        debug!(%dst, "outbound passthrough");
        copy_bidirectional(
            &mut client,
            &mut upstream,
            &self.settings.copy,
            &CopyStats::default(),
        )
        .await?;
        Ok(())
    }

    async fn inbound_plaintext(&self, mut client: TcpStream) -> Result<(), ConnectionError> {
        client.set_nodelay(true).ok();
        let dst = original_dst(&client)?;
        if self.settings.is_own_listener(dst) {
            return Err(ConnectionError::Loop(dst));
        }
        let config = self
            .config
            .current()
            .ok_or(ConnectionError::Unconfigured(dst.port()))?;
        inbound_plaintext_allowed(&config, dst.port())?;
        let peer = client
            .peer_addr()
            .map_err(|source| ConnectionError::Connect { addr: dst, source })?;
        if let Some(port) = config.inbound(dst.port()) {
            evaluate(
                &port.plaintext_rbac,
                RbacLayer::Connection,
                &RbacInput {
                    peer: None,
                    source_ip: peer.ip(),
                    port: dst.port(),
                    request: None,
                },
            )
            .map_err(|denied| ConnectionError::Denied(denied.to_string()))?;
            if port.http {
                // HTTP ports: request by request, so request-level policy applies and any
                // identity header the client made up is removed.
                self.metrics.inbound_plaintext_forwarded.inc();
                self.inbound
                    .clone()
                    .serve_http_inbound(
                        client,
                        http::Caller {
                            identity: None,
                            addr: peer,
                        },
                        dst,
                        self.shutdown.clone(),
                    )
                    .await;
                return Ok(());
            }
        }
        let mut upstream = self.connect(dst).await?;
        self.metrics.inbound_plaintext_forwarded.inc();
        copy_bidirectional(
            &mut client,
            &mut upstream,
            &self.settings.copy,
            &CopyStats::default(),
        )
        .await?;
        Ok(())
    }
}

/// Which capture listener a connection came in on.
#[derive(Debug, Clone, Copy)]
enum Side {
    Outbound,
    InboundPlaintext,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Outbound => "outbound",
            Side::InboundPlaintext => "inbound_plaintext",
        }
    }
}

#[cfg(test)]
mod tests;
