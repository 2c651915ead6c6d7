//! A whole configuration: listeners, route configurations, clusters and endpoints, immutable
//! once assembled, shared as `Arc<SidecarConfig>`.
//!
//! [`Resources`] is what the follower accumulates from xDS (converted, per type);
//! [`SidecarConfig::assemble`] turns it into a snapshot: endpoints resolved against their
//! clusters (which are reached over HBONE, with which identities), and the consistency check
//! run (go-control-plane's rule, from the client side: every RDS name a listener uses exists,
//! every cluster a route or TCP proxy uses exists, every EDS cluster has its — possibly
//! empty — assignment).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::cluster::{Cluster, Discovery};
use super::endpoint::{Endpoints, LoadAssignment};
use super::listener::{
    Direction, FilterChain, Handler, HttpHandler, InboundPort, Listener, RouteSource, TcpProxy,
    TransportProtocol,
};
use super::route::RouteConfig;

/// Converted resources, by type and name. The follower is its only writer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// LDS, by name.
    pub listeners: BTreeMap<String, Arc<Listener>>,
    /// RDS, by name.
    pub route_configs: BTreeMap<String, Arc<RouteConfig>>,
    /// CDS, by name.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// EDS, by service name.
    pub load_assignments: BTreeMap<String, Arc<LoadAssignment>>,
}

impl Resources {
    /// The EDS names the clusters need.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds_name())
            .map(str::to_string)
            .collect()
    }

    /// The RDS names the listeners need.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.route_config_names())
            .map(str::to_string)
            .collect()
    }
}

/// Why a snapshot is not (yet) consistent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Inconsistency {
    /// A listener's HTTP chain names a route configuration that has not arrived.
    MissingRouteConfig {
        /// Listener.
        listener: String,
        /// RDS name.
        route_config: String,
    },
    /// A route or TCP proxy names a cluster that CDS does not have.
    UnknownCluster {
        /// Who refers to it (`route configuration "8080"`, `listener "outbound"`).
        referrer: String,
        /// Cluster name.
        cluster: String,
    },
    /// An EDS cluster's assignment has not arrived.
    MissingEndpoints {
        /// Cluster.
        cluster: String,
        /// EDS service name.
        service_name: String,
    },
    /// Several listeners claim the same capture.
    ConflictingListeners {
        /// Their names.
        names: Vec<String>,
    },
}

impl fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inconsistency::MissingRouteConfig {
                listener,
                route_config,
            } => write!(
                f,
                "listener {listener:?} uses route configuration {route_config:?}, which has not arrived"
            ),
            Inconsistency::UnknownCluster { referrer, cluster } => {
                write!(
                    f,
                    "{referrer} uses cluster {cluster:?}, which CDS does not have"
                )
            }
            Inconsistency::MissingEndpoints {
                cluster,
                service_name,
            } => write!(
                f,
                "cluster {cluster:?} has no endpoint assignment {service_name:?} yet"
            ),
            Inconsistency::ConflictingListeners { names } => {
                write!(f, "listeners {names:?} serve the same capture")
            }
        }
    }
}

/// Where a captured outbound connection goes.
#[derive(Debug, Clone, Copy)]
pub enum Outbound<'a> {
    /// HTTP: route with `routes` (`None` when the route configuration is missing).
    Http {
        /// The chain.
        chain: &'a FilterChain,
        /// Its HTTP handling.
        http: &'a HttpHandler,
        /// The route configuration.
        routes: Option<&'a Arc<RouteConfig>>,
    },
    /// Opaque TCP to a service's cluster (matched on VIP and port).
    Tcp {
        /// The chain.
        chain: &'a FilterChain,
        /// The proxying.
        proxy: &'a TcpProxy,
    },
    /// Opaque TCP to the original destination.
    Passthrough {
        /// The chain.
        chain: &'a FilterChain,
        /// The proxying (its cluster is ORIGINAL_DST).
        proxy: &'a TcpProxy,
    },
}

/// A complete configuration snapshot. Immutable; publish and share it as
/// `Arc<SidecarConfig>`.
#[derive(Debug, Clone, Default)]
pub struct SidecarConfig {
    version: u64,
    resources: Resources,
    endpoints: BTreeMap<String, Arc<Endpoints>>,
    outbound: Option<Arc<Listener>>,
    inbound: Option<Arc<Listener>>,
    problems: Vec<Inconsistency>,
}

