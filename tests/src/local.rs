//! The local cluster (`yardctl dev`) as tests drive it: one cluster per test under a unique
//! name and temporary state and manifest folders, brought down on drop; the control plane's
//! admin API through the host link. Tests that use it run [`as_root`]: in a private network
//! namespace that plays the host, one at a time per test binary.

// Test harness: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_local_cluster::addressing;
use switchyard_local_cluster::state::ClusterState;
use switchyard_test_support::netns;

use crate::yardctl::{self, Run};

static SERIAL: Mutex<()> = Mutex::new(());

/// One local cluster of a test: unique name, temporary state and manifests; `down` on drop.
#[derive(Debug)]
pub struct Cluster {
    /// Cluster name.
    pub name: String,
    /// Holds the state folder.
    pub state_dir: tempfile::TempDir,
    /// The manifests folder.
    pub manifests: tempfile::TempDir,
}

impl Cluster {
    pub fn new(tag: char, files: &[(&str, &str)]) -> Self {
        let name = format!("t{}{tag}", std::process::id() % 100_000);
        let c = Self {
            name,
            state_dir: tempfile::tempdir().unwrap(),
            manifests: tempfile::tempdir().unwrap(),
        };
        for (file, text) in files {
            c.write(file, text);
        }
        c
    }

    pub fn write(&self, file: &str, text: &str) {
        std::fs::write(self.manifests.path().join(file), text).unwrap();
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.path().join("state")
    }

    pub fn args<'a>(&'a self, sub: &'a str, state: &'a str) -> Vec<&'a str> {
        vec!["dev", sub, "--name", &self.name, "--state-dir", state]
    }

    pub async fn yardctl(&self, sub: &str, extra: &[&str]) -> Run {
        let state = self.state_path().display().to_string();
        let mut args = self.args(sub, &state);
        args.extend_from_slice(extra);
        yardctl::run(&args).await
    }

    pub fn up_command(&self, nodes: u8) -> tokio::process::Command {
        let state = self.state_path().display().to_string();
        let manifests = self.manifests.path().display().to_string();
        let nodes = nodes.to_string();
        let mut args = self.args("up", &state);
        args.extend_from_slice(&["--nodes", &nodes, "--manifests", &manifests]);
        yardctl::command(&args)
    }

    /// `dev up`; returns how long it took.
    pub async fn up(&self, nodes: u8) -> Duration {
        let started = Instant::now();
        let run = yardctl::finish(self.up_command(nodes).spawn().unwrap()).await;
        let took = started.elapsed();
        run.ok();
        took
    }

    pub fn state(&self) -> ClusterState {
        ClusterState::load(&self.state_path())
            .unwrap()
            .expect("a state file")
    }

    pub fn pods_of(&self, owner: &str) -> Vec<switchyard_local_cluster::PodState> {
        self.state()
            .pods
            .into_values()
            .filter(|p| p.owner.as_deref() == Some(owner))
            .collect()
    }

    pub async fn exec(&self, target: &str, command: &[&str]) -> Run {
        let mut extra = vec![target, "--"];
        extra.extend_from_slice(command);
        self.yardctl("exec", &extra).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test still leaves the machine clean.
        if let Ok(bin) = switchyard_test_support::echo_process::workspace_binary("yardctl") {
            let state = self.state_path();
            let _ = std::process::Command::new(bin)
                .args(["dev", "down", "--name", &self.name, "--state-dir"])
                .arg(&state)
                .output();
        }
    }
}

/// GET from the control plane's admin port through the host link.
pub async fn admin(path: &str) -> anyhow::Result<(u16, String)> {
    crate::http(
        SocketAddr::from((addressing::CONTROL_PLANE_IP, 15014)),
        "GET",
        path,
    )
    .await
}

pub async fn in_model(namespace: &str, pod: &str) -> bool {
    matches!(
        admin(&format!("/debug/mode?namespace={namespace}&pod={pod}")).await,
        Ok((200, _))
    )
}

pub fn as_root(test: impl std::future::Future<Output = ()>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    netns::enter_private().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(test);
}
