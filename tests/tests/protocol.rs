//! ADS protocol behaviour against the real server, driven by fake clients that check protocol
//! invariants on every response (nonce, version, type URL, duplicates).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use switchyard_test_support::ads::{DeltaClient, SotwClient, node, resource_name};
use switchyard_test_support::manifests::*;
use switchyard_tests::{ControlPlane, STEP};

const QUIET: Duration = Duration::from_millis(400);
const SIDECAR: &str = "sidecar~10.244.0.9~client.default~default.svc.cluster.local";
const ECHO_CLUSTER: &str = "outbound|8080||echo.default.svc.cluster.local";

fn base() -> Vec<(&'static str, Vec<String>)> {
    vec![(
        "mesh.yaml",
        vec![
            namespace("default", Some("sidecar")),
            service(
                "default",
                "echo",
                "10.96.0.10",
                &[http(8080, 18080), grpc(9090, 19090)],
            ),
            pod("default", "echo-1", "echo", "10.244.0.11"),
            pod("default", "echo-2", "echo", "10.244.0.12"),
        ],
    )]
}

fn endpoints(any_bytes: &[u8]) -> Vec<String> {
    let cla = ClusterLoadAssignment::decode(any_bytes).unwrap();
    cla.endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter())
        .map(|e| format!("{:?}", e.host_identifier))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_first_requests_ack_nack_and_stale_nonces() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut c = SotwClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();

    // legacy wildcard CDS: full state
    c.request(TypeUrl::Cluster, &[]).await.unwrap();
    let r = c.recv(STEP).await.unwrap();
    let names: Vec<String> = r
        .resources
        .iter()
        .map(|a| resource_name(&r.type_url, &a.value))
        .collect();
    assert!(names.contains(&ECHO_CLUSTER.to_string()), "{names:?}");
    c.ack(TypeUrl::Cluster, &[]).await.unwrap();

    // a first request for a name that does not exist still gets a (empty) response
    c.request(
        TypeUrl::ClusterLoadAssignment,
        &["outbound|1||nope.default.svc.cluster.local"],
    )
    .await
    .unwrap();
    let r = c.recv(STEP).await.unwrap();
    assert_eq!(r.type_url, TypeUrl::ClusterLoadAssignment.as_str());
    assert!(r.resources.is_empty());
    // switching the subscription answers with the named resource
    c.ack(TypeUrl::ClusterLoadAssignment, &[ECHO_CLUSTER])
        .await
        .unwrap();
    let r = c.recv(STEP).await.unwrap();
    assert_eq!(r.resources.len(), 1);
    assert_eq!(endpoints(&r.resources[0].value).len(), 2);
    c.ack(TypeUrl::ClusterLoadAssignment, &[ECHO_CLUSTER])
        .await
        .unwrap();
    c.expect_silence(QUIET).await.unwrap();

    let z = cp.sync_state(SIDECAR, "eds").await.unwrap().unwrap();
    assert_eq!(z["state"], "SYNCED", "{z}");

    // a stale nonce is not answered, even with a new subscription
    c.send(DiscoveryRequest {
        type_url: TypeUrl::ClusterLoadAssignment.as_str().into(),
        resource_names: vec!["something-else".into()],
        response_nonce: "not-a-nonce-we-sent".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.expect_silence(QUIET).await.unwrap();

    // a NACK is recorded with its message, and not answered
    cp.manifests
        .write(
            "more.yaml",
            &[pod("default", "echo-3", "echo", "10.244.0.13")],
        )
        .unwrap();
    let r = c.recv(STEP).await.unwrap();
    assert_eq!(
        r.type_url,
        TypeUrl::ClusterLoadAssignment.as_str(),
        "only EDS changes"
    );
    assert_eq!(endpoints(&r.resources[0].value).len(), 3);
    c.nack(
        TypeUrl::ClusterLoadAssignment,
        &[ECHO_CLUSTER],
        "endpoint rejected by test",
    )
    .await
    .unwrap();
    c.expect_silence(QUIET).await.unwrap();
    let z = cp.sync_state(SIDECAR, "eds").await.unwrap().unwrap();
    assert_eq!(z["state"], "NACKED", "{z}");
    assert_eq!(z["last_nack"], "endpoint rejected by test", "{z}");
    assert_eq!(z["nacked_version"], z["sent_version"], "{z}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_pushes_in_make_before_break_order_and_removes() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut c = SotwClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    for t in [TypeUrl::Cluster, TypeUrl::Listener] {
        c.request(t, &[]).await.unwrap();
        c.recv(STEP).await.unwrap();
        c.ack(t, &[]).await.unwrap();
    }
    c.request(TypeUrl::RouteConfiguration, &["8080"])
        .await
        .unwrap();
    c.recv(STEP).await.unwrap();
    c.ack(TypeUrl::RouteConfiguration, &["8080"]).await.unwrap();
    c.request(TypeUrl::ClusterLoadAssignment, &[ECHO_CLUSTER])
        .await
        .unwrap();
    c.recv(STEP).await.unwrap();
    c.ack(TypeUrl::ClusterLoadAssignment, &[ECHO_CLUSTER])
        .await
        .unwrap();

    // a new HTTP service on a new port changes CDS, LDS and RDS: they arrive in that order
    cp.manifests
        .write(
            "web.yaml",
            &[
                service("default", "web", "10.96.0.20", &[http(8081, 18081)]),
                pod("default", "web-1", "web", "10.244.0.21"),
            ],
        )
        .unwrap();
    let mut order = Vec::new();
    while order.len() < 2 {
        let r = c.recv(STEP).await.unwrap();
        let t = TypeUrl::parse(&r.type_url).unwrap();
        c.ack(
            t,
            if t == TypeUrl::RouteConfiguration {
                &["8080"]
            } else if t == TypeUrl::ClusterLoadAssignment {
                &[ECHO_CLUSTER]
            } else {
                &[]
            },
        )
        .await
        .unwrap();
        order.push(t);
    }
    assert_eq!(
        order,
        vec![TypeUrl::Cluster, TypeUrl::Listener],
        "CDS before LDS"
    );

    // removal: deleting the service drops its cluster from the next full-state CDS
    cp.manifests.remove("web.yaml").unwrap();
    let r = c.recv(STEP).await.unwrap();
    assert_eq!(r.type_url, TypeUrl::Cluster.as_str());
    let names: Vec<String> = r
        .resources
        .iter()
        .map(|a| resource_name(&r.type_url, &a.value))
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("web.default")),
        "{names:?}"
    );
    assert!(names.contains(&ECHO_CLUSTER.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_scoped_endpoint_push_reconnect_and_does_not_exist() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut c = DeltaClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    let none = BTreeMap::new();
    c.subscribe(TypeUrl::Cluster, &["*"], &none).await.unwrap();
    c.recv_type(TypeUrl::Cluster, STEP).await.unwrap();
    c.subscribe(TypeUrl::Listener, &["*"], &none).await.unwrap();
    c.recv_type(TypeUrl::Listener, STEP).await.unwrap();
    let missing = "outbound|80||missing.default.svc.cluster.local";
    c.subscribe(
        TypeUrl::ClusterLoadAssignment,
        &[ECHO_CLUSTER, missing],
        &none,
    )
    .await
    .unwrap();
    let r = c
        .recv_type(TypeUrl::ClusterLoadAssignment, STEP)
        .await
        .unwrap();
    assert_eq!(r.resources.len(), 1);
    assert_eq!(
        r.removed_resources,
        vec![missing.to_string()],
        "does-not-exist is signalled"
    );
    c.expect_silence(QUIET).await.unwrap();

    // an endpoint change sends exactly one resource: the affected ClusterLoadAssignment
    let sent_before = cp.admin("/metrics").await.unwrap().1;
    cp.manifests
        .write(
            "more.yaml",
            &[pod("default", "echo-3", "echo", "10.244.0.13")],
        )
        .unwrap();
    let r = c.recv(STEP).await.unwrap();
    assert_eq!(r.type_url, TypeUrl::ClusterLoadAssignment.as_str());
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, ECHO_CLUSTER);
    assert!(r.removed_resources.is_empty());
    c.ack(TypeUrl::ClusterLoadAssignment).await.unwrap();
    c.expect_silence(QUIET).await.unwrap();
    assert_ne!(sent_before, cp.admin("/metrics").await.unwrap().1);

    // a second stream that announces what it holds gets nothing it already has
    let held_cds = c.versions(TypeUrl::Cluster);
    let held_eds = c.versions(TypeUrl::ClusterLoadAssignment);
    drop(c);
    let mut again = DeltaClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    again
        .subscribe(TypeUrl::Cluster, &["*"], &held_cds)
        .await
        .unwrap();
    let r = again.recv_type(TypeUrl::Cluster, STEP).await.unwrap();
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "nothing resent: {r:?}"
    );
    again
        .subscribe(TypeUrl::ClusterLoadAssignment, &[ECHO_CLUSTER], &held_eds)
        .await
        .unwrap();
    let r = again
        .recv_type(TypeUrl::ClusterLoadAssignment, STEP)
        .await
        .unwrap();
    assert!(
        r.resources.is_empty(),
        "unchanged endpoints are not resent: {r:?}"
    );

    // a stale version in initial_resource_versions is corrected, a gone resource removed
    let mut stale = held_cds.clone();
    stale.insert(ECHO_CLUSTER.into(), "0000000000000001".into());
    stale.insert(
        "outbound|1||gone.default.svc.cluster.local".into(),
        "0000000000000002".into(),
    );
    let mut third = DeltaClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    third
        .subscribe(TypeUrl::Cluster, &["*"], &stale)
        .await
        .unwrap();
    let r = third.recv_type(TypeUrl::Cluster, STEP).await.unwrap();
    let names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec![ECHO_CLUSTER]);
    assert_eq!(
        r.removed_resources,
        vec!["outbound|1||gone.default.svc.cluster.local".to_string()]
    );

    // deleting the service removes its cluster
    cp.manifests
        .write("mesh.yaml", &[namespace("default", Some("sidecar"))])
        .unwrap();
    let r = third.recv_type(TypeUrl::Cluster, STEP).await.unwrap();
    assert!(
        r.removed_resources.contains(&ECHO_CLUSTER.to_string()),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_only_proxies_that_see_the_change() {
    let mut files = base();
    files.push((
        "team.yaml",
        vec![
            namespace("team", Some("sidecar")),
            private_service("team", "private", "10.96.0.30", &[http(8080, 18080)]),
            pod("team", "private-1", "private", "10.244.1.11"),
        ],
    ));
    let cp = ControlPlane::start(&files).await.unwrap();
    let outsider = "sidecar~10.244.0.50~x.default~default.svc.cluster.local";
    let insider = "sidecar~10.244.1.50~y.team~team.svc.cluster.local";
    let mut clients = Vec::new();
    for id in [outsider, insider] {
        let mut c = DeltaClient::connect(cp.xds(), node(id, &[])).await.unwrap();
        c.subscribe(TypeUrl::Cluster, &["*"], &BTreeMap::new())
            .await
            .unwrap();
        c.recv_type(TypeUrl::Cluster, STEP).await.unwrap();
        clients.push(c);
    }
    assert!(
        !clients[0]
            .names(TypeUrl::Cluster)
            .iter()
            .any(|n| n.contains("private.team"))
    );
    assert!(
        clients[1]
            .names(TypeUrl::Cluster)
            .iter()
            .any(|n| n.contains("private.team"))
    );
    // a change to the team-only service reaches the insider only
    cp.manifests
        .write(
            "team.yaml",
            &[
                namespace("team", Some("sidecar")),
                private_service(
                    "team",
                    "private",
                    "10.96.0.30",
                    &[http(8080, 18080), http(8081, 18081)],
                ),
                pod("team", "private-1", "private", "10.244.1.11"),
            ],
        )
        .unwrap();
    let r = clients[1].recv_type(TypeUrl::Cluster, STEP).await.unwrap();
    assert_eq!(r.resources.len(), 1, "only the new cluster");
    clients[0].expect_silence(QUIET).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agents_get_one_workload_resource_per_endpoint_change() {
    let mut files = base();
    files[0].1.push(switchyard_test_support::manifests::node(
        "node-1",
        "10.255.0.1",
        "zone-a",
    ));
    files[0].1.push(pod_on(
        "default",
        "echo-n",
        "echo",
        "10.244.0.40",
        Some("node-1"),
    ));
    files[0].1.push(allow_policy(
        "default",
        "echo-allow",
        "echo",
        &["spiffe://cluster.local/ns/default/sa/client"],
    ));
    let cp = ControlPlane::start(&files).await.unwrap();
    let mut z = DeltaClient::connect(
        cp.xds(),
        node("ztunnel~10.255.0.1~node-1~switchyard-system", &[]),
    )
    .await
    .unwrap();
    let none = BTreeMap::new();
    for t in [TypeUrl::Service, TypeUrl::Workload, TypeUrl::Authorization] {
        z.subscribe(t, &[], &none).await.unwrap();
        z.recv_type(t, STEP).await.unwrap();
    }
    assert_eq!(
        z.names(TypeUrl::Service),
        vec!["default/echo.default.svc.cluster.local"]
    );
    assert_eq!(z.names(TypeUrl::Workload).len(), 3);
    assert_eq!(z.names(TypeUrl::Authorization), vec!["default/echo-allow"]);
    cp.manifests
        .write(
            "more.yaml",
            &[pod("default", "echo-3", "echo", "10.244.0.13")],
        )
        .unwrap();
    let r = z.recv(STEP).await.unwrap();
    assert_eq!(r.type_url, TypeUrl::Workload.as_str());
    let names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["default/echo-3"]);
    z.ack(TypeUrl::Workload).await.unwrap();
    z.expect_silence(QUIET).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_get_clear_errors_and_do_not_disturb_others() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut good = DeltaClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    good.subscribe(
        TypeUrl::ClusterLoadAssignment,
        &[ECHO_CLUSTER],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    good.recv_type(TypeUrl::ClusterLoadAssignment, STEP)
        .await
        .unwrap();

    // no node on the first request
    let mut c = SotwClient::connect(cp.xds(), node("", &[])).await.unwrap();
    c.send(DiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let st = c.recv_status(STEP).await.unwrap();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert!(st.message().contains("node.id"), "{st:?}");

    // malformed node id
    let mut c = SotwClient::connect(cp.xds(), node("istio~x~y~z", &[]))
        .await
        .unwrap();
    c.request(TypeUrl::Cluster, &[]).await.unwrap();
    let st = c.recv_status(STEP).await.unwrap();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert!(st.message().contains("unknown proxy kind"), "{st:?}");

    // unknown type URL
    let mut c = DeltaClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    c.send(DeltaDiscoveryRequest {
        type_url: "type.googleapis.com/envoy.config.core.v3.Nonsense".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c.recv(STEP).await.unwrap_err().to_string();
    assert!(err.contains("unknown type url"), "{err}");

    // a 10 MB request
    let mut c = SotwClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    c.send(DiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        resource_names: vec!["x".repeat(10 << 20)],
        ..Default::default()
    })
    .await
    .unwrap();
    let st = c.recv_status(STEP).await.unwrap();
    assert_ne!(st.code(), tonic::Code::Ok, "{st:?}");
    assert!(
        st.message().contains("message length too large") || st.message().contains("too large"),
        "{st:?}"
    );

    // a client that never ACKs and one that NACKs everything
    let mut silent = DeltaClient::connect(
        cp.xds(),
        node(
            "sidecar~10.244.0.60~s.default~default.svc.cluster.local",
            &[],
        ),
    )
    .await
    .unwrap();
    silent
        .subscribe(
            TypeUrl::ClusterLoadAssignment,
            &[ECHO_CLUSTER],
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let mut nacker = DeltaClient::connect(
        cp.xds(),
        node(
            "sidecar~10.244.0.61~n.default~default.svc.cluster.local",
            &[],
        ),
    )
    .await
    .unwrap();
    nacker
        .subscribe(
            TypeUrl::ClusterLoadAssignment,
            &[ECHO_CLUSTER],
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    nacker.recv(STEP).await.unwrap();
    nacker
        .nack(TypeUrl::ClusterLoadAssignment, "no thanks")
        .await
        .unwrap();

    // ...while the good client still follows changes
    for i in 3..6 {
        cp.manifests
            .write(
                "more.yaml",
                &[pod(
                    "default",
                    &format!("echo-{i}"),
                    "echo",
                    &format!("10.244.0.{}", 10 + i),
                )],
            )
            .unwrap();
        let r = good
            .recv_type(TypeUrl::ClusterLoadAssignment, STEP)
            .await
            .unwrap();
        assert_eq!(r.resources.len(), 1);
        let r = nacker.recv(STEP).await.unwrap();
        nacker
            .nack(TypeUrl::parse(&r.type_url).unwrap(), "no thanks")
            .await
            .unwrap();
    }
    // the silent client never reads, so wait for the server to have seen its request
    let state_of = |z: &serde_json::Value, id: &str| -> Option<serde_json::Value> {
        z.as_array()?
            .iter()
            .find(|p| p["node"] == id)
            .map(|p| p["types"]["eds"].clone())
    };
    switchyard_test_support::eventually(STEP, "silent client STALE, nacker NACKED", || async {
        let z = cp.syncz().await.ok()?;
        let silent = state_of(
            &z,
            "sidecar~10.244.0.60~s.default~default.svc.cluster.local",
        )?;
        let n = state_of(
            &z,
            "sidecar~10.244.0.61~n.default~default.svc.cluster.local",
        )?;
        (silent["state"] == "STALE" && n["state"] == "NACKED" && n["last_nack"] == "no thanks")
            .then_some(())
    })
    .await;
    let metrics = cp.admin("/metrics").await.unwrap().1;
    assert!(
        metrics.contains("switchyard_xds_rejected_total{reason=\"unknown_type_url\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_xds_rejected_total{reason=\"bad_node\"} 2"),
        "{metrics}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds_reports_connected_proxies() {
    use switchyard_protos::envoy::envoy::service::status::v3::ClientStatusRequest;
    use switchyard_protos::envoy::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut c = DeltaClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    c.subscribe(TypeUrl::Cluster, &["*"], &BTreeMap::new())
        .await
        .unwrap();
    c.recv_type(TypeUrl::Cluster, STEP).await.unwrap();
    let mut csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{}", cp.xds()))
        .await
        .unwrap();
    let resp = switchyard_test_support::eventually(STEP, "csds shows the proxy synced", || {
        let mut csds = csds.clone();
        async move {
            let r = csds
                .fetch_client_status(ClientStatusRequest::default())
                .await
                .ok()?
                .into_inner();
            let cfg = r
                .config
                .into_iter()
                .find(|c| c.node.as_ref().is_some_and(|n| n.id == SIDECAR))?;
            let synced = cfg
                .generic_xds_configs
                .iter()
                .any(|g| g.name == ECHO_CLUSTER && g.config_status == 1);
            synced.then_some(cfg)
        }
    })
    .await;
    assert!(
        resp.generic_xds_configs
            .iter()
            .all(|g| g.type_url == TypeUrl::Cluster.as_str())
    );
    let none = csds
        .fetch_client_status(ClientStatusRequest {
            node_matchers: vec![switchyard_protos::envoy::envoy::r#type::matcher::v3::NodeMatcher {
                node_id: Some(switchyard_protos::envoy::envoy::r#type::matcher::v3::StringMatcher {
                    match_pattern: Some(
                        switchyard_protos::envoy::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Prefix("ztunnel~".into()),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.config.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifest_keeps_last_good_mesh_and_says_where() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let g = cp.generation();
    cp.manifests
        .write_raw("broken.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n---\napiVersion: v1\nkind: Service\nmetadata: {name: y\n")
        .unwrap();
    let body = switchyard_test_support::eventually(STEP, "problem reported", || async {
        let (_, body) = cp.admin("/debug/sources").await.ok()?;
        body.contains("broken.yaml").then_some(body)
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p = &v["problems"][0];
    assert!(
        p["origin"].as_str().unwrap().ends_with("broken.yaml"),
        "{v}"
    );
    assert_eq!(p["document"], 1, "{v}");
    assert!(
        p["line"].as_u64().unwrap() >= 9,
        "line counted from the file start: {v}"
    );
    assert_eq!(cp.generation(), g, "last good mesh keeps serving");
    let (code, ready) = cp.admin("/readyz").await.unwrap();
    assert_eq!(code, 200);
    assert!(ready.contains("broken.yaml"), "{ready}");
    // the proxy view is unchanged
    let (_, dump) = cp
        .admin(&format!("/debug/config_dump?proxy={SIDECAR}&type=cds"))
        .await
        .unwrap();
    assert!(dump.contains(ECHO_CLUSTER), "{dump}");
    cp.manifests.remove("broken.yaml").unwrap();
    switchyard_test_support::eventually(STEP, "problem cleared", || async {
        let (_, body) = cp.admin("/debug/sources").await.ok()?;
        (!body.contains("broken.yaml")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_cluster_gets_its_endpoints_again() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut c = DeltaClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    let none = BTreeMap::new();
    c.subscribe(TypeUrl::Cluster, &["*"], &none).await.unwrap();
    c.recv_type(TypeUrl::Cluster, STEP).await.unwrap();
    c.subscribe(TypeUrl::ClusterLoadAssignment, &[ECHO_CLUSTER], &none)
        .await
        .unwrap();
    c.recv_type(TypeUrl::ClusterLoadAssignment, STEP)
        .await
        .unwrap();
    let cla_version = c.versions(TypeUrl::ClusterLoadAssignment)[ECHO_CLUSTER].clone();
    c.expect_silence(QUIET).await.unwrap();
    // the port becomes HTTP/2: the cluster changes, its endpoints do not
    let h2 = Port {
        name: "http2",
        port: 8080,
        target: 18080,
        app_protocol: Some("kubernetes.io/h2c"),
    };
    cp.manifests
        .write(
            "mesh.yaml",
            &[
                namespace("default", Some("sidecar")),
                service("default", "echo", "10.96.0.10", &[h2, grpc(9090, 19090)]),
                pod("default", "echo-1", "echo", "10.244.0.11"),
                pod("default", "echo-2", "echo", "10.244.0.12"),
            ],
        )
        .unwrap();
    let r = c.recv(STEP).await.unwrap();
    assert_eq!(r.type_url, TypeUrl::Cluster.as_str());
    assert!(r.resources.iter().any(|x| x.name == ECHO_CLUSTER), "{r:?}");
    c.ack(TypeUrl::Cluster).await.unwrap();
    let r = c.recv(STEP).await.unwrap();
    assert_eq!(
        r.type_url,
        TypeUrl::ClusterLoadAssignment.as_str(),
        "endpoints follow the cluster"
    );
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, ECHO_CLUSTER);
    assert_eq!(
        r.resources[0].version, cla_version,
        "same endpoints, sent again for warming"
    );
}

/// The roots in a `ROOTCA` response.
fn rootca_roots(bytes: &[u8]) -> usize {
    use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3::Secret;
    let secret = Secret::decode(bytes).unwrap();
    assert_eq!(secret.name, "ROOTCA");
    let pem = switchyard_dataplane_runtime::xds::bundle_pem(&secret).unwrap();
    pem.matches("BEGIN CERTIFICATE").count()
}

async fn ca_status(cp: &ControlPlane) -> serde_json::Value {
    let (code, body) = cp.admin("/debug/ca").await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `ROOTCA` goes to every proxy over both ADS variants; a root rotation adds the new root to
/// it, and the new root starts signing only once every subscriber has ACKed that bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootca_over_sotw_and_delta_and_promotion_waits_for_every_ack() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut sotw = SotwClient::connect(cp.xds(), node(SIDECAR, &[]))
        .await
        .unwrap();
    let delta_id = "envoy~10.244.0.11~echo-1.default~default.svc.cluster.local";
    let mut delta = DeltaClient::connect(cp.xds(), node(delta_id, &[]))
        .await
        .unwrap();
    sotw.request(TypeUrl::Secret, &["ROOTCA"]).await.unwrap();
    let r = sotw.recv(STEP).await.unwrap();
    assert_eq!(r.resources.len(), 1);
    assert_eq!(rootca_roots(&r.resources[0].value), 1);
    sotw.ack(TypeUrl::Secret, &["ROOTCA"]).await.unwrap();
    delta
        .subscribe(TypeUrl::Secret, &["ROOTCA"], &BTreeMap::new())
        .await
        .unwrap();
    let r = delta.recv_type(TypeUrl::Secret, STEP).await.unwrap();
    assert_eq!(r.resources.len(), 1);
    assert_eq!(
        rootca_roots(&r.resources[0].resource.as_ref().unwrap().value),
        1
    );

    let (code, body) = cp.admin_post("/ca/rotate-root").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = cp.admin_post("/ca/rotate-root").await.unwrap();
    assert_eq!(
        code, 409,
        "a second rotation while one runs is refused: {body}"
    );
    assert!(body.contains("already in progress"), "{body}");

    // both get the two-root bundle; neither has ACKed, so the old root still signs
    let r = sotw.recv(STEP).await.unwrap();
    assert_eq!(rootca_roots(&r.resources[0].value), 2);
    // (recv, not recv_type: that would ACK)
    let r = delta.recv(STEP).await.unwrap();
    assert_eq!(r.type_url, TypeUrl::Secret.as_str());
    assert_eq!(
        rootca_roots(&r.resources[0].resource.as_ref().unwrap().value),
        2
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = ca_status(&cp).await;
    assert_eq!(s["rotation"]["phase"], "introduced", "{s}");
    let waiting: Vec<&str> = s["waiting_for"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(waiting, [delta_id, SIDECAR], "{s}");

    // one ACK is not enough
    sotw.ack(TypeUrl::Secret, &["ROOTCA"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = ca_status(&cp).await;
    assert_eq!(s["rotation"]["phase"], "introduced", "{s}");
    assert_eq!(s["waiting_for"], serde_json::json!([delta_id]), "{s}");

    // the last ACK promotes the new root: it signs, and comes first in the bundle
    delta.ack(TypeUrl::Secret).await.unwrap();
    let deadline = tokio::time::Instant::now() + STEP;
    let s = loop {
        let s = ca_status(&cp).await;
        if s["rotation"]["phase"] == "retiring" {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "not promoted: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let roots = s["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0]["signing"], true, "{s}");
    assert_eq!(roots[1]["signing"], false, "{s}");
    // the reordered bundle goes out again (dataplanes renew on it)
    let r = sotw.recv(STEP).await.unwrap();
    assert_eq!(rootca_roots(&r.resources[0].value), 2);
}
