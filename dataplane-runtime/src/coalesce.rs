//! Write coalescing for connections that carry many small frames.
//!
//! An HTTP/2 connection task flushes whenever it runs out of frames to write, and h2 also
//! flushes after each DATA frame of 256 bytes or more. On a single-threaded runtime the
//! connection task runs between the tasks that produce its frames, so one response
//! (HEADERS, DATA, trailers) can leave as three TLS records and three `writev` calls. Each
//! write costs a syscall and, over TCP, a trip through the network stack of both ends.
//!
//! [`Coalesce`] buffers writes ([`tokio::io::BufWriter`]) and puts a flush that finds bytes
//! waiting off by one scheduler turn: it wakes its own task and returns `Pending`, so the
//! tasks already queued on the runtime run first and may add frames to the same buffer. The
//! next flush writes what has gathered. With nothing else ready the task is polled again at
//! once. What it gathers is modest (h2 flushes again after the next large DATA frame), at the
//! cost of copying the bytes once; measured in the sidecar benchmark (issue notes), it takes
//! about a tenth off the CPU per gRPC request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// How much a [`Coalesce`] holds before it writes without waiting for a flush.
pub const DEFAULT_CAPACITY: usize = 32 * 1024;

/// A byte stream whose writes are buffered and whose flushes are put off by one scheduler
/// turn when there is something to write (see the module documentation). Reads pass
/// through.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: BufWriter<T>,
    /// A flush found bytes to write and was put off; the next one writes them.
    deferred: bool,
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Wraps `io` with a [`DEFAULT_CAPACITY`] buffer.
    pub fn new(io: T) -> Self {
        Self::with_capacity(DEFAULT_CAPACITY, io)
    }

    /// Wraps `io` with a buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize, io: T) -> Self {
        Coalesce {
            inner: BufWriter::with_capacity(capacity, io),
            deferred: false,
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
        if !this.deferred && !this.inner.buffer().is_empty() {
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if flushed.is_ready() {
            this.deferred = false;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
