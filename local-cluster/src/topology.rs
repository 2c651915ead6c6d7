//! The cluster's network: the underlay bridge, the control plane's and the nodes' namespaces
//! on it, each node's pod bridge and routes, each pod's veth, and the host's one veth.
//!
//! Routing, in short: a pod's only routes are its own /24 and the cluster ranges through its
//! node's bridge; a node routes other nodes' pod ranges to them over the underlay; nobody has
//! a default route, so anything else fails at once with "network unreachable".

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::ClusterError;
use crate::addressing::{self, CONTROL_PLANE_IP, HOST_IP, RANGES, UNDERLAY};
use crate::ip::{self, batch_in, ip_in};
use crate::state::{NodeState, PodState};

/// The bridge in the underlay namespace and in each node namespace.
pub const BRIDGE: &str = "br0";
/// The underlay-side veth of the control plane.
const CP_PORT: &str = "cp";
/// The control-plane-side veth of the host link.
const HOST_PORT: &str = "host";

/// Creates the underlay namespace and its bridge.
pub fn create_underlay(cluster: &str) -> Result<(), ClusterError> {
    let ns = addressing::netns::underlay(cluster);
    ip::add_netns(&ns)?;
    batch_in(
        &ns,
        &[
            format!("link add {BRIDGE} type bridge"),
            format!("link set {BRIDGE} up"),
        ],
    )
}

/// Plugs a new veth from the underlay bridge into namespace `netns` (where it is `eth0`).
fn plug_into_underlay(cluster: &str, port: &str, netns: &str) -> Result<(), ClusterError> {
    let underlay = addressing::netns::underlay(cluster);
    ip_in(
        &underlay,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ],
    )?;
    batch_in(
        &underlay,
        &[
            format!("link set {port} master {BRIDGE}"),
            format!("link set {port} up"),
        ],
    )
}

/// Creates the control plane's namespace on the underlay, with routes back to every node's
/// pods.
pub fn create_control_plane(cluster: &str, nodes: &[NodeState]) -> Result<(), ClusterError> {
    let ns = addressing::netns::control_plane(cluster);
    ip::add_netns(&ns)?;
    plug_into_underlay(cluster, CP_PORT, &ns)?;
    let mut lines = vec![
        format!(
            "addr add {CONTROL_PLANE_IP}/{} dev eth0",
            UNDERLAY.prefix_len()
        ),
        "link set eth0 up".to_string(),
    ];
    lines.extend(
        nodes
            .iter()
            .map(|n| format!("route add {} via {}", n.pod_cidr, n.ip)),
    );
    batch_in(&ns, &lines)?;
    // A new namespace copies the host's IPv4 settings: where the host forwards (Docker, CI
    // runners), so would the control plane, between the host link and the underlay.
    ip::set_forwarding(&ns, false)
}

/// Creates a node's namespace: its underlay address, its pod bridge (the pods' gateway),
/// routes to the other nodes' pods, forwarding on.
pub fn create_node(cluster: &str, node: &NodeState, all: &[NodeState]) -> Result<(), ClusterError> {
    ip::add_netns(&node.netns)?;
    plug_into_underlay(cluster, &format!("n{}", node.index), &node.netns)?;
    let mut lines = vec![
        format!("addr add {}/{} dev eth0", node.ip, UNDERLAY.prefix_len()),
        "link set eth0 up".to_string(),
        format!("link add {BRIDGE} type bridge"),
        format!(
            "addr add {}/{} dev {BRIDGE}",
            addressing::pod_gateway(node.index),
            node.pod_cidr.prefix_len()
        ),
        format!("link set {BRIDGE} up"),
    ];
    lines.extend(
        all.iter()
            .filter(|other| other.index != node.index)
            .map(|other| format!("route add {} via {}", other.pod_cidr, other.ip)),
    );
    batch_in(&node.netns, &lines)?;
    ip::set_forwarding(&node.netns, true)
}

