//! Opaque TCP: bytes copied both ways between the client and the upstream until both sides
//! have closed, passing half-closes on (a client's FIN becomes a `shutdown` towards the
//! server, and the other way round), with live byte counters and an idle timeout.
//!
//! It wraps tokio's [`copy_bidirectional_with_sizes`](tokio::io::copy_bidirectional_with_sizes)
//! and owns only counting and idleness. The caller owns the sockets: after an idle timeout or
//! an error it drops them, which closes both connections.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

/// Copy settings.
#[derive(Debug, Clone)]
pub struct CopyConfig {
    /// Close after this long without a byte in either direction; `None` never does.
    pub idle_timeout: Option<Duration>,
    /// Buffer size per direction: the memory one opaque connection costs.
    pub buffer_size: usize,
}

impl Default for CopyConfig {
    /// One hour (Envoy's TCP proxy default) and 8 KiB buffers (tokio's default).
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(3600)),
            buffer_size: 8 * 1024,
        }
    }
}

/// Bytes delivered so far, readable while the copy runs (for metrics of long connections).
#[derive(Debug, Default)]
pub struct CopyStats {
    client_to_server: AtomicU64,
    server_to_client: AtomicU64,
}

impl CopyStats {
    /// Bytes written to the server so far.
    pub fn client_to_server(&self) -> u64 {
        self.client_to_server.load(Ordering::Relaxed)
    }

    /// Bytes written to the client so far.
    pub fn server_to_client(&self) -> u64 {
        self.server_to_client.load(Ordering::Relaxed)
    }

    fn total(&self) -> u64 {
        self.client_to_server() + self.server_to_client()
    }
}

/// How a copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyEnd {
    /// Both sides closed their sending half.
    Closed,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
}

/// The result of a copy that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySummary {
    /// Bytes written to the server.
    pub client_to_server: u64,
    /// Bytes written to the client.
    pub server_to_client: u64,
    /// Why it ended.
    pub end: CopyEnd,
}

/// A read, write or shutdown failed on either side (usually a reset).
#[derive(Debug, thiserror::Error)]
#[error(
    "copying bytes failed after {client_to_server} bytes to the server and {server_to_client} to the client: {source}"
)]
pub struct CopyError {
    /// Bytes written to the server before the failure.
    pub client_to_server: u64,
    /// Bytes written to the client before the failure.
    pub server_to_client: u64,
    /// The failure.
    #[source]
    pub source: io::Error,
}

/// Copies between `client` and `server` until both have closed their sending half, the idle
/// timeout fires, or an I/O error happens. `stats` counts the bytes as they go.
pub async fn copy_bidirectional<C, S>(
    client: &mut C,
    server: &mut S,
    config: &CopyConfig,
    stats: &CopyStats,
) -> Result<CopySummary, CopyError>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    // count on the write side: bytes delivered, not merely read
    let mut client = Counted {
        inner: client,
        written: &stats.server_to_client,
    };
    let mut server = Counted {
        inner: server,
        written: &stats.client_to_server,
    };
    let size = config.buffer_size.max(1);
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, size, size);
    let result = match config.idle_timeout {
        None => copy.await.map(|_| CopyEnd::Closed),
        Some(idle) => {
            tokio::pin!(copy);
            // look four times per timeout: fires between 1 and 1.25 timeouts after the last byte
            let tick = (idle / 4).max(Duration::from_millis(1));
            let mut ticks = tokio::time::interval_at(Instant::now() + tick, tick);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut seen = stats.total();
            let mut last_activity = Instant::now();
            loop {
                tokio::select! {
                    result = &mut copy => break result.map(|_| CopyEnd::Closed),
                    now = ticks.tick() => {
                        let total = stats.total();
                        if total != seen {
                            seen = total;
                            last_activity = now;
                        } else if now.duration_since(last_activity) >= idle {
                            debug!(
                                idle_timeout_ms = idle.as_millis() as u64,
                                client_to_server = stats.client_to_server(),
                                server_to_client = stats.server_to_client(),
                                "opaque connection idle; closing"
                            );
                            break Ok(CopyEnd::IdleTimeout);
                        }
                    }
                }
            }
        }
    };
    match result {
        Ok(end) => Ok(CopySummary {
            client_to_server: stats.client_to_server(),
            server_to_client: stats.server_to_client(),
            end,
        }),
        Err(source) => Err(CopyError {
            client_to_server: stats.client_to_server(),
            server_to_client: stats.server_to_client(),
            source,
        }),
    }
}

/// A stream that counts the bytes written to it.
struct Counted<'a, T: ?Sized> {
    inner: &'a mut T,
    written: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
