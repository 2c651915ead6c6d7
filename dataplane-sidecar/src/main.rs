//! `switchyard-sidecar`: per-pod dataplane binary. Subcommand `sds-agent` runs the SDS agent
//! for a stock Envoy; `proxy` runs the sidecar's own L4 proxy; `init` installs the pod's traffic capture (nftables) before its app
//! starts.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use switchyard_dataplane_runtime::ads_client::ads_node;
use switchyard_dataplane_runtime::hbone::{
    HboneClient, HboneClientConfig, HboneServer, Spread, SpreadMember,
};
use switchyard_dataplane_runtime::identity::{
    CaClient, CaTransport, Rotation, RotationPolicy, control_plane_channel, control_plane_identity,
    generate_csr,
};
use switchyard_dataplane_runtime::tls::{IdentityStore, TrustBundle};
use switchyard_dataplane_runtime::xds::follow_bundle;
use switchyard_dataplane_sidecar::capture::{self, CaptureConfig};
use switchyard_dataplane_sidecar::config::{ConfigReader, Follower, FollowerOptions, SidecarNode};
use switchyard_dataplane_sidecar::proxy::copy::CopyConfig;
use switchyard_dataplane_sidecar::proxy::detect::{DetectConfig, Detector};
use switchyard_dataplane_sidecar::proxy::server::{
    HttpMetrics, MAX_WORKERS, Proxy, ProxyMetrics, ProxySettings, TunnelHandler,
};
use switchyard_model::SpiffeId;
use switchyard_protos::envoy::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
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
    /// Run the L4 proxy: outbound capture, HBONE and plaintext inbound, admin and metrics.
    Proxy(Box<ProxyArgs>),
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

/// How the workload gets its certificate and which identity it asks for (shared by
/// `sds-agent` and `proxy`).
#[derive(Debug, Args)]
struct IdentityArgs {
    /// Control plane gRPC address for certificates (15010 plaintext, or 15012 with
    /// --ca-root-file).
    #[arg(long, default_value = "127.0.0.1:15010")]
    ca_address: SocketAddr,
    /// Root certificate(s) to trust the control plane's TLS port with; without it the CA is
    /// reached in plaintext (local and development only).
    #[arg(long)]
    ca_root_file: Option<PathBuf>,
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
    /// Certificate lifetime to ask for, in seconds (0: the CA's default).
    #[arg(long, default_value_t = 0)]
    ttl_seconds: u64,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Unix socket Envoy's `sds-grpc` cluster points at.
    #[arg(long)]
    socket: PathBuf,
    #[command(flatten)]
    identity: IdentityArgs,
    /// Control plane xDS address for the trust bundle: 15010 plaintext, or 15012 over TLS
    /// when --ca-root-file is given.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: SocketAddr,
    /// Node id to follow the trust bundle as (the proxy's own node id).
    #[arg(long)]
    node_id: String,
    /// Prometheus metrics listen address.
    #[arg(long, default_value = "127.0.0.1:15020")]
    metrics_address: SocketAddr,
}

