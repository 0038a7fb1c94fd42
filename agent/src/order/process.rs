//! Running a program for `exec` and `run`: argv only, a minimal environment, stdin from
//! the request (or /dev/null), its own process group, stdout and stderr captured
//! together in arrival order, and each line streamed with its stream name to a client
//! that follows.
//!
//! When the order is dropped unfinished (it timed out, or its caller went away: the
//! connection driver drops the order when the client closes the connection) the whole
//! group gets SIGTERM, then SIGKILL after [`KILL_GRACE`]. A worker that dies takes its
//! jobs with it: they are in its session, which the master kills.

use deploy_common::order::{Reply, Request};
use deploy_common::server::conn::Events;
use deploy_common::wire::message::{Event, Stream};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Output beyond this is dropped (and said so) rather than held in memory.
const MAX_OUTPUT: usize = 16 << 20;

/// The longest line read at once: a longer one (or endless bytes without a newline)
/// comes in pieces of this size, each a partial line, so neither memory nor one event
/// grows with it.
pub const MAX_LINE: u64 = 64 << 10;

/// How a program ended.
pub struct Finished {
    /// The exit code (128 + signal when killed).
    pub code: i32,
    /// stdout and stderr, interleaved as they came (stdout only with [`Job::apart`]).
    pub output: Vec<u8>,
    /// stderr, with [`Job::apart`] (else empty).
    pub stderr: Vec<u8>,
}

/// How long a job gets between SIGTERM and SIGKILL when its order is dropped.
pub const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops the program's whole process group when the order is dropped unfinished:
/// SIGTERM now, SIGKILL after [`KILL_GRACE`] if any member is left.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            terminate_group(pgid, KILL_GRACE);
        }
    }
}

/// SIGTERM to group `pgid`, then SIGKILL after `grace` unless the group is gone by
/// then (checked every 50 ms, on a thread of its own since this runs in `Drop`). A
/// group's id is not reused while any member lives, so the late SIGKILL can only reach
/// what is left of this group.
pub fn terminate_group(pgid: i32, grace: std::time::Duration) {
    use nix::sys::signal::{killpg, Signal};
    let group = nix::unistd::Pid::from_raw(pgid);
    if killpg(group, Signal::SIGTERM).is_err() {
        return; // already gone
    }
    tracing::info!(pgid, "stopping an abandoned job (SIGTERM, then SIGKILL)");
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if killpg(group, None).is_err() {
                return;
            }
        }
        let _ = killpg(group, Signal::SIGKILL);
    });
}

/// A timed order (`at`): sleeps until the instant by this host's clock, or the 409
/// reply naming the instant and this clock when it cannot be honoured
/// ([`deploy_common::order::at::admit`]). Nothing to do without `at`.
pub async fn wait_for_instant(request: &Request) -> Result<(), Reply> {
    use deploy_common::order::at;
    let Some(instant) = request.at else {
        return Ok(());
    };
    let wait = at::admit(&request.order, instant, request.max_wait, at::now_ms())
        .map_err(|text| Reply::error(409, text))?;
    tracing::info!(order = %request.order, at = %at::rfc3339(instant), wait_ms = wait.as_millis(), "waiting for the start instant");
    // Slept in steps re-read from the wall clock (what the instant is on), not once on
    // the monotonic clock, which an NTP slew moves away from it over a long wait.
    loop {
        let left = instant.saturating_sub(at::now_ms());
        if left <= 0 {
            return Ok(());
        }
        let step = u64::try_from(left.min(60_000)).unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(step)).await;
    }
}

/// A timed order's reply says when its command started on this host's clock
/// (`started_at`, unix ms): a caller sees its instant was honoured (an agent that
/// predates `at` runs at once and says nothing).
pub fn note_start(
    body: &mut serde_json::Map<String, serde_json::Value>,
    request: &Request,
    started_at: i64,
) {
    if request.at.is_some() {
        body.insert(
            "started_at".into(),
            serde_json::Value::String(started_at.to_string()),
        );
    }
}

/// Runs `argv` to its end, in `/`. A program that cannot be started is reported like a
/// shell would: as output, with code 127.
pub async fn run(
    argv: &[String],
    stdin: Option<Vec<u8>>,
    follow: bool,
    events: &Events,
) -> Finished {
    run_in(argv, stdin, follow, events, std::path::Path::new("/")).await
}

