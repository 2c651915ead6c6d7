//! The capture rules really redirect, in private network namespaces (needs root; CI is root).
//!
//! Each test moves its own thread into a fresh namespace with
//! `switchyard_test_support::netns::enter_private`; the `nft` and `ip` processes it starts,
//! and threads it spawns, inherit it. Plain blocking sockets: nothing here needs tokio.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, connect, setsockopt, socket, sockopt,
};
use switchyard_dataplane_sidecar::capture::{self, CaptureConfig, TABLE};
use switchyard_dataplane_sidecar::proxy::original_dst::{OriginalDstError, original_dst};
use switchyard_test_support::netns;

const WAIT: Duration = Duration::from_secs(5);

/// Whether to run; says so loudly when not.
fn privileged(test: &str) -> bool {
    if netns::is_root() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: needs root for private network namespaces and nftables (CI runs as root)"
    );
    false
}

fn listen(addr: &str) -> TcpListener {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

/// The next connection `listener` accepts within [`WAIT`], or `None`.
fn accept_within(listener: &TcpListener) -> Option<TcpStream> {
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Fails if `listener` has a connection waiting.
fn assert_nothing_pending(listener: &TcpListener, what: &str) {
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((s, _)) => panic!("{what}: unexpected connection from {:?}", s.peer_addr()),
        Err(e) => panic!("accept: {e}"),
    }
}

/// A TCP connection to `to`, carrying `mark` as `SO_MARK` when given.
fn dial(to: SocketAddr, mark: Option<u32>) -> TcpStream {
    let family = match to.ip() {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    if let Some(mark) = mark {
        setsockopt(&fd, sockopt::Mark, &mark).expect("SO_MARK");
    }
    connect(fd.as_raw_fd(), &SockaddrStorage::from(to))
        .unwrap_or_else(|e| panic!("connect {to} (mark {mark:?}): {e}"));
    TcpStream::from(fd)
}

/// Checks bytes flow both ways between the two ends of one connection.
fn assert_connected(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").expect("write back");
    client.read_exact(&mut buf).expect("read back");
    assert_eq!(&buf, b"pong");
}

fn list_table() -> String {
    let (family, name) = TABLE.split_once(' ').expect("family and name");
    let out = Command::new("nft")
        .args(["list", "table", family, name])
        .output()
        .expect("nft (scripts/setup.sh installs nftables)");
    assert!(
        out.status.success(),
        "nft list table: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn table_exists() -> bool {
    let (family, name) = TABLE.split_once(' ').expect("family and name");
    Command::new("nft")
        .args(["list", "table", family, name])
        .output()
        .expect("nft")
        .status
        .success()
}

#[test]
fn outbound_is_redirected_except_the_proxy_loopback_and_exclusions() {
    if !privileged("outbound_is_redirected_except_the_proxy_loopback_and_exclusions") {
        return;
    }
    netns::enter_private().expect("private network namespace");
    // "Remote" addresses that are routable (local on lo), so an unredirected connection
    // reaches a listener bound on them.
    netns::run("ip", &["addr", "add", "10.9.9.9/32", "dev", "lo"]).expect("v4 address");
    netns::run("ip", &["-6", "addr", "add", "fd00:9::9/128", "dev", "lo"]).expect("v6 address");

    let config = CaptureConfig::default();
    capture::apply(&config).expect("apply");

    let outbound_v4 = listen("127.0.0.1:15001");
    let outbound_v6 = listen("[::1]:15001");
    let direct = listen("10.9.9.9:80");
    let target: SocketAddr = "10.9.9.9:80".parse().expect("addr");

    // An app's connection lands on 15001, and the proxy can tell where it was going.
    for (listener, target) in [
        (&outbound_v4, target),
        (&outbound_v6, "[fd00:9::9]:80".parse().expect("addr")),
    ] {
        let mut client = dial(target, None);
        let mut accepted = accept_within(listener)
            .unwrap_or_else(|| panic!("{target} was not redirected to 15001"));
        assert_eq!(accepted.local_addr().expect("local").port(), 15001);
        assert_eq!(original_dst(&accepted).expect("original dst"), target);
        assert_connected(&mut client, &mut accepted);
    }
    assert_nothing_pending(&direct, "an unmarked connection bypassed the capture");

    // The proxy's own socket (SO_MARK = proxy mark) goes where it was sent.
    let mut client = dial(target, Some(config.proxy_mark));
    let mut accepted = accept_within(&direct).expect("marked connection reaches 10.9.9.9:80");
    assert_eq!(accepted.local_addr().expect("local"), target);
    assert_connected(&mut client, &mut accepted);
    assert_nothing_pending(&outbound_v4, "a marked connection was redirected");

    // Any other mark is still captured.
    let _client = dial(target, Some(7));
    let accepted = accept_within(&outbound_v4).expect("mark 7 is still redirected");
    assert_eq!(original_dst(&accepted).expect("original dst"), target);

    // Loopback is left alone.
    let local = listen("127.0.0.1:0");
    let local_addr = local.local_addr().expect("addr");
    let mut client = dial(local_addr, None);
    let mut accepted = accept_within(&local).expect("loopback connection reaches its listener");
    assert_connected(&mut client, &mut accepted);
    assert_nothing_pending(&outbound_v4, "a loopback connection was redirected");

    // Re-applying replaces the table: nothing duplicated, same listing.
    let first = list_table();
    capture::apply(&config).expect("apply again");
    let second = list_table();
    assert_eq!(first, second, "re-applying changed the table");
    assert_eq!(second.matches("redirect to").count(), 2, "{second}");

    // A changed configuration replaces the old one (not added to it), and exclusions hold.
    let excluding = CaptureConfig {
        exclude_outbound_ports: vec![8443],
        exclude_outbound_cidrs: vec!["10.9.9.10/32".parse().expect("cidr")],
        ..CaptureConfig::default()
    };
    netns::run("ip", &["addr", "add", "10.9.9.10/32", "dev", "lo"]).expect("address");
    capture::apply(&excluding).expect("apply with exclusions");
    capture::apply(&excluding).expect("apply with exclusions again");
    let listing = list_table();
    assert_eq!(listing.matches("redirect to").count(), 2, "{listing}");
    assert!(
        listing.contains("8443") && listing.contains("10.9.9.10"),
        "{listing}"
    );
    for to in ["10.9.9.9:8443", "10.9.9.10:80"] {
        let listener = listen(to);
        let to: SocketAddr = to.parse().expect("addr");
        let _client = dial(to, None);
        let accepted = accept_within(&listener).unwrap_or_else(|| panic!("{to} was captured"));
        assert_eq!(accepted.local_addr().expect("local"), to);
        assert_nothing_pending(&outbound_v4, "an excluded destination was redirected");
    }

    // Removal leaves no table, and removing again is fine.
    capture::remove().expect("remove");
    assert!(!table_exists(), "table still there after remove");
    capture::remove().expect("remove when absent");
}

/// A named network namespace for the far end of a veth pair, deleted on drop (also when the
/// test fails).
struct PeerNamespace {
    name: String,
}

impl PeerNamespace {
    fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sy-capture-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        netns::run("ip", &["netns", "add", &name]).expect("ip netns add");
        Self { name }
    }

    /// Connects to `to` from inside this namespace.
    fn dial(&self, to: SocketAddr) -> TcpStream {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            // Only this short-lived thread moves; the socket stays in the namespace it was
            // made in after the thread ends.
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the peer namespace");
            TcpStream::connect_timeout(&to, WAIT)
                .unwrap_or_else(|e| panic!("connect {to} from the peer: {e}"))
        })
        .join()
        .expect("peer thread")
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        if let Err(e) = netns::run("ip", &["netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {e:#}", self.name);
        }
    }
}

