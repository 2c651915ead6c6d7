//! The supervisor: brings a cluster up, then plays kubelet, CNI and endpoint controller for
//! as long as it lives.
//!
//! It is the single writer of the cluster's state: one task owns [`ClusterState`] and reacts
//! to events (the manifests folder changed, a process ended, a restart is due, a control
//! request came in). Every change goes to the state file before it is made, and to the
//! control plane's folder (`<state>/cluster/`) right after.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::addressing::{self, CONTROL_PLANE_IP};
use crate::control::{self, Reply, Request};
use crate::manifests::{self, EnvSource, Manifests, PodTemplate, RestartPolicy};
use crate::metrics::SupervisorMetrics;
use crate::state::{ClusterState, ControlPlaneState, NodeState, Phase, PodState, ProcessState};
use crate::{ClusterError, cgroup, ip, objects, topology};

/// xDS port of the control plane (plaintext).
pub const XDS_PORT: u16 = 15010;
/// xDS and CA port of the control plane over TLS.
pub const XDS_TLS_PORT: u16 = 15012;
/// Admin port of the control plane.
pub const ADMIN_PORT: u16 = 15014;
/// Longest an init step may run.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a deleted pod's processes get between SIGTERM and SIGKILL.
pub const TERMINATION_GRACE: Duration = Duration::from_secs(2);
/// How long `up` waits for the control plane's `/readyz`.
pub const CONTROL_PLANE_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Quiet time after a change in the manifests folder before it is read.
const MANIFEST_DEBOUNCE: Duration = Duration::from_millis(50);
/// The manifests folder is read again this often even when no change was seen.
const RESYNC: Duration = Duration::from_secs(5);

/// What `up` needs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Cluster name.
    pub name: String,
    /// Node count.
    pub nodes: u8,
    /// The manifests folder.
    pub manifests: PathBuf,
    /// The state folder.
    pub state_dir: PathBuf,
    /// Folder of the Switchyard binaries (`switchyard`, `switchyard-echo`, ...); put first
    /// on every process's `PATH`.
    pub bin_dir: PathBuf,
    /// The program that starts processes inside the cluster: run as
    /// `<launcher> dev enter --netns <path> --cgroup <dir> -- <argv>` (`yardctl`).
    pub launcher: PathBuf,
    /// Extra `--set key=value` settings for the control plane.
    pub control_plane_settings: Vec<String>,
    /// Where the supervisor serves `/metrics` (port 0: any free port; the state file says
    /// which).
    pub metrics_address: SocketAddr,
}

/// A process a dataplane runs in a node's or a pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Name (unique within its node or pod).
    pub name: String,
    /// Command line.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// Why a dataplane hook could not say what to run for a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

