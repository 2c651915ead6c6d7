use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::net::TcpStream;

use super::*;
use crate::client::{HttpProtocol, grpc_channel, grpc_echo, http_get, http_get_with};
use crate::pb::echo_client::EchoClient;
use crate::pb::{EchoRequest, EchoStreamRequest};

#[tokio::test]
async fn answers_http_with_its_name() {
    let backend = spawn_echo_local("alpha").await;
    let addr = backend.http_addr().unwrap();
    let response = http_get(addr, "echo.default.svc.cluster.local", "/hello?x=1")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("alpha"));
    let echo = response.echo().unwrap();
    assert_eq!(echo.backend, "alpha");
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/hello");
    assert_eq!(echo.query.as_deref(), Some("x=1"));
    assert_eq!(echo.host, "echo.default.svc.cluster.local");
    assert_eq!(
        echo.headers.get("host").map(String::as_str),
        Some("echo.default.svc.cluster.local")
    );
    assert_eq!(echo.identity, None);
}

#[tokio::test]
async fn one_port_answers_http1_and_h2c() {
    let backend = spawn_echo("proto", Some(LOCALHOST_ANY_PORT), None).await;
    let addr = backend.http_addr().unwrap();
    for (protocol, expected) in [
        (HttpProtocol::Http1, "HTTP/1.1"),
        (HttpProtocol::Http2, "HTTP/2"),
    ] {
        let response = http_get_with(addr, "echo.test", "/p", protocol)
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{protocol:?}");
        assert_eq!(response.backend(), Some("proto"));
        let echo = response.echo().unwrap();
        assert_eq!(echo.protocol, expected);
        assert_eq!(echo.host, "echo.test", "{protocol:?}");
        assert_eq!(echo.local, addr);
    }
}

/// Sends raw HTTP/1.1 from a socket whose local address we know.
async fn raw_get(addr: SocketAddr, extra_headers: &str, path: &str) -> (SocketAddr, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: raw\r\n{extra_headers}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    (me, response)
}

