use std::collections::BTreeMap;
use std::net::IpAddr;

use switchyard_model::input::{
    AuthorizationPolicyInput, BackendRefInput, EndpointSliceInput, NamespaceInput, NodeInput,
    ParentRefInput, PeerAuthenticationInput, PodInput, RouteInput, RouteRuleInput, ServiceInput,
    SliceEndpoint, SlicePort,
};
use switchyard_model::{
    AppProtocol, ConnectionLimits, DataplaneMode, HeaderMatch, Locality, MeshConfig, MtlsMode,
    ObjectKey, PolicyAction, PolicyOperation, PolicyRule, PolicySource, RetryPolicy, RouteKind,
    RouteMatch, ServicePort, StringMatch, TargetPort, Visibility,
};

use super::*;
use crate::sources::k8s::K8sObject;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sources/testdata/mesh")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap();
}

/// The problems of loading `dir`, which must fail.
fn problems(dir: &Path) -> Vec<SourceProblem> {
    match load_dir(dir) {
        Ok(objects) => panic!("expected problems, got {objects:#?}"),
        Err(problems) => problems,
    }
}

fn only_problem(dir: &Path) -> SourceProblem {
    let mut all = problems(dir);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.remove(0)
}

fn ns(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

fn route_rule(backend: &str, port: u16) -> RouteRuleInput {
    RouteRuleInput {
        matches: vec![],
        backends: vec![BackendRefInput {
            namespace: None,
            name: backend.into(),
            port: Some(port),
            weight: 1,
        }],
        timeout: None,
        retry: None,
    }
}

#[test]
fn realistic_manifest_set_parses_into_inputs() {
    let objects = load_dir(&testdata()).unwrap_or_else(|p| panic!("{p:#?}"));

    assert_eq!(
        objects.namespaces,
        vec![
            NamespaceInput {
                name: "shop".into(),
                mode: Some(DataplaneMode::Sidecar)
            },
            NamespaceInput {
                name: "legacy".into(),
                mode: Some(DataplaneMode::None)
            },
        ]
    );
    assert_eq!(
        objects.nodes,
        vec![NodeInput {
            name: "node-a".into(),
            address: Some(ip("10.255.0.11")),
            locality: Locality {
                region: "eu-west".into(),
                zone: "eu-west-1a".into(),
                subzone: String::new(),
            },
        }]
    );
    assert_eq!(
        objects.service_accounts,
        vec![ObjectKey::new("shop", "cart")]
    );

    assert_eq!(
        objects.services,
        vec![
            ServiceInput {
                key: ObjectKey::new("shop", "cart"),
                cluster_ips: vec![ip("10.96.0.20")],
                ports: vec![
                    ServicePort {
                        name: Some("api".into()),
                        port: 9090,
                        target: TargetPort::Named("grpc".into()),
                        protocol: AppProtocol::Grpc,
                    },
                    ServicePort {
                        name: Some("http-admin".into()),
                        port: 8080,
                        target: TargetPort::Number(8080),
                        protocol: AppProtocol::Http,
                    },
                    ServicePort {
                        name: Some("metrics".into()),
                        port: 9100,
                        target: TargetPort::Number(9100),
                        protocol: AppProtocol::Tcp,
                    },
                    // the UDP port `dns` is skipped
                ],
                selector: Some(labels(&[("app", "cart")])),
                visibility: Visibility::Namespaces(vec!["frontend".into(), "shop".into()]),
                limits: ConnectionLimits::default(),
            },
            ServiceInput {
                key: ObjectKey::new("shop", "cart-v2"),
                cluster_ips: vec![],
                ports: vec![
                    ServicePort {
                        name: Some("grpc".into()),
                        port: 9090,
                        target: TargetPort::Number(9090),
                        protocol: AppProtocol::Grpc,
                    },
                    ServicePort {
                        name: Some("http-admin".into()),
                        port: 8080,
                        target: TargetPort::Number(8080),
                        protocol: AppProtocol::Http,
                    },
                ],
                selector: Some(labels(&[("app", "cart"), ("version", "v2")])),
                visibility: Visibility::All,
                limits: ConnectionLimits::default(),
            },
        ]
    );

    assert_eq!(
        objects.pods,
        vec![
            PodInput {
                key: ObjectKey::new("shop", "cart-0"),
                ips: vec![ip("10.244.1.5")],
                node: Some("node-a".into()),
                service_account: Some("cart".into()),
                labels: labels(&[("app", "cart"), ("version", "v1")]),
                mode: None,
                named_ports: BTreeMap::from([("grpc".into(), 9090), ("http-admin".into(), 8080)]),
                ready: true,
            },
            PodInput {
                key: ObjectKey::new("shop", "cart-1"),
                ips: vec![ip("10.244.1.6")],
                node: Some("node-a".into()),
                service_account: Some("cart".into()),
                labels: labels(&[
                    ("app", "cart"),
                    ("version", "v2"),
                    ("switchyard.io/dataplane-mode", "ztunnel"),
                ]),
                mode: Some(DataplaneMode::Ztunnel),
                named_ports: BTreeMap::from([("grpc".into(), 9091)]),
                ready: false,
            },
        ]
    );

    assert_eq!(
        objects.endpoint_slices,
        vec![EndpointSliceInput {
            key: ObjectKey::new("shop", "cart-abc12"),
            service: "cart".into(),
            ports: vec![SlicePort {
                name: Some("api".into()),
                port: 9090
            }],
            endpoints: vec![
                SliceEndpoint {
                    addresses: vec![ip("10.244.1.5")],
                    ready: true,
                    node: Some("node-a".into()),
                    zone: Some("eu-west-1a".into()),
                    pod: Some("cart-0".into()),
                },
                SliceEndpoint {
                    addresses: vec![ip("192.168.7.1")],
                    ready: false,
                    node: None,
                    zone: None,
                    pod: None,
                },
            ],
        }]
    );

    let http = RouteInput {
        key: ObjectKey::new("shop", "cart-admin"),
        kind: RouteKind::Http,
        parents: vec![ParentRefInput {
            namespace: None,
            name: "cart".into(),
            port: Some(8080),
        }],
        rules: vec![
            RouteRuleInput {
                matches: vec![
                    RouteMatch {
                        path: Some(StringMatch::Prefix("/admin".into())),
                        headers: vec![HeaderMatch {
                            name: "x-canary".into(),
                            value: StringMatch::Exact("true".into()),
                        }],
                        method: Some("GET".into()),
                        query: vec![],
                    },
                    RouteMatch {
                        path: Some(StringMatch::Exact("/healthz".into())),
                        headers: vec![],
                        method: None,
                        query: vec![HeaderMatch {
                            name: "verbose".into(),
                            value: StringMatch::Regex("[01]".into()),
                        }],
                    },
                ],
                backends: vec![
                    BackendRefInput {
                        namespace: None,
                        name: "cart".into(),
                        port: Some(8080),
                        weight: 90,
                    },
                    BackendRefInput {
                        namespace: None,
                        name: "cart-v2".into(),
                        port: Some(8080),
                        weight: 10,
                    },
                ],
                timeout: Some(Duration::from_secs(10)),
                retry: Some(RetryPolicy {
                    attempts: 3,
                    codes: vec![502, 503],
                    backoff: Some(Duration::from_millis(100)),
                    per_try_timeout: Some(Duration::from_millis(2500)),
                }),
            },
            route_rule("cart", 8080),
        ],
        order: 0,
    };
    let grpc = RouteInput {
        key: ObjectKey::new("shop", "cart-grpc"),
        kind: RouteKind::Grpc,
        parents: vec![ParentRefInput {
            namespace: None,
            name: "cart".into(),
            port: Some(9090),
        }],
        rules: vec![
            RouteRuleInput {
                matches: vec![
                    RouteMatch {
                        path: Some(StringMatch::Exact("/shop.v1.Cart/AddItem".into())),
                        ..Default::default()
                    },
                    RouteMatch {
                        path: Some(StringMatch::Prefix("/shop.v1.Admin/".into())),
                        headers: vec![HeaderMatch {
                            name: "x-user".into(),
                            value: StringMatch::Regex("admin-.*".into()),
                        }],
                        ..Default::default()
                    },
                ],
                ..route_rule("cart-v2", 9090)
            },
            route_rule("cart", 9090),
        ],
        order: 1,
    };
    assert_eq!(objects.routes, vec![http, grpc]);

    assert_eq!(
        objects.authorization_policies,
        vec![AuthorizationPolicyInput {
            key: ObjectKey::new("shop", "cart-allow-frontend"),
            selector: Some(labels(&[("app", "cart")])),
            action: PolicyAction::Allow,
            rules: vec![PolicyRule {
                from: vec![PolicySource {
                    principals: vec!["spiffe://cluster.local/ns/frontend/sa/web".into()],
                    namespaces: vec!["frontend".into()],
                    ip_blocks: vec![
                        "10.244.0.0/16".parse().unwrap(),
                        "10.255.0.1/32".parse().unwrap()
                    ],
                    not_ip_blocks: vec!["10.244.9.0/24".parse().unwrap()],
                    ..Default::default()
                }],
                to: vec![PolicyOperation {
                    ports: vec![9090],
                    not_ports: vec![9100],
                    ..Default::default()
                }],
            }],
        }]
    );
    assert_eq!(
        objects.peer_authentications,
        vec![
            PeerAuthenticationInput {
                key: ObjectKey::new("switchyard-system", "default"),
                selector: None,
                mode: Some(MtlsMode::Strict),
                port_modes: BTreeMap::new(),
            },
            PeerAuthenticationInput {
                key: ObjectKey::new("shop", "cart-metrics"),
                selector: Some(labels(&[("app", "cart")])),
                mode: Some(MtlsMode::Strict),
                port_modes: BTreeMap::from([(9100, MtlsMode::Permissive)]),
            },
        ]
    );

    // And the model accepts them.
    let mesh = objects
        .to_builder(MeshConfig::default())
        .build(1)
        .expect("the sample set builds a mesh");
    assert_eq!(mesh.services.len(), 2);
}

#[test]
fn yaml_syntax_error_is_located_in_the_file_and_later_documents_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "# two good documents, a broken one, and one more bad one\n{}---\n{}---\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [c\n---\n\
         apiVersion: v1\nkind: Gadget\nmetadata:\n  name: d\n",
        ns("a"),
        ns("b")
    );
    write(dir.path(), "all.yaml", &text);
    let all = problems(dir.path());
    assert_eq!(all.len(), 2, "{all:#?}");

    let syntax = &all[0];
    assert!(syntax.origin.ends_with("all.yaml"), "{syntax}");
    assert_eq!(syntax.document, Some(2));
    // Line 1 is the comment, documents 0 and 1 end on lines 5 and 10, document 2 starts
    // with its `---` on line 11; the flow sequence opened on line 15 is still open where the
    // document ends, at the `---` of line 16.
    assert_eq!(
        (syntax.line, syntax.column),
        (Some(16), Some(1)),
        "{syntax}"
    );
    assert_eq!(
        syntax.message,
        "invalid yaml: did not find expected ',' or ']', while parsing a flow sequence at \
         line 15 column 9"
    );

    let unknown = &all[1];
    assert_eq!(unknown.document, Some(3));
    assert_eq!(unknown.line, Some(18), "{unknown}");
    assert_eq!(unknown.field.as_deref(), Some("kind"));
}

