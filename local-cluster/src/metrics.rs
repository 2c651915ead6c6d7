//! The supervisor's Prometheus metrics, served on `/metrics` at the address in the state file
//! (`metrics_address`, loopback of the host, a free port unless `--metrics-address` says).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ClusterError;
use crate::state::ClusterState;

/// Gauges read from the state each time it is written, and a restart counter.
#[derive(Debug, Default, Clone)]
pub struct SupervisorMetrics {
    pods: Gauge,
    ready_pods: Gauge,
    restarts: Counter<u64, AtomicU64>,
    manifest_problems: Gauge,
}

impl SupervisorMetrics {
    /// Counts one restart of a supervised process.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// Updates every gauge from `state`.
    pub fn observe(&self, state: &ClusterState) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.pods.set(count(state.pods.len()));
        self.ready_pods
            .set(count(state.pods.values().filter(|p| p.ready()).count()));
        self.manifest_problems
            .set(count(state.manifest_problems.len()));
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "switchyard_localcluster_pods",
            "pods the local cluster runs",
            self.pods.clone(),
        );
        r.register(
            "switchyard_localcluster_ready_pods",
            "pods whose every container runs",
            self.ready_pods.clone(),
        );
        r.register(
            "switchyard_localcluster_process_restarts",
            "restarts of supervised processes (control plane, node agents, containers)",
            self.restarts.clone(),
        );
        r.register(
            "switchyard_localcluster_manifest_problems",
            "problems found at the last read of the manifests (0 when they read cleanly)",
            self.manifest_problems.clone(),
        );
        r
    }

    /// Listens on `addr` and serves `/metrics`; returns the bound address.
    pub async fn serve(&self, addr: SocketAddr) -> Result<SocketAddr, ClusterError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ClusterError::Io {
                what: format!("listening on {addr} for metrics"),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| ClusterError::Io {
            what: "reading the metrics address".into(),
            source,
        })?;
        let registry = Arc::new(self.registry());
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = Arc::clone(&registry);
                async move {
                    let mut out = String::new();
                    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
                        tracing::warn!(error = %e, "encoding metrics");
                    }
                    out
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
        Ok(bound)
    }
}
