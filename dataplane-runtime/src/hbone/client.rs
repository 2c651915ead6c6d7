//! The HBONE client: pooled mutual-TLS HTTP/2 connections carrying `CONNECT` tunnels.
//!
//! One connection per (proxy address, expected server identity, own certificate serial) is
//! shared by every concurrent tunnel to that key (HTTP/2 multiplexing). Concurrent callers
//! that find no connection wait for one shared dial instead of each dialling. A connection
//! leaves the pool when it ends (peer closed, keepalive timeout, `GOAWAY` then drained), when it
//! has carried no tunnel for the idle timeout, when a request on it fails (the request is retried once on a fresh connection if the failed one
//! was reused from the pool), and when the client's own certificate changes: new tunnels then
//! dial new connections presenting the new certificate, while tunnels already open keep their
//! old connection until they end.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use hyper::{Method, Request, Uri};
use tracing::{Instrument, debug, debug_span, info};

use super::REASON_HEADER;
use super::dial::{ActiveStream, Conn, Dial, PoolKey};
use super::error::{DialError, HboneError};
use super::stats::HboneStats;
use super::stream::HboneStream;
use super::wire::TunnelIo;
use crate::tls::{Expected, IdentityStore};

/// Settings of an [`HboneClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HboneClientConfig {
    /// Limit for setting up a connection: TCP connect, TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
    /// Limit for the server's answer to one `CONNECT` (the server dials the target meanwhile).
    pub response_timeout: Duration,
    /// HTTP/2 `PING` interval on pooled connections, idle or not, so that a peer that vanished
    /// is noticed before a tunnel needs the connection; `None` disables keepalive.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive `PING` may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// A pooled connection that has carried no tunnel for this long is closed (a node proxy
    /// talks to many peers); `None` keeps idle connections until the peer closes them.
    pub idle_timeout: Option<Duration>,
    /// `SO_MARK` for the client's TCP connections (a sidecar's capture rules let marked
    /// sockets through); `None` leaves them unmarked.
    pub mark: Option<u32>,
}

impl Default for HboneClientConfig {
    fn default() -> Self {
        HboneClientConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            mark: None,
        }
    }
}

/// Opens HBONE tunnels on behalf of one workload identity (the certificate in its
/// [`IdentityStore`]). A dataplane acting for several workloads (a node proxy) keeps one
/// client per workload identity.
///
/// Cloning is cheap and shares the pool and the counters.
#[derive(Clone)]
pub struct HboneClient {
    inner: Arc<ClientInner>,
}

pub(super) struct ClientInner {
    store: IdentityStore,
    config: HboneClientConfig,
    stats: Arc<HboneStats>,
    pool: Mutex<Pool>,
    next_id: AtomicU64,
}

type Dialing = Shared<BoxFuture<'static, Result<Conn, DialError>>>;

#[derive(Default)]
struct Pool {
    /// The own certificate serial the pooled connections present.
    serial: Option<String>,
    slots: HashMap<PoolKey, Dialing>,
}

/// Why opening a stream on a connection failed.
enum OpenError {
    /// The connection is broken: evict it (and maybe retry elsewhere).
    Broken(h2::Error),
    /// The server answered, or the stream failed in a way that says nothing about the
    /// connection.
    Answer(HboneError),
}

impl HboneClient {
    /// A client presenting the certificate in `store`, with default settings.
    pub fn new(store: &IdentityStore) -> Self {
        Self::with_config(store, HboneClientConfig::default())
    }

