//! `rsync`: start the group's transfer in the background and return its handle at once.
//!
//! The transfer runs under a runner process (our own binary, `__rsync-runner`) that holds
//! the transfer's lock, so it survives worker restarts, two concurrent `rsync` orders
//! cannot both start it, and `status`/`rkill` find it through the state directory rather
//! than by scanning command lines. A v2 client that asks to `follow` gets rsync's output
//! lines and progress events until it ends, then its exit code.

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

/// How often a followed transfer's output file is read for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    let (mut spec, checksum) = match agent.resolve(&request.options) {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    if request.follow {
        spec.option.push("--info=progress2".into());
    }
    match agent.state.start(&spec, &agent.runner) {
        Ok(StartOutcome::AlreadyRunning { pids }) => Reply::ok(running(&pids)),
        Ok(StartOutcome::Started { pid }) => {
            tracing::info!(checksum = %checksum, runner = pid, dest = %spec.dest, src = %spec.src, "transfer started");
            if !request.follow {
                return Reply::ok(started(&checksum));
            }
            follow(agent, &checksum, events).await;
            match agent.state.last(&checksum) {
                Some(last) => {
                    let code = last.code.unwrap_or_else(|| 128 + last.signal.unwrap_or(0));
                    let meaning = match (last.code, last.signal) {
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => rs::exit_meaning(code).to_owned(),
                    };
                    Reply::ok(finished(&checksum, code, &meaning))
                }
                None => Reply::error(500, "transfer ended without recording its exit status"),
            }
        }
        Err(e) => Reply::error(500, e.to_string()),
    }
}

/// Streams the transfer's output file until its runner has finished.
async fn follow(agent: &Agent, checksum: &str, events: &Events) {
    let path = agent.state.root().join(checksum).join("output");
    let mut offset = 0u64;
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
                }))
                .await;
        }
        if done {
            if !pending.is_empty() {
                let text = String::from_utf8_lossy(&pending).trim().to_owned();
                events
                    .send(Event::Line {
                        stream: Stream::Stdout,
                        line: text,
                    })
                    .await;
            }
            return;
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// Parses an rsync `--info=progress2` line: `  1,234,567  45%   12.34MB/s    0:00:01 …`.
fn parse_progress(line: &str) -> Option<Event> {
    let mut words = line.split_whitespace();
    let bytes: u64 = words.next()?.replace([',', '.'], "").parse().ok()?;
    let percent: u8 = words.next()?.strip_suffix('%')?.parse().ok()?;
    let rate = words.next()?.to_owned();
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
