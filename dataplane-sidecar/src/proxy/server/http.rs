//! HTTP on the sidecar's data path.
//!
//! - Outbound: a captured connection detected as HTTP/1.1 or HTTP/2 (prior knowledge, gRPC
//!   included) is served by hyper; each request is routed by the chain's route configuration
//!   (virtual host by `Host`/`:authority`, then the first route whose path, method, header,
//!   query and gRPC conditions hold), sent to a weighted-picked cluster's endpoint chosen by
//!   its balancer, over a pooled connection (HBONE for mesh endpoints), in the downstream's
//!   HTTP version. The route's timeout bounds the wait for response headers; its retry
//!   policy (with the proxy's retry budget) re-sends requests whose body was kept (none, or
//!   a `Content-Length` up to [`MAX_REPLAY_BODY`]).
//! - Inbound: a tunnel to an HTTP port is served by hyper too, so each request reaches the
//!   app with `x-forwarded-client-cert: By=<this pod>;URI=<caller>` (any such header the
//!   caller sent is dropped first).
//!
//! Local answers use Envoy's status codes and texts: 404 no route, 503 no healthy upstream
//! or connect failure, 504 upstream request timeout. Upgrades (WebSocket) are not proxied.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng as _;
#[cfg(test)]
use std::time::Duration;
use switchyard_dataplane_runtime::coalesce::{Coalesce, Turns};
use switchyard_dataplane_runtime::hbone::{HBONE_PORT, Peer};
use switchyard_dataplane_runtime::tls::Expected;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::super::balance::Outcome;
use super::super::body::EndAhead;
use super::super::circuit::{CircuitGuard, OVERLOADED_HEADER, Overloaded};
use super::super::detect::read_h2_preface;
use super::super::pool::Target;
use super::super::pool::{Body, BoxError, Proto, SendError, UpstreamIo};
use super::super::retry::{self, AttemptOutcome, RetryConditions, RetryDecision};
use super::{ConnectionError, Proxy, TunnelHandler, Upstream, connect_marked};
use crate::config::cluster::UpstreamProtocol;
use crate::config::rbac::{RbacInput, RbacLayer, RequestAttributes, evaluate};
use crate::config::route::{self, Forward, RouteAction, RouteMatch};
use crate::config::{Outbound, SidecarConfig, Transport};

/// Serves a hyper connection (`$conn`) until it ends. Once `$stop`, a `CancellationToken`, is
/// cancelled it finishes the requests in flight and closes (HTTP/1.1: after the current
/// response; HTTP/2: `GOAWAY`). A macro: as a generic `async fn` the compiler cannot show the
/// spawned connection futures are `Send`.
macro_rules! serve_until {
    ($conn:expr, $stop:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = $stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// Largest request body kept for replay by retries.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;
/// Header carrying the caller's identity to the app.
pub const XFCC: &str = "x-forwarded-client-cert";

/// Hop-by-hop headers, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A local answer.
fn local(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let text = text.into();
    let mut r = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never: Infallible| -> BoxError { match never {} })
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The `503` for a refused circuit-breaker slot, naming the limit in [`OVERLOADED_HEADER`].
fn overloaded(cluster: &str, o: &Overloaded) -> Response<Body> {
    let mut r = local(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("upstream overflow ({cluster}): {o}"),
    );
    r.headers_mut().insert(
        OVERLOADED_HEADER,
        HeaderValue::from_static(o.resource.as_str()),
    );
    r
}

/// `body`, keeping `guard` alive until the body is done or dropped.
fn holding<G: Send + Sync + 'static>(body: Body, guard: G) -> Body {
    body.map_frame(move |frame| {
        let _ = &guard;
        frame
    })
    .boxed()
}

fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| -> BoxError { match never {} })
        .boxed()
}

/// A received body, to forward: its last chunk carries the end of the stream ([`EndAhead`]).
fn incoming(body: Incoming) -> Body {
    EndAhead::new(body)
        .map_err(|e| -> BoxError { Box::new(e) })
        .boxed()
}

