//! The user's manifests, as the local cluster reads them: Pods and Deployments become pods to
//! run (their containers' commands are what runs; images are ignored), Services are read for
//! the endpoint controller, and every other document goes to the control plane unchanged.
//!
//! Pods and Deployments are read through `k8s-openapi`'s types so a field means what it
//! means in Kubernetes; a bad document is reported with its file, document number and field.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

/// Namespace of objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One problem in the manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestProblem {
    /// The file.
    pub file: PathBuf,
    /// 1-based document number within the file (0 when the file itself is the problem).
    pub document: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.document == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{} (document {}): {}",
                self.file.display(),
                self.document,
                self.message
            )
        }
    }
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EnvSource {
    /// A literal value.
    Value(String),
    /// The downward API: `metadata.name`, `metadata.namespace`, `status.podIP`,
    /// `spec.nodeName`, `spec.serviceAccountName` or `status.hostIP`.
    Field(String),
}

/// The downward-API fields the local cluster fills.
pub const SUPPORTED_FIELDS: [&str; 6] = [
    "metadata.name",
    "metadata.namespace",
    "status.podIP",
    "status.hostIP",
    "spec.nodeName",
    "spec.serviceAccountName",
];

/// A container: a command and its environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerSpec {
    /// Name.
    pub name: String,
    /// `command` followed by `args`.
    pub argv: Vec<String>,
    /// Environment, in order.
    pub env: Vec<(String, EnvSource)>,
    /// Declared ports: name (if any) and number.
    pub ports: Vec<(Option<String>, u16)>,
}

/// Restart policy of a pod's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Always restart (the default).
    Always,
    /// Restart after a failure only.
    OnFailure,
    /// Never restart.
    Never,
}

/// What a pod runs: the part of a Pod (or a Deployment's template) the cluster uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodTemplate {
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// Init containers: run one after the other, each to success, before the containers.
    pub init_containers: Vec<ContainerSpec>,
    /// Containers.
    pub containers: Vec<ContainerSpec>,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
}

impl PodTemplate {
    /// A stable hash, to tell whether a template changed.
    pub fn hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        Hash::hash(self, &mut h);
        h.finish()
    }

    /// The port number a Service's named target port resolves to in this pod.
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|(n, _)| n.as_deref() == Some(name))
            .map(|(_, p)| *p)
    }
}

/// A bare Pod of the manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodManifest {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What it runs.
    pub template: PodTemplate,
}

/// A Deployment of the manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentManifest {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Replicas (1 when unset).
    pub replicas: u32,
    /// What each pod runs.
    pub template: PodTemplate,
}

/// A Service port, as the endpoint controller needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// Port name.
    pub name: Option<String>,
    /// Service port.
    pub port: u16,
    /// Target port: a number, or a container port name.
    pub target: IntOrString,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `appProtocol`.
    pub app_protocol: Option<String>,
}

/// A Service with a selector, as the endpoint controller needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pod selector.
    pub selector: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<ServicePortSpec>,
}

/// Everything read from the manifests folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// Documents for the control plane, unchanged (Services get a cluster IP later).
    pub passthrough: Vec<Value>,
    /// Bare Pods.
    pub pods: Vec<PodManifest>,
    /// Deployments.
    pub deployments: Vec<DeploymentManifest>,
    /// Services with a selector (the endpoint controller writes their slices).
    pub services: Vec<ServiceSpec>,
    /// Services the manifests already carry EndpointSlices for (`namespace/name`).
    pub services_with_slices: BTreeSet<String>,
}

impl Manifests {
    /// The labels of the `v1` Namespace `name` among the documents (empty when the manifests
    /// do not declare it).
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        self.passthrough
            .iter()
            .find(|v| {
                v.get("apiVersion").and_then(Value::as_str) == Some("v1")
                    && v.get("kind").and_then(Value::as_str) == Some("Namespace")
                    && v.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
            })
            .and_then(|v| v.pointer("/metadata/labels"))
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reads every `.yaml`/`.yml` file under `dir` (hidden files and folders skipped).
pub fn load(dir: &Path) -> Result<Manifests, Vec<ManifestProblem>> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    collect_files(dir, &mut files, &mut problems);
    files.sort();
    let mut out = Manifests::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => read_text(&file, &text, &mut out, &mut problems),
            Err(e) => problems.push(ManifestProblem {
                file,
                document: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut seen = BTreeSet::new();
    let names = out
        .pods
        .iter()
        .map(|p| ("Pod", &p.namespace, &p.name))
        .chain(
            out.deployments
                .iter()
                .map(|d| ("Deployment", &d.namespace, &d.name)),
        );
    for (kind, ns, name) in names {
        if !seen.insert((kind, ns.clone(), name.clone())) {
            problems.push(ManifestProblem {
                file: dir.to_path_buf(),
                document: 0,
                message: format!("{kind} {ns}/{name} is declared twice"),
            });
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<ManifestProblem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(ManifestProblem {
                file: dir.to_path_buf(),
                document: 0,
                message: format!("cannot read the manifests folder: {e}"),
            });
            return;
        }
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files, problems);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            files.push(path);
        }
    }
}

