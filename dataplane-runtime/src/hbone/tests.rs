//! In-process HBONE tests: real TLS on loopback with certificates from a test CA, a client and
//! a server from this module, and small TCP targets.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::client::conn::http2;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::test_ca::{Ca, id};
use crate::tls::{Expected, IdentityStore, client_config};

/// A policy that records every peer it sees and allows all of them, or refuses all of them
/// with a reason.
#[derive(Debug, Default)]
struct Policy {
    deny: Option<String>,
    seen: Mutex<Vec<Peer>>,
    /// Serve tunnels in-process instead of dialling their target.
    serve: Option<Serving>,
}

/// How [`Policy`] serves a tunnel in-process: write `says` and close, at once or once the
/// server drains.
#[derive(Debug, Clone, Copy)]
struct Serving {
    says: &'static [u8],
    after_drain: bool,
}

impl Policy {
    fn seen(&self) -> Vec<Peer> {
        self.seen.lock().unwrap().clone()
    }
}

impl InboundHandler for Arc<Policy> {
    async fn authorize(&self, peer: &Peer, _target: SocketAddr) -> Result<(), Refusal> {
        self.seen.lock().unwrap().push(peer.clone());
        match &self.deny {
            Some(reason) => Err(Refusal::new(reason.clone())),
            None => Ok(()),
        }
    }

    async fn connect(&self, _peer: &Peer, target: SocketAddr) -> io::Result<TunnelEnd> {
        let Some(Serving { says, after_drain }) = self.serve else {
            let stream = TcpStream::connect(target).await?;
            return Ok(TunnelEnd::Stream(Box::new(stream)));
        };
        Ok(TunnelEnd::Serve(Box::new(move |mut io, draining| {
            Box::pin(async move {
                if after_drain {
                    draining.cancelled().await;
                }
                let _ = io.write_all(says).await;
                let _ = io.shutdown().await;
            })
        })))
    }
}

/// A running server.
struct Server {
    addr: SocketAddr,
    stats: Arc<HboneStats>,
    policy: Arc<Policy>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(store: &IdentityStore, policy: Policy) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, store, policy)
    }

    fn start_on(listener: TcpListener, store: &IdentityStore, policy: Policy) -> Server {
        let addr = listener.local_addr().unwrap();
        let policy = Arc::new(policy);
        let config = HboneServerConfig {
            target_connect_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(3),
            ..HboneServerConfig::default()
        };
        let server = HboneServer::with_config(store, policy.clone(), config);
        let stats = server.stats();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(listener, token).await });
        Server {
            addr,
            stats,
            policy,
            shutdown,
            task,
        }
    }

    fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(3), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

/// Two workloads, `client` and `server`, with certificates from one CA.
struct Mesh {
    ca: Ca,
    client: IdentityStore,
    server: IdentityStore,
}

impl Mesh {
    fn new() -> Mesh {
        let ca = Ca::new();
        let client = ca.store(&id("default", "client"));
        let server = ca.store(&id("default", "server"));
        Mesh { ca, client, server }
    }

    fn client(&self) -> HboneClient {
        client_for(&self.client)
    }
}

fn client_for(store: &IdentityStore) -> HboneClient {
    HboneClient::with_config(
        store,
        HboneClientConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(3),
            ..HboneClientConfig::default()
        },
    )
}

fn expect_server() -> Expected {
    Expected::Exact(id("default", "server"))
}

