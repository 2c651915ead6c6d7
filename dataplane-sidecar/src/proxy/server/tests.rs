#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use nix::sys::socket::{getsockopt, sockopt};
use switchyard_model::SpiffeId;
use switchyard_protos::{TypeUrl, pack};

use super::*;
use crate::config::fixtures::inbound_listener;
use crate::config::{Converted, Resources, convert_resource};

fn settings() -> ProxySettings {
    ProxySettings {
        pod_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        trust_domain: "cluster.local".into(),
        identity: "spiffe://cluster.local/ns/default/sa/server".into(),
        mark: crate::capture::PROXY_MARK,
        connect_timeout: Duration::from_secs(1),
        copy: CopyConfig::default(),
        http2_upgrade: true,
        own_ports: vec![15001, 15006, 15008],
    }
}

fn peer(trust_domain: &str) -> Peer {
    Peer {
        identity: SpiffeId::new(trust_domain, "default", "client"),
        serial: "01".into(),
        addr: "10.0.0.9:40000".parse().unwrap(),
    }
}

#[tokio::test]
async fn tunnel_handler_serves_only_its_pod_and_trust_domain() {
    let metrics = ProxyMetrics::default();
    let handler = TunnelHandler::new(
        &settings(),
        ConfigReader::fixed(None),
        metrics.clone(),
        HttpMetrics::default(),
    );
    let own: SocketAddr = "10.0.0.7:8080".parse().unwrap();
    assert!(handler.authorize(&peer("cluster.local"), own).await.is_ok());

    let foreign = handler
        .authorize(&peer("cluster.local"), "10.0.0.8:8080".parse().unwrap())
        .await
        .unwrap_err();
    assert!(foreign.reason().contains("not this pod"), "{foreign}");

    let other_domain = handler
        .authorize(&peer("evil.example"), own)
        .await
        .unwrap_err();
    assert!(
        other_domain.reason().contains("trust domain"),
        "{other_domain}"
    );

    let hbone_itself = handler
        .authorize(&peer("cluster.local"), "10.0.0.7:15008".parse().unwrap())
        .await;
    assert!(hbone_itself.is_err());
    assert_eq!(metrics.inbound_hbone_refused.get(), 3);
}

fn config_with_inbound(ports: &[(u16, bool, bool, bool)]) -> SidecarConfig {
    let any = pack(&inbound_listener("0.0.0.0", ports));
    let mut res = Resources::default();
    match convert_resource(TypeUrl::Listener, "inbound", &any).unwrap() {
        Converted::Listener(l) => {
            res.listeners.insert("inbound".into(), l);
        }
        other => panic!("not a listener: {other:?}"),
    }
    SidecarConfig::assemble(&res, 1)
}

#[test]
fn plaintext_inbound_follows_the_port_mode() {
    // (port, mtls chain, plaintext chain, http): STRICT, PERMISSIVE, DISABLE.
    let config = config_with_inbound(&[
        (8080, true, false, false),
        (8081, true, true, false),
        (8082, false, true, false),
    ]);
    assert!(matches!(
        inbound_plaintext_allowed(&config, 8080),
        Err(ConnectionError::Strict(8080))
    ));
    assert!(inbound_plaintext_allowed(&config, 8081).is_ok());
    assert!(inbound_plaintext_allowed(&config, 8082).is_ok());
    assert!(matches!(
        inbound_plaintext_allowed(&config, 9999),
        Err(ConnectionError::Unconfigured(9999))
    ));
}

#[test]
fn metrics_render_and_register_every_counter() {
    let metrics = ProxyMetrics::default();
    metrics.inbound_strict_refused.inc();
    let mut stats = String::new();
    metrics.render(&mut stats);
    assert!(stats.contains("inbound_strict_refused: 1"), "{stats}");
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("switchyard_sidecar_inbound_strict_refused_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn connect_marked_sets_the_proxy_mark() {
    if !switchyard_test_support::netns::is_root() {
        eprintln!("SKIPPED connect_marked_sets_the_proxy_mark: SO_MARK needs root (CAP_NET_ADMIN)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = connect_marked(addr, 1337, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(getsockopt(&stream, sockopt::Mark).unwrap(), 1337);
    let (_accepted, _) = listener.accept().await.unwrap();
}

#[test]
fn loops_are_own_ports_on_local_addresses() {
    let s = settings();
    assert!(s.is_own_listener("127.0.0.1:15001".parse().unwrap()));
    assert!(s.is_own_listener("10.0.0.7:15006".parse().unwrap()));
    assert!(!s.is_own_listener("10.0.0.8:15001".parse().unwrap()));
    assert!(!s.is_own_listener("127.0.0.1:8080".parse().unwrap()));
}

/// Serves one HTTP/1.1 connection whose client writes `request` (and hangs up at once when
/// `hang_up`), every answer carrying `body()`; returns the connection's error.
async fn serving_error<B>(request: &'static [u8], hang_up: bool, body: fn() -> B) -> ConnectionError
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use tokio::io::AsyncWriteExt as _;
    let (mut client, server) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(
                hyper_util::rt::TokioIo::new(server),
                hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body()))
                }),
            )
            .await
    });
    client.write_all(request).await.unwrap();
    if hang_up {
        drop(client);
        return ConnectionError::Http(serving.await.unwrap().unwrap_err());
    }
    let e = ConnectionError::Http(serving.await.unwrap().unwrap_err());
    drop(client);
    e
}

/// A client that sends half a request and closes: hyper's serving error counts as the client
/// gone (`outbound_client_closed`), not as a proxy failure; other errors do not.
#[tokio::test]
async fn a_client_closing_mid_request_is_told_apart_from_failures() {
    let e = serving_error(b"GET / HTTP/1.1\r\nHost: echo\r\n", true, || {
        http_body_util::Empty::<bytes::Bytes>::new()
    })
    .await;
    assert!(e.client_gone(), "{e:?}");
    assert!(!ConnectionError::NoRoute("10.0.0.1:80".parse().unwrap()).client_gone());
    let reset = ConnectionError::Copy(CopyError {
        client_to_server: 0,
        server_to_client: 0,
        source: io::Error::from(io::ErrorKind::ConnectionReset),
    });
    assert!(!reset.client_gone(), "only HTTP serving errors qualify");

    // An answer whose body fails midway (the upstream reset it) is not the client's doing,
    // although an I/O error of that kind is in the chain.
    let e = serving_error(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n", false, || {
        let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, io::Error>> = vec![
            Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"part"))),
            Err(io::Error::from(io::ErrorKind::ConnectionReset)),
        ];
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    })
    .await;
    assert!(
        !e.client_gone(),
        "an upstream body failure counted as the client gone: {e:?}"
    );

    let metrics = ProxyMetrics::default();
    let mut stats = String::new();
    metrics.outbound_client_closed.inc();
    metrics.render(&mut stats);
    assert!(stats.contains("outbound_client_closed: 1"), "{stats}");
}
