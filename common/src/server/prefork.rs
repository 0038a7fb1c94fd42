//! The prefork master and its workers.
//!
//! ```text
//! master (title "<name> master process")
//!   ├─ binds sockets, drops privileges, writes the pid file     (done by the caller)
//!   ├─ forks `workers` children; each builds a tokio runtime and accepts on the sockets
//!   ├─ the first worker that says it is serving (a byte on the ready pipe) makes the
//!   │  master ready (Event::Ready: the "started" line, systemd READY=1); if
//!   │  START_FAILURES workers die before any serves, the master exits 1
//!   ├─ every `watchdog` period → Event::Alive (systemd WATCHDOG=1)
//!   ├─ SIGCHLD → reap; kill what is left in the dead worker's session (its jobs);
//!   │  respawn up to `workers` (1 s back-off when a worker dies young)
//!   ├─ SIGHUP  → Event::Reloading, Program::reload(); on success new workers start
//!   │  first, and the old ones get SIGTERM once a new one serves (Event::Reloaded; the
//!   │  listening sockets stay open all along); on failure Event::ReloadFailed
//!   └─ SIGTERM/SIGINT → Event::Stopping; workers get SIGTERM, finish in-flight
//!                       requests within `grace`, then SIGKILL; the master exits last
//! worker (title "<name> worker process")
//!   ├─ setsid(): its session holds every job it starts, so they die with it
//!   ├─ PR_SET_PDEATHSIG(SIGTERM): never outlives a killed master
//!   ├─ exits after `max_requests_per_child` connections (the master replaces it)
//!   └─ SIGTERM/SIGINT → stop accepting, serve what it accepted (a fresh connection
//!                       gets its first request answered), drain, exit 0
//! ```
//!
//! The master is single-threaded and synchronous; signals reach it through
//! `signal-hook` flags and a self-pipe, so it sleeps until something happens.
//!
//! SIGTERM, SIGINT and SIGHUP are blocked from the start of `daemon::run`
//! ([`hold_signals`]) until the master has its handlers, and SIGTERM and SIGINT from a
//! worker's fork until its runtime has its own: one sent during start-up (as soon as the
//! pid file exists) is held, then handled, never lost nor left to its default action.

use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the master needs from the program it supervises.
pub trait Program {
    /// Re-reads the configuration (SIGHUP). On error the old workers keep serving.
    fn reload(&mut self) -> Result<(), String>;
    /// Runs a worker in a freshly forked child; returns its exit code.
    fn worker(&self, listeners: &[TcpListener]) -> i32;
}

/// What happens to the master, for its caller to report (log lines, systemd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The first worker serves.
    Ready,
    /// SIGHUP: the configuration is being re-read.
    Reloading,
    /// A worker of the reloaded configuration serves (the old ones are told to go).
    Reloaded,
    /// The configuration could not be re-read; the running one stays.
    ReloadFailed(&'a str),
    /// SIGTERM/SIGINT: the workers are being stopped.
    Stopping,
    /// The master loop is alive (every [`Settings::watchdog`] period).
    Alive,
}

/// Master settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Number of worker processes (at least 1).
    pub workers: usize,
    /// Title of the master process.
    pub master_title: String,
    /// How long workers get to finish in-flight requests on shutdown.
    pub grace: Duration,
    /// Report [`Event::Alive`] this often (systemd's watchdog), if set.
    pub watchdog: Option<Duration>,
}

struct Flags {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    chld: Arc<AtomicBool>,
    wake: UnixStream,
    /// The master's signal actions, removed again in every worker.
    ids: Vec<signal_hook::SigId>,
}