/// A TCP target that echoes what it reads and closes after the client's FIN.
async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP target that answers only after the client's FIN: `got <n> bytes`.
async fn reply_after_eof_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                tcp.read_to_end(&mut all).await.unwrap();
                let reply = format!("got {} bytes", all.len());
                tcp.write_all(reply.as_bytes()).await.unwrap();
                tcp.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A listener on `addr` once the server that had it has let it go.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{addr} still in use: {e}"),
        }
    }
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn echo(stream: &mut HboneStream, payload: &[u8]) {
    stream.write_all(payload).await.unwrap();
    let mut back = vec![0; payload.len()];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut back))
        .await
        .expect("echo answered")
        .unwrap();
    assert_eq!(back, payload);
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HTTP/2 connection to `addr` without the HBONE client, to send requests it never sends.
async fn raw_h2(addr: SocketAddr, store: &IdentityStore) -> http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(client_config(store, expect_server(), vec![b"h2".to_vec()]))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn tunnel_round_trip_with_both_identities() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    let target = echo_target().await;
    let client = mesh.client();

    let mut stream = client
        .connect(target, server.addr, expect_server())
        .await
        .unwrap();
    assert_eq!(stream.peer_identity(), &id("default", "server"));
    assert_eq!((stream.target(), stream.via()), (target, server.addr));
    echo(&mut stream, b"hello through hbone").await;

    let seen = server.policy.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].identity, id("default", "client"));
    assert_eq!(seen[0].serial, mesh.client.info().unwrap().serial);
    assert_eq!(seen[0].addr.ip(), server.addr.ip());

    let sent = client.stats().snapshot();
    assert_eq!((sent.connections_opened, sent.streams_opened), (1, 1));
    assert_eq!((sent.bytes_out, sent.bytes_in), (19, 19));
    drop(stream);
    eventually("server byte counts", || {
        let s = server.stats();
        (s.bytes_in, s.bytes_out, s.streams_opened) == (19, 19, 1)
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_share_one_connection() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    let target = echo_target().await;
    let client = mesh.client();

    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (client, via) = (client.clone(), server.addr);
            tokio::spawn(async move {
                let mut stream = client.connect(target, via, expect_server()).await.unwrap();
                echo(&mut stream, format!("stream {i}").as_bytes()).await;
                stream
            })
        })
        .collect();
    let mut streams = Vec::new();
    for task in tasks {
        streams.push(task.await.unwrap());
    }

    let s = server.stats();
    assert_eq!((s.connections_opened, s.streams_opened), (1, 32), "{s:?}");
    let c = client.stats().snapshot();
    assert_eq!((c.connections_opened, c.streams_opened), (1, 32), "{c:?}");
    assert_eq!(client.pooled_connections(), 1);
    // The pooled connection still carries new streams after the others are done.
    drop(streams);
    let mut again = client
        .connect(target, server.addr, expect_server())
        .await
        .unwrap();
    echo(&mut again, b"again").await;
    assert_eq!(server.stats().connections_opened, 1);
    drop(again);
    server.stop().await;
}

#[tokio::test]
async fn server_with_the_wrong_identity_is_refused_naming_both() {
    let mesh = Mesh::new();
    let impostor = mesh.ca.store(&id("default", "a"));
    let server = Server::start(&impostor, Policy::default()).await;
    let client = mesh.client();

    let err = client
        .connect(echo_target().await, server.addr, expect_server())
        .await
        .unwrap_err();
    let HboneError::Dial(DialError::WrongIdentity {
        expected,
        presented,
        via,
    }) = &err
    else {
        panic!("expected a wrong identity, got {err:?}");
    };
    assert_eq!(expected, &id("default", "server").to_string());
    assert_eq!(presented, &id("default", "a").to_string());
    assert_eq!(via, &server.addr);
    let text = err.to_string();
    assert!(
        text.contains("spiffe://cluster.local/ns/default/sa/a")
            && text.contains("spiffe://cluster.local/ns/default/sa/server"),
        "{text}"
    );
    assert!(server.policy.seen().is_empty());
    assert_eq!(client.stats().snapshot().connections_failed, 1);
    eventually("the server counts the failed handshake", || {
        server.stats().connections_failed == 1
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn server_refuses_a_client_without_certificate() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;

    // The HBONE client does not even try without a certificate.
    let anonymous = IdentityStore::new(mesh.ca.bundle());
    let err = client_for(&anonymous)
        .connect(echo_target().await, server.addr, expect_server())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HboneError::Dial(DialError::NoCertificate)),
        "{err:?}"
    );

    // A raw TLS client without a certificate is refused by the server.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let config = client_config(&anonymous, expect_server(), vec![b"h2".to_vec()]);
    let tls = TlsConnector::from(config)
        .connect(ServerName::IpAddress(server.addr.ip().into()), tcp)
        .await;
    // TLS 1.3: the client finishes first and learns of the refusal on its first read.
    if let Ok(mut tls) = tls {
        let mut buf = [0u8; 16];
        assert!(tls.read(&mut buf).await.is_err());
    }
    eventually("the server refuses the handshake", || {
        server.stats().connections_failed == 1
    })
    .await;
    assert_eq!(server.stats().connections_opened, 0);
    server.stop().await;
}

