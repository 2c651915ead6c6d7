//! What the harness writes for the control plane, as an API server would hold it after
//! kubelet, CNI and the endpoint controller did their part: Nodes, Pods with status (node,
//! IP, Ready), Services with a cluster IP, and one EndpointSlice per selecting Service.
//!
//! The control plane watches the folder these land in (`<state>/cluster/`); each file is
//! written to a hidden temporary name and renamed, so it never reads half a file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::ClusterError;
use crate::manifests::{PodTemplate, ServiceSpec};
use crate::state::{NodeState, PodState};

/// `endpointslice.kubernetes.io/managed-by` value of the slices the harness writes.
pub const MANAGED_BY: &str = "local-cluster.switchyard.io";

/// A v1 Node.
pub fn node(node: &NodeState) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {"kubernetes.io/hostname": node.name},
        },
        "spec": {"podCIDR": node.pod_cidr.to_string()},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
        },
    })
}

/// A v1 Pod with the status kubelet would report.
pub fn pod(pod: &PodState, template: &PodTemplate, node_ip: Ipv4Addr) -> Value {
    let containers: Vec<Value> = template
        .containers
        .iter()
        .map(|c| {
            let ports: Vec<Value> = c
                .ports
                .iter()
                .map(|(name, port)| match name {
                    Some(n) => json!({"name": n, "containerPort": port}),
                    None => json!({"containerPort": port}),
                })
                .collect();
            json!({"name": c.name, "image": "local", "command": c.argv, "ports": ports})
        })
        .collect();
    let mut metadata = json!({
        "name": pod.name,
        "namespace": pod.namespace,
        "uid": pod.uid,
        "labels": pod.labels,
    });
    if let Some(owner) = &pod.owner {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": owner, "uid": owner,
        }]);
    }
    let ready = if pod.ready() { "True" } else { "False" };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": pod.node,
            "serviceAccountName": pod.service_account,
            "containers": containers,
        },
        "status": {
            "phase": "Running",
            "hostIP": node_ip.to_string(),
            "podIP": pod.ip.to_string(),
            "podIPs": [{"ip": pod.ip.to_string()}],
            "conditions": [{"type": "Ready", "status": ready}],
        },
    })
}

/// The Service document with its cluster IP filled in when the manifest left it out.
pub fn service_with_ip(mut doc: Value, ip: Ipv4Addr) -> Value {
    let has_ip = doc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    if !has_ip && let Some(spec) = doc.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("clusterIP".into(), json!(ip.to_string()));
        spec.insert("clusterIPs".into(), json!([ip.to_string()]));
    }
    doc
}

