//! The follower: one delta ADS stream (the shared [`AdsClient`]) that keeps a
//! [`SidecarConfig`] current, and the readers of what it publishes.
//!
//! Subscriptions: CDS and LDS by wildcard; EDS for the names the EDS clusters give, RDS for
//! the route configurations the listeners name, both updated as those change. Each response
//! is converted *before* anything is stored: resources that convert replace their previous
//! version, resources that do not keep their previous version (if any), and the response is
//! NACKed with the conversion errors — so the last good config keeps serving.
//!
//! Publication (the follower is the only writer of the `watch` channel the data path reads):
//! once CDS and LDS have been received on the stream, every change assembles a snapshot; a
//! consistent one is published at once. One with problems the last published snapshot did not
//! have (a route configuration or endpoint assignment not arrived yet, a route to an unknown
//! cluster) waits — as Envoy's warming does — until they are solved or until
//! [`FollowerOptions::warming_timeout`] passes, after which it is published with its problems
//! (the data path answers 503 for what is missing), so one broken route in scope cannot hold
//! every pod back forever. Readiness: a snapshot has been published.
//!
//! Reconnects (backoff from 200 ms to 30 s, with jitter) start a fresh stream and a fresh
//! set of resources, since the shared client does not send `initial_resource_versions` and
//! the server therefore resends everything but cannot tell what was removed meanwhile; the
//! last published snapshot keeps serving until the new stream has assembled a replacement by
//! the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use switchyard_dataplane_runtime::ads_client::{AdsClient, AdsError, Response, Variant, WILDCARD};
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::core::v3::Node;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};

use super::snapshot::{Inconsistency, Resources, SidecarConfig};
use super::{ConvertError, Converted, RawStore, convert_resource};

/// Most conversion errors quoted in one NACK message.
const NACK_ERRORS: usize = 5;

/// How the follower behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerOptions {
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long a snapshot with new problems waits before it is published anyway; `None`:
    /// never publish an inconsistent snapshot.
    pub warming_timeout: Option<Duration>,
}

impl Default for FollowerOptions {
    fn default() -> Self {
        FollowerOptions {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            // Envoy's initial_fetch_timeout.
            warming_timeout: Some(Duration::from_secs(15)),
        }
    }
}

/// What the follower is doing, for admin pages and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FollowStatus {
    /// Whether a stream is open and has answered.
    pub connected: bool,
    /// Streams opened.
    pub streams: u64,
    /// Responses ACKed.
    pub acks: u64,
    /// Responses NACKed.
    pub nacks: u64,
    /// The latest NACK message per type (`cds`, `lds`, `rds`, `eds`); cleared by the next ACK
    /// of the type.
    pub last_nack: BTreeMap<&'static str, String>,
    /// The latest accepted response's version per type.
    pub versions: BTreeMap<&'static str, String>,
    /// Why the last stream ended.
    pub last_error: Option<String>,
    /// Problems of the newest assembled but unpublished snapshot.
    pub pending: Vec<Inconsistency>,
}

/// Reads what the follower publishes. Cheap to clone; reads never block the follower.
#[derive(Debug, Clone)]
pub struct ConfigReader {
    config: watch::Receiver<Option<Arc<SidecarConfig>>>,
    status: watch::Receiver<FollowStatus>,
    raw: RawStore,
}

impl ConfigReader {
    /// A reader of one fixed snapshot that never changes (tests, and embedding the proxy
    /// without a control plane).
    pub fn fixed(config: Option<Arc<SidecarConfig>>) -> Self {
        ConfigReader {
            config: watch::channel(config).1,
            status: watch::channel(FollowStatus::default()).1,
            raw: RawStore::default(),
        }
    }

    /// Envoy's `/config_dump` of the resources as received (see [`RawStore::dump`]).
    pub fn config_dump(&self, include_eds: bool) -> serde_json::Value {
        self.raw.dump(&self.status(), include_eds)
    }

    /// The current snapshot; `None` before the first one.
    pub fn current(&self) -> Option<Arc<SidecarConfig>> {
        self.config.borrow().clone()
    }

