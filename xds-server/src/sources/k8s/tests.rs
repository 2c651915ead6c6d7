use std::net::IpAddr;

use switchyard_model::{AppProtocol, DataplaneMode, StringMatch, TargetPort, Visibility};

use super::document::clean_yaml_message;
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The one object of a YAML document.
fn one(yaml: &str) -> K8sObject {
    let mut objects = parse_yaml_document(yaml, 0).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(objects.len(), 1, "{objects:#?}");
    objects.remove(0).object
}

/// The one error of a YAML document.
fn error(yaml: &str) -> ManifestError {
    match parse_yaml_document(yaml, 0) {
        Ok(objects) => panic!("expected an error, got {objects:#?}"),
        Err(mut errors) => {
            assert_eq!(errors.len(), 1, "{errors:#?}");
            errors.remove(0)
        }
    }
}

fn field(e: &ManifestError) -> String {
    e.field().map(|f| f.to_string()).unwrap_or_default()
}

fn line(e: &ManifestError) -> usize {
    e.location().map(|l| l.line).unwrap_or_default()
}

#[test]
fn field_paths_print_like_kubectl() {
    let p = FieldPath::at("spec.ports").index(0).key("port");
    assert_eq!(p.to_string(), "spec.ports[0].port");
    let p = FieldPath::at("metadata.labels").key("switchyard.io/dataplane-mode");
    assert_eq!(
        p.to_string(),
        r#"metadata.labels["switchyard.io/dataplane-mode"]"#
    );
    assert_eq!(
        FieldPath::at("spec.portLevelMtls").key("8080").to_string(),
        r#"spec.portLevelMtls["8080"]"#
    );
    assert_eq!(FieldPath::root().to_string(), ".");
}

#[test]
fn service_without_cluster_ip_or_ports_and_with_named_target() {
    let svc = one(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: data\n\
         spec:\n  clusterIP: None\n  ports:\n  - port: 5432\n    targetPort: pg\n",
    );
    let K8sObject::Service(svc) = svc else {
        panic!("{svc:?}")
    };
    assert!(svc.cluster_ips.is_empty(), "headless");
    assert_eq!(svc.ports[0].target, TargetPort::Named("pg".into()));
    assert_eq!(svc.ports[0].protocol, AppProtocol::Tcp);
    assert_eq!(svc.selector, None);
    assert_eq!(svc.visibility, Visibility::All);
}

#[test]
fn service_dual_stack_and_export_to() {
    let yaml = |export: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  \
             annotations:\n    switchyard.io/export-to: {export:?}\nspec:\n  \
             clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.1, fd00::1]\n"
        )
    };
    let K8sObject::Service(svc) = one(&yaml("*")) else {
        panic!()
    };
    assert_eq!(svc.cluster_ips, [ip("10.96.0.1"), ip("fd00::1")]);
    assert_eq!(svc.visibility, Visibility::All);

    let K8sObject::Service(svc) = one(&yaml(".")) else {
        panic!()
    };
    assert_eq!(svc.visibility, Visibility::Namespaces(vec!["shop".into()]));

    let K8sObject::Service(svc) = one(&yaml("b, a,.")) else {
        panic!()
    };
    assert_eq!(
        svc.visibility,
        Visibility::Namespaces(vec!["a".into(), "b".into(), "shop".into()])
    );

    let e = error(&yaml(" , "));
    assert_eq!(
        field(&e),
        r#"metadata.annotations["switchyard.io/export-to"]"#
    );
    assert_eq!(line(&e), 7);
}

#[test]
fn service_connection_limit_annotations() {
    let yaml = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  \
             annotations:\n{annotations}spec:\n  clusterIP: 10.96.0.1\n"
        )
    };
    let K8sObject::Service(svc) = one(&yaml(
        "    switchyard.io/max-connections: \"10\"\n    \
         switchyard.io/max-pending-requests: \"0\"\n    \
         switchyard.io/max-requests: \"100\"\n    switchyard.io/max-retries: \"2\"\n",
    )) else {
        panic!()
    };
    assert_eq!(
        svc.limits,
        ConnectionLimits {
            max_connections: Some(10),
            max_pending_requests: Some(0),
            max_requests: Some(100),
            max_retries: Some(2),
        }
    );
    let K8sObject::Service(svc) = one(&yaml("    other: x\n")) else {
        panic!()
    };
    assert!(svc.limits.is_empty());

    for bad in ["\"0\"", "\"-1\"", "\"ten\"", "\"4294967296\""] {
        let e = error(&yaml(&format!(
            "    switchyard.io/max-connections: {bad}\n"
        )));
        assert_eq!(
            field(&e),
            r#"metadata.annotations["switchyard.io/max-connections"]"#,
            "{bad}"
        );
        assert!(
            e.to_string().contains("expected a whole number from 1"),
            "{e}"
        );
    }
}

