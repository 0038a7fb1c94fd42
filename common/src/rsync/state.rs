//! Background transfers (the `rsync` order) that outlive the worker that started them.
//!
//! # What the original did, and why not
//!
//! It ran `sh -c "rsync … --include=<checksum> … &> /tmp/<checksum> &"`, found the transfer
//! later by scanning every process's command line for the checksum, and decided success
//! from the first 512 bytes of `/tmp/<checksum>` one second later. That allowed two
//! concurrent starts (check and start were not atomic), counted any process that merely
//! mentioned the checksum, wrote a predictable, world-writable file in `/tmp` as root, and
//! never recorded the exit status (spec §4.6, §4.7, §15 items 8, 9 and 15).
//!
//! # Design
//!
//! Every transfer has a private directory `<root>/<checksum>/` (mode 0700, checksum = hex
//! MD5 of `dest` and `src`, see [`super::checksum`]):
//!
//! | file | written by | content |
//! |---|---|---|
//! | `lock` | [`StateDir::start`] | empty; `flock`ed exclusively while a transfer runs |
//! | `meta.json` | [`StateDir::start`] | `{"dest","src","rsync","argv","started"}` |
//! | `pid` | start and runner | the runner's pid |
//! | `output` | rsync (via the runner's stdout/stderr) | combined output, mode 0600 |
//! | `exit` | the runner | `{"code": N\|null, "signal": S\|null, "finished": unix_time}` |
//!
//! **Why `flock`.** Taking `LOCK_EX|LOCK_NB` on `lock` *is* the "already running?" check
//! and the start in one atomic step, so two concurrent `rsync` orders cannot both start.
//! The kernel drops the lock when the last descriptor of that open file goes away, so a
//! crashed runner never leaves a stale "running" state behind, unlike a pid file.
//!
//! **Why a runner process.** The lock must be held exactly as long as the transfer runs,
//! by a process that is not the (short-lived, recyclable) agent worker, and someone must
//! wait for rsync to record its exit status. The starter spawns the runner (in practice
//! the agent binary's hidden `__rsync-runner` subcommand, calling [`runner_main`]) in a new
//! session, handing it the locked descriptor; the runner starts rsync in its own process
//! group, waits, and writes `exit`. rsync does not inherit the lock: an `--rsh` program
//! that lingers (ssh `ControlPersist`) must not keep the transfer "running".
//!
//! Processes are found through the session: the runner is a session leader (`setsid`),
//! so the transfer's processes are exactly those whose session id is the runner's pid —
//! no command-line matching.
//!
//! **Reaping.** [`StateDir::start`] hands the runner's `Child` to a small detached thread
//! that waits for it, so the caller has nothing to reap and no zombie remains while the
//! worker lives; if the worker exits first, init (or a subreaper) adopts the runner.
//! Callers must not set `SIGCHLD` to `SIG_IGN` expecting to reap themselves (harmless,
//! but then the thread's wait just fails).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::output::{last_progress, Progress};
use super::{argv, checksum, RsyncError, RsyncSpec};

/// How long `rkill` lets a transfer's processes clean up after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// A transfer's processes after SIGTERM ([`StateDir::terminate`]). They are followed
/// by pid *and* session (the runner's), so a pid reused meanwhile is never signalled,
/// and they are followed even after the runner has exited and released the lock.
#[derive(Debug, Default)]
pub struct Stopping {
    session: u32,
    pids: Vec<u32>,
    groups: BTreeSet<u32>,
}

impl Stopping {
    /// The pids that got SIGTERM, sorted.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// The pids still running (not zombies) in the transfer's session.
    pub fn left(&self) -> Vec<u32> {
        self.pids
            .iter()
            .copied()
            .filter(|&pid| runs_in_session(pid, self.session))
            .collect()
    }

    /// Whether any of them still runs.
    pub fn any_left(&self) -> bool {
        !self.left().is_empty()
    }

    /// SIGKILL what is left (and the process groups it is in); returns those pids.
    ///
    /// Only a group one of those processes is still in is signalled: a group recorded at
    /// SIGTERM time may have emptied during the grace and its id been taken by an
    /// unrelated group (another daemon's worker leads one), while a live member keeps
    /// the id from being reused. Each pid is signalled through a pidfd opened before its
    /// session is checked again, so a pid reused meanwhile is not hit either.
    pub fn kill_left(&self) -> Vec<u32> {
        let left = self.left();
        let held: BTreeSet<u32> = left
            .iter()
            .filter_map(|&pid| proc_stat(pid))
            .filter(|stat| stat.session == self.session && self.groups.contains(&stat.pgrp))
            .map(|stat| stat.pgrp)
            .collect();
        for pgrp in held {
            if let Ok(pgrp) = i32::try_from(pgrp) {
                let _ = killpg(Pid::from_raw(pgrp), Signal::SIGKILL);
            }
        }
        for &pid in &left {
            kill_in_session(pid, self.session, Signal::SIGKILL);
        }
        left
    }
}

