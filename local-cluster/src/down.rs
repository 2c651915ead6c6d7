//! `down`: removes everything a cluster created, whether the supervisor is alive, dead, or
//! died half-way through `up`. Idempotent, and best effort: one failing step does not stop
//! the others; all failures are reported together.
//!
//! Order matters: first every process (one `cgroup.kill` on the cluster's cgroup reaches the
//! supervisor, the control plane, node agents and every container), then the state is read
//! again (a supervisor records a namespace before it creates it, so once it is dead the file
//! lists a superset of what exists), then the host link, namespaces, bpffs pins, cgroups and
//! the state folder's own files.
//!
//! What it removes is derived from the cluster *name* (namespaces with its prefix, its
//! cgroup, its bpffs folder, its host link); the state file only adds namespace names, and
//! only those with the cluster's prefix are touched. The state folder itself is emptied of
//! the files the cluster writes there and removed only when nothing else is left in it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::state::{ClusterState, STATE_FILE};
use crate::{ClusterError, addressing, cgroup, ip};

/// How long `down` waits for init to reap the processes it killed.
const REAP_WAIT: Duration = Duration::from_secs(3);

/// Folder of the bootstrap tokens a dataplane injector mints for pods.
pub const TOKENS_DIR: &str = "tokens";

/// What the cluster writes into its state folder (and `down` removes).
pub const STATE_ENTRIES: [&str; 8] = [
    STATE_FILE,
    ".state.json.tmp",
    "cluster",
    "ca",
    "logs",
    TOKENS_DIR,
    crate::control::SOCKET,
    "up.lock",
];

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Whether there was a cluster at all.
    pub found: bool,
    /// Processes killed.
    pub processes: usize,
    /// Network namespaces removed.
    pub namespaces: Vec<String>,
    /// Host links removed.
    pub links: Vec<String>,
    /// cgroup folders removed (the cluster's, with everything below it).
    pub cgroups: Vec<PathBuf>,
}

/// Removes cluster `name` whose state folder is `state_dir`.
pub fn down(name: &str, state_dir: &Path) -> Result<DownReport, ClusterError> {
    addressing::check_name(name)?;
    if !crate::is_root() {
        return Err(ClusterError::NotRoot);
    }
    let before = ClusterState::load(state_dir)?;
    if let Some(s) = before.as_ref().filter(|s| s.name != name) {
        return Err(ClusterError::StateMismatch {
            name: name.to_string(),
            found: s.name.clone(),
            state: s.path(),
        });
    }
    let mut report = DownReport::default();
    let mut problems: Vec<String> = Vec::new();
    let mount = cgroup::cgroup2_mount()?;
    let cluster_cgroup = cgroup::cluster_dir(&mount, name);

    // 1. Processes. The supervisor joins the cluster's cgroup before it creates anything;
    //    should it have died before that, its pid from the state file is killed directly.
    let mut killed = cgroup::pids_below(&cluster_cgroup);
    if let Some(pid) = before.as_ref().and_then(|s| s.supervisor_pid)
        && crate::is_supervisor(pid, name)
        && let Ok(pid) = i32::try_from(pid)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        killed.push(pid);
    }
    killed.sort_unstable();
    killed.dedup();
    report.processes = killed.len();
    if let Err(e) = cgroup::kill_all(&cluster_cgroup, Duration::from_secs(10)) {
        problems.push(e.to_string());
    }
    // Killed processes are orphans now; give init a moment to reap them, so that `down`
    // returns with them gone from the process table, not lingering as zombies.
    let deadline = Instant::now() + REAP_WAIT;
    while killed
        .iter()
        .any(|pid| Path::new("/proc").join(pid.to_string()).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }

    // 2. Read again: now nothing writes it any more.
    let state = ClusterState::load(state_dir).unwrap_or_else(|e| {
        problems.push(e.to_string());
        None
    });
    report.found = state.is_some() || cluster_cgroup.exists();

    // 3. The host link, then every namespace with the cluster's prefix: those recorded and
    //    any other that exists.
    let link = addressing::host_link(name);
    match ip::delete_link(&link) {
        Ok(true) => report.links.push(link),
        Ok(false) => {}
        Err(e) => problems.push(e.to_string()),
    }
    let prefix = addressing::netns::prefix(name);
    let mut namespaces: Vec<String> = state
        .as_ref()
        .map(|s| s.netns.iter().cloned().collect())
        .unwrap_or_default();
    namespaces.extend(ip::list_netns());
    namespaces.retain(|n| n.starts_with(&prefix));
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        if ip::netns_path(&ns).exists() {
            match ip::delete_netns(&ns) {
                Ok(()) => report.namespaces.push(ns),
                Err(e) => problems.push(e.to_string()),
            }
        }
    }

    // 4. bpffs pins and cgroups.
    let bpffs = addressing::bpffs_dir(name);
    if bpffs.exists()
        && let Err(e) = std::fs::remove_dir_all(&bpffs)
    {
        problems.push(format!("removing bpffs pins {}: {e}", bpffs.display()));
    }
    if cluster_cgroup.exists() {
        match cgroup::remove_tree(&cluster_cgroup) {
            Ok(()) => report.cgroups.push(cluster_cgroup.clone()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(parent) = cluster_cgroup.parent() {
        cgroup::remove_if_empty(parent);
    }

    // 5. The state folder: only what the cluster writes there.
    for entry in STATE_ENTRIES {
        let path = state_dir.join(entry);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("removing {}: {e}", path.display())),
        }
    }
    // Only when empty: a folder someone pointed --state-dir at keeps what else it holds.
    let _ = std::fs::remove_dir(state_dir);

    if problems.is_empty() {
        Ok(report)
    } else {
        Err(ClusterError::Incomplete { problems })
    }
}
