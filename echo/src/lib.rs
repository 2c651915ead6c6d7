//! `switchyard-echo`: the test app that runs behind Switchyard's proxies in tests, demos and
//! local-cluster pods.
//!
//! This crate owns the echo server ([`server`]: HTTP/1.1 and h2c on one port, gRPC h2c on
//! another, every answer naming the backend, the caller and the caller's identity as the
//! backend saw them), the small clients tests use to reach it ([`client`]) and a load client
//! with latency percentiles ([`load`]). The wire contract of its gRPC service is
//! `proto/switchyard/test/v1/echo.proto` ([`pb`]).
//!
//! It must not hold Switchyard product logic or depend on any other Switchyard crate: it
//! stands for "some application in the mesh", so it knows nothing about xDS, certificates
//! or policy beyond reporting the headers a proxy adds.

pub mod client;
pub mod load;
pub mod server;

pub use client::{
    CLIENT_TIMEOUT, ClientError, HttpProtocol, HttpResponse, grpc_channel, grpc_echo, http_get,
    http_get_with,
};
pub use load::{LoadOptions, LoadReport, LoadTarget, RateMode};
pub use server::{
    BACKEND_HEADER, EchoBackend, EchoError, EchoReady, HttpEcho, LOCALHOST_ANY_PORT, spawn_echo,
    spawn_echo_local, try_spawn_echo,
};

/// Generated types and gRPC stubs for `switchyard.test.v1`
/// (`proto/switchyard/test/v1/echo.proto`).
pub mod pb {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("switchyard.test.v1");
}

/// `error: cause: cause ...`, the way `anyhow` prints `{:#}`, for messages and logs.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
