//! Data-path benchmark: client pod → server pod with no proxies (`direct`), through a pair of
//! Switchyard micro-sidecars (`sidecar`: `switchyard-sidecar proxy` in each pod) and through
//! a pair of stock Envoy 1.40 proxies (`envoy`: kind `envoy`, each with `switchyard-sidecar
//! sds-agent`). Both proxied setups speak HBONE between the pods and are configured by a
//! real `switchyard serve` process. One run, one topology, one set of processes per setup.
//!
//! Topology (needs root; nothing leaves the benchmark's private network namespace):
//!
//! ```text
//!  host netns (private)                client-0 netns             echo-1 netns
//!  switchyard serve on 10.244.0.1  ─┐  10.244.0.5 (eth0)          10.244.0.11 (eth0)
//!  bridge sybr0 10.244.0.1/24 ──────┼─ veth ── load generator     veth ── echo app
//!                                   └─ veth ── client proxy       server proxy (0.0.0.0:18080
//!                                                                          and :19090)
//! ```
//!
//! Capture per setup:
//! * `direct`: none; the load generator dials the server pod's IP and app port.
//! * `sidecar`: `switchyard-sidecar init` (the real pod capture, defaults) in both pods; the
//!   sidecars mark their own sockets (`SO_MARK` 1337) so the capture skips them. The load
//!   generator dials the Service VIP, which is redirected to the client sidecar.
//! * `envoy`: the same rules (rendered by `dataplane-sidecar`'s `capture::render`) plus one
//!   rule exempting uid 1337, as Istio does: Envoy does not mark its sockets, so Envoy and its
//!   SDS agent run as uid/gid 1337.
//!
//! Workloads: HTTP/1.1 GET and gRPC unary `Echo` with a 1,000-byte message, each at a fixed
//! rate (`switchyard-echo load`, open loop, default 1,000 req/s, HdrHistogram percentiles) and
//! at max rate with 64 connections (`wrk` for HTTP/1.1, `h2load` for gRPC, one stream per
//! connection: C event loops that take about a third of the CPU per request echo's Rust load
//! generator does, so more of the 2 shared cores go to what is measured; `--max-load echo`
//! uses echo's instead). h2load knows HTTP status only: a gRPC answer counts as ok when it is
//! 2xx and the DATA received covers a whole answer for it (the size of one measured first), so
//! a `grpc-status` failure, which has no DATA, is an error; the path is also checked end to
//! end with echo's client, which reads `grpc-status`.
//! Echo has no way to ask for a body size, so the HTTP answer is padded to ~1 KB through the
//! query string, which echo copies into its JSON answer (the request grows by as much); the
//! answer size through each setup is measured and reported. The fixed-rate workloads run
//! first (after a warm-up at the fixed rate), so memory "at 1,000 req/s" is each proxy's peak
//! RSS before any max-rate load, split into file-backed pages (the binary's code and shared
//! libraries, shared by every process running the same binary) and anonymous memory (its
//! own); the peak over the whole run is reported too. CPU is `utime + stime` per 1,000
//! requests of each workload. The load generator and the echo app run on one thread each
//! (`--threads 1`, `wrk --threads 1`, `h2load --threads 1`): they share the 2 cores with the
//! proxies, and the less they take the more the max rate measures the proxies. The sidecar
//! binary's linkage is reported: `scripts/build-release.sh` links it statically. Both proxies
//! run with the same number of worker threads, `--concurrency 2` (Istio's default for its
//! sidecars) unless `--envoy-concurrency` says otherwise; `--sidecar-concurrency` sets the
//! sidecar's apart.
//!
//! ```text
//! scripts/build-release.sh
//! cargo bench -p switchyard-tests --bench sidecar_vs_envoy -- --duration 10s --setups direct,sidecar,envoy
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use switchyard_dataplane_sidecar::capture::{self, CaptureConfig};
use switchyard_test_support::manifests::{grpc, http, namespace, pod, service};
use switchyard_test_support::{EnvoyOptions, envoy_binary, netns};
use switchyard_tests::loadgen;

const HOST_IP: &str = "10.244.0.1";
const CLIENT_IP: &str = "10.244.0.5";
const SERVER_IP: &str = "10.244.0.11";
const VIP: &str = "10.96.0.10";
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9090;
const APP_HTTP_PORT: u16 = 18080;
const APP_GRPC_PORT: u16 = 19090;
const XDS_PORT: u16 = 15010;
/// The uid Envoy and its SDS agent run as; the capture skips its sockets (Istio's choice).
const PROXY_UID: u32 = 1337;
const HTTP_HOST: &str = "echo.default.svc.cluster.local:8080";
const GRPC_HOST: &str = "echo.default.svc.cluster.local:9090";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// arguments

#[derive(Debug, Clone)]
struct Args {
    duration: Duration,
    warmup: Duration,
    setups: Vec<Setup>,
    rate: f64,
    fixed_connections: usize,
    max_connections: usize,
    envoy_concurrency: u32,
    /// `None`: Envoy's.
    sidecar_concurrency: Option<u32>,
    body_bytes: usize,
    grpc_message_bytes: usize,
    max_load: MaxLoad,
    out: PathBuf,
}

/// What sends the max-rate load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MaxLoad {
    /// `wrk` for HTTP/1.1 and `h2load` for gRPC: event loops in C that spend about a third
    /// of the CPU per request `switchyard-echo load` does, leaving the shared cores to the
    /// proxies being measured.
    Native,
    /// `switchyard-echo load --max-rate`, as the fixed-rate workloads.
    Echo,
}

impl MaxLoad {
    fn name(self) -> &'static str {
        match self {
            MaxLoad::Native => "wrk (HTTP/1.1), h2load (gRPC)",
            MaxLoad::Echo => "switchyard-echo load",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Direct,
    Sidecar,
    Envoy,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Sidecar => "sidecar",
            Setup::Envoy => "envoy",
        }
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
}

