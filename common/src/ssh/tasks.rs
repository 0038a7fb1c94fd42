//! Background tasks on SSH hosts: `run --background` starts the command detached,
//! and the `tasks` order lists, waits for and cancels them, with the agents' reply
//! shapes ([`crate::order::tasks`]), so the client does not care which transport.
//!
//! ```text
//! ~/.deploy/tasks/<id>/      id: 32 hex digits, made here
//!   command  started (unix ms)  pid (the task's session and process group)
//!   out      its output (stdout and stderr)
//!   exit     its exit code, renamed into place when it ends
//!   cancelled  left by cancel
//! start   setsid sh -c 'echo $$ >pid; sh -c "$1" >out 2>&1 </dev/null; echo $? >exit'
//! list    one line a task: id state pid started code base64(command)
//! wait    a `while` with `sleep 0.2` inside one SSH session until `exit`, the
//!         cancel mark or the process group's end, at most SECS (the host does
//!         the polling; no SSH round trip per check)
//! cancel  the mark, SIGTERM to the group, SIGKILL a second later to what is left
//! ```
//!
//! The command goes to its shell as an argument (`"$1"`), never spliced into the
//! wrapper; the id is checked to be 32 hex digits before it becomes a path.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use base64::Engine as _;
use russh::ChannelMsg;

use super::lines::{quote, shell};
use super::{Shared, SshError};
use crate::order::tasks::{self, Action, State};
use crate::order::{Reply, Request};
use crate::target::Target;

/// Where tasks live on an SSH host, under the remote home.
pub const TASKS_DIR: &str = ".deploy/tasks";

/// The most of a task's output `wait` returns (its tail).
const TAIL: usize = 64 << 10;

/// The most of a `tasks` script's output read.
const MAX_OUTPUT: usize = 4 << 20;

/// A script that starts `command` (for `sh -c`) as task `id` and prints its pid.
pub fn start_script(id: &str, command: &str) -> String {
    let wrapper = "d=$1; echo $$ >\"$d/pid.tmp\" && mv -f \"$d/pid.tmp\" \"$d/pid\"; \
                   sh -c \"$2\" >\"$d/out\" 2>&1 </dev/null; c=$?; \
                   echo $c >\"$d/exit.tmp\" && mv -f \"$d/exit.tmp\" \"$d/exit\"";
    format!(
        "d=\"$HOME/{TASKS_DIR}/{id}\"; mkdir -p -- \"$d\" || exit 70\n\
         printf '%s' {cmd} >\"$d/command\"; echo $(($(date +%s) * 1000)) >\"$d/started\"\n\
         setsid sh -c {wrapper} sh \"$d\" {cmd} >/dev/null 2>&1 </dev/null &\n\
         echo $!\n",
        cmd = quote(command),
        wrapper = quote(wrapper),
    )
}

/// Shell functions: `state DIR` prints `running|done|cancelled CODE`.
const STATE_FN: &str = "state() { \
    if [ -f \"$1/cancelled\" ]; then echo \"cancelled $(cat \"$1/exit\" 2>/dev/null)\"; \
    elif [ -f \"$1/exit\" ]; then echo \"done $(cat \"$1/exit\")\"; \
    elif p=$(cat \"$1/pid\" 2>/dev/null) && [ -n \"$p\" ] && kill -s 0 -- \"-$p\" 2>/dev/null; then echo running; \
    elif [ ! -f \"$1/pid\" ] && [ $(( $(date +%s) * 1000 - $(cat \"$1/started\" 2>/dev/null || echo 0) )) -lt 5000 ]; then echo running; \
    else echo done; fi; }\n";

fn script(action: &Action) -> String {
    let mut s = String::from(STATE_FN);
    match action {
        Action::List => s.push_str(&format!(
            "cd \"$HOME/{TASKS_DIR}\" 2>/dev/null || exit 0\n\
             for t in *; do [ -d \"$t\" ] || continue; set -- $(state \"$t\"); \
             printf '%s %s %s %s %s %s\\n' \"$t\" \"$1\" \"$(cat \"$t/pid\" 2>/dev/null || echo 0)\" \
             \"$(cat \"$t/started\" 2>/dev/null || echo 0)\" \"${{2:--}}\" \"$(base64 <\"$t/command\" | tr -d '\\n')\"; done\n"
        )),
        Action::Wait(id, secs) => s.push_str(&format!(
            "d=\"$HOME/{TASKS_DIR}/{id}\"; [ -d \"$d\" ] || exit 44\n\
             end=$(( $(date +%s) + {secs} ))\n\
             while [ \"$(state \"$d\")\" = running ] && [ \"$(date +%s)\" -lt \"$end\" ]; do sleep 0.2 2>/dev/null || sleep 1; done\n\
             state \"$d\"; tail -c {TAIL} \"$d/out\" 2>/dev/null | base64 | tr -d '\\n'; echo\n"
        )),
        Action::Cancel(id) => s.push_str(&format!(
            "d=\"$HOME/{TASKS_DIR}/{id}\"; [ -d \"$d\" ] || exit 44\n\
             st=$(state \"$d\"); if [ \"$st\" != running ]; then echo \"$st\"; tail -c {TAIL} \"$d/out\" 2>/dev/null | base64 | tr -d '\\n'; echo; exit 0; fi\n\
             : >\"$d/cancelled\"; p=$(cat \"$d/pid\" 2>/dev/null)\n\
             if [ -n \"$p\" ]; then kill -s TERM -- \"-$p\" 2>/dev/null; i=0; \
             while kill -s 0 -- \"-$p\" 2>/dev/null && [ $i -lt 10 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); done; \
             kill -s KILL -- \"-$p\" 2>/dev/null; fi\n\
             echo \"signalled ${{p:-}}\"\n"
        )),
    }
    s
}

