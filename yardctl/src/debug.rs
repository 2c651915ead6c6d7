//! `yardctl proxy-status`, `proxy-config`, `diff` and `mode`: the control plane's view, read
//! from its admin API (`/debug/syncz`, `/debug/config_dump`, `/debug/mode`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::admin::get_json;

const ADMIN: &str = "127.0.0.1:15014";

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// `yardctl proxy-status`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  yardctl proxy-status --kind envoy -n default")]
pub struct StatusArgs {
    /// Control plane admin address.
    #[arg(long, default_value = ADMIN)]
    admin: String,
    /// Only proxies of this kind (sidecar, envoy, grpc, ztunnel, ebpf).
    #[arg(long)]
    kind: Option<String>,
    /// Only proxies in this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Format,
}

/// What `proxy-config` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// CDS.
    Clusters,
    /// LDS.
    Listeners,
    /// RDS.
    Routes,
    /// EDS.
    Endpoints,
    /// SDS.
    Secrets,
    /// Workload API: workloads.
    Workloads,
    /// Workload API: services.
    Services,
    /// Workload API: authorization policies.
    Policies,
    /// Everything.
    All,
}

impl Section {
    /// The admin API's type short name (`None`: all).
    fn type_name(self) -> Option<&'static str> {
        Some(match self {
            Section::Clusters => "cds",
            Section::Listeners => "lds",
            Section::Routes => "rds",
            Section::Endpoints => "eds",
            Section::Secrets => "sds",
            Section::Workloads => "workload",
            Section::Services => "service",
            Section::Policies => "authorization",
            Section::All => return None,
        })
    }
}

/// `yardctl proxy-config`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  yardctl proxy-config client-0.default clusters\n  yardctl proxy-config 'envoy~10.244.0.9~client-0.default~default.svc.cluster.local' all -o json"
)]
pub struct ConfigArgs {
    /// The proxy: its node id, or `<pod>.<namespace>` / `<node>` of a connected proxy.
    proxy: String,
    /// What to show.
    #[arg(value_enum, default_value = "all")]
    section: Section,
    /// Control plane admin address.
    #[arg(long, default_value = ADMIN)]
    admin: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Format,
}

/// `yardctl diff`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  yardctl diff client-0.default client-1.default\n  yardctl diff client-0.default --save before.json   # later:\n  yardctl diff client-0.default --against before.json"
)]
pub struct DiffArgs {
    /// The proxy (node id or `<pod>.<namespace>`).
    proxy: String,
    /// A second proxy to compare with.
    other: Option<String>,
    /// Only this part of the config.
    #[arg(long, value_enum, default_value = "all")]
    section: Section,
    /// Save the proxy's config to FILE (to compare `--against` later).
    #[arg(long, conflicts_with_all = ["other", "against"])]
    save: Option<PathBuf>,
    /// Compare the proxy's config now with one saved before.
    #[arg(long, conflicts_with = "other")]
    against: Option<PathBuf>,
    /// Exit 1 when there are differences (as diff(1) and `git diff --exit-code` do).
    #[arg(long)]
    exit_code: bool,
    /// Control plane admin address.
    #[arg(long, default_value = ADMIN)]
    admin: String,
}

/// `yardctl mode`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  yardctl mode default\n  yardctl mode default/web-0")]
pub struct ModeArgs {
    /// `<namespace>` or `<namespace>/<pod>`.
    target: String,
    /// Control plane admin address.
    #[arg(long, default_value = ADMIN)]
    admin: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Format,
}

fn print(
    out: &mut impl Write,
    format: Format,
    v: &Value,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(v)?)?,
        Format::Yaml => write!(out, "{}", serde_yaml_ng::to_string(v)?)?,
        Format::Table => write!(out, "{}", table())?,
    }
    Ok(())
}

/// Lays out rows under a header, columns padded to their widest cell.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = line(header.to_vec());
    for r in rows {
        s.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    s
}

