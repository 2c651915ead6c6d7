//! The micro-sidecar on the local cluster, as root: namespace `shop` runs in mode `sidecar`
//! (the local cluster injects `switchyard-sidecar init` and `proxy` into its pods, which get
//! their certificates and configuration from the control plane over TLS), namespace `plain`
//! runs no dataplane. Two nodes; pods are spread over both, so the client's requests cross
//! the underlay.
//!
//! Checked here: HTTP/1.1, HTTP/2, gRPC unary and streaming and raw TCP through both sidecars
//! with the client's SPIFFE ID reaching the app; no plaintext payload on the underlay
//! (while a non-mesh pair's payload is seen there, so the capture works); a pod without a
//! sidecar cannot reach the STRICT namespace; an AuthorizationPolicy DENY by path (403) and
//! by source identity (refused); an HTTPRoute's 90/10 split over 2,000 requests; a
//! per-route timeout; a retry on 503 and the ejection of a dead endpoint; traffic through a
//! restart of the control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_local_cluster::{addressing, ip};
use switchyard_test_support::eventually;

use switchyard_tests::local::{Cluster, admin, as_root};

const WAIT: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";

const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {switchyard.io/dataplane-mode: sidecar}
---
apiVersion: switchyard.io/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        command: [switchyard-echo, serve, --http, '0.0.0.0:8080', --grpc, '0.0.0.0:9090']
        ports: [{name: http, containerPort: 8080}, {name: grpc, containerPort: 9090}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v2, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo-v2}}
  template:
    metadata: {labels: {app: echo-v2}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        command: [switchyard-echo, serve, --http, '0.0.0.0:8080']
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}
  - {name: tcp, port: 7070, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: shop}
spec:
  selector: {app: echo-v2}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs:
    - {name: echo, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: echo, port: 80}]
  - backendRefs: [{name: echo, port: 80}]
---
# `flaky` has a working pod and a dead one: its app does not listen on the Service's port,
# so its sidecar answers 503 to every request (an endpoint whose process is gone).
apiVersion: v1
kind: Pod
metadata: {name: flaky-good, namespace: shop, labels: {app: flaky}}
spec:
  containers:
  - name: echo
    command: [switchyard-echo, serve, --http, '0.0.0.0:8080']
---
apiVersion: v1
kind: Pod
metadata: {name: flaky-dead, namespace: shop, labels: {app: flaky}}
spec:
  containers:
  - name: echo
    command: [switchyard-echo, serve, --http, '0.0.0.0:8081']
---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: shop}
spec:
  selector: {app: flaky}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky, namespace: shop}
spec:
  parentRefs: [{group: '', kind: Service, name: flaky, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /retry}}]
    retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: flaky, port: 80}]
  - backendRefs: [{name: flaky, port: 80}]
---
# Authorization: requests for /admin* on echo pods are denied; the `locked` pod (a TCP
# service) refuses the client's identity.
apiVersion: switchyard.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/admin*']}}]
---
apiVersion: switchyard.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: not-the-client, namespace: shop}
spec:
  selector: {matchLabels: {app: locked}}
  action: DENY
  rules:
  - from: [{source: {principals: ['spiffe://cluster.local/ns/shop/sa/client']}}]
---
apiVersion: v1
kind: Pod
metadata: {name: locked, namespace: shop, labels: {app: locked}}
spec:
  serviceAccountName: locked
  containers:
  - name: echo
    command: [switchyard-echo, serve, --http, '0.0.0.0:8080']
---
apiVersion: v1
kind: Service
metadata: {name: locked, namespace: shop}
spec:
  selector: {app: locked}
  ports:
  - {name: tcp, port: 7070, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccountName: client
  containers:
  - name: client
    command: [switchyard-echo, serve, --http, '0.0.0.0:8080']
";

const PLAIN: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: plain
  labels: {switchyard.io/dataplane-mode: none}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: plain, labels: {app: outsider}}
spec:
  containers:
  - name: main
    command: [switchyard-echo, serve, --http, '0.0.0.0:8080']
---
apiVersion: v1
kind: Pod
metadata: {name: bystander, namespace: plain, labels: {app: bystander}}
spec:
  containers:
  - name: main
    command: [switchyard-echo, serve, --http, '0.0.0.0:8080']
---
apiVersion: v1
kind: Pod
metadata: {name: bystander-2, namespace: plain, labels: {app: bystander}}
spec:
  containers:
  - name: main
    command: [switchyard-echo, serve, --http, '0.0.0.0:8080']
";