/// Reads one file's documents into `out`.
pub fn read_text(
    file: &Path,
    text: &str,
    out: &mut Manifests,
    problems: &mut Vec<ManifestProblem>,
) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let problem = |message: String| ManifestProblem {
            file: file.to_path_buf(),
            document,
            message,
        };
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                problems.push(problem(format!("not valid YAML: {e}")));
                // The YAML stream cannot be read past a syntax error.
                break;
            }
        };
        if let Err(message) = read_document(value, out) {
            problems.push(problem(message));
        }
    }
}

fn read_document(value: Value, out: &mut Manifests) -> Result<(), String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Pod") => {
            let pod: corev1::Pod = typed(value)?;
            let (namespace, name) = namespace_and_name(&pod.metadata)?;
            let spec = pod.spec.ok_or("spec: missing")?;
            let template = template(pod.metadata.labels.unwrap_or_default(), spec, "spec")?;
            out.pods.push(PodManifest {
                namespace,
                name,
                template,
            });
        }
        ("apps/v1", "Deployment") => {
            let deployment: Deployment = typed(value)?;
            let (namespace, name) = namespace_and_name(&deployment.metadata)?;
            let spec = deployment.spec;
            let replicas = u32::try_from(spec.replicas.unwrap_or(1))
                .map_err(|_| "spec.replicas: must not be negative".to_string())?;
            let pod_spec = spec.template.spec.ok_or("spec.template.spec: missing")?;
            let labels = spec
                .template
                .metadata
                .and_then(|m| m.labels)
                .unwrap_or_default();
            let selects = spec.selector.match_labels.unwrap_or_default();
            if let Some((k, v)) = selects.iter().find(|(k, v)| labels.get(*k) != Some(*v)) {
                return Err(format!(
                    "spec.selector.matchLabels: {k}={v} does not match the template's labels"
                ));
            }
            let template = template(labels, pod_spec, "spec.template.spec")?;
            out.deployments.push(DeploymentManifest {
                namespace,
                name,
                replicas,
                template,
            });
        }
        ("v1", "Service") => {
            let svc: corev1::Service = typed(value.clone())?;
            let (namespace, name) = namespace_and_name(&svc.metadata)?;
            let spec = svc.spec.unwrap_or_default();
            if let Some(selector) = spec.selector.filter(|s| !s.is_empty()) {
                let ports = spec
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let port = u16::try_from(p.port)
                            .map_err(|_| format!("spec.ports[{i}].port: out of range"))?;
                        Ok(ServicePortSpec {
                            name: p.name,
                            port,
                            target: p.target_port.unwrap_or(IntOrString::Int(p.port)),
                            protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
                            app_protocol: p.app_protocol,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                out.services.push(ServiceSpec {
                    namespace,
                    name,
                    selector,
                    ports,
                });
            }
            out.passthrough.push(value);
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let ns = value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_NAMESPACE);
            if let Some(svc) = value
                .pointer("/metadata/labels/kubernetes.io~1service-name")
                .and_then(Value::as_str)
            {
                out.services_with_slices.insert(format!("{ns}/{svc}"));
            }
            out.passthrough.push(value);
        }
        ("", _) | (_, "") => {
            return Err("apiVersion and kind are required".to_string());
        }
        _ => out.passthrough.push(value),
    }
    Ok(())
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn namespace_and_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(String, String), String> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name: missing")?;
    let valid = is_dns_label;
    if !valid(&name) {
        return Err(format!(
            "metadata.name: {name:?} must be 1 to 63 characters of a-z, 0-9 and '-'"
        ));
    }
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if !valid(&namespace) {
        return Err(format!(
            "metadata.namespace: {namespace:?} must be 1 to 63 characters of a-z, 0-9 and '-'"
        ));
    }
    Ok((namespace, name))
}

/// A Kubernetes DNS label: 1 to 63 characters of `a-z`, `0-9` and `-`. Names become file,
/// namespace and cgroup names, so nothing else (no `/`, no `.`) may pass.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn template(
    labels: BTreeMap<String, String>,
    spec: corev1::PodSpec,
    at: &str,
) -> Result<PodTemplate, String> {
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => RestartPolicy::Always,
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        Some(other) => {
            return Err(format!(
                "{at}.restartPolicy: {other:?} is not Always, OnFailure or Never"
            ));
        }
    };
    if spec.containers.is_empty() {
        return Err(format!(
            "{at}.containers: a pod needs at least one container"
        ));
    }
    let mut names = BTreeSet::new();
    let init_containers = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| container(c, &format!("{at}.initContainers[{i}]"), &mut names))
        .collect::<Result<Vec<_>, String>>()?;
    let containers = spec
        .containers
        .into_iter()
        .enumerate()
        .map(|(i, c)| container(c, &format!("{at}.containers[{i}]"), &mut names))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(PodTemplate {
        labels,
        service_account: spec
            .service_account_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        init_containers,
        containers,
        restart_policy,
    })
}

