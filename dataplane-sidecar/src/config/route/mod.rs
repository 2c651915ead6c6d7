//! Route configurations (RDS, and the inline ones of inbound HTTP chains): virtual hosts
//! found by `Host`, routes tried in order, and what a matching route does.
//!
//! gRPC service and method matches arrive as path matches (`/<service>/<method>` exact,
//! `/<service>/` prefix, or a regex), as the control plane translates GRPCRoutes; HTTP method
//! matches arrive as a `:method` header matcher and are lifted into [`RouteMatch::method`].

use std::collections::HashMap;
use std::time::Duration;

use super::matcher::{Pattern, StringMatcher};

pub(crate) mod convert;

pub(crate) use convert::convert;

/// Envoy's route timeout when a route does not set one.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's base retry back-off when a policy does not set one.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(25);

/// A route configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Name (`<port>`, `outbound-http`, or `inbound|<port>||` for inline ones).
    pub name: String,
    /// Virtual hosts in configuration order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Whether the port of `Host` is dropped before matching domains.
    pub ignore_port_in_host_matching: bool,
    index: DomainIndex,
}

/// Domain lookup, built once per configuration.
#[derive(Debug, Clone, Default, PartialEq)]
struct DomainIndex {
    exact: HashMap<String, usize>,
    /// `*<suffix>`, longest suffix first.
    suffix: Vec<(String, usize)>,
    /// `<prefix>*`, longest prefix first.
    prefix: Vec<(String, usize)>,
    any: Option<usize>,
}

impl RouteConfig {
    /// The virtual host serving `host` (the `Host`/`:authority` value), with Envoy's
    /// precedence: exact domain, then the longest `*suffix`, then the longest `prefix*`,
    /// then `*`. Comparison is case-insensitive; a wildcard matches at least one character.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let mut host = host.to_ascii_lowercase();
        if self.ignore_port_in_host_matching {
            host = strip_port(&host).to_string();
        }
        let i = &self.index;
        let hit = i
            .exact
            .get(&host)
            .copied()
            .or_else(|| {
                i.suffix
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, v)| *v)
            })
            .or_else(|| {
                i.prefix
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, v)| *v)
            })
            .or(i.any)?;
        self.virtual_hosts.get(hit)
    }

    /// Every cluster a route of this configuration may send to.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.virtual_hosts
            .iter()
            .flat_map(|v| v.routes.iter())
            .flat_map(|r| match &r.action {
                RouteAction::Forward(f) => f.backends.clusters().collect::<Vec<_>>(),
                RouteAction::DirectResponse(_) => Vec::new(),
            })
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

/// A virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// Name (`<host>:<port>`).
    pub name: String,
    /// Domains as configured (lowercase): `name`, `name:port`, `*.suffix`, `prefix.*`, `*`.
    pub domains: Vec<String>,
    /// Routes; the first whose match holds wins.
    pub routes: Vec<Route>,
}

/// A route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Name (`<namespace>/<route>#<rule>.<match>` for routes from HTTPRoute/GRPCRoute).
    pub name: String,
    /// When it applies.
    pub matcher: RouteMatch,
    /// What it does.
    pub action: RouteAction,
}

/// Conditions of a route; all must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// Path condition (on the path without query string).
    pub path: PathMatch,
    /// Whether prefix and exact path matches are case-sensitive (regexes always are).
    pub case_sensitive: bool,
    /// Exact HTTP method, when the route matches one.
    pub method: Option<String>,
    /// Header conditions (names lowercase, pseudo-headers like `:authority` included).
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query: Vec<QueryMatch>,
    /// Only gRPC requests (`content-type: application/grpc*`).
    pub grpc_only: bool,
}

impl RouteMatch {
    /// Whether `path` (without query string) satisfies the path condition.
    pub fn matches_path(&self, path: &str) -> bool {
        let eq = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let starts = |p: &str| {
            path.len() >= p.len() && path.is_char_boundary(p.len()) && eq(&path[..p.len()], p)
        };
        match &self.path {
            PathMatch::Prefix(p) => starts(p),
            PathMatch::Exact(p) => eq(path, p),
            PathMatch::SeparatedPrefix(p) => {
                starts(p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Starts with.
    Prefix(String),
    /// Equal.
    Exact(String),
    /// Equal, or starts with it followed by `/` (whole segments; Gateway API `PathPrefix`).
    SeparatedPrefix(String),
    /// The whole path matches.
    Regex(Pattern),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// Lowercase header name.
    pub name: String,
    /// The condition.
    pub rule: HeaderRule,
    /// Whether the result is negated.
    pub invert: bool,
    /// Whether an absent header is compared as an empty value.
    pub treat_missing_as_empty: bool,
}

/// What a header must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderRule {
    /// Present (`true`) or absent (`false`).
    Present(bool),
    /// Its value matches.
    Value(StringMatcher),
}

impl HeaderMatch {
    /// Whether the header, with `value` (several values joined with `,`; `None` when
    /// absent), satisfies the condition. Envoy semantics: an absent header fails a value
    /// condition, so an inverted one holds.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let value = match value {
            None if self.treat_missing_as_empty => Some(""),
            v => v,
        };
        let hit = match (&self.rule, value) {
            (HeaderRule::Present(want), v) => v.is_some() == *want,
            (HeaderRule::Value(m), Some(v)) => m.matches(v),
            (HeaderRule::Value(_), None) => false,
        };
        hit != self.invert
    }
}

/// A query parameter condition.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// Its value must match; `None`: it must be present.
    pub value: Option<StringMatcher>,
}