/// Creates the host's veth, point to point into the control plane's namespace (not onto the
/// underlay bridge, so no node or pod can reach the host): a /32 on the host side and one
/// route each way.
pub fn create_host_link(cluster: &str) -> Result<(), ClusterError> {
    let link = addressing::host_link(cluster);
    let cp = addressing::netns::control_plane(cluster);
    ip::ip(&[
        "link", "add", &link, "type", "veth", "peer", "name", HOST_PORT, "netns", &cp,
    ])?;
    batch_in(
        &cp,
        &[
            format!("link set {HOST_PORT} up"),
            format!("route add {HOST_IP}/32 dev {HOST_PORT}"),
        ],
    )?;
    ip::ip(&["addr", "add", &format!("{HOST_IP}/32"), "dev", &link])?;
    ip::ip(&["link", "set", &link, "up"])?;
    ip::ip(&[
        "route",
        "add",
        &format!("{CONTROL_PLANE_IP}/32"),
        "dev",
        &link,
        "src",
        &HOST_IP.to_string(),
    ])
}

/// Creates a pod's namespace and plugs it into its node's bridge.
pub fn create_pod_network(pod: &PodState, node: &NodeState) -> Result<(), ClusterError> {
    ip::add_netns(&pod.netns)?;
    ip_in(
        &node.netns,
        &[
            "link", "add", &pod.veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.netns,
        ],
    )?;
    batch_in(
        &node.netns,
        &[
            format!("link set {} master {BRIDGE}", pod.veth),
            format!("link set {} up", pod.veth),
        ],
    )?;
    let gateway = addressing::pod_gateway(node.index);
    let mut lines = vec![
        format!(
            "addr add {}/{} dev eth0",
            pod.ip,
            node.pod_cidr.prefix_len()
        ),
        "link set eth0 up".to_string(),
    ];
    lines.extend(
        RANGES
            .iter()
            .map(|(_, range)| format!("route add {range} via {gateway}")),
    );
    batch_in(&pod.netns, &lines)?;
    ip::set_forwarding(&pod.netns, false)
}

/// Removes a pod's namespace; its veth pair goes with it.
pub fn delete_pod_network(pod: &PodState) -> Result<(), ClusterError> {
    ip::delete_netns(&pod.netns)
}

/// Refuses a host whose addresses or routes overlap a cluster range (the default route
/// aside): the cluster would shadow them or be shadowed.
pub fn check_host_ranges() -> Result<(), ClusterError> {
    let routes = ip::ip_output(&["-j", "-4", "route", "show", "table", "all"])?;
    let routes: Vec<serde_json::Value> =
        serde_json::from_str(&routes).map_err(|e| ClusterError::Command {
            command: "ip -j -4 route show table all".into(),
            stderr: format!("unexpected output: {e}"),
        })?;
    for route in routes {
        let Some(dst) = route.get("dst").and_then(|d| d.as_str()) else {
            continue;
        };
        let Some(net) = parse_dst(dst) else { continue };
        if let Some((what, range)) = RANGES.iter().find(|(_, r)| overlaps(*r, net)) {
            let dev = route.get("dev").and_then(|d| d.as_str()).unwrap_or("?");
            return Err(ClusterError::Overlap {
                range: format!("{what} {range}"),
                host: format!("route {dst} dev {dev}"),
            });
        }
    }
    Ok(())
}

fn parse_dst(dst: &str) -> Option<Ipv4Net> {
    if dst == "default" {
        return None;
    }
    dst.parse::<Ipv4Net>().ok().or_else(|| {
        dst.parse::<Ipv4Addr>()
            .ok()
            .and_then(|a| Ipv4Net::new(a, 32).ok())
    })
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_checked_both_ways() {
        let pods: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(overlaps(pods, "10.0.0.0/8".parse().unwrap()));
        assert!(overlaps(pods, "10.244.3.0/24".parse().unwrap()));
        assert!(!overlaps(pods, "10.245.0.0/16".parse().unwrap()));
        assert_eq!(parse_dst("default"), None);
        assert_eq!(
            parse_dst("10.96.0.1"),
            Some("10.96.0.1/32".parse().unwrap())
        );
        assert_eq!(parse_dst("fe80::/64"), None);
    }
}
