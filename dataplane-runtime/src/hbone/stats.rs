//! Counters an HBONE client or server keeps for its caller to export.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`HboneClient`](super::HboneClient) or [`HboneServer`](super::HboneServer).
/// The library keeps no metrics registry: callers read [`snapshot`](Self::snapshot) and export
/// the values under their own names.
///
/// "In" and "out" are seen from the side that keeps the counters: `bytes_in` came out of
/// tunnels from the peer, `bytes_out` went into tunnels toward the peer.
#[derive(Debug, Default)]
pub struct HboneStats {
    connections_opened: AtomicU64,
    connections_failed: AtomicU64,
    connections_closed: AtomicU64,
    streams_opened: AtomicU64,
    streams_refused: AtomicU64,
    streams_failed: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// The values of [`HboneStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// TLS + HTTP/2 connections set up. Server: handshake done and client identity read.
    /// Client: the server answered a first `CONNECT` on it (in TLS 1.3 a server refusing the
    /// client certificate says so only after the client's handshake).
    pub connections_opened: u64,
    /// Connections that failed before carrying a stream: TCP, TLS or HTTP/2 handshake errors,
    /// refused certificates, timeouts, connections closed before any answer.
    pub connections_failed: u64,
    /// Opened connections that have ended; `connections_opened - connections_closed` are open.
    pub connections_closed: u64,
    /// `CONNECT` streams answered 200.
    pub streams_opened: u64,
    /// `CONNECT` streams refused by authorization policy (403).
    pub streams_refused: u64,
    /// `CONNECT` streams that did not open for any other reason: bad request, unreachable
    /// target, broken connection, timeout.
    pub streams_failed: u64,
    /// Tunnel bytes received from the peer.
    pub bytes_in: u64,
    /// Tunnel bytes sent to the peer.
    pub bytes_out: u64,
}

impl StatsSnapshot {
    /// Connections currently open.
    pub fn connections_open(&self) -> u64 {
        self.connections_opened
            .saturating_sub(self.connections_closed)
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl HboneStats {
    /// The current values. Each counter is read atomically; the set is not one atomic
    /// snapshot, which is fine for metrics.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_opened: get(&self.connections_opened),
            connections_failed: get(&self.connections_failed),
            connections_closed: get(&self.connections_closed),
            streams_opened: get(&self.streams_opened),
            streams_refused: get(&self.streams_refused),
            streams_failed: get(&self.streams_failed),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
        }
    }

    pub(crate) fn connection_opened(&self) {
        add(&self.connections_opened, 1);
    }

    pub(crate) fn connection_failed(&self) {
        add(&self.connections_failed, 1);
    }

    pub(crate) fn connection_closed(&self) {
        add(&self.connections_closed, 1);
    }

    pub(crate) fn stream_opened(&self) {
        add(&self.streams_opened, 1);
    }

    pub(crate) fn stream_refused(&self) {
        add(&self.streams_refused, 1);
    }

    pub(crate) fn stream_failed(&self) {
        add(&self.streams_failed, 1);
    }

    pub(crate) fn bytes_in(&self, n: usize) {
        add(&self.bytes_in, n as u64);
    }

    pub(crate) fn bytes_out(&self, n: usize) {
        add(&self.bytes_out, n as u64);
    }
}