/// The EndpointSlice of `service` over `pods` (the pods of its namespace its selector
/// picks), each with its template for named target ports.
pub fn endpoint_slice(service: &ServiceSpec, pods: &[(&PodState, &PodTemplate)]) -> Value {
    let first = pods.first().map(|(_, t)| *t);
    let ports: Vec<Value> = service
        .ports
        .iter()
        .filter_map(|p| {
            let number = match &p.target {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                // A named port resolves per pod; a slice carries one number, taken from the
                // first pod (all pods of a Deployment agree).
                IntOrString::String(name) => first.and_then(|t| t.named_port(name)),
            }?;
            let mut port = json!({"port": number, "protocol": p.protocol});
            if let Some(n) = &p.name {
                port["name"] = json!(n);
            }
            if let Some(a) = &p.app_protocol {
                port["appProtocol"] = json!(a);
            }
            Some(port)
        })
        .collect();
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(p, _)| {
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": p.ready()},
                "nodeName": p.node,
                "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-local", service.name),
            "namespace": service.namespace,
            "labels": {
                "kubernetes.io/service-name": service.name,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// Whether `labels` carry every pair of `selector`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Writes documents as one multi-document YAML file, atomically; unchanged content is not
/// rewritten (the control plane would re-read it for nothing).
pub fn write_documents(path: &Path, docs: &[Value]) -> Result<bool, ClusterError> {
    let mut text = String::new();
    for doc in docs {
        let yaml = serde_yaml_ng::to_string(doc).map_err(|e| ClusterError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        text.push_str("---\n");
        text.push_str(&yaml);
    }
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| ClusterError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::{ContainerSpec, RestartPolicy, ServicePortSpec};

    fn template() -> PodTemplate {
        PodTemplate {
            labels: BTreeMap::from([("app".into(), "echo".into())]),
            service_account: "echo".into(),
            init_containers: vec![],
            containers: vec![ContainerSpec {
                name: "echo".into(),
                argv: vec!["switchyard-echo".into(), "serve".into()],
                env: vec![],
                ports: vec![(Some("http".into()), 8080)],
            }],
            restart_policy: RestartPolicy::Always,
        }
    }

    fn pod_state(name: &str, ip: [u8; 4], running: bool) -> PodState {
        PodState {
            namespace: "demo".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: "node-1".into(),
            ip: Ipv4Addr::from(ip),
            netns: format!("sy-t-pod-demo-{name}"),
            veth: "veth0".into(),
            cgroup: "/sys/fs/cgroup/switchyard/t/pods/x".into(),
            owner: Some("echo".into()),
            labels: template().labels,
            service_account: "echo".into(),
            containers: BTreeMap::from([(
                "echo".into(),
                crate::state::ProcessState {
                    pid: running.then_some(42),
                    ..Default::default()
                },
            )]),
            created_unix_ms: 0,
        }
    }

    #[test]
    fn pods_and_slices_carry_what_the_control_plane_reads() {
        let t = template();
        let a = pod_state("echo-a", [10, 244, 1, 2], true);
        let b = pod_state("echo-b", [10, 244, 1, 3], false);
        let doc = pod(&a, &t, Ipv4Addr::new(10, 255, 0, 11));
        assert_eq!(doc["status"]["podIP"], "10.244.1.2");
        assert_eq!(doc["spec"]["nodeName"], "node-1");
        assert_eq!(doc["status"]["conditions"][0]["status"], "True");
        assert_eq!(doc["metadata"]["ownerReferences"][0]["kind"], "Deployment");
        let svc = ServiceSpec {
            namespace: "demo".into(),
            name: "echo".into(),
            selector: t.labels.clone(),
            ports: vec![ServicePortSpec {
                name: Some("http".into()),
                port: 80,
                target: IntOrString::String("http".into()),
                protocol: "TCP".into(),
                app_protocol: Some("http".into()),
            }],
        };
        let slice = endpoint_slice(&svc, &[(&a, &t), (&b, &t)]);
        assert_eq!(slice["ports"][0]["port"], 8080, "named port resolved");
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "echo"
        );
        assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(slice["endpoints"][1]["conditions"]["ready"], false);
        assert!(selects(&t.labels, &a.labels));
        assert!(!selects(
            &BTreeMap::from([("app".into(), "other".into())]),
            &a.labels
        ));
    }

    #[test]
    fn services_get_a_cluster_ip_only_when_they_have_none() {
        let ip = Ipv4Addr::new(10, 96, 0, 10);
        let without = json!({"kind": "Service", "spec": {"ports": []}});
        assert_eq!(
            service_with_ip(without, ip)["spec"]["clusterIP"],
            "10.96.0.10"
        );
        let with = json!({"kind": "Service", "spec": {"clusterIP": "10.96.5.5"}});
        assert_eq!(service_with_ip(with, ip)["spec"]["clusterIP"], "10.96.5.5");
    }

    #[test]
    fn unchanged_files_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.yaml");
        let docs = [json!({"kind": "Pod"})];
        assert!(write_documents(&path, &docs).unwrap());
        assert!(!write_documents(&path, &docs).unwrap());
        assert!(write_documents(&path, &[]).unwrap());
        assert!(!dir.path().join(".pods.yaml.tmp").exists());
    }
}
