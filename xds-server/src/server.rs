//! Wires a running control plane: source -> mesh state -> push loop -> snapshot cache, the
//! gRPC server (ADS, CSDS) and the admin HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use switchyard_model::Mesh;
use switchyard_protos::envoy::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer;
use switchyard_protos::switchyard::ca::v1::certificate_service_server::CertificateServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::admin::{self, AdminState};
use crate::ads::AdsService;
use crate::ads::transport::AdsServer;
use crate::ca_service::CaService;
use crate::cache::SnapshotCache;
use crate::config::Config;
use crate::csds::CsdsService;
use crate::metrics::Metrics;
use crate::render::RenderOptions;
use crate::sources::dir::DirectorySource;
use crate::sources::{Source, SourceReport};
use crate::state::{self, MeshStatus, Published};
use crate::trust::Trust;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The CA directory is unusable.
    #[error("certificate authority: {0}")]
    Ca(#[from] switchyard_ca::CaDirError),
    /// The token key is unusable.
    #[error("certificate authority: {0}")]
    TokenKey(#[from] switchyard_ca::token::TokenKeyError),
    /// The control plane's own TLS certificate could not be issued.
    #[error("{0}")]
    OwnCert(#[from] crate::tls_listener::OwnCertError),
    /// The Kubernetes API for TokenReview cannot be used.
    #[error("kubernetes api ({api}): {reason}")]
    Kube {
        /// The configured value.
        api: String,
        /// Why.
        reason: String,
    },
    /// A listen address is taken or not allowed.
    #[error("cannot listen on {address} for {what}: {source} (is another switchyard running?)")]
    Bind {
        /// Which server.
        what: &'static str,
        /// Address.
        address: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

/// A running control plane.
#[derive(Debug)]
pub struct Server {
    xds_address: SocketAddr,
    xds_tls_address: SocketAddr,
    trust: Arc<Trust>,
    admin_address: SocketAddr,
    cache: Arc<SnapshotCache>,
    status: Arc<ArcSwap<MeshStatus>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind {
            what,
            address,
            source,
        })
}

impl Server {
    /// Starts with the directory source of `config.config_dir`.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let source = DirectorySource::new(config.config_dir.clone(), config.source_debounce);
        Self::start_with_source(config, Box::new(source)).await
    }

    /// Starts with any source.
    pub async fn start_with_source(
        config: Config,
        source: Box<dyn Source>,
    ) -> Result<Server, ServerError> {
        let xds_listener = bind("xds", config.xds_address).await?;
        let admin_listener = bind("admin", config.admin_address).await?;
        let tls_listener = bind("xds-tls", config.xds_tls_address).await?;
        let xds_tls_address = tls_listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                what: "xds-tls",
                address: config.xds_tls_address,
                source,
            })?;
        let xds_address = xds_listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                what: "xds",
                address: config.xds_address,
                source,
            })?;
        let admin_address = admin_listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                what: "admin",
                address: config.admin_address,
                source,
            })?;

        let trust = Arc::new(Trust::load(
            config.ca_dir.clone(),
            switchyard_ca::AuthorityConfig {
                trust_domain: config.mesh.trust_domain.clone(),
                default_ttl: config.cert_default_ttl,
                max_ttl: config.cert_max_ttl,
            },
        )?);
        let own_identity = crate::tls_listener::own_identity(&trust)?;
        let tokens = Arc::new(switchyard_ca::token::TokenAuthority::load_or_create(
            &config.ca_dir,
        )?);
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let registry = Arc::new(registry);
        let shutdown = CancellationToken::new();
        let empty = Arc::new(Mesh::empty(config.mesh.clone()));
        let cache = Arc::new(SnapshotCache::new(
            empty.clone(),
            RenderOptions {
                connect_timeout: config.connect_timeout,
                cluster_domain: config.mesh.cluster_domain.clone(),
            },
            metrics.clone(),
        ));
        let status = Arc::new(ArcSwap::from_pointee(MeshStatus::default()));
        let mut tasks = Vec::new();

        // source -> state -> push loop
        let description = source.describe();
        let (report_tx, report_rx) = watch::channel(SourceReport::default());
        tasks.push(tokio::spawn(source.run(report_tx, shutdown.clone())));
        let (mesh_tx, mesh_rx) = watch::channel::<Published>((empty, Instant::now()));
        tasks.push(tokio::spawn(state::follow(
            state::MeshInputs {
                source: description.clone(),
                reports: report_rx,
                config: config.mesh.clone(),
                bundle: trust.bundle(),
            },
            mesh_tx,
            status.clone(),
            metrics.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(push_loop(
            cache.clone(),
            mesh_rx,
            config.push_debounce,
            shutdown.clone(),
        )));

        // gRPC: ADS + CSDS on one port
        let ads = AdsServer::new(
            AdsService::new(cache.clone(), shutdown.clone()),
            config.max_request_bytes,
        );
        let csds = ClientStatusDiscoveryServiceServer::new(CsdsService::new(cache.clone()))
            .max_decoding_message_size(config.max_request_bytes);
        let certificates = CertificateServiceServer::new(CaService::new(
            trust.clone(),
            crate::authn::Authenticator::new(tokens, kube_client(&config.kube_api).await?),
            cache.clone(),
        ))
        .max_decoding_message_size(config.max_request_bytes);
        let grpc = || {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(ads.clone())
                .add_service(csds.clone())
                .add_service(certificates.clone())
        };
        let plain = grpc();
        let grpc_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let result = plain
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(xds_listener),
                    grpc_shutdown.cancelled_owned(),
                )
                .await;
            if let Err(e) = result {
                error!(error = %e, "xds server stopped");
            }
        }));
        let secure = grpc();
        let incoming = crate::tls_listener::incoming(tls_listener, &own_identity, shutdown.clone());
        let grpc_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let result = secure
                .serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned())
                .await;
            if let Err(e) = result {
                error!(error = %e, "xds tls server stopped");
            }
        }));
        tasks.push(tokio::spawn(crate::tls_listener::keep_fresh(
            trust.clone(),
            own_identity,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(
            trust.clone().drive(cache.clone(), shutdown.clone()),
        ));

        // admin
        let app = admin::router(AdminState {
            cache: cache.clone(),
            status: status.clone(),
            registry,
            trust: trust.clone(),
            test_hooks: config.test_hooks,
        });
        let admin_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let result = axum::serve(admin_listener, app)
                .with_graceful_shutdown(admin_shutdown.cancelled_owned())
                .await;
            if let Err(e) = result {
                error!(error = %e, "admin server stopped");
            }
        }));
        info!(xds = %xds_address, xds_tls = %xds_tls_address, admin = %admin_address, source = %description, "switchyard started");
        Ok(Server {
            xds_address,
            xds_tls_address,
            trust,
            admin_address,
            cache,
            status,
            shutdown,
            tasks,
        })
    }

    /// Where xDS is served.
    pub fn xds_address(&self) -> SocketAddr {
        self.xds_address
    }

    /// Where xDS/CA over TLS is served.
    pub fn xds_tls_address(&self) -> SocketAddr {
        self.xds_tls_address
    }

    /// The CA's run-time state.
    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    /// Where admin is served.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// The snapshot cache.
    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.cache
    }

    /// The mesh status.
    pub fn status(&self) -> Arc<MeshStatus> {
        self.status.load_full()
    }

    /// Asks every task to stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops and waits for every task.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Kubernetes client for TokenReview, if configured.
