//! Shared setup of the cross-crate suites: a control plane serving a temporary manifest
//! directory, and small HTTP helpers for its admin API.

pub mod loadgen;
pub mod local;
pub mod sidecar;
pub mod yardctl;

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use anyhow::Context;
use switchyard_test_support::manifests::ManifestDir;
use switchyard_xds_server::{Config, Server};

/// Timeout for a single expected response.
pub const STEP: Duration = Duration::from_secs(5);

/// A running control plane over a manifest directory.
#[derive(Debug)]
pub struct ControlPlane {
    /// The manifests it serves.
    pub manifests: ManifestDir,
    /// The server.
    pub server: Server,
    /// The CA directory (root, token key).
    pub ca_dir: tempfile::TempDir,
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

impl ControlPlane {
    /// Starts a control plane with the given manifest files already written, and waits until
    /// it has built a mesh from them.
    pub async fn start(files: &[(&str, Vec<String>)]) -> anyhow::Result<Self> {
        Self::start_with(files, |_| {}).await
    }

    /// Like [`ControlPlane::start`], adjusting the config first.
    pub async fn start_with(
        files: &[(&str, Vec<String>)],
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        init_logs();
        let manifests = ManifestDir::new()?;
        for (name, docs) in files {
            manifests.write(name, docs)?;
        }
        let ca_dir = tempfile::Builder::new().prefix("switchyard-ca").tempdir()?;
        let mut config = Config::for_tests(manifests.path(), ca_dir.path());
        adjust(&mut config);
        let server = Server::start(config).await?;
        let cp = ControlPlane {
            manifests,
            server,
            ca_dir,
        };
        cp.wait_generation(1).await?;
        Ok(cp)
    }

    /// Waits until the mesh generation is at least `g` and pushed.
    pub async fn wait_generation(&self, g: u64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let pushed = self.server.cache().generation().mesh().generation;
            if pushed >= g {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "mesh generation {g} not pushed within {STEP:?} (pushed {pushed}, status {:?})",
                    self.server.status()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Current pushed generation.
    pub fn generation(&self) -> u64 {
        self.server.cache().generation().mesh().generation
    }

    /// xDS address.
    pub fn xds(&self) -> SocketAddr {
        self.server.xds_address()
    }

    /// GET on the admin API; returns status and body.
    pub async fn admin(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http(self.server.admin_address(), "GET", path).await
    }

    /// POST on the admin API.
    pub async fn admin_post(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http(self.server.admin_address(), "POST", path).await
    }

    /// DELETE on the admin API.
    pub async fn admin_delete(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http(self.server.admin_address(), "DELETE", path).await
    }

    /// `/debug/syncz` as JSON.
    pub async fn syncz(&self) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.admin("/debug/syncz").await?;
        anyhow::ensure!(code == 200, "syncz: {code} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// The syncz state of `node` for `t` (`cds`, ...), if connected.
    pub async fn sync_state(
        &self,
        node: &str,
        t: &str,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let z = self.syncz().await?;
        Ok(z.as_array()
            .and_then(|a| a.iter().rev().find(|p| p["node"] == node))
            .map(|p| p["types"][t].clone()))
    }
}

/// One HTTP/1.1 request (no body) to a server of the suite, within [`STEP`].
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    switchyard_local_cluster::http::request(addr, method, path, STEP)
        .await
        .map_err(|e| anyhow::anyhow!("{method} http://{addr}{path}: {e}"))
}

/// A running `switchyard-sidecar sds-agent` for one workload, killed on drop.
#[derive(Debug)]
pub struct SdsAgentProcess {
    child: tokio::process::Child,
    /// The Unix socket Envoy's `sds-grpc` cluster points at.
    pub socket: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SdsAgentProcess {
    /// Starts an agent for `ns`/`sa` (a bootstrap token from the control plane's CA dir),
    /// following the bundle as `node_id`, asking for `ttl_seconds` certificates (0: default),
    /// and waits until its socket exists.
    pub async fn start(
        cp: &ControlPlane,
        ns: &str,
        sa: &str,
        node_id: &str,
        ttl_seconds: u64,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("sds-agent").tempdir()?;
        let socket = dir.path().join("sds.sock");
        let log = dir.path().join("agent.log");
        let token = switchyard_ca::token::TokenAuthority::load_or_create(cp.ca_dir.path())?.create(
            ns,
            sa,
            None,
            Duration::from_secs(3600),
        );
        let bin = switchyard_test_support::echo_process::workspace_binary("switchyard-sidecar")?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("sds-agent")
            .arg("--socket")
            .arg(&socket)
            .arg("--ca-address")
            .arg(cp.xds().to_string())
            .arg("--xds-address")
            .arg(cp.xds().to_string())
            .arg("--token")
            .arg(token)
            .arg("--namespace")
            .arg(ns)
            .arg("--service-account")
            .arg(sa)
            .arg("--node-id")
            .arg(node_id)
            .arg("--ttl-seconds")
            .arg(ttl_seconds.to_string())
            .arg("--metrics-address")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .context("starting switchyard-sidecar sds-agent")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "sds agent exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "sds agent socket not ready in 10 s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(SdsAgentProcess {
            child,
            socket,
            log,
            _dir: dir,
        })
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
