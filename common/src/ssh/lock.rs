//! The cluster lock on SSH hosts: a remote `flock(1)` held by a session of ours, the
//! same `lock`/`unlock` replies as an agent's (see [`crate::order::lock`]), so that
//! [`crate::lock::cluster::ClusterLock`] drives both transports alike.
//!
//! ```text
//! lock (no session yet)   new connection, session channel:
//!   sh -c 'l=FILE; h=HOLDER; open FILE on fd 9, FILE.meta on fd 8; flock -x 8;
//!          flock -n -x 9 && { write HOLDER into FILE.holder; unlock 8; echo acquired; exec cat; }
//!          r=$(first line of FILE.holder); unlock 8; echo "locked $r"'
//!   "acquired"        ─► 200 grant (kept: connection + channel, by host and lock name)
//!   "locked bob@b:7"  ─► 423 held by bob@b:7
//!   "error …"/EOF     ─► 500 with the reason (no flock, unwritable file…)
//! lock (same token: the heartbeat)
//!   write "PING\n" into `cat`, read "PING" back ─► 200 renewed
//!   anything else (the holder was killed, the connection dropped) ─► 410 Gone
//! unlock                  EOF to `cat` ─► it exits ─► the kernel drops the flock ─► 200
//! ```
//!
//! # Design
//!
//! The lock lives exactly as long as the session: if this process dies, `cat` reads EOF
//! and exits, and the kernel releases the lock, so there are no stale locks and no lease
//! to run out on the host. The lease of the request only sets the heartbeat's period
//! (a third of it). The lock file is opened for appending (never truncated; a symbolic
//! link is refused) and locked on its own descriptor, which `cat` inherits; the holder's
//! label goes beside it, to `<file>.holder`, which a refused locker reads and reports.
//! Its path is a template ([`SshOptions::lock_file`](super::SshOptions::lock_file)): `%n` the lock's
//! name, `%h`/`%p` the host and port as written, so hosts that share a file system can
//! each have their own file. The script runs under `sh -c` whatever the remote user's
//! shell (under `sudo -n` if the request says `sudo`).
//!
//! The session's connection is served by the runtime that made it: deploy-client runs
//! worker threads under a lock, so that its blocked standard output cannot stall it.
//! The lock has a connection of its own, not shared with the order it guards: a run
//! whose output nobody reads stalls its whole connection (a channel that is not read
//! blocks the connection's task), which must not stall the heartbeat. (Sharing one was
//! tried; `ssh_lock_heartbeat_survives_a_blocked_stdout` then loses the lock.)

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

use super::lines::{quote, LineSplitter};
use super::session::Session;
use super::{Shared, SshError};
use crate::order::lock::{self as wire, Grant, HeldBy, LockName, Token};
use crate::order::{Reply, Request};
use crate::target::{expand, Target};

/// The lock file when none is configured.
pub const DEFAULT_LOCK_FILE: &str = "/tmp/deploy-%n.lock";

/// The most bytes of a refusal's or failure's output kept for the message.
const MAX_MESSAGE: usize = 1024;

/// Locks held by this process, by host and lock name.
#[derive(Default)]
pub(super) struct Locks {
    held: tokio::sync::Mutex<HashMap<(String, String), Entry>>,
}

/// A held lock, locked while a heartbeat or release uses its channel.
type Entry = Arc<tokio::sync::Mutex<HeldLock>>;

/// One host's lock: the connection and the channel whose `cat` holds the descriptor.
struct HeldLock {
    token: Token,
    holder: String,
    reader: ChannelReadHalf,
    writer: ChannelWriteHalf<Msg>,
    /// Kept open as long as the lock is held.
    _session: Session,
}

/// What the lock script's first line said.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Acquired,
    Locked(String),
    Error(String),
}

impl Answer {
    fn parse(line: &str) -> Option<Answer> {
        match line.split_once(' ').unwrap_or((line, "")) {
            ("acquired", "") => Some(Answer::Acquired),
            ("locked", holder) => Some(Answer::Locked(holder.trim().to_owned())),
            ("error", why) => Some(Answer::Error(why.to_owned())),
            _ => None,
        }
    }
}