    /// Whether a snapshot has been published (readiness).
    pub fn is_ready(&self) -> bool {
        self.config.borrow().is_some()
    }

    /// Waits for the first snapshot; `None` if the follower is gone without one.
    pub async fn ready(&self) -> Option<Arc<SidecarConfig>> {
        let mut rx = self.config.clone();
        rx.wait_for(Option::is_some).await.ok()?.clone()
    }

    /// A receiver notified at every publication (for tasks that rebuild state per snapshot).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<SidecarConfig>>> {
        self.config.clone()
    }

    /// The follower's status.
    pub fn status(&self) -> FollowStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn subscribe_status(&self) -> watch::Receiver<FollowStatus> {
        self.status.clone()
    }
}

/// The follower task. See the module docs.
#[derive(Debug)]
pub struct Follower {
    channel: Channel,
    node: Node,
    options: FollowerOptions,
    config: watch::Sender<Option<Arc<SidecarConfig>>>,
    status: watch::Sender<FollowStatus>,
    /// The wire form of what was accepted, for `/config_dump`.
    raw: RawStore,
    version: u64,
    /// Problems of the published snapshot (a snapshot with only these publishes at once).
    accepted: BTreeSet<Inconsistency>,
    /// What the last stream held: the next stream starts from it and tells the server
    /// (`initial_resource_versions`), which then sends only what changed meanwhile.
    kept: Option<(Resources, Held)>,
}

/// Versions of the resources held, by type and name.
type Held = BTreeMap<TypeUrl, BTreeMap<String, String>>;

/// Per-stream state.
#[derive(Debug, Default)]
struct Stream {
    resources: Resources,
    /// Version of each resource in `resources`.
    held: Held,
    received: BTreeSet<&'static str>,
    dirty: bool,
    warming_since: Option<Instant>,
}

impl Follower {
    /// A follower of the control plane behind `channel` (e.g.
    /// `switchyard_dataplane_runtime::identity::control_plane_channel`), presenting `node`
    /// (see [`SidecarNode`](super::SidecarNode)), and its reader. Run it with
    /// [`run`](Self::run).
    pub fn new(channel: Channel, node: Node, options: FollowerOptions) -> (Follower, ConfigReader) {
        let (config, config_rx) = watch::channel(None);
        let (status, status_rx) = watch::channel(FollowStatus::default());
        let raw = RawStore::default();
        (
            Follower {
                channel,
                node,
                options,
                config,
                status,
                raw: raw.clone(),
                version: 0,
                accepted: BTreeSet::new(),
                kept: None,
            },
            ConfigReader {
                config: config_rx,
                status: status_rx,
                raw,
            },
        )
    }

