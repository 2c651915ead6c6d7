//! The micro-sidecar's configuration follower against the real control plane (in process):
//! the follower subscribes as the sidecar of pod `client-0`, and the converted snapshot must
//! say what the manifests say — routes, weights, retries, clusters, endpoints, inbound mTLS
//! modes, the identities to expect from sidecar-mode destinations. Manifest edits arrive as
//! new snapshots; a resource the sidecar cannot convert is NACKed (through the control
//! plane's poison test hook) while the last good snapshot keeps serving; a dropped stream
//! reconnects.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use switchyard_dataplane_runtime::tls::Expected;
use switchyard_dataplane_sidecar::config::route::{
    Backends, PathMatch, RetryOn, RouteAction, WeightedCluster,
};
use switchyard_dataplane_sidecar::config::{
    ConfigReader, Follower, FollowerOptions, Outbound, SidecarConfig, SidecarNode, Transport,
};
use switchyard_model::{MtlsMode, SpiffeId};
use switchyard_test_support::eventually;
use switchyard_test_support::manifests::{grpc, http, namespace, service, tcp};
use switchyard_tests::{ControlPlane, STEP};

const NODE_ID: &str = "sidecar~10.244.0.5~client-0.default~default.svc.cluster.local";
const ECHO_HTTP: &str = "outbound|8080||echo.default.svc.cluster.local";
const ECHO_GRPC: &str = "outbound|9090||echo.default.svc.cluster.local";
const ECHO_V2: &str = "outbound|8080||echo-v2.default.svc.cluster.local";
const DB: &str = "outbound|5432||db.default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(10);

/// A pod with `app=<app>`, service account `<app>`, and extra labels.
fn pod(name: &str, app: &str, ip: &str, labels: &[(&str, &str)]) -> String {
    let mut extra = String::new();
    for (k, v) in labels {
        extra.push_str(&format!("    {k}: {v}\n"));
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {app}\n{extra}spec:\n  serviceAccountName: {app}\n  containers:\n  - name: app\n    image: app\nstatus:\n  podIP: {ip}\n"
    )
}

const ROUTES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-split
  namespace: default
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 8080
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /api
      headers:
      - name: X-Canary
        value: "true"
      method: GET
    backendRefs:
    - name: echo
      port: 8080
      weight: 90
    - name: echo-v2
      port: 8080
      weight: 10
    timeouts:
      request: 10s
      backendRequest: 2s
    retry:
      attempts: 3
      codes: [503]
      backoff: 100ms
  - backendRefs:
    - name: echo
      port: 8080
"#;

const GRPC_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: echo-grpc
  namespace: default
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 9090
  rules:
  - matches:
    - method:
        service: switchyard.test.v1.Echo
        method: Unary
    backendRefs:
    - name: echo
      port: 9090
"#;

const PEER_AUTH: &str = r#"apiVersion: switchyard.io/v1alpha1
kind: PeerAuthentication
metadata:
  name: client
  namespace: default
spec:
  selector:
    matchLabels:
      app: client
  mtls:
    mode: STRICT
  portLevelMtls:
    19090:
      mode: PERMISSIVE
    17070:
      mode: DISABLE
"#;

fn manifests() -> Vec<(&'static str, Vec<String>)> {
    vec![(
        "mesh.yaml",
        vec![
            namespace("default", Some("sidecar")),
            service(
                "default",
                "client",
                "10.96.0.5",
                &[http(8080, 18080), grpc(9090, 19090), tcp(7070, 17070)],
            ),
            service(
                "default",
                "echo",
                "10.96.0.10",
                &[http(8080, 18080), grpc(9090, 19090)],
            ),
            service("default", "echo-v2", "10.96.0.11", &[http(8080, 18080)]),
            service("default", "db", "10.96.0.20", &[tcp(5432, 5432)]),
            pod("client-0", "client", "10.244.0.5", &[]),
            pod("echo-1", "echo", "10.244.0.11", &[]),
            // served by ztunnel: reached in plaintext from the sidecar's point of view
            pod(
                "echo-2",
                "echo",
                "10.244.0.12",
                &[("switchyard.io/dataplane-mode", "ztunnel")],
            ),
            pod("echo-v2-1", "echo-v2", "10.244.0.21", &[]),
            pod("db-1", "db", "10.244.0.31", &[]),
            ROUTES.to_string(),
            GRPC_ROUTE.to_string(),
            PEER_AUTH.to_string(),
        ],
    )]
}