/// `switchyard-echo get` from `pod`; the parsed answer, or the failure's output.
async fn get(c: &Cluster, pod: &str, args: &[&str]) -> Result<Value, String> {
    let mut cmd = vec!["switchyard-echo", "get"];
    cmd.extend_from_slice(args);
    let run = c.exec(pod, &cmd).await;
    if run.code != Some(0) {
        return Err(format!("exit {:?}: {}{}", run.code, run.stdout, run.stderr));
    }
    serde_json::from_str(run.stdout.trim()).map_err(|e| format!("{e}: {}", run.stdout))
}

/// `switchyard-echo load` from `pod`; the JSON report.
async fn load(c: &Cluster, pod: &str, args: &[&str]) -> Value {
    let mut cmd = vec!["switchyard-echo", "load"];
    cmd.extend_from_slice(args);
    let run = c.exec(pod, &cmd).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    serde_json::from_str(run.stdout.trim()).unwrap()
}

fn vip(c: &Cluster, service: &str) -> Ipv4Addr {
    *c.state()
        .services
        .get(service)
        .unwrap_or_else(|| panic!("service {service} has no cluster IP"))
}

/// The node of each pod, by pod name.
fn nodes(c: &Cluster) -> BTreeMap<String, String> {
    c.state()
        .pods
        .values()
        .map(|p| (p.name.clone(), p.node.clone()))
        .collect()
}

/// Waits until the pod's sidecar answers `/ready` with 200.
async fn sidecar_ready(c: &Cluster, pod: &str) {
    eventually(
        WAIT,
        &format!("the sidecar of {pod} to be ready"),
        || async {
            let run = c
                .exec(
                    pod,
                    &["switchyard-echo", "get", "http://127.0.0.1:15000/ready"],
                )
                .await;
            (run.code == Some(0)).then_some(())
        },
    )
    .await;
}

/// Frames seen on the underlay while `during` ran: whether `marker` appeared in any, and how
/// many carried TCP to or from port 15008.
struct Sniffed {
    marker_seen: bool,
    hbone_frames: usize,
    frames: usize,
}

/// Captures every frame in the underlay namespace (AF_PACKET, all interfaces) until `stop`.
fn sniff_underlay(
    cluster: &str,
    marker: Vec<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Sniffed> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, recv, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let ns = addressing::netns::underlay(cluster);
    std::thread::spawn(move || {
        ip::in_netns(&ns, move || {
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::empty(),
                SockProtocol::EthAll,
            )
            .expect("an AF_PACKET socket (root)");
            setsockopt(
                &fd,
                sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(0, 100_000),
            )
            .unwrap();
            let mut out = Sniffed {
                marker_seen: false,
                hbone_frames: 0,
                frames: 0,
            };
            let mut buf = vec![0u8; 65536];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok(n) = recv(
                    fd.as_raw_fd(),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                ) else {
                    continue;
                };
                let frame = &buf[..n];
                out.frames += 1;
                if frame.windows(marker.len()).any(|w| w == marker.as_slice()) {
                    out.marker_seen = true;
                }
                // Ethernet + IPv4 + TCP: ports after the IP header.
                if n > 34 && frame[12..14] == [0x08, 0x00] && frame[23] == 6 {
                    let ihl = usize::from(frame[14] & 0x0f) * 4;
                    let tcp = 14 + ihl;
                    if n >= tcp + 4 {
                        let sport = u16::from_be_bytes([frame[tcp], frame[tcp + 1]]);
                        let dport = u16::from_be_bytes([frame[tcp + 2], frame[tcp + 3]]);
                        if sport == 15008 || dport == 15008 {
                            out.hbone_frames += 1;
                        }
                    }
                }
            }
            out
        })
        .unwrap()
    })
}

