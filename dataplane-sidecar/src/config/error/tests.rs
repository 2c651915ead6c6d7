#![allow(clippy::unwrap_used)]

use super::*;
use switchyard_protos::envoy::envoy::config::route::v3 as route;

#[test]
fn paths_are_built_from_the_inside_out() {
    let r: Result<(), FieldError> = Err(FieldError::invalid("safe_regex", "bad"));
    let e = r
        .at("match")
        .at_index("routes", 2)
        .at_index("virtual_hosts", 0)
        .unwrap_err()
        .into_error(TypeUrl::RouteConfiguration, "8080");
    assert_eq!(
        e.to_string(),
        "route configuration \"8080\": virtual_hosts[0].routes[2].match.safe_regex: bad"
    );
    assert_eq!(
        e.field(),
        Some("virtual_hosts[0].routes[2].match.safe_regex")
    );
}

#[test]
fn leftover_fields_are_named() {
    let rest = route::RouteAction {
        prefix_rewrite: "/x".into(),
        ..Default::default()
    };
    let e = reject_rest(&rest)
        .at("route")
        .unwrap_err()
        .into_error(TypeUrl::RouteConfiguration, "r");
    assert_eq!(e.field(), Some("route.prefix_rewrite"), "{e}");
    assert!(matches!(e, ConvertError::Unsupported { .. }));
    assert!(reject_rest(&route::RouteAction::default()).is_ok());
}

#[test]
fn negative_durations_are_invalid() {
    let d = wkt::Duration {
        seconds: -1,
        nanos: 0,
    };
    assert!(duration("connect_timeout", &d).is_err());
    let d = wkt::Duration {
        seconds: 1,
        nanos: 500_000_000,
    };
    assert_eq!(duration("t", &d).unwrap(), Duration::from_millis(1500));
}
