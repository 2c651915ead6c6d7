//! The HBONE server: accepts mutual-TLS HTTP/2 connections and turns authorized `CONNECT`
//! streams into byte copies to their targets.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use h2::RecvStream;
use h2::server::SendResponse;
use hyper::header::{ALLOW, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use rustls::ServerConfig;
use switchyard_model::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::spread::{Handed, SpreadMember, Tally};
use super::stats::HboneStats;
use super::stream::Counted;
use super::wire::{self, TunnelIo};
use super::{ALPN_H2, REASON_HEADER};
use crate::coalesce::{Coalesce, Turns};
use crate::tls::{IdentityStore, cert_info, server_config};

/// A byte stream to a tunnel's target, as returned by [`InboundHandler::connect`]. Implemented
/// for every suitable type ([`TcpStream`], a Unix socket, an in-memory pipe, ...).
pub trait TargetStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> TargetStream for T {}

/// Serves an accepted tunnel in-process: called with the tunnel's byte stream once the `200`
/// is sent, and a token cancelled when the server starts draining (finish what is in flight,
/// take nothing new, close); the tunnel lasts as long as the returned future.
pub type ServeTunnel = Box<
    dyn FnOnce(Box<dyn TargetStream>, CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

/// Where an authorized tunnel's bytes go, as returned by [`InboundHandler::connect`].
pub enum TunnelEnd {
    /// Copied both ways to and from this stream (a TCP connection to the target, usually).
    Stream(Box<dyn TargetStream>),
    /// Handed to a server in the same process (an HTTP server, say), with no copy in
    /// between.
    Serve(ServeTunnel),
}

impl fmt::Debug for TunnelEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TunnelEnd::Stream(_) => "TunnelEnd::Stream",
            TunnelEnd::Serve(_) => "TunnelEnd::Serve",
        })
    }
}

/// The client of an HBONE connection, as verified by the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The client's SPIFFE ID (its certificate chains to the trust bundle).
    pub identity: SpiffeId,
    /// The client certificate's serial, lowercase hex.
    pub serial: String,
    /// The client's address as the server sees it (a pod, or a node proxy).
    pub addr: SocketAddr,
}

/// An authorization decision against a stream, with the reason the server logs and sends to
/// the client in [`REASON_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    reason: String,
}

impl Refusal {
    /// A refusal explained by `reason` (for example the policy that denied the stream).
    pub fn new(reason: impl Into<String>) -> Self {
        Refusal {
            reason: reason.into(),
        }
    }

    /// The explanation.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What the dataplane decides for each `CONNECT` an [`HboneServer`] receives: whether the
/// client may reach the target (authorization policy) and how to reach it.
pub trait InboundHandler: Send + Sync + 'static {
    /// Whether `peer` may open a tunnel to `target`. A refusal answers 403.
    fn authorize(
        &self,
        peer: &Peer,
        target: SocketAddr,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;

    /// Opens the way to `target` for an authorized `peer`; an error answers 503 (as does
    /// exceeding [`HboneServerConfig::target_connect_timeout`]). The default dials `target`
    /// over TCP.
    fn connect(
        &self,
        _peer: &Peer,
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<TunnelEnd>> + Send {
        async move {
            let stream = TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(TunnelEnd::Stream(Box::new(stream)))
        }
    }
}

/// Settings of an [`HboneServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HboneServerConfig {
    /// Limit for a client's TLS handshake.
    pub handshake_timeout: Duration,
    /// Limit for [`InboundHandler::connect`]; past it the stream is answered 503.
    pub target_connect_timeout: Duration,
    /// At shutdown, how long open tunnels may go on before they are cut.
    pub drain_timeout: Duration,
    /// HTTP/2 `PING` interval to notice vanished clients; `None` disables keepalive.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive `PING` may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Concurrent streams one client connection may open.
    pub max_concurrent_streams: u32,
}

impl Default for HboneServerConfig {
    fn default() -> Self {
        HboneServerConfig {
            handshake_timeout: Duration::from_secs(10),
            target_connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1000,
        }
    }
}

/// Serves HBONE on a listener: TLS 1.3 presenting the store's certificate, client
/// certificates required and verified against the store's bundle, HTTP/2 only, `CONNECT` only.
///
/// For each `CONNECT`: an authority that is not `ip:port` answers 400, another method 405; then
/// the [`InboundHandler`] authorizes the client's identity for the target (403 on refusal) and
/// connects to it (503 on failure); then 200 and bytes are copied both ways until both sides
/// have closed (a half-close is passed on).
pub struct HboneServer<H> {
    inner: Arc<ServerInner<H>>,
}

struct ServerInner<H> {
    handler: H,
    config: HboneServerConfig,
    tls: Arc<ServerConfig>,
    stats: Arc<HboneStats>,
}

/// What every task of one [`HboneServer::serve`] call shares.
#[derive(Clone)]
struct Tasks {
    /// Cancelled by the caller: stop accepting, send GOAWAY.
    shutdown: CancellationToken,
    /// Cancelled when the drain timeout passes: cut what is left.
    abort: CancellationToken,
    tracker: TaskTracker,
}

impl<H> fmt::Debug for HboneServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneServer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl<H: InboundHandler> HboneServer<H> {
    /// A server presenting the certificate in `store` and deciding with `handler`, with
    /// default settings.
    pub fn new(store: &IdentityStore, handler: H) -> Self {
        Self::with_config(store, handler, HboneServerConfig::default())
    }