/// Sends `signal` to `pid` if it still runs in session `session`, through a pidfd
/// opened before that check (plain kill(2) where pidfds are missing).
fn kill_in_session(pid: u32, session: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    let Ok(fd) = i32::try_from(fd) else {
        return;
    };
    if fd < 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
            && runs_in_session(pid, session)
        {
            let _ = kill(Pid::from_raw(raw), signal);
        }
        return;
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    if runs_in_session(pid, session) {
        // SAFETY: pidfd_send_signal(2) on our pidfd; a null info means "as kill(2)".
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

/// Whether `pid` exists, is not a zombie, and belongs to session `session`.
fn runs_in_session(pid: u32, session: u32) -> bool {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let mut fields = text
        .get(text.rfind(')').map_or(0, |i| i + 1)..)
        .unwrap_or_default()
        .split_whitespace();
    let state = fields.next();
    let session_field = fields.nth(2).and_then(|s| s.parse::<u32>().ok());
    state != Some("Z") && session_field == Some(session)
}

/// `PATH` of a command started with a cleared environment ([`StateDir::start_command`]).
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const LOCK: &str = "lock";
const META: &str = "meta.json";
const PID: &str = "pid";
const OUTPUT: &str = "output";
const EXIT: &str = "exit";

/// How much of the output [`StateDir::last`] returns: the last 64 KiB.
pub const TAIL_BYTES: u64 = 64 * 1024;

/// How much of the output's end [`StateDir::progress`] reads: rsync prints an update
/// at least at the end of every file, so the last one is never far from the end.
const PROGRESS_TAIL: u64 = 16 * 1024;

/// The most of `meta.json` read (its argv is the group's options: small).
const META_LIMIT: u64 = 1 << 20;

/// The runner's exit code (and the `code` in `exit`) when it cannot start rsync, like a
/// shell's "command not found".
pub const RUNNER_FAILED: i32 = 127;

/// How often [`StateDir::start`] retries a lock that is busy although no runner is
/// alive (see [`StateDir::start`]), 5 ms apart.
const LOCK_ATTEMPTS: u32 = 20;

/// How to execute the runner: `program args_prefix… <dir> <lock fd> -- <rsync> <argv…>`.
///
/// The agent passes its own executable and a hidden subcommand (e.g. `__rsync-runner`)
/// whose handler calls [`runner_main`] with the arguments after the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments placed before the runner's own.
    pub args_prefix: Vec<OsString>,
}

/// What [`StateDir::start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// A runner was started; this is its pid (and the transfer's session id).
    Started {
        /// The runner's process id.
        pid: u32,
    },
    /// A transfer with the same checksum holds the lock.
    AlreadyRunning {
        /// Its processes (see [`StateDir::running`]); may be empty just after its start.
        pids: Vec<u32>,
    },
}

/// How the last finished transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    /// rsync's exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended rsync, if any.
    pub signal: Option<i32>,
    /// When the runner saw it end (Unix time, seconds).
    pub finished: u64,
    /// The last [`TAIL_BYTES`] of its output (empty after [`StateDir::kill`]).
    pub output_tail: Vec<u8>,
}

/// The directory holding the state of background transfers, one subdirectory each.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    stall: Option<Duration>,
}

