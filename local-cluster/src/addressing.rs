//! The local cluster's address plan and the names of what it creates (CONTRACTS.md, "Local
//! cluster addressing"): pods `10.244.<node>.0/24`, services `10.96.0.0/16`, nodes and the
//! control plane on the underlay `10.255.0.0/24`.
//!
//! Everything here is a pure function of the cluster name and a node index, so `down` can
//! name what `up` created without asking anything that may have crashed.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::ClusterError;

/// Pod addresses of every node (`10.244.<node>.0/24` each).
pub const POD_RANGE: Ipv4Net = net(Ipv4Addr::new(10, 244, 0, 0), 16);
/// Service cluster IPs.
pub const SERVICE_RANGE: Ipv4Net = net(Ipv4Addr::new(10, 96, 0, 0), 16);
/// The underlay joining nodes, the control plane and the host.
pub const UNDERLAY: Ipv4Net = net(Ipv4Addr::new(10, 255, 0, 0), 24);
/// The control plane's address on the underlay.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
/// The host's end of its one veth into the underlay (a /32: the host routes only to the
/// control plane through it).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 254);
/// The first service cluster IP handed out (the ones below are kept for the mesh's own use).
pub const FIRST_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The most nodes a local cluster may have.
pub const MAX_NODES: u8 = 16;
/// Longest cluster name: the host link is `sy-<name>` and a link name has at most 15 bytes.
pub const MAX_NAME_LEN: usize = 12;

/// Every range the cluster uses; none may overlap an address or route of the host.
pub const RANGES: [(&str, Ipv4Net); 3] = [
    ("pod range", POD_RANGE),
    ("service range", SERVICE_RANGE),
    ("underlay", UNDERLAY),
];

const fn net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, len) {
        Ok(n) => n,
        Err(_) => panic!("prefix length out of range"),
    }
}

/// Checks a cluster name: 1 to [`MAX_NAME_LEN`] characters of `[a-z0-9-]`, starting with a
/// letter (it becomes part of namespace, link and cgroup names).
pub fn check_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// Checks a node count.
pub fn check_nodes(nodes: u8) -> Result<(), ClusterError> {
    if (1..=MAX_NODES).contains(&nodes) {
        Ok(())
    } else {
        Err(ClusterError::InvalidNodes { nodes })
    }
}

/// Node `index` (1-based): its name.
pub fn node_name(index: u8) -> String {
    format!("node-{index}")
}

/// Node `index`: its address on the underlay (`10.255.0.<10 + index>`).
pub fn node_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 0, 10 + index)
}

/// Node `index`: its pod range (`10.244.<index>.0/24`).
pub fn pod_cidr(index: u8) -> Ipv4Net {
    net(Ipv4Addr::new(10, 244, index, 0), 24)
}

/// Node `index`: the address of its pod bridge, the pods' gateway (`10.244.<index>.1`).
pub fn pod_gateway(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, index, 1)
}

/// Pod addresses a node hands out: `.2` to `.254` of its range.
pub fn pod_host_range() -> std::ops::RangeInclusive<u8> {
    2..=254
}

/// Network namespace names (under `/run/netns`). The cluster name is followed by `_`, which
/// neither cluster names nor Kubernetes names may contain, so one cluster's prefix never
/// matches another's and two pods never share a name.
pub mod netns {
    /// The underlay: a bridge joining nodes and the control plane.
    pub fn underlay(cluster: &str) -> String {
        format!("{}underlay", prefix(cluster))
    }
    /// The control plane's namespace.
    pub fn control_plane(cluster: &str) -> String {
        format!("{}cp", prefix(cluster))
    }
    /// A node's namespace.
    pub fn node(cluster: &str, node: &str) -> String {
        format!("{}{node}", prefix(cluster))
    }
    /// A pod's namespace; `uid` tells a pod from an earlier one of the same name that may
    /// still be being torn down.
    pub fn pod(cluster: &str, namespace: &str, pod: &str, uid: &str) -> String {
        format!("{}pod_{namespace}_{pod}_{uid}", prefix(cluster))
    }
    /// Every namespace name of the cluster starts with this.
    pub fn prefix(cluster: &str) -> String {
        format!("sy-{cluster}_")
    }
}

/// The cluster's bpffs folder (pins of the eBPF dataplane).
pub fn bpffs_dir(cluster: &str) -> std::path::PathBuf {
    std::path::PathBuf::from("/sys/fs/bpf/switchyard").join(cluster)
}

/// The host's veth into the control plane's namespace.
pub fn host_link(cluster: &str) -> String {
    format!("sy-{cluster}")
}