#[test]
fn bad_cluster_ip_names_the_list_entry() {
    let e = error(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  \
         clusterIPs: [10.96.0.1, 10.96.0.300]\n",
    );
    assert_eq!(field(&e), "spec.clusterIPs[1]");
    assert_eq!(e.object(), Some("Service default/web"));
    assert_eq!(e.message(), "invalid ip address \"10.96.0.300\"");
}

#[test]
fn pod_without_status_is_ready_and_pending_pod_has_no_ips() {
    let K8sObject::Pod(pod) = one("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n\
         spec:\n  containers:\n  - name: c\n    ports:\n    - name: dns\n      \
         containerPort: 53\n      protocol: UDP\n")
    else {
        panic!()
    };
    assert!(pod.ready);
    assert!(pod.ips.is_empty());
    assert!(pod.named_ports.is_empty(), "UDP ports are not targets");
    assert_eq!(pod.key, ObjectKey::new("default", "p"));
}

#[test]
fn pod_mode_label_is_validated() {
    let e = error(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    \
         switchyard.io/dataplane-mode: Sidecar\nspec:\n  containers: []\n",
    );
    assert_eq!(
        field(&e),
        r#"metadata.labels["switchyard.io/dataplane-mode"]"#
    );
    let K8sObject::Pod(pod) = one(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    \
         switchyard.io/dataplane-mode: ebpf\nspec:\n  containers: []\n",
    ) else {
        panic!()
    };
    assert_eq!(pod.mode, Some(DataplaneMode::Ebpf));
}

#[test]
fn endpoint_slice_needs_its_service_label() {
    let e = error(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n\
         addressType: IPv4\nendpoints: []\n",
    );
    assert_eq!(
        field(&e),
        r#"metadata.labels["kubernetes.io/service-name"]"#
    );
    assert_eq!(line(&e), 4, "nearest existing field: metadata");
}

#[test]
fn endpoint_slice_fqdn_is_rejected() {
    let e = error(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  \
         labels:\n    kubernetes.io/service-name: web\naddressType: FQDN\nendpoints: []\n",
    );
    assert_eq!(field(&e), "addressType");
    assert_eq!(line(&e), 7);
}

#[test]
fn http_route_v1beta1_is_accepted_and_grpc_v1alpha2_is_not() {
    let K8sObject::Route { route, created } = one(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata:\n  \
         name: r\n  creationTimestamp: \"2024-01-02T03:04:05Z\"\nspec:\n  rules:\n  \
         - matches:\n    - path:\n        type: RegularExpression\n        value: \"/v[0-9]+/.*\"\n",
    ) else {
        panic!()
    };
    assert!(created.is_some());
    assert!(route.parents.is_empty(), "no service parent");
    assert_eq!(
        route.rules[0].matches[0].path,
        Some(StringMatch::Regex("/v[0-9]+/.*".into()))
    );

    let e = error(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: GRPCRoute\nmetadata:\n  name: g\n",
    );
    assert!(matches!(e, ManifestError::UnknownKind { .. }), "{e:?}");
}

#[test]
fn http_route_typo_is_an_unknown_field() {
    let e = error(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n\
         spec:\n  rules:\n  - backendRef:\n    - name: web\n",
    );
    assert_eq!(field(&e), "spec.rules[0].backendRef");
    assert!(
        e.message()
            .starts_with("unknown field `backendRef`, expected one of"),
        "{e}"
    );
    assert_eq!(line(&e), 7);
}

#[test]
fn http_route_bad_duration_and_relative_path() {
    let route = |rule: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  \
             name: r\nspec:\n  rules:\n  - {rule}\n"
        )
    };
    let e = error(&route("timeouts: {request: 1.5s}"));
    assert_eq!(field(&e), "spec.rules[0].timeouts.request");
    assert!(e.message().starts_with("invalid duration \"1.5s\""), "{e}");

    let e = error(&route("matches: [{path: {value: admin}}]"));
    assert_eq!(field(&e), "spec.rules[0].matches[0].path.value");

    let e = error(&route("retry: {codes: [200]}"));
    assert_eq!(field(&e), "spec.rules[0].retry.codes[0]");

    let e = error(&route("backendRefs: [{name: b, weight: 2000000}]"));
    assert_eq!(field(&e), "spec.rules[0].backendRefs[0].weight");
}

