//! Authorization policies as Envoy RBAC filters on a workload's inbound chains (`inbound`
//! listener): per port, a `DENY` filter (any matching DENY rule refuses) then, when any ALLOW
//! policy applies to the workload, an `ALLOW` filter (no matching ALLOW rule refuses; an
//! ALLOW policy without rules leaves it empty, which refuses everything).
//!
//! Rules are specialised to the port: a destination whose ports cannot match it is dropped,
//! and a rule left without destinations matches nothing. On HTTP ports paths and methods
//! become `url_path` and `:method` permissions of `envoy.filters.http.rbac`. On TCP ports
//! (`envoy.filters.network.rbac`) requests are not seen: a DENY destination keeps its port
//! conditions and loses its L7 ones (it refuses more, never less), an ALLOW destination with
//! L7 conditions is dropped (it allows less, never more), as Istio does.
//!
//! Sources: principals are SPIFFE IDs (`*` as a whole, a prefix or a suffix pattern) matched
//! on the peer certificate's URI SAN; namespaces become the prefix
//! `spiffe://<trust domain>/ns/<namespace>/sa/`; IP blocks match the connection's source.

use std::collections::HashMap;
use std::sync::Arc;

use switchyard_model::{AuthorizationPolicy, PolicyAction, PolicyOperation, PolicySource};
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::listener::v3 as listener;
use switchyard_protos::envoy::envoy::config::rbac::v3 as rbac;
use switchyard_protos::envoy::envoy::config::route::v3 as route;
use switchyard_protos::envoy::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use switchyard_protos::envoy::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use switchyard_protos::envoy::envoy::r#type::matcher::v3 as matcher;
use switchyard_protos::{pack, wkt};

/// Name of the HTTP RBAC filter.
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
/// Name of the network RBAC filter.
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

/// Whether rules are checked per request (HTTP port) or per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Per request: paths and methods can be checked.
    Http,
    /// Per connection.
    Tcp,
}

/// The `DENY` and `ALLOW` rule sets for `port`, in evaluation order (absent when no policy
/// of that action applies).
pub fn rule_sets(
    policies: &[Arc<AuthorizationPolicy>],
    port: u16,
    layer: Layer,
    trust_domain: &str,
) -> Vec<rbac::Rbac> {
    let mut out = Vec::new();
    for action in [PolicyAction::Deny, PolicyAction::Allow] {
        let of_action: Vec<&Arc<AuthorizationPolicy>> =
            policies.iter().filter(|p| p.action == action).collect();
        if of_action.is_empty() {
            continue;
        }
        let mut set = HashMap::new();
        for p in of_action {
            for (i, rule) in p.rules.iter().enumerate() {
                let Some(permissions) = permissions(&rule.to, port, layer, action) else {
                    continue;
                };
                let principals = if rule.from.is_empty() {
                    vec![any_principal()]
                } else {
                    rule.from.iter().map(|f| source(f, trust_domain)).collect()
                };
                set.insert(
                    format!("{}/{}[{i}]", p.key.namespace, p.key.name),
                    rbac::Policy {
                        permissions,
                        principals,
                        ..Default::default()
                    },
                );
            }
        }
        out.push(rbac::Rbac {
            action: match action {
                PolicyAction::Deny => rbac::rbac::Action::Deny,
                PolicyAction::Allow => rbac::rbac::Action::Allow,
            } as i32,
            policies: set,
            ..Default::default()
        });
    }
    out
}

/// HTTP filters enforcing the policies on `port` (to go before the router).
pub fn http_filters(
    policies: &[Arc<AuthorizationPolicy>],
    port: u16,
    trust_domain: &str,
) -> Vec<hcm::HttpFilter> {
    rule_sets(policies, port, Layer::Http, trust_domain)
        .into_iter()
        .map(|rules| hcm::HttpFilter {
            name: HTTP_RBAC.into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_with_rules(
                &http_rbac::Rbac::default(),
                &rules,
            ))),
            ..Default::default()
        })
        .collect()
}

/// A policy map entry, encoded as protobuf encodes map entries.
#[derive(Clone, PartialEq, prost::Message)]
struct PolicyEntry {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    policy: Option<rbac::Policy>,
}

/// The `policies` map (field 2 of `config.rbac.v3.RBAC`) as its entries in name order.
#[derive(Clone, PartialEq, prost::Message)]
struct SortedPolicies {
    #[prost(message, repeated, tag = "2")]
    entries: Vec<PolicyEntry>,
}