    /// A server presenting the certificate in `store` and deciding with `handler`.
    pub fn with_config(store: &IdentityStore, handler: H, config: HboneServerConfig) -> Self {
        HboneServer {
            inner: Arc::new(ServerInner {
                handler,
                config,
                tls: server_config(store, true, vec![ALPN_H2.to_vec()]),
                stats: Arc::default(),
            }),
        }
    }

    /// A server with this one's TLS settings, configuration and counters but deciding with
    /// `handler`: one per worker thread, each serving its own `SO_REUSEPORT` listener.
    pub fn with_handler<H2: InboundHandler>(&self, handler: H2) -> HboneServer<H2> {
        HboneServer {
            inner: Arc::new(ServerInner {
                handler,
                config: self.inner.config.clone(),
                tls: self.inner.tls.clone(),
                stats: self.inner.stats.clone(),
            }),
        }
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<HboneStats> {
        self.inner.stats.clone()
    }

    /// Serves `listener` (normally bound to `0.0.0.0:15008`) until `shutdown` is cancelled.
    ///
    /// Errors of one connection or stream are logged and never stop the server. On shutdown
    /// the listener is closed at once, every connection gets an HTTP/2 `GOAWAY` (clients open
    /// new tunnels elsewhere), open tunnels get [`HboneServerConfig::drain_timeout`] to finish
    /// and are then cut; this returns when everything has stopped.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) {
        self.run(listener, shutdown, None).await;
    }

    /// [`serve`](Self::serve) as one worker of a [`Spread`](super::Spread): each connection
    /// this worker accepts is served by the worker with the fewest HBONE connections, and
    /// the connections other workers hand to this one are served here. Must run on the
    /// runtime of the worker `member` belongs to.
    pub async fn serve_spread(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        member: SpreadMember,
    ) {
        self.run(listener, shutdown, Some(member)).await;
    }

