//! Conformance against a real Envoy 1.40 (installed by `scripts/setup.sh`), for both ADS
//! variants: Envoy ACKs every type, real HTTP/1.1 and gRPC requests through its outbound
//! listener reach the backends, manifest edits reach it within a second and traffic follows,
//! NACKs are recorded while Envoy keeps its last good config, a bad manifest changes nothing,
//! and a restarted or reconnecting Envoy resumes.
//!
//! Runs with the production debounces (source 100 ms, push 100 ms) so the one-second figures
//! are the ones users get. The tests take a shared lock: one Envoy at a time keeps timings
//! honest on small CI machines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_test_support::manifests::{self, namespace};
use switchyard_test_support::{EchoProcess, Envoy, EnvoyOptions, eventually, grpc_echo, http_get};
use switchyard_tests::ControlPlane;
use tokio::sync::Mutex;

static ONE_ENVOY_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(15);
/// What the issue promises: a manifest edit reaches Envoy within a second.
const PROPAGATION_BUDGET: Duration = Duration::from_secs(1);

const HOST_HTTP: &str = "echo.default.svc.cluster.local:8080";
const HOST_GRPC: &str = "echo.default.svc.cluster.local:9090";

struct Fixture {
    cp: ControlPlane,
    envoy: Envoy,
    node_id: String,
    listen: IpAddr,
    net: u8,
    http_port: u16,
    grpc_port: u16,
    // held so the backends live as long as the fixture
    _backends: BTreeMap<String, EchoProcess>,
}

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::from([127, net, 0, host])
}

/// Starts three echo backend processes on 127.<net>.0.{11,12,13} sharing one HTTP and one
/// gRPC port.
async fn backends(net: u8) -> (u16, u16, BTreeMap<String, EchoProcess>) {
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind((ip(net, 11), 0)).unwrap();
        let hp = probe.local_addr().unwrap().port();
        let probe2 = std::net::TcpListener::bind((ip(net, 11), 0)).unwrap();
        let gp = probe2.local_addr().unwrap().port();
        drop((probe, probe2));
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (i, host) in [11u8, 12, 13].into_iter().enumerate() {
            let name = format!("echo-{}", i + 1);
            match EchoProcess::start(
                &name,
                Some(SocketAddr::new(ip(net, host), hp)),
                Some(SocketAddr::new(ip(net, host), gp)),
            )
            .await
            {
                Ok(b) => {
                    out.insert(name, b);
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return (hp, gp, out);
        }
    }
    panic!("could not find free backend ports on 127.{net}.0.x");
}

/// A backend pod: a plain echo process without a proxy, so mode `none` (plaintext to it).
fn pod(net: u8, name: &str, version: &str) -> String {
    let host = 10 + name.trim_start_matches("echo-").parse::<u8>().unwrap();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: echo\n    version: {version}\n    switchyard.io/dataplane-mode: none\nspec:\n  serviceAccountName: echo\n  containers:\n  - name: echo\n    image: echo\nstatus:\n  podIP: {}\n",
        ip(net, host)
    )
}

fn services(hp: u16, gp: u16) -> Vec<String> {
    let svc = |name: &str, vip: &str, selector: &str| {
        // echo-b carries connection limits: Envoy must accept them as circuit breakers
        let annotations = if name == "echo-b" {
            "  annotations:\n    switchyard.io/max-connections: \"50\"\n    \
             switchyard.io/max-pending-requests: \"10\"\n    \
             switchyard.io/max-requests: \"100\"\n    switchyard.io/max-retries: \"2\"\n"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n{annotations}spec:\n  clusterIP: {vip}\n  selector:\n{selector}  ports:\n  - name: http\n    port: 8080\n    targetPort: {hp}\n  - name: grpc\n    port: 9090\n    targetPort: {gp}\n    appProtocol: grpc\n"
        )
    };
    vec![
        namespace("default", Some("sidecar")),
        svc("echo", "10.96.0.10", "    app: echo\n"),
        svc("echo-a", "10.96.0.11", "    app: echo\n    version: a\n"),
        svc("echo-b", "10.96.0.12", "    app: echo\n    version: b\n"),
    ]
}

