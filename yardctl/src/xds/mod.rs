//! `yardctl xds`: an xDS client that impersonates any proxy.
//!
//! `get` subscribes as a proxy would, waits for a complete set (every requested type answered,
//! endpoints of the EDS clusters and routes the listeners name included) and prints it;
//! `watch` stays subscribed and prints each response with what changed. Both check the
//! server's side of the protocol on every response and report what breaks it as
//! `protocol violation: ...` lines. The stream itself is the runtime's
//! [`AdsClient`], the one dataplanes use.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use prost::{Message, Name};
use serde_json::{Value, json};
use switchyard_dataplane_runtime::ads_client::ads_node;
use switchyard_dataplane_runtime::ads_client::{
    AdsClient, AdsError, Resource, Response, Variant, WILDCARD,
};
use switchyard_dataplane_runtime::identity::{
    CaTransport, control_plane_channel, control_plane_identity,
};
use switchyard_dataplane_runtime::tls::{IdentityStore, TrustBundle};
use switchyard_model::proxy::{ProxyMetadata, ProxyRole};
use switchyard_model::{ProxyId, ProxyKind};
use switchyard_protos::envoy::envoy::config::cluster::v3::Cluster;
use switchyard_protos::envoy::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType,
};
use switchyard_protos::envoy::envoy::config::core::v3::{Address, Node, address};
use switchyard_protos::envoy::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use switchyard_protos::envoy::envoy::config::listener::v3::{FilterChain, Listener, filter};
use switchyard_protos::envoy::envoy::config::route::v3::RouteConfiguration;
use switchyard_protos::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use switchyard_protos::switchyard::workload::v1 as workload;
use switchyard_protos::{TypeUrl, wkt};

use crate::duration::CliDuration;

/// The `error_detail` message of a NACK asked for with `--nack`.
pub const NACK_MESSAGE: &str = "nacked on purpose by yardctl";

/// Once every type has answered, how long no further response must come for the set to be
/// complete: the server splits large updates into several responses sent back to back, and
/// only the quiet after them says the last one arrived.
const SETTLE: Duration = Duration::from_millis(200);

/// Diff lines printed per updated resource.
const MAX_DIFF_LINES: usize = 40;

/// `yardctl xds` subcommands.
#[derive(Debug, Subcommand)]
pub enum XdsCommand {
    /// Subscribe as a proxy, wait for a complete set, print it and exit.
    #[command(
        after_help = "Examples:\n  yardctl xds get --kind sidecar --namespace default --pod web-0 --ip 10.244.0.9 --type all\n  yardctl xds get --kind ztunnel --node node-1 --ip 10.255.0.1 --type workload -o json\n  yardctl xds get --xds 127.0.0.1:15012 --ca-root-file root-cert.pem --type sds"
    )]
    Get(GetArgs),
    /// Stay subscribed as a proxy and print every response as it arrives, with what changed.
    #[command(
        after_help = "Examples:\n  yardctl xds watch --kind envoy --namespace default --pod web-0 --ip 10.244.0.9 --type eds\n  yardctl xds watch --type cds --nack cds --trace --count 3"
    )]
    Watch(WatchArgs),
}

/// `yardctl xds get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = GetFormat::Table)]
    output: GetFormat,
    /// Give up (exit 1, naming the types that never arrived) after this long.
    #[arg(long, default_value = "10s")]
    timeout: CliDuration,
}

/// `yardctl xds watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print every request and response frame as JSON (`>>` sent, `<<` received).
    #[arg(long)]
    trace: bool,
    /// Exit after this many responses.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this long, e.g. `5s`.
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<CliDuration>,
}

/// How `get` prints the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GetFormat {
    /// One row per resource with a short summary.
    Table,
    /// `{"node": ..., "resources": {"<type>": [{name, version, resource}]}}`.
    Json,
    /// The JSON document as YAML.
    Yaml,
}

/// Who to be, where to connect and what to ask for (shared by `get` and `watch`).
#[derive(Debug, Args)]
struct ClientArgs {
    /// The control plane's xDS address, HOST:PORT (15010 plaintext; 15012 TLS with
    /// --ca-root-file).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: String,
    /// Root certificate(s) to verify the control plane with; the stream then goes over TLS.
    #[arg(long)]
    ca_root_file: Option<PathBuf>,
    /// Client certificate chain (PEM, leaf first) to present over TLS.
    #[arg(long, requires_all = ["ca_root_file", "key"])]
    cert_chain: Option<PathBuf>,
    /// Private key of --cert-chain.
    #[arg(long, requires = "cert_chain")]
    key: Option<PathBuf>,
    /// Trust domain of the control plane's identity (with --ca-root-file).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Proxy kind: sidecar, envoy, ztunnel, ebpf or grpc [default: envoy, or the node id's].
    #[arg(long)]
    kind: Option<ProxyKind>,
    /// The whole node id (instead of --namespace/--pod/--ip or --node/--ip).
    #[arg(long, conflicts_with_all = ["namespace", "pod", "node", "ip"])]
    node_id: Option<String>,
    /// Pod namespace (per-pod kinds).
    #[arg(long)]
    namespace: Option<String>,
    /// Pod name (per-pod kinds).
    #[arg(long)]
    pod: Option<String>,
    /// Node name (node agents; for per-pod kinds it becomes NODE_NAME metadata).
    #[arg(long)]
    node: Option<String>,
    /// Pod IP (per-pod kinds) or node IP (node agents).
    #[arg(long)]
    ip: Option<IpAddr>,
    /// Extra node.metadata, as a string (repeatable), e.g. LISTEN_ADDRESS=127.0.0.2.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = key_value)]
    metadata: Vec<(String, String)>,
    /// State-of-the-World ADS.
    #[arg(long, conflicts_with = "delta")]
    sotw: bool,
    /// Delta (incremental) ADS [default].
    #[arg(long)]
    delta: bool,
    /// What to subscribe to (repeatable, or comma-separated): cds, eds, lds, rds, sds,
    /// workload, service, authorization, all, or a full type URL [default: all].
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',', value_parser = type_arg)]
    types: Vec<TypeArg>,
    /// Subscribe to this resource instead of every one (repeatable). With several types,
    /// name the type: `cds/outbound|8080||echo.default.svc.cluster.local`.
    #[arg(long = "resource", value_name = "[TYPE/]NAME")]
    resources: Vec<String>,
    /// Answer responses of TYPE, or responses holding resource NAME of TYPE, with a NACK
    /// (repeatable).
    #[arg(long = "nack", value_name = "TYPE[/NAME]")]
    nack: Vec<String>,
    /// Exit 1 if the server broke the protocol.
    #[arg(long)]
    strict: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A `--type` value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TypeArg {
    All,
    Known(TypeUrl),
    Raw(String),
}

