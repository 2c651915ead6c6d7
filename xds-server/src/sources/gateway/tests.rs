use super::*;

#[test]
fn durations_parse_per_gep_2257() {
    let ok = |s: &str| s.parse::<GatewayDuration>().map(|d| d.0);
    assert_eq!(ok("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(ok("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(ok("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(ok("0s"), Ok(Duration::ZERO));
    assert_eq!(
        ok("1h1m1s1ms"),
        Ok(Duration::from_millis(3_661_001)),
        "four parts"
    );
    for bad in [
        "",
        "10",
        "s",
        "1.5s",
        "-1s",
        "1d",
        "100000s",
        "1h1m1s1ms1ms",
        "10 s",
        "1H",
    ] {
        assert!(ok(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn durations_print_canonically() {
    for (s, canonical) in [("90m", "1h30m"), ("1500ms", "1s500ms"), ("0ms", "0s")] {
        let d: GatewayDuration = s.parse().unwrap();
        assert_eq!(d.to_string(), canonical);
    }
}

fn grpc(kind: Option<ValueMatchType>, service: Option<&str>, method: Option<&str>) -> String {
    let m = GrpcMethodMatch {
        match_type: kind,
        service: service.map(Into::into),
        method: method.map(Into::into),
    };
    match grpc_path(&m, FieldPath::at("m")) {
        Ok(StringMatch::Exact(p)) => format!("exact {p}"),
        Ok(StringMatch::Prefix(p)) => format!("prefix {p}"),
        Ok(StringMatch::Regex(p)) => format!("regex {p}"),
        Err(e) => format!("error {e}"),
    }
}

#[test]
fn grpc_method_matches_become_paths() {
    assert_eq!(
        grpc(None, Some("shop.v1.Cart"), Some("Add")),
        "exact /shop.v1.Cart/Add"
    );
    assert_eq!(
        grpc(None, Some("shop.v1.Cart"), None),
        "prefix /shop.v1.Cart/"
    );
    assert_eq!(grpc(None, None, Some("Add")), "regex /[^/]+/Add");
    assert_eq!(
        grpc(
            Some(ValueMatchType::RegularExpression),
            Some(r"shop\..*"),
            None
        ),
        r"regex /shop\..*/[^/]+"
    );
    assert!(grpc(None, None, None).starts_with("error field m:"));
    assert!(grpc(None, Some("a/b"), None).starts_with("error field m.service:"));
}

#[test]
fn only_service_parents_attach() {
    let refs = vec![
        ParentReference {
            name: "gw".into(),
            ..Default::default()
        },
        ParentReference {
            kind: Some("Service".into()),
            group: Some("".into()),
            name: "web".into(),
            port: Some(80),
            ..Default::default()
        },
        ParentReference {
            kind: Some("Service".into()),
            group: Some("core".into()),
            namespace: Some("other".into()),
            name: "api".into(),
            ..Default::default()
        },
    ];
    let parents = service_parents(&refs).unwrap();
    assert_eq!(
        parents,
        vec![
            ParentRefInput {
                namespace: None,
                name: "web".into(),
                port: Some(80)
            },
            ParentRefInput {
                namespace: Some("other".into()),
                name: "api".into(),
                port: None
            },
        ]
    );
}

#[test]
fn backend_kind_must_be_service() {
    let refs = vec![BackendRef {
        kind: Some("ServiceImport".into()),
        name: "x".into(),
        ..Default::default()
    }];
    let err = backends(&refs, &FieldPath::at("spec.rules").index(2)).unwrap_err();
    assert_eq!(err.field.to_string(), "spec.rules[2].backendRefs[0].kind");
}

#[test]
fn backend_request_without_retry_bounds_the_request() {
    let rule = HttpRouteRule {
        timeouts: Some(HttpRouteTimeouts {
            request: Some("10s".parse().unwrap()),
            backend_request: Some("2s".parse().unwrap()),
        }),
        ..Default::default()
    };
    let r = http_rule(&rule, &FieldPath::at("spec.rules").index(0)).unwrap();
    assert_eq!(r.timeout, Some(Duration::from_secs(2)));

    let rule = HttpRouteRule {
        retry: Some(HttpRouteRetry {
            attempts: Some(3),
            ..Default::default()
        }),
        ..rule
    };
    let r = http_rule(&rule, &FieldPath::at("spec.rules").index(0)).unwrap();
    assert_eq!(r.timeout, Some(Duration::from_secs(10)));
    let retry = r.retry.unwrap();
    assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(retry.attempts, 3);
}
