//! Request metrics of the HTTP data path: requests by direction, route, status code and
//! peer identity, latency histograms by direction, retries; and per-cluster counters read at
//! scrape time ([`UpstreamCollector`]): outlier ejections, circuit-breaker overflows and
//! slots in use.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// `outbound` or `inbound`.
    pub direction: String,
    /// The route's name (`-` when none matched).
    pub route: String,
    /// HTTP status code.
    pub code: u16,
    /// The other side's SPIFFE ID: the caller (inbound), or the destination when its
    /// cluster names exactly one identity (outbound); `-` when unknown or plaintext.
    pub peer: String,
}

/// Labels of a latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `outbound` or `inbound`.
    pub direction: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~13 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// HTTP request metrics; cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// Requests answered, by direction, route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request headers to response headers, seconds, by direction.
    pub latency: Family<DirectionLabels, Histogram, fn() -> Histogram>,
    /// Retries sent.
    pub retries: Counter,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            retries: Counter::default(),
        }
    }
}

impl HttpMetrics {
    /// Counts one answered request.
    pub fn record(
        &self,
        direction: &str,
        route: &str,
        code: u16,
        peer: Option<&str>,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                direction: direction.to_string(),
                route: route.to_string(),
                code,
                peer: peer.unwrap_or("-").to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&DirectionLabels {
                direction: direction.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Registers as `switchyard_sidecar_http_requests_total`,
    /// `switchyard_sidecar_http_request_duration_seconds` and
    /// `switchyard_sidecar_http_retries_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_sidecar_http_requests",
            "HTTP requests answered, by direction, route, status code and peer identity",
            self.requests.clone(),
        );
        registry.register(
            "switchyard_sidecar_http_request_duration_seconds",
            "time from request headers to response headers",
            self.latency.clone(),
        );
        registry.register(
            "switchyard_sidecar_http_retries",
            "HTTP retries sent",
            self.retries.clone(),
        );
    }

    /// The retry count, for `/stats`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "http_retries: {}", self.retries.get());
    }
}

/// Labels of a per-cluster count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// Labels of a per-cluster, per-limit count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    cluster: String,
    /// `max-connections`, `max-pending-requests`, `max-requests` or `max-retries`.
    resource: String,
}

/// Reads every cluster's balancer and circuit breaker at scrape time:
/// `switchyard_sidecar_outlier_ejections_total{cluster}`,
/// `switchyard_sidecar_upstream_overflow_total{cluster,resource}` (slots refused: Envoy's
/// `upstream_cx_overflow`, `upstream_rq_pending_overflow`, ...) and
/// `switchyard_sidecar_upstream_active{cluster,resource}` (slots in use).
#[derive(Debug)]
pub struct UpstreamCollector {
    upstreams: super::Upstreams,
}

impl UpstreamCollector {
    /// A collector over `upstreams`.
    pub fn new(upstreams: super::Upstreams) -> Self {
        UpstreamCollector { upstreams }
    }
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let upstreams = self.upstreams.load();
        let mut clusters: Vec<_> = upstreams.iter().collect();
        clusters.sort_by(|a, b| a.0.cmp(b.0));
        let snapshots: Vec<_> = clusters
            .iter()
            .map(|(name, u)| (name.as_str(), u.breaker.snapshot()))
            .collect();

        let mut family = encoder.encode_descriptor(
            "switchyard_sidecar_outlier_ejections",
            "endpoints ejected by passive outlier detection, by cluster",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, u) in &clusters {
            let labels = ClusterLabels {
                cluster: name.to_string(),
            };
            ConstCounter::new(u.balancer.counts().ejections)
                .encode(family.encode_family(&labels)?)?;
        }

        // One series per cluster and limit: refusals, then slots in use.
        for (name, help, metric_type, refused) in [
            (
                "switchyard_sidecar_upstream_overflow",
                "requests or connections refused by a cluster's circuit breaker, by limit",
                prometheus_client::metrics::MetricType::Counter,
                true,
            ),
            (
                "switchyard_sidecar_upstream_active",
                "circuit-breaker slots in use, by cluster and limit",
                prometheus_client::metrics::MetricType::Gauge,
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (cluster, snap) in &snapshots {
                for (resource, counts) in snap.each() {
                    let labels = LimitLabels {
                        cluster: cluster.to_string(),
                        resource: resource.as_str().to_string(),
                    };
                    let series = family.encode_family(&labels)?;
                    if refused {
                        ConstCounter::new(counts.refused).encode(series)?;
                    } else {
                        ConstGauge::new(i64::from(counts.active)).encode(series)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_collector_reads_ejections_overflows_and_slots_at_scrape_time() {
        use crate::proxy::balance::{Balancer, BalancerConfig};
        use crate::proxy::circuit::{CircuitBreaker, CircuitLimits};
        let breaker = CircuitBreaker::new(CircuitLimits {
            max_requests: 1,
            ..CircuitLimits::default()
        });
        let upstreams: super::super::Upstreams = std::sync::Arc::new(
            arc_swap::ArcSwap::from_pointee(std::collections::HashMap::from([(
                "outbound|80||web".to_string(),
                super::super::Upstream {
                    balancer: Balancer::new(BalancerConfig::default()),
                    breaker: breaker.clone(),
                },
            )])),
        );
        let mut registry = Registry::default();
        registry.register_collector(Box::new(UpstreamCollector::new(upstreams)));
        let scrape = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap_or_default();
            out
        };
        let held = breaker.try_request().unwrap();
        assert!(breaker.try_request().is_err());
        let out = scrape();
        for line in [
            "switchyard_sidecar_outlier_ejections_total{cluster=\"outbound|80||web\"} 0",
            "switchyard_sidecar_upstream_overflow_total{cluster=\"outbound|80||web\",resource=\"max-requests\"} 1",
            "switchyard_sidecar_upstream_overflow_total{cluster=\"outbound|80||web\",resource=\"max-connections\"} 0",
            "switchyard_sidecar_upstream_active{cluster=\"outbound|80||web\",resource=\"max-requests\"} 1",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        drop(held);
        assert!(scrape().contains(
            "switchyard_sidecar_upstream_active{cluster=\"outbound|80||web\",resource=\"max-requests\"} 0"
        ));
    }

    #[test]
    fn requests_are_counted_by_route_code_and_peer() {
        let m = HttpMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let client = "spiffe://cluster.local/ns/shop/sa/client";
        m.record(
            "inbound",
            "inbound|8080||",
            200,
            Some(client),
            Duration::from_millis(2),
        );
        m.record(
            "inbound",
            "inbound|8080||",
            200,
            Some(client),
            Duration::from_millis(3),
        );
        m.record(
            "inbound",
            "inbound|8080||",
            403,
            None,
            Duration::from_millis(1),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap_or_default();
        let line = |code: u16, peer: &str| {
            format!(
                "switchyard_sidecar_http_requests_total{{direction=\"inbound\",route=\"inbound|8080||\",code=\"{code}\",peer=\"{peer}\"}}"
            )
        };
        assert!(out.contains(&format!("{} 2", line(200, client))), "{out}");
        assert!(out.contains(&format!("{} 1", line(403, "-"))), "{out}");
        assert!(
            out.contains(
                "switchyard_sidecar_http_request_duration_seconds_count{direction=\"inbound\"} 3"
            ),
            "{out}"
        );
    }
}