/// Field 1 of the RBAC filters' configs (`rules`), already encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct RulesField {
    #[prost(bytes = "vec", tag = "1")]
    rules: Vec<u8>,
}

/// `wrapper` (an RBAC filter config whose field 1, `rules`, is left unset) packed with
/// `rules`, whose policies are encoded in name order: a protobuf map with several entries
/// otherwise encodes in hash order, and the same rules would get a new content-hash version
/// at every render.
fn pack_with_rules<W: prost::Name>(wrapper: &W, rules: &rbac::Rbac) -> wkt::Any {
    use prost::Message as _;
    let mut head = rules.clone();
    let mut names: Vec<String> = head.policies.keys().cloned().collect();
    names.sort();
    let entries = names
        .into_iter()
        .map(|name| {
            let policy = head.policies.remove(&name);
            PolicyEntry { name, policy }
        })
        .collect();
    let mut rules_bytes = head.encode_to_vec();
    rules_bytes.extend(SortedPolicies { entries }.encode_to_vec());
    let mut value = wrapper.encode_to_vec();
    value.extend(RulesField { rules: rules_bytes }.encode_to_vec());
    wkt::Any {
        type_url: W::type_url(),
        value,
    }
}

/// As [`http_filters`], on a listener where the caller's identity is not the connection's
/// peer certificate but the string filter state `peer_key` (an internal listener behind
/// Envoy's HBONE termination): verified-peer principals match that filter state instead.
/// Source IP blocks match the IP filter state `source_key` (the tunnel's source address).
pub fn http_filters_peer_from_filter_state(
    policies: &[Arc<AuthorizationPolicy>],
    port: u16,
    trust_domain: &str,
    peer_key: &str,
    source_key: &str,
) -> Vec<hcm::HttpFilter> {
    rule_sets(policies, port, Layer::Http, trust_domain)
        .into_iter()
        .map(|mut rules| {
            for p in rules.policies.values_mut() {
                for principal in &mut p.principals {
                    peer_from_filter_state(principal, peer_key, source_key);
                }
            }
            hcm::HttpFilter {
                name: HTTP_RBAC.into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_with_rules(
                    &http_rbac::Rbac::default(),
                    &rules,
                ))),
                ..Default::default()
            }
        })
        .collect()
}

/// Rewrites every `authenticated` principal in `p` to match the string filter state `key`
/// instead, and source-IP principals the IP filter state `source_key`.
fn peer_from_filter_state(p: &mut rbac::Principal, key: &str, source_key: &str) {
    use rbac::principal::Identifier;
    match &mut p.identifier {
        Some(Identifier::Authenticated(a)) => {
            // Any verified peer: any SPIFFE ID.
            let m = a
                .principal_name
                .take()
                .unwrap_or_else(|| matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(
                        "spiffe://".into(),
                    )),
                    ..Default::default()
                });
            p.identifier = Some(Identifier::FilterState(matcher::FilterStateMatcher {
                key: key.to_string(),
                matcher: Some(matcher::filter_state_matcher::Matcher::StringMatch(m)),
            }));
        }
        Some(Identifier::AndIds(set) | Identifier::OrIds(set)) => {
            for id in &mut set.ids {
                peer_from_filter_state(id, key, source_key);
            }
        }
        Some(Identifier::NotId(inner)) => peer_from_filter_state(inner, key, source_key),
        // The connection is internal: the tunnel's source address comes as filter state too.
        Some(Identifier::DirectRemoteIp(cidr)) => {
            let range = switchyard_protos::envoy::xds::core::v3::CidrRange {
                address_prefix: cidr.address_prefix.clone(),
                prefix_len: cidr.prefix_len,
            };
            p.identifier = Some(Identifier::FilterState(matcher::FilterStateMatcher {
                key: source_key.to_string(),
                matcher: Some(matcher::filter_state_matcher::Matcher::AddressMatch(
                    matcher::AddressMatcher {
                        ranges: vec![range],
                        ..Default::default()
                    },
                )),
            }));
        }
        _ => {}
    }
}

