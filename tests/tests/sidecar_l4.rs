//! `switchyard-sidecar proxy` end to end at L4, as root, in one private network namespace
//! that holds both "pods": loopback carries the client pod's IP (10.244.0.5) and
//! the server pod's (10.244.0.11); the control plane runs in process on loopback.
//!
//! The client's connection to the `echo` Service VIP is captured (an nftables rule standing
//! in for `switchyard-sidecar init`, which would capture the server proxy's traffic too,
//! both sharing one namespace here), the client proxy picks the echo endpoint, opens an
//! HBONE tunnel to the server proxy's port 15008, which dials the echo app with the proxy
//! mark. The echo answer must come from the app and name the server pod's IP as the caller
//! (the server sidecar dialed it) and, the app's port being an HTTP port, the client's
//! SPIFFE ID in `x-forwarded-client-cert`. The acceptance suite on the local cluster
//! (`sidecar_mesh.rs`) covers the L7 behaviour across nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_test_support::echo_process::EchoProcess;
use switchyard_test_support::eventually::eventually;
use switchyard_test_support::manifests::{
    annotated_service, http as http_port, namespace, pod, service, tcp,
};
use switchyard_test_support::netns;
use switchyard_tests::sidecar::SidecarProcess;
use switchyard_tests::{ControlPlane, http};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const CLIENT_IP: &str = "10.244.0.5";
const SERVER_IP: &str = "10.244.0.11";
const VIP: &str = "10.96.0.10";
const WAIT: Duration = Duration::from_secs(20);

async fn get_via_vip(addr: SocketAddr) -> std::io::Result<String> {
    get_path_via_vip(addr, "/hello").await
}

async fn get_path_via_vip(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer in 5 s"))??;
    Ok(out)
}

/// Enters a private network namespace with both pods' addresses and the client's capture,
/// and returns a runtime to run the test in; `None` (after saying so) when not root.
fn private_pods(test: &str) -> Option<tokio::runtime::Runtime> {
    if !netns::is_root() {
        eprintln!("SKIPPED {test}: needs root (network namespace, nftables, SO_MARK)");
        return None;
    }
    netns::enter_private().unwrap();
    for cmd in [
        "addr add 10.244.0.5/32 dev lo",
        "addr add 10.244.0.11/32 dev lo",
        "route add 10.96.0.0/16 dev lo",
    ] {
        netns::run("ip", &cmd.split(' ').collect::<Vec<_>>()).unwrap();
    }
    // Capture of the client app only: VIP traffic to the outbound listener, the proxies'
    // own (marked) sockets exempt.
    netns::nft(
        "table inet sidecar_l4_test {
           chain output {
             type nat hook output priority -100; policy accept;
             meta mark 1337 return
             ip daddr 10.96.0.0/16 meta l4proto tcp redirect to :15001
           }
         }",
    )
    .unwrap();
    Some(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    )
}

/// HTTP/1.1 goes as HTTP/2 in one tunnel per endpoint (checked in `run`); the other suites
/// run the default, a tunnel per upstream HTTP/1.1 connection.
const UPGRADE: [&str; 2] = ["--http2-upgrade", "true"];

