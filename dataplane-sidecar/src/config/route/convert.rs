//! `RouteConfiguration` -> [`RouteConfig`].
//!
//! Kept: what changes where a request goes or how it is retried and timed out. Ignored:
//! names, metadata, decorators, stat prefixes, tracing and `validate_clusters` (the
//! snapshot's consistency check covers unknown clusters). Rejected: header rewriting,
//! redirects, mirrors, hash policies, per-filter config and other behaviour the sidecar does
//! not implement, so that it never serves a route differently from what was asked.

use std::collections::{BTreeSet, HashMap};

use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::route::v3 as pb;

use super::{
    Backends, Backoff, DEFAULT_RETRY_BASE, DEFAULT_ROUTE_TIMEOUT, DirectResponse, DomainIndex,
    Forward, HeaderMatch, HeaderRule, PathMatch, QueryMatch, RetryOn, RetryPolicy, Route,
    RouteAction, RouteConfig, RouteMatch, VirtualHost, WeightedCluster,
};
use crate::config::error::{At, FieldError, duration, positive_duration, reject_rest};
use crate::config::matcher::{StringMatch, StringMatcher, regex, string_matcher};

/// Converts a `RouteConfiguration`.
pub(crate) fn convert(mut rc: pb::RouteConfiguration) -> Result<RouteConfig, FieldError> {
    let name = std::mem::take(&mut rc.name);
    let ignore_port_in_host_matching = std::mem::take(&mut rc.ignore_port_in_host_matching);
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in std::mem::take(&mut rc.virtual_hosts)
        .into_iter()
        .enumerate()
    {
        virtual_hosts.push(virtual_host(vh).at_index("virtual_hosts", i)?);
    }
    let index = index(&virtual_hosts)?;
    // Acceptance-time checks and naming only.
    rc.validate_clusters = None;
    rc.metadata = None;
    rc.max_direct_response_body_size_bytes = None;
    reject_rest(&rc)?;
    Ok(RouteConfig {
        name,
        virtual_hosts,
        ignore_port_in_host_matching,
        index,
    })
}

fn index(vhosts: &[VirtualHost]) -> Result<DomainIndex, FieldError> {
    let mut idx = DomainIndex::default();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, vh) in vhosts.iter().enumerate() {
        for (j, d) in vh.domains.iter().enumerate() {
            let at = |e: FieldError| {
                e.at(format_args!("domains[{j}]"))
                    .at(format_args!("virtual_hosts[{i}]"))
            };
            if let Some(prev) = seen.insert(d, i) {
                return Err(at(FieldError::invalid(
                    "",
                    format!("domain {d:?} is also in virtual_hosts[{prev}]"),
                )));
            }
            if d == "*" {
                idx.any = Some(i);
            } else if let Some(s) = d.strip_prefix('*') {
                idx.suffix.push((s.to_string(), i));
            } else if let Some(p) = d.strip_suffix('*') {
                idx.prefix.push((p.to_string(), i));
            } else {
                idx.exact.insert(d.clone(), i);
            }
        }
    }
    idx.suffix.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    idx.prefix.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    Ok(idx)
}

fn virtual_host(mut vh: pb::VirtualHost) -> Result<VirtualHost, FieldError> {
    let name = std::mem::take(&mut vh.name);
    let mut domains = Vec::with_capacity(vh.domains.len());
    for (i, d) in std::mem::take(&mut vh.domains).into_iter().enumerate() {
        let d = d.to_ascii_lowercase();
        let stars = d.matches('*').count();
        let ok = !d.is_empty()
            && (stars == 0 || (stars == 1 && (d.starts_with('*') || d.ends_with('*'))));
        if !ok {
            return Err(FieldError::invalid(
                format!("domains[{i}]"),
                format!("{d:?}: a wildcard may only be the first or last character"),
            ));
        }
        domains.push(d);
    }
    if domains.is_empty() {
        return Err(FieldError::invalid("domains", "empty"));
    }
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in std::mem::take(&mut vh.routes).into_iter().enumerate() {
        routes.push(route(r).at_index("routes", i)?);
    }
    vh.metadata = None;
    reject_rest(&vh)?;
    Ok(VirtualHost {
        name,
        domains,
        routes,
    })
}

fn route(mut r: pb::Route) -> Result<Route, FieldError> {
    let name = std::mem::take(&mut r.name);
    let matcher = match r.r#match.take() {
        Some(m) => route_match(m).at("match")?,
        None => return Err(FieldError::invalid("match", "missing")),
    };
    let action = match r.action.take() {
        Some(pb::route::Action::Route(a)) => RouteAction::Forward(forward(a).at("route")?),
        Some(pb::route::Action::DirectResponse(d)) => {
            RouteAction::DirectResponse(direct_response(d).at("direct_response")?)
        }
        Some(pb::route::Action::Redirect(_)) => {
            return Err(FieldError::unsupported("redirect", "redirects"));
        }
        Some(_) => {
            return Err(FieldError::unsupported(
                "action",
                "filter and non-forwarding actions",
            ));
        }
        None => return Err(FieldError::invalid("action", "missing")),
    };
    // Observability only.
    r.metadata = None;
    r.decorator = None;
    r.stat_prefix.clear();
    r.tracing = None;
    reject_rest(&r)?;
    Ok(Route {
        name,
        matcher,
        action,
    })
}

