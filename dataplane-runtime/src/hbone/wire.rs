//! What both ends of HBONE share on top of the `h2` crate: the settings of a connection, the
//! byte stream of one `CONNECT` stream and keepalive `PING`s.
//!
//! HBONE drives `h2` itself instead of going through hyper's `CONNECT` upgrade. hyper hands
//! every write to an upgraded stream to a task of its own through a channel: a copy into a
//! `Box`, a wake-up and one more task to run per write, in each proxy a request crosses. Here
//! a write is one `send_data` on the stream, which the connection's task encodes on its next
//! poll.

use std::future::{Future, pending, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Flow-control window of one tunnel: what a peer may send before the reader catches up.
/// Tunnels carry bulk TCP as well as small requests; a window of 64 KiB (HTTP/2's default)
/// would cap one tunnel at 64 KiB per round trip.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Flow-control window of a whole connection, shared by its tunnels.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Largest header block accepted: a `CONNECT` and its answer are a few hundred bytes.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Bytes one tunnel may queue in the connection before its writer waits.
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Streams a client may have reset by errors of its own before the connection is closed
/// (a defence against reset floods).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The client side's HTTP/2 settings.
pub(super) fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false);
    builder
}

/// The server side's HTTP/2 settings; `max_streams` concurrent streams per connection.
pub(super) fn server_builder(max_streams: u32) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(max_streams)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    builder
}

/// Sends a `PING` every `interval` (the connection may be idle or not) and returns once one
/// has gone unanswered for `timeout`: the peer has vanished. Never returns when the
/// connection ends first (its own future reports that) or when `ping` is `None`.
pub(super) async fn keepalive(ping: Option<PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping) = ping else {
        return pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        if ping.send_ping(Ping::opaque()).is_err() {
            return pending().await;
        }
        match tokio::time::timeout(timeout, poll_fn(|cx| ping.poll_pong(cx))).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_connection_gone)) => return pending().await,
            Err(_unanswered) => return,
        }
    }
}

/// Runs `connection` (an HTTP/2 connection's future) alongside its [`keepalive`]; `Err` when
/// a `PING` went unanswered, which drops the connection.
pub(super) async fn with_keepalive<C, T>(
    connection: C,
    keepalive: impl Future<Output = ()>,
) -> Result<T, KeepaliveExpired>
where
    C: Future<Output = T>,
{
    tokio::select! {
        ended = connection => Ok(ended),
        () = keepalive => Err(KeepaliveExpired),
    }
}

/// A keepalive `PING` went unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeepaliveExpired;

/// The byte stream of one `CONNECT` stream: reads are the peer's DATA frames, writes become
/// DATA frames, [`poll_shutdown`](AsyncWrite::poll_shutdown) sends `END_STREAM`.
///
/// Flow control follows the reader: the window is given back as bytes are read, so a reader
/// that stops stops the peer. A write takes what the stream's send window allows and waits
/// when it is empty. Dropping it before both sides have ended resets the stream (`CANCEL`).
pub(super) struct TunnelIo {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not read yet.
    unread: Bytes,
    /// `END_STREAM` sent.
    shut: bool,
}

impl TunnelIo {
    pub(super) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        TunnelIo {
            send,
            recv,
            unread: Bytes::new(),
            shut: false,
        }
    }

    /// Why the stream cannot send any more: the peer's reset reason when it reset it.
    fn send_closed(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("hbone stream reset by the peer: {reason}"),
            ),
            Poll::Ready(Err(error)) => io_error(error),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "hbone stream closed"),
        }
    }
}

/// An `h2` error as an I/O error: the connection's own I/O error when there is one.
fn io_error(error: h2::Error) -> io::Error {
    if error.is_io() {
        match error.into_io() {
            Some(io) => io,
            None => io::Error::other("hbone connection i/o error"),
        }
    } else if error.is_reset() || error.is_go_away() {
        io::Error::new(io::ErrorKind::ConnectionReset, error)
    } else {
        io::Error::other(error)
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                // END_STREAM: the peer has finished sending.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.unread = data,
                // A peer that resets with NO_ERROR or CANCEL after its last byte has ended
                // its side, as far as the bytes go.
                Some(Err(error))
                    if matches!(error.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) =>
                {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        // Errors only when the stream is gone, which the next read reports.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "hbone stream already shut down for writing",
            )));
        }
        // On top of what the stream has queued already.
        this.send.reserve_capacity(buf.len());
        loop {
            let capacity = this.send.capacity();
            if capacity > 0 {
                let n = capacity.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(io_error)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
                None => return Poll::Ready(Err(this.send_closed(cx))),
            }
        }
    }

    /// Written bytes are queued in the connection, whose task sends them: nothing to wait for.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        this.shut = true;
        // Nothing more will be written: hand back what was reserved.
        this.send.reserve_capacity(0);
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(this.send_closed(cx))),
        }
    }
}
