//! `switchyard-echo`: the test echo backend as a process (HTTP/1.1 and/or gRPC h2c), for
//! demos and tests that need a backend outside the test process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use switchyard_test_support::try_spawn_echo;
use tokio::signal::unix::{SignalKind, signal};

/// Echo backend: answers every HTTP request and every `switchyard.test.v1.Echo/Echo` call
/// with its own name.
#[derive(Debug, Parser)]
#[command(name = "switchyard-echo", version)]
#[command(group = clap::ArgGroup::new("listen").required(true).multiple(true).args(["http", "grpc"]))]
struct Args {
    /// Name reported in the `x-backend` header, the JSON body and `EchoReply.backend`.
    #[arg(long)]
    name: String,
    /// Serve HTTP/1.1 on this address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Serve gRPC (plaintext HTTP/2) on this address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    grpc: Option<SocketAddr>,
    /// Once listening, write `{"name","http","grpc"}` with the bound addresses here.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let backend = try_spawn_echo(&args.name, args.http, args.grpc).await?;
    if let Some(path) = &args.ready_file {
        backend.write_ready_file(path)?;
    }

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for ctrl-c")?,
        _ = term.recv() => {}
    }
    tracing::info!(backend = %args.name, "echo backend stopping");
    drop(backend);
    Ok(())
}
