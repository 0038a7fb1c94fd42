//! Agentless hosts: orders delivered over native SSH (russh), one connection per host,
//! no `ssh` process.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | this file | [`SshTransport`] (a [`Transport`]), [`SshOptions`], [`SshError`], [`SshStats`] |
//! | [`session`] | TCP (or a jump host's channel), handshake, host-key check, authentication, the command |
//! | [`config`] | the OpenSSH client configuration: `Host` patterns, `HostName`, `User`, `Port`, `IdentityFile`, `ProxyJump`, `ProxyCommand`, `ForwardAgent`, `UserKnownHostsFile`, `StrictHostKeyChecking`, `Include` |
//! | [`known_hosts`] | trusted host keys: known, unknown, changed (mismatch), revoked; appending new ones |
//! | [`lines`] | output bytes → whole lines; argv → the remote command line (`sudo -n sh -c`) |
//! | `fleet` | `health` (`/proc` and `df` read by one `sh` command) and `fetch` (`tar -c` as data events) |
//!
//! # Design
//!
//! ```text
//! deliver(ssh://[user@]host[:port], run argv)
//!   resolve host in ssh_config ─► [ProxyJump hops: connect+auth, direct-tcpip ─►]* TCP (NODELAY)
//!   ─► kex curve25519-sha256 ─► host key vs known_hosts ─► auth: agent, key files, password
//!   ─► session channel: exec "sh -c 'printf … \"$PPID\" >&2'; argv joined" ─► stdin, EOF
//!   ◄─ stdout/stderr → Event::Line{stream, line} as each line completes ◄─ exit-status
//!   (the first stderr line, the shell's pid, is kept back: on interrupt or at the
//!   deadline the command's process group gets SIGINT then SIGKILL; sshd refuses
//!   `signal` requests for root logins, so it is sent with kill)
//!   = Outcome::Reply(200 {return, code, command, content})
//! └────────────────────── whole exchange ≤ deadline (if one is set) ──────────────────────┘
//! ```
//!
//! Everything slow or shared is done once per run, not per host: the configuration and
//! the known_hosts files are parsed when the transport is made, each key file is read
//! (and its passphrase asked) once, behind a lock, and shared by every connection. Key
//! exchange prefers `curve25519-sha256`, which costs a fraction of the post-quantum
//! hybrids' CPU, and every socket has `TCP_NODELAY` (see perf-notes: delayed-ACK stalls
//! dominate a fresh OpenSSH connection otherwise). A command's exit code is its result
//! (`return` is `"true"` iff 0), as for `run` on an agent; failures to connect are
//! [`Outcome::Unreachable`], refused host keys and authentication are
//! [`Outcome::Failed`] with the reason, never a panic.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use russh::keys::PrivateKey;
use tokio::sync::mpsc;

use crate::order::{Reply, Request};
use crate::target::Target;
use crate::transport::{BoxFuture, Outcome, Transport};
use crate::wire::message::TaggedEvent;

pub mod config;
mod fleet;
pub mod known_hosts;
pub mod lines;
pub mod lock;
pub mod session;
pub mod tasks;
pub mod upload;

pub use config::{HostConfig, SshConfig};
pub use known_hosts::{Check, KnownHosts};

/// Asks for a key's passphrase (the argument names the key file); `None` if nobody can
/// answer (no terminal).
pub type PassphrasePrompt = Arc<dyn Fn(&Path) -> Option<String> + Send + Sync>;

