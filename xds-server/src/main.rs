//! `switchyard`: the control plane binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_xds_server::config::{LogFormat, RawConfig};
use switchyard_xds_server::{Server, sources};
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard service mesh control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve xDS (ADS SotW + delta, CSDS) and the admin API from a directory of manifests.
    Serve {
        /// TOML config file (keys as in the docs; environment SWITCHYARD_<KEY> and flags win).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory of Kubernetes YAML manifests (config key `config_dir`).
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// xDS listen address (config key `xds_address`).
        #[arg(long)]
        xds_address: Option<String>,
        /// Admin listen address (config key `admin_address`).
        #[arg(long)]
        admin_address: Option<String>,
        /// Any config key, as key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Check a directory of manifests and print every problem (exit 1 if any).
    Check {
        /// Directory of Kubernetes YAML manifests.
        #[arg(long)]
        config_dir: PathBuf,
    },
    /// Print the CustomResourceDefinitions of Switchyard's CRDs as YAML.
    Crd,
    /// Bootstrap tokens for the certificate service (local cluster).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a token that lets its holder ask for NAMESPACE/SERVICE_ACCOUNT's certificate.
    Create {
        /// CA directory of the control plane (config key `ca_dir`).
        #[arg(long, default_value = "switchyard-ca")]
        ca_dir: PathBuf,
        /// Namespace.
        #[arg(long)]
        namespace: String,
        /// Service account.
        #[arg(long)]
        service_account: String,
        /// Node, for node agents (they may then ask for pods on that node).
        #[arg(long)]
        node: Option<String>,
        /// Lifetime, e.g. `1h`, `30m`, `3600s`.
        #[arg(long, default_value = "1h")]
        ttl: sources::gateway::GatewayDuration,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token {
            command:
                TokenCommand::Create {
                    ca_dir,
                    namespace,
                    service_account,
                    node,
                    ttl,
                },
        } => {
            let tokens = switchyard_ca::token::TokenAuthority::load_or_create(&ca_dir)?;
            println!(
                "{}",
                tokens.create(&namespace, &service_account, node.as_deref(), ttl.0)
            );
            Ok(())
        }
        Command::Crd => {
            print!("{}", sources::crd::crd_yaml().context("rendering CRDs")?);
            Ok(())
        }
        Command::Check { config_dir } => match sources::dir::load_dir(&config_dir) {
            Ok(objects) => {
                println!(
                    "{}: {} objects, no problems",
                    config_dir.display(),
                    objects.len()
                );
                Ok(())
            }
            Err(problems) => {
                for p in &problems {
                    println!("{p}");
                }
                anyhow::bail!("{} problem(s) in {}", problems.len(), config_dir.display())
            }
        },
        Command::Serve {
            config,
            config_dir,
            xds_address,
            admin_address,
            set,
        } => {
            let mut raw = RawConfig::defaults();
            if let Some(path) = &config {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                raw = raw.file(path, &text);
            }
            let env: Vec<(String, String)> = std::env::vars().collect();
            raw = raw.env(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let mut cli_set: Vec<(String, String)> = Vec::new();
            if let Some(d) = config_dir {
                cli_set.push(("config_dir".into(), d.display().to_string()));
            }
            if let Some(a) = xds_address {
                cli_set.push(("xds_address".into(), a));
            }
            if let Some(a) = admin_address {
                cli_set.push(("admin_address".into(), a));
            }
            for s in &set {
                let (k, v) = s
                    .split_once('=')
                    .with_context(|| format!("--set {s:?}: expected KEY=VALUE"))?;
                cli_set.push((k.to_string(), v.to_string()));
            }
            let config = raw
                .cli(cli_set.iter().map(|(k, v)| (k.as_str(), v.clone())))
                .build()?;
            init_logs(config.log_format);
            match rlimit::increase_nofile_limit(u64::MAX) {
                Ok(n) => info!(limit = n, "open file limit"),
                Err(e) => warn!(error = %e, "could not raise the open file limit"),
            }
            let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
            runtime.block_on(serve(config))
        }
    }
}

async fn serve(config: switchyard_xds_server::Config) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    server.stop().await;
    info!("stopped");
    Ok(())
}