/// The id, state word and code of one `list` line, as an agent's entry.
fn entry(line: &str) -> Option<(u64, serde_json::Value)> {
    let w: Vec<&str> = line.split(' ').collect();
    let [id, state, pid, started, code, command] = w.as_slice() else {
        return None;
    };
    if !tasks::valid_id(id) {
        return None;
    }
    let started: u64 = started.parse().unwrap_or(0);
    let code = if *code == "-" { "" } else { code };
    Some((
        started,
        serde_json::json!({
            "id": id, "state": state, "pid": pid, "command": command,
            "started": started.to_string(), "code": code,
        }),
    ))
}

/// `state [code]` and the base64 tail, as `wait` prints them.
fn ended(id: &str, text: &str) -> Reply {
    let mut lines = text.lines();
    let mut head = lines.next().unwrap_or_default().split(' ');
    let state = match head.next() {
        Some("running") => State::Running,
        Some("cancelled") => State::Cancelled,
        _ => State::Done,
    };
    let code = head.next().and_then(|c| c.trim().parse::<i32>().ok());
    let tail = base64::engine::general_purpose::STANDARD
        .decode(lines.next().unwrap_or_default().trim())
        .unwrap_or_default();
    Reply::ok(tasks::waited(id, state, code, &tail))
}

impl Shared {
    /// The `tasks` order on `target`.
    pub(super) async fn deliver_tasks(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
    ) -> Result<Reply, SshError> {
        let action = match tasks::parse(&request.options) {
            Ok(a) => a,
            Err(text) => return Ok(Reply::error(400, text)),
        };
        let session = self.connect(target).await?;
        let channel = session.channel().await?;
        let (mut reader, writer) = channel.split();
        writer
            .exec(false, shell(&script(&action), request.sudo))
            .await?;
        let (mut out, mut code) = (Vec::new(), None);
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    let room = MAX_OUTPUT.saturating_sub(out.len());
                    out.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
                }
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&out);
        Ok(match (code, &action) {
            (Some(44), Action::Wait(id, _) | Action::Cancel(id)) => {
                Reply::error(404, tasks::not_found(id))
            }
            (Some(0), Action::List) => {
                let mut entries: Vec<(u64, serde_json::Value)> =
                    text.lines().filter_map(entry).collect();
                entries.sort_by_key(|e| std::cmp::Reverse(e.0));
                Reply::ok(tasks::listed(entries.into_iter().map(|(_, e)| e).collect()))
            }
            (Some(0), Action::Wait(id, _)) => ended(id, &text),
            (Some(0), Action::Cancel(id)) => match text.strip_prefix("signalled ") {
                Some(pid) => {
                    let pids: Vec<u32> = pid.trim().parse().into_iter().collect();
                    Reply::ok(tasks::cancelled(id, &pids))
                }
                // It had ended: as an agent, the task's end with "return" false.
                None => {
                    let mut reply = ended(id, &text);
                    if let crate::order::Body::Json(body) = &mut reply.body {
                        body.insert("return".into(), serde_json::Value::String("false".into()));
                    }
                    reply
                }
            },
            (code, _) => Reply::error(
                500,
                format!(
                    "tasks: the host's script failed (exit {}): {}",
                    code.map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
                    text.trim()
                ),
            ),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse_as_sh() {
        let id = "0123456789abcdef0123456789abcdef";
        for s in [
            start_script(id, "echo 'hi' $(x) \"y\""),
            script(&Action::List),
            script(&Action::Wait(id.into(), 3)),
            script(&Action::Cancel(id.into())),
        ] {
            let ok = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .status()
                .unwrap();
            assert!(ok.success(), "{s}");
        }
    }

    #[test]
    fn list_lines_become_entries() {
        let id = "0123456789abcdef0123456789abcdef";
        let (t, e) = entry(&format!("{id} done 42 1700000000000 3 ZWNobw==")).unwrap();
        assert_eq!(t, 1_700_000_000_000);
        assert_eq!(e["code"], "3");
        assert_eq!(e["state"], "done");
        assert!(entry("../etc done 1 1 1 x").is_none());
        assert!(entry("short").is_none());
    }
}
