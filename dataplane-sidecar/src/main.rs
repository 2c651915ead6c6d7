//! `switchyard-sidecar`: per-pod dataplane binary. Subcommand `sds-agent` runs the SDS agent
//! for a stock Envoy; `init` installs the pod's traffic capture (nftables) before its app
//! starts.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use switchyard_dataplane_runtime::ads_client::ads_node;
use switchyard_dataplane_runtime::identity::{
    CaClient, CaTransport, Rotation, RotationPolicy, control_plane_identity, generate_csr,
};
use switchyard_dataplane_runtime::tls::{IdentityStore, TrustBundle};
use switchyard_dataplane_runtime::xds::follow_bundle;
use switchyard_dataplane_sidecar::capture::{self, CaptureConfig};
use switchyard_model::SpiffeId;
use switchyard_protos::envoy::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

mod sds;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-sidecar",
    version,
    about = "Switchyard per-pod dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Boxed: clippy's large_enum_variant, now that `init`'s arguments are much smaller.
    /// Serve a workload certificate and the trust bundle to a local Envoy over SDS.
    SdsAgent(Box<AgentArgs>),
    /// Install the pod's traffic capture (nftables) in the current network namespace, as
    /// an init step before the app starts; re-running replaces it.
    Init(InitArgs),
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Port the proxy accepts redirected outbound connections on.
    #[arg(long, default_value_t = capture::OUTBOUND_PORT)]
    outbound_port: u16,
    /// Port the proxy accepts redirected inbound connections on.
    #[arg(long, default_value_t = capture::INBOUND_PORT)]
    inbound_port: u16,
    /// The proxy's HBONE port; inbound connections to it are not redirected.
    #[arg(long, default_value_t = capture::HBONE_PORT)]
    hbone_port: u16,
    /// SO_MARK the proxy sets on its own sockets; marked connections are never captured.
    #[arg(long, default_value_t = capture::PROXY_MARK)]
    proxy_mark: u32,
    /// Inbound ports not captured, comma-separated; replaces the default list (admin,
    /// metrics, health).
    #[arg(long, value_delimiter = ',', default_values_t = capture::EXCLUDE_INBOUND_PORTS)]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports not captured, comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks not captured, comma-separated (`10.0.0.0/8`; a bare
    /// address means that one host).
    #[arg(long, value_delimiter = ',', value_parser = parse_net)]
    exclude_outbound_cidrs: Vec<IpNet>,
    /// Print the ruleset to stdout and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A network (`10.0.0.0/8`) or a bare address taken as a host route.
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is neither a network (10.0.0.0/8) nor an address"))
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Unix socket Envoy's `sds-grpc` cluster points at.
    #[arg(long)]
    socket: PathBuf,
    /// Control plane gRPC address for certificates (15010 plaintext, or 15012 with
    /// --ca-root-file).
    #[arg(long, default_value = "127.0.0.1:15010")]
    ca_address: SocketAddr,
    /// Root certificate(s) to trust the control plane's TLS port with; without it the CA is
    /// reached in plaintext (local and development only).
    #[arg(long)]
    ca_root_file: Option<PathBuf>,
    /// Control plane xDS address for the trust bundle (plaintext ADS).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: SocketAddr,
    /// Bootstrap token (`yardctl token create`).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bootstrap token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Workload namespace.
    #[arg(long)]
    namespace: String,
    /// Workload service account.
    #[arg(long)]
    service_account: String,
    /// Trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Node id to follow the trust bundle as (the proxy's own node id).
    #[arg(long)]
    node_id: String,
    /// Certificate lifetime to ask for, in seconds (0: the CA's default).
    #[arg(long, default_value_t = 0)]
    ttl_seconds: u64,
    /// Prometheus metrics listen address.
    #[arg(long, default_value = "127.0.0.1:15020")]
    metrics_address: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Init(args) => init(args),
        Command::SdsAgent(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(sds_agent(*args)),
    }
}

