//! The tunnel stream handed to callers, and the byte counting both sides share.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use switchyard_model::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::dial::ActiveStream;
use super::stats::HboneStats;
use super::wire::TunnelIo;

/// An I/O object that adds what it reads and writes to [`HboneStats`].
pub(crate) struct Counted<S> {
    inner: S,
    stats: Arc<HboneStats>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, stats: Arc<HboneStats>) -> Self {
        Counted { inner, stats }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.stats
                .bytes_in(buf.filled().len().saturating_sub(before));
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.stats.bytes_out(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.stats.bytes_out(n);
        }
        polled
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

/// One tunnel opened by [`HboneClient::connect`](super::HboneClient::connect): the bytes
/// written go to the target, the bytes read come from it.
///
/// [`shutdown`](tokio::io::AsyncWriteExt::shutdown) half-closes the tunnel (HTTP/2
/// `END_STREAM`; the server then half-closes its TCP connection to the target) and reading
/// goes on until the target closes its side. Dropping the stream resets it. The connection it
/// rides on stays open while the stream lives, even after the pool has replaced it (rotation,
/// `GOAWAY`).
pub struct HboneStream {
    io: Counted<TunnelIo>,
    target: SocketAddr,
    via: SocketAddr,
    peer: SpiffeId,
    /// Keeps the connection from being closed as idle while the tunnel lives.
    _active: ActiveStream,
}

impl HboneStream {
    pub(super) fn new(
        io: TunnelIo,
        stats: Arc<HboneStats>,
        active: ActiveStream,
        target: SocketAddr,
        via: SocketAddr,
        peer: SpiffeId,
    ) -> Self {
        HboneStream {
            io: Counted::new(io, stats),
            target,
            via,
            peer,
            _active: active,
        }
    }

    /// The destination the server was asked to reach.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The HBONE server's address.
    pub fn via(&self) -> SocketAddr {
        self.via
    }

    /// The SPIFFE ID the HBONE server presented (already checked against the expected one).
    pub fn peer_identity(&self) -> &SpiffeId {
        &self.peer
    }
}

impl fmt::Debug for HboneStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneStream")
            .field("target", &self.target)
            .field("via", &self.via)
            .field("peer", &self.peer.to_string())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for HboneStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for HboneStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
