//! A **fake** Kubernetes API server — no real one runs on these machines — answering only
//! TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`) the way the real one does:
//! `status.authenticated`, `status.user` (username `system:serviceaccount:<ns>:<sa>`, the
//! node in `extra["authentication.kubernetes.io/node-name"]`), `status.audiences`, or
//! `authenticated: false` with an error for unknown tokens and audience mismatches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

/// What the fake knows about one token.
#[derive(Debug, Clone)]
pub struct KnownToken {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Node of the pod the token is bound to.
    pub node: Option<String>,
    /// Audiences the token was issued for.
    pub audiences: Vec<String>,
}

type Tokens = Arc<Mutex<HashMap<String, KnownToken>>>;

/// A running fake API server.
#[derive(Debug)]
pub struct FakeKubeApi {
    addr: SocketAddr,
    tokens: Tokens,
    reviews: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKubeApi {
    /// Starts on a loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let tokens: Tokens = Arc::default();
        let reviews = Arc::new(Mutex::new(0u64));
        let app = axum::Router::new()
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(review))
            .with_state((tokens.clone(), reviews.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeKubeApi {
            addr,
            tokens,
            reviews,
            task,
        })
    }

    /// Its URL (for the `kube_api` config key).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes `token` a valid token of `t`.
    pub fn add_token(&self, token: &str, t: KnownToken) {
        if let Ok(mut m) = self.tokens.lock() {
            m.insert(token.to_string(), t);
        }
    }

    /// TokenReviews answered so far.
    pub fn reviews(&self) -> u64 {
        self.reviews.lock().map(|n| *n).unwrap_or(0)
    }
}

async fn review(
    State((tokens, reviews)): State<(Tokens, Arc<Mutex<u64>>)>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Ok(mut n) = reviews.lock() {
        *n += 1;
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let known = tokens.lock().ok().and_then(|m| m.get(token).cloned());
    let status = match known {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(k) if !wanted.is_empty() && !wanted.iter().any(|w| k.audiences.contains(w)) => json!({
            "authenticated": false,
            "error": format!("[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]", k.audiences, wanted),
        }),
        Some(k) => {
            let mut extra = serde_json::Map::new();
            if let Some(node) = &k.node {
                extra.insert(
                    "authentication.kubernetes.io/node-name".into(),
                    json!([node]),
                );
            }
            json!({
                "authenticated": true,
                "user": {
                    "username": format!("system:serviceaccount:{}:{}", k.namespace, k.service_account),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", k.namespace), "system:authenticated"],
                    "extra": extra,
                },
                "audiences": if wanted.is_empty() { k.audiences.clone() } else { wanted },
            })
        }
    };
    Json(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": body["spec"].clone(),
        "status": status,
    }))
}
