//! Gateway API routes: `gateway.networking.k8s.io/v1` `HTTPRoute` and `GRPCRoute` as serde
//! types, and their conversion into [`RouteInput`].
//!
//! The `gateway-api` crate is built against a different kube / k8s-openapi release than this
//! workspace, so the subset a mesh needs is defined here by hand, following the v1 API
//! (and GEP-1731 for retries, GEP-2257 for durations). Only what the mesh acts on is
//! accepted: fields outside this subset (filters, session persistence...) are rejected as
//! unknown fields rather than silently ignored. Per GAMMA, only `Service` parents attach a
//! route to the mesh; parents of other kinds (Gateways) are skipped, and `hostnames` are read
//! but not used.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchyard_model::input::{BackendRefInput, ParentRefInput, RouteInput, RouteRuleInput};
use switchyard_model::{HeaderMatch, ObjectKey, RetryPolicy, RouteKind, RouteMatch, StringMatch};

use super::k8s::{FieldError, FieldPath, port_number};

#[cfg(test)]
mod tests;

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Largest backend weight the Gateway API allows.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// An `HTTPRoute` (`gateway.networking.k8s.io/v1`, also read as `v1beta1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `HTTPRoute`.
    pub kind: String,
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The route.
    pub spec: HttpRouteSpec,
    /// Written by controllers; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// What the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Host names (not used by a mesh: the parent Service decides).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, in precedence order.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A parent reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    /// API group (default `gateway.networking.k8s.io`; `""` or `core` for a Service).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Listener name (Gateways only).
    #[serde(default)]
    pub section_name: Option<String>,
    /// Port of the parent.
    #[serde(default)]
    pub port: Option<i32>,
}

/// A backend reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// API group (default `""`, the core group).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`, the only one supported).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<i32>,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A rule of an `HTTPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Optional rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches (any); none means every request.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Retries (GEP-1731).
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
}

/// One match of an `HTTPRoute` rule: every condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Path condition (default: prefix `/`).
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// HTTP method.
    #[serde(default)]
    pub method: Option<HttpMethod>,
}

/// A path condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// How to match (default `PathPrefix`).
    #[serde(default, rename = "type")]
    pub match_type: Option<PathMatchType>,
    /// The path (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// How a path is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    /// The whole path.
    Exact,
    /// Whole leading segments.
    PathPrefix,
    /// An RE2 regular expression.
    RegularExpression,
}

/// A header (or query parameter) condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// How to match (default `Exact`).
    #[serde(default, rename = "type")]
    pub match_type: Option<ValueMatchType>,
    /// Header or parameter name.
    pub name: String,
    /// Value or pattern.
    pub value: String,
}

/// How a header, query parameter or gRPC method is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueMatchType {
    /// Equal.
    Exact,
    /// An RE2 regular expression.
    RegularExpression,
}

/// HTTP methods the Gateway API allows in a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `CONNECT`.
    Connect,
    /// `OPTIONS`.
    Options,
    /// `TRACE`.
    Trace,
    /// `PATCH`.
    Patch,
}

impl HttpMethod {
    /// The method as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
        }
    }
}

/// `HTTPRoute` rule timeouts (GEP-1742).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// Whole request, retries included; `0s` disables it.
    #[serde(default)]
    pub request: Option<GatewayDuration>,
    /// One attempt to a backend.
    #[serde(default)]
    pub backend_request: Option<GatewayDuration>,
}

/// `HTTPRoute` rule retries (GEP-1731).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    /// Status codes (400-599) that are retried; none: connection failures and 5xx.
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Retries after the first attempt (default 1).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Base backoff between attempts.
    #[serde(default)]
    pub backoff: Option<GatewayDuration>,
}