/// Where the dataplanes join the local cluster: processes per node (ztunnel, eBPF agent)
/// and per pod beside its containers (a sidecar), as an injector webhook and a DaemonSet
/// would add them. The default, [`NoMesh`], runs none.
pub trait DataplaneHooks: Send + Sync + fmt::Debug {
    /// Processes to run in `node`'s namespace once it is up.
    fn node_processes(&self, node: &NodeState) -> Vec<ProcessSpec> {
        let _ = node;
        Vec::new()
    }
    /// Steps to run to completion in `pod`'s namespace and cgroup before its init containers
    /// and containers (a dataplane's capture set-up). `namespace_labels` are the labels of
    /// the pod's Namespace in the manifests.
    fn pod_init(
        &self,
        pod: &PodState,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ProcessSpec>, HookError> {
        let _ = (pod, namespace_labels);
        Ok(Vec::new())
    }
    /// Processes to run in `pod`'s namespace beside its containers.
    fn pod_processes(
        &self,
        pod: &PodState,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ProcessSpec>, HookError> {
        let _ = (pod, namespace_labels);
        Ok(Vec::new())
    }
}

/// No dataplane: pods talk to each other directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMesh;

impl DataplaneHooks for NoMesh {}

/// Who a supervised process belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    ControlPlane,
    Node(String),
    Pod { key: String, uid: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProcessKey {
    owner: Owner,
    name: String,
}

/// How to (re)start one process.
#[derive(Debug, Clone)]
struct Launch {
    netns: String,
    cgroup: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    restart: RestartPolicy,
    started: Instant,
}

#[derive(Debug)]
enum Event {
    ManifestsChanged,
    Exited {
        key: ProcessKey,
        pid: u32,
        status: String,
        success: bool,
    },
    Restart(ProcessKey),
    Control(Request, oneshot::Sender<Reply>),
    /// A deleted pod's processes, cgroup and namespace are gone (or could not all be
    /// removed: `down` will).
    TornDown {
        pod: String,
        netns: String,
        error: Option<String>,
    },
}

/// Reports each step of `up` (one line per step); silent once the cluster is ready.
pub type Progress = Box<dyn FnMut(&str) + Send>;

/// Checks what `up` needs before anything is created: root, the name, the node count,
/// cgroup2, no live or crashed cluster of the same name, no overlap with the host's routes,
/// and manifests that read.
pub fn preflight(opts: &UpOptions) -> Result<Manifests, ClusterError> {
    if !crate::is_root() {
        return Err(ClusterError::NotRoot);
    }
    addressing::check_name(&opts.name)?;
    addressing::check_nodes(opts.nodes)?;
    cgroup::cgroup2_mount()?;
    if let Some(old) = ClusterState::load(&opts.state_dir)? {
        return Err(
            match old
                .supervisor_pid
                .filter(|pid| crate::is_supervisor(*pid, &opts.name))
            {
                Some(pid) => ClusterError::AlreadyUp {
                    name: opts.name.clone(),
                    pid,
                },
                None => ClusterError::Leftovers {
                    name: opts.name.clone(),
                    state: old.path(),
                },
            },
        );
    }
    topology::check_host_ranges()?;
    manifests::load(&opts.manifests).map_err(|problems| ClusterError::Manifests {
        problems: problems.iter().map(ToString::to_string).collect(),
    })
}

/// Brings the cluster up, then supervises it until the process is killed (`down` kills it).
/// Returns only on failure.
pub async fn run(
    opts: UpOptions,
    hooks: Arc<dyn DataplaneHooks>,
    progress: Progress,
) -> Result<std::convert::Infallible, ClusterError> {
    let manifests = preflight(&opts)?;
    let (events, rx) = mpsc::channel(1024);
    let mut sup = Supervisor::new(opts, hooks, manifests, events, progress)?;
    sup.bring_up().await?;
    sup.serve(rx).await
}

struct Supervisor {
    opts: UpOptions,
    state: ClusterState,
    manifests: Manifests,
    hooks: Arc<dyn DataplaneHooks>,
    events: mpsc::Sender<Event>,
    templates: HashMap<String, PodTemplate>,
    launches: HashMap<ProcessKey, Launch>,
    /// Bare pods deleted by request, with the template they had: not made again until the
    /// manifest changes, as in Kubernetes.
    deleted_bare: HashMap<String, PodTemplate>,
    progress: Option<Progress>,
    metrics: SupervisorMetrics,
    started: Instant,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.opts.name)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    fn new(
        opts: UpOptions,
        hooks: Arc<dyn DataplaneHooks>,
        manifests: Manifests,
        events: mpsc::Sender<Event>,
        progress: Progress,
    ) -> Result<Self, ClusterError> {
        let mount = cgroup::cgroup2_mount()?;
        let nodes: Vec<NodeState> = (1..=opts.nodes)
            .map(|index| {
                let name = addressing::node_name(index);
                NodeState {
                    netns: addressing::netns::node(&opts.name, &name),
                    name,
                    index,
                    ip: addressing::node_ip(index),
                    pod_cidr: addressing::pod_cidr(index),
                    processes: BTreeMap::new(),
                }
            })
            .collect();
        let mut netns: std::collections::BTreeSet<String> =
            nodes.iter().map(|n| n.netns.clone()).collect();
        netns.insert(addressing::netns::underlay(&opts.name));
        netns.insert(addressing::netns::control_plane(&opts.name));
        let state = ClusterState {
            name: opts.name.clone(),
            phase: Phase::Creating,
            state_dir: opts.state_dir.clone(),
            manifests: opts.manifests.clone(),
            bin_dir: opts.bin_dir.clone(),
            supervisor_pid: Some(std::process::id()),
            netns,
            host_link: addressing::host_link(&opts.name),
            cgroup: cgroup::cluster_dir(&mount, &opts.name),
            bpffs: addressing::bpffs_dir(&opts.name),
            nodes,
            control_plane: ControlPlaneState {
                ip: CONTROL_PLANE_IP,
                netns: addressing::netns::control_plane(&opts.name),
                process: ProcessState::default(),
            },
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            last_pod_ip: BTreeMap::new(),
            metrics_address: None,
            manifest_problems: Vec::new(),
            pod_problems: BTreeMap::new(),
        };
        Ok(Self {
            opts,
            state,
            manifests,
            hooks,
            events,
            templates: HashMap::new(),
            launches: HashMap::new(),
            deleted_bare: HashMap::new(),
            progress: Some(progress),
            metrics: SupervisorMetrics::default(),
            started: Instant::now(),
            _watcher: None,
        })
    }

    /// Writes the state file and updates the metrics from it.
    fn persist(&self) -> Result<(), ClusterError> {
        self.metrics.observe(&self.state);
        self.state.save()
    }

    fn step(&mut self, line: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        tracing::info!(cluster = %self.opts.name, elapsed_s = elapsed, "{line}");
        if let Some(p) = self.progress.as_mut() {
            p(&format!("[{elapsed:5.2}s] {line}"));
        }
    }

    fn cluster_dir(&self) -> PathBuf {
        self.opts.state_dir.join("cluster")
    }

    fn logs_dir(&self) -> PathBuf {
        self.opts.state_dir.join("logs")
    }

    async fn bring_up(&mut self) -> Result<(), ClusterError> {
        for dir in [
            self.opts.state_dir.clone(),
            self.cluster_dir(),
            self.logs_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| ClusterError::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
        }
        // Recorded before anything exists, so `down` finds it all whatever happens next. The
        // first write fails when a state file exists: two `up` of one name cannot both pass.
        self.state.save_new()?;
        let own = self.state.cgroup.join("supervisor");
        cgroup::create(&own)?;
        cgroup::join(&own, std::process::id())?;

        self.state.metrics_address = Some(self.metrics.serve(self.opts.metrics_address).await?);
        self.persist()?;
        let name = self.opts.name.clone();
        self.step(&format!(
            "underlay {} and control-plane namespace",
            addressing::UNDERLAY
        ));
        topology::create_underlay(&name)?;
        topology::create_control_plane(&name, &self.state.nodes)?;
        for node in self.state.nodes.clone() {
            topology::create_node(&name, &node, &self.state.nodes)?;
            self.step(&format!(
                "{}: namespace, underlay {}, pod bridge {}",
                node.name, node.ip, node.pod_cidr
            ));
        }
        topology::create_host_link(&name)?;
        self.step(&format!(
            "host link {} -> control plane {CONTROL_PLANE_IP}",
            self.state.host_link
        ));

        self.write_cluster_objects()?;
        self.start_control_plane()?;
        self.wait_control_plane().await?;
        self.step(&format!(
            "control plane ready: xDS {CONTROL_PLANE_IP}:{XDS_PORT} (TLS :{XDS_TLS_PORT}), admin http://{CONTROL_PLANE_IP}:{ADMIN_PORT}"
        ));

        for node in self.state.nodes.clone() {
            for spec in self.hooks.node_processes(&node) {
                self.start_node_process(&node, spec)?;
            }
        }
        self.converge()?;
        self.wait_model().await?;
        self.state.phase = Phase::Ready;
        self.persist()?;
        let pods = self.state.pods.len();
        let nodes = self.state.nodes.len();
        self.step(&format!("ready: {nodes} nodes, {pods} pods"));
        self.progress = None;
        Ok(())
    }

    async fn serve(
        mut self,
        mut rx: mpsc::Receiver<Event>,
    ) -> Result<std::convert::Infallible, ClusterError> {
        self._watcher = Some(self.watch_manifests()?);
        self.listen_control()?;
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = resync.tick() => Some(Event::ManifestsChanged),
            };
            let Some(event) = event else {
                return Err(ClusterError::Supervisor("event channel closed".into()));
            };
            if let Err(e) = self.handle(event, &mut rx).await {
                tracing::error!(error = %e, "supervisor step failed; the cluster keeps running");
            }
        }
    }

