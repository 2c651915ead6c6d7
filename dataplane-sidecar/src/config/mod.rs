//! The sidecar's configuration: domain types for what the proxy needs, converted from the
//! Envoy xDS resources the control plane renders for proxies of kind `sidecar` (the same
//! resources a stock Envoy gets), and the follower that keeps a snapshot of them current.
//!
//! * [`listener`], [`route`], [`cluster`], [`endpoint`]: one module per resource type, each
//!   with its domain types and a conversion from the wire type. Wire types stop here: nothing
//!   outside this module sees a `pb::...` type.
//! * [`snapshot`]: [`SidecarConfig`], a whole consistent configuration, immutable and shared
//!   as `Arc`.
//! * [`follow`]: the follower task (the single writer) and [`ConfigReader`] (the readers).
//! * [`node`]: the xDS node the sidecar presents.
//!
//! Conversion policy: fields that change nothing about where or how traffic goes (names,
//! stats prefixes, metadata, access logs, tracing, buffer tuning) are ignored; fields with
//! semantics the sidecar cannot honour are an error naming the field ([`ConvertError`]), so
//! the resource is NACKed instead of silently served differently. Which fields are which is
//! decided per message in each conversion; whatever a conversion did not take out is checked
//! to be unset, so a field nobody thought about is rejected, not dropped.

use std::sync::Arc;

use prost::Message;
use switchyard_protos::envoy::envoy::config::cluster::v3 as cds;
use switchyard_protos::envoy::envoy::config::endpoint::v3 as eds;
use switchyard_protos::envoy::envoy::config::listener::v3 as lds;
use switchyard_protos::envoy::envoy::config::route::v3 as rds;
use switchyard_protos::{TypeUrl, wkt};

pub mod cluster;
pub mod dump;
pub mod endpoint;
mod error;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod follow;
pub mod listener;
pub mod matcher;
pub mod node;
pub mod rbac;
pub mod route;
pub mod snapshot;
pub mod tls;

pub use cluster::Cluster;
pub use dump::RawStore;
pub use endpoint::{Endpoint, Endpoints, LoadAssignment, Transport};
pub use error::ConvertError;
pub use follow::{ConfigReader, FollowStatus, Follower, FollowerOptions};
pub use listener::{InboundPort, Listener};
pub use node::SidecarNode;
pub use route::RouteConfig;
pub use snapshot::{Inconsistency, Outbound, Resources, SidecarConfig};

/// One converted resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    /// LDS.
    Listener(Arc<Listener>),
    /// RDS.
    RouteConfig(Arc<RouteConfig>),
    /// CDS.
    Cluster(Arc<Cluster>),
    /// EDS.
    LoadAssignment(Arc<LoadAssignment>),
}

/// Converts the resource `name` of type `type_url` from its packed form. The name inside the
/// resource must be `name` (when `name` is not empty).
pub fn convert_resource(
    type_url: TypeUrl,
    name: &str,
    any: &wkt::Any,
) -> Result<Converted, ConvertError> {
    let malformed = |problem: String| ConvertError::Malformed {
        type_url,
        name: name.to_string(),
        problem,
    };
    if any.type_url != type_url.as_str() {
        return Err(malformed(if any.type_url.is_empty() {
            "sent without a body".to_string()
        } else {
            format!(
                "packed as {} in a {} response",
                any.type_url,
                type_url.as_str()
            )
        }));
    }
    let bytes = any.value.as_slice();
    let decode_err = |e: prost::DecodeError| malformed(format!("cannot decode: {e}"));
    let check_name = |inner: &str| {
        if name.is_empty() || inner == name {
            Ok(())
        } else {
            Err(malformed(format!("the resource calls itself {inner:?}")))
        }
    };
    let field = |e: error::FieldError| e.into_error(type_url, name);
    match type_url {
        TypeUrl::Listener => {
            let l = lds::Listener::decode(bytes).map_err(decode_err)?;
            check_name(&l.name)?;
            Ok(Converted::Listener(Arc::new(
                listener::convert(l).map_err(field)?,
            )))
        }
        TypeUrl::RouteConfiguration => {
            let r = rds::RouteConfiguration::decode(bytes).map_err(decode_err)?;
            check_name(&r.name)?;
            Ok(Converted::RouteConfig(Arc::new(
                route::convert(r).map_err(field)?,
            )))
        }
        TypeUrl::Cluster => {
            let c = cds::Cluster::decode(bytes).map_err(decode_err)?;
            check_name(&c.name)?;
            Ok(Converted::Cluster(Arc::new(
                cluster::convert(c).map_err(field)?,
            )))
        }
        TypeUrl::ClusterLoadAssignment => {
            let c = eds::ClusterLoadAssignment::decode(bytes).map_err(decode_err)?;
            check_name(&c.cluster_name)?;
            Ok(Converted::LoadAssignment(Arc::new(
                endpoint::convert(c).map_err(field)?,
            )))
        }
        _ => Err(malformed("not a type the sidecar follows".into())),
    }
}