    async fn run(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        mut member: Option<SpreadMember>,
    ) {
        let tasks = Tasks {
            shutdown,
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let local = listener.local_addr().ok();
        info!(addr = ?local, worker = member.as_ref().map(SpreadMember::index), "hbone server listening");
        loop {
            let handed = async {
                match member.as_mut() {
                    Some(member) => member.handed().await,
                    None => std::future::pending().await,
                }
            };
            let (tcp, addr, tally) = tokio::select! {
                biased;
                () = tasks.shutdown.cancelled() => break,
                Some(handed) = handed => match TcpStream::from_std(handed.tcp) {
                    Ok(tcp) => (tcp, handed.addr, Some(handed.tally)),
                    Err(error) => {
                        warn!(%error, peer_addr = %handed.addr, "hbone connection handed from another worker lost");
                        continue;
                    }
                },
                accepted = listener.accept() => match accepted {
                    Ok((tcp, addr)) => match self.place(tcp, addr, member.as_ref()) {
                        Some((tcp, tally)) => (tcp, addr, tally),
                        None => continue,
                    },
                    Err(error) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        warn!(%error, "hbone accept failed");
                        tokio::select! {
                            () = tasks.shutdown.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                        continue;
                    }
                },
            };
            let (inner, conn_tasks) = (self.inner.clone(), tasks.clone());
            let span = info_span!("hbone_server_conn", peer_addr = %addr, identity = tracing::field::Empty);
            tasks.tracker.spawn(
                async move {
                    inner.serve_connection(tcp, addr, conn_tasks).await;
                    drop(tally);
                }
                .instrument(span),
            );
        }
        // Out of the spread too: workers still accepting keep what they accept.
        drop((listener, member));
        tasks.tracker.close();
        info!(tasks = tasks.tracker.len(), addr = ?local, "hbone server draining");
        let drain = self.inner.config.drain_timeout;
        if tokio::time::timeout(drain, tasks.tracker.wait())
            .await
            .is_err()
        {
            warn!(tasks = tasks.tracker.len(), after = ?drain, "hbone drain timed out, cutting open tunnels");
            tasks.abort.cancel();
            tasks.tracker.wait().await;
        }
        info!(addr = ?local, "hbone server stopped");
    }
}

impl<H: InboundHandler> HboneServer<H> {
    /// Where a connection this worker accepted is served: here, with its tally when the
    /// workers are spread, or by another worker it was handed to (`None`).
    fn place(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        member: Option<&SpreadMember>,
    ) -> Option<(TcpStream, Option<Tally>)> {
        let Some(member) = member else {
            return Some((tcp, None));
        };
        let (to, tally) = member.place();
        if to == member.index() {
            return Some((tcp, Some(tally)));
        }
        // Out of this runtime's I/O driver; the other worker registers it with its own.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                warn!(%error, peer_addr = %addr, "hbone connection lost while handing it to another worker");
                return None;
            }
        };
        match member.hand(to, Handed { tcp, addr, tally }) {
            Ok(()) => {
                debug!(peer_addr = %addr, worker = to, "hbone connection handed to the worker with the fewest");
                None
            }
            Err(returned) => {
                // That worker has stopped taking connections: serve it here.
                drop(returned.tally);
                match TcpStream::from_std(returned.tcp) {
                    Ok(tcp) => Some((tcp, Some(member.count(member.index())))),
                    Err(error) => {
                        warn!(%error, peer_addr = %addr, "hbone connection lost while taking it back");
                        None
                    }
                }
            }
        }
    }
}

impl<H: InboundHandler> ServerInner<H> {
    async fn serve_connection(self: Arc<Self>, tcp: TcpStream, addr: SocketAddr, tasks: Tasks) {
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        let Some(peer) = self.handshake(tcp, addr, &tasks).await else {
            self.stats.connection_failed();
            return;
        };
        let (tls, peer) = peer;
        tracing::Span::current().record("identity", tracing::field::display(&peer.identity));
        self.stats.connection_opened();
        debug!(serial = %peer.serial, "hbone connection accepted");

        let peer = Arc::new(peer);
        // This task drives the connection's I/O: count its turns.
        let turns = Turns::new();
        let ended = turns
            .clone()
            .drive(self.clone().run_connection(tls, &turns, peer, &tasks))
            .await;
        match ended {
            Ok(()) => debug!("hbone connection closed"),
            Err(ConnectionEnd::Http2(error)) => {
                debug!(%error, "hbone connection ended with an error");
            }
            Err(ConnectionEnd::Keepalive) => {
                info!("hbone connection dropped: keepalive ping unanswered");
            }
            Err(ConnectionEnd::HandshakeTimeout(after)) => {
                info!(?after, "hbone http/2 handshake timed out");
            }
            Err(ConnectionEnd::Cut) => debug!("hbone connection cut at shutdown"),
        }
        self.stats.connection_closed();
    }