    /// Follows until the task is dropped: reconnects with backoff, keeps serving the last
    /// published snapshot meanwhile.
    pub async fn run(mut self) {
        let span = info_span!("sidecar_xds", node = %self.node.id);
        async move {
            let mut backoff = self.options.backoff_min;
            loop {
                let mut answered = false;
                let ended = self.follow_once(&mut answered).await;
                if answered {
                    backoff = self.options.backoff_min;
                }
                let delay = backoff.mul_f64(rand::random_range(0.8..1.2));
                warn!(error = %ended, retry_in_ms = delay.as_millis() as u64, "xds stream ended");
                self.status.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(ended.to_string());
                });
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(self.options.backoff_max);
            }
        }
        .instrument(span)
        .await
    }

    /// One stream, until it fails; it starts from what the previous stream held.
    async fn follow_once(&mut self, answered: &mut bool) -> AdsError {
        let mut client =
            AdsClient::connect(self.channel.clone(), self.node.clone(), Variant::Delta);
        self.status.send_modify(|s| s.streams += 1);
        let mut st = Stream::default();
        if let Some((resources, held)) = self.kept.take() {
            for (t, versions) in &held {
                client.hold_versions(t.as_str(), versions.clone());
            }
            st.resources = resources;
            st.held = held;
        }
        let ended = self.stream(&mut client, &mut st, answered).await;
        self.kept = Some((st.resources, st.held));
        ended
    }

    async fn stream(
        &mut self,
        client: &mut AdsClient,
        st: &mut Stream,
        answered: &mut bool,
    ) -> AdsError {
        for t in [TypeUrl::Cluster, TypeUrl::Listener] {
            if let Err(e) = client.subscribe(t.as_str(), &[WILDCARD]).await {
                return e;
            }
        }
        loop {
            let warming = st
                .warming_since
                .zip(self.options.warming_timeout)
                .map(|(since, t)| since + t);
            let resp = tokio::select! {
                r = client.next() => match r {
                    Ok(r) => r,
                    Err(e) => return e,
                },
                () = sleep_until(warming) => {
                    self.publish_warmed(st);
                    continue;
                }
            };
            if !*answered {
                *answered = true;
                self.status.send_modify(|s| s.connected = true);
                info!("xds stream open");
            }
            if let Err(e) = self.handle(client, st, resp).await {
                return e;
            }
        }
    }

    async fn handle(
        &mut self,
        client: &mut AdsClient,
        st: &mut Stream,
        resp: Response,
    ) -> Result<(), AdsError> {
        let t = match TypeUrl::parse(&resp.type_url) {
            Ok(
                t @ (TypeUrl::Cluster
                | TypeUrl::Listener
                | TypeUrl::RouteConfiguration
                | TypeUrl::ClusterLoadAssignment),
            ) => t,
            _ => {
                warn!(type_url = %resp.type_url, "response of a type never asked for; ignored");
                return Ok(());
            }
        };
        // Convert everything first; only then touch the resources.
        let mut converted = Vec::with_capacity(resp.resources.len());
        let mut errors: Vec<ConvertError> = Vec::new();
        let held = st.held.entry(t).or_default();
        for r in &resp.resources {
            match convert_resource(t, &r.name, &r.resource) {
                Ok(c) => {
                    held.insert(r.name.clone(), r.version.clone());
                    self.raw.accept(t, &r.name, &r.version, &r.resource.value);
                    converted.push((r.name.clone(), c));
                }
                Err(e) => {
                    self.raw.reject(t, &r.name, &r.version, &e.to_string());
                    errors.push(e);
                }
            }
        }
        for n in &resp.removed {
            held.remove(n);
            self.raw.remove(t, n);
        }
        st.dirty |= apply(&mut st.resources, t, converted, &resp.removed);
        st.received.insert(t.short_name());
        if errors.is_empty() {
            client.ack(&resp).await?;
            self.status.send_modify(|s| {
                s.acks += 1;
                s.last_nack.remove(t.short_name());
                s.versions.insert(t.short_name(), resp.version.clone());
            });
        } else {
            let message = nack_message(&errors);
            warn!(
                type_url = t.short_name(),
                nonce = %resp.nonce,
                version = %resp.version,
                rejected = errors.len(),
                %message,
                "resources rejected; their last good versions stay in use"
            );
            client.nack(&resp, &message).await?;
            self.status.send_modify(|s| {
                s.nacks += 1;
                s.last_nack.insert(t.short_name(), message);
            });
        }
        // Subscriptions follow what clusters and listeners need; what is no longer needed
        // (or arrives for a name no longer asked for) is dropped.
        match t {
            TypeUrl::Cluster | TypeUrl::ClusterLoadAssignment => {
                let names = st.resources.eds_names();
                if t == TypeUrl::Cluster {
                    let list: Vec<&String> = names.iter().collect();
                    client
                        .subscribe(TypeUrl::ClusterLoadAssignment.as_str(), &list)
                        .await?;
                }
                let before = st.resources.load_assignments.len();
                st.resources
                    .load_assignments
                    .retain(|k, _| names.contains(k));
                if let Some(h) = st.held.get_mut(&TypeUrl::ClusterLoadAssignment) {
                    h.retain(|k, _| names.contains(k));
                }
                self.raw
                    .retain(TypeUrl::ClusterLoadAssignment, |k| names.contains(k));
                st.dirty |= before != st.resources.load_assignments.len();
            }
            TypeUrl::Listener | TypeUrl::RouteConfiguration => {
                let names = st.resources.rds_names();
                if t == TypeUrl::Listener {
                    let list: Vec<&String> = names.iter().collect();
                    client
                        .subscribe(TypeUrl::RouteConfiguration.as_str(), &list)
                        .await?;
                }
                let before = st.resources.route_configs.len();
                st.resources.route_configs.retain(|k, _| names.contains(k));
                if let Some(h) = st.held.get_mut(&TypeUrl::RouteConfiguration) {
                    h.retain(|k, _| names.contains(k));
                }
                self.raw
                    .retain(TypeUrl::RouteConfiguration, |k| names.contains(k));
                st.dirty |= before != st.resources.route_configs.len();
            }
            _ => {}
        }
        self.maybe_publish(st);
        Ok(())
    }

    /// Publishes when the stream's resources make a snapshot without new problems.
    fn maybe_publish(&mut self, st: &mut Stream) {
        let complete = st.received.contains(TypeUrl::Cluster.short_name())
            && st.received.contains(TypeUrl::Listener.short_name());
        if !complete || !st.dirty {
            return;
        }
        let candidate = SidecarConfig::assemble(&st.resources, self.version + 1);
        let new: Vec<&Inconsistency> = candidate
            .problems()
            .iter()
            .filter(|p| !self.accepted.contains(*p))
            .collect();
        if new.is_empty() {
            self.publish(candidate, st);
            return;
        }
        debug!(problems = ?new, "snapshot waits for missing resources");
        if st.warming_since.is_none() {
            st.warming_since = Some(Instant::now());
        }
        let pending = candidate.problems().to_vec();
        self.status.send_modify(|s| s.pending = pending);
    }

    /// The warming timeout passed: publish what there is.
    fn publish_warmed(&mut self, st: &mut Stream) {
        let candidate = SidecarConfig::assemble(&st.resources, self.version + 1);
        let problems: Vec<String> = candidate.problems().iter().map(|p| p.to_string()).collect();
        warn!(
            ?problems,
            "publishing an inconsistent configuration after the warming timeout; \
             requests to what is missing fail (is the control plane sending every resource?)"
        );
        self.publish(candidate, st);
    }

    fn publish(&mut self, config: SidecarConfig, st: &mut Stream) {
        self.version = config.version();
        self.accepted = config.problems().iter().cloned().collect();
        st.dirty = false;
        st.warming_since = None;
        info!(
            version = self.version,
            listeners = config.listeners().len(),
            route_configs = config.route_configs().len(),
            clusters = config.clusters().len(),
            consistent = config.problems().is_empty(),
            "configuration published"
        );
        self.status.send_modify(|s| s.pending.clear());
        self.config.send_replace(Some(Arc::new(config)));
    }
}