impl Fixture {
    async fn start(net: u8, delta: bool) -> Fixture {
        let (http_port, grpc_port, backends) = backends(net).await;
        let cp = ControlPlane::start_with(
            &[
                ("services.yaml", services(http_port, grpc_port)),
                (
                    "pods.yaml",
                    vec![pod(net, "echo-1", "a"), pod(net, "echo-2", "b")],
                ),
            ],
            |c| {
                // production debounces: the propagation figures below are what users get
                c.source_debounce = Duration::from_millis(100);
                c.push_debounce = Duration::from_millis(100);
            },
        )
        .await
        .unwrap();
        let listen = ip(net, 2);
        let node_id = format!("envoy~{listen}~client.default~default.svc.cluster.local");
        let envoy = Envoy::start(
            EnvoyOptions::new(node_id.clone(), cp.xds())
                .delta(delta)
                .metadata("LISTEN_ADDRESS", listen.to_string()),
        )
        .await
        .unwrap();
        let f = Fixture {
            cp,
            envoy,
            node_id,
            listen,
            net,
            http_port,
            grpc_port,
            _backends: backends,
        };
        f.wait_synced().await;
        f
    }

    fn outbound(&self) -> SocketAddr {
        SocketAddr::new(self.listen, 15001)
    }

    async fn wait_synced(&self) {
        let node = self.node_id.clone();
        eventually(WAIT, "envoy ACKs cds, eds, lds and rds", || async {
            let z = self.cp.syncz().await.ok()?;
            let row = z
                .as_array()?
                .iter()
                .rev()
                .find(|p| p["node"] == node.as_str())?
                .clone();
            ["cds", "eds", "lds", "rds"]
                .iter()
                .all(|t| row["types"][t]["state"] == "SYNCED")
                .then_some(())
        })
        .await;
    }

    /// Sends `n` HTTP requests for `host` through Envoy; counts answers by backend (or status).
    async fn http_spread(&self, host: &str, n: usize) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let key = match http_get(self.outbound(), host, "/").await {
                Ok(r) if r.status == 200 => r.backend().unwrap_or("?").to_string(),
                Ok(r) => format!("status {}", r.status),
                Err(e) => format!("error {e}"),
            };
            *out.entry(key).or_default() += 1;
        }
        out
    }

    async fn grpc_spread(&self, n: usize) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let key = match grpc_echo(self.outbound(), HOST_GRPC, "hi").await {
                Ok(r) => r.backend,
                Err(s) => format!("error {:?}", s.code()),
            };
            *out.entry(key).or_default() += 1;
        }
        out
    }

    /// Waits until every one of 10 requests to `host` is answered by `want` only; returns how
    /// long that took from `since`.
    async fn until_only(&self, host: &str, want: &[&str], since: Instant) -> Duration {
        let mut last = BTreeMap::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let spread = self.http_spread(host, 10).await;
            if spread.keys().all(|k| want.contains(&k.as_str()))
                && want.iter().all(|w| spread.contains_key(*w))
            {
                return since.elapsed();
            }
            last = spread;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "traffic for {host} never went only to {want:?}; last spread {last:?}\nenvoy log:\n{}",
            self.envoy.log_tail()
        );
    }

    async fn dump_names(&self, kind: &str) -> Vec<String> {
        let dump = self.envoy.config_dump().await.unwrap();
        let mut names = Vec::new();
        collect_names(&dump, kind, &mut names);
        names
    }
}

/// The dynamic active cluster named `name` in a config_dump.
fn find_cluster<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => {
            if let Some(c) = map.get("cluster")
                && c["name"] == name
            {
                return Some(c);
            }
            map.values().find_map(|x| find_cluster(x, name))
        }
        Value::Array(items) => items.iter().find_map(|x| find_cluster(x, name)),
        _ => None,
    }
}

