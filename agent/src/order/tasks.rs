//! Background tasks (`exec`/`run` with `background`, and the `tasks` order; shapes in
//! `deploy_common::order::tasks`).
//!
//! A task is a run of the state directory's `tasks/` (made by the first task;
//! [`deploy_common::rsync::state`]):
//! `tasks/<id>/` holds `lock`, `meta.json`, `pid`, `output` and `exit`, written by the
//! same runner as background transfers (the agent's `__rsync-runner`, in a session of
//! its own, holding the task's lock while the command runs). So a task outlives the
//! prefork worker that started it (the master kills a dead worker's session, not the
//! runner's), any worker answers `list`/`wait`/`cancel` from the files, and a pid is
//! trusted only while its process leads its own session and holds the lock (no pid
//! reuse). `wait` sleeps on the task directory (inotify) and the runner's pidfd;
//! `cancel` sends SIGTERM to the task's processes and process groups, SIGKILL after
//! [`process::KILL_GRACE`] to what is left, and leaves a `cancelled` mark. A task's
//! directory is removed a week after it finished (when a later task starts).

use super::{process, Agent};
use deploy_common::order::tasks::{self, Action, State};
use deploy_common::order::{Reply, Request};
use deploy_common::rsync::state::StateDir;
use deploy_common::rsync::wake::Wake;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::time::Duration;

/// The mark `cancel` leaves in a task's directory.
const CANCELLED: &str = "cancelled";

/// How long a finished task's directory (its output, its exit code) is kept: removed
/// when a new task starts after that.
const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Starts `argv` as a background task; answers with its id at once.
pub(super) fn start(agent: &Agent, order: &str, argv: &[String], command: &str) -> Reply {
    let Some((program, rest)) = argv.split_first() else {
        return Reply::error(400, format!("{order}: empty command"));
    };
    let Some(id) = tasks::new_id() else {
        return Reply::error(500, "tasks: no random source for a task id");
    };
    let dir = match StateDir::new(&agent.tasks_dir) {
        Ok(dir) => dir,
        Err(e) => return Reply::error(500, format!("{order}: background tasks: {e}")),
    };
    prune(&dir);
    let args: Vec<OsString> = rest.iter().map(OsString::from).collect();
    let meta = json!({
        "order": order,
        "command": command,
        "argv": argv,
        "started": deploy_common::order::at::now_ms(),
    });
    match dir.start_command(&id, program.as_ref(), &args, &agent.runner, &meta) {
        Ok(pid) => {
            tracing::info!(task = %id, pid, order, command = %command, "background task started");
            Reply::ok(tasks::started(&id, pid, command))
        }
        Err(e) => Reply::error(500, format!("{order}: cannot start a background task: {e}")),
    }
}

/// Removes the tasks that finished over [`KEEP_FINISHED`] ago.
fn prune(tasks_dir: &StateDir) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for id in tasks_dir.ids() {
        if tasks_dir.runner_pid(&id).is_some() {
            continue;
        }
        let Some(last) = tasks_dir.last(&id) else {
            continue;
        };
        if now.saturating_sub(last.finished) > KEEP_FINISHED.as_secs() {
            if let Some(dir) = tasks_dir.dir_of(&id) {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(task = %id, cause = %e, "cannot remove an old task");
                }
            }
        }
    }
}

/// The `tasks` order.
pub(super) async fn run(agent: &Agent, request: &Request) -> Reply {
    let action = match tasks::parse(&request.options) {
        Err(text) => return Reply::error(400, text),
        Ok(action) => action,
    };
    // No directory yet: no task ever started here.
    let dir = if agent.tasks_dir.exists() {
        match StateDir::new(&agent.tasks_dir) {
            Ok(dir) => Some(dir),
            Err(e) => return Reply::error(500, format!("tasks: {e}")),
        }
    } else {
        None
    };
    match (action, dir) {
        (Action::List, None) => Reply::ok(tasks::listed(Vec::new())),
        (Action::Wait(id, _) | Action::Cancel(id), None) => {
            Reply::error(404, tasks::not_found(&id))
        }
        (Action::List, Some(dir)) => list(&dir),
        (Action::Wait(id, secs), Some(dir)) => wait(&dir, &id, Duration::from_secs(secs)).await,
        (Action::Cancel(id), Some(dir)) => cancel(&dir, &id),
    }
}

fn exists(tasks_dir: &StateDir, id: &str) -> bool {
    tasks_dir.meta(id).is_some()
}

fn cancelled(tasks_dir: &StateDir, id: &str) -> bool {
    tasks_dir
        .dir_of(id)
        .is_some_and(|dir| dir.join(CANCELLED).exists())
}

/// How a finished task ended: its state and code (128 + signal if a signal ended it;
/// none if its runner died without recording it), and its output's tail.
fn ended(tasks_dir: &StateDir, id: &str) -> (State, Option<i32>, Vec<u8>) {
    let state = if cancelled(tasks_dir, id) {
        State::Cancelled
    } else {
        State::Done
    };
    match tasks_dir.last(id) {
        Some(last) => (
            state,
            last.code.or(last.signal.map(|s| 128 + s)),
            last.output_tail,
        ),
        None => (state, None, Vec::new()),
    }
}

fn list(tasks_dir: &StateDir) -> Reply {
    let mut entries: Vec<(i64, Value)> = tasks_dir
        .ids()
        .into_iter()
        .filter_map(|id| {
            let meta = tasks_dir.meta(&id)?;
            let started = meta.get("started").and_then(Value::as_i64).unwrap_or(0);
            let pid = tasks_dir.runner_pid(&id);
            let (state, code) = if pid.is_some() {
                (State::Running, None)
            } else {
                let (state, code, _) = ended(tasks_dir, &id);
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

async fn wait(tasks_dir: &StateDir, id: &str, limit: Duration) -> Reply {
    if !exists(tasks_dir, id) {
        return Reply::error(404, tasks::not_found(id));
    }
    let Some(dir) = tasks_dir.dir_of(id) else {
        return Reply::error(404, tasks::not_found(id));
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut wake = Wake::new(&dir, tasks_dir.runner_pid(id));
    loop {
        if tasks_dir.runner_pid(id).is_none() {
            let (state, code, tail) = ended(tasks_dir, id);
            return Reply::ok(tasks::waited(id, state, code, &tail));
        }
        if tokio::time::timeout_at(deadline, wake.wait())
            .await
            .is_err()
        {
            let tail = tasks_dir
                .last(id)
                .map(|l| l.output_tail)
                .unwrap_or_default();
            return Reply::ok(tasks::waited(id, State::Running, None, &tail));
        }
    }
}

fn cancel(tasks_dir: &StateDir, id: &str) -> Reply {
    if !exists(tasks_dir, id) {
        return Reply::error(404, tasks::not_found(id));
    }
    if tasks_dir.runner_pid(id).is_none() {
        let (state, code, tail) = ended(tasks_dir, id);
        let mut body = tasks::waited(id, state, code, &tail);
        body.insert("return".into(), Value::String("false".into()));
        return Reply::ok(body);
    }
    if let Some(dir) = tasks_dir.dir_of(id) {
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
    let stopping = tasks_dir.terminate(id);
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
