#![allow(clippy::unwrap_used)]

use super::*;

fn names(s: &[&str]) -> BTreeSet<String> {
    s.iter().map(|s| s.to_string()).collect()
}

#[test]
fn all_means_the_kind_s_api_and_follows_cds_and_lds() {
    let p = Plan::new(ProxyKind::Sidecar, &[TypeArg::All], &[]).unwrap();
    assert_eq!(
        p.types,
        vec![
            (TypeUrl::Cluster.as_str().to_string(), Want::Wildcard),
            (
                TypeUrl::ClusterLoadAssignment.as_str().to_string(),
                Want::ClusterEndpoints
            ),
            (TypeUrl::Listener.as_str().to_string(), Want::Wildcard),
            (
                TypeUrl::RouteConfiguration.as_str().to_string(),
                Want::ListenerRoutes
            ),
        ]
    );
    let p = Plan::new(ProxyKind::Ztunnel, &[], &[]).unwrap();
    let types: Vec<&str> = p.types.iter().map(|(t, _)| short(t)).collect();
    assert_eq!(types, ["service", "workload", "authorization"]);
    let p = Plan::new(ProxyKind::Envoy, &[TypeArg::Known(TypeUrl::Secret)], &[]).unwrap();
    assert_eq!(p.types[0].1, Want::Names(names(&["ROOTCA"])));
    let p = Plan::new(
        ProxyKind::Envoy,
        &[TypeArg::Known(TypeUrl::ClusterLoadAssignment)],
        &[],
    )
    .unwrap();
    assert_eq!(p.types[0].1, Want::Wildcard, "EDS alone is wildcard");
}

#[test]
fn resources_name_their_type_when_several_are_asked() {
    let one = Plan::new(
        ProxyKind::Envoy,
        &[TypeArg::Known(TypeUrl::ClusterLoadAssignment)],
        &["outbound|80||a".into()],
    )
    .unwrap();
    assert_eq!(one.types[0].1, Want::Names(names(&["outbound|80||a"])));
    let err = Plan::new(ProxyKind::Envoy, &[TypeArg::All], &["x".into()]).unwrap_err();
    assert!(err.to_string().contains("ambiguous"), "{err}");
    let p = Plan::new(ProxyKind::Envoy, &[TypeArg::All], &["cds/x".into()]).unwrap();
    assert_eq!(p.types[0].1, Want::Names(names(&["x"])));
    assert_eq!(p.types[1].1, Want::ClusterEndpoints);
    let err = Plan::new(
        ProxyKind::Envoy,
        &[TypeArg::Known(TypeUrl::Cluster)],
        &["lds/x".into()],
    )
    .unwrap_err();
    assert!(err.to_string().contains("not subscribed"), "{err}");
    // a workload uid has a slash but no type prefix
    let p = Plan::new(
        ProxyKind::Ztunnel,
        &[TypeArg::Known(TypeUrl::Workload)],
        &["default/client".into()],
    )
    .unwrap();
    assert_eq!(p.types[0].1, Want::Names(names(&["default/client"])));
}

#[test]
fn type_args_and_nack_rules_parse() {
    assert_eq!(type_arg("ALL").unwrap(), TypeArg::All);
    assert_eq!(
        type_arg("eds").unwrap(),
        TypeArg::Known(TypeUrl::ClusterLoadAssignment)
    );
    assert_eq!(
        type_arg("type.googleapis.com/x.y.Z").unwrap(),
        TypeArg::Raw("type.googleapis.com/x.y.Z".into())
    );
    assert!(type_arg("nope").is_err());
    let plan = Plan::new(ProxyKind::Envoy, &[TypeArg::All], &[]).unwrap();
    let r = NackRule::parse("cds/outbound|80||a", &plan).unwrap();
    assert_eq!(r.name.as_deref(), Some("outbound|80||a"));
    let r = NackRule::parse(TypeUrl::Listener.as_str(), &plan).unwrap();
    assert_eq!(r.type_url, TypeUrl::Listener.as_str());
    assert!(NackRule::parse("sds", &plan).is_err());
}