#[tokio::test]
async fn server_refuses_a_client_from_another_ca() {
    let mesh = Mesh::new();
    let foreign = Ca::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    // Trusts our CA (so the server passes) but holds a certificate from another root.
    let stranger = mesh.ca.store_with(&foreign, &id("default", "client"));

    let client = client_for(&stranger);
    let err = client
        .connect(echo_target().await, server.addr, expect_server())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HboneError::Dial(DialError::CertificateRefused { via, .. }) if *via == server.addr),
        "{err:?}"
    );
    assert!(err.to_string().contains("refused our certificate"), "{err}");
    let c = client.stats().snapshot();
    assert_eq!(
        (c.connections_opened, c.connections_failed),
        (0, 1),
        "{c:?}"
    );
    eventually("the server refuses the handshake", || {
        server.stats().connections_failed == 1
    })
    .await;
    assert!(server.policy.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn policy_refusal_is_a_typed_403() {
    let mesh = Mesh::new();
    let policy = Policy {
        deny: Some("no policy allows default/client -> port 7".into()),
        ..Policy::default()
    };
    let server = Server::start(&mesh.server, policy).await;
    let client = mesh.client();
    let target = echo_target().await;

    let err = client
        .connect(target, server.addr, expect_server())
        .await
        .unwrap_err();
    let HboneError::Denied {
        target: denied,
        reason,
        ..
    } = &err
    else {
        panic!("expected a denial, got {err:?}");
    };
    assert_eq!(*denied, target);
    assert_eq!(
        reason.as_deref(),
        Some("no policy allows default/client -> port 7")
    );
    assert_eq!(err.status(), Some(403));
    assert_eq!(server.policy.seen()[0].identity, id("default", "client"));
    assert_eq!(server.stats().streams_refused, 1);
    assert_eq!(client.stats().snapshot().streams_refused, 1);
    // A refused stream does not hurt the connection.
    assert!(
        client
            .connect(target, server.addr, expect_server())
            .await
            .is_err()
    );
    assert_eq!(server.stats().connections_opened, 1);
    server.stop().await;
}

#[tokio::test]
async fn unreachable_target_is_503() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    let target = closed_port().await;

    let err = mesh
        .client()
        .connect(target, server.addr, expect_server())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HboneError::Unreachable { status: 503, reason: Some(r), .. } if r.contains(&target.to_string())),
        "{err:?}"
    );
    assert_eq!(server.stats().streams_failed, 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_authority_is_400_and_other_methods_405() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    let mut h2 = raw_h2(server.addr, &mesh.client).await;

    let connect_to_name = Request::builder()
        .method(Method::CONNECT)
        .uri("example.invalid:80")
        .body(Empty::new())
        .unwrap();
    let response = h2.send_request(connect_to_name).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().contains_key(REASON_HEADER));

    let get = Request::builder()
        .uri("https://127.0.0.1:8080/")
        .body(Empty::new())
        .unwrap();
    let response = h2.send_request(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "CONNECT");

    assert!(server.policy.seen().is_empty());
    assert_eq!(server.stats().streams_failed, 2);
    server.stop().await;
}