/// A `GRPCRoute` (`gateway.networking.k8s.io/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRoute {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `GRPCRoute`.
    pub kind: String,
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The route.
    pub spec: GrpcRouteSpec,
    /// Written by controllers; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `GRPCRoute.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    /// What the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Host names (not used by a mesh).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, in precedence order.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// A rule of a `GRPCRoute`. The v1 API has no timeouts or retries on gRPC rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    /// Optional rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches (any); none means every call.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// One match of a `GRPCRoute` rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// Service and method condition.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Header (metadata) conditions.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

/// A gRPC service/method condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// How to match (default `Exact`).
    #[serde(default, rename = "type")]
    pub match_type: Option<ValueMatchType>,
    /// Fully qualified service, e.g. `shop.v1.Cart`.
    #[serde(default)]
    pub service: Option<String>,
    /// Method, e.g. `AddItem`.
    #[serde(default)]
    pub method: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Durations

/// A Gateway API duration (GEP-2257): one to four `<number><unit>` parts, numbers of up to
/// five digits, units `h`, `m`, `s`, `ms`; e.g. `10s`, `500ms`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GatewayDuration(pub Duration);

/// A string that is not a Gateway API duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected one to four <number><unit> parts with units h, m, s or ms, like \"10s\", \"500ms\" or \"1h30m\""
)]
pub struct InvalidDuration(pub String);

impl FromStr for GatewayDuration {
    type Err = InvalidDuration;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDuration(s.to_string());
        let bytes = s.as_bytes();
        let mut total = Duration::ZERO;
        let mut parts = 0;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || i - start > 5 {
                return Err(invalid());
            }
            let n: u64 = s[start..i].parse().map_err(|_| invalid())?;
            let unit = match (bytes.get(i), bytes.get(i + 1)) {
                (Some(b'm'), Some(b's')) => {
                    i += 2;
                    Duration::from_millis(1)
                }
                (Some(b'h'), _) => {
                    i += 1;
                    Duration::from_secs(3600)
                }
                (Some(b'm'), _) => {
                    i += 1;
                    Duration::from_secs(60)
                }
                (Some(b's'), _) => {
                    i += 1;
                    Duration::from_secs(1)
                }
                _ => return Err(invalid()),
            };
            // At most 99999h per part and four parts: no overflow is possible.
            total += unit * u32::try_from(n).map_err(|_| invalid())?;
            parts += 1;
        }
        if parts == 0 || parts > 4 {
            return Err(invalid());
        }
        Ok(GatewayDuration(total))
    }
}

impl fmt::Display for GatewayDuration {
    /// The canonical form: largest units first, zero parts left out (`1h30m`, `1s500ms`, `0s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
        let (m, rest) = (rest / 60_000, rest % 60_000);
        let (s, ms) = (rest / 1000, rest % 1000);
        for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for GatewayDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GatewayDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion

impl HttpRoute {
    /// The model route (`key` is the route's namespace and name, `order` its precedence).
    pub fn to_input(&self, key: ObjectKey, order: u64) -> Result<RouteInput, FieldError> {
        let rules_field = FieldPath::at("spec.rules");
        let rules = self
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| http_rule(r, &rules_field.clone().index(i)))
            .collect::<Result<_, _>>()?;
        Ok(RouteInput {
            key,
            kind: RouteKind::Http,
            parents: service_parents(&self.spec.parent_refs)?,
            rules,
            order,
        })
    }
}

impl GrpcRoute {
    /// The model route: each method match becomes a path match on `/<service>/<method>`.
    pub fn to_input(&self, key: ObjectKey, order: u64) -> Result<RouteInput, FieldError> {
        let rules_field = FieldPath::at("spec.rules");
        let rules = self
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| grpc_rule(r, &rules_field.clone().index(i)))
            .collect::<Result<_, _>>()?;
        Ok(RouteInput {
            key,
            kind: RouteKind::Grpc,
            parents: service_parents(&self.spec.parent_refs)?,
            rules,
            order,
        })
    }
}

fn is_core_group(group: Option<&str>) -> bool {
    matches!(group, None | Some("" | "core"))
}

