//! Switchyard's control plane: sources -> model -> compile -> render -> snapshot cache ->
//! ADS (SotW and delta) and CSDS, plus the admin HTTP server. The binary `switchyard` wires
//! these together.
//!
//! This crate must not contain dataplane logic, and nothing here may block the push path on
//! a slow proxy: each stream is its own task and sees only the newest snapshot.

pub mod admin;
pub mod ads;
pub mod authn;
pub mod ca_service;
pub mod cache;
pub mod config;
pub mod csds;
pub mod metrics;
pub mod render;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod state;
pub mod tls_listener;
pub mod trust;

pub use config::Config;
pub use server::Server;

/// Identifier sent in `control_plane` of every response.
pub const CONTROL_PLANE_ID: &str = concat!("switchyard/", env!("CARGO_PKG_VERSION"));
