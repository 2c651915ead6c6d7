//! Outlier ejection state of one endpoint: consecutive failure counters and, once a
//! threshold is reached, an ejection whose length backs off with repeated ejections (Envoy's
//! `base_ejection_time * n`, capped at `max_ejection_time`). Un-ejection is lazy: an endpoint
//! is ejected while the clock is before its `ejected_until`, so no timer runs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Outlier detection settings (Envoy's `OutlierDetection` subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Eject after this many 5xx responses or connect failures in a row; `None` disables.
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many connect failures in a row; `None` disables.
    pub consecutive_connect_failures: Option<u32>,
    /// First ejection length; the n-th ejection in a row lasts n times this.
    pub base_ejection_time: Duration,
    /// Longest ejection.
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent of the set (at least one is always allowed).
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    /// Envoy's defaults: 5, 5, 30 s, 300 s, 10 %.
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_connect_failures: Some(5),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

impl OutlierConfig {
    /// How many of `n` endpoints may be ejected at once.
    pub(super) fn max_ejected(&self, n: usize) -> usize {
        (n * self.max_ejection_percent.min(100) as usize / 100).max(1)
    }

    /// The backoff multiplier for a new ejection, given the previous multiplier and how long
    /// the endpoint has been back since its last ejection: each full base ejection time spent
    /// healthy forgives one previous ejection.
    pub(super) fn next_multiplier(&self, previous: u32, healthy_for: Option<Duration>) -> u32 {
        let forgiven = match healthy_for {
            Some(d) => d.as_nanos() / self.base_ejection_time.as_nanos().max(1),
            None => 0,
        };
        let forgiven = u32::try_from(forgiven).unwrap_or(u32::MAX);
        previous.saturating_sub(forgiven).saturating_add(1)
    }

    /// The length of an ejection with this multiplier.
    pub(super) fn ejection_time(&self, multiplier: u32) -> Duration {
        self.base_ejection_time
            .saturating_mul(multiplier)
            .min(self.max_ejection_time)
    }
}

/// What the proxy saw from an endpoint, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// A 5xx response, or a reset after the connection was made.
    ServerError,
    /// No connection could be made.
    ConnectFailure,
}

/// The per-endpoint atomics; times are nanoseconds since the balancer's epoch.
#[derive(Debug, Default)]
pub(super) struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_connect: AtomicU32,
    /// 0: never ejected.
    ejected_until: AtomicU64,
    multiplier: AtomicU32,
}

impl OutlierState {
    pub(super) fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ns
    }

    pub(super) fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    pub(super) fn multiplier(&self) -> u32 {
        self.multiplier.load(Ordering::Relaxed)
    }

    pub(super) fn success(&self) {
        // skip the stores on the common path where nothing failed
        if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
        }
        if self.consecutive_connect.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; true when a threshold was reached.
    pub(super) fn failure(&self, kind: FailureKind, config: &OutlierConfig) -> bool {
        let reached = |counter: &AtomicU32, threshold: Option<u32>| {
            let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            threshold.is_some_and(|t| n >= t)
        };
        let by_5xx = reached(&self.consecutive_5xx, config.consecutive_5xx);
        let by_connect = kind == FailureKind::ConnectFailure
            && reached(
                &self.consecutive_connect,
                config.consecutive_connect_failures,
            );
        by_5xx || by_connect
    }

    /// Ejects until `until_ns` with this backoff multiplier; counters restart.
    pub(super) fn eject(&self, until_ns: u64, multiplier: u32) {
        self.ejected_until.store(until_ns, Ordering::Relaxed);
        self.multiplier.store(multiplier, Ordering::Relaxed);
        self.reset_counters();
    }

    pub(super) fn reset_counters(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_connect.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_back_off_and_are_forgiven_over_time() {
        let c = OutlierConfig::default();
        assert_eq!(c.next_multiplier(0, None), 1);
        assert_eq!(c.ejection_time(1), Duration::from_secs(30));
        // ejected again 10 s after coming back: longer
        assert_eq!(c.next_multiplier(1, Some(Duration::from_secs(10))), 2);
        assert_eq!(c.ejection_time(2), Duration::from_secs(60));
        // healthy for 65 s forgives two ejections
        assert_eq!(c.next_multiplier(3, Some(Duration::from_secs(65))), 2);
        assert_eq!(c.ejection_time(50), Duration::from_secs(300));
    }

    #[test]
    fn at_least_one_endpoint_may_be_ejected() {
        let c = OutlierConfig::default();
        assert_eq!(c.max_ejected(1), 1);
        assert_eq!(c.max_ejected(10), 1);
        assert_eq!(c.max_ejected(35), 3);
        let all = OutlierConfig {
            max_ejection_percent: 250,
            ..c
        };
        assert_eq!(all.max_ejected(4), 4);
    }

    #[test]
    fn thresholds_count_consecutive_failures_only() {
        let c = OutlierConfig {
            consecutive_5xx: Some(3),
            consecutive_connect_failures: Some(2),
            ..OutlierConfig::default()
        };
        let s = OutlierState::default();
        assert!(!s.failure(FailureKind::ServerError, &c));
        assert!(!s.failure(FailureKind::ServerError, &c));
        s.success();
        assert!(!s.failure(FailureKind::ServerError, &c));
        assert!(!s.failure(FailureKind::ConnectFailure, &c));
        // the second connect failure in a row, and the third failure of either kind
        assert!(s.failure(FailureKind::ConnectFailure, &c));
        let disabled = OutlierConfig {
            consecutive_5xx: None,
            consecutive_connect_failures: None,
            ..c
        };
        let s = OutlierState::default();
        assert!((0..100).all(|_| !s.failure(FailureKind::ConnectFailure, &disabled)));
    }
}