impl StateDir {
    /// Use `root`, creating it (mode 0700) if missing. It must be a directory owned by
    /// the effective user and not writable by group or others.
    pub fn new(root: impl Into<PathBuf>) -> Result<StateDir, RsyncError> {
        let root = root.into();
        let root = std::path::absolute(&root)
            .map_err(|e| RsyncError::io(format!("resolve {}", root.display()), e))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| RsyncError::io(format!("create {}", root.display()), e))?;
        check_private_dir(&root)?;
        Ok(StateDir { root, stall: None })
    }

    /// Stop a transfer started by [`StateDir::start`] that moves less than
    /// [`STALL_BYTES`] in `stall` (the runner's `--stall`, see [`runner_main`]); `None`:
    /// never (the default). Commands ([`StateDir::start_command`]) are never stopped.
    pub fn with_stall_timeout(mut self, stall: Option<Duration>) -> StateDir {
        self.stall = stall.filter(|d| !d.is_zero());
        self
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of transfer `checksum`, if `checksum` looks like one (32 lowercase
    /// hex digits); nothing else ever becomes part of a path.
    fn transfer_dir(&self, checksum: &str) -> Option<PathBuf> {
        let valid = checksum.len() == 32
            && checksum
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| self.root.join(checksum))
    }

    /// Start `spec` in the background unless a transfer with its checksum is running.
    ///
    /// Atomically takes the transfer's lock, truncates `output`, removes a previous
    /// `exit`, writes `meta.json`, and spawns `runner` in a new session with the locked
    /// descriptor, its stdout and stderr going to `output`. Does not wait for rsync.
    ///
    /// A lock that is busy while no runner is alive is retried for up to 100 ms before
    /// answering [`StartOutcome::AlreadyRunning`] (see `LOCK_ATTEMPTS`). That happens
    /// when a child forked by another thread still holds a copy of a starter's descriptor
    /// between its fork and its exec: the descriptor is close-on-exec in this process, but
    /// a fork copies it anyway.
    pub fn start(
        &self,
        spec: &RsyncSpec,
        runner: &RunnerCommand,
    ) -> Result<StartOutcome, RsyncError> {
        let sum = checksum(spec);
        let dir = self.root.join(&sum);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(RsyncError::io(format!("create {}", dir.display()), e)),
        }
        check_private_dir(&dir)?;

        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .and_then(above_stdio)
            .map_err(|e| RsyncError::io(format!("open {}", lock_path.display()), e))?;
        let mut attempt = 0;
        loop {
            let locked = try_flock(&lock, libc::LOCK_EX)
                .map_err(|e| RsyncError::io(format!("lock {}", lock_path.display()), e))?;
            if locked {
                break;
            }
            if live_runner(&dir).is_some() {
                return Ok(StartOutcome::AlreadyRunning {
                    pids: self.running(&sum).unwrap_or_default(),
                });
            }
            // Busy without a live runner: a `running` probe, a concurrent `start` between
            // its lock and its spawn, or a copy of the descriptor in a child another
            // thread forked (it goes away when that child calls exec). All are brief.
            attempt += 1;
            if attempt >= LOCK_ATTEMPTS {
                return Ok(StartOutcome::AlreadyRunning {
                    pids: self.running(&sum).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }

        let args = argv(spec, false);
        let meta = serde_json::json!({
            "dest": spec.dest,
            "src": spec.src,
            "rsync": spec.rsync.to_string_lossy(),
            "argv": args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
            "started": unix_now(),
        });
        // The same output encoding as foreground runs (see `output`).
        let env = [("LC_ALL", super::LOCALE)];
        let stall: Vec<OsString> = self
            .stall
            .map(|d| format!("{STALL_FLAG}{}", d.as_secs().max(1)).into())
            .into_iter()
            .collect();
        let pid = launch(
            &dir,
            lock,
            runner,
            &stall,
            spec.rsync.as_os_str(),
            &args,
            &env,
            false,
            &meta,
        )?;
        Ok(StartOutcome::Started { pid })
    }

    /// Start `program args…` in the background as run `id` (a new 32-hex id: a task;
    /// see `order::tasks`), through `runner` like a transfer, with a minimal
    /// environment (`PATH`, `LANG`) and `meta` as its `meta.json`. Returns the runner's
    /// pid. An `id` already used is refused.
    pub fn start_command(
        &self,
        id: &str,
        program: &OsStr,
        args: &[OsString],
        runner: &RunnerCommand,
        meta: &serde_json::Value,
    ) -> Result<u32, RsyncError> {
        let Some(dir) = self.transfer_dir(id) else {
            return Err(RsyncError::io(
                format!("run id {id:?}"),
                io::Error::new(io::ErrorKind::InvalidInput, "not 32 hex digits"),
            ));
        };
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| RsyncError::io(format!("create {}", dir.display()), e))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .and_then(above_stdio)
            .map_err(|e| RsyncError::io(format!("open {}", lock_path.display()), e))?;
        if !try_flock(&lock, libc::LOCK_EX)
            .map_err(|e| RsyncError::io(format!("lock {}", lock_path.display()), e))?
        {
            return Err(RsyncError::io(
                format!("lock {}", lock_path.display()),
                io::Error::new(io::ErrorKind::WouldBlock, "held by another process"),
            ));
        }
        launch(&dir, lock, runner, &[], program, args, &[], true, meta)
    }

    /// The ids of the runs under this directory (transfers' checksums, or task ids).
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| self.transfer_dir(name).is_some())
            .collect()
    }

    /// Run `id`'s `meta.json`, if it has one.
    pub fn meta(&self, id: &str) -> Option<serde_json::Value> {
        let dir = self.transfer_dir(id)?;
        let mut text = Vec::new();
        open_read(&dir.join(META))
            .ok()?
            .read_to_end(&mut text)
            .ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Run `id`'s runner pid while it runs (its session leader, so not a reused pid).
    pub fn runner_pid(&self, id: &str) -> Option<u32> {
        let dir = self.transfer_dir(id)?;
        lock_held(&dir).then(|| live_runner(&dir)).flatten()
    }

    /// Run `id`'s directory (for a [`super::wake::Wake`]), if `id` is well formed.
    pub fn dir_of(&self, id: &str) -> Option<PathBuf> {
        self.transfer_dir(id)
    }

    /// Whether transfer `checksum` is running, and if so its processes.
    ///
    /// `None` if its lock is free (or `checksum` is not a checksum). Otherwise the sorted
    /// pids of every process in the runner's session except the runner itself: rsync,
    /// the processes it forked and an `--rsh` program. Empty while the runner is
    /// starting, and on systems without `/proc`.
    pub fn running(&self, checksum: &str) -> Option<Vec<u32>> {
        let dir = self.transfer_dir(checksum)?;
        if !lock_held(&dir) {
            return None;
        }
        let mut pids: Vec<u32> = session_members(&dir).iter().map(|m| m.pid).collect();
        pids.sort_unstable();
        Some(pids)
    }

    /// The runner of transfer `checksum`, if it is alive (a follower waits on it).
    pub fn runner(&self, checksum: &str) -> Option<u32> {
        live_runner(&self.transfer_dir(checksum)?)
    }

    /// When transfer `checksum` (the running one, or the last) was started, Unix
    /// seconds, from its `meta.json`.
    pub fn started(&self, checksum: &str) -> Option<u64> {
        let dir = self.transfer_dir(checksum)?;
        let mut text = Vec::new();
        open_read(&dir.join(META))
            .ok()?
            .take(META_LIMIT)
            .read_to_end(&mut text)
            .ok()?;
        let meta: serde_json::Value = serde_json::from_slice(&text).ok()?;
        meta.get("started")?.as_u64()
    }

    /// The last `--info=progress2` update in transfer `checksum`'s output, if rsync has
    /// printed one (see [`super::output::last_progress`]).
    pub fn progress(&self, checksum: &str) -> Option<Progress> {
        let dir = self.transfer_dir(checksum)?;
        last_progress(&read_tail(&dir.join(OUTPUT), PROGRESS_TAIL))
    }

    /// Transfer `checksum`'s output file, for a follower to read.
    pub fn output_path(&self, checksum: &str) -> Option<PathBuf> {
        Some(self.transfer_dir(checksum)?.join(OUTPUT))
    }

    /// Stop transfer `checksum`: SIGTERM its processes (see [`StateDir::running`]) and
    /// their process groups, sparing the runner so that it records how rsync ended; if
    /// any is left after [`KILL_GRACE`], SIGKILL. rsync removes its temporary files on
    /// SIGTERM, which SIGKILL would leave behind. Removes `output` whether or not
    /// anything ran, as the original's `rkill` removed `/tmp/<checksum>`; `meta.json` and
    /// `exit` stay. Returns the pids signalled, sorted. Blocks for up to the grace; an
    /// async caller uses [`StateDir::terminate`] and [`Stopping`] instead.
    pub fn kill(&self, checksum: &str) -> Vec<u32> {
        let stopping = self.terminate(checksum);
        let deadline = std::time::Instant::now() + KILL_GRACE;
        while stopping.any_left() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stopping.kill_left();
        self.remove_output(checksum);
        stopping.pids().to_vec()
    }

    /// Sends SIGTERM to transfer `checksum`'s processes and their process groups,
    /// sparing the runner; the returned [`Stopping`] tells whether any is left and
    /// kills what is.
    pub fn terminate(&self, checksum: &str) -> Stopping {
        let mut stopping = Stopping::default();
        let Some(dir) = self.transfer_dir(checksum) else {
            return stopping;
        };
        if !lock_held(&dir) {
            return stopping;
        }
        let runner = read_pid(&dir);
        for member in session_members(&dir) {
            stopping.session = member.session;
            let Ok(pid) = i32::try_from(member.pid) else {
                continue;
            };
            if kill(Pid::from_raw(pid), Signal::SIGTERM).is_ok() {
                stopping.pids.push(member.pid);
            }
            if Some(member.pgrp) != runner {
                stopping.groups.insert(member.pgrp);
            }
        }
        // Also catches a process forked between the scan and the kills.
        for &pgrp in &stopping.groups {
            if let Ok(pgrp) = i32::try_from(pgrp) {
                let _ = killpg(Pid::from_raw(pgrp), Signal::SIGTERM);
            }
        }
        stopping.pids.sort_unstable();
        stopping
    }

    /// Removes transfer `checksum`'s `output` (see [`StateDir::kill`]).
    pub fn remove_output(&self, checksum: &str) {
        let Some(dir) = self.transfer_dir(checksum) else {
            return;
        };
        if let Err(e) = remove_if_exists(&dir.join(OUTPUT)) {
            tracing::warn!(cause = %e, checksum, "cannot remove rsync output");
        }
    }

    /// How the last finished run of `checksum` ended; `None` while running, if it never
    /// finished, or if `checksum` is not a checksum.
    pub fn last(&self, checksum: &str) -> Option<LastRun> {
        let dir = self.transfer_dir(checksum)?;
        let mut text = Vec::new();
        open_read(&dir.join(EXIT))
            .ok()?
            .read_to_end(&mut text)
            .ok()?;
        let exit: serde_json::Value = serde_json::from_slice(&text).ok()?;
        let int = |key: &str| {
            exit.get(key)
                .and_then(serde_json::Value::as_i64)
                .and_then(|v| i32::try_from(v).ok())
        };
        Some(LastRun {
            code: int("code"),
            signal: int("signal"),
            finished: exit
                .get("finished")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            output_tail: read_tail(&dir.join(OUTPUT), TAIL_BYTES),
        })
    }

    /// The first `n` bytes of transfer `checksum`'s output (fewer if there are fewer;
    /// empty if there is none).
    pub fn output_head(&self, checksum: &str, n: usize) -> Vec<u8> {
        let mut head = Vec::new();
        if let Some(dir) = self.transfer_dir(checksum) {
            if let Ok(file) = open_read(&dir.join(OUTPUT)) {
                let limit = u64::try_from(n).unwrap_or(u64::MAX);
                let _ = file.take(limit).read_to_end(&mut head);
            }
        }
        head
    }
}