fn type_arg(s: &str) -> Result<TypeArg, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(TypeArg::All);
    }
    match TypeUrl::parse(s) {
        Ok(t) => Ok(TypeArg::Known(t)),
        Err(_) if s.contains('/') && !s.ends_with('/') => Ok(TypeArg::Raw(s.to_string())),
        Err(_) => Err(format!(
            "unknown type {s:?}: expected cds, eds, lds, rds, sds, workload, service, authorization, all or a type URL"
        )),
    }
}

/// `TYPE/NAME` when TYPE is a short type name; the type and the rest.
fn typed_name(s: &str) -> Option<(TypeUrl, &str)> {
    let (prefix, name) = s.split_once('/')?;
    let t = TypeUrl::parse(prefix).ok()?;
    (t.short_name().eq_ignore_ascii_case(prefix) && !name.is_empty()).then_some((t, name))
}

/// The short name of a type URL, or the URL itself for types Switchyard does not serve.
fn short(type_url: &str) -> &str {
    match TypeUrl::parse(type_url) {
        Ok(t) => t.short_name(),
        Err(_) => type_url,
    }
}

/// What to subscribe to for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// Everything.
    Wildcard,
    /// These names.
    Names(BTreeSet<String>),
    /// The endpoints of the EDS clusters received over CDS.
    ClusterEndpoints,
    /// The routes named by the listeners received over LDS.
    ListenerRoutes,
}

/// Types to subscribe to, in push order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    types: Vec<(String, Want)>,
}

impl Plan {
    fn new(kind: ProxyKind, types: &[TypeArg], resources: &[String]) -> anyhow::Result<Plan> {
        let mut wanted: Vec<String> = Vec::new();
        let mut add = |t: &str| {
            if !wanted.iter().any(|w| w == t) {
                wanted.push(t.to_string());
            }
        };
        let all = [TypeArg::All];
        for t in if types.is_empty() { &all[..] } else { types } {
            match t {
                TypeArg::All if kind.is_node_agent() => {
                    for t in [TypeUrl::Service, TypeUrl::Workload, TypeUrl::Authorization] {
                        add(t.as_str());
                    }
                }
                TypeArg::All => {
                    for t in [
                        TypeUrl::Cluster,
                        TypeUrl::ClusterLoadAssignment,
                        TypeUrl::Listener,
                        TypeUrl::RouteConfiguration,
                    ] {
                        add(t.as_str());
                    }
                }
                TypeArg::Known(t) => add(t.as_str()),
                TypeArg::Raw(s) => add(s),
            }
        }
        // push order for the types Switchyard serves, others after them
        wanted.sort_by_key(|t| {
            TypeUrl::parse(t).map_or(usize::MAX, |t| {
                TypeUrl::ALL
                    .iter()
                    .position(|a| *a == t)
                    .unwrap_or(usize::MAX)
            })
        });
        let has = |t: TypeUrl| wanted.iter().any(|w| w == t.as_str());
        let derived = |t: &str| {
            (t == TypeUrl::ClusterLoadAssignment.as_str() && has(TypeUrl::Cluster))
                || (t == TypeUrl::RouteConfiguration.as_str() && has(TypeUrl::Listener))
        };
        let roots: Vec<&String> = wanted.iter().filter(|t| !derived(t)).collect();
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in resources {
            let (t, name) = match typed_name(r) {
                Some((t, name)) => {
                    anyhow::ensure!(
                        has(t),
                        "--resource {r}: {} is not subscribed (add --type {})",
                        t.short_name(),
                        t.short_name()
                    );
                    (t.as_str().to_string(), name)
                }
                None => match roots.as_slice() {
                    [one] => ((*one).clone(), r.as_str()),
                    _ => anyhow::bail!(
                        "--resource {r} is ambiguous with several types ({}): write TYPE/NAME, e.g. {}/{r}",
                        roots
                            .iter()
                            .map(|t| short(t))
                            .collect::<Vec<_>>()
                            .join(", "),
                        roots.first().map_or("cds", |t| short(t)),
                    ),
                },
            };
            names.entry(t).or_default().insert(name.to_string());
        }
        let types = wanted
            .iter()
            .map(|t| {
                let want = match names.remove(t) {
                    Some(n) => Want::Names(n),
                    None if t == TypeUrl::Secret.as_str() => Want::Names(BTreeSet::from([
                        switchyard_dataplane_runtime::xds::ROOT_CA.to_string(),
                    ])),
                    None if t == TypeUrl::ClusterLoadAssignment.as_str() && derived(t) => {
                        Want::ClusterEndpoints
                    }
                    None if t == TypeUrl::RouteConfiguration.as_str() && derived(t) => {
                        Want::ListenerRoutes
                    }
                    None => Want::Wildcard,
                };
                (t.clone(), want)
            })
            .collect();
        Ok(Plan { types })
    }
}

/// A `--nack` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NackRule {
    type_url: String,
    name: Option<String>,
}

impl NackRule {
    fn parse(s: &str, plan: &Plan) -> anyhow::Result<NackRule> {
        let rule = if let Some((t, name)) = typed_name(s) {
            NackRule {
                type_url: t.as_str().to_string(),
                name: Some(name.to_string()),
            }
        } else {
            match type_arg(s) {
                Ok(TypeArg::Known(t)) => NackRule {
                    type_url: t.as_str().to_string(),
                    name: None,
                },
                Ok(TypeArg::Raw(u)) => NackRule {
                    type_url: u,
                    name: None,
                },
                Ok(TypeArg::All) => anyhow::bail!("--nack {s}: name one type"),
                Err(e) => anyhow::bail!("--nack {s}: {e}"),
            }
        };
        anyhow::ensure!(
            plan.types.iter().any(|(t, _)| *t == rule.type_url),
            "--nack {s}: {} is not subscribed",
            short(&rule.type_url)
        );
        Ok(rule)
    }

    fn matches(&self, r: &Response) -> bool {
        r.type_url == self.type_url
            && self
                .name
                .as_ref()
                .is_none_or(|n| r.resources.iter().any(|res| res.name == *n))
    }

    fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{}/{n}", short(&self.type_url)),
            None => short(&self.type_url).to_string(),
        }
    }
}

