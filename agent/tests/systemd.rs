//! The agent under systemd, without systemd: the notifications a `Type=notify` unit
//! gets (read from a unix datagram socket standing for `NOTIFY_SOCKET`), and the
//! journald priorities of its log lines when `JOURNAL_STREAM` names its stderr.

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

/// A child process killed (and reaped) when the test lets go of it.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the agent in the foreground with its stderr in a file, `JOURNAL_STREAM` set to
/// that file's `dev:ino` (`journal`) or to some other stream; makes it log an info
/// (start), an error (a failed reload), and stops it. Returns what it wrote.
fn stderr_of_a_run(sb: &Sandbox, journal: bool) -> String {
    use std::os::unix::fs::MetadataExt;
    let config = Config::new(sb);
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    let ini = sb.join(&format!("agent-{journal}.ini"));
    std::fs::write(&ini, config.ini_text()).unwrap();
    let log_path = sb.join(&format!("stderr-{journal}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let stream = match journal {
        true => format!("{}:{}", meta.dev(), meta.ino()),
        false => format!("{}:{}", meta.dev(), meta.ino() + 1),
    };
    let child = std::process::Command::new(AGENT_BIN)
        .args(["--foreground", "--path", ini.to_str().unwrap()])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("NO_COLOR", "1")
        .env("JOURNAL_STREAM", stream)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let pid = child.0.id() as i32;
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(START_TIMEOUT, "the agent to start", || {
        read().contains("deploy-agent started").then_some(())
    });
    std::fs::write(&ini, "[server]\nport = not-a-port\n").unwrap();
    signal(pid, Signal::SIGHUP);
    wait_until(Duration::from_secs(20), "the reload to fail", || {
        read().contains("reload failed").then_some(())
    });
    signal(pid, Signal::SIGTERM);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", read());
    read()
}

/// Under journald, log lines carry `<N>` syslog priorities and no timestamps, so
/// `journalctl -p err` works; when `JOURNAL_STREAM` names another stream, stderr keeps
/// its ordinary format.
#[test]
fn journald_lines_carry_priorities() {
    let sb = Sandbox::new();
    let text = stderr_of_a_run(&sb, true);
    let lines: Vec<&str> = text.lines().collect();
    let started = lines
        .iter()
        .find(|l| l.contains("deploy-agent started"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        started.starts_with("<6>info: [deploy-agent started]"),
        "{text}"
    );
    let failed = lines
        .iter()
        .find(|l| l.contains("reload failed"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(failed.starts_with("<3>error: [reload failed"), "{text}");
    // Every tracing line has a priority; none has a timestamp.
    for line in lines.iter().filter(|l| !l.contains("listening on")) {
        assert!(line.starts_with('<'), "{line:?} in\n{text}");
        let year = this_year();
        assert!(
            !line.contains(&format!("[{year}/")) && !line.contains(&format!("{year}-")),
            "{line:?}"
        );
    }

    let plain = stderr_of_a_run(&sb, false);
    assert!(
        plain.lines().all(|l| !l.starts_with('<')),
        "not the journal's stream, no priorities:\n{plain}"
    );
    assert!(plain.contains("deploy-agent started"), "{plain}");
}

/// This year, as the error log's timestamps (`[2026/…`) and tracing's (`2026-…`)
/// start with it.
fn this_year() -> String {
    let secs = unix_now();
    // 365.2425 days a year since 1970: exact enough away from New Year's Eve.
    (1970 + secs / 31_556_952).to_string()
}
