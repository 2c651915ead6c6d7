//! The original destination of a connection that nftables redirected to the outbound capture
//! port (15001): read from conntrack with `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST`
//! (IPv6), whichever matches the accepted socket's family.
//!
//! It owns only the socket option. Telling a redirected connection from one made straight to
//! the capture port (which would loop back into the proxy) is the caller's: compare the
//! answer with the socket's local address. Listen on an IPv4 socket for IPv4 capture; an IPv4
//! connection accepted on a dual-stack IPv6 socket is not supported.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage, getsockname, getsockopt,
    sockopt,
};

/// Why the original destination could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OriginalDstError {
    /// conntrack has no NAT entry for the connection: it was not redirected.
    #[error(
        "connection has no original destination: it was not redirected (are the capture rules installed?)"
    )]
    NotRedirected,
    /// The kernel does not know the option for this family: conntrack is not loaded.
    #[error(
        "SO_ORIGINAL_DST is unavailable: connection tracking is not loaded in this network namespace"
    )]
    ConntrackUnavailable,
    /// The socket is neither IPv4 nor IPv6.
    #[error("socket is not an IP socket (family {family:?})")]
    NotIp {
        /// The family the socket has.
        family: Option<AddressFamily>,
    },
    /// Another error from `getsockname` or `getsockopt`.
    #[error("{call}: {source}")]
    Sys {
        /// The failing call.
        call: &'static str,
        /// Its error.
        #[source]
        source: Errno,
    },
}

/// The destination a redirected TCP connection was addressed to before nftables rewrote it.
///
/// Works on any accepted socket (`tokio::net::TcpStream`, `std::net::TcpStream`).
pub fn original_dst<S: AsFd>(stream: &S) -> Result<SocketAddr, OriginalDstError> {
    let local: SockaddrStorage =
        getsockname(stream.as_fd().as_raw_fd()).map_err(|source| OriginalDstError::Sys {
            call: "getsockname",
            source,
        })?;
    match local.family() {
        Some(AddressFamily::Inet) => getsockopt(stream, sockopt::OriginalDst)
            .map(|raw| SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(raw))))
            .map_err(sockopt_error),
        Some(AddressFamily::Inet6) => getsockopt(stream, sockopt::Ip6tOriginalDst)
            .map(|raw| SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(raw))))
            .map_err(sockopt_error),
        family => Err(OriginalDstError::NotIp { family }),
    }
}

fn sockopt_error(errno: Errno) -> OriginalDstError {
    match errno {
        Errno::ENOENT => OriginalDstError::NotRedirected,
        Errno::ENOPROTOOPT => OriginalDstError::ConntrackUnavailable,
        source => OriginalDstError::Sys {
            call: "getsockopt(SO_ORIGINAL_DST)",
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use switchyard_test_support::netns;

    use super::*;

    /// Without capture rules the kernel has no NAT entry: either an error saying so, or (when
    /// conntrack tracks the connection anyway) the address that was really dialled.
    #[test]
    fn an_unredirected_connection_is_not_mistaken_for_a_redirected_one() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let _client = TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        match original_dst(&accepted) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(OriginalDstError::NotRedirected | OriginalDstError::ConntrackUnavailable) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// Really redirects with nftables in a private network namespace (needs root; CI is root).
    #[test]
    fn a_redirected_connection_reports_where_it_was_going() {
        if !netns::is_root() {
            eprintln!(
                "SKIPPED a_redirected_connection_reports_where_it_was_going: needs root for a private network namespace and nftables (CI runs as root)"
            );
            return;
        }
        // Only this test's thread moves into the namespace; the `nft` and `ip` processes it
        // starts inherit it.
        netns::enter_private().expect("private network namespace");
        netns::run("ip", &["-6", "addr", "add", "fd00::1/128", "dev", "lo"])
            .expect("IPv6 address on lo");

        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind v4");
        let v6 = TcpListener::bind("[::1]:0").expect("bind v6");
        let v4_port = v4.local_addr().expect("v4 addr").port();
        let v6_port = v6.local_addr().expect("v6 addr").port();
        netns::nft(&format!(
            "table inet capture {{
               chain output {{
                 type nat hook output priority -100; policy accept;
                 ip daddr 10.96.0.10 tcp dport 8080 dnat ip to 127.0.0.1:{v4_port}
                 ip6 daddr fd00::1 tcp dport 9090 dnat ip6 to [::1]:{v6_port}
               }}
             }}"
        ))
        .expect("capture rules");
        // without a route connect fails (ENETUNREACH) before the packet reaches nftables
        netns::run("ip", &["route", "add", "10.96.0.0/16", "dev", "lo"]).expect("route");

        for (listener, target) in [(&v4, "10.96.0.10:8080"), (&v6, "[fd00::1]:9090")] {
            let target: SocketAddr = target.parse().expect("target");
            let mut client = TcpStream::connect(target).expect("connect through the redirect");
            let (mut accepted, _) = listener.accept().expect("accept");
            assert_ne!(
                accepted.local_addr().expect("local addr"),
                target,
                "redirected"
            );
            assert_eq!(original_dst(&accepted).expect("original dst"), target);
            // and the connection works
            client.write_all(b"ping").expect("write");
            let mut buf = [0u8; 4];
            accepted.read_exact(&mut buf).expect("read");
            assert_eq!(&buf, b"ping");
        }
    }
}
