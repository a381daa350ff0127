//! The listening sockets: one per serving thread.

use std::net::SocketAddr;

/// `count` non-blocking listening sockets on `addr` (its port resolved once
/// when 0), one per serving thread: `SO_REUSEPORT` sockets on Linux, where the
/// kernel spreads connections between them; clones of one socket elsewhere.
///
/// Fails with [`std::io::ErrorKind::AddrInUse`] when another process already
/// listens on `addr`, even one that set `SO_REUSEPORT` itself: only these
/// sockets share the port.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    #[cfg(target_os = "linux")]
    {
        // A stranger listening with SO_REUSEPORT would silently share the port
        // with ours: a plain bind first fails if anyone listens there.
        if addr.port() != 0 {
            drop(std::net::TcpListener::bind(addr)?);
        }
        // One socket per worker; the kernel balances connections between them.
        let first = reuse_port_listener(addr)?;
        let bound = first.local_addr()?;
        let mut all = vec![first];
        for _ in 1..count {
            all.push(reuse_port_listener(bound)?);
        }
        Ok(all)
    }
    #[cfg(not(target_os = "linux"))]
    {
        // One socket, shared: each worker accepts from it.
        let first = std::net::TcpListener::bind(addr)?;
        first.set_nonblocking(true)?;
        let mut all = Vec::with_capacity(count);
        for _ in 1..count {
            all.push(first.try_clone()?);
        }
        all.insert(0, first);
        Ok(all)
    }
}

#[cfg(target_os = "linux")]
fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
