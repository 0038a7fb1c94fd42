//! Running a command to completion under a deadline: [`run_command`] (deploy-client,
//! curl), whose [`Output`] also keeps when each stdout line arrived, so a test can tell
//! streamed output from output printed at the end; [`Spawned`] for a command the test
//! interacts with while it runs (waits for a line on its standard error, signals it);
//! and [`run_bin`] for quick runs (`--check`).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Each standard output line (without its newline) and when it arrived, from the
    /// start.
    pub lines: Vec<(Duration, String)>,
    /// From spawn to exit.
    pub elapsed: Duration,
}

impl Output {
    /// Standard output parsed as one JSON value; panics with the output otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Each non-empty standard output line parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines
            .iter()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(_, l)| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("line {l:?} is not JSON ({e}): {self:?}"))
            })
            .collect()
    }

    /// Asserts the exit code, with the whole output in the message.
    pub fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(self.code, Some(code), "unexpected exit code: {self:#?}");
        self
    }
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) and waits at most `limit` for
/// it; past that the command is killed and the test fails with what it printed.
pub fn run_command(cmd: &mut Command, limit: Duration) -> Output {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let (tx, rx) = mpsc::channel::<(Duration, String)>();
    let stdout = child.stdout.take().expect("stdout");
    let out_thread = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let text = String::from_utf8_lossy(&line).into_owned();
            let _ = tx.send((started.elapsed(), text));
            line.clear();
        }
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let err_thread = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let _ = out_thread.join();
    let stderr = err_thread.join().unwrap_or_default();
    let raw: Vec<(Duration, String)> = rx.try_iter().collect();
    let stdout: String = raw.iter().map(|(_, l)| l.as_str()).collect();
    let lines = raw
        .into_iter()
        .map(|(t, l)| (t, l.trim_end_matches(['\n', '\r']).to_owned()))
        .collect();
    let output = Output {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
        lines,
        elapsed,
    };
    assert!(
        status.is_some(),
        "{cmd:?} did not finish within {limit:?}: {output:#?}"
    );
    output
}

/// Runs `bin args…` (for `--check` and the like); returns the exit code, stdout and
/// stderr. Bounded by 30 s.
pub fn run_bin(bin: &Path, args: &[&str]) -> (i32, String, String) {
    let out = run_command(
        Command::new(bin).args(args).env("NO_COLOR", "1"),
        Duration::from_secs(30),
    );
    (out.code.unwrap_or(-1), out.stdout, out.stderr)
}

/// [`run_bin`] with raw argument bytes, for arguments that are not UTF-8.
pub fn run_bin_bytes(bin: &Path, args: &[&[u8]]) -> (i32, String, String) {
    use std::os::unix::ffi::OsStrExt;
    let out = run_command(
        Command::new(bin)
            .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .env("NO_COLOR", "1"),
        Duration::from_secs(30),
    );
    (out.code.unwrap_or(-1), out.stdout, out.stderr)
}

/// Runs `deploy-client args…` with a clean environment (`PATH` only, and
/// `DEPLOY_KEY_CIPHER` = `key_cipher`), bounded by 30 s.
pub fn deploy_client(args: &[&str], key_cipher: &str) -> Output {
    run_command(
        Command::new(crate::bins::client())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", key_cipher)
            .env("NO_COLOR", "1"),
        Duration::from_secs(30),
    )
}

/// Runs `openssl args…` and asserts it succeeded; `None` (with a note) when openssl is
/// not installed, for tests that then skip.
pub fn openssl(args: &[&str]) -> Option<Output> {
    if Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("note: openssl is not installed; skipping");
        return None;
    }
    let out = run_command(Command::new("openssl").args(args), Duration::from_secs(30));
    out.expect_code(0);
    Some(out)
}

/// A command running in the background, its standard output and error read as they
/// come; killed on drop if still running.
pub struct Spawned {
    child: std::process::Child,
    started: Instant,
    stdout: Option<std::thread::JoinHandle<Vec<(Duration, String)>>>,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<()>>,
}

impl Spawned {
    /// Starts `cmd` with stdin closed and stdout and stderr captured.
    pub fn start(cmd: &mut Command) -> Spawned {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut reader = BufReader::new(out);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                lines.push((
                    started.elapsed(),
                    String::from_utf8_lossy(&line).into_owned(),
                ));
                line.clear();
            }
            lines
        });
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                line.clear();
            }
        });
        Spawned {
            child,
            started,
            stdout: Some(stdout),
            stderr_lines: rx,
            stderr_seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// Waits up to `limit` for a standard error line for which `want` holds, and
    /// returns it; panics with what was printed otherwise.
    pub fn wait_for_stderr(&mut self, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        if let Some(line) = self.stderr_seen.iter().find(|l| want(l)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no such line on standard error within {limit:?}: {:?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits up to `limit` for the process to exit (killing it and failing past that)
    /// and returns what it did.
    pub fn finish(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        let raw = self
            .stdout
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        if let Some(t) = self.stderr.take() {
            let _ = t.join();
        }
        self.stderr_seen.extend(self.stderr_lines.try_iter());
        let output = Output {
            code: status.and_then(|s| s.code()),
            stdout: raw.iter().map(|(_, l)| l.as_str()).collect(),
            stderr: self.stderr_seen.concat(),
            lines: raw
                .into_iter()
                .map(|(t, l)| (t, l.trim_end_matches(['\n', '\r']).to_owned()))
                .collect(),
            elapsed,
        };
        assert!(
            status.is_some(),
            "did not finish within {limit:?}: {output:#?}"
        );
        output
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
