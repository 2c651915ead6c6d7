//! The echo backend as a separate process (`switchyard-echo serve`, built from the
//! `switchyard-echo` crate), for suites that want real backend processes rather than tasks in
//! the test process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::echo::EchoReady;

/// A running `switchyard-echo`, killed on drop.
#[derive(Debug)]
pub struct EchoProcess {
    child: tokio::process::Child,
    /// Bound addresses.
    pub ready: EchoReady,
    _dir: tempfile::TempDir,
}

/// The `switchyard-echo` binary built next to the running test (`target/<profile>/`).
pub fn echo_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("switchyard-echo")
}

/// A binary of this workspace built next to the running test (`target/<profile>/`).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // tests run from target/<profile>/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("locating the target directory")?;
    let bin = dir.join(name);
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --workspace --bins` (cargo test --workspace does)",
            bin.display()
        );
    }
    Ok(bin)
}

impl EchoProcess {
    /// Starts `switchyard-echo serve --name <name>` serving HTTP (HTTP/1.1 and h2c) and/or
    /// gRPC on the given addresses and waits until it listens.
    pub async fn start(
        name: &str,
        http: Option<SocketAddr>,
        grpc: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ready_file = dir.path().join("ready.json");
        let mut cmd = tokio::process::Command::new(echo_binary()?);
        cmd.arg("serve")
            .arg("--name")
            .arg(name)
            .arg("--ready-file")
            .arg(&ready_file);
        if let Some(a) = http {
            cmd.arg("--http").arg(a.to_string());
        }
        if let Some(a) = grpc {
            cmd.arg("--grpc").arg(a.to_string());
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting switchyard-echo")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(ready) = EchoReady::read(&ready_file) {
                return Ok(EchoProcess {
                    child,
                    ready,
                    _dir: dir,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!("switchyard-echo {name} exited before listening: {status}");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("switchyard-echo {name} did not start within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
