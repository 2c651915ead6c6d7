//! Request metrics of the HTTP data path: requests by direction, route, status code and
//! peer identity, latency histograms by direction, retries.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

#[cfg(test)]
mod tests {
    use super::*;

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
