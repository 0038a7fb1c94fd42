//! The daemon core shared by deploy-agent and deploy-proxy.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`prefork`] | the master process: workers, signals, respawn, reload, shutdown |
//! | [`conn`] | one accepted connection: protocol detection (v2, v1 plain, v1 ssl), peer and key checks, request timeouts, replies, access log |
//! | [`log`] | tracing setup: stderr, strftime-templated files, syslog, access log |
//! | [`notify`] | systemd notifications (`READY=1`, `STATUS=`, `RELOADING=1`, `STOPPING=1`, watchdog) |
//! | [`privs`] | privilege drop and umask |
//! | [`title`] | process titles |
//! | [`pidfile`] | the pid file |
//! | [`statedir`] | `state_dir` created, handed to the workers' user, checked |
//!
//! # Design
//!
//! A master binds every listening socket, drops privileges, then forks workers. Each
//! worker builds its own single-threaded tokio runtime after the fork and accepts on the
//! shared sockets; each connection is a task, not a process. Program-specific behaviour is
//! a [`conn::Handler`]: the agent's runs orders, the proxy's fans them out.

pub mod conn;
pub mod daemon;
pub mod log;
pub mod notify;
pub mod peers;
pub mod pidfile;
pub mod prefork;
pub mod privs;
pub mod statedir;
pub mod title;

use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpListener};

/// Binds a listening TCP socket with `SO_REUSEADDR` and the given backlog (IPv6 sockets
/// are v6-only so that `0.0.0.0` and `::` can both be listed). The error names the
/// address.
pub fn bind(
    addr: SocketAddr,
    backlog: u32,
    defer_accept: Option<u32>,
) -> std::io::Result<TcpListener> {
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(named)?;
    socket.set_reuse_address(true).map_err(named)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(named)?;
    }
    socket.bind(&addr.into()).map_err(named)?;
    socket
        .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        .map_err(named)?;
    #[cfg(target_os = "linux")]
    if let Some(secs) = defer_accept {
        use std::os::fd::AsRawFd;
        let value: libc::c_int = i32::try_from(secs).unwrap_or(i32::MAX);
        // SAFETY: a valid socket fd, a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(named(std::io::Error::last_os_error()));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = defer_accept;
    socket.set_nonblocking(true).map_err(named)?;
    Ok(socket.into())
}

/// Unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
