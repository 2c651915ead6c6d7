#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use switchyard_protos::envoy::envoy::config::route::v3 as route;

use super::*;

fn exact(v: &str) -> pbm::StringMatcher {
    pbm::StringMatcher {
        match_pattern: Some(pbm::string_matcher::MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

fn prefix(v: &str) -> pbm::StringMatcher {
    pbm::StringMatcher {
        match_pattern: Some(pbm::string_matcher::MatchPattern::Prefix(v.into())),
        ..Default::default()
    }
}

fn path(m: pbm::StringMatcher) -> pb::Permission {
    pb::Permission {
        rule: Some(pb::permission::Rule::UrlPath(pbm::PathMatcher {
            rule: Some(pbm::path_matcher::Rule::Path(m)),
        })),
    }
}

fn method(m: &str) -> pb::Permission {
    pb::Permission {
        rule: Some(pb::permission::Rule::Header(route::HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                exact(m),
            )),
            ..Default::default()
        })),
    }
}

fn any_permission() -> pb::Permission {
    pb::Permission {
        rule: Some(pb::permission::Rule::Any(true)),
    }
}

fn peer(m: pbm::StringMatcher) -> pb::Principal {
    pb::Principal {
        identifier: Some(pb::principal::Identifier::Authenticated(
            pb::principal::Authenticated {
                principal_name: Some(m),
            },
        )),
    }
}

fn any_principal() -> pb::Principal {
    pb::Principal {
        identifier: Some(pb::principal::Identifier::Any(true)),
    }
}

fn rules(
    action: pb::rbac::Action,
    policies: Vec<(&str, Vec<pb::Permission>, Vec<pb::Principal>)>,
) -> pb::Rbac {
    pb::Rbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(n, permissions, principals)| {
                (
                    n.to_string(),
                    pb::Policy {
                        permissions,
                        principals,
                        ..Default::default()
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

struct Req {
    path: &'static str,
    method: &'static str,
}

impl RequestAttributes for Req {
    fn path(&self) -> &str {
        self.path
    }
    fn header(&self, name: &str) -> Option<String> {
        (name == ":method").then(|| self.method.to_string())
    }
}

fn input<'a>(peer: Option<&'a str>, request: Option<&'a Req>) -> RbacInput<'a> {
    RbacInput {
        peer,
        source_ip: "10.244.1.7".parse().unwrap(),
        port: 8080,
        request: request.map(|r| r as &dyn RequestAttributes),
    }
}

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";

#[test]
fn deny_by_path_and_method_then_allow_by_namespace() {
    let deny = convert(
        Some(rules(
            pb::rbac::Action::Deny,
            vec![(
                "shop/no-admin[0]",
                vec![pb::Permission {
                    rule: Some(pb::permission::Rule::AndRules(pb::permission::Set {
                        rules: vec![path(prefix("/admin")), method("DELETE")],
                    })),
                }],
                vec![any_principal()],
            )],
        )),
        RbacLayer::Request,
    )
    .unwrap();
    let allow = convert(
        Some(rules(
            pb::rbac::Action::Allow,
            vec![(
                "shop/same-ns[0]",
                vec![any_permission()],
                vec![peer(prefix("spiffe://cluster.local/ns/shop/sa/"))],
            )],
        )),
        RbacLayer::Request,
    )
    .unwrap();
    let filters = [deny, allow];
    let get_admin = Req {
        path: "/admin/x",
        method: "GET",
    };
    let delete_admin = Req {
        path: "/admin/x",
        method: "DELETE",
    };
    let ok = |p, r| evaluate(&filters, RbacLayer::Request, &input(p, Some(r)));
    assert!(ok(Some(CLIENT), &get_admin).is_ok());
    let denied = ok(Some(CLIENT), &delete_admin).unwrap_err();
    assert_eq!(denied.policy.as_deref(), Some("shop/no-admin[0]"));
    // Another namespace, or no identity (plaintext): no ALLOW policy matches.
    let other = ok(Some("spiffe://cluster.local/ns/web/sa/x"), &get_admin).unwrap_err();
    assert_eq!(other.action, "allow");
    assert!(ok(None, &get_admin).is_err());
    // Connection-level evaluation skips request-level filters.
    assert!(evaluate(&filters, RbacLayer::Connection, &input(None, None)).is_ok());
}

#[test]
fn connection_filters_refuse_identities_and_cannot_read_requests() {
    let filter = convert(
        Some(rules(
            pb::rbac::Action::Deny,
            vec![(
                "shop/not-client[0]",
                vec![any_permission()],
                vec![peer(exact(CLIENT))],
            )],
        )),
        RbacLayer::Connection,
    )
    .unwrap();
    let f = [filter];
    assert!(evaluate(&f, RbacLayer::Connection, &input(Some(CLIENT), None)).is_err());
    assert!(
        evaluate(
            &f,
            RbacLayer::Connection,
            &input(Some("spiffe://cluster.local/ns/shop/sa/echo"), None)
        )
        .is_ok()
    );
    // A path condition in a network filter is a configuration error, named.
    let err = convert(
        Some(rules(
            pb::rbac::Action::Deny,
            vec![("p", vec![path(exact("/x"))], vec![any_principal()])],
        )),
        RbacLayer::Connection,
    )
    .unwrap_err();
    let err = format!("{err:?}");
    assert!(err.contains("request conditions"), "{err}");
    // No rules at all: everything passes.
    let none = convert(None, RbacLayer::Connection).unwrap();
    assert!(evaluate(&[none], RbacLayer::Connection, &input(None, None)).is_ok());
}

#[test]
fn source_ranges_and_negations() {
    let filter = convert(
        Some(rules(
            pb::rbac::Action::Allow,
            vec![(
                "p",
                vec![pb::Permission {
                    rule: Some(pb::permission::Rule::NotRule(Box::new(pb::Permission {
                        rule: Some(pb::permission::Rule::DestinationPort(9090)),
                    }))),
                }],
                vec![pb::Principal {
                    identifier: Some(pb::principal::Identifier::DirectRemoteIp(core::CidrRange {
                        address_prefix: "10.244.1.0".into(),
                        prefix_len: Some(switchyard_protos::wkt::UInt32Value { value: 24 }),
                    })),
                }],
            )],
        )),
        RbacLayer::Connection,
    )
    .unwrap();
    let f = [filter];
    assert!(evaluate(&f, RbacLayer::Connection, &input(None, None)).is_ok());
    let mut other_ip = input(None, None);
    other_ip.source_ip = "10.244.2.7".parse().unwrap();
    assert!(evaluate(&f, RbacLayer::Connection, &other_ip).is_err());
    let mut other_port = input(None, None);
    other_port.port = 9090;
    assert!(evaluate(&f, RbacLayer::Connection, &other_port).is_err());
}
