//! Setting up one pooled client connection (TCP, TLS, HTTP/2) and watching it until it ends:
//! what the I/O learned about it, how many tunnels use it, when it went idle.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rustls::CertificateError;
use rustls::pki_types::ServerName;
use switchyard_model::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{Instrument, debug, warn};

use super::ALPN_H2;
use super::client::{ClientInner, HboneClientConfig};
use super::error::DialError;
use super::stats::HboneStats;
use super::wire::{self, KeepaliveExpired};
use crate::coalesce::{Coalesce, Turns};
use crate::tls::{Expected, IdentityStore, TlsError, client_config, peer_identity};

/// What a pooled connection is shared by: server address, expected server identity and the
/// serial of the client certificate it presents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    pub(super) via: SocketAddr,
    pub(super) expected: Expected,
    pub(super) serial: String,
}

/// A pooled connection, as handed to the tunnels that use it.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) sender: h2::client::SendRequest<Bytes>,
    /// The identity the server presented.
    pub(super) server: SpiffeId,
    pub(super) state: Arc<ConnState>,
}

impl Conn {
    /// Whether new streams may be opened on it.
    pub(super) fn usable(&self) -> bool {
        !self.state.closed.load(Ordering::Acquire)
    }
}

const PENDING: u8 = 0;
const OPENED: u8 = 1;
const FAILED: u8 = 2;

/// What is known about a connection, shared by its I/O, its driver task and its tunnels.
#[derive(Debug)]
pub(super) struct ConnState {
    /// Set when the TLS stream is dropped: the connection is gone.
    closed: AtomicBool,
    /// [`PENDING`] until the server answers a first request ([`OPENED`], counted as an opened
    /// connection) or the connection breaks before that ([`FAILED`]): in TLS 1.3 a server
    /// refusing the client certificate says so only after the client's handshake.
    outcome: AtomicU8,
    /// The first TLS error a read returned (a server refusing our certificate sends an alert).
    tls_error: OnceLock<rustls::Error>,
    /// Streams opening or open.
    active: AtomicUsize,
    /// When `active` last changed, in milliseconds since `born`.
    changed_ms: AtomicU64,
    born: Instant,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            closed: AtomicBool::new(false),
            outcome: AtomicU8::new(PENDING),
            tls_error: OnceLock::new(),
            active: AtomicUsize::new(0),
            changed_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// The server answered a request: the connection is counted as opened (once).
    pub(super) fn confirm(&self, stats: &HboneStats) {
        if self
            .outcome
            .compare_exchange(PENDING, OPENED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            stats.connection_opened();
        }
    }

    /// The connection broke; counted as failed if no answer ever came on it.
    pub(super) fn fail(&self, stats: &HboneStats) {
        if self
            .outcome
            .compare_exchange(PENDING, FAILED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            stats.connection_failed();
        }
    }

    /// The first TLS error the connection's reads returned.
    pub(super) fn tls_error(&self) -> Option<&rustls::Error> {
        self.tls_error.get()
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.changed_ms.store(ms, Ordering::Release);
    }

    /// How long the connection has carried no stream; `None` while it carries one.
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.changed_ms.load(Ordering::Acquire));
        Some(self.born.elapsed().saturating_sub(since))
    }
}

/// Counts a stream as active on its connection while it lives (from the `CONNECT` on).
#[derive(Debug)]
pub(super) struct ActiveStream(Arc<ConnState>);

impl ActiveStream {
    pub(super) fn new(state: &Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Ordering::AcqRel);
        state.touch();
        ActiveStream(state.clone())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// One dial: everything it needs without holding the client alive (the pool holds the dial).
pub(super) struct Dial {
    pub(super) store: IdentityStore,
    pub(super) config: HboneClientConfig,
    pub(super) stats: Arc<HboneStats>,
    pub(super) pool: Weak<ClientInner>,
    pub(super) key: PoolKey,
    pub(super) id: u64,
}

impl Dial {
    /// Sets up the connection within the connect timeout; failures are counted and logged.
    pub(super) async fn run(self) -> Result<Conn, DialError> {
        let (via, after) = (self.key.via, self.config.connect_timeout);
        let stats = self.stats.clone();
        let result = match tokio::time::timeout(after, self.handshake()).await {
            Ok(result) => result,
            Err(_) => Err(DialError::Timeout { via, after }),
        };
        match &result {
            Ok(conn) => debug!(server = %conn.server, "hbone connection set up"),
            Err(error) => {
                stats.connection_failed();
                warn!(%error, "hbone connection failed");
            }
        }
        result
    }

    async fn handshake(self) -> Result<Conn, DialError> {
        let via = self.key.via;
        let tcp = crate::net::connect(via, self.config.mark)
            .await
            .map_err(|e| DialError::Tcp {
                via,
                source: Arc::new(e),
            })?;
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        let tls_config = client_config(
            &self.store,
            self.key.expected.clone(),
            vec![ALPN_H2.to_vec()],
        );
        // The verifier checks the SPIFFE ID, not this name; an IP keeps rustls content.
        let name = ServerName::IpAddress(via.ip().into());
        let tls = TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(via, e))?;
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(DialError::NoH2 { via });
        }
        let server =
            peer_identity(session.peer_certificates().unwrap_or_default()).map_err(|e| {
                DialError::Tls {
                    via,
                    source: Arc::new(io::Error::other(e)),
                }
            })?;