fn route_match(mut m: pb::RouteMatch) -> Result<RouteMatch, FieldError> {
    use pb::route_match::PathSpecifier;
    let path = match m.path_specifier.take() {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p),
        Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(regex(&r).at("safe_regex")?),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            if p.ends_with('/') || p.contains(['?', '#']) {
                return Err(FieldError::invalid(
                    "path_separated_prefix",
                    format!("{p:?} must not end with / nor hold ? or #"),
                ));
            }
            PathMatch::SeparatedPrefix(p)
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(FieldError::unsupported("connect_matcher", "CONNECT routes"));
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(FieldError::unsupported(
                "path_match_policy",
                "path template matching",
            ));
        }
        None => return Err(FieldError::invalid("path_specifier", "missing")),
    };
    let case_sensitive = m.case_sensitive.take().is_none_or(|b| b.value);
    let mut method = None;
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in std::mem::take(&mut m.headers).into_iter().enumerate() {
        let h = header_match(h).at_index("headers", i)?;
        match (&h, method.is_none()) {
            (
                HeaderMatch {
                    rule:
                        HeaderRule::Value(StringMatcher {
                            pattern: StringMatch::Exact(v),
                            ignore_case: false,
                        }),
                    invert: false,
                    ..
                },
                true,
            ) if h.name == ":method" => method = Some(v.clone()),
            _ => headers.push(h),
        }
    }
    let mut query = Vec::with_capacity(m.query_parameters.len());
    for (i, q) in std::mem::take(&mut m.query_parameters)
        .into_iter()
        .enumerate()
    {
        query.push(query_match(q).at_index("query_parameters", i)?);
    }
    let grpc_only = m.grpc.take().is_some();
    reject_rest(&m)?;
    Ok(RouteMatch {
        path,
        case_sensitive,
        method,
        headers,
        query,
        grpc_only,
    })
}

pub(crate) fn header_match(h: pb::HeaderMatcher) -> Result<HeaderMatch, FieldError> {
    use pb::header_matcher::HeaderMatchSpecifier as S;
    if h.name.is_empty() {
        return Err(FieldError::invalid("name", "empty"));
    }
    let value = |pattern| {
        HeaderRule::Value(StringMatcher {
            pattern,
            ignore_case: false,
        })
    };
    #[allow(deprecated)] // the deprecated forms are still valid xDS
    let rule = match h.header_match_specifier {
        None => HeaderRule::Present(true),
        Some(S::PresentMatch(p)) => HeaderRule::Present(p),
        Some(S::StringMatch(m)) => HeaderRule::Value(string_matcher(&m).at("string_match")?),
        Some(S::ExactMatch(v)) => value(StringMatch::Exact(v)),
        Some(S::PrefixMatch(v)) => value(StringMatch::Prefix(v)),
        Some(S::SuffixMatch(v)) => value(StringMatch::Suffix(v)),
        Some(S::ContainsMatch(v)) => value(StringMatch::Contains(v)),
        Some(S::SafeRegexMatch(r)) => value(StringMatch::Regex(regex(&r).at("safe_regex_match")?)),
        Some(S::RangeMatch(_)) => {
            return Err(FieldError::unsupported(
                "range_match",
                "numeric range matches",
            ));
        }
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        rule,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn query_match(q: pb::QueryParameterMatcher) -> Result<QueryMatch, FieldError> {
    use pb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    if q.name.is_empty() {
        return Err(FieldError::invalid("name", "empty"));
    }
    let value = match q.query_parameter_match_specifier {
        None | Some(S::PresentMatch(true)) => None,
        Some(S::PresentMatch(false)) => {
            return Err(FieldError::invalid(
                "present_match",
                "false is not a condition (use a header or omit the matcher)",
            ));
        }
        Some(S::StringMatch(m)) => Some(string_matcher(&m).at("string_match")?),
    };
    Ok(QueryMatch {
        name: q.name,
        value,
    })
}

fn forward(mut a: pb::RouteAction) -> Result<Forward, FieldError> {
    use pb::route_action::{ClusterNotFoundResponseCode as Code, ClusterSpecifier};
    let backends = match a.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(c)) if c.is_empty() => {
            return Err(FieldError::invalid("cluster", "empty"));
        }
        Some(ClusterSpecifier::Cluster(c)) => Backends::Cluster(c),
        Some(ClusterSpecifier::WeightedClusters(w)) => weighted(w).at("weighted_clusters")?,
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            return Err(FieldError::unsupported(
                "cluster_header",
                "clusters chosen by a request header",
            ));
        }
        Some(_) => {
            return Err(FieldError::unsupported(
                "cluster_specifier_plugin",
                "cluster specifier plugins",
            ));
        }
        None => return Err(FieldError::invalid("cluster_specifier", "missing")),
    };
    let timeout = match a.timeout.take() {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(t) => Some(duration("timeout", &t)?).filter(|t| !t.is_zero()),
    };
    let retry = match a.retry_policy.take() {
        Some(p) => Some(retry_policy(p).at("retry_policy")?),
        None => None,
    };
    let cluster_not_found_status =
        match Code::try_from(std::mem::take(&mut a.cluster_not_found_response_code)) {
            Ok(Code::ServiceUnavailable) => 503,
            Ok(Code::NotFound) => 404,
            Ok(Code::InternalServerError) => 500,
            Err(_) => {
                return Err(FieldError::invalid(
                    "cluster_not_found_response_code",
                    "unknown value",
                ));
            }
        };
    reject_rest(&a)?;
    Ok(Forward {
        backends,
        timeout,
        retry,
        cluster_not_found_status,
    })
}

