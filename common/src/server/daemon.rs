//! Start-up shared by the agent and the proxy, in the order that keeps it safe:
//! bind every socket (as root if a privileged port needs it) → report `listening on` →
//! create `state_dir` and hand it to the workers' user → detach unless in the
//! foreground → umask → logging → pid file → drop privileges → the prefork master,
//! which logs `started` and tells systemd `READY=1` only once a worker serves (and
//! exits 1 if none can), then `RELOADING=1`/`READY=1` around a reload, `STOPPING=1`,
//! and `WATCHDOG=1` when asked (see [`notify`]), each with a `STATUS=` line.

use super::prefork::{self, Event, Program, Settings};
use super::{log, notify, pidfile, privs, statedir};
use crate::config::ServerConfig;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A socket could not be bound (the message names the address).
    #[error("{0}")]
    Bind(std::io::Error),
    /// Detaching from the terminal failed.
    #[error("cannot detach: {0}")]
    Detach(std::io::Error),
    /// The logs could not be set up.
    #[error(transparent)]
    Log(#[from] log::LogError),
    /// The pid file could not be written (or another instance runs).
    #[error(transparent)]
    Pid(#[from] pidfile::PidError),
    /// Privileges could not be dropped.
    #[error(transparent)]
    Privs(#[from] privs::PrivError),
    /// `state_dir` cannot be made usable by the workers' user.
    #[error(transparent)]
    StateDir(#[from] statedir::StateDirError),
}

/// What [`run`] needs besides the `[server]` section.
pub struct Startup<'a> {
    /// The `[server]` section (after command-line overrides).
    pub server: &'a ServerConfig,
    /// `deploy-agent` or `deploy-proxy`: log prefix and syslog ident.
    pub program: &'static str,
    /// The program's version and commit (`deploy_common::version!()`), for the
    /// `started` line.
    pub version: &'static str,
    /// Stay attached, log to stderr.
    pub foreground: bool,
    /// -v/-q balance.
    pub verbosity: i8,
    /// Further sockets the program serves differently (e.g. the proxy's HTTP API);
    /// they come after the `[server]` ones in the list the program gets.
    pub extra: Vec<SocketAddr>,
    /// How long workers get to finish on shutdown.
    pub grace: Duration,
    /// Whether to bind the `[server]` addresses (an agent reached only over NATS binds
    /// none: its workers serve what [`prefork::run_worker_with`]'s task brings).
    pub server_sockets: bool,
}

/// The `[server]` listen addresses: `addr:port` then every `listen[]`.
pub fn server_addrs(server: &ServerConfig) -> Vec<SocketAddr> {
    let mut addrs = vec![SocketAddr::new(server.addr, server.port)];
    addrs.extend(server.listen.iter().copied());
    addrs
}

/// Starts the daemon and runs the master until it is told to stop; returns the exit
/// code. The program's workers get the sockets of [`server_addrs`] then
/// [`Startup::extra`], in that order.
pub fn run<P: Program>(startup: Startup<'_>, program: &mut P) -> Result<i32, DaemonError> {
    let s = startup.server;
    // Until the master has its handlers: a SIGTERM sent as soon as the pid file exists
    // must stop the daemon cleanly, not kill it with the pid file left behind.
    prefork::hold_signals();
    notify::init();
    let defer = s
        .socket_accept_filter
        .then(|| u32::try_from(s.socket_timeout.as_secs()).unwrap_or(5));
    let mut listeners: Vec<TcpListener> = Vec::new();
    let own = if startup.server_sockets {
        server_addrs(s)
    } else {
        Vec::new()
    };
    for addr in own.into_iter().chain(startup.extra.iter().copied()) {
        listeners.push(super::bind(addr, s.backlog, defer).map_err(DaemonError::Bind)?);
    }
    // Before privileges are dropped: it may live in a root-owned place.
    statedir::prepare(&s.state_dir, s.user.as_deref(), s.group.as_deref())?;
    for l in &listeners {
        if let Ok(local) = l.local_addr() {
            eprintln!("{}: listening on {local}", startup.program);
        }
    }
    if !startup.foreground {
        detach().map_err(DaemonError::Detach)?;
    }
    privs::set_umask(s.umask);
    log::init(&log::LogSettings {
        foreground: startup.foreground,
        verbosity: startup.verbosity,
        write: s.log_write,
        error_level: s.log_error_level,
        error_path: s.log_error_path.clone(),
        access_path: s.log_access_path.clone(),
        program: startup.program,
    })?;
    let _pid = match &s.pid_file {
        Some(path) => Some(pidfile::PidFile::create(path)?),
        None => None,
    };
    if let Some((uid, gid)) = privs::drop_privileges(s.user.as_deref(), s.group.as_deref())? {
        tracing::info!(uid = uid.as_raw(), gid = gid.as_raw(), "privileges dropped");
    }
    let settings = Settings {
        workers: usize::try_from(s.max_prefork.max(1)).unwrap_or(1),
        master_title: format!("{} master process", s.process_name),
        grace: startup.grace + Duration::from_secs(2),
        watchdog: notify::watchdog_period(),
    };
    let serving = format!(
        "serving on {}; workers: {}",
        listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        settings.workers
    );
    let mut on_event = |event: Event<'_>| match event {
        Event::Ready => {
            tracing::info!(
                version = startup.version,
                workers = s.max_prefork.max(1),
                legacy = s.legacy_protocol,
                "{} started",
                startup.program
            );
            notify::notify(&format!("READY=1\nSTATUS={serving}"));
        }
        Event::Reloading => notify::notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            notify::monotonic_usec()
        )),
        Event::Reloaded => notify::notify(&format!(
            "READY=1\nSTATUS={serving}; configuration reloaded at {}",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
        )),
        Event::ReloadFailed(cause) => notify::notify(&format!(
            "READY=1\nSTATUS={serving}; reload failed, previous configuration kept: {}",
            cause.replace('\n', " ")
        )),
        Event::Stopping => notify::notify("STOPPING=1\nSTATUS=stopping"),
        Event::Alive => notify::notify("WATCHDOG=1"),
    };
    let code = prefork::run_master(program, listeners, settings, &mut on_event);
    match code {
        0 => tracing::info!("{} stopped", startup.program),
        _ => tracing::error!(
            code,
            "{} stopped: its workers cannot serve",
            startup.program
        ),
    }
    Ok(code)
}

/// Detaches from the terminal: fork (the parent exits), setsid, chdir /, standard
/// descriptors to /dev/null. Must run before any thread exists.
fn detach() -> std::io::Result<()> {
    use nix::unistd::{fork, setsid, ForkResult};
    use std::os::fd::AsRawFd;
    // SAFETY: called while the process is single-threaded (start-up, before the
    // master's loop and before any runtime).
    match unsafe { fork() }.map_err(std::io::Error::from)? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid().map_err(std::io::Error::from)?;
    std::env::set_current_dir("/")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
