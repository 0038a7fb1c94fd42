//! Background tasks: `exec`/`run` with `"background":true` start the command detached and
//! answer at once with a task id; the `tasks` order lists them, waits for one, cancels one.
//!
//! ```text
//! start    {"order":"run","argv":["sleep","60"],"background":true}
//!          → {"return":"true","task":"<32 hex>","pid":"<runner pid>","command":"<base64>"}
//! list     {"order":"tasks","options":"list"}
//!          → {"return":"true","tasks":"<JSON list, newest first: {id,state,pid,command,
//!             started,code}>"}
//! wait     {"order":"tasks","options":"wait,<id>[,<secs>]"}   (default DEFAULT_WAIT_SECS)
//!          → {"return":"true"|"false","task":…,"state":"done"|"running"|"cancelled",
//!             "code":"<exit code; 128 + signal>"|"","content":"<base64 of the output's tail>"}
//! cancel   {"order":"tasks","options":"cancel,<id>"}
//!          → {"return":"true","task":…,"state":"cancelled","pids":"<JSON list signalled>"}
//! unknown id: 404 "task <id> not found"
//! ```
//!
//! `wait` answers `"return":"false"` with state `running` when the task is still running
//! after `secs` (so a caller's deadline never cuts it), and `"return"` is `"true"` iff
//! the task ended with code 0. An id is 32 lowercase hex digits ([`valid_id`]); nothing
//! else ever becomes part of a path.

use super::{flag, object, strings};
use base64::Engine;
use serde_json::{Map, Value};

/// How long `wait` blocks when the request names no time: under deploy-client's default
/// deadline (30 s), so that a slow task answers "running" rather than time out.
pub const DEFAULT_WAIT_SECS: u64 = 25;

/// The longest `wait` blocks, whatever the request says.
pub const MAX_WAIT_SECS: u64 = 24 * 3600;

/// What a `tasks` order asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Every task the agent knows, newest first.
    List,
    /// Wait for a task to end, at most this many seconds.
    Wait(String, u64),
    /// Stop a task's processes.
    Cancel(String),
}

/// Parses `options` (`list`, `wait,ID[,SECS]`, `cancel,ID`); the 400 text otherwise.
pub fn parse(options: &str) -> Result<Action, String> {
    let parts: Vec<&str> = options.split([',', '|']).map(str::trim).collect();
    let id = |id: &str| {
        if valid_id(id) {
            Ok(id.to_owned())
        } else {
            Err(format!("tasks: {id:?} is not a task id (32 hex digits)"))
        }
    };
    match parts.as_slice() {
        ["list"] | [""] => Ok(Action::List),
        ["wait", task] => Ok(Action::Wait(id(task)?, DEFAULT_WAIT_SECS)),
        ["wait", task, secs] => {
            let secs: u64 = secs
                .parse()
                .map_err(|_| format!("tasks: wait seconds {secs:?} is not a number"))?;
            Ok(Action::Wait(id(task)?, secs.min(MAX_WAIT_SECS)))
        }
        ["cancel", task] => Ok(Action::Cancel(id(task)?)),
        _ => Err(format!(
            "tasks: options {options:?}: expected list, wait,ID[,SECS] or cancel,ID"
        )),
    }
}

/// Whether `id` looks like a task id: 32 lowercase hex digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh task id (16 random bytes, hex); `None` without a random source.
pub fn new_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A task was started.
pub fn started(task: &str, pid: u32, command: &str) -> Map<String, Value> {
    object([
        ("return", flag(true)),
        ("task", Value::String(task.to_owned())),
        ("pid", Value::String(pid.to_string())),
        (
            "command",
            Value::String(base64::engine::general_purpose::STANDARD.encode(command)),
        ),
    ])
}

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its runner holds the task's lock.
    Running,
    /// It ended by itself.
    Done,
    /// It was cancelled.
    Cancelled,
}

impl State {
    /// Its name in replies.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Done => "done",
            State::Cancelled => "cancelled",
        }
    }
}

/// `wait`'s answer: `code` is `None` while running.
pub fn waited(task: &str, state: State, code: Option<i32>, tail: &[u8]) -> Map<String, Value> {
    object([
        ("return", flag(code == Some(0))),
        ("task", Value::String(task.to_owned())),
        ("state", Value::String(state.as_str().to_owned())),
        (
            "code",
            Value::String(code.map(|c| c.to_string()).unwrap_or_default()),
        ),
        (
            "content",
            Value::String(base64::engine::general_purpose::STANDARD.encode(tail)),
        ),
    ])
}

/// `cancel`'s answer.
pub fn cancelled(task: &str, pids: &[u32]) -> Map<String, Value> {
    object([
        ("return", flag(true)),
        ("task", Value::String(task.to_owned())),
        ("state", Value::String(State::Cancelled.as_str().to_owned())),
        ("pids", Value::String(strings(pids).to_string())),
    ])
}

/// `list`'s answer; `tasks` are the entries, newest first.
pub fn listed(tasks: Vec<Value>) -> Map<String, Value> {
    object([
        ("return", flag(true)),
        ("tasks", Value::String(Value::Array(tasks).to_string())),
    ])
}

/// The 404 text for an unknown task.
pub fn not_found(task: &str) -> String {
    format!("task {task} not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(parse("list"), Ok(Action::List));
        assert_eq!(
            parse(&format!("wait,{id}")),
            Ok(Action::Wait(id.into(), DEFAULT_WAIT_SECS))
        );
        assert_eq!(
            parse(&format!("wait,{id},3")),
            Ok(Action::Wait(id.into(), 3))
        );
        assert_eq!(
            parse(&format!("cancel,{id}")),
            Ok(Action::Cancel(id.into()))
        );
        assert!(parse("cancel,../../etc").is_err());
        assert!(parse("wait").is_err());
        assert!(parse("stop,x").is_err());
        assert_eq!(waited(id, State::Done, Some(0), b"")["return"], "true");
        assert_eq!(waited(id, State::Running, None, b"")["code"], "");
    }
}