/// The request's host: `:authority` (absolute URIs, HTTP/2) or the `Host` header.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `req` satisfies every condition of `m` (Envoy semantics).
pub fn request_matches<B>(m: &RouteMatch, req: &Request<B>) -> bool {
    if !m.matches_path(req.uri().path()) {
        return false;
    }
    if m.method
        .as_deref()
        .is_some_and(|x| x != req.method().as_str())
    {
        return false;
    }
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if m.grpc_only && !is_grpc {
        return false;
    }
    let view = RequestView(req);
    let headers_hold = m
        .headers
        .iter()
        .all(|h| h.matches(view.header(&h.name).as_deref()));
    if !headers_hold {
        return false;
    }
    let query = req.uri().query().unwrap_or("");
    m.query
        .iter()
        .all(|q| q.matches(query_param(query, &q.name).as_deref()))
}

/// Drops hop-by-hop headers and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    // `te` goes through only as `trailers` (gRPC needs it).
    if headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// The request to send upstream in `proto`: origin-form URI and `Host` for HTTP/1.1,
/// absolute URI (scheme + authority) for HTTP/2.
fn upstream_request(
    method: &hyper::Method,
    uri: &Uri,
    headers: HeaderMap,
    host: Option<&str>,
    proto: Proto,
    body: Body,
) -> Request<Body> {
    // Cloning a `PathAndQuery` shares its bytes: the path is neither copied nor scanned again.
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.headers_mut() = headers;
    strip_hop_by_hop(req.headers_mut());
    // Only a proxy sets it, on the request it upgraded.
    req.headers_mut().remove(ORIG_PROTO);
    match proto {
        Proto::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::from(path);
            if let Some(host) = host
                && !req.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(host)
            {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        Proto::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
            // A Host that is no authority: `localhost`, as with none (HTTP/2 needs one).
            let authority = host
                .and_then(|h| h.parse().ok())
                .unwrap_or_else(|| Authority::from_static("localhost"));
            *req.uri_mut() =
                absolute(Some(authority), path.clone()).unwrap_or_else(|| Uri::from(path));
        }
    }
    req
}

/// Header on a request the client proxy carried as HTTP/2 through the tunnel although its
/// client spoke HTTP/1.1 (value `HTTP/1.1`): the server proxy removes it and speaks
/// HTTP/1.1 to the app, so the app sees the protocol the client used.
pub const ORIG_PROTO: &str = "switchyard-orig-proto";

/// `req` (built for HTTP/1.1) for HTTP/2 in a tunnel: `Host` becomes the `:authority` of an
/// absolute URI, `te` goes unless it is `trailers` (HTTP/2 allows nothing else), and
/// [`ORIG_PROTO`] says it was HTTP/1.1.
/// Returns `false`, the request unchanged, when its `Host` cannot be an authority (it then
/// goes as HTTP/1.1).
fn into_http2(req: &mut Request<Body>) -> bool {
    if req.version() == Version::HTTP_2 {
        return true;
    }
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok());
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Some(uri) = absolute(authority, path) else {
        return false;
    };
    req.headers_mut().remove(header::HOST);
    req.headers_mut()
        .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
    if req
        .headers()
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        req.headers_mut().remove(header::TE);
    }
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() = uri;
    true
}

/// `http://<authority><path>`, built from parsed parts (nothing is scanned again).
fn absolute(authority: Option<Authority>, path: PathAndQuery) -> Option<Uri> {
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
    parts.authority = Some(authority?);
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).ok()
}

fn proto_of(version: Version) -> Proto {
    if version == Version::HTTP_2 {
        Proto::Http2
    } else {
        Proto::Http1
    }
}

/// The retry policy of a route, in the decision module's terms.
fn retry_policy(p: &route::RetryPolicy) -> retry::RetryPolicy {
    let retry_on: RetryConditions = p
        .retry_on
        .iter()
        .filter_map(|c| c.as_str().parse::<retry::RetryOn>().ok())
        .collect();
    retry::RetryPolicy {
        retry_on,
        num_retries: p.num_retries,
        retriable_status_codes: p.retriable_status_codes.clone(),
    }
}

