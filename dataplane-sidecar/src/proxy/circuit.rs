//! Circuit-breaker counters for one upstream cluster, like Envoy's per-priority thresholds:
//! open connections, requests waiting for a connection, active requests and active retries.
//!
//! It owns the counting: each `try_*` takes a slot or refuses with [`Overloaded`], and the
//! returned [`CircuitGuard`] gives the slot back when dropped. The caller turns a refusal into
//! a `503` with the [`OVERLOADED_HEADER`] set to [`Overloaded::reason`] (for a retry, it just
//! does not retry). Limits can change while guards are out: a lower limit refuses new slots
//! until enough guards are dropped.
//!
//! With a retry budget (Envoy's `retry_budget` threshold) the retry limit is not fixed: it is
//! `budget_percent` of the requests in flight and pending, and never below
//! `min_retry_concurrency`; `max_retries` is then ignored, as in Envoy.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tracing::debug;

/// Response header naming the exhausted resource on a `503` the proxy made itself (Envoy's
/// `x-envoy-overloaded`).
pub const OVERLOADED_HEADER: &str = "switchyard-overloaded";

/// A counted resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Open connections to the cluster's endpoints.
    Connections,
    /// Requests waiting for a connection (pool queue).
    PendingRequests,
    /// Requests in flight.
    Requests,
    /// Retries in flight.
    Retries,
}

impl Resource {
    /// The [`OVERLOADED_HEADER`] value and log field for this resource.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Connections => "max-connections",
            Resource::PendingRequests => "max-pending-requests",
            Resource::Requests => "max-requests",
            Resource::Retries => "max-retries",
        }
    }

    const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::PendingRequests,
        Resource::Requests,
        Resource::Retries,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits of one cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitLimits {
    /// Most open connections.
    pub max_connections: u32,
    /// Most requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Most requests in flight.
    pub max_requests: u32,
    /// Most retries in flight (without a retry budget).
    pub max_retries: u32,
    /// Retries in flight as a share of the requests in flight and pending; replaces
    /// `max_retries` when set.
    pub retry_budget: Option<RetryBudgetLimit>,
}

/// Envoy's retry budget: retries in flight may be `budget_percent` of the requests in flight
/// and pending, and at least `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetLimit {
    /// Percent of the requests in flight and pending.
    pub budget_percent: f64,
    /// Retries always allowed.
    pub min_retry_concurrency: u32,
}

impl RetryBudgetLimit {
    /// The retry limit with `in_flight` requests active or pending.
    pub fn limit(&self, in_flight: u32) -> u32 {
        let share = (self.budget_percent / 100.0 * f64::from(in_flight)).floor();
        // `as` saturates: a huge or NaN share gives u32::MAX or 0.
        (share as u32).max(self.min_retry_concurrency)
    }
}

impl Default for CircuitLimits {
    /// The cluster defaults ([`CircuitBreakers`](crate::config::cluster::CircuitBreakers)):
    /// Envoy's 1024 connections, pending and active requests; retries bounded by the retry
    /// budget only.
    fn default() -> Self {
        Self::from(&crate::config::cluster::CircuitBreakers::default())
    }
}

impl From<&crate::config::cluster::CircuitBreakers> for CircuitLimits {
    fn from(c: &crate::config::cluster::CircuitBreakers) -> Self {
        CircuitLimits {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_retries: c.max_retries,
            retry_budget: c.retry_budget.as_ref().map(|b| RetryBudgetLimit {
                budget_percent: b.budget_percent,
                min_retry_concurrency: b.min_retry_concurrency,
            }),
        }
    }
}

impl CircuitLimits {
    fn get(&self, resource: Resource) -> u32 {
        match resource {
            Resource::Connections => self.max_connections,
            Resource::PendingRequests => self.max_pending_requests,
            Resource::Requests => self.max_requests,
            Resource::Retries => self.max_retries,
        }
    }
}

/// A refused slot: the caller answers `503` with [`OVERLOADED_HEADER`]: [`Overloaded::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream overloaded: {resource} reached its limit of {limit}")]
pub struct Overloaded {
    /// The exhausted resource.
    pub resource: Resource,
    /// Its limit when the slot was refused.
    pub limit: u32,
}

impl Overloaded {
    /// The HTTP status the caller answers with.
    pub const STATUS: u16 = 503;

    /// The [`OVERLOADED_HEADER`] value.
    pub fn reason(&self) -> &'static str {
        self.resource.as_str()
    }
}

#[derive(Debug, Default)]
struct Counter {
    limit: AtomicU32,
    active: AtomicU32,
    refused: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    counters: [Counter; 4],
    /// The retry budget, when set (`max_retries` is then ignored).
    retry_budget: std::sync::Mutex<Option<RetryBudgetLimit>>,
    /// Woken when a connection slot is given back or a pooled connection turns idle: what
    /// a request waiting for a connection waits for.
    freed: Notify,
}

/// The counters of one cluster; clones share them.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

/// One resource's state in a [`CircuitSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceCounts {
    /// The limit.
    pub limit: u32,
    /// Slots in use.
    pub active: u32,
    /// Slots refused so far (Envoy's `upstream_*_overflow`).
    pub refused: u64,
}

/// The breaker's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CircuitSnapshot {
    /// Connections.
    pub connections: ResourceCounts,
    /// Pending requests.
    pub pending_requests: ResourceCounts,
    /// Requests.
    pub requests: ResourceCounts,
    /// Retries.
    pub retries: ResourceCounts,
}

