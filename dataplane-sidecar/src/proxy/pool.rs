//! Upstream HTTP connections, pooled per cluster and endpoint address (as Envoy keeps one
//! pool per cluster and host): HTTP/1.1 connections are reused one request at a time (an
//! idle list per endpoint), HTTP/2 connections are shared by all concurrent requests to the
//! endpoint (one per endpoint, replaced when it closes).
//!
//! It owns connection reuse and the cluster's connection and pending-request limits: a
//! request that needs a new connection holds a pending-request slot until that connection is
//! ready (none free: `503`, [`SendError::Overloaded`]); at the connection limit it waits for a
//! pooled connection to turn idle or a connection to close, and closes one idle connection of
//! the cluster to another endpoint to make room. An endpoint with no connection at all gets
//! one even at the limit (counted as an overflow), as in Envoy, so no endpoint starves behind
//! busy or HTTP/2 connections to others. With several worker threads each has its own pool
//! (a connection is driven by a task of the runtime that dialed it) while the limits are
//! shared: the pools of one [`PoolGroup`] close each other's idle connections to make room.
//! Dialing (plain TCP with the proxy mark, or an
//! HBONE tunnel) is the caller's: [`Pool::send`] calls the dialer when it may open a
//! connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::circuit::{CircuitBreaker, CircuitGuard, Overloaded};
use switchyard_dataplane_runtime::coalesce::{Coalesce, TurnExecutor, Turns};
use switchyard_dataplane_runtime::hbone::TargetStream;

/// Boxed error of a proxied body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the proxy sends and answers with.
pub type Body = BoxBody<Bytes, BoxError>;

/// An upstream byte stream: plain TCP or an HBONE tunnel.
pub type UpstreamIo = Box<dyn TargetStream>;

/// HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c; inside HBONE, the tunnel is the TLS).
    Http2,
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A circuit breaker refused the request (nothing was sent).
    #[error(transparent)]
    Overloaded(Overloaded),
    /// No connection could be made (nothing was sent).
    #[error("upstream connect error: {0}")]
    Connect(#[source] io::Error),
    /// The HTTP handshake on a new connection failed.
    #[error("upstream handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The connection or stream failed before response headers.
    #[error("upstream reset before response headers: {0}")]
    Reset(#[source] hyper::Error),
}

/// Most idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

/// Where a request goes: the cluster (whose limits apply) and the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The cluster's name.
    pub cluster: &'a str,
    /// The endpoint.
    pub addr: SocketAddr,
    /// The cluster's circuit breaker.
    pub breaker: &'a CircuitBreaker,
}

type PerCluster<T> = HashMap<String, HashMap<SocketAddr, T>>;

/// The pool; share it as `Arc<Pool>`.
#[derive(Default)]
pub struct Pool {
    h1_idle: Mutex<PerCluster<Vec<http1::SendRequest<Body>>>>,
    h2: Mutex<PerCluster<http2::SendRequest<Body>>>,
    /// Connections being dialed or open, per endpoint.
    open: Mutex<PerCluster<usize>>,
    /// The pools of the other worker threads, under the same limits.
    group: Weak<PoolGroup>,
}

/// The pools of every worker thread of one side (outbound or inbound), whose connections
/// count against the same circuit breakers: a request waiting for a connection slot closes
/// an idle HTTP/1.1 connection of the cluster in any of them.
#[derive(Debug, Default)]
pub struct PoolGroup {
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl PoolGroup {
    /// A new pool of the group, for one worker thread.
    pub fn join(self: &Arc<Self>) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            group: Arc::downgrade(self),
            ..Pool::default()
        });
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        pool
    }
}

/// One connection counted in [`Pool::open`] until dropped.
struct OpenConnection {
    pool: std::sync::Weak<Pool>,
    cluster: String,
    addr: SocketAddr,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut open = lock(&pool.open);
            if let Some(endpoints) = open.get_mut(&self.cluster) {
                if let Some(n) = endpoints.get_mut(&self.addr) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        endpoints.remove(&self.addr);
                    }
                }
                if endpoints.is_empty() {
                    open.remove(&self.cluster);
                }
            }
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("pooled", &self.pooled())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What waiting for a connection ended with.
enum Acquired<S> {
    /// A pooled connection.
    Pooled(S),
    /// Dial a new connection: its connection slot and count, and the pending-request slot
    /// held until it is ready.
    Dial {
        slot: CircuitGuard,
        open: OpenConnection,
        pending: CircuitGuard,
    },
}

