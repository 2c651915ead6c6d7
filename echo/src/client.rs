//! Small clients for the echo server, as tests use them through a proxy: one HTTP GET on a
//! fresh connection ([`http_get`], [`http_get_with`]) and one unary gRPC call
//! ([`grpc_echo`]). The load client ([`crate::load`]) reuses the connection types here.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderMap};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::pb::echo_client::EchoClient;
use crate::pb::{EchoReply, EchoRequest};
use crate::server::{BACKEND_HEADER, HttpEcho};

/// How long [`http_get`] and [`grpc_echo`] wait in total before giving up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which HTTP version a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HttpProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c, no upgrade).
    Http2,
}

/// Why an HTTP request from [`http_get`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer within the deadline.
    #[error("GET {url} via {addr}: timed out after {after:?}")]
    Timeout {
        /// `http://<host><path>`.
        url: String,
        /// Where the request was sent.
        addr: SocketAddr,
        /// The deadline.
        after: Duration,
    },
    /// The TCP connection could not be made.
    #[error("GET {url} via {addr}: connecting: {error}")]
    Connect {
        /// `http://<host><path>`.
        url: String,
        /// Where the request was sent.
        addr: SocketAddr,
        /// The connect error.
        error: std::io::Error,
    },
    /// The request could not be built (a bad host or path).
    #[error("GET {url}: bad request: {error}")]
    BadRequest {
        /// `http://<host><path>`.
        url: String,
        /// What was wrong.
        error: hyper::http::Error,
    },
    /// The HTTP exchange failed: handshake, sending, or reading the response.
    #[error("GET {url} via {addr}: {error}")]
    Http {
        /// `http://<host><path>`.
        url: String,
        /// Where the request was sent.
        addr: SocketAddr,
        /// The HTTP error.
        error: hyper::Error,
    },
    /// The body is not the JSON an echo backend answers with.
    #[error("response body is not an echo answer ({error}): {body:?}")]
    NotEcho {
        /// The body received.
        body: String,
        /// The JSON error.
        error: serde_json::Error,
    },
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
    pub fn echo(&self) -> Result<HttpEcho, ClientError> {
        serde_json::from_str(&self.body).map_err(|error| ClientError::NotEcho {
            body: self.body.clone(),
            error,
        })
    }
}

/// Sends `GET path` over a fresh HTTP/1.1 connection to `addr` with `Host: host` and reads
/// the whole response; gives up after [`CLIENT_TIMEOUT`].
pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<HttpResponse, ClientError> {
    http_get_with(addr, host, path, HttpProtocol::Http1).await
}

/// [`http_get`] speaking `protocol`; over HTTP/2 `host` is sent as `:authority`.
pub async fn http_get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    protocol: HttpProtocol,
) -> Result<HttpResponse, ClientError> {
    let url = format!("http://{host}{path}");
    let exchange = async {
        let mut connection = HttpConnection::connect(addr, protocol).await?;
        let request = connection.request(host, path)?;
        let response = connection.send(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, ExchangeError>(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Err(_) => Err(ClientError::Timeout {
            url,
            addr,
            after: CLIENT_TIMEOUT,
        }),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(error.into_client_error(url, addr)),
    }
}

/// What can go wrong in one exchange on an [`HttpConnection`], before the URL is attached.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    Connect(std::io::Error),
    BadRequest(hyper::http::Error),
    Http(hyper::Error),
}

impl From<hyper::Error> for ExchangeError {
    fn from(error: hyper::Error) -> Self {
        ExchangeError::Http(error)
    }
}

impl ExchangeError {
    fn into_client_error(self, url: String, addr: SocketAddr) -> ClientError {
        match self {
            ExchangeError::Connect(error) => ClientError::Connect { url, addr, error },
            ExchangeError::BadRequest(error) => ClientError::BadRequest { url, error },
            ExchangeError::Http(error) => ClientError::Http { url, addr, error },
        }
    }
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// One client connection, HTTP/1.1 or h2c; the connection task stops when this is dropped.
pub(crate) struct HttpConnection {
    sender: Sender,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for HttpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocol = match self.sender {
            Sender::Http1(_) => HttpProtocol::Http1,
            Sender::Http2(_) => HttpProtocol::Http2,
        };
        f.debug_struct("HttpConnection")
            .field("protocol", &protocol)
            .finish_non_exhaustive()
    }
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpConnection {
    pub(crate) async fn connect(
        addr: SocketAddr,
        protocol: HttpProtocol,
    ) -> Result<Self, ExchangeError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ExchangeError::Connect)?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        Ok(match protocol {
            HttpProtocol::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                let driver = tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "HTTP/1.1 client connection ended");
                    }
                });
                HttpConnection {
                    sender: Sender::Http1(sender),
                    driver,
                }
            }
            HttpProtocol::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                let driver = tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "HTTP/2 client connection ended");
                    }
                });
                HttpConnection {
                    sender: Sender::Http2(sender),
                    driver,
                }
            }
        })
    }

    /// `GET path` for `host`: a `Host` header over HTTP/1.1, `:authority` over HTTP/2.
    pub(crate) fn request(
        &self,
        host: &str,
        path: &str,
    ) -> Result<Request<Empty<Bytes>>, ExchangeError> {
        let built = match self.sender {
            Sender::Http1(_) => Request::get(path).header(HOST, host).body(Empty::new()),
            Sender::Http2(_) => Request::get(format!("http://{host}{path}"))
                .version(Version::HTTP_2)
                .body(Empty::new()),
        };
        built.map_err(ExchangeError::BadRequest)
    }

    /// Whether the connection can no longer carry requests (closed by the peer or failed).
    pub(crate) fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    pub(crate) async fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, ExchangeError> {
        Ok(match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await?;
                s.send_request(request).await?
            }
            Sender::Http2(s) => {
                s.ready().await?;
                s.send_request(request).await?
            }
        })
    }
}

/// A channel (one h2c connection, re-established when it breaks) to `addr` that sends
/// `:authority` = `authority`, with [`CLIENT_TIMEOUT`] as connect timeout and `call_timeout`,
/// if given, as the deadline of each call.
///
/// Connection failures come back as `Unavailable`, a bad address or authority as
/// `InvalidArgument`.
pub async fn grpc_channel(
    addr: SocketAddr,
    authority: &str,
    call_timeout: Option<Duration>,
) -> Result<Channel, tonic::Status> {
    let origin = format!("http://{authority}").parse().map_err(|e| {
        tonic::Status::invalid_argument(format!("bad authority {authority:?}: {e}"))
    })?;
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(format!("bad address {addr}: {e}")))?
        .origin(origin)
        .connect_timeout(CLIENT_TIMEOUT);
    if let Some(timeout) = call_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting to {addr}: {e:?}")))
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
    let channel = grpc_channel(addr, authority, Some(CLIENT_TIMEOUT)).await?;
    let reply = EchoClient::new(channel)
        .echo(EchoRequest {
            message: msg.to_owned(),
        })
        .await?;
    Ok(reply.into_inner())
}