/// Starts `runner` on `program args…` for the run directory `dir`, whose `lock` the
/// caller holds: the previous run's files removed, `output` truncated, `meta.json`
/// written, the runner spawned in a new session with the locked descriptor, its stdout
/// and stderr going to `output`, with `env` added (over an empty environment, but for
/// `PATH` and `LANG`, if `clear_env`). Returns the runner's pid; our copy of the lock
/// is closed without unlocking (the runner's copy keeps it).
#[allow(clippy::too_many_arguments)]
fn launch(
    dir: &Path,
    lock: File,
    runner: &RunnerCommand,
    runner_flags: &[OsString],
    program: &OsStr,
    args: &[OsString],
    env: &[(&str, &str)],
    clear_env: bool,
    meta: &serde_json::Value,
) -> Result<u32, RsyncError> {
    // We hold the lock: the previous run's files are ours to replace.
    remove_if_exists(&dir.join(EXIT))?;
    remove_if_exists(&dir.join(PID))?;
    let output_path = dir.join(OUTPUT);
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&output_path)
        .map_err(|e| RsyncError::io(format!("open {}", output_path.display()), e))?;
    let output_err = output
        .try_clone()
        .map_err(|e| RsyncError::io("duplicate the output descriptor", e))?;
    write_atomic(dir, META, meta.to_string().as_bytes())?;

    let lock_fd = lock.as_raw_fd();
    let mut command = Command::new(&runner.program);
    command
        .args(&runner.args_prefix)
        .args(runner_flags)
        .arg(dir)
        .arg(lock_fd.to_string())
        .arg("--")
        .arg(program)
        .args(args);
    if clear_env {
        command
            .env_clear()
            .env("PATH", SAFE_PATH)
            .env("LANG", "C.UTF-8");
    }
    command
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(output_err);
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (setsid, fcntl) on its own copy of `lock_fd`.
    // The descriptor stays close-on-exec in this process, so no other program that
    // we (or another thread) spawn inherits the lock.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = libc::fcntl(lock_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(lock_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| RsyncError::Spawn {
        binary: runner.program.clone(),
        source,
    })?;
    let pid = child.id();
    // The runner writes it too; writing it here closes the window in which
    // `running` would know no pid. Failure is not fatal for the same reason.
    if let Err(e) = write_atomic(dir, PID, format!("{pid}\n").as_bytes()) {
        tracing::warn!(cause = %e, dir = %dir.display(), "cannot record the runner's pid");
    }
    reap_in_background(child);
    // Close our copy without unlocking: the runner's copy keeps the lock.
    drop(lock);
    Ok(pid)
}

