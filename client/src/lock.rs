//! The cluster lock on the command line: `--order=lock` (hold it until interrupted) and
//! `--lock` (hold it around `run`, `exec` or `rsync`).
//!
//! ```text
//! --order=lock [--options=NAME] [--lease=SECS]
//!   lock every host ──any refused──► unlock the ones taken, print the holders, exit 4
//!        │ all granted
//!   print the results; "locked on N hosts; waiting for interrupt"
//!   heartbeat every lease/3 ──host lost──► release the rest, exit 5
//!        │ SIGINT / SIGTERM
//!   release, exit 0
//!
//! --order=exec|run|rsync|upload|sync --lock[=NAME]   (upload, sync: by default; --no-lock)
//!   lock as above (exit 4, printing nothing on stdout; --no-lock-fail: warn and run
//!   the order without the lock) ─► run the order while
//!   heartbeating ─► release ─► the order's exit status
//!   lost mid-run: the order's deliveries are dropped (cancelled), release, exit 5
//!   SIGINT / SIGTERM mid-run: likewise, exit 130
//! ```
//!
//! `--order=unlock --options=NAME --token=TOKEN` is an ordinary order (no code here): it
//! needs the token of the live lease, which `--order=lock` prints in every host's
//! result. Without it the agents answer 403 naming the holder; there is no forced
//! release, since a lease runs out by itself. `--token` also lets `--order=lock` resume
//! a lock whose token is known (the same token renews instead of being refused).
//!
//! On `ssh://` hosts the lock is a remote `flock` held by a session of this process
//! (`--lock-file`, see `deploy_common::ssh::lock`): the heartbeat checks that the
//! session and its holder are alive, and the lock goes when the session does.
//!
//! # Design
//!
//! The heartbeat runs on a thread of its own with its own runtime, so that a blocked
//! standard output (a paused pager) can stall the order's output but never the lease
//! renewals. Signals are caught only while a lock may be held, to release it before
//! exiting.

use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use anyhow::Context as _;
use deploy_common::fanout::HostResult;
use deploy_common::lock::cluster::{ClusterLock, Held, HostLock, LockSpec, Lost, NotAcquired};
use deploy_common::order::lock::{self as wire, LockName, Token};
use deploy_common::transport::Outcome;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::cli::{Config, Format};
use crate::render;

/// Exit status: the lock could not be taken on every host (none is left locked).
pub const EXIT_LOCK_NOT_ACQUIRED: u8 = 4;
/// Exit status: a host's lease could not be renewed; the lock is no longer guaranteed.
pub const EXIT_LOCK_LOST: u8 = 5;
/// Exit status: interrupted (SIGINT/SIGTERM) before the lock was held or during an order
/// run under `--lock` (128 + SIGINT, the shell's convention).
pub const EXIT_INTERRUPTED: u8 = 130;

/// How the lock is used.
#[derive(Debug, Clone)]
pub enum LockMode {
    /// `--order=lock`: hold it until interrupted.
    Only(LockSpec),
    /// `--lock` (and `upload`/`sync` by default): hold it while the order runs.
    Around(LockSpec),
    /// As `Around`, but a lock that cannot be taken everywhere is only a warning: the
    /// order then runs without it (`--no-lock-fail`, orgalorg's `-t`).
    Loose(LockSpec),
}

/// Builds the lock's description from the flags: the name (`""` = `deploy`), the lease,
/// and a token (`--token`, or 128 fresh random bits). The holder label is
/// `user@host:pid`.
pub fn spec(name: &str, lease: u64, token: Option<&str>) -> anyhow::Result<LockSpec> {
    let name = LockName::parse(name)?;
    let lease = wire::lease(Some(lease))?;
    let token = match token {
        Some(token) => Token::parse(token).context("--token")?,
        None => Token::generate()?,
    };
    Ok(LockSpec {
        name,
        holder: holder(),
        token,
        lease,
    })
}

/// `user@host:pid`, who we are to someone we keep out.
fn holder() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| nix::unistd::getuid().to_string());
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let label = format!("{user}@{host}:{}", std::process::id());
    // The agent refuses labels with control characters or over 256 bytes.
    let label: String = label.chars().filter(|c| !c.is_control()).collect();
    match label.char_indices().nth(wire::MAX_HOLDER / 4) {
        Some((cut, _)) => label.get(..cut).unwrap_or_default().to_owned(),
        None => label,
    }
}

