//! HBONE, Switchyard's one wire protocol between mesh pods: HTTP/2 `CONNECT` to
//! `<destination pod IP>:<port>` over mutual TLS 1.3 with ALPN `h2`, normally on port
//! [`HBONE_PORT`] (see `CONTRACTS.md`, section "HBONE").
//!
//! - [`HboneClient`] opens tunnels. It presents the source workload's certificate from an
//!   [`IdentityStore`](crate::tls::IdentityStore), checks the server's SPIFFE ID against an
//!   [`Expected`](crate::tls::Expected) identity, and multiplexes many `CONNECT` streams over
//!   one pooled connection per (proxy address, expected identity, own certificate).
//! - [`HboneServer`] terminates tunnels. It presents the destination workload's certificate,
//!   requires a client certificate, and asks an [`InboundHandler`] whether the client's
//!   identity may reach the target and how to reach it.
//!
//! The module is dataplane-neutral: the micro-sidecar, the node ztunnel and the eBPF agent all
//! use it. It owns the wire protocol, pooling and byte copying; it does not own policy (the
//! [`InboundHandler`] decides), redirection, metrics registries (callers read [`HboneStats`])
//! or the choice of which identity to expect (the caller passes what the model says).

mod client;
mod dial;
mod error;
mod server;
mod spread;
mod stats;
mod stream;
mod wire;

pub use client::{HboneClient, HboneClientConfig};
pub use error::{DialError, HboneError};
pub use server::{
    HboneServer, HboneServerConfig, InboundHandler, Peer, Refusal, ServeTunnel, TargetStream,
    TunnelEnd,
};
pub use spread::{Spread, SpreadMember};
pub use stats::{HboneStats, StatsSnapshot};
pub use stream::HboneStream;

/// The HBONE port every dataplane listens on (`CONTRACTS.md`, section "Ports").
pub const HBONE_PORT: u16 = 15008;

/// The only ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Response header in which the server explains a refused `CONNECT` (403, 400, 405, 503).
/// The same text is the response body. For logs only: clients must not parse it.
pub const REASON_HEADER: &str = "switchyard-reason";

#[cfg(test)]
mod tests;