/// The directory must be a real directory (not a symlink), owned by us, and not writable
/// by anyone else: its files decide what we kill and what we report.
fn check_private_dir(dir: &Path) -> Result<(), RsyncError> {
    match crate::fsutil::private_dir_problem(dir)
        .map_err(|e| RsyncError::io(format!("inspect {}", dir.display()), e))?
    {
        None => Ok(()),
        Some(problem) => Err(RsyncError::io(
            format!("state directory {}", dir.display()),
            io::Error::new(io::ErrorKind::PermissionDenied, problem),
        )),
    }
}

/// Move `file` to a descriptor above 2 if it landed on 0, 1 or 2 (a daemon that closed its
/// standard streams): the runner's stdin/stdout/stderr replace those, and the lock must
/// survive with its number intact.
fn above_stdio(file: File) -> io::Result<File> {
    if file.as_raw_fd() > 2 {
        return Ok(file);
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor `file` owns; on success the new
    // descriptor is ours alone and is wrapped exactly once.
    unsafe {
        let fd = libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(fd))
    }
}

/// `flock(op | LOCK_NB)`: `Ok(false)` if someone else holds a conflicting lock.
fn try_flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    try_flock_fd(file.as_raw_fd(), op)
}

fn try_flock_fd(fd: RawFd, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock only reads the descriptor number; an invalid one yields EBADF.
        if unsafe { libc::flock(fd, op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Whether a runner holds `dir`'s lock: probe with a shared lock on a fresh open file
/// (released when it is closed on return).
fn lock_held(dir: &Path) -> bool {
    let Ok(lock) = open_read(&dir.join(LOCK)) else {
        return false;
    };
    match try_flock(&lock, libc::LOCK_SH) {
        Ok(got) => !got,
        Err(e) => {
            tracing::warn!(cause = %e, dir = %dir.display(), "cannot probe rsync lock");
            false
        }
    }
}

fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn remove_if_exists(path: &Path) -> Result<(), RsyncError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RsyncError::io(format!("remove {}", path.display()), e)),
    }
}

/// Writes `dir/name` through a temporary file and a rename, so readers never see half.
fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> Result<(), RsyncError> {
    crate::fsutil::write_atomic(dir, name, content)
        .map_err(|e| RsyncError::io(format!("write {}", dir.join(name).display()), e))
}

fn read_tail(path: &Path, n: u64) -> Vec<u8> {
    let mut tail = Vec::new();
    if let Ok(mut file) = open_read(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if file.seek(SeekFrom::Start(len.saturating_sub(n))).is_ok() {
            let _ = file.take(n).read_to_end(&mut tail);
        }
    }
    tail
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_pid(dir: &Path) -> Option<u32> {
    let mut text = String::new();
    open_read(&dir.join(PID))
        .ok()?
        .take(32)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok().filter(|&pid| pid > 1)
}

/// The fields of `/proc/<pid>/stat` we need.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    pid: u32,
    pgrp: u32,
    session: u32,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp session …"; comm may contain anything, even ") ".
    let after_comm = text.get(text.rfind(')')? + 1..)?;
    let mut fields = after_comm.split_whitespace().skip(2);
    Some(ProcStat {
        pid,
        pgrp: fields.next()?.parse().ok()?,
        session: fields.next()?.parse().ok()?,
    })
}

/// The recorded runner's pid, if that process exists and leads its own session (so the
/// pid was not reused by something else).
fn live_runner(dir: &Path) -> Option<u32> {
    let runner = read_pid(dir)?;
    proc_stat(runner)
        .filter(|stat| stat.session == runner)
        .map(|_| runner)
}