#[test]
fn unknown_kind_names_the_supported_kinds() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "x.yaml",
        &format!(
            "{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
            ns("a")
        ),
    );
    let p = only_problem(dir.path());
    assert_eq!((p.document, p.line, p.column), (Some(1), Some(7), Some(7)));
    assert_eq!(p.field.as_deref(), Some("kind"));
    assert!(
        p.message.starts_with(
            "unknown kind Deployment (apiVersion apps/v1): supported kinds are v1 Namespace"
        ),
        "{p}"
    );
}

#[test]
fn missing_service_port_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  \
         ports:\n  - name: http\n    targetPort: 8080\n",
    );
    let p = only_problem(dir.path());
    assert_eq!(p.field.as_deref(), Some("spec.ports[0].port"));
    assert_eq!(p.object.as_deref(), Some("Service shop/web"));
    assert_eq!((p.document, p.line), (Some(0), Some(8)));
    assert_eq!(p.message, "missing field `port`");
    assert_eq!(
        p.to_string(),
        format!(
            "{}: document 0 (line 8, column 5): Service shop/web: field spec.ports[0].port: \
             missing field `port`",
            dir.path().join("svc.yaml").display()
        )
    );
}

#[test]
fn wrong_type_names_the_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "pod.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: a\nspec:\n  \
             containers:\n  - name: c\n    ports:\n    - containerPort: [8080]\n",
            ns("a")
        ),
    );
    let p = only_problem(dir.path());
    assert_eq!(
        p.field.as_deref(),
        Some("spec.containers[0].ports[0].containerPort")
    );
    assert_eq!(
        (p.document, p.line, p.column),
        (Some(1), Some(15), Some(22))
    );
    assert!(p.message.starts_with("invalid type: sequence"), "{p}");
}