#[derive(Debug, Args)]
struct ProxyArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// Control plane xDS address (delta ADS): configuration and trust bundle; 15010
    /// plaintext, or 15012 over TLS (verifying the control plane's SPIFFE ID, presenting the
    /// pod's certificate) when --ca-root-file is given.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: SocketAddr,
    /// The pod's IP.
    #[arg(long)]
    pod_ip: IpAddr,
    /// The pod's name.
    #[arg(long)]
    pod_name: String,
    /// Outbound capture listener (the capture redirects locally generated traffic to
    /// 127.0.0.1).
    #[arg(long, default_value = "0.0.0.0:15001")]
    outbound_address: SocketAddr,
    /// Plaintext inbound capture listener.
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound_address: SocketAddr,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone_address: SocketAddr,
    /// Admin listener: /ready, /stats.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_address: SocketAddr,
    /// Prometheus /metrics listener.
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_address: SocketAddr,
    /// SO_MARK set on every upstream socket (must match `init --proxy-mark`).
    #[arg(long, default_value_t = capture::PROXY_MARK)]
    proxy_mark: u32,
    /// On SIGTERM, how long connections may take to finish before they are cut, seconds.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// How long to wait for a client's first bytes on an HTTP port before carrying the
    /// connection as opaque TCP (server-first protocols wait this long), milliseconds.
    #[arg(long, default_value_t = 5000)]
    detect_timeout_ms: u64,
    /// Carry HTTP/1.1 requests to mesh endpoints as HTTP/2 inside one tunnel per endpoint
    /// (the server's proxy speaks HTTP/1.1 to the app again), as Linkerd does between its
    /// proxies. Off by default: HTTP/1.1 inside a tunnel (an HTTP/2 stream of the shared
    /// HBONE connection) per upstream connection, as ztunnel does. Without the second
    /// HTTP/2 layer a request costs ~20 % less CPU and the max rate is ~30 % higher
    /// (`benches/sidecar_vs_envoy.rs`, HTTP/1.1, one thread).
    #[arg(long, env = "SWITCHYARD_HTTP2_UPGRADE", default_value_t = false, action = clap::ArgAction::Set)]
    http2_upgrade: bool,
    /// Worker threads (Envoy's `--concurrency`); 0: one per CPU; at most 256. Each worker
    /// is a thread with its own single-threaded runtime and its own `SO_REUSEPORT` listeners
    /// (the kernel spreads connections over them) and connection pools, so a request never
    /// crosses threads; configuration, balancers, circuit breakers, the retry budget and the
    /// counters are shared. One by default: a per-pod proxy carries one pod's traffic.
    #[arg(long, env = "SWITCHYARD_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=256))]
    concurrency: u32,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: the local cluster writes the log to a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Init(args) => init(args),
        Command::SdsAgent(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(sds_agent(*args)),
        // Worker 0 and the control tasks (identity, xDS, admin) run on the main thread, on
        // tokio's current-thread scheduler; `proxy` starts the other workers' threads. (The
        // multi-thread scheduler was measured: work stealing and cross-thread wake-ups cost
        // about 45 % more CPU per request on this 2-core machine, for no higher max rate.)
        Command::Proxy(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(proxy(*args)),
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

/// The workload's identity: its SPIFFE ID, the store holding its certificate and trust
/// bundle, and the rotation that keeps the certificate fresh (not yet running: subscribe,
/// then spawn [`Rotation::run`]).
struct WorkloadIdentity {
    identity: SpiffeId,
    store: IdentityStore,
    rotation: Rotation,
    /// How to reach the control plane: TLS with the operator's root file, else plaintext.
    transport: CaTransport,
}

/// Token → CSR → first certificate (plaintext CA) or the operator's root file (TLS CA) →
/// [`Rotation`]. `mark` is set on the connections to the CA.
async fn workload_identity(
    args: &IdentityArgs,
    mark: Option<u32>,
) -> anyhow::Result<WorkloadIdentity> {
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
    let client = |transport: &CaTransport, token: Option<String>| {
        control_plane_channel(args.ca_address, transport, mark)
            .map(|channel| CaClient::with_channel(channel, args.ca_address, token))
    };
    let (store, client, transport) = match &args.ca_root_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let store = IdentityStore::new(
                TrustBundle::from_pem(&text).with_context(|| format!("{}", path.display()))?,
            );
            let transport = CaTransport::Tls {
                server: control_plane_identity(&args.trust_domain),
                store: store.clone(),
            };
            (store.clone(), client(&transport, token)?, transport)
        }
        None => {
            let mut client = client(&CaTransport::Plaintext, token)?;
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
            (store, client, CaTransport::Plaintext)
        }
    };

    let rotation = Rotation::new(
        store.clone(),
        client,
        identity.clone(),
        RotationPolicy {
            ttl,
            ..Default::default()
        },
    );
    Ok(WorkloadIdentity {
        identity,
        store,
        rotation,
        transport,
    })
}

