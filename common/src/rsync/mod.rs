//! Driving the real `rsync` binary: argument vectors, output parsing and transfers.
//!
//! The original agent pasted the group's values into a `/bin/sh -c` line (remote command
//! execution, spec §15 item 1), found running transfers by scanning every process's
//! command line for a checksum marker, and judged a background transfer by the first 512
//! bytes of `/tmp/<checksum>` one second after starting it. This module keeps the
//! behaviour callers see and drops those mechanisms.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`options`] | `--options` → [`RsyncSpec`]: group lookup, inline `dest,src`, validation |
//! | this file | [`checksum`], [`argv`], [`exit_meaning`] and the error types |
//! | [`output`] | [`parse_stats`] and [`parse_file_list`] for rsync 3.0 and 3.1+ output, [`parse_progress`] |
//! | [`run`] | [`run_foreground`]: a dry-run (or any run) with combined output and a timeout; [`progress_supported`] |
//! | [`state`] | [`StateDir`]: background transfers that outlive the worker, and [`runner_main`] |
//! | [`wake`] | [`wake::Wake`]: a follower woken by the transfer's writes and its runner's exit |
//! | [`relay`] | relay mode: its `args`, the tree [`relay::manifest`], the one-off daemon configuration |
//! | [`stream`] | the pipelined relay stream: chunk list, chunker, peer handshake |
//! | [`waves`] | the relay scheduler: the first host pulls from the source, the others receive a verified chunk stream host → host |
//!
//! # Design
//!
//! * **No shell.** rsync is executed from an argument vector; `--` separates options from
//!   the two paths, and the source must be an rsync *daemon* source (`host::module` or
//!   `rsync://host/module`), so a caller can neither inject options nor copy local files.
//! * **Deterministic arguments.** The original emitted flags in Perl hash order; [`argv`]
//!   always produces the same vector for the same spec.
//! * **Both output dialects.** rsync ≥ 3.1 renamed `Number of files transferred` and
//!   groups digits; [`output`] reads both, which the original could not (§15 item 15).
//! * **Background transfers are tracked by files and a lock, not by command lines**; see
//!   [`state`] for why an `flock` plus a small runner process.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use md5::{Digest, Md5};

pub mod options;
pub mod output;
pub mod relay;
pub mod run;
pub mod state;
pub mod stream;
pub mod wake;
pub mod waves;

#[cfg(test)]
mod tests;

pub use options::resolve;
pub use output::{
    last_progress, parse_file_list, parse_progress, parse_stats, unescape, FileList, Progress,
    Stats, LOCALE,
};
pub use run::{progress_supported, run_foreground, RunOutput};
pub use state::{runner_main, LastRun, RunnerCommand, StartOutcome, StateDir};

/// The rsync binary used when a group names none, and always for inline `dest,src`.
pub const DEFAULT_RSYNC: &str = "/usr/bin/rsync";

/// One fully resolved transfer: what to run, from where, to where, with which filters.
///
/// Built by [`resolve`]; `dest` and `src` keep the original's (confusing) names: `dest`
/// is the rsync *source* (a daemon module) and `src` the local *target* directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncSpec {
    /// The rsync binary to execute.
    pub rsync: PathBuf,
    /// The rsync source: `host::module[/path]` or `rsync://host[:port]/module[/path]`.
    pub dest: String,
    /// The local target directory (absolute).
    pub src: String,
    /// Value for `--rsh=`.
    pub rsh: Option<String>,
    /// `--exclude=` values, in configuration order.
    pub exclude: Vec<String>,
    /// `--include=` values, in configuration order.
    pub include: Vec<String>,
    /// Extra rsync arguments, each one argv element.
    pub option: Vec<String>,
    /// Whether `--archive --delete --force` are added: true iff `option` is empty.
    pub default_flags: bool,
}

/// Why `--options` could not be turned into an [`RsyncSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// Unknown group, or an empty `dest` or `src` (the original's 400 reply text).
    #[error("empty value in options!")]
    Empty,
    /// `dest` is not an rsync daemon source (a local path, `host:path`, an option…).
    #[error("{0:?} is not an rsync daemon source (host::module[/path] or rsync://host[:port]/module[/path])")]
    BadSource(String),
    /// `src` is not an absolute path, or contains control characters.
    #[error("{0:?} is not an absolute local path")]
    BadTarget(String),
}