#[tokio::test]
async fn half_close_reaches_the_target_and_the_reply_comes_back() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    let target = reply_after_eof_target().await;

    let mut stream = mesh
        .client()
        .connect(target, server.addr, expect_server())
        .await
        .unwrap();
    stream.write_all(b"twelve bytes").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut reply))
        .await
        .expect("the target answers after the half-close")
        .unwrap();
    assert_eq!(reply, "got 12 bytes");
    drop(stream);
    server.stop().await;
}

/// A server whose [`Policy`] serves tunnels as `serving` says, and a tunnel to it.
async fn served_tunnel(serving: Serving) -> (Server, HboneStream) {
    let mesh = Mesh::new();
    let policy = Policy {
        serve: Some(serving),
        ..Policy::default()
    };
    let server = Server::start(&mesh.server, policy).await;
    let stream = mesh
        .client()
        .connect(closed_port().await, server.addr, expect_server())
        .await
        .unwrap();
    (server, stream)
}

#[tokio::test]
async fn a_served_tunnel_that_closes_first_lets_the_client_finish() {
    let (server, mut stream) = served_tunnel(Serving {
        says: b"bye",
        after_drain: false,
    })
    .await;
    let mut said = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut said))
        .await
        .expect("the server's end of the tunnel ends")
        .unwrap();
    assert_eq!(said, b"bye");
    // The server is done, but the stream is not reset under the client: what it still
    // sends is read (and dropped) until its END_STREAM.
    stream.write_all(b"late bytes").await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    // ... which the server counts as read: nothing is counted unless it reads them.
    eventually("the late bytes read by the server", || {
        server.stats().bytes_in == 10
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_served_tunnel_hears_the_drain_and_closes_itself() {
    let (server, mut stream) = served_tunnel(Serving {
        says: b"draining",
        after_drain: true,
    })
    .await;
    stream.write_all(b"hello").await.unwrap();
    let stopped = tokio::spawn(server.stop());
    // Well before the drain timeout (3 s), which would cut the tunnel without a word.
    let mut said = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut said))
        .await
        .expect("the served tunnel closes when the server drains")
        .unwrap();
    assert_eq!(said, b"draining");
    stream.shutdown().await.unwrap();
    drop(stream);
    stopped.await.unwrap();
}

#[tokio::test]
async fn rotated_client_certificate_gets_a_new_connection() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    let target = echo_target().await;
    let client = mesh.client();
    let first = mesh.client.info().unwrap().serial;

    let mut old = client
        .connect(target, server.addr, expect_server())
        .await
        .unwrap();
    echo(&mut old, b"before").await;
    let second = mesh.ca.rotate(&mesh.client, &id("default", "client"));
    assert_ne!(first, second);

    let mut new = client
        .connect(target, server.addr, expect_server())
        .await
        .unwrap();
    echo(&mut new, b"after").await;
    let serials: Vec<_> = server.policy.seen().into_iter().map(|p| p.serial).collect();
    assert_eq!(serials, [first, second]);
    assert_eq!(server.stats().connections_opened, 2);
    assert_eq!(client.pooled_connections(), 1);

    // The tunnel opened before the rotation keeps its connection until it ends.
    echo(&mut old, b"still there").await;
    drop(old);
    eventually("the old connection closes", || {
        server.stats().connections_open() == 1
    })
    .await;
    echo(&mut new, b"unaffected").await;
    drop(new);
    server.stop().await;
}

#[tokio::test]
async fn broken_connection_is_dropped_and_redialled() {
    let mesh = Mesh::new();
    let first = Server::start(&mesh.server, Policy::default()).await;
    let addr = first.addr;
    let target = echo_target().await;
    let client = mesh.client();

    let mut stream = client.connect(target, addr, expect_server()).await.unwrap();
    echo(&mut stream, b"one").await;
    drop(stream);
    first.stop().await;
    eventually("the pool notices the closed connection", || {
        client.pooled_connections() == 0
    })
    .await;

    let second = Server::start_on(rebind(addr).await, &mesh.server, Policy::default());
    let mut stream = client.connect(target, addr, expect_server()).await.unwrap();
    echo(&mut stream, b"two").await;
    assert_eq!(second.stats().connections_opened, 1);
    assert_eq!(client.stats().snapshot().connections_opened, 2);
    drop(stream);
    second.stop().await;
}

