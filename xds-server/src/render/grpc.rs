//! Proxyless gRPC renderer (kind `grpc`): a gRPC library with an xDS bootstrap asks for the
//! Listener named exactly after its target (`xds:///echo.default.svc.cluster.local:8080` asks
//! for `echo.default.svc.cluster.local:8080`) and needs an `api_listener` whose HTTP connection
//! manager uses RDS and ends with the router filter. Clusters and endpoints are the Envoy
//! renderer's.
//!
//! Listeners exist for `<host>:<port>`, `<name>.<namespace>.svc:<port>`,
//! `<name>.<namespace>:<port>` and `<vip>:<port>`; all name one route configuration,
//! `<host>:<port>`, whose virtual host answers to every one of those authorities.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_model::view::ServiceView;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::config::listener::v3 as listener;
use switchyard_protos::envoy::envoy::config::route::v3 as route;
use switchyard_protos::envoy::envoy::extensions::filters::http::router::v3::Router;
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use switchyard_protos::{TypeUrl, pack};

use super::envoy::{self as envoy_render, Flavor};
use super::{RenderOptions, ServiceResources};
use crate::snapshot::{Resource, ResourceMap};

/// Per-service gRPC resources.
#[derive(Debug)]
pub struct ServiceParts {
    /// `api_listener` listeners (with aliases).
    pub listeners: Vec<Arc<Resource>>,
    /// One route configuration per port.
    pub routes: Vec<Arc<Resource>>,
}

fn api_listener(name: &str, route_name: &str) -> listener::Listener {
    let cfg = hcm::HttpConnectionManager {
        stat_prefix: name.to_string(),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(core::ConfigSource {
                    resource_api_version: core::ApiVersion::V3 as i32,
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        core::AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                route_config_name: route_name.to_string(),
            },
        )),
        ..Default::default()
    };
    listener::Listener {
        name: name.to_string(),
        api_listener: Some(listener::ApiListener {
            api_listener: Some(pack(&cfg)),
        }),
        ..Default::default()
    }
}

/// Renders a service's gRPC listeners and routes.
pub fn service_parts(view: &ServiceView, opts: &RenderOptions) -> ServiceParts {
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    for pv in &view.ports {
        let port = pv.port.port;
        let canonical = format!("{}:{port}", view.service.hostname);
        let names = envoy_render::domains(view, port, false);
        for n in &names {
            listeners.push(Resource::new(
                TypeUrl::Listener,
                n.as_str(),
                &api_listener(n, &canonical),
            ));
        }
        let mut vh = envoy_render::virtual_host(view, pv, Flavor::Grpc, opts);
        vh.domains = envoy_render::domains(view, port, true);
        routes.push(Resource::new(
            TypeUrl::RouteConfiguration,
            canonical.as_str(),
            &route::RouteConfiguration {
                name: canonical.clone(),
                virtual_hosts: vec![vh],
                ..Default::default()
            },
        ));
    }
    ServiceParts { listeners, routes }
}

/// Scope-wide maps for gRPC clients.
pub fn scope_maps(
    services: &[(Arc<ServiceView>, Arc<ServiceResources>)],
    opts: &RenderOptions,
) -> BTreeMap<TypeUrl, Arc<ResourceMap>> {
    let mut clusters = Vec::new();
    let mut clas = Vec::new();
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    for (v, r) in services {
        let e = r.envoy.get_or_init(|| envoy_render::service_parts(v, opts));
        clusters.extend(e.plaintext_clusters.iter().cloned());
        clas.extend(e.load_assignments.iter().cloned());
        let g = r.grpc.get_or_init(|| service_parts(v, opts));
        listeners.extend(g.listeners.iter().cloned());
        routes.extend(g.routes.iter().cloned());
    }
    BTreeMap::from([
        (TypeUrl::Cluster, Arc::new(ResourceMap::new(clusters))),
        (
            TypeUrl::ClusterLoadAssignment,
            Arc::new(ResourceMap::new(clas)),
        ),
        (TypeUrl::Listener, Arc::new(ResourceMap::new(listeners))),
        (
            TypeUrl::RouteConfiguration,
            Arc::new(ResourceMap::new(routes)),
        ),
    ])
}