/// Why running rsync (or its background runner) failed.
#[derive(Debug, thiserror::Error)]
pub enum RsyncError {
    /// The binary could not be executed.
    #[error("cannot execute {binary:?}: {source}")]
    Spawn {
        /// The program that failed to start (rsync, or the runner for background transfers).
        binary: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// rsync did not finish in time; its whole process group was killed.
    #[error("rsync did not finish within {after:?} and was killed")]
    Timeout {
        /// The limit that was exceeded.
        after: Duration,
        /// Output (stdout and stderr interleaved) produced before the kill.
        output: Vec<u8>,
    },
    /// A file-system or pipe operation around the transfer failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path involved.
        context: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}

impl RsyncError {
    fn io(context: impl Into<String>, source: std::io::Error) -> RsyncError {
        RsyncError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The transfer's handle: hex MD5 of `dest` followed by `src`, as the original computed it.
///
/// ```
/// # use deploy_common::rsync::{checksum, RsyncSpec};
/// let spec = RsyncSpec {
///     rsync: "/usr/bin/rsync".into(),
///     dest: "127.0.0.1::DEST".into(),
///     src: "/srv/target/web".into(),
///     rsh: None,
///     exclude: vec![],
///     include: vec![],
///     option: vec![],
///     default_flags: true,
/// };
/// assert_eq!(checksum(&spec), "6853cb50428242fefd6a1c4f3f57c20e");
/// ```
pub fn checksum(spec: &RsyncSpec) -> String {
    let mut md5 = Md5::new();
    md5.update(spec.dest.as_bytes());
    md5.update(spec.src.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The arguments given to the rsync binary (the binary itself not included).
///
/// ```text
/// --stats --verbose [--archive --delete --force] [--dry-run] [--rsh=R]
/// [--exclude=E]… [--include=I]… [option]… --out-format=%i %n%L -- DEST SRC
/// ```
///
/// Always in this order. `--out-format` ([`output::ITEM_FORMAT`]) comes after the
/// group's `option[]` so that a group's own `--out-format`, `--log-format` or `-i`
/// cannot change the itemized file list that [`output`] reads. Each value is one argument; nothing is quoted because nothing
/// goes through a shell. The original's `--include=<checksum>` marker is not added:
/// transfers are found through [`StateDir`] instead.
pub fn argv(spec: &RsyncSpec, dry_run: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--stats".into(), "--verbose".into()];
    if spec.default_flags {
        args.extend(["--archive".into(), "--delete".into(), "--force".into()]);
    }
    if dry_run {
        args.push("--dry-run".into());
    }
    if let Some(rsh) = &spec.rsh {
        args.push(format!("--rsh={rsh}").into());
    }
    args.extend(spec.exclude.iter().map(|e| format!("--exclude={e}").into()));
    args.extend(spec.include.iter().map(|i| format!("--include={i}").into()));
    args.extend(spec.option.iter().map(OsString::from));
    args.push(format!("--out-format={}", output::ITEM_FORMAT).into());
    args.push("--".into());
    args.push(spec.dest.clone().into());
    args.push(spec.src.clone().into());
    args
}

/// What an rsync exit code means, from rsync(1)'s "EXIT VALUES" table; `"unknown"` otherwise.
pub fn exit_meaning(code: i32) -> &'static str {
    match code {
        0 => "success",
        1 => "syntax or usage error",
        2 => "protocol incompatibility",
        3 => "errors selecting input/output files, dirs",
        4 => "requested action not supported",
        5 => "error starting client-server protocol",
        6 => "daemon unable to append to log-file",
        10 => "error in socket I/O",
        11 => "error in file I/O",
        12 => "error in rsync protocol data stream",
        13 => "errors with program diagnostics",
        14 => "error in IPC code",
        20 => "received SIGUSR1 or SIGINT",
        21 => "some error returned by waitpid()",
        22 => "error allocating core memory buffers",
        23 => "partial transfer due to error",
        24 => "partial transfer due to vanished source files",
        25 => "the --max-delete limit stopped deletions",
        30 => "timeout in data send/receive",
        35 => "timeout waiting for daemon connection",
        _ => "unknown",
    }
}
