//! The echo server: one HTTP port answering HTTP/1.1 and HTTP/2 cleartext (prior knowledge)
//! and one gRPC port (`switchyard.test.v1.Echo`, h2c). Every answer names the backend, the
//! peer address it saw and the caller identity a proxy forwarded.
//!
//! The same code runs in-process ([`spawn_echo`]) and as `switchyard-echo serve`.
//! Connections are served by tasks owned by the backend, so dropping an [`EchoBackend`]
//! closes its listeners *and* its open connections, as a killed process would.

mod grpc;
mod http;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

pub use self::http::HttpEcho;

/// Response header (HTTP) and response metadata key (gRPC) carrying the backend's name.
pub const BACKEND_HEADER: &str = "x-backend";

/// Request header a proxy sets with the verified client certificate (Envoy's XFCC); reported
/// as the caller's identity when present.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

/// Request header carrying the caller's identity as a Switchyard dataplane saw it; reported
/// when [`XFCC_HEADER`] is absent.
pub const PEER_IDENTITY_HEADER: &str = "x-switchyard-peer-identity";

/// `127.0.0.1:0`: let the kernel pick a loopback port.
pub const LOCALHOST_ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Why an echo backend could not start, or its ready file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// A listener could not be bound.
    #[error("binding echo {what} listener on {addr} (is the port in use?)")]
    Bind {
        /// `http` or `grpc`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the ready file failed.
    #[error("{action} echo ready file {path}")]
    ReadyFile {
        /// What was being done (`reading`, `writing`, `renaming to`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The ready file is not the JSON [`EchoReady`].
    #[error("parsing echo ready file {path}")]
    ReadyFileFormat {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The addresses a running echo backend listens on; the `--ready-file` JSON of
/// `switchyard-echo serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReady {
    /// The backend's name, as sent in [`BACKEND_HEADER`] and `EchoReply.backend`.
    pub name: String,
    /// Bound HTTP (HTTP/1.1 and h2c) address, if HTTP is served.
    pub http: Option<SocketAddr>,
    /// Bound gRPC (h2c) address, if gRPC is served.
    pub grpc: Option<SocketAddr>,
}

impl EchoReady {
    /// Reads a ready file written by [`EchoBackend::write_ready_file`].
    pub fn read(path: &Path) -> Result<Self, EchoError> {
        let text = std::fs::read_to_string(path).map_err(|source| EchoError::ReadyFile {
            action: "reading",
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| EchoError::ReadyFileFormat {
            path: path.to_owned(),
            source,
        })
    }
}

/// A running echo backend; stops serving (listeners and open connections) when dropped.
#[derive(Debug)]
pub struct EchoBackend {
    ready: EchoReady,
    tasks: Vec<JoinHandle<()>>,
}

impl EchoBackend {
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.ready.name
    }

    /// The bound HTTP address, if HTTP is served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.ready.http
    }

    /// The bound gRPC address, if gRPC is served.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.ready.grpc
    }

    /// Name and bound addresses.
    pub fn ready(&self) -> &EchoReady {
        &self.ready
    }

    /// Writes [`EchoReady`] as JSON to `path`, atomically (a temporary file renamed into
    /// place), so a reader polling for the file never sees half of it.
    pub fn write_ready_file(&self, path: &Path) -> Result<(), EchoError> {
        let tmp = path.with_extension("tmp");
        // Serializing a struct of strings and addresses cannot fail.
        let json = serde_json::to_vec(&self.ready).unwrap_or_default();
        std::fs::write(&tmp, json).map_err(|source| EchoError::ReadyFile {
            action: "writing",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, path).map_err(|source| EchoError::ReadyFile {
            action: "renaming to",
            path: path.to_owned(),
            source,
        })
    }

    /// Stops serving now; the same as dropping the backend.
    pub fn stop(self) {}
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts an echo backend serving HTTP on `http` and gRPC on `grpc` (each only when given;
/// use port 0 — e.g. [`LOCALHOST_ANY_PORT`] — to let the kernel choose).
///
/// # Panics
/// When an address cannot be bound; use [`try_spawn_echo`] to handle that.
pub async fn spawn_echo(
    name: &str,
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
) -> EchoBackend {
    match try_spawn_echo(name, http, grpc).await {
        Ok(backend) => backend,
        Err(e) => panic!("starting echo backend {name}: {}", crate::error_chain(&e)),
    }
}

/// Starts an echo backend serving both HTTP and gRPC on loopback ports the kernel picks.
///
/// # Panics
/// When loopback ports cannot be bound.
pub async fn spawn_echo_local(name: &str) -> EchoBackend {
    spawn_echo(name, Some(LOCALHOST_ANY_PORT), Some(LOCALHOST_ANY_PORT)).await
}

/// [`spawn_echo`] that reports bind failures instead of panicking.
pub async fn try_spawn_echo(
    name: &str,
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
) -> Result<EchoBackend, EchoError> {
    let name: Arc<str> = Arc::from(name);
    let mut backend = EchoBackend {
        ready: EchoReady {
            name: name.to_string(),
            http: None,
            grpc: None,
        },
        tasks: Vec::new(),
    };
    // On an early return `backend` drops and aborts the tasks already started.
    if let Some(addr) = http {
        let (listener, bound) = bind("http", addr).await?;
        backend.ready.http = Some(bound);
        let span = tracing::info_span!("echo_http", backend = %name, listen = %bound);
        backend.tasks.push(tokio::spawn(
            http::serve(listener, name.clone()).instrument(span),
        ));
    }
    if let Some(addr) = grpc {
        let (listener, bound) = bind("grpc", addr).await?;
        backend.ready.grpc = Some(bound);
        let span = tracing::info_span!("echo_grpc", backend = %name, listen = %bound);
        backend.tasks.push(tokio::spawn(
            grpc::serve(listener, name.clone()).instrument(span),
        ));
    }
    tracing::info!(
        backend = %name,
        http = ?backend.ready.http,
        grpc = ?backend.ready.grpc,
        "echo backend listening"
    );
    Ok(backend)
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), EchoError> {
    let bind_error = |source| EchoError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// The two ends of an accepted connection.
#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
}

/// Accepts connections until the task is aborted; connection tasks live in a `JoinSet`
/// owned by this future, so aborting it also closes every open connection.
async fn accept_loop<F, Fut>(listener: TcpListener, mut serve: F)
where
    F: FnMut(TcpStream, Conn) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(peer);
                    let conn = Conn { peer, local };
                    let span = tracing::debug_span!("connection", peer = %peer);
                    connections.spawn(serve(stream, conn).instrument(span));
                }
                Err(error) => {
                    // Typically EMFILE under load; back off instead of spinning.
                    tracing::warn!(%error, "echo accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The caller identity from request headers: [`XFCC_HEADER`] if present, else
/// [`PEER_IDENTITY_HEADER`], else `None`. Non-UTF-8 values are converted lossily.
pub fn identity_from_headers(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get(XFCC_HEADER)
        .or_else(|| headers.get(PEER_IDENTITY_HEADER))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests;