/// Runs an upstream connection's task; its connection slot and count (`held`) go when it
/// ends.
fn drive<C>(conn: C, addr: SocketAddr, proto: &'static str, held: (CircuitGuard, OpenConnection))
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, %addr, proto, "upstream connection ended");
        }
        drop(held);
    });
}

impl Pool {
    /// Sends `req` to `target` in `proto`, on a pooled connection or a new one from `dial`.
    /// A pooled HTTP/1.1 connection that turns out closed is dropped and the request goes on
    /// another connection (nothing was processed by the upstream then).
    pub async fn send<F, Fut>(
        self: &Arc<Self>,
        target: Target<'_>,
        proto: Proto,
        req: Request<Body>,
        dial: F,
    ) -> Result<Response<Incoming>, SendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<UpstreamIo>>,
    {
        match proto {
            Proto::Http1 => self.send_h1(target, req, dial).await,
            Proto::Http2 => self.send_h2(target, req, dial).await,
        }
    }

    fn idle_h1(&self, target: &Target<'_>) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.h1_idle);
        let list = idle.get_mut(target.cluster)?.get_mut(&target.addr)?;
        // Closed or busy senders are dropped on the way.
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Closes one idle HTTP/1.1 connection of the cluster, so that its connection slot
    /// frees (when its task ends): one to another endpoint in this pool, else one to any
    /// endpoint in another worker's pool of the group (this pool's idle connections to
    /// `target` itself would have been reused). Returns whether one was closed.
    fn close_idle_elsewhere(&self, target: &Target<'_>) -> bool {
        if self.close_idle(target.cluster, Some(target.addr)) {
            return true;
        }
        let Some(group) = self.group.upgrade() else {
            return false;
        };
        let others: Vec<Arc<Pool>> = lock(&group.pools)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| !std::ptr::eq(Arc::as_ptr(p), self))
            .collect();
        others.iter().any(|p| p.close_idle(target.cluster, None))
    }

    /// Drops one idle HTTP/1.1 sender of `cluster` (not to `except`): its connection's task
    /// then ends, on whichever runtime drives it.
    fn close_idle(&self, cluster: &str, except: Option<SocketAddr>) -> bool {
        let closed = {
            let mut idle = lock(&self.h1_idle);
            let Some(endpoints) = idle.get_mut(cluster) else {
                return false;
            };
            endpoints
                .iter_mut()
                .filter(|(addr, _)| Some(**addr) != except)
                .find_map(|(_, list)| list.pop())
        };
        closed.is_some()
    }

    /// Counts a connection to `target` being dialed.
    fn count_open(self: &Arc<Self>, target: &Target<'_>) -> OpenConnection {
        *lock(&self.open)
            .entry(target.cluster.to_string())
            .or_default()
            .entry(target.addr)
            .or_default() += 1;
        OpenConnection {
            pool: Arc::downgrade(self),
            cluster: target.cluster.to_string(),
            addr: target.addr,
        }
    }

    fn has_connection(&self, target: &Target<'_>) -> bool {
        lock(&self.open)
            .get(target.cluster)
            .and_then(|m| m.get(&target.addr))
            .is_some_and(|n| *n > 0)
    }

    /// Waits until a pooled connection (from `pooled`) or a connection slot is available,
    /// holding a pending-request slot meanwhile. Refuses when no pending slot is free.
    async fn acquire<S>(
        self: &Arc<Self>,
        target: &Target<'_>,
        mut pooled: impl FnMut() -> Option<S>,
    ) -> Result<Acquired<S>, SendError> {
        if let Some(s) = pooled() {
            return Ok(Acquired::Pooled(s));
        }
        let pending = target
            .breaker
            .try_pending_request()
            .map_err(SendError::Overloaded)?;
        let mut closed_one = false;
        loop {
            let freed = target.breaker.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(s) = pooled() {
                return Ok(Acquired::Pooled(s));
            }
            let slot = match target.breaker.try_connection() {
                Ok(slot) => Some(slot),
                // No connection to this endpoint at all: open one anyway.
                Err(_) if !self.has_connection(target) => {
                    Some(target.breaker.force(super::circuit::Resource::Connections))
                }
                Err(full) => {
                    // One idle connection elsewhere per waiting request, not one per wake-up.
                    if !closed_one {
                        closed_one = self.close_idle_elsewhere(target);
                    }
                    debug!(cluster = target.cluster, endpoint = %target.addr, limit = full.limit, "waiting for a connection");
                    None
                }
            };
            if let Some(slot) = slot {
                return Ok(Acquired::Dial {
                    slot,
                    open: self.count_open(target),
                    pending,
                });
            }
            freed.await;
        }
    }