struct Fixture {
    cp: ControlPlane,
    reader: ConfigReader,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start() -> Fixture {
    let cp = ControlPlane::start(&manifests()).await.unwrap();
    let node = SidecarNode::new(
        "10.244.0.5".parse().unwrap(),
        "client-0",
        "default",
        "client",
    )
    .to_node()
    .unwrap();
    assert_eq!(node.id, NODE_ID);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.xds()))
        .unwrap()
        .connect_lazy();
    let (follower, reader) = Follower::new(
        channel,
        node,
        FollowerOptions {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            warming_timeout: Some(Duration::from_secs(30)),
        },
    );
    let task = tokio::spawn(follower.run());
    tokio::time::timeout(WAIT, reader.ready())
        .await
        .expect("no snapshot")
        .unwrap();
    Fixture { cp, reader, task }
}

fn current(f: &Fixture) -> Arc<SidecarConfig> {
    f.reader.current().unwrap()
}

fn spiffe(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_says_what_the_manifests_say() {
    let f = start().await;
    let c = current(&f);
    assert_eq!(c.check(), Ok(()), "{:?}", c.problems());

    // outbound HTTP: the route config of port 8080, the echo virtual host
    let Some(Outbound::Http {
        routes: Some(rc),
        http,
        ..
    }) = c.outbound("10.96.0.10:8080".parse().unwrap())
    else {
        panic!("{:?}", c.outbound("10.96.0.10:8080".parse().unwrap()))
    };
    assert_eq!(rc.name, "8080");
    assert!(http.normalize_path);
    let vh = rc
        .virtual_host("echo.default.svc.cluster.local:8080")
        .unwrap();
    assert_eq!(
        rc.virtual_host("echo:8080").unwrap().name,
        vh.name,
        "short name in own namespace"
    );
    assert_eq!(rc.virtual_host("10.96.0.10").unwrap().name, vh.name);
    assert_eq!(vh.routes.len(), 2);

    // the split rule: matches, weights, timeout, retries
    let split = &vh.routes[0];
    assert_eq!(
        split.matcher.path,
        PathMatch::SeparatedPrefix("/api".into())
    );
    assert!(split.matcher.matches_path("/api/v1"));
    assert!(!split.matcher.matches_path("/apis"));
    assert_eq!(split.matcher.method.as_deref(), Some("GET"));
    assert_eq!(split.matcher.headers.len(), 1);
    assert_eq!(split.matcher.headers[0].name, "x-canary");
    assert!(split.matcher.headers[0].matches(Some("true")));
    let RouteAction::Forward(fwd) = &split.action else {
        panic!("{:?}", split.action)
    };
    assert_eq!(
        fwd.backends,
        Backends::Weighted(vec![
            WeightedCluster {
                cluster: ECHO_HTTP.into(),
                weight: 90
            },
            WeightedCluster {
                cluster: ECHO_V2.into(),
                weight: 10
            },
        ])
    );
    assert_eq!(fwd.timeout, Some(Duration::from_secs(10)));
    let retry = fwd.retry.as_ref().unwrap();
    assert_eq!(retry.num_retries, 3);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert!(retry.retry_on.contains(&RetryOn::RetriableStatusCodes));
    assert!(retry.retry_on.contains(&RetryOn::ConnectFailure));
    assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(retry.backoff.base, Duration::from_millis(100));
    let RouteAction::Forward(default) = &vh.routes[1].action else {
        panic!()
    };
    assert_eq!(default.backends, Backends::Cluster(ECHO_HTTP.into()));

    // gRPC: the method match is an exact path
    let Some(Outbound::Http {
        routes: Some(grpc_rc),
        ..
    }) = c.outbound("10.96.0.10:9090".parse().unwrap())
    else {
        panic!()
    };
    let gvh = grpc_rc
        .virtual_host("echo.default.svc.cluster.local:9090")
        .unwrap();
    assert_eq!(
        gvh.routes[0].matcher.path,
        PathMatch::Exact("/switchyard.test.v1.Echo/Unary".into())
    );

    // TCP by VIP and port; anything else passes through; the explicit proxy's routes
    assert!(matches!(
        c.outbound("10.96.0.20:5432".parse().unwrap()),
        Some(Outbound::Tcp { proxy, .. }) if proxy.cluster == DB
    ));
    assert!(matches!(
        c.outbound("192.0.2.1:443".parse().unwrap()),
        Some(Outbound::Passthrough { .. })
    ));
    let Some(Outbound::Http {
        routes: Some(explicit),
        ..
    }) = c.explicit_proxy()
    else {
        panic!()
    };
    assert_eq!(explicit.name, "outbound-http");
    assert!(
        explicit
            .virtual_host("echo.default.svc.cluster.local")
            .is_some()
    );

    // inbound: the PeerAuthentication's modes per target port, the local app's clusters
    let inbound = |p| c.inbound(p).unwrap();
    assert_eq!(inbound(18080).mode, MtlsMode::Strict);
    assert_eq!(inbound(18080).cluster.as_deref(), Some("inbound|18080||"));
    assert!(inbound(18080).http);
    assert_eq!(inbound(19090).mode, MtlsMode::Permissive);
    assert_eq!(inbound(17070).mode, MtlsMode::Disable);
    assert!(!inbound(17070).http);

    // mTLS: only the sidecar-mode endpoint is reached over HBONE, with its identity
    let echo = c.cluster(ECHO_HTTP).unwrap();
    assert_eq!(echo.identities(), [&spiffe("echo")]);
    let eps = c.endpoints(ECHO_HTTP).unwrap();
    let mut seen: Vec<(String, Transport)> = eps
        .iter()
        .map(|(_, e)| (e.address.to_string(), e.transport.clone()))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "10.244.0.11:18080");
    let Transport::Hbone(m) = &seen[0].1 else {
        panic!("{seen:?}")
    };
    assert_eq!(m.expected(), Some(Expected::AnyOf(vec![spiffe("echo")])));
    assert_eq!(seen[0].1.identity(), Some(&spiffe("echo")));
    assert_eq!(seen[1], ("10.244.0.12:18080".into(), Transport::Plaintext));
    assert_eq!(
        c.endpoints(ECHO_V2)
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .1
            .transport
            .identity(),
        Some(&spiffe("echo-v2"))
    );
    assert!(c.cluster(ECHO_GRPC).is_some());
    assert!(c.cluster("passthrough-outbound").unwrap().is_passthrough());

    // the control plane saw every type ACKed
    for t in ["cds", "lds", "rds", "eds"] {
        let z = f.cp.sync_state(NODE_ID, t).await.unwrap().unwrap();
        assert_eq!(z["state"], "SYNCED", "{t}: {z}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_change_arrives_as_a_new_snapshot() {
    let f = start().await;
    let before = current(&f).version();
    f.cp.manifests
        .write("more.yaml", &[pod("echo-3", "echo", "10.244.0.13", &[])])
        .unwrap();
    let mut rx = f.reader.subscribe();
    let c = tokio::time::timeout(
        WAIT,
        rx.wait_for(|c| {
            c.as_ref()
                .is_some_and(|c| c.endpoints(ECHO_HTTP).is_some_and(|e| e.len() == 3))
        }),
    )
    .await
    .expect("no snapshot with the new endpoint")
    .unwrap()
    .clone()
    .unwrap();
    assert!(c.version() > before);
    assert_eq!(c.check(), Ok(()));
    let new = c
        .endpoints(ECHO_HTTP)
        .unwrap()
        .iter()
        .find(|(_, e)| e.address.to_string() == "10.244.0.13:18080")
        .map(|(_, e)| e.transport.clone())
        .unwrap();
    assert!(new.is_hbone());

    // and a removal
    f.cp.manifests.remove("more.yaml").unwrap();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|c| {
            c.as_ref()
                .is_some_and(|c| c.endpoints(ECHO_HTTP).is_some_and(|e| e.len() == 2))
        }),
    )
    .await
    .expect("the endpoint was not removed")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconvertible_resource_is_nacked_and_the_last_good_config_serves() {
    let f = start().await;
    let before = current(&f);
    let (code, body) =
        f.cp.admin_post(&format!("/debug/test/poison?proxy={NODE_ID}&type=cds"))
            .await
            .unwrap();
    assert_eq!(code, 200, "{body}");

    let message = eventually(WAIT, "the follower to NACK the poisoned CDS", || async {
        f.reader.status().last_nack.get("cds").cloned()
    })
    .await;
    assert!(
        message.starts_with("cluster \"switchyard-test-poison\": connect_timeout:"),
        "{message}"
    );
    let z = eventually(STEP, "the control plane to record the NACK", || async {
        f.cp.sync_state(NODE_ID, "cds")
            .await
            .unwrap()
            .filter(|z| z["state"] == "NACKED")
    })
    .await;
    assert_eq!(z["last_nack"], message.as_str(), "{z}");
    let after = current(&f);
    assert_eq!(after.version(), before.version(), "nothing published");
    assert!(after.cluster("switchyard-test-poison").is_none());
    assert!(after.cluster(ECHO_HTTP).is_some());

    // a listener without address: the same
    f.cp.admin_post(&format!("/debug/test/poison?proxy={NODE_ID}&type=lds"))
        .await
        .unwrap();
    let message = eventually(WAIT, "the follower to NACK the poisoned LDS", || async {
        f.reader.status().last_nack.get("lds").cloned()
    })
    .await;
    assert_eq!(
        message,
        "listener \"switchyard-test-poison\": address: missing"
    );
    assert!(current(&f).outbound_listener().is_some());

    // config keeps following afterwards
    f.cp.admin_delete(&format!("/debug/test/poison?proxy={NODE_ID}"))
        .await
        .unwrap();
    f.cp.manifests
        .write("more.yaml", &[pod("echo-3", "echo", "10.244.0.13", &[])])
        .unwrap();
    eventually(WAIT, "the new endpoint after the NACKs", || async {
        current(&f)
            .endpoints(ECHO_HTTP)
            .is_some_and(|e| e.len() == 3)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_reconnects_and_keeps_serving() {
    let f = start().await;
    let first = current(&f);
    let status = f.reader.status();
    let sent = |metrics: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("switchyard_xds_resources_sent_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = sent(&f.cp.admin("/metrics").await.unwrap().1);
    let (code, body) =
        f.cp.admin_post(&format!("/debug/test/disconnect?proxy={NODE_ID}"))
            .await
            .unwrap();
    assert_eq!(code, 200, "{body}");
    // The new stream resumes (`initial_resource_versions`): the server answers each type
    // (four ACKs) but sends no resource the sidecar holds, and the config is not rebuilt.
    eventually(WAIT, "a second stream, in sync", || async {
        let s = f.reader.status();
        (s.streams > status.streams && s.connected && s.acks >= status.acks + 4).then_some(())
    })
    .await;
    assert!(f.reader.is_ready());
    let after = sent(&f.cp.admin("/metrics").await.unwrap().1);
    assert_eq!(
        after, before,
        "a resumed stream is sent no resource it already holds"
    );
    let c = current(&f);
    assert_eq!(
        c.version(),
        first.version(),
        "nothing changed, nothing republished"
    );
    assert_eq!(c.check(), Ok(()));
    f.cp.manifests
        .write("more.yaml", &[pod("echo-3", "echo", "10.244.0.13", &[])])
        .unwrap();
    eventually(WAIT, "updates on the new stream", || async {
        current(&f)
            .endpoints(ECHO_HTTP)
            .is_some_and(|e| e.len() == 3)
            .then_some(())
    })
    .await;
}
