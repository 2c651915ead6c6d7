//! Admin HTTP (port 15014): `/healthz`, `/readyz`, `/metrics`, `/debug/syncz`,
//! `/debug/config_dump?proxy=<node id>`, `/debug/sources`, and, only when `test_hooks` is on,
//! `/debug/test/*` for provoking NACKs and stream resets in tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_protos::TypeUrl;

use crate::ads::proxy_from_node;
use crate::cache::{Connection, SnapshotCache, SyncState, TypeStatus};
use crate::render::ProxyRenderState;
use crate::snapshot::Snapshot;
use crate::state::MeshStatus;

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The snapshot cache.
    pub cache: Arc<SnapshotCache>,
    /// Source/mesh status.
    pub status: Arc<ArcSwap<MeshStatus>>,
    /// Metrics registry.
    pub registry: Arc<Registry>,
    /// The CA.
    pub trust: Arc<crate::trust::Trust>,
    /// Whether `/debug/test/*` is served.
    pub test_hooks: bool,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/sources", get(sources))
        .route("/debug/ca", get(ca_status))
        .route("/debug/mode", get(mode))
        .route("/ca/rotate-root", post(rotate_root));
    if state.test_hooks {
        r = r
            .route("/debug/test/poison", post(poison).delete(unpoison))
            .route("/debug/test/disconnect", post(disconnect));
    }
    r.with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let st = s.status.load_full();
    if st.loaded {
        let mut body = format!("ready: generation {}\n", st.generation);
        for p in &st.problems {
            let _ = writeln!(body, "problem (serving last good mesh): {p}");
        }
        (StatusCode::OK, body).into_response()
    } else {
        let mut body = String::from("not ready: no good mesh loaded yet\n");
        for p in &st.problems {
            let _ = writeln!(body, "problem: {p}");
        }
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ModeQuery {
    namespace: Option<String>,
    pod: Option<String>,
}

/// The effective dataplane mode of a namespace or pod, where it comes from, in words.
async fn mode(State(s): State<AdminState>, Query(q): Query<ModeQuery>) -> Response {
    use switchyard_model::{DATAPLANE_MODE_LABEL, ModeSource};
    let Some(ns) = q.namespace else {
        return (
            StatusCode::BAD_REQUEST,
            "missing ?namespace=<name>[&pod=<name>]\n",
        )
            .into_response();
    };
    let generation = s.cache.generation();
    let mesh = generation.mesh();
    let Some((mode, source)) = mesh.explain_mode(&ns, q.pod.as_deref()) else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no pod {}/{} in the mesh (generation {})\n",
                ns,
                q.pod.unwrap_or_default(),
                mesh.generation
            ),
        )
            .into_response();
    };
    let (ns_mode, ns_source) = mesh
        .explain_mode(&ns, None)
        .unwrap_or((mesh.config.default_mode, ModeSource::Default));
    let ns_why = match ns_source {
        ModeSource::NamespaceLabel => {
            format!("namespace {ns} has label {DATAPLANE_MODE_LABEL}={ns_mode}")
        }
        _ => format!(
            "namespace {ns} has no {DATAPLANE_MODE_LABEL} label, so the control plane default applies (default_mode={ns_mode})"
        ),
    };
    let why = match (source, &q.pod) {
        (ModeSource::PodLabel, Some(pod)) => format!(
            "pod {ns}/{pod} has label {DATAPLANE_MODE_LABEL}={mode}, which overrides its namespace ({ns_why})"
        ),
        (_, Some(pod)) => format!("pod {ns}/{pod} has no {DATAPLANE_MODE_LABEL} label; {ns_why}"),
        (_, None) => ns_why,
    };
    axum::Json(json!({
        "namespace": ns,
        "pod": q.pod,
        "mode": mode.as_str(),
        "source": source,
        "reason": why,
        "generation": mesh.generation,
    }))
    .into_response()
}

/// Root rotation phase, the roots in the bundle and which proxies still lack it.
async fn ca_status(State(s): State<AdminState>) -> Response {
    axum::Json(s.trust.status(&s.cache)).into_response()
}

/// Starts a root rotation; the answer is the new status (409 when one is in progress or the
/// CA is a plug-in).
async fn rotate_root(State(s): State<AdminState>) -> Response {
    match s.trust.rotate_root() {
        Ok(()) => axum::Json(s.trust.status(&s.cache)).into_response(),
        Err(e) => (
            axum::http::StatusCode::CONFLICT,
            format!("cannot rotate the root: {e}\n"),
        )
            .into_response(),
    }
}

async fn sources(State(s): State<AdminState>) -> Response {
    axum::Json(s.status.load_full().as_ref().clone()).into_response()
}

/// One type's row in `/debug/syncz`.
#[derive(Debug, Serialize)]
pub struct TypeSync {
    /// State.
    pub state: SyncState,
    /// Latest sent version.
    pub sent_version: Option<String>,
    /// Latest ACKed version.
    pub acked_version: Option<String>,
    /// Latest nonce.
    pub nonce: Option<String>,
    /// Resources in the latest response.
    pub resources: usize,
    /// Subscription.
    pub subscription: Vec<String>,
    /// Latest NACK message.
    pub last_nack: Option<String>,
    /// Version that was NACKed.
    pub nacked_version: Option<String>,
}

/// One proxy's row in `/debug/syncz`.
#[derive(Debug, Serialize)]
pub struct ProxySync {
    /// node.id.
    pub node: String,
    /// Kind.
    pub kind: String,
    /// `sotw` or `delta`.
    pub variant: String,
    /// Stream id.
    pub stream: u64,
    /// Peer.
    pub peer: Option<String>,
    /// Seconds since the epoch.
    pub connected_at: f64,
    /// Generation of its latest snapshot.
    pub generation: u64,
    /// Per type.
    pub types: BTreeMap<String, TypeSync>,
}