/// The node to impersonate and its kind.
fn build_node(a: &ClientArgs, warn: &mut impl Write) -> anyhow::Result<(Node, ProxyKind)> {
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    let (id, kind) = match &a.node_id {
        Some(id) => match ProxyId::parse(id, ProxyMetadata::default()) {
            Ok(p) => {
                if let Some(k) = a.kind
                    && k != p.kind
                {
                    anyhow::bail!("--kind {k} contradicts the node id's kind {}", p.kind);
                }
                match &p.role {
                    ProxyRole::Pod { name, namespace } => {
                        metadata.insert("NAMESPACE".into(), namespace.clone());
                        metadata.insert("POD_NAME".into(), name.clone());
                    }
                    ProxyRole::Node { name } => {
                        metadata.insert("NODE_NAME".into(), name.clone());
                    }
                }
                (id.clone(), p.kind)
            }
            Err(e) => {
                // Impersonating a broken proxy is a use too: say what the server will think.
                writeln!(
                    warn,
                    "warning: {e}; the control plane will likely refuse this node"
                )?;
                (id.clone(), a.kind.unwrap_or(ProxyKind::Envoy))
            }
        },
        None => {
            let kind = a.kind.unwrap_or(ProxyKind::Envoy);
            if kind.is_node_agent() {
                let (Some(node), Some(ip)) = (&a.node, a.ip) else {
                    anyhow::bail!(
                        "--kind {kind} needs --node and --ip (the node's name and address), or --node-id"
                    );
                };
                anyhow::ensure!(
                    a.namespace.is_none() && a.pod.is_none(),
                    "--kind {kind} is a node agent: --namespace and --pod do not apply"
                );
                metadata.insert("NODE_NAME".into(), node.clone());
                (format!("{kind}~{ip}~{node}~switchyard-system"), kind)
            } else {
                let (Some(ns), Some(pod), Some(ip)) = (&a.namespace, &a.pod, a.ip) else {
                    anyhow::bail!(
                        "--kind {kind} needs --namespace, --pod and --ip (the pod's), or --node-id"
                    );
                };
                metadata.insert("NAMESPACE".into(), ns.clone());
                metadata.insert("POD_NAME".into(), pod.clone());
                if let Some(node) = &a.node {
                    metadata.insert("NODE_NAME".into(), node.clone());
                }
                (
                    format!("{kind}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
                    kind,
                )
            }
        }
    };
    metadata.insert("DATAPLANE_KIND".into(), kind.to_string());
    for (k, v) in &a.metadata {
        metadata.insert(k.clone(), v.clone());
    }
    // The server's checks, here, so that a contradiction is reported before connecting.
    if a.node_id.is_none() || ProxyId::parse(&id, ProxyMetadata::default()).is_ok() {
        let field = |k: &str| metadata.get(k).filter(|v| !v.is_empty()).cloned();
        let md =
            ProxyMetadata::from_fields(field).map_err(|e| anyhow::anyhow!("--metadata: {e}"))?;
        ProxyId::parse(&id, md).context("the node would be refused")?;
    }
    let node = ads_node(id, "yardctl", env!("CARGO_PKG_VERSION"), metadata);
    Ok((node, kind))
}

/// Where the stream goes, for error messages.
#[derive(Debug)]
struct Target {
    address: String,
    tls: bool,
    trust_domain: String,
}

impl Target {
    /// `e` with the address and, where a common cause is known, a hint.
    fn explain(&self, e: AdsError) -> anyhow::Error {
        let status = match &e {
            AdsError::Open(s) | AdsError::Stream(s) => Some(s),
            _ => None,
        };
        let transport = status.is_some_and(|s| {
            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
                || (s.code() == tonic::Code::Internal && s.message().contains("h2 protocol error"))
        });
        if transport {
            let hint = if self.tls {
                format!(
                    "is the control plane's TLS port (15012) there, and does its certificate for {} chain to the --ca-root-file?",
                    control_plane_identity(&self.trust_domain)
                )
            } else {
                "is the control plane's plaintext port (15010) there? the TLS port (15012) needs --ca-root-file".into()
            };
            anyhow::anyhow!("cannot get xDS from {}: {e} ({hint})", self.address)
        } else {
            anyhow::anyhow!("xDS from {}: {e}", self.address)
        }
    }
}

async fn open(a: &ClientArgs, node: Node) -> anyhow::Result<(AdsClient, Target)> {
    let address = tokio::net::lookup_host(&a.xds)
        .await
        .with_context(|| {
            format!(
                "cannot resolve the xDS address {:?} (expected HOST:PORT)",
                a.xds
            )
        })?
        .next()
        .with_context(|| format!("xDS address {:?} resolves to no address", a.xds))?;
    let transport = match &a.ca_root_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the CA root file {}", path.display()))?;
            let bundle = TrustBundle::from_pem(&text)
                .with_context(|| format!("CA root file {}", path.display()))?;
            let store = IdentityStore::new(bundle);
            if let (Some(chain), Some(key)) = (&a.cert_chain, &a.key) {
                let chain_pem = std::fs::read_to_string(chain)
                    .with_context(|| format!("reading {}", chain.display()))?;
                let key_pem = std::fs::read_to_string(key)
                    .with_context(|| format!("reading {}", key.display()))?;
                let info = store
                    .set_certificate(&[chain_pem], &key_pem)
                    .with_context(|| format!("client certificate {}", chain.display()))?;
                tracing::debug!(identity = %info.id, "presenting a client certificate");
            }
            CaTransport::Tls {
                server: control_plane_identity(&a.trust_domain),
                store,
            }
        }
        None => CaTransport::Plaintext,
    };
    let channel = control_plane_channel(address, &transport, None)?;
    let variant = match (a.sotw, a.delta) {
        (true, _) => Variant::Sotw,
        (false, _) => Variant::Delta,
    };
    Ok((
        AdsClient::connect(channel, node, variant),
        Target {
            address: address_label(&a.xds, address),
            tls: a.ca_root_file.is_some(),
            trust_domain: a.trust_domain.clone(),
        },
    ))
}

fn address_label(given: &str, resolved: SocketAddr) -> String {
    if given == resolved.to_string() {
        given.to_string()
    } else {
        format!("{given} ({resolved})")
    }
}

/// A resource as held.
#[derive(Debug, Clone)]
struct Held {
    version: String,
    any: wkt::Any,
    json: Value,
}

/// One subscribed type.
#[derive(Debug)]
struct TypeView {
    type_url: String,
    want: Want,
    /// Names asked for (`*` for wildcard); `None`: not subscribed.
    asked: Option<BTreeSet<String>>,
    /// Names were added to the subscription and not all answered yet.
    awaiting: bool,
    responses: u64,
    held: BTreeMap<String, Held>,
    /// Names the server said do not exist (delta).
    missing: BTreeSet<String>,
}

impl TypeView {
    fn named(&self) -> bool {
        self.asked.as_ref().is_some_and(|a| !a.contains(WILDCARD))
    }

    fn covered(&self) -> bool {
        self.asked.as_ref().is_none_or(|a| {
            a.iter()
                .filter(|n| *n != WILDCARD)
                .all(|n| self.held.contains_key(n) || self.missing.contains(n))
        })
    }
}

