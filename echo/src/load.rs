//! The load client: `connections` connections to one HTTP or gRPC target, each sending one
//! request at a time, either on a fixed schedule ([`RateMode::Fixed`], open loop) or as fast
//! as answers come back ([`RateMode::Max`], closed loop). [`run`] returns a [`LoadReport`]
//! with counts, error kinds, backends seen and latency percentiles (HdrHistogram).
//!
//! At a fixed rate every request has an intended send time on the clock, and its latency is
//! measured from that time, not from when it could actually be sent: when the target stalls,
//! the requests queued behind the stall carry the wait in their latency instead of vanishing
//! from the percentiles (no coordinated omission). Requests whose intended time falls inside
//! the run but that could not be sent before it ended are counted as `unsent`.
//!
//! Failures never abort a run; each is counted under a kind (`connect`, `timeout`,
//! `http_503`, `grpc_unavailable`, ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::client::{ExchangeError, HttpConnection, HttpProtocol, grpc_channel};
use crate::pb::echo_client::EchoClient;
use crate::pb::{EchoReply, EchoRequest};
use crate::server::BACKEND_HEADER;

/// Per-request timeout when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest latency the histogram tracks exactly (larger values are recorded as this).
const MAX_TRACKED_MICROS: u64 = 3_600_000_000;

/// Why load options or their parts (URL, address, duration) are not usable.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL is not `http://host:port/path`.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A host name did not resolve.
    #[error("cannot resolve {host:?} (is the name right and DNS reachable?)")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver error, if it gave one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A duration is not `<number><unit>`.
    #[error("bad duration {text:?}: want a number and a unit (us, ms, s, m, h), e.g. 500ms or 5s")]
    BadDuration {
        /// The text given.
        text: String,
    },
    /// The options contradict themselves or are out of range.
    #[error("bad load options: {0}")]
    Invalid(String),
}

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadTarget {
    /// `GET path` over HTTP/1.1 or h2c.
    Http {
        /// The address connected to.
        addr: SocketAddr,
        /// `Host` / `:authority` sent unless [`LoadOptions::host`] overrides it.
        authority: String,
        /// Path and query, starting with `/`.
        path: String,
        /// HTTP/1.1 or HTTP/2 prior knowledge.
        protocol: HttpProtocol,
    },
    /// `switchyard.test.v1.Echo` over h2c.
    Grpc {
        /// The address connected to.
        addr: SocketAddr,
        /// `:authority` sent unless [`LoadOptions::host`] overrides it.
        authority: String,
        /// Each request is a round trip on one long-lived `EchoChat` stream per connection,
        /// instead of a unary `Echo` call.
        stream: bool,
    },
}

impl LoadTarget {
    /// Parses `http://host[:port][/path]` (port 80 by default), resolving a host name.
    pub async fn from_http_url(url: &str, protocol: HttpProtocol) -> Result<Self, LoadError> {
        let bad = |reason: &str| LoadError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "only http:// is supported (cleartext; use --http2 for h2c)",
            ));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = resolve(authority.host(), port).await?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        Ok(LoadTarget::Http {
            addr,
            authority: authority.as_str().to_owned(),
            path,
            protocol,
        })
    }

    /// Parses `host:port` (an address or a name to resolve) of a gRPC echo server.
    pub async fn from_grpc_addr(target: &str, stream: bool) -> Result<Self, LoadError> {
        let target = target.strip_prefix("http://").unwrap_or(target);
        let authority: hyper::http::uri::Authority =
            target
                .parse()
                .map_err(|e: hyper::http::uri::InvalidUri| LoadError::BadUrl {
                    url: target.to_owned(),
                    reason: format!("want host:port: {e}"),
                })?;
        let port = authority.port_u16().ok_or_else(|| LoadError::BadUrl {
            url: target.to_owned(),
            reason: "no port".to_owned(),
        })?;
        let addr = resolve(authority.host(), port).await?;
        Ok(LoadTarget::Grpc {
            addr,
            authority: authority.as_str().to_owned(),
            stream,
        })
    }

    /// How the target appears in the report: `http://authority/path` or
    /// `grpc://authority/<method>`.
    pub fn describe(&self) -> String {
        match self {
            LoadTarget::Http {
                authority, path, ..
            } => format!("http://{authority}{path}"),
            LoadTarget::Grpc {
                authority, stream, ..
            } => {
                let method = if *stream { "EchoChat" } else { "Echo" };
                format!("grpc://{authority}/switchyard.test.v1.Echo/{method}")
            }
        }
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, LoadError> {
    // `[::1]` as written in URLs.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolve_error = |source| LoadError::Resolve {
        host: host.to_owned(),
        source,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| resolve_error(Some(e)))?
        .next()
        .ok_or_else(|| resolve_error(None))
}