/// The signals that stop (SIGTERM, SIGINT) or reload (SIGHUP) a daemon.
fn control_signals() -> signal::SigSet {
    let mut set = signal::SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread until the master has its
/// handlers ([`run_master`] releases them): one that arrives during start-up (after the
/// pid file is written, say) stays pending instead of killing the daemon with its
/// default action, which would leave the pid file behind. Call it first, before any
/// thread is started, so that every thread inherits the mask.
pub fn hold_signals() {
    let _ = signal::sigprocmask(
        signal::SigmaskHow::SIG_BLOCK,
        Some(&control_signals()),
        None,
    );
}

/// Unblocks what [`hold_signals`] (or the fork in [`run_master`]) blocked; a pending
/// signal is delivered now, to the handlers just installed.
fn release_signals() {
    let _ = signal::sigprocmask(
        signal::SigmaskHow::SIG_UNBLOCK,
        Some(&control_signals()),
        None,
    );
}

fn install_signals() -> std::io::Result<Flags> {
    let (wake, wake_tx) = UnixStream::pair()?;
    wake.set_read_timeout(Some(Duration::from_secs(1)))?;
    wake_tx.set_nonblocking(true)?;
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    let chld = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &term),
        (signal_hook::consts::SIGINT, &term),
        (signal_hook::consts::SIGHUP, &hup),
        (signal_hook::consts::SIGCHLD, &chld),
    ] {
        ids.push(signal_hook::flag::register(sig, Arc::clone(flag))?);
        ids.push(signal_hook::low_level::pipe::register(
            sig,
            wake_tx.try_clone()?,
        )?);
    }
    Ok(Flags {
        term,
        hup,
        chld,
        wake,
        ids,
    })
}

/// Removes in a child what the master installed: its signal actions (through
/// signal-hook, whose registry tokio shares, so that the worker's own tokio handlers
/// are really installed; resetting dispositions behind the registry's back would leave
/// it believing a handler exists) and any blocked signals. A worker ignores SIGHUP: the
/// master reloads and replaces workers.
fn reset_signals_in_child(flags: &Flags) {
    for id in &flags.ids {
        signal_hook::low_level::unregister(*id);
    }
    // SAFETY: SIG_IGN installs no Rust handler.
    unsafe {
        let _ = signal::signal(Signal::SIGHUP, SigHandler::SigIgn);
    }
    // SIGTERM and SIGINT stay blocked until `run_worker` has its handlers.
    let mut held = signal::SigSet::empty();
    held.add(Signal::SIGTERM);
    held.add(Signal::SIGINT);
    let _ = signal::sigprocmask(signal::SigmaskHow::SIG_SETMASK, Some(&held), None);
}

struct Worker {
    started: Instant,
}

/// Workers that may die before any of them serves, before the master gives up.
pub const START_FAILURES: u32 = 3;