/// [`run`] in the directory `cwd`.
pub async fn run_in(
    argv: &[String],
    stdin: Option<Vec<u8>>,
    follow: bool,
    events: &Events,
    cwd: &std::path::Path,
) -> Finished {
    let job = Job {
        argv,
        stdin,
        follow,
        cwd,
        env: &[],
        apart: false,
    };
    run_job(job, events).await
}

/// One program to run, and how.
pub struct Job<'a> {
    /// The program and its arguments.
    pub argv: &'a [String],
    /// Bytes for its stdin (`None`: /dev/null).
    pub stdin: Option<Vec<u8>>,
    /// Stream its lines as events.
    pub follow: bool,
    /// Its working directory.
    pub cwd: &'a std::path::Path,
    /// Variables beyond `PATH` and `LANG` (set after them, so they may override).
    pub env: &'a [(String, String)],
    /// Keep stderr apart ([`Finished::stderr`]) instead of interleaved in `output`, and
    /// keep the end of each stream rather than its start when it exceeds
    /// [`MAX_OUTPUT`] (a script's last lines say how it ended).
    pub apart: bool,
}

/// Runs `job` to its end (see the module docs).
pub async fn run_job(job: Job<'_>, events: &Events) -> Finished {
    let Some((program, rest)) = job.argv.split_first() else {
        return Finished {
            code: 127,
            output: b"empty command\n".to_vec(),
            stderr: Vec::new(),
        };
    };
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(job.cwd)
        .stdin(if job.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Finished {
                code: 127,
                output: format!("{program}: {e}\n").into_bytes(),
                stderr: Vec::new(),
            }
        }
    };
    let mut guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), job.stdin) {
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    let (tx, mut rx) = mpsc::channel::<(Stream, Vec<u8>)>(64);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, Stream::Stderr, tx.clone()));
    }
    drop(tx);
    let mut output = Vec::new();
    let mut stderr = Vec::new();
    let mut truncated = false;
    while let Some((stream, line)) = rx.recv().await {
        if job.follow {
            // A line ends at its newline, at the end of the stream, or after MAX_LINE
            // bytes (a piece of a longer one).
            let (text, partial) = match line.strip_suffix(b"\n") {
                Some(text) => (text, false),
                None => (&line[..], true),
            };
            let text = String::from_utf8_lossy(text).into_owned();
            events
                .send(Event::Line {
                    stream,
                    line: text,
                    partial,
                })
                .await;
        }
        let keep = match stream {
            Stream::Stderr if job.apart => &mut stderr,
            _ => &mut output,
        };
        if keep.len() + line.len() <= MAX_OUTPUT {
            keep.extend_from_slice(&line);
        } else if job.apart {
            // The end is kept: compacted once in a while, so each byte moves O(1) times.
            keep.extend_from_slice(&line);
            if keep.len() > 2 * MAX_OUTPUT {
                let cut = keep.len() - MAX_OUTPUT;
                keep.drain(..cut);
            }
        } else {
            truncated = true;
        }
    }
    if job.apart {
        for kept in [&mut output, &mut stderr] {
            if kept.len() > MAX_OUTPUT {
                let cut = kept.len() - MAX_OUTPUT;
                kept.drain(..cut);
            }
        }
    }
    if truncated {
        output.extend_from_slice(
            format!("\n[deploy-agent: output truncated at {MAX_OUTPUT} bytes]\n").as_bytes(),
        );
    }
    let status = child.wait().await;
    guard.0 = None;
    let code = match &status {
        Ok(s) => s
            .code()
            .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(s).unwrap_or(0)),
        Err(_) => -1,
    };
    Finished {
        code,
        output,
        stderr,
    }
}

/// Reads one pipe line by line (a final unterminated line included) into the channel;
/// a line longer than [`MAX_LINE`] goes in pieces.
async fn pump<R: AsyncRead + Unpin>(
    reader: R,
    stream: Stream,
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
) {
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send((stream, line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `argv`, under `sudo -n --` when `sudo` is asked.
pub fn with_sudo(sudo: bool, argv: &[String]) -> Vec<String> {
    let mut command = Vec::with_capacity(argv.len() + 3);
    if sudo {
        command.extend(["sudo", "-n", "--"].map(String::from));
    }
    command.extend(argv.iter().cloned());
    command
}