fn parse_args() -> Args {
    let mut a = Args {
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        setups: vec![Setup::Direct, Setup::Sidecar, Setup::Envoy],
        rate: 1000.0,
        fixed_connections: 8,
        max_connections: 64,
        envoy_concurrency: 2,
        sidecar_concurrency: None,
        body_bytes: 1024,
        grpc_message_bytes: 1000,
        max_load: MaxLoad::Native,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-results")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--duration" => a.duration = parse_duration(&val()).expect("--duration 10s"),
            "--warmup" => a.warmup = parse_duration(&val()).expect("--warmup 1s"),
            "--setups" => {
                a.setups = val()
                    .split(',')
                    .map(|s| match s.trim() {
                        "direct" => Setup::Direct,
                        "sidecar" => Setup::Sidecar,
                        "envoy" => Setup::Envoy,
                        other => panic!("unknown setup {other}: want direct,sidecar,envoy"),
                    })
                    .collect()
            }
            "--rate" => a.rate = val().parse().expect("--rate R"),
            "--fixed-connections" => {
                a.fixed_connections = val().parse().expect("--fixed-connections N")
            }
            "--connections" => a.max_connections = val().parse().expect("--connections N"),
            "--envoy-concurrency" => {
                a.envoy_concurrency = val().parse().expect("--envoy-concurrency N")
            }
            "--sidecar-concurrency" => {
                a.sidecar_concurrency = Some(val().parse().expect("--sidecar-concurrency N"))
            }
            "--body-bytes" => a.body_bytes = val().parse().expect("--body-bytes N"),
            "--grpc-message-bytes" => {
                a.grpc_message_bytes = val().parse().expect("--grpc-message-bytes N")
            }
            "--max-load" => {
                a.max_load = match val().as_str() {
                    "native" => MaxLoad::Native,
                    "echo" => MaxLoad::Echo,
                    other => panic!("unknown --max-load {other}: want native or echo"),
                }
            }
            "--out" => a.out = PathBuf::from(val()),
            "--bench" => {}
            "--help" | "-h" => {
                println!(
                    "sidecar_vs_envoy [--duration 10s] [--warmup 1s] [--setups direct,sidecar,envoy] \
                     [--rate 1000] [--fixed-connections 8] [--connections 64] \
                     [--envoy-concurrency 2] [--sidecar-concurrency <Envoy's>] [--body-bytes 1024] [--grpc-message-bytes 1000] \
                     [--max-load native|echo] [--out DIR]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (try --help)"),
        }
    }
    a
}

fn step(text: impl std::fmt::Display) {
    println!("[sidecar_vs_envoy] {text}");
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------------------------------------
// network namespaces

/// A pod: its own network namespace (held open by a file descriptor), a veth to the host
/// bridge, an IP.
struct Pod {
    name: &'static str,
    ip: &'static str,
    netns: File,
}

impl Pod {
    /// Creates the namespace from a fresh thread (unshare affects only that thread) and wires
    /// it to the host bridge through a veth whose host side is `host_link`.
    fn create(name: &'static str, ip: &'static str, host_link: &str) -> anyhow::Result<Self> {
        let host_pid = std::process::id().to_string();
        let peer = host_link.to_string();
        let netns = std::thread::spawn(move || -> anyhow::Result<File> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .context("unshare(CLONE_NEWNET)")?;
            let netns = File::open("/proc/thread-self/ns/net")?;
            netns::run("ip", &["link", "set", "lo", "up"])?;
            // the peer lands in the host namespace (the process's main thread)
            netns::run(
                "ip",
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
                    &host_pid,
                ],
            )?;
            netns::run("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            netns::run("ip", &["link", "set", "eth0", "up"])?;
            netns::run("ip", &["route", "add", "default", "via", HOST_IP])?;
            Ok(netns)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("pod setup thread panicked"))??;
        netns::run("ip", &["link", "set", host_link, "master", "sybr0"])?;
        netns::run("ip", &["link", "set", host_link, "up"])?;
        Ok(Pod { name, ip, netns })
    }

    /// Runs `f` on a thread inside the pod's namespace (sockets it opens belong to the pod,
    /// processes it spawns live in the pod).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&self.netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the pod namespace");
                f()
            })
            .join()
            .expect("pod thread panicked")
        })
    }

    fn spawn(&self, what: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let file = File::create(log)?;
        cmd.stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null());
        let child = self
            .run(|| cmd.spawn())
            .with_context(|| format!("starting {what} in pod {}", self.name))?;
        Ok(Proc {
            name: format!("{what} ({})", self.name),
            child,
            log: log.to_path_buf(),
        })
    }

    fn sh(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        self.run(|| netns::run(program, args))
    }

    /// Loads an nftables ruleset in the pod.
    fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        self.run(|| netns::nft(ruleset))
    }

    fn http(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        self.run(|| http_get(addr, path))
    }
}

/// One GET over a fresh connection, `Connection: close`.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

// ---------------------------------------------------------------------------------------------
// processes

