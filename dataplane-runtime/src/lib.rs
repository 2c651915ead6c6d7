//! Shared dataplane plumbing: workload identity and SPIFFE TLS.

pub mod identity;
pub mod tls;
pub mod xds;
