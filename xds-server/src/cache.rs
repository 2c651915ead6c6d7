//! The snapshot cache: the current generation, every connected proxy with its latest snapshot
//! and sync status, and the push loop that turns model changes into new snapshots.
//!
//! Writers: the push loop (new generations) and each stream (its own status). Readers (admin,
//! CSDS) take short locks and never across `.await`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use switchyard_model::{Mesh, ProxyId};
use switchyard_protos::TypeUrl;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{KindLabels, Metrics, TypeLabels, Variant};
use crate::render::{Generation, ProxyRenderState, RenderCache, RenderOptions};
use crate::snapshot::{Snapshot, TypeSnapshot};

/// A NACK as the proxy sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackRecord {
    /// Version the proxy rejected.
    pub version: String,
    /// Nonce of the rejected response.
    pub nonce: String,
    /// The proxy's message.
    pub message: String,
    /// gRPC status code the proxy gave.
    pub code: i32,
    /// When.
    pub at: SystemTime,
}

/// Sync state of one type for one proxy, as `/debug/syncz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SyncState {
    /// The latest response was ACKed.
    #[serde(rename = "SYNCED")]
    Synced,
    /// A response is waiting for its ACK.
    #[serde(rename = "STALE")]
    Stale,
    /// The latest response was NACKed.
    #[serde(rename = "NACKED")]
    Nacked,
    /// Nothing sent yet.
    #[serde(rename = "NOT SENT")]
    NotSent,
}

/// What one proxy has been sent of one type and what it said about it.
#[derive(Debug, Clone, Default)]
pub struct TypeStatus {
    /// Version of the latest response.
    pub sent_version: Option<String>,
    /// Its nonce.
    pub sent_nonce: Option<String>,
    /// When it was sent.
    pub sent_at: Option<SystemTime>,
    /// Resources in it.
    pub sent_resources: usize,
    /// Latest ACKed version.
    pub acked_version: Option<String>,
    /// When.
    pub acked_at: Option<SystemTime>,
    /// Latest NACK.
    pub nack: Option<NackRecord>,
    /// Whether the latest response was NACKed (a later ACK clears it).
    pub nacked: bool,
    /// When the change behind the pending response was seen (for convergence).
    pub changed_at: Option<Instant>,
    /// Names the proxy subscribed to (`*` for wildcard).
    pub subscription: Vec<String>,
}

impl TypeStatus {
    /// The state.
    pub fn state(&self) -> SyncState {
        match (&self.sent_nonce, self.nacked) {
            (None, _) => SyncState::NotSent,
            (Some(_), true) => SyncState::Nacked,
            (Some(_), false)
                if self.acked_version.is_some() && self.acked_version == self.sent_version =>
            {
                SyncState::Synced
            }
            _ => SyncState::Stale,
        }
    }
}