/// The `Service` parents; parents of other kinds (Gateways, the default) are not the mesh's.
fn service_parents(refs: &[ParentReference]) -> Result<Vec<ParentRefInput>, FieldError> {
    let mut parents = Vec::new();
    for (i, p) in refs.iter().enumerate() {
        let group = p.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if kind != "Service" || !is_core_group(Some(group)) {
            continue;
        }
        let field = FieldPath::at("spec.parentRefs").index(i);
        if p.section_name.is_some() {
            return Err(FieldError::new(
                field.key("sectionName"),
                "a service parent is selected by port, not sectionName",
            ));
        }
        let port = p
            .port
            .map(|n| port_number(i64::from(n), field.clone().key("port")))
            .transpose()?;
        parents.push(ParentRefInput {
            namespace: p.namespace.clone().filter(|n| !n.is_empty()),
            name: p.name.clone(),
            port,
        });
    }
    Ok(parents)
}

fn backends(refs: &[BackendRef], rule: &FieldPath) -> Result<Vec<BackendRefInput>, FieldError> {
    let mut out = Vec::new();
    for (i, b) in refs.iter().enumerate() {
        let field = rule.clone().key("backendRefs").index(i);
        let kind = b.kind.as_deref().unwrap_or("Service");
        if kind != "Service" {
            return Err(FieldError::new(
                field.key("kind"),
                format!("unsupported backend kind {kind:?}: only Service backends are supported"),
            ));
        }
        if !is_core_group(b.group.as_deref()) {
            return Err(FieldError::new(
                field.key("group"),
                format!(
                    "unsupported backend group {:?}: a Service is in the core group \"\"",
                    b.group.as_deref().unwrap_or_default()
                ),
            ));
        }
        let weight = b.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(FieldError::new(
                field.key("weight"),
                format!("weight {weight} is above the maximum {MAX_WEIGHT}"),
            ));
        }
        let port = b
            .port
            .map(|n| port_number(i64::from(n), field.clone().key("port")))
            .transpose()?;
        out.push(BackendRefInput {
            namespace: b.namespace.clone().filter(|n| !n.is_empty()),
            name: b.name.clone(),
            port,
            weight,
        });
    }
    Ok(out)
}

fn value_match(m: &ValueMatch, field: FieldPath) -> Result<HeaderMatch, FieldError> {
    if m.name.is_empty() {
        return Err(FieldError::new(field.key("name"), "must not be empty"));
    }
    let value = match m.match_type.unwrap_or(ValueMatchType::Exact) {
        ValueMatchType::Exact => StringMatch::Exact(m.value.clone()),
        ValueMatchType::RegularExpression => StringMatch::Regex(m.value.clone()),
    };
    Ok(HeaderMatch {
        name: m.name.clone(),
        value,
    })
}

fn value_matches(list: &[ValueMatch], field: FieldPath) -> Result<Vec<HeaderMatch>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, m)| value_match(m, field.clone().index(i)))
        .collect()
}

