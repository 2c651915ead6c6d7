//! Endpoint picking for one upstream cluster: power of two choices over a peak-EWMA cost
//! (Finagle's and Linkerd's `cost = rtt_estimate * (pending + 1)`), endpoint weights, and
//! outlier ejection driven by consecutive 5xx responses and connect failures.
//!
//! Weights bias which two endpoints are compared (each is drawn with probability
//! proportional to its weight); the cost alone decides between them, a tie going to the first
//! drawn. So weights shape traffic among many endpoints, and barely between two. Ejected
//! endpoints are skipped while any endpoint is left (see [`OutlierConfig`] for the limits);
//! when all are ejected the balancer ignores ejection ("panic", as Envoy does).
//!
//! One writer replaces the endpoint set ([`Balancer::set_endpoints`]); any number of tasks
//! [`pick`](Balancer::pick) concurrently from an `arc-swap` snapshot. Endpoints that stay in
//! the set keep their estimate and ejection state. Randomness is passed in and time comes
//! from a [`Clock`], so tests are deterministic. It does not own connections, health checks
//! or locality.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng;
use tracing::{debug, info};

use super::clock::{Clock, SystemClock};

mod ewma;
mod outlier;
mod set;

use outlier::FailureKind;
pub use outlier::OutlierConfig;
use set::{EndpointSet, EndpointState, Entry};

/// An endpoint as the caller knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative weight; 0 counts as 1 (Envoy's minimum).
    pub weight: u32,
}

impl EndpointSpec {
    /// An endpoint with weight 1.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, weight: 1 }
    }

    /// An endpoint with the given weight.
    pub fn weighted(addr: SocketAddr, weight: u32) -> Self {
        Self { addr, weight }
    }
}

/// Balancer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalancerConfig {
    /// The RTT assumed for an endpoint never measured.
    pub default_rtt: Duration,
    /// Time constant of the EWMA and of its decay towards zero while unmeasured.
    pub decay: Duration,
    /// Outlier detection.
    pub outlier: OutlierConfig,
}

impl Default for BalancerConfig {
    /// Linkerd's 30 ms default RTT and 10 s decay; Envoy's outlier defaults.
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            outlier: OutlierConfig::default(),
        }
    }
}

/// How a picked endpoint did, for its estimate and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a 5xx (for opaque TCP: connected). Counts its latency and ends
    /// a failure streak.
    Success,
    /// A 5xx response, or a reset after connecting. Counts its latency and a failure.
    ServerError,
    /// No connection. Counts a failure (and a connect failure), no latency.
    ConnectFailure,
    /// Nothing to learn (the client went away): counts nothing.
    Cancelled,
}

/// One endpoint's state, shown by [`Balancer::endpoints`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointStatus {
    /// The address.
    pub addr: SocketAddr,
    /// The weight.
    pub weight: u32,
    /// Picks not yet dropped.
    pub pending: u32,
    /// The RTT estimate now.
    pub rtt_estimate: Duration,
    /// How much longer it stays ejected, if it is.
    pub ejected_for: Option<Duration>,
    /// Its ejection backoff multiplier (ejections not yet forgiven).
    pub ejections: u32,
}

/// Balancer-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalancerCounts {
    /// Endpoints ejected.
    pub ejections: u64,
    /// Ejections skipped because too many endpoints were ejected already.
    pub ejections_overflow: u64,
    /// Picks made while every endpoint was ejected.
    pub panic_picks: u64,
}

#[derive(Debug, Default)]
struct Counters {
    ejections: AtomicU64,
    ejections_overflow: AtomicU64,
    panic_picks: AtomicU64,
}

#[derive(Debug)]
struct Inner<C> {
    config: BalancerConfig,
    clock: C,
    /// Ejection times are nanoseconds since this instant.
    epoch: Instant,
    set: ArcSwap<EndpointSet>,
    /// Serializes ejections so the ejected share is checked and changed atomically.
    eject_lock: Mutex<()>,
    counters: Counters,
}