/// One connected stream.
#[derive(Debug)]
pub struct Connection {
    /// Stream id, unique in this process.
    pub id: u64,
    /// Who.
    pub proxy: ProxyId,
    /// SotW or delta.
    pub variant: Variant,
    /// Peer address.
    pub peer: Option<SocketAddr>,
    /// When it connected.
    pub connected_at: SystemTime,
    snapshot: watch::Sender<Arc<Snapshot>>,
    render: Mutex<ProxyRenderState>,
    status: Mutex<BTreeMap<TypeUrl, TypeStatus>>,
    /// Cancelled to end the stream (shutdown or a test hook).
    pub cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connection {
    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver of new snapshots (the stream's side).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// A copy of the status of every type.
    pub fn status(&self) -> BTreeMap<TypeUrl, TypeStatus> {
        lock(&self.status).clone()
    }

    /// Updates one type's status.
    pub fn update_status<R>(&self, t: TypeUrl, f: impl FnOnce(&mut TypeStatus) -> R) -> R {
        f(lock(&self.status).entry(t).or_default())
    }

    /// Offers a snapshot; keeps the newer generation and wakes the stream only when a type
    /// this proxy has changed. Returns whether it woke the stream.
    fn offer(&self, new: Snapshot) -> bool {
        self.snapshot.send_if_modified(|cur| {
            if new.generation < cur.generation {
                return false;
            }
            let same = new.types().count() == cur.types().count()
                && new.types().all(|(t, s)| {
                    cur.get(t).is_some_and(|c: &TypeSnapshot| {
                        c.same_layers(s) || c.version() == s.version()
                    })
                });
            if same {
                return false;
            }
            *cur = Arc::new(new);
            true
        })
    }
}

/// Everything the xDS services share.
#[derive(Debug)]
pub struct SnapshotCache {
    current: ArcSwap<Generation>,
    connections: DashMap<u64, Arc<Connection>>,
    next_id: AtomicU64,
    render_cache: Arc<RenderCache>,
    options: Arc<RenderOptions>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Layer comparisons shared by streams.
    pub layer_diffs: crate::snapshot::LayerDiffs,
    hooks: Mutex<TestHooks>,
}

/// Test-only overrides (enabled by `test_hooks` in the config).
#[derive(Debug, Default)]
struct TestHooks {
    poison: BTreeMap<String, TypeUrl>,
}

impl SnapshotCache {
    /// An empty cache serving `mesh`.
    pub fn new(mesh: Arc<Mesh>, options: RenderOptions, metrics: Arc<Metrics>) -> Self {
        let render_cache = Arc::new(RenderCache::default());
        let options = Arc::new(options);
        let generation = Generation::new(
            mesh,
            None,
            render_cache.clone(),
            options.clone(),
            Instant::now(),
        );
        SnapshotCache {
            current: ArcSwap::from_pointee(generation),
            connections: DashMap::new(),
            next_id: AtomicU64::new(1),
            render_cache,
            options,
            metrics,
            layer_diffs: Default::default(),
            hooks: Mutex::new(TestHooks::default()),
        }
    }

    /// The current generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Registers a stream and computes its first snapshot.
    pub fn connect(
        &self,
        proxy: ProxyId,
        variant: Variant,
        peer: Option<SocketAddr>,
    ) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(Arc::new(Snapshot::empty()));
        let conn = Arc::new(Connection {
            id,
            proxy,
            variant,
            peer,
            connected_at: SystemTime::now(),
            snapshot: tx,
            render: Mutex::new(ProxyRenderState::default()),
            status: Mutex::new(BTreeMap::new()),
            cancel: CancellationToken::new(),
        });
        // Insert before reading the current generation: either this read sees the newest
        // generation, or the push loop (which stores before it iterates) sees this connection.
        self.connections.insert(id, conn.clone());
        self.metrics
            .connected
            .get_or_create(&KindLabels {
                kind: conn.proxy.kind.to_string(),
            })
            .inc();
        let generation = self.generation();
        self.refresh(&generation, &conn);
        conn
    }

    /// Forgets a stream.
    pub fn disconnect(&self, conn: &Connection) {
        if self.connections.remove(&conn.id).is_some() {
            self.metrics
                .connected
                .get_or_create(&KindLabels {
                    kind: conn.proxy.kind.to_string(),
                })
                .dec();
        }
    }

    /// Every connection, oldest first.
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        let mut v: Vec<Arc<Connection>> =
            self.connections.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The newest connection of a node id.
    pub fn connection(&self, node_id: &str) -> Option<Arc<Connection>> {
        self.connections()
            .into_iter()
            .rev()
            .find(|c| c.proxy.node_id == node_id)
    }

    fn refresh(&self, generation: &Generation, conn: &Connection) -> bool {
        let mut snap = {
            let mut state = lock(&conn.render);
            generation.snapshot(&conn.proxy, &mut state)
        };
        if let Some(t) = lock(&self.hooks).poison.get(&conn.proxy.node_id).copied() {
            poison(&mut snap, t);
        }
        conn.offer(snap)
    }

    /// Installs a new mesh and pushes it to every connection that sees a change. CPU-bound;
    /// callers on the runtime should run it in `spawn_blocking`.
    pub fn push(&self, mesh: Arc<Mesh>, changed_at: Instant) -> PushStats {
        let start = Instant::now();
        let previous = self.generation();
        let generation = Arc::new(Generation::new(
            mesh,
            Some(&previous),
            self.render_cache.clone(),
            self.options.clone(),
            changed_at,
        ));
        self.current.store(generation.clone());
        drop(previous);
        self.layer_diffs.clear();
        let mut stats = PushStats::default();
        for conn in self.connections() {
            stats.proxies += 1;
            if self.refresh(&generation, &conn) {
                stats.changed += 1;
            }
        }
        self.render_cache.retain_current(generation.compiler());
        stats.elapsed = start.elapsed();
        self.metrics.pushes.inc();
        self.metrics.proxies_pushed.inc_by(stats.changed as u64);
        self.metrics
            .push_seconds
            .observe(stats.elapsed.as_secs_f64());
        self.metrics
            .generation
            .set(generation.mesh().generation as i64);
        stats
    }

    /// Test hook: makes the proxy's next snapshots carry an invalid resource of type `t`
    /// (or stops doing so with `None`), and pushes at once.
    pub fn set_poison(&self, node_id: &str, t: Option<TypeUrl>) {
        {
            let mut hooks = lock(&self.hooks);
            match t {
                Some(t) => hooks.poison.insert(node_id.to_string(), t),
                None => hooks.poison.remove(node_id),
            };
        }
        let generation = self.generation();
        for conn in self
            .connections()
            .iter()
            .filter(|c| c.proxy.node_id == node_id)
        {
            // A poison change must reach the stream even when the mesh did not change.
            let mut snap = {
                let mut state = lock(&conn.render);
                generation.snapshot(&conn.proxy, &mut state)
            };
            if let Some(t) = t {
                poison(&mut snap, t);
            }
            conn.snapshot.send_replace(Arc::new(snap));
        }
    }

    /// Counts what a response carried.
    pub fn count_sent(&self, t: TypeUrl, resources: usize, bytes: usize) {
        let l = TypeLabels {
            r#type: t.short_name().to_string(),
        };
        self.metrics
            .resources_sent
            .get_or_create(&l)
            .inc_by(resources as u64);
        self.metrics
            .bytes_sent
            .get_or_create(&l)
            .inc_by(bytes as u64);
    }
}

/// What one push did.
#[derive(Debug, Clone, Default)]
pub struct PushStats {
    /// Connections considered.
    pub proxies: usize,
    /// Connections whose snapshot changed.
    pub changed: usize,
    /// Time taken.
    pub elapsed: Duration,
}

/// Adds a resource Envoy and gRPC clients reject (a cluster with a negative connect timeout
/// and a listener without address), to provoke a NACK in tests.
fn poison(snap: &mut Snapshot, t: TypeUrl) {
    use crate::snapshot::{Resource, ResourceMap};
    use switchyard_protos::envoy::envoy::config::cluster::v3::Cluster;
    use switchyard_protos::envoy::envoy::config::listener::v3::Listener;
    let bad = match t {
        TypeUrl::Cluster => Resource::new(
            t,
            "switchyard-test-poison",
            &Cluster {
                name: "switchyard-test-poison".into(),
                connect_timeout: Some(switchyard_protos::wkt::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ),
        _ => Resource::new(
            t,
            "switchyard-test-poison",
            &Listener {
                name: "switchyard-test-poison".into(),
                ..Default::default()
            },
        ),
    };
    let mut layers: Vec<Arc<ResourceMap>> = Vec::new();
    let existing: Vec<Arc<Resource>> = snap
        .get(t)
        .map(|ts| ts.iter().cloned().collect())
        .unwrap_or_default();
    layers.push(Arc::new(ResourceMap::new(
        existing.into_iter().chain([bad]),
    )));
    snap.set(t, TypeSnapshot::new(layers));
}
