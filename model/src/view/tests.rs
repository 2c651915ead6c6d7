use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::MeshBuilder;
use crate::input::*;
use crate::mesh::*;
use crate::proxy::{ProxyId, ProxyMetadata};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mesh(extra_pod: bool) -> Arc<Mesh> {
    let mut b = MeshBuilder::new(MeshConfig::default());
    let mut private = ServiceInput::new("team", "private", ip("10.96.0.20")).port("http", 80, 8080);
    private.visibility = Visibility::Namespaces(vec!["team".into()]);
    b.service(ServiceInput::new("default", "echo", ip("10.96.0.10")).port("http", 80, 8080))
        .service(private)
        .pod(
            PodInput::new("default", "echo-1", ip("10.244.1.2"))
                .label("app", "echo")
                .on_node("node-1"),
        )
        .pod(
            PodInput::new("team", "private-1", ip("10.244.2.2"))
                .label("app", "private")
                .on_node("node-2"),
        )
        .authorization_policy(AuthorizationPolicyInput {
            key: ObjectKey::new("default", "echo-only"),
            selector: Some([("app".to_string(), "echo".to_string())].into()),
            action: PolicyAction::Allow,
            rules: vec![],
        });
    if extra_pod {
        b.pod(
            PodInput::new("default", "echo-2", ip("10.244.1.3"))
                .label("app", "echo")
                .on_node("node-1"),
        );
    }
    Arc::new(b.build(1).unwrap())
}

fn proxy(id: &str) -> ProxyId {
    ProxyId::parse(id, ProxyMetadata::default()).unwrap()
}

#[test]
fn visibility_scopes_services_per_namespace() {
    let c = Compiler::new(mesh(false));
    let default = c.compile(&proxy(
        "envoy~10.244.1.2~echo-1.default~default.svc.cluster.local",
    ));
    let team = c.compile(&proxy(
        "envoy~10.244.2.2~private-1.team~team.svc.cluster.local",
    ));
    let names = |v: &ProxyView| -> Vec<String> {
        v.scope
            .services
            .iter()
            .map(|s| s.service.key.to_string())
            .collect()
    };
    assert_eq!(names(&default), vec!["default/echo"]);
    assert_eq!(names(&team), vec!["default/echo", "team/private"]);
    // two proxies of one namespace share one scope
    let other = c.compile(&proxy(
        "envoy~10.244.1.9~x.default~default.svc.cluster.local",
    ));
    assert!(Arc::ptr_eq(&default.scope, &other.scope));
}

#[test]
fn pod_proxy_gets_its_workload_inbound_ports_and_policies() {
    let c = Compiler::new(mesh(false));
    let v = c.compile(&proxy(
        "sidecar~10.244.1.2~echo-1.default~default.svc.cluster.local",
    ));
    assert_eq!(v.workload.as_ref().unwrap().uid, "default/echo-1");
    assert_eq!(v.inbound.len(), 1);
    assert_eq!(v.inbound[0].port, 8080);
    assert_eq!(v.inbound[0].protocol, AppProtocol::Http);
    assert_eq!(v.policies.len(), 1);
}

#[test]
fn node_agent_sees_all_workloads_and_local_policies() {
    let c = Compiler::new(mesh(false));
    let n1 = c.compile(&proxy("ztunnel~10.255.0.1~node-1~switchyard-system"));
    let n2 = c.compile(&proxy("ztunnel~10.255.0.2~node-2~switchyard-system"));
    assert_eq!(n1.scope.workloads.len(), 2);
    assert_eq!(n1.node_workloads.len(), 1);
    assert_eq!(n1.policies.len(), 1, "echo-only selects a pod on node-1");
    assert!(n2.policies.is_empty());
    let echo = n1
        .scope
        .workloads
        .iter()
        .find(|w| w.workload.uid == "default/echo-1")
        .unwrap();
    assert_eq!(
        echo.services["default/echo.default.svc.cluster.local"],
        vec![(80, 8080)]
    );
    assert_eq!(echo.policies, vec!["default/echo-only".to_string()]);
}

#[test]
fn unchanged_views_are_reused_across_generations() {
    let first = Compiler::new(mesh(false));
    let s1 = first.scope(&ScopeKey::Namespace("team".into()));
    let w1 = first.scope(&ScopeKey::NodeAgents);
    let second = Compiler::with_previous(mesh(true), Some(&first));
    let s2 = second.scope(&ScopeKey::Namespace("team".into()));
    let w2 = second.scope(&ScopeKey::NodeAgents);
    let find = |s: &Scope, k: &str| {
        s.services
            .iter()
            .find(|v| v.service.key.to_string() == k)
            .unwrap()
            .clone()
    };
    assert!(Arc::ptr_eq(
        &find(&s1, "team/private"),
        &find(&s2, "team/private")
    ));
    assert!(!Arc::ptr_eq(
        &find(&s1, "default/echo"),
        &find(&s2, "default/echo")
    ));
    let wl = |s: &Scope, uid: &str| {
        s.workloads
            .iter()
            .find(|w| w.workload.uid == uid)
            .unwrap()
            .clone()
    };
    assert!(Arc::ptr_eq(
        &wl(&w1, "team/private-1"),
        &wl(&w2, "team/private-1")
    ));
    assert_eq!(w2.workloads.len(), 3);
}