    async fn send_h1<F, Fut>(
        self: &Arc<Self>,
        target: Target<'_>,
        req: Request<Body>,
        dial: F,
    ) -> Result<Response<Incoming>, SendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<UpstreamIo>>,
    {
        let addr = target.addr;
        let mut sender = match self.acquire(&target, || self.idle_h1(&target)).await? {
            Acquired::Pooled(s) => s,
            Acquired::Dial {
                slot,
                open,
                pending,
            } => {
                let io = dial().await.map_err(SendError::Connect)?;
                let (sender, conn) = http1::handshake(TokioIo::new(io))
                    .await
                    .map_err(SendError::Handshake)?;
                drop(pending);
                drive(conn, addr, "http/1.1", (slot, open));
                sender
            }
        };
        let response = sender.send_request(req).await.map_err(SendError::Reset)?;
        // Back to the pool once the response body is done.
        let pool = Arc::downgrade(self);
        let cluster = target.cluster.to_string();
        let breaker = target.breaker.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                {
                    let mut idle = lock(&pool.h1_idle);
                    let list = idle.entry(cluster).or_default().entry(addr).or_default();
                    if list.len() < MAX_IDLE_PER_ENDPOINT {
                        list.push(sender);
                    }
                }
                breaker.notify_freed();
            }
        });
        Ok(response)
    }

    fn shared_h2(&self, target: &Target<'_>) -> Option<http2::SendRequest<Body>> {
        let mut h2 = lock(&self.h2);
        let endpoints = h2.get_mut(target.cluster)?;
        match endpoints.get(&target.addr) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                endpoints.remove(&target.addr);
                None
            }
            None => None,
        }
    }

    async fn send_h2<F, Fut>(
        self: &Arc<Self>,
        target: Target<'_>,
        req: Request<Body>,
        dial: F,
    ) -> Result<Response<Incoming>, SendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<UpstreamIo>>,
    {
        let addr = target.addr;
        let mut sender = match self.acquire(&target, || self.shared_h2(&target)).await? {
            Acquired::Pooled(s) => s,
            Acquired::Dial {
                slot,
                open,
                pending,
            } => {
                let io = dial().await.map_err(SendError::Connect)?;
                // Many streams on one connection: fewer, larger writes (`Coalesce`), to a
                // socket or into an HBONE tunnel (one DATA frame of the tunnel per turn, not
                // one per frame). hyper drives the connection in a task of its own, which
                // counts the turns.
                let turns = Turns::new();
                let io = Coalesce::new(io, &turns);
                let (sender, conn) = http2::handshake(TurnExecutor(turns), TokioIo::new(io))
                    .await
                    .map_err(SendError::Handshake)?;
                drop(pending);
                drive(conn, addr, "http/2", (slot, open));
                // Two requests may have dialed at once: the first one stored wins the slot,
                // the other connection serves its request and closes when idle.
                lock(&self.h2)
                    .entry(target.cluster.to_string())
                    .or_default()
                    .entry(addr)
                    .or_insert_with(|| sender.clone());
                target.breaker.notify_freed();
                sender
            }
        };
        sender.ready().await.map_err(SendError::Reset)?;
        sender.send_request(req).await.map_err(SendError::Reset)
    }

    /// Connections currently pooled (idle HTTP/1.1 plus shared HTTP/2).
    pub fn pooled(&self) -> usize {
        let h1: usize = lock(&self.h1_idle)
            .values()
            .flat_map(HashMap::values)
            .map(Vec::len)
            .sum();
        let h2: usize = lock(&self.h2).values().map(HashMap::len).sum();
        h1 + h2
    }
}

#[cfg(test)]
mod tests;
