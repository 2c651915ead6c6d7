//! Kubernetes manifest builders and a watched manifest directory for tests: each builder
//! returns one YAML document, so tests read like the objects they create.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A temporary manifest directory.
#[derive(Debug)]
pub struct ManifestDir {
    dir: tempfile::TempDir,
}

impl ManifestDir {
    /// An empty directory.
    pub fn new() -> anyhow::Result<Self> {
        Ok(ManifestDir {
            dir: tempfile::Builder::new()
                .prefix("switchyard-manifests")
                .tempdir()?,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `file` (atomically: write to a hidden temp file, then rename).
    pub fn write(&self, file: &str, docs: &[String]) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(file);
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, docs.join("---\n"))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Writes raw text to `file`.
    pub fn write_raw(&self, file: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(file);
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Removes `file`.
    pub fn remove(&self, file: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.dir.path().join(file))?;
        Ok(())
    }
}

/// A Namespace, with the dataplane-mode label when `mode` is given.
pub fn namespace(name: &str, mode: Option<&str>) -> String {
    let mut s = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    if let Some(m) = mode {
        let _ = write!(s, "  labels:\n    switchyard.io/dataplane-mode: {m}\n");
    }
    s
}

/// A service port: name, port, target port, appProtocol.
#[derive(Debug, Clone)]
pub struct Port<'a> {
    /// Name.
    pub name: &'a str,
    /// Service port.
    pub port: u16,
    /// Target port.
    pub target: u16,
    /// appProtocol.
    pub app_protocol: Option<&'a str>,
}

/// An HTTP port.
pub fn http(port: u16, target: u16) -> Port<'static> {
    Port {
        name: "http",
        port,
        target,
        app_protocol: None,
    }
}

/// A gRPC port.
pub fn grpc(port: u16, target: u16) -> Port<'static> {
    Port {
        name: "grpc",
        port,
        target,
        app_protocol: Some("grpc"),
    }
}

/// A TCP port.
pub fn tcp(port: u16, target: u16) -> Port<'static> {
    Port {
        name: "tcp",
        port,
        target,
        app_protocol: None,
    }
}

/// A Service selecting `app=<name>`.
pub fn service(ns: &str, name: &str, vip: &str, ports: &[Port<'_>]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {vip}\n  selector:\n    app: {name}\n  ports:\n"
    );
    for p in ports {
        let _ = writeln!(
            s,
            "  - name: {}\n    port: {}\n    targetPort: {}",
            p.name, p.port, p.target
        );
        if let Some(a) = p.app_protocol {
            let _ = writeln!(s, "    appProtocol: {a}");
        }
    }
    s
}

/// A Service with these annotations.
pub fn annotated_service(
    ns: &str,
    name: &str,
    vip: &str,
    ports: &[Port<'_>],
    annotations: &[(&str, &str)],
) -> String {
    let mut meta = format!("  namespace: {ns}\n  annotations:\n");
    for (k, v) in annotations {
        let _ = writeln!(meta, "    {k}: {v:?}");
    }
    service(ns, name, vip, ports).replacen(&format!("  namespace: {ns}\n"), &meta, 1)
}

/// A Service visible only in its own namespace.
pub fn private_service(ns: &str, name: &str, vip: &str, ports: &[Port<'_>]) -> String {
    annotated_service(ns, name, vip, ports, &[("switchyard.io/export-to", ".")])
}

/// A running Pod with `app=<app>`.
pub fn pod(ns: &str, name: &str, app: &str, ip: &str) -> String {
    pod_on(ns, name, app, ip, None)
}

/// A running Pod on a node.
pub fn pod_on(ns: &str, name: &str, app: &str, ip: &str, node: Option<&str>) -> String {
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\nspec:\n  serviceAccountName: {app}\n{node}  containers:\n  - name: app\n    image: app\nstatus:\n  podIP: {ip}\n"
    )
}

/// A Node.
pub fn node(name: &str, ip: &str, zone: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/region: local\n    topology.kubernetes.io/zone: {zone}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
    )
}

/// An HTTPRoute on a Service port splitting traffic between `(service, port, weight)`s.
pub fn http_route(
    ns: &str,
    name: &str,
    parent: &str,
    port: u16,
    backends: &[(&str, u16, u32)],
) -> String {
    let mut s = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  parentRefs:\n  - group: \"\"\n    kind: Service\n    name: {parent}\n    port: {port}\n  rules:\n  - backendRefs:\n"
    );
    for (svc, p, w) in backends {
        let _ = writeln!(s, "    - name: {svc}\n      port: {p}\n      weight: {w}");
    }
    s
}

/// An AuthorizationPolicy allowing `principals` to reach pods with `app=<app>`.
pub fn allow_policy(ns: &str, name: &str, app: &str, principals: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: switchyard.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  selector:\n    matchLabels:\n      app: {app}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals:\n"
    );
    for p in principals {
        let _ = writeln!(s, "        - {p}");
    }
    s
}