/// How one attempt failed before response headers.
#[derive(Debug)]
enum AttemptError {
    NoEndpoints,
    Send(SendError),
    Timeout,
}

impl AttemptError {
    fn outcome(&self) -> AttemptOutcome {
        match self {
            AttemptError::NoEndpoints | AttemptError::Send(SendError::Connect(_)) => {
                AttemptOutcome::ConnectFailure
            }
            AttemptError::Send(_) => AttemptOutcome::Reset,
            AttemptError::Timeout => AttemptOutcome::PerTryTimeout,
        }
    }

    fn response(&self, cluster: &str) -> Response<Body> {
        match self {
            AttemptError::NoEndpoints => local(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no healthy upstream ({cluster})"),
            ),
            AttemptError::Send(SendError::Connect(e)) => local(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error: {e}"),
            ),
            AttemptError::Send(SendError::Overloaded(o)) => overloaded(cluster, o),
            AttemptError::Send(e) => local(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            AttemptError::Timeout => local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        }
    }
}

/// What the access log and metrics record of one request.
struct Served {
    response: Response<Body>,
    route: String,
    upstream: Option<SocketAddr>,
    peer_identity: Option<String>,
}

impl Served {
    fn local(response: Response<Body>, route: impl Into<String>) -> Self {
        Served {
            response,
            route: route.into(),
            upstream: None,
            peer_identity: None,
        }
    }
}

impl Proxy {
    /// Serves a captured outbound connection detected as `proto` to `dst` with hyper.
    pub(super) async fn serve_http_outbound<S>(
        self: &Arc<Self>,
        io: S,
        proto: Proto,
        dst: SocketAddr,
    ) -> Result<(), ConnectionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.outbound_request(dst, req).await) }
        });
        let result = match proto {
            Proto::Http1 => {
                serve_until!(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), service),
                    self.shutdown
                )
            }
            // Many streams on one connection: fewer, larger writes (`Coalesce`).
            Proto::Http2 => {
                let turns = Turns::new();
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(Coalesce::new(io, &turns)), service);
                turns
                    .drive(async { serve_until!(conn, self.shutdown) })
                    .await
            }
        };
        result.map_err(ConnectionError::Http)
    }

    async fn outbound_request(
        self: &Arc<Self>,
        dst: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let version = req.version();
        let served = self.route_outbound(dst, req).await;
        let status = served.response.status().as_u16();
        let elapsed = start.elapsed();
        self.http_metrics.record(
            "outbound",
            &served.route,
            status,
            served.peer_identity.as_deref(),
            elapsed,
        );
        info!(
            target: "switchyard_sidecar::access",
            direction = "outbound",
            %method,
            %path,
            version = ?version,
            status,
            duration_us = elapsed.as_micros() as u64,
            route = %served.route,
            upstream = ?served.upstream,
            source_identity = %self.settings.identity,
            destination_identity = served.peer_identity.as_deref().unwrap_or("-"),
            "request"
        );
        served.response
    }

    async fn route_outbound(self: &Arc<Self>, dst: SocketAddr, req: Request<Incoming>) -> Served {
        let Some(config) = self.config.current() else {
            return Served::local(
                local(StatusCode::SERVICE_UNAVAILABLE, "no configuration yet"),
                "-",
            );
        };
        let routes = match config.outbound(dst) {
            Some(Outbound::Http {
                routes: Some(rc), ..
            }) => rc.clone(),
            _ => {
                return Served::local(
                    local(
                        StatusCode::NOT_FOUND,
                        format!("no route configuration for {dst}"),
                    ),
                    "-",
                );
            }
        };
        let host = host_of(&req);
        let vhost = host
            .as_deref()
            .and_then(|h| routes.virtual_host(h))
            .or_else(|| routes.virtual_host(&dst.to_string()));
        let Some(vhost) = vhost else {
            return Served::local(
                local(
                    StatusCode::NOT_FOUND,
                    format!("no virtual host for {}", host.as_deref().unwrap_or("-")),
                ),
                "-",
            );
        };
        let Some(route) = vhost
            .routes
            .iter()
            .find(|r| request_matches(&r.matcher, &req))
        else {
            return Served::local(
                local(StatusCode::NOT_FOUND, "no route matched"),
                vhost.name.clone(),
            );
        };
        match &route.action {
            RouteAction::DirectResponse(d) => {
                let status =
                    StatusCode::from_u16(d.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut r = match &d.body {
                    Some(b) => local(status, String::from_utf8_lossy(b).into_owned()),
                    None => {
                        let mut r = Response::new(empty());
                        *r.status_mut() = status;
                        r
                    }
                };
                r.headers_mut().remove(header::CONTENT_TYPE);
                Served::local(r, route.name.clone())
            }
            RouteAction::Forward(f) => {
                let mut served = self.forward(&config, f, host, req).await;
                served.route = route.name.clone();
                served
            }
        }
    }

    /// Sends `req` to one of `f`'s clusters, retrying as its policy allows.
    async fn forward(
        self: &Arc<Self>,
        config: &SidecarConfig,
        f: &Forward,
        host: Option<String>,
        req: Request<Incoming>,
    ) -> Served {
        let cluster = f.backends.pick(rand::rng().random()).to_string();
        let state = self.upstream(&cluster);
        // Held until the response body is done.
        let request_slot = match state.as_ref().map(|u| u.breaker.try_request()) {
            Some(Err(o)) => {
                debug!(%cluster, limit = o.limit, "request refused: max requests");
                return Served::local(overloaded(&cluster, &o), "-");
            }
            Some(Ok(slot)) => Some(slot),
            None => None,
        };
        let proto = proto_of(req.version());
        let policy = f.retry.as_ref().map(|p| (retry_policy(p), p));
        let deadline = f.timeout.map(|t| Instant::now() + t);
        let (parts, body) = req.into_parts();
        // Keep the body for replay when retries may need it and it is small and known.
        let length = body.size_hint().exact();
        let mut stream = Some(body);
        let replay: Option<Bytes> = match (&policy, length) {
            (Some(_), Some(n)) if n <= MAX_REPLAY_BODY => match stream.take() {
                Some(b) => match b.collect().await {
                    Ok(c) => Some(c.to_bytes()),
                    Err(e) => {
                        return Served::local(
                            local(StatusCode::BAD_REQUEST, format!("request body: {e}")),
                            "-",
                        );
                    }
                },
                None => None,
            },
            _ => None,
        };
        let mut retries = 0u32;
        // Held by the attempt a retry sends.
        let mut retry_slot: Option<CircuitGuard> = None;
        // Endpoints tried so far: a retry goes elsewhere when it can (`previous_hosts`).
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let body = match (&replay, stream.take()) {
                (Some(b), _) => Full::new(b.clone())
                    .map_err(|never: Infallible| -> BoxError { match never {} })
                    .boxed(),
                (None, Some(s)) => incoming(s),
                (None, None) => empty(),
            };
            let upstream_req = upstream_request(
                &parts.method,
                &parts.uri,
                parts.headers.clone(),
                host.as_deref(),
                proto,
                body,
            );
            let per_try = policy
                .as_ref()
                .and_then(|(_, p)| p.per_try_timeout)
                .map(|t| Instant::now() + t);
            let attempt_deadline = match (deadline, per_try) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let (result, upstream, identity) = self
                .attempt(
                    config,
                    &cluster,
                    state.as_ref(),
                    proto,
                    upstream_req,
                    attempt_deadline,
                    &tried,
                )
                .await;
            tried.extend(upstream);
            let outcome = match &result {
                Ok(r) => AttemptOutcome::Response {
                    status: r.status().as_u16(),
                    grpc_status: r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok()),
                },
                Err(e) => e.outcome(),
            };
            let route_timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            let may_replay = replay.is_some() || length == Some(0);
            // An overflow is not retried (as Envoy): the retry would overflow too.
            let overflowed = matches!(result, Err(AttemptError::Send(SendError::Overloaded(_))));
            // The cluster's retry slot is taken before the budget is charged, so a refused
            // slot spends no budget.
            if let Some((p, route_policy)) = &policy
                && may_replay
                && !route_timed_out
                && !overflowed
                && p.is_retriable(&outcome)
                && retries < route_policy.num_retries
                && let Some(slot) = state.as_ref().and_then(|u| match u.breaker.try_retry() {
                    Ok(slot) => Some(slot),
                    Err(o) => {
                        debug!(%cluster, limit = o.limit, "retry refused: max retries");
                        None
                    }
                })
                && p.decide(&outcome, retries, &self.retry_budget) == RetryDecision::Retry
            {
                retry_slot = Some(slot);
                retries += 1;
                self.http_metrics.retries.inc();
                let wait = retry::backoff(
                    retries,
                    route_policy.backoff.base,
                    route_policy.backoff.max,
                    &mut rand::rng(),
                );
                debug!(%cluster, retries, wait_ms = wait.as_millis() as u64, outcome = ?outcome, "retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            drop(retry_slot);
            return match result {
                Ok(r) => Served {
                    response: r.map(|b| match request_slot {
                        Some(slot) => holding(incoming(b), slot),
                        None => incoming(b),
                    }),
                    route: String::new(),
                    upstream,
                    peer_identity: identity,
                },
                Err(e) => Served {
                    response: e.response(&cluster),
                    route: String::new(),
                    upstream,
                    peer_identity: identity,
                },
            };
        }
    }

    /// One attempt: pick an endpoint of `cluster`, send, record how it went.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        config: &SidecarConfig,
        cluster: &str,
        upstream: Option<&Upstream>,
        proto: Proto,
        req: Request<Body>,
        deadline: Option<Instant>,
        avoid: &[SocketAddr],
    ) -> (
        Result<Response<Incoming>, AttemptError>,
        Option<SocketAddr>,
        Option<String>,
    ) {
        let Some(upstream) = upstream else {
            return (Err(AttemptError::NoEndpoints), None, None);
        };
        let Some(mut pick) = upstream.balancer.pick_avoiding(&mut rand::rng(), avoid) else {
            return (Err(AttemptError::NoEndpoints), None, None);
        };
        let addr = pick.addr();
        let transport = transport_of(config, cluster, addr);
        let identity = transport
            .as_ref()
            .and_then(|t| t.identity())
            .map(|i| i.to_string());
        let target = Target {
            cluster,
            addr,
            breaker: &upstream.breaker,
        };
        // To a mesh endpoint, HTTP/2 inside the tunnel whatever the app speaks: one tunnel
        // per endpoint carries every request; the server's proxy speaks the app's protocol.
        let mut req = req;
        let proto = match transport {
            Some(Transport::Hbone(_)) if self.settings.http2_upgrade && into_http2(&mut req) => {
                Proto::Http2
            }
            _ => proto,
        };
        let send = self
            .pool
            .send(target, proto, req, || self.dial(addr, transport.clone()));
        let result = match deadline {
            Some(d) => tokio::time::timeout_at(d, send).await.ok(),
            None => Some(send.await),
        };
        let result = match result {
            Some(Ok(r)) => {
                pick.record(if r.status().is_server_error() {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                });
                Ok(r)
            }
            None => {
                pick.record(Outcome::ServerError);
                Err(AttemptError::Timeout)
            }
            Some(Err(e @ SendError::Connect(_))) => {
                pick.record(Outcome::ConnectFailure);
                Err(AttemptError::Send(e))
            }
            // Nothing was sent: says nothing about the endpoint.
            Some(Err(e @ SendError::Overloaded(_))) => Err(AttemptError::Send(e)),
            Some(Err(e)) => {
                pick.record(Outcome::ServerError);
                Err(AttemptError::Send(e))
            }
        };
        (result, Some(addr), identity)
    }

    /// A new upstream byte stream to `addr`: an HBONE tunnel for mesh endpoints, plain TCP
    /// with the proxy mark otherwise.
    async fn dial(&self, addr: SocketAddr, transport: Option<Transport>) -> io::Result<UpstreamIo> {
        match transport {
            Some(Transport::Hbone(mtls)) => {
                let via = SocketAddr::new(addr.ip(), HBONE_PORT);
                let expected = mtls
                    .expected()
                    .unwrap_or_else(|| Expected::TrustDomain(self.settings.trust_domain.clone()));
                let stream = self
                    .hbone
                    .connect(addr, via, expected)
                    .await
                    .map_err(io::Error::other)?;
                self.metrics.outbound_hbone.inc();
                Ok(Box::new(stream))
            }
            _ => {
                let stream =
                    connect_marked(addr, self.settings.mark, self.settings.connect_timeout).await?;
                self.metrics.outbound_plaintext.inc();
                Ok(Box::new(stream))
            }
        }
    }
}

