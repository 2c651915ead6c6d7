//! `yardctl`: Switchyard's operator CLI — bootstrap tokens, workload certificates by hand,
//! certificate inspection and CA root rotation.
//!
//! It holds no logic the server does not also expose: tokens come from the CA crate's token
//! authority, certificates from the control plane's certificate service through the same
//! client the dataplanes use, chain checks from the dataplanes' own verifier, and root
//! rotation from the admin API.

mod admin;
mod debug;
mod dev;
mod duration;
mod injector;
mod inspect;
mod request;
mod rotate;
mod xds;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use switchyard_model::SpiffeId;

use crate::duration::CliDuration;

#[derive(Debug, Parser)]
#[command(name = "yardctl", version, about = "Switchyard operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bootstrap tokens for the certificate service (local cluster).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Workload certificates: ask the CA for one, inspect one.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// The control plane's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Impersonate any proxy over xDS and show what the control plane sends it.
    Xds {
        #[command(subcommand)]
        command: xds::XdsCommand,
    },
    /// Every connected proxy with its sync state per type.
    ProxyStatus(debug::StatusArgs),
    /// What the control plane sends one proxy, decoded.
    ProxyConfig(debug::ConfigArgs),
    /// What differs between two proxies' configs, or one proxy's config and a saved one.
    Diff(debug::DiffArgs),
    /// The effective dataplane mode of a namespace or pod, and why.
    Mode(debug::ModeArgs),
    /// A local cluster on this machine: nodes and pods as network namespaces (needs root).
    Dev {
        #[command(subcommand)]
        command: dev::DevCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a token that lets its holder ask for NAMESPACE/SERVICE_ACCOUNT's certificate.
    #[command(
        after_help = "Example:\n  yardctl token create --ca-dir switchyard-ca --namespace default --service-account web --ttl 1h"
    )]
    Create {
        /// The control plane's CA directory (config key `ca_dir`), holding `token-key`.
        #[arg(long)]
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
        /// Lifetime, e.g. `90s`, `10m`, `1h`, `24h`.
        #[arg(long, default_value = "1h")]
        ttl: CliDuration,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Generate a key here, have the CA sign it, and write key.pem (0600), cert-chain.pem
    /// (leaf first) and root-cert.pem into OUT_DIR.
    #[command(
        after_help = "Example:\n  yardctl cert request --ca-address 127.0.0.1:15012 --ca-root-file switchyard-ca/root-cert.pem \\\n      --token-file token --namespace default --service-account web --ttl 1h --out-dir web-cert"
    )]
    Request(RequestArgs),
    /// Print a certificate's identity, validity and rotation time; with --bundle, check its
    /// chain as a dataplane would. Exits 1 if it is expired or the chain check fails.
    #[command(
        after_help = "Example:\n  yardctl cert inspect web-cert/cert-chain.pem --bundle switchyard-ca/root-cert.pem"
    )]
    Inspect {
        /// PEM file: the certificate, optionally followed by its chain.
        cert: PathBuf,
        /// Trust bundle (PEM roots) to check the chain against.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("credential").required(true).args(["token", "token_file"])))]
struct RequestArgs {
    /// Certificate service, HOST:PORT (15010 plaintext, 15012 TLS with --ca-root-file).
    #[arg(long)]
    ca_address: String,
    /// Root certificate(s) to verify the control plane with; the request then goes over TLS.
    #[arg(long)]
    ca_root_file: Option<PathBuf>,
    /// Bootstrap token (`yardctl token create`); other local users can see it in the
    /// process list, --token-file avoids that.
    #[arg(long)]
    token: Option<String>,
    /// File holding the bootstrap token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Namespace of the identity.
    #[arg(long)]
    namespace: String,
    /// Service account of the identity.
    #[arg(long)]
    service_account: String,
    /// Trust domain of the identity (and of the control plane with --ca-root-file).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime to ask for, e.g. `1h` (default: the CA's, 24h; the CA caps it).
    #[arg(long)]
    ttl: Option<CliDuration>,
    /// Ask on the identity's behalf, as a node agent does for a pod on its node.
    #[arg(long)]
    impersonate: bool,
    /// Directory for key.pem, cert-chain.pem and root-cert.pem (created if missing; existing
    /// files are replaced).
    #[arg(long)]
    out_dir: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Start a root rotation: a new root joins the bundle and signs once every proxy has it.
    #[command(
        after_help = "Example:\n  yardctl ca rotate-root --admin 127.0.0.1:15014 --wait --timeout 2m"
    )]
    RotateRoot {
        /// The control plane's admin address, HOST:PORT (port 15014 by default).
        #[arg(long)]
        admin: String,
        /// Follow the rotation until the new root signs.
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this long.
        #[arg(long, default_value = "60s")]
        timeout: CliDuration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // These replace this process (or become the long-lived supervisor): no runtime and no
    // stderr logging of their own.
    let cli = match cli.command {
        Command::Dev {
            command: dev::DevCommand::Enter(args),
        } => return dev::enter(args),
        Command::Dev {
            command: dev::DevCommand::Supervise(args),
        } => return dev::supervise(args),
        Command::Dev {
            command: dev::DevCommand::Exec(args),
        } => {
            init_logs();
            return dev::exec(args).unwrap_or_else(|e| {
                let _ = writeln!(std::io::stderr(), "yardctl: {e:#}");
                ExitCode::FAILURE
            });
        }
        command => Cli { command },
    };
    init_logs();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(code) => code,
        Err(e) => {
            // Best effort: stderr may be closed.
            let _ = writeln!(std::io::stderr(), "yardctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout();
    match command {
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
            // Checked here so that a token is never made for an identity the CA would refuse.
            identity("cluster.local", &namespace, &service_account)?;
            anyhow::ensure!(!ttl.0.is_zero(), "--ttl must be longer than 0s");
            check_ca_dir(&ca_dir)?;
            let tokens = switchyard_ca::token::TokenAuthority::load_or_create(&ca_dir)?;
            let token = tokens.create(&namespace, &service_account, node.as_deref(), ttl.0);
            writeln!(out, "{token}")?;
        }
        Command::Cert {
            command: CertCommand::Request(args),
        } => {
            let token = match (args.token, &args.token_file) {
                (Some(t), _) => t,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?,
                (None, None) => anyhow::bail!("--token or --token-file is required"),
            };
            let token = token.trim().to_string();
            anyhow::ensure!(!token.is_empty(), "the token is empty");
            let outcome = request::run(request::Request {
                ca_address: args.ca_address,
                ca_root_file: args.ca_root_file,
                token,
                identity: identity(&args.trust_domain, &args.namespace, &args.service_account)?,
                ttl: args.ttl.map(|t| t.0),
                impersonate: args.impersonate,
                out_dir: args.out_dir,
            })
            .await?;
            match args.output {
                OutputFormat::Text => write!(out, "{}", outcome.render_text())?,
                OutputFormat::Json => writeln!(out, "{}", outcome.to_json())?,
            }
        }
        Command::Cert {
            command:
                CertCommand::Inspect {
                    cert,
                    bundle,
                    output,
                },
        } => {
            let text = std::fs::read_to_string(&cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let bundle = bundle
                .map(|b| {
                    std::fs::read_to_string(&b).with_context(|| format!("reading {}", b.display()))
                })
                .transpose()?;
            let report =
                inspect::inspect(&text, bundle.as_deref(), time::OffsetDateTime::now_utc())
                    .with_context(|| cert.display().to_string())?;
            match output {
                OutputFormat::Text => write!(out, "{}", report.render_text())?,
                OutputFormat::Json => writeln!(out, "{}", report.to_json())?,
            }
            out.flush()?;
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Ca {
            command:
                CaCommand::RotateRoot {
                    admin,
                    wait,
                    timeout,
                },
        } => {
            anyhow::ensure!(
                !wait || !timeout.0.is_zero(),
                "--timeout must be longer than 0s"
            );
            let st = rotate::run(&admin, wait.then_some(timeout.0), &mut out).await?;
            tracing::debug!(phase = %st.rotation.phase, roots = st.roots.len(), "rotation status");
        }
        Command::Xds { command } => return xds::run(command, &mut out).await,
        Command::ProxyStatus(args) => return debug::proxy_status(args, &mut out).await,
        Command::ProxyConfig(args) => return debug::proxy_config(args, &mut out).await,
        Command::Diff(args) => return debug::diff(args, &mut out).await,
        Command::Mode(args) => return debug::mode(args, &mut out).await,
        Command::Dev { command } => {
            return match command {
                dev::DevCommand::Up(args) => dev::up(args, &mut out),
                dev::DevCommand::Down(args) => dev::down(args, &mut out),
                dev::DevCommand::Status(args) => dev::status(args, &mut out).await,
                dev::DevCommand::Logs(args) => dev::logs(args, &mut out),
                dev::DevCommand::DeletePod(args) => dev::delete_pod(args, &mut out),
                dev::DevCommand::Exec(_)
                | dev::DevCommand::Supervise(_)
                | dev::DevCommand::Enter(_) => unreachable!("handled in main before the runtime"),
            };
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The identity for `ns`/`sa` in `td`, refused when the CA would refuse it.
fn identity(td: &str, ns: &str, sa: &str) -> anyhow::Result<SpiffeId> {
    format!("spiffe://{td}/ns/{ns}/sa/{sa}")
        .parse()
        .context("not a valid identity")
}

/// A token key is only useful in the directory the control plane reads: refuse to create one
/// anywhere else (a typo would otherwise print tokens the CA rejects).
fn check_ca_dir(dir: &Path) -> anyhow::Result<()> {
    let known = [
        switchyard_ca::token::TOKEN_KEY_FILE,
        switchyard_ca::ROOT_CERT_FILE,
        "ca-cert.pem",
    ];
    if known.iter().any(|f| dir.join(f).exists()) {
        return Ok(());
    }
    anyhow::bail!(
        "{} is not a control plane CA directory (no {}): pass the control plane's ca_dir, it creates these files at startup",
        dir.display(),
        known.join(", no ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn request_needs_exactly_one_token_source() {
        let base = [
            "yardctl",
            "cert",
            "request",
            "--ca-address",
            "127.0.0.1:15010",
            "--namespace",
            "default",
            "--service-account",
            "web",
            "--out-dir",
            "/tmp/x",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        assert!(Cli::try_parse_from(base.iter().chain(&["--token", "t"])).is_ok());
        assert!(
            Cli::try_parse_from(base.iter().chain(&["--token", "t", "--token-file", "f"])).is_err()
        );
    }

    #[test]
    fn identities_are_checked() {
        assert_eq!(
            identity("cluster.local", "default", "web")
                .unwrap()
                .to_string(),
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert!(identity("cluster.local", "de/fault", "web").is_err());
        assert!(identity("Cluster.Local", "default", "web").is_err());
    }

    #[test]
    fn token_key_is_only_made_in_a_ca_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_ca_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a control plane CA directory"));
        switchyard_ca::load_or_create_root(dir.path(), Default::default()).unwrap();
        check_ca_dir(dir.path()).unwrap();
    }
}
