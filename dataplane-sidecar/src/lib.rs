//! Switchyard's per-pod micro-sidecar as a library: the building blocks the
//! `switchyard-sidecar` binary assembles.
//!
//! It owns the L7 data path of one pod (listeners, protocol detection, load balancing,
//! retries, circuit breaking, byte copying) and its configuration ([`config`]: the xDS
//! follower and the domain types Envoy resources are converted into), and the pod's traffic
//! capture rules ([`capture`], installed by `switchyard-sidecar init`). It must not depend on
//! `xds-server` or another dataplane crate.

pub mod capture;
pub mod config;
pub mod proxy;
