//! What can go wrong opening an HBONE tunnel: setting up the connection ([`DialError`]) apart
//! from the server's answer to one `CONNECT` ([`HboneError`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why a connection to an HBONE server could not be set up. Nothing was sent to the target.
///
/// Cheap to clone (causes are shared): every caller waiting for the same pooled dial gets the
/// same error. A failed dial is not cached; the next `connect` dials again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// The client's identity store has no certificate to present.
    #[error("the workload has no certificate yet (is certificate rotation running?)")]
    NoCertificate,
    /// The TCP connection failed.
    #[error("cannot connect to the hbone server at {via}: {source} (is port 15008 blocked?)")]
    Tcp {
        /// The server's address.
        via: SocketAddr,
        /// Cause.
        source: Arc<io::Error>,
    },
    /// TCP, TLS and HTTP/2 setup took longer than the configured connect timeout.
    #[error(
        "no hbone connection to {via} within {after:?} (is port 15008 blocked or the node down?)"
    )]
    Timeout {
        /// The server's address.
        via: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The server's certificate is valid but names another identity than expected.
    #[error("the hbone server at {via} presented {presented}, expected {expected}")]
    WrongIdentity {
        /// The server's address.
        via: SocketAddr,
        /// What was expected, as [`Expected`](crate::tls::Expected) displays it.
        expected: String,
        /// The SPIFFE ID the server presented.
        presented: String,
    },
    /// The TLS handshake failed for another reason (untrusted chain, protocol error, ...).
    #[error("tls handshake with the hbone server at {via} failed: {source}")]
    Tls {
        /// The server's address.
        via: SocketAddr,
        /// Cause, usually wrapping a `rustls::Error`.
        source: Arc<io::Error>,
    },
    /// The server refused the client's certificate: TLS 1.3 reports this after the client has
    /// finished its handshake, as an alert on the first read.
    #[error(
        "the hbone server at {via} refused our certificate (tls alert {alert}): does it trust our CA?"
    )]
    CertificateRefused {
        /// The server's address.
        via: SocketAddr,
        /// The TLS alert received.
        alert: String,
    },
    /// TLS succeeded without ALPN `h2`.
    #[error("the hbone server at {via} did not negotiate ALPN h2 (is it an hbone port?)")]
    NoH2 {
        /// The server's address.
        via: SocketAddr,
    },
    /// The HTTP/2 handshake failed.
    #[error("http/2 handshake with the hbone server at {via} failed: {source}")]
    Http2 {
        /// The server's address.
        via: SocketAddr,
        /// Cause.
        source: Arc<h2::Error>,
    },
}

fn reason_suffix(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

/// Why [`HboneClient::connect`](super::HboneClient::connect) failed.
///
/// Server answers other than 200 are typed by meaning; [`status`](Self::status) gives the HTTP
/// status for metrics. `reason` is the server's explanation (its [`REASON_HEADER`](super::REASON_HEADER)),
/// for logs.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// No connection to the server.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// 403: the server's authorization policy does not let this client reach the target.
    #[error("the hbone server at {via} denied the stream to {target}{}", reason_suffix(.reason))]
    Denied {
        /// The requested destination.
        target: SocketAddr,
        /// The server's address.
        via: SocketAddr,
        /// The server's explanation.
        reason: Option<String>,
    },
    /// 502, 503 or 504: the server could not reach the target (refused, timed out).
    #[error(
        "the hbone server at {via} could not reach {target} (status {status}){}",
        reason_suffix(.reason)
    )]
    Unreachable {
        /// The requested destination.
        target: SocketAddr,
        /// The server's address.
        via: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        reason: Option<String>,
    },
    /// Any other status than 200: 400 (bad authority), 405 (not `CONNECT`), 5xx, ...
    #[error(
        "the hbone server at {via} answered {status} to CONNECT {target}{}",
        reason_suffix(.reason)
    )]
    Rejected {
        /// The requested destination.
        target: SocketAddr,
        /// The server's address.
        via: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        reason: Option<String>,
    },
    /// No answer to `CONNECT` within the configured response timeout.
    #[error("no answer to CONNECT {target} from the hbone server at {via} within {after:?}")]
    Timeout {
        /// The requested destination.
        target: SocketAddr,
        /// The server's address.
        via: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The `CONNECT` stream failed at the HTTP/2 level (connection lost, stream reset).
    #[error("hbone stream to {target} via {via} failed: {source}")]
    Stream {
        /// The requested destination.
        target: SocketAddr,
        /// The server's address.
        via: SocketAddr,
        /// Cause.
        source: h2::Error,
    },
}

impl HboneError {
    /// The HTTP status the server answered, when it answered something other than 200.
    pub fn status(&self) -> Option<u16> {
        match self {
            HboneError::Denied { .. } => Some(403),
            HboneError::Unreachable { status, .. } | HboneError::Rejected { status, .. } => {
                Some(*status)
            }
            HboneError::Dial(_) | HboneError::Timeout { .. } | HboneError::Stream { .. } => None,
        }
    }
}