impl CircuitSnapshot {
    /// Each resource with its counts.
    pub fn each(&self) -> [(Resource, ResourceCounts); 4] {
        [
            (Resource::Connections, self.connections),
            (Resource::PendingRequests, self.pending_requests),
            (Resource::Requests, self.requests),
            (Resource::Retries, self.retries),
        ]
    }
}

impl CircuitBreaker {
    /// A breaker with these limits and nothing in use.
    pub fn new(limits: CircuitLimits) -> Self {
        let breaker = Self {
            inner: Arc::new(Inner {
                counters: Default::default(),
                retry_budget: std::sync::Mutex::new(None),
                freed: Notify::new(),
            }),
        };
        breaker.set_limits(limits);
        breaker
    }

    /// Changes the limits; slots in use stay until their guards drop.
    pub fn set_limits(&self, limits: CircuitLimits) {
        for resource in Resource::ALL {
            self.counter(resource)
                .limit
                .store(limits.get(resource), Ordering::Relaxed);
        }
        *self
            .inner
            .retry_budget
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = limits.retry_budget;
    }

    /// Takes a connection slot.
    pub fn try_connection(&self) -> Result<CircuitGuard, Overloaded> {
        self.try_acquire(Resource::Connections)
    }

    /// Takes a pending-request slot (hold it while the request waits for a connection).
    pub fn try_pending_request(&self) -> Result<CircuitGuard, Overloaded> {
        self.try_acquire(Resource::PendingRequests)
    }

    /// Takes a request slot.
    pub fn try_request(&self) -> Result<CircuitGuard, Overloaded> {
        self.try_acquire(Resource::Requests)
    }

    /// Takes a retry slot (hold it for the retried attempt), within the retry budget if the
    /// cluster has one, else within `max_retries`.
    pub fn try_retry(&self) -> Result<CircuitGuard, Overloaded> {
        self.try_acquire(Resource::Retries)
    }

    /// The limit of `resource` now: for retries under a budget, it follows the requests in
    /// flight and pending.
    fn limit(&self, resource: Resource) -> u32 {
        let budget = match resource {
            Resource::Retries => *self
                .inner
                .retry_budget
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            _ => None,
        };
        match budget {
            Some(budget) => {
                let active = |r: Resource| self.counter(r).active.load(Ordering::Relaxed);
                budget.limit(
                    active(Resource::Requests).saturating_add(active(Resource::PendingRequests)),
                )
            }
            None => self.counter(resource).limit.load(Ordering::Relaxed),
        }
    }

    /// Takes a slot of `resource` even over its limit, after a refused `try_*` (which counted
    /// the overflow): Envoy lets a host with no connection open one at the limit, so it
    /// cannot starve.
    pub fn force(&self, resource: Resource) -> CircuitGuard {
        self.counter(resource).active.fetch_add(1, Ordering::AcqRel);
        CircuitGuard {
            inner: Arc::clone(&self.inner),
            resource,
        }
    }

    /// Takes a slot of `resource`, or refuses when all are in use.
    pub fn try_acquire(&self, resource: Resource) -> Result<CircuitGuard, Overloaded> {
        self.try_acquire_within(resource, self.limit(resource))
    }

    fn try_acquire_within(
        &self,
        resource: Resource,
        limit: u32,
    ) -> Result<CircuitGuard, Overloaded> {
        let counter = self.counter(resource);
        let taken = counter
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |active| {
                (active < limit).then_some(active + 1)
            });
        match taken {
            Ok(_) => Ok(CircuitGuard {
                inner: Arc::clone(&self.inner),
                resource,
            }),
            Err(active) => {
                counter.refused.fetch_add(1, Ordering::Relaxed);
                debug!(
                    resource = resource.as_str(),
                    limit, active, "circuit breaker refused a slot"
                );
                Err(Overloaded { resource, limit })
            }
        }
    }

    /// Resolves at the next [`CircuitBreaker::notify_freed`] or dropped connection slot.
    /// Create it (and `enable` it) before checking, so a wake-up between the check and the
    /// wait is not lost.
    pub fn freed(&self) -> Notified<'_> {
        self.inner.freed.notified()
    }

    /// Wakes the requests waiting for a connection (a pooled connection turned idle).
    pub fn notify_freed(&self) {
        self.inner.freed.notify_waiters();
    }

    /// The counters now.
    pub fn snapshot(&self) -> CircuitSnapshot {
        let counts = |resource| {
            let c = self.counter(resource);
            ResourceCounts {
                limit: self.limit(resource),
                active: c.active.load(Ordering::Relaxed),
                refused: c.refused.load(Ordering::Relaxed),
            }
        };
        CircuitSnapshot {
            connections: counts(Resource::Connections),
            pending_requests: counts(Resource::PendingRequests),
            requests: counts(Resource::Requests),
            retries: counts(Resource::Retries),
        }
    }

    fn counter(&self, resource: Resource) -> &Counter {
        &self.inner.counters[resource.index()]
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(CircuitLimits::default())
    }
}

/// A slot of one resource, given back on drop.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the guard is dropped"]
pub struct CircuitGuard {
    inner: Arc<Inner>,
    resource: Resource,
}

impl CircuitGuard {
    /// The resource this guard holds a slot of.
    pub fn resource(&self) -> Resource {
        self.resource
    }
}

impl Drop for CircuitGuard {
    fn drop(&mut self) {
        self.inner.counters[self.resource.index()]
            .active
            .fetch_sub(1, Ordering::AcqRel);
        if self.resource == Resource::Connections {
            self.inner.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests;
