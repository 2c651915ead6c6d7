//! Protocol detection on the first bytes a client sends: HTTP/1.x, HTTP/2 with prior
//! knowledge (gRPC included), a TLS ClientHello (passed through opaque), or opaque TCP.
//!
//! It owns reading and classifying a bounded prefix within a timeout, and gives the bytes back
//! in a [`Prefixed`] stream so nothing is lost. A client that sends nothing (server-first
//! protocols such as MySQL or SMTP) or too little to decide falls to [`Protocol::Opaque`] when
//! the timeout fires; [`DetectStats`] counts those. It does not own what happens next (HTTP
//! serving, TLS inspection, SNI routing).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

mod prefixed;

pub use prefixed::Prefixed;

/// The HTTP/2 connection preface a prior-knowledge client sends first (RFC 9113, 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Request methods that make a request line HTTP/1 (RFC 9110 section 9 plus `PATCH`).
const HTTP1_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface (h2c, gRPC without TLS).
    Http2,
    /// A TLS ClientHello record: the stream is passed through opaque.
    Tls,
    /// Anything else, a client that sent nothing in time, or one that closed first.
    Opaque,
}

/// Detection settings.
#[derive(Debug, Clone)]
pub struct DetectConfig {
    /// How long to wait for enough bytes to decide; then [`Protocol::Opaque`]. Bounds the
    /// delay server-first protocols see.
    pub timeout: Duration,
    /// The most bytes read before deciding. A longer HTTP/1 request line still counts as
    /// HTTP/1 when it looks like one so far.
    pub max_prefix: usize,
}

impl Default for DetectConfig {
    /// 10 s and 1 KiB: Linkerd's detection timeout; more than any preface or method needs.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_prefix: 1024,
        }
    }
}

/// Detection results so far, as counters the caller exports ([`DetectStats::register`]).
#[derive(Debug, Default)]
pub struct DetectStats {
    http1: Counter,
    http2: Counter,
    tls: Counter,
    opaque: Counter,
    timeouts: Counter,
}

/// A copy of [`DetectStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectCounts {
    /// Connections detected as HTTP/1.
    pub http1: u64,
    /// Connections detected as HTTP/2 prior knowledge.
    pub http2: u64,
    /// Connections starting with a TLS ClientHello.
    pub tls: u64,
    /// Connections treated as opaque TCP, timeouts included.
    pub opaque: u64,
    /// Of the opaque ones, those where the timeout fired before a decision.
    pub timeouts: u64,
}

impl DetectStats {
    /// The counters now.
    pub fn snapshot(&self) -> DetectCounts {
        DetectCounts {
            http1: self.http1.get(),
            http2: self.http2.get(),
            tls: self.tls.get(),
            opaque: self.opaque.get(),
            timeouts: self.timeouts.get(),
        }
    }

    /// Registers `switchyard_sidecar_detected_<protocol>_total` and
    /// `switchyard_sidecar_detection_timeouts_total`.
    pub fn register(&self, registry: &mut Registry) {
        for (name, counter) in [
            ("http1", &self.http1),
            ("http2", &self.http2),
            ("tls", &self.tls),
            ("opaque", &self.opaque),
        ] {
            registry.register(
                format!("switchyard_sidecar_detected_{name}"),
                format!("connections on HTTP ports detected as {name}"),
                counter.clone(),
            );
        }
        registry.register(
            "switchyard_sidecar_detection_timeouts",
            "connections on HTTP ports whose detection timed out (carried as opaque TCP)",
            self.timeouts.clone(),
        );
    }

    fn count(&self, protocol: Protocol, timed_out: bool) {
        let counter = match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::Http2 => &self.http2,
            Protocol::Tls => &self.tls,
            Protocol::Opaque => &self.opaque,
        };
        counter.inc();
        if timed_out {
            self.timeouts.inc();
        }
    }
}