/// How fast requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateMode {
    /// Open loop: this many requests per second in total, spread evenly over the
    /// connections and scheduled by the clock.
    Fixed {
        /// Requests per second, all connections together; must be positive.
        per_second: f64,
    },
    /// Closed loop: each connection sends its next request as soon as the previous one is
    /// answered.
    Max,
}

/// The largest gRPC `message` [`LoadOptions::validate`] accepts: under tonic's default
/// 4 MiB limit for a decoded request, with room for the frame.
pub const MAX_GRPC_MESSAGE: usize = 4 * 1024 * 1024 - 1024;

/// What [`run`] does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadOptions {
    /// Where requests go.
    pub target: LoadTarget,
    /// How long requests are started for; requests in flight at the end are waited for.
    pub duration: Duration,
    /// Parallel connections, each with one request in flight at a time; at least 1.
    pub connections: usize,
    /// Fixed rate or as fast as possible.
    pub rate: RateMode,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2, gRPC) to send instead of the target's.
    pub host: Option<String>,
    /// Deadline for one request, including connecting when it has to.
    pub timeout: Duration,
    /// The `message` of every gRPC `EchoRequest` (the server sends it back).
    pub grpc_message: String,
}

impl LoadOptions {
    /// One connection, as fast as possible, for `duration`, with [`DEFAULT_TIMEOUT`].
    pub fn new(target: LoadTarget, duration: Duration) -> Self {
        LoadOptions {
            target,
            duration,
            connections: 1,
            rate: RateMode::Max,
            host: None,
            timeout: DEFAULT_TIMEOUT,
            grpc_message: "load".to_owned(),
        }
    }

    /// Checks the ranges [`run`] relies on; every problem is reported at once.
    pub fn validate(&self) -> Result<(), LoadError> {
        let mut problems = Vec::new();
        if self.connections == 0 {
            problems.push("connections must be at least 1".to_owned());
        }
        if let RateMode::Fixed { per_second } = self.rate
            && !(per_second.is_finite() && per_second > 0.0)
        {
            problems.push(format!("rate must be a positive number, got {per_second}"));
        }
        if self.duration.is_zero() {
            problems.push("duration must be more than 0".to_owned());
        }
        if self.timeout.is_zero() {
            problems.push("timeout must be more than 0".to_owned());
        }
        if self.grpc_message.len() > MAX_GRPC_MESSAGE {
            problems.push(format!(
                "the gRPC message must be at most {MAX_GRPC_MESSAGE} bytes (the server's \
                 limit for a whole request is 4 MiB), got {}",
                self.grpc_message.len()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Invalid(problems.join("; ")))
        }
    }
}

/// Which [`RateMode`] a report is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// [`RateMode::Fixed`].
    Fixed,
    /// [`RateMode::Max`].
    Max,
}

/// Latency percentiles in milliseconds, over every request sent (answered, failed or timed
/// out), measured from the intended send time at a fixed rate; all 0 when nothing was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The result of a [`run`]; `switchyard-echo load` prints it as one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// [`LoadTarget::describe`].
    pub target: String,
    /// `fixed` or `max`.
    pub mode: LoadMode,
    /// Connections used.
    pub connections: usize,
    /// The requested rate (requests/s) in `fixed` mode.
    pub rate_requested: Option<f64>,
    /// Wall time from the first request's start to the last one's end, in seconds.
    pub duration_s: f64,
    /// Requests sent (`ok + errors`).
    pub requests: u64,
    /// Requests answered with HTTP status < 400 or gRPC `OK`.
    pub ok: u64,
    /// Requests that failed in any way.
    pub errors: u64,
    /// `errors` by kind: `connect`, `timeout`, `closed`, `protocol`, `body`, `http_<status>`,
    /// `grpc_<code>`, `stream_ended`.
    pub error_kinds: BTreeMap<String, u64>,
    /// Requests scheduled (fixed rate) within the run that could not be sent before it
    /// ended because earlier ones were still waiting: the client or target fell behind.
    pub unsent: u64,
    /// `requests / duration_s`.
    pub rate_achieved: f64,
    /// Latency percentiles in milliseconds.
    pub latency_ms: LatencySummary,
    /// Answers per backend name (`x-backend` header or `EchoReply.backend`), failed answers
    /// included.
    pub backends: BTreeMap<String, u64>,
}

