//! `upload`: a tar stream, sent as the request's body, extracted under a directory that
//! `[allow::paths]` allows, then optionally a command run there. Only where the agent's
//! configuration says `allow_upload = on` (and, for the command, `allow_run = on`).
//!
//! ```text
//! checks (403/400) ─► mkdir -p ROOT ─► tar -x -v -f - --no-same-owner … -C ROOT
//!   ─► ask the client for the body ─► each piece into tar's stdin ─► end: close stdin
//!   tar exits 0 and a command was given ─► the command (argv, no shell) in ROOT
//! ```
//!
//! The archive is the caller's, and the agent often runs as root, so it is checked on
//! its way to tar ([`Guard`]): only files, directories and symbolic links, no absolute
//! name, no `..`, and no path through a symbolic link (of the archive, or one already
//! under ROOT: GNU tar would follow it out of ROOT). The first refused entry stops the
//! extraction (entries before it stay) and the order answers 400 naming it. tar runs
//! with `--no-same-owner --no-same-permissions` (files belong to the agent's user, no
//! setuid bits, the umask applies, so no directory becomes world-writable) and
//! `--unlink-first` (a link at an entry's own path is replaced, not followed); ROOT
//! itself (`.`) is never an entry. So on agents uploads never keep the archive's
//! owners, whatever the client asks.
//!
//! A body that is cut short (the client went away) kills tar's process group. If tar
//! fails mid-way, the rest of the body is read and dropped, so the client gets tar's
//! reply rather than a broken connection.

use super::{process, Agent};
use deploy_common::order::run::ran;
use deploy_common::order::upload::sent;
use deploy_common::order::{Reply, Request};
use deploy_common::server::conn::{BodyChunk, Events};
use deploy_common::upload::guard::Guard;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Most bytes of tar's messages kept for the reply.
const MAX_MESSAGES: usize = 64 << 10;

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    let server = &agent.config.server;
    if !server.allow_upload {
        return Reply::error(403, "upload is disabled on this agent (allow_upload = off)");
    }
    if !request.argv.is_empty() && !server.allow_run {
        return Reply::error(
            403,
            "a command after upload needs allow_run = on on this agent",
        );
    }
    let Some(spec) = request.upload.as_deref() else {
        return Reply::error(400, "upload needs its files and root");
    };
    if !events.can_have_body() {
        return Reply::error(
            400,
            "upload needs protocol v2 (its files travel as the request's body)",
        );
    }
    let root = match agent.config.allow_paths.check(&spec.root) {
        Ok(root) => root,
        Err(denied) => return Reply::error(403, denied.to_string()),
    };
    if let Err(e) = std::fs::create_dir_all(&root) {
        return Reply::error(500, format!("cannot create {}: {e}", root.display()));
    }
    let sudo: Vec<String> = if request.sudo {
        ["sudo", "-n", "--"].map(String::from).into()
    } else {
        Vec::new()
    };
    let mut argv = sudo.clone();
    argv.extend(
        [
            "tar",
            "-x",
            "-v",
            "-f",
            "-",
            "--no-same-owner",
            "--no-same-permissions",
            "--unlink-first",
            "--delay-directory-restore",
            "-C",
        ]
        .map(String::from),
    );
    argv.push(root.to_string_lossy().into_owned());
    let root_text = root.to_string_lossy().into_owned();
    let Some((program, rest)) = argv.split_first() else {
        return Reply::error(500, "no tar command");
    };
    let mut child = match Command::new(program)
        .args(rest)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Reply::error(500, format!("cannot run tar: {e}")),
    };
    let Some(mut body) = events.body() else {
        return Reply::error(
            400,
            "upload needs protocol v2 (its files travel as the request's body)",
        );
    };
    // tar's listing (one name per entry) and its messages, read as they come, to
    // the end (a pipe closed early would kill tar), keeping a bounded part.
    let listing = child.stdout.take().map(|out| {
        tokio::spawn(async move {
            let mut names = tokio::io::BufReader::new(out).split(b'\n');
            let mut files = 0usize;
            while let Ok(Some(name)) = names.next_segment().await {
                if !name.ends_with(b"/") {
                    files += 1;
                }
            }
            files
        })
    });
    let messages = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = MAX_MESSAGES.saturating_sub(kept.len());
                kept.extend_from_slice(buf.get(..n.min(room)).unwrap_or_default());
            }
            kept
        })
    });
    let group = child.id().and_then(|p| i32::try_from(p).ok());
    let kill_group = || {
        if let Some(pgid) = group {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    let mut guard = Guard::new(&root);
    let mut refusal = None;
    let mut stdin = child.stdin.take();
    let mut bytes = 0u64;
    let complete = loop {
        match body.recv().await {
            Some(BodyChunk::Data(chunk)) => {
                bytes += chunk.len() as u64;
                if refusal.is_none() {
                    if let Err(refused) = guard.feed(&chunk) {
                        // Nothing more reaches tar; the rest of the body is drained.
                        stdin = None;
                        kill_group();
                        refusal = Some(refused);
                    }
                }
                if let (Some(pipe), None) = (&mut stdin, &refusal) {
                    if pipe.write_all(&chunk).await.is_err() {
                        // tar stopped reading (it failed): drop the rest, keep reading.
                        stdin = None;
                    }
                }
            }
            Some(BodyChunk::End) => break true,
            None => break false,
        }
    };
    drop(stdin);
    if !complete {
        kill_group();
        let _ = child.wait().await;
        return Reply::error(
            400,
            "the upload was cut short; what was extracted before stays",
        );
    }
    if let Some(refused) = refusal {
        let _ = child.wait().await;
        tracing::warn!(root = %root.display(), entry = %refused.entry, reason = %refused.reason, "upload refused");
        return Reply::error(400, format!("upload refused: {refused}"));
    }
    let status = child.wait().await;
    let files = match listing {
        Some(task) => task.await.unwrap_or_default(),
        None => 0,
    };
    let messages = match messages {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let code = match &status {
        Ok(s) => s.code().unwrap_or(128),
        Err(_) => -1,
    };
    if code != 0 || request.argv.is_empty() {
        let body = ran(code, &argv.join(" "), &messages);
        return Reply::ok(sent(body, &root_text, files, bytes));
    }
    let mut command = sudo;
    command.extend(request.argv.iter().cloned());
    let finished = process::run_in(&command, None, request.follow, events, &root).await;
    let body = ran(finished.code, &command.join(" "), &finished.output);
    Reply::ok(sent(body, &root_text, files, bytes))
}
