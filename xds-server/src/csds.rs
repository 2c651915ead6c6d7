//! CSDS (`envoy.service.status.v3.ClientStatusDiscoveryService`): what each connected proxy
//! was sent and what it said about it, for standard xDS tooling.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::{Stream, StreamExt};
use switchyard_protos::envoy::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use switchyard_protos::envoy::envoy::config::core::v3::Node;
use switchyard_protos::envoy::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
    client_config::GenericXdsConfig,
    client_status_discovery_service_server::ClientStatusDiscoveryService,
};
use switchyard_protos::envoy::envoy::r#type::matcher::v3::{
    NodeMatcher, string_matcher::MatchPattern,
};
use switchyard_protos::wkt;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{Connection, SnapshotCache, SyncState};

/// The CSDS gRPC service.
#[derive(Debug, Clone)]
pub struct CsdsService {
    cache: Arc<SnapshotCache>,
}

impl CsdsService {
    /// A service over `cache`.
    pub fn new(cache: Arc<SnapshotCache>) -> Self {
        CsdsService { cache }
    }
}

fn timestamp(t: SystemTime) -> wkt::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    wkt::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn matches(m: &NodeMatcher, id: &str) -> Result<bool, Status> {
    if !m.node_metadatas.is_empty() {
        return Err(Status::invalid_argument(
            "csds: node_metadatas matchers are not supported; match on node_id",
        ));
    }
    let Some(sm) = &m.node_id else {
        return Ok(true);
    };
    let (id, ic) = if sm.ignore_case {
        (id.to_ascii_lowercase(), true)
    } else {
        (id.to_string(), false)
    };
    let norm = |s: &str| {
        if ic {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    Ok(match &sm.match_pattern {
        None => true,
        Some(MatchPattern::Exact(v)) => id == norm(v),
        Some(MatchPattern::Prefix(v)) => id.starts_with(&norm(v)),
        Some(MatchPattern::Suffix(v)) => id.ends_with(&norm(v)),
        Some(MatchPattern::Contains(v)) => id.contains(&norm(v)),
        Some(_) => {
            return Err(Status::invalid_argument(
                "csds: only exact, prefix, suffix and contains node_id matchers are supported",
            ));
        }
    })
}

/// The CSDS view of one connection.
pub fn client_config(conn: &Connection, include_contents: bool) -> ClientConfig {
    let snapshot = conn.snapshot();
    let status = conn.status();
    let mut configs = Vec::new();
    for (t, st) in &status {
        let Some(ts) = snapshot.get(*t) else {
            continue;
        };
        let wildcard = st.subscription.iter().any(|s| s == "*");
        let (config_status, client_status) = match st.state() {
            SyncState::Synced => (ConfigStatus::Synced, ClientResourceStatus::Acked),
            SyncState::Stale => (ConfigStatus::Stale, ClientResourceStatus::Requested),
            SyncState::Nacked => (ConfigStatus::Error, ClientResourceStatus::Nacked),
            SyncState::NotSent => (ConfigStatus::NotSent, ClientResourceStatus::Requested),
        };
        for r in ts.iter() {
            if !wildcard && !st.subscription.iter().any(|n| **n == *r.name) {
                continue;
            }
            configs.push(GenericXdsConfig {
                type_url: t.as_str().to_string(),
                name: r.name.to_string(),
                version_info: r.version_string(),
                xds_config: include_contents.then(|| r.to_any()),
                last_updated: st.sent_at.map(timestamp),
                config_status: config_status as i32,
                client_status: client_status as i32,
                error_state: st
                    .nack
                    .as_ref()
                    .filter(|_| st.nacked)
                    .map(|n| UpdateFailureState {
                        details: n.message.clone(),
                        version_info: n.version.clone(),
                        last_update_attempt: Some(timestamp(n.at)),
                        ..Default::default()
                    }),
                is_static_resource: false,
            });
        }
    }
    ClientConfig {
        node: Some(Node {
            id: conn.proxy.node_id.clone(),
            ..Default::default()
        }),
        generic_xds_configs: configs,
        ..Default::default()
    }
}

fn answer(
    cache: &SnapshotCache,
    req: &ClientStatusRequest,
) -> Result<ClientStatusResponse, Status> {
    let mut config = Vec::new();
    for conn in cache.connections() {
        let mut ok = true;
        for m in &req.node_matchers {
            ok &= matches(m, &conn.proxy.node_id)?;
        }
        if ok {
            config.push(client_config(&conn, !req.exclude_resource_contents));
        }
    }
    Ok(ClientStatusResponse { config })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for CsdsService {
    type StreamClientStatusStream = BoxStream<ClientStatusResponse>;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let cache = self.cache.clone();
        let out = request.into_inner().map(move |req| match req {
            Ok(r) => answer(&cache, &r),
            Err(s) => Err(s),
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        answer(&self.cache, request.get_ref()).map(Response::new)
    }
}