/// What happened with one response.
#[derive(Debug, Default)]
struct Event {
    short: String,
    version: String,
    nonce: String,
    added: Vec<(String, String)>,
    updated: Vec<Update>,
    unchanged: usize,
    removed: Vec<String>,
    absent: Vec<String>,
    violations: Vec<String>,
    verdict: String,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Update {
    name: String,
    old_version: String,
    new_version: String,
    diff: Vec<String>,
}

/// A NACK sent, and what the server sent after it.
#[derive(Debug)]
struct NackRecord {
    short: String,
    nonce: String,
    later: BTreeSet<String>,
}

/// The subscriptions, what they hold, and the checks.
#[derive(Debug)]
struct Session {
    client: AdsClient,
    types: Vec<TypeView>,
    nack_rules: Vec<NackRule>,
    nacks: Vec<NackRecord>,
    checker: Checker,
    consistency_reported: BTreeSet<String>,
}

impl Session {
    fn new(client: AdsClient, plan: Plan, nack_rules: Vec<NackRule>) -> Self {
        Session {
            checker: Checker::new(client.variant()),
            client,
            types: plan
                .types
                .into_iter()
                .map(|(type_url, want)| TypeView {
                    type_url,
                    want,
                    asked: None,
                    awaiting: false,
                    responses: 0,
                    held: BTreeMap::new(),
                    missing: BTreeSet::new(),
                })
                .collect(),
            nack_rules,
            nacks: Vec::new(),
            consistency_reported: BTreeSet::new(),
        }
    }

    fn view(&self, type_url: &str) -> Option<&TypeView> {
        self.types.iter().find(|t| t.type_url == type_url)
    }

    /// The first subscriptions; types that follow others wait for them.
    async fn start(&mut self) -> Result<Vec<String>, AdsError> {
        let mut notes = Vec::new();
        for i in 0..self.types.len() {
            let names = match &self.types[i].want {
                Want::Wildcard => BTreeSet::from([WILDCARD.to_string()]),
                Want::Names(n) => n.clone(),
                Want::ClusterEndpoints | Want::ListenerRoutes => continue,
            };
            let t = self.types[i].type_url.clone();
            notes.extend(self.resubscribe(&t, names).await?);
        }
        Ok(notes)
    }

    async fn resubscribe(
        &mut self,
        type_url: &str,
        names: BTreeSet<String>,
    ) -> Result<Option<String>, AdsError> {
        let Some(view) = self.types.iter_mut().find(|t| t.type_url == type_url) else {
            return Ok(None);
        };
        let before = view.asked.clone().unwrap_or_default();
        if view.asked.as_ref() == Some(&names) || (view.asked.is_none() && names.is_empty()) {
            return Ok(None);
        }
        let added: Vec<&String> = names.difference(&before).collect();
        let dropped: Vec<&String> = before.difference(&names).collect();
        let note = format!(
            "subscribe {}: {}",
            short(type_url),
            if names.contains(WILDCARD) {
                "* (every resource)".to_string()
            } else {
                let mut parts = Vec::new();
                if !added.is_empty() {
                    parts.push(format!("+{}", list(&added)));
                }
                if !dropped.is_empty() {
                    parts.push(format!("-{}", list(&dropped)));
                }
                parts.join(" ")
            }
        );
        if !added.is_empty() {
            view.awaiting = true;
        }
        if !names.contains(WILDCARD) {
            view.held.retain(|n, _| names.contains(n));
            view.missing.retain(|n| names.contains(n));
        }
        let list: Vec<String> = names.iter().cloned().collect();
        view.asked = Some(names);
        self.checker.expect_reply(type_url);
        self.client.subscribe(type_url, &list).await?;
        Ok(Some(note))
    }

    async fn on_response(&mut self, r: Response) -> Result<Event, AdsError> {
        let subscribed = self.client.subscribed(&r.type_url).is_some();
        let mut ev = Event {
            short: short(&r.type_url).to_string(),
            version: r.version.clone(),
            nonce: r.nonce.clone(),
            violations: self.checker.check(&r, subscribed),
            ..Default::default()
        };
        for rec in &mut self.nacks {
            if rec.later.insert(ev.short.clone()) {
                ev.notes.push(format!(
                    "the server keeps serving after the NACK of {} (nonce {}): {} arrived",
                    rec.short, rec.nonce, ev.short
                ));
            }
        }
        let variant = self.client.variant();
        let Some(view) = self.types.iter_mut().find(|t| t.type_url == r.type_url) else {
            ev.verdict = "ignored (not subscribed)".into();
            return Ok(ev);
        };
        view.responses += 1;
        for res in &r.resources {
            apply(view, res, &mut ev);
        }
        for name in &r.removed {
            if view.held.remove(name).is_some() {
                ev.removed.push(name.clone());
            } else {
                ev.absent.push(name.clone());
            }
            if view.named() {
                view.missing.insert(name.clone());
            }
        }
        // Delta answers every subscribed name (a resource or "does not exist"); SotW leaves
        // names that do not exist out, so any answer after the subscription has to do.
        view.awaiting = match variant {
            Variant::Delta if view.named() => !view.covered(),
            _ => false,
        };
        let rule = self.nack_rules.iter().find(|n| n.matches(&r)).cloned();
        match rule {
            Some(rule) => {
                self.client.nack(&r, NACK_MESSAGE).await?;
                ev.verdict = format!("NACK ({NACK_MESSAGE}; --nack {})", rule.describe());
                self.nacks.push(NackRecord {
                    short: ev.short.clone(),
                    nonce: r.nonce.clone(),
                    later: BTreeSet::new(),
                });
            }
            None => {
                self.client.ack(&r).await?;
                ev.verdict = "ACK".into();
            }
        }
        // Types that follow this one.
        let followers: Vec<(String, BTreeSet<String>)> = self
            .types
            .iter()
            .filter_map(|t| {
                let names = match (&t.want, TypeUrl::parse(&r.type_url)) {
                    (Want::ClusterEndpoints, Ok(TypeUrl::Cluster)) => {
                        eds_clusters(self.view(&r.type_url)?.held.values())
                    }
                    (Want::ListenerRoutes, Ok(TypeUrl::Listener)) => {
                        listener_routes(self.view(&r.type_url)?.held.values())
                    }
                    _ => return None,
                };
                Some((t.type_url.clone(), names))
            })
            .collect();
        for (t, names) in followers {
            ev.notes.extend(self.resubscribe(&t, names).await?);
        }
        Ok(ev)
    }

    /// Whether every type has answered what it was asked.
    fn answered(&self) -> bool {
        self.types.iter().all(|t| self.type_answered(t))
    }

    fn type_answered(&self, t: &TypeView) -> bool {
        match t.want {
            Want::ClusterEndpoints | Want::ListenerRoutes => {
                let root = if t.want == Want::ClusterEndpoints {
                    TypeUrl::Cluster
                } else {
                    TypeUrl::Listener
                };
                let root_done = self
                    .view(root.as_str())
                    .is_some_and(|r| self.type_answered(r));
                // nothing to ask for is an answer too
                root_done
                    && match &t.asked {
                        None => true,
                        Some(a) => a.is_empty() || (t.responses > 0 && !t.awaiting),
                    }
            }
            _ => t.asked.is_some() && t.responses > 0 && !t.awaiting,
        }
    }

