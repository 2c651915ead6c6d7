//! A private network namespace for one test: loopback only, its own nftables, gone when the
//! test's processes exit. Needs root (CI runs as root).
//!
//! [`enter_private`] moves the *calling thread* into a new namespace; threads and processes it
//! starts afterwards inherit it. So call it first in a plain `#[test]`, then build the tokio
//! runtime.

use std::process::Command;

use anyhow::{Context, bail};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Moves the calling thread into a new network namespace and brings its loopback up.
pub fn enter_private() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "this test needs root for a private network namespace and nftables (CI runs as root)"
        );
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    run("ip", &["link", "set", "lo", "up"])
}

/// Runs a command, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("running {program} (is it installed? scripts/setup.sh installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Loads an nftables ruleset (`nft -f`).
pub fn nft(ruleset: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rules.nft");
    std::fs::write(&path, ruleset)?;
    run("nft", &["-f", &path.display().to_string()])
}