/// Applies converted resources and removals of type `t`; whether anything changed.
fn apply(
    res: &mut Resources,
    t: TypeUrl,
    converted: Vec<(String, Converted)>,
    removed: &[String],
) -> bool {
    let changed = !converted.is_empty();
    for (name, c) in converted {
        match c {
            Converted::Listener(l) => {
                res.listeners.insert(name, l);
            }
            Converted::RouteConfig(r) => {
                res.route_configs.insert(name, r);
            }
            Converted::Cluster(c) => {
                res.clusters.insert(name, c);
            }
            Converted::LoadAssignment(a) => {
                res.load_assignments.insert(name, a);
            }
        }
    }
    let mut gone = false;
    for n in removed {
        gone |= match t {
            TypeUrl::Listener => res.listeners.remove(n).is_some(),
            TypeUrl::RouteConfiguration => res.route_configs.remove(n).is_some(),
            TypeUrl::Cluster => res.clusters.remove(n).is_some(),
            TypeUrl::ClusterLoadAssignment => res.load_assignments.remove(n).is_some(),
            _ => false,
        };
    }
    changed || gone
}

fn nack_message(errors: &[ConvertError]) -> String {
    let mut parts: Vec<String> = errors
        .iter()
        .take(NACK_ERRORS)
        .map(|e| e.to_string())
        .collect();
    if errors.len() > NACK_ERRORS {
        parts.push(format!("and {} more", errors.len() - NACK_ERRORS));
    }
    parts.join("; ")
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