/// The processes of the runner's session, the runner excluded. Empty if the recorded
/// runner is gone or is not a session leader (its pid was reused).
fn session_members(dir: &Path) -> Vec<ProcStat> {
    let Some(runner) = live_runner(dir) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != runner)
        .filter_map(proc_stat)
        .filter(|stat| stat.session == runner)
        .collect()
}

fn reap_in_background(mut child: Child) {
    let pid = child.id();
    let spawned = std::thread::Builder::new()
        .name("rsync-runner-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = spawned {
        // The runner stays a zombie until this process exits; nothing else is affected.
        tracing::warn!(cause = %e, pid, "cannot start a thread to reap the rsync runner");
    }
}

// ---------------------------------------------------------------------------------------
// The runner.

/// rsync's pid (= its process group) while it runs (0 again once it has exited, before
/// it is reaped), for the signal handler.
static CHILD_PGID: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived before rsync existed.
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    let pgid = CHILD_PGID.load(Ordering::SeqCst);
    if pgid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(-pgid, signal) };
    } else {
        PENDING_SIGNAL.store(signal, Ordering::SeqCst);
    }
}

/// The runner's flag that asks it to stop a stalled transfer: `--stall=<seconds>`.
const STALL_FLAG: &str = "--stall=";

/// The least a transfer must move (bytes read plus written by its processes) within
/// the stall window to count as alive: a few bytes of rsync keep-alive do not.
pub const STALL_BYTES: u64 = 4096;

/// The exit code recorded for a transfer stopped as stalled: rsync's own "timeout in
/// data send/receive".
pub const STALLED_CODE: i32 = 30;

/// The runner's parsed command line.
struct RunnerArgs<'a> {
    stall: Option<Duration>,
    dir: PathBuf,
    lock_fd: RawFd,
    rsync: &'a OsStr,
    rsync_args: &'a [OsString],
}

fn parse_runner_args(args: &[OsString]) -> Result<RunnerArgs<'_>, String> {
    const USAGE: &str = "usage: [--stall=<seconds>] <state dir> <lock fd> -- <rsync> [args…]";
    let (stall, args) = match args.split_first() {
        Some((first, rest)) if first.as_encoded_bytes().starts_with(STALL_FLAG.as_bytes()) => {
            let seconds = first
                .to_str()
                .and_then(|f| f.strip_prefix(STALL_FLAG))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("bad stall window {first:?}"))?;
            (Some(Duration::from_secs(seconds)), rest)
        }
        _ => (None, args),
    };
    let [dir, fd, separator, rsync, rsync_args @ ..] = args else {
        return Err(USAGE.to_owned());
    };
    if separator != "--" {
        return Err(USAGE.to_owned());
    }
    let lock_fd = fd
        .to_str()
        .and_then(|fd| fd.parse::<RawFd>().ok())
        .filter(|&fd| fd > 2)
        .ok_or_else(|| format!("bad lock descriptor {fd:?}"))?;
    Ok(RunnerArgs {
        stall,
        dir: PathBuf::from(dir),
        lock_fd,
        rsync,
        rsync_args,
    })
}

/// The runner: hold the transfer's lock, run rsync, record how it ended.
///
/// `args` are the arguments after the [`RunnerCommand::args_prefix`]:
///
/// ```text
/// [--stall=<seconds>] <transfer dir> <lock fd> -- <rsync binary> <rsync argv…>
/// ```
///
/// With `--stall`, a watchdog thread sums what rsync's processes read and wrote
/// (`/proc/<pid>/io`: network, disk and pipes) once a second; when that grew by less
/// than [`STALL_BYTES`] over the window it says so on stderr, stops rsync's group
/// (SIGTERM, SIGKILL 5 s later) and the exit is recorded as [`STALLED_CODE`]. rsync's
/// own `--timeout` does not do this: a receiver waiting on a link that was cut (no
/// RST, no FIN) waits for ever, and a hung transfer holds its group's lock.
///
/// It checks that the inherited `lock fd` really holds the transfer's lock (otherwise it
/// touches nothing and fails), marks it close-on-exec so rsync does not inherit it,
/// records its pid, and starts rsync in its own process group with stdin `/dev/null`,
/// sharing the runner's stdout and stderr (the transfer's `output` file). SIGTERM and
/// SIGINT are forwarded to rsync's process group. When rsync ends it writes `exit`
/// atomically and returns rsync's exit code (128 + signal if a signal ended it, or
/// [`RUNNER_FAILED`] if rsync could not be started). Messages of its own go to stderr.
///
/// Plain blocking code, no async runtime: call it straight from `main` and exit with
/// the returned code.
pub fn runner_main(args: &[OsString]) -> i32 {
    let args = match parse_runner_args(args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("deploy rsync runner: {message}");
            return RUNNER_FAILED;
        }
    };
    // We share the open file description holding the lock, so this succeeds iff it does.
    match try_flock_fd(args.lock_fd, libc::LOCK_EX) {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            eprintln!(
                "deploy rsync runner: descriptor {} does not hold the transfer lock",
                args.lock_fd
            );
            return RUNNER_FAILED;
        }
    }
    // SAFETY: fcntl on a descriptor we inherited and verified above.
    unsafe {
        let flags = libc::fcntl(args.lock_fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(args.lock_fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    if let Err(e) = write_atomic(
        &args.dir,
        PID,
        format!("{}\n", std::process::id()).as_bytes(),
    ) {
        eprintln!("deploy rsync runner: {e}");
    }
    install_signal_forwarding();

    let mut child = match Command::new(args.rsync)
        .args(args.rsync_args)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "deploy rsync runner: cannot execute {}: {e}",
                Path::new(args.rsync).display()
            );
            record_exit(&args.dir, Some(RUNNER_FAILED), None);
            return RUNNER_FAILED;
        }
    };
    if let Ok(pid) = i32::try_from(child.id()) {
        CHILD_PGID.store(pid, Ordering::SeqCst);
        let pending = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
        if pending != 0 {
            // SAFETY: plain kill(2) of rsync's new process group.
            unsafe { libc::kill(-pid, pending) };
        }
    }
    if let Some(window) = args.stall {
        std::thread::spawn(move || watch_stall(window));
    }
    // Wait without reaping first: while rsync is a zombie its pid, and so its group's
    // id, cannot be reused; the handler and the watchdog stop signalling before the
    // reap, so a late signal never reaches a group that took the id afterwards.
    wait_exited_unreaped(child.id());
    {
        let _guard = REAP_GUARD.lock().unwrap_or_else(|e| e.into_inner());
        CHILD_PGID.store(0, Ordering::SeqCst);
    }
    let stalled = STALLED.load(Ordering::SeqCst);
    let (code, signal) = match child.wait() {
        Ok(status) => (status.code(), status.signal()),
        Err(e) => {
            eprintln!("deploy rsync runner: cannot wait for rsync: {e}");
            (Some(RUNNER_FAILED), None)
        }
    };
    let (code, signal) = if stalled {
        (Some(STALLED_CODE), None)
    } else {
        (code, signal)
    };
    record_exit(&args.dir, code, signal);
    code.unwrap_or_else(|| 128 + signal.unwrap_or(0))
}