#[test]
fn bad_mode_label_names_the_label() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    \
         switchyard.io/dataplane-mode: istio\n",
    );
    let p = only_problem(dir.path());
    assert_eq!(
        p.field.as_deref(),
        Some(r#"metadata.labels["switchyard.io/dataplane-mode"]"#)
    );
    assert_eq!((p.document, p.line), (Some(0), Some(6)));
    assert_eq!(p.object.as_deref(), Some("Namespace shop"));
    assert!(
        p.message
            .contains("expected ztunnel, ebpf, sidecar or none"),
        "{p}"
    );
}

#[test]
fn duplicate_object_across_files_reports_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let svc = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n";
    write(dir.path(), "a.yaml", svc);
    write(dir.path(), "sub/b.yaml", &format!("{}---\n{svc}", ns("x")));
    // Same name, other kind or namespace: not duplicates.
    write(
        dir.path(),
        "c.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n  namespace: other\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n",
    );
    let p = only_problem(dir.path());
    assert!(p.origin.ends_with("sub/b.yaml"), "{p}");
    assert_eq!((p.document, p.line), (Some(1), Some(9)));
    assert_eq!(p.object.as_deref(), Some("ServiceAccount default/web"));
    let first = format!("{} document 0 line 4", dir.path().join("a.yaml").display());
    assert!(p.message.contains(&first), "{p}");
}