fn args(extra: &[&str]) -> ClientArgs {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: ClientArgs,
    }
    let mut argv = vec!["t"];
    argv.extend_from_slice(extra);
    T::try_parse_from(argv).unwrap().a
}

#[test]
fn node_ids_follow_the_contract() {
    let mut sink = Vec::new();
    let (n, k) = build_node(
        &args(&[
            "--kind",
            "sidecar",
            "--namespace",
            "default",
            "--pod",
            "client",
            "--ip",
            "10.244.0.9",
        ]),
        &mut sink,
    )
    .unwrap();
    assert_eq!(
        n.id,
        "sidecar~10.244.0.9~client.default~default.svc.cluster.local"
    );
    assert_eq!(k, ProxyKind::Sidecar);
    let (n, _) = build_node(
        &args(&[
            "--kind",
            "ztunnel",
            "--node",
            "node-1",
            "--ip",
            "172.18.0.2",
            "--metadata",
            "CLUSTER_ID=c1",
        ]),
        &mut sink,
    )
    .unwrap();
    assert_eq!(n.id, "ztunnel~172.18.0.2~node-1~switchyard-system");
    let md = n.metadata.unwrap().fields;
    assert!(md.contains_key("CLUSTER_ID") && md.contains_key("NODE_NAME"));
    let (_, k) = build_node(
        &args(&["--node-id", "ebpf~10.0.0.1~n~switchyard-system"]),
        &mut sink,
    )
    .unwrap();
    assert_eq!(k, ProxyKind::Ebpf);
    let err = build_node(&args(&["--kind", "ztunnel", "--ip", "10.0.0.1"]), &mut sink).unwrap_err();
    assert!(err.to_string().contains("--node"), "{err}");
    let err = build_node(
        &args(&[
            "--namespace",
            "a",
            "--pod",
            "p",
            "--ip",
            "10.0.0.1",
            "--metadata",
            "NAMESPACE=b",
        ]),
        &mut sink,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("contradicts"), "{err:#}");
    let err = build_node(
        &args(&[
            "--kind",
            "grpc",
            "--node-id",
            "ebpf~10.0.0.1~n~switchyard-system",
        ]),
        &mut sink,
    )
    .unwrap_err();
    assert!(err.to_string().contains("contradicts"), "{err}");
}

#[test]
fn diffs_name_changed_leaves() {
    let old = json!({"clusterName": "c", "endpoints": [{"lbEndpoints": [{"a": 1}]}]});
    let new = json!({"clusterName": "c", "endpoints": [{"lbEndpoints": [{"a": 2}, {"a": 3}]}], "x.y": true});
    let mut d = Vec::new();
    json_diff("", &old, &new, &mut d);
    assert_eq!(
        d,
        [
            "endpoints[0].lbEndpoints[0].a: 1 -> 2",
            "endpoints[0].lbEndpoints[1].a: (none) -> 3",
            "[\"x.y\"]: (none) -> true",
        ]
    );
}

fn response(type_url: &str, version: &str, nonce: &str, res: &[(&str, &str, &[u8])]) -> Response {
    Response {
        type_url: type_url.into(),
        version: version.into(),
        nonce: nonce.into(),
        resources: res
            .iter()
            .map(|(n, v, b)| Resource {
                name: n.to_string(),
                version: v.to_string(),
                resource: wkt::Any {
                    type_url: type_url.into(),
                    value: b.to_vec(),
                },
            })
            .collect(),
        removed: vec![],
    }
}

#[test]
fn checker_reports_nonce_type_and_version_problems() {
    let cds = TypeUrl::Cluster.as_str();
    let mut c = Checker::new(Variant::Sotw);
    assert!(
        c.check(&response(cds, "v1", "n1", &[("a", "", b"1")]), true)
            .is_empty()
    );
    let v = c.check(&response(cds, "v1", "n1", &[("a", "", b"2")]), false);
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[0].contains("repeats nonce"));
    assert!(v[1].contains("never subscribed"));
    assert!(v[2].contains("again with different content"));
    let v = c.check(
        &response(cds, "v1", "n3", &[("a", "", b"2"), ("b", "", b"1")]),
        true,
    );
    assert!(v.is_empty(), "another subscription, same version: {v:?}");
    assert!(c.check(&response(cds, "", "", &[]), true).len() == 2);

    let mut d = Checker::new(Variant::Delta);
    assert!(
        d.check(&response(cds, "1", "n1", &[("a", "x", b"1")]), true)
            .is_empty()
    );
    let v = d.check(&response(cds, "2", "n2", &[("a", "x", b"2")]), true);
    assert!(v[0].contains("kept version x"), "{v:?}");
    let mut wrong = response(cds, "3", "n3", &[("a", "y", b"2")]);
    wrong.resources[0].resource.type_url = TypeUrl::Listener.as_str().into();
    let v = d.check(&wrong, true);
    assert!(v[0].contains("the response is for"), "{v:?}");
    assert_eq!(d.count, 2);
}