/// Sends load as `options` say and reports what happened. Never fails: connection and
/// request failures are counted in [`LoadReport::error_kinds`]. Options are expected to
/// pass [`LoadOptions::validate`]; zero connections are taken as one and a non-positive
/// rate sends nothing.
pub async fn run(options: LoadOptions) -> LoadReport {
    let connections = options.connections.max(1);
    let start = Instant::now();
    let end = start + options.duration;
    let progress = Arc::new(Progress::default());
    tracing::info!(
        target_url = %options.target.describe(),
        connections,
        rate = ?options.rate,
        duration = ?options.duration,
        "load starting"
    );

    let mut workers = tokio::task::JoinSet::new();
    for index in 0..connections {
        let schedule = match options.rate {
            RateMode::Max => Schedule::Max,
            RateMode::Fixed { per_second } if per_second.is_finite() && per_second > 0.0 => {
                // Connection i sends at i/R, i/R + N/R, i/R + 2N/R, ...: R/s in total,
                // evenly interleaved.
                Schedule::Fixed {
                    first: Duration::from_secs_f64(index as f64 / per_second),
                    period: Duration::from_secs_f64(connections as f64 / per_second),
                }
            }
            RateMode::Fixed { .. } => Schedule::Nothing,
        };
        let client = Client::new(&options);
        let progress = progress.clone();
        workers.spawn(worker(
            client,
            schedule,
            start,
            end,
            options.timeout,
            progress,
        ));
    }

    let ticker = tokio::spawn(report_progress(progress.clone(), start));
    let mut total = Tally::new();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(tally) => total.merge(tally),
            Err(error) => tracing::warn!(%error, "load connection task failed"),
        }
    }
    ticker.abort();
    let elapsed = start.elapsed();
    let report = total.report(&options, connections, elapsed);
    tracing::info!(
        requests = report.requests,
        errors = report.errors,
        rate = report.rate_achieved,
        "load done"
    );
    report
}

/// Counters the progress log reads while workers run.
#[derive(Debug, Default)]
struct Progress {
    requests: AtomicU64,
    errors: AtomicU64,
}

