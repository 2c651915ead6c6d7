//! The typed mesh model: one immutable view of namespaces, services, workloads, endpoints,
//! routes and policies, built from plain inputs by [`MeshBuilder`]; SPIFFE identities; proxy
//! ids as they appear in `node.id`; and [`compile`], which turns the mesh and one proxy into the
//! [`ProxyView`] every renderer reads.
//!
//! This crate does no I/O and knows neither Kubernetes object types nor wire protos: sources
//! convert their objects into [`input`] types, renderers read [`ProxyView`]s.

pub mod build;
pub mod hash;
pub mod identity;
pub mod input;
pub mod mesh;
pub mod proxy;
pub mod view;

pub use build::{BuildError, MeshBuilder};
pub use identity::{IdentityError, SpiffeId};
pub use mesh::*;
pub use proxy::{ProxyId, ProxyIdError, ProxyKind};
pub use view::{ProxyView, ScopeKey, ServiceView, compile};
