#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::listener::v3 as pb;
use switchyard_protos::envoy::envoy::extensions::filters::http::cors::v3::Cors;
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;

use super::*;
use crate::config::ConvertError;
use crate::config::fixtures::*;

fn conv(l: pb::Listener) -> Result<Listener, ConvertError> {
    let name = l.name.clone();
    convert(l).map_err(|e| e.into_error(TypeUrl::Listener, &name))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn outbound() -> Listener {
    conv(outbound_listener(
        "0.0.0.0",
        &[80, 8080],
        &[
            (
                "10.96.0.20",
                8080,
                "outbound|8080||db.default.svc.cluster.local",
            ),
            (
                "10.96.0.21",
                5432,
                "outbound|5432||pg.default.svc.cluster.local",
            ),
        ],
    ))
    .unwrap()
}

fn chain_name(l: &Listener, dst: &str) -> String {
    l.select(addr(dst), TransportProtocol::RawBuffer)
        .unwrap()
        .name
        .clone()
}

#[test]
fn outbound_chains_are_chosen_by_port_then_vip() {
    let l = outbound();
    assert_eq!(l.direction, Direction::Outbound);
    assert!(l.original_dst);
    assert_eq!(l.address, addr("0.0.0.0:15001"));
    // an HTTP port, whatever the VIP
    assert_eq!(chain_name(&l, "10.96.0.10:8080"), "outbound-http|8080");
    // the same port on a TCP service's VIP: the TCP chain (longer prefix)
    assert_eq!(
        chain_name(&l, "10.96.0.20:8080"),
        "outbound-tcp|8080|outbound|8080||db.default.svc.cluster.local"
    );
    // a TCP port on another address: nothing on that port matches it, so the default
    // chain (a port match that fails does not fall back to portless chains)
    assert_eq!(chain_name(&l, "10.96.0.99:5432"), "outbound-passthrough");
    assert_eq!(chain_name(&l, "1.1.1.1:443"), "outbound-passthrough");
    assert_eq!(l.explicit_chain().unwrap().name, "outbound-explicit");
    let names: Vec<&str> = l.route_config_names().collect();
    assert_eq!(names, ["80", "8080", "outbound-http"]);
    let Handler::Http(h) = &l
        .select(addr("10.96.0.10:80"), TransportProtocol::RawBuffer)
        .unwrap()
        .handler
    else {
        panic!()
    };
    assert_eq!(h.routes, RouteSource::Rds("80".into()));
    assert_eq!(h.client_cert, ClientCert::Sanitize);
    assert!(h.normalize_path);
    assert_eq!(h.codec, Codec::Auto);
    assert_eq!(h.stream_idle_timeout, Some(DEFAULT_STREAM_IDLE_TIMEOUT));
}

#[test]
fn inbound_ports_summarise_the_mtls_mode() {
    let l = conv(inbound_listener(
        "0.0.0.0",
        &[
            (8080, true, false, true),  // STRICT, HTTP
            (9090, true, true, false),  // PERMISSIVE, TCP
            (7070, false, true, false), // DISABLE, TCP
        ],
    ))
    .unwrap();
    assert!(l.tls_inspector);
    let p = |port| l.inbound_port(port).unwrap();
    assert_eq!(p(8080).mode, MtlsMode::Strict);
    assert!(p(8080).http);
    assert_eq!(p(8080).cluster.as_deref(), Some("inbound|8080||"));
    assert_eq!(p(9090).mode, MtlsMode::Permissive);
    assert_eq!(p(9090).cluster.as_deref(), Some("inbound|9090||"));
    assert_eq!(p(7070).mode, MtlsMode::Disable);
    assert!(l.inbound_port(1).is_none());

    // permissive: TLS goes to the mTLS chain, the rest to the plaintext one
    let tls = l
        .select(addr("10.244.0.5:9090"), TransportProtocol::Tls)
        .unwrap();
    assert_eq!(tls.name, "inbound-mtls|9090");
    let d = tls.tls.as_ref().unwrap();
    assert!(d.require_client_certificate);
    assert_eq!(d.alpn, ["h2", "http/1.1"]);
    let plain = l
        .select(addr("10.244.0.5:9090"), TransportProtocol::RawBuffer)
        .unwrap();
    assert_eq!(plain.name, "inbound|9090");
    assert!(plain.tls.is_none());
    // strict: every connection is TLS-terminated
    let strict = l
        .select(addr("10.244.0.5:8080"), TransportProtocol::RawBuffer)
        .unwrap();
    assert_eq!(strict.name, "inbound-mtls|8080");
    let Handler::Http(h) = &strict.handler else {
        panic!()
    };
    assert_eq!(h.client_cert, ClientCert::SanitizeSet { uri: true });
    let RouteSource::Inline(rc) = &h.routes else {
        panic!()
    };
    assert_eq!(rc.virtual_host("anything").unwrap().routes.len(), 1);
}

#[test]
fn a_listener_without_address_is_invalid() {
    // what the control plane's NACK test hook sends
    let e = conv(pb::Listener {
        name: "switchyard-test-poison".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "listener \"switchyard-test-poison\": address: missing"
    );
}

#[test]
fn filters_the_sidecar_does_not_run_are_rejected_unless_optional() {
    let with_cors = |optional: bool| {
        let mut l = outbound_listener("0.0.0.0", &[80], &[]);
        let mut h = hcm(
            "x",
            hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(ads()),
                route_config_name: "80".into(),
            }),
            false,
        );
        h.http_filters.insert(
            0,
            hcm::HttpFilter {
                name: "envoy.filters.http.cors".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
                    switchyard_protos::pack(&Cors::default()),
                )),
                is_optional: optional,
                ..Default::default()
            },
        );
        l.filter_chains[0].filters = vec![network(&h)];
        conv(l)
    };
    let e = with_cors(false).unwrap_err();
    assert!(matches!(e, ConvertError::Unsupported { .. }));
    assert_eq!(
        e.field(),
        Some("filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("envoy.extensions.filters.http.cors.v3.Cors")
    );
    assert!(with_cors(true).is_ok());

    let mut l = outbound_listener("0.0.0.0", &[80], &[]);
    l.filter_chains[0]
        .filter_chain_match
        .as_mut()
        .unwrap()
        .server_names = vec!["a".into()];
    assert_eq!(
        conv(l).unwrap_err().field(),
        Some("filter_chains[0].filter_chain_match.server_names")
    );
}
