//! Switchyard's control plane: sources -> model -> compile -> render -> snapshot cache ->
//! ADS (SotW and delta) and CSDS, plus the admin HTTP server. The binary `switchyard` wires
//! these together.
//!
//! This crate must not contain dataplane logic, and nothing here may block the push path on
//! a slow proxy: each stream is its own task and sees only the newest snapshot.

pub mod sources;