async fn report_progress(progress: Arc<Progress>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tick.tick().await;
        tracing::info!(
            elapsed_s = start.elapsed().as_secs(),
            requests = progress.requests.load(Ordering::Relaxed),
            errors = progress.errors.load(Ordering::Relaxed),
            "load progress"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Schedule {
    /// Requests at `start + first + k * period` while that is before the end.
    Fixed {
        first: Duration,
        period: Duration,
    },
    Max,
    Nothing,
}

/// How late tokio's timer may wake a fixed-rate sender (1 ms ticks, plus scheduling).
const TIMER_SLACK: Duration = Duration::from_millis(2);

async fn worker(
    mut client: Client,
    schedule: Schedule,
    start: Instant,
    end: Instant,
    timeout: Duration,
    progress: Arc<Progress>,
) -> Tally {
    let mut tally = Tally::new();
    match schedule {
        Schedule::Nothing => {}
        Schedule::Max => {
            while Instant::now() < end {
                let sent = Instant::now();
                let outcome = client.send(timeout).await;
                tally.record(&outcome, sent.elapsed(), &progress);
            }
        }
        Schedule::Fixed { first, period } => {
            let mut intended = start + first;
            // When this connection's previous answer came.
            let mut free_at = start;
            while intended < end {
                if Instant::now() >= end {
                    // Behind schedule at the end: what is left was never sent.
                    let left = (end - intended).as_secs_f64() / period.as_secs_f64();
                    tally.unsent += left.ceil() as u64;
                    break;
                }
                tokio::time::sleep_until(intended).await;
                // A send late because the previous answer came late is the target's
                // latency too: counted from the intended time (no coordinated omission).
                // A send late only because the timer woke late (tokio's timer ticks in
                // whole milliseconds) is not: counted from the send, or every latency
                // would carry up to a millisecond of timer slack. Later than that (this
                // thread starved of CPU, say) counts from the intended time again.
                let now = Instant::now();
                let from = if free_at > intended || now - intended > TIMER_SLACK {
                    intended
                } else {
                    now
                };
                let outcome = client.send(timeout).await;
                tally.record(&outcome, from.elapsed(), &progress);
                free_at = Instant::now();
                intended += period;
            }
        }
    }
    tally
}

/// What one request came to.
#[derive(Debug)]
struct Outcome {
    /// `None` when it succeeded, else the error kind.
    error: Option<String>,
    /// The backend that answered, if one did.
    backend: Option<String>,
}

impl Outcome {
    fn failed(kind: impl Into<String>) -> Self {
        Outcome {
            error: Some(kind.into()),
            backend: None,
        }
    }
}

struct Tally {
    latency_us: Histogram<u64>,
    requests: u64,
    ok: u64,
    error_kinds: BTreeMap<String, u64>,
    backends: BTreeMap<String, u64>,
    unsent: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency_us: Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)
                .expect("constant histogram bounds are valid"),
            requests: 0,
            ok: 0,
            error_kinds: BTreeMap::new(),
            backends: BTreeMap::new(),
            unsent: 0,
        }
    }

    fn record(&mut self, outcome: &Outcome, latency: Duration, progress: &Progress) {
        self.requests += 1;
        progress.requests.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
        match &outcome.error {
            None => self.ok += 1,
            Some(kind) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                *self.error_kinds.entry(kind.clone()).or_default() += 1;
            }
        }
        if let Some(backend) = &outcome.backend {
            *self.backends.entry(backend.clone()).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        if let Err(error) = self.latency_us.add(&other.latency_us) {
            tracing::warn!(?error, "merging latency histograms");
        }
        self.requests += other.requests;
        self.ok += other.ok;
        self.unsent += other.unsent;
        for (kind, n) in other.error_kinds {
            *self.error_kinds.entry(kind).or_default() += n;
        }
        for (backend, n) in other.backends {
            *self.backends.entry(backend).or_default() += n;
        }
    }

    fn report(self, options: &LoadOptions, connections: usize, elapsed: Duration) -> LoadReport {
        let h = &self.latency_us;
        let ms = |micros: f64| (micros / 1000.0 * 1000.0).round() / 1000.0;
        let latency_ms = if h.is_empty() {
            LatencySummary::default()
        } else {
            LatencySummary {
                p50: ms(h.value_at_quantile(0.5) as f64),
                p90: ms(h.value_at_quantile(0.9) as f64),
                p99: ms(h.value_at_quantile(0.99) as f64),
                p999: ms(h.value_at_quantile(0.999) as f64),
                max: ms(h.max() as f64),
                mean: ms(h.mean()),
            }
        };
        let duration_s = elapsed.as_secs_f64();
        let errors = self.requests - self.ok;
        let (mode, rate_requested) = match options.rate {
            RateMode::Fixed { per_second } => (LoadMode::Fixed, Some(per_second)),
            RateMode::Max => (LoadMode::Max, None),
        };
        LoadReport {
            target: options.target.describe(),
            mode,
            connections,
            rate_requested,
            duration_s: (duration_s * 1000.0).round() / 1000.0,
            requests: self.requests,
            ok: self.ok,
            errors,
            error_kinds: self.error_kinds,
            unsent: self.unsent,
            rate_achieved: if duration_s > 0.0 {
                ((self.requests as f64 / duration_s) * 10.0).round() / 10.0
            } else {
                0.0
            },
            latency_ms,
            backends: self.backends,
        }
    }
}

/// One connection's client; reconnects on the next request after its connection failed.
enum Client {
    Http(HttpClient),
    // Boxed: an open chat stream makes it several times larger than the HTTP client.
    Grpc(Box<GrpcClient>),
}

impl Client {
    fn new(options: &LoadOptions) -> Self {
        match &options.target {
            LoadTarget::Http {
                addr,
                authority,
                path,
                protocol,
            } => Client::Http(HttpClient {
                addr: *addr,
                authority: options.host.clone().unwrap_or_else(|| authority.clone()),
                path: path.clone(),
                protocol: *protocol,
                connection: None,
            }),
            LoadTarget::Grpc {
                addr,
                authority,
                stream,
            } => Client::Grpc(Box::new(GrpcClient {
                addr: *addr,
                authority: options.host.clone().unwrap_or_else(|| authority.clone()),
                stream: *stream,
                message: options.grpc_message.clone(),
                client: None,
                chat: None,
            })),
        }
    }

    /// One request with a deadline; a timed-out request leaves its connection unusable
    /// (an HTTP/1.1 response may still be on the way), so the next one reconnects.
    async fn send(&mut self, timeout: Duration) -> Outcome {
        let attempt = match self {
            Client::Http(c) => tokio::time::timeout(timeout, c.send()).await,
            Client::Grpc(c) => tokio::time::timeout(timeout, c.send()).await,
        };
        attempt.unwrap_or_else(|_| {
            match self {
                Client::Http(c) => c.connection = None,
                Client::Grpc(c) => c.chat = None,
            }
            Outcome::failed("timeout")
        })
    }
}

