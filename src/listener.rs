//! Listening sockets: one per shard, all on the same address through SO_REUSEPORT, so the
//! kernel spreads new connections over shards (and over processes sharing the port).
//!
//! Built with socket2 because glommio's own `bind` fixes the backlog at 1024 and its
//! `From<socket2::Socket>` takes only socket2 0.4. Called by `main` before any executor
//! starts, so that "address in use" is one clear error instead of a shard failing later.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds one non-blocking listening socket with SO_REUSEADDR and SO_REUSEPORT.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    // listen(2) takes an int; `Config` caps the backlog far below i32::MAX.
    socket.listen(backlog as i32)?;
    Ok(socket.into())
}

/// Binds `count` listeners on `addr`. When `addr` has port 0, the first socket picks a port
/// and the others join it, so every shard listens on the same port.
pub fn bind_all(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    let first = bind(addr, backlog)?;
    let bound = local_addr(&first)?;
    let mut fds = vec![first];
    for _ in 1..count {
        fds.push(bind(bound, backlog)?);
    }
    Ok((bound, fds))
}

/// The address a socket is bound to.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(fd);
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// Hands a listening fd to the current glommio executor.
///
/// # Safety
/// `fd` must be an open listening TCP socket that nothing else owns or closes.
pub unsafe fn into_glommio(fd: RawFd) -> glommio::net::TcpListener {
    use std::os::fd::FromRawFd;
    glommio::net::TcpListener::from_raw_fd(fd)
}

/// Turns a bind error into one line a user can act on.
pub fn explain_bind_error(addr: SocketAddr, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => format!(
            "--listen {addr}: the address is in use by another program (a volley started with a different user, or a non-volley server); stop it or pick another port"
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            "--listen {addr}: no interface on this machine has that address; use 127.0.0.1, 0.0.0.0 or an address from `ip addr`"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "--listen {addr}: permission denied (ports below 1024 need privileges); use a port of 1024 or above"
        ),
        _ => format!("--listen {addr}: {e}"),
    }
}