/// A child process, stopped (SIGTERM, then SIGKILL) on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; log tail:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// CPU time used so far (utime + stime), in seconds.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// Peak resident set size (`VmHWM`), MiB.
    fn peak_rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmHWM:") as f64 / 1024.0
    }

    /// Resident file-backed and anonymous memory now (`RssFile`, `RssAnon`), MiB.
    fn rss_file_anon_mib(&self) -> (f64, f64) {
        (
            status_kib(self.pid(), "RssFile:") as f64 / 1024.0,
            status_kib(self.pid(), "RssAnon:") as f64 / 1024.0,
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..30 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            step(format!("pid {pid} still running 3 s after SIGTERM: killed"));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_seconds(pid: u32) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(clock_ticks);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(u), Some(s)) => (u + s) as f64 / ticks,
        _ => f64::NAN,
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The Envoy executable itself: `envoy_binary()` is usually the venv's Python entry point,
/// whose interpreter may live where uid 1337 cannot read (`/root/.pyenv`); the package keeps
/// the real binary in `site-packages/envoy/_bin/envoy`.
fn real_envoy_binary() -> anyhow::Result<PathBuf> {
    let wrapper = envoy_binary()?;
    let head = std::fs::read(&wrapper).map(|b| b.starts_with(b"#!"))?;
    if !head {
        return Ok(wrapper);
    }
    let venv = wrapper
        .parent()
        .and_then(Path::parent)
        .context("locating the venv")?;
    for lib in std::fs::read_dir(venv.join("lib"))?.flatten() {
        let bin = lib.path().join("site-packages/envoy/_bin/envoy");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "{} is a script and no site-packages/envoy/_bin/envoy was found next to it",
        wrapper.display()
    )
}

/// Whether the ELF executable `bin` is statically linked: it has no interpreter
/// (`PT_INTERP`), so it loads no shared library.
fn is_static_elf(bin: &Path) -> anyhow::Result<bool> {
    let mut head = Vec::with_capacity(64 * 1024);
    File::open(bin)?.take(64 * 1024).read_to_end(&mut head)?;
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        head.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit little-endian ELF: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38.
    if head.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("{} is not a 64-bit little-endian ELF file", bin.display());
    }
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{}: truncated ELF header", bin.display());
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(count) {
        let at = phoff as usize + i * usize::from(entsize);
        let Some(p_type) = head
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        else {
            bail!("{}: program headers beyond the first 64 KiB", bin.display());
        };
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A binary of this workspace from `target/release` (this bench runs from
/// `target/release/deps`).
fn release_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("locating the target directory")?;
    let bin = dir.join(name);
    if !bin.is_file() {
        bail!(
            "{} not found: build the binaries first with scripts/build-release.sh",
            bin.display()
        );
    }
    Ok(bin)
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?} (last error: {last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// the mesh

struct Mesh {
    dir: tempfile::TempDir,
    control_plane: Proc,
    client: Pod,
    server: Pod,
    _app: Proc,
    sidecar_bin: PathBuf,
    /// Whether `sidecar_bin` is statically linked.
    sidecar_static: bool,
    echo_bin: PathBuf,
    tokens: switchyard_ca::token::TokenAuthority,
    /// The `message` size of every gRPC request.
    grpc_message_bytes: usize,
    max_load: MaxLoad,
    sidecar_concurrency: u32,
}

fn manifests() -> Vec<String> {
    vec![
        namespace("default", Some("sidecar")),
        service(
            "default",
            "echo",
            VIP,
            &[
                http(HTTP_PORT, APP_HTTP_PORT),
                grpc(GRPC_PORT, APP_GRPC_PORT),
            ],
        ),
        pod("default", "client-0", "client", CLIENT_IP),
        pod("default", "echo-1", "echo", SERVER_IP),
    ]
}

impl Mesh {
    fn start(args: &Args) -> anyhow::Result<Self> {
        if args.max_load == MaxLoad::Native {
            for tool in ["wrk", "h2load"] {
                which(tool).with_context(|| {
                    format!(
                        "{tool} not found: the max-rate load needs wrk and h2load \
                         (scripts/setup.sh installs them: Debian packages wrk, nghttp2-client), \
                         or pass --max-load echo"
                    )
                })?;
            }
        }
        let switchyard = release_binary("switchyard")?;
        // SIDECAR_BENCH_SIDECAR=<path> measures another build of the sidecar (A/B runs)
        let sidecar_bin = match std::env::var_os("SIDECAR_BENCH_SIDECAR") {
            Some(path) => std::fs::canonicalize(&path)
                .with_context(|| format!("SIDECAR_BENCH_SIDECAR={}", Path::new(&path).display()))?,
            None => release_binary("switchyard-sidecar")?,
        };
        let sidecar_static = is_static_elf(&sidecar_bin)?;
        step(format!(
            "{}: {}",
            sidecar_bin.display(),
            if sidecar_static {
                "statically linked"
            } else {
                "dynamically linked (its RSS includes the shared libraries it maps; \
                 scripts/build-release.sh links it statically)"
            }
        ));
        let echo_bin = release_binary("switchyard-echo")?;
        // SIDECAR_BENCH_KEEP=1 keeps the logs and configs for a look afterwards
        let keep = std::env::var_os("SIDECAR_BENCH_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("sidecar-vs-envoy")
            .disable_cleanup(keep)
            .tempdir()?;
        if keep {
            step(format!("keeping {}", dir.path().display()));
        }

        step("host: bridge sybr0 10.244.0.1/24 in the benchmark's private network namespace");
        for cmd in [
            "link add sybr0 type bridge",
            "addr add 10.244.0.1/24 dev sybr0",
            "link set sybr0 up",
            "route add 10.96.0.0/16 dev sybr0",
        ] {
            netns::run("ip", &cmd.split(' ').collect::<Vec<_>>())?;
        }
        let client = Pod::create("client-0", CLIENT_IP, "syv-client")?;
        let server = Pod::create("echo-1", SERVER_IP, "syv-server")?;
        step(format!(
            "pods: {} {} and {} {}, each its own network namespace, veth to the bridge",
            client.name, client.ip, server.name, server.ip
        ));

        let config_dir = dir.path().join("manifests");
        std::fs::create_dir_all(&config_dir)?;
        std::fs::write(config_dir.join("mesh.yaml"), manifests().join("---\n"))?;
        let ca_dir = dir.path().join("ca");
        let admin: SocketAddr = "127.0.0.1:15014".parse()?;
        let log = File::create(dir.path().join("switchyard.log"))?;
        let mut cmd = Command::new(&switchyard);
        cmd.args(["serve", "--config-dir"])
            .arg(&config_dir)
            .args(["--xds-address", &format!("{HOST_IP}:{XDS_PORT}")])
            .args(["--admin-address", &admin.to_string()])
            .arg("--set")
            .arg(format!("ca_dir={}", ca_dir.display()))
            .args(["--set", "xds_tls_address=127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut control_plane = Proc {
            name: "switchyard serve".into(),
            child: cmd.spawn().context("starting switchyard serve")?,
            log: dir.path().join("switchyard.log"),
        };
        wait_until("switchyard /readyz", READY_TIMEOUT, || {
            control_plane.check_alive()?;
            Ok(http_get(admin, "/readyz")?.0 == 200)
        })?;
        let tokens = switchyard_ca::token::TokenAuthority::load_or_create(&ca_dir)?;
        step(format!(
            "control plane: switchyard serve (pid {}) on {HOST_IP}:{XDS_PORT}",
            control_plane.pid()
        ));

        let ready_file = dir.path().join("echo-ready.json");
        let mut cmd = Command::new(&echo_bin);
        cmd.args(["serve", "--name", "echo-1"])
            .args(["--http", &format!("0.0.0.0:{APP_HTTP_PORT}")])
            .args(["--grpc", &format!("0.0.0.0:{APP_GRPC_PORT}")])
            .arg("--ready-file")
            .arg(&ready_file)
            .args(["--threads", "1"])
            .env("RUST_LOG", "warn");
        let mut app = server.spawn("echo app", cmd, &dir.path().join("echo.log"))?;
        wait_until("the echo app", READY_TIMEOUT, || {
            app.check_alive()?;
            Ok(ready_file.exists())
        })?;
        step(format!(
            "server app: switchyard-echo serve (pid {}) on 0.0.0.0:{APP_HTTP_PORT} (HTTP) and :{APP_GRPC_PORT} (gRPC) in {}",
            app.pid(),
            server.name
        ));
        Ok(Mesh {
            dir,
            control_plane,
            client,
            server,
            _app: app,
            sidecar_bin,
            sidecar_static,
            echo_bin,
            tokens,
            grpc_message_bytes: args.grpc_message_bytes,
            max_load: args.max_load,
            sidecar_concurrency: args.sidecar_concurrency.unwrap_or(args.envoy_concurrency),
        })
    }

    fn token(&self, sa: &str) -> String {
        self.tokens
            .create("default", sa, None, Duration::from_secs(3600))
    }

    fn xds(&self) -> String {
        format!("{HOST_IP}:{XDS_PORT}")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Removes any capture from both pods.
    fn no_capture(&self) -> anyhow::Result<()> {
        for p in [&self.client, &self.server] {
            p.nft(&capture::render_removal())?;
        }
        Ok(())
    }

    fn start_sidecar(&self, pod: &Pod, sa: &str) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(&self.sidecar_bin);
        cmd.args([
            "proxy",
            "--token",
            &self.token(sa),
            "--namespace",
            "default",
        ])
        .args(["--service-account", sa, "--pod-name", pod.name])
        .args(["--pod-ip", pod.ip])
        .args(["--ca-address", &self.xds(), "--xds-address", &self.xds()])
        .args(["--concurrency", &self.sidecar_concurrency.to_string()])
        // Drained well within the 3 s a stopped process gets (like Envoy's drain time
        // below): a proxy that exits cleanly writes its PGO profile when built to.
        .args(["--drain-seconds", "1"])
        .env("RUST_LOG", "warn");
        pod.spawn(
            "switchyard-sidecar proxy",
            cmd,
            &self.log(&format!("sidecar-{}.log", pod.name)),
        )
    }

    /// Envoy and its SDS agent, both as uid/gid [`PROXY_UID`].
    fn start_envoy(&self, pod: &Pod, sa: &str, concurrency: u32) -> anyhow::Result<(Proc, Proc)> {
        let dir = self.dir.path().join(format!("envoy-{}", pod.name));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(PROXY_UID), Some(PROXY_UID))?;
        let node_id = format!(
            "envoy~{}~{}.default~default.svc.cluster.local",
            pod.ip, pod.name
        );
        let socket = dir.join("sds.sock");
        let mut cmd = Command::new(&self.sidecar_bin);
        cmd.arg("sds-agent")
            .arg("--socket")
            .arg(&socket)
            .args(["--ca-address", &self.xds(), "--xds-address", &self.xds()])
            .args(["--token", &self.token(sa), "--namespace", "default"])
            .args(["--service-account", sa, "--node-id", &node_id])
            .args(["--metrics-address", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .uid(PROXY_UID)
            .gid(PROXY_UID);
        let mut agent = pod.spawn(
            "switchyard-sidecar sds-agent",
            cmd,
            &self.log(&format!("sds-agent-{}.log", pod.name)),
        )?;
        wait_until("the sds agent socket", READY_TIMEOUT, || {
            agent.check_alive()?;
            Ok(socket.exists())
        })?;

        let mut opts = EnvoyOptions::new(node_id, format!("{HOST_IP}:{XDS_PORT}").parse()?)
            .delta(true)
            .sds_socket(&socket);
        opts.concurrency = concurrency;
        let bootstrap = dir.join("bootstrap.json");
        std::fs::write(&bootstrap, serde_json::to_string_pretty(&opts.bootstrap())?)?;
        let admin_file = dir.join("admin.addr");
        let mut cmd = Command::new(real_envoy_binary()?);
        cmd.arg("-c")
            .arg(&bootstrap)
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["-l", "warning"])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--drain-time-s", "1", "--parent-shutdown-time-s", "2"])
            .uid(PROXY_UID)
            .gid(PROXY_UID);
        let mut envoy = pod.spawn("envoy", cmd, &self.log(&format!("envoy-{}.log", pod.name)))?;
        wait_until("envoy's admin address", READY_TIMEOUT, || {
            envoy.check_alive()?;
            Ok(admin_file.exists())
        })?;
        Ok((envoy, agent))
    }

    fn envoy_admin(&self, pod: &Pod, path: &str) -> anyhow::Result<String> {
        let file = self
            .dir
            .path()
            .join(format!("envoy-{}", pod.name))
            .join("admin.addr");
        let addr: SocketAddr = std::fs::read_to_string(file)?.trim().parse()?;
        Ok(pod.http(addr, path)?.1)
    }

    /// `switchyard-echo get` from the client pod: the body.
    fn get(&self, url: &str) -> anyhow::Result<String> {
        let out = self.client.run(|| {
            Command::new(&self.echo_bin)
                .args(["get", url, "--host", HTTP_HOST])
                .env("RUST_LOG", "warn")
                .output()
        })?;
        if !out.status.success() {
            bail!("GET {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let mut body = String::from_utf8_lossy(&out.stdout).into_owned();
        // `get` adds a newline when the body has none (echo's JSON has none)
        if body.ends_with('\n') {
            body.pop();
        }
        Ok(body)
    }

    /// One load run from the client pod; its report in `switchyard-echo load`'s JSON shape.
    fn load(
        &self,
        target: &Target,
        pace: Pace,
        connections: usize,
        duration: Duration,
    ) -> anyhow::Result<Value> {
        match (pace, self.max_load, target) {
            (Pace::Max, MaxLoad::Native, Target::Http(url)) => self.wrk(url, connections, duration),
            (Pace::Max, MaxLoad::Native, Target::Grpc(addr)) => {
                self.h2load(addr, connections, duration)
            }
            _ => self.echo_load(target, pace, connections, duration),
        }
    }

    /// One `switchyard-echo load` run from the client pod; its JSON report.
    fn echo_load(
        &self,
        target: &Target,
        pace: Pace,
        connections: usize,
        duration: Duration,
    ) -> anyhow::Result<Value> {
        let mut cmd = Command::new(&self.echo_bin);
        cmd.arg("load");
        match target {
            Target::Http(url) => cmd.args(["--http", url, "--host", HTTP_HOST]),
            Target::Grpc(addr) => cmd
                .args(["--grpc", addr, "--host", GRPC_HOST])
                .args(["--message-bytes", &self.grpc_message_bytes.to_string()]),
        };
        cmd.args(["--duration", &format!("{}ms", duration.as_millis())])
            .args(["--connections", &connections.to_string()])
            .args(["--timeout", "5s"])
            // One thread: the load generator shares the 2 cores with what it measures.
            .args(["--threads", "1"])
            .env("RUST_LOG", "warn");
        match pace {
            Pace::Fixed(r) => cmd.args(["--rate", &r.to_string()]),
            Pace::Max => cmd.arg("--max-rate"),
        };
        let out = self.client.run(|| cmd.output())?;
        if !out.status.success() {
            bail!(
                "switchyard-echo load failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "parsing the load report: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Max-rate HTTP/1.1 from `wrk` on one thread, `connections` keep-alive connections;
    /// a Lua `done` hook prints the counts and percentiles as one JSON line.
    fn wrk(&self, url: &str, connections: usize, duration: Duration) -> anyhow::Result<Value> {
        let script = self.dir.path().join("wrk-report.lua");
        std::fs::write(&script, loadgen::WRK_REPORT_SCRIPT)?;
        let mut cmd = Command::new("wrk");
        cmd.args(["--threads", "1"])
            .args(["--connections", &connections.to_string()])
            .args(["--duration", &format!("{}s", duration.as_secs().max(1))])
            .args(["--timeout", "5s"])
            .args(["--header", &format!("Host: {HTTP_HOST}")])
            .arg("--script")
            .arg(&script)
            .arg(url);
        let stdout = self.run_tool("wrk", cmd)?;
        loadgen::wrk_report(&stdout, url, connections)
    }

    /// Max-rate gRPC unary `Echo` from `h2load` (nghttp2) on one thread, one stream at a time
    /// on each of `connections` HTTP/2 connections, the request framed by
    /// [`loadgen::grpc_echo_request`]. One request first measures the size of an answer's
    /// DATA, which tells answers from `grpc-status` failures (see [`loadgen::h2load_report`]);
    /// latency percentiles come from h2load's per-request log.
    fn h2load(&self, addr: &str, connections: usize, duration: Duration) -> anyhow::Result<Value> {
        let body = self.dir.path().join("grpc-request.bin");
        std::fs::write(&body, loadgen::grpc_echo_request(self.grpc_message_bytes))?;
        let log = self.dir.path().join("h2load.log");
        let url = format!("http://{addr}/switchyard.test.v1.Echo/Echo");
        let h2load = |log: &Path, clients: usize, pace: &[String]| -> anyhow::Result<String> {
            // h2load appends to its log: start each run from an empty one
            if log.exists() {
                std::fs::remove_file(log)?;
            }
            let mut cmd = Command::new("h2load");
            cmd.args(["--threads", "1"])
                .args(["--clients", &clients.to_string()])
                .args(["--max-concurrent-streams", "1"])
                .args(pace)
                // a stuck stream ends its connection (an error) instead of idling it
                .args(["--connection-inactivity-timeout", "5"])
                .args(["--header", &format!(":authority: {GRPC_HOST}")])
                .args(["--header", "content-type: application/grpc"])
                .args(["--header", "te: trailers"])
                .arg("--data")
                .arg(&body)
                .arg("--log-file")
                .arg(log)
                .arg(&url);
            self.run_tool("h2load", cmd)
        };
        let probe = loadgen::parse_h2load(&h2load(&log, 1, &["--requests".into(), "1".into()])?)?;
        if probe.succeeded != 1 || probe.data_bytes == 0 {
            bail!("one gRPC request through h2load got no answer: {probe:?}");
        }
        let pace = [
            "--duration".to_owned(),
            duration.as_secs().max(1).to_string(),
        ];
        let summary = loadgen::parse_h2load(&h2load(&log, connections, &pace)?)?;
        let latencies = loadgen::h2load_latencies(&std::fs::read_to_string(&log)?);
        loadgen::h2load_report(&summary, latencies, probe.data_bytes, &url, connections)
    }

    /// Runs a load generator in the client pod; its standard output.
    fn run_tool(&self, name: &str, mut cmd: Command) -> anyhow::Result<String> {
        let out = self.client.run(|| cmd.output())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{name} failed ({}): {} {}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

#[derive(Debug, Clone)]
enum Target {
    Http(String),
    Grpc(String),
}

#[derive(Debug, Clone, Copy)]
enum Pace {
    Fixed(f64),
    Max,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    grpc: bool,
    max: bool,
}

/// Fixed-rate workloads first: the memory figure at 1,000 req/s is the peak before any
/// max-rate load.
const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "http1 fixed",
        grpc: false,
        max: false,
    },
    Workload {
        name: "grpc fixed",
        grpc: true,
        max: false,
    },
    Workload {
        name: "http1 max",
        grpc: false,
        max: true,
    },
    Workload {
        name: "grpc max",
        grpc: true,
        max: true,
    },
];

// ---------------------------------------------------------------------------------------------
// one setup

/// A proxy process whose CPU and memory are reported.
struct Measured {
    role: String,
    process: Proc,
}

struct SetupResult {
    setup: Setup,
    body_bytes: usize,
    workloads: Vec<WorkloadResult>,
    proxies: Vec<ProxyResult>,
    checks: Value,
}

struct WorkloadResult {
    workload: Workload,
    report: Value,
    /// Per measured proxy: CPU seconds per 1,000 requests.
    cpu_per_1k: Vec<(String, f64)>,
}

impl WorkloadResult {
    fn ms(&self, q: &str) -> f64 {
        self.report["latency_ms"][q].as_f64().unwrap_or(f64::NAN)
    }
    fn rate(&self) -> f64 {
        self.report["rate_achieved"].as_f64().unwrap_or(f64::NAN)
    }
    fn errors(&self) -> u64 {
        self.report["errors"].as_u64().unwrap_or(0)
    }
}

struct ProxyResult {
    role: String,
    pid: u32,
    /// Peak RSS over the fixed-rate (1,000 req/s) workloads, which run first.
    fixed_rss_mib: f64,
    /// Of that: file-backed pages (the binary's code, shared by every process running it)
    /// and anonymous memory (the process's own), at the end of the fixed-rate workloads.
    fixed_rss_file_mib: f64,
    fixed_rss_anon_mib: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

fn run_setup(mesh: &Mesh, args: &Args, setup: Setup, pad: &str) -> anyhow::Result<SetupResult> {
    step(format!("== setup {}", setup.name()));
    mesh.no_capture()?;
    let mut measured: Vec<Measured> = Vec::new();
    match setup {
        Setup::Direct => step("capture: none"),
        Setup::Sidecar => {
            for pod in [&mesh.client, &mesh.server] {
                pod.sh(&mesh.sidecar_bin.display().to_string(), &["init"])?;
            }
            step("capture: `switchyard-sidecar init` (defaults) in both pods");
            let server = mesh.start_sidecar(&mesh.server, "echo")?;
            let client = mesh.start_sidecar(&mesh.client, "client")?;
            measured.push(Measured {
                role: "client proxy".into(),
                process: client,
            });
            measured.push(Measured {
                role: "server proxy".into(),
                process: server,
            });
            for (pod, m) in [(&mesh.client, 0), (&mesh.server, 1)] {
                let process = &mut measured[m].process;
                wait_until("the sidecar's /ready", READY_TIMEOUT, || {
                    process.check_alive()?;
                    Ok(pod.http("127.0.0.1:15000".parse()?, "/ready")?.0 == 200)
                })?;
            }
            step(format!(
                "proxies: switchyard-sidecar proxy pids {} (client) and {} (server), --concurrency {}, ready",
                measured[0].process.pid(),
                measured[1].process.pid(),
                args.sidecar_concurrency.unwrap_or(args.envoy_concurrency)
            ));
        }
        Setup::Envoy => {
            let rules = envoy_capture_rules();
            for pod in [&mesh.client, &mesh.server] {
                pod.nft(&rules)?;
            }
            step(format!(
                "capture: the `init` rules plus `meta skuid {PROXY_UID} return` in both pods"
            ));
            let (server_envoy, server_agent) =
                mesh.start_envoy(&mesh.server, "echo", args.envoy_concurrency)?;
            let (client_envoy, client_agent) =
                mesh.start_envoy(&mesh.client, "client", args.envoy_concurrency)?;
            step(format!(
                "proxies: envoy pids {} (client) and {} (server), --concurrency {}; sds agents {} and {}",
                client_envoy.pid(),
                server_envoy.pid(),
                args.envoy_concurrency,
                client_agent.pid(),
                server_agent.pid()
            ));
            for (role, process) in [
                ("client proxy", client_envoy),
                ("server proxy", server_envoy),
                ("client sds-agent", client_agent),
                ("server sds-agent", server_agent),
            ] {
                measured.push(Measured {
                    role: role.into(),
                    process,
                });
            }
        }
    }

    let (http_url, grpc_addr) = match setup {
        Setup::Direct => (
            format!("http://{SERVER_IP}:{APP_HTTP_PORT}/?pad={pad}"),
            format!("{SERVER_IP}:{APP_GRPC_PORT}"),
        ),
        _ => (
            format!("http://{VIP}:{HTTP_PORT}/?pad={pad}"),
            format!("{VIP}:{GRPC_PORT}"),
        ),
    };
    let http_target = Target::Http(http_url.clone());
    let grpc_target = Target::Grpc(grpc_addr);

    // end to end through the path, both protocols
    wait_until("an HTTP answer through the path", READY_TIMEOUT, || {
        for m in &mut measured {
            m.process.check_alive()?;
        }
        Ok(mesh.get(&http_url).is_ok())
    })?;
    wait_until("a gRPC answer through the path", READY_TIMEOUT, || {
        let r = mesh.echo_load(&grpc_target, Pace::Max, 1, Duration::from_millis(200))?;
        Ok(r["ok"].as_u64().unwrap_or(0) > 0 && r["errors"].as_u64().unwrap_or(1) == 0)
    })?;
    let body = mesh.get(&http_url)?;
    let echo: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    step(format!(
        "path works: HTTP answer {} bytes from {}, caller {}, identity {}",
        body.len(),
        echo["backend"],
        echo["caller"],
        echo["identity"]
    ));

    if !args.warmup.is_zero() {
        step(format!(
            "warm-up: {:?} at the fixed rate per protocol",
            args.warmup
        ));
        for t in [&http_target, &grpc_target] {
            mesh.load(
                t,
                Pace::Fixed(args.rate),
                args.fixed_connections,
                args.warmup,
            )?;
        }
    }

    let mut workloads = Vec::new();
    let mut fixed_memory: Vec<(f64, f64, f64)> = Vec::new();
    for w in WORKLOADS {
        if w.max && fixed_memory.is_empty() {
            fixed_memory = measured
                .iter()
                .map(|m| {
                    let (file, anon) = m.process.rss_file_anon_mib();
                    (m.process.peak_rss_mib(), file, anon)
                })
                .collect();
        }
        let target = if w.grpc { &grpc_target } else { &http_target };
        let (pace, connections) = if w.max {
            (Pace::Max, args.max_connections)
        } else {
            (Pace::Fixed(args.rate), args.fixed_connections)
        };
        let before: Vec<f64> = measured.iter().map(|m| m.process.cpu_seconds()).collect();
        let report = mesh.load(target, pace, connections, args.duration)?;
        let requests = report["requests"].as_u64().unwrap_or(0).max(1) as f64;
        let cpu_per_1k = measured
            .iter()
            .zip(&before)
            .map(|(m, b)| {
                (
                    m.role.clone(),
                    (m.process.cpu_seconds() - b) / requests * 1000.0,
                )
            })
            .collect();
        let r = WorkloadResult {
            workload: w,
            report,
            cpu_per_1k,
        };
        step(format!(
            "{} {}: {:.0} req/s ({} connections), p50 {:.3} ms, p99 {:.3} ms, {} errors",
            setup.name(),
            w.name,
            r.rate(),
            connections,
            r.ms("p50"),
            r.ms("p99"),
            r.errors()
        ));
        if r.errors() > 0 {
            step(format!("  error kinds: {}", r.report["error_kinds"]));
        }
        workloads.push(r);
    }

    let checks = hbone_checks(mesh, setup);
    step(format!("hbone check: {checks}"));
    let proxies = measured
        .iter()
        .zip(
            fixed_memory
                .iter()
                .copied()
                .chain(std::iter::repeat((f64::NAN, f64::NAN, f64::NAN))),
        )
        .map(|(m, (fixed_rss, file, anon))| ProxyResult {
            role: m.role.clone(),
            pid: m.process.pid(),
            fixed_rss_mib: fixed_rss,
            fixed_rss_file_mib: file,
            fixed_rss_anon_mib: anon,
            peak_rss_mib: m.process.peak_rss_mib(),
            cpu_seconds: m.process.cpu_seconds(),
        })
        .collect();
    drop(measured);
    mesh.no_capture()?;
    Ok(SetupResult {
        setup,
        body_bytes: body.len(),
        workloads,
        proxies,
        checks,
    })
}

/// The pod capture `init` installs, with the proxy's uid exempt (Envoy cannot mark sockets).
fn envoy_capture_rules() -> String {
    let rules = capture::render(&CaptureConfig::default());
    let mut out = String::new();
    for line in rules.lines() {
        out.push_str(line);
        out.push('\n');
        if line.contains("meta mark") {
            out.push_str(&format!(
                "    meta skuid {PROXY_UID} return comment \"envoy and its sds agent\"\n"
            ));
        }
    }
    out
}

/// Proof that the proxied setups carried the load over HBONE (counters from the proxies).
fn hbone_checks(mesh: &Mesh, setup: Setup) -> Value {
    let sum = |stats: &str, prefix: &str, suffix: &str| -> u64 {
        stats
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| n.starts_with(prefix) && n.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    };
    match setup {
        Setup::Direct => json!({}),
        Setup::Sidecar => {
            let stats = |pod: &Pod| {
                pod.http("127.0.0.1:15000".parse().unwrap(), "/stats")
                    .map(|r| r.1)
                    .unwrap_or_default()
            };
            let (c, s) = (stats(&mesh.client), stats(&mesh.server));
            json!({
                "client_outbound_hbone": sum(&c, "outbound_hbone", ""),
                "client_outbound_failed": sum(&c, "outbound_failed", ""),
                // Load generators stopping with requests in flight.
                "client_outbound_client_closed": sum(&c, "outbound_client_closed", ""),
                "server_inbound_hbone_forwarded": sum(&s, "inbound_hbone_forwarded", ""),
            })
        }
        Setup::Envoy => {
            let c = mesh.envoy_admin(&mesh.client, "/stats").unwrap_or_default();
            let s = mesh.envoy_admin(&mesh.server, "/stats").unwrap_or_default();
            json!({
                "client_connect_originate_upstream_cx_total":
                    sum(&c, "cluster.connect_originate", ".upstream_cx_total"),
                "client_connect_originate_ssl_handshake":
                    sum(&c, "cluster.connect_originate", ".ssl.handshake"),
                "server_connect_terminate_downstream_rq_total":
                    sum(&s, "http.connect_terminate", ".downstream_rq_total"),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// output

fn added_per_hop(setup: &SetupResult, direct: Option<&SetupResult>, i: usize, q: &str) -> f64 {
    match (setup.setup, direct) {
        (Setup::Direct, _) | (_, None) => f64::NAN,
        (_, Some(d)) => (setup.workloads[i].ms(q) - d.workloads[i].ms(q)) / 2.0,
    }
}

fn to_json(args: &Args, sidecar_static: bool, results: &[SetupResult]) -> Value {
    let direct = results.iter().find(|r| r.setup == Setup::Direct);
    let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    json!({
        "benchmark": "sidecar_vs_envoy",
        "smoke": args.duration < Duration::from_secs(10),
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "fixed_rate": args.rate,
        "fixed_connections": args.fixed_connections,
        "max_rate_connections": args.max_connections,
        "envoy_concurrency": args.envoy_concurrency,
        "sidecar_concurrency": args.sidecar_concurrency.unwrap_or(args.envoy_concurrency),
        "sidecar_linkage": if sidecar_static { "static" } else { "dynamic" },
        "load_generator_threads": 1,
        "max_rate_load_generator": args.max_load.name(),
        "grpc_message_bytes": args.grpc_message_bytes,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "topology": "two pods, each its own network namespace, veth pairs on one bridge; \
                     control plane (switchyard serve) in the bench's private host namespace",
        "http_body_note": "echo has no body-size option: the answer is padded through the \
                           query string, which echo copies into its JSON answer",
        "setups": results.iter().map(|r| json!({
            "setup": r.setup.name(),
            "http_answer_bytes": r.body_bytes,
            "hbone_check": r.checks,
            "proxies": r.proxies.iter().map(|p| json!({
                "role": p.role,
                "pid": p.pid,
                "rss_at_fixed_rate_mib": num(p.fixed_rss_mib),
                "rss_file_at_fixed_rate_mib": num(p.fixed_rss_file_mib),
                "rss_anon_at_fixed_rate_mib": num(p.fixed_rss_anon_mib),
                "peak_rss_mib": num(p.peak_rss_mib),
                "cpu_seconds_total": num(p.cpu_seconds),
            })).collect::<Vec<_>>(),
            "workloads": r.workloads.iter().enumerate().map(|(i, w)| json!({
                "workload": w.workload.name,
                "added_per_hop_p50_ms": num(added_per_hop(r, direct, i, "p50")),
                "added_per_hop_p99_ms": num(added_per_hop(r, direct, i, "p99")),
                "cpu_seconds_per_1k_requests": w.cpu_per_1k.iter()
                    .map(|(role, v)| (role.clone(), num(*v)))
                    .collect::<serde_json::Map<_, _>>(),
                "load_report": w.report,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The issue's goals as ratios, sidecar against Envoy, for each `sidecar` setup and the
/// `envoy` setup after it in `--setups` (`sidecar,envoy,sidecar,envoy` gives two pairs
/// measured close together, which is what a drifting VM can be compared on).
/// One goal of the issue as a sidecar/Envoy ratio (RSS: MB) in one pair of setups.
struct Goal {
    what: String,
    value: f64,
    limit: f64,
    /// `value >= limit` is the goal (max rate); else `value <= limit`.
    at_least: bool,
}

impl Goal {
    fn met(&self) -> bool {
        if self.at_least {
            self.value >= self.limit
        } else {
            self.value <= self.limit
        }
    }

    fn goal(&self) -> String {
        format!("{} {}", if self.at_least { ">=" } else { "<=" }, self.limit)
    }
}

/// The goals of one sidecar setup against the Envoy setup measured after it.
fn goals(sc: &SetupResult, en: &SetupResult, direct: Option<&SetupResult>) -> Vec<Goal> {
    let cpu = |r: &SetupResult, i: usize, role: &str| {
        r.workloads[i]
            .cpu_per_1k
            .iter()
            .find(|(name, _)| name == role)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    let mut out = Vec::new();
    for (i, w) in sc.workloads.iter().enumerate() {
        let label = w.workload.name;
        if w.workload.max {
            out.push(Goal {
                what: format!("{label} max rate"),
                value: w.rate() / en.workloads[i].rate(),
                limit: 2.0,
                at_least: true,
            });
        } else {
            out.push(Goal {
                what: format!("{label} +p50/hop"),
                value: added_per_hop(sc, direct, i, "p50") / added_per_hop(en, direct, i, "p50"),
                limit: 0.33,
                at_least: false,
            });
            for role in ["client proxy", "server proxy"] {
                out.push(Goal {
                    what: format!("{label} CPU {}", role.trim_end_matches(" proxy")),
                    value: cpu(sc, i, role) / cpu(en, i, role),
                    limit: 0.5,
                    at_least: false,
                });
            }
        }
    }
    out.push(Goal {
        what: "RSS at the fixed rate, largest proxy, MB".into(),
        value: sc
            .proxies
            .iter()
            .map(|p| p.fixed_rss_mib * 1.048_576)
            .fold(0.0, f64::max),
        limit: 10.0,
        at_least: false,
    });
    out
}

/// The issue's goals as sidecar/Envoy ratios for each `sidecar` setup and the `envoy` setup
/// after it; with several pairs, each goal's median, range and how many pairs met it.
fn print_goals(results: &[SetupResult]) {
    let direct = results.iter().find(|r| r.setup == Setup::Direct);
    let mut pairs = Vec::new();
    for (i, r) in results.iter().enumerate() {
        if r.setup == Setup::Sidecar
            && let Some(e) = results[i + 1..].iter().find(|e| e.setup == Setup::Envoy)
        {
            pairs.push(goals(r, e, direct));
        }
    }
    for (n, pair) in pairs.iter().enumerate() {
        println!("\ngoals, pair {} (sidecar / Envoy):", n + 1);
        for g in pair {
            println!(
                "  {:<40} {:>6.2}  (goal {}){}",
                g.what,
                g.value,
                g.goal(),
                if g.met() { "" } else { "  MISSED" }
            );
        }
    }
    if pairs.len() < 2 {
        return;
    }
    println!(
        "\ngoals over {} pairs: median (min-max), pairs that met it",
        pairs.len()
    );
    for (i, g) in pairs[0].iter().enumerate() {
        let mut values: Vec<f64> = pairs.iter().map(|p| p[i].value).collect();
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        };
        let met = pairs.iter().filter(|p| p[i].met()).count();
        println!(
            "  {:<40} {:>6.2} ({:.2}-{:.2})  goal {}: {met} of {}",
            g.what,
            median,
            values[0],
            values[values.len() - 1],
            g.goal(),
            pairs.len()
        );
    }
}

fn print_table(results: &[SetupResult]) {
    let direct = results.iter().find(|r| r.setup == Setup::Direct);
    println!(
        "\n{:<8} {:<12} {:>9} {:>8} {:>8} {:>10} {:>10} {:>7}  CPU s per 1k req (per proxy)",
        "setup", "workload", "req/s", "p50 ms", "p99 ms", "+p50/hop", "+p99/hop", "errors"
    );
    for r in results {
        for (i, w) in r.workloads.iter().enumerate() {
            let cpu = w
                .cpu_per_1k
                .iter()
                .map(|(role, v)| format!("{role} {v:.3}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{:<8} {:<12} {:>9.0} {:>8.3} {:>8.3} {:>10.3} {:>10.3} {:>7}  {}",
                r.setup.name(),
                w.workload.name,
                w.rate(),
                w.ms("p50"),
                w.ms("p99"),
                added_per_hop(r, direct, i, "p50"),
                added_per_hop(r, direct, i, "p99"),
                w.errors(),
                cpu
            );
        }
    }
    println!(
        "\n{:<8} {:<18} {:>8} {:>16} {:>16} {:>16} {:>14} {:>12}",
        "setup",
        "proxy",
        "pid",
        "RSS@1k/s MiB",
        "(file, shared)",
        "(anonymous)",
        "peak RSS MiB",
        "CPU s total"
    );
    for r in results {
        for p in &r.proxies {
            println!(
                "{:<8} {:<18} {:>8} {:>16.1} {:>16.1} {:>16.1} {:>14.1} {:>12.2}",
                r.setup.name(),
                p.role,
                p.pid,
                p.fixed_rss_mib,
                p.fixed_rss_file_mib,
                p.fixed_rss_anon_mib,
                p.peak_rss_mib,
                p.cpu_seconds
            );
        }
        if r.setup != Setup::Direct {
            println!(
                "{:<8} HTTP answer {} bytes; hbone check {}",
                r.setup.name(),
                r.body_bytes,
                r.checks
            );
        }
    }
}

fn plot(path: &Path, args: &Args, results: &[SetupResult]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let proxied: Vec<&SetupResult> = results
        .iter()
        .filter(|r| r.setup != Setup::Direct)
        .collect();
    let direct = results.iter().find(|r| r.setup == Setup::Direct);
    let colors = [BLUE, RED, GREEN, MAGENTA];
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "client pod -> server pod, HBONE between proxies{} ({} s per workload)",
        if args.duration < Duration::from_secs(10) {
            ", SMOKE RUN"
        } else {
            ""
        },
        args.duration.as_secs_f64()
    );
    let root = root.titled(&title, ("sans-serif", 22))?;
    let panels = root.split_evenly((2, 2));

    // panels 1 and 2: added latency per hop vs direct, per workload, a bar per setup
    for (panel, q) in panels.iter().zip(["p50", "p99"]) {
        let values: Vec<Vec<f64>> = proxied
            .iter()
            .map(|r| {
                (0..WORKLOADS.len())
                    .map(|i| added_per_hop(r, direct, i, q))
                    .collect()
            })
            .collect();
        let finite = values.iter().flatten().copied().filter(|v| v.is_finite());
        let top = finite.clone().fold(0.05_f64, f64::max) * 1.15;
        let bottom = finite.fold(0.0_f64, f64::min) * 1.15;
        bars(
            panel,
            &format!("{q} latency added per proxy hop vs direct (ms)"),
            &WORKLOADS.map(|w| w.name),
            &proxied
                .iter()
                .map(|r| r.setup.name().to_string())
                .collect::<Vec<_>>(),
            &values,
            bottom..top,
            &colors,
        )?;
    }

    // panel 3: peak RSS per proxy process; panel 4: CPU s per 1k requests, max-rate HTTP
    let mut roles: Vec<String> = Vec::new();
    for r in &proxied {
        for p in &r.proxies {
            let label = format!("{} {}", r.setup.name(), p.role);
            if !roles.contains(&label) {
                roles.push(label);
            }
        }
    }
    let memory = |f: fn(&ProxyResult) -> f64| -> Vec<f64> {
        roles
            .iter()
            .map(|label| {
                proxied
                    .iter()
                    .flat_map(|r| r.proxies.iter().map(move |p| (r, p)))
                    .find(|(r, p)| &format!("{} {}", r.setup.name(), p.role) == label)
                    .map(|(_, p)| f(p))
                    .unwrap_or(f64::NAN)
            })
            .collect()
    };
    let rss = vec![
        memory(|p| p.fixed_rss_mib),
        memory(|p| p.fixed_rss_anon_mib),
        memory(|p| p.peak_rss_mib),
    ];
    let top = rss
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.15;
    let labels: Vec<&str> = roles.iter().map(String::as_str).collect();
    bars(
        &panels[2],
        "RSS per process (MiB)",
        &labels,
        &[
            "peak at 1k req/s".to_string(),
            "anonymous at 1k req/s".to_string(),
            "peak overall".to_string(),
        ],
        &rss,
        0.0..top,
        &colors,
    )?;
    let cpu: Vec<Vec<f64>> = WORKLOADS
        .iter()
        .enumerate()
        .map(|(i, _)| {
            roles
                .iter()
                .map(|label| {
                    proxied
                        .iter()
                        .flat_map(|r| r.workloads[i].cpu_per_1k.iter().map(move |c| (r, c)))
                        .find(|(r, (role, _))| &format!("{} {role}", r.setup.name()) == label)
                        .map(|(_, (_, v))| *v)
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
        .collect();
    let top = cpu
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.01, f64::max)
        * 1.15;
    bars(
        &panels[3],
        "CPU seconds per 1,000 requests",
        &labels,
        &WORKLOADS.map(|w| w.name.to_string()),
        &cpu,
        0.0..top,
        &colors,
    )?;
    root.present()?;
    Ok(())
}

/// A grouped bar chart: one group per category, one bar per series (`values[series][category]`).
fn bars(
    area: &plotters::prelude::DrawingArea<
        plotters::prelude::SVGBackend<'_>,
        plotters::coord::Shift,
    >,
    caption: &str,
    categories: &[&str],
    series: &[String],
    values: &[Vec<f64>],
    y: std::ops::Range<f64>,
    colors: &[plotters::style::RGBColor],
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let n = categories.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..n as f64, y)?;
    let names: Vec<String> = categories.iter().map(|c| c.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 11))
        .draw()?;
    let width = 0.8 / series.len().max(1) as f64;
    for (s, name) in series.iter().enumerate() {
        let color = colors[s % colors.len()];
        let rects: Vec<Rectangle<(f64, f64)>> = values[s]
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(c, v)| {
                let x0 = c as f64 + 0.1 + s as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.95, *v)], color.filled())
            })
            .collect();
        chart
            .draw_series(rects)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = parse_args();
    if !netns::is_root() {
        println!(
            "SKIPPED sidecar_vs_envoy: needs root (network namespaces, veth, nftables, SO_MARK, \
             running proxies as uid {PROXY_UID})"
        );
        return Ok(());
    }
    // Everything from here on lives in a private network namespace: the "host" of the pods.
    netns::enter_private()?;
    step(format!(
        "setups {:?}, {:?} per workload, fixed rate {} req/s on {} connections, max rate on {} connections",
        args.setups.iter().map(|s| s.name()).collect::<Vec<_>>(),
        args.duration,
        args.rate,
        args.fixed_connections,
        args.max_connections
    ));
    let mesh = Mesh::start(&args)?;

    // Pad the HTTP answer to ~body_bytes, measured without proxies.
    let base = mesh
        .get(&format!("http://{SERVER_IP}:{APP_HTTP_PORT}/?pad="))
        .context("a first GET straight to the app")?;
    let pad = "x".repeat(args.body_bytes.saturating_sub(base.len()));
    step(format!(
        "HTTP answer padded from {} to ~{} bytes with a {}-byte query string",
        base.len(),
        args.body_bytes,
        pad.len()
    ));

    let mut results = Vec::new();
    for &setup in &args.setups {
        match run_setup(&mesh, &args, setup, &pad) {
            Ok(r) => results.push(r),
            Err(e) => {
                step(format!("setup {} FAILED: {e:#}", setup.name()));
                for name in std::fs::read_dir(mesh.dir.path())?.flatten() {
                    let p = name.path();
                    if p.extension().is_some_and(|e| e == "log") {
                        let text = std::fs::read_to_string(&p).unwrap_or_default();
                        let lines: Vec<&str> = text.lines().collect();
                        println!(
                            "--- {} (last 20 lines)\n{}",
                            p.display(),
                            lines[lines.len().saturating_sub(20)..].join("\n")
                        );
                    }
                }
                mesh.no_capture()?;
            }
        }
    }
    let rss_cp = mesh.control_plane.peak_rss_mib();
    step(format!("control plane peak RSS {rss_cp:.1} MiB"));

    print_table(&results);
    print_goals(&results);
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join("sidecar_vs_envoy.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&to_json(&args, mesh.sidecar_static, &results))?,
    )?;
    let svg_path = args.out.join("sidecar_vs_envoy.svg");
    plot(&svg_path, &args, &results)?;
    println!("\nwrote {} and {}", json_path.display(), svg_path.display());
    if results.len() < args.setups.len() {
        bail!(
            "{} of {} setups failed",
            args.setups.len() - results.len(),
            args.setups.len()
        );
    }
    Ok(())
}
