//! Rendered resources and per-proxy snapshots.
//!
//! A [`Resource`] is an encoded message with its content hash as version. Resources of one
//! type are grouped in [`ResourceMap`]s; a proxy's [`TypeSnapshot`] is a short list of maps
//! (layers) — usually one shared by every proxy of a scope and one of its own — so 10,000
//! proxies that see the same services hold 10,000 pointers, not 10,000 copies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use switchyard_model::hash::{content_hash, version_string};
use switchyard_protos::{TypeUrl, wkt};

/// One encoded resource.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// Resource name.
    pub name: Arc<str>,
    /// Its type.
    pub type_url: TypeUrl,
    /// Content hash of `bytes`.
    pub version: u64,
    /// Encoded message.
    pub bytes: Vec<u8>,
}

impl Resource {
    /// Encodes `msg` as a resource of `type_url` named `name`.
    pub fn new<M: Message>(type_url: TypeUrl, name: impl Into<Arc<str>>, msg: &M) -> Arc<Self> {
        let bytes = msg.encode_to_vec();
        Arc::new(Resource {
            name: name.into(),
            type_url,
            version: content_hash(&bytes),
            bytes,
        })
    }

    /// Version as sent on the wire.
    pub fn version_string(&self) -> String {
        version_string(self.version)
    }

    /// The resource packed in an `Any`.
    pub fn to_any(&self) -> wkt::Any {
        wkt::Any {
            type_url: self.type_url.as_str().to_string(),
            value: self.bytes.clone(),
        }
    }
}

/// Resources of one type by name, with a hash over all (name, version) pairs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResourceMap {
    items: BTreeMap<Arc<str>, Arc<Resource>>,
    hash: u64,
}

impl ResourceMap {
    /// Builds a map; later duplicates of a name replace earlier ones.
    pub fn new(resources: impl IntoIterator<Item = Arc<Resource>>) -> Self {
        let items: BTreeMap<Arc<str>, Arc<Resource>> =
            resources.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut buf = Vec::with_capacity(items.len() * 16);
        for (name, r) in &items {
            buf.extend_from_slice(name.as_bytes());
            buf.push(0);
            buf.extend_from_slice(&r.version.to_le_bytes());
        }
        ResourceMap {
            hash: content_hash(&buf),
            items,
        }
    }

    /// Looks a resource up.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.items.get(name)
    }

    /// All resources in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.items.values()
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Hash over names and versions.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// What one proxy has of one type: layers of shared maps. Names never repeat across layers.
#[derive(Debug, Clone, Default)]
pub struct TypeSnapshot {
    layers: Vec<Arc<ResourceMap>>,
    version: u64,
}

impl TypeSnapshot {
    /// A snapshot from layers.
    pub fn new(layers: Vec<Arc<ResourceMap>>) -> Self {
        let mut buf = Vec::with_capacity(layers.len() * 8);
        for l in &layers {
            buf.extend_from_slice(&l.hash().to_le_bytes());
        }
        TypeSnapshot {
            version: content_hash(&buf),
            layers,
        }
    }

    /// Version of the whole type (changes whenever any resource does).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Looks a resource up.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.layers.iter().find_map(|l| l.get(name))
    }

    /// Every resource.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.layers.iter().flat_map(|l| l.iter())
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.layers.iter().map(|l| l.len()).sum()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The layers.
    pub fn layers(&self) -> &[Arc<ResourceMap>] {
        &self.layers
    }

    /// Whether both hold the very same layers (cheap "nothing changed" test).
    pub fn same_layers(&self, other: &TypeSnapshot) -> bool {
        self.layers.len() == other.layers.len()
            && self
                .layers
                .iter()
                .zip(&other.layers)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// Everything one proxy is sent at one mesh generation.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Mesh generation.
    pub generation: u64,
    /// When the model change that led here was seen (for convergence metrics).
    pub changed_at: Instant,
    types: BTreeMap<TypeUrl, TypeSnapshot>,
}

