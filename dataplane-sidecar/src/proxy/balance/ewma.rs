//! Peak EWMA of round-trip times (Finagle's and Linkerd's load estimate): a slower sample
//! replaces the estimate at once, faster ones pull it down with a weight that grows with the
//! time since the last sample, and without samples it decays towards zero so an idle
//! endpoint gets tried again.

use std::time::{Duration, Instant};

/// The estimate and when it was last updated.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeakEwma {
    estimate_ns: f64,
    updated: Instant,
}

impl PeakEwma {
    /// Starts at `initial` (the assumed RTT of an endpoint never measured).
    pub(super) fn new(initial: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: initial.as_secs_f64() * 1e9,
            updated: now,
        }
    }

    /// The estimate at `now` in nanoseconds, decayed with time constant `tau`.
    pub(super) fn value(&self, now: Instant, tau: Duration) -> f64 {
        self.estimate_ns * self.weight(now, tau)
    }

    /// Adds a sample.
    pub(super) fn observe(&mut self, rtt: Duration, now: Instant, tau: Duration) {
        let rtt_ns = rtt.as_secs_f64() * 1e9;
        if rtt_ns > self.estimate_ns {
            // peak sensitivity: a slow response counts in full immediately
            self.estimate_ns = rtt_ns;
        } else {
            let w = self.weight(now, tau);
            self.estimate_ns = self.estimate_ns * w + rtt_ns * (1.0 - w);
        }
        self.updated = self.updated.max(now);
    }

    /// `exp(-elapsed / tau)`: how much of the old estimate survives until `now`.
    fn weight(&self, now: Instant, tau: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let tau = tau.as_secs_f64().max(1e-9);
        (-elapsed / tau).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    fn ms(v: f64) -> f64 {
        v * 1e6
    }

    #[test]
    fn a_peak_counts_at_once_and_fades_with_later_samples() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(10), t0);
        e.observe(Duration::from_millis(100), t0, TAU);
        assert_eq!(e.value(t0, TAU), ms(100.0));
        // a fast sample right after barely moves it ...
        let t1 = t0 + Duration::from_millis(1);
        e.observe(Duration::from_millis(1), t1, TAU);
        assert!(e.value(t1, TAU) > ms(99.0));
        // ... one a time constant later pulls it most of the way
        let t2 = t1 + TAU;
        e.observe(Duration::from_millis(1), t2, TAU);
        let v = e.value(t2, TAU);
        let expected = ms(100.0) * (-1f64).exp() + ms(1.0) * (1.0 - (-1f64).exp());
        assert!((v - expected).abs() < ms(0.5), "{v} vs {expected}");
    }

    #[test]
    fn without_samples_the_estimate_decays_towards_zero() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(30), t0);
        let later = e.value(t0 + TAU, TAU);
        assert!((later - ms(30.0) * (-1f64).exp()).abs() < 1.0);
        assert!(e.value(t0 + TAU * 20, TAU) < ms(0.001));
    }
}