    /// The types still waited for, for the timeout message.
    fn pending(&self) -> Vec<String> {
        self.types
            .iter()
            .filter(|t| !self.type_answered(t))
            .map(|t| {
                let s = short(&t.type_url);
                if t.responses == 0 {
                    match (&t.asked, &t.want) {
                        (None, Want::ClusterEndpoints) => {
                            format!("{s} (asked for once cds arrives)")
                        }
                        (None, Want::ListenerRoutes) => format!("{s} (asked for once lds arrives)"),
                        _ => format!("{s} (no response)"),
                    }
                } else {
                    let waiting: Vec<&String> = t
                        .asked
                        .iter()
                        .flatten()
                        .filter(|n| *n != WILDCARD && !t.held.contains_key(*n))
                        .collect();
                    format!("{s} (no answer yet for {})", list(&waiting))
                }
            })
            .collect()
    }

    /// Checks across types once the set is complete; each problem is reported once.
    fn consistency(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        for (source, target, what) in [
            (
                TypeUrl::Cluster,
                TypeUrl::ClusterLoadAssignment,
                "EDS cluster",
            ),
            (TypeUrl::Listener, TypeUrl::RouteConfiguration, "route"),
        ] {
            let (Some(s), Some(t)) = (self.view(source.as_str()), self.view(target.as_str()))
            else {
                continue;
            };
            let referenced = if target == TypeUrl::ClusterLoadAssignment {
                eds_clusters(s.held.values())
            } else {
                listener_routes(s.held.values())
            };
            // Only what the subscription covers can be expected.
            let Some(asked) = &t.asked else { continue };
            for n in referenced {
                if (asked.contains(&n) || asked.contains(WILDCARD)) && !t.held.contains_key(&n) {
                    found.push(format!(
                        "{} missing for {what} {n} named in {}",
                        target.short_name().to_uppercase(),
                        source.short_name().to_uppercase()
                    ));
                }
            }
        }
        let fresh: Vec<String> = found
            .into_iter()
            .filter(|v| self.consistency_reported.insert(v.clone()))
            .collect();
        self.checker.count += fresh.len();
        fresh
    }

    /// `<type>/<name>` of each resource asked for by name that the server did not send.
    fn not_sent(&self) -> Vec<String> {
        self.types
            .iter()
            .filter(|t| t.named())
            .flat_map(|t| {
                t.asked
                    .iter()
                    .flatten()
                    .filter(|n| !t.held.contains_key(*n))
                    .map(|n| format!("{}/{n}", short(&t.type_url)))
            })
            .collect()
    }

    /// `{"<type>": [{name, version, resource}]}` in plan order, names sorted.
    fn resources_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for t in &self.types {
            out.insert(
                short(&t.type_url).to_string(),
                Value::Array(
                    t.held
                        .iter()
                        .map(|(name, h)| {
                            json!({"name": name, "version": h.version, "resource": h.json})
                        })
                        .collect(),
                ),
            );
        }
        Value::Object(out)
    }
}

fn list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies one resource to the view, noting what it changed.
fn apply(view: &mut TypeView, res: &Resource, ev: &mut Event) {
    view.missing.remove(&res.name);
    let json = match switchyard_protos::json::any_to_json(&res.resource) {
        Ok(j) => j,
        Err(e) => json!({ "error": e.to_string() }),
    };
    let new = Held {
        version: res.version.clone(),
        any: res.resource.clone(),
        json,
    };
    match view.held.insert(res.name.clone(), new) {
        None => ev.added.push((res.name.clone(), res.version.clone())),
        Some(old) if old.any == res.resource => ev.unchanged += 1,
        Some(old) => {
            let mut diff = Vec::new();
            if let Some(h) = view.held.get(&res.name) {
                json_diff("", &old.json, &h.json, &mut diff);
            }
            ev.updated.push(Update {
                name: res.name.clone(),
                old_version: old.version,
                new_version: res.version.clone(),
                diff,
            });
        }
    }
}

/// EDS names of the EDS clusters: the service name, or the cluster name without one.
fn eds_clusters<'a>(held: impl IntoIterator<Item = &'a Held>) -> BTreeSet<String> {
    held.into_iter()
        .filter_map(|h| Cluster::decode(h.any.value.as_slice()).ok())
        .filter(|c| {
            c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
        .map(|c| {
            c.eds_cluster_config
                .map(|e| e.service_name)
                .filter(|s| !s.is_empty())
                .unwrap_or(c.name)
        })
        .collect()
}

/// Route names the listeners' HTTP connection managers fetch over RDS (filter chains and
/// API listeners).
fn listener_routes<'a>(held: impl IntoIterator<Item = &'a Held>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut hcm = |any: &wkt::Any| {
        if any.type_url != HttpConnectionManager::type_url() {
            return;
        }
        if let Ok(h) = HttpConnectionManager::decode(any.value.as_slice())
            && let Some(RouteSpecifier::Rds(rds)) = h.route_specifier
            && !rds.route_config_name.is_empty()
        {
            out.insert(rds.route_config_name);
        }
    };
    for h in held {
        let Ok(l) = Listener::decode(h.any.value.as_slice()) else {
            continue;
        };
        let chains: Vec<&FilterChain> = l
            .filter_chains
            .iter()
            .chain(l.default_filter_chain.as_ref())
            .collect();
        for f in chains.iter().flat_map(|c| &c.filters) {
            if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type {
                hcm(any);
            }
        }
        if let Some(any) = l
            .api_listener
            .as_ref()
            .and_then(|a| a.api_listener.as_ref())
        {
            hcm(any);
        }
    }
    out
}

/// The server's side of the protocol, checked on every response.
#[derive(Debug)]
struct Checker {
    variant: Variant,
    nonces: HashSet<String>,
    /// SotW: per type, per version, the content hash of each resource seen with it.
    sotw: HashMap<String, HashMap<String, BTreeMap<String, u64>>>,
    /// Delta: per type and name, the last version and content hash.
    delta: HashMap<(String, String), (String, u64)>,
    /// Delta: the generation (`system_version_info`) of the latest push and the push-order
    /// rank of the latest type pushed in it.
    pushed: Option<(String, usize, String)>,
    /// Types whose subscription changed and whose next response is a reply, not a push.
    replies: HashSet<String>,
    count: usize,
}

/// Rank of a type in the order a management server must push them (CDS, EDS, LDS, RDS, then
/// the rest as Switchyard pushes them); `None` for types outside that order.
fn push_rank(type_url: &str) -> Option<usize> {
    TypeUrl::parse(type_url)
        .ok()
        .and_then(|t| TypeUrl::ALL.iter().position(|x| *x == t))
}

/// Versions remembered per type for the SotW version check.
const SOTW_VERSIONS_KEPT: usize = 256;

fn content_hash(any: &wkt::Any) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    h.finish()
}

