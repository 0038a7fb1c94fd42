//! `rsync`: start the group's transfer in the background and return its handle at once.
//!
//! The transfer runs under a runner process (our own binary, `__rsync-runner`) that holds
//! the transfer's lock, so it survives worker restarts, two concurrent `rsync` orders
//! cannot both start it, and `status`/`rkill` find it through the state directory rather
//! than by scanning command lines. rsync is asked for `--info=progress2` (when it is 3.1
//! or later), so that its output file says how far it is, for `status` and followers.
//!
//! A v2 client that asks to `follow` gets rsync's output lines and progress events until
//! it ends, then its exit code. If the transfer is already running, a follower *attaches*
//! to it: it gets the end of the output so far (the last [`ATTACH_BACKLOG`] bytes), then
//! the rest as it comes, and the same final reply with `"attached":"true"`. Without
//! `follow` the reply is the original's `alreadyRsync` body, as before.
//!
//! `args` starting with `relay` switch to relay mode ([`super::relay`]).

use super::Agent;
use deploy_common::order::rsync::{finished, started};
use deploy_common::order::status::running;
use deploy_common::order::{Reply, Request};
use deploy_common::rsync::state::StartOutcome;
use deploy_common::rsync::{self as rs};
use deploy_common::server::conn::Events;
use deploy_common::wire::message::{Event, Stream};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How much of a running transfer's output an attaching follower gets first.
const ATTACH_BACKLOG: u64 = 16 * 1024;

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    if rs::relay::is_relay(&request.args) {
        return super::relay::run(agent, request, events).await;
    }
    let (mut spec, checksum) = match agent.resolve(&request.options) {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    if rs::progress_supported(&spec.rsync).await {
        spec.option.push("--info=progress2".into());
    }
    match agent.state.start(&spec, &agent.runner) {
        Ok(StartOutcome::AlreadyRunning { .. }) if request.follow => {
            tracing::info!(checksum = %checksum, dest = %spec.dest, src = %spec.src, "follower attached to a running transfer");
            let runner = agent.state.runner(&checksum);
            follow(
                agent,
                &checksum,
                runner,
                Backlog::Tail(ATTACH_BACKLOG),
                events,
            )
            .await;
            let mut reply = ended(agent, &checksum);
            if let deploy_common::order::Body::Json(body) = &mut reply.body {
                body.insert("attached".into(), deploy_common::order::flag(true));
            }
            reply
        }
        Ok(StartOutcome::AlreadyRunning { pids }) => {
            Reply::ok(running(&pids, &super::status::now(agent, &checksum)))
        }
        Ok(StartOutcome::Started { pid }) => {
            tracing::info!(checksum = %checksum, runner = pid, dest = %spec.dest, src = %spec.src, "transfer started");
            log_end(agent.state.clone(), checksum.clone());
            if !request.follow {
                // A transfer that fails at once (unknown module, refused connection)
                // is reported as failed, as the original did after its 1 s wait; one
                // still running after a short wait is reported started.
                if let Some(body) = early_failure(agent, &checksum, pid).await {
                    return Reply::ok(body);
                }
                return Reply::ok(started(&checksum));
            }
            follow(agent, &checksum, Some(pid), Backlog::All, events).await;
            ended(agent, &checksum)
        }
        Err(e) => Reply::error(500, e.to_string()),
    }
}

/// The reply to a follower once transfer `checksum` has ended: rsync's exit code and
/// its meaning.
fn ended(agent: &Agent, checksum: &str) -> Reply {
    match agent.state.last(checksum) {
        Some(last) => {
            let code = last.code.unwrap_or_else(|| 128 + last.signal.unwrap_or(0));
            let meaning = match (last.code, last.signal) {
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => rs::exit_meaning(code).to_owned(),
            };
            Reply::ok(finished(checksum, code, &meaning))
        }
        None => Reply::error(500, "transfer ended without recording its exit status"),
    }
}

/// How long a started transfer is watched for an early failure.
const EARLY_WAIT: Duration = Duration::from_millis(300);

/// The original's failure body (`return` `"false"`, `content` rsync's output in base64)
/// if the transfer ended with an error within [`EARLY_WAIT`].
async fn early_failure(
    agent: &Agent,
    checksum: &str,
    runner: u32,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut wake = rs::wake::Wake::new(&agent.state.root().join(checksum), Some(runner));
    let waited = tokio::time::timeout(EARLY_WAIT, async {
        while agent.state.running(checksum).is_some() {
            wake.wait().await;
        }
    })
    .await;
    if waited.is_err() {
        return None;
    }
    let last = agent.state.last(checksum)?;
    if last.code == Some(0) {
        return None;
    }
    use base64::Engine as _;
    let code = last.code.unwrap_or_else(|| 128 + last.signal.unwrap_or(0));
    Some(deploy_common::order::object([
        ("return", deploy_common::order::flag(false)),
        (
            "content",
            serde_json::Value::String(
                base64::engine::general_purpose::STANDARD.encode(&last.output_tail),
            ),
        ),
        ("checksum", serde_json::Value::String(checksum.to_owned())),
        ("exitCode", serde_json::Value::String(code.to_string())),
    ]))
}

/// How often a started transfer is checked for its end (to log it).
const END_INTERVAL: Duration = Duration::from_secs(1);