    /// A client presenting the certificate in `store`.
    pub fn with_config(store: &IdentityStore, config: HboneClientConfig) -> Self {
        HboneClient {
            inner: Arc::new(ClientInner {
                store: store.clone(),
                config,
                stats: Arc::default(),
                pool: Mutex::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// A client with this one's identity, settings and counters but a pool of its own. A
    /// pooled connection is driven by a task on the runtime that dialed it, so a dataplane
    /// running one runtime per worker thread gives each worker its own fork: a tunnel then
    /// never waits on another thread.
    pub fn fork(&self) -> Self {
        HboneClient {
            inner: Arc::new(ClientInner {
                store: self.inner.store.clone(),
                config: self.inner.config.clone(),
                stats: self.inner.stats.clone(),
                pool: Mutex::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The client's counters (shared with every clone).
    pub fn stats(&self) -> Arc<HboneStats> {
        self.inner.stats.clone()
    }

    /// Pooled connections that are set up and usable.
    pub fn pooled_connections(&self) -> usize {
        self.inner
            .lock_pool()
            .slots
            .values()
            .filter(|slot| matches!(slot.peek(), Some(Ok(conn)) if conn.usable()))
            .count()
    }

    /// Opens a tunnel to `target` (the destination pod's IP and port) through the HBONE
    /// server at `via` (usually the destination pod's IP and port 15008, or a node proxy),
    /// which must present an `expected` identity.
    ///
    /// Reuses a pooled connection to (`via`, `expected`) made with the current certificate,
    /// or dials one. A pooled connection found broken is replaced and the `CONNECT` retried
    /// once. Errors: [`HboneError::Dial`] when no connection could be set up (nothing reached
    /// the target), otherwise the server's typed answer.
    pub async fn connect(
        &self,
        target: SocketAddr,
        via: SocketAddr,
        expected: Expected,
    ) -> Result<HboneStream, HboneError> {
        let span = debug_span!("hbone_connect", %target, %via, %expected);
        self.inner
            .connect(target, via, expected)
            .instrument(span)
            .await
    }
}

impl fmt::Debug for HboneClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneClient")
            .field("config", &self.inner.config)
            .field("pool_slots", &self.inner.lock_pool().slots.len())
            .finish_non_exhaustive()
    }
}

impl ClientInner {
    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // The pool is consistent after every statement, so a panic elsewhere cannot leave it
        // half-updated.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn connect(
        self: &Arc<Self>,
        target: SocketAddr,
        via: SocketAddr,
        expected: Expected,
    ) -> Result<HboneStream, HboneError> {
        let mut retried = false;
        loop {
            let (key, dialing, reused) = match self.checkout(via, &expected) {
                Ok(found) => found,
                Err(e) => {
                    self.stats.stream_failed();
                    return Err(e.into());
                }
            };
            let conn = match dialing.await {
                Ok(conn) => conn,
                Err(e) => {
                    self.stats.stream_failed();
                    return Err(e.into());
                }
            };
            match self.open(&conn, target, via).await {
                Ok(stream) => return Ok(stream),
                Err(OpenError::Answer(e)) => return Err(e),
                Err(OpenError::Broken(source)) => {
                    self.evict(&key, conn.id);
                    if reused && !retried {
                        debug!(conn = conn.id, error = %source, "pooled hbone connection broken, dialling a new one");
                        retried = true;
                        continue;
                    }
                    self.stats.stream_failed();
                    return Err(broken(&conn, target, via, source));
                }
            }
        }
    }

    /// The pooled (or pending) connection for (`via`, `expected`, current certificate);
    /// starts a dial when there is none. Returns whether the connection was already set up.
    fn checkout(
        self: &Arc<Self>,
        via: SocketAddr,
        expected: &Expected,
    ) -> Result<(PoolKey, Dialing, bool), DialError> {
        let serial = self.store.info().ok_or(DialError::NoCertificate)?.serial;
        let key = PoolKey {
            via,
            expected: expected.clone(),
            serial,
        };
        // Entries taken out of the pool are dropped after the lock is released: dropping an
        // abandoned dial can close its TLS stream, whose guard locks the pool.
        let mut removed = Vec::new();
        let (dialing, reused) = {
            let mut pool = self.lock_pool();
            if pool.serial.as_ref() != Some(&key.serial) {
                removed.extend(
                    pool.slots
                        .extract_if(|k, _| k.serial != key.serial)
                        .map(|(_, slot)| slot),
                );
                if pool.serial.is_some() {
                    info!(
                        serial = %key.serial,
                        replaced = removed.len(),
                        "workload certificate changed: new hbone connections present it, open tunnels keep their connection"
                    );
                }
                pool.serial = Some(key.serial.clone());
            }
            let reusable = pool.slots.get(&key).and_then(|slot| match slot.peek() {
                // A dial in progress: wait for it with the others.
                None => Some((slot.clone(), false)),
                Some(Ok(conn)) if conn.usable() => Some((slot.clone(), true)),
                // A failed dial or a dead connection.
                Some(_) => None,
            });
            match reusable {
                Some(found) => found,
                None => {
                    removed.extend(pool.slots.remove(&key));
                    let dialing = self.dial(&key);
                    pool.slots.insert(key.clone(), dialing.clone());
                    (dialing, false)
                }
            }
        };
        drop(removed);
        Ok((key, dialing, reused))
    }

    fn dial(self: &Arc<Self>, key: &PoolKey) -> Dialing {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span = debug_span!("hbone_client_conn", conn = id, via = %key.via);
        Dial {
            store: self.store.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
            pool: Arc::downgrade(self),
            key: key.clone(),
            id,
        }
        .run()
        .instrument(span)
        .boxed()
        .shared()
    }

    /// Drops connection `id` from the pool, if it is still the one pooled under `key`.
    pub(super) fn evict(&self, key: &PoolKey, id: u64) {
        let removed = {
            let mut pool = self.lock_pool();
            match pool.slots.get(key) {
                Some(slot) if matches!(slot.peek(), Some(Ok(conn)) if conn.id == id) => {
                    pool.slots.remove(key)
                }
                _ => None,
            }
        };
        if removed.is_some() {
            debug!(conn = id, via = %key.via, "hbone connection left the pool");
        }
    }

    async fn open(
        &self,
        conn: &Conn,
        target: SocketAddr,
        via: SocketAddr,
    ) -> Result<HboneStream, OpenError> {
        let uri = Uri::builder()
            .authority(target.to_string())
            .build()
            .expect("a socket address is a valid authority");
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .body(())
            .expect("a CONNECT request with an authority is valid");
        // Counts from here, so that a connection opening a stream is not closed as idle.
        let active = ActiveStream::new(&conn.state);
        let after = self.config.response_timeout;
        let sender = conn.sender.clone();
        let exchange = async move {
            // Waits while the server's concurrent stream limit is reached.
            let mut sender = sender.ready().await?;
            let (response, send) = sender.send_request(request, false)?;
            Ok::<_, h2::Error>((response.await?, send))
        };
        let (response, send) = match tokio::time::timeout(after, exchange).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => {
                conn.state.fail(&self.stats);
                return Err(OpenError::Broken(e));
            }
            Err(_) => {
                self.stats.stream_failed();
                return Err(OpenError::Answer(HboneError::Timeout {
                    target,
                    via,
                    after,
                }));
            }
        };
        conn.state.confirm(&self.stats);
        let status = response.status();
        if status.is_success() {
            self.stats.stream_opened();
            debug!(conn = conn.id, server = %conn.server, "hbone tunnel open");
            return Ok(HboneStream::new(
                TunnelIo::new(send, response.into_body()),
                self.stats.clone(),
                active,
                target,
                via,
                conn.server.clone(),
            ));
        }
        let reason = response
            .headers()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = status.as_u16();
        debug!(status, reason, "hbone CONNECT refused");
        let error = match status {
            403 => {
                self.stats.stream_refused();
                return Err(OpenError::Answer(HboneError::Denied {
                    target,
                    via,
                    reason,
                }));
            }
            502..=504 => HboneError::Unreachable {
                target,
                via,
                status,
                reason,
            },
            _ => HboneError::Rejected {
                target,
                via,
                status,
                reason,
            },
        };
        self.stats.stream_failed();
        Err(OpenError::Answer(error))
    }
}

/// The error for a request that failed on a broken connection: a refused client certificate
/// when the server sent a TLS alert, a stream error otherwise.
fn broken(conn: &Conn, target: SocketAddr, via: SocketAddr, source: h2::Error) -> HboneError {
    match conn.state.tls_error() {
        Some(rustls::Error::AlertReceived(alert)) => DialError::CertificateRefused {
            via,
            alert: format!("{alert:?}"),
        }
        .into(),
        _ => HboneError::Stream {
            target,
            via,
            source,
        },
    }
}