    /// The HTTP/2 connection: each `CONNECT` stream gets a task of its own. At shutdown a
    /// `GOAWAY` is sent and the connection ends with its last stream, or when the drain time is
    /// up.
    async fn run_connection(
        self: Arc<Self>,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        turns: &Turns,
        peer: Arc<Peer>,
        tasks: &Tasks,
    ) -> Result<(), ConnectionEnd> {
        let handshake = wire::server_builder(self.config.max_concurrent_streams)
            .handshake::<_, Bytes>(Coalesce::new(tls, turns));
        let mut connection = tokio::select! {
            shaken = tokio::time::timeout(self.config.handshake_timeout, handshake) => match shaken {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => return Err(ConnectionEnd::Http2(error)),
                Err(_) => return Err(ConnectionEnd::HandshakeTimeout(self.config.handshake_timeout)),
            },
            () = tasks.abort.cancelled() => return Err(ConnectionEnd::Cut),
        };
        let keepalive = match self.config.keepalive_interval {
            Some(interval) => wire::keepalive(
                connection.ping_pong(),
                interval,
                self.config.keepalive_timeout,
            )
            .boxed(),
            None => std::future::pending().boxed(),
        };
        let mut keepalive = pin!(keepalive);
        let mut draining = false;
        loop {
            let accepted = tokio::select! {
                accepted = connection.accept() => accepted,
                () = tasks.shutdown.cancelled(), if !draining => {
                    draining = true;
                    connection.graceful_shutdown();
                    continue;
                }
                () = tasks.abort.cancelled() => return Err(ConnectionEnd::Cut),
                () = keepalive.as_mut() => return Err(ConnectionEnd::Keepalive),
            };
            match accepted {
                Some(Ok((request, respond))) => {
                    tasks.tracker.spawn(
                        self.clone()
                            .handle(peer.clone(), request, respond, tasks.clone())
                            .in_current_span(),
                    );
                }
                Some(Err(error)) => return Err(ConnectionEnd::Http2(error)),
                None => return Ok(()),
            }
        }
    }

    /// The TLS handshake and the client's identity; `None` (logged) when either fails.
    async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        tasks: &Tasks,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Peer)> {
        let accept = TlsAcceptor::from(self.tls.clone()).accept(tcp);
        let tls = tokio::select! {
            accepted = tokio::time::timeout(self.config.handshake_timeout, accept) => match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    info!(%error, "hbone tls handshake failed (is the client's root in our trust bundle?)");
                    return None;
                }
                Err(_) => {
                    info!(after = ?self.config.handshake_timeout, "hbone tls handshake timed out");
                    return None;
                }
            },
            () = tasks.shutdown.cancelled() => return None,
        };
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(ALPN_H2) {
            info!("hbone client did not negotiate ALPN h2; closing");
            return None;
        }
        let info = match session.peer_certificates().and_then(|certs| certs.first()) {
            Some(leaf) => cert_info(leaf),
            // Unreachable with mandatory client authentication; refuse rather than trust.
            None => Err(crate::tls::TlsError::NoPeerCertificate),
        };
        match info {
            Ok(info) => Some((
                tls,
                Peer {
                    identity: info.id,
                    serial: info.serial,
                    addr,
                },
            )),
            Err(error) => {
                info!(%error, "hbone client certificate has no usable identity");
                None
            }
        }
    }

    /// Answers one stream and, after a 200, carries its tunnel until it ends.
    async fn handle(
        self: Arc<Self>,
        peer: Arc<Peer>,
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        tasks: Tasks,
    ) {
        let (head, body) = request.into_parts();
        let target = match connect_target(&head.method, &head.uri) {
            Ok(target) => target,
            Err((status, reason)) => {
                self.stats.stream_failed();
                debug!(method = %head.method, uri = %head.uri, reason, "hbone request refused");
                return refuse(&mut respond, status, reason);
            }
        };
        let span = info_span!("hbone_stream", %target);
        async move {
            let end = match self.open(&peer, target).await {
                Ok(end) => end,
                Err((status, reason)) => return refuse(&mut respond, status, &reason),
            };
            let send = match respond.send_response(Response::new(()), false) {
                Ok(send) => send,
                Err(error) => {
                    debug!(%error, "hbone stream gone before its 200");
                    return;
                }
            };
            self.stats.stream_opened();
            debug!(identity = %peer.identity, "hbone tunnel open");
            let io = Counted::new(TunnelIo::new(send, body), self.stats.clone());
            match end {
                TunnelEnd::Stream(target) => tunnel(io, target, tasks.abort).await,
                TunnelEnd::Serve(serve) => tokio::select! {
                    () = serve_lent(io, serve, tasks.shutdown) => debug!("hbone tunnel served"),
                    () = tasks.abort.cancelled() => debug!("hbone tunnel cut at shutdown"),
                },
            }
        }
        .instrument(span)
        .await;
    }

    /// Authorizes the client for `target` and reaches it; the status and reason to answer
    /// when either fails.
    async fn open(
        &self,
        peer: &Peer,
        target: SocketAddr,
    ) -> Result<TunnelEnd, (StatusCode, String)> {
        if let Err(refusal) = self.handler.authorize(peer, target).await {
            self.stats.stream_refused();
            info!(identity = %peer.identity, reason = %refusal, "hbone stream denied");
            return Err((StatusCode::FORBIDDEN, refusal.reason().to_owned()));
        }
        let after = self.config.target_connect_timeout;
        match tokio::time::timeout(after, self.handler.connect(peer, target)).await {
            Ok(Ok(end)) => Ok(end),
            Ok(Err(error)) => {
                self.stats.stream_failed();
                info!(%error, "hbone target unreachable");
                Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot reach {target}: {error}"),
                ))
            }
            Err(_) => {
                self.stats.stream_failed();
                info!(?after, "hbone target connect timed out");
                Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot reach {target}: no answer within {after:?}"),
                ))
            }
        }
    }
}