/// Held by the watchdog while it signals rsync's group, and by the runner while it
/// stops signalling before the reap (see [`runner_main`]).
static REAP_GUARD: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Set once the watchdog stopped a stalled transfer.
static STALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The watchdog of [`runner_main`]'s `--stall`: returns when rsync's group is gone.
fn watch_stall(window: Duration) {
    const TICK: Duration = Duration::from_secs(1);
    const GRACE: Duration = Duration::from_secs(5);
    let mut mark: Option<(std::time::Instant, u64)> = None;
    loop {
        std::thread::sleep(TICK);
        let pgid = CHILD_PGID.load(Ordering::SeqCst);
        if pgid <= 0 {
            return;
        }
        let Some(moved) = group_io(pgid.unsigned_abs()) else {
            // Nothing readable (the group just ended, or /proc is hidden): no verdict.
            mark = None;
            continue;
        };
        let now = std::time::Instant::now();
        match mark {
            // A process that left the group takes its counts along: that is not a stall.
            Some((_, at)) if moved >= at && moved - at < STALL_BYTES => {}
            _ => mark = Some((now, moved)),
        }
        let Some((since, _)) = mark else { continue };
        if now.duration_since(since) < window {
            continue;
        }
        eprintln!(
            "deploy rsync runner: no data moved for {} s (transfer_stall_timeout): stopping rsync",
            window.as_secs()
        );
        STALLED.store(true, Ordering::SeqCst);
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            {
                let _guard = REAP_GUARD.lock().unwrap_or_else(|e| e.into_inner());
                let pgid = CHILD_PGID.load(Ordering::SeqCst);
                if pgid <= 0 {
                    return;
                }
                // SAFETY: plain kill(2) of rsync's process group, not yet reaped (the
                // runner clears CHILD_PGID under REAP_GUARD before it reaps).
                unsafe { libc::kill(-pgid, signal) };
            }
            std::thread::sleep(GRACE);
        }
        return;
    }
}

/// Bytes read plus written so far by the processes of group `pgid` (`rchar` + `wchar`
/// of `/proc/<pid>/io`), or `None` if none could be read.
///
/// The group's members are found by walking down from its leader (rsync, our child)
/// through `/proc/<pid>/task/<tid>/children`: a few reads a tick, where scanning all of
/// `/proc` costs a read per process on the host, every second, per transfer. When the
/// walk cannot tell (a kernel without those files, or a leader that already exited and
/// left its children to init) the whole of `/proc` is scanned as before.
fn group_io(pgid: u32) -> Option<u64> {
    let members = group_members(pgid).or_else(|| {
        let entries = fs::read_dir("/proc").ok()?;
        Some(
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .collect(),
        )
    })?;
    let mut total = None;
    for pid in members {
        if proc_stat(pid).is_none_or(|stat| stat.pgrp != pgid) {
            continue;
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/io")) else {
            continue;
        };
        let sum: u64 = text
            .lines()
            .filter_map(|l| {
                let (key, value) = l.split_once(':')?;
                matches!(key, "rchar" | "wchar")
                    .then(|| value.trim().parse::<u64>().ok())
                    .flatten()
            })
            .sum();
        *total.get_or_insert(0) += sum;
    }
    total
}

