//! [`Daemon`]: a server binary (`deploy-agent`, `deploy-proxy`) run with `--foreground`.
//!
//! ```text
//! <bin> --foreground --path <ini> [args…]     environment cleared but PATH, NO_COLOR
//! stderr: <program>: listening on 127.0.0.1:40123      one line per listening socket,
//!         <program>: listening on 127.0.0.2:40999      in the order the ini gives them
//!         …log lines…                                  kept, replayed if the test panics
//! ```
//!
//! The harness learns its addresses from those lines (waiting at most
//! [`START_TIMEOUT`]), keeps draining stderr on a thread, and on drop stops the master
//! (SIGTERM, then SIGKILL after 5 s) and reaps it.

use crate::env::{eventually, wait_until, START_TIMEOUT};
use crate::procfs::{children, signal};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server process.
pub struct Daemon {
    child: Option<Child>,
    /// Every listening address, in the order printed.
    pub addrs: Vec<SocketAddr>,
    /// The ini it was started with.
    pub ini: PathBuf,
    program: String,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `bin --foreground --path ini args…` and waits for `expected` lines
    /// `<program>: listening on ADDR`, where `program` is the binary's file name.
    pub fn start(bin: &Path, ini: &Path, args: &[&str], expected: usize) -> Daemon {
        Daemon::start_env(bin, ini, args, expected, &[])
    }

    /// [`Daemon::start`] with environment variables added to its clean environment.
    pub fn start_env(
        bin: &Path,
        ini: &Path,
        args: &[&str],
        expected: usize,
        env: &[(String, String)],
    ) -> Daemon {
        let program = bin
            .file_name()
            .and_then(|n| n.to_str())
            .expect("binary name")
            .to_owned();
        let mut child = Command::new(bin)
            .arg("--foreground")
            .arg("--path")
            .arg(ini)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        {
            let log = Arc::clone(&log);
            let prefix = format!("{program}: listening on ");
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if let Some(addr) = text.trim().strip_prefix(&prefix) {
                        if let Ok(addr) = addr.parse() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().expect("log lock").push_str(&text);
                    line.clear();
                }
            });
        }
        let mut daemon = Daemon {
            child: Some(child),
            addrs: Vec::new(),
            ini: ini.to_path_buf(),
            program,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while daemon.addrs.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(addr) => daemon.addrs.push(addr),
                Err(_) => panic!(
                    "{} printed {} of {expected} `listening on` lines within {START_TIMEOUT:?}; log:\n{}\nini {}:\n{}",
                    daemon.program,
                    daemon.addrs.len(),
                    daemon.log(),
                    ini.display(),
                    std::fs::read_to_string(ini).unwrap_or_default()
                ),
            }
        }
        daemon
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Sends a signal to the master.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal(self.pid(), sig);
    }

    /// The live worker processes (children of the master).
    pub fn workers(&self) -> Vec<i32> {
        children(self.pid())
    }

    /// Waits until exactly `n` workers are alive; returns their pids.
    pub async fn wait_workers(&self, n: usize) -> Vec<i32> {
        eventually(Duration::from_secs(10), &format!("{n} workers"), || {
            let w = self.workers();
            (w.len() == n).then_some(w)
        })
        .await
    }

    /// [`Daemon::wait_workers`] without a runtime.
    pub fn wait_workers_blocking(&self, n: usize) -> Vec<i32> {
        wait_until(Duration::from_secs(10), &format!("{n} workers"), || {
            let w = self.workers();
            (w.len() == n).then_some(w)
        })
    }

    /// Waits at most `limit` for the master to exit; reaps it.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Daemon::wait_exit`] without a runtime.
    pub fn wait_exit_blocking(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while let Ok(None) = child.try_wait() {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let mut err = std::io::stderr();
            let _ = writeln!(
                err,
                "----- {} log ({}) -----\n{}----- end of log -----",
                self.program,
                self.ini.display(),
                self.log()
            );
        }
    }
}
