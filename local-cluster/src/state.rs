//! The state file: what a local cluster is made of, written *before* each piece is created so
//! that `down` can remove everything even when the supervisor died half-way.
//!
//! The supervisor is its only writer; `status`, `exec` and `down` read it. Writes go to a
//! temporary file that is renamed over the old one, so readers never see half a file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// File name of the state inside the state folder.
pub const STATE_FILE: &str = "state.json";
/// Default parent of state folders: tmpfs, so a reboot (which also drops every namespace)
/// drops the state with it.
pub const DEFAULT_STATE_ROOT: &str = "/run/switchyard/dev";

/// The state folder of cluster `name` under the default root.
pub fn default_state_dir(name: &str) -> PathBuf {
    PathBuf::from(DEFAULT_STATE_ROOT).join(name)
}

/// Where a cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `up` is creating it.
    Creating,
    /// Every node and pod of the manifests is up.
    Ready,
}

/// A local cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster name.
    pub name: String,
    /// Life phase.
    pub phase: Phase,
    /// The state folder (state file, generated manifests, logs, CA, control socket).
    pub state_dir: PathBuf,
    /// The manifests folder the supervisor follows.
    pub manifests: PathBuf,
    /// Folder of the Switchyard binaries the cluster runs.
    pub bin_dir: PathBuf,
    /// The supervisor's process id.
    pub supervisor_pid: Option<u32>,
    /// Every named network namespace that was created or is about to be.
    pub netns: BTreeSet<String>,
    /// The host's veth into the underlay.
    pub host_link: String,
    /// The cluster's cgroup folder (every process of the cluster lives below it).
    pub cgroup: PathBuf,
    /// The cluster's bpffs folder (pins of the eBPF dataplane).
    pub bpffs: PathBuf,
    /// Nodes.
    pub nodes: Vec<NodeState>,
    /// The control plane.
    pub control_plane: ControlPlaneState,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, PodState>,
    /// Service cluster IPs handed out, by `namespace/name`.
    pub services: BTreeMap<String, Ipv4Addr>,
    /// Per node index, the last pod address handed out.
    pub last_pod_ip: BTreeMap<u8, Ipv4Addr>,
    /// The supervisor's Prometheus endpoint (`/metrics`), once it listens.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// What was wrong with the manifests at the last read (empty when they were fine); the
    /// cluster keeps running what it had before.
    pub manifest_problems: Vec<String>,
    /// Pods (by the `namespace/name` of their Pod or Deployment) that could not be started
    /// at the last try, and why.
    #[serde(default)]
    pub pod_problems: BTreeMap<String, String>,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// `node-<index>`.
    pub name: String,
    /// 1-based index.
    pub index: u8,
    /// Address on the underlay.
    pub ip: Ipv4Addr,
    /// Pod range.
    pub pod_cidr: ipnet::Ipv4Net,
    /// Network namespace name.
    pub netns: String,
    /// Node-level processes (dataplane agents), by name.
    pub processes: BTreeMap<String, ProcessState>,
}

/// The control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneState {
    /// Address on the underlay.
    pub ip: Ipv4Addr,
    /// Network namespace name.
    pub netns: String,
    /// The `switchyard` process.
    pub process: ProcessState,
}

/// One supervised process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// Process id while it runs.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How it last ended, in words (`exit status: 1`), if it has.
    pub last_exit: Option<String>,
    /// The command line.
    pub argv: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Unique per incarnation (a pod deleted and made again gets a new one).
    pub uid: String,
    /// Node name.
    pub node: String,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// Network namespace name.
    pub netns: String,
    /// Its veth end in the node's namespace.
    pub veth: String,
    /// Its cgroup leaf.
    pub cgroup: PathBuf,
    /// The Deployment that owns it, if any.
    pub owner: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
    /// Containers (and any dataplane process next to them), by name.
    pub containers: BTreeMap<String, ProcessState>,
    /// Unix time of creation, milliseconds (scaling down removes the newest first).
    pub created_unix_ms: u64,
}

impl PodState {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether it has containers and every one runs.
    pub fn ready(&self) -> bool {
        !self.containers.is_empty() && self.containers.values().all(|c| c.pid.is_some())
    }
}

impl ClusterState {
    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    /// Writes the state (temporary file + rename).
    pub fn save(&self) -> Result<(), ClusterError> {
        let path = self.path();
        let tmp = self.state_dir.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(|e| ClusterError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| ClusterError::Io {
                what: format!("writing {}", path.display()),
                source,
            })
    }

    /// Writes the state file for the first time; fails when one exists already (another
    /// `up` of the same cluster got there first).
    pub fn save_new(&self) -> Result<(), ClusterError> {
        let path = self.path();
        match std::fs::File::create_new(&path) {
            Ok(_) => self.save(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(ClusterError::Leftovers {
                    name: self.name.clone(),
                    state: path,
                })
            }
            Err(source) => Err(ClusterError::Io {
                what: format!("creating {}", path.display()),
                source,
            }),
        }
    }

    /// Reads the state of the cluster whose folder is `state_dir`; `None` when there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, ClusterError> {
        let path = state_dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ClusterError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| ClusterError::State {
                path,
                message: e.to_string(),
            })
    }

    /// Finds a pod by `name` (unique across namespaces) or `namespace/name`.
    pub fn find_pod(&self, name: &str) -> Result<&PodState, ClusterError> {
        if let Some(p) = self.pods.get(name) {
            return Ok(p);
        }
        let matches: Vec<&PodState> = self.pods.values().filter(|p| p.name == name).collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(ClusterError::NoSuchPod {
                pod: name.to_string(),
                known: self.pods.keys().cloned().collect(),
            }),
            many => Err(ClusterError::AmbiguousPod {
                pod: name.to_string(),
                candidates: many.iter().map(|p| p.key()).collect(),
            }),
        }
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every process id the cluster runs (control plane, node agents, containers).
    pub fn pids(&self) -> Vec<u32> {
        let nodes = self.nodes.iter().flat_map(|n| n.processes.values());
        let pods = self.pods.values().flat_map(|p| p.containers.values());
        std::iter::once(&self.control_plane.process)
            .chain(nodes)
            .chain(pods)
            .filter_map(|p| p.pid)
            .collect()
    }
}
