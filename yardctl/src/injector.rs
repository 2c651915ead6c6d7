//! What `yardctl dev up` adds to each pod, as the sidecar injector webhook and the CNI
//! plug-in do in Kubernetes. A pod whose effective dataplane mode is `sidecar` (its own
//! `switchyard.io/dataplane-mode` label, else its Namespace's, else the control plane's
//! `default_mode`, decided by [`DataplaneMode::resolve`] as the control plane decides it)
//! gets:
//! - `switchyard-sidecar init` before its init containers (the capture rules);
//! - `switchyard-sidecar proxy` beside its containers, reaching the control plane over TLS
//!   (`:15012`, trusting the cluster CA's root file) with a bootstrap token for the pod's
//!   service account, minted here from the cluster CA's token key and written `0600` under
//!   `<state>/tokens/`.
//!
//! Pods in the other modes get nothing yet: the ztunnel and eBPF dataplanes have no local
//! cluster processes so far, so their traffic is direct.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use switchyard_local_cluster::addressing::CONTROL_PLANE_IP;
use switchyard_local_cluster::supervisor::XDS_TLS_PORT;
use switchyard_local_cluster::{DataplaneHooks, HookError, PodState, ProcessSpec};
use switchyard_model::{DATAPLANE_MODE_LABEL, DataplaneMode};

/// The sidecar binary (found on the pod's `PATH`, which holds the workspace binaries).
const SIDECAR: &str = "switchyard-sidecar";
/// Lifetime of a minted bootstrap token: it is used for the first certificate only
/// (renewal presents the current certificate), but a pod restarted later needs it again.
const TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The local cluster's dataplane injector.
#[derive(Debug, Clone)]
pub struct Injector {
    ca_dir: PathBuf,
    tokens_dir: PathBuf,
    default_mode: DataplaneMode,
    trust_domain: String,
    control_plane: SocketAddr,
}

impl Injector {
    /// An injector for the cluster whose state lives in `state_dir` and whose control plane
    /// runs with `settings` (`key=value`, as given to `--set`; the last one of a key wins).
    pub fn new(state_dir: &std::path::Path, settings: &[String]) -> anyhow::Result<Self> {
        let setting = |key: &str| {
            settings
                .iter()
                .rev()
                .find_map(|s| s.strip_prefix(key)?.strip_prefix('='))
        };
        let default_mode = match setting("default_mode") {
            Some(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("--set default_mode: {e}"))?,
            None => switchyard_model::MeshConfig::default().default_mode,
        };
        Ok(Injector {
            ca_dir: state_dir.join("ca"),
            tokens_dir: state_dir.join(switchyard_local_cluster::down::TOKENS_DIR),
            default_mode,
            trust_domain: setting("trust_domain")
                .unwrap_or("cluster.local")
                .to_string(),
            control_plane: SocketAddr::from((CONTROL_PLANE_IP, XDS_TLS_PORT)),
        })
    }

    /// The pod's effective mode; a label that is not a mode is an error naming it.
    pub fn mode(
        &self,
        pod: &PodState,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<DataplaneMode, HookError> {
        let parse = |what: &str, labels: &BTreeMap<String, String>| {
            labels
                .get(DATAPLANE_MODE_LABEL)
                .map(|v| v.parse::<DataplaneMode>())
                .transpose()
                .map_err(|e| HookError(format!("{what}: {e}")))
        };
        let pod_label = parse(&format!("pod {}", pod.key()), &pod.labels)?;
        let ns_label = parse(&format!("namespace {}", pod.namespace), namespace_labels)?;
        Ok(DataplaneMode::resolve(pod_label, ns_label, self.default_mode).0)
    }

    /// Mints the pod's bootstrap token into a `0600` file; returns its path.
    fn token_file(&self, pod: &PodState) -> Result<PathBuf, HookError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let authority = switchyard_ca::token::TokenAuthority::load_or_create(&self.ca_dir)
            .map_err(|e| HookError(format!("the cluster CA's token key: {e}")))?;
        let token = authority.create(&pod.namespace, &pod.service_account, None, TOKEN_TTL);
        std::fs::create_dir_all(&self.tokens_dir)
            .map_err(|e| HookError(format!("creating {}: {e}", self.tokens_dir.display())))?;
        let path = self
            .tokens_dir
            .join(format!("{}_{}_{}.token", pod.namespace, pod.name, pod.uid));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(token.as_bytes())
        };
        write().map_err(|e| HookError(format!("writing {}: {e}", path.display())))?;
        Ok(path)
    }
}