    async fn handle(
        &mut self,
        event: Event,
        rx: &mut mpsc::Receiver<Event>,
    ) -> Result<(), ClusterError> {
        match event {
            Event::ManifestsChanged => {
                tokio::time::sleep(MANIFEST_DEBOUNCE).await;
                // Coalesce a burst of change events; keep anything else for later.
                let mut others = Vec::new();
                while let Ok(e) = rx.try_recv() {
                    if !matches!(e, Event::ManifestsChanged) {
                        others.push(e);
                    }
                }
                // Each queued event is handled even when the reload (or another event) fails:
                // a lost `Exited` would leave a dead container counted as running.
                if let Err(e) = self.reload() {
                    tracing::error!(error = %e, "reading the manifests failed; the cluster keeps running");
                }
                for e in others {
                    if let Err(e) = Box::pin(self.handle(e, rx)).await {
                        tracing::error!(error = %e, "supervisor step failed; the cluster keeps running");
                    }
                }
            }
            Event::Exited {
                key,
                pid,
                status,
                success,
            } => self.exited(key, pid, status, success)?,
            Event::Restart(key) => self.restart(key)?,
            Event::TornDown { pod, netns, error } => match error {
                None => {
                    self.state.netns.remove(&netns);
                    self.persist()?;
                }
                Some(e) => {
                    tracing::error!(%pod, %netns, error = %e, "tearing the pod down failed; `down` removes what is left");
                }
            },
            Event::Control(request, reply) => {
                let answer = match self.control(request) {
                    Ok(()) => Reply::Ok,
                    Err(e) => Reply::Error(e.to_string()),
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    fn control(&mut self, request: Request) -> Result<(), ClusterError> {
        match request {
            Request::DeletePod { pod } => {
                let key = self.state.find_pod(&pod)?.key();
                if let Some(p) = self.state.pods.get(&key)
                    && p.owner.is_none()
                    && let Some(t) = self.templates.get(&key)
                {
                    self.deleted_bare.insert(key.clone(), t.clone());
                }
                self.delete_pod(&key)?;
                self.converge()
            }
            Request::Reload => self.reload(),
        }
    }

    /// Reads the manifests folder; on problems, says what they are and keeps running what
    /// it had.
    fn reload(&mut self) -> Result<(), ClusterError> {
        match manifests::load(&self.opts.manifests) {
            Ok(m) => {
                if !self.state.manifest_problems.is_empty() {
                    tracing::info!("the manifests read cleanly again");
                }
                self.state.manifest_problems.clear();
                self.manifests = m;
                self.converge()
            }
            Err(problems) => {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                if problems != self.state.manifest_problems {
                    for p in &problems {
                        tracing::warn!(problem = %p, "manifest problem; keeping the pods and objects of the last good read");
                    }
                }
                self.state.manifest_problems = problems;
                self.persist()
            }
        }
    }

    /// Makes the pods match the manifests: bare Pods one for one, Deployments by count.
    fn converge(&mut self) -> Result<(), ClusterError> {
        let manifests = self.manifests.clone();
        // Bare pods.
        let desired: HashMap<String, &manifests::PodManifest> = manifests
            .pods
            .iter()
            .map(|p| (format!("{}/{}", p.namespace, p.name), p))
            .collect();
        self.deleted_bare
            .retain(|key, t| desired.get(key).is_some_and(|p| p.template == *t));
        let stale: Vec<String> = self
            .state
            .pods
            .values()
            .filter(|p| p.owner.is_none())
            .filter(|p| {
                desired
                    .get(&p.key())
                    .is_none_or(|d| self.templates.get(&p.key()) != Some(&d.template))
            })
            .map(PodState::key)
            .collect();
        for key in stale {
            self.delete_pod(&key)?;
        }
        for (key, pod) in &desired {
            if !self.state.pods.contains_key(key) && !self.deleted_bare.contains_key(key) {
                self.try_create_pod(key, &pod.namespace, &pod.name, None, &pod.template);
            }
        }
        // Deployments.
        let deployments: HashMap<(String, String), &manifests::DeploymentManifest> = manifests
            .deployments
            .iter()
            .map(|d| ((d.namespace.clone(), d.name.clone()), d))
            .collect();
        let orphans: Vec<String> = self
            .state
            .pods
            .values()
            .filter(|p| {
                p.owner.as_ref().is_some_and(|o| {
                    deployments
                        .get(&(p.namespace.clone(), o.clone()))
                        .is_none_or(|d| self.templates.get(&p.key()) != Some(&d.template))
                })
            })
            .map(PodState::key)
            .collect();
        for key in orphans {
            self.delete_pod(&key)?;
        }
        let mut sorted: Vec<_> = deployments.values().collect();
        sorted.sort_by_key(|d| (d.namespace.clone(), d.name.clone()));
        for d in sorted {
            let mut owned: Vec<&PodState> = self
                .state
                .pods
                .values()
                .filter(|p| p.namespace == d.namespace && p.owner.as_deref() == Some(&d.name))
                .collect();
            owned.sort_by_key(|p| (p.created_unix_ms, p.name.clone()));
            let have = owned.len();
            let want = d.replicas as usize;
            if have > want {
                let extra: Vec<String> = owned[want..].iter().map(|p| p.key()).collect();
                for key in extra {
                    self.delete_pod(&key)?;
                }
            }
            for _ in have..want {
                let name = self.fresh_pod_name(&d.namespace, &d.name);
                let owner = format!("{}/{}", d.namespace, d.name);
                if !self.try_create_pod(
                    &owner,
                    &d.namespace,
                    &name,
                    Some(d.name.clone()),
                    &d.template,
                ) {
                    // The next read of the manifests tries again.
                    break;
                }
            }
        }
        self.write_cluster_objects()?;
        self.persist()
    }

    /// Creates a pod; a failure (an init step that fails, say) is recorded under `owner`
    /// (`namespace/name` of the Pod or Deployment) for `dev status` and does not stop the
    /// rest of the cluster. Returns whether the pod started.
    fn try_create_pod(
        &mut self,
        owner: &str,
        namespace: &str,
        name: &str,
        deployment: Option<String>,
        template: &PodTemplate,
    ) -> bool {
        match self.create_pod(namespace, name, deployment, template.clone()) {
            Ok(()) => {
                self.state.pod_problems.remove(owner);
                true
            }
            Err(e) => {
                tracing::error!(%owner, error = %e, "pod not started; retried at the next read of the manifests");
                self.state
                    .pod_problems
                    .insert(owner.to_string(), e.to_string());
                false
            }
        }
    }

    fn fresh_pod_name(&self, namespace: &str, deployment: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut rng = rand::rng();
        let base: String = deployment.chars().take(57).collect();
        loop {
            let suffix: String = (0..5)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect();
            let name = format!("{base}-{suffix}");
            if !self.state.pods.contains_key(&format!("{namespace}/{name}")) {
                return name;
            }
        }
    }

    fn create_pod(
        &mut self,
        namespace: &str,
        name: &str,
        owner: Option<String>,
        template: PodTemplate,
    ) -> Result<(), ClusterError> {
        // The node with the fewest pods.
        let node = self
            .state
            .nodes
            .iter()
            .min_by_key(|n| {
                let count = self
                    .state
                    .pods
                    .values()
                    .filter(|p| p.node == n.name)
                    .count();
                (count, n.index)
            })
            .cloned()
            .ok_or_else(|| ClusterError::Supervisor("the cluster has no nodes".into()))?;
        let used: Vec<Ipv4Addr> = self.state.pods.values().map(|p| p.ip).collect();
        let ip = addressing::next_pod_ip(
            node.index,
            self.state.last_pod_ip.get(&node.index).copied(),
            &used,
        )
        .ok_or_else(|| ClusterError::Exhausted {
            what: format!("pod range {} of {}", node.pod_cidr, node.name),
        })?;
        self.state.last_pod_ip.insert(node.index, ip);
        let uid = format!("{:08x}", rand::rng().random::<u32>());
        let key = format!("{namespace}/{name}");
        let pod = PodState {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.clone(),
            node: node.name.clone(),
            ip,
            netns: addressing::netns::pod(&self.opts.name, namespace, name, &uid),
            veth: addressing::pod_veth(namespace, name, &uid),
            cgroup: self
                .state
                .cgroup
                .join("pods")
                .join(format!("{namespace}_{name}_{uid}")),
            owner,
            labels: template.labels.clone(),
            service_account: template.service_account.clone(),
            containers: BTreeMap::new(),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        };
        self.state.netns.insert(pod.netns.clone());
        self.state.pods.insert(key.clone(), pod.clone());
        self.templates.insert(key.clone(), template.clone());
        self.persist()?;
        if let Err(e) = self.start_pod(&pod, &node, &template) {
            // Undo: out of the model and torn down, so the next converge makes it afresh.
            tracing::error!(pod = %key, error = %e, "pod could not be started; removing it");
            self.delete_pod(&key)?;
            return Err(e);
        }
        self.step(&format!("pod {key} on {} {ip}", node.name));
        Ok(())
    }

    /// Makes a recorded pod's network and cgroup and starts its processes.
    fn start_pod(
        &mut self,
        pod: &PodState,
        node: &NodeState,
        template: &PodTemplate,
    ) -> Result<(), ClusterError> {
        let key = pod.key();
        let (namespace, name) = (pod.namespace.as_str(), pod.name.as_str());
        topology::create_pod_network(pod, node)?;
        cgroup::create(&pod.cgroup)?;
        let owner_key = Owner::Pod {
            key: key.clone(),
            uid: pod.uid.clone(),
        };
        let base_env = pod_env(pod, node, self.path_env());
        let spec_of = |c: &manifests::ContainerSpec| {
            let mut env = base_env.clone();
            env.extend(c.env.iter().map(|(k, v)| {
                let value = match v {
                    EnvSource::Value(v) => v.clone(),
                    EnvSource::Field(f) => field(pod, node, f),
                };
                (k.clone(), value)
            }));
            ProcessSpec {
                name: c.name.clone(),
                argv: c.argv.clone(),
                env,
            }
        };
        // Init steps first, each to success: the dataplane's (its capture set-up, as
        // proxy-init is in Kubernetes), then the pod's own init containers.
        let namespace_labels = self.manifests.namespace_labels(namespace);
        let hook_error = |e: HookError| ClusterError::Hook {
            pod: key.clone(),
            message: e.0,
        };
        let mut inits = self
            .hooks
            .pod_init(pod, &namespace_labels)
            .map_err(hook_error)?;
        for p in &mut inits {
            check_process_name(&p.name)?;
            let mut env = base_env.clone();
            env.append(&mut p.env);
            p.env = env;
        }
        inits.extend(template.init_containers.iter().map(spec_of));
        for init in inits {
            let launch = Launch {
                netns: pod.netns.clone(),
                cgroup: pod.cgroup.clone(),
                log: self
                    .logs_dir()
                    .join(format!("{namespace}_{name}_{}.log", init.name)),
                argv: init.argv,
                env: init.env,
                restart: RestartPolicy::Never,
                started: Instant::now(),
            };
            self.run_init(&key, &init.name, &launch)?;
        }
        let mut processes: Vec<(ProcessSpec, RestartPolicy)> = template
            .containers
            .iter()
            .map(|c| (spec_of(c), template.restart_policy))
            .collect();
        let extra = self
            .hooks
            .pod_processes(pod, &namespace_labels)
            .map_err(hook_error)?;
        for p in &extra {
            check_process_name(&p.name)?;
        }
        processes.extend(extra.into_iter().map(|mut s| {
            let mut env = base_env.clone();
            env.append(&mut s.env);
            s.env = env;
            (s, RestartPolicy::Always)
        }));
        for (
            ProcessSpec {
                name: container,
                argv,
                env,
            },
            restart,
        ) in processes
        {
            let log = self
                .logs_dir()
                .join(format!("{namespace}_{name}_{container}.log"));
            let launch = Launch {
                netns: pod.netns.clone(),
                cgroup: pod.cgroup.clone(),
                argv,
                env,
                log,
                restart,
                started: Instant::now(),
            };
            let pkey = ProcessKey {
                owner: owner_key.clone(),
                name: container.clone(),
            };
            let pid = self.spawn(&pkey, &launch)?;
            let process = ProcessState {
                pid: Some(pid),
                restarts: 0,
                last_exit: None,
                argv: launch.argv.clone(),
                log: launch.log.clone(),
            };
            self.launches.insert(pkey, launch);
            if let Some(p) = self.state.pods.get_mut(&key) {
                p.containers.insert(container, process);
            }
        }
        self.persist()
    }

    /// Takes a pod out of the model first, then stops its processes (SIGTERM, SIGKILL after
    /// the grace period) and removes its cgroup and namespace.
    fn delete_pod(&mut self, key: &str) -> Result<(), ClusterError> {
        let Some(pod) = self.state.pods.remove(key) else {
            return Ok(());
        };
        self.templates.remove(key);
        self.launches.retain(
            |k, _| !matches!(&k.owner, Owner::Pod { key: k2, uid } if k2 == key && *uid == pod.uid),
        );
        self.write_cluster_objects()?;
        self.persist()?;
        tracing::info!(pod = %key, ip = %pod.ip, "pod deleted: out of the model; stopping its processes");
        let events = self.events.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            let netns = pod.netns.clone();
            let error = teardown(pod).await.err().map(|e| e.to_string());
            let _ = events
                .send(Event::TornDown {
                    pod: key,
                    netns,
                    error,
                })
                .await;
        });
        Ok(())
    }

    fn start_control_plane(&mut self) -> Result<(), ClusterError> {
        let cp = CONTROL_PLANE_IP;
        let mut argv = vec![
            self.opts.bin_dir.join("switchyard").display().to_string(),
            "serve".into(),
            "--config-dir".into(),
            self.cluster_dir().display().to_string(),
            "--xds-address".into(),
            format!("{cp}:{XDS_PORT}"),
            "--admin-address".into(),
            format!("{cp}:{ADMIN_PORT}"),
            "--set".into(),
            format!("xds_tls_address={cp}:{XDS_TLS_PORT}"),
            "--set".into(),
            format!("ca_dir={}", self.opts.state_dir.join("ca").display()),
        ];
        for s in &self.opts.control_plane_settings {
            argv.push("--set".into());
            argv.push(s.clone());
        }
        let launch = Launch {
            netns: self.state.control_plane.netns.clone(),
            cgroup: self.state.cgroup.join("control-plane"),
            argv,
            env: vec![("PATH".into(), self.path_env())],
            log: self.logs_dir().join("control-plane.log"),
            restart: RestartPolicy::Always,
            started: Instant::now(),
        };
        cgroup::create(&launch.cgroup)?;
        let key = ProcessKey {
            owner: Owner::ControlPlane,
            name: "switchyard".into(),
        };
        let pid = self.spawn(&key, &launch)?;
        self.state.control_plane.process = ProcessState {
            pid: Some(pid),
            restarts: 0,
            last_exit: None,
            argv: launch.argv.clone(),
            log: launch.log.clone(),
        };
        self.launches.insert(key, launch);
        self.persist()?;
        self.step(&format!("control plane starting (pid {pid})"));
        Ok(())
    }

    async fn wait_control_plane(&self) -> Result<(), ClusterError> {
        let admin = SocketAddr::from((CONTROL_PLANE_IP, ADMIN_PORT));
        let deadline = Instant::now() + CONTROL_PLANE_READY_TIMEOUT;
        loop {
            match crate::http::get(admin, "/readyz", Duration::from_secs(1)).await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => {
                    tracing::debug!(code, body = %body.trim(), "control plane not ready yet")
                }
                Err(e) => tracing::debug!(error = %e, "control plane not reachable yet"),
            }
            if Instant::now() > deadline {
                return Err(ClusterError::ControlPlaneNotReady {
                    seconds: CONTROL_PLANE_READY_TIMEOUT.as_secs(),
                    log: self.logs_dir().join("control-plane.log"),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the control plane's model holds every pod (`/debug/mode` knows it).
    async fn wait_model(&mut self) -> Result<(), ClusterError> {
        let admin = SocketAddr::from((CONTROL_PLANE_IP, ADMIN_PORT));
        let deadline = Instant::now() + CONTROL_PLANE_READY_TIMEOUT;
        let mut missing: Vec<PodState> = self.state.pods.values().cloned().collect();
        while let Some(pod) = missing.last() {
            let path = format!("/debug/mode?namespace={}&pod={}", pod.namespace, pod.name);
            match crate::http::get(admin, &path, Duration::from_secs(1)).await {
                Ok((200, _)) => {
                    missing.pop();
                    continue;
                }
                Ok((code, body)) => {
                    tracing::debug!(code, body = %body.trim(), "pod not in the model yet")
                }
                Err(e) => tracing::debug!(error = %e, "control plane not reachable"),
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Supervisor(format!(
                    "the control plane's model has no pod {} after {} s; see {}",
                    pod.key(),
                    CONTROL_PLANE_READY_TIMEOUT.as_secs(),
                    self.logs_dir().join("control-plane.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pods = self.state.pods.len();
        self.step(&format!("control plane model holds all {pods} pods"));
        Ok(())
    }

    fn start_node_process(
        &mut self,
        node: &NodeState,
        spec: ProcessSpec,
    ) -> Result<(), ClusterError> {
        check_process_name(&spec.name)?;
        let mut env = vec![
            ("PATH".to_string(), self.path_env()),
            ("NODE_NAME".to_string(), node.name.clone()),
            ("NODE_IP".to_string(), node.ip.to_string()),
        ];
        env.extend(spec.env);
        let launch = Launch {
            netns: node.netns.clone(),
            cgroup: self
                .state
                .cgroup
                .join("nodes")
                .join(&node.name)
                .join(&spec.name),
            argv: spec.argv,
            env,
            log: self
                .logs_dir()
                .join(format!("{}_{}.log", node.name, spec.name)),
            restart: RestartPolicy::Always,
            started: Instant::now(),
        };
        cgroup::create(&launch.cgroup)?;
        let key = ProcessKey {
            owner: Owner::Node(node.name.clone()),
            name: spec.name.clone(),
        };
        let pid = self.spawn(&key, &launch)?;
        if let Some(n) = self.state.nodes.iter_mut().find(|n| n.name == node.name) {
            n.processes.insert(
                spec.name.clone(),
                ProcessState {
                    pid: Some(pid),
                    restarts: 0,
                    last_exit: None,
                    argv: launch.argv.clone(),
                    log: launch.log.clone(),
                },
            );
        }
        self.launches.insert(key, launch);
        self.persist()
    }

    fn path_env(&self) -> String {
        let inherited =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        format!("{}:{inherited}", self.opts.bin_dir.display())
    }

    /// Runs an init step through the launcher to its end; anything but success (or taking
    /// longer than [`INIT_TIMEOUT`]) fails the pod.
    fn run_init(&self, pod: &str, name: &str, launch: &Launch) -> Result<(), ClusterError> {
        let log = |what: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&launch.log)
                .map_err(|source| ClusterError::Io {
                    what: format!("opening log {} ({what})", launch.log.display()),
                    source,
                })
        };
        let mut child = std::process::Command::new(&self.opts.launcher)
            .args(["dev", "enter", "--netns"])
            .arg(ip::netns_path(&launch.netns))
            .arg("--cgroup")
            .arg(&launch.cgroup)
            .arg("--")
            .args(&launch.argv)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log("stdout")?))
            .stderr(Stdio::from(log("stderr")?))
            .spawn()
            .map_err(|source| ClusterError::Io {
                what: format!("starting init step {name} of pod {pod}"),
                source,
            })?;
        let deadline = Instant::now() + INIT_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ClusterError::Supervisor(format!(
                        "init step {name} of pod {pod} did not finish within {} s; see {}",
                        INIT_TIMEOUT.as_secs(),
                        launch.log.display()
                    )));
                }
                Err(source) => {
                    return Err(ClusterError::Io {
                        what: format!("waiting for init step {name} of pod {pod}"),
                        source,
                    });
                }
            }
        };
        if status.success() {
            tracing::info!(%pod, init = %name, "init step done");
            Ok(())
        } else {
            Err(ClusterError::Supervisor(format!(
                "init step {name} of pod {pod} failed ({status}); see {}",
                launch.log.display()
            )))
        }
    }

    /// Starts a process through the launcher (namespace and cgroup joined before exec) and
    /// reports its end as an event.
    fn spawn(&self, key: &ProcessKey, launch: &Launch) -> Result<u32, ClusterError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(|source| ClusterError::Io {
                what: format!("opening log {}", launch.log.display()),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ClusterError::Io {
            what: format!("opening log {}", launch.log.display()),
            source,
        })?;
        let mut child = tokio::process::Command::new(&self.opts.launcher)
            .args(["dev", "enter", "--netns"])
            .arg(ip::netns_path(&launch.netns))
            .arg("--cgroup")
            .arg(&launch.cgroup)
            .arg("--")
            .args(&launch.argv)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|source| ClusterError::Io {
                what: format!(
                    "starting {} through {}",
                    launch.argv.join(" "),
                    self.opts.launcher.display()
                ),
                source,
            })?;
        let pid = child.id().ok_or_else(|| {
            ClusterError::Supervisor(format!(
                "{} ended before it got a pid",
                launch.argv.join(" ")
            ))
        })?;
        let events = self.events.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let (status, success) = match child.wait().await {
                Ok(s) => (s.to_string(), s.success()),
                Err(e) => (format!("wait failed: {e}"), false),
            };
            let _ = events
                .send(Event::Exited {
                    key,
                    pid,
                    status,
                    success,
                })
                .await;
        });
        Ok(pid)
    }