/// Names of dynamic resources of one config_dump section (`dynamic_active_clusters`,
/// `dynamic_listeners`, `dynamic_route_configs`).
fn collect_names(v: &Value, section: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == section
                    && let Some(list) = child.as_array()
                {
                    for item in list {
                        let name = item
                            .pointer("/cluster/name")
                            .or_else(|| item.pointer("/name"))
                            .or_else(|| item.pointer("/route_config/name"))
                            .and_then(|n| n.as_str());
                        if let Some(n) = name {
                            out.push(n.to_string());
                        }
                    }
                } else {
                    collect_names(child, section, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_names(c, section, out)),
        _ => {}
    }
}

fn report(what: &str, d: Duration) {
    eprintln!("propagation: {what}: {} ms", d.as_millis());
    assert!(
        d <= PROPAGATION_BUDGET,
        "{what} took {d:?}, budget {PROPAGATION_BUDGET:?}"
    );
}

async fn conformance(net: u8, delta: bool) {
    let _one = ONE_ENVOY_AT_A_TIME.lock().await;
    let f = Fixture::start(net, delta).await;
    let variant = if delta { "delta" } else { "sotw" };

    // Envoy holds what we sent
    let clusters = f.dump_names("dynamic_active_clusters").await;
    assert!(
        clusters.contains(&"outbound|8080||echo.default.svc.cluster.local".to_string()),
        "{clusters:?}"
    );
    assert!(clusters.contains(&"inbound|18080||".to_string()) || !clusters.is_empty());
    // the Service's connection limits, as Envoy holds them
    let dump = f.envoy.config_dump().await.unwrap();
    let thresholds = find_cluster(&dump, "outbound|8080||echo-b.default.svc.cluster.local")
        .map(|c| c["circuit_breakers"]["thresholds"][0].clone())
        .unwrap_or_else(|| panic!("echo-b cluster missing: {dump}"));
    for (field, want) in [
        ("max_connections", 50),
        ("max_pending_requests", 10),
        ("max_requests", 100),
        ("max_retries", 2),
    ] {
        assert_eq!(
            thresholds[field], want,
            "{variant}: {field} in {thresholds}"
        );
    }
    let listeners = f.dump_names("dynamic_listeners").await;
    assert!(
        listeners.contains(&"outbound".to_string()) && listeners.contains(&"inbound".to_string()),
        "{listeners:?}"
    );
    let routes = f.dump_names("dynamic_route_configs").await;
    assert!(
        routes.contains(&"8080".to_string()) && routes.contains(&"outbound-http".to_string()),
        "{routes:?}"
    );

    // HTTP/1.1 and gRPC through the outbound listener reach both backends
    let spread = f.http_spread(HOST_HTTP, 20).await;
    assert_eq!(
        spread.keys().collect::<Vec<_>>(),
        vec!["echo-1", "echo-2"],
        "{variant} http {spread:?}"
    );
    let spread = f.grpc_spread(20).await;
    assert_eq!(
        spread.keys().collect::<Vec<_>>(),
        vec!["echo-1", "echo-2"],
        "{variant} grpc {spread:?}"
    );

    // scale: a third pod
    let t = Instant::now();
    f.cp.manifests
        .write(
            "pods.yaml",
            &[
                pod(f.net, "echo-1", "a"),
                pod(f.net, "echo-2", "b"),
                pod(f.net, "echo-3", "b"),
            ],
        )
        .unwrap();
    report(
        &format!("{variant}: scale to 3 endpoints"),
        f.until_only(HOST_HTTP, &["echo-1", "echo-2", "echo-3"], t)
            .await,
    );

    // an HTTPRoute splitting 100/0, then flipped to 0/100
    let t = Instant::now();
    f.cp.manifests
        .write(
            "route.yaml",
            &[manifests::http_route(
                "default",
                "split",
                "echo",
                8080,
                &[("echo-a", 8080, 100), ("echo-b", 8080, 0)],
            )],
        )
        .unwrap();
    report(
        &format!("{variant}: route 100/0"),
        f.until_only(HOST_HTTP, &["echo-1"], t).await,
    );
    let t = Instant::now();
    f.cp.manifests
        .write(
            "route.yaml",
            &[manifests::http_route(
                "default",
                "split",
                "echo",
                8080,
                &[("echo-a", 8080, 0), ("echo-b", 8080, 100)],
            )],
        )
        .unwrap();
    report(
        &format!("{variant}: route 0/100"),
        f.until_only(HOST_HTTP, &["echo-2", "echo-3"], t).await,
    );
    f.cp.manifests.remove("route.yaml").unwrap();

    // add a service, then delete it
    let extra = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: extra\n  namespace: default\nspec:\n  clusterIP: 10.96.0.40\n  selector:\n    version: a\n  ports:\n  - name: http\n    port: 8080\n    targetPort: {}\n",
        f.http_port
    );
    let t = Instant::now();
    f.cp.manifests.write("extra.yaml", &[extra]).unwrap();
    report(
        &format!("{variant}: add service"),
        f.until_only("extra.default.svc.cluster.local:8080", &["echo-1"], t)
            .await,
    );
    let t = Instant::now();
    f.cp.manifests.remove("extra.yaml").unwrap();
    report(
        &format!("{variant}: delete service"),
        f.until_only("extra.default.svc.cluster.local:8080", &["status 404"], t)
            .await,
    );
    eventually(WAIT, "deleted cluster leaves envoy", || async {
        let names = f.dump_names("dynamic_active_clusters").await;
        (!names.iter().any(|n| n.contains("extra.default"))).then_some(())
    })
    .await;
    f.wait_synced().await;

    // a NACK (poisoned CDS) is recorded with Envoy's message; Envoy keeps its config
    let (code, _) =
        f.cp.admin_post(&format!("/debug/test/poison?proxy={}&type=cds", f.node_id))
            .await
            .unwrap();
    assert_eq!(code, 200);
    let nack = eventually(WAIT, "cds NACKED in syncz", || async {
        let s = f.cp.sync_state(&f.node_id, "cds").await.ok()??;
        (s["state"] == "NACKED").then_some(s)
    })
    .await;
    let msg = nack["last_nack"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("Expected positive duration"),
        "envoy's own message is kept: {msg}"
    );
    eprintln!("{variant}: envoy NACK message: {msg}");
    assert!(
        !f.dump_names("dynamic_active_clusters")
            .await
            .iter()
            .any(|n| n.contains("poison"))
    );
    let spread = f.http_spread(HOST_HTTP, 10).await;
    assert!(
        spread.keys().all(|k| k.starts_with("echo-")),
        "traffic still flows: {spread:?}"
    );
    f.cp.admin_delete(&format!("/debug/test/poison?proxy={}", f.node_id))
        .await
        .unwrap();
    f.wait_synced().await;

    // an invalid manifest is reported with file and position; nothing changes
    let before = f.cp.generation();
    f.cp.manifests
        .write_raw(
            "zz-broken.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: [oops\n",
        )
        .unwrap();
    let problem = eventually(WAIT, "problem in /debug/sources", || async {
        let (_, body) = f.cp.admin("/debug/sources").await.ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["problems"].as_array()?.first().cloned()
    })
    .await;
    assert!(
        problem["origin"]
            .as_str()
            .unwrap()
            .ends_with("zz-broken.yaml"),
        "{problem}"
    );
    assert!(
        problem["line"].as_u64().is_some() && problem["column"].as_u64().is_some(),
        "{problem}"
    );
    assert_eq!(f.cp.generation(), before);
    let spread = f.http_spread(HOST_HTTP, 10).await;
    assert!(spread.keys().all(|k| k.starts_with("echo-")), "{spread:?}");
    f.cp.manifests.remove("zz-broken.yaml").unwrap();
    drop(f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_conformance() {
    conformance(1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_conformance() {
    conformance(2, true).await;
}

fn resources_sent(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_xds_resources_sent_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_reconnect_resumes_without_resending() {
    let _one = ONE_ENVOY_AT_A_TIME.lock().await;
    let mut f = Fixture::start(3, true).await;
    let stream_of = |z: &Value, node: &str| {
        z.as_array()
            .and_then(|a| a.iter().find(|p| p["node"] == node))
            .map(|p| p["stream"].as_u64().unwrap_or_default())
    };
    // 1. the ADS stream breaks (control plane side) and Envoy reconnects: it announces what
    //    it holds and gets nothing it already has
    let z = f.cp.syncz().await.unwrap();
    let first_stream = stream_of(&z, &f.node_id).unwrap();
    let before = resources_sent(&f.cp.admin("/metrics").await.unwrap().1);
    f.cp.admin_post(&format!("/debug/test/disconnect?proxy={}", f.node_id))
        .await
        .unwrap();
    eventually(WAIT, "envoy reconnects", || async {
        let z = f.cp.syncz().await.ok()?;
        let s = stream_of(&z, &f.node_id)?;
        (s != first_stream).then_some(())
    })
    .await;
    f.wait_synced().await;
    let after = resources_sent(&f.cp.admin("/metrics").await.unwrap().1);
    assert_eq!(
        after, before,
        "a resumed delta stream is sent no resource it already holds"
    );
    assert_eq!(f.http_spread(HOST_HTTP, 10).await.keys().count(), 2);

    // 2. Envoy restarts with the same node id: a new process holds nothing, so it is sent
    //    everything again and traffic flows
    f.envoy.restart().await.unwrap();
    eventually(WAIT, "restarted envoy connects", || async {
        let z = f.cp.syncz().await.ok()?;
        z.as_array()?
            .iter()
            .filter(|p| p["node"] == f.node_id.as_str())
            .any(|p| {
                p["types"]["lds"]["state"] == "SYNCED" && p["stream"].as_u64() != Some(first_stream)
            })
            .then_some(())
    })
    .await;
    f.wait_synced().await;
    let spread = eventually(WAIT, "traffic after restart", || async {
        let s = f.http_spread(HOST_HTTP, 10).await;
        (s.keys().collect::<Vec<_>>() == vec!["echo-1", "echo-2"]).then_some(s)
    })
    .await;
    assert_eq!(spread.values().sum::<usize>(), 10);
    let _ = f.grpc_port;
}

/// Whether every entry of `dynamic_listeners` in a config dump is active (not warming, not
/// rejected); the offending entries otherwise.
fn inactive_listeners(dump: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for config in dump["configs"].as_array().into_iter().flatten() {
        for l in config["dynamic_listeners"].as_array().into_iter().flatten() {
            if l.get("active_state").is_none() || l.get("error_state").is_some() {
                out.push(l.to_string());
            }
        }
    }
    out
}

/// DENY and ALLOW policies for the client pod with principals, namespaces, IP blocks,
/// ports, paths and methods (and their negations).
const AUTHZ: &str = "apiVersion: switchyard.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: client}}
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ['spiffe://cluster.local/ns/default/sa/ops*']}}]
    to: [{operation: {paths: ['/admin*', '*.bak'], methods: [DELETE]}}]
  - from: [{source: {ipBlocks: [10.9.0.0/16], notNamespaces: [default]}}]
---
apiVersion: switchyard.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-some, namespace: default}
spec:
  selector: {matchLabels: {app: client}}
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [default], principals: ['*']}}]
    to: [{operation: {ports: [18080, 5432], notPaths: ['/private']}}]
  - to: [{operation: {ports: [19090], notMethods: [PUT]}}]
