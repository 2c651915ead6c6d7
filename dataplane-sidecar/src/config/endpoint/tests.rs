#![allow(clippy::unwrap_used)]

use switchyard_protos::TypeUrl;

use super::*;
use crate::config::ConvertError;
use crate::config::cluster;
use crate::config::fixtures::*;
use switchyard_dataplane_runtime::tls::Expected;

const ECHO: &str = "outbound|8080||echo.default.svc.cluster.local";

fn conv(c: pb::ClusterLoadAssignment) -> Result<LoadAssignment, ConvertError> {
    convert(c).map_err(|e| e.into_error(TypeUrl::ClusterLoadAssignment, ECHO))
}

#[test]
fn localities_weights_and_health() {
    let mut c = cla(
        ECHO,
        &[
            (
                "a",
                &[("10.244.0.11", 18080, true), ("10.244.0.12", 18080, false)],
            ),
            ("b", &[("10.244.1.13", 18080, true)]),
        ],
    );
    c.endpoints[1].lb_endpoints[0].health_status = core::HealthStatus::Unhealthy as i32;
    c.endpoints[1].lb_endpoints[0].load_balancing_weight = u32v(3);
    let a = conv(c).unwrap();
    assert_eq!(a.name, ECHO);
    assert_eq!(a.len(), 3);
    assert_eq!(a.overprovisioning_factor, DEFAULT_OVERPROVISIONING);
    let l = &a.localities;
    assert_eq!(l[0].locality.zone, "a");
    assert_eq!(l[0].weight, Some(2));
    assert_eq!(l[1].weight, Some(1));
    let e = &l[1].endpoints[0];
    assert_eq!(e.address, "10.244.1.13:18080".parse().unwrap());
    assert_eq!(e.weight, 3);
    assert_eq!(e.health, Health::Unhealthy);
    assert!(!e.health.is_healthy());
    assert_eq!(
        l[0].endpoints[0]
            .socket_match
            .get("tlsMode")
            .map(String::as_str),
        Some("switchyard-mtls")
    );
    assert!(l[0].endpoints[1].socket_match.is_empty());
    // unresolved: plaintext until a snapshot resolves it against the cluster
    assert_eq!(l[0].endpoints[0].transport, Transport::Plaintext);
}

#[test]
fn transports_resolve_against_the_cluster() {
    let a = conv(cla(
        ECHO,
        &[(
            "a",
            &[("10.244.0.11", 18080, true), ("10.244.0.12", 18080, false)],
        )],
    ))
    .unwrap();
    let c = cluster::convert(eds_cluster(
        ECHO,
        &["spiffe://cluster.local/ns/default/sa/echo"],
    ))
    .unwrap();
    let r = a.resolve(&c);
    let eps: Vec<&Endpoint> = r.iter().map(|(_, e)| e).collect();
    assert!(eps[0].transport.is_hbone());
    assert_eq!(
        eps[0].transport.identity(),
        Some(&SpiffeId::new("cluster.local", "default", "echo"))
    );
    assert_eq!(eps[1].transport, Transport::Plaintext);
    assert_eq!(eps[1].transport.identity(), None);
}

/// Sets the typed identity metadata on endpoint `i` of the first locality.
fn with_identity(
    mut a: pb::ClusterLoadAssignment,
    i: usize,
    id: &str,
) -> pb::ClusterLoadAssignment {
    let md = a.endpoints[0].lb_endpoints[i]
        .metadata
        .get_or_insert_with(Default::default);
    md.typed_filter_metadata.insert(
        IDENTITY_METADATA.to_string(),
        switchyard_protos::pack(&wkt::StringValue {
            value: id.to_string(),
        }),
    );
    a
}

#[test]
fn an_endpoint_announcing_one_of_the_services_identities_must_present_exactly_that_one() {
    let (web, api, other) = (
        "spiffe://cluster.local/ns/default/sa/web",
        "spiffe://cluster.local/ns/default/sa/api",
        "spiffe://cluster.local/ns/default/sa/other",
    );
    let raw = cla(
        ECHO,
        &[(
            "a",
            &[
                ("10.244.0.11", 18080, true),
                ("10.244.0.12", 18080, true),
                ("10.244.0.13", 18080, true),
            ],
        )],
    );
    let raw = with_identity(with_identity(raw, 0, web), 1, other);
    let a = conv(raw).unwrap();
    let c = cluster::convert(eds_cluster(ECHO, &[web, api])).unwrap();
    let r = a.resolve(&c);
    let eps: Vec<&Endpoint> = r.iter().map(|(_, e)| e).collect();
    let expected = |e: &Endpoint| match &e.transport {
        Transport::Hbone(m) => m.expected(),
        Transport::Plaintext => None,
    };
    let id = |s: &str| s.parse::<SpiffeId>().unwrap();
    // its own identity only
    assert_eq!(expected(eps[0]), Some(Expected::AnyOf(vec![id(web)])));
    assert_eq!(eps[0].transport.identity(), Some(&id(web)));
    // an identity the cluster does not allow is ignored: the cluster's list (sorted) applies
    assert_eq!(
        expected(eps[1]),
        Some(Expected::AnyOf(vec![id(api), id(web)]))
    );
    // none announced: the cluster's list
    assert_eq!(
        expected(eps[2]),
        Some(Expected::AnyOf(vec![id(api), id(web)]))
    );
    assert_eq!(eps[2].transport.identity(), None);

    let bad = with_identity(
        cla(ECHO, &[("a", &[("10.244.0.11", 18080, true)])]),
        0,
        "web",
    );
    let e = conv(bad).unwrap_err();
    assert!(
        e.field()
            .is_some_and(|f| f.ends_with("typed_filter_metadata[\"switchyard.io/identity\"]")),
        "{e}"
    );
}

#[test]
fn an_empty_assignment_is_explicitly_empty() {
    let a = conv(cla(ECHO, &[])).unwrap();
    assert!(a.is_empty());
}

#[test]
fn bad_endpoints_name_the_field() {
    let mut zero = cla(ECHO, &[("a", &[("10.244.0.11", 18080, false)])]);
    zero.endpoints[0].lb_endpoints[0].load_balancing_weight = u32v(0);
    let e = conv(zero).unwrap_err();
    assert_eq!(
        e.field(),
        Some("endpoints[0].lb_endpoints[0].load_balancing_weight")
    );

    let dns = cla(ECHO, &[("a", &[("echo.local", 18080, false)])]);
    let e = conv(dns).unwrap_err();
    assert_eq!(
        e.field(),
        Some("endpoints[0].lb_endpoints[0].endpoint.address.address"),
        "{e}"
    );

    let port0 = cla(ECHO, &[("a", &[("10.0.0.1", 0, false)])]);
    assert!(matches!(conv(port0), Err(ConvertError::Invalid { .. })));
}