impl Checker {
    fn new(variant: Variant) -> Self {
        Checker {
            variant,
            nonces: HashSet::new(),
            sotw: HashMap::new(),
            delta: HashMap::new(),
            pushed: None,
            replies: HashSet::new(),
            count: 0,
        }
    }

    /// The next response of `type_url` answers a subscription change.
    fn expect_reply(&mut self, type_url: &str) {
        self.replies.insert(type_url.to_string());
    }

    /// ADS order within one delta push: CDS before EDS before LDS before RDS.
    fn check_order(&mut self, r: &Response) -> Option<String> {
        if self.replies.remove(&r.type_url) {
            return None;
        }
        let rank = push_rank(&r.type_url)?;
        let s = short(&r.type_url);
        let broken = match &self.pushed {
            Some((generation, last, last_type)) if *generation == r.version && rank < *last => {
                Some(format!(
                    "ADS order broken in generation {generation}: {s} pushed after {}",
                    short(last_type)
                ))
            }
            _ => None,
        };
        let keep_last =
            matches!(&self.pushed, Some((g, last, _)) if *g == r.version && *last > rank);
        if !keep_last {
            self.pushed = Some((r.version.clone(), rank, r.type_url.clone()));
        }
        broken
    }

    fn check(&mut self, r: &Response, subscribed: bool) -> Vec<String> {
        let s = short(&r.type_url);
        let mut v = Vec::new();
        if r.nonce.is_empty() {
            v.push(format!("{s} response without a nonce"));
        } else if !self.nonces.insert(r.nonce.clone()) {
            v.push(format!("{s} response repeats nonce {}", r.nonce));
        }
        if !subscribed {
            v.push(format!(
                "{} response, but it was never subscribed",
                r.type_url
            ));
        }
        let mut names = BTreeSet::new();
        for res in &r.resources {
            if res.resource.type_url.is_empty() {
                v.push(format!("{s} resource {:?} has no body", res.name));
            } else if res.resource.type_url != r.type_url {
                v.push(format!(
                    "{s} resource {:?} is a {}: the response is for {}",
                    res.name, res.resource.type_url, r.type_url
                ));
            }
            if res.name.is_empty() {
                v.push(format!("{s} resource without a name"));
            } else if !names.insert(res.name.as_str()) {
                v.push(format!("{s} resource {} twice in one response", res.name));
            }
        }
        match self.variant {
            Variant::Sotw => {
                if r.version.is_empty() {
                    v.push(format!("{s} response without version_info"));
                }
                let content: BTreeMap<String, u64> = r
                    .resources
                    .iter()
                    .map(|res| (res.name.clone(), content_hash(&res.resource)))
                    .collect();
                let versions = self.sotw.entry(r.type_url.clone()).or_default();
                if versions.len() > SOTW_VERSIONS_KEPT {
                    versions.clear();
                }
                // Only content is compared: the same version may come with another set of
                // resources when the subscription changed, or split over several responses.
                let seen = versions.entry(r.version.clone()).or_default();
                let changed: Vec<&String> = content
                    .iter()
                    .filter(|(n, h)| seen.get(*n).is_some_and(|old| old != *h))
                    .map(|(n, _)| n)
                    .collect();
                if !changed.is_empty() {
                    v.push(format!(
                        "{s} version_info {} again with different content for {}",
                        r.version,
                        list(&changed)
                    ));
                }
                seen.extend(content);
            }
            Variant::Delta => {
                if let Some(o) = self.check_order(r) {
                    v.push(o);
                }
                for res in &r.resources {
                    if res.version.is_empty() {
                        v.push(format!("{s} resource {} without a version", res.name));
                        continue;
                    }
                    let h = content_hash(&res.resource);
                    let key = (r.type_url.clone(), res.name.clone());
                    if let Some((old_version, old_hash)) = self.delta.get(&key)
                        && *old_version == res.version
                        && *old_hash != h
                    {
                        v.push(format!(
                            "{s} resource {} changed but kept version {}",
                            res.name, res.version
                        ));
                    }
                    self.delta.insert(key, (res.version.clone(), h));
                }
                for n in &r.removed {
                    if names.contains(n.as_str()) {
                        v.push(format!("{s} resource {n} both updated and removed"));
                    }
                }
            }
        }
        self.count += v.len();
        v
    }
}

/// Changed leaves between two JSON values, as `path: old -> new`.
fn json_diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = join_key(path, k);
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => json_diff(&p, x, y, out),
                    (Some(x), None) => leaves(&p, x, true, out),
                    (None, Some(y)) => leaves(&p, y, false, out),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => json_diff(&p, x, y, out),
                    (Some(x), None) => leaves(&p, x, true, out),
                    (None, Some(y)) => leaves(&p, y, false, out),
                    (None, None) => {}
                }
            }
        }
        _ if old != new => out.push(format!("{}: {old} -> {new}", display_path(path))),
        _ => {}
    }
}

/// Every leaf of a subtree that only one side has.
fn leaves(path: &str, v: &Value, removed: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                leaves(&join_key(path, k), x, removed, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                leaves(&format!("{path}[{i}]"), x, removed, out);
            }
        }
        _ if removed => out.push(format!("{}: {v} -> (none)", display_path(path))),
        _ => out.push(format!("{}: (none) -> {v}", display_path(path))),
    }
}

fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::String(key.to_string())),
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(whole resource)"
    } else {
        path
    }
}

