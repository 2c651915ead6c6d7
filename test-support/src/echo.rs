//! The echo backend: an HTTP/1.1 server and a gRPC (`switchyard.test.v1.Echo`, h2c) server
//! that both name the backend in every answer, plus the clients tests use to reach them
//! through a proxy.
//!
//! The same code runs in-process ([`spawn_echo`]) and as the `switchyard-echo` binary.
//! Connections are served by tasks owned by the backend, so dropping an [`EchoBackend`]
//! closes its listeners *and* its open connections, as a killed process would.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::Endpoint;

use crate::pb::echo_client::EchoClient;
use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest};

/// Response header (HTTP) and response metadata key (gRPC) carrying the backend's name.
pub const BACKEND_HEADER: &str = "x-backend";

/// `127.0.0.1:0`: let the kernel pick a loopback port.
pub const LOCALHOST_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// How long [`http_get`] and [`grpc_echo`] wait in total before giving up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The addresses a running echo backend listens on; the `--ready-file` JSON of
/// `switchyard-echo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReady {
    /// The backend's name, as sent in [`BACKEND_HEADER`] and `EchoReply.backend`.
    pub name: String,
    /// Bound HTTP/1.1 address, if HTTP is served.
    pub http: Option<SocketAddr>,
    /// Bound gRPC (h2c) address, if gRPC is served.
    pub grpc: Option<SocketAddr>,
}

impl EchoReady {
    /// Reads a ready file written by [`EchoBackend::write_ready_file`].
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading echo ready file {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing echo ready file {}", path.display()))
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
    pub fn write_ready_file(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&self.ready)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
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
        Err(e) => panic!("starting echo backend {name}: {e:#}"),
    }
}

/// Starts an echo backend serving both HTTP and gRPC on loopback ports the kernel picks.
pub async fn spawn_echo_local(name: &str) -> EchoBackend {
    spawn_echo(name, Some(LOCALHOST_ANY_PORT), Some(LOCALHOST_ANY_PORT)).await
}

/// [`spawn_echo`] that reports bind failures instead of panicking.
pub async fn try_spawn_echo(
    name: &str,
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
) -> anyhow::Result<EchoBackend> {
    let name: Arc<str> = Arc::from(name);
    let mut tasks = Vec::new();
    let mut ready = EchoReady {
        name: name.to_string(),
        http: None,
        grpc: None,
    };
    if let Some(addr) = http {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding echo HTTP listener on {addr}"))?;
        ready.http = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(serve_http(listener, name.clone())));
    }
    if let Some(addr) = grpc {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding echo gRPC listener on {addr}"))?;
        ready.grpc = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(serve_grpc(listener, name.clone())));
    }
    tracing::info!(backend = %name, http = ?ready.http, grpc = ?ready.grpc, "echo backend listening");
    Ok(EchoBackend { ready, tasks })
}

/// Accepts connections until the task is aborted; connection tasks live in a `JoinSet`
/// owned by this future, so aborting it also closes every open connection.
async fn accept_loop<F, Fut>(listener: TcpListener, what: &'static str, mut serve: F)
where
    F: FnMut(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve(stream));
                }
                Err(error) => {
                    // Typically EMFILE under load; back off instead of spinning.
                    tracing::warn!(%error, server = what, "echo accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_http(listener: TcpListener, name: Arc<str>) {
    accept_loop(listener, "http", move |stream| {
        let name = name.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(http_echo(&name, &req)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "echo HTTP connection ended with an error");
            }
        }
    })
    .await;
}

/// The JSON body of an HTTP echo answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpEcho {
    /// The backend's name.
    pub backend: String,
    /// Request method.
    pub method: String,
    /// Request path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The `Host` header (or the request URI's authority when there is no `Host`).
    pub host: String,
    /// Request headers, lowercase names; repeated headers joined with `,`.
    pub headers: BTreeMap<String, String>,
}

fn http_echo(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut headers = BTreeMap::<String, String>::new();
    for (key, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(key.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let echo = HttpEcho {
        backend: name.to_owned(),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        host,
        headers,
    };
    let body = serde_json::to_vec(&echo).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(name) {
        h.insert(BACKEND_HEADER, value);
    }
    response
}

#[derive(Debug, Clone)]
struct EchoService {
    name: Arc<str>,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let mut response = tonic::Response::new(EchoReply {
            message: request.into_inner().message,
            backend: self.name.to_string(),
        });
        if let Ok(value) = self.name.parse() {
            response.metadata_mut().insert(BACKEND_HEADER, value);
        }
        Ok(response)
    }
}

async fn serve_grpc(listener: TcpListener, name: Arc<str>) {
    let service = EchoServer::new(EchoService { name });
    accept_loop(listener, "grpc", move |stream| {
        let service = TowerToHyperService::new(service.clone());
        async move {
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "echo gRPC connection ended with an error");
            }
        }
    })
    .await;
}