/// How to reach SSH hosts, as the user configured it.
#[derive(Clone)]
pub struct SshOptions {
    /// The client configuration file (`-F`); `None`: `~/.ssh/config` if it exists.
    pub config_file: Option<PathBuf>,
    /// The known_hosts file to check and append to; `None`: `~/.ssh/known_hosts`.
    /// `/etc/ssh/ssh_known_hosts` is read as well when this is `None`.
    pub known_hosts: Option<PathBuf>,
    /// Append unknown host keys to the known_hosts file instead of refusing them.
    /// A changed key is refused regardless.
    pub accept_new_host_keys: bool,
    /// Key files to try (`--identity`), before the configuration's `IdentityFile`s;
    /// when neither names one, `~/.ssh/id_ed25519`, `id_ecdsa` and `id_rsa`.
    pub identities: Vec<PathBuf>,
    /// The ssh-agent socket (`SSH_AUTH_SOCK`), tried first.
    pub agent_socket: Option<PathBuf>,
    /// A password to try after the keys.
    pub password: Option<String>,
    /// Asks for the passphrase of an encrypted key file (once per file).
    pub passphrase: Option<PassphrasePrompt>,
    /// The local user (`%u`): the remote user when neither the target, the
    /// configuration nor [`SshOptions::default_user`] names one.
    pub local_user: String,
    /// The remote user when neither the target nor the configuration's `User` names
    /// one (a default, under ssh_config; a user given on the command line goes in the
    /// target instead, which wins over the configuration as `ssh -l` does).
    pub default_user: Option<String>,
    /// The local home directory (`~`).
    pub home: PathBuf,
    /// Longest wait for the TCP connection, then again for the SSH handshake.
    pub connect_timeout: Duration,
    /// Longest wait for the whole exchange; `None`: as long as the command runs.
    pub deadline: Option<Duration>,
    /// Send a keep-alive after this much silence from the server (3 unanswered end the
    /// connection).
    pub keepalive: Option<Duration>,
    /// The file `flock(1)`ed on each host by `lock`: `%n` the lock's name, `%h` and `%p`
    /// the host and port as written, `%%` a `%` (see [`lock`]).
    pub lock_file: String,
    /// `run` without standard input gets a terminal (see [`session::exec`]).
    pub pty: bool,
}

impl SshOptions {
    /// Options with the defaults, for `local_user` whose home is `home`.
    pub fn new(local_user: impl Into<String>, home: impl Into<PathBuf>) -> SshOptions {
        SshOptions {
            config_file: None,
            known_hosts: None,
            accept_new_host_keys: false,
            identities: Vec::new(),
            agent_socket: None,
            password: None,
            passphrase: None,
            local_user: local_user.into(),
            default_user: None,
            home: home.into(),
            connect_timeout: Duration::from_secs(10),
            deadline: None,
            keepalive: None,
            lock_file: lock::DEFAULT_LOCK_FILE.to_owned(),
            pty: false,
        }
    }
}

/// What can go wrong reaching a host over SSH, or preparing to.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A configuration file line is wrong.
    #[error("{}:{line}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A hop of `ProxyJump` is not `[user@]host[:port]`.
    #[error("bad ProxyJump host {spec:?}: {reason}")]
    Jump {
        /// As written.
        spec: String,
        /// Why.
        reason: String,
    },
    /// No TCP connection could be made.
    #[error("can't connect to {address}: {cause}")]
    Connect {
        /// `host:port` as tried.
        address: String,
        /// Why.
        cause: String,
    },
    /// The server's host key is in no known_hosts file.
    #[error(
        "host key of {host} is not known ({algorithm} key {fingerprint}); refusing to connect. \
         Check the fingerprint, then add the key to {} (or pass --accept-new-host-keys)",
        file.display()
    )]
    UnknownHostKey {
        /// The host as looked up (`host` or `[host]:port`).
        host: String,
        /// Key type.
        algorithm: String,
        /// `SHA256:…`.
        fingerprint: String,
        /// The known_hosts file the key would go to.
        file: PathBuf,
    },
    /// The server's host key differs from the one recorded: always refused.
    #[error(
        "HOST KEY MISMATCH for {host}: it offers {algorithm} key {fingerprint}, but {}:{line} \
         records another key; refusing to connect (a man-in-the-middle attack is possible). \
         If the host key really changed, remove that line",
        file.display()
    )]
    HostKeyChanged {
        /// The host as looked up.
        host: String,
        /// Key type.
        algorithm: String,
        /// `SHA256:…` of the offered key.
        fingerprint: String,
        /// The known_hosts file.
        file: PathBuf,
        /// Its line.
        line: usize,
    },
    /// The server's host key is marked `@revoked`.
    #[error("host key {fingerprint} of {host} is revoked ({}:{line}); refusing to connect", file.display())]
    HostKeyRevoked {
        /// The host as looked up.
        host: String,
        /// `SHA256:…`.
        fingerprint: String,
        /// The known_hosts file.
        file: PathBuf,
        /// Its line.
        line: usize,
    },
    /// The server presented a certificate, which this client does not verify.
    #[error("{host} presented a host certificate, which is not supported")]
    HostCertificate {
        /// The host as looked up.
        host: String,
    },
    /// A new host key could not be appended.
    #[error("cannot record the host key of {host} in {}: {cause}", file.display())]
    Learn {
        /// The host as looked up.
        host: String,
        /// The known_hosts file.
        file: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Every method was refused.
    #[error("authentication as {user:?} refused by {host} (tried: {tried})")]
    Auth {
        /// Remote user.
        user: String,
        /// The host.
        host: String,
        /// What was offered.
        tried: String,
    },
    /// The SSH handshake did not finish in time.
    #[error("SSH handshake with {host} timed out after {}", crate::transport::seconds(*after))]
    HandshakeTimeout {
        /// The host.
        host: String,
        /// The limit.
        after: Duration,
    },
    /// A jump host failed (for every target behind it: its connection is shared).
    #[error("via jump host {jump}: {cause}")]
    Via {
        /// The jump host.
        jump: String,
        /// What went wrong there.
        cause: String,
        /// `host:port` of the jump host (or the next hop) if it could not be reached.
        unreachable: Option<String>,
    },
    /// The channel closed without an exit status or signal.
    #[error("the command ended without an exit status (connection lost?)")]
    NoExitStatus,
    /// The SSH protocol failed.
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
}