/// Per-route RBAC for Envoy's HBONE termination (`connect_terminate`): the policies of the
/// TCP `port`, checked on the `CONNECT` with the tunnel's peer certificate and source
/// address; `None` when no policy applies. The filter named [`CONNECT_RBAC_FILTER`] in the
/// HCM has no rules of its own.
///
/// A route takes one RBAC config, so DENY and ALLOW become one ALLOW set: allowed when an
/// ALLOW rule's sources match (or there is no ALLOW policy) and no DENY rule's do. At the
/// connection layer a rule is only its sources (destinations were settled for the port), so
/// every rule folds into one policy: one map key keeps the encoding, and the content-hash
/// version, stable.
pub fn connect_per_route(
    policies: &[Arc<AuthorizationPolicy>],
    port: u16,
    trust_domain: &str,
) -> Option<wkt::Any> {
    let sets = rule_sets(policies, port, Layer::Tcp, trust_domain);
    if sets.is_empty() {
        return None;
    }
    let sources = |set: &rbac::Rbac| -> Vec<rbac::Principal> {
        let mut keys: Vec<&String> = set.policies.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|k| or_principals(set.policies[k].principals.clone()))
            .collect()
    };
    let deny = sets
        .iter()
        .find(|s| s.action == rbac::rbac::Action::Deny as i32);
    let allow = sets
        .iter()
        .find(|s| s.action == rbac::rbac::Action::Allow as i32);
    let mut and = Vec::new();
    match allow {
        // An ALLOW policy without rules that apply here: nothing is allowed.
        Some(a) if a.policies.is_empty() => {
            return Some(pack(&http_rbac::RbacPerRoute {
                rbac: Some(http_rbac::Rbac {
                    rules: Some(rbac::Rbac {
                        action: rbac::rbac::Action::Allow as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }));
        }
        Some(a) => and.push(or_principals(sources(a))),
        None => {}
    }
    if let Some(d) = deny.filter(|d| !d.policies.is_empty()) {
        and.push(not_principal(or_principals(sources(d))));
    }
    let principal = match and.len() {
        0 => any_principal(),
        1 => and.remove(0),
        _ => rbac::Principal {
            identifier: Some(rbac::principal::Identifier::AndIds(rbac::principal::Set {
                ids: and,
            })),
        },
    };
    Some(pack(&http_rbac::RbacPerRoute {
        rbac: Some(http_rbac::Rbac {
            rules: Some(rbac::Rbac {
                action: rbac::rbac::Action::Allow as i32,
                policies: HashMap::from([(
                    format!("port-{port}"),
                    rbac::Policy {
                        permissions: vec![any_permission()],
                        principals: vec![principal],
                        ..Default::default()
                    },
                )]),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }))
}

/// Name of the RBAC filter of `connect_terminate` (configured per route).
pub const CONNECT_RBAC_FILTER: &str = "switchyard.rbac.connect";

/// An HTTP RBAC filter named `name` without rules (it enforces only what a route's
/// `typed_per_filter_config` gives it).
pub fn per_route_only_filter(name: &str) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
            &http_rbac::Rbac::default(),
        ))),
        ..Default::default()
    }
}

/// Network filters enforcing the policies on `port` (to go before the TCP proxy).
pub fn network_filters(
    policies: &[Arc<AuthorizationPolicy>],
    port: u16,
    trust_domain: &str,
) -> Vec<listener::Filter> {
    rule_sets(policies, port, Layer::Tcp, trust_domain)
        .into_iter()
        .map(|rules| listener::Filter {
            name: NETWORK_RBAC.into(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(pack_with_rules(
                &network_rbac::Rbac {
                    stat_prefix: format!("inbound_{port}."),
                    ..Default::default()
                },
                &rules,
            ))),
        })
        .collect()
}

/// The permissions of a rule's destinations on `port`; `None` when none can match there.
fn permissions(
    to: &[PolicyOperation],
    port: u16,
    layer: Layer,
    action: PolicyAction,
) -> Option<Vec<rbac::Permission>> {
    if to.is_empty() {
        return Some(vec![any_permission()]);
    }
    let out: Vec<rbac::Permission> = to
        .iter()
        .filter(|op| op.ports.is_empty() || op.ports.contains(&port))
        .filter(|op| !op.not_ports.contains(&port))
        .filter_map(|op| match (layer, action, op.is_l7()) {
            (Layer::Tcp, PolicyAction::Allow, true) => None,
            (Layer::Tcp, _, _) => Some(any_permission()),
            (Layer::Http, _, _) => Some(operation(op)),
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// An operation's L7 conditions (its ports were settled by the caller).
fn operation(op: &PolicyOperation) -> rbac::Permission {
    let mut and = Vec::new();
    if !op.paths.is_empty() {
        and.push(or_permissions(op.paths.iter().map(|p| path(p)).collect()));
    }
    if !op.not_paths.is_empty() {
        and.push(not_permission(or_permissions(
            op.not_paths.iter().map(|p| path(p)).collect(),
        )));
    }
    if !op.methods.is_empty() {
        and.push(or_permissions(
            op.methods.iter().map(|m| method(m)).collect(),
        ));
    }
    if !op.not_methods.is_empty() {
        and.push(not_permission(or_permissions(
            op.not_methods.iter().map(|m| method(m)).collect(),
        )));
    }
    match and.len() {
        0 => any_permission(),
        1 => and.remove(0),
        _ => rbac::Permission {
            rule: Some(rbac::permission::Rule::AndRules(rbac::permission::Set {
                rules: and,
            })),
        },
    }
}

fn any_permission() -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::Any(true)),
    }
}

fn or_permissions(mut rules: Vec<rbac::Permission>) -> rbac::Permission {
    if rules.len() == 1 {
        return rules.remove(0);
    }
    rbac::Permission {
        rule: Some(rbac::permission::Rule::OrRules(rbac::permission::Set {
            rules,
        })),
    }
}

fn not_permission(p: rbac::Permission) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::NotRule(Box::new(p))),
    }
}