fn held<M: prost::Name>(m: &M) -> Held {
    Held {
        version: "1".into(),
        any: switchyard_protos::pack(m),
        json: Value::Null,
    }
}

#[tokio::test]
async fn followers_and_consistency_come_from_cds_and_lds() {
    use switchyard_protos::envoy::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use switchyard_protos::envoy::envoy::config::listener::v3::{ApiListener, Filter};
    use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3::Rds;

    let eds = |name: &str, service: &str| Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: service.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let static_cluster = Cluster {
        name: "s".into(),
        ..Default::default()
    };
    let clusters = [
        held(&eds("a", "")),
        held(&eds("b", "svc-b")),
        held(&static_cluster),
    ];
    assert_eq!(eds_clusters(&clusters), names(&["a", "svc-b"]));

    let hcm = |route: &str| {
        switchyard_protos::pack(&HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.into(),
                ..Default::default()
            })),
            ..Default::default()
        })
    };
    let chained = Listener {
        name: "outbound".into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "hcm".into(),
                config_type: Some(filter::ConfigType::TypedConfig(hcm("8080"))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let api = Listener {
        name: "echo:8080".into(),
        api_listener: Some(ApiListener {
            api_listener: Some(hcm("echo-route")),
        }),
        ..Default::default()
    };
    assert_eq!(
        listener_routes(&[held(&chained), held(&api)]),
        names(&["8080", "echo-route"])
    );

    // A session whose CDS names an EDS cluster the server never sent.
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    let client = AdsClient::connect(channel, Node::default(), Variant::Delta);
    let plan = Plan::new(ProxyKind::Envoy, &[TypeArg::All], &[]).unwrap();
    let mut s = Session::new(client, plan, Vec::new());
    s.types[0].held.insert("a".into(), held(&eds("a", "")));
    s.types[1].asked = Some(names(&["a"]));
    let v = s.consistency();
    assert_eq!(v, ["EDS missing for EDS cluster a named in CDS"]);
    assert!(s.consistency().is_empty(), "reported once");
    assert_eq!(s.checker.count, 1);
    assert_eq!(s.not_sent(), ["eds/a"]);
}

#[test]
fn checker_reports_pushes_out_of_ads_order() {
    let (cds, eds, lds, rds) = (
        TypeUrl::Cluster.as_str(),
        TypeUrl::ClusterLoadAssignment.as_str(),
        TypeUrl::Listener.as_str(),
        TypeUrl::RouteConfiguration.as_str(),
    );
    let mut d = Checker::new(Variant::Delta);
    // generation 5 in order
    for (i, t) in [cds, eds, lds, rds].iter().enumerate() {
        let v = d.check(
            &response(t, "5", &format!("a{i}"), &[("x", "1", b"1")]),
            true,
        );
        assert!(v.is_empty(), "{v:?}");
    }
    // generation 6: LDS, then CDS: broken
    assert!(
        d.check(&response(lds, "6", "b1", &[("x", "2", b"2")]), true)
            .is_empty()
    );
    let v = d.check(&response(cds, "6", "b2", &[("x", "2", b"2")]), true);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("ADS order broken in generation 6: cds pushed after lds"),
        "{v:?}"
    );
    // a reply to a subscription change is not a push
    d.expect_reply(eds);
    let v = d.check(&response(eds, "6", "b3", &[("y", "1", b"1")]), true);
    assert!(v.is_empty(), "{v:?}");
}
