//! `switchyard-echo`: the test app as a process.
//!
//! - `serve`: the echo server (HTTP/1.1 + h2c on `--http`, gRPC on `--grpc`).
//! - `load`: the load client; prints one JSON [`LoadReport`] on stdout, logs on stderr.
//! - `get`: one HTTP GET, body on stdout (a `curl` for pods that have none).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use switchyard_echo::load::{self, LoadOptions, LoadReport, LoadTarget, RateMode};
use switchyard_echo::{HttpProtocol, http_get_with, try_spawn_echo};
use tokio::signal::unix::{SignalKind, signal};

/// The Switchyard test app: an echo server that names itself and its caller in every answer,
/// and a load client.
#[derive(Debug, Parser)]
#[command(name = "switchyard-echo", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP (HTTP/1.1 and h2c on one port) and/or gRPC (h2c) until SIGTERM or ctrl-c.
    Serve(ServeArgs),
    /// Send load to an HTTP or gRPC echo target and print one JSON report on stdout.
    Load(LoadArgs),
    /// One HTTP GET; prints the body on stdout, fails on no answer or a status >= 400.
    Get(GetArgs),
}

#[derive(Debug, Args)]
struct GetArgs {
    /// `http://host:port/path`.
    #[arg(value_name = "URL")]
    url: String,
    /// Speak HTTP/2 cleartext with prior knowledge (h2c).
    #[arg(long)]
    http2: bool,
    /// `Host` / `:authority` to send instead of the URL's.
    #[arg(long, value_name = "HEADER")]
    host: Option<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("listen").required(true).multiple(true).args(["http", "grpc"]))]
struct ServeArgs {
    /// Name reported in the `x-backend` header, the JSON body and `EchoReply.backend`
    /// [default: env POD_NAME, else the hostname].
    #[arg(long)]
    name: Option<String>,
    /// Serve HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on this address (port 0 picks
    /// a free port).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Serve gRPC (plaintext HTTP/2) on this address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    grpc: Option<SocketAddr>,
    /// Once listening, write `{"name","http","grpc"}` with the bound addresses here.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    threads: Threads,
}

/// How many threads to run on.
#[derive(Debug, Args)]
struct Threads {
    /// Worker threads; 0: one per CPU. 1 runs everything on one thread (no cross-thread
    /// wake-ups: the least CPU per request, as a load generator and app in a benchmark
    /// should use so the proxies measured get the machine).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
}

impl Threads {
    fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = if self.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if self.threads > 1 {
                builder.worker_threads(self.threads);
            }
            builder
        };
        builder.enable_all().build()
    }
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["http", "grpc"]))]
#[command(group = clap::ArgGroup::new("pace").required(true).args(["rate", "max_rate"]))]
struct LoadArgs {
    /// HTTP target, `http://host:port/path`.
    #[arg(long, value_name = "URL")]
    http: Option<String>,
    /// Speak HTTP/2 cleartext with prior knowledge (h2c) to the HTTP target.
    #[arg(long, conflicts_with = "grpc")]
    http2: bool,
    /// gRPC target, `host:port`; calls unary `switchyard.test.v1.Echo/Echo`.
    #[arg(long, value_name = "ADDR")]
    grpc: Option<String>,
    /// Send each request as a round trip on one long-lived `EchoChat` stream per connection.
    #[arg(long, conflicts_with = "http")]
    grpc_stream: bool,
    /// How long to start requests for, e.g. `500ms`, `5s`, `1m`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Parallel connections, one request in flight on each.
    #[arg(long, value_name = "N", default_value_t = 1)]
    connections: usize,
    /// Fixed total rate in requests per second (open loop: a request sent late because
    /// the previous answer on its connection came late counts from its scheduled time).
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// As fast as answers come back, per connection (closed loop).
    #[arg(long)]
    max_rate: bool,
    /// `Host` / `:authority` to send instead of the target's.
    #[arg(long, value_name = "HEADER")]
    host: Option<String>,
    /// Deadline per request, connecting included.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    timeout: Duration,
    /// Size of the `message` in each gRPC request, in bytes (`x` repeated); the answer
    /// carries it back. Without it the message is `load`.
    #[arg(long, value_name = "BYTES", conflicts_with = "http")]
    message_bytes: Option<usize>,
    #[command(flatten)]
    threads: Threads,
}

fn duration(text: &str) -> Result<Duration, String> {
    load::parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => args.threads.runtime()?.block_on(serve(args)),
        Command::Load(args) => {
            let report = args.threads.runtime()?.block_on(run_load(args))?;
            print_report(&report)
        }
        Command::Get(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(get(args)),
    }
}

async fn get(args: GetArgs) -> anyhow::Result<()> {
    let protocol = if args.http2 {
        HttpProtocol::Http2
    } else {
        HttpProtocol::Http1
    };
    let LoadTarget::Http {
        addr,
        authority,
        path,
        ..
    } = LoadTarget::from_http_url(&args.url, protocol).await?
    else {
        anyhow::bail!("{} is not an HTTP URL", args.url);
    };
    let host = args.host.unwrap_or(authority);
    let response = http_get_with(addr, &host, &path, protocol).await?;
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(response.body.as_bytes())?;
        if !response.body.ends_with('\n') {
            writeln!(stdout)?;
        }
    }
    tracing::info!(status = response.status, backend = ?response.backend(), "answered");
    if response.status >= 400 {
        anyhow::bail!("GET {}: status {}", args.url, response.status);
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let name = match args.name {
        Some(name) => name,
        None => default_name()?,
    };
    let backend = try_spawn_echo(&name, args.http, args.grpc).await?;
    if let Some(path) = &args.ready_file {
        backend.write_ready_file(path)?;
    }
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for ctrl-c")?,
        _ = term.recv() => {}
    }
    tracing::info!(backend = %name, "echo backend stopping");
    drop(backend);
    Ok(())
}

/// `POD_NAME` (set by the Downward API in pods), else the kernel's hostname.
fn default_name() -> anyhow::Result<String> {
    if let Some(name) = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        return Ok(name.trim().to_owned());
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    hostname.context("no --name, POD_NAME or hostname to name this backend: pass --name")
}

async fn run_load(args: LoadArgs) -> anyhow::Result<LoadReport> {
    let target = match (&args.http, &args.grpc) {
        (Some(url), _) => {
            let protocol = if args.http2 {
                HttpProtocol::Http2
            } else {
                HttpProtocol::Http1
            };
            LoadTarget::from_http_url(url, protocol).await?
        }
        (None, Some(addr)) => LoadTarget::from_grpc_addr(addr, args.grpc_stream).await?,
        // clap's "target" group makes one of them required.
        (None, None) => anyhow::bail!("one of --http or --grpc is required"),
    };
    let options = LoadOptions {
        target,
        duration: args.duration,
        connections: args.connections,
        rate: match args.rate {
            Some(per_second) => RateMode::Fixed { per_second },
            None => RateMode::Max,
        },
        host: args.host,
        timeout: args.timeout,
        grpc_message: match args.message_bytes {
            Some(n) => "x".repeat(n),
            None => "load".to_owned(),
        },
    };
    options.validate()?;
    Ok(load::run(options).await)
}

fn print_report(report: &LoadReport) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, report).context("writing the report")?;
    writeln!(stdout).context("writing the report")?;
    Ok(())
}