/// A pattern: `prefix*`, `*suffix`, else exact; `None` for `*` (anything: Envoy refuses
/// an empty prefix, so each caller says "anything" its own way).
fn pattern(p: &str) -> Option<matcher::StringMatcher> {
    use matcher::string_matcher::MatchPattern;
    let m = if p == "*" {
        return None;
    } else if let Some(prefix) = p.strip_suffix('*') {
        MatchPattern::Prefix(prefix.to_string())
    } else if let Some(suffix) = p.strip_prefix('*') {
        MatchPattern::Suffix(suffix.to_string())
    } else {
        MatchPattern::Exact(p.to_string())
    };
    Some(matcher::StringMatcher {
        match_pattern: Some(m),
        ..Default::default()
    })
}

fn path(p: &str) -> rbac::Permission {
    let Some(m) = pattern(p) else {
        return any_permission();
    };
    rbac::Permission {
        rule: Some(rbac::permission::Rule::UrlPath(matcher::PathMatcher {
            rule: Some(matcher::path_matcher::Rule::Path(m)),
        })),
    }
}

fn method(m: &str) -> rbac::Permission {
    let Some(m) = pattern(m) else {
        return any_permission();
    };
    rbac::Permission {
        rule: Some(rbac::permission::Rule::Header(route::HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                m,
            )),
            ..Default::default()
        })),
    }
}

fn any_principal() -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Any(true)),
    }
}

fn or_principals(mut ids: Vec<rbac::Principal>) -> rbac::Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::OrIds(rbac::principal::Set {
            ids,
        })),
    }
}

fn not_principal(p: rbac::Principal) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::NotId(Box::new(p))),
    }
}

/// A verified peer whose URI SAN matches `m` (`None`: any verified peer).
fn authenticated(m: Option<matcher::StringMatcher>) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Authenticated(
            rbac::principal::Authenticated { principal_name: m },
        )),
    }
}

fn namespace(ns: &str, trust_domain: &str) -> rbac::Principal {
    authenticated(pattern(&format!("spiffe://{trust_domain}/ns/{ns}/sa/*")))
}

fn ip_block(b: &ipnet::IpNet) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::DirectRemoteIp(
            core::CidrRange {
                address_prefix: b.network().to_string(),
                prefix_len: Some(wkt::UInt32Value {
                    value: b.prefix_len().into(),
                }),
            },
        )),
    }
}