#[test]
fn inbound_is_redirected_except_hbone_and_excluded_ports() {
    if !privileged("inbound_is_redirected_except_hbone_and_excluded_ports") {
        return;
    }
    netns::enter_private().expect("private network namespace");
    let peer = PeerNamespace::create();
    let n = peer.name.as_str();
    for args in [
        &[
            "link", "add", "sy-pod", "type", "veth", "peer", "name", "sy-peer", "netns", n,
        ][..],
        &["addr", "add", "10.77.0.1/24", "dev", "sy-pod"],
        &["link", "set", "sy-pod", "up"],
        &["-n", n, "link", "set", "lo", "up"],
        &["-n", n, "addr", "add", "10.77.0.2/24", "dev", "sy-peer"],
        &["-n", n, "link", "set", "sy-peer", "up"],
    ] {
        netns::run("ip", args).expect("veth to the peer namespace");
    }

    let config = CaptureConfig::default();
    capture::apply(&config).expect("apply");
    let inbound = listen("0.0.0.0:15006");
    let hbone = listen("0.0.0.0:15008");
    let metrics = listen("0.0.0.0:15020");

    // A peer's connection to the app's port lands on 15006, original destination intact.
    let target: SocketAddr = "10.77.0.1:8080".parse().expect("addr");
    let mut client = peer.dial(target);
    let mut accepted = accept_within(&inbound).expect("inbound connection redirected to 15006");
    assert_eq!(accepted.local_addr().expect("local").port(), 15006);
    assert_eq!(original_dst(&accepted).expect("original dst"), target);
    assert_connected(&mut client, &mut accepted);

    // HBONE and excluded ports reach their own listeners.
    for (listener, port) in [(&hbone, 15008), (&metrics, 15020)] {
        let to = SocketAddr::from(([10, 77, 0, 1], port));
        let mut client = peer.dial(to);
        let mut accepted =
            accept_within(listener).unwrap_or_else(|| panic!("{to} did not reach its listener"));
        assert_eq!(accepted.local_addr().expect("local"), to);
        match original_dst(&accepted) {
            Ok(dst) => assert_eq!(dst, to, "rewritten"),
            Err(OriginalDstError::NotRedirected | OriginalDstError::ConntrackUnavailable) => {}
            Err(e) => panic!("original dst: {e}"),
        }
        assert_connected(&mut client, &mut accepted);
        assert_nothing_pending(&inbound, "an excluded inbound port was redirected");
    }
    drop(peer);
}