#[test]
fn invalid_cidr_in_authorization_policy() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "policy.yaml",
        "apiVersion: switchyard.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  \
         name: p\n  namespace: shop\nspec:\n  rules:\n  - from:\n    - source:\n        \
         ipBlocks:\n        - 10.0.0.0/8\n        - 10.1.0.0/40\n",
    );
    let p = only_problem(dir.path());
    assert_eq!(
        p.field.as_deref(),
        Some("spec.rules[0].from[0].source.ipBlocks[1]")
    );
    assert_eq!((p.line, p.column), (Some(12), Some(11)));
    assert!(
        p.message.contains("invalid ip block \"10.1.0.0/40\""),
        "{p}"
    );
}

#[test]
fn invalid_paths_and_methods_in_authorization_policy() {
    for (operation, field, text) in [
        ("paths: ['/a/*/b']", "paths[0]", "is not a path pattern"),
        (
            "notPaths: ['/ok', 'admin']",
            "notPaths[1]",
            "is not a path pattern",
        ),
        ("methods: [get]", "methods[0]", "is not an HTTP method"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "policy.yaml",
            &format!(
                "apiVersion: switchyard.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  \
                 name: p\n  namespace: shop\nspec:\n  rules:\n  - to:\n    - operation:\n        \
                 {operation}\n"
            ),
        );
        let p = only_problem(dir.path());
        assert_eq!(
            p.field.as_deref(),
            Some(format!("spec.rules[0].to[0].operation.{field}").as_str())
        );
        assert!(p.message.contains(text), "{p}");
    }
}

#[test]
fn every_problem_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        "apiVersion: v1\nkind: Nope\nmetadata:\n  name: a\n",
    );
    write(dir.path(), "b.yaml", "kind: [\n");
    write(
        dir.path(),
        "c.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  labels: {}\n",
    );
    let all = problems(dir.path());
    let files: Vec<_> = all
        .iter()
        .map(|p| Path::new(&p.origin).file_name().unwrap().to_owned())
        .collect();
    assert_eq!(files, ["a.yaml", "b.yaml", "c.yaml"], "{all:#?}");
    assert_eq!(all[2].field.as_deref(), Some("metadata.name"));
}

#[test]
fn missing_folder_is_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = only_problem(&dir.path().join("nope"));
    assert!(p.message.starts_with("cannot read directory"), "{p}");
    assert_eq!(p.document, None);
}

