//! `exec`: run a job from the jobs file with the caller's arguments as argv elements.
//!
//! The job runs with a minimal environment, stdin from /dev/null, in its own process
//! group (killed as a whole if the request is cancelled or times out). stdout and stderr
//! are captured together, in arrival order, for the reply's `content`; a v2 client that
//! follows also gets each line as it comes, marked with its stream.

use super::Agent;
use deploy_common::order::exec::{not_found, ran, split_options};
use deploy_common::order::{Reply, Request};
use deploy_common::server::conn::Events;
use deploy_common::wire::message::{Event, Stream};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Output beyond this is dropped (and said so) rather than held in memory.
const MAX_OUTPUT: usize = 16 << 20;

/// Kills the job's whole process group when the order is dropped unfinished.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    let (name, args) = split_options(&request.options);
    let Some(job) = agent.config.jobs.get(&name) else {
        return Reply::error(400, not_found(&name));
    };
    let argv = match job.argv(&args) {
        Ok(argv) => argv,
        Err(e) => return Reply::error(400, format!("exec[{name}]: {e}")),
    };
    let command_line = job.display(&args);
    let Some((program, rest)) = argv.split_first() else {
        return Reply::error(500, format!("exec[{name}]: empty command"));
    };
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            // Like a shell would: the failure is the job's output, and it did not succeed.
            let text = format!("{program}: {e}\n");
            return Reply::ok(ran(false, &command_line, text.as_bytes()));
        }
    };
    let mut guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let (tx, mut rx) = mpsc::channel::<(Stream, Vec<u8>)>(64);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, Stream::Stderr, tx.clone()));
    }
    drop(tx);
    let mut output = Vec::new();
    let mut truncated = false;
    while let Some((stream, line)) = rx.recv().await {
        if request.follow {
            let text =
                String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned();
            events.send(Event::Line { stream, line: text }).await;
        }
        if output.len() + line.len() <= MAX_OUTPUT {
            output.extend_from_slice(&line);
        } else {
            truncated = true;
        }
    }
    if truncated {
        output.extend_from_slice(
            format!("\n[deploy-agent: output truncated at {MAX_OUTPUT} bytes]\n").as_bytes(),
        );
    }
    let status = child.wait().await;
    guard.0 = None;
    let success = matches!(&status, Ok(s) if s.success());
    Reply::ok(ran(success, &command_line, &output))
}

/// Reads one pipe line by line (a final unterminated line included) into the channel.
async fn pump<R: AsyncRead + Unpin>(
    reader: R,
    stream: Stream,
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
) {
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send((stream, line)).await.is_err() {
                    return;
                }
            }
        }
    }
}