impl SidecarConfig {
    /// Assembles a snapshot numbered `version` from `resources`: resolves endpoints and runs
    /// the consistency check.
    pub fn assemble(resources: &Resources, version: u64) -> Self {
        let mut problems = BTreeSet::new();
        let mut endpoints = BTreeMap::new();
        for (name, c) in &resources.clusters {
            let assignment = match &c.discovery {
                Discovery::Eds { service_name } => {
                    match resources.load_assignments.get(service_name) {
                        Some(a) => a,
                        None => {
                            problems.insert(Inconsistency::MissingEndpoints {
                                cluster: name.clone(),
                                service_name: service_name.clone(),
                            });
                            continue;
                        }
                    }
                }
                Discovery::Static(a) => a,
                Discovery::OriginalDst => continue,
            };
            endpoints.insert(name.clone(), Arc::new(assignment.resolve(c)));
        }
        let mut by_direction = |d: Direction| {
            let found: Vec<&Arc<Listener>> = resources
                .listeners
                .values()
                .filter(|l| l.direction == d)
                .collect();
            if found.len() > 1 {
                problems.insert(Inconsistency::ConflictingListeners {
                    names: found.iter().map(|l| l.name.clone()).collect(),
                });
            }
            found.first().map(|l| Arc::clone(l))
        };
        let outbound = by_direction(Direction::Outbound);
        let inbound = by_direction(Direction::Inbound);
        let known = |c: &str| resources.clusters.contains_key(c);
        for l in resources.listeners.values() {
            for chain in l.all_chains() {
                match &chain.handler {
                    Handler::Tcp(t) if !known(&t.cluster) => {
                        problems.insert(Inconsistency::UnknownCluster {
                            referrer: format!("listener {:?}", l.name),
                            cluster: t.cluster.clone(),
                        });
                    }
                    Handler::Tcp(_) => {}
                    Handler::Http(h) => match &h.routes {
                        RouteSource::Rds(name) if !resources.route_configs.contains_key(name) => {
                            problems.insert(Inconsistency::MissingRouteConfig {
                                listener: l.name.clone(),
                                route_config: name.clone(),
                            });
                        }
                        RouteSource::Rds(_) => {}
                        RouteSource::Inline(rc) => {
                            for c in rc.clusters().filter(|c| !known(c)) {
                                problems.insert(Inconsistency::UnknownCluster {
                                    referrer: format!(
                                        "listener {:?} route configuration {:?}",
                                        l.name, rc.name
                                    ),
                                    cluster: c.to_string(),
                                });
                            }
                        }
                    },
                }
            }
        }
        for rc in resources.route_configs.values() {
            for c in rc.clusters().filter(|c| !known(c)) {
                problems.insert(Inconsistency::UnknownCluster {
                    referrer: format!("route configuration {:?}", rc.name),
                    cluster: c.to_string(),
                });
            }
        }
        SidecarConfig {
            version,
            resources: resources.clone(),
            endpoints,
            outbound,
            inbound,
            problems: problems.into_iter().collect(),
        }
    }

    /// The follower's publication number (1 for the first snapshot; 0 for the empty one).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the snapshot is consistent; otherwise what is missing.
    pub fn check(&self) -> Result<(), &[Inconsistency]> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(&self.problems)
        }
    }

    /// What the consistency check found (empty when consistent).
    pub fn problems(&self) -> &[Inconsistency] {
        &self.problems
    }

    /// The resources the snapshot was assembled from.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Listeners by name.
    pub fn listeners(&self) -> &BTreeMap<String, Arc<Listener>> {
        &self.resources.listeners
    }

    /// The outbound capture listener.
    pub fn outbound_listener(&self) -> Option<&Arc<Listener>> {
        self.outbound.as_ref()
    }

    /// The inbound capture listener.
    pub fn inbound_listener(&self) -> Option<&Arc<Listener>> {
        self.inbound.as_ref()
    }

    /// Route configurations (RDS) by name.
    pub fn route_configs(&self) -> &BTreeMap<String, Arc<RouteConfig>> {
        &self.resources.route_configs
    }

    /// One route configuration.
    pub fn route_config(&self, name: &str) -> Option<&Arc<RouteConfig>> {
        self.resources.route_configs.get(name)
    }

    /// Clusters by name.
    pub fn clusters(&self) -> &BTreeMap<String, Arc<Cluster>> {
        &self.resources.clusters
    }

    /// One cluster.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.resources.clusters.get(name)
    }

    /// A cluster's endpoints with their transports (EDS and STATIC clusters).
    pub fn endpoints(&self, cluster: &str) -> Option<&Arc<Endpoints>> {
        self.endpoints.get(cluster)
    }

    /// Where a captured outbound connection to `dst` goes.
    pub fn outbound(&self, dst: SocketAddr) -> Option<Outbound<'_>> {
        let chain = self
            .outbound
            .as_ref()?
            .select(dst, TransportProtocol::RawBuffer)?;
        Some(self.outbound_of(chain))
    }

    /// What the outbound listener does with clients using it as an explicit HTTP proxy.
    pub fn explicit_proxy(&self) -> Option<Outbound<'_>> {
        let chain = self.outbound.as_ref()?.explicit_chain()?;
        Some(self.outbound_of(chain))
    }

    fn outbound_of<'a>(&'a self, chain: &'a FilterChain) -> Outbound<'a> {
        match &chain.handler {
            Handler::Http(http) => Outbound::Http {
                chain,
                http,
                routes: match &http.routes {
                    RouteSource::Rds(n) => self.route_config(n),
                    RouteSource::Inline(rc) => Some(rc),
                },
            },
            Handler::Tcp(proxy)
                if self
                    .cluster(&proxy.cluster)
                    .is_some_and(|c| c.is_passthrough()) =>
            {
                Outbound::Passthrough { chain, proxy }
            }
            Handler::Tcp(proxy) => Outbound::Tcp { chain, proxy },
        }
    }

    /// The inbound handling of `port`.
    pub fn inbound(&self, port: u16) -> Option<&InboundPort> {
        self.inbound.as_ref()?.inbound_port(port)
    }
}

#[cfg(test)]
mod tests;
