//! Data-path building blocks of the micro-sidecar, each independent of the xDS config model
//! (they take plain inputs; the listener code wires them to configuration).
//!
//! - [`original_dst`]: where a captured outbound connection was going (`SO_ORIGINAL_DST`).
//! - [`detect`]: which protocol a connection speaks, from its first bytes, without losing them.
//! - [`body`]: a forwarded body that sends its last chunk with the end of the stream.
//! - [`balance`]: power-of-two-choices over peak-EWMA cost, weights and outlier ejection.
//! - [`retry`]: whether a failed attempt may be retried (Envoy `retry_on` names) and the
//!   retry budget that bounds retries across requests.
//! - [`circuit`]: circuit-breaker counters with RAII guards and a typed refusal.
//! - [`copy`]: opaque TCP, bytes copied both ways with half-close and an idle timeout.
//! - [`clock`]: the time source the stateful blocks read, replaceable in tests.
//! - [`server`]: the exception to the rule above: the L4 proxy wiring the blocks to the
//!   listeners and the configuration (outbound capture, HBONE inbound, plaintext inbound).
//!
//! None of them owns sockets' lifecycles, metrics registries or configuration: callers read
//! their counters and export them under their own metric names.

pub mod balance;
pub mod body;
pub mod circuit;
pub mod clock;
pub mod copy;
pub mod detect;
pub mod original_dst;
pub mod pool;
pub mod retry;
pub mod server;