/// Follows the trust bundle over ADS at `xds_address` as `node_id`, into `store`.
fn spawn_bundle_follower(
    xds_address: SocketAddr,
    transport: &CaTransport,
    mark: Option<u32>,
    node_id: String,
    store: IdentityStore,
) -> anyhow::Result<()> {
    let mut node = ads_node(
        node_id,
        "switchyard-sidecar",
        env!("CARGO_PKG_VERSION"),
        [("DATAPLANE_KIND".to_string(), "sds-agent".to_string())],
    );
    node.cluster = "switchyard-sds-agent".into();
    let channel = control_plane_channel(xds_address, transport, mark)?;
    tokio::spawn(follow_bundle(channel, xds_address.to_string(), node, store));
    Ok(())
}

async fn sds_agent(args: AgentArgs) -> anyhow::Result<()> {
    let WorkloadIdentity {
        identity,
        store,
        rotation,
        transport,
    } = workload_identity(&args.identity, None).await?;
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

    let certs = rotation.subscribe();
    let mut counted = rotation.subscribe();
    tokio::spawn(async move {
        while counted.changed().await.is_ok() {
            rotations.inc();
        }
    });
    tokio::spawn(rotation.run());
    spawn_bundle_follower(
        args.xds_address,
        &transport,
        None,
        args.node_id.clone(),
        store.clone(),
    )?;

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

/// `proxy`: identity, configuration, then the listeners. Listeners are bound at once (so
/// a port clash fails the start) but accept only once the first configuration snapshot is
/// in; connections wait in the backlog meanwhile.
async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let mark = Some(args.proxy_mark);
    let WorkloadIdentity {
        identity,
        store,
        rotation,
        transport,
    } = workload_identity(&args.identity, mark).await?;
    let rotations = Counter::<u64>::default();
    let mut counted = rotation.subscribe();
    {
        let rotations = rotations.clone();
        tokio::spawn(async move {
            while counted.changed().await.is_ok() {
                rotations.inc();
            }
        });
    }
    tokio::spawn(rotation.run());

    let node = SidecarNode::new(
        args.pod_ip,
        args.pod_name.clone(),
        args.identity.namespace.clone(),
        args.identity.service_account.clone(),
    );
    spawn_bundle_follower(
        args.xds_address,
        &transport,
        mark,
        node.node_id(),
        store.clone(),
    )?;
    let channel = control_plane_channel(args.xds_address, &transport, mark)?;
    let (follower, config) = Follower::new(
        channel,
        node.to_node().context("building the xDS node")?,
        FollowerOptions::default(),
    );
    tokio::spawn(follower.run());

    let settings = ProxySettings {
        pod_ip: args.pod_ip,
        trust_domain: args.identity.trust_domain.clone(),
        identity: identity.to_string(),
        mark: args.proxy_mark,
        connect_timeout: Duration::from_secs(5),
        copy: CopyConfig::default(),
        http2_upgrade: args.http2_upgrade,
        own_ports: vec![
            args.outbound_address.port(),
            args.inbound_address.port(),
            args.hbone_address.port(),
            args.admin_address.port(),
            args.metrics_address.port(),
        ],
    };
    let metrics = ProxyMetrics::default();
    let http_metrics = HttpMetrics::default();
    // Marked like every upstream socket of the proxy, so the pod's capture lets it through.
    let hbone_client = HboneClient::with_config(
        &store,
        HboneClientConfig {
            mark: Some(args.proxy_mark),
            ..HboneClientConfig::default()
        },
    );
    let proxy = Proxy::new(
        settings,
        config.clone(),
        hbone_client,
        metrics.clone(),
        http_metrics.clone(),
        Detector::new(DetectConfig {
            timeout: Duration::from_millis(args.detect_timeout_ms),
            ..DetectConfig::default()
        }),
    );
    let hbone_server = HboneServer::new(&store, proxy.tunnel_handler());
    let hbone_server_stats = hbone_server.stats();

    let workers = match args.concurrency {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(MAX_WORKERS))
            .min(MAX_WORKERS),
        n => n,
    };
    // Worker 0 is served on this thread; the others get their proxy (own pools) now, their
    // thread once everything is bound.
    let worker_proxies: Vec<Arc<Proxy>> = (1..workers).map(|w| proxy.fork(w)).collect();
    // Every worker's capture listeners are bound here, at once, so a port clash fails the
    // start. Several workers: one socket each in an `SO_REUSEPORT` group per port (then only
    // a clash with a socket without `SO_REUSEPORT`, or of another user, fails the start; a
    // second proxy of the same user with several workers would share the ports, as two
    // Envoys with `enable_reuse_port` do).
    let reuse_port = workers > 1;
    // HBONE connections are few and long-lived: spread them evenly over the workers instead
    // of leaving it to the SO_REUSEPORT hash.
    let (spread, spread_members) = if workers > 1 {
        let (spread, members) = Spread::new(workers as usize);
        (Some(spread), members)
    } else {
        (None, Vec::new())
    };
    let mut capture_listeners = Vec::with_capacity(worker_proxies.len() + 1);
    for _ in 0..workers {
        capture_listeners.push(CaptureListeners {
            outbound: bind_listener(args.outbound_address, reuse_port, "outbound capture")?,
            inbound: bind_listener(args.inbound_address, reuse_port, "inbound capture")?,
            hbone: bind_listener(args.hbone_address, reuse_port, "HBONE")?,
        });
    }
    let mut capture_listeners = capture_listeners.into_iter();
    let Some(CaptureListeners {
        outbound,
        inbound,
        hbone,
    }) = capture_listeners.next()
    else {
        bail!("no worker to serve the listeners");
    };
    let admin = bind_listener(args.admin_address, false, "admin")?;
    let metrics_listener = bind_listener(args.metrics_address, false, "metrics")?;

    let mut registry = Registry::default();
    metrics.register(&mut registry);
    http_metrics.register(&mut registry);
    proxy.detector().stats().register(&mut registry);
    registry.register_collector(Box::new(
        switchyard_dataplane_sidecar::proxy::server::UpstreamCollector::new(proxy.upstreams()),
    ));
    registry.register(
        "switchyard_sidecar_certificate_rotations",
        "certificates installed",
        rotations,
    );
    let registry = Arc::new(registry);
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

    let admin_app = {
        let ready_config = config.clone();
        let ready_store = store.clone();
        let ready_proxy = proxy.clone();
        let stats_proxy = proxy.clone();
        let stats_workers = worker_proxies.clone();
        let stats_spread = spread.clone();
        let stats_config = config.clone();
        let dump_config = config.clone();
        let dump_store = store.clone();
        axum::Router::new()
            .route(
                "/config_dump",
                axum::routing::get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
                    // Envoy's flag: endpoints only when asked for.
                    let include_eds = query
                        .as_deref()
                        .is_some_and(|q| q.split('&').any(|p| p == "include_eds" || p.starts_with("include_eds=")));
                    let mut dump = dump_config.config_dump(include_eds);
                    let certificate = dump_store.info().zip(dump_store.chain_pem());
                    let secrets = switchyard_dataplane_sidecar::config::dump::secrets_section(
                        certificate.as_ref().map(|(i, c)| (i, c.clone())),
                        dump_store.bundle().pem(),
                    );
                    if let Some(configs) = dump["configs"].as_array_mut() {
                        configs.push(secrets);
                    }
                    async move { axum::Json(dump) }
                }),
            )
            .route(
                "/ready",
                axum::routing::get(move || {
                    let config_ready = ready_config.is_ready();
                    let cert = ready_store.certificate().is_some();
                    let draining = ready_proxy.is_draining();
                    async move {
                        let code = if config_ready && cert && !draining {
                            axum::http::StatusCode::OK
                        } else {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        };
                        (
                            code,
                            format!(
                                "config_ready: {config_ready}\ncertificate: {cert}\ndraining: {draining}\n"
                            ),
                        )
                    }
                }),
            )
            .route(
                "/stats",
                axum::routing::get(move || {
                    let mut out = String::new();
                    stats_proxy.metrics().render(&mut out);
                    stats_proxy.http_metrics().render(&mut out);
                    let upstreams = stats_proxy.upstreams().load_full();
                    let mut names: Vec<_> = upstreams.keys().collect();
                    names.sort();
                    for name in names {
                        let snap = upstreams[name].breaker.snapshot();
                        if snap.each().iter().any(|(_, c)| c.refused > 0) {
                            let _ = write!(out, "circuit {name}:");
                            for (resource, c) in snap.each() {
                                let _ = write!(
                                    out,
                                    " {resource}={}/{} refused={}",
                                    c.active, c.limit, c.refused
                                );
                            }
                            out.push('\n');
                        }
                    }
                    for (cluster, counts) in stats_proxy.balancer_counts() {
                        if counts.ejections > 0 || counts.panic_picks > 0 {
                            let _ = writeln!(
                                out,
                                "balancer {cluster}: ejections={} ejections_overflow={} panic_picks={}",
                                counts.ejections, counts.ejections_overflow, counts.panic_picks
                            );
                        }
                    }
                    let _ = writeln!(
                        out,
                        "detection: {:?}",
                        stats_proxy.detector().stats().snapshot()
                    );
                    let client = stats_proxy.hbone().stats().snapshot();
                    let server = hbone_server_stats.snapshot();
                    let _ = writeln!(out, "hbone_client: {client:?}");
                    let pooled: usize = std::iter::once(&stats_proxy)
                        .chain(&stats_workers)
                        .map(|p| p.hbone().pooled_connections())
                        .sum();
                    let _ = writeln!(out, "hbone_client_pooled: {pooled}");
                    let _ = writeln!(out, "hbone_server: {server:?}");
                    if let Some(spread) = &stats_spread {
                        let _ = writeln!(out, "hbone_server_connections_per_worker: {:?}", spread.open());
                    }
                    let status = stats_config.status();
                    let _ = writeln!(
                        out,
                        "xds: connected={} streams={} acks={} nacks={} config_version={}",
                        status.connected,
                        status.streams,
                        status.acks,
                        status.nacks,
                        stats_config.current().map_or(0, |c| c.version())
                    );
                    async move { out }
                }),
            )
    };
    tokio::spawn(async move {
        let _ = axum::serve(admin, admin_app).await;
    });

    tokio::spawn(proxy.clone().follow_endpoints());
    tokio::spawn(proxy.clone().serve_outbound(outbound));
    tokio::spawn(proxy.clone().serve_inbound_plaintext(inbound));
    let shutdown = CancellationToken::new();
    let mut workers_drained = Vec::with_capacity(worker_proxies.len());
    let mut spread_members = spread_members.into_iter();
    let main_member = spread_members.next();
    for ((worker, listeners), member) in worker_proxies
        .into_iter()
        .zip(capture_listeners)
        .zip(spread_members)
    {
        workers_drained.push(
            start_worker(
                worker,
                &hbone_server,
                listeners,
                member,
                config.clone(),
                shutdown.clone(),
            )
            .await?,
        );
    }
    let hbone_task = {
        let shutdown = shutdown.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let ready = tokio::select! {
                ready = config.ready() => ready.is_some(),
                () = shutdown.cancelled() => false,
            };
            match (ready, main_member) {
                (true, Some(member)) => hbone_server.serve_spread(hbone, shutdown, member).await,
                (true, None) => hbone_server.serve(hbone, shutdown).await,
                (false, _) => {}
            }
        })
    };
    info!(
        %identity,
        pod_ip = %args.pod_ip,
        outbound = %args.outbound_address,
        inbound = %args.inbound_address,
        hbone = %args.hbone_address,
        workers,
        "proxy started; accepting once the configuration is ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Drain: /ready answers 503 at once (so nothing new is sent here), the capture
    // listeners stop accepting, HTTP connections close after their requests in flight, HBONE
    // tunnels are let finish; whatever is still open after the grace period is cut.
    let grace = Duration::from_secs(args.drain_seconds);
    info!(grace_s = args.drain_seconds, "shutting down: draining");
    shutdown.cancel();
    let hbone_drained = async {
        let _ = hbone_task.await;
        for drained in workers_drained {
            let _ = drained.await;
        }
    };
    let (left, _) = tokio::join!(
        proxy.drain(grace),
        tokio::time::timeout(grace, hbone_drained)
    );
    info!(connections_cut = left, "drained");
    Ok(())
}