impl SshError {
    /// A copy of a jump host's failure, for another target behind it.
    pub(crate) fn shared(&self) -> SshError {
        match self {
            SshError::Via {
                jump,
                cause,
                unreachable,
            } => SshError::Via {
                jump: jump.clone(),
                cause: cause.clone(),
                unreachable: unreachable.clone(),
            },
            other => SshError::Via {
                jump: String::new(),
                cause: other.to_string(),
                unreachable: None,
            },
        }
    }

    /// Whether the host (or a jump host on the way) could not be reached: what
    /// [`SshError::into_outcome`] makes [`Outcome::Unreachable`].
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SshError::Connect { .. }
                | SshError::Protocol(russh::Error::IO(_))
                | SshError::HandshakeTimeout { .. }
                | SshError::Via {
                    unreachable: Some(_),
                    ..
                }
        )
    }

    /// The outcome of a delivery that failed this way: connection failures (here or at a
    /// jump host) are [`Outcome::Unreachable`]; anything else (host keys,
    /// authentication, protocol) is [`Outcome::Failed`].
    pub fn into_outcome(self, target: &Target) -> Outcome {
        match self {
            SshError::Connect { address, cause } => Outcome::Unreachable { address, cause },
            SshError::Protocol(russh::Error::IO(e)) => Outcome::Unreachable {
                address: target.address(),
                cause: e.to_string(),
            },
            e @ SshError::HandshakeTimeout { .. } => Outcome::Unreachable {
                address: target.address(),
                cause: e.to_string(),
            },
            e @ SshError::Via {
                unreachable: Some(_),
                ..
            } => {
                let SshError::Via {
                    unreachable: Some(address),
                    ..
                } = &e
                else {
                    return Outcome::Failed(e.to_string());
                };
                Outcome::Unreachable {
                    address: address.clone(),
                    cause: e.to_string(),
                }
            }
            other => Outcome::Failed(other.to_string()),
        }
    }
}

/// Counts of hosts by stage, for a progress display.
#[derive(Debug, Default)]
pub struct SshStats {
    /// Deliveries started.
    pub started: AtomicUsize,
    /// Hosts connected and authenticated.
    pub connected: AtomicUsize,
    /// Commands running now.
    pub running: AtomicUsize,
    /// Deliveries finished (any outcome).
    pub done: AtomicUsize,
    /// Passphrase prompts open now (a display should stay out of their way).
    pub prompting: AtomicUsize,
}

impl SshStats {
    /// Whether a passphrase prompt is open on the terminal.
    pub fn prompting(&self) -> bool {
        self.prompting.load(Ordering::Relaxed) > 0
    }

    /// `(started, connected, running, done)`.
    pub fn snapshot(&self) -> (usize, usize, usize, usize) {
        (
            self.started.load(Ordering::Relaxed),
            self.connected.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
        )
    }
}

/// A key file as loaded: the key, nothing (a default file that does not exist), or why
/// it is unusable.
type LoadedKey = Result<Option<Arc<PrivateKey>>, String>;

/// Delivers `run` orders to SSH hosts.
pub struct SshTransport {
    shared: Arc<Shared>,
}

/// The state every connection of a run shares (the host-key handlers hold it too).
pub(crate) struct Shared {
    options: SshOptions,
    config: SshConfig,
    known: RwLock<KnownHosts>,
    /// Hosts' own known_hosts files (`UserKnownHostsFile`), by path, read when first
    /// needed.
    known_files: RwLock<HashMap<PathBuf, KnownHosts>>,
    /// Where new host keys go.
    known_file: PathBuf,
    /// Serialises appends to `known_file`.
    learn: std::sync::Mutex<()>,
    keys: tokio::sync::Mutex<HashMap<PathBuf, LoadedKey>>,
    /// Jump-host connections, by chain (`a,b,` for `ProxyJump a,b`), shared by every
    /// target behind them: each jump host is connected to and authenticated once.
    jumps: tokio::sync::Mutex<HashMap<String, Arc<JumpCell>>>,
    stats: Arc<SshStats>,
    /// Cluster locks held by this process's sessions.
    locks: lock::Locks,
    /// `sync`: the runs' meeting points.
    hubs: upload::Hubs,
    /// Cancelled by [`SshTransport::interrupt`]: running commands are signalled.
    interrupt: tokio_util::sync::CancellationToken,
    /// Most output kept per command for its reply's `content` (see
    /// [`SshTransport::keep_output`]).
    content_limit: AtomicUsize,
}