    fn process_state(&mut self, key: &ProcessKey) -> Option<&mut ProcessState> {
        match &key.owner {
            Owner::ControlPlane => Some(&mut self.state.control_plane.process),
            Owner::Node(node) => self
                .state
                .nodes
                .iter_mut()
                .find(|n| n.name == *node)
                .and_then(|n| n.processes.get_mut(&key.name)),
            Owner::Pod { key: pod, uid } => self
                .state
                .pods
                .get_mut(pod)
                .filter(|p| p.uid == *uid)
                .and_then(|p| p.containers.get_mut(&key.name)),
        }
    }

    fn exited(
        &mut self,
        key: ProcessKey,
        pid: u32,
        status: String,
        success: bool,
    ) -> Result<(), ClusterError> {
        let Some(process) = self.process_state(&key) else {
            return Ok(()); // its pod is gone
        };
        if process.pid != Some(pid) {
            return Ok(());
        }
        process.pid = None;
        process.last_exit = Some(status.clone());
        let restarts = process.restarts;
        let Some(launch) = self.launches.get(&key) else {
            return Ok(());
        };
        let restart = match launch.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        // Back off 200 ms, doubling per restart up to 10 s; a process that ran 10 s or more
        // starts over at 200 ms.
        let delay = if launch.started.elapsed() >= Duration::from_secs(10) {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(200)
                .saturating_mul(1 << restarts.min(6))
                .min(Duration::from_secs(10))
        };
        tracing::warn!(process = %key.name, owner = ?key.owner, %status, restart, delay_ms = delay.as_millis() as u64, "process ended");
        if restart {
            let events = self.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = events.send(Event::Restart(key)).await;
            });
        }
        // The pod is not ready while a container is down.
        self.write_cluster_objects()?;
        self.persist()
    }

    fn restart(&mut self, key: ProcessKey) -> Result<(), ClusterError> {
        let Some(mut launch) = self.launches.get(&key).cloned() else {
            return Ok(());
        };
        if self.process_state(&key).is_none_or(|p| p.pid.is_some()) {
            return Ok(());
        }
        launch.started = Instant::now();
        let pid = self.spawn(&key, &launch)?;
        self.launches.insert(key.clone(), launch);
        if let Some(p) = self.process_state(&key) {
            p.pid = Some(pid);
            p.restarts += 1;
        }
        self.metrics.restarted();
        tracing::info!(process = %key.name, owner = ?key.owner, pid, "process restarted");
        self.write_cluster_objects()?;
        self.persist()
    }

    /// Writes Nodes, the manifests' other objects (Services with cluster IPs), Pods with
    /// status and EndpointSlices into the control plane's folder.
    fn write_cluster_objects(&mut self) -> Result<(), ClusterError> {
        let dir = self.cluster_dir();
        let nodes: Vec<Value> = self.state.nodes.iter().map(objects::node).collect();
        objects::write_documents(&dir.join("nodes.yaml"), &nodes)?;

        // Cluster IPs: kept per Service for as long as it exists.
        let service_keys: Vec<String> = self
            .manifests
            .passthrough
            .iter()
            .filter_map(service_key)
            .collect();
        self.state.services.retain(|k, _| service_keys.contains(k));
        let mut docs = Vec::with_capacity(self.manifests.passthrough.len());
        for doc in &self.manifests.passthrough {
            let explicit = doc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            let Some(key) = service_key(doc).filter(|_| !explicit) else {
                docs.push(doc.clone());
                continue;
            };
            let ip = match self.state.services.get(&key) {
                Some(ip) => *ip,
                None => {
                    let used: Vec<Ipv4Addr> = self.state.services.values().copied().collect();
                    let ip = addressing::next_service_ip(&used).ok_or_else(|| {
                        ClusterError::Exhausted {
                            what: format!("service range {}", addressing::SERVICE_RANGE),
                        }
                    })?;
                    self.state.services.insert(key, ip);
                    ip
                }
            };
            docs.push(objects::service_with_ip(doc.clone(), ip));
        }
        objects::write_documents(&dir.join("manifests.yaml"), &docs)?;

        let node_ip = |name: &str| {
            self.state
                .node(name)
                .map(|n| n.ip)
                .unwrap_or(Ipv4Addr::UNSPECIFIED)
        };
        let pods: Vec<Value> = self
            .state
            .pods
            .values()
            .filter_map(|p| {
                self.templates
                    .get(&p.key())
                    .map(|t| objects::pod(p, t, node_ip(&p.node)))
            })
            .collect();
        objects::write_documents(&dir.join("pods.yaml"), &pods)?;

        let slices: Vec<Value> = self
            .manifests
            .services
            .iter()
            .filter(|s| {
                !self
                    .manifests
                    .services_with_slices
                    .contains(&format!("{}/{}", s.namespace, s.name))
            })
            .map(|s| {
                let members: Vec<(&PodState, &PodTemplate)> = self
                    .state
                    .pods
                    .values()
                    .filter(|p| {
                        p.namespace == s.namespace && objects::selects(&s.selector, &p.labels)
                    })
                    .filter_map(|p| self.templates.get(&p.key()).map(|t| (p, t)))
                    .collect();
                objects::endpoint_slice(s, &members)
            })
            .collect();
        objects::write_documents(&dir.join("endpointslices.yaml"), &slices)?;
        Ok(())
    }

    fn watch_manifests(&self) -> Result<notify::RecommendedWatcher, ClusterError> {
        use notify::Watcher as _;
        let events = self.events.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                // One pending "changed" is enough; a full channel already has one.
                let _ = events.try_send(Event::ManifestsChanged);
            }
        })
        .map_err(|e| ClusterError::Io {
            what: "watching the manifests folder".into(),
            source: std::io::Error::other(e),
        })?;
        watcher
            .watch(&self.opts.manifests, notify::RecursiveMode::Recursive)
            .map_err(|e| ClusterError::Io {
                what: format!("watching {}", self.opts.manifests.display()),
                source: std::io::Error::other(e),
            })?;
        Ok(watcher)
    }

    fn listen_control(&self) -> Result<(), ClusterError> {
        let path = control::socket_path(&self.opts.state_dir);
        let _ = std::fs::remove_file(&path);
        let listener =
            tokio::net::UnixListener::bind(&path).map_err(|source| ClusterError::Io {
                what: format!("listening on {}", path.display()),
                source,
            })?;
        let events = self.events.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let events = events.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    if BufReader::new(read).read_line(&mut line).await.is_err() {
                        return;
                    }
                    let reply = match serde_json::from_str::<Request>(&line) {
                        Ok(request) => {
                            let (tx, rx) = oneshot::channel();
                            if events.send(Event::Control(request, tx)).await.is_err() {
                                Reply::Error("the supervisor is stopping".into())
                            } else {
                                rx.await
                                    .unwrap_or_else(|_| Reply::Error("no answer".into()))
                            }
                        }
                        Err(e) => Reply::Error(format!("bad request {:?}: {e}", line.trim())),
                    };
                    if let Ok(mut text) = serde_json::to_string(&reply) {
                        text.push('\n');
                        let _ = write.write_all(text.as_bytes()).await;
                    }
                });
            }
        });
        Ok(())
    }
}

