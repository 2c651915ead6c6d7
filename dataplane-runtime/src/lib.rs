//! Shared dataplane plumbing: workload identity, SPIFFE TLS and ADS clients.

pub mod ads_client;
pub mod identity;
pub mod tls;
pub mod xds;
