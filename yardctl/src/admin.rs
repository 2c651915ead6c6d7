//! The control plane's admin API (port 15014), as yardctl talks to it.

use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// Longest wait for one admin request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/1.1 request to the admin API; returns status and body.
pub async fn http(admin: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let unreachable = |reason: String| {
        anyhow::anyhow!(
            "cannot reach the admin API at {admin}: {reason} (is the control plane running, and is this its admin address, port 15014 by default?)"
        )
    };
    let stream =
        match tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(admin)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {REQUEST_TIMEOUT:?}"
                )));
            }
        };
    let exchange = async {
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, admin)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("{method} http://{admin}{path}"))
}

/// GET `path`; anything but 200 is an error carrying the server's answer.
pub async fn get(admin: &str, path: &str) -> anyhow::Result<String> {
    let (code, body) = http(admin, "GET", path).await?;
    anyhow::ensure!(
        code == 200,
        "GET http://{admin}{path}: {code}: {}",
        body.trim()
    );
    Ok(body)
}

/// GET `path` as JSON.
pub async fn get_json(admin: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let body = get(admin, path).await?;
    serde_json::from_str(&body)
        .with_context(|| format!("GET http://{admin}{path}: the answer is not JSON: {body}"))
}
