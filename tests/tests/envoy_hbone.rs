//! HBONE interop between stock Envoy 1.40 (kind `envoy`, with `switchyard-sidecar
//! sds-agent`) and Switchyard's micro-sidecar (`switchyard-sidecar proxy`), as root, in one
//! private network namespace whose loopback carries every pod's IP:
//!
//! * (a) `envoy-client-0` (10.244.0.5, stock Envoy) → `sidecar-echo-1` (10.244.0.11, our
//!   sidecar's HBONE server on :15008) → its echo app on 10.244.0.11:18080. Envoy's
//!   outbound listener is used as an explicit HTTP proxy (as in `mtls.rs`); its tunnel
//!   cluster opens the `CONNECT`. The sidecar is L4: the app sees no identity.
//! * (b) `sidecar-client-0` (10.244.0.6, our sidecar; the test's connection to the Service
//!   VIP is captured to its outbound listener by nftables, as in `sidecar_l4.rs`) →
//!   `envoy-echo-1` (10.244.0.12, stock Envoy's `connect_terminate` on :15008) → its echo app
//!   on 127.0.0.1:18081 (Envoy's inbound clusters dial localhost), with the client's SPIFFE
//!   ID in `x-forwarded-client-cert`.
//! * (c) authorization on Envoy's HBONE path: an ALLOW policy for the sidecar client's
//!   identity lets its requests through; DENY rules by path and by the client's IP answer
//!   403 per request; a DENY rule for the client's identity on a TCP port refuses the
//!   tunnel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use switchyard_test_support::echo_process::EchoProcess;
use switchyard_test_support::eventually::eventually;
use switchyard_test_support::manifests::{http as http_port, namespace, pod, service, tcp};
use switchyard_test_support::{http_get, netns};
use switchyard_tests::sidecar::{EnvoyPod, SidecarProcess};
use switchyard_tests::{ControlPlane, http};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(20);
const ENVOY_CLIENT_IP: &str = "10.244.0.5";
const SIDECAR_CLIENT_IP: &str = "10.244.0.6";
const SIDECAR_SERVER_IP: &str = "10.244.0.11";
const ENVOY_SERVER_IP: &str = "10.244.0.12";
const SIDECAR_VIP: &str = "10.96.0.10";
const ENVOY_VIP: &str = "10.96.0.20";
const SIDECAR_HOST: &str = "sidecar-echo.default.svc.cluster.local:8080";
const SIDECAR_CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/sidecar-client";

