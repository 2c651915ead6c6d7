//! Authorization: Envoy RBAC filters (`envoy.filters.network.rbac` on a chain,
//! `envoy.filters.http.rbac` in its HCM) as domain types, and their evaluation.
//!
//! Envoy semantics: a policy matches when any of its permissions and any of its principals
//! match; an `ALLOW` filter lets through what some policy matches, a `DENY` filter stops what
//! some policy matches; filters apply in order and the first refusal wins. Network filters
//! see connections (peer identity, source address, port); HTTP filters see each request too
//! (path, method, headers). A connection-level filter never reads request attributes: the
//! converter rejects them there.

use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::rbac::v3 as pb;
use switchyard_protos::envoy::envoy::r#type::matcher::v3 as pbm;

use super::error::{At as _, FieldError, reject_rest};
use super::matcher::{StringMatcher, string_matcher};
use super::route::HeaderMatch;

/// Where a filter applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacLayer {
    /// Once per connection (network filter).
    Connection,
    /// Once per request (HTTP filter).
    Request,
}

/// What a filter does with what its policies match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    /// Let matched traffic through, refuse the rest.
    Allow,
    /// Refuse matched traffic.
    Deny,
}

/// One RBAC filter.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacFilter {
    /// Where it applies.
    pub layer: RbacLayer,
    /// Allow or deny.
    pub action: RbacAction,
    /// Policies by name, sorted by name.
    pub policies: Vec<(String, RbacPolicy)>,
}

/// A policy: any permission and any principal.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacPolicy {
    /// What is accessed.
    pub permissions: Vec<Permission>,
    /// Who accesses.
    pub principals: Vec<Principal>,
}

/// A condition on what is accessed.
#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    /// Anything.
    Any,
    /// All of them.
    And(Vec<Permission>),
    /// Any of them.
    Or(Vec<Permission>),
    /// Not this.
    Not(Box<Permission>),
    /// The destination port.
    DestinationPort(u16),
    /// The request path (without query string).
    Path(StringMatcher),
    /// A request header (`:method`, `:path`, `:authority` included).
    Header(HeaderMatch),
}

/// A condition on who accesses.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// Anyone.
    Any,
    /// All of them.
    And(Vec<Principal>),
    /// Any of them.
    Or(Vec<Principal>),
    /// Not this.
    Not(Box<Principal>),
    /// A verified peer certificate whose URI SAN matches (`None`: any verified peer).
    Authenticated(Option<StringMatcher>),
    /// The connection's source address is in the range.
    SourceIp(IpNet),
}

/// What a decision looks at.
#[derive(Clone, Copy)]
pub struct RbacInput<'a> {
    /// The peer's verified SPIFFE ID (`None`: plaintext).
    pub peer: Option<&'a str>,
    /// The connection's source address.
    pub source_ip: IpAddr,
    /// The destination port.
    pub port: u16,
    /// The request, for request-level filters.
    pub request: Option<&'a dyn RequestAttributes>,
}

impl std::fmt::Debug for RbacInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbacInput")
            .field("peer", &self.peer)
            .field("source_ip", &self.source_ip)
            .field("port", &self.port)
            .field("path", &self.request.map(|r| r.path().to_string()))
            .finish()
    }
}

/// A request's attributes as RBAC reads them.
pub trait RequestAttributes {
    /// The path without query string.
    fn path(&self) -> &str;
    /// A header's value (several joined with `,`; pseudo-headers `:method`, `:path`,
    /// `:authority`, `:scheme` included); `None` when absent.
    fn header(&self, name: &str) -> Option<String>;
}

/// A refusal: the filter and (for DENY) the policy that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// `deny` or `allow` (no ALLOW policy matched).
    pub action: &'static str,
    /// The matching DENY policy, if any.
    pub policy: Option<String>,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.policy {
            Some(p) => write!(f, "denied by policy {p}"),
            None => write!(f, "no ALLOW policy matched"),
        }
    }
}