        let state = Arc::new(ConnState::new());
        let idle = self.config.idle_timeout.map(|timeout| IdleWatch {
            state: state.clone(),
            pool: self.pool.clone(),
            key: self.key.clone(),
            id: self.id,
            timeout,
        });
        let io = Watched {
            inner: tls,
            guard: CloseGuard {
                state: state.clone(),
                stats: self.stats.clone(),
                pool: self.pool,
                key: self.key,
                id: self.id,
            },
        };
        // The connection's task is the one that drives its I/O: count its turns.
        let turns = Turns::new();
        let (sender, mut connection) = wire::client_builder()
            .handshake::<_, Bytes>(Coalesce::new(io, &turns))
            .await
            .map_err(|e| DialError::Http2 {
                via,
                source: Arc::new(e),
            })?;
        let keepalive = self.config.keepalive_interval.map(|interval| {
            wire::keepalive(
                connection.ping_pong(),
                interval,
                self.config.keepalive_timeout,
            )
        });
        tokio::spawn(
            turns
                .drive(drive(connection, keepalive, idle))
                .in_current_span(),
        );
        Ok(Conn {
            id: self.id,
            sender,
            server,
            state,
        })
    }
}

/// Takes an idle connection out of the pool once it has carried no stream for `timeout`.
struct IdleWatch {
    state: Arc<ConnState>,
    pool: Weak<ClientInner>,
    key: PoolKey,
    id: u64,
    timeout: Duration,
}

impl IdleWatch {
    /// Returns once the connection has been idle for the timeout (and left the pool).
    async fn expired(&self) {
        loop {
            let wait = match self.state.idle_for() {
                Some(idle) if idle >= self.timeout => break,
                Some(idle) => self.timeout - idle,
                None => self.timeout,
            };
            tokio::time::sleep(wait).await;
        }
        debug!(after = ?self.timeout, "hbone connection idle, closing it");
        if let Some(inner) = self.pool.upgrade() {
            inner.evict(&self.key, self.id);
        }
    }
}

/// Drives the client side of a connection. It stops taking new streams when the pool drops
/// its last sender (eviction, rotation, idle), when the peer closes it or after a `GOAWAY`,
/// and ends when its last tunnel has; a keepalive `PING` left unanswered ends it at once.
async fn drive<C>(
    connection: C,
    keepalive: Option<impl Future<Output = ()>>,
    idle: Option<IdleWatch>,
) where
    C: Future<Output = Result<(), h2::Error>>,
{
    let mut connection = pin!(connection);
    let keepalive = async {
        match keepalive {
            Some(keepalive) => keepalive.await,
            None => std::future::pending().await,
        }
    };
    let run = async {
        match &idle {
            None => connection.await,
            Some(idle) => {
                tokio::select! {
                    result = connection.as_mut() => result,
                    () = idle.expired() => connection.await,
                }
            }
        }
    };
    match wire::with_keepalive(run, keepalive).await {
        Ok(Ok(())) => debug!("hbone connection closed"),
        Ok(Err(error)) => debug!(%error, "hbone connection failed"),
        Err(KeepaliveExpired) => warn!("hbone connection dropped: keepalive ping unanswered"),
    }
}

/// Types a client TLS handshake error: a server with the wrong identity gets its own variant.
fn tls_error(via: SocketAddr, error: io::Error) -> DialError {
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        && let Some(TlsError::IdentityMismatch {
            expected,
            presented,
        }) = other.0.downcast_ref::<TlsError>()
    {
        return DialError::WrongIdentity {
            via,
            expected: expected.clone(),
            presented: presented.clone(),
        };
    }
    DialError::Tls {
        via,
        source: Arc::new(error),
    }
}

/// Marks the connection closed, counts it and takes it out of the pool when the TLS stream is
/// dropped, which is when the connection is really gone (its last tunnel included).
struct CloseGuard {
    state: Arc<ConnState>,
    stats: Arc<HboneStats>,
    pool: Weak<ClientInner>,
    key: PoolKey,
    id: u64,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        match self.state.outcome.load(Ordering::Acquire) {
            OPENED => self.stats.connection_closed(),
            // Set up but closed before any answer: count it as failed.
            _ => self.state.fail(&self.stats),
        }
        debug!(conn = self.id, via = %self.key.via, "hbone connection closed");
        if let Some(inner) = self.pool.upgrade() {
            inner.evict(&self.key, self.id);
        }
    }
}

/// The client TLS stream, remembering the first TLS error a read returns.
struct Watched {
    inner: TlsStream<TcpStream>,
    guard: CloseGuard,
}

impl Watched {
    fn record<T>(&self, polled: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(e)) = polled
            && let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            // Only the first error is kept; later ones are consequences.
            let _ = self.guard.state.tls_error.set(tls.clone());
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.record(&polled);
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
