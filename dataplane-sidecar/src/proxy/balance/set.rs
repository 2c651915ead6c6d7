//! The endpoint set one snapshot holds: per-endpoint state shared across snapshots, and
//! weighted random draws.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;

use super::ewma::PeakEwma;
use super::outlier::OutlierState;

/// Random draws before scanning for an endpoint that is not ejected.
const DRAWS: usize = 4;

/// One endpoint's state, kept while the endpoint stays in the set.
#[derive(Debug)]
pub(super) struct EndpointState {
    pub(super) addr: SocketAddr,
    pub(super) pending: AtomicU32,
    pub(super) rtt: Mutex<PeakEwma>,
    pub(super) outlier: OutlierState,
}

impl EndpointState {
    pub(super) fn new(addr: SocketAddr, default_rtt: Duration, now: Instant) -> Self {
        Self {
            addr,
            pending: AtomicU32::new(0),
            rtt: Mutex::new(PeakEwma::new(default_rtt, now)),
            outlier: OutlierState::default(),
        }
    }

    /// `rtt_estimate * (pending + 1)`, in nanoseconds.
    pub(super) fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let rtt = self
            .rtt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .value(now, decay);
        rtt * f64::from(self.pending.load(Ordering::Relaxed).saturating_add(1))
    }
}

/// An endpoint in one snapshot.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) state: Arc<EndpointState>,
    pub(super) weight: u32,
}

/// One snapshot of the endpoint set.
#[derive(Debug, Default)]
pub(super) struct EndpointSet {
    pub(super) entries: Vec<Entry>,
    /// Running sums of weights, when they are not all equal.
    cumulative: Option<Vec<u64>>,
}

impl EndpointSet {
    pub(super) fn new(entries: Vec<Entry>) -> Self {
        let uniform = entries.windows(2).all(|w| w[0].weight == w[1].weight);
        let cumulative = (!uniform).then(|| {
            entries
                .iter()
                .scan(0u64, |sum, e| {
                    *sum += u64::from(e.weight);
                    Some(*sum)
                })
                .collect()
        });
        Self {
            entries,
            cumulative,
        }
    }

    /// One weighted draw.
    pub(super) fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        match &self.cumulative {
            None => rng.random_range(0..self.entries.len()),
            Some(sums) => {
                let total = sums.last().copied().unwrap_or(1);
                let x = rng.random_range(0..total);
                sums.partition_point(|&s| s <= x)
            }
        }
    }

    /// A weighted draw among the endpoints `ok` accepts: a few draws, then a scan from a
    /// random start (only when most endpoints are refused).
    pub(super) fn draw_where<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if let Some(i) = (0..DRAWS).map(|_| self.draw(rng)).find(|&i| ok(i)) {
            return Some(i);
        }
        let n = self.entries.len();
        let start = rng.random_range(0..n);
        (start..n).chain(0..start).find(|&i| ok(i))
    }
}
