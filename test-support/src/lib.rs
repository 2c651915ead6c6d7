//! Test harness pieces shared by Switchyard's integration and conformance suites: the echo
//! backend (re-exported from `switchyard-echo`) and a harness that runs its binary, a
//! real-Envoy process harness, the proxyless-gRPC (Python `grpcio`) helpers and polling
//! assertions.
//!
//! This crate owns only test scaffolding. It must not hold product logic, must not be a
//! dependency of any non-test crate, and must not reach anything but loopback: every server
//! it starts binds `127.0.0.1:0` unless the caller says otherwise. External tools (Envoy,
//! the Python venv) are installed by `scripts/setup.sh`, never fetched from here.

pub mod ads;
pub mod echo;
pub mod echo_process;
pub mod envoy;
pub mod eventually;
pub mod fake_kube;
pub mod grpc_xds;
pub mod manifests;
pub mod netns;
pub mod synthetic;

use std::path::PathBuf;

pub use echo::{
    EchoBackend, HttpResponse, grpc_echo, http_get, spawn_echo, spawn_echo_local, try_spawn_echo,
};
pub use echo_process::{EchoProcess, echo_binary};
pub use envoy::{Envoy, EnvoyOptions, envoy_binary};
pub use eventually::{DEFAULT_EVENTUALLY_TIMEOUT, eventually};
pub use grpc_xds::{grpc_xds_client_script, python, write_grpc_bootstrap};

/// Generated types and gRPC stubs for `switchyard.test.v1`, from `switchyard-echo`
/// (`echo/proto/switchyard/test/v1/echo.proto`).
pub use switchyard_echo::pb;

/// The workspace root, as seen when this crate was compiled (`<test-support>/..`).
///
/// Tools that `scripts/setup.sh` installs (`.venv/`) and the Python test scripts
/// (`tests/python/`) are found relative to it.
pub fn workspace_root() -> PathBuf {
    let raw = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    raw.canonicalize().unwrap_or(raw)
}

/// Re-exports used by this crate's macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use tokio;
}
