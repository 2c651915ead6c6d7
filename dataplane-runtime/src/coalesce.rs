//! Write coalescing for HTTP/2 connections, which carry many small frames.
//!
//! An HTTP/2 connection task flushes whenever it runs out of frames to write, and h2 also
//! flushes after each DATA frame of 256 bytes or more before it encodes the next frame. On a
//! single-threaded runtime the connection task runs between the tasks that produce its
//! frames, so one gRPC response (HEADERS, DATA, trailers) can leave as three TLS records and
//! three `writev` calls. Each write costs a syscall and, over TCP, a trip through the network
//! stack of both ends (and a wake-up of the peer).
//!
//! [`Coalesce`] buffers writes ([`tokio::io::BufWriter`]) and holds them for the rest of the
//! scheduler turn: the first flush that finds bytes waiting reports success without writing
//! and wakes its task; every later flush of the same turn does the same, so h2 goes on
//! encoding the frames it has queued (a response's trailers after its DATA, the frames of
//! other streams) into the same buffer. The first flush of a later turn writes all that has
//! gathered. The tasks already queued on the runtime run in between, and may add frames.
//!
//! A turn is a poll of the task that drives the connection: [`Turns::drive`] counts them,
//! and a connection's [`Coalesce`] holds the same [`Turns`]. For hyper's HTTP/2 client, whose
//! connection runs in a task hyper spawns, [`TurnExecutor`] is the executor that counts.
//!
//! **Only for HTTP/2 connections** (h2 flushes on every poll of its connection, so the bytes
//! held always go out on the next turn): a caller that flushes once and then waits for an
//! answer would wait forever. As a safety net, a flush is held at most [`MAX_HELD_FLUSHES`]
//! times in a row without the turn moving on.
//!
//! The cost is copying the bytes once. Measured in the sidecar benchmark (issue notes).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// How much a [`Coalesce`] holds before it writes without waiting for a flush.
pub const DEFAULT_CAPACITY: usize = 32 * 1024;

/// Most flushes held in a row while the turn does not move on: a task that is polled again
/// without being counted by [`Turns::drive`] still gets its bytes written.
pub const MAX_HELD_FLUSHES: u32 = 16;

/// The turns of the task(s) driving one connection: each poll of a future wrapped by
/// [`Turns::drive`] is a new turn. Clones share the count.
#[derive(Debug, Clone, Default)]
pub struct Turns(Arc<AtomicU64>);

impl Turns {
    /// A new count.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `future`, counting each of its polls as a turn.
    pub async fn drive<F: Future>(self, future: F) -> F::Output {
        let mut future = pin!(future);
        poll_fn(|cx| {
            self.0.fetch_add(1, Ordering::Relaxed);
            future.as_mut().poll(cx)
        })
        .await
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A hyper executor (tokio's) whose tasks count as turns of one connection: hyper's HTTP/2
/// client polls its connection in a task it spawns.
#[derive(Debug, Clone, Default)]
pub struct TurnExecutor(pub Turns);

impl<F> hyper::rt::Executor<F> for TurnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(self.0.clone().drive(future));
    }
}

/// A byte stream whose writes are buffered and held until the next turn of the task that
/// drives it (see the module documentation). Reads pass through.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: BufWriter<T>,
    turns: Turns,
    /// The turn in which a flush found bytes and held them; a flush of a later turn writes.
    held_in: Option<u64>,
    /// Flushes held since the last write.
    held: u32,
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Wraps `io` with a [`DEFAULT_CAPACITY`] buffer; `turns` counts the polls of the task
    /// that drives the connection.
    pub fn new(io: T, turns: &Turns) -> Self {
        Self::with_capacity(DEFAULT_CAPACITY, io, turns)
    }

    /// Wraps `io` with a buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize, io: T, turns: &Turns) -> Self {
        Coalesce {
            inner: BufWriter::with_capacity(capacity, io),
            turns: turns.clone(),
            held_in: None,
            held: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        self.inner.get_ref()
    }

    /// Bytes in the buffer: written to this stream, not yet all passed to the wrapped one
    /// (during a partial flush, some of them may already have been).
    pub fn pending(&self) -> usize {
        self.inner.buffer().len()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.inner.buffer().is_empty() && this.held < MAX_HELD_FLUSHES {
            let now = this.turns.now();
            if *this.held_in.get_or_insert(now) == now {
                // Hold the bytes for the rest of this turn; the task comes back for them.
                this.held += 1;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
        }
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if flushed.is_ready() {
            this.held_in = None;
            this.held = 0;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