/// The write end of the ready pipe, in a worker (-1 elsewhere, or once used).
static READY_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Tells the master that this worker serves (once; a no-op outside a worker).
fn signal_serving() {
    let fd = READY_FD.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is this worker's copy of the ready pipe's write end, owned by
        // nothing else in this process; it is written once and closed.
        unsafe {
            let _ = libc::write(fd, b"R".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

/// Kills (SIGKILL) every process left in session `sid`: the jobs of a worker that is
/// gone (workers are session leaders, see the module docs). Linux `/proc` only.
fn kill_session(sid: Pid) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp session …; comm may hold spaces and parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if fields.get(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid.as_raw())
            && pid != sid.as_raw()
            && signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Runs the master loop until SIGTERM/SIGINT; returns the process exit code. `on_event`
/// hears of [`Event::Ready`] once, when the first worker serves (if [`START_FAILURES`]
/// workers die before that, the master stops its workers and returns 1), then of
/// reloads, the stop and the watchdog.
pub fn run_master<P: Program>(
    program: &mut P,
    listeners: Vec<TcpListener>,
    settings: Settings,
    on_event: &mut dyn FnMut(Event<'_>),
) -> i32 {
    let flags = match install_signals() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(cause = %e, "cannot install signal handlers");
            return 1;
        }
    };
    // A SIGTERM held since start-up (see `hold_signals`) reaches the handlers now.
    release_signals();
    let (ready_rx, ready_tx) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(cause = %e, "cannot create the ready pipe");
            return 1;
        }
    };
    let _ = ready_rx.set_nonblocking(true);
    let mut ready = false;
    // A reload succeeded and its first worker has not served yet.
    let mut reloading = false;
    let mut alive_at = Instant::now();
    let mut early_deaths = 0u32;
    // Old workers waiting for a new generation to serve before they get SIGTERM.
    let mut superseded: HashMap<Pid, Worker> = HashMap::new();
    super::title::set_title(&settings.master_title);
    let master = nix::unistd::getpid();
    let wanted = settings.workers.max(1);
    let mut active: HashMap<Pid, Worker> = HashMap::new();
    let mut retiring: HashMap<Pid, Worker> = HashMap::new();
    let mut spawn_after = Instant::now();

    loop {
        if flags.chld.swap(false, Ordering::SeqCst) || !active.is_empty() {
            let died = reap(
                &mut active,
                &mut retiring,
                &mut superseded,
                &mut spawn_after,
            );
            if !ready {
                early_deaths += died;
            }
        }
        let mut buf = [0u8; 64];
        if matches!((&ready_rx).read(&mut buf), Ok(n) if n > 0) {
            if !ready {
                ready = true;
                on_event(Event::Ready);
            } else if reloading {
                reloading = false;
                on_event(Event::Reloaded);
            }
            // A new generation serves: the old one may go.
            for (pid, w) in superseded.drain() {
                let _ = signal::kill(pid, Signal::SIGTERM);
                retiring.insert(pid, w);
            }
        }
        if !ready && early_deaths >= START_FAILURES {
            tracing::error!(
                died = early_deaths,
                "no worker could start: {early_deaths} died before serving (their errors are above); giving up"
            );
            shutdown(active.into_keys().collect(), settings.grace);
            return 1;
        }
        if flags.term.load(Ordering::SeqCst) {
            on_event(Event::Stopping);
            tracing::info!(
                workers = active.len() + retiring.len() + superseded.len(),
                "shutting down"
            );
            shutdown(
                active
                    .into_keys()
                    .chain(retiring.into_keys())
                    .chain(superseded.into_keys())
                    .collect(),
                settings.grace,
            );
            return 0;
        }
        if flags.hup.swap(false, Ordering::SeqCst) {
            on_event(Event::Reloading);
            match program.reload() {
                Ok(()) => {
                    tracing::info!("configuration reloaded; replacing workers");
                    // They keep accepting until a new worker serves; then SIGTERM.
                    superseded.extend(active.drain());
                    spawn_after = Instant::now();
                    reloading = true;
                }
                Err(e) => {
                    tracing::error!(cause = %e, "reload failed; keeping the running configuration");
                    on_event(Event::ReloadFailed(&e));
                }
            }
        }
        if let Some(period) = settings.watchdog {
            if alive_at.elapsed() >= period {
                alive_at = Instant::now();
                on_event(Event::Alive);
            }
        }
        while active.len() < wanted && Instant::now() >= spawn_after {
            // Anything buffered would be written twice.
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // The child keeps them blocked until its runtime has handlers (see
            // `run_worker`): a SIGTERM sent to a young worker is then held, not lost to
            // the master's handlers it inherited (which only set the master's flags).
            hold_signals();
            // SAFETY: the master is single-threaded (signal-hook's flag and pipe
            // registration spawn no thread), so the child may run arbitrary code.
            let forked = unsafe { fork() };
            if !matches!(forked, Ok(ForkResult::Child)) {
                release_signals();
            }
            match forked {
                Ok(ForkResult::Child) => {
                    reset_signals_in_child(&flags);
                    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
                    if nix::unistd::getppid() != master {
                        std::process::exit(0);
                    }
                    drop(flags);
                    // Its own session: what it starts stays in it (unless it calls
                    // setsid itself), so the master can kill its jobs when it dies.
                    let _ = nix::unistd::setsid();
                    {
                        use std::os::fd::IntoRawFd;
                        match ready_tx.try_clone() {
                            Ok(tx) => READY_FD.store(tx.into_raw_fd(), Ordering::SeqCst),
                            Err(_) => READY_FD.store(-1, Ordering::SeqCst),
                        }
                    }
                    let code = program.worker(&listeners);
                    std::process::exit(code);
                }
                Ok(ForkResult::Parent { child }) => {
                    tracing::debug!(pid = child.as_raw(), "worker started");
                    active.insert(
                        child,
                        Worker {
                            started: Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(cause = %e, "fork failed");
                    spawn_after = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        // Sleep until a signal arrives (or a second passes, for the respawn back-off);
        // while a new generation is awaited, look at the ready pipe every 20 ms.
        let waiting = !ready || !superseded.is_empty();
        let mut sleep = if waiting {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(1)
        };
        if let Some(period) = settings.watchdog {
            let due = period.saturating_sub(alive_at.elapsed());
            sleep = sleep.min(due).max(Duration::from_millis(1));
        }
        let _ = flags.wake.set_read_timeout(Some(sleep));
        let _ = (&flags.wake).read(&mut buf);
    }
}

/// Reaps every exited child; returns how many active workers died uncleanly.
fn reap(
    active: &mut HashMap<Pid, Worker>,
    retiring: &mut HashMap<Pid, Worker>,
    superseded: &mut HashMap<Pid, Worker>,
    spawn_after: &mut Instant,
) -> u32 {
    let mut died = 0;
    loop {
        let (pid, code, sig) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, None, Some(sig)),
            Ok(WaitStatus::StillAlive) | Err(_) => return died,
            Ok(_) => continue,
        };
        let left = kill_session(pid);
        if left > 0 {
            tracing::warn!(
                pid = pid.as_raw(),
                killed = left,
                "killed the jobs a gone worker left running"
            );
        }
        if superseded.remove(&pid).is_some() {
            tracing::debug!(pid = pid.as_raw(), "superseded worker exited");
        } else if gone(pid, code, sig, active, retiring, spawn_after) {
            died += 1;
        }
    }
}

/// Forgets worker `pid`; `true` if it was active and died uncleanly.
fn gone(
    pid: Pid,
    code: Option<i32>,
    sig: Option<Signal>,
    active: &mut HashMap<Pid, Worker>,
    retiring: &mut HashMap<Pid, Worker>,
    spawn_after: &mut Instant,
) -> bool {
    if retiring.remove(&pid).is_some() {
        tracing::debug!(pid = pid.as_raw(), "retired worker exited");
        return false;
    }
    let Some(worker) = active.remove(&pid) else {
        return false; // not one of ours (e.g. a reparented grandchild)
    };
    let clean = code == Some(0);
    if clean {
        tracing::info!(
            pid = pid.as_raw(),
            "worker exited (max_requests_per_child reached); replacing it"
        );
    } else {
        tracing::warn!(pid = pid.as_raw(), code, signal = ?sig, "worker died; replacing it");
        if worker.started.elapsed() < Duration::from_secs(1) {
            *spawn_after = Instant::now() + Duration::from_secs(1);
        }
    }
    !clean
}

fn shutdown(pids: Vec<Pid>, grace: Duration) {
    let pids_all = pids.clone();
    for pid in &pids {
        let _ = signal::kill(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let mut left: Vec<Pid> = pids;
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|pid| {
            matches!(
                waitpid(*pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in &left {
        tracing::warn!(
            pid = pid.as_raw(),
            "worker did not stop within the grace period; killing it"
        );
        let _ = signal::kill(*pid, Signal::SIGKILL);
        let _ = waitpid(*pid, None);
    }
    for pid in &pids_all {
        kill_session(*pid);
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Exit after this many connections (0 = never).
    pub max_requests: u64,
    /// At most this many connections served at once.
    pub max_connections: usize,
    /// How long in-flight connections may take to finish after SIGTERM.
    pub grace: Duration,
}

/// The worker's main loop: accepts on every listener and hands each connection to
/// `serve`, until SIGTERM/SIGINT or `max_requests`. Returns the exit code.
pub fn run_worker<F, Fut>(listeners: &[TcpListener], settings: WorkerSettings, serve: F) -> i32
where
    F: Fn(tokio::net::TcpStream, SocketAddr, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    run_worker_with(listeners, settings, serve, None)
}

/// A task a worker runs beside its accept loops (the agent's NATS subscriber), started
/// with the worker's shutdown token; it calls [`worker_ready`] once it serves.
pub type WorkerTask = Box<
    dyn FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// Tells the master this worker serves (a worker with listeners does so by itself;
/// a [`WorkerTask`] calls it once it can take orders). Only the first call counts.
pub fn worker_ready() {
    signal_serving();
}

/// [`run_worker`], plus `task` run in the worker's runtime until shutdown, whose
/// in-flight work the grace period waits for as for connections.
pub fn run_worker_with<F, Fut>(
    listeners: &[TcpListener],
    settings: WorkerSettings,
    serve: F,
    task: Option<WorkerTask>,
) -> i32
where
    F: Fn(tokio::net::TcpStream, SocketAddr, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(cause = %e, "cannot start the runtime");
            return 1;
        }
    };
    let listeners: Vec<TcpListener> = listeners
        .iter()
        .filter_map(|l| l.try_clone().ok())
        .collect();
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(settings.max_connections.max(1)));
        let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
        {
            use tokio::signal::unix::{signal, SignalKind};
            // Registered here, not in the task: a spawned task first runs when this one
            // waits, after the worker has said it serves. Until then SIGTERM and SIGINT
            // are blocked (the master forks with them blocked), so one sent meanwhile
            // is held, then delivered to these handlers.
            let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
            release_signals();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let (Ok(mut term), Ok(mut int)) = handlers else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                shutdown.cancel();
            });
        }
        if let Some(task) = task {
            tracker.spawn(task(shutdown.clone()));
        }
        let mut serving = false;
        for listener in listeners {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                continue;
            };
            serving = true;
            let (shutdown, tracker2, permits, served, serve) =
                (shutdown.clone(), tracker.clone(), Arc::clone(&permits), Arc::clone(&served), serve.clone());
            tracker.spawn(async move {
                loop {
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    };
                    let accepted = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        a = listener.accept() => a,
                    };
                    match accepted {
                        Ok((stream, peer)) => {
                            let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                            let serve = serve.clone();
                            let stop = shutdown.clone();
                            tracker2.spawn(async move {
                                serve(stream, peer, stop).await;
                                drop(permit);
                            });
                            if settings.max_requests > 0 && n >= settings.max_requests {
                                tracing::info!(max_requests_per_child = settings.max_requests, "completed; worker recycling");
                                shutdown.cancel();
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(cause = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        if serving {
            signal_serving();
        }
        shutdown.cancelled().await;
        tracker.close();
        if tokio::time::timeout(settings.grace, tracker.wait()).await.is_err() {
            tracing::warn!("in-flight requests did not finish within the grace period");
        }
    });
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Workers that fail at once, or that serve until told to stop.
    struct Fake {
        fail: bool,
    }

    impl Program for Fake {
        fn reload(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn worker(&self, listeners: &[TcpListener]) -> i32 {
            if self.fail {
                return 1;
            }
            let settings = WorkerSettings {
                max_requests: 0,
                max_connections: 1,
                grace: Duration::from_millis(100),
            };
            run_worker(listeners, settings, |_, _, _| async {})
        }
    }

    /// Runs a master for `fake` in a forked child; the child exits with the master's
    /// code, plus 100 if it reported ready. `term_after` sends the master SIGTERM.
    fn master_in_child(fake: Fake, term_after: Option<Duration>) -> i32 {
        // SAFETY: the child runs the master (single-threaded after the fork: it only
        // forks workers and waits for signals) and leaves with `_exit`.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let mut fake = fake;
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                listener.set_nonblocking(true).expect("nonblocking");
                let mut ready = false;
                let settings = Settings {
                    workers: 1,
                    master_title: "test master".into(),
                    grace: Duration::from_secs(1),
                    watchdog: None,
                };
                let code = run_master(&mut fake, vec![listener], settings, &mut |event| {
                    ready |= event == Event::Ready
                });
                // SAFETY: ends the child without running the test harness.
                unsafe { libc::_exit(code + if ready { 100 } else { 0 }) }
            }
            ForkResult::Parent { child } => {
                if let Some(after) = term_after {
                    std::thread::sleep(after);
                    let _ = signal::kill(child, Signal::SIGTERM);
                }
                match waitpid(child, None).expect("waitpid") {
                    WaitStatus::Exited(_, code) => code,
                    other => panic!("master ended with {other:?}"),
                }
            }
        }
    }

    #[test]
    fn master_gives_up_when_no_worker_can_start() {
        // Not ready, exit 1 (after START_FAILURES deaths and the 1 s back-offs).
        assert_eq!(master_in_child(Fake { fail: true }, None), 1);
    }

    /// Waits (bounded) for `child` to end; `None` if it is still running after 20 s,
    /// in which case it is killed.
    fn wait_bounded(child: Pid) -> Option<WaitStatus> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
                Ok(status) => return Some(status),
                Err(e) => panic!("waitpid {child}: {e}"),
            }
        }
        let _ = signal::kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        None
    }

    /// Blocks the calling (forked) process until SIGTERM is pending; `_exit(90)` if it
    /// is not within 20 s.
    fn until_sigterm_pending() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: sigpending fills the set it is given.
            let is_pending = unsafe {
                libc::sigpending(pending.as_mut_ptr()) == 0
                    && libc::sigismember(pending.as_ptr(), libc::SIGTERM) == 1
            };
            if is_pending {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: ends the forked child without running the test harness.
        unsafe { libc::_exit(90) }
    }

    /// SIGTERM sent while a daemon starts (after its pid file exists, before the master
    /// has handlers) is held and then stops the master cleanly (code 0, its `Drop`s
    /// run), instead of killing it by SIGTERM's default action.
    #[test]
    fn sigterm_during_start_up_stops_the_master_cleanly() {
        let (mut started, tell) = UnixStream::pair().expect("socketpair");
        // SAFETY: the child only blocks signals, waits and runs a master; it leaves
        // with `_exit`.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                hold_signals();
                let _ = (&tell).write_all(b"h");
                // The rest of start-up happens with SIGTERM already sent.
                until_sigterm_pending();
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                listener.set_nonblocking(true).expect("nonblocking");
                let settings = Settings {
                    workers: 1,
                    master_title: "test master".into(),
                    grace: Duration::from_secs(1),
                    watchdog: None,
                };
                let mut fake = Fake { fail: false };
                let code = run_master(&mut fake, vec![listener], settings, &mut |_| {});
                // SAFETY: ends the child without running the test harness.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                let mut byte = [0u8; 1];
                started
                    .read_exact(&mut byte)
                    .expect("the child holds its signals");
                signal::kill(child, Signal::SIGTERM).expect("SIGTERM");
                match wait_bounded(child) {
                    Some(WaitStatus::Exited(_, 0)) => {}
                    other => panic!("master ended with {other:?}, not a clean exit 0"),
                }
            }
        }
    }

    /// A worker sent SIGTERM as it starts, before its runtime has handlers, stops: the
    /// signal is held from the fork on, not swallowed by the master's handlers (which
    /// it inherits and unregisters) and so never seen, leaving the worker serving until
    /// the master's grace runs out and it is SIGKILLed.
    #[test]
    fn sigterm_before_the_workers_handlers_still_stops_it() {
        // SAFETY: the child installs and resets handlers as a worker does, then runs the
        // worker loop; it leaves with `_exit`.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let flags = install_signals().expect("the master's handlers");
                hold_signals();
                reset_signals_in_child(&flags);
                drop(flags);
                let _ = signal::raise(Signal::SIGTERM);
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                listener.set_nonblocking(true).expect("nonblocking");
                let settings = WorkerSettings {
                    max_requests: 0,
                    max_connections: 1,
                    grace: Duration::from_millis(100),
                };
                let code = run_worker(&[listener], settings, |_, _, _| async {});
                // SAFETY: ends the child without running the test harness.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match wait_bounded(child) {
                Some(WaitStatus::Exited(_, 0)) => {}
                other => panic!("worker ended with {other:?}, not a clean exit 0"),
            },
        }
    }

    #[test]
    fn master_is_ready_once_a_worker_serves() {
        let code = master_in_child(Fake { fail: false }, Some(Duration::from_secs(2)));
        assert_eq!(code, 100, "ready, then a clean stop");
    }
}