#[test]
fn authorization_policy_defaults_to_allow_and_rejects_bad_ports() {
    let K8sObject::AuthorizationPolicy(p) = one(
        "apiVersion: switchyard.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  \
         name: deny-all\n  namespace: shop\nspec: {}\n",
    ) else {
        panic!()
    };
    assert_eq!(p.action, switchyard_model::PolicyAction::Allow);
    assert!(p.rules.is_empty());
    assert_eq!(p.selector, None);

    let e = error(
        "apiVersion: switchyard.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  \
         name: p\nspec:\n  rules:\n  - to:\n    - operation:\n        ports: [80, 0]\n",
    );
    assert_eq!(field(&e), "spec.rules[0].to[0].operation.ports[1]");
    assert_eq!(line(&e), 9);
}

#[test]
fn peer_authentication_mode_typo() {
    let e = error(
        "apiVersion: switchyard.io/v1alpha1\nkind: PeerAuthentication\nmetadata:\n  \
         name: p\nspec:\n  mtls:\n    mode: STRIKT\n",
    );
    assert_eq!(field(&e), "spec.mtls.mode");
    assert!(e.message().starts_with("unknown variant `STRIKT`"), "{e}");
    assert_eq!((line(&e), e.location().unwrap().column), (7, 11));
}

#[test]
fn missing_type_meta_and_name() {
    let e = error("kind: Namespace\nmetadata:\n  name: x\n");
    assert_eq!(field(&e), "apiVersion");
    assert_eq!(e.message(), "missing field `apiVersion`");

    let e = error("apiVersion: v1\nkind: Service\nmetadata:\n  namespace: x\n");
    assert_eq!(field(&e), "metadata.name");
    assert_eq!(line(&e), 4);
}

#[test]
fn non_mapping_document() {
    let e = error("- a\n- b\n");
    assert!(
        matches!(
            e,
            ManifestError::NotAnObject {
                found: "a list",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn empty_documents_have_no_objects() {
    for text in ["", "---\n", "# only a comment\n", "---\n# comment\n...\n"] {
        assert_eq!(parse_yaml_document(text, 0), Ok(vec![]), "{text:?}");
    }
}

#[test]
fn line_offset_counts_in_the_file() {
    let e = error("apiVersion: v1\nkind: Nope\n");
    assert_eq!(line(&e), 2);
    let e = parse_yaml_document("apiVersion: v1\nkind: Nope\n", 40).unwrap_err();
    assert_eq!(
        e[0].location(),
        Some(Location {
            line: 42,
            column: 7
        })
    );
}

#[test]
fn yaml_messages_are_rebased() {
    assert_eq!(
        clean_yaml_message(
            "did not find expected key at line 5 column 3, while parsing a block mapping at line 3 column 1",
            10
        ),
        "did not find expected key, while parsing a block mapping at line 13 column 1"
    );
    assert_eq!(clean_yaml_message("plain", 3), "plain");
}

#[test]
fn list_items_are_expanded_and_their_errors_located() {
    let text = "apiVersion: v1\nkind: List\nitems:\n\
        - apiVersion: v1\n  kind: ServiceAccount\n  metadata:\n    name: a\n\
        - apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: b\n    labels:\n      \
        switchyard.io/dataplane-mode: bogus\n\
        - apiVersion: v1\n  kind: Widget\n  metadata:\n    name: c\n";
    let errors = parse_yaml_document(text, 0).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(
        field(&errors[0]),
        r#"items[1].metadata.labels["switchyard.io/dataplane-mode"]"#
    );
    assert_eq!(line(&errors[0]), 13);
    assert_eq!(field(&errors[1]), "items[2].kind");
    assert_eq!(line(&errors[1]), 15);

    let ok = "apiVersion: v1\nkind: List\nitems:\n\
        - apiVersion: v1\n  kind: ServiceAccount\n  metadata:\n    name: a\n";
    let objects = parse_yaml_document(ok, 0).unwrap();
    assert_eq!(objects[0].path.to_string(), "items[0]");
    assert_eq!(objects[0].location.map(|l| l.line), Some(7));
}

#[test]
fn values_parse_without_locations() {
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"ports": [{"port": 80, "targetPort": "http", "appProtocol": "kubernetes.io/h2c"}]}
    });
    let objects = parse_value(&value).unwrap();
    let K8sObject::Service(svc) = &objects[0].object else {
        panic!()
    };
    assert_eq!(svc.ports[0].protocol, AppProtocol::Http2);
    assert_eq!(objects[0].location, None);

    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": "eighty"}]}
    });
    let e = parse_value(&value).unwrap_err();
    assert_eq!(field(&e[0]), "spec.ports[0].port");
    assert_eq!(e[0].location(), None);
}

#[test]
fn object_ids() {
    let K8sObject::Namespace(_) = one("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n")
    else {
        panic!()
    };
    let sa = one("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n");
    assert_eq!(sa.id(), "ServiceAccount default/a");
    let ns = one("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  namespace: ignored\n");
    assert_eq!(ns.id(), "Namespace x");
    assert_eq!(ns.namespace(), None);
}
