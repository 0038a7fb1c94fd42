//! `upload`: a tar stream, sent as the request's body, extracted under a directory that
//! `[allow::paths]` allows, then optionally a command run there. Only where the agent's
//! configuration says `allow_upload = on` (and, for the command, `allow_run = on`).
//!
//! ```text
//! checks (403/400) ─► mkdir -p ROOT ─► tar -x -v -p -f - -C ROOT --numeric-owner [--no-same-owner]
//!   ─► ask the client for the body ─► each piece into tar's stdin ─► end: close stdin
//!   tar exits 0 and a command was given ─► the command (argv, no shell) in ROOT
//! ```
//!
//! GNU tar strips leading `/` from member names, refuses members with `..`, and delays
//! symbolic links that could redirect later members, so the archive stays under ROOT.
//! A body that is cut short (the client went away) kills tar: a partial archive is
//! never taken for a whole one. If tar fails mid-way, the rest of the body is read and
//! dropped, so the client gets tar's reply rather than a broken connection.

use super::{process, Agent};
use deploy_common::order::run::ran;
use deploy_common::order::upload::sent;
use deploy_common::order::{Reply, Request};
use deploy_common::server::conn::{BodyChunk, Events};
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let mut argv: Vec<String> = Vec::new();
    if request.sudo {
        argv.extend(["sudo", "-n", "--"].map(String::from));
    }
    argv.extend(["tar", "-x", "-v", "-p", "-f", "-", "-C"].map(String::from));
    argv.push(root.to_string_lossy().into_owned());
    argv.push("--numeric-owner".to_owned());
    if spec.no_owner {
        argv.push("--no-same-owner".to_owned());
    }
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
    // tar's listing (one name per entry) and its messages, read as they come.
    let listing = child.stdout.take().map(|mut out| {
        tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = out.read_to_end(&mut text).await;
            String::from_utf8_lossy(&text)
                .lines()
                .filter(|name| !name.ends_with('/'))
                .count()
        })
    });
    let messages = child.stderr.take().map(|err| {
        tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = err.take(MAX_MESSAGES as u64).read_to_end(&mut text).await;
            text
        })
    });
    let mut stdin = child.stdin.take();
    let mut bytes = 0u64;
    let complete = loop {
        match body.recv().await {
            Some(BodyChunk::Data(chunk)) => {
                bytes += chunk.len() as u64;
                if let Some(pipe) = &mut stdin {
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
        let _ = child.kill().await;
        return Reply::error(
            400,
            "the upload was cut short; nothing is to be trusted of it",
        );
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
    let finished = process::run_in(&request.argv, None, request.follow, events, &root).await;
    let body = ran(finished.code, &request.argv.join(" "), &finished.output);
    Reply::ok(sent(body, &root_text, files, bytes))
}