/// The echo app, its sidecar and the client's sidecar (both with `proxy_args`), both ready.
async fn start_pods(
    cp: &ControlPlane,
    proxy_args: &[&str],
) -> (EchoProcess, SidecarProcess, SidecarProcess) {
    let echo = EchoProcess::start(
        "echo-1",
        Some(format!("{SERVER_IP}:18080").parse().unwrap()),
        None,
    )
    .await
    .unwrap();
    let server =
        SidecarProcess::start_with(cp, "echo-1", "echo", SERVER_IP, "127.0.0.2", proxy_args);
    let client =
        SidecarProcess::start_with(cp, "client-0", "client", CLIENT_IP, "127.0.0.1", proxy_args);
    for p in [&server, &client] {
        eventually(WAIT, "the proxy to be ready", || async {
            match http(p.admin, "GET", "/ready").await {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        })
        .await;
    }
    (echo, server, client)
}

#[test]
fn client_reaches_the_echo_vip_through_both_proxies_over_hbone() {
    if let Some(rt) = private_pods("client_reaches_the_echo_vip_through_both_proxies_over_hbone") {
        rt.block_on(run());
    }
}

#[test]
fn two_workers_share_connections_and_drain_together() {
    if let Some(rt) = private_pods("two_workers_share_connections_and_drain_together") {
        rt.block_on(two_workers());
    }
}

#[test]
fn service_connection_limits_refuse_the_excess_and_free_on_completion() {
    if let Some(rt) =
        private_pods("service_connection_limits_refuse_the_excess_and_free_on_completion")
    {
        rt.block_on(limits());
    }
}

/// `switchyard.io/max-requests: 1` and `max-connections: 1` on the echo Service: with one
/// slow request in flight a second one gets Envoy's overflow answer (`503` naming the limit),
/// a second TCP connection is closed at once, and both limits free up when the first
/// finishes; the refusals are counted per cluster and limit.
async fn limits() {
    let cp = ControlPlane::start(&[(
        "mesh.yaml",
        vec![
            namespace("default", Some("sidecar")),
            annotated_service(
                "default",
                "echo",
                VIP,
                &[tcp(7070, 18080), http_port(8080, 18080)],
                &[
                    ("switchyard.io/max-requests", "1"),
                    ("switchyard.io/max-connections", "1"),
                ],
            ),
            pod("default", "client-0", "client", CLIENT_IP),
            pod("default", "echo-1", "echo", SERVER_IP),
        ],
    )])
    .await
    .unwrap();
    let (_echo, server, client) = start_pods(&cp, &UPGRADE).await;
    let http_vip: SocketAddr = format!("{VIP}:8080").parse().unwrap();
    eventually(WAIT, "an answer through the proxies", || async {
        get_via_vip(http_vip)
            .await
            .ok()
            .filter(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await;

    // HTTP: one request slot.
    let slow = tokio::spawn(get_path_via_vip(http_vip, "/slow?delay_ms=1500"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refused = get_via_vip(http_vip).await.unwrap();
    assert!(
        refused.starts_with("HTTP/1.1 503"),
        "{refused}\n{}",
        client.log()
    );
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("switchyard-overloaded: max-requests"),
        "{refused}"
    );
    let answer = slow.await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let again = get_via_vip(http_vip).await.unwrap();
    assert!(again.starts_with("HTTP/1.1 200"), "slot not freed: {again}");

    // TCP: one connection slot, held while the first connection is open.
    let tcp_vip: SocketAddr = format!("{VIP}:7070").parse().unwrap();
    let mut first = tokio::net::TcpStream::connect(tcp_vip).await.unwrap();
    first
        .write_all(b"GET /hello HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let mut second = tokio::net::TcpStream::connect(tcp_vip).await.unwrap();
    second
        .write_all(b"GET /hello HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
        .await
        .ok();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut out))
        .await
        .expect("the second connection was neither served nor closed");
    assert!(
        read.is_err() || out.is_empty(),
        "the second connection was served: {}",
        String::from_utf8_lossy(&out)
    );
    drop(first);
    let third = eventually(WAIT, "the connection slot to free", || async {
        get_via_vip(tcp_vip)
            .await
            .ok()
            .filter(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(third.contains("echo-1"), "{third}");

    let (code, metrics) = http("127.0.0.1:15020".parse().unwrap(), "GET", "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let overflows = |cluster: &str, resource: &str| -> u64 {
        let series = format!(
            "switchyard_sidecar_upstream_overflow_total{{cluster=\"outbound|{cluster}||echo.default.svc.cluster.local\",resource=\"{resource}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    assert_eq!(overflows("8080", "max-requests"), 1);
    // the wait for the slot to free may have been refused again meanwhile
    assert!(overflows("7070", "max-connections") >= 1);
    assert_eq!(overflows("7070", "max-requests"), 0);
    let (_, stats) = http(client.admin, "GET", "/stats").await.unwrap();
    assert!(
        stats.contains("circuit outbound|8080||echo.default.svc.cluster.local:"),
        "{stats}"
    );
    drop(server);
}

async fn run() {
    let cp = ControlPlane::start(&[(
        "mesh.yaml",
        vec![
            namespace("default", Some("sidecar")),
            service(
                "default",
                "echo",
                VIP,
                &[tcp(7070, 18080), http_port(8080, 18080)],
            ),
            pod("default", "client-0", "client", CLIENT_IP),
            pod("default", "echo-1", "echo", SERVER_IP),
        ],
    )])
    .await
    .unwrap();
    let (_echo, server, client) = start_pods(&cp, &UPGRADE).await;

    // opaque TCP port, then an HTTP port (served by the HTTP data path)
    for (port, proxied_as) in [(7070, "outbound_hbone: 1"), (8080, "http1: 1")] {
        let vip: SocketAddr = format!("{VIP}:{port}").parse().unwrap();
        let answer = tokio::time::timeout(
            WAIT,
            eventually(WAIT, "an echo answer through the proxies", || async {
                get_via_vip(vip)
                    .await
                    .ok()
                    .filter(|a| a.starts_with("HTTP/1.1 200"))
            }),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer\n--- client proxy ---\n{}\n--- server proxy ---\n{}",
                client.log(),
                server.log()
            )
        });
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let echo: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(echo["backend"], "echo-1", "{answer}");
        // the server sidecar dialed the app from the pod's own IP
        let caller = echo["caller"].as_str().unwrap();
        assert!(caller.starts_with(&format!("{SERVER_IP}:")), "{answer}");
        // The app's port is an HTTP port of the server pod (both services target it), so
        // the server sidecar serves the tunnel as HTTP and names the caller.
        assert_eq!(
            echo["identity"],
            "By=spiffe://cluster.local/ns/default/sa/echo;URI=spiffe://cluster.local/ns/default/sa/client",
            "{answer}"
        );
        let (_, stats) = http(client.admin, "GET", "/stats").await.unwrap();
        assert!(stats.contains(proxied_as), "{stats}\n{}", client.log());
    }

    // Five HTTP/1.1 requests at once, each on its own client connection: they share the
    // one tunnel the first HTTP request opened (HTTP/2 inside it), and the app still sees
    // HTTP/1.1.
    let vip: SocketAddr = format!("{VIP}:8080").parse().unwrap();
    let answers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(get_path_via_vip(vip, "/slow?delay_ms=300")))
        .collect();
    for a in answers {
        let a = a.await.unwrap().unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(a.contains("\"protocol\":\"HTTP/1.1\""), "{a}");
    }
    let (_, client_stats) = http(client.admin, "GET", "/stats").await.unwrap();
    assert!(client_stats.contains("outbound_hbone: 2"), "{client_stats}");
    assert!(
        client_stats.contains("outbound_failed: 0"),
        "{client_stats}\n{}",
        client.log()
    );
    let (_, server_stats) = http(server.admin, "GET", "/stats").await.unwrap();
    assert!(
        server_stats.contains("inbound_hbone_forwarded: 2"),
        "{server_stats}\n{}",
        server.log()
    );
    let (code, metrics) = http("127.0.0.1:15020".parse().unwrap(), "GET", "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("switchyard_sidecar_outbound_hbone_total 2"),
        "{metrics}"
    );

    // A client that closes with half a request sent is counted as gone, not as a failure.
    let mut half = tokio::net::TcpStream::connect(vip).await.unwrap();
    half.write_all(b"GET /hello HTTP/1.1\r\nHost: echo\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(half);
    let stats = eventually(WAIT, "the half request to be counted", || async {
        let (_, stats) = http(client.admin, "GET", "/stats").await.ok()?;
        (stat(&stats, "outbound_client_closed") == 1).then_some(stats)
    })
    .await;
    assert!(stats.contains("outbound_failed: 0"), "{stats}");

    // /config_dump: what the proxy accepted, in Envoy's layout, secrets without the key
    let (code, dump) = http(client.admin, "GET", "/config_dump?include_eds")
        .await
        .unwrap();
    assert_eq!(code, 200, "{dump}");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let section = |ty: &str| {
        dump["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{ty}"))
            .unwrap_or_else(|| panic!("{ty} missing: {dump}"))
            .clone()
    };
    let clusters = section("ClustersConfigDump");
    assert!(
        clusters["dynamic_active_clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |c| c["cluster"]["name"] == "outbound|8080||echo.default.svc.cluster.local"
                    && c["cluster"]["type"] == "EDS"
                    && !c["version_info"].as_str().unwrap_or("").is_empty()
            ),
        "{clusters}"
    );
    let listeners = section("ListenersConfigDump");
    assert!(
        !listeners["dynamic_listeners"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{listeners}"
    );
    let endpoints = section("EndpointsConfigDump");
    assert!(endpoints.to_string().contains(SERVER_IP), "{endpoints}");
    let secrets = section("SecretsConfigDump").to_string();
    assert!(secrets.contains("BEGIN CERTIFICATE"), "{secrets}");
    assert!(secrets.contains("[redacted]"), "{secrets}");
    assert!(!secrets.contains("PRIVATE KEY"), "{secrets}");

    // SIGTERM drains: a request in flight completes, /ready turns 503 at once, new
    // connections are no longer accepted, and the proxy exits cleanly within its grace.
    let vip: SocketAddr = format!("{VIP}:8080").parse().unwrap();
    let slow = tokio::spawn(get_path_via_vip(vip, "/slow?delay_ms=1500"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = client.child.id().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, body) = http(client.admin, "GET", "/ready").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining: true"), "{body}");
    assert!(
        get_via_vip(vip).await.is_err(),
        "a new connection was accepted while draining"
    );
    let answer = slow.await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut child = client.child;
    let status = tokio::time::timeout(Duration::from_secs(6), child.wait())
        .await
        .expect("the proxy did not exit within its grace period")
        .unwrap();
    assert!(
        status.success(),
        "{status}\n{}",
        std::fs::read_to_string(&client.log).unwrap_or_default()
    );
    drop(server.child);
}

/// The value of the `/stats` line `name: N` (0 when absent).
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or(0)
}

/// `--concurrency 2`: each proxy runs two worker threads, each with its own `SO_REUSEPORT`
/// listeners and pools. 32 client connections are spread over both of the client proxy's
/// workers (all on one: a 2^-31 chance), every request is answered by the app, and a SIGTERM
/// to both proxies drains the requests in flight on every worker before they exit.
async fn two_workers() {
    let cp = ControlPlane::start(&[(
        "mesh.yaml",
        vec![
            namespace("default", Some("sidecar")),
            service("default", "echo", VIP, &[http_port(8080, 18080)]),
            pod("default", "client-0", "client", CLIENT_IP),
            pod("default", "echo-1", "echo", SERVER_IP),
        ],
    )])
    .await
    .unwrap();
    let (_echo, server, client) = start_pods(&cp, &["--concurrency", "2"]).await;
    assert!(client.log().contains("workers=2"), "{}", client.log());

    let vip: SocketAddr = format!("{VIP}:8080").parse().unwrap();
    let answers: Vec<_> = (0..32)
        .map(|_| tokio::spawn(get_path_via_vip(vip, "/slow?delay_ms=50")))
        .collect();
    for a in answers {
        let a = a.await.unwrap().unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(a.contains("\"backend\":\"echo-1\""), "{a}");
    }
    let (_, stats) = http(client.admin, "GET", "/stats").await.unwrap();
    let (w0, w1) = (
        stat(&stats, "worker_0_outbound"),
        stat(&stats, "worker_1_outbound"),
    );
    assert_eq!(w0 + w1, 32, "{stats}");
    assert!(
        w0 > 0 && w1 > 0,
        "one worker took every connection\n{stats}"
    );
    assert_eq!(
        stat(&stats, "outbound_failed"),
        0,
        "{stats}\n{}",
        client.log()
    );
    // One tunnel per upstream HTTP/1.1 connection (no `--http2-upgrade`), served by the
    // server's workers.
    let (_, server_stats) = http(server.admin, "GET", "/stats").await.unwrap();
    assert!(
        stat(&server_stats, "worker_0_hbone_tunnel") + stat(&server_stats, "worker_1_hbone_tunnel")
            >= 1,
        "{server_stats}"
    );
    // Each client worker dialled its own HBONE connection; the server serves one per worker,
    // wherever SO_REUSEPORT's hash put them.
    assert!(
        server_stats.contains("hbone_server_connections_per_worker: [1, 1]"),
        "{server_stats}"
    );
    let (code, metrics) = http("127.0.0.1:15020".parse().unwrap(), "GET", "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!(
            "switchyard_sidecar_worker_accepted_total{{worker=\"1\",kind=\"outbound\"}} {w1}"
        )),
        "{metrics}"
    );

    // Drain: 16 slow requests in flight, on both of the client's workers (checked; all on
    // one is a 2^-15 chance), each in its own tunnel to the server proxy; SIGTERM to both
    // proxies; every request completes, and both exit cleanly within their grace.
    let slow: Vec<_> = (0..16)
        .map(|_| tokio::spawn(get_path_via_vip(vip, "/slow?delay_ms=1500")))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, stats) = http(client.admin, "GET", "/stats").await.unwrap();
    assert!(
        stat(&stats, "worker_0_outbound") > w0 && stat(&stats, "worker_1_outbound") > w1,
        "the slow requests did not reach both workers\n{stats}"
    );
    for p in [&client, &server] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for p in [&client, &server] {
        let (code, body) = http(p.admin, "GET", "/ready").await.unwrap();
        assert_eq!(code, 503, "{body}");
    }
    assert!(
        get_via_vip(vip).await.is_err(),
        "a new connection was accepted while draining"
    );
    for a in slow {
        let a = a.await.unwrap().unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
    for mut p in [client, server] {
        let status = tokio::time::timeout(Duration::from_secs(6), p.child.wait())
            .await
            .expect("the proxy did not exit within its grace period")
            .unwrap();
        assert!(status.success(), "{status}\n{}", p.log());
    }
}