/// Group `leader`'s live descendants (the leader included), from the `children` files
/// of their threads; `None` when that walk cannot be trusted: no such file (the kernel
/// lacks `CONFIG_PROC_CHILDREN`) or the leader is a zombie (its children were adopted by
/// init and are out of its tree). The most processes walked is bounded.
fn group_members(leader: u32) -> Option<Vec<u32>> {
    const MOST: usize = 4096;
    let state = fs::read_to_string(format!("/proc/{leader}/stat")).ok()?;
    let after_comm = state.get(state.rfind(')')? + 1..)?;
    if matches!(after_comm.split_whitespace().next(), Some("Z" | "X")) {
        return None;
    }
    let mut found = vec![leader];
    let mut next = 0;
    while let Some(&pid) = found.get(next) {
        next += 1;
        let tasks = match fs::read_dir(format!("/proc/{pid}/task")) {
            Ok(tasks) => tasks,
            // Exited between two reads: it has nothing left to count.
            Err(_) if pid != leader => continue,
            Err(_) => return None,
        };
        for task in tasks.filter_map(Result::ok) {
            let path = task.path().join("children");
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound && pid == leader => return None,
                Err(_) => continue,
            };
            for child in text.split_whitespace().filter_map(|c| c.parse().ok()) {
                if found.len() >= MOST {
                    return Some(found);
                }
                found.push(child);
            }
        }
    }
    Some(found)
}

/// Blocks until child `pid` has exited, leaving it a zombie (`WNOWAIT`).
fn wait_exited_unreaped(pid: libc::id_t) {
    loop {
        // SAFETY: waitid(2) fills the zeroed siginfo it is given.
        let done = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if done == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

fn record_exit(dir: &Path, code: Option<i32>, signal: Option<i32>) {
    let exit = serde_json::json!({ "code": code, "signal": signal, "finished": unix_now() });
    if let Err(e) = write_atomic(dir, EXIT, exit.to_string().as_bytes()) {
        eprintln!("deploy rsync runner: {e}");
    }
}

/// Forward SIGTERM and SIGINT to rsync; restore default SIGCHLD handling (an ignored
/// SIGCHLD inherited from the agent would make waiting for rsync impossible).
fn install_signal_forwarding() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let forward = SigAction::new(
        SigHandler::Handler(forward_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only touches atomics and calls kill(2), both async-signal-safe.
    unsafe {
        for signal in [Signal::SIGTERM, Signal::SIGINT] {
            if let Err(e) = sigaction(signal, &forward) {
                eprintln!("deploy rsync runner: cannot handle {signal}: {e}");
            }
        }
        let _ = sigaction(Signal::SIGCHLD, &default);
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::panic)]
mod kill_tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A `sleep` that is killed and reaped even when an assertion fails.
    struct Sleeper(Child);

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper(configure: impl FnOnce(&mut Command)) -> Sleeper {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        configure(&mut cmd);
        Sleeper(cmd.spawn().expect("spawn sleep"))
    }

    /// A process group recorded at SIGTERM time whose id now belongs to an unrelated
    /// group (here: a group the transfer never had) is not SIGKILLed with what is left.
    #[test]
    fn kill_left_spares_a_group_whose_id_was_reused() {
        // The transfer's leftover: a session of its own, as under the runner.
        let mut left = sleeper(|cmd| {
            // SAFETY: setsid(2) is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid().map_err(io::Error::from)?;
                    Ok(())
                });
            }
        });
        // The unrelated group that took a recorded group's id.
        let mut bystander = sleeper(|cmd| {
            cmd.process_group(0);
        });
        let session = left.0.id();
        // Wait until the child has really called setsid (it runs `sleep` after).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !runs_in_session(session, session) {
            assert!(
                std::time::Instant::now() < deadline,
                "setsid never happened"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let stopping = Stopping {
            session,
            pids: vec![session],
            groups: BTreeSet::from([bystander.0.id()]),
        };
        assert_eq!(stopping.kill_left(), vec![session]);
        let status = left.0.wait().expect("wait for the leftover");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the leftover is killed"
        );
        // Had kill_left hit the bystander's group, SIGKILL would already have ended it.
        let _ = kill(
            Pid::from_raw(i32::try_from(bystander.0.id()).expect("pid")),
            Signal::SIGTERM,
        );
        let status = bystander.0.wait().expect("wait for the bystander");
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "the unrelated group got SIGKILL"
        );
    }

    /// The stall watchdog's walk finds a group's grandchildren (rsync's receiver and
    /// generator under the rsync we started) and counts their I/O, without scanning
    /// `/proc`; a zombie leader (children adopted by init) is left to the scan.
    #[test]
    fn group_walk_finds_grandchildren_and_their_io() {
        // sh (the leader, its own group) -> sh -> sleep: a grandchild two levels down.
        let leader = Sleeper(
            Command::new("sh")
                .args(["-c", "sh -c 'sleep 1000; :' & wait"])
                .process_group(0)
                .spawn()
                .expect("spawn sh"),
        );
        let pid = leader.0.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let members = loop {
            let members = group_members(pid).expect("the walk can tell");
            if members.len() >= 3 {
                break members;
            }
            assert!(std::time::Instant::now() < deadline, "{members:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(members.first(), Some(&pid));
        for member in &members {
            assert_eq!(proc_stat(*member).map(|s| s.pgrp), Some(pid), "{members:?}");
        }
        // sh read its script: the group has moved bytes, and they are summed.
        assert!(group_io(pid).is_some_and(|n| n > 0));
        let _ = kill(
            Pid::from_raw(i32::try_from(pid).expect("pid")),
            Signal::SIGKILL,
        );
        wait_exited_unreaped(pid);
        assert_eq!(
            group_members(pid),
            None,
            "a zombie leader is left to the scan"
        );
    }
}