/// The namespace a node id names (`<kind>~<ip>~<pod>.<ns>~...` or a node agent's
/// `switchyard-system`).
fn namespace_of(node_id: &str) -> Option<&str> {
    let mut parts = node_id.split('~');
    let (_, _, id, domain) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    match id.split_once('.') {
        Some((_, ns)) => Some(ns),
        None => domain.split('.').next(),
    }
}

const TYPE_ORDER: [&str; 8] = [
    "cds",
    "eds",
    "lds",
    "rds",
    "sds",
    "service",
    "workload",
    "authorization",
];

/// `yardctl proxy-status`.
pub async fn proxy_status(a: StatusArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let z = get_json(&a.admin, "/debug/syncz").await?;
    let proxies: Vec<&Value> = z
        .as_array()
        .context("/debug/syncz is not a list")?
        .iter()
        .filter(|p| a.kind.as_deref().is_none_or(|k| p["kind"] == k))
        .filter(|p| {
            a.namespace
                .as_deref()
                .is_none_or(|n| p["node"].as_str().and_then(namespace_of) == Some(n))
        })
        .collect();
    let v = Value::Array(proxies.iter().map(|p| (*p).clone()).collect());
    print(out, a.output, &v, || status_table(&proxies))?;
    Ok(ExitCode::SUCCESS)
}

/// The proxy-status table: a column per type any proxy subscribes to, in xDS order.
pub fn status_table(proxies: &[&Value]) -> String {
    let types: Vec<&str> = TYPE_ORDER
        .iter()
        .copied()
        .filter(|t| proxies.iter().any(|p| p["types"].get(*t).is_some()))
        .collect();
    let mut header = vec!["NODE", "KIND", "ADS"];
    let upper: Vec<String> = types.iter().map(|t| t.to_uppercase()).collect();
    header.extend(upper.iter().map(String::as_str));
    header.push("LAST NACK");
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            let mut row = vec![
                p["node"].as_str().unwrap_or("?").to_string(),
                p["kind"].as_str().unwrap_or("?").to_string(),
                p["variant"].as_str().unwrap_or("?").to_string(),
            ];
            let mut nack = String::new();
            for t in &types {
                let s = &p["types"][*t];
                row.push(match s["state"].as_str() {
                    None => "-".into(),
                    Some(state) => match s["acked_version"].as_str() {
                        Some(v) if state == "SYNCED" => format!("{state} {}", &v[..v.len().min(8)]),
                        _ => state.to_string(),
                    },
                });
                if let Some(m) = s["last_nack"].as_str() {
                    nack = format!("{t}: {m}");
                }
            }
            row.push(nack);
            row
        })
        .collect();
    columns(&header, &rows)
}

