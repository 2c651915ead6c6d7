//! The control plane's admin API (port 15014), as yardctl talks to it.

use std::time::Duration;

use anyhow::Context;

/// Longest wait for one admin request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/1.1 request to the admin API; returns status and body.
pub async fn http(admin: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = tokio::net::lookup_host(admin)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("the admin address {admin} is not host:port"))?;
    switchyard_local_cluster::http::request(addr, method, path, REQUEST_TIMEOUT)
        .await
        .map_err(|reason| {
            anyhow::anyhow!(
                "cannot reach the admin API at {admin} ({method} {path}): {reason} (is the control plane running, and is this its admin address, port 15014 by default?)"
            )
        })
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
