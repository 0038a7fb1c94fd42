//! Running rsync in the foreground: `status` and `rlist` dry-runs.
//!
//! The original ran `rsync … 2>&1` in backticks. Here rsync gets one pipe as both stdout
//! and stderr, so its messages arrive interleaved exactly as a terminal would show them,
//! without a shell. rsync runs in its own process group: it forks helpers (the receiver
//! and generator, an `--rsh` program), and on timeout or cancellation the whole group is
//! killed, not only the process we started.
//!
//! [`progress_supported`] asks a binary its version once (per binary and process), so
//! that background transfers ask for `--info=progress2` only from an rsync that has it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::Receiver;

use super::{argv, RsyncError, RsyncSpec};

/// What a finished rsync left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// rsync's exit code; `None` if a signal ended it.
    pub status_code: Option<i32>,
    /// stdout and stderr, interleaved in arrival order.
    pub output: Vec<u8>,
}

impl RunOutput {
    /// Whether rsync exited with code 0.
    pub fn success(&self) -> bool {
        self.status_code == Some(0)
    }
}

/// Kills a process group when dropped, unless disarmed; covers both the timeout and the
/// caller dropping the future (order cancelled). The group leader is not reaped while
/// the guard is armed, so its id cannot have been reused.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (already gone) is fine.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `spec`'s rsync (with `--dry-run` if asked) and collect its combined output.
///
/// stdin is `/dev/null`. If rsync has not exited and closed its output after `timeout`,
/// its process group is killed and [`RsyncError::Timeout`] returned with the output so
/// far. Dropping the future kills the group too. A non-zero exit is not an error: see
/// [`RunOutput::status_code`] and [`super::exit_meaning`].
pub async fn run_foreground(
    spec: &RsyncSpec,
    dry_run: bool,
    timeout: Duration,
) -> Result<RunOutput, RsyncError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| RsyncError::io("create the output pipe", e.into()))?;
    let write_err: OwnedFd = write
        .try_clone()
        .map_err(|e| RsyncError::io("duplicate the output pipe", e))?;
    let mut reader =
        Receiver::from_owned_fd(read).map_err(|e| RsyncError::io("register the output pipe", e))?;

    let mut command = tokio::process::Command::new(&spec.rsync);
    command
        .args(argv(spec, dry_run))
        // Which bytes of a name rsync escapes depends on the locale (see `output`).
        .env("LC_ALL", super::LOCALE)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write_err))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = command.spawn();
    // The Command holds our copies of the write end; rsync must be the only writer, or
    // reading never sees end-of-file.
    drop(command);
    let mut child = spawned.map_err(|source| RsyncError::Spawn {
        binary: spec.rsync.clone(),
        source,
    })?;
    let mut guard = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );

    let mut output = Vec::new();
    let work = async {
        let read = reader.read_to_end(&mut output);
        let (read, status) = tokio::join!(read, child.wait());
        (read, status)
    };
    let result = tokio::time::timeout(timeout, work).await;
    match result {
        Ok((read, status)) => {
            let status = status.map_err(|e| RsyncError::io("wait for rsync", e))?;
            // rsync is reaped; its group id may be reused from now on.
            guard.0 = None;
            read.map_err(|e| RsyncError::io("read rsync's output", e))?;
            Ok(RunOutput {
                status_code: status.code(),
                output,
            })
        }
        Err(_) => {
            guard.kill();
            // Reap rsync; the group is dead, so this does not block for long.
            let _ = child.wait().await;
            Err(RsyncError::Timeout {
                after: timeout,
                output,
            })
        }
    }
}

/// How long `rsync --version` may take in [`progress_supported`].
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `rsync` understands `--info=progress2` (rsync 3.1 and later), from the first
/// line of `rsync --version`; remembered per binary for the life of the process. A
/// binary that cannot be run, or prints no version, is taken as not supporting it.
pub async fn progress_supported(rsync: &Path) -> bool {
    static KNOWN: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Mutex::default);
    let cached = known.lock().ok().and_then(|k| k.get(rsync).copied());
    if let Some(answer) = cached {
        return answer;
    }
    let probe = tokio::process::Command::new(rsync)
        .arg("--version")
        .env("LC_ALL", super::LOCALE)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let answer = match tokio::time::timeout(VERSION_TIMEOUT, probe).await {
        Ok(Ok(out)) => has_info_option(&String::from_utf8_lossy(&out.stdout)),
        _ => false,
    };
    if let Ok(mut known) = known.lock() {
        known.insert(rsync.to_owned(), answer);
    }
    answer
}

/// Whether the version in `rsync  version 3.2.7  protocol version 32` is 3.1 or later.
fn has_info_option(version_text: &str) -> bool {
    let Some(first) = version_text.lines().next() else {
        return false;
    };
    let mut words = first.split_whitespace();
    let (Some("rsync"), Some("version"), Some(version)) =
        (words.next(), words.next(), words.next())
    else {
        return false;
    };
    let mut parts = version.trim_start_matches('v').split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .unwrap_or(0)
    });
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (3, 1)
}

#[cfg(test)]
mod tests {
    use super::has_info_option;

    #[test]
    fn versions_with_info_progress2() {
        assert!(has_info_option(
            "rsync  version 3.2.7  protocol version 32\nCopyright"
        ));
        assert!(has_info_option(
            "rsync  version v3.4.1  protocol version 32"
        ));
        assert!(has_info_option(
            "rsync  version 3.1.0pre1  protocol version 31"
        ));
        assert!(!has_info_option(
            "rsync  version 3.0.9  protocol version 30"
        ));
        assert!(!has_info_option(
            "rsync  version 2.6.9  protocol version 29"
        ));
        assert!(!has_info_option(""));
        assert!(!has_info_option("openrsync: protocol version 29"));
    }
}
