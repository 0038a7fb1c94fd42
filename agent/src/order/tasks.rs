//! Background tasks (`exec`/`run` with `background`, and the `tasks` order; shapes in
//! `deploy_common::order::tasks`).
//!
//! A task is a run of the state directory's `tasks/` ([`deploy_common::rsync::state`]):
//! `tasks/<id>/` holds `lock`, `meta.json`, `pid`, `output` and `exit`, written by the
//! same runner as background transfers (the agent's `__rsync-runner`, in a session of
//! its own, holding the task's lock while the command runs). So a task outlives the
//! prefork worker that started it (the master kills a dead worker's session, not the
//! runner's), any worker answers `list`/`wait`/`cancel` from the files, and a pid is
//! trusted only while its process leads its own session and holds the lock (no pid
//! reuse). `wait` sleeps on the task directory (inotify) and the runner's pidfd;
//! `cancel` sends SIGTERM to the task's processes and process groups, SIGKILL after
//! [`process::KILL_GRACE`] to what is left, and leaves a `cancelled` mark.

use super::{process, Agent};
use deploy_common::order::tasks::{self, Action, State};
use deploy_common::order::{Reply, Request};
use deploy_common::rsync::wake::Wake;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::time::Duration;

/// The mark `cancel` leaves in a task's directory.
const CANCELLED: &str = "cancelled";

/// Starts `argv` as a background task; answers with its id at once.
pub(super) fn start(agent: &Agent, order: &str, argv: &[String], command: &str) -> Reply {
    let Some((program, rest)) = argv.split_first() else {
        return Reply::error(400, format!("{order}: empty command"));
    };
    let Some(id) = tasks::new_id() else {
        return Reply::error(500, "tasks: no random source for a task id");
    };
    let args: Vec<OsString> = rest.iter().map(OsString::from).collect();
    let meta = json!({
        "order": order,
        "command": command,
        "argv": argv,
        "started": deploy_common::order::at::now_ms(),
    });
    match agent
        .tasks
        .start_command(&id, program.as_ref(), &args, &agent.runner, &meta)
    {
        Ok(pid) => {
            tracing::info!(task = %id, pid, order, command = %command, "background task started");
            Reply::ok(tasks::started(&id, pid, command))
        }
        Err(e) => Reply::error(500, format!("{order}: cannot start a background task: {e}")),
    }
}

/// The `tasks` order.
pub(super) async fn run(agent: &Agent, request: &Request) -> Reply {
    match tasks::parse(&request.options) {
        Err(text) => Reply::error(400, text),
        Ok(Action::List) => list(agent),
        Ok(Action::Wait(id, secs)) => wait(agent, &id, Duration::from_secs(secs)).await,
        Ok(Action::Cancel(id)) => cancel(agent, &id),
    }
}

fn exists(agent: &Agent, id: &str) -> bool {
    agent.tasks.meta(id).is_some()
}

fn cancelled(agent: &Agent, id: &str) -> bool {
    agent
        .tasks
        .dir_of(id)
        .is_some_and(|dir| dir.join(CANCELLED).exists())
}

/// How a finished task ended: its state and code (128 + signal if a signal ended it;
/// none if its runner died without recording it), and its output's tail.
fn ended(agent: &Agent, id: &str) -> (State, Option<i32>, Vec<u8>) {
    let state = if cancelled(agent, id) {
        State::Cancelled
    } else {
        State::Done
    };
    match agent.tasks.last(id) {
        Some(last) => (
            state,
            last.code.or(last.signal.map(|s| 128 + s)),
            last.output_tail,
        ),
        None => (state, None, Vec::new()),
    }
}

fn list(agent: &Agent) -> Reply {
    let mut entries: Vec<(i64, Value)> = agent
        .tasks
        .ids()
        .into_iter()
        .filter_map(|id| {
            let meta = agent.tasks.meta(&id)?;
            let started = meta.get("started").and_then(Value::as_i64).unwrap_or(0);
            let pid = agent.tasks.runner_pid(&id);
            let (state, code) = if pid.is_some() {
                (State::Running, None)
            } else {
                let (state, code, _) = ended(agent, &id);
                (state, code)
            };
            let entry = json!({
                "id": id,
                "state": state.as_str(),
                "pid": pid.map(|p| p.to_string()).unwrap_or_default(),
                "command": meta.get("command").cloned().unwrap_or(Value::Null),
                "started": started.to_string(),
                "code": code.map(|c| c.to_string()).unwrap_or_default(),
            });
            Some((started, entry))
        })
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    Reply::ok(tasks::listed(entries.into_iter().map(|(_, e)| e).collect()))
}

async fn wait(agent: &Agent, id: &str, limit: Duration) -> Reply {
    if !exists(agent, id) {
        return Reply::error(404, tasks::not_found(id));
    }
    let Some(dir) = agent.tasks.dir_of(id) else {
        return Reply::error(404, tasks::not_found(id));
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut wake = Wake::new(&dir, agent.tasks.runner_pid(id));
    loop {
        if agent.tasks.runner_pid(id).is_none() {
            let (state, code, tail) = ended(agent, id);
            return Reply::ok(tasks::waited(id, state, code, &tail));
        }
        if tokio::time::timeout_at(deadline, wake.wait())
            .await
            .is_err()
        {
            let tail = agent
                .tasks
                .last(id)
                .map(|l| l.output_tail)
                .unwrap_or_default();
            return Reply::ok(tasks::waited(id, State::Running, None, &tail));
        }
    }
}

fn cancel(agent: &Agent, id: &str) -> Reply {
    if !exists(agent, id) {
        return Reply::error(404, tasks::not_found(id));
    }
    if agent.tasks.runner_pid(id).is_none() {
        let (state, code, tail) = ended(agent, id);
        let mut body = tasks::waited(id, state, code, &tail);
        body.insert("return".into(), Value::String("false".into()));
        return Reply::ok(body);
    }
    if let Some(dir) = agent.tasks.dir_of(id) {
        use std::os::unix::fs::OpenOptionsExt;
        let mark = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(CANCELLED));
        if let Err(e) = mark {
            tracing::warn!(task = %id, cause = %e, "cannot mark the task cancelled");
        }
    }
    let stopping = agent.tasks.terminate(id);
    let pids = stopping.pids().to_vec();
    tracing::info!(task = %id, pids = ?pids, "background task cancelled (SIGTERM, then SIGKILL)");
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + process::KILL_GRACE;
        while stopping.any_left() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stopping.kill_left();
    });
    Reply::ok(tasks::cancelled(id, &pids))
}