";

/// Kind `envoy` with mesh endpoints and inbound ports gets the HBONE resources
/// (`connect_originate|<id>`, `connect_terminate`, `connect_inbound|<port>`) and RBAC
/// filters for its authorization policies: Envoy ACKs them and every listener goes active.
/// Traffic over them is tested in `mtls.rs` and `envoy_hbone.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_the_hbone_resources() {
    let _one = ONE_ENVOY_AT_A_TIME.lock().await;
    let listen = ip(4, 2);
    let svc = |name: &str, vip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    port: 8080\n    targetPort: 18080\n  - name: grpc\n    port: 9090\n    targetPort: 19090\n    appProtocol: grpc\n  - name: tcp\n    port: 5432\n    targetPort: 5432\n"
        )
    };
    let pod = |name: &str, app: &str, ip: IpAddr, mode: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {app}\n    switchyard.io/dataplane-mode: {mode}\nspec:\n  serviceAccountName: {app}\n  containers:\n  - name: app\n    image: app\nstatus:\n  podIP: {ip}\n"
        )
    };
    let cp = ControlPlane::start(&[(
        "mesh.yaml",
        vec![
            namespace("default", Some("sidecar")),
            svc("client", "10.96.0.40"),
            svc("mesh", "10.96.0.41"),
            pod("client-0", "client", listen, "sidecar"),
            pod("mesh-1", "mesh", ip(4, 11), "sidecar"),
            // outside the mesh: a plaintext endpoint in the same cluster as an HBONE one
            pod("plain-1", "mesh", ip(4, 12), "none"),
            // authorization on the client pod: every RBAC form the renderer emits
            AUTHZ.to_string(),
        ],
    )])
    .await
    .unwrap();
    let node_id = format!("envoy~{listen}~client-0.default~default.svc.cluster.local");
    let agent = switchyard_tests::SdsAgentProcess::start(&cp, "default", "client", &node_id, 0)
        .await
        .unwrap();
    let envoy = Envoy::start(
        EnvoyOptions::new(node_id.clone(), cp.xds())
            .delta(true)
            .metadata("LISTEN_ADDRESS", listen.to_string())
            .sds_socket(&agent.socket),
    )
    .await
    .unwrap();
    eventually(WAIT, "envoy ACKs cds, eds, lds and rds", || async {
        let z = cp.syncz().await.ok()?;
        let row = z
            .as_array()?
            .iter()
            .rev()
            .find(|p| p["node"] == node_id.as_str())?
            .clone();
        ["cds", "eds", "lds", "rds"]
            .iter()
            .all(|t| row["types"][t]["state"] == "SYNCED")
            .then_some(())
    })
    .await;
    let dump = eventually(WAIT, "every listener active", || async {
        let dump = envoy.config_dump().await.ok()?;
        inactive_listeners(&dump).is_empty().then_some(dump)
    })
    .await;
    let mut listeners = Vec::new();
    collect_names(&dump, "dynamic_listeners", &mut listeners);
    let mut clusters = Vec::new();
    collect_names(&dump, "dynamic_active_clusters", &mut clusters);
    let tunnel = "connect_originate|spiffe://cluster.local/ns/default/sa/mesh";
    for want in [
        tunnel,
        "connect_terminate",
        "connect_inbound|18080",
        "connect_inbound|19090",
        "outbound",
        "inbound",
    ] {
        assert!(
            listeners.iter().any(|l| l == want),
            "listener {want} in {listeners:?}"
        );
    }
    for want in [
        tunnel,
        "connect_inbound|18080",
        "outbound|8080||mesh.default.svc.cluster.local",
    ] {
        assert!(
            clusters.iter().any(|c| c == want),
            "cluster {want} in {clusters:?}\nenvoy log:\n{}",
            envoy.log_tail()
        );
    }
    // Authorization policies became RBAC filters Envoy accepted: HTTP ports in the HCM,
    // the TCP port as a network filter.
    let inbound = dump.to_string();
    for filter in ["envoy.filters.http.rbac", "envoy.filters.network.rbac"] {
        assert!(inbound.contains(filter), "no {filter} in the config dump");
    }
    // the TCP port is not behind an internal listener: CONNECT goes straight to the app
    assert!(!listeners.iter().any(|l| l == "connect_inbound|5432"));
    // the cluster's internal upstream transport socket is plain TCP for the endpoint
    // outside the mesh (nobody answers HBONE for mesh-1 here: those requests fail)
    let plain = EchoProcess::start("plain-1", Some(SocketAddr::new(ip(4, 12), 18080)), None)
        .await
        .unwrap();
    let outbound = SocketAddr::new(listen, 15001);
    eventually(WAIT, "an answer from the plaintext endpoint", || async {
        let r = http_get(outbound, "mesh.default.svc.cluster.local:8080", "/")
            .await
            .ok()?;
        (r.status == 200 && r.backend() == Some("plain-1")).then_some(())
    })
    .await;
    drop(plain);
    let z = cp.syncz().await.unwrap();
    for row in z
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["node"] == node_id.as_str())
    {
        for (t, sync) in row["types"].as_object().unwrap() {
            assert!(
                sync["last_nack"].is_null(),
                "{t} was NACKed: {sync}\nagent log:\n{}",
                agent.log()
            );
        }
    }
}