/// One container (or init container) at field path `at`; `names` holds the names seen so far
/// in the pod, which must be unique across both lists.
fn container(
    c: corev1::Container,
    at: &str,
    names: &mut BTreeSet<String>,
) -> Result<ContainerSpec, String> {
    if !is_dns_label(&c.name) {
        return Err(format!(
            "{at}.name: {:?} must be 1 to 63 characters of a-z, 0-9 and '-'",
            c.name
        ));
    }
    if !names.insert(c.name.clone()) {
        return Err(format!("{at}.name: {:?} is used twice", c.name));
    }
    let argv: Vec<String> = c
        .command
        .unwrap_or_default()
        .into_iter()
        .chain(c.args.unwrap_or_default())
        .collect();
    if argv.is_empty() {
        return Err(format!(
            "{at}.command: missing; the local cluster runs commands, not images \
             (give the container a command, e.g. [switchyard-echo, serve])"
        ));
    }
    let env = c
        .env
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, e)| {
            let source = match (e.value, e.value_from) {
                (Some(v), None) => EnvSource::Value(v),
                (None, Some(from)) => {
                    let path = from
                        .field_ref
                        .map(|f| f.field_path)
                        .filter(|p| SUPPORTED_FIELDS.contains(&p.as_str()))
                        .ok_or_else(|| {
                            format!(
                                "{at}.env[{j}].valueFrom: only fieldRef to {} is supported",
                                SUPPORTED_FIELDS.join(", ")
                            )
                        })?;
                    EnvSource::Field(path)
                }
                (None, None) => EnvSource::Value(String::new()),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{at}.env[{j}]: value and valueFrom are mutually exclusive"
                    ));
                }
            };
            Ok((e.name, source))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let ports = c
        .ports
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, p)| {
            u16::try_from(p.container_port)
                .ok()
                .filter(|n| *n > 0)
                .map(|n| (p.name, n))
                .ok_or_else(|| format!("{at}.ports[{j}].containerPort: out of range"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ContainerSpec {
        name: c.name,
        argv,
        env,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Manifests, Vec<ManifestProblem>> {
        let mut out = Manifests::default();
        let mut problems = Vec::new();
        read_text(Path::new("m.yaml"), text, &mut out, &mut problems);
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    const DEMO: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: demo}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        image: ignored
        command: [switchyard-echo, serve]
        args: [--http, "0.0.0.0:8080"]
        env:
        - {name: MODE, value: demo}
        - name: MY_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - {name: main, command: [sleep, infinity]}
"#;

    #[test]
    fn reads_pods_deployments_and_services() {
        let m = read(DEMO).unwrap();
        assert_eq!(m.passthrough.len(), 2, "Namespace and Service go through");
        let d = &m.deployments[0];
        assert_eq!((d.namespace.as_str(), d.replicas), ("demo", 3));
        let c = &d.template.containers[0];
        assert_eq!(
            c.argv,
            ["switchyard-echo", "serve", "--http", "0.0.0.0:8080"]
        );
        assert_eq!(
            c.env,
            vec![
                ("MODE".into(), EnvSource::Value("demo".into())),
                ("MY_IP".into(), EnvSource::Field("status.podIP".into()))
            ]
        );
        assert_eq!(d.template.named_port("http"), Some(8080));
        assert_eq!(d.template.service_account, "echo");
        let p = &m.pods[0];
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("default", "client")
        );
        assert_eq!(p.template.service_account, "default");
        let s = &m.services[0];
        assert_eq!(s.ports[0].target, IntOrString::String("http".into()));
    }

    #[test]
    fn bad_documents_name_the_field() {
        let no_command = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: nginx}]\n";
        let e = read(no_command).unwrap_err();
        assert!(
            e[0].message.contains("spec.containers[0].command: missing"),
            "{e:?}"
        );
        let bad_type = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, command: [a], ports: [{containerPort: x}]}]\n";
        let e = read(bad_type).unwrap_err();
        assert!(
            e[0].message
                .contains("spec.containers[0].ports[0].containerPort"),
            "{e:?}"
        );
        let selector = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: y}}\n    spec: {containers: [{name: c, command: [a]}]}\n";
        let e = read(selector).unwrap_err();
        assert!(e[0].message.contains("does not match"), "{e:?}");
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n";
        let e = read(yaml).unwrap_err();
        assert!(e[0].message.contains("not valid YAML"), "{e:?}");
        assert_eq!(
            e[0].to_string().split(':').next(),
            Some("m.yaml (document 1)")
        );
        let path = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: ../../etc/x, command: [a]}]}\n";
        let e = read(path).unwrap_err();
        assert!(e[0].message.contains("spec.containers[0].name"), "{e:?}");
        let field = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    command: [a]\n    env: [{name: X, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}]\n";
        let e = read(field).unwrap_err();
        assert!(e[0].message.contains("only fieldRef"), "{e:?}");
    }

    #[test]
    fn twice_declared_pods_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, command: [a]}]}\n";
        std::fs::write(dir.path().join("a.yaml"), pod).unwrap();
        std::fs::write(dir.path().join("b.yml"), pod).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e[0].message.contains("declared twice"), "{e:?}");
    }
}