/// Stops a deleted pod: SIGTERM to its processes, SIGKILL to what is left after
/// [`TERMINATION_GRACE`], then its cgroup and namespace go. Runs beside the supervisor's
/// event loop, so a slow pod does not hold up the others.
async fn teardown(pod: PodState) -> Result<(), ClusterError> {
    for pid in cgroup::pids_below(&pod.cgroup) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + TERMINATION_GRACE;
    while cgroup::populated(&pod.cgroup) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::spawn_blocking(move || {
        cgroup::kill_all(&pod.cgroup, Duration::from_secs(5))?;
        cgroup::remove_tree(&pod.cgroup)?;
        topology::delete_pod_network(&pod)
    })
    .await
    .map_err(|_| ClusterError::Thread {
        what: "tearing a pod down".into(),
    })?
}

/// A dataplane hook's process name becomes a cgroup and a log file name: a DNS label only.
fn check_process_name(name: &str) -> Result<(), ClusterError> {
    if manifests::is_dns_label(name) {
        Ok(())
    } else {
        Err(ClusterError::Supervisor(format!(
            "dataplane process name {name:?} must be 1 to 63 characters of a-z, 0-9 and '-'"
        )))
    }
}

/// `namespace/name` of a Service document.
fn service_key(doc: &Value) -> Option<String> {
    if doc.get("kind").and_then(Value::as_str) != Some("Service") {
        return None;
    }
    let ns = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(manifests::DEFAULT_NAMESPACE);
    let name = doc.pointer("/metadata/name").and_then(Value::as_str)?;
    Some(format!("{ns}/{name}"))
}

/// The environment every container of a pod gets.
fn pod_env(pod: &PodState, node: &NodeState, path: String) -> Vec<(String, String)> {
    vec![
        ("POD_NAME".into(), pod.name.clone()),
        ("POD_NAMESPACE".into(), pod.namespace.clone()),
        ("POD_IP".into(), pod.ip.to_string()),
        ("NODE_NAME".into(), node.name.clone()),
        ("SERVICE_ACCOUNT".into(), pod.service_account.clone()),
        ("PATH".into(), path),
    ]
}

/// A downward-API field of a pod.
fn field(pod: &PodState, node: &NodeState, path: &str) -> String {
    match path {
        "metadata.name" => pod.name.clone(),
        "metadata.namespace" => pod.namespace.clone(),
        "status.podIP" => pod.ip.to_string(),
        "status.hostIP" => node.ip.to_string(),
        "spec.nodeName" => node.name.clone(),
        "spec.serviceAccountName" => pod.service_account.clone(),
        _ => String::new(),
    }
}
