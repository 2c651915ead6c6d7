//! Sockets a dataplane opens upstream.

use std::io;
use std::net::SocketAddr;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr` with `SO_MARK = mark` set before the connect when `mark` is given (the
/// pod's capture rules let marked sockets through, so a proxy never captures itself; setting
/// a mark needs `CAP_NET_ADMIN`), with `TCP_NODELAY` on. The caller bounds the time.
pub async fn connect(addr: SocketAddr, mark: Option<u32>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = mark {
        setsockopt(&socket, sockopt::Mark, &mark).map_err(io::Error::from)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
