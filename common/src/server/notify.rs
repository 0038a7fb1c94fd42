//! systemd's service notifications (sd_notify(3)), for `Type=notify` units: one
//! datagram per state change on the unix socket `NOTIFY_SOCKET` names (a path, or an
//! abstract name written `@name`), and the watchdog `WATCHDOG_USEC` asks for.
//!
//! ```text
//! READY=1                                  first worker serves
//! STATUS=serving on 0.0.0.0:3440; workers: 2
//! RELOADING=1  MONOTONIC_USEC=…            SIGHUP received
//! READY=1  STATUS=… reloaded               the new generation serves (or the reload failed)
//! STOPPING=1                               SIGTERM/SIGINT received
//! WATCHDOG=1                               every WATCHDOG_USEC / 2 while the master runs
//! ```
//!
//! In-house rather than the `sd-notify` crate: the protocol is one `sendto(2)` of
//! `KEY=value` lines, which the daemon core already did for `READY=1`.
//!
//! [`init`] reads the variables once, at start-up, and removes them from the
//! environment, so that workers, rsync and jobs never see them (a job that is itself a
//! notify-aware program would otherwise talk to systemd on our behalf). Only the master
//! notifies; everything here is a no-op when systemd did not ask.

use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::Duration;

/// What systemd asked for, read by [`init`].
#[derive(Debug, Default)]
struct Env {
    /// `NOTIFY_SOCKET`.
    socket: Option<OsString>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is meant for this process.
    watchdog: Option<Duration>,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then removes them from
/// the environment. Call it once, early, while the process is single-threaded (the
/// daemon's start-up); later calls change nothing.
pub fn init() {
    ENV.get_or_init(|| {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec / 2));
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // Single-threaded start-up (see above): nothing reads the environment
            // concurrently.
            std::env::remove_var(name);
        }
        Env { socket, watchdog }
    });
}

/// How often to send `WATCHDOG=1` (half the interval systemd set), if it set one.
pub fn watchdog_period() -> Option<Duration> {
    ENV.get().and_then(|e| e.watchdog)
}

/// Whether systemd listens (`NOTIFY_SOCKET` was set when [`init`] ran).
pub fn enabled() -> bool {
    ENV.get().is_some_and(|e| e.socket.is_some())
}

/// Sends `state` (newline-separated `KEY=value` assignments) to systemd; a no-op when
/// it does not listen. A failure is logged at debug level only: the service works
/// without its supervisor's bookkeeping.
pub fn notify(state: &str) {
    let Some(path) = ENV.get().and_then(|e| e.socket.as_ref()) else {
        return;
    };
    if let Err(e) = send(path, state.as_bytes()) {
        tracing::debug!(cause = %e, state, "sd_notify failed");
    }
}

fn send(path: &OsString, message: &[u8]) -> std::io::Result<usize> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            socket.send_to_addr(message, &addr)
        }
        None => socket.send_to(message, path),
    }
}

/// `MONOTONIC_USEC=…`, which systemd wants beside `RELOADING=1` (CLOCK_MONOTONIC, µs).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}