/// One worker's capture listeners.
struct CaptureListeners {
    outbound: tokio::net::TcpListener,
    inbound: tokio::net::TcpListener,
    hbone: tokio::net::TcpListener,
}

/// A listening socket on `addr` (tokio's settings: `SO_REUSEADDR`, backlog 1024), in an
/// `SO_REUSEPORT` group when `reuse_port`.
fn bind_listener(
    addr: SocketAddr,
    reuse_port: bool,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(|| format!("cannot open a socket for {what}"))?;
    socket
        .set_reuseaddr(true)
        .with_context(|| format!("SO_REUSEADDR on the {what} socket"))?;
    if reuse_port {
        socket
            .set_reuseport(true)
            .with_context(|| format!("SO_REUSEPORT on the {what} socket"))?;
    }
    socket
        .bind(addr)
        .and_then(|()| socket.listen(1024))
        .with_context(|| format!("cannot listen on {addr} for {what}"))
}

/// Starts worker `proxy.worker()` on a thread of its own, with its own single-threaded
/// runtime serving `listeners`. Returns once it is running; the receiver fires when its
/// HBONE server has drained (after `shutdown`).
async fn start_worker(
    proxy: Arc<Proxy>,
    hbone_server: &HboneServer<TunnelHandler>,
    listeners: CaptureListeners,
    member: SpreadMember,
    config: ConfigReader,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let worker = proxy.worker();
    let hbone_server = hbone_server.with_handler(proxy.tunnel_handler());
    // A listener is registered with one runtime's I/O driver: hand the sockets over bare.
    let (outbound, inbound, hbone) = (
        listeners.outbound.into_std(),
        listeners.inbound.into_std(),
        listeners.hbone.into_std(),
    );
    let (outbound, inbound, hbone) = (|| Ok::<_, std::io::Error>((outbound?, inbound?, hbone?)))()
        .with_context(|| format!("handing worker {worker} its listeners"))?;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("worker-{worker}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let adopt = |l: std::net::TcpListener| tokio::net::TcpListener::from_std(l);
                let (outbound, inbound, hbone) =
                    match (adopt(outbound), adopt(inbound), adopt(hbone)) {
                        (Ok(o), Ok(i), Ok(h)) => (o, i, h),
                        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                            let _ = started_tx.send(Err(e.into()));
                            return;
                        }
                    };
                let _ = started_tx.send(Ok(()));
                tokio::spawn(proxy.clone().serve_outbound(outbound));
                tokio::spawn(proxy.serve_inbound_plaintext(inbound));
                let ready = tokio::select! {
                    ready = config.ready() => ready.is_some(),
                    () = shutdown.cancelled() => false,
                };
                if ready {
                    hbone_server.serve_spread(hbone, shutdown, member).await;
                } else {
                    // Out of the SO_REUSEPORT group and the spread: no connection may wait on
                    // it unserved.
                    drop((hbone, member));
                }
                let _ = drained_tx.send(());
                // The connections of this worker are tasks of this runtime: keep it running
                // until the process exits (the main thread decides when, after the drain).
                std::future::pending::<()>().await
            });
        })
        .context("starting a worker thread")?;
    started_rx
        .await
        .with_context(|| format!("worker {worker} ended while starting"))?
        .with_context(|| format!("starting worker {worker}"))?;
    Ok(drained_rx)
}