/// A line about one resource for the table.
fn summary(type_url: &str, h: &Held, session: &Session) -> String {
    let bytes = h.any.value.as_slice();
    let result: Result<String, prost::DecodeError> = (|| {
        Ok(match TypeUrl::parse(type_url) {
            Ok(TypeUrl::Cluster) => {
                let c = Cluster::decode(bytes)?;
                match c.cluster_discovery_type {
                    Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32 => {
                        let service = c
                            .eds_cluster_config
                            .map(|e| e.service_name)
                            .filter(|s| !s.is_empty())
                            .unwrap_or(c.name);
                        let eds = session
                            .view(TypeUrl::ClusterLoadAssignment.as_str())
                            .and_then(|v| v.held.get(&service))
                            .and_then(|h| {
                                ClusterLoadAssignment::decode(h.any.value.as_slice()).ok()
                            });
                        match eds {
                            Some(cla) => {
                                format!("EDS, {}", plural(endpoints(&cla).len(), "endpoint"))
                            }
                            None => "EDS".into(),
                        }
                    }
                    Some(ClusterDiscoveryType::Type(t)) => {
                        let kind = DiscoveryType::try_from(t)
                            .map_or_else(|_| format!("type {t}"), |d| d.as_str_name().to_string());
                        match c.load_assignment {
                            Some(cla) if !cla.endpoints.is_empty() => {
                                format!("{kind}, {}", plural(endpoints(&cla).len(), "endpoint"))
                            }
                            _ => kind,
                        }
                    }
                    Some(ClusterDiscoveryType::ClusterType(ct)) => format!("custom {}", ct.name),
                    None => "EDS".into(),
                }
            }
            Ok(TypeUrl::ClusterLoadAssignment) => {
                let eps = endpoints(&ClusterLoadAssignment::decode(bytes)?);
                format!("{}: {}", plural(eps.len(), "endpoint"), abbreviate(&eps, 4))
            }
            Ok(TypeUrl::Listener) => {
                let l = Listener::decode(bytes)?;
                let routes = listener_routes([h]);
                let routes = if routes.is_empty() {
                    String::new()
                } else {
                    format!(", routes {}", list(&routes.into_iter().collect::<Vec<_>>()))
                };
                if l.api_listener.is_some() {
                    format!("api listener{routes}")
                } else {
                    let default = if l.default_filter_chain.is_some() {
                        " + default"
                    } else {
                        ""
                    };
                    format!(
                        "{}, {}{default}{routes}",
                        l.address
                            .as_ref()
                            .map_or_else(|| "no address".into(), socket),
                        plural(l.filter_chains.len(), "filter chain")
                    )
                }
            }
            Ok(TypeUrl::RouteConfiguration) => {
                let rc = RouteConfiguration::decode(bytes)?;
                let routes: usize = rc.virtual_hosts.iter().map(|v| v.routes.len()).sum();
                format!(
                    "{}, {}",
                    plural(rc.virtual_hosts.len(), "virtual host"),
                    plural(routes, "route")
                )
            }
            Ok(TypeUrl::Secret) => match Secret::decode(bytes)?.r#type {
                Some(secret::Type::ValidationContext(vc)) => {
                    let roots = vc
                        .trusted_ca
                        .and_then(|d| d.specifier)
                        .map(|s| match s {
                            switchyard_protos::envoy::envoy::config::core::v3::data_source::Specifier::InlineString(s) => s.matches("BEGIN CERTIFICATE").count(),
                            switchyard_protos::envoy::envoy::config::core::v3::data_source::Specifier::InlineBytes(b) => String::from_utf8_lossy(&b).matches("BEGIN CERTIFICATE").count(),
                            _ => 0,
                        })
                        .unwrap_or(0);
                    format!("trust bundle, {}", plural(roots, "root"))
                }
                Some(secret::Type::TlsCertificate(_)) => "certificate and key".into(),
                Some(_) => "other secret".into(),
                None => "empty".into(),
            },
            Ok(TypeUrl::Workload) => {
                let w = workload::Workload::decode(bytes)?;
                let mode = workload::DataplaneMode::try_from(w.dataplane_mode)
                    .map_or("?", |m| m.as_str_name())
                    .trim_start_matches("DATAPLANE_MODE_")
                    .to_lowercase();
                let mut s = ips(&w.addresses);
                if !w.node.is_empty() {
                    s.push_str(&format!(" node={}", w.node));
                }
                s.push_str(&format!(" mode={mode}"));
                if !w.services.is_empty() {
                    s.push_str(&format!(" services={}", w.services.len()));
                }
                s
            }
            Ok(TypeUrl::Service) => {
                let svc = workload::Service::decode(bytes)?;
                let ports: Vec<String> = svc
                    .ports
                    .iter()
                    .map(|p| format!("{}/{}", p.service_port, p.app_protocol))
                    .collect();
                format!("{} {}", ips(&svc.addresses), ports.join(","))
            }
            Ok(TypeUrl::Authorization) => {
                let a = workload::Authorization::decode(bytes)?;
                let action = workload::Action::try_from(a.action)
                    .map_or("?", |x| x.as_str_name())
                    .trim_start_matches("ACTION_")
                    .to_lowercase();
                let scope = workload::Scope::try_from(a.scope)
                    .map_or("?", |x| x.as_str_name())
                    .trim_start_matches("SCOPE_")
                    .to_lowercase();
                format!("{action} scope={scope} {}", plural(a.rules.len(), "rule"))
            }
            Err(_) => format!("{} bytes", bytes.len()),
        })
    })();
    result.unwrap_or_else(|e| format!("undecodable: {e}"))
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn abbreviate(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(", +{} more", items.len() - max));
    }
    s
}

fn socket(a: &Address) -> String {
    match &a.address {
        Some(address::Address::SocketAddress(sa)) => {
            use switchyard_protos::envoy::envoy::config::core::v3::socket_address::PortSpecifier;
            match &sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => match sa.address.parse::<IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, *p as u16).to_string(),
                    Err(_) => format!("{}:{p}", sa.address),
                },
                Some(PortSpecifier::NamedPort(n)) => format!("{}:{n}", sa.address),
                None => sa.address.clone(),
            }
        }
        Some(address::Address::Pipe(p)) => format!("unix:{}", p.path),
        Some(address::Address::EnvoyInternalAddress(_)) => "internal".into(),
        None => "no address".into(),
    }
}

fn endpoints(cla: &ClusterLoadAssignment) -> Vec<String> {
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                ep.address.as_ref().map_or_else(|| "?".into(), socket)
            }
            Some(lb_endpoint::HostIdentifier::EndpointName(n)) => n.clone(),
            None => "?".into(),
        })
        .collect()
}

