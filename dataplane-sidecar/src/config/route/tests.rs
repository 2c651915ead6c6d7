#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::route::v3 as pb;
use switchyard_protos::envoy::envoy::r#type::matcher::v3 as matcher;

use super::*;
use crate::config::ConvertError;
use crate::config::fixtures::*;
use crate::config::matcher::StringMatch;

fn one_route(r: pb::Route) -> Result<Route, ConvertError> {
    let rc = route_config("8080", vec![vhost("v", &["a"], vec![r])]);
    convert(rc)
        .map(|mut c| c.virtual_hosts.remove(0).routes.remove(0))
        .map_err(|e| e.into_error(TypeUrl::RouteConfiguration, "8080"))
}

fn with_action(f: impl FnOnce(&mut pb::RouteAction)) -> pb::Route {
    let mut r = prefix_route("r", "/", "c");
    if let Some(pb::route::Action::Route(a)) = r.action.as_mut() {
        f(a);
    }
    r
}

fn forward(r: &Route) -> &Forward {
    match &r.action {
        RouteAction::Forward(f) => f,
        other => panic!("{other:?}"),
    }
}

fn exact(v: &str) -> matcher::StringMatcher {
    matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

#[test]
fn weighted_clusters_keep_their_weights_and_pick_by_share() {
    let r = one_route(with_action(|a| {
        a.cluster_specifier = Some(pb::route_action::ClusterSpecifier::WeightedClusters(
            pb::WeightedCluster {
                clusters: vec![
                    pb::weighted_cluster::ClusterWeight {
                        name: "v1".into(),
                        weight: u32v(90),
                        ..Default::default()
                    },
                    pb::weighted_cluster::ClusterWeight {
                        name: "v2".into(),
                        weight: u32v(10),
                        ..Default::default()
                    },
                    pb::weighted_cluster::ClusterWeight {
                        name: "gone".into(),
                        weight: u32v(0),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ));
    }))
    .unwrap();
    let b = &forward(&r).backends;
    assert_eq!(b.total_weight(), 100);
    assert_eq!(b.clusters().collect::<Vec<_>>(), ["v1", "v2", "gone"]);
    let picks: Vec<&str> = (0..100).map(|i| b.pick(i)).collect();
    assert_eq!(picks.iter().filter(|c| **c == "v1").count(), 90);
    assert_eq!(picks.iter().filter(|c| **c == "v2").count(), 10);

    let zero = one_route(with_action(|a| {
        a.cluster_specifier = Some(pb::route_action::ClusterSpecifier::WeightedClusters(
            pb::WeightedCluster {
                clusters: vec![pb::weighted_cluster::ClusterWeight {
                    name: "v1".into(),
                    weight: u32v(0),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ));
    }))
    .unwrap_err();
    assert_eq!(
        zero.field(),
        Some("virtual_hosts[0].routes[0].route.weighted_clusters.clusters"),
        "{zero}"
    );
}

#[test]
fn header_matches_and_the_method() {
    let mut r = prefix_route("r", "/admin", "c");
    r.r#match.as_mut().unwrap().headers = vec![
        pb::HeaderMatcher {
            name: "X-Canary".into(),
            header_match_specifier: Some(pb::header_matcher::HeaderMatchSpecifier::StringMatch(
                exact("true"),
            )),
            ..Default::default()
        },
        pb::HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(pb::header_matcher::HeaderMatchSpecifier::StringMatch(
                exact("GET"),
            )),
            ..Default::default()
        },
        pb::HeaderMatcher {
            name: "x-debug".into(),
            header_match_specifier: Some(pb::header_matcher::HeaderMatchSpecifier::PresentMatch(
                true,
            )),
            invert_match: true,
            ..Default::default()
        },
    ];
    let m = one_route(r).unwrap().matcher;
    assert_eq!(m.method.as_deref(), Some("GET"));
    assert_eq!(m.headers.len(), 2);
    assert_eq!(m.headers[0].name, "x-canary");
    assert!(m.headers[0].matches(Some("true")));
    assert!(!m.headers[0].matches(Some("false")));
    assert!(!m.headers[0].matches(None));
    // inverted presence: matches when absent
    assert!(m.headers[1].matches(None));
    assert!(!m.headers[1].matches(Some("1")));

    let mut range = prefix_route("r", "/", "c");
    range.r#match.as_mut().unwrap().headers = vec![pb::HeaderMatcher {
        name: "x-n".into(),
        header_match_specifier: Some(pb::header_matcher::HeaderMatchSpecifier::RangeMatch(
            Default::default(),
        )),
        ..Default::default()
    }];
    let e = one_route(range).unwrap_err();
    assert!(matches!(e, ConvertError::Unsupported { .. }), "{e}");
    assert_eq!(
        e.field(),
        Some("virtual_hosts[0].routes[0].match.headers[0].range_match")
    );
}

#[test]
fn paths_match_as_envoy_does() {
    let conv = |p: pb::route_match::PathSpecifier| {
        let mut r = prefix_route("r", "/", "c");
        r.r#match.as_mut().unwrap().path_specifier = Some(p);
        one_route(r).map(|r| r.matcher)
    };
    let sep = conv(pb::route_match::PathSpecifier::PathSeparatedPrefix(
        "/api".into(),
    ))
    .unwrap();
    assert!(sep.matches_path("/api"));
    assert!(sep.matches_path("/api/v1"));
    assert!(!sep.matches_path("/apis"));
    // a gRPC method match arrives as a path
    let grpc = conv(pb::route_match::PathSpecifier::SafeRegex(
        matcher::RegexMatcher {
            regex: "/[^/]+/AddItem".into(),
            ..Default::default()
        },
    ))
    .unwrap();
    assert!(grpc.matches_path("/shop.v1.Cart/AddItem"));
    assert!(!grpc.matches_path("/shop.v1.Cart/AddItems"));
    let e = conv(pb::route_match::PathSpecifier::PathSeparatedPrefix(
        "/api/".into(),
    ))
    .unwrap_err();
    assert!(matches!(e, ConvertError::Invalid { .. }), "{e}");
}

#[test]
fn retries_and_timeouts() {
    let r = one_route(with_action(|a| {
        a.timeout = Some(secs(10));
        a.retry_policy = Some(pb::RetryPolicy {
            retry_on: "retriable-status-codes,connect-failure,refused-stream,reset".into(),
            num_retries: u32v(3),
            per_try_timeout: Some(millis(250)),
            retriable_status_codes: vec![502, 503],
            retry_back_off: Some(pb::retry_policy::RetryBackOff {
                base_interval: Some(millis(100)),
                ..Default::default()
            }),
            ..Default::default()
        });
    }))
    .unwrap();
    let f = forward(&r);
    assert_eq!(f.timeout, Some(Duration::from_secs(10)));
    let p = f.retry.as_ref().unwrap();
    assert_eq!(
        p.retry_on,
        [
            RetryOn::Reset,
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::RetriableStatusCodes
        ]
    );
    assert_eq!(p.num_retries, 3);
    assert_eq!(p.per_try_timeout, Some(Duration::from_millis(250)));
    assert_eq!(p.retriable_status_codes, [502, 503]);
    assert_eq!(
        p.backoff,
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1)
        }
    );

    // Envoy's defaults: 15 s route timeout; 0 disables it
    let d = one_route(prefix_route("r", "/", "c")).unwrap();
    assert_eq!(forward(&d).timeout, Some(DEFAULT_ROUTE_TIMEOUT));
    assert!(forward(&d).retry.is_none());
    let off = one_route(with_action(|a| a.timeout = Some(secs(0)))).unwrap();
    assert_eq!(forward(&off).timeout, None);

    let bad = one_route(with_action(|a| {
        a.retry_policy = Some(pb::RetryPolicy {
            retry_on: "5xx,previous-hosts".into(),
            ..Default::default()
        });
    }))
    .unwrap_err();
    assert_eq!(
        bad.to_string(),
        "route configuration \"8080\": virtual_hosts[0].routes[0].route.retry_policy.retry_on: \
         not supported by the sidecar: retry condition \"previous-hosts\""
    );
}

#[test]
fn behaviour_the_sidecar_lacks_is_rejected_by_name() {
    let e = one_route(with_action(|a| a.prefix_rewrite = "/v2".into())).unwrap_err();
    assert_eq!(
        e.field(),
        Some("virtual_hosts[0].routes[0].route.prefix_rewrite")
    );
    let mut r = prefix_route("r", "/", "c");
    r.request_headers_to_remove = vec!["x".into()];
    let e = one_route(r).unwrap_err();
    assert_eq!(
        e.field(),
        Some("virtual_hosts[0].routes[0].request_headers_to_remove")
    );
    // naming and observability are fine
    let mut r = prefix_route("r", "/", "c");
    r.stat_prefix = "s".into();
    assert!(one_route(r).is_ok());
}

#[test]
fn direct_responses() {
    let r = pb::Route {
        r#match: prefix_route("r", "/", "c").r#match,
        action: Some(pb::route::Action::DirectResponse(
            pb::DirectResponseAction {
                status: 500,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    assert_eq!(
        one_route(r).unwrap().action,
        RouteAction::DirectResponse(DirectResponse {
            status: 500,
            body: None
        })
    );
}

#[test]
fn virtual_hosts_are_found_by_host() {
    let rc = convert(route_config(
        "8080",
        vec![
            vhost(
                "echo:8080",
                &[
                    "echo.default.svc.cluster.local",
                    "echo.default.svc.cluster.local:8080",
                    "10.96.0.10:8080",
                ],
                vec![prefix_route("r", "/", "echo")],
            ),
            vhost(
                "wild",
                &["*.example.com"],
                vec![prefix_route("r", "/", "w")],
            ),
            vhost(
                "longer",
                &["*.a.example.com"],
                vec![prefix_route("r", "/", "l")],
            ),
            vhost("pre", &["api.*"], vec![prefix_route("r", "/", "p")]),
            vhost("any", &["*"], vec![prefix_route("r", "/", "any")]),
        ],
    ))
    .unwrap();
    let name = |h: &str| rc.virtual_host(h).map(|v| v.name.as_str());
    assert_eq!(
        name("Echo.default.svc.cluster.local:8080"),
        Some("echo:8080")
    );
    assert_eq!(name("10.96.0.10:8080"), Some("echo:8080"));
    assert_eq!(name("x.a.example.com"), Some("longer"));
    assert_eq!(name("x.example.com"), Some("wild"));
    assert_eq!(name("api.other"), Some("pre"));
    assert_eq!(name("elsewhere"), Some("any"));
    assert_eq!(
        name(".example.com"),
        Some("any"),
        "a wildcard matches at least one character"
    );

    let dup = convert(route_config(
        "8080",
        vec![
            vhost("a", &["x"], vec![prefix_route("r", "/", "c")]),
            vhost("b", &["X"], vec![prefix_route("r", "/", "c")]),
        ],
    ))
    .unwrap_err()
    .into_error(TypeUrl::RouteConfiguration, "8080");
    assert_eq!(dup.field(), Some("virtual_hosts[1].domains[0]"), "{dup}");
}

#[test]
fn query_and_case_insensitive_matches() {
    let mut r = prefix_route("r", "/Healthz", "c");
    let m = r.r#match.as_mut().unwrap();
    m.case_sensitive = Some(switchyard_protos::wkt::BoolValue { value: false });
    m.query_parameters = vec![pb::QueryParameterMatcher {
        name: "verbose".into(),
        query_parameter_match_specifier: Some(
            pb::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(
                        matcher::RegexMatcher {
                            regex: "[01]".into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            ),
        ),
    }];
    let m = one_route(r).unwrap().matcher;
    assert!(m.matches_path("/healthz/x"));
    assert!(matches!(
        m.query[0].value.as_ref().map(|v| &v.pattern),
        Some(StringMatch::Regex(_))
    ));
    assert!(m.query[0].matches(Some("1")));
    assert!(!m.query[0].matches(Some("2")));
    assert!(!m.query[0].matches(None));
}
