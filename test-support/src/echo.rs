//! The echo backend, re-exported from the `switchyard-echo` crate so suites keep importing it
//! from here: an HTTP (HTTP/1.1 and h2c) and gRPC server that names the backend, the caller
//! and the caller's identity in every answer, plus the clients tests use to reach it through
//! a proxy. See [`switchyard_echo`] for the server, the clients and the load generator
//! ([`switchyard_echo::load`]).

pub use switchyard_echo::client::{
    CLIENT_TIMEOUT, ClientError, HttpProtocol, HttpResponse, grpc_channel, grpc_echo, http_get,
    http_get_with,
};
pub use switchyard_echo::server::{
    BACKEND_HEADER, EchoBackend, EchoError, EchoReady, HttpEcho, LOCALHOST_ANY_PORT,
    PEER_IDENTITY_HEADER, XFCC_HEADER, spawn_echo, spawn_echo_local, try_spawn_echo,
};