/// Finds the node id for `proxy`: itself when it looks like one, else the connected proxy
/// whose node id names `<pod>.<namespace>` or `<node>`.
async fn resolve(admin: &str, proxy: &str) -> anyhow::Result<String> {
    if proxy.contains('~') {
        return Ok(proxy.to_string());
    }
    let z = get_json(admin, "/debug/syncz").await?;
    let found: BTreeSet<String> = z
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["node"].as_str())
        .filter(|n| n.split('~').nth(2) == Some(proxy))
        .map(String::from)
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => anyhow::bail!(
            "no connected proxy is {proxy:?}: give `<pod>.<namespace>` of a connected proxy (see `yardctl proxy-status`) or a full node id (it need not be connected)"
        ),
        _ => anyhow::bail!(
            "{proxy:?} matches several connected proxies, give a full node id: {}",
            found.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

async fn config(admin: &str, node: &str, section: Section) -> anyhow::Result<Value> {
    let mut path = format!("/debug/config_dump?proxy={}", encode(node));
    if let Some(t) = section.type_name() {
        path.push_str(&format!("&type={t}"));
    }
    get_json(admin, &path).await
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One line about a resource, for tables.
fn summary(t: &str, r: &Value) -> String {
    match t {
        "cds" => {
            let kind = r["type"]
                .as_str()
                .unwrap_or(if r["edsClusterConfig"].is_object() {
                    "EDS"
                } else {
                    "?"
                });
            let tls = if r["transportSocketMatches"].is_array() {
                " mTLS"
            } else {
                ""
            };
            format!("{kind}{tls}")
        }
        "eds" => {
            let eps: Vec<String> = r["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|l| l["lbEndpoints"].as_array().into_iter().flatten())
                .filter_map(|e| {
                    let a = &e["endpoint"]["address"]["socketAddress"];
                    Some(format!("{}:{}", a["address"].as_str()?, a["portValue"]))
                })
                .collect();
            eps.join(", ")
        }
        "lds" => {
            let a = &r["address"]["socketAddress"];
            match a["address"].as_str() {
                Some(ip) => format!(
                    "{ip}:{} ({} chains)",
                    a["portValue"],
                    r["filterChains"].as_array().map(Vec::len).unwrap_or(0)
                ),
                None => "api listener".into(),
            }
        }
        "rds" => {
            let domains: Vec<&str> = r["virtualHosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["domains"][0].as_str())
                .collect();
            format!("{} virtual hosts: {}", domains.len(), domains.join(", "))
        }
        "workload" => format!(
            "{} {}",
            r["name"].as_str().unwrap_or(""),
            r["dataplaneMode"].as_str().unwrap_or("")
        ),
        _ => String::new(),
    }
}

/// The proxy-config table: a row per resource with a one-line summary.
pub fn config_table(node: &str, dump: &Value) -> String {
    let mut rows = Vec::new();
    for (t, list) in dump["resources"].as_object().into_iter().flatten() {
        for r in list.as_array().into_iter().flatten() {
            rows.push(vec![
                t.to_uppercase(),
                r["name"].as_str().unwrap_or("?").to_string(),
                r["version"].as_str().unwrap_or("?").to_string(),
                summary(t, &r["resource"]),
            ]);
        }
    }
    let mut s = format!(
        "{node} ({}connected, generation {})\n",
        if dump["connected"] == true {
            ""
        } else {
            "not "
        },
        dump["generation"]
    );
    s.push_str(&columns(&["TYPE", "NAME", "VERSION", "SUMMARY"], &rows));
    s
}

/// `yardctl proxy-config`.
pub async fn proxy_config(a: ConfigArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let node = resolve(&a.admin, &a.proxy).await?;
    let dump = config(&a.admin, &node, a.section).await?;
    print(out, a.output, &dump, || config_table(&node, &dump))?;
    Ok(ExitCode::SUCCESS)
}

/// Every leaf of `v` as `path -> value`.
fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                leaves(&format!("{prefix}.{k}"), x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                leaves(&format!("{prefix}[{i}]"), x, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// Resources by `<type>/<name>`, versions left out (they differ whenever content does).
fn by_name(dump: &Value) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for (t, list) in dump["resources"].as_object().into_iter().flatten() {
        for r in list.as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("?");
            m.insert(format!("{t}/{name}"), r["resource"].clone());
        }
    }
    m
}

/// The differences between two dumps, one line each: `+ name`, `- name`, `~ name path: a -> b`.
pub fn diff_lines(a: &Value, b: &Value) -> Vec<String> {
    let (a, b) = (by_name(a), by_name(b));
    let mut lines = Vec::new();
    for name in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
        match (a.get(name), b.get(name)) {
            (Some(_), None) => lines.push(format!("- {name}")),
            (None, Some(_)) => lines.push(format!("+ {name}")),
            (Some(x), Some(y)) if x != y => {
                let (mut lx, mut ly) = (BTreeMap::new(), BTreeMap::new());
                leaves("", x, &mut lx);
                leaves("", y, &mut ly);
                for path in lx.keys().chain(ly.keys()).collect::<BTreeSet<_>>() {
                    let show =
                        |v: Option<&Value>| v.map(|v| v.to_string()).unwrap_or("(none)".into());
                    if lx.get(path) != ly.get(path) {
                        lines.push(format!(
                            "~ {name} {}: {} -> {}",
                            path.trim_start_matches('.'),
                            show(lx.get(path)),
                            show(ly.get(path))
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    lines
}

/// `yardctl diff`.
pub async fn diff(a: DiffArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let node = resolve(&a.admin, &a.proxy).await?;
    let now = config(&a.admin, &node, a.section).await?;
    if let Some(path) = &a.save {
        std::fs::write(path, serde_json::to_string_pretty(&now)?)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "saved {node}'s config to {}", path.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let (left, left_name) = if let Some(path) = &a.against {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a saved config (yardctl diff --save)",
                path.display()
            )
        })?;
        (v, path.display().to_string())
    } else if let Some(other) = &a.other {
        let other = resolve(&a.admin, other).await?;
        (config(&a.admin, &other, a.section).await?, other)
    } else {
        anyhow::bail!("give a second proxy, or --save FILE / --against FILE");
    };
    let lines = diff_lines(&left, &now);
    writeln!(out, "--- {left_name}\n+++ {node}")?;
    if lines.is_empty() {
        writeln!(out, "(no differences)")?;
    }
    for l in &lines {
        writeln!(out, "{l}")?;
    }
    Ok(if a.exit_code && !lines.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `yardctl mode`.
pub async fn mode(a: ModeArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (ns, pod) = match a.target.split_once('/') {
        Some((ns, pod)) => (ns, Some(pod)),
        None => (a.target.as_str(), None),
    };
    let mut path = format!("/debug/mode?namespace={}", encode(ns));
    if let Some(p) = pod {
        path.push_str(&format!("&pod={}", encode(p)));
    }
    let v = get_json(&a.admin, &path).await?;
    print(out, a.output, &v, || {
        format!(
            "{}: {} ({})\n{}\n",
            a.target,
            v["mode"].as_str().unwrap_or("?"),
            v["source"].as_str().unwrap_or("?").replace('_', " "),
            v["reason"].as_str().unwrap_or("")
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/testdata")
            .join(name);
        if std::env::var_os("SWITCHYARD_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            got, want,
            "{name} differs; regenerate with SWITCHYARD_UPDATE_GOLDEN=1 and review"
        );
    }

    #[test]
    fn proxy_status_table_is_stable() {
        let z: Value = serde_json::from_str(include_str!("testdata/syncz.json")).unwrap();
        let proxies: Vec<&Value> = z.as_array().unwrap().iter().collect();
        golden("proxy-status.txt", &status_table(&proxies));
    }

    #[test]
    fn proxy_config_table_is_stable() {
        let dump: Value = serde_json::from_str(include_str!("testdata/config_dump.json")).unwrap();
        golden(
            "proxy-config.txt",
            &config_table(
                "envoy~10.244.0.9~client.default~default.svc.cluster.local",
                &dump,
            ),
        );
    }

    #[test]
    fn diff_names_added_removed_and_changed_leaves() {
        let a = serde_json::json!({"resources": {"rds": [
            {"name": "8080", "resource": {"virtualHosts": [{"routes": [{"route": {"timeout": "5s"}}]}]}},
            {"name": "old", "resource": {}}
        ]}});
        let b = serde_json::json!({"resources": {"rds": [
            {"name": "8080", "resource": {"virtualHosts": [{"routes": [{"route": {"timeout": "7s"}}]}]}},
            {"name": "new", "resource": {}}
        ]}});
        assert_eq!(
            diff_lines(&a, &b),
            [
                "~ rds/8080 virtualHosts[0].routes[0].route.timeout: \"5s\" -> \"7s\"",
                "+ rds/new",
                "- rds/old"
            ]
        );
    }

    #[test]
    fn namespaces_from_node_ids() {
        assert_eq!(
            namespace_of("envoy~10.0.0.1~web-0.shop~shop.svc.cluster.local"),
            Some("shop")
        );
        assert_eq!(
            namespace_of("ztunnel~10.255.0.1~node-1~switchyard-system"),
            Some("switchyard-system")
        );
        assert_eq!(namespace_of("nonsense"), None);
    }
}
