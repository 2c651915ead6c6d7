//! Type URLs of the resources Switchyard serves, as one closed enum.

use std::fmt;
use std::str::FromStr;

/// A resource type served over ADS. The set is closed: a request for any other type URL is
/// rejected by the server with [`UnknownTypeUrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TypeUrl {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    ClusterLoadAssignment,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    RouteConfiguration,
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
    Secret,
    /// `switchyard.workload.v1.Service`.
    Service,
    /// `switchyard.workload.v1.Workload`.
    Workload,
    /// `switchyard.workload.v1.Authorization`.
    Authorization,
}

/// A type URL that Switchyard does not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown type url {0:?}: this server serves {list}", list = TypeUrl::list())]
pub struct UnknownTypeUrl(pub String);

impl TypeUrl {
    /// Every type, in make-before-break push order: clusters before their endpoints, before
    /// the listeners that use the clusters, before the routes those listeners name; then the
    /// workload API (services before the workloads that name them) and secrets.
    pub const ALL: [TypeUrl; 8] = [
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
        TypeUrl::Listener,
        TypeUrl::RouteConfiguration,
        TypeUrl::Secret,
        TypeUrl::Service,
        TypeUrl::Workload,
        TypeUrl::Authorization,
    ];

    /// The full type URL, `type.googleapis.com/<package>.<Message>`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
            TypeUrl::Service => "type.googleapis.com/switchyard.workload.v1.Service",
            TypeUrl::Workload => "type.googleapis.com/switchyard.workload.v1.Workload",
            TypeUrl::Authorization => "type.googleapis.com/switchyard.workload.v1.Authorization",
        }
    }

    /// The short name operators type: `cds`, `eds`, `lds`, `rds`, `sds`, `service`,
    /// `workload`, `authorization`.
    pub const fn short_name(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::ClusterLoadAssignment => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::RouteConfiguration => "rds",
            TypeUrl::Secret => "sds",
            TypeUrl::Service => "service",
            TypeUrl::Workload => "workload",
            TypeUrl::Authorization => "authorization",
        }
    }

    /// Whether a State-of-the-World response must carry every subscribed resource (LDS, CDS,
    /// and Switchyard's wildcard types): absence from such a response means deletion.
    pub const fn is_full_state(self) -> bool {
        !matches!(
            self,
            TypeUrl::ClusterLoadAssignment | TypeUrl::RouteConfiguration | TypeUrl::Secret
        )
    }

    /// Parses a full type URL or a short name.
    pub fn parse(s: &str) -> Result<Self, UnknownTypeUrl> {
        TypeUrl::ALL
            .into_iter()
            .find(|t| t.as_str() == s || t.short_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownTypeUrl(s.to_string()))
    }

    fn list() -> String {
        TypeUrl::ALL
            .iter()
            .map(|t| t.short_name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TypeUrl {
    type Err = UnknownTypeUrl;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TypeUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Name;

    #[test]
    fn type_urls_match_generated_message_names() {
        use crate::envoy::envoy::config;
        use crate::switchyard::workload::v1 as wl;
        assert_eq!(
            TypeUrl::Cluster.as_str(),
            config::cluster::v3::Cluster::type_url()
        );
        assert_eq!(
            TypeUrl::ClusterLoadAssignment.as_str(),
            config::endpoint::v3::ClusterLoadAssignment::type_url()
        );
        assert_eq!(
            TypeUrl::Listener.as_str(),
            config::listener::v3::Listener::type_url()
        );
        assert_eq!(
            TypeUrl::RouteConfiguration.as_str(),
            config::route::v3::RouteConfiguration::type_url()
        );
        assert_eq!(
            TypeUrl::Secret.as_str(),
            crate::envoy::envoy::extensions::transport_sockets::tls::v3::Secret::type_url()
        );
        assert_eq!(TypeUrl::Workload.as_str(), wl::Workload::type_url());
        assert_eq!(TypeUrl::Service.as_str(), wl::Service::type_url());
        assert_eq!(
            TypeUrl::Authorization.as_str(),
            wl::Authorization::type_url()
        );
    }

    #[test]
    fn parse_accepts_full_and_short_and_rejects_others() {
        for t in TypeUrl::ALL {
            assert_eq!(TypeUrl::parse(t.as_str()), Ok(t));
            assert_eq!(TypeUrl::parse(t.short_name()), Ok(t));
        }
        let err = TypeUrl::parse("type.googleapis.com/envoy.config.core.v3.Nope").unwrap_err();
        assert!(err.to_string().contains("unknown type url"), "{err}");
        assert!(err.to_string().contains("cds"), "{err}");
    }
}