#[test]
fn sidecars_carry_http_grpc_and_tcp_over_hbone_with_identity_policy_and_routes() {
    as_root(async {
        let c = Cluster::new('s', &[("mesh.yaml", MESH), ("plain.yaml", PLAIN)]);
        c.up(2).await;
        let placement = nodes(&c);
        for pod in placement.keys().filter(|p| {
            p.starts_with("echo")
                || p.starts_with("flaky")
                || p.as_str() == "client"
                || p.as_str() == "locked"
        }) {
            sidecar_ready(&c, pod).await;
        }
        let echo = vip(&c, "shop/echo");
        let client_node = placement["client"].clone();

        // HTTP/1.1 and HTTP/2 through both sidecars: the app sees the client's identity, and
        // requests reach an echo pod on the other node.
        let url = format!("http://{echo}/hello");
        let mut cross_node = false;
        for proto in [&[][..], &["--http2"][..]] {
            for _ in 0..6 {
                let mut args = proto.to_vec();
                args.push(&url);
                let answer = eventually(WAIT, "an answer through the sidecars", || {
                    let c = &c;
                    let args = args.clone();
                    async move { get(c, "client", &args).await.ok() }
                })
                .await;
                let want = if proto.is_empty() {
                    "HTTP/1.1"
                } else {
                    "HTTP/2"
                };
                assert_eq!(answer["protocol"], want, "{answer}");
                let identity = answer["identity"].as_str().unwrap_or_default();
                assert!(identity.contains(&format!("URI={CLIENT_ID}")), "{answer}");
                let backend = answer["backend"].as_str().unwrap();
                cross_node |= placement[backend] != client_node;
            }
        }
        assert!(
            cross_node,
            "no answer came from the other node: {placement:?}"
        );

        // gRPC unary and bidi streaming, and raw TCP (port 7070 has no app protocol).
        for stream in [false, true] {
            let target = format!("{echo}:9090");
            let mut args = vec!["--grpc", &target, "--rate", "50", "--duration", "1s"];
            if stream {
                args.push("--grpc-stream");
            }
            let report = load(&c, "client", &args).await;
            assert!(report["ok"].as_u64().unwrap() >= 40, "{report}");
            assert_eq!(report["errors"], 0, "{report}");
        }
        let tcp = get(&c, "client", &[&format!("http://{echo}:7070/raw")])
            .await
            .unwrap();
        assert!(
            tcp["identity"]
                .as_str()
                .unwrap_or_default()
                .contains(CLIENT_ID),
            "{tcp}"
        );

        // The underlay carries HBONE only: a marker in requests between sidecars never shows,
        // while the same marker between two pods without a sidecar does.
        let marker = format!("canary-{}-payload", std::process::id());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sniffer = sniff_underlay(&c.name, marker.clone().into_bytes(), stop.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..5 {
            get(&c, "client", &[&format!("http://{echo}/{marker}")])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mesh = sniffer.join().unwrap();
        assert!(
            mesh.hbone_frames > 0,
            "no HBONE frames seen ({} frames)",
            mesh.frames
        );
        assert!(!mesh.marker_seen, "plaintext payload on the underlay");
        // Control: the bystander pair crosses nodes in plaintext and the capture sees it.
        let state = c.state();
        let outsider = state.pods.values().find(|p| p.name == "outsider").unwrap();
        // A bystander on the other node (the scheduler spreads pods, so one of them is).
        let bystander = state
            .pods
            .values()
            .filter(|p| p.name.starts_with("bystander"))
            .max_by_key(|p| p.node != outsider.node)
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sniffer = sniff_underlay(&c.name, marker.clone().into_bytes(), stop.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Also shows the outsider can make requests (the refusals below are the sidecars').
        get(
            &c,
            "plain/outsider",
            &[&format!("http://{}:8080/{marker}", bystander.ip)],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let plain = sniffer.join().unwrap();
        if outsider.node != bystander.node {
            assert!(plain.marker_seen, "the capture misses plaintext");
        } else {
            eprintln!(
                "outsider and bystander share a node: capture control skipped; placement {placement:?}"
            );
        }

        // A pod without a sidecar cannot reach the STRICT namespace, directly or by VIP.
        let server = state
            .pods
            .values()
            .find(|p| p.name.starts_with("echo-") && !p.name.starts_with("echo-v2"))
            .unwrap();
        for url in [
            format!("http://{}:8080/direct", server.ip),
            format!("http://{echo}/vip"),
        ] {
            let refused = get(&c, "plain/outsider", &[&url]).await;
            assert!(
                refused.is_err(),
                "{url} answered a pod without a sidecar: {refused:?}"
            );
        }

        // Authorization. DENY by path: 403 from the server's sidecar, other paths answer.
        let denied = get(&c, "client", &[&format!("http://{echo}/admin/users")]).await;
        let err = denied.expect_err("/admin answered despite the DENY policy");
        assert!(err.contains("403"), "{err}");
        get(&c, "client", &[&format!("http://{echo}/public")])
            .await
            .unwrap();
        // DENY by source identity on a TCP port: the client's tunnel is refused, an echo
        // pod's (another service account) goes through.
        let locked = vip(&c, "shop/locked");
        let locked_url = format!("http://{locked}:7070/x");
        let refused = get(&c, "client", &[&locked_url]).await;
        assert!(
            refused.is_err(),
            "the denied identity got through: {refused:?}"
        );
        let echo_pod = format!(
            "shop/{}",
            placement
                .keys()
                .find(|p| p.starts_with("echo-") && !p.starts_with("echo-v2"))
                .unwrap()
        );
        // (A TCP port: the app gets bytes, no identity header.)
        let allowed = get(&c, &echo_pod, &[&locked_url]).await.unwrap();
        assert_eq!(allowed["backend"], "locked", "{allowed}");

        // HTTPRoute 90/10 over at least 2,000 requests: echo-v2 gets 10 % ± 5 %.
        let split_url = format!("http://{echo}/split");
        let mut total = 0u64;
        let mut v2 = 0u64;
        while total < 2000 {
            let report = load(
                &c,
                "client",
                &[
                    "--http",
                    &split_url,
                    "--max-rate",
                    "--connections",
                    "4",
                    "--duration",
                    "2s",
                ],
            )
            .await;
            assert_eq!(report["errors"], 0, "{report}");
            for (backend, n) in report["backends"].as_object().unwrap() {
                let n = n.as_u64().unwrap();
                total += n;
                if backend.starts_with("echo-v2-") {
                    v2 += n;
                }
            }
        }
        let share = v2 as f64 / total as f64;
        eprintln!(
            "split: {v2} of {total} requests to echo-v2 ({:.1} %)",
            share * 100.0
        );
        assert!((0.05..=0.15).contains(&share), "{v2} of {total} to echo-v2");

        // The route's 300 ms timeout answers 504 to a 2 s request, in about 300 ms.
        let started = Instant::now();
        let slow = get(
            &c,
            "client",
            &[&format!("http://{echo}/slow?delay_ms=2000")],
        )
        .await;
        let took = started.elapsed();
        let err = slow.expect_err("a 2 s answer beat a 300 ms timeout");
        assert!(err.contains("504"), "{err}");
        assert!(took < Duration::from_millis(1800), "timeout took {took:?}");
        // Other paths have no such timeout.
        get(&c, "client", &[&format!("http://{echo}/fast?delay_ms=500")])
            .await
            .unwrap();

        // Retry on 503: requests to `flaky` succeed although one of its two endpoints
        // answers 503 to everything, and the client's sidecar counts the retries.
        let flaky = vip(&c, "shop/flaky");
        let client_stats = || async {
            c.exec(
                "client",
                &["switchyard-echo", "get", "http://127.0.0.1:15000/stats"],
            )
            .await
            .stdout
        };
        let retries = |stats: &str| -> u64 {
            stats
                .lines()
                .find_map(|l| l.strip_prefix("http_retries: "))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let before = retries(&client_stats().await);
        let ejected = "balancer outbound|80||flaky.shop.svc.cluster.local: ejections=";
        let deadline = Instant::now() + WAIT;
        let mut sent = 0u64;
        loop {
            // Eight requests in flight keep the working endpoint busy, so the balancer also
            // sends first attempts to the dead one; each of those is retried elsewhere.
            let report = load(
                &c,
                "client",
                &[
                    "--http",
                    &format!("http://{flaky}/retry"),
                    "--max-rate",
                    "--connections",
                    "8",
                    "--duration",
                    "1s",
                ],
            )
            .await;
            assert_eq!(report["errors"], 0, "{report}");
            assert_eq!(report["backends"].as_object().unwrap().len(), 1, "{report}");
            sent += report["ok"].as_u64().unwrap();
            // Outlier ejection: five 5xx in a row take the dead endpoint out.
            if client_stats().await.contains(ejected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the dead endpoint was never ejected"
            );
        }
        let stats = client_stats().await;
        let retried = retries(&stats) - before;
        eprintln!(
            "flaky: {sent} requests, all answered 200, {retried} retried, dead endpoint ejected"
        );
        assert!(retried > 0, "no retries counted:\n{stats}");
        // Ejected, the dead endpoint gets nothing: a route without retries succeeds too.
        let report = load(
            &c,
            "client",
            &[
                "--http",
                &format!("http://{flaky}/plain"),
                "--rate",
                "100",
                "--duration",
                "1s",
            ],
        )
        .await;
        assert_eq!(report["errors"], 0, "{report}");

        // Control plane restart: traffic keeps flowing on the last configuration, and the
        // sidecars reconnect.
        let cp_pid = c.state().control_plane.process.pid.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(cp_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        for _ in 0..5 {
            get(&c, "client", &[&url]).await.unwrap();
        }
        eventually(WAIT, "the control plane back", || async {
            matches!(admin("/readyz").await, Ok((200, _))).then_some(())
        })
        .await;
        eventually(WAIT, "the client sidecar to reconnect", || async {
            let run = c
                .exec(
                    "client",
                    &["switchyard-echo", "get", "http://127.0.0.1:15000/stats"],
                )
                .await;
            run.stdout
                .lines()
                .find(|l| l.starts_with("xds: connected=true"))
                .and_then(|l| l.split("streams=").nth(1))
                .and_then(|s| s.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n >= 2)
        })
        .await;
        get(&c, "client", &[&url]).await.unwrap();

        // `down` removes what injection wrote too (the pods' bootstrap tokens).
        assert!(c.state_path().join("tokens").is_dir());
        c.yardctl("down", &[]).await.ok();
        assert!(
            !c.state_path().join("tokens").exists(),
            "down left the pods' tokens behind"
        );
    });
}