/// Runs `config`'s order under the lock `mode`; returns the exit status.
pub async fn run(mut config: Config, mode: LockMode) -> io::Result<u8> {
    let (spec, only, loose) = match mode {
        LockMode::Only(spec) => (spec, true, false),
        LockMode::Around(spec) => (spec, false, false),
        LockMode::Loose(spec) => (spec, false, true),
    };
    let (format, quiet) = (config.format, config.quiet);
    let mut signals = Signals::new()?;
    let locker =
        ClusterLock::new(Arc::clone(&config.transport), spec).with_concurrency(config.concurrency);
    let name = locker.spec().name.clone();
    let mut targets = config.targets.clone();
    let mut acquired = tokio::select! {
        acquired = locker.acquire(targets.clone()) => acquired,
        () = signals.recv() => {
            // Whatever was granted carries our token: release it everywhere.
            let _ = locker.release(targets).await;
            eprintln!("deploy-client: interrupted while taking lock {name}; released");
            return Ok(EXIT_INTERRUPTED);
        }
    };
    // Loose mode (--skip-unreachable): if only unreachable hosts kept the lock from
    // being taken, they are left out, and the lock (and the order) is for the others.
    if let Err(refused) = &acquired {
        let unreachable: Vec<&str> = refused
            .refusals()
            .filter(|a| matches!(a.result.outcome, Outcome::Unreachable { .. }))
            .map(|a| a.result.host.as_str())
            .collect();
        let only_unreachable = unreachable.len() == refused.refusals().count();
        if config.skip_unreachable && only_unreachable && unreachable.len() < targets.len() {
            eprintln!(
                "deploy-client: note: {} unreachable host{} left out of lock {name} (--skip-unreachable): {}",
                unreachable.len(),
                if unreachable.len() == 1 { "" } else { "s" },
                unreachable.join(", ")
            );
            targets.retain(|t| !unreachable.contains(&t.to_string().as_str()));
            config.targets = targets.clone();
            // A sync run meets only the hosts it is delivered to.
            if let Some(run) = config.request.sync.as_mut() {
                run.nodes.retain(|n| !unreachable.contains(&n.as_str()));
            }
            acquired = tokio::select! {
                acquired = locker.acquire(targets.clone()) => acquired,
                () = signals.recv() => {
                    let _ = locker.release(targets).await;
                    eprintln!("deploy-client: interrupted while taking lock {name}; released");
                    return Ok(EXIT_INTERRUPTED);
                }
            };
        }
    }
    let held = match acquired {
        Ok(held) => Arc::new(held),
        Err(refused) if loose => {
            report_refusal(&name, &refused, quiet, true);
            let (status, _) = run_order(config, &mut signals, std::future::pending()).await;
            return status;
        }
        Err(refused) => {
            if only {
                let results: Vec<&HostResult> =
                    refused.attempts.iter().map(|a| &a.result).collect();
                print_results(format, &results)?;
            }
            report_refusal(&name, &refused, quiet, false);
            return Ok(EXIT_LOCK_NOT_ACQUIRED);
        }
    };
    if only {
        let results: Vec<&HostResult> = held.attempts.iter().map(|a| &a.result).collect();
        if let Err(e) = print_results(format, &results) {
            // Nobody may be left waiting for a lock we cannot report (a closed pipe).
            let _ = held.release().await;
            return Err(e);
        }
        if !quiet {
            eprintln!(
                "deploy-client: locked on {} hosts; waiting for interrupt",
                held.hosts()
            );
        }
    } else {
        tracing::info!(lock = %name, hosts = held.hosts(), "locked");
    }

    let mut heartbeat = Heartbeat::start(Arc::clone(&held))?;
    let (status, lost) = if only {
        tokio::select! {
            () = signals.recv() => (Ok(crate::EXIT_OK), None),
            lost = heartbeat.lost() => (Ok(EXIT_LOCK_LOST), Some(lost)),
        }
    } else {
        let lost = heartbeat.lost();
        let (status, lost) = run_order(config, &mut signals, lost).await;
        if lost.is_none() && status.as_ref().is_ok_and(|s| *s == EXIT_INTERRUPTED) {
            eprintln!("deploy-client: interrupted; releasing lock {name}");
        }
        (status, lost)
    };
    // Otherwise dropping the order's future cancelled its deliveries.
    heartbeat.stop().await;
    if let Some(lost) = &lost {
        eprintln!("deploy-client: error: {lost}; the order was aborted");
    }
    let unreleased = held.release().await;
    report_unreleased(&name, held.spec().lease, &unreleased, quiet);
    status
}