impl DataplaneHooks for Injector {
    fn pod_init(
        &self,
        pod: &PodState,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ProcessSpec>, HookError> {
        Ok(match self.mode(pod, namespace_labels)? {
            DataplaneMode::Sidecar => vec![ProcessSpec {
                name: "switchyard-init".into(),
                argv: vec![SIDECAR.into(), "init".into()],
                env: Vec::new(),
            }],
            _ => Vec::new(),
        })
    }

    fn pod_processes(
        &self,
        pod: &PodState,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ProcessSpec>, HookError> {
        if self.mode(pod, namespace_labels)? != DataplaneMode::Sidecar {
            return Ok(Vec::new());
        }
        let token = self.token_file(pod)?;
        let root = self.ca_dir.join(switchyard_ca::ROOT_CERT_FILE);
        let cp = self.control_plane.to_string();
        let argv = [
            SIDECAR,
            "proxy",
            "--token-file",
            &token.display().to_string(),
            "--ca-root-file",
            &root.display().to_string(),
            "--ca-address",
            &cp,
            "--xds-address",
            &cp,
            "--trust-domain",
            &self.trust_domain,
            "--namespace",
            &pod.namespace,
            "--service-account",
            &pod.service_account,
            "--pod-name",
            &pod.name,
            "--pod-ip",
            &pod.ip.to_string(),
        ]
        .map(String::from)
        .to_vec();
        Ok(vec![ProcessSpec {
            name: "switchyard-proxy".into(),
            argv,
            env: Vec::new(),
        }])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pod(labels: &[(&str, &str)]) -> PodState {
        PodState {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "u1".into(),
            node: "node-0".into(),
            ip: "10.244.0.5".parse().unwrap(),
            netns: "n".into(),
            veth: "v".into(),
            cgroup: "/c".into(),
            owner: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "web".into(),
            containers: BTreeMap::new(),
            created_unix_ms: 0,
        }
    }

    fn ns(mode: Option<&str>) -> BTreeMap<String, String> {
        mode.map(|m| (DATAPLANE_MODE_LABEL.to_string(), m.to_string()))
            .into_iter()
            .collect()
    }

    #[test]
    fn sidecar_mode_gets_init_and_proxy_with_token_and_tls() {
        let dir = tempfile::tempdir().unwrap();
        let inj = Injector::new(dir.path(), &["default_mode=none".into()]).unwrap();
        let p = pod(&[]);
        let labels = ns(Some("sidecar"));
        let init = inj.pod_init(&p, &labels).unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].argv, ["switchyard-sidecar", "init"]);
        let procs = inj.pod_processes(&p, &labels).unwrap();
        assert_eq!(procs.len(), 1);
        let argv = &procs[0].argv;
        let arg = |flag: &str| {
            let i = argv.iter().position(|a| a == flag).unwrap();
            argv[i + 1].clone()
        };
        assert_eq!(arg("--xds-address"), "10.255.0.2:15012");
        assert_eq!(arg("--pod-ip"), "10.244.0.5");
        assert_eq!(arg("--service-account"), "web");
        assert!(arg("--ca-root-file").ends_with("ca/root-cert.pem"));
        let token_path = PathBuf::from(arg("--token-file"));
        let token = std::fs::read_to_string(&token_path).unwrap();
        // The token is one the CA accepts for this pod's service account.
        let claims = switchyard_ca::token::TokenAuthority::load_or_create(&dir.path().join("ca"))
            .unwrap()
            .verify(&token)
            .unwrap();
        assert_eq!((claims.ns.as_str(), claims.sa.as_str()), ("shop", "web"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn pod_label_overrides_namespace_and_default_applies_last() {
        let dir = tempfile::tempdir().unwrap();
        let inj = Injector::new(dir.path(), &["default_mode=sidecar".into()]).unwrap();
        // Pod label `none` beats the namespace's `sidecar`.
        let p = pod(&[(DATAPLANE_MODE_LABEL, "none")]);
        assert!(
            inj.pod_processes(&p, &ns(Some("sidecar")))
                .unwrap()
                .is_empty()
        );
        // Namespace `ztunnel` beats the default `sidecar`: nothing injected.
        assert!(
            inj.pod_init(&pod(&[]), &ns(Some("ztunnel")))
                .unwrap()
                .is_empty()
        );
        // No labels: the default (`sidecar`) applies.
        assert_eq!(inj.pod_processes(&pod(&[]), &ns(None)).unwrap().len(), 1);
        // Without a setting, the control plane's default (ztunnel) applies.
        let plain = Injector::new(dir.path(), &[]).unwrap();
        assert!(
            plain
                .pod_processes(&pod(&[]), &ns(None))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_labels_and_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let inj = Injector::new(dir.path(), &[]).unwrap();
        let err = inj
            .pod_init(&pod(&[(DATAPLANE_MODE_LABEL, "sidcar")]), &ns(None))
            .unwrap_err();
        assert!(
            err.0.contains("pod shop/web-1") && err.0.contains("sidcar"),
            "{err}"
        );
        let err = inj.pod_init(&pod(&[]), &ns(Some("istio"))).unwrap_err();
        assert!(
            err.0.contains("namespace shop") && err.0.contains("istio"),
            "{err}"
        );
        let err = Injector::new(dir.path(), &["default_mode=x".into()]).unwrap_err();
        assert!(err.to_string().contains("default_mode"), "{err}");
    }
}