#[test]
fn hidden_temp_and_other_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &ns("a"));
    write(dir.path(), "b.yml", &ns("b"));
    for junk in [
        ".hidden.yaml",
        ".#a.yaml",
        "a.yaml~",
        ".a.yaml.swp",
        "notes.txt",
        ".git/config.yaml",
    ] {
        write(dir.path(), junk, "kind: [broken\n");
    }
    let objects = load_dir(dir.path()).unwrap_or_else(|p| panic!("{p:#?}"));
    let names: Vec<_> = objects.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn empty_documents_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "list.yaml",
        "---\n# nothing here\n---\napiVersion: v1\nkind: List\nitems:\n\
         - apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: x\n\
         - apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: y\n---\n",
    );
    let objects = load_dir(dir.path()).unwrap_or_else(|p| panic!("{p:#?}"));
    let names: Vec<_> = objects.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["x", "y"]);
}

#[test]
fn routes_are_ordered_by_creation_then_document() {
    let route = |name: &str, created: Option<&str>| {
        let ts = created
            .map(|t| format!("  creationTimestamp: \"{t}\"\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  \
             name: {name}\n{ts}spec: {{}}\n---\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "r.yaml",
        &[
            route("new", None),
            route("late", Some("2024-05-01T00:00:00Z")),
            route("early", Some("2023-01-01T00:00:00Z")),
            route("newer", None),
        ]
        .concat(),
    );
    let objects = load_dir(dir.path()).unwrap_or_else(|p| panic!("{p:#?}"));
    let order: Vec<_> = objects
        .routes
        .iter()
        .map(|r| (r.key.name.as_str(), r.order))
        .collect();
    assert_eq!(order, [("new", 2), ("late", 1), ("early", 0), ("newer", 3)]);
}

#[test]
fn documents_split_at_marker_lines() {
    let docs = split_documents("a: 1\n---\nb: 2\n--- \nc: 3\n---x: 4\n");
    let got: Vec<_> = docs
        .iter()
        .map(|d| (d.index, d.line_offset, d.text))
        .collect();
    assert_eq!(
        got,
        [
            (0, 0, "a: 1\n"),
            (1, 1, "---\nb: 2\n"),
            (2, 3, "--- \nc: 3\n---x: 4\n")
        ]
    );

    // Comments before the first marker belong to the first document.
    let docs = split_documents("# header\n\n---\na: 1\n---\nb: 2");
    let got: Vec<_> = docs.iter().map(|d| (d.index, d.line_offset)).collect();
    assert_eq!(got, [(0, 0), (1, 4)]);

    assert_eq!(split_documents("").len(), 1);
}

fn loaded(names: &[&str]) -> Load {
    Load {
        files: 1,
        result: Ok(k8s::collect_objects(names.iter().map(|n| {
            K8sObject::Namespace(NamespaceInput {
                name: n.to_string(),
                mode: None,
            })
        }))),
    }
}

fn failed(message: &str) -> Load {
    Load {
        files: 1,
        result: Err(vec![problem("x.yaml", message.into())]),
    }
}

#[test]
fn reports_only_changes() {
    let (tx, rx) = watch::channel(SourceReport::default());
    let mut reported = Reported::default();

    reported.apply(loaded(&["a"]), &tx);
    assert_eq!(rx.borrow().revision, 1);
    reported.apply(loaded(&["a"]), &tx);
    assert_eq!(rx.borrow().revision, 1, "same objects: no report");

    reported.apply(failed("bad"), &tx);
    assert_eq!(rx.borrow().revision, 2);
    assert_eq!(
        rx.borrow().objects.as_ref().unwrap().namespaces[0].name,
        "a"
    );
    reported.apply(failed("bad"), &tx);
    assert_eq!(rx.borrow().revision, 2, "same problems: no report");
    reported.apply(failed("worse"), &tx);
    assert_eq!(rx.borrow().revision, 3, "other problems: report");

    reported.apply(loaded(&["a"]), &tx);
    let report = rx.borrow().clone();
    assert_eq!(report.revision, 4, "recovered, even with the same objects");
    assert!(report.problems.is_empty());
}

#[test]
fn first_report_of_a_failure_has_no_objects() {
    let (tx, rx) = watch::channel(SourceReport::default());
    Reported::default().apply(failed("bad"), &tx);
    let report = rx.borrow().clone();
    assert_eq!(report.revision, 1);
    assert!(report.objects.is_none());
    assert_eq!(report.problems.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Watching

const WAIT: Duration = Duration::from_secs(5);

async fn wait_for(
    rx: &mut watch::Receiver<SourceReport>,
    what: &str,
    f: impl FnMut(&SourceReport) -> bool,
) -> SourceReport {
    let found = match tokio::time::timeout(WAIT, rx.wait_for(f)).await {
        Ok(Ok(report)) => Some(report.clone()),
        Ok(Err(_)) => panic!("source stopped while waiting for {what}"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "timed out after {WAIT:?} waiting for {what}; last report: {:#?}",
            *rx.borrow()
        )
    })
}

/// Sorted names of the reported namespaces.
fn namespace_names(report: &SourceReport) -> Vec<String> {
    let mut names: Vec<String> = report
        .objects
        .as_ref()
        .map(|o| o.namespaces.iter().map(|n| n.name.clone()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn start(
    dir: &Path,
) -> (
    watch::Receiver<SourceReport>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(SourceReport::default());
    let shutdown = CancellationToken::new();
    let source: Box<dyn Source> = Box::new(DirectorySource::new(dir, Duration::from_millis(50)));
    assert!(source.describe().starts_with("directory "));
    let task = tokio::spawn(source.run(tx, shutdown.clone()));
    (rx, shutdown, task)
}

async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("source stops on shutdown")
        .expect("source task does not panic");
}

#[tokio::test]
async fn watcher_follows_changes_and_keeps_last_good_objects() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &ns("a"));
    let (mut rx, shutdown, task) = start(dir.path());

    let first = wait_for(&mut rx, "the first report", |r| r.revision >= 1).await;
    assert_eq!(namespace_names(&first), ["a"]);
    assert!(first.problems.is_empty());

    write(dir.path(), "nested/b.yaml", &ns("b"));
    wait_for(&mut rx, "namespace b", |r| namespace_names(r) == ["a", "b"]).await;

    write(
        dir.path(),
        "c.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: [\n",
    );
    let broken = wait_for(&mut rx, "a problem", |r| !r.problems.is_empty()).await;
    assert_eq!(
        namespace_names(&broken),
        ["a", "b"],
        "last good objects kept"
    );
    assert!(
        broken.problems[0].origin.ends_with("c.yaml"),
        "{:?}",
        broken.problems
    );

    write(dir.path(), "c.yaml", &ns("c"));
    let fixed = wait_for(&mut rx, "recovery", |r| r.problems.is_empty()).await;
    assert_eq!(namespace_names(&fixed), ["a", "b", "c"]);
    assert!(fixed.revision > broken.revision);

    fs::remove_file(dir.path().join("a.yaml")).unwrap();
    wait_for(&mut rx, "a removed", |r| namespace_names(r) == ["b", "c"]).await;

    stop(shutdown, task).await;
}

#[tokio::test]
async fn watcher_waits_for_a_missing_or_replaced_folder() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("manifests");
    let (mut rx, shutdown, task) = start(&dir);

    let first = wait_for(&mut rx, "the first report", |r| r.revision >= 1).await;
    assert!(first.objects.is_none());
    assert!(
        first.problems[0]
            .message
            .starts_with("cannot read directory")
    );

    write(&dir, "a.yaml", &ns("a"));
    wait_for(&mut rx, "the folder's objects", |r| {
        namespace_names(r) == ["a"]
    })
    .await;

    // Deleted: a problem, the last good objects stay.
    fs::remove_dir_all(&dir).unwrap();
    let gone = wait_for(&mut rx, "the folder gone", |r| !r.problems.is_empty()).await;
    assert_eq!(namespace_names(&gone), ["a"]);

    // Created again: watched again.
    write(&dir, "b.yaml", &ns("b"));
    wait_for(&mut rx, "the new folder's objects", |r| {
        namespace_names(r) == ["b"]
    })
    .await;
    write(&dir, "c.yaml", &ns("c"));
    wait_for(&mut rx, "a change in the new folder", |r| {
        namespace_names(r) == ["b", "c"]
    })
    .await;

    stop(shutdown, task).await;
}