async fn kube_client(api: &str) -> Result<Option<kube::Client>, ServerError> {
    let err = |reason: String| ServerError::Kube {
        api: api.to_string(),
        reason,
    };
    match api {
        "" => Ok(None),
        "default" => kube::Client::try_default()
            .await
            .map(Some)
            .map_err(|e| err(format!("{e} (no in-cluster config or kubeconfig?)"))),
        url => {
            let uri = url.parse().map_err(|e| err(format!("not a URL: {e}")))?;
            kube::Client::try_from(kube::Config::new(uri))
                .map(Some)
                .map_err(|e| err(e.to_string()))
        }
    }
}

/// Longest a burst of changes may delay a push.
const MAX_DEBOUNCE_FACTOR: u32 = 10;

async fn push_loop(
    cache: Arc<SnapshotCache>,
    mut meshes: watch::Receiver<Published>,
    debounce: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = meshes.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        let first_seen = meshes.borrow().1;
        // Quiet period: wait until no change for `debounce`, at most 10 x debounce.
        let deadline = tokio::time::Instant::now() + debounce * MAX_DEBOUNCE_FACTOR;
        loop {
            meshes.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep(debounce) => {}
                _ = shutdown.cancelled() => return,
            }
            if !meshes.has_changed().unwrap_or(false) || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let mesh = meshes.borrow_and_update().0.clone();
        let generation = mesh.generation;
        let c = cache.clone();
        match tokio::task::spawn_blocking(move || c.push(mesh, first_seen)).await {
            Ok(stats) => info!(
                generation,
                proxies = stats.proxies,
                changed = stats.changed,
                elapsed_ms = stats.elapsed.as_secs_f64() * 1000.0,
                "pushed"
            ),
            Err(e) => error!(error = %e, generation, "push failed"),
        }
    }
}