impl<C: Clock> Inner<C> {
    fn ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn try_eject(&self, endpoint: &EndpointState, now: Instant) {
        let _serialized = self
            .eject_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now_ns = self.ns(now);
        if endpoint.outlier.is_ejected(now_ns) {
            return;
        }
        let config = &self.config.outlier;
        let set = self.set.load();
        let ejected = set
            .entries
            .iter()
            .filter(|e| e.state.outlier.is_ejected(now_ns))
            .count();
        if ejected >= config.max_ejected(set.entries.len()) {
            endpoint.outlier.reset_counters();
            self.counters
                .ejections_overflow
                .fetch_add(1, Ordering::Relaxed);
            debug!(
                endpoint = %endpoint.addr,
                ejected,
                "outlier not ejected: too many endpoints ejected already"
            );
            return;
        }
        let last = endpoint.outlier.ejected_until();
        let healthy_for = (last != 0).then(|| Duration::from_nanos(now_ns.saturating_sub(last)));
        let multiplier = config.next_multiplier(endpoint.outlier.multiplier(), healthy_for);
        let duration = config.ejection_time(multiplier);
        let duration_ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        endpoint
            .outlier
            .eject(now_ns.saturating_add(duration_ns), multiplier);
        self.counters.ejections.fetch_add(1, Ordering::Relaxed);
        info!(
            endpoint = %endpoint.addr,
            ejection_ms = duration.as_millis() as u64,
            ejections = multiplier,
            "ejected an outlier endpoint"
        );
    }
}

/// The balancer of one cluster; clones share it.
#[derive(Debug)]
pub struct Balancer<C = SystemClock> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Balancer<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Balancer {
    /// An empty balancer on the system clock.
    pub fn new(config: BalancerConfig) -> Self {
        Self::with_clock(config, SystemClock)
    }
}

impl<C: Clock> Balancer<C> {
    /// An empty balancer reading time from `clock`.
    pub fn with_clock(config: BalancerConfig, clock: C) -> Self {
        let epoch = clock.now();
        Self {
            inner: Arc::new(Inner {
                config,
                clock,
                epoch,
                set: ArcSwap::from_pointee(EndpointSet::default()),
                eject_lock: Mutex::new(()),
                counters: Counters::default(),
            }),
        }
    }

    /// Replaces the endpoint set. Endpoints already known keep their estimate, pending count
    /// and ejection; a repeated address counts once (its first weight).
    pub fn set_endpoints(&self, endpoints: &[EndpointSpec]) {
        let old = self.inner.set.load();
        let known: HashMap<SocketAddr, &Arc<EndpointState>> = old
            .entries
            .iter()
            .map(|e| (e.state.addr, &e.state))
            .collect();
        let now = self.inner.clock.now();
        let mut seen = HashSet::with_capacity(endpoints.len());
        let entries: Vec<Entry> = endpoints
            .iter()
            .filter(|spec| seen.insert(spec.addr))
            .map(|spec| Entry {
                state: known.get(&spec.addr).map_or_else(
                    || {
                        let rtt = self.inner.config.default_rtt;
                        Arc::new(EndpointState::new(spec.addr, rtt, now))
                    },
                    |s| Arc::clone(s),
                ),
                weight: spec.weight.max(1),
            })
            .collect();
        debug!(endpoints = entries.len(), "endpoint set replaced");
        self.inner.set.store(Arc::new(EndpointSet::new(entries)));
    }