/// Logs the end of transfer `checksum` once its runner has exited: rsync's code (or
/// signal) and its meaning, the bytes it reports, and the time since the start. Best
/// effort: a worker that stops first logs nothing (`status` still reports the end).
fn log_end(state: rs::state::StateDir, checksum: String) {
    let started = std::time::Instant::now();
    tokio::spawn(async move {
        while state.running(&checksum).is_some() {
            tokio::time::sleep(END_INTERVAL).await;
        }
        let elapsed = format!("{:.1}s", started.elapsed().as_secs_f64());
        let Some(last) = state.last(&checksum) else {
            tracing::warn!(checksum = %checksum, elapsed = %elapsed, "transfer ended without recording its exit status");
            return;
        };
        let bytes =
            transferred_bytes(&last.output_tail).map_or_else(|| "-".to_owned(), |b| b.to_string());
        match (last.code, last.signal) {
            (Some(0), _) => {
                tracing::info!(checksum = %checksum, code = 0, bytes = %bytes, elapsed = %elapsed, "transfer finished")
            }
            (Some(code), _) => {
                tracing::warn!(checksum = %checksum, code, meaning = rs::exit_meaning(code), bytes = %bytes, elapsed = %elapsed, "transfer failed")
            }
            (None, signal) => {
                tracing::warn!(checksum = %checksum, signal = ?signal, bytes = %bytes, elapsed = %elapsed, "transfer killed")
            }
        }
    });
}

/// The bytes rsync reports in the tail of its output: `sent X bytes  received Y bytes`
/// (`-v`), `Total bytes sent: X` / `received: Y` (`--stats`), or the last
/// `--info=progress2` count; `None` if it reports none.
fn transferred_bytes(tail: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(tail);
    let number = |s: &str| s.replace([',', '.'], "").parse::<u64>().ok();
    for line in text.lines().rev() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["sent", sent, "bytes", "received", received, "bytes", ..] = words.as_slice() {
            return Some(number(sent)?.saturating_add(number(received)?));
        }
    }
    let total = |label: &str| {
        text.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(label).and_then(|v| number(v.trim())))
    };
    if let (Some(sent), Some(received)) =
        (total("Total bytes sent:"), total("Total bytes received:"))
    {
        return Some(sent.saturating_add(received));
    }
    text.split(['\r', '\n'])
        .rev()
        .find_map(|l| match parse_progress(l.trim()) {
            Some(Event::Progress { bytes, .. }) => Some(bytes),
            _ => None,
        })
}

/// Where a follower starts reading the transfer's output.
#[derive(Debug, Clone, Copy)]
enum Backlog {
    /// From the start: the follower started the transfer.
    All,
    /// The last this-many bytes (from the first line boundary in them): an attaching
    /// follower gets some context, not a long transfer's whole history.
    Tail(u64),
}

/// Streams the transfer's output file until its runner has finished, reading what is
/// new each time the runner writes (or exits), not on a timer. `runner` may be unknown
/// (then the end is noticed by the write of `exit` or the backstop).
async fn follow(
    agent: &Agent,
    checksum: &str,
    runner: Option<u32>,
    backlog: Backlog,
    events: &Events,
) {
    let dir = agent.state.root().join(checksum);
    let mut wake = rs::wake::Wake::new(&dir, runner);
    let path = dir.join("output");
    let mut offset = 0u64;
    let mut skip_partial = false;
    if let Backlog::Tail(n) = backlog {
        let len = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
        offset = len.saturating_sub(n);
        // Mid-file: the first (partial) line is dropped.
        skip_partial = offset > 0;
    }
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let done = agent.state.running(checksum).is_none();
        if let Ok(mut file) = tokio::fs::File::open(&path).await {
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                let mut chunk = Vec::new();
                if let Ok(n) = file.read_to_end(&mut chunk).await {
                    offset += n as u64;
                    pending.extend_from_slice(&chunk);
                }
            }
        }
        while let Some(at) = pending.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            if std::mem::take(&mut skip_partial) {
                continue;
            }
            let text = String::from_utf8_lossy(line.get(..at).unwrap_or_default())
                .trim()
                .to_owned();
            if text.is_empty() {
                continue;
            }
            events
                .send(parse_progress(&text).unwrap_or(Event::Line {
                    stream: Stream::Stdout,
                    line: text,
                    partial: false,
                }))
                .await;
        }
        if done {
            let text = String::from_utf8_lossy(&pending).trim().to_owned();
            if !text.is_empty() {
                events
                    .send(parse_progress(&text).unwrap_or(Event::Line {
                        stream: Stream::Stdout,
                        line: text,
                        partial: false,
                    }))
                    .await;
            }
            return;
        }
        wake.wait().await;
    }
}

/// An rsync `--info=progress2` line as an event (see [`rs::parse_progress`]).
fn parse_progress(line: &str) -> Option<Event> {
    let rs::Progress {
        bytes,
        percent,
        rate,
    } = rs::parse_progress(line)?;
    Some(Event::Progress {
        bytes,
        percent,
        rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_from_rsync_output() {
        let v = b"file\n\nsent 1,234 bytes  received 56 bytes  2,580.00 bytes/sec\ntotal size is 9  speedup is 0.01\n";
        assert_eq!(transferred_bytes(v), Some(1290));
        let stats = b"Total bytes sent: 100\nTotal bytes received: 20\n";
        assert_eq!(transferred_bytes(stats), Some(120));
        let progress =
            b"\r     1,000  10%  1.00MB/s  0:00:01\r     32,768 100%  1.00MB/s  0:00:01 (xfr#1)\n";
        assert_eq!(transferred_bytes(progress), Some(32768));
        assert_eq!(
            transferred_bytes(b"rsync error: some files vanished\n"),
            None
        );
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress("      7,238,220 100%   12.34MB/s    0:00:00 (xfr#120, to-chk=0/133)"),
            Some(Event::Progress {
                bytes: 7_238_220,
                percent: 100,
                rate: "12.34MB/s".into()
            })
        );
        assert_eq!(parse_progress("sent 1,234 bytes  received 5 bytes"), None);
        assert_eq!(parse_progress("file001.txt"), None);
    }
}