/// Why a connection's task ended other than by the connection closing cleanly.
enum ConnectionEnd {
    Http2(h2::Error),
    Keepalive,
    HandshakeTimeout(Duration),
    /// The drain time ran out.
    Cut,
}

/// The target of a well-formed `CONNECT`; else the status and reason to answer.
fn connect_target(method: &Method, uri: &Uri) -> Result<SocketAddr, (StatusCode, &'static str)> {
    if method != Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "hbone only accepts CONNECT"));
    }
    uri.authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .ok_or((
            StatusCode::BAD_REQUEST,
            "the CONNECT authority must be <ip>:<port>",
        ))
}

/// How long a tunnel whose in-process server has finished waits for the client's
/// `END_STREAM` before it is dropped (and so reset).
const LINGER: Duration = Duration::from_secs(5);

/// Runs `serve` on the tunnel, then reads what the client still sends until its
/// `END_STREAM` (at most [`LINGER`]): a server that closes first (an HTTP/1.1
/// `Connection: close`, say) would otherwise drop a half-open HTTP/2 stream, which resets
/// it, and the client's last write would fail. `copy_bidirectional` does the same for
/// [`TunnelEnd::Stream`].
async fn serve_lent<S: TargetStream>(io: S, serve: ServeTunnel, shutdown: CancellationToken) {
    let (back, returned) = tokio::sync::oneshot::channel();
    serve(
        Box::new(Lent {
            io: Some(io),
            back: Some(back),
        }),
        shutdown,
    )
    .await;
    let Ok(mut io) = returned.await else {
        return;
    };
    let linger = async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = io.shutdown().await;
        let mut sink = [0u8; 4096];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    if tokio::time::timeout(LINGER, linger).await.is_err() {
        debug!(after = ?LINGER, "hbone tunnel reset: the client did not finish");
    }
}

/// A tunnel lent to a [`ServeTunnel`]: handed back to [`serve_lent`] when the server drops
/// it.
struct Lent<S> {
    io: Option<S>,
    back: Option<tokio::sync::oneshot::Sender<S>>,
}

impl<S> Lent<S> {
    fn io(&mut self) -> io::Result<Pin<&mut S>>
    where
        S: Unpin,
    {
        self.io
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "tunnel handed back"))
    }
}

impl<S> Drop for Lent<S> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            let _ = back.send(io);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lent<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lent<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Copies bytes both ways until both directions have ended. When one side finishes sending,
/// the other side's write half is shut down (`END_STREAM` to the client, TCP `FIN` to the
/// target) and the opposite direction goes on: half-closed connections work.
async fn tunnel<C, T>(mut client: C, mut target: T, abort: CancellationToken)
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut target) => match copied {
            Ok((to_target, to_client)) => debug!(to_target, to_client, "hbone tunnel closed"),
            Err(error) => debug!(%error, "hbone tunnel broken"),
        },
        () = abort.cancelled() => debug!("hbone tunnel cut at shutdown"),
    }
}

/// Answers a refusal: the reason in [`REASON_HEADER`] (sanitized to visible ASCII) and in
/// the body; a 405 names the one method allowed.
fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode, reason: &str) {
    let printable: String = reason
        .chars()
        .take(256)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&printable) {
        response.headers_mut().insert(REASON_HEADER, value);
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("CONNECT"));
    }
    match respond.send_response(response, false) {
        Ok(mut body) => {
            if let Err(error) = body.send_data(Bytes::from(format!("{printable}\n")), true) {
                debug!(%error, "hbone refusal body not sent");
            }
        }
        Err(error) => debug!(%error, "hbone refusal not sent"),
    }
}