/// The remote lock file for `name` on `target`, from the template.
pub fn lock_path(template: &str, name: &str, target: &Target) -> String {
    expand(template, target, &[('n', name)])
}

/// The remote script: prints `acquired` then echoes its input while holding the lock,
/// or prints `locked <holder>` or `error <why>`. The lock file is opened for appending
/// (never truncated: it may be any file, as with orgalorg) and must not be a symbolic
/// link; the holder's label goes to `<file>.holder`, written to a fresh temporary file
/// and renamed over it, so that no planted link is followed.
///
/// The label is written and read under a second lock, on `<file>.meta` (held for
/// milliseconds, never by `cat`): taking the lock and writing the label are one step
/// for the others, and a refused locker reads the label of the holder that refused it,
/// never the previous (dead) holder's record that the new holder was about to replace.
fn script(path: &str, holder: &str) -> String {
    format!(
        "l={path}; h={holder}; m=\"$l.meta\"; \
         command -v flock >/dev/null 2>&1 || {{ echo 'error flock(1) is not installed'; exit 0; }}; \
         [ -L \"$l\" ] && {{ echo \"error $l is a symbolic link\"; exit 0; }}; \
         [ -L \"$m\" ] && {{ echo \"error $m is a symbolic link\"; exit 0; }}; \
         ( : >>\"$l\" ) 2>/dev/null || {{ echo \"error cannot open $l for writing\"; exit 0; }}; \
         ( : >>\"$m\" ) 2>/dev/null || {{ echo \"error cannot open $m for writing\"; exit 0; }}; \
         exec 9>>\"$l\" 8>>\"$m\"; \
         flock -w 10 -x 8 || {{ echo \"error cannot lock $m\"; exit 0; }}; \
         if flock -n -x 9; then \
           t=$(mktemp \"$l.holder.XXXXXX\" 2>/dev/null) && printf '%s\\n' \"$h\" >\"$t\" && mv -f \"$t\" \"$l.holder\"; \
           exec 8>&-; echo acquired; exec cat; \
         fi; \
         r=$(head -n 1 \"$l.holder\" 2>/dev/null); exec 8>&-; \
         printf 'locked %s\\n' \"$r\"",
        path = quote(path),
        holder = quote(holder),
    )
}