/// The transport of endpoint `addr` of `cluster`.
pub(super) fn transport_of(
    config: &SidecarConfig,
    cluster: &str,
    addr: SocketAddr,
) -> Option<Transport> {
    config.endpoints(cluster).and_then(|eps| {
        eps.iter()
            .find(|(_, e)| e.address == addr)
            .map(|(_, e)| e.transport.clone())
    })
}

/// Who sent an inbound connection.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    /// The verified SPIFFE ID (HBONE); `None`: plaintext.
    pub identity: Option<String>,
    /// The source address.
    pub addr: SocketAddr,
}

impl From<&Peer> for Caller {
    fn from(p: &Peer) -> Self {
        Caller {
            identity: Some(p.identity.to_string()),
            addr: p.addr,
        }
    }
}

/// A hyper request as RBAC reads it.
struct RequestView<'a, B>(&'a Request<B>);

impl<B> RequestAttributes for RequestView<'_, B> {
    fn path(&self) -> &str {
        self.0.uri().path()
    }

    fn header(&self, name: &str) -> Option<String> {
        let req = self.0;
        match name {
            ":authority" => host_of(req),
            ":method" => Some(req.method().as_str().to_string()),
            ":path" => req.uri().path_and_query().map(|p| p.as_str().to_string()),
            ":scheme" => Some(req.uri().scheme_str().unwrap_or("http").to_string()),
            name => {
                let values: Vec<&str> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| values.join(","))
            }
        }
    }
}