fn weighted(mut w: pb::WeightedCluster) -> Result<Backends, FieldError> {
    let mut out = Vec::with_capacity(w.clusters.len());
    for (i, mut c) in std::mem::take(&mut w.clusters).into_iter().enumerate() {
        if c.name.is_empty() {
            return Err(FieldError::invalid(
                "name",
                "empty (cluster_header is not supported)",
            ))
            .at_index("clusters", i);
        }
        let cluster = std::mem::take(&mut c.name);
        let weight = c.weight.take().map_or(0, |v| v.value);
        reject_rest(&c).at_index("clusters", i)?;
        out.push(WeightedCluster { cluster, weight });
    }
    let sum: u64 = out.iter().map(|c| u64::from(c.weight)).sum();
    if sum == 0 {
        return Err(FieldError::invalid("clusters", "weights sum to zero"));
    }
    #[allow(deprecated)] // still sent by older control planes
    if let Some(t) = w.total_weight.take()
        && u64::from(t.value) != sum
    {
        return Err(FieldError::invalid(
            "total_weight",
            format!("{} is not the sum of the weights ({sum})", t.value),
        ));
    }
    reject_rest(&w)?;
    Ok(Backends::Weighted(out))
}

fn retry_policy(mut p: pb::RetryPolicy) -> Result<RetryPolicy, FieldError> {
    let mut retry_on = BTreeSet::new();
    for name in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match RetryOn::from_name(name) {
            Some(r) => {
                retry_on.insert(r);
            }
            None => {
                return Err(FieldError::unsupported(
                    "retry_on",
                    format!("retry condition {name:?}"),
                ));
            }
        }
    }
    p.retry_on.clear();
    let num_retries = p.num_retries.take().map_or(1, |n| n.value);
    let per_try_timeout = match p.per_try_timeout.take() {
        Some(t) => Some(duration("per_try_timeout", &t)?).filter(|t| !t.is_zero()),
        None => None,
    };
    let mut retriable_status_codes = Vec::with_capacity(p.retriable_status_codes.len());
    for (i, c) in std::mem::take(&mut p.retriable_status_codes)
        .into_iter()
        .enumerate()
    {
        match u16::try_from(c) {
            Ok(c) if (100..=599).contains(&c) => retriable_status_codes.push(c),
            _ => {
                return Err(FieldError::invalid(
                    format!("retriable_status_codes[{i}]"),
                    format!("{c} is not an HTTP status"),
                ));
            }
        }
    }
    let backoff = match p.retry_back_off.take() {
        None => Backoff {
            base: DEFAULT_RETRY_BASE,
            max: DEFAULT_RETRY_BASE * 10,
        },
        Some(b) => {
            let Some(base) = &b.base_interval else {
                return Err(FieldError::invalid("base_interval", "missing")).at("retry_back_off");
            };
            let base = positive_duration("base_interval", base).at("retry_back_off")?;
            let max = match &b.max_interval {
                Some(m) => positive_duration("max_interval", m).at("retry_back_off")?,
                None => base * 10,
            };
            if max < base {
                return Err(FieldError::invalid(
                    "max_interval",
                    "must not be shorter than base_interval",
                ))
                .at("retry_back_off");
            }
            Backoff { base, max }
        }
    };
    reject_rest(&p)?;
    Ok(RetryPolicy {
        retry_on: retry_on.into_iter().collect(),
        num_retries,
        per_try_timeout,
        retriable_status_codes,
        backoff,
    })
}

fn direct_response(mut d: pb::DirectResponseAction) -> Result<DirectResponse, FieldError> {
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .ok_or_else(|| FieldError::invalid("status", format!("{} is not in 200-599", d.status)))?;
    d.status = 0;
    let body = match d.body.take() {
        None => None,
        Some(src) => Some(match src.specifier {
            Some(core::data_source::Specifier::InlineBytes(b)) => b,
            Some(core::data_source::Specifier::InlineString(s)) => s.into_bytes(),
            None => Vec::new(),
            Some(_) => {
                return Err(FieldError::unsupported(
                    "body",
                    "bodies read from files or the environment",
                ));
            }
        }),
    };
    reject_rest(&d)?;
    Ok(DirectResponse { status, body })
}
