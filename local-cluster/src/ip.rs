//! Links, addresses, routes and named network namespaces, through iproute2's `ip`.
//!
//! Why `ip` and not a netlink crate: the commands are the ones an operator would type to
//! inspect or repair the cluster (every failure names the exact command), iproute2 is
//! installed by `scripts/setup.sh`, and a pod needs four or five of them, which is far from
//! any cost that matters next to starting its processes.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::ClusterError;

/// Where `ip netns add` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The bind-mounted file of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Runs `ip <args>` in the caller's namespace.
pub fn ip(args: &[&str]) -> Result<(), ClusterError> {
    run("ip", args, None).map(drop)
}

/// Runs `ip -n <netns> <args>`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<(), ClusterError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Runs several `ip` commands in one process (`ip -n <netns> -batch -`); a line fails the
/// whole batch, with the line named in the error.
pub fn batch_in(netns: &str, lines: &[String]) -> Result<(), ClusterError> {
    let script = lines.join("\n") + "\n";
    run("ip", &["-n", netns, "-batch", "-"], Some(&script)).map(drop)
}

/// Runs `ip <args>` and returns its standard output.
pub fn ip_output(args: &[&str]) -> Result<String, ClusterError> {
    run("ip", args, None)
}

/// Adds a named namespace, with its loopback up.
pub fn add_netns(name: &str) -> Result<(), ClusterError> {
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])
}

/// Deletes a named namespace if it exists.
pub fn delete_netns(name: &str) -> Result<(), ClusterError> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "delete", name])
}

/// Deletes a link of the caller's namespace; `Ok(false)` when there was none. (Asked over
/// netlink: `/sys/class/net` shows the namespace sysfs was mounted in, not the caller's.)
pub fn delete_link(name: &str) -> Result<bool, ClusterError> {
    match ip(&["link", "delete", name]) {
        Ok(()) => Ok(true),
        Err(ClusterError::Command { stderr, .. }) if stderr.contains("Cannot find device") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Link names of the caller's namespace.
pub fn list_links() -> Result<Vec<String>, ClusterError> {
    let out = ip_output(&["-o", "link", "show"])?;
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// Named namespaces that exist now.
pub fn list_netns() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs `f` on a fresh thread that has joined namespace `name`; the caller's thread is
/// untouched. Sockets `f` opens belong to that namespace, and so does `/proc/sys/net`.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ClusterError> {
    let path = netns_path(name);
    let file = File::open(&path).map_err(|source| ClusterError::Io {
        what: format!("opening network namespace {}", path.display()),
        source,
    })?;
    let joined = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map(|()| f())
    })
    .join()
    .map_err(|_| ClusterError::Thread {
        what: format!("work in network namespace {name}"),
    })?;
    joined.map_err(|errno| ClusterError::Io {
        what: format!("joining network namespace {name} (setns)"),
        source: errno.into(),
    })
}

/// Turns IPv4 forwarding on or off in namespace `name` (a node routes for its pods; nothing
/// else of the cluster may).
pub fn set_forwarding(name: &str, on: bool) -> Result<(), ClusterError> {
    let owned = name.to_string();
    in_netns(name, move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/net/ipv4/ip_forward")
            .and_then(|mut f| f.write_all(if on { b"1" } else { b"0" }))
            .map_err(|source| ClusterError::Io {
                what: format!("setting IPv4 forwarding to {on} in {owned}"),
                source,
            })
    })?
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ClusterError> {
    let described = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ClusterError::Io {
            what: format!(
                "running {} (is iproute2 installed? scripts/setup.sh installs it)",
                described()
            ),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| ClusterError::Io {
                what: format!("writing to {}", described()),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ClusterError::Io {
            what: format!("waiting for {}", described()),
            source,
        })?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: match stdin {
                Some(text) => format!("{} <<< {}", described(), text.trim().replace('\n', "; ")),
                None => described(),
            },
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
