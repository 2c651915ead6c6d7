//! Prometheus metrics of the control plane (`switchyard_xds_*`, `switchyard_source_*`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Proxy kind label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `sidecar`, `envoy`, `ztunnel`, `ebpf`, `grpc`.
    pub kind: String,
}

/// Type label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// Short type name (`cds`, `eds`, ...).
    pub r#type: String,
}

/// ADS variant.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Variant {
    /// State of the world.
    Sotw,
    /// Incremental.
    Delta,
}

/// Why a request or stream was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Reason code.
    pub reason: String,
}

/// Labels of responses.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// Short type name.
    pub r#type: String,
    /// SotW or delta.
    pub variant: Variant,
}

/// Every metric of the control plane.
#[derive(Debug)]
pub struct Metrics {
    /// Connected proxies by kind.
    pub connected: Family<KindLabels, Gauge>,
    /// Responses sent.
    pub responses: Family<ResponseLabels, Counter>,
    /// Resources sent (upserts).
    pub resources_sent: Family<TypeLabels, Counter>,
    /// Encoded bytes of resources sent.
    pub bytes_sent: Family<TypeLabels, Counter>,
    /// NACKs received.
    pub nacks: Family<TypeLabels, Counter>,
    /// Requests with a nonce that is not the latest (ignored).
    pub stale_nonces: Counter,
    /// Streams or requests refused.
    pub rejected: Family<RejectLabels, Counter>,
    /// Generations pushed.
    pub pushes: Counter,
    /// Proxies whose snapshot changed in a push.
    pub proxies_pushed: Counter,
    /// Time to compute every connected proxy's snapshot for one generation.
    pub push_seconds: Histogram,
    /// Time from a model change being seen to a proxy ACKing the result, per proxy and type.
    pub convergence_seconds: Histogram,
    /// Current mesh generation.
    pub generation: Gauge,
    /// Problems in the latest source read.
    pub source_problems: Gauge,
    /// Good source reads.
    pub source_loads: Counter,
    /// Certificate requests by verdict (`allow`, `unauthenticated`, `invalid`, `denied`).
    pub ca_requests: Family<VerdictLabels, Counter>,
    /// Roots in the trust bundle.
    pub ca_bundle_roots: Gauge,
}

/// Labels of certificate decisions.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Decision.
    pub verdict: &'static str,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            connected: Family::default(),
            responses: Family::default(),
            resources_sent: Family::default(),
            bytes_sent: Family::default(),
            nacks: Family::default(),
            stale_nonces: Counter::default(),
            rejected: Family::default(),
            pushes: Counter::default(),
            proxies_pushed: Counter::default(),
            push_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            convergence_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            generation: Gauge::default(),
            source_problems: Gauge::default(),
            source_loads: Counter::default(),
            ca_requests: Family::default(),
            ca_bundle_roots: Gauge::default(),
        };
        registry.register(
            "switchyard_ca_requests",
            "Certificate requests by verdict",
            m.ca_requests.clone(),
        );
        registry.register(
            "switchyard_ca_bundle_roots",
            "Roots in the trust bundle",
            m.ca_bundle_roots.clone(),
        );
        let r = registry;
        r.register(
            "switchyard_xds_connected_proxies",
            "Connected xDS streams by proxy kind",
            m.connected.clone(),
        );
        r.register(
            "switchyard_xds_responses",
            "Discovery responses sent",
            m.responses.clone(),
        );
        r.register(
            "switchyard_xds_resources_sent",
            "Resources sent in responses",
            m.resources_sent.clone(),
        );
        r.register(
            "switchyard_xds_resource_bytes_sent",
            "Encoded bytes of resources sent",
            m.bytes_sent.clone(),
        );
        r.register("switchyard_xds_nacks", "NACKs received", m.nacks.clone());
        r.register(
            "switchyard_xds_stale_nonces",
            "Requests ignored because their nonce is stale",
            m.stale_nonces.clone(),
        );
        r.register(
            "switchyard_xds_rejected",
            "Streams refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "switchyard_xds_pushes",
            "Mesh generations pushed",
            m.pushes.clone(),
        );
        r.register(
            "switchyard_xds_proxies_pushed",
            "Proxies whose snapshot changed in a push",
            m.proxies_pushed.clone(),
        );
        r.register(
            "switchyard_xds_push_duration_seconds",
            "Time to compute the snapshots of every connected proxy for one generation",
            m.push_seconds.clone(),
        );
        r.register(
            "switchyard_xds_convergence_seconds",
            "Time from a model change to a proxy's ACK of the result",
            m.convergence_seconds.clone(),
        );
        r.register(
            "switchyard_xds_mesh_generation",
            "Current mesh generation",
            m.generation.clone(),
        );
        r.register(
            "switchyard_source_problems",
            "Problems in the latest source read",
            m.source_problems.clone(),
        );
        r.register(
            "switchyard_source_loads",
            "Good source reads",
            m.source_loads.clone(),
        );
        // Every kind shows up from the start, at zero, so dashboards and alerts see it.
        for kind in switchyard_model::ProxyKind::ALL {
            m.connected
                .get_or_create(&KindLabels {
                    kind: kind.to_string(),
                })
                .set(0);
        }
        m
    }

    /// Counts a refusal.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&RejectLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed_from_the_start() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.reject("bad_node");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for kind in ["sidecar", "envoy", "ztunnel", "ebpf", "grpc"] {
            assert!(
                out.contains(&format!(
                    "switchyard_xds_connected_proxies{{kind=\"{kind}\"}} 0"
                )),
                "{out}"
            );
        }
        assert!(
            out.contains("switchyard_xds_rejected_total{reason=\"bad_node\"} 1"),
            "{out}"
        );
    }
}
