//! Shared dataplane plumbing: workload identity, SPIFFE TLS, HBONE tunnels and ADS clients.
//!
//! Owns what every dataplane kind needs the same way; must not hold one dataplane's own logic
//! (listeners, redirection, policy decisions) nor depend on `xds-server` or a `dataplane-*`
//! crate.

pub mod ads_client;
pub mod coalesce;
pub mod hbone;
pub mod identity;
pub mod net;
pub mod tls;
pub mod xds;

#[cfg(test)]
pub(crate) mod test_ca;
