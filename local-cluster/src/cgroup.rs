//! cgroup v2 for pods: one leaf per pod under `switchyard/<cluster>/`, so the eBPF dataplane
//! can attach to a pod's cgroup and `down` can kill every process of the cluster at once.
//!
//! The cgroup2 mount is looked up in `/proc/self/mountinfo`: on hybrid layouts (as on the CI
//! machines) it sits beside the v1 controllers, at `/sys/fs/cgroup/unified`, not at
//! `/sys/fs/cgroup`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ClusterError;

/// The folder under the cgroup2 mount that holds every local cluster.
pub const ROOT_NAME: &str = "switchyard";

/// The cgroup2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, ClusterError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| ClusterError::Io {
            what: "reading /proc/self/mountinfo".into(),
            source,
        })?;
    find_cgroup2(&text).ok_or(ClusterError::NoCgroup2)
}

/// Finds the first cgroup2 mount point in mountinfo text.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ...`
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = field.get(i + 1..i + 4).unwrap_or_default();
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cluster's cgroup folder: `<mount>/switchyard/<cluster>`.
pub fn cluster_dir(mount: &Path, cluster: &str) -> PathBuf {
    mount.join(ROOT_NAME).join(cluster)
}

/// Creates a cgroup folder (and its parents).
pub fn create(dir: &Path) -> Result<(), ClusterError> {
    std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
        what: format!("creating cgroup {}", dir.display()),
        source,
    })
}

/// Moves process `pid` into cgroup `dir`.
pub fn join(dir: &Path, pid: u32) -> Result<(), ClusterError> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(|source| ClusterError::Io {
        what: format!("moving process {pid} into {}", procs.display()),
        source,
    })
}

/// Kills every process in cgroup `dir` and below, and waits until it is empty. Uses
/// `cgroup.kill` (Linux 5.14+), or signals each process listed when that is missing.
pub fn kill_all(dir: &Path, timeout: Duration) -> Result<(), ClusterError> {
    if !dir.exists() {
        return Ok(());
    }
    let has_kill = std::fs::write(dir.join("cgroup.kill"), "1").is_ok();
    let deadline = Instant::now() + timeout;
    while populated(dir) {
        if !has_kill {
            // Without cgroup.kill, signal what is there on every round: a process may have
            // forked since the last one.
            for pid in pids_below(dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if Instant::now() > deadline {
            return Err(ClusterError::StillPopulated {
                cgroup: dir.to_path_buf(),
                pids: pids_below(dir),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Whether any process lives in `dir` or below (`cgroup.events`).
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// Processes in `dir` and below.
pub fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Removes `dir` and every cgroup below it, deepest first (a cgroup folder is removed with
/// `rmdir`; its control files go with it). Missing folders are fine.
pub fn remove_tree(dir: &Path) -> Result<(), ClusterError> {
    if !dir.exists() {
        return Ok(());
    }
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ClusterError::Io {
            what: format!("listing cgroup {}", dir.display()),
            source,
        })?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    for child in children {
        remove_tree(&child)?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ClusterError::Io {
            what: format!("removing cgroup {}", dir.display()),
            source,
        }),
    }
}

/// Removes `dir` if it is an empty cgroup folder (no child cgroups); used for the shared
/// `switchyard` folder once the last cluster is gone.
pub fn remove_if_empty(dir: &Path) {
    let has_children = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        .unwrap_or(true);
    if !has_children {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_beside_v1_controllers() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:27 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:28 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:29 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            find_cgroup2(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let v1_only = "33 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2(v1_only), None);
        let spaced = "30 25 0:26 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(spaced), Some(PathBuf::from("/mnt/my cgroups")));
    }
}