/// Reading the first bytes failed: the connection is unusable.
#[derive(Debug, thiserror::Error)]
#[error("reading the first bytes of the connection: {0}")]
pub struct DetectError(#[source] pub io::Error);

/// The outcome of [`Detector::detect`].
#[derive(Debug)]
pub struct Detected<S> {
    /// What the connection speaks.
    pub protocol: Protocol,
    /// Whether the timeout decided (the protocol is then [`Protocol::Opaque`]).
    pub timed_out: bool,
    /// The connection, replaying the bytes detection read.
    pub io: Prefixed<S>,
}

/// Detects protocols with one configuration and counts the results; cheap to share.
#[derive(Debug, Clone, Default)]
pub struct Detector {
    config: DetectConfig,
    stats: Arc<DetectStats>,
}

impl Detector {
    /// A detector with its own counters.
    pub fn new(config: DetectConfig) -> Self {
        Self {
            config,
            stats: Arc::default(),
        }
    }

    /// The counters of every detection this detector (and its clones) made.
    pub fn stats(&self) -> &Arc<DetectStats> {
        &self.stats
    }

    /// Reads from `io` until its protocol is known, the prefix limit is reached, the client
    /// closes its side, or the timeout fires (all but the first give [`Protocol::Opaque`]).
    pub async fn detect<S: AsyncRead + Unpin>(
        &self,
        mut io: S,
    ) -> Result<Detected<S>, DetectError> {
        let max = self.config.max_prefix.max(1);
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let mut buf = BytesMut::with_capacity(max);
        let mut timed_out = false;
        let protocol = loop {
            let full = buf.len() >= max;
            if let Verdict::Known(protocol) = classify(&buf, full) {
                break protocol;
            }
            let room = max - buf.len();
            match tokio::time::timeout_at(deadline, io.read_buf(&mut (&mut buf).limit(room))).await
            {
                Err(_elapsed) => {
                    timed_out = true;
                    debug!(
                        bytes = buf.len(),
                        timeout_ms = self.config.timeout.as_millis() as u64,
                        "protocol detection timed out; treating the connection as opaque"
                    );
                    break Protocol::Opaque;
                }
                Ok(Ok(0)) => break Protocol::Opaque,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(DetectError(e)),
            }
        };
        self.stats.count(protocol, timed_out);
        Ok(Detected {
            protocol,
            timed_out,
            io: Prefixed::new(buf.freeze(), io),
        })
    }
}

/// Reads from `io` while its bytes agree with the HTTP/2 connection preface: `true` once all
/// of it is there, `false` at the first byte that differs (or when the stream ends). The bytes
/// read are given back in front of the stream. For a peer known to speak HTTP/2 with prior
/// knowledge or HTTP/1.1 (the inbound side of a tunnel), without [`Detector`]'s timeout and
/// counts.
pub async fn read_h2_preface<S>(mut io: S) -> io::Result<(bool, Prefixed<S>)>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    let http2 = loop {
        if !H2_PREFACE.starts_with(&buf) {
            break false;
        }
        if buf.len() == H2_PREFACE.len() {
            break true;
        }
        let room = H2_PREFACE.len() - buf.len();
        if io.read_buf(&mut (&mut buf).limit(room)).await? == 0 {
            break false;
        }
    };
    Ok((http2, Prefixed::new(buf.freeze(), io)))
}

/// What the bytes so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Known(Protocol),
    NeedMore,
}

/// Classifies a prefix; `full` says no more bytes will be read.
fn classify(buf: &[u8], full: bool) -> Verdict {
    let verdict = match buf.first() {
        None => Verdict::NeedMore,
        Some(0x16) => classify_tls(buf),
        Some(b'P') if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) => {
            Verdict::NeedMore
        }
        Some(b'P') if buf.starts_with(H2_PREFACE) => Verdict::Known(Protocol::Http2),
        Some(_) => classify_http1(buf, full),
    };
    match verdict {
        Verdict::NeedMore if full => Verdict::Known(Protocol::Opaque),
        v => v,
    }
}

/// A TLS handshake record (type 22), version 3.x, whose first message is a ClientHello (1).
fn classify_tls(buf: &[u8]) -> Verdict {
    let opaque = Verdict::Known(Protocol::Opaque);
    if buf.get(1).is_some_and(|&major| major != 3) || buf.get(2).is_some_and(|&minor| minor > 4) {
        return opaque;
    }
    match buf.get(5) {
        None => Verdict::NeedMore,
        Some(1) => Verdict::Known(Protocol::Tls),
        Some(_) => opaque,
    }
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, with a known method.
fn classify_http1(buf: &[u8], full: bool) -> Verdict {
    let opaque = Verdict::Known(Protocol::Opaque);
    let Some(sp) = buf.iter().position(|&b| b == b' ') else {
        // still inside the method
        return if HTTP1_METHODS.iter().any(|m| m.starts_with(buf)) {
            Verdict::NeedMore
        } else {
            opaque
        };
    };
    if !HTTP1_METHODS.contains(&&buf[..sp]) {
        return opaque;
    }
    let rest = &buf[sp + 1..];
    let target_len = rest
        .iter()
        .position(|&b| !b.is_ascii_graphic())
        .unwrap_or(rest.len());
    if target_len == rest.len() {
        // still inside the request target: a long one is HTTP/1 when no more fits
        return if full {
            Verdict::Known(Protocol::Http1)
        } else {
            Verdict::NeedMore
        };
    }
    if target_len == 0 || rest[target_len] != b' ' {
        return opaque;
    }
    let version = &rest[target_len + 1..];
    let mut need_more = false;
    for line_end in [
        &b"HTTP/1.1\r\n"[..],
        b"HTTP/1.0\r\n",
        b"HTTP/1.1\n",
        b"HTTP/1.0\n",
    ] {
        if version.starts_with(line_end) {
            return Verdict::Known(Protocol::Http1);
        }
        need_more |= line_end.starts_with(version);
    }
    if need_more { Verdict::NeedMore } else { opaque }
}

#[cfg(test)]
mod tests;
