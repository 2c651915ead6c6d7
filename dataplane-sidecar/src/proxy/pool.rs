//! Upstream HTTP connections, pooled per endpoint address: HTTP/1.1 connections are reused
//! one request at a time (an idle list per endpoint), HTTP/2 connections are shared by all
//! concurrent requests to the endpoint (one per endpoint, replaced when it closes).
//!
//! It owns connection reuse only. Dialing (plain TCP with the proxy mark, or an HBONE
//! tunnel) is the caller's: [`Pool::send`] calls the dialer when it has no usable connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::debug;

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

/// The pool; share it as `Arc<Pool>`.
#[derive(Default)]
pub struct Pool {
    h1_idle: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("h1_idle_endpoints", &lock(&self.h1_idle).len())
            .field("h2_endpoints", &lock(&self.h2).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    /// Sends `req` to the endpoint `addr` in `proto`, on a pooled connection or a new one from
    /// `dial`. A pooled HTTP/1.1 connection that turns out closed is dropped and the request
    /// goes on a new connection (nothing was processed by the upstream then).
    pub async fn send<F, Fut>(
        self: &Arc<Self>,
        addr: SocketAddr,
        proto: Proto,
        req: Request<Body>,
        dial: F,
    ) -> Result<Response<Incoming>, SendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<UpstreamIo>>,
    {
        match proto {
            Proto::Http1 => self.send_h1(addr, req, dial).await,
            Proto::Http2 => self.send_h2(addr, req, dial).await,
        }
    }

    async fn send_h1<F, Fut>(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
        dial: F,
    ) -> Result<Response<Incoming>, SendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<UpstreamIo>>,
    {
        let mut sender = loop {
            let candidate = lock(&self.h1_idle).get_mut(&addr).and_then(Vec::pop);
            match candidate {
                Some(s) if s.is_ready() => break s,
                Some(_) => continue, // closed or busy: drop it
                None => {
                    let io = dial().await.map_err(SendError::Connect)?;
                    let (sender, conn) = http1::handshake(TokioIo::new(io))
                        .await
                        .map_err(SendError::Handshake)?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(error = %e, %addr, "upstream http/1.1 connection ended");
                        }
                    });
                    break sender;
                }
            }
        };
        let response = sender.send_request(req).await.map_err(SendError::Reset)?;
        // Back to the pool once the response body is done.
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                let mut idle = lock(&pool.h1_idle);
                let list = idle.entry(addr).or_default();
                if list.len() < MAX_IDLE_PER_ENDPOINT {
                    list.push(sender);
                }
            }
        });
        Ok(response)
    }

    async fn send_h2<F, Fut>(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
        dial: F,
    ) -> Result<Response<Incoming>, SendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<UpstreamIo>>,
    {
        let existing = {
            let mut h2 = lock(&self.h2);
            match h2.get(&addr) {
                Some(s) if !s.is_closed() => Some(s.clone()),
                Some(_) => {
                    h2.remove(&addr);
                    None
                }
                None => None,
            }
        };
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let io = dial().await.map_err(SendError::Connect)?;
                let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .map_err(SendError::Handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, %addr, "upstream http/2 connection ended");
                    }
                });
                // Two requests may have dialed at once: the first one stored wins the slot,
                // the other connection serves its request and closes when idle.
                lock(&self.h2).entry(addr).or_insert_with(|| sender.clone());
                sender
            }
        };
        sender.ready().await.map_err(SendError::Reset)?;
        sender.send_request(req).await.map_err(SendError::Reset)
    }

    /// Connections currently pooled (idle HTTP/1.1 plus shared HTTP/2).
    pub fn pooled(&self) -> usize {
        lock(&self.h1_idle).values().map(Vec::len).sum::<usize>() + lock(&self.h2).len()
    }
}