/// A snapshot whose references do not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsistencyError {
    /// A cluster names an EDS resource that is missing.
    #[error("cluster {cluster} uses endpoints {eds:?} which are not in the snapshot")]
    MissingEndpoints {
        /// Cluster.
        cluster: String,
        /// EDS service name.
        eds: String,
    },
    /// A listener names a route configuration that is missing.
    #[error("listener {listener} uses route configuration {route:?} which is not in the snapshot")]
    MissingRoute {
        /// Listener.
        listener: String,
        /// Route name.
        route: String,
    },
    /// A route sends to a cluster that is missing.
    #[error(
        "route configuration {route} sends to cluster {cluster:?} which is not in the snapshot"
    )]
    MissingCluster {
        /// Route.
        route: String,
        /// Cluster.
        cluster: String,
    },
    /// A resource does not decode.
    #[error("resource {name} does not decode: {message}")]
    Decode {
        /// Resource.
        name: String,
        /// Decoder message.
        message: String,
    },
}

impl Snapshot {
    /// A snapshot of the given types.
    pub fn new(
        generation: u64,
        changed_at: Instant,
        types: impl IntoIterator<Item = (TypeUrl, TypeSnapshot)>,
    ) -> Self {
        Snapshot {
            generation,
            changed_at,
            types: types.into_iter().collect(),
        }
    }

    /// An empty snapshot.
    pub fn empty() -> Self {
        Snapshot::new(0, Instant::now(), [])
    }

    /// One type, if this proxy kind has it.
    pub fn get(&self, t: TypeUrl) -> Option<&TypeSnapshot> {
        self.types.get(&t)
    }

    /// Types present.
    pub fn types(&self) -> impl Iterator<Item = (TypeUrl, &TypeSnapshot)> {
        self.types.iter().map(|(t, s)| (*t, s))
    }

    /// Replaces one type (used by test hooks).
    pub fn set(&mut self, t: TypeUrl, s: TypeSnapshot) {
        self.types.insert(t, s);
    }

    /// Checks that every name one resource refers to is present: clusters' EDS names, listeners'
    /// RDS names, routes' clusters. The go-control-plane consistency rule.
    pub fn check_consistency(&self) -> Result<(), ConsistencyError> {
        crate::render::check::consistency(self)
    }
}

/// What changed between two versions of a layer.
#[derive(Debug, Default)]
pub struct LayerDiff {
    /// Resources new in, or changed in, the newer layer.
    pub changed: Vec<Arc<Resource>>,
    /// Names in the older layer only.
    pub removed: Vec<Arc<str>>,
}

impl LayerDiff {
    /// Compares two layers.
    pub fn between(old: &ResourceMap, new: &ResourceMap) -> Self {
        let changed = new
            .iter()
            .filter(|r| old.get(&r.name).is_none_or(|o| o.version != r.version))
            .cloned()
            .collect();
        let removed = old
            .iter()
            .filter(|r| new.get(&r.name).is_none())
            .map(|r| r.name.clone())
            .collect();
        LayerDiff { changed, removed }
    }
}

/// Layer comparisons shared by every stream: after a push thousands of streams compare the
/// same two versions of a scope's layer; the first computes, the rest reuse. Entries hold
/// both layers, so their addresses stay unique while cached.
#[derive(Debug, Default)]
pub struct LayerDiffs {
    cache: std::sync::Mutex<std::collections::HashMap<(usize, usize), LayerPair>>,
}

/// A cached comparison with the two layers it compared.
type LayerPair = (Arc<ResourceMap>, Arc<ResourceMap>, Arc<LayerDiff>);

/// Entries beyond this are dropped wholesale (a new push makes old pairs useless anyway).
const LAYER_DIFF_LIMIT: usize = 4096;

impl LayerDiffs {
    /// The diff between `old` and `new`.
    pub fn get(&self, old: &Arc<ResourceMap>, new: &Arc<ResourceMap>) -> Arc<LayerDiff> {
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(new) as usize);
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, _, d)) = cache.get(&key) {
                return d.clone();
            }
        }
        let d = Arc::new(LayerDiff::between(old, new));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= LAYER_DIFF_LIMIT {
            cache.clear();
        }
        cache
            .entry(key)
            .or_insert_with(|| (old.clone(), new.clone(), d))
            .2
            .clone()
    }

    /// Forgets every comparison (after a push: pairs of older generations are not asked for
    /// again, and holding them would keep old layers alive).
    pub fn clear(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