fn type_sync(st: &TypeStatus) -> TypeSync {
    TypeSync {
        state: st.state(),
        sent_version: st.sent_version.clone(),
        acked_version: st.acked_version.clone(),
        nonce: st.sent_nonce.clone(),
        resources: st.sent_resources,
        subscription: st.subscription.clone(),
        last_nack: st.nack.as_ref().map(|n| n.message.clone()),
        nacked_version: st.nack.as_ref().map(|n| n.version.clone()),
    }
}

/// The syncz rows of every connection.
pub fn syncz_rows(cache: &SnapshotCache) -> Vec<ProxySync> {
    cache
        .connections()
        .iter()
        .map(|c: &Arc<Connection>| ProxySync {
            node: c.proxy.node_id.clone(),
            kind: c.proxy.kind.to_string(),
            variant: format!("{:?}", c.variant).to_ascii_lowercase(),
            stream: c.id,
            peer: c.peer.map(|p| p.to_string()),
            connected_at: c
                .connected_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
            generation: c.snapshot().generation,
            types: c
                .status()
                .iter()
                .map(|(t, st)| (t.short_name().to_string(), type_sync(st)))
                .collect(),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct SynczQuery {
    format: Option<String>,
}

async fn syncz(State(s): State<AdminState>, Query(q): Query<SynczQuery>) -> Response {
    let rows = syncz_rows(&s.cache);
    if q.format.as_deref() == Some("text") {
        let mut out = format!(
            "{:<60} {:<8} {:<6} {:<14} {:<10} {:<10}\n",
            "NODE", "KIND", "ADS", "TYPE", "STATE", "ACKED"
        );
        for r in &rows {
            for (t, ts) in &r.types {
                let state = serde_json::to_value(ts.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:<60} {:<8} {:<6} {:<14} {:<10} {:<10}{}",
                    r.node,
                    r.kind,
                    r.variant,
                    t,
                    state,
                    ts.acked_version.as_deref().unwrap_or("-"),
                    ts.last_nack
                        .as_deref()
                        .map(|m| format!("  last NACK: {m}"))
                        .unwrap_or_default()
                );
            }
        }
        return out.into_response();
    }
    axum::Json(rows).into_response()
}

#[derive(Debug, Deserialize)]
struct ProxyQuery {
    proxy: Option<String>,
    r#type: Option<String>,
}

/// Decoded JSON of a snapshot, per type short name.
pub fn snapshot_json(snapshot: &Snapshot, only: Option<TypeUrl>) -> Value {
    let mut types = serde_json::Map::new();
    for (t, ts) in snapshot.types() {
        if only.is_some_and(|o| o != t) {
            continue;
        }
        let list: Vec<Value> = ts
            .iter()
            .map(|r| {
                let body = switchyard_protos::json::to_json(t.as_str(), &r.bytes)
                    .unwrap_or_else(|e| json!({ "error": e.to_string() }));
                json!({ "name": &*r.name, "version": r.version_string(), "resource": body })
            })
            .collect();
        types.insert(t.short_name().to_string(), Value::Array(list));
    }
    Value::Object(types)
}

async fn config_dump(State(s): State<AdminState>, Query(q): Query<ProxyQuery>) -> Response {
    let Some(node) = q.proxy else {
        return (StatusCode::BAD_REQUEST, "missing ?proxy=<node id>\n").into_response();
    };
    let only = match q.r#type.as_deref().map(TypeUrl::parse).transpose() {
        Ok(t) => t,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let (snapshot, connected) = match s.cache.connection(&node) {
        Some(c) => (c.snapshot(), true),
        None => {
            // Not connected: show what it would be sent, so operators can check a proxy
            // before it starts.
            let id = switchyard_protos::envoy::envoy::config::core::v3::Node {
                id: node.clone(),
                ..Default::default()
            };
            match proxy_from_node(Some(&id)) {
                Ok(p) => {
                    let g = s.cache.generation();
                    (
                        Arc::new(g.snapshot(&p, &mut ProxyRenderState::default())),
                        false,
                    )
                }
                Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
            }
        }
    };
    axum::Json(json!({
        "node": node,
        "connected": connected,
        "generation": snapshot.generation,
        "resources": snapshot_json(&snapshot, only),
    }))
    .into_response()
}

async fn poison(State(s): State<AdminState>, Query(q): Query<ProxyQuery>) -> Response {
    let (Some(node), Some(t)) = (q.proxy, q.r#type) else {
        return (
            StatusCode::BAD_REQUEST,
            "need ?proxy=<node id>&type=<cds|lds|...>\n",
        )
            .into_response();
    };
    match TypeUrl::parse(&t) {
        Ok(t) => {
            s.cache.set_poison(&node, Some(t));
            format!("poisoned {} for {node}\n", t.short_name()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn unpoison(State(s): State<AdminState>, Query(q): Query<ProxyQuery>) -> Response {
    let Some(node) = q.proxy else {
        return (StatusCode::BAD_REQUEST, "need ?proxy=<node id>\n").into_response();
    };
    s.cache.set_poison(&node, None);
    format!("cleared poison for {node}\n").into_response()
}

async fn disconnect(State(s): State<AdminState>, Query(q): Query<ProxyQuery>) -> Response {
    let Some(node) = q.proxy else {
        return (StatusCode::BAD_REQUEST, "need ?proxy=<node id>\n").into_response();
    };
    let mut n = 0;
    for c in s
        .cache
        .connections()
        .iter()
        .filter(|c| c.proxy.node_id == node)
    {
        c.cancel.cancel();
        n += 1;
    }
    format!("closed {n} stream(s) of {node}\n").into_response()
}