impl QueryMatch {
    /// Whether the parameter (its first value, decoded; `None` when absent) satisfies it.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.value, value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(m), Some(v)) => m.matches(v),
        }
    }
}

/// What a route does.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// Forward upstream.
    Forward(Forward),
    /// Answer locally (a rule without usable backends answers 500).
    DirectResponse(DirectResponse),
}

/// Forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// Where to.
    pub backends: Backends,
    /// Whole-request timeout (from the first byte upstream to the end of the response);
    /// `None`: none. A route that sets none gets [`DEFAULT_ROUTE_TIMEOUT`], as in Envoy.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
    /// Status when the cluster is unknown (503 unless configured).
    pub cluster_not_found_status: u16,
}

/// The cluster(s) of a forwarding route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backends {
    /// One cluster.
    Cluster(String),
    /// Weighted split (weights sum to more than zero; zero-weight entries get nothing).
    Weighted(Vec<WeightedCluster>),
}

/// One share of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Relative weight.
    pub weight: u32,
}

impl Backends {
    /// Every cluster named.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Backends::Cluster(c) => (Some(c.as_str()), &[][..]),
            Backends::Weighted(w) => (None, w.as_slice()),
        };
        one.into_iter()
            .chain(many.iter().map(|w| w.cluster.as_str()))
    }

    /// Sum of the weights (1 for a single cluster).
    pub fn total_weight(&self) -> u64 {
        match self {
            Backends::Cluster(_) => 1,
            Backends::Weighted(w) => w.iter().map(|c| u64::from(c.weight)).sum(),
        }
    }

    /// The cluster for a draw `r` (uniform in `0..total_weight()`; reduced modulo it).
    pub fn pick(&self, r: u64) -> &str {
        match self {
            Backends::Cluster(c) => c,
            Backends::Weighted(w) => {
                let mut r = r % self.total_weight().max(1);
                for c in w {
                    if r < u64::from(c.weight) {
                        return &c.cluster;
                    }
                    r -= u64::from(c.weight);
                }
                // unreachable with a positive total; the last share is a safe answer
                w.last().map_or("", |c| c.cluster.as_str())
            }
        }
    }
}

/// A local answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    /// HTTP status.
    pub status: u16,
    /// Body, if any.
    pub body: Option<Vec<u8>>,
}

/// Retries of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Conditions that allow a retry.
    pub retry_on: Vec<RetryOn>,
    /// Retries after the first attempt.
    pub num_retries: u32,
    /// Timeout of each attempt; `None`: only the route timeout.
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried under [`RetryOn::RetriableStatusCodes`].
    pub retriable_status_codes: Vec<u16>,
    /// Back-off between attempts (full jitter in Envoy).
    pub backoff: Backoff,
}

/// Exponential back-off bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First interval.
    pub base: Duration,
    /// Upper bound (10 × base unless set).
    pub max: Duration,
}

/// A retry condition, by its Envoy `retry_on` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetryOn {
    /// `5xx`: any 5xx response, reset or connect failure.
    FiveXx,
    /// `gateway-error`: 502, 503, 504.
    GatewayError,
    /// `reset`: the upstream reset or did not answer.
    Reset,
    /// `reset-before-request`: reset before the request was sent.
    ResetBeforeRequest,
    /// `connect-failure`.
    ConnectFailure,
    /// `envoy-ratelimited`: the upstream answered with `x-envoy-ratelimited`.
    EnvoyRateLimited,
    /// `retriable-4xx`: 409.
    Retriable4xx,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// `retriable-status-codes`: the policy's status list.
    RetriableStatusCodes,
    /// `cancelled` (gRPC status).
    GrpcCancelled,
    /// `deadline-exceeded` (gRPC status).
    GrpcDeadlineExceeded,
    /// `internal` (gRPC status).
    GrpcInternal,
    /// `resource-exhausted` (gRPC status).
    GrpcResourceExhausted,
    /// `unavailable` (gRPC status).
    GrpcUnavailable,
}

impl RetryOn {
    /// Every condition.
    pub const ALL: [RetryOn; 14] = [
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ResetBeforeRequest,
        RetryOn::ConnectFailure,
        RetryOn::EnvoyRateLimited,
        RetryOn::Retriable4xx,
        RetryOn::RefusedStream,
        RetryOn::RetriableStatusCodes,
        RetryOn::GrpcCancelled,
        RetryOn::GrpcDeadlineExceeded,
        RetryOn::GrpcInternal,
        RetryOn::GrpcResourceExhausted,
        RetryOn::GrpcUnavailable,
    ];

    /// The Envoy name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ResetBeforeRequest => "reset-before-request",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::EnvoyRateLimited => "envoy-ratelimited",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::GrpcCancelled => "cancelled",
            RetryOn::GrpcDeadlineExceeded => "deadline-exceeded",
            RetryOn::GrpcInternal => "internal",
            RetryOn::GrpcResourceExhausted => "resource-exhausted",
            RetryOn::GrpcUnavailable => "unavailable",
        }
    }

    /// The condition named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        RetryOn::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

#[cfg(test)]
mod tests;
