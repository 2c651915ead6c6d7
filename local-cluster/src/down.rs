//! `down`: removes everything a cluster created, from its state file, whether the supervisor
//! is alive, dead, or died half-way through `up`. Idempotent.
//!
//! Order matters: first every process (one `cgroup.kill` on the cluster's cgroup reaches the
//! supervisor, the control plane, node agents and every container), then the state is read
//! again (a supervisor records a namespace before it creates it, so once it is dead the file
//! lists a superset of what exists), then links, namespaces, bpffs pins, cgroups and the
//! state folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::state::ClusterState;
use crate::{ClusterError, addressing, cgroup, ip};

/// How long `down` waits for init to reap the processes it killed.
const REAP_WAIT: Duration = Duration::from_secs(3);

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
    let mut report = DownReport::default();
    let mount = cgroup::cgroup2_mount()?;
    let cluster_cgroup = cgroup::cluster_dir(&mount, name);

    // 1. Processes. The supervisor joins the cluster's cgroup before it creates anything;
    //    should it have died before that, its pid from the state file is killed directly.
    let before = ClusterState::load(state_dir)?;
    let mut killed = cgroup::pids_below(&cluster_cgroup);
    if let Some(pid) = before.as_ref().and_then(|s| s.supervisor_pid)
        && is_supervisor(pid, name)
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
    cgroup::kill_all(&cluster_cgroup, Duration::from_secs(10))?;
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
    let state = ClusterState::load(state_dir)?;
    report.found = state.is_some() || cluster_cgroup.exists();

    // 3. The host link (its peer in the underlay goes with it), then every namespace: those
    //    recorded, and any other carrying the cluster's prefix.
    let link = addressing::host_link(name);
    if ip::delete_link(&link)? {
        report.links.push(link);
    }
    let prefix = addressing::netns::prefix(name);
    let mut namespaces: Vec<String> = state
        .as_ref()
        .map(|s| s.netns.iter().cloned().collect())
        .unwrap_or_default();
    namespaces.extend(
        ip::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&prefix)),
    );
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        if ip::netns_path(&ns).exists() {
            ip::delete_netns(&ns)?;
            report.namespaces.push(ns);
        }
    }

    // 4. bpffs pins and cgroups.
    if let Some(bpffs) = state.as_ref().map(|s| s.bpffs.clone())
        && bpffs.exists()
    {
        std::fs::remove_dir_all(&bpffs).map_err(|source| ClusterError::Io {
            what: format!("removing bpffs pins {}", bpffs.display()),
            source,
        })?;
    }
    if cluster_cgroup.exists() {
        cgroup::remove_tree(&cluster_cgroup)?;
        report.cgroups.push(cluster_cgroup.clone());
    }
    if let Some(parent) = cluster_cgroup.parent() {
        cgroup::remove_if_empty(parent);
    }

    // 5. The state folder: state file, generated objects, CA, logs, control socket.
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir).map_err(|source| ClusterError::Io {
            what: format!("removing {}", state_dir.display()),
            source,
        })?;
    }
    Ok(report)
}

/// Whether `pid` is cluster `name`'s supervisor (and not a process that reused its pid).
fn is_supervisor(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        args.windows(2)
            .any(|w| w == [b"dev".as_slice(), b"supervise".as_slice()])
            && args.contains(&name.as_bytes())
    })
}
