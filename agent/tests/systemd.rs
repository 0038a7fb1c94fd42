//! The agent under systemd, without systemd: the notifications a `Type=notify` unit
//! gets (read from a unix datagram socket standing for `NOTIFY_SOCKET`).

use crate::util::*;
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Reads notifications until one has the line `want`; returns that one. Every
/// notification read is kept in `seen` (for the failure message).
fn until(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no {want:?} within 20 s; got {seen:#?}"
        );
        match sock.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(message.clone());
                if message.lines().any(|l| l == want) {
                    return message;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn notifies_ready_status_reloads_stop_and_watchdog() {
    let sb = Sandbox::new();
    let path = sb.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let agent = Config::new(&sb)
        .env("NOTIFY_SOCKET", path.display())
        .env("WATCHDOG_USEC", 400_000)
        .start(&sb);
    let mut seen = Vec::new();
    let ready = until(&sock, "READY=1", &mut seen);
    assert!(
        ready.contains(&format!("\nSTATUS=serving on {}; workers: 1", agent.addr())),
        "{ready}"
    );
    until(&sock, "WATCHDOG=1", &mut seen);

    agent.signal(Signal::SIGHUP);
    let reloading = until(&sock, "RELOADING=1", &mut seen);
    assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading}");
    let reloaded = until(&sock, "READY=1", &mut seen);
    assert!(reloaded.contains("configuration reloaded at"), "{reloaded}");

    // A reload that fails says so, and the service is ready again (on the old config).
    std::fs::write(&agent.ini, "[server]\nport = not-a-port\n").unwrap();
    agent.signal(Signal::SIGHUP);
    until(&sock, "RELOADING=1", &mut seen);
    let failed = until(&sock, "READY=1", &mut seen);
    assert!(failed.contains("reload failed"), "{failed}");
    assert!(failed.contains("not-a-port"), "{failed}");

    agent.signal(Signal::SIGTERM);
    until(&sock, "STOPPING=1", &mut seen);
}