fn body_of(raw: &str) -> HttpEcho {
    let body = raw.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn reports_caller_address_and_identity() {
    let backend = spawn_echo("who", Some(LOCALHOST_ANY_PORT), None).await;
    let addr = backend.http_addr().unwrap();

    let (me, raw) = raw_get(addr, "", "/").await;
    let echo = body_of(&raw);
    assert_eq!(echo.caller, me);
    assert_eq!(echo.local, addr);
    assert_eq!(echo.protocol, "HTTP/1.1");
    assert_eq!(echo.identity, None);

    let (_, raw) = raw_get(
        addr,
        "x-switchyard-peer-identity: spiffe://cluster.local/ns/a/sa/b\r\n",
        "/",
    )
    .await;
    assert_eq!(
        body_of(&raw).identity.as_deref(),
        Some("spiffe://cluster.local/ns/a/sa/b")
    );

    // XFCC wins over the Switchyard header.
    let xfcc = "By=spiffe://td/ns/s/sa/srv;URI=spiffe://td/ns/c/sa/cli";
    let (_, raw) = raw_get(
        addr,
        &format!("x-switchyard-peer-identity: other\r\nx-forwarded-client-cert: {xfcc}\r\n"),
        "/",
    )
    .await;
    let echo = body_of(&raw);
    assert_eq!(echo.identity.as_deref(), Some(xfcc));
    // The raw JSON has every field the task promises, identity null when absent.
    let (_, raw) = raw_get(addr, "", "/x").await;
    let json: serde_json::Value =
        serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    for field in [
        "backend", "caller", "local", "protocol", "method", "path", "host", "identity", "headers",
    ] {
        assert!(json.get(field).is_some(), "{field} missing in {json}");
    }
    assert!(json["identity"].is_null());
}

#[tokio::test]
async fn status_path_and_delay() {
    let backend = spawn_echo("st", Some(LOCALHOST_ANY_PORT), None).await;
    let addr = backend.http_addr().unwrap();
    let response = http_get(addr, "x", "/status/503").await.unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.backend(), Some("st"));
    assert_eq!(response.echo().unwrap().path, "/status/503");

    let response = http_get(addr, "x", "/status/nope").await.unwrap();
    assert_eq!(response.status, 400);
    assert!(response.echo().unwrap().error.is_some());

    let started = Instant::now();
    let response = http_get(addr, "x", "/?delay_ms=150").await.unwrap();
    assert_eq!(response.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn answers_grpc_with_its_name() {
    let backend = spawn_echo("beta", None, Some(LOCALHOST_ANY_PORT)).await;
    assert_eq!(backend.http_addr(), None);
    let addr = backend.grpc_addr().unwrap();
    let reply = grpc_echo(addr, "echo.default.svc.cluster.local:9090", "ping")
        .await
        .unwrap();
    assert_eq!(reply.message, "ping");
    assert_eq!(reply.backend, "beta");
    assert_eq!(reply.identity, None);
    let caller: SocketAddr = reply.caller.parse().unwrap();
    assert!(caller.ip().is_loopback(), "{caller}");
    assert_ne!(caller, addr);
}

#[tokio::test]
async fn grpc_reports_identity_metadata() {
    let backend = spawn_echo("id", None, Some(LOCALHOST_ANY_PORT)).await;
    let channel = grpc_channel(backend.grpc_addr().unwrap(), "echo:9090", None)
        .await
        .unwrap();
    let mut client = EchoClient::new(channel);
    let mut request = tonic::Request::new(EchoRequest {
        message: "m".into(),
    });
    request.metadata_mut().insert(
        PEER_IDENTITY_HEADER,
        "spiffe://td/ns/a/sa/b".parse().unwrap(),
    );
    let reply = client.echo(request).await.unwrap();
    assert_eq!(
        reply
            .metadata()
            .get(BACKEND_HEADER)
            .unwrap()
            .to_str()
            .unwrap(),
        "id"
    );
    assert_eq!(
        reply.into_inner().identity.as_deref(),
        Some("spiffe://td/ns/a/sa/b")
    );
}

#[tokio::test]
async fn grpc_server_stream_and_bidi() {
    let backend = spawn_echo("streams", None, Some(LOCALHOST_ANY_PORT)).await;
    let channel = grpc_channel(backend.grpc_addr().unwrap(), "echo:9090", None)
        .await
        .unwrap();
    let mut client = EchoClient::new(channel);

    let replies: Vec<_> = client
        .echo_stream(EchoStreamRequest {
            message: "s".into(),
            count: 3,
            interval_ms: 5,
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let replies: Vec<_> = replies.into_iter().map(Result::unwrap).collect();
    assert_eq!(replies.len(), 3);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.message, "s");
        assert_eq!(reply.backend, "streams");
        assert_eq!(reply.sequence as usize, i);
        assert!(!reply.caller.is_empty());
    }

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .echo_chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for (i, word) in ["one", "two", "three"].into_iter().enumerate() {
        tx.send(EchoRequest {
            message: word.into(),
        })
        .await
        .unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(reply.message, word);
        assert_eq!(reply.sequence as usize, i);
        assert_eq!(reply.backend, "streams");
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test]
async fn drop_closes_listener_and_connections() {
    let backend = spawn_echo_local("gamma").await;
    let http = backend.http_addr().unwrap();
    let grpc = backend.grpc_addr().unwrap();
    // An idle open connection must be closed by the drop, not just the listener.
    let mut idle = TcpStream::connect(http).await.unwrap();
    backend.stop();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await
    .expect("idle connection still open after drop");
    assert!(matches!(read, Ok(0) | Err(_)), "got {read:?}");
    assert!(http_get(http, "x", "/").await.is_err());
    let status = grpc_echo(grpc, "x", "ping").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn ready_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ready.json");
    let backend = spawn_echo_local("delta").await;
    backend.write_ready_file(&path).unwrap();
    assert_eq!(&EchoReady::read(&path).unwrap(), backend.ready());
}

#[tokio::test]
async fn grpc_rejects_bad_authority() {
    let status = grpc_echo(LOCALHOST_ANY_PORT, "bad authority", "x")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn bind_failure_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let error = try_spawn_echo("x", Some(addr), None).await.unwrap_err();
    assert!(
        matches!(error, EchoError::Bind { what: "http", .. }),
        "{error}"
    );
}