/// Now, Unix time in seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Shared {
    /// Serves `lock` and `unlock` for `target`; an error only if the host could not be
    /// connected to (every answer of the host is a reply).
    pub(super) async fn deliver_lock(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
    ) -> Result<Reply, SshError> {
        let name = match LockName::parse(&request.options) {
            Ok(name) => name,
            Err(e) => return Ok(Reply::error(400, e.to_string())),
        };
        let key = (target.to_string(), name.as_str().to_owned());
        if request.order == "unlock" {
            return Ok(self.unlock(key, request).await);
        }
        let lease = match wire::lease(request.lease) {
            Ok(lease) => lease,
            Err(e) => return Ok(Reply::error(400, e.to_string())),
        };
        if let Err(e) = wire::check_holder(&request.holder) {
            return Ok(Reply::error(400, e.to_string()));
        }
        let token = match Token::parse(&request.token) {
            Ok(token) => token,
            Err(_) if request.token.is_empty() => match Token::generate() {
                Ok(token) => token,
                Err(e) => return Ok(Reply::error(500, e.to_string())),
            },
            Err(e) => return Ok(Reply::error(400, e.to_string())),
        };
        let existing = self.locks.held.lock().await.get(&key).cloned();
        let grant = |renewed: bool, holder: &str| Grant {
            lock: name.as_str().to_owned(),
            holder: holder.to_owned(),
            token: token.as_str().to_owned(),
            lease,
            expires: unix_now().saturating_add(lease),
            renewed,
        };
        if let Some(entry) = existing {
            let mut held = entry.lock().await;
            if !held.token.matches(token.as_str()) {
                return Ok(HeldBy {
                    lock: name.as_str().to_owned(),
                    holder: held.holder.clone(),
                    expires: 0,
                }
                .into_reply());
            }
            return Ok(match ping(&mut held).await {
                Ok(()) => Reply::ok(grant(true, &held.holder.clone()).to_body()),
                Err(why) => {
                    drop(held);
                    self.locks.held.lock().await.remove(&key);
                    Reply::error(
                        410,
                        format!("the session holding lock {name} on {target} ended: {why}"),
                    )
                }
            });
        }
        let path = lock_path(&self.options.lock_file, name.as_str(), target);
        Ok(
            match self
                .acquire(target, &path, &request.holder, request.sudo)
                .await
            {
                Ok(Acquired::Held {
                    reader,
                    writer,
                    session,
                }) => {
                    let held = HeldLock {
                        token: token.clone(),
                        holder: request.holder.clone(),
                        reader,
                        writer,
                        _session: session,
                    };
                    let mut locks = self.locks.held.lock().await;
                    locks.insert(key, Arc::new(tokio::sync::Mutex::new(held)));
                    Reply::ok(grant(false, &request.holder).to_body())
                }
                Ok(Acquired::Refused(holder)) => HeldBy {
                    lock: name.as_str().to_owned(),
                    holder: if holder.is_empty() {
                        format!("an unnamed holder of {path}")
                    } else {
                        holder
                    },
                    expires: 0,
                }
                .into_reply(),
                Ok(Acquired::Error(why)) => {
                    Reply::error(500, format!("lock {name} ({path}): {why}"))
                }
                // Not reached, or refused at the SSH level: the transport's usual outcome
                // (unreachable hosts can then be told apart, e.g. by --skip-unreachable).
                Err(e) => return Err(e),
            },
        )
    }

    /// Connects and runs the lock script.
    async fn acquire(
        self: &Arc<Self>,
        target: &Target,
        path: &str,
        holder: &str,
        sudo: bool,
    ) -> Result<Acquired, SshError> {
        let session = self.connect(target).await?;
        let script = script(path, holder);
        let command = super::lines::shell(&script, sudo);
        let channel = session.channel().await?;
        let (mut reader, writer) = channel.split();
        writer.exec(false, command).await?;
        let mut out = LineSplitter::default();
        let mut err: Vec<u8> = Vec::new();
        let mut code = None;
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    if let Some(line) = out.push(&data).into_iter().next() {
                        return Ok(match Answer::parse(&line) {
                            Some(Answer::Acquired) => Acquired::Held {
                                reader,
                                writer,
                                session,
                            },
                            Some(Answer::Locked(holder)) => Acquired::Refused(holder),
                            Some(Answer::Error(why)) => Acquired::Error(why),
                            None => Acquired::Error(format!("unexpected answer {line:?}")),
                        });
                    }
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    let room = MAX_MESSAGE.saturating_sub(err.len());
                    err.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
                }
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                ChannelMsg::Close | ChannelMsg::Eof => break,
                _ => {}
            }
        }
        let stderr = String::from_utf8_lossy(&err).trim().to_owned();
        Ok(Acquired::Error(match (code, stderr.is_empty()) {
            (_, false) => stderr,
            (Some(code), true) => format!("the lock command exited with {code} and said nothing"),
            (None, true) => "the lock command ended without an answer".to_owned(),
        }))
    }

    async fn unlock(&self, key: (String, String), request: &Request) -> Reply {
        // The map is locked only to look up and remove, never while a host is awaited:
        // one stuck host must not hold up the others' heartbeats.
        let Some(entry) = self.locks.held.lock().await.get(&key).cloned() else {
            return Reply::ok(wire::released(&key.1, false));
        };
        {
            let held = entry.lock().await;
            if !held.token.matches(&request.token) {
                return Reply::error(
                    403,
                    HeldBy {
                        lock: key.1.clone(),
                        holder: held.holder.clone(),
                        expires: 0,
                    }
                    .wrong_token(),
                );
            }
        }
        let entry = {
            let mut locks = self.locks.held.lock().await;
            match locks.get(&key) {
                Some(current) if Arc::ptr_eq(current, &entry) => locks.remove(&key),
                // Released (or lost and retaken) meanwhile.
                _ => None,
            }
        };
        if let Some(entry) = entry {
            let mut held = entry.lock().await;
            // EOF ends `cat`, which releases the lock; wait for it so that the next
            // locker finds it free.
            let _ = held.writer.eof().await;
            let wait = async {
                while let Some(message) = held.reader.wait().await {
                    if matches!(message, ChannelMsg::Close) {
                        break;
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), wait)
                .await
                .is_err()
            {
                tracing::warn!(host = %key.0, lock = %key.1, "lock session did not end in 5 s; closing it");
            }
            let _ = held.writer.close().await;
        }
        Reply::ok(wire::released(&key.1, true))
    }
}

