//! Ports and peers on loopback: [`free_port`], ports that refuse connections
//! ([`closed_port`], [`refusing_addr`]), a [`Silent`] peer that accepts connections and
//! never answers, and bounded reads and connects ([`connect`], [`read_to_eof`]).

use crate::env::IO_TIMEOUT;
use socket2::{Domain, Socket, Type};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A 127.0.0.1 port that refuses connections for as long as the returned socket lives
/// (bound without listening, so nobody else can take it meanwhile).
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind 127.0.0.1:0");
    let port = socket.local_addr().expect("local_addr").port();
    (socket, port)
}

/// An address on `ip` that refuses connections for as long as the returned socket lives
/// (bound without listening); usable without a Tokio runtime.
pub fn refusing_addr(ip: IpAddr) -> (Socket, SocketAddr) {
    let socket = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::STREAM,
        None,
    )
    .expect("socket");
    socket
        .bind(&SocketAddr::new(ip, 0).into())
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    let addr = socket
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("an inet address");
    (socket, addr)
}

/// A peer that accepts every connection and never sends a byte nor closes, until it is
/// dropped: an agent hung after `accept`. Runs on its own thread, without a runtime.
pub struct Silent {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Silent {
    /// Listens on `ip`, any port.
    pub fn start(ip: IpAddr) -> Silent {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            held.push(stream);
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Silent {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects within [`IO_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Reads until EOF within `limit`; panics if the peer keeps the connection open longer.
/// A reset after some bytes counts as EOF.
pub async fn read_to_eof(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let result = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("read: {e}"),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "the peer did not close the connection within {limit:?} (got {:?} so far)",
        String::from_utf8_lossy(&out)
    );
    out
}