struct HttpClient {
    addr: SocketAddr,
    authority: String,
    path: String,
    protocol: HttpProtocol,
    connection: Option<HttpConnection>,
}

impl HttpClient {
    async fn send(&mut self) -> Outcome {
        let connection = match &mut self.connection {
            Some(c) if !c.is_closed() => c,
            _ => match HttpConnection::connect(self.addr, self.protocol).await {
                Ok(c) => self.connection.insert(c),
                Err(error) => return Outcome::failed(exchange_error_kind(&error)),
            },
        };
        let response = match connection.request(&self.authority, &self.path) {
            Ok(request) => connection.send(request).await,
            Err(error) => Err(error),
        };
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                self.connection = None;
                return Outcome::failed(exchange_error_kind(&error));
            }
        };
        let status = response.status().as_u16();
        let backend = response
            .headers()
            .get(BACKEND_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read the whole body: the answer is only complete then, and HTTP/1.1 needs it
        // consumed before the connection carries the next request.
        if let Err(error) = response.into_body().collect().await {
            tracing::debug!(%error, "reading response body");
            self.connection = None;
            return Outcome {
                error: Some("body".to_owned()),
                backend,
            };
        }
        Outcome {
            error: (status >= 400).then(|| format!("http_{status}")),
            backend,
        }
    }
}

fn exchange_error_kind(error: &ExchangeError) -> &'static str {
    match error {
        ExchangeError::Connect(_) => "connect",
        ExchangeError::BadRequest(_) => "bad_request",
        ExchangeError::Http(e) if e.is_timeout() => "timeout",
        ExchangeError::Http(e) if e.is_closed() || e.is_incomplete_message() || e.is_canceled() => {
            "closed"
        }
        ExchangeError::Http(_) => "protocol",
    }
}

/// An open `EchoChat` stream: requests go in through `requests`, replies come out in order.
struct Chat {
    requests: mpsc::Sender<EchoRequest>,
    replies: tonic::Streaming<EchoReply>,
}

struct GrpcClient {
    addr: SocketAddr,
    authority: String,
    stream: bool,
    message: String,
    client: Option<EchoClient<Channel>>,
    chat: Option<Chat>,
}

impl GrpcClient {
    async fn send(&mut self) -> Outcome {
        let client = match &mut self.client {
            Some(c) => c,
            None => match grpc_channel(self.addr, &self.authority, None).await {
                // The channel reconnects by itself after this.
                Ok(channel) => self.client.insert(EchoClient::new(channel)),
                Err(_) => return Outcome::failed("connect"),
            },
        };
        let request = EchoRequest {
            message: self.message.clone(),
        };
        let reply = if self.stream {
            chat_round_trip(client, &mut self.chat, request).await
        } else {
            client.echo(request).await.map(tonic::Response::into_inner)
        };
        match reply {
            Ok(reply) => Outcome {
                error: None,
                backend: Some(reply.backend),
            },
            Err(status) => Outcome::failed(grpc_error_kind(status.code())),
        }
    }
}

async fn chat_round_trip(
    client: &mut EchoClient<Channel>,
    chat: &mut Option<Chat>,
    request: EchoRequest,
) -> Result<EchoReply, tonic::Status> {
    let open = match chat {
        Some(open) => open,
        None => {
            let (requests, rx) = mpsc::channel(1);
            let replies = client
                .echo_chat(ReceiverStream::new(rx))
                .await?
                .into_inner();
            chat.insert(Chat { requests, replies })
        }
    };
    let result = async {
        open.requests
            .send(request)
            .await
            .map_err(|_| tonic::Status::unavailable("stream_ended"))?;
        open.replies
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unavailable("stream_ended"))
    }
    .await;
    if result.is_err() {
        // Open a new stream for the next request.
        *chat = None;
    }
    result
}

/// `grpc_<code>` in snake case, e.g. `grpc_unavailable`, `grpc_deadline_exceeded`.
fn grpc_error_kind(code: tonic::Code) -> String {
    let name = format!("{code:?}");
    let mut kind = String::from("grpc");
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            kind.push('_');
        }
        kind.push(c.to_ascii_lowercase());
    }
    kind
}

/// Parses `500ms`, `5s`, `1.5s`, `2m`, `1h` or `250us`.
pub fn parse_duration(text: &str) -> Result<Duration, LoadError> {
    let bad = || LoadError::BadDuration {
        text: text.to_owned(),
    };
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| c.is_alphabetic()).ok_or_else(bad)?;
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| bad())
}

#[cfg(test)]
mod tests;