/// An HTTP response read in full by [`http_get`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body, decoded as UTF-8 (lossily).
    pub body: String,
}

impl HttpResponse {
    /// The [`BACKEND_HEADER`] value: which echo backend answered, if one did.
    pub fn backend(&self) -> Option<&str> {
        self.headers
            .get(BACKEND_HEADER)
            .and_then(|v| v.to_str().ok())
    }

    /// The body parsed as the echo backend's JSON answer.
    pub fn echo(&self) -> anyhow::Result<HttpEcho> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not an echo answer: {:?}", self.body))
    }
}

/// Sends `GET path` over a fresh HTTP/1.1 connection to `addr` with `Host: host` and reads
/// the whole response; gives up after [`CLIENT_TIMEOUT`].
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(CLIENT_TIMEOUT, http_get_inner(addr, host, path))
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {CLIENT_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("GET http://{host}{path} via {addr}"))
}

async fn http_get_inner(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let connection = tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, host)
        .body(Empty::<Bytes>::new())
        .context("building request")?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .context("sending request")?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading body")?
            .to_bytes();
        Ok(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
    .await;
    connection.abort();
    result
}

/// Calls `switchyard.test.v1.Echo/Echo` over plaintext HTTP/2 (h2c) to `addr`, sending
/// `:authority` = `authority` (so a proxy at `addr` routes by it), with a
/// [`CLIENT_TIMEOUT`] deadline.
///
/// Connection failures come back as `Unavailable`, a bad address or authority as
/// `InvalidArgument`, so tests can match on [`tonic::Status::code`].
pub async fn grpc_echo(
    addr: SocketAddr,
    authority: &str,
    msg: &str,
) -> Result<EchoReply, tonic::Status> {
    let origin = format!("http://{authority}").parse().map_err(|e| {
        tonic::Status::invalid_argument(format!("bad authority {authority:?}: {e}"))
    })?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(format!("bad address {addr}: {e}")))?
        .origin(origin)
        .connect_timeout(CLIENT_TIMEOUT)
        .timeout(CLIENT_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting to {addr}: {e:?}")))?;
    let reply = EchoClient::new(channel)
        .echo(EchoRequest {
            message: msg.to_owned(),
        })
        .await?;
    Ok(reply.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_http_with_its_name() {
        let backend = spawn_echo_local("alpha").await;
        let addr = backend.http_addr().unwrap();
        let response = http_get(addr, "echo.default.svc.cluster.local", "/hello?x=1")
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.backend(), Some("alpha"));
        let echo = response.echo().unwrap();
        assert_eq!(echo.backend, "alpha");
        assert_eq!(echo.method, "GET");
        assert_eq!(echo.path, "/hello");
        assert_eq!(echo.query.as_deref(), Some("x=1"));
        assert_eq!(echo.host, "echo.default.svc.cluster.local");
        assert_eq!(
            echo.headers.get("host").map(String::as_str),
            Some("echo.default.svc.cluster.local")
        );
    }

    #[tokio::test]
    async fn answers_grpc_with_its_name() {
        let backend = spawn_echo("beta", None, Some(LOCALHOST_ANY_PORT)).await;
        assert_eq!(backend.http_addr(), None);
        let addr = backend.grpc_addr().unwrap();
        let reply = grpc_echo(addr, "echo.default.svc.cluster.local:9090", "ping")
            .await
            .unwrap();
        assert_eq!(reply.message, "ping");
        assert_eq!(reply.backend, "beta");
    }

    #[tokio::test]
    async fn drop_closes_listener_and_connections() {
        let backend = spawn_echo_local("gamma").await;
        let http = backend.http_addr().unwrap();
        let grpc = backend.grpc_addr().unwrap();
        // An idle open connection must be closed by the drop, not just the listener.
        let mut idle = TcpStream::connect(http).await.unwrap();
        backend.stop();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
        )
        .await
        .expect("idle connection still open after drop");
        assert!(matches!(read, Ok(0) | Err(_)), "got {read:?}");
        assert!(http_get(http, "x", "/").await.is_err());
        let status = grpc_echo(grpc, "x", "ping").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    #[tokio::test]
    async fn ready_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        let backend = spawn_echo_local("delta").await;
        backend.write_ready_file(&path).unwrap();
        assert_eq!(&EchoReady::read(&path).unwrap(), backend.ready());
    }

    #[tokio::test]
    async fn grpc_rejects_bad_authority() {
        let status = grpc_echo(LOCALHOST_ANY_PORT, "bad authority", "x")
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}
