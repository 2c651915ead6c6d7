//! `yardctl dev`: the local cluster (nodes and pods as network namespaces on this machine).
//!
//! `up` checks what it can at once (root, names, host routes, manifests), then starts the
//! supervisor (`yardctl dev supervise`, in its own process group so it outlives this
//! command) and relays its progress lines until the cluster is ready. Every other command
//! reads the state file; `delete-pod` asks the supervisor over its control socket.

use std::io::{BufRead as _, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use switchyard_local_cluster::control::{self, Request};
use switchyard_local_cluster::state::{ClusterState, default_state_dir};
use switchyard_local_cluster::supervisor::{self, ADMIN_PORT, UpOptions};
use switchyard_local_cluster::{addressing, ip};

use crate::admin;

/// Progress line prefixes between `dev supervise` and `dev up`.
const STEP: &str = "step ";
const READY: &str = "ready ";
const FAILED: &str = "error ";

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Bring a local cluster up: nodes, the control plane, the manifests' pods.
    #[command(
        after_help = "Example:\n  sudo yardctl dev up --nodes 2 --manifests examples/local/manifests"
    )]
    Up(UpArgs),
    /// Remove everything a local cluster created (also after a crash). Idempotent.
    Down(ClusterArgs),
    /// Nodes, pods, addresses, modes and processes.
    Status(StatusArgs),
    /// Run a command in a pod's network namespace and cgroup (or `node/<name>`,
    /// `control-plane`).
    #[command(
        after_help = "Examples:\n  yardctl dev exec client -- switchyard-echo get http://10.244.2.2:8080/\n  yardctl dev exec node/node-1 -- ip route"
    )]
    Exec(ExecArgs),
    /// A pod's logs (every container, or one with -c).
    Logs(LogsArgs),
    /// Delete a pod, as `kubectl delete pod` does: out of its Services' endpoints first,
    /// then stopped; a Deployment's pod is replaced.
    DeletePod(DeletePodArgs),
    /// The supervisor (started by `up`).
    #[command(hide = true)]
    Supervise(UpArgs),
    /// Join a namespace and cgroup, then exec a command (how the supervisor starts
    /// processes).
    #[command(hide = true)]
    Enter(EnterArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Cluster name.
    #[arg(long, default_value = "dev")]
    pub name: String,
    /// State folder (default /run/switchyard/dev/<name>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl ClusterArgs {
    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&self.name))
    }

    fn load(&self) -> anyhow::Result<ClusterState> {
        let dir = self.state_dir();
        ClusterState::load(&dir)?.ok_or_else(|| {
            switchyard_local_cluster::ClusterError::NotUp {
                name: self.name.clone(),
                state_dir: dir,
            }
            .into()
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: u8,
    /// Folder of Kubernetes manifests (Pods and Deployments run; the rest goes to the
    /// control plane); followed for changes.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Control-plane setting `key=value` (repeatable), as `switchyard serve --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Where the supervisor serves Prometheus `/metrics` (port 0: a free port, shown by
    /// `dev status`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_address: std::net::SocketAddr,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: StatusFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// `<pod>`, `<namespace>/<pod>`, `node/<node>` or `control-plane`.
    target: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// `<pod>` or `<namespace>/<pod>`; `control-plane` or `supervisor` for those.
    target: String,
    /// One container only.
    #[arg(long, short = 'c')]
    container: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeletePodArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// `<pod>` or `<namespace>/<pod>`.
    pod: String,
}

#[derive(Debug, Args)]
pub struct EnterArgs {
    /// Network namespace file.
    #[arg(long)]
    netns: PathBuf,
    /// cgroup folder.
    #[arg(long)]
    cgroup: PathBuf,
    /// The command.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `dev enter` and `dev exec`: runs before any runtime or logging exists, and replaces this
/// process; returns only on failure.
pub fn enter_now(
    netns: &Path,
    cgroup: &Path,
    argv: &[String],
    env: &[(String, String)],
) -> ExitCode {
    let e = switchyard_local_cluster::enter(netns, cgroup, argv, env);
    let _ = writeln!(std::io::stderr(), "yardctl dev: {e}");
    ExitCode::from(127)
}

/// `dev enter`.
pub fn enter(args: EnterArgs) -> ExitCode {
    enter_now(&args.netns, &args.cgroup, &args.command, &[])
}

/// `dev exec`: resolves the target from the state file, then enters it.
pub fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let state = args.cluster.load()?;
    let path_env = format!(
        "{}:{}",
        state.bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (netns, cgroup, env) = if args.target == "control-plane" {
        (
            state.control_plane.netns.clone(),
            state.cgroup.join("exec"),
            vec![],
        )
    } else if let Some(node) = args.target.strip_prefix("node/") {
        let n = state
            .node(node)
            .with_context(|| format!("no node {node:?} in cluster {}", state.name))?;
        (
            n.netns.clone(),
            state.cgroup.join("exec"),
            vec![("NODE_NAME", n.name.clone())],
        )
    } else {
        let pod = state.find_pod(&args.target)?;
        (
            pod.netns.clone(),
            pod.cgroup.clone(),
            vec![
                ("POD_NAME", pod.name.clone()),
                ("POD_NAMESPACE", pod.namespace.clone()),
                ("POD_IP", pod.ip.to_string()),
                ("NODE_NAME", pod.node.clone()),
            ],
        )
    };
    switchyard_local_cluster::cgroup::create(&cgroup)?;
    let mut env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    env.push(("PATH".into(), path_env));
    Ok(enter_now(
        &ip::netns_path(&netns),
        &cgroup,
        &args.command,
        &env,
    ))
}

/// `dev up`.
pub fn up(args: UpArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let opts = options(&args)?;
    // The same checks the supervisor makes, here so that their errors come straight back.
    supervisor::preflight(&opts)?;
    let logs = opts.state_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    // Panics and anything else the supervisor prints before its log is set up land here too.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("supervisor.log"))
        .context("opening the supervisor log")?;
    let mut child = std::process::Command::new(&opts.launcher)
        .args(["dev", "supervise", "--name", &opts.name, "--nodes"])
        .arg(opts.nodes.to_string())
        .arg("--manifests")
        .arg(&opts.manifests)
        .arg("--state-dir")
        .arg(&opts.state_dir)
        .args(args.settings.iter().flat_map(|s| ["--set", s.as_str()]))
        .arg("--metrics-address")
        .arg(opts.metrics_address.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        // Its own process group: a Ctrl-C on `up` does not take the cluster down.
        .process_group(0)
        .spawn()
        .context("starting the supervisor (yardctl dev supervise)")?;
    let stdout = child.stdout.take().context("supervisor stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the supervisor's progress")?;
        if let Some(step) = line.strip_prefix(STEP) {
            writeln!(out, "{step}")?;
        } else if let Some(ready) = line.strip_prefix(READY) {
            writeln!(out, "{ready}")?;
            writeln!(
                out,
                "cluster {} up in {:.2} s; state in {}\n  admin:  http://{}:{ADMIN_PORT} (e.g. yardctl proxy-status --admin {}:{ADMIN_PORT})\n  status: yardctl dev status --name {}\n  down:   yardctl dev down --name {}",
                opts.name,
                started.elapsed().as_secs_f64(),
                opts.state_dir.display(),
                addressing::CONTROL_PLANE_IP,
                addressing::CONTROL_PLANE_IP,
                opts.name,
                opts.name
            )?;
            return Ok(ExitCode::SUCCESS);
        } else if let Some(error) = line.strip_prefix(FAILED) {
            let _ = child.wait();
            return Err(failed_up(&opts, error));
        }
    }
    let status = child.wait().context("waiting for the supervisor")?;
    Err(failed_up(
        &opts,
        &format!("the supervisor ended before the cluster was ready ({status})"),
    ))
}

/// A failed `up` takes down what it made; the error carries the end of the logs, which go
/// with it.
fn failed_up(opts: &UpOptions, error: &str) -> anyhow::Error {
    let logs = opts.state_dir.join("logs");
    let mut tails = String::new();
    for file in ["supervisor.log", "control-plane.log"] {
        if let Ok(text) = std::fs::read_to_string(logs.join(file)) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            if !tail.is_empty() {
                tails.push_str(&format!("\n--- last lines of {file}:\n{}", tail.join("\n")));
            }
        }
    }
    let cleanup = match switchyard_local_cluster::down(&opts.name, &opts.state_dir) {
        Ok(_) => "everything it made was removed".to_string(),
        Err(e) => format!("cleaning up failed too: {e}"),
    };
    anyhow::anyhow!("{error}\n({cleanup}){tails}")
}

fn options(args: &UpArgs) -> anyhow::Result<UpOptions> {
    let launcher = std::env::current_exe().context("finding the yardctl binary")?;
    let bin_dir = launcher
        .parent()
        .context("the yardctl binary has no folder")?
        .to_path_buf();
    anyhow::ensure!(
        bin_dir.join("switchyard").exists(),
        "no switchyard binary next to yardctl in {} (cargo build --workspace --bins builds both)",
        bin_dir.display()
    );
    let manifests = args
        .manifests
        .canonicalize()
        .with_context(|| format!("manifests folder {}", args.manifests.display()))?;
    let state_dir = args.cluster.state_dir();
    let state_dir = if state_dir.is_absolute() {
        state_dir
    } else {
        std::env::current_dir()?.join(state_dir)
    };
    Ok(UpOptions {
        name: args.cluster.name.clone(),
        nodes: args.nodes,
        manifests,
        state_dir,
        bin_dir,
        launcher,
        control_plane_settings: args.settings.clone(),
        metrics_address: args.metrics_address,
    })
}

/// `dev supervise`: brings the cluster up and supervises it; progress lines on stdout for
/// `up`, logs in `<state>/logs/supervisor.log`.
pub fn supervise(args: UpArgs) -> ExitCode {
    let result = (|| -> anyhow::Result<std::convert::Infallible> {
        let opts = options(&args)?;
        let logs = opts.state_dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join("supervisor.log"))
            .context("opening the supervisor log")?;
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
        let progress = Box::new(|line: &str| {
            let prefix = if line.contains("] ready: ") {
                READY
            } else {
                STEP
            };
            // `up` may be gone (killed, or done): progress is best effort.
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "{prefix}{line}");
            let _ = stdout.flush();
        });
        // Two workers: child reaping, the control socket and /metrics keep going while the
        // event loop runs `ip` commands.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let injector =
            crate::injector::Injector::new(&opts.state_dir, &opts.control_plane_settings)?;
        Ok(rt.block_on(supervisor::run(opts, Arc::new(injector), progress))?)
    })();
    let Err(e) = result;
    tracing::error!(error = %format!("{e:#}"), "supervisor stopped");
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{FAILED}{}", format!("{e:#}").replace('\n', " "));
    ExitCode::FAILURE
}

/// `dev down`.
pub fn down(args: ClusterArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let report = switchyard_local_cluster::down(&args.name, &args.state_dir())?;
    if report.found {
        writeln!(
            out,
            "cluster {} down: {} processes killed, {} network namespaces, {} links and {} cgroup trees removed",
            args.name,
            report.processes,
            report.namespaces.len(),
            report.links.len(),
            report.cgroups.len()
        )?;
    } else {
        writeln!(out, "cluster {}: nothing to remove", args.name)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `dev delete-pod`.
pub fn delete_pod(args: DeletePodArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let state = args.cluster.load()?;
    let key = state.find_pod(&args.pod)?.key();
    control::send(
        &args.cluster.state_dir(),
        &Request::DeletePod { pod: key.clone() },
        Duration::from_secs(30),
    )?;
    writeln!(out, "pod {key} deleted")?;
    Ok(ExitCode::SUCCESS)
}

/// `dev logs`.
pub fn logs(args: LogsArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let state = args.cluster.load()?;
    let files: Vec<(String, PathBuf)> = match args.target.as_str() {
        "control-plane" => vec![("switchyard".into(), state.control_plane.process.log.clone())],
        "supervisor" => vec![(
            "supervisor".into(),
            state.state_dir.join("logs").join("supervisor.log"),
        )],
        pod => {
            let pod = state.find_pod(pod)?;
            let files: Vec<(String, PathBuf)> = pod
                .containers
                .iter()
                .filter(|(name, _)| args.container.as_ref().is_none_or(|c| c == *name))
                .map(|(name, p)| (name.clone(), p.log.clone()))
                .collect();
            anyhow::ensure!(
                !files.is_empty(),
                "pod {} has no container {:?}; containers: {}",
                pod.key(),
                args.container.unwrap_or_default(),
                pod.containers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            files
        }
    };
    let many = files.len() > 1;
    for (name, path) in files {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            if many {
                writeln!(out, "[{name}] {line}")?;
            } else {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dev status`.
pub async fn status(args: StatusArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let state = args.cluster.load()?;
    let admin = format!("{}:{ADMIN_PORT}", state.control_plane.ip);
    let alive =
        |pid: Option<u32>| pid.is_some_and(|p| Path::new("/proc").join(p.to_string()).exists());
    let supervisor_running = state
        .supervisor_pid
        .is_some_and(|p| switchyard_local_cluster::is_supervisor(p, &state.name));
    let mut modes = Vec::new();
    for pod in state.pods.values() {
        let path = format!("/debug/mode?namespace={}&pod={}", pod.namespace, pod.name);
        let mode = match admin::get_json(&admin, &path).await {
            Ok(v) => v["mode"].as_str().unwrap_or("?").to_string(),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "mode lookup failed");
                "?".to_string()
            }
        };
        modes.push(mode);
    }
    match args.output {
        StatusFormat::Json => {
            let mut v = serde_json::to_value(&state)?;
            for (pod, mode) in state.pods.values().zip(&modes) {
                v["pods"][pod.key()]["mode"] = json!(mode);
            }
            v["supervisor_running"] = Value::Bool(supervisor_running);
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        StatusFormat::Table => {
            let sup = if supervisor_running {
                "running"
            } else {
                "NOT RUNNING (run `yardctl dev down`)"
            };
            writeln!(
                out,
                "cluster {}: {:?}, supervisor pid {} {sup}",
                state.name,
                state.phase,
                state
                    .supervisor_pid
                    .map(|p| p.to_string())
                    .unwrap_or_default()
            )?;
            if let Some(m) = state.metrics_address {
                writeln!(out, "supervisor metrics: http://{m}/metrics")?;
            }
            for (owner, problem) in &state.pod_problems {
                writeln!(out, "  pod not started ({owner}): {problem}")?;
            }
            for p in &state.manifest_problems {
                writeln!(out, "  manifest problem (last good pods kept): {p}")?;
            }
            let cp = &state.control_plane.process;
            writeln!(
                out,
                "control plane {}: pid {} {}, restarts {}; admin http://{admin}",
                state.control_plane.ip,
                cp.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                if alive(cp.pid) { "running" } else { "down" },
                cp.restarts
            )?;
            writeln!(
                out,
                "\n{:<10} {:<14} {:<16} PROCESSES",
                "NODE", "IP", "POD CIDR"
            )?;
            for n in &state.nodes {
                let procs: Vec<String> = n
                    .processes
                    .iter()
                    .map(|(name, p)| {
                        format!(
                            "{name}:{}",
                            p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
                        )
                    })
                    .collect();
                writeln!(
                    out,
                    "{:<10} {:<14} {:<16} {}",
                    n.name,
                    n.ip.to_string(),
                    n.pod_cidr.to_string(),
                    if procs.is_empty() {
                        "-".to_string()
                    } else {
                        procs.join(" ")
                    }
                )?;
            }
            writeln!(
                out,
                "\n{:<32} {:<8} {:<12} {:<8} {:<6} {:<9} PIDS",
                "POD", "NODE", "IP", "MODE", "READY", "RESTARTS"
            )?;
            for (pod, mode) in state.pods.values().zip(&modes) {
                let running = pod.containers.values().filter(|c| alive(c.pid)).count();
                let restarts: u32 = pod.containers.values().map(|c| c.restarts).sum();
                let pids: Vec<String> = pod
                    .containers
                    .values()
                    .filter_map(|c| c.pid.map(|p| p.to_string()))
                    .collect();
                writeln!(
                    out,
                    "{:<32} {:<8} {:<12} {:<8} {:<6} {:<9} {}",
                    pod.key(),
                    pod.node,
                    pod.ip.to_string(),
                    mode,
                    format!("{running}/{}", pod.containers.len()),
                    restarts,
                    pids.join(",")
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
