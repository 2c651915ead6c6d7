//! The HTTP side: HTTP/1.1 and HTTP/2 prior knowledge (h2c) on one port, chosen per
//! connection by hyper-util's auto builder from the first bytes the client sends.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::{BACKEND_HEADER, Conn, accept_loop, identity_from_headers};

/// Longest `?delay_ms=` honoured; more is answered with 400 (a typo, not a test).
const MAX_DELAY: Duration = Duration::from_secs(300);

/// The JSON body of every HTTP echo answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpEcho {
    /// The backend's name.
    pub backend: String,
    /// The peer socket address of the connection, as the backend saw it (the proxy's
    /// address when there is one).
    pub caller: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
    /// `HTTP/1.1`, `HTTP/2` (or `HTTP/1.0`).
    pub protocol: String,
    /// Request method.
    pub method: String,
    /// Request path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The `Host` header (or the request URI's authority, as HTTP/2 sends it).
    pub host: String,
    /// `x-forwarded-client-cert` if sent, else `x-switchyard-peer-identity`, else `null`.
    pub identity: Option<String>,
    /// Request headers, lowercase names; repeated headers joined with `,`.
    pub headers: BTreeMap<String, String>,
    /// Why the request was answered with 400, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub(super) async fn serve(listener: TcpListener, name: Arc<str>) {
    accept_loop(listener, move |stream, conn| {
        let name = name.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(answer(&name, conn, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "echo HTTP connection ended with an error");
            }
        }
    })
    .await;
}

/// What the request asked for through its path and query.
#[derive(Debug, PartialEq, Eq)]
struct Ask {
    status: StatusCode,
    delay: Duration,
}

/// `/status/<code>` picks the status (200..=599); `?delay_ms=N` a pause before answering.
fn parse_ask(path: &str, query: Option<&str>) -> Result<Ask, String> {
    let mut ask = Ask {
        status: StatusCode::OK,
        delay: Duration::ZERO,
    };
    if let Some(code) = path.strip_prefix("/status/") {
        let code = code.trim_end_matches('/');
        ask.status = code
            .parse::<u16>()
            .ok()
            .filter(|c| (200..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("bad status code {code:?}: want 200..=599"))?;
    }
    for pair in query.unwrap_or_default().split('&') {
        if let Some(value) = pair.strip_prefix("delay_ms=") {
            ask.delay = value
                .parse::<u64>()
                .ok()
                .map(Duration::from_millis)
                .filter(|d| *d <= MAX_DELAY)
                .ok_or_else(|| {
                    format!(
                        "bad delay_ms {value:?}: want milliseconds up to {}",
                        MAX_DELAY.as_millis()
                    )
                })?;
        }
    }
    Ok(ask)
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

async fn answer(name: &str, conn: Conn, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut echo = describe(name, conn, &req);
    let status = match parse_ask(&echo.path, echo.query.as_deref()) {
        Ok(ask) => {
            if !ask.delay.is_zero() {
                tokio::time::sleep(ask.delay).await;
            }
            ask.status
        }
        Err(error) => {
            echo.error = Some(error);
            StatusCode::BAD_REQUEST
        }
    };
    tracing::debug!(method = %echo.method, path = %echo.path, status = status.as_u16(), "echo HTTP request");
    let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // These must not carry a body.
        Bytes::new()
    } else {
        // Serializing strings, addresses and maps of strings cannot fail.
        Bytes::from(serde_json::to_vec(&echo).unwrap_or_default())
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(name) {
        headers.insert(BACKEND_HEADER, value);
    }
    response
}

fn describe(name: &str, conn: Conn, req: &Request<Incoming>) -> HttpEcho {
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
    HttpEcho {
        backend: name.to_owned(),
        caller: conn.peer,
        local: conn.local,
        protocol: protocol_name(req.version()).to_owned(),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        host,
        identity: identity_from_headers(req.headers()),
        headers,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_delay() {
        assert_eq!(
            parse_ask("/", None),
            Ok(Ask {
                status: StatusCode::OK,
                delay: Duration::ZERO
            })
        );
        assert_eq!(
            parse_ask("/status/503", Some("x=1&delay_ms=20")),
            Ok(Ask {
                status: StatusCode::SERVICE_UNAVAILABLE,
                delay: Duration::from_millis(20)
            })
        );
        assert_eq!(
            parse_ask("/status/418/", None).map(|a| a.status.as_u16()),
            Ok(418)
        );
        assert!(parse_ask("/status/99", None).is_err());
        assert!(parse_ask("/status/abc", None).is_err());
        assert!(parse_ask("/", Some("delay_ms=-1")).is_err());
        assert!(parse_ask("/", Some("delay_ms=99999999")).is_err());
    }
}
