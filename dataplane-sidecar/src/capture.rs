//! The pod's traffic capture: the nftables rules that send a sidecar-mode pod's TCP through
//! its micro-sidecar, installed by `switchyard-sidecar init` in the pod's network namespace
//! before the app starts (what Istio's proxy-init does with iptables).
//!
//! [`render`] is pure: it turns a [`CaptureConfig`] into nftables ruleset text. [`apply`] and
//! [`remove`] hand that text to `nft -f -`. Nothing here runs in the data path.
//!
//! # The rules
//! One table, `table inet switchyard_sidecar`, holds both families: an `inet` table sees IPv4
//! and IPv6 packets alike, so one set of chains covers a dual-stack pod and cannot drift
//! between families, and replacing it is one atomic transaction. The table is named after its
//! owner so that it never collides with another table in the namespace (a node agent's or an
//! operator's).
//!
//! - `output` (nat, locally generated connections): returns for the proxy's own sockets (they
//!   carry [`CaptureConfig::proxy_mark`] as `SO_MARK`), for loopback destinations, for
//!   [`CaptureConfig::exclude_outbound_ports`] and [`CaptureConfig::exclude_outbound_cidrs`];
//!   every other TCP connection is redirected to [`CaptureConfig::outbound_port`].
//! - `prerouting` (nat, connections arriving from outside the pod): returns for
//!   [`CaptureConfig::hbone_port`] (HBONE goes straight to the proxy's HBONE listener) and
//!   [`CaptureConfig::exclude_inbound_ports`]; every other TCP connection is redirected to
//!   [`CaptureConfig::inbound_port`].
//!
//! Only TCP is captured: UDP (DNS included), ICMP and SCTP pass untouched. nat chains see only
//! the first packet of a connection, so replies and established flows are never rewritten.
//!
//! # What the proxy must do
//! Set `SO_MARK` = [`CaptureConfig::proxy_mark`] on every upstream socket it opens (it needs
//! `CAP_NET_ADMIN` for that); otherwise its own connections are redirected back to itself.
//! Connections it makes to the app over loopback are left alone without the mark.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use tracing::info;

/// nftables family and name of the capture table.
pub const TABLE: &str = "inet switchyard_sidecar";
/// Default outbound capture port (CONTRACTS.md).
pub const OUTBOUND_PORT: u16 = 15001;
/// Default inbound capture port (CONTRACTS.md).
pub const INBOUND_PORT: u16 = 15006;
/// Default HBONE port (CONTRACTS.md).
pub const HBONE_PORT: u16 = 15008;
/// Default mark the proxy sets with `SO_MARK` on its own sockets (0x539).
pub const PROXY_MARK: u32 = 1337;
/// Inbound ports left alone by default: admin (15000), metrics (15020), health (15021).
pub const EXCLUDE_INBOUND_PORTS: [u16; 3] = [15000, 15020, 15021];

/// Where captured traffic goes and what is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Port the proxy's outbound listener accepts redirected connections on.
    pub outbound_port: u16,
    /// Port the proxy's inbound listener accepts redirected connections on.
    pub inbound_port: u16,
    /// Port of the proxy's HBONE listener; inbound connections to it are not redirected.
    pub hbone_port: u16,
    /// `SO_MARK` the proxy sets on its own sockets; those are never captured.
    pub proxy_mark: u32,
    /// Inbound destination ports not redirected (the proxy's admin, metrics, health).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports not redirected.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks not redirected.
    pub exclude_outbound_cidrs: Vec<IpNet>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            outbound_port: OUTBOUND_PORT,
            inbound_port: INBOUND_PORT,
            hbone_port: HBONE_PORT,
            proxy_mark: PROXY_MARK,
            exclude_inbound_ports: EXCLUDE_INBOUND_PORTS.to_vec(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

impl CaptureConfig {
    /// Every problem with the configuration, or none.
    ///
    /// Ports must be non-zero, the three proxy ports distinct, the mark non-zero (a zero mark
    /// matches every unmarked socket, which would turn capture off), and the inbound capture
    /// and HBONE ports not excluded.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let ports = [
            ("outbound port", self.outbound_port),
            ("inbound port", self.inbound_port),
            ("hbone port", self.hbone_port),
        ];
        for (name, port) in ports {
            if port == 0 {
                problems.push(format!("{name} must not be 0"));
            }
        }
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if pa == pb && *pa != 0 {
                    problems.push(format!("{a} and {b} are both {pa}"));
                }
            }
        }
        if self.proxy_mark == 0 {
            problems.push(
                "proxy mark must not be 0 (every unmarked socket would bypass capture)".into(),
            );
        }
        for (name, list) in [
            ("exclude-inbound-ports", &self.exclude_inbound_ports),
            ("exclude-outbound-ports", &self.exclude_outbound_ports),
        ] {
            if list.contains(&0) {
                problems.push(format!("{name} contains port 0"));
            }
        }
        problems
    }

    /// The configuration, if it has no [`problems`](Self::problems).
    pub fn validate(&self) -> Result<(), CaptureError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CaptureError::Invalid { problems })
        }
    }
}

/// Why the capture could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The configuration is inconsistent; nothing was changed.
    #[error("invalid capture configuration: {}", problems.join("; "))]
    Invalid {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// `nft` could not be started or talked to.
    #[error("cannot run nft (is nftables installed? scripts/setup.sh installs it)")]
    Spawn {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the ruleset; the transaction is atomic, so nothing was changed.
    #[error(
        "nft failed ({status}): {stderr} (scripts/setup.sh installs nftables; the init step needs CAP_NET_ADMIN in the pod's network namespace)"
    )]
    Nft {
        /// How `nft` exited.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Sorted, deduplicated ports as an nftables anonymous set (`{ 1, 2 }`) or single value.
fn port_set(ports: &[u16]) -> Option<String> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    set_text(ports.iter().map(u16::to_string).collect())
}