/// A jump host's connection, made once by the first target that needs it.
type JumpCell = tokio::sync::OnceCell<Result<Arc<session::JumpHandle>, SshError>>;

impl SshTransport {
    /// Reads the configuration and known_hosts files.
    pub fn new(options: SshOptions) -> Result<SshTransport, SshError> {
        let config = match &options.config_file {
            Some(path) => SshConfig::load(path, false, &options.home)?,
            None => SshConfig::load(&options.home.join(".ssh/config"), true, &options.home)?,
        };
        let mut known = KnownHosts::default();
        let known_file = match &options.known_hosts {
            Some(path) => path.clone(),
            None => {
                known.load(Path::new("/etc/ssh/ssh_known_hosts"))?;
                options.home.join(".ssh/known_hosts")
            }
        };
        known.load(&known_file)?;
        for (keyword, file, line) in config.unsupported() {
            tracing::warn!(
                keyword = %keyword,
                at = %format!("{}:{line}", file.display()),
                "ssh config: keyword not supported; ignored"
            );
        }
        let shared = Shared {
            options,
            config,
            known: RwLock::new(known),
            known_files: RwLock::new(HashMap::new()),
            known_file,
            learn: std::sync::Mutex::new(()),
            keys: tokio::sync::Mutex::new(HashMap::new()),
            jumps: tokio::sync::Mutex::new(HashMap::new()),
            stats: Arc::new(SshStats::default()),
            locks: lock::Locks::default(),
            hubs: upload::Hubs::default(),
            interrupt: tokio_util::sync::CancellationToken::new(),
            content_limit: AtomicUsize::new(session::MAX_CONTENT),
        };
        Ok(SshTransport {
            shared: Arc::new(shared),
        })
    }

    /// The counters of this transport's deliveries.
    pub fn stats(&self) -> Arc<SshStats> {
        Arc::clone(&self.shared.stats)
    }

    /// The options.
    pub fn options(&self) -> &SshOptions {
        &self.shared.options
    }

    /// Where `target` leads: `user@host:port` with the SSH configuration applied, the
    /// same for every spelling of one host (the client counts each host once).
    pub fn endpoint(&self, target: &Target) -> String {
        self.shared.endpoint(target)
    }

    /// Keeps at most `bytes` of each command's output for its reply's `content`
    /// (default [`session::MAX_CONTENT`]); the lines are streamed as events regardless.
    /// A caller that prints the lines as they come and needs only the exit codes sets
    /// 0, so that no host's output stays in memory once printed.
    pub fn keep_output(&self, bytes: usize) {
        self.shared.content_limit.store(bytes, Ordering::Relaxed);
    }

    /// Interrupts every command running through this transport (the user pressed
    /// Ctrl-C): each gets SIGINT, then SIGKILL if it has not ended within
    /// [`session::KILL_AFTER`], so that nothing keeps running on the hosts; the
    /// deliveries then end as usual, with the commands' codes (130 for SIGINT).
    pub fn interrupt(&self) {
        self.shared.interrupt.cancel();
    }
}