/// An inbound HTTP connection: its caller and target, and what its requests share.
struct InboundConn {
    caller: Caller,
    target: SocketAddr,
    /// `x-forwarded-client-cert` for the caller's identity (none: plaintext caller).
    xfcc: Option<HeaderValue>,
    /// The metrics' and access log's route name.
    route: String,
}

impl TunnelHandler {
    /// Serves HTTP from `caller` to the app at `target` (inside an HBONE tunnel, or a
    /// plaintext connection): each request is checked against the port's request-level
    /// authorization and goes to the app over a pooled connection, with the caller's identity
    /// in `x-forwarded-client-cert` (removed when the caller has none). Once `draining` is
    /// cancelled the connection finishes its requests in flight and closes (HTTP/1.1: after
    /// the current response; HTTP/2: `GOAWAY`).
    pub(super) async fn serve_http_inbound<S>(
        self,
        io: S,
        caller: Caller,
        target: SocketAddr,
        draining: CancellationToken,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // What every request of the connection shares, made once.
        let xfcc = caller
            .identity
            .as_ref()
            .and_then(|id| HeaderValue::from_str(&format!("By={};URI={id}", self.identity)).ok());
        let conn = Arc::new(InboundConn {
            caller,
            target,
            xfcc,
            route: format!("inbound|{}||", target.port()),
        });
        let handler = Arc::new(self);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let handler = handler.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(handler.inbound_request(&conn, req).await) }
        });
        // The caller's proxy speaks HTTP/2 with prior knowledge or HTTP/1.1.
        let (http2, io) = tokio::select! {
            read = read_h2_preface(io) => match read {
                Ok(read) => read,
                Err(e) => {
                    debug!(error = %e, %target, "inbound http connection failed before a request");
                    return;
                }
            },
            () = draining.cancelled() => return,
        };
        let result = if http2 {
            // Many streams on one connection: fewer, larger writes into the tunnel.
            let turns = Turns::new();
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(Coalesce::new(io, &turns)), service);
            turns.drive(async { serve_until!(conn, draining) }).await
        } else {
            serve_until!(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service),
                draining
            )
        };
        if let Err(e) = result {
            debug!(error = %e, %target, "inbound http connection ended with an error");
        }
    }

    /// The protocol to speak to the app on `port`: HTTP/2 when its inbound cluster says so
    /// (gRPC and `http2` ports), else what the original client spoke: HTTP/1.1 for a request
    /// the client proxy upgraded for the tunnel ([`ORIG_PROTO`]), the request's own version
    /// otherwise.
    fn app_proto(&self, port: u16, req: &Request<Incoming>) -> Proto {
        let http2_app = self.config.current().is_some_and(|config| {
            config
                .inbound(port)
                .and_then(|p| p.cluster.as_deref())
                .and_then(|name| config.cluster(name))
                .is_some_and(|c| c.protocol == UpstreamProtocol::Http2)
        });
        if http2_app {
            Proto::Http2
        } else if req
            .headers()
            .get(ORIG_PROTO)
            .is_some_and(|v| v == "HTTP/1.1")
        {
            Proto::Http1
        } else {
            proto_of(req.version())
        }
    }

    async fn inbound_request(&self, conn: &InboundConn, req: Request<Incoming>) -> Response<Body> {
        let (peer, target, route) = (&conn.caller, conn.target, conn.route.as_str());
        let start = Instant::now();
        let rbac = self.config.current().and_then(|c| {
            c.inbound(target.port()).map(|p| {
                if peer.identity.is_some() {
                    p.rbac.clone()
                } else {
                    p.plaintext_rbac.clone()
                }
            })
        });
        let decision = rbac.as_deref().map_or(Ok(()), |filters| {
            evaluate(
                filters,
                RbacLayer::Request,
                &RbacInput {
                    peer: peer.identity.as_deref(),
                    source_ip: peer.addr.ip(),
                    port: target.port(),
                    request: Some(&RequestView(&req)),
                },
            )
        });
        if let Err(denied) = decision {
            self.metrics.inbound_rbac_denied.inc();
            self.http_metrics.record(
                "inbound",
                route,
                403,
                peer.identity.as_deref(),
                start.elapsed(),
            );
            info!(
                target: "switchyard_sidecar::access",
                direction = "inbound",
                method = %req.method(),
                path = %req.uri().path(),
                status = 403,
                route = %route,
                source_identity = peer.identity.as_deref().unwrap_or("-"),
                destination_identity = %self.identity,
                reason = %denied,
                "request"
            );
            return local(StatusCode::FORBIDDEN, "RBAC: access denied");
        }
        let proto = self.app_proto(target.port(), &req);
        let host = host_of(&req);
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        headers.remove(XFCC);
        if let Some(v) = &conn.xfcc {
            headers.insert(XFCC, v.clone());
        }
        let upstream = upstream_request(
            &parts.method,
            &parts.uri,
            headers,
            host.as_deref(),
            proto,
            incoming(body),
        );
        let (mark, timeout) = (self.mark, self.connect_timeout);
        let into = Target {
            cluster: "inbound",
            addr: target,
            breaker: &self.inbound_breaker,
        };
        let result = self
            .pool
            .send(into, proto, upstream, || async move {
                let s = connect_marked(target, mark, timeout).await?;
                Ok(Box::new(s) as UpstreamIo)
            })
            .await;
        let response = match result {
            Ok(r) => r.map(incoming),
            Err(SendError::Overloaded(o)) => overloaded("inbound", &o),
            Err(e) => local(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        let status = response.status().as_u16();
        let elapsed = start.elapsed();
        self.http_metrics
            .record("inbound", route, status, peer.identity.as_deref(), elapsed);
        info!(
            target: "switchyard_sidecar::access",
            direction = "inbound",
            method = %parts.method,
            path = %parts.uri.path(),
            status,
            duration_us = elapsed.as_micros() as u64,
            route = %route,
            source_identity = peer.identity.as_deref().unwrap_or("-"),
            destination_identity = %self.identity,
            "request"
        );
        response
    }
}

#[cfg(test)]
mod tests;