#[tokio::test]
async fn goaway_moves_new_streams_to_a_new_connection_while_old_tunnels_drain() {
    let mesh = Mesh::new();
    let first = Server::start(&mesh.server, Policy::default()).await;
    let addr = first.addr;
    let target = echo_target().await;
    let client = mesh.client();
    let mut old = client.connect(target, addr, expect_server()).await.unwrap();

    // Graceful shutdown: the listener closes, the connection gets GOAWAY, the tunnel drains.
    first.shutdown.cancel();
    let second = Server::start_on(rebind(addr).await, &mesh.server, Policy::default());
    // A stream sent before the GOAWAY arrived may still be served by the first server.
    let mut tries = 0;
    while second.stats().connections_opened == 0 {
        tries += 1;
        assert!(tries < 100, "the client never left the draining connection");
        let mut stream = client.connect(target, addr, expect_server()).await.unwrap();
        echo(&mut stream, b"new").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    echo(&mut old, b"old tunnel still works").await;
    drop(old);
    tokio::time::timeout(Duration::from_secs(2), first.task)
        .await
        .expect("the first server finishes draining once its tunnel ends")
        .unwrap();
    second.stop().await;
}

#[tokio::test]
async fn drain_timeout_cuts_tunnels_left_open() {
    let mesh = Mesh::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = HboneServerConfig {
        drain_timeout: Duration::from_millis(100),
        ..HboneServerConfig::default()
    };
    let server = HboneServer::with_config(&mesh.server, Arc::new(Policy::default()), config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { server.serve(listener, shutdown).await }
    });
    let mut stream = mesh
        .client()
        .connect(echo_target().await, addr, expect_server())
        .await
        .unwrap();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("serve returns after the drain timeout")
        .unwrap();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("the cut tunnel ends");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn server_survives_a_misbehaving_connection() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = garbage.read_to_end(&mut buf).await;
    eventually("the garbage connection is refused", || {
        server.stats().connections_failed == 1
    })
    .await;

    let mut stream = mesh
        .client()
        .connect(echo_target().await, server.addr, expect_server())
        .await
        .unwrap();
    echo(&mut stream, b"fine").await;
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_leave_the_pool() {
    let mesh = Mesh::new();
    let server = Server::start(&mesh.server, Policy::default()).await;
    let target = echo_target().await;
    let client = HboneClient::with_config(
        &mesh.client,
        HboneClientConfig {
            idle_timeout: Some(Duration::from_millis(100)),
            ..HboneClientConfig::default()
        },
    );

    let mut stream = client
        .connect(target, server.addr, expect_server())
        .await
        .unwrap();
    // A connection carrying a tunnel is never idle, however quiet the tunnel is.
    tokio::time::sleep(Duration::from_millis(250)).await;
    echo(&mut stream, b"still busy").await;
    assert_eq!(client.pooled_connections(), 1);

    drop(stream);
    eventually("the idle connection closes", || {
        client.pooled_connections() == 0 && server.stats().connections_open() == 0
    })
    .await;
    let c = client.stats().snapshot();
    assert_eq!(
        (c.connections_opened, c.connections_closed),
        (1, 1),
        "{c:?}"
    );

    let mut stream = client
        .connect(target, server.addr, expect_server())
        .await
        .unwrap();
    echo(&mut stream, b"new connection").await;
    assert_eq!(server.stats().connections_opened, 2);
    drop(stream);
    server.stop().await;
}

/// A TCP relay from a port of its own to `to` that can be frozen: it then passes no more
/// bytes either way but keeps both connections open, like a path to a host that vanished.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(to).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                for (mut from, mut to) in [(in_read, out_write), (out_read, in_write)] {
                    let frozen = flag.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // Frozen: hold the bytes (and read no more) for good.
                            while frozen.load(Ordering::Acquire) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Relay { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

#[tokio::test]
async fn keepalive_drops_a_connection_whose_peer_went_silent() {
    let mesh = Mesh::new();
    let (interval, timeout) = (Duration::from_millis(100), Duration::from_millis(200));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = HboneServer::with_config(
        &mesh.server,
        Arc::new(Policy::default()),
        HboneServerConfig {
            keepalive_interval: Some(interval),
            keepalive_timeout: timeout,
            ..HboneServerConfig::default()
        },
    );
    let server_stats = server.stats();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let serving = tokio::spawn(async move { server.serve(listener, token).await });
    let relay = Relay::start(server_addr).await;
    let client = HboneClient::with_config(
        &mesh.client,
        HboneClientConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(3),
            keepalive_interval: Some(interval),
            keepalive_timeout: timeout,
            ..HboneClientConfig::default()
        },
    );
    let target = echo_target().await;
    let mut stream = client
        .connect(target, relay.addr, expect_server())
        .await
        .unwrap();
    echo(&mut stream, b"before").await;

    // Answered pings keep the connection: several intervals later it is still the one in use.
    tokio::time::sleep(6 * interval).await;
    echo(&mut stream, b"still up").await;
    assert_eq!(client.pooled_connections(), 1);
    assert_eq!(client.stats().snapshot().connections_closed, 0);
    assert_eq!(server_stats.snapshot().connections_closed, 0);

    relay.freeze();
    eventually("the client drops the silent connection", || {
        client.pooled_connections() == 0 && client.stats().snapshot().connections_closed == 1
    })
    .await;
    eventually("the server drops it too", || {
        server_stats.snapshot().connections_closed == 1
    })
    .await;
    // The tunnel on it fails instead of hanging.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte))
        .await
        .expect("the tunnel's read returns once its connection is gone");
    assert!(read.is_err(), "read on a dropped connection: {read:?}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("server stops")
        .unwrap();
}

#[tokio::test]
async fn a_spread_serves_each_connection_on_the_worker_with_the_fewest() {
    let mesh = Mesh::new();
    let (spread, members) = Spread::new(2);
    // Worker 0's listener accepts every connection and worker 1's none, as an unlucky
    // SO_REUSEPORT hash would have it.
    let busy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idle = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = busy.local_addr().unwrap();
    let server = HboneServer::new(&mesh.server, Arc::new(Policy::default()));
    let shutdown = CancellationToken::new();
    let (mut workers, mut policies) = (Vec::new(), Vec::new());
    for (listener, member) in [busy, idle].into_iter().zip(members) {
        // Each worker its own policy, to tell which worker served a tunnel.
        let policy = Arc::new(Policy::default());
        policies.push(policy.clone());
        let server = server.with_handler(policy);
        let token = shutdown.clone();
        workers.push(tokio::spawn(async move {
            server.serve_spread(listener, token, member).await;
        }));
    }

    let target = echo_target().await;
    let mut tunnels = Vec::new();
    for i in 0..4u8 {
        // One client per connection: a client pools one connection per server.
        let client = mesh.client();
        let mut stream = client.connect(target, addr, expect_server()).await.unwrap();
        echo(&mut stream, &[b'0' + i; 3]).await;
        tunnels.push((client, stream));
    }
    assert_eq!(spread.open(), vec![2, 2], "connections per worker");
    let served: Vec<usize> = policies.iter().map(|p| p.seen().len()).collect();
    assert_eq!(served, vec![2, 2], "tunnels served per worker");
    assert_eq!(server.stats().snapshot().connections_opened, 4);
    // Every tunnel still works, whichever worker serves it.
    for (_, stream) in &mut tunnels {
        echo(stream, b"again").await;
    }

    drop(tunnels);
    eventually("the workers count the closed connections", || {
        spread.open() == vec![0, 0]
    })
    .await;
    shutdown.cancel();
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .expect("worker stops")
            .unwrap();
    }
}