/// What the lock script answered.
enum Acquired {
    Held {
        reader: ChannelReadHalf,
        writer: ChannelWriteHalf<Msg>,
        session: Session,
    },
    Refused(String),
    Error(String),
}

/// The heartbeat: `PING` in, `PING` back from `cat`.
async fn ping(held: &mut HeldLock) -> Result<(), String> {
    held.writer
        .data_bytes(&b"PING\n"[..])
        .await
        .map_err(|e| format!("cannot write to the lock holder: {e}"))?;
    let mut out = LineSplitter::default();
    loop {
        match held.reader.wait().await {
            Some(ChannelMsg::Data { data }) => {
                if let Some(line) = out.push(&data).into_iter().next() {
                    return if line == "PING" {
                        Ok(())
                    } else {
                        Err(format!("the lock holder answered {line:?}"))
                    };
                }
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                return Err(format!("the lock holder exited with {exit_status}"))
            }
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                return Err(format!("the lock holder was killed (SIG{signal_name:?})"))
            }
            // After EOF, an exit status or signal usually follows: it says more.
            Some(ChannelMsg::Eof) => {}
            Some(ChannelMsg::Close) | None => {
                return Err("the lock holder's session closed".to_owned())
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn paths_expand_per_host() {
        let t = Target::parse("ssh://root@web1:2222", 1).unwrap();
        assert_eq!(
            lock_path("/run/x/%n-%h-%p.lock", "deploy", &t),
            "/run/x/deploy-web1-2222.lock"
        );
        let t = Target::parse("ssh://web1", 1).unwrap();
        assert_eq!(
            lock_path(DEFAULT_LOCK_FILE, "db", &t),
            "/tmp/deploy-db.lock"
        );
        assert_eq!(lock_path("%%%q%", "n", &t), "%%q%");
        assert_eq!(lock_path("a%p", "n", &t), "a22");
    }

    #[test]
    fn answers() {
        assert_eq!(Answer::parse("acquired"), Some(Answer::Acquired));
        assert_eq!(
            Answer::parse("locked bob@b:7"),
            Some(Answer::Locked("bob@b:7".into()))
        );
        assert_eq!(
            Answer::parse("locked "),
            Some(Answer::Locked(String::new()))
        );
        assert_eq!(
            Answer::parse("error no flock"),
            Some(Answer::Error("no flock".into()))
        );
        assert_eq!(Answer::parse("acquired x"), None);
        assert_eq!(Answer::parse("\"locked"), None);
    }

    #[test]
    fn the_script_runs_in_a_posix_shell() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("it's.lock");
        let script = script(&file.to_string_lossy(), "me@h:1 'q'");
        let run = || {
            std::process::Command::new("sh")
                .args(["-c", &script])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        };
        if std::process::Command::new("flock")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipped: no flock(1)");
            return;
        }
        // Stdin is /dev/null: acquired, then `cat` ends at once.
        let out = run();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "acquired\n");
        let sidecar = dir.path().join("it's.lock.holder");
        assert_eq!(std::fs::read_to_string(&sidecar).unwrap(), "me@h:1 'q'\n");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "",
            "never truncated or written"
        );
        // An existing file keeps its contents.
        std::fs::write(&file, "precious\n").unwrap();
        assert_eq!(String::from_utf8_lossy(&run().stdout), "acquired\n");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
        // Held elsewhere: refused, naming the holder written beside the file.
        let holder = std::fs::File::open(&file).unwrap();
        nix::fcntl::Flock::lock(holder, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map(|held| {
                let out = run();
                assert_eq!(String::from_utf8_lossy(&out.stdout), "locked me@h:1 'q'\n");
                drop(held);
            })
            .unwrap();
        // A symbolic link is refused, and what it points to is left alone.
        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &super::script(&link.to_string_lossy(), "x")])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.starts_with("error ") && said.contains("symbolic link"),
            "{said}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    }
}