/// Applies `filters` of `layer` in order; the first refusal wins.
pub fn evaluate(
    filters: &[RbacFilter],
    layer: RbacLayer,
    input: &RbacInput<'_>,
) -> Result<(), Denied> {
    for f in filters.iter().filter(|f| f.layer == layer) {
        let hit = f
            .policies
            .iter()
            .find(|(_, p)| p.matches(input))
            .map(|(name, _)| name.clone());
        match (f.action, hit) {
            (RbacAction::Deny, Some(policy)) => {
                return Err(Denied {
                    action: "deny",
                    policy: Some(policy),
                });
            }
            (RbacAction::Allow, None) => {
                return Err(Denied {
                    action: "allow",
                    policy: None,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

impl RbacPolicy {
    /// Whether any permission and any principal match.
    pub fn matches(&self, input: &RbacInput<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(input))
            && self.principals.iter().any(|p| p.matches(input))
    }
}

impl Permission {
    /// Whether it holds (a request condition without a request does not).
    pub fn matches(&self, input: &RbacInput<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(input)),
            Permission::Or(any) => any.iter().any(|p| p.matches(input)),
            Permission::Not(p) => !p.matches(input),
            Permission::DestinationPort(port) => *port == input.port,
            Permission::Path(m) => input.request.is_some_and(|r| m.matches(r.path())),
            Permission::Header(h) => input
                .request
                .is_some_and(|r| h.matches(r.header(&h.name).as_deref())),
        }
    }

    fn needs_request(&self) -> bool {
        match self {
            Permission::And(v) | Permission::Or(v) => v.iter().any(Permission::needs_request),
            Permission::Not(p) => p.needs_request(),
            Permission::Path(_) | Permission::Header(_) => true,
            Permission::Any | Permission::DestinationPort(_) => false,
        }
    }
}

impl Principal {
    /// Whether it holds.
    pub fn matches(&self, input: &RbacInput<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(input)),
            Principal::Or(any) => any.iter().any(|p| p.matches(input)),
            Principal::Not(p) => !p.matches(input),
            Principal::Authenticated(None) => input.peer.is_some(),
            Principal::Authenticated(Some(m)) => input.peer.is_some_and(|p| m.matches(p)),
            Principal::SourceIp(net) => net.contains(&input.source_ip),
        }
    }
}

/// Converts one filter's rules.
pub(crate) fn convert(rules: Option<pb::Rbac>, layer: RbacLayer) -> Result<RbacFilter, FieldError> {
    // No rules: Envoy lets everything through; an empty DENY does the same.
    let Some(mut rules) = rules else {
        return Ok(RbacFilter {
            layer,
            action: RbacAction::Deny,
            policies: Vec::new(),
        });
    };
    let action = match pb::rbac::Action::try_from(rules.action) {
        Ok(pb::rbac::Action::Allow) => RbacAction::Allow,
        Ok(pb::rbac::Action::Deny) => RbacAction::Deny,
        _ => return Err(FieldError::unsupported("rules.action", "LOG")),
    };
    let mut policies = Vec::new();
    let mut named: Vec<(String, pb::Policy)> =
        std::mem::take(&mut rules.policies).into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut p) in named {
        let at = |e: FieldError| e.at(format!("rules.policies[{name}]"));
        let permissions = std::mem::take(&mut p.permissions)
            .into_iter()
            .enumerate()
            .map(|(i, x)| permission(x).at_index("permissions", i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        if layer == RbacLayer::Connection && permissions.iter().any(Permission::needs_request) {
            return Err(at(FieldError::invalid(
                "permissions",
                "request conditions (path, headers) in a network RBAC filter",
            )));
        }
        let principals = std::mem::take(&mut p.principals)
            .into_iter()
            .enumerate()
            .map(|(i, x)| principal(x).at_index("principals", i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        reject_rest(&p).map_err(at)?;
        policies.push((
            name,
            RbacPolicy {
                permissions,
                principals,
            },
        ));
    }
    rules.action = 0;
    reject_rest(&rules).at("rules")?;
    Ok(RbacFilter {
        layer,
        action,
        policies,
    })
}

fn permission(p: pb::Permission) -> Result<Permission, FieldError> {
    use pb::permission::Rule;
    let set = |rules: Vec<pb::Permission>, field: &str| {
        rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| permission(r).at_index(field, i))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match p.rule {
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::AndRules(s)) => Permission::And(set(s.rules, "and_rules.rules")?),
        Some(Rule::OrRules(s)) => Permission::Or(set(s.rules, "or_rules.rules")?),
        Some(Rule::NotRule(r)) => Permission::Not(Box::new(permission(*r).at("not_rule")?)),
        Some(Rule::DestinationPort(port)) => {
            Permission::DestinationPort(super::error::port("destination_port", port)?)
        }
        Some(Rule::UrlPath(m)) => Permission::Path(path_matcher(m).at("url_path")?),
        Some(Rule::Header(h)) => {
            Permission::Header(super::route::convert::header_match(h).at("header")?)
        }
        Some(Rule::Any(false)) | None => {
            return Err(FieldError::invalid("rule", "missing"));
        }
        Some(_) => {
            return Err(FieldError::unsupported(
                "rule",
                "permissions other than any, and/or/not, destination_port, url_path, header",
            ));
        }
    })
}

fn path_matcher(m: pbm::PathMatcher) -> Result<StringMatcher, FieldError> {
    match m.rule {
        Some(pbm::path_matcher::Rule::Path(s)) => string_matcher(&s).at("path"),
        None => Err(FieldError::invalid("rule", "missing")),
    }
}

#[allow(deprecated)] // `source_ip` is deprecated but still valid xDS
fn principal(p: pb::Principal) -> Result<Principal, FieldError> {
    use pb::principal::Identifier;
    let set = |ids: Vec<pb::Principal>, field: &str| {
        ids.into_iter()
            .enumerate()
            .map(|(i, r)| principal(r).at_index(field, i))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match p.identifier {
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::AndIds(s)) => Principal::And(set(s.ids, "and_ids.ids")?),
        Some(Identifier::OrIds(s)) => Principal::Or(set(s.ids, "or_ids.ids")?),
        Some(Identifier::NotId(r)) => Principal::Not(Box::new(principal(*r).at("not_id")?)),
        Some(Identifier::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(string_matcher)
                .transpose()
                .at("authenticated.principal_name")?,
        ),
        Some(Identifier::DirectRemoteIp(c) | Identifier::SourceIp(c) | Identifier::RemoteIp(c)) => {
            Principal::SourceIp(cidr(&c).at("remote_ip")?)
        }
        Some(Identifier::Any(false)) | None => {
            return Err(FieldError::invalid("identifier", "missing"));
        }
        Some(_) => {
            return Err(FieldError::unsupported(
                "identifier",
                "principals other than any, and/or/not, authenticated, remote and source IPs",
            ));
        }
    })
}

fn cidr(c: &core::CidrRange) -> Result<IpNet, FieldError> {
    let ip: IpAddr = c.address_prefix.parse().map_err(|_| {
        FieldError::invalid(
            "address_prefix",
            format!("{:?} is not an IP", c.address_prefix),
        )
    })?;
    let len = c
        .prefix_len
        .as_ref()
        .map_or(if ip.is_ipv4() { 32 } else { 128 }, |l| l.value);
    let len = u8::try_from(len).map_err(|_| FieldError::invalid("prefix_len", "too long"))?;
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .map_err(|e| FieldError::invalid("prefix_len", e.to_string()))
}

#[cfg(test)]
mod tests;