/// `init`: validate, then print (`--dry-run`) or install the capture rules.
fn init(args: InitArgs) -> anyhow::Result<()> {
    let config = CaptureConfig {
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        hbone_port: args.hbone_port,
        proxy_mark: args.proxy_mark,
        exclude_inbound_ports: args.exclude_inbound_ports,
        exclude_outbound_ports: args.exclude_outbound_ports,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs,
    };
    config.validate()?;
    if args.dry_run {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(capture::render(&config).as_bytes())
            .and_then(|()| stdout.flush())
            .context("writing the ruleset to stdout")?;
        return Ok(());
    }
    capture::apply(&config).context("installing the traffic capture")
}

async fn sds_agent(args: AgentArgs) -> anyhow::Result<()> {
    let identity = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account);
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let ttl = (args.ttl_seconds > 0).then(|| Duration::from_secs(args.ttl_seconds));

    // The first bundle: the operator's root file, or (plaintext, development) the root at the
    // end of the first certificate chain.
    let (store, client) = match &args.ca_root_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let store = IdentityStore::new(
                TrustBundle::from_pem(&text).with_context(|| format!("{}", path.display()))?,
            );
            let client = CaClient::new(
                args.ca_address,
                CaTransport::Tls {
                    server: control_plane_identity(&args.trust_domain),
                    store: store.clone(),
                },
                token,
            )?;
            (store, client)
        }
        None => {
            let mut client = CaClient::new(args.ca_address, CaTransport::Plaintext, token)?;
            let mut backoff = Duration::from_millis(200);
            let (chain, key) = loop {
                let (csr, key) = generate_csr(&identity)?;
                match client.create(csr, ttl, None).await {
                    Ok(chain) => break (chain, key),
                    Err(e) => {
                        warn!(error = %e, "first certificate request failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            };
            let Some(root) = chain.last() else {
                bail!("the CA answered with an empty chain");
            };
            let store = IdentityStore::new(TrustBundle::from_pem(root)?);
            store.set_certificate(&chain, &key)?;
            (store, client)
        }
    };

    let mut registry = Registry::default();
    let metrics = sds::SdsMetrics::default();
    registry.register(
        "switchyard_sds_agent_pushes",
        "SDS responses sent to the proxy",
        metrics.pushes.clone(),
    );
    registry.register(
        "switchyard_sds_agent_nacks",
        "SDS responses the proxy rejected",
        metrics.nacks.clone(),
    );
    let rotations = Counter::<u64>::default();
    registry.register(
        "switchyard_sds_agent_rotations",
        "certificates installed",
        rotations.clone(),
    );

    let rotation = Rotation::new(
        store.clone(),
        client,
        identity.clone(),
        RotationPolicy {
            ttl,
            ..Default::default()
        },
    );
    let certs = rotation.subscribe();
    let mut counted = rotation.subscribe();
    tokio::spawn(async move {
        while counted.changed().await.is_ok() {
            rotations.inc();
        }
    });
    tokio::spawn(rotation.run());
    let mut node = ads_node(
        args.node_id.clone(),
        "switchyard-sidecar",
        env!("CARGO_PKG_VERSION"),
        [("DATAPLANE_KIND".to_string(), "sds-agent".to_string())],
    );
    node.cluster = "switchyard-sds-agent".into();
    tokio::spawn(follow_bundle(
        args.xds_address.to_string(),
        node,
        store.clone(),
    ));

    let registry = Arc::new(registry);
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", args.metrics_address))?;
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                    out
                }
            }),
        );
        let _ = axum::serve(metrics_listener, app).await;
    });

    if args.socket.exists() {
        std::fs::remove_file(&args.socket)
            .with_context(|| format!("removing the stale socket {}", args.socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    info!(socket = %args.socket.display(), %identity, "sds agent serving");
    let service = SecretDiscoveryServiceServer::new(sds::SdsService::new(store, certs, metrics));
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
