//! Snapshot consistency: every name a resource refers to is in the snapshot.

use std::collections::BTreeSet;

use prost::Message;
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::cluster::v3::Cluster;
use switchyard_protos::envoy::envoy::config::listener::v3::{Filter, Listener, filter};
use switchyard_protos::envoy::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};

use crate::snapshot::{ConsistencyError, Snapshot};

fn decode<M: Message + Default>(name: &str, bytes: &[u8]) -> Result<M, ConsistencyError> {
    M::decode(bytes).map_err(|e| ConsistencyError::Decode {
        name: name.to_string(),
        message: e.to_string(),
    })
}

fn hcm_rds(any: &switchyard_protos::wkt::Any) -> Option<String> {
    if !any.type_url.ends_with("HttpConnectionManager") {
        return None;
    }
    let h = HttpConnectionManager::decode(any.value.as_slice()).ok()?;
    match h.route_specifier? {
        RouteSpecifier::Rds(r) => Some(r.route_config_name),
        _ => None,
    }
}

fn filter_rds(f: &Filter) -> Option<String> {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => hcm_rds(any),
        _ => None,
    }
}

/// See [`Snapshot::check_consistency`].
pub fn consistency(s: &Snapshot) -> Result<(), ConsistencyError> {
    let names = |t: TypeUrl| -> BTreeSet<String> {
        s.get(t)
            .map(|ts| ts.iter().map(|r| r.name.to_string()).collect())
            .unwrap_or_default()
    };
    let eds = names(TypeUrl::ClusterLoadAssignment);
    let rds = names(TypeUrl::RouteConfiguration);
    let cds = names(TypeUrl::Cluster);
    if let Some(ts) = s.get(TypeUrl::Cluster) {
        for r in ts.iter() {
            let c: Cluster = decode(&r.name, &r.bytes)?;
            if let Some(cfg) = c.eds_cluster_config {
                let want = if cfg.service_name.is_empty() {
                    c.name.clone()
                } else {
                    cfg.service_name
                };
                if !eds.contains(&want) {
                    return Err(ConsistencyError::MissingEndpoints {
                        cluster: c.name,
                        eds: want,
                    });
                }
            }
        }
    }
    if let Some(ts) = s.get(TypeUrl::Listener) {
        for r in ts.iter() {
            let l: Listener = decode(&r.name, &r.bytes)?;
            let mut used: Vec<String> = l
                .filter_chains
                .iter()
                .chain(l.default_filter_chain.iter())
                .flat_map(|fc| fc.filters.iter().filter_map(filter_rds))
                .collect();
            if let Some(api) = l
                .api_listener
                .as_ref()
                .and_then(|a| a.api_listener.as_ref())
            {
                used.extend(hcm_rds(api));
            }
            for route in used {
                if !rds.contains(&route) {
                    return Err(ConsistencyError::MissingRoute {
                        listener: l.name.clone(),
                        route,
                    });
                }
            }
        }
    }
    if let Some(ts) = s.get(TypeUrl::RouteConfiguration) {
        for r in ts.iter() {
            let rc: RouteConfiguration = decode(&r.name, &r.bytes)?;
            for vh in &rc.virtual_hosts {
                for rt in &vh.routes {
                    let Some(route::Action::Route(a)) = &rt.action else {
                        continue;
                    };
                    let targets: Vec<String> = match &a.cluster_specifier {
                        Some(route_action::ClusterSpecifier::Cluster(c)) => vec![c.clone()],
                        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                            w.clusters.iter().map(|c| c.name.clone()).collect()
                        }
                        _ => Vec::new(),
                    };
                    for c in targets {
                        if !cds.contains(&c) {
                            return Err(ConsistencyError::MissingCluster {
                                route: rc.name.clone(),
                                cluster: c,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