/// The proxy's `/stats`.
async fn stats(p: &SidecarProcess) -> String {
    http(p.admin, "GET", "/stats")
        .await
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// Reports of an Envoy pod.
trait EnvoyPodExt {
    async fn connect_stats(&self) -> String;
    async fn report(&self) -> String;
}

impl EnvoyPodExt for EnvoyPod {
    /// Nonzero stats about the HBONE resources, for assertions and failure reports.
    async fn connect_stats(&self) -> String {
        let stats = self.envoy.stats().await.unwrap_or_default();
        stats
            .lines()
            .filter(|l| l.contains("connect_") && !l.ends_with(": 0"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn report(&self) -> String {
        format!(
            "--- envoy {}: hbone stats:\n{}\nagent log:\n{}\nenvoy log:\n{}",
            self.ip,
            self.connect_stats().await,
            self.agent.log(),
            self.envoy.log_tail()
        )
    }
}

/// Sum of the counters named `<prefix>...<suffix>` in Envoy's text stats.
fn stat_sum(stats: &str, prefix: &str, suffix: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// `GET <path>` over a plain TCP connection to `addr` (the Service VIP, captured); the raw
/// answer.
async fn get_path_via_vip(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer in 5 s"))??;
    Ok(out)
}

/// `GET /` through the captured VIP.
async fn get_via_vip(addr: SocketAddr, host: &str) -> std::io::Result<String> {
    get_path_via_vip(addr, host, "/").await
}

fn xfcc_uri(echo: &Value) -> Option<String> {
    let xfcc = echo["headers"]["x-forwarded-client-cert"].as_str()?;
    xfcc.split(';')
        .find_map(|kv| kv.strip_prefix("URI="))
        .map(|s| s.trim_matches('"').to_string())
}

#[test]
fn stock_envoy_and_the_micro_sidecar_talk_hbone_both_ways() {
    if !netns::is_root() {
        eprintln!(
            "SKIPPED stock_envoy_and_the_micro_sidecar_talk_hbone_both_ways: needs root (network namespace, nftables, SO_MARK)"
        );
        return;
    }
    netns::enter_private().unwrap();
    for ip in [
        ENVOY_CLIENT_IP,
        SIDECAR_CLIENT_IP,
        SIDECAR_SERVER_IP,
        ENVOY_SERVER_IP,
    ] {
        netns::run("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]).unwrap();
    }
    netns::run("ip", &["route", "add", "10.96.0.0/16", "dev", "lo"]).unwrap();
    // Capture of the sidecar client's app (here: the test) only: VIP traffic to the
    // sidecar's outbound listener on 127.0.0.1:15001; the sidecars' own (marked) sockets
    // exempt. Port 15008 is never captured.
    netns::nft(
        "table inet envoy_hbone_test {
           chain output {
             type nat hook output priority -100; policy accept;
             meta mark 1337 return
             ip daddr 10.96.0.0/16 meta l4proto tcp redirect to :15001
           }
         }",
    )
    .unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let cp = ControlPlane::start(&[(
        "mesh.yaml",
        vec![
            namespace("default", Some("sidecar")),
            service(
                "default",
                "sidecar-echo",
                SIDECAR_VIP,
                &[http_port(8080, 18080)],
            ),
            service(
                "default",
                "envoy-echo",
                ENVOY_VIP,
                &[http_port(8080, 18081), tcp(7070, 18082)],
            ),
            // (c): policies of the Envoy server pod
            format!(
                "apiVersion: switchyard.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  \
                 name: envoy-echo-allow\n  namespace: default\nspec:\n  selector:\n    \
                 matchLabels:\n      app: envoy-echo\n  action: ALLOW\n  rules:\n  - from:\n    \
                 - source:\n        principals: [\"{SIDECAR_CLIENT_ID}\"]\n"
            ),
            format!(
                "apiVersion: switchyard.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  \
                 name: envoy-echo-deny\n  namespace: default\nspec:\n  selector:\n    \
                 matchLabels:\n      app: envoy-echo\n  action: DENY\n  rules:\n  - to:\n    \
                 - operation:\n        paths: [\"/admin*\"]\n  - from:\n    - source:\n        \
                 ipBlocks: [10.244.0.0/16]\n    to:\n    - operation:\n        \
                 paths: [\"/by-ip\"]\n  - from:\n    - source:\n        \
                 principals: [\"{SIDECAR_CLIENT_ID}\"]\n    to:\n    - operation:\n        \
                 ports: [18082]\n"
            ),
            pod(
                "default",
                "sidecar-echo-1",
                "sidecar-echo",
                SIDECAR_SERVER_IP,
            ),
            pod("default", "envoy-echo-1", "envoy-echo", ENVOY_SERVER_IP),
            pod("default", "envoy-client-0", "envoy-client", ENVOY_CLIENT_IP),
            pod(
                "default",
                "sidecar-client-0",
                "sidecar-client",
                SIDECAR_CLIENT_IP,
            ),
        ],
    )])
    .await
    .unwrap();
    // the sidecar dials its app at the pod IP, Envoy at localhost
    let _sidecar_app = EchoProcess::start(
        "sidecar-echo-1",
        Some(format!("{SIDECAR_SERVER_IP}:18080").parse().unwrap()),
        None,
    )
    .await
    .unwrap();
    let _envoy_app = EchoProcess::start(
        "envoy-echo-1",
        Some("127.0.0.1:18081".parse().unwrap()),
        None,
    )
    .await
    .unwrap();
    // (c) the app behind the TCP port
    let _envoy_tcp_app = EchoProcess::start(
        "envoy-echo-1-tcp",
        Some("127.0.0.1:18082".parse().unwrap()),
        None,
    )
    .await
    .unwrap();
    let sidecar_server = SidecarProcess::start(
        &cp,
        "sidecar-echo-1",
        "sidecar-echo",
        SIDECAR_SERVER_IP,
        "127.0.0.2",
    );
    let sidecar_client = SidecarProcess::start(
        &cp,
        "sidecar-client-0",
        "sidecar-client",
        SIDECAR_CLIENT_IP,
        "127.0.0.1",
    );
    let envoy_server = EnvoyPod::start(&cp, "envoy-echo-1", "envoy-echo", ENVOY_SERVER_IP, 0).await;
    let envoy_client =
        EnvoyPod::start(&cp, "envoy-client-0", "envoy-client", ENVOY_CLIENT_IP, 0).await;
    for p in [&sidecar_server, &sidecar_client] {
        eventually(WAIT, "the sidecar to be ready", || async {
            match http(p.admin, "GET", "/ready").await {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        })
        .await;
    }

    // (a) stock Envoy → our sidecar's HBONE server → app
    let outbound: SocketAddr = format!("{ENVOY_CLIENT_IP}:15001").parse().unwrap();
    let answer = tokio::time::timeout(
        WAIT,
        eventually(
            WAIT,
            "an echo answer from envoy via the sidecar",
            || async {
                http_get(outbound, SIDECAR_HOST, "/")
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            },
        ),
    )
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(_) => panic!(
            "(a) no answer\n{}\n--- sidecar server ---\n{}",
            envoy_client.report().await,
            sidecar_server.log()
        ),
    };
    let echo: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(echo["backend"], "sidecar-echo-1", "{}", answer.body);
    // the sidecar dialed the app from the pod's own IP, and forwards no identity (L4)
    let caller = echo["caller"].as_str().unwrap();
    assert!(
        caller.starts_with(&format!("{SIDECAR_SERVER_IP}:")),
        "{}",
        answer.body
    );
    let client_stats = envoy_client.envoy.stats().await.unwrap();
    assert!(
        stat_sum(
            &client_stats,
            "cluster.connect_originate",
            ".upstream_cx_total"
        ) >= 1
            && stat_sum(&client_stats, "cluster.connect_originate", ".ssl.handshake") >= 1
            && stat_sum(
                &client_stats,
                "tcp.connect_originate",
                ".downstream_cx_total"
            ) >= 1,
        "envoy tunnelled through connect_originate:\n{}",
        envoy_client.report().await
    );
    let server_stats = stats(&sidecar_server).await;
    assert!(
        server_stats.contains("inbound_hbone_forwarded: 1"),
        "{server_stats}\n{}",
        sidecar_server.log()
    );

    // (b) our sidecar → stock Envoy's connect_terminate → app, with the caller's identity
    let vip: SocketAddr = format!("{ENVOY_VIP}:8080").parse().unwrap();
    let answer = tokio::time::timeout(
        WAIT,
        eventually(
            WAIT,
            "an echo answer from the sidecar via envoy",
            || async {
                get_via_vip(vip, "envoy-echo.default.svc.cluster.local:8080")
                    .await
                    .ok()
                    .filter(|a| a.starts_with("HTTP/1.1 200"))
            },
        ),
    )
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(_) => panic!(
            "(b) no answer\n--- sidecar client ---\n{}\n{}",
            sidecar_client.log(),
            envoy_server.report().await
        ),
    };
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let echo: Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["backend"], "envoy-echo-1", "{answer}");
    assert_eq!(
        xfcc_uri(&echo).as_deref(),
        Some(SIDECAR_CLIENT_ID),
        "{answer}"
    );
    let client_stats = stats(&sidecar_client).await;
    assert!(
        client_stats.contains("outbound_hbone: 1"),
        "{client_stats}\n{}",
        sidecar_client.log()
    );
    let server_stats = envoy_server.envoy.stats().await.unwrap();
    assert!(
        stat_sum(
            &server_stats,
            "http.connect_terminate",
            ".downstream_rq_total"
        ) >= 1
            && stat_sum(
                &server_stats,
                "http.connect_inbound_18081",
                ".downstream_rq_total"
            ) >= 1,
        "envoy terminated the tunnel on 15008:\n{}",
        envoy_server.report().await
    );

    // (c) authorization on Envoy's HBONE path. (All pods share one namespace here, so the
    // kernel may pick any pod address as the tunnel's source: the IP rule names the pod
    // range. The internal listener's own connection has no IP: the rule matches only the
    // source address `connect_terminate` passes on.) The request above passed the ALLOW policy
    // for the sidecar client's identity (matched on the internal listener through the
    // filter state `connect_terminate` shares); these are refused per request.
    let host = "envoy-echo.default.svc.cluster.local:8080";
    for path in ["/admin/users", "/by-ip"] {
        let answer = get_path_via_vip(vip, host, path).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "{path}: {answer}\n{}",
            envoy_server.report().await
        );
        assert!(answer.contains("RBAC: access denied"), "{path}: {answer}");
    }
    let ok = get_path_via_vip(vip, host, "/public").await.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // TCP port: the DENY for the client's identity refuses the CONNECT; the client's
    // connection ends without an answer.
    let tcp_vip: SocketAddr = format!("{ENVOY_VIP}:7070").parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(tcp_vip).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("envoy-echo-1-tcp"),
        "the denied tunnel reached the app: {}",
        String::from_utf8_lossy(&out)
    );
    let server_stats = envoy_server.envoy.stats().await.unwrap();
    assert!(
        stat_sum(&server_stats, "http.connect_terminate", ".rbac.denied") >= 1
            || stat_sum(&server_stats, "http.connect_terminate.rbac", ".denied") >= 1
            || server_stats.lines().any(|l| l.contains("connect_terminate")
                && l.contains("rbac")
                && l.contains("denied")
                && !l.ends_with(": 0")),
        "connect_terminate's RBAC denied nothing:\n{}",
        server_stats
            .lines()
            .filter(|l| l.contains("rbac"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(cp);
}