/// A pod's veth end in its node's namespace: a stable hash of the pod, so it fits the
/// 15-byte limit and is the same for `up` and `down`.
pub fn pod_veth(namespace: &str, pod: &str, uid: &str) -> String {
    // FNV-1a: stable across builds and versions, unlike `DefaultHasher`.
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace
        .bytes()
        .chain([b'/'])
        .chain(pod.bytes())
        .chain([b'/'])
        .chain(uid.bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("veth{h:08x}")
}

/// The next free pod address of a node after `last` (round robin, as host-local IPAM does,
/// so an address just freed is not handed out again at once).
pub fn next_pod_ip(index: u8, last: Option<Ipv4Addr>, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let range = pod_host_range();
    let span = u16::from(*range.end() - *range.start()) + 1;
    // Positions 0..span stand for hosts .2 to .254; with no last address, start at .2.
    let last_pos = last
        .filter(|ip| pod_cidr(index).contains(ip))
        .map(|ip| u16::from(ip.octets()[3].saturating_sub(*range.start())))
        .unwrap_or(span - 1);
    (1..=span)
        .map(|step| {
            let pos = (last_pos + step) % span;
            // pos < span = 253, so the host part stays within .2 to .254
            let host = *range.start() + u8::try_from(pos).unwrap_or(0);
            Ipv4Addr::new(10, 244, index, host)
        })
        .find(|ip| !used.contains(ip))
}

/// The next free service cluster IP from [`FIRST_SERVICE_IP`].
pub fn next_service_ip(used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let first = u32::from(FIRST_SERVICE_IP);
    let last = u32::from(SERVICE_RANGE.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_checked() {
        assert!(check_name("dev").is_ok());
        assert!(check_name("t-12345678ab").is_ok());
        assert!(check_name("t-12345678abc").is_err(), "13 characters");
        assert!(check_name("Dev").is_err());
        assert!(check_name("1dev").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(host_link("t-12345678ab").len() <= 15);
        assert!(pod_veth("default", "a-very-long-pod-name-indeed", "u1").len() <= 15);
        assert_ne!(pod_veth("a", "b", "1"), pod_veth("a", "b", "2"));
        // No cluster's prefix is a prefix of another's; no two pods share a namespace.
        assert!(!netns::underlay("dev-2").starts_with(&netns::prefix("dev")));
        assert_ne!(
            netns::pod("c", "a-b", "c", "1"),
            netns::pod("c", "a", "b-c", "1")
        );
        assert!(check_nodes(0).is_err());
        assert!(check_nodes(2).is_ok());
        assert!(check_nodes(MAX_NODES + 1).is_err());
    }

    #[test]
    fn addresses_follow_the_contract() {
        assert_eq!(node_ip(1), Ipv4Addr::new(10, 255, 0, 11));
        assert_eq!(pod_cidr(2).to_string(), "10.244.2.0/24");
        assert_eq!(pod_gateway(2), Ipv4Addr::new(10, 244, 2, 1));
        assert!(UNDERLAY.contains(&CONTROL_PLANE_IP));
        assert!(UNDERLAY.contains(&HOST_IP));
        assert!(UNDERLAY.contains(&node_ip(MAX_NODES)));
        assert!(POD_RANGE.contains(&pod_cidr(MAX_NODES)));
    }

    #[test]
    fn pod_ips_go_round_robin_and_skip_used_ones() {
        let a = next_pod_ip(1, None, &[]).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        let b = next_pod_ip(1, Some(a), &[a]).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        // `a` was freed, but the next one is still after `b`.
        assert_eq!(
            next_pod_ip(1, Some(b), &[b]).unwrap(),
            Ipv4Addr::new(10, 244, 1, 4)
        );
        // Wraps around at the end of the range.
        let end = Ipv4Addr::new(10, 244, 1, 254);
        assert_eq!(
            next_pod_ip(1, Some(end), &[end]).unwrap(),
            Ipv4Addr::new(10, 244, 1, 2)
        );
        // Full.
        let all: Vec<_> = pod_host_range()
            .map(|h| Ipv4Addr::new(10, 244, 1, h))
            .collect();
        assert_eq!(next_pod_ip(1, None, &all), None);
    }

    #[test]
    fn service_ips_start_at_ten() {
        assert_eq!(next_service_ip(&[]), Some(FIRST_SERVICE_IP));
        assert_eq!(
            next_service_ip(&[FIRST_SERVICE_IP]),
            Some(Ipv4Addr::new(10, 96, 0, 11))
        );
    }
}