impl Shared {
    async fn deliver_run(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> Outcome {
        match request.order.as_str() {
            "run" => {}
            "lock" | "unlock" => {
                let work = self.deliver_lock(target, request);
                return self.bounded(target, work).await;
            }
            "upload" | "sync" => {
                let work = self.deliver_upload(target, request, &events);
                return self.bounded(target, work).await;
            }
            "health" => {
                let work = self.deliver_health(target, request);
                return self.bounded(target, work).await;
            }
            "fetch" => {
                let work = self.deliver_fetch(target, request, &events);
                return self.bounded(target, work).await;
            }
            "tasks" => {
                let work = self.deliver_tasks(target, request);
                return self.bounded(target, work).await;
            }
            other => {
                return Outcome::Reply(Reply::error(
                    501,
                    format!(
                        "order {other:?} is not available over SSH (only run, upload, sync, lock, unlock, health, fetch, tasks)"
                    ),
                ))
            }
        }
        if request.argv.is_empty() {
            return Outcome::Reply(Reply::error(400, "run needs a command"));
        }
        let stdin = match crate::order::run::stdin(request) {
            Ok(stdin) => stdin,
            Err(reply) => return Outcome::Reply(reply),
        };
        let command = lines::remote_command(&request.argv, request.sudo);
        let task = match request.background {
            true => match crate::order::tasks::new_id() {
                Some(id) => Some(id),
                None => {
                    return Outcome::Reply(Reply::error(
                        500,
                        "tasks: no random source for a task id",
                    ))
                }
            },
            false => None,
        };
        let command = match &task {
            Some(id) => lines::shell(&tasks::start_script(id, &command), false),
            None => command,
        };
        let (command, waiting) = match request.at {
            // The host waits on its own clock, once connected: nothing but a fork lies
            // between the end of its wait and the command, whereas a wait here would
            // add each host's channel set-up and one-way latency after it.
            Some(at) => (
                format!(
                    "sh -c {} && {command}",
                    lines::quote(&lines::wait_until(at, request.max_wait))
                ),
                crate::order::at::wait_of(Some(at), request.max_wait, crate::order::at::now_ms()),
            ),
            None => (command, Duration::ZERO),
        };
        let work = async {
            let session = match self.connect_all_or_none(target, request).await? {
                Ok(session) => session,
                Err(reply) => return Ok(reply),
            };
            self.stats.connected.fetch_add(1, Ordering::Relaxed);
            // As orgalorg: a terminal for a command given no input (unless turned off).
            let pty = self.options.pty && stdin.is_none() && !request.background;
            let reply = session::run(&session, &command, stdin, pty, &events, self).await?;
            Ok(match &task {
                Some(id) => lines::background_started(reply, id, &request.argv.join(" ")),
                None => reply,
            })
        };
        self.bounded_after(target, work, waiting).await
    }

    /// Runs `work` within the deadline, if one is set. At the deadline its commands
    /// are interrupted like on Ctrl-C (see [`session::exec`]), and given
    /// [`session::KILL_AFTER`] and a little more to end, so that nothing keeps running
    /// on the host after its delivery timed out.
    async fn bounded(
        &self,
        target: &Target,
        work: impl std::future::Future<Output = Result<Reply, SshError>>,
    ) -> Outcome {
        self.bounded_after(target, work, Duration::ZERO).await
    }

    /// [`Shared::bounded`] with the deadline moved `waiting` later (a timed run's wait
    /// for its instant).
    async fn bounded_after(
        &self,
        target: &Target,
        work: impl std::future::Future<Output = Result<Reply, SshError>>,
        waiting: Duration,
    ) -> Outcome {
        let token = self.interrupt.child_token();
        let work = session::DELIVERY.scope(token.clone(), work);
        tokio::pin!(work);
        let result = match self.options.deadline.map(|d| d + waiting) {
            None => work.await,
            Some(deadline) => match tokio::time::timeout(deadline, &mut work).await {
                Ok(result) => result,
                Err(_) => {
                    token.cancel();
                    let grace = session::KILL_AFTER + Duration::from_secs(2);
                    let _ = tokio::time::timeout(grace, &mut work).await;
                    return Outcome::Timeout(deadline);
                }
            },
        };
        match result {
            Ok(reply) => Outcome::Reply(reply),
            Err(e) => e.into_outcome(target),
        }
    }
}

impl Transport for SshTransport {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let shared = &self.shared;
            shared.stats.started.fetch_add(1, Ordering::Relaxed);
            let outcome = shared.deliver_run(target, request, events).await;
            shared.stats.done.fetch_add(1, Ordering::Relaxed);
            outcome
        })
    }

    /// Connects and authenticates (through the jump hosts, if any), then closes: the
    /// connect stage of a strict run that mixes SSH hosts with agents or goes through
    /// a proxy ([`crate::gate`]). Among themselves, the SSH hosts of a run meet at the
    /// hub's barrier instead (`connect_all_or_none`), on the connection they run on.
    fn connect<'a>(
        &'a self,
        target: &'a Target,
        _request: &'a Request,
    ) -> BoxFuture<'a, Result<(), Outcome>> {
        Box::pin(async move {
            let shared = &self.shared;
            let work = async {
                shared.connect(target).await?;
                Ok(Reply::empty(200))
            };
            match shared.bounded(target, work).await {
                Outcome::Reply(_) => Ok(()),
                other => Err(other),
            }
        })
    }
}
