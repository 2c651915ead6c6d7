//! Switchyard's local cluster: a small cluster on one Linux machine with no Kubernetes.
//!
//! Nodes, pods, the underlay and the control plane are network namespaces joined by veth
//! pairs and bridges ([`topology`]); every pod gets a cgroup v2 leaf ([`cgroup`]). The
//! [`supervisor`] plays kubelet, CNI and endpoint controller: it reads a manifests folder
//! ([`manifests`]), places pods on nodes, runs their containers' commands, restarts them, and
//! writes Nodes, Pods with status and EndpointSlices ([`objects`]) into the folder the control
//! plane watches. Everything is recorded in the [`state`] file before it is created, so
//! [`down::down`] removes it all, also after a crash.
//!
//! This crate must not hold mesh logic (xDS, certificates, policy: the control plane and the
//! dataplanes own those; they join through [`supervisor::DataplaneHooks`]) and must not give
//! any namespace a route outside the cluster's ranges.

pub mod addressing;
pub mod cgroup;
pub mod control;
pub mod down;
pub mod http;
pub mod ip;
pub mod manifests;
pub mod metrics;
pub mod objects;
pub mod state;
pub mod supervisor;
pub mod topology;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

pub use down::{DownReport, down};
pub use state::{ClusterState, NodeState, PodState, ProcessState};
pub use supervisor::{DataplaneHooks, HookError, NoMesh, ProcessSpec, UpOptions};

/// What went wrong in the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A command (`ip ...`) failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A dataplane hook could not say what to run for a pod.
    #[error("dataplane set-up of pod {pod}: {message}")]
    Hook {
        /// `namespace/name`.
        pod: String,
        /// What was wrong.
        message: String,
    },
    /// A helper thread panicked.
    #[error("{what}: the thread panicked")]
    Thread {
        /// What the thread was doing.
        what: String,
    },
    /// Not root.
    #[error("the local cluster needs root (network namespaces, veths, cgroups); run it with sudo")]
    NotRoot,
    /// No cgroup2 mount.
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    /// Bad cluster name.
    #[error(
        "cluster name {name:?} must be 1 to 12 characters of a-z, 0-9 and '-', starting with a letter"
    )]
    InvalidName {
        /// The name.
        name: String,
    },
    /// Bad node count.
    #[error("--nodes {nodes}: a local cluster has 1 to 16 nodes")]
    InvalidNodes {
        /// The count.
        nodes: u8,
    },
    /// A cluster range overlaps the host's.
    #[error(
        "the cluster's {range} overlaps the host's {host}; the cluster would shadow it (is another local cluster up? `yardctl dev down`)"
    )]
    Overlap {
        /// The cluster range.
        range: String,
        /// The host route or address.
        host: String,
    },
    /// The cluster is already up.
    #[error(
        "cluster {name:?} is already up (supervisor pid {pid}); `yardctl dev down --name {name}` first"
    )]
    AlreadyUp {
        /// The name.
        name: String,
        /// The live supervisor.
        pid: u32,
    },
    /// A crashed cluster left things behind.
    #[error(
        "cluster {name:?} has leftovers from a run that ended without `down` ({state}); `yardctl dev down --name {name}` removes them"
    )]
    Leftovers {
        /// The name.
        name: String,
        /// The state file.
        state: PathBuf,
    },
    /// No cluster of that name.
    #[error("no local cluster {name:?} (no state in {state_dir}); `yardctl dev up` starts one")]
    NotUp {
        /// The name.
        name: String,
        /// Where its state would be.
        state_dir: PathBuf,
    },
    /// The state file cannot be read or written.
    #[error("state file {path}: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Bad manifests.
    #[error("the manifests have problems:\n  {}", .problems.join("\n  "))]
    Manifests {
        /// Every problem, with file and document.
        problems: Vec<String>,
    },
    /// No pod of that name.
    #[error("no pod {pod:?}; pods: {}", .known.join(", "))]
    NoSuchPod {
        /// The name asked for.
        pod: String,
        /// Pods that exist.
        known: Vec<String>,
    },
    /// More than one pod has that name.
    #[error("pod name {pod:?} is in several namespaces: {}; say namespace/name", .candidates.join(", "))]
    AmbiguousPod {
        /// The name asked for.
        pod: String,
        /// Matching pods.
        candidates: Vec<String>,
    },
    /// A cgroup still had processes after they were killed.
    #[error("cgroup {cgroup} still has processes {pids:?} after SIGKILL")]
    StillPopulated {
        /// The cgroup.
        cgroup: PathBuf,
        /// Its processes.
        pids: Vec<i32>,
    },
    /// The control plane did not become ready.
    #[error("the control plane did not become ready within {seconds} s; see {log}")]
    ControlPlaneNotReady {
        /// How long was waited.
        seconds: u64,
        /// Its log.
        log: PathBuf,
    },
    /// No address left.
    #[error("{what}: no address left")]
    Exhausted {
        /// The range.
        what: String,
    },
    /// The state folder belongs to another cluster.
    #[error(
        "{state} is the state of cluster {found:?}, not {name:?}; check --name and --state-dir"
    )]
    StateMismatch {
        /// The name asked for.
        name: String,
        /// The name in the state file.
        found: String,
        /// The state file.
        state: PathBuf,
    },
    /// `down` could not remove everything.
    #[error("down left things behind (run it again, or remove them by hand):\n  {}", .problems.join("\n  "))]
    Incomplete {
        /// What failed.
        problems: Vec<String>,
    },
    /// The supervisor answered with an error or not at all.
    #[error("supervisor: {0}")]
    Supervisor(String),
}

/// Whether `pid` is the live supervisor of cluster `name` (its command line is `... dev
/// supervise ... --name <name> ...`), and not a process that reused its pid.
pub fn is_supervisor(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        args.windows(2)
            .any(|w| w == [b"dev".as_slice(), b"supervise".as_slice()])
            && args
                .windows(2)
                .any(|w| w == [b"--name".as_slice(), name.as_bytes()])
    })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Joins network namespace `netns` and cgroup `cgroup`, then replaces this process with
/// `argv` (found on `PATH`), with `env` added to the environment. Returns only on failure. The supervisor starts every process of
/// the cluster through this (as `yardctl dev enter`), so a process is in its pod's namespace
/// and cgroup before its first instruction; `yardctl dev exec` uses it too.
pub fn enter(
    netns: &Path,
    cgroup: &Path,
    argv: &[String],
    env: &[(String, String)],
) -> ClusterError {
    let Some((program, args)) = argv.split_first() else {
        return ClusterError::Supervisor("nothing to run: the command is empty".into());
    };
    let file = match std::fs::File::open(netns) {
        Ok(f) => f,
        Err(source) => {
            return ClusterError::Io {
                what: format!("opening network namespace {}", netns.display()),
                source,
            };
        }
    };
    if let Err(errno) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
        return ClusterError::Io {
            what: format!("joining network namespace {} (setns)", netns.display()),
            source: errno.into(),
        };
    }
    drop(file);
    if let Err(e) = cgroup::join(cgroup, std::process::id()) {
        return e;
    }
    let source = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .exec();
    ClusterError::Io {
        what: format!("running {program:?} (is it on PATH?)"),
        source,
    }
}