fn ips(addresses: &[Vec<u8>]) -> String {
    let v: Vec<String> = addresses
        .iter()
        .map(|b| match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .map_or_else(|_| "?".into(), |a| IpAddr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .map_or_else(|_| "?".into(), |a| IpAddr::from(a).to_string()),
            _ => "?".into(),
        })
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// What `get` and `watch` share: parsed flags, the node and the opened stream.
async fn session(a: &ClientArgs) -> anyhow::Result<(Session, Node, Target)> {
    let (node, kind) = build_node(a, &mut std::io::stderr())?;
    let plan = Plan::new(kind, &a.types, &a.resources)?;
    let rules = a
        .nack
        .iter()
        .map(|s| NackRule::parse(s, &plan))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (client, target) = open(a, node.clone()).await?;
    Ok((Session::new(client, plan, rules), node, target))
}

/// Runs an `xds` subcommand.
pub async fn run(command: XdsCommand, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match command {
        XdsCommand::Get(args) => get(args, out).await,
        XdsCommand::Watch(args) => watch(args, out).await,
    }
}

async fn get(args: GetArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !args.timeout.0.is_zero(),
        "--timeout must be longer than 0s"
    );
    let (mut s, node, target) = session(&args.client).await?;
    let mut err = std::io::stderr();
    s.start().await.map_err(|e| target.explain(e))?;
    let deadline = tokio::time::Instant::now() + args.timeout.0;
    let mut violations = Vec::new();
    loop {
        let answered = s.answered();
        let until = if answered {
            deadline.min(tokio::time::Instant::now() + SETTLE)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, s.client.next()).await {
            Err(_) if answered => break,
            Err(_) => anyhow::bail!(
                "no complete set from {} within {:?}: still waiting for {}",
                target.address,
                args.timeout.0,
                s.pending().join(", ")
            ),
            Ok(Err(e)) => return Err(target.explain(e)),
            Ok(Ok(r)) => {
                let ev = s.on_response(r).await.map_err(|e| target.explain(e))?;
                violations.extend(ev.violations);
                if ev.verdict.starts_with("NACK") {
                    writeln!(
                        err,
                        "nacked {} version {} nonce {}: {NACK_MESSAGE}",
                        ev.short, ev.version, ev.nonce
                    )?;
                }
                for n in ev
                    .notes
                    .iter()
                    .filter(|n| n.starts_with("the server keeps"))
                {
                    writeln!(err, "{n}")?;
                }
            }
        }
    }
    violations.extend(s.consistency());
    for name in s.not_sent() {
        writeln!(err, "not sent: {name} (does it exist?)")?;
    }
    for v in &violations {
        writeln!(err, "protocol violation: {v}")?;
    }
    match args.output {
        GetFormat::Json | GetFormat::Yaml => {
            let doc = json!({
                "node": node_json(&node),
                "resources": s.resources_json(),
            });
            if args.output == GetFormat::Json {
                serde_json::to_writer_pretty(&mut *out, &doc)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", serde_yaml_ng::to_string(&doc)?)?;
            }
        }
        GetFormat::Table => write!(out, "{}", table(&s))?,
    }
    out.flush()?;
    Ok(if args.client.strict && !violations.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn node_json(node: &Node) -> Value {
    switchyard_protos::json::to_json(Node::full_name().as_str(), &node.encode_to_vec())
        .unwrap_or_else(|e| json!({"id": node.id, "error": e.to_string()}))
}

fn table(s: &Session) -> String {
    let mut rows = vec![[
        "TYPE".to_string(),
        "NAME".to_string(),
        "VERSION".to_string(),
        "SUMMARY".to_string(),
    ]];
    for t in &s.types {
        for (name, h) in &t.held {
            rows.push([
                short(&t.type_url).to_string(),
                name.clone(),
                h.version.clone(),
                summary(&t.type_url, h, s),
            ]);
        }
    }
    let mut widths = [0usize; 3];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

async fn watch(args: WatchArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if let Some(d) = args.duration {
        anyhow::ensure!(!d.0.is_zero(), "--for must be longer than 0s");
    }
    let (mut s, node, target) = session(&args.client).await?;
    s.client.record_frames(args.trace);
    let variant = s.client.variant();
    writeln!(
        out,
        "watching as {} ({}) at {}",
        node.id,
        variant.as_str(),
        target.address
    )?;
    let notes = s.start().await.map_err(|e| target.explain(e))?;
    print_frames(&mut s.client, out)?;
    for n in notes {
        writeln!(out, "{n}")?;
    }
    out.flush()?;
    let end = args.duration.map(|d| tokio::time::Instant::now() + d.0);
    let mut responses = 0u64;
    let mut settle: Option<tokio::time::Instant> = None;
    let mut complete = false;
    loop {
        if args.count.is_some_and(|c| responses >= c) {
            break;
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        let wake = [end, settle].into_iter().flatten().min().unwrap_or(far);
        tokio::select! {
            r = s.client.next() => {
                let r = r.map_err(|e| target.explain(e))?;
                responses += 1;
                let ev = s.on_response(r).await.map_err(|e| target.explain(e))?;
                print_frames(&mut s.client, out)?;
                print_event(&ev, variant, out)?;
                settle = s.answered().then(|| tokio::time::Instant::now() + SETTLE);
            }
            _ = tokio::time::sleep_until(wake) => {
                if end.is_some_and(|e| tokio::time::Instant::now() >= e) {
                    break;
                }
                settle = None;
                if !complete {
                    complete = true;
                    let counts: Vec<String> = s
                        .types
                        .iter()
                        .map(|t| format!("{} {}", short(&t.type_url), t.held.len()))
                        .collect();
                    writeln!(out, "complete set: {}", counts.join(", "))?;
                }
                for v in s.consistency() {
                    writeln!(out, "protocol violation: {v}")?;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
        out.flush()?;
    }
    let violations = s.checker.count;
    if violations > 0 {
        writeln!(out, "{} protocol violations", violations)?;
    }
    out.flush()?;
    Ok(if args.client.strict && violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_frames(client: &mut AdsClient, out: &mut impl Write) -> anyhow::Result<()> {
    for f in client.take_frames() {
        let arrow = if f.is_request() { ">>" } else { "<<" };
        let name = f.message_name();
        let body = switchyard_protos::json::to_json(name, &f.encode_to_vec())
            .unwrap_or_else(|e| json!({ "error": e.to_string() }));
        let short_name = name.rsplit('.').next().unwrap_or(name);
        writeln!(out, "{arrow} {short_name} {body}")?;
    }
    Ok(())
}

fn print_event(ev: &Event, variant: Variant, out: &mut impl Write) -> anyhow::Result<()> {
    let version_label = match variant {
        Variant::Sotw => "version_info",
        Variant::Delta => "system_version_info",
    };
    writeln!(
        out,
        "{} {version_label}={} nonce={}: {} added, {} updated, {} removed, {} unchanged -> {}",
        ev.short,
        ev.version,
        ev.nonce,
        ev.added.len(),
        ev.updated.len(),
        ev.removed.len(),
        ev.unchanged,
        ev.verdict
    )?;
    for (name, version) in &ev.added {
        writeln!(out, "  added {name} version={version}")?;
    }
    for u in &ev.updated {
        writeln!(
            out,
            "  updated {} version={} -> {}",
            u.name, u.old_version, u.new_version
        )?;
        for line in u.diff.iter().take(MAX_DIFF_LINES) {
            writeln!(out, "    {line}")?;
        }
        if u.diff.len() > MAX_DIFF_LINES {
            writeln!(out, "    ... and {} more", u.diff.len() - MAX_DIFF_LINES)?;
        }
    }
    for name in &ev.removed {
        writeln!(out, "  removed {name}")?;
    }
    for name in &ev.absent {
        writeln!(out, "  does not exist: {name}")?;
    }
    for n in &ev.notes {
        writeln!(out, "  {n}")?;
    }
    for v in &ev.violations {
        writeln!(out, "protocol violation: {v}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
