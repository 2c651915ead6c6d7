#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use switchyard_dataplane_runtime::tls::Expected;
use switchyard_protos::envoy::envoy::config::cluster::v3 as pb;
use switchyard_protos::{TypeUrl, pack};

use super::*;
use crate::config::ConvertError;
use crate::config::fixtures::*;

fn conv(c: pb::Cluster) -> Result<Cluster, ConvertError> {
    let name = c.name.clone();
    convert(c).map_err(|e| e.into_error(TypeUrl::Cluster, &name))
}

const ECHO: &str = "outbound|8080||echo.default.svc.cluster.local";

#[test]
fn eds_cluster_with_mtls_for_marked_endpoints() {
    let c = conv(eds_cluster(
        ECHO,
        &[
            "spiffe://cluster.local/ns/default/sa/echo",
            "spiffe://cluster.local/ns/default/sa/echo-v2",
        ],
    ))
    .unwrap();
    assert_eq!(c.eds_name(), Some(ECHO));
    assert_eq!(c.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert!(c.locality_weighted);
    assert_eq!(c.protocol, UpstreamProtocol::Http1);
    assert_eq!(c.circuit_breakers, CircuitBreakers::default());

    let marked = BTreeMap::from([("tlsMode".to_string(), "switchyard-mtls".to_string())]);
    let m = c.mtls_for(&marked).unwrap();
    let ids = vec![
        SpiffeId::new("cluster.local", "default", "echo"),
        SpiffeId::new("cluster.local", "default", "echo-v2"),
    ];
    assert_eq!(m.expected(), Some(Expected::AnyOf(ids.clone())));
    assert_eq!(c.identities(), ids.iter().collect::<Vec<_>>());
    // endpoints without the marker (ztunnel, eBPF or mesh-external pods): plaintext
    assert!(c.mtls_for(&BTreeMap::new()).is_none());
    let other = BTreeMap::from([("tlsMode".to_string(), "istio".to_string())]);
    assert!(c.mtls_for(&other).is_none());

    let plain = conv(eds_cluster(ECHO, &[])).unwrap();
    assert!(plain.mtls_for(&marked).is_none());
    assert!(plain.identities().is_empty());
}

#[test]
fn passthrough_and_static_clusters() {
    let p = conv(original_dst_cluster("passthrough-outbound")).unwrap();
    assert!(p.is_passthrough());
    assert_eq!(p.lb_policy, LbPolicy::ClusterProvided);
    assert_eq!(p.eds_name(), None);

    let s = conv(static_cluster("inbound|8080||", 18080)).unwrap();
    let Discovery::Static(a) = &s.discovery else {
        panic!("{:?}", s.discovery)
    };
    let (_, e) = a.iter().next().unwrap();
    assert_eq!(e.address, "127.0.0.1:18080".parse().unwrap());

    let mut bad = static_cluster("x", 1);
    bad.lb_policy = pb::cluster::LbPolicy::ClusterProvided as i32;
    assert!(matches!(conv(bad), Err(ConvertError::Invalid { .. })));
}

#[test]
fn http2_clusters() {
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
    use upstream_http::http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions};
    let mut c = eds_cluster(ECHO, &[]);
    c.typed_extension_protocol_options = std::collections::HashMap::from([(
        HTTP_PROTOCOL_OPTIONS.to_string(),
        pack(&upstream_http::HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
                },
            )),
            ..Default::default()
        }),
    )]);
    assert_eq!(conv(c).unwrap().protocol, UpstreamProtocol::Http2);
}

#[test]
fn circuit_breakers_and_retry_budget() {
    let mut c = eds_cluster(ECHO, &[]);
    c.circuit_breakers = Some(pb::CircuitBreakers {
        thresholds: vec![pb::circuit_breakers::Thresholds {
            max_connections: u32v(10),
            max_requests: u32v(20),
            retry_budget: Some(pb::circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(switchyard_protos::envoy::envoy::r#type::v3::Percent {
                    value: 25.0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let cb = conv(c).unwrap().circuit_breakers;
    assert_eq!(cb.max_connections, 10);
    assert_eq!(cb.max_requests, 20);
    assert_eq!(cb.max_pending_requests, 1024);
    assert_eq!(
        cb.retry_budget,
        Some(RetryBudget {
            budget_percent: 25.0,
            min_retry_concurrency: 3
        })
    );
}

#[test]
fn bad_or_unsupported_clusters_name_the_field() {
    // what the control plane's NACK test hook sends
    let poison = pb::Cluster {
        name: "switchyard-test-poison".into(),
        connect_timeout: Some(switchyard_protos::wkt::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..Default::default()
    };
    let e = conv(poison).unwrap_err();
    assert_eq!(e.name(), "switchyard-test-poison");
    assert_eq!(e.field(), Some("connect_timeout"));
    assert!(e.to_string().starts_with(
        "cluster \"switchyard-test-poison\": connect_timeout: duration -1s 0ns is negative"
    ));

    let mut od = eds_cluster(ECHO, &[]);
    od.outlier_detection = Some(Default::default());
    let e = conv(od).unwrap_err();
    assert!(matches!(e, ConvertError::Unsupported { .. }));
    assert_eq!(e.field(), Some("outlier_detection"));

    let mut hc = eds_cluster(ECHO, &[]);
    hc.health_checks = vec![Default::default()];
    assert_eq!(conv(hc).unwrap_err().field(), Some("health_checks"));

    let mut dns = eds_cluster(ECHO, &[]);
    dns.cluster_discovery_type = Some(pb::cluster::ClusterDiscoveryType::Type(
        pb::cluster::DiscoveryType::StrictDns as i32,
    ));
    assert_eq!(conv(dns).unwrap_err().field(), Some("type"));

    let mut rh = eds_cluster(ECHO, &[]);
    rh.lb_policy = pb::cluster::LbPolicy::RingHash as i32;
    assert_eq!(conv(rh).unwrap_err().field(), Some("lb_policy"));
}