/// Runs the order of `config` until it ends, a signal comes (exit 130) or `lost`
/// resolves (exit 5, with what was lost). An order cut short has its commands on SSH
/// hosts stopped (SIGINT, then SIGKILL) rather than just its connections dropped.
async fn run_order(
    config: Config,
    signals: &mut Signals,
    lost: impl std::future::Future<Output = Lost>,
) -> (io::Result<u8>, Option<Lost>) {
    let ssh = config.ssh.clone();
    // A followed rsync goes on without us: say so, as `crate::run` does when it sees
    // the signal first.
    let following = (config.request.order == "rsync" && config.request.follow).then(|| {
        config
            .targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    });
    let order = crate::run(config);
    tokio::pin!(order);
    let (status, lost, finished) = tokio::select! {
        status = &mut order => (status, None, true),
        () = signals.recv() => {
            if let Some(hosts) = &following {
                let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
                eprintln!("{}", crate::detach::message(&argv, hosts));
            }
            (Ok(EXIT_INTERRUPTED), None, false)
        }
        lost = lost => (Ok(EXIT_LOCK_LOST), Some(lost), false),
    };
    if let (Some(ssh), false) = (&ssh, finished) {
        ssh.interrupt();
        let grace = deploy_common::ssh::session::KILL_AFTER + std::time::Duration::from_secs(2);
        let _ = tokio::time::timeout(grace, &mut order).await;
    }
    (status, lost)
}

/// Prints the lock results in the chosen format (like any order's).
fn print_results(format: Format, results: &[&HostResult]) -> io::Result<()> {
    let order = "lock";
    let mut results = results.to_vec();
    if format != Format::Jsonl {
        render::sort_by_host(&mut results);
    }
    let results = &results[..];
    let mut out = BufWriter::new(io::stdout().lock());
    match format {
        Format::Json => render::write_perl_pretty(&mut out, &render::document(order, results))?,
        Format::Text | Format::Lines | Format::Table => {
            render::write_text(&mut out, order, results)?
        }
        Format::Jsonl => {
            for result in results {
                serde_json::to_writer(&mut out, &render::result_line(order, result))
                    .map_err(io::Error::other)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()
}

/// One line per host that did not grant the lock (unless quiet), then a summary naming
/// the holders; only warnings if the order goes on without the lock (`loose`).
fn report_refusal(name: &LockName, refused: &NotAcquired, quiet: bool, loose: bool) {
    let level = if loose { "warning" } else { "error" };
    let mut holders: Vec<&str> = Vec::new();
    let mut count = 0;
    for attempt in refused.refusals() {
        count += 1;
        if let HostLock::Held(by) = &attempt.state {
            if !holders.contains(&by.holder.as_str()) {
                holders.push(&by.holder);
            }
        }
        if !quiet {
            eprintln!(
                "deploy-client: {level}: {}: {}",
                attempt.result.host, attempt.state
            );
        }
    }
    let by = if holders.is_empty() {
        String::new()
    } else {
        format!(" (held by {})", holders.join(", "))
    };
    eprintln!(
        "deploy-client: {level}: lock {name} not acquired on {count} of {} hosts{by}; released where it was taken{}",
        refused.attempts.len(),
        if loose {
            "; running without it (--no-lock-fail)"
        } else {
            ""
        }
    );
    for (host, why) in &refused.unreleased {
        eprintln!("deploy-client: warning: {host}: lock {name} not released: {why}");
    }
}

fn report_unreleased(name: &LockName, lease: u64, unreleased: &[(String, String)], quiet: bool) {
    if quiet {
        return;
    }
    for (host, why) in unreleased {
        eprintln!(
            "deploy-client: warning: {host}: lock {name} not released ({why}); its lease runs out within {lease} s"
        );
    }
}

/// SIGINT and SIGTERM, caught (from the moment this is made).
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    pub(crate) fn new() -> io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// The heartbeat, on its own thread and runtime.
struct Heartbeat {
    stop: CancellationToken,
    done: Option<oneshot::Receiver<Result<(), Lost>>>,
    lock: String,
}

impl Heartbeat {
    fn start(held: Arc<Held>) -> io::Result<Heartbeat> {
        let stop = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let lock = held.spec().name.to_string();
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let result = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(held.heartbeat(thread_stop)),
                    Err(e) => Err(Lost {
                        lock: held.spec().name.to_string(),
                        host: "localhost".into(),
                        why: format!("cannot start the heartbeat: {e}"),
                    }),
                };
                let _ = tx.send(result);
            })?;
        Ok(Heartbeat {
            stop,
            done: Some(rx),
            lock,
        })
    }

    /// Resolves when a host is lost (never after [`Heartbeat::stop`]).
    async fn lost(&mut self) -> Lost {
        let Some(done) = self.done.as_mut() else {
            return std::future::pending().await;
        };
        let result = done.await;
        self.done = None;
        match result {
            Ok(Err(lost)) => lost,
            Ok(Ok(())) => std::future::pending().await,
            Err(_) => Lost {
                lock: self.lock.clone(),
                host: "localhost".into(),
                why: "the heartbeat thread ended".into(),
            },
        }
    }

    /// Stops the heartbeat and waits for its thread to finish.
    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}