/// A source entry: all of its lists must hold (each list: any element).
fn source(s: &PolicySource, trust_domain: &str) -> rbac::Principal {
    let mut and = Vec::new();
    let mut list = |items: Vec<rbac::Principal>, negate: bool| {
        if !items.is_empty() {
            let any = or_principals(items);
            and.push(if negate { not_principal(any) } else { any });
        }
    };
    list(
        s.principals
            .iter()
            .map(|p| authenticated(pattern(p)))
            .collect(),
        false,
    );
    list(
        s.not_principals
            .iter()
            .map(|p| authenticated(pattern(p)))
            .collect(),
        true,
    );
    list(
        s.namespaces
            .iter()
            .map(|n| namespace(n, trust_domain))
            .collect(),
        false,
    );
    list(
        s.not_namespaces
            .iter()
            .map(|n| namespace(n, trust_domain))
            .collect(),
        true,
    );
    list(s.ip_blocks.iter().map(ip_block).collect(), false);
    list(s.not_ip_blocks.iter().map(ip_block).collect(), true);
    match and.len() {
        0 => any_principal(),
        1 => and.remove(0),
        _ => rbac::Principal {
            identifier: Some(rbac::principal::Identifier::AndIds(rbac::principal::Set {
                ids: and,
            })),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use prost::Message as _;
    use switchyard_model::{ObjectKey, PolicyRule, PolicyScope};

    use super::*;

    fn policy(action: PolicyAction, rules: Vec<PolicyRule>) -> Arc<AuthorizationPolicy> {
        Arc::new(AuthorizationPolicy {
            key: ObjectKey::new("shop", "p"),
            scope: PolicyScope::Namespace,
            action,
            rules,
        })
    }

    fn to(ports: &[u16], paths: &[&str]) -> PolicyOperation {
        PolicyOperation {
            ports: ports.to_vec(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    fn rule(to: Vec<PolicyOperation>) -> PolicyRule {
        PolicyRule {
            from: Vec::new(),
            to,
        }
    }

    #[test]
    fn deny_comes_first_and_allow_refuses_what_no_rule_matches() {
        let ps = vec![
            policy(PolicyAction::Allow, vec![rule(vec![to(&[8080], &[])])]),
            policy(PolicyAction::Deny, vec![rule(vec![to(&[], &["/admin*"])])]),
        ];
        let sets = rule_sets(&ps, 8080, Layer::Http, "cluster.local");
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].action, rbac::rbac::Action::Deny as i32);
        assert_eq!(sets[1].action, rbac::rbac::Action::Allow as i32);
        assert_eq!(sets[1].policies.len(), 1);
        // On another port the ALLOW rule cannot match: an empty ALLOW refuses everything.
        let other = rule_sets(&ps, 9090, Layer::Http, "cluster.local");
        assert!(other[1].policies.is_empty());
    }

    #[test]
    fn tcp_ports_drop_l7_allow_rules_and_widen_l7_deny_rules() {
        let allow = vec![policy(
            PolicyAction::Allow,
            vec![rule(vec![to(&[], &["/public"])])],
        )];
        let sets = rule_sets(&allow, 5432, Layer::Tcp, "cluster.local");
        assert!(
            sets[0].policies.is_empty(),
            "an L7 ALLOW rule allows nothing on TCP"
        );
        let deny = vec![policy(
            PolicyAction::Deny,
            vec![rule(vec![to(&[5432], &["/admin"])])],
        )];
        let sets = rule_sets(&deny, 5432, Layer::Tcp, "cluster.local");
        let p = sets[0].policies.values().next().unwrap();
        assert_eq!(
            p.permissions[0].rule,
            Some(rbac::permission::Rule::Any(true)),
            "an L7 DENY rule refuses the whole port on TCP"
        );
    }

    fn from(principals: &[&str], to: Vec<PolicyOperation>) -> PolicyRule {
        PolicyRule {
            from: vec![PolicySource {
                principals: principals.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            }],
            to,
        }
    }

    #[test]
    fn hbone_connect_folds_deny_and_allow_into_one_allow_policy() {
        let (a, b) = (
            "spiffe://cluster.local/ns/shop/sa/a",
            "spiffe://cluster.local/ns/shop/sa/b",
        );
        let ps = vec![
            policy(PolicyAction::Allow, vec![from(&[a, b], Vec::new())]),
            policy(PolicyAction::Deny, vec![from(&[b], Vec::new())]),
        ];
        let any = connect_per_route(&ps, 5432, "cluster.local").unwrap();
        let per_route = http_rbac::RbacPerRoute::decode(any.value.as_slice()).unwrap();
        let rules = per_route.rbac.unwrap().rules.unwrap();
        assert_eq!(rules.action, rbac::rbac::Action::Allow as i32);
        assert_eq!(rules.policies.len(), 1, "one key: a stable encoding");
        let folded = rules.policies.values().next().unwrap();
        // (a or b) and not b
        let Some(rbac::principal::Identifier::AndIds(set)) = &folded.principals[0].identifier
        else {
            panic!("{folded:?}");
        };
        assert_eq!(set.ids.len(), 2);
        assert!(matches!(
            set.ids[1].identifier,
            Some(rbac::principal::Identifier::NotId(_))
        ));
        // no policy: nothing to check
        assert!(connect_per_route(&[], 5432, "cluster.local").is_none());
        // an ALLOW that cannot match the port refuses everything
        let elsewhere = vec![policy(
            PolicyAction::Allow,
            vec![from(&[a], vec![to(&[9090], &[])])],
        )];
        let any = connect_per_route(&elsewhere, 5432, "cluster.local").unwrap();
        let rules = http_rbac::RbacPerRoute::decode(any.value.as_slice())
            .unwrap()
            .rbac
            .unwrap()
            .rules
            .unwrap();
        assert_eq!(rules.action, rbac::rbac::Action::Allow as i32);
        assert!(rules.policies.is_empty());
    }

    #[test]
    fn internal_listener_rules_match_the_tunnel_peer_and_source_from_filter_state() {
        let ps = vec![policy(
            PolicyAction::Deny,
            vec![PolicyRule {
                from: vec![PolicySource {
                    principals: vec!["*".into()],
                    ip_blocks: vec!["10.0.0.0/8".parse().unwrap()],
                    ..Default::default()
                }],
                to: Vec::new(),
            }],
        )];
        let filters =
            http_filters_peer_from_filter_state(&ps, 8080, "cluster.local", "peer", "src");
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &filters[0].config_type else {
            panic!()
        };
        let json = format!(
            "{:?}",
            http_rbac::Rbac::decode(any.value.as_slice()).unwrap()
        );
        assert!(json.contains("key: \"peer\""), "{json}");
        assert!(
            json.contains("Prefix(\"spiffe://\")"),
            "any verified peer: {json}"
        );
        assert!(json.contains("key: \"src\""), "{json}");
        assert!(!json.contains("Authenticated"), "{json}");
        assert!(!json.contains("DirectRemoteIp"), "{json}");
    }

    #[test]
    fn several_policies_encode_the_same_at_every_render() {
        let rules: Vec<PolicyRule> = (0..8)
            .map(|i| {
                from(
                    &[&format!("spiffe://cluster.local/ns/shop/sa/s{i}")],
                    Vec::new(),
                )
            })
            .collect();
        let ps = vec![policy(PolicyAction::Deny, rules)];
        let render = || {
            let f = &http_filters(&ps, 8080, "cluster.local")[0];
            let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!()
            };
            any.clone()
        };
        let first = render();
        for _ in 0..20 {
            assert_eq!(render(), first, "a new map order changed the bytes");
        }
        // and they decode to the same rules
        let decoded = http_rbac::Rbac::decode(first.value.as_slice()).unwrap();
        let rules = decoded.rules.unwrap();
        assert_eq!(rules.policies.len(), 8);
        assert_eq!(rules.action, rbac::rbac::Action::Deny as i32);
        assert_eq!(
            rules,
            rule_sets(&ps, 8080, Layer::Http, "cluster.local").remove(0)
        );
        let tcp = &network_filters(&ps, 5432, "cluster.local")[0];
        let Some(listener::filter::ConfigType::TypedConfig(any)) = &tcp.config_type else {
            panic!()
        };
        let decoded = network_rbac::Rbac::decode(any.value.as_slice()).unwrap();
        assert_eq!(decoded.stat_prefix, "inbound_5432.");
        assert_eq!(decoded.rules.unwrap().policies.len(), 8);
    }

    #[test]
    fn sources_become_principals() {
        let src = PolicySource {
            namespaces: vec!["web".into()],
            not_principals: vec!["*".into()],
            ..Default::default()
        };
        let p = source(&src, "example.org");
        let Some(rbac::principal::Identifier::AndIds(set)) = p.identifier else {
            panic!("{p:?}");
        };
        // In the order of the fields: not_principals, then namespaces.
        let Some(rbac::principal::Identifier::Authenticated(a)) = &set.ids[1].identifier else {
            panic!("{set:?}");
        };
        assert_eq!(
            a.principal_name.as_ref().unwrap().match_pattern,
            Some(matcher::string_matcher::MatchPattern::Prefix(
                "spiffe://example.org/ns/web/sa/".into()
            ))
        );
        // `*` is any verified peer (Envoy refuses an empty prefix).
        let Some(rbac::principal::Identifier::NotId(not)) = &set.ids[0].identifier else {
            panic!("{set:?}");
        };
        assert_eq!(
            not.identifier,
            Some(rbac::principal::Identifier::Authenticated(
                rbac::principal::Authenticated {
                    principal_name: None
                }
            ))
        );
    }
}