fn http_rule(rule: &HttpRouteRule, field: &FieldPath) -> Result<RouteRuleInput, FieldError> {
    let mut matches = Vec::new();
    for (i, m) in rule.matches.iter().enumerate() {
        let mf = field.clone().key("matches").index(i);
        let path = match &m.path {
            None => None,
            Some(p) => {
                let value = p.value.clone().unwrap_or_else(|| "/".to_string());
                let kind = p.match_type.unwrap_or(PathMatchType::PathPrefix);
                if kind != PathMatchType::RegularExpression && !value.starts_with('/') {
                    return Err(FieldError::new(
                        mf.key("path").key("value"),
                        format!("path {value:?} must start with /"),
                    ));
                }
                Some(match kind {
                    PathMatchType::Exact => StringMatch::Exact(value),
                    PathMatchType::PathPrefix => StringMatch::Prefix(value),
                    PathMatchType::RegularExpression => StringMatch::Regex(value),
                })
            }
        };
        matches.push(RouteMatch {
            path,
            headers: value_matches(&m.headers, mf.clone().key("headers"))?,
            method: m.method.map(|x| x.as_str().to_string()),
            query: value_matches(&m.query_params, mf.key("queryParams"))?,
        });
    }

    let request = rule.timeouts.as_ref().and_then(|t| t.request).map(|d| d.0);
    let backend_request = rule
        .timeouts
        .as_ref()
        .and_then(|t| t.backend_request)
        .map(|d| d.0);
    if let (Some(r), Some(b)) = (request, backend_request)
        && !r.is_zero()
        && b > r
    {
        return Err(FieldError::new(
            field.clone().key("timeouts").key("backendRequest"),
            "backendRequest must not be longer than request",
        ));
    }

    let retry = match &rule.retry {
        None => None,
        Some(r) => {
            for (i, code) in r.codes.iter().enumerate() {
                if !(400..=599).contains(code) {
                    return Err(FieldError::new(
                        field.clone().key("retry").key("codes").index(i),
                        format!("status code {code} is out of range 400-599"),
                    ));
                }
            }
            Some(RetryPolicy {
                attempts: r.attempts.unwrap_or(1),
                codes: r.codes.clone(),
                backoff: r.backoff.map(|d| d.0),
                per_try_timeout: backend_request,
            })
        }
    };
    // Without retries a backend request is the only attempt, so its limit bounds the request.
    let timeout = match (retry.is_some(), request, backend_request) {
        (false, Some(r), Some(b)) if !r.is_zero() => Some(r.min(b)),
        (false, _, Some(b)) => Some(b),
        _ => request,
    };

    Ok(RouteRuleInput {
        matches,
        backends: backends(&rule.backend_refs, field)?,
        timeout,
        retry,
    })
}

fn grpc_rule(rule: &GrpcRouteRule, field: &FieldPath) -> Result<RouteRuleInput, FieldError> {
    let mut matches = Vec::new();
    for (i, m) in rule.matches.iter().enumerate() {
        let mf = field.clone().key("matches").index(i);
        let path = m
            .method
            .as_ref()
            .map(|mm| grpc_path(mm, mf.clone().key("method")))
            .transpose()?;
        matches.push(RouteMatch {
            path,
            headers: value_matches(&m.headers, mf.key("headers"))?,
            method: None,
            query: Vec::new(),
        });
    }
    Ok(RouteRuleInput {
        matches,
        backends: backends(&rule.backend_refs, field)?,
        timeout: None,
        retry: None,
    })
}

/// A gRPC method match as a path match: gRPC calls are `POST /<service>/<method>`.
fn grpc_path(m: &GrpcMethodMatch, field: FieldPath) -> Result<StringMatch, FieldError> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    match m.match_type.unwrap_or(ValueMatchType::Exact) {
        ValueMatchType::Exact => {
            for (name, value) in [("service", service), ("method", method)] {
                if let Some(v) = value
                    && v.contains('/')
                {
                    return Err(FieldError::new(
                        field.clone().key(name),
                        format!("{name} {v:?} must not contain /"),
                    ));
                }
            }
            match (service, method) {
                (Some(s), Some(m)) => Ok(StringMatch::Exact(format!("/{s}/{m}"))),
                (Some(s), None) => Ok(StringMatch::Prefix(format!("/{s}/"))),
                (None, Some(m)) => Ok(StringMatch::Regex(format!("/[^/]+/{}", regex_escape(m)))),
                (None, None) => Err(FieldError::new(
                    field,
                    "an exact method match needs a service, a method or both",
                )),
            }
        }
        ValueMatchType::RegularExpression => Ok(StringMatch::Regex(format!(
            "/{}/{}",
            service.unwrap_or("[^/]+"),
            method.unwrap_or("[^/]+")
        ))),
    }
}

/// Escapes RE2 metacharacters.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