    /// Picks an endpoint, or `None` when the set is empty. The endpoint counts the pick as
    /// pending until the [`Pick`] is dropped.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<Pick<C>> {
        self.pick_avoiding(rng, &[])
    }

    /// Like [`Balancer::pick`], but endpoints in `avoid` (those a request already tried) are
    /// chosen only when no other endpoint is left: Envoy's `previous_hosts` retry predicate.
    pub fn pick_avoiding<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        avoid: &[SocketAddr],
    ) -> Option<Pick<C>> {
        let set = self.inner.set.load();
        let now = self.inner.clock.now();
        let index = match set.entries.len() {
            0 => return None,
            1 => 0,
            _ => {
                let fresh = |i: usize| !avoid.contains(&set.entries[i].state.addr);
                if avoid.is_empty() || set.draw_where(rng, fresh).is_none() {
                    self.choose(&set, rng, now, |_| true)
                } else {
                    self.choose(&set, rng, now, fresh)
                }
            }
        };
        Some(self.pick_entry(&set.entries[index], now))
    }

    /// Picks the endpoint at `addr` (chosen by the caller, for example by hashing), counting
    /// it like any pick; `None` if it is not in the set. Ejection is not checked.
    pub fn pick_addr(&self, addr: SocketAddr) -> Option<Pick<C>> {
        let set = self.inner.set.load();
        let entry = set.entries.iter().find(|e| e.state.addr == addr)?;
        Some(self.pick_entry(entry, self.inner.clock.now()))
    }

    fn pick_entry(&self, entry: &Entry, now: Instant) -> Pick<C> {
        let endpoint = Arc::clone(&entry.state);
        endpoint.pending.fetch_add(1, Ordering::Relaxed);
        Pick {
            inner: Arc::clone(&self.inner),
            endpoint,
            started: now,
            recorded: false,
        }
    }

    /// Power of two choices among the `allowed` endpoints not ejected (all allowed ones if
    /// none is left; `allowed` must hold for at least one).
    fn choose<R: Rng + ?Sized>(
        &self,
        set: &EndpointSet,
        rng: &mut R,
        now: Instant,
        allowed: impl Fn(usize) -> bool,
    ) -> usize {
        let now_ns = self.inner.ns(now);
        let up = |i: usize| allowed(i) && !set.entries[i].state.outlier.is_ejected(now_ns);
        let (a, b) = match set.draw_where(rng, up) {
            Some(a) => (a, set.draw_where(rng, |i| i != a && up(i))),
            None => {
                self.inner
                    .counters
                    .panic_picks
                    .fetch_add(1, Ordering::Relaxed);
                let a = set
                    .draw_where(rng, &allowed)
                    .unwrap_or_else(|| set.draw(rng));
                (a, set.draw_where(rng, |i| i != a && allowed(i)))
            }
        };
        let Some(b) = b else { return a };
        let decay = self.inner.config.decay;
        let (ca, cb) = (
            set.entries[a].state.cost(now, decay),
            set.entries[b].state.cost(now, decay),
        );
        if cb < ca { b } else { a }
    }

    /// Every endpoint's state, in set order (for admin pages and tests).
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        let now = self.inner.clock.now();
        let now_ns = self.inner.ns(now);
        self.inner
            .set
            .load()
            .entries
            .iter()
            .map(|e| {
                let s = &e.state;
                let until = s.outlier.ejected_until();
                EndpointStatus {
                    addr: s.addr,
                    weight: e.weight,
                    pending: s.pending.load(Ordering::Relaxed),
                    rtt_estimate: Duration::from_secs_f64(
                        s.rtt
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .value(now, self.inner.config.decay)
                            / 1e9,
                    ),
                    ejected_for: (until > now_ns).then(|| Duration::from_nanos(until - now_ns)),
                    ejections: s.outlier.multiplier(),
                }
            })
            .collect()
    }

    /// Balancer-wide counters.
    pub fn counts(&self) -> BalancerCounts {
        let c = &self.inner.counters;
        BalancerCounts {
            ejections: c.ejections.load(Ordering::Relaxed),
            ejections_overflow: c.ejections_overflow.load(Ordering::Relaxed),
            panic_picks: c.panic_picks.load(Ordering::Relaxed),
        }
    }

    /// How many endpoints the set has.
    pub fn len(&self) -> usize {
        self.inner.set.load().entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A picked endpoint: pending until dropped. For HTTP, [`record`](Pick::record) at response
/// headers and drop at the end of the response; for opaque TCP, record once connected and
/// keep it for the connection's life.
#[derive(Debug)]
#[must_use = "dropping the pick ends it at once"]
pub struct Pick<C = SystemClock> {
    inner: Arc<Inner<C>>,
    endpoint: Arc<EndpointState>,
    started: Instant,
    recorded: bool,
}

impl<C: Clock> Pick<C> {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// Reports how the endpoint did; the latency is the time since the pick. Only the first
    /// report counts.
    pub fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let now = self.inner.clock.now();
        let failure = match outcome {
            Outcome::Success => None,
            Outcome::ServerError => Some(FailureKind::ServerError),
            Outcome::ConnectFailure => Some(FailureKind::ConnectFailure),
            Outcome::Cancelled => return,
        };
        if matches!(outcome, Outcome::Success | Outcome::ServerError) {
            let rtt = now.saturating_duration_since(self.started);
            self.endpoint
                .rtt
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(rtt, now, self.inner.config.decay);
        }
        let outlier = &self.endpoint.outlier;
        match failure {
            None => outlier.success(),
            Some(kind) => {
                if outlier.failure(kind, &self.inner.config.outlier) {
                    self.inner.try_eject(&self.endpoint, now);
                }
            }
        }
    }
}

impl<C> Drop for Pick<C> {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