fn set_text(items: Vec<String>) -> Option<String> {
    match items.len() {
        0 => None,
        1 => items.into_iter().next(),
        _ => Some(format!("{{ {} }}", items.join(", "))),
    }
}

/// Writes one rule line into a chain body.
fn rule(out: &mut String, text: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "    {text}");
}

/// The nftables ruleset text for `config`: IPv4 and IPv6 in one `inet` table.
///
/// Loading it replaces any previous capture table in one transaction (the
/// `table ...; delete table ...; table ... { }` idiom: declaring the table first makes the
/// delete succeed when it does not exist yet), so applying it again is idempotent. The output
/// is deterministic: ports are sorted and deduplicated, networks truncated to their prefix,
/// merged and sorted.
pub fn render(config: &CaptureConfig) -> String {
    // Priority -100 is iptables' nat priority for both hooks (NF_IP_PRI_NAT_DST); nft 1.0's
    // `dstnat` keyword is refused in the output hook, so the number is spelled out.
    let mut output = String::new();
    rule(
        &mut output,
        "type nat hook output priority -100; policy accept;",
    );
    rule(
        &mut output,
        "meta l4proto != tcp return comment \"only TCP is captured (UDP and DNS are not)\"",
    );
    rule(
        &mut output,
        &format!(
            "meta mark {:#x} return comment \"the proxy's own sockets (SO_MARK)\"",
            config.proxy_mark
        ),
    );
    rule(
        &mut output,
        "ip daddr 127.0.0.0/8 return comment \"loopback\"",
    );
    rule(&mut output, "ip6 daddr ::1 return comment \"loopback\"");
    if let Some(ports) = port_set(&config.exclude_outbound_ports) {
        rule(
            &mut output,
            &format!("tcp dport {ports} return comment \"excluded outbound ports\""),
        );
    }
    let cidrs = IpNet::aggregate(&config.exclude_outbound_cidrs);
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = cidrs
        .into_iter()
        .partition(|n| matches!(n.addr(), IpAddr::V4(_)));
    for (family, nets) in [("ip", v4), ("ip6", v6)] {
        if let Some(set) = set_text(nets.iter().map(IpNet::to_string).collect()) {
            rule(
                &mut output,
                &format!("{family} daddr {set} return comment \"excluded outbound networks\""),
            );
        }
    }
    rule(
        &mut output,
        &format!(
            "meta l4proto tcp redirect to :{} comment \"outbound capture\"",
            config.outbound_port
        ),
    );

    let mut prerouting = String::new();
    rule(
        &mut prerouting,
        "type nat hook prerouting priority -100; policy accept;",
    );
    rule(
        &mut prerouting,
        "meta l4proto != tcp return comment \"only TCP is captured (UDP and DNS are not)\"",
    );
    // Looped-back packets were already decided in `output`; this makes it explicit.
    rule(
        &mut prerouting,
        "iifname \"lo\" return comment \"from inside the pod\"",
    );
    rule(
        &mut prerouting,
        &format!(
            "tcp dport {} return comment \"HBONE reaches the proxy directly\"",
            config.hbone_port
        ),
    );
    if let Some(ports) = port_set(&config.exclude_inbound_ports) {
        rule(
            &mut prerouting,
            &format!("tcp dport {ports} return comment \"excluded inbound ports\""),
        );
    }
    rule(
        &mut prerouting,
        &format!(
            "meta l4proto tcp redirect to :{} comment \"inbound capture\"",
            config.inbound_port
        ),
    );

    format!(
        "# switchyard-sidecar capture: replaces the whole table in one transaction\n\
         table {TABLE}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n  chain output {{\n{output}  }}\n  chain prerouting {{\n{prerouting}  }}\n}}\n"
    )
}

/// The ruleset text [`remove`] loads: deletes the capture table, whether or not it exists.
pub fn render_removal() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

/// Installs (or replaces) the capture in the current network namespace with `nft -f -`.
///
/// Needs `CAP_NET_ADMIN` and the `nft` binary. Atomic: on failure the previous rules stay.
pub fn apply(config: &CaptureConfig) -> Result<(), CaptureError> {
    config.validate()?;
    load(&render(config))?;
    info!(
        outbound_port = config.outbound_port,
        inbound_port = config.inbound_port,
        hbone_port = config.hbone_port,
        proxy_mark = config.proxy_mark,
        "traffic capture installed"
    );
    Ok(())
}

/// Removes the capture from the current network namespace; succeeds if it was not installed.
pub fn remove() -> Result<(), CaptureError> {
    load(&render_removal())?;
    info!("traffic capture removed");
    Ok(())
}

/// Runs `nft -f -` with `ruleset` on its stdin.
fn load(ruleset: &str) -> Result<(), CaptureError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn { source })?;
    // The ruleset is a few hundred bytes, well under a pipe buffer, so writing cannot block
    // on nft's stderr; dropping stdin ends nft's input.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(ruleset.as_bytes()),
        None => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn { source })?;
    if !out.status.success() {
        // nft's own complaint explains a failed write (a broken pipe) better than the write.
        return Err(CaptureError::Nft {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    written.map_err(|source| CaptureError::Spawn { source })
}

#[cfg(test)]
mod tests;
