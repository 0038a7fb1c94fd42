//! One SSH connection: reaching the host (directly, or through `ProxyJump` hops),
//! checking its key, authenticating, and running a command on a session channel.
//!
//! ```text
//! hop 1:  TCP ─► handshake ─► auth                    (each hop resolved in ssh_config)
//! hop 2:  hop 1 direct-tcpip channel ─► handshake ─► auth
//! target: last hop's direct-tcpip channel (or TCP) ─► handshake ─► auth
//! run:    session channel ─► exec ─► data/extended-data*, exit-status, eof, close
//! ```
//!
//! Authentication tries, in order, each key of the ssh-agent, the key files (read once
//! per run, passphrase asked once), then the password if one was given; the error names
//! everything that was tried. A jump host's own `ProxyJump` is not followed (the chain
//! is the target's). Jump connections are shared: every target behind the same chain
//! opens its `direct-tcpip` channel over one authenticated connection per hop, made
//! by the first target that needs it (its failure is every such target's failure).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{
    decode_secret_key, Algorithm, EcdsaCurve, HashAlg, PrivateKey, PrivateKeyWithHashAlg,
    PublicKeyOrCertificate,
};
use russh::{kex, ChannelMsg, ChannelWriteHalf, Preferred, Pty, Sig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{lookup_host, TcpStream};
use tokio::sync::mpsc;

use super::config::{expand_path, StrictHostKeys, Tokens};
use super::known_hosts::{self, Check, KnownHosts};
use super::lines::LineSplitter;
use super::{Shared, SshError, SshStats};
use crate::order::run::ran as ran_body;
use crate::order::Reply;
use crate::target::{Target, SSH_DEFAULT_PORT, SSH_PREFIX};
use crate::wire::message::{Event, Stream, TaggedEvent};

tokio::task_local! {
    /// The interrupt of the delivery being run (see `Shared::bounded`).
    pub(super) static DELIVERY: tokio_util::sync::CancellationToken;
}

/// How long an interrupted command has to end after SIGINT before it gets SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(3);

/// Most output kept for the reply's `content` (lines are streamed regardless).
pub const MAX_CONTENT: usize = 16 << 20;

/// Key exchanges offered, fastest first: curve25519 costs a fraction of the CPU of the
/// post-quantum hybrids (perf-notes), which stay as fallbacks.
const KEX: &[kex::Name] = &[
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::MLKEM768X25519_SHA256,
    kex::DH_GEX_SHA256,
    kex::DH_G16_SHA512,
    kex::DH_G14_SHA256,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

/// Host key types asked for, in order (those known for the host go first).
const HOST_KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// Where one hop goes and as whom.
#[derive(Debug, Clone)]
struct Hop {
    /// The host as the user named it (messages).
    label: String,
    /// The name or address connected to (and looked up in known_hosts).
    host: String,
    port: u16,
    user: String,
    identities: Vec<(PathBuf, bool)>,
    /// `ProxyCommand`, expanded: run to reach the host (when there is no jump host).
    proxy_command: Option<String>,
    /// `ForwardAgent yes`.
    forward_agent: bool,
    /// `UserKnownHostsFile`, expanded: this hop's known_hosts instead of the run's.
    known_file: Option<PathBuf>,
    /// `StrictHostKeyChecking`.
    strict: Option<StrictHostKeys>,
}

/// An authenticated connection, with the jump connections it runs through.
pub struct Session {
    handle: Handle<Checker>,
    _jumps: Vec<Arc<JumpHandle>>,
    /// Ask for the ssh-agent to be forwarded on each command's channel.
    forward_agent: bool,
}

impl Session {
    /// Opens a session channel.
    pub(super) async fn channel(&self) -> Result<russh::Channel<client::Msg>, SshError> {
        Ok(self.handle.channel_open_session().await?)
    }
}

/// A connection to a jump host, shared by the targets behind it.
pub type JumpHandle = Handle<Checker>;

/// The russh handler: checks the host key against known_hosts.
pub struct Checker {
    shared: Arc<Shared>,
    host: String,
    port: u16,
    /// This hop's `UserKnownHostsFile`, if any.
    known_file: Option<PathBuf>,
    /// This hop's `StrictHostKeyChecking`, if any.
    strict: Option<StrictHostKeys>,
    /// Serve the server's agent channels from this ssh-agent (`ForwardAgent`).
    agent: Option<PathBuf>,
}

impl Shared {
    /// Connects and authenticates to `target`, through its jump hosts if any.
    pub(super) async fn connect(self: &Arc<Self>, target: &Target) -> Result<Session, SshError> {
        let port = target.port_given().then_some(target.port);
        let hop = self.hop(
            &target.host,
            target.user.as_deref(),
            port,
            &target.to_string(),
        );
        let resolved = self.config.resolve(&target.host);
        let mut jumps: Vec<Arc<JumpHandle>> = Vec::new();
        let mut chain = String::new();
        for spec in &resolved.proxy_jump {
            chain.push_str(spec);
            chain.push(',');
            let cell = {
                let mut shared = self.jumps.lock().await;
                Arc::clone(shared.entry(chain.clone()).or_default())
            };
            let previous = jumps.last().cloned();
            let handle = cell
                .get_or_init(|| self.jump(spec, previous))
                .await
                .as_ref()
                .map(Arc::clone)
                .map_err(SshError::shared)?;
            jumps.push(handle);
        }
        let handle = match jumps.last() {
            None => match &hop.proxy_command {
                Some(command) => {
                    let stream = proxy_command(command, &hop)?;
                    self.handshake(&hop, stream).await?
                }
                None => {
                    let tcp = self.tcp(&hop.host, hop.port).await?;
                    self.handshake(&hop, tcp).await?
                }
            },
            Some(previous) => {
                let stream = tunnel(previous, &hop).await?;
                self.handshake(&hop, stream).await?
            }
        };
        Ok(Session {
            handle,
            _jumps: jumps,
            forward_agent: hop.forward_agent && self.options.agent_socket.is_some(),
        })
    }

    /// `user@host:port` that `target` reaches once the configuration is applied, so
    /// that spellings of one host (`ssh://h`, `ssh://h:22`, `ssh://me@h`) compare equal.
    pub(super) fn endpoint(&self, target: &Target) -> String {
        let port = target.port_given().then_some(target.port);
        let hop = self.hop(&target.host, target.user.as_deref(), port, "");
        format!(
            "{}@{}:{}",
            hop.user,
            hop.host.to_ascii_lowercase(),
            hop.port
        )
    }

    /// `[user@host:port]`: the host as written, with the user and port it is reached
    /// with (from the target, else ssh_config, else the defaults).
    pub(super) fn node_name(&self, target: &Target) -> String {
        let port = target.port_given().then_some(target.port);
        let hop = self.hop(&target.host, target.user.as_deref(), port, "");
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        format!("[{}@{host}:{}]", hop.user, hop.port)
    }

    /// A hop for `host` (as written), with the configuration applied under what the
    /// user wrote.
    fn hop(&self, host: &str, user: Option<&str>, port: Option<u16>, label: &str) -> Hop {
        let config = self.config.resolve(host);
        let name = config.host_name.unwrap_or_else(|| host.to_owned());
        let port = port.or(config.port).unwrap_or(SSH_DEFAULT_PORT);
        let user = user
            .map(str::to_owned)
            .or(config.user)
            .or_else(|| self.options.default_user.clone())
            .unwrap_or_else(|| self.options.local_user.clone());
        let tokens = Tokens {
            home: &self.options.home,
            local_user: &self.options.local_user,
            host: &name,
            user: &user,
            port,
        };
        let mut identities: Vec<(PathBuf, bool)> = self
            .options
            .identities
            .iter()
            .map(|p| (p.clone(), true))
            .collect();
        identities.extend(
            config
                .identity_files
                .iter()
                .map(|raw| (expand_path(raw, &tokens), true)),
        );
        if identities.is_empty() {
            for default in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                identities.push((self.options.home.join(".ssh").join(default), false));
            }
        }
        let proxy_command = config
            .proxy_command
            .as_deref()
            .map(|raw| expand_path(raw, &tokens).to_string_lossy().into_owned());
        // The command line's --known-hosts wins over the file's.
        let known_file = match &self.options.known_hosts {
            Some(_) => None,
            None => config
                .known_hosts
                .as_deref()
                .map(|raw| expand_path(raw, &tokens)),
        };
        if config.forward_agent && self.options.agent_socket.is_none() {
            tracing::warn!(host = %host, "ForwardAgent yes, but no ssh-agent (SSH_AUTH_SOCK): not forwarded");
        }
        Hop {
            label: label.to_owned(),
            host: name,
            port,
            user,
            identities,
            proxy_command,
            forward_agent: config.forward_agent,
            known_file,
            strict: config.strict_host_keys,
        }
    }

    /// Connects to the jump host `spec`, directly or through `previous`; errors are
    /// [`SshError::Via`], to be shared by every target behind it.
    async fn jump(
        self: &Arc<Self>,
        spec: &str,
        previous: Option<Arc<JumpHandle>>,
    ) -> Result<Arc<JumpHandle>, SshError> {
        let attempt = async {
            let jump = self.jump_hop(spec)?;
            match previous {
                None => {
                    let tcp = self.tcp(&jump.host, jump.port).await?;
                    self.handshake(&jump, tcp).await
                }
                Some(previous) => {
                    let stream = tunnel(&previous, &jump).await?;
                    self.handshake(&jump, stream).await
                }
            }
        };
        match attempt.await {
            Ok(handle) => Ok(Arc::new(handle)),
            Err(SshError::Connect { address, cause }) => Err(SshError::Via {
                jump: spec.to_owned(),
                cause,
                unreachable: Some(address),
            }),
            Err(e) => Err(SshError::Via {
                jump: spec.to_owned(),
                cause: e.to_string(),
                unreachable: None,
            }),
        }
    }

    fn jump_hop(&self, spec: &str) -> Result<Hop, SshError> {
        let url = if spec.to_ascii_lowercase().starts_with(SSH_PREFIX) {
            spec.to_owned()
        } else {
            format!("{SSH_PREFIX}{spec}")
        };
        let target = Target::parse(&url, SSH_DEFAULT_PORT).map_err(|e| SshError::Jump {
            spec: spec.to_owned(),
            reason: e.reason,
        })?;
        let port = target.port_given().then_some(target.port);
        Ok(self.hop(&target.host, target.user.as_deref(), port, spec))
    }

    /// A TCP connection with `TCP_NODELAY` (and quick ACKs), within the connect timeout.
    async fn tcp(&self, host: &str, port: u16) -> Result<QuickAck, SshError> {
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let fail = |cause: String| SshError::Connect {
            address: address.clone(),
            cause,
        };
        let attempt = async {
            let mut last = None;
            for addr in lookup_host((host, port)).await? {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")
            }))
        };
        let stream = match tokio::time::timeout(self.options.connect_timeout, attempt).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => {
                return Err(fail(format!(
                    "connect timeout ({} s)",
                    crate::transport::seconds(self.options.connect_timeout)
                )))
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(cause = %e, "TCP_NODELAY");
        }
        Ok(QuickAck(stream))
    }

    fn client_config(&self, hop: &Hop) -> Arc<client::Config> {
        let known = self.with_known(hop.known_file.as_deref(), |k| {
            k.algorithms(&hop.host, hop.port)
        });
        let mut keys: Vec<Algorithm> = Vec::new();
        for algorithm in known {
            if matches!(algorithm, Algorithm::Rsa { .. }) {
                for rsa in HOST_KEYS
                    .iter()
                    .filter(|a| matches!(a, Algorithm::Rsa { .. }))
                {
                    if !keys.contains(rsa) {
                        keys.push(rsa.clone());
                    }
                }
            } else if HOST_KEYS.contains(&algorithm) && !keys.contains(&algorithm) {
                keys.push(algorithm);
            }
        }
        for algorithm in HOST_KEYS {
            if !keys.contains(algorithm) {
                keys.push(algorithm.clone());
            }
        }
        Arc::new(client::Config {
            preferred: Preferred {
                kex: KEX.into(),
                key: keys.into(),
                ..Preferred::default()
            },
            keepalive_interval: self.options.keepalive,
            keepalive_max: 3,
            nodelay: true,
            ..client::Config::default()
        })
    }

    /// Handshake and authentication over `stream`.
    async fn handshake<S>(
        self: &Arc<Self>,
        hop: &Hop,
        stream: S,
    ) -> Result<Handle<Checker>, SshError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let checker = Checker {
            shared: Arc::clone(self),
            host: hop.host.clone(),
            port: hop.port,
            known_file: hop.known_file.clone(),
            strict: hop.strict,
            agent: self
                .options
                .agent_socket
                .clone()
                .filter(|_| hop.forward_agent),
        };
        let config = self.client_config(hop);
        let limit = self.options.connect_timeout;
        let mut handle = match tokio::time::timeout(
            limit,
            client::connect_stream(config, stream, checker),
        )
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                return Err(SshError::HandshakeTimeout {
                    host: hop.label.clone(),
                    after: limit,
                })
            }
        };
        self.authenticate(&mut handle, hop).await?;
        Ok(handle)
    }

    async fn authenticate(&self, handle: &mut Handle<Checker>, hop: &Hop) -> Result<(), SshError> {
        let mut tried: Vec<String> = Vec::new();
        let mut rsa_hash: Option<Option<HashAlg>> = None;
        if let Some(socket) = &self.options.agent_socket {
            match AgentClient::connect_uds(socket).await {
                Err(e) => tracing::debug!(cause = %e, "ssh-agent not reachable"),
                Ok(mut agent) => match agent.request_identities().await {
                    Err(e) => tracing::debug!(cause = %e, "ssh-agent: no identities"),
                    Ok(identities) => {
                        for identity in identities {
                            let AgentIdentity::PublicKey { key, comment } = identity else {
                                continue;
                            };
                            let hash = if key.algorithm().is_rsa() {
                                rsa(handle, &mut rsa_hash).await
                            } else {
                                None
                            };
                            let name = if comment.is_empty() {
                                known_hosts::fingerprint(&key)
                            } else {
                                comment
                            };
                            match handle
                                .authenticate_publickey_with(&hop.user, key, hash, &mut agent)
                                .await
                            {
                                Ok(result) if result.success() => return Ok(()),
                                Ok(_) => tried.push(format!("agent key {name}")),
                                Err(e) => tried.push(format!("agent key {name} ({e})")),
                            }
                        }
                    }
                },
            }
        }
        for (path, explicit) in &hop.identities {
            let key = match self.key(path, *explicit).await {
                Ok(Some(key)) => key,
                Ok(None) => continue,
                Err(why) => {
                    tried.push(format!("{} ({why})", path.display()));
                    continue;
                }
            };
            let hash = if key.algorithm().is_rsa() {
                rsa(handle, &mut rsa_hash).await
            } else {
                None
            };
            let result = handle
                .authenticate_publickey(&hop.user, PrivateKeyWithHashAlg::new(key, hash))
                .await?;
            if result.success() {
                return Ok(());
            }
            tried.push(path.display().to_string());
        }
        if let Some(password) = &self.options.password {
            if handle
                .authenticate_password(&hop.user, password)
                .await?
                .success()
            {
                return Ok(());
            }
            tried.push("password".to_owned());
            // Servers that check passwords through PAM ask for them this way.
            if keyboard_interactive(handle, &hop.user, password).await? {
                return Ok(());
            }
            tried.push("keyboard-interactive".to_owned());
        }
        Err(SshError::Auth {
            user: hop.user.clone(),
            host: hop.label.clone(),
            tried: if tried.is_empty() {
                "no key found: give --identity, start ssh-agent, or --password".to_owned()
            } else {
                tried.join(", ")
            },
        })
    }

    /// The key in `path`, read once per run. A missing file is `None` unless `explicit`.
    async fn key(&self, path: &Path, explicit: bool) -> Result<Option<Arc<PrivateKey>>, String> {
        let mut keys = self.keys.lock().await;
        if let Some(loaded) = keys.get(path) {
            return loaded.clone();
        }
        let prompt = self.options.passphrase.clone().map(|ask| {
            let stats = Arc::clone(&self.stats);
            let wrapped: super::PassphrasePrompt = Arc::new(move |path: &Path| {
                stats.prompting.fetch_add(1, Ordering::Relaxed);
                let answer = ask(path);
                stats.prompting.fetch_sub(1, Ordering::Relaxed);
                answer
            });
            wrapped
        });
        let owned = path.to_owned();
        let loaded = tokio::task::spawn_blocking(move || load_key(&owned, explicit, prompt))
            .await
            .unwrap_or_else(|e| Err(format!("internal error: {e}")));
        keys.insert(path.to_owned(), loaded.clone());
        loaded
    }

    /// Runs `f` on the known hosts of `file` (a `UserKnownHostsFile`, read once; an
    /// unreadable one is empty, with a warning), or on the run's when `None`.
    fn with_known<R>(&self, file: Option<&Path>, f: impl FnOnce(&KnownHosts) -> R) -> R {
        let Some(file) = file else {
            return f(&self.known.read().unwrap_or_else(PoisonError::into_inner));
        };
        {
            let stores = self
                .known_files
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(store) = stores.get(file) {
                return f(store);
            }
        }
        let mut store = KnownHosts::default();
        if let Err(e) = store.load(file) {
            tracing::warn!(cause = %e, "UserKnownHostsFile not read");
        }
        let mut stores = self
            .known_files
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        f(stores.entry(file.to_owned()).or_insert(store))
    }

    /// The host-key verdict for `host`/`port`, appending a new key if so configured.
    fn check_key(
        &self,
        host: &str,
        port: u16,
        key: &PublicKeyOrCertificate,
        file: Option<&Path>,
        strict: Option<StrictHostKeys>,
    ) -> Result<(), SshError> {
        let name = known_hosts::lookup_name(host, port);
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return Err(SshError::HostCertificate { host: name })
            }
        };
        let verdict = self.with_known(file, |k| k.check(host, port, key));
        let known_file = file.unwrap_or(&self.known_file).to_owned();
        // --accept-new-host-keys, or the file's StrictHostKeyChecking accept-new/no.
        let accept_new = self.options.accept_new_host_keys
            || matches!(strict, Some(StrictHostKeys::AcceptNew | StrictHostKeys::No));
        let fingerprint = known_hosts::fingerprint(key);
        let algorithm = key.algorithm().to_string();
        match verdict {
            Check::Known => Ok(()),
            Check::Changed { file, line } => Err(SshError::HostKeyChanged {
                host: name,
                algorithm,
                fingerprint,
                file,
                line,
            }),
            Check::Revoked { file, line } => Err(SshError::HostKeyRevoked {
                host: name,
                fingerprint,
                file,
                line,
            }),
            Check::Unknown if !accept_new => Err(SshError::UnknownHostKey {
                host: name,
                algorithm,
                fingerprint,
                file: known_file,
            }),
            Check::Unknown => {
                let _guard = self.learn.lock().unwrap_or_else(PoisonError::into_inner);
                // Another connection to the same host may have just learned it.
                let again = self.with_known(file, |k| k.check(host, port, key));
                if again == Check::Known {
                    return Ok(());
                }
                known_hosts::append(&known_file, host, port, key).map_err(|cause| {
                    SshError::Learn {
                        host: name.clone(),
                        file: known_file.clone(),
                        cause,
                    }
                })?;
                match file {
                    None => self
                        .known
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remember(host, port, key, &known_file),
                    Some(file) => {
                        let mut stores = self
                            .known_files
                            .write()
                            .unwrap_or_else(PoisonError::into_inner);
                        if let Some(store) = stores.get_mut(file) {
                            store.remember(host, port, key, &known_file);
                        }
                    }
                }
                tracing::warn!(host = %name, key = %fingerprint, file = %known_file.display(), "new host key recorded");
                Ok(())
            }
        }
    }
}

/// A TCP stream that acknowledges every segment at once (`TCP_QUICKACK`, which Linux
/// resets by itself, so it is set again after each read).
///
/// sshd leaves Nagle's algorithm on for non-interactive sessions, so when it writes
/// two small packets in a row (debug messages, then the channel confirmation; EOF then
/// exit status), the second waits for the ACK of the first, which a delayed ACK holds
/// back for up to 40 ms: several such stalls per command otherwise.
pub struct QuickAck(TcpStream);

impl QuickAck {
    fn quickack(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let poll = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if poll.is_ready() {
            self.quickack();
        }
        poll
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Keyboard-interactive authentication answering every hidden prompt with `password`
/// (and visible ones with nothing), for at most a few rounds.
async fn keyboard_interactive(
    handle: &mut Handle<Checker>,
    user: &str,
    password: &str,
) -> Result<bool, SshError> {
    use russh::client::KeyboardInteractiveAuthResponse as Response;
    let mut response = handle
        .authenticate_keyboard_interactive_start(user, None)
        .await?;
    for _ in 0..4 {
        match response {
            Response::Success => return Ok(true),
            Response::Failure { .. } => return Ok(false),
            Response::InfoRequest { prompts, .. } => {
                let answers = prompts
                    .iter()
                    .map(|p| {
                        if p.echo {
                            String::new()
                        } else {
                            password.to_owned()
                        }
                    })
                    .collect();
                response = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await?;
            }
        }
    }
    Ok(false)
}

/// The RSA signature hash the server prefers, asked once per connection.
async fn rsa(handle: &Handle<Checker>, cached: &mut Option<Option<HashAlg>>) -> Option<HashAlg> {
    if let Some(hash) = cached {
        return *hash;
    }
    let hash = match handle.best_supported_rsa_hash().await {
        Ok(Some(hash)) => hash,
        _ => Some(HashAlg::Sha256),
    };
    *cached = Some(hash);
    hash
}

/// Reads a private key, asking for its passphrase if it is encrypted.
fn load_key(
    path: &Path,
    explicit: bool,
    prompt: Option<super::PassphrasePrompt>,
) -> super::LoadedKey {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    match decode_secret_key(&text, None) {
        Ok(key) => Ok(Some(Arc::new(key))),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let Some(passphrase) = prompt.and_then(|ask| ask(path)) else {
                return Err("encrypted, and no passphrase could be asked".to_owned());
            };
            decode_secret_key(&text, Some(&passphrase))
                .map(|key| Some(Arc::new(key)))
                .map_err(|e| format!("cannot decrypt: {e}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `ProxyCommand`: `sh -c COMMAND`, whose standard input and output are the
/// connection to `hop` (its standard error is the user's); it is killed with the
/// connection.
fn proxy_command(command: &str, hop: &Hop) -> Result<ProxyStream, SshError> {
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SshError::Connect {
            address: format!("{}:{}", hop.host, hop.port),
            cause: format!("ProxyCommand {command:?}: {e}"),
        })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(SshError::Connect {
            address: format!("{}:{}", hop.host, hop.port),
            cause: format!("ProxyCommand {command:?}: no pipes"),
        });
    };
    Ok(ProxyStream {
        io: tokio::io::join(stdout, stdin),
        _child: child,
    })
}

/// The connection made by a `ProxyCommand`: its pipes, and the process (killed when
/// this is dropped).
pub struct ProxyStream {
    io: tokio::io::Join<tokio::process::ChildStdout, tokio::process::ChildStdin>,
    _child: tokio::process::Child,
}

impl AsyncRead for ProxyStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxyStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A `direct-tcpip` channel from `through` to `hop`, as a byte stream.
async fn tunnel(
    through: &Handle<Checker>,
    hop: &Hop,
) -> Result<impl AsyncRead + AsyncWrite + Unpin + Send + 'static, SshError> {
    let channel = through
        .channel_open_direct_tcpip(hop.host.clone(), u32::from(hop.port), "127.0.0.1", 0)
        .await
        .map_err(|e| SshError::Connect {
            address: format!("{}:{}", hop.host, hop.port),
            cause: e.to_string(),
        })?;
    Ok(channel.into_stream())
}

impl client::Handler for Checker {
    type Error = SshError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, SshError> {
        self.shared.check_key(
            &self.host,
            self.port,
            server_public_key,
            self.known_file.as_deref(),
            self.strict,
        )?;
        Ok(true)
    }

    /// `ForwardAgent`: the server's agent channel is joined to the local ssh-agent;
    /// refused unless forwarding was asked for this host.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), SshError> {
        let Some(socket) = self.agent.clone() else {
            tracing::warn!(host = %self.host, "refused an agent channel: ForwardAgent is off for this host");
            drop(reply);
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(async move {
            match tokio::net::UnixStream::connect(&socket).await {
                Ok(mut agent) => {
                    let mut remote = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut agent, &mut remote).await;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, socket = %socket.display(), "ssh-agent not reachable for forwarding")
                }
            }
        });
        Ok(())
    }
}

/// Runs `command` on a new session channel: `stdin` (if any) is sent then EOF, output
/// lines are streamed as `events`, and the reply carries the exit code. With `pty`, the
/// command runs on a terminal ([`exec`]).
pub(super) async fn run(
    session: &Session,
    command: &str,
    stdin: Option<Vec<u8>>,
    pty: bool,
    events: &mpsc::Sender<TaggedEvent>,
    shared: &Shared,
) -> Result<Reply, SshError> {
    let feed = |writer: Arc<ChannelWriteHalf<client::Msg>>| async move {
        if let Some(bytes) = stdin {
            writer.data_bytes(bytes).await.map_err(|e| e.to_string())?;
        }
        Ok(true)
    };
    let ran = exec(session, command, pty, events, shared, feed, |_, _| true).await?;
    if let Err(why) = &ran.fed {
        tracing::debug!(cause = %why, "stdin not fully sent");
    }
    Ok(Reply::ok(ran_body(ran.code, command, &ran.content)))
}

/// How a command ended.
pub(super) struct Ran {
    /// Its exit code (128 + n for signal n).
    pub code: i32,
    /// Its output (stdout and stderr as they came), at most [`MAX_CONTENT`] bytes.
    pub content: Vec<u8>,
    /// What became of its input: `Err` if feeding it failed (the command then read
    /// EOF where its input stopped).
    pub fed: Result<(), String>,
}

/// Runs `command` on a new session channel, feeding its standard input with `feed`
/// (given the channel's writer; `Ok(true)`: send EOF when done, `Ok(false)`: leave the
/// input open) while its output is read: each complete line for which `keep(stream,
/// line)` is true is streamed as an event (the others are consumed by the caller).
///
/// When the transport is interrupted ([`super::SshTransport::interrupt`]), or the
/// delivery's deadline passes, the command
/// gets SIGINT (its process group, which it may handle and report), then SIGKILL if
/// it is still there after [`KILL_AFTER`]: a stop the command can clean up after, whose
/// output is kept, rather than whatever the server does with a command whose
/// connection is gone (OpenSSH 9.2 ends it; servers differ).
///
/// With `pty`, the command gets a terminal (`xterm`, 80×40, echo off, no CR added to
/// newlines), as orgalorg's commands do: a program that buffers its output when not
/// on a terminal streams it line by line, and `tail -f` and the like end with the
/// session. Its standard error is then the terminal too: every line comes as stdout;
/// the end of its input is the terminal's end-of-file character (`^D`).
/// How many times [`exec`] yields before looking at a line that follows a streamed
/// one: at least once for each forwarding stage between its events and the caller's.
const FORWARDING_STAGES: usize = 3;

pub(super) async fn exec<F, Fut>(
    session: &Session,
    command: &str,
    pty: bool,
    events: &mpsc::Sender<TaggedEvent>,
    shared: &Shared,
    feed: F,
    mut keep: impl FnMut(Stream, &str) -> bool,
) -> Result<Ran, SshError>
where
    F: FnOnce(Arc<ChannelWriteHalf<client::Msg>>) -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let channel = session.handle.channel_open_session().await?;
    let (mut reader, writer) = channel.split();
    let writer = Arc::new(writer);
    // The remote login shell's pid (the command's process group: sshd starts it in a
    // session of its own) comes first, on stderr, marked with a secret of this process,
    // so that an interrupt can reach the command. A child `sh` says it as `$PPID`, in
    // syntax that bash, dash, csh and fish all read the same way.
    let mark = pid_mark();
    // A line was streamed since the last look at one (see the yields below).
    let mut sent = false;
    if pty {
        writer
            .request_pty(
                false,
                "xterm",
                80,
                40,
                0,
                0,
                &[(Pty::ECHO, 0), (Pty::ONLCR, 0)],
            )
            .await?;
    }
    if session.forward_agent {
        writer.agent_forward(false).await?;
    }
    // On a terminal the pid line comes on stdout, like everything else.
    let mark_stream = if pty { Stream::Stdout } else { Stream::Stderr };
    writer
        .exec(
            false,
            format!("sh -c 'printf \"{mark} %s\\n\" \"$PPID\" >&2'; {command}"),
        )
        .await?;
    let mut group: Option<u32> = None;
    let mut first_line = true;
    let stats = &*shared.stats;
    stats.running.fetch_add(1, Ordering::Relaxed);
    let running = Running(stats);
    // This delivery's token (cancelled at its deadline, or with the transport's).
    let token = DELIVERY
        .try_with(Clone::clone)
        .unwrap_or_else(|_| shared.interrupt.clone());
    let interrupted = token.cancelled();
    tokio::pin!(interrupted);
    let mut signalled = false;
    let kill = tokio::time::sleep(Duration::MAX);
    tokio::pin!(kill);
    let mut killed = false;
    let feed_writer = Arc::clone(&writer);
    let feed = async move {
        let eof = feed(Arc::clone(&feed_writer)).await?;
        if eof && pty {
            // A terminal has no end of input (sshd ignores EOF on one): its end-of-file
            // character tells a reader, as on a real terminal.
            feed_writer
                .data_bytes(&b"\x04"[..])
                .await
                .map_err(|e| e.to_string())?;
        } else if eof {
            feed_writer.eof().await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    tokio::pin!(feed);
    let mut fed: Option<Result<(), String>> = None;
    let mut out = LineSplitter::default();
    let mut err = LineSplitter::default();
    let mut content: Vec<u8> = Vec::new();
    let limit = shared.content_limit.load(Ordering::Relaxed);
    let mut code: Option<i32> = None;
    loop {
        let message = tokio::select! {
            () = &mut interrupted, if !signalled => {
                signalled = true;
                // sshd refuses `signal` requests for root logins (no privilege
                // separation there), so the process group is also signalled with kill.
                let _ = writer.signal(Sig::INT).await;
                signal_group(session, group, "INT").await;
                kill.as_mut().reset(tokio::time::Instant::now() + KILL_AFTER);
                continue;
            }
            () = &mut kill, if signalled && !killed => {
                killed = true;
                let _ = writer.signal(Sig::KILL).await;
                signal_group(session, group, "KILL").await;
                let _ = writer.eof().await;
                let _ = writer.close().await;
                continue;
            }
            result = &mut feed, if fed.is_none() => {
                if result.is_err() {
                    // End the input where it stopped: tar then fails on the cut
                    // archive, a sync tool reads EOF instead of HELLO. (sshd does not
                    // end a command whose channel we close, so EOF it is.)
                    let _ = writer.eof().await;
                }
                fed = Some(result);
                continue;
            }
            message = reader.wait() => message,
        };
        let Some(message) = message else { break };
        let (stream, data) = match message {
            ChannelMsg::Data { data } => (Stream::Stdout, data),
            ChannelMsg::ExtendedData { data, ext: 1 } => (Stream::Stderr, data),
            ChannelMsg::ExitStatus { exit_status } => {
                code = Some(i32::try_from(exit_status).unwrap_or(255));
                continue;
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                code = Some(128 + signal_number(&signal_name));
                continue;
            }
            ChannelMsg::Close => break,
            _ => continue,
        };
        let splitter = match stream {
            Stream::Stdout => &mut out,
            Stream::Stderr => &mut err,
        };
        for line in splitter.push(&data) {
            let line = if pty { untty(line) } else { line };
            if stream == mark_stream && std::mem::take(&mut first_line) {
                if let Some(pid) = line.strip_prefix(&mark) {
                    group = pid.trim().parse().ok().filter(|&p| p > 1);
                    continue;
                }
            }
            if std::mem::take(&mut sent) {
                // `keep` may act on this line at once (a sync tool's SYNC releases the
                // other hosts), so let the lines sent before it reach the caller first:
                // they go through the fan-out's forwarding, which runs in this task and
                // is polled once per yield (the other yields leave room for a caller
                // that adds a stage of its own, as the napp script's filter does).
                for _ in 0..FORWARDING_STAGES {
                    tokio::task::yield_now().await;
                }
            }
            if keep(stream, &line) {
                keep_content(&mut content, &line, limit);
                let _ = events
                    .send(TaggedEvent::from(Event::Line {
                        stream,
                        line,
                        partial: false,
                    }))
                    .await;
                sent = true;
            }
        }
    }
    drop(running);
    for (stream, splitter) in [(Stream::Stdout, &mut out), (Stream::Stderr, &mut err)] {
        if let Some(line) = splitter.finish() {
            let line = if pty { untty(line) } else { line };
            if keep(stream, &line) {
                keep_content(&mut content, &line, limit);
                let _ = events
                    .send(TaggedEvent::from(Event::Line {
                        stream,
                        line,
                        partial: true,
                    }))
                    .await;
            }
        }
    }
    let fed = fed.unwrap_or(Ok(()));
    match (code, fed) {
        (Some(code), fed) => Ok(Ran { code, content, fed }),
        (None, Err(why)) => Ok(Ran {
            code: 255,
            content,
            fed: Err(why),
        }),
        (None, Ok(())) => Err(SshError::NoExitStatus),
    }
}

/// A line read from a terminal without the carriage return a program may have put
/// before its newline.
fn untty(mut line: String) -> String {
    if line.ends_with('\r') {
        line.pop();
    }
    line
}

/// Appends `line` and a newline to `content`, up to `limit` bytes.
fn keep_content(content: &mut Vec<u8>, line: &str, limit: usize) {
    let room = limit.saturating_sub(content.len());
    let bytes = line.as_bytes();
    content.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    if content.len() < limit {
        content.push(b'\n');
    }
}

/// The marker of the remote shell's pid line: `DEPLOY-PID-<random>`, drawn once per
/// process (a command cannot guess it to pass off another pid).
fn pid_mark() -> String {
    static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARK.get_or_init(|| {
        let token = crate::order::lock::Token::generate()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_else(|_| std::process::id().to_string());
        format!("DEPLOY-PID-{token}")
    })
    .clone()
}

/// Sends `signal` to the remote process group `group` (the command's shell and all it
/// started), on a channel of its own; with sudo if the user's own kill is refused
/// (the command ran under `--sudo`).
async fn signal_group(session: &Session, group: Option<u32>, signal: &str) {
    let Some(group) = group else { return };
    let command = format!(
        "kill -s {signal} -- -{group} 2>/dev/null || sudo -n kill -s {signal} -- -{group} 2>/dev/null"
    );
    let attempt = async {
        let channel = session.handle.channel_open_session().await?;
        channel.exec(true, command).await?;
        let (mut reader, _writer) = channel.split();
        while let Some(message) = reader.wait().await {
            if matches!(message, ChannelMsg::Close) {
                break;
            }
        }
        Ok::<(), russh::Error>(())
    };
    match tokio::time::timeout(KILL_AFTER, attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(cause = %e, group, signal, "cannot signal the command"),
        Err(_) => tracing::debug!(group, signal, "signalling the command timed out"),
    }
}

/// Counts a command as running until dropped (also when the deadline cuts it short).
struct Running<'a>(&'a SshStats);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The number of a signal, for the shell's `128 + n` exit code (unknown: 127).
fn signal_number(signal: &Sig) -> i32 {
    match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 127,
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::ssh::{SshOptions, SshTransport};
    use std::sync::atomic::AtomicUsize;

    fn transport(home: &Path, configure: impl FnOnce(&mut SshOptions)) -> SshTransport {
        let mut options = SshOptions::new("me", home);
        options.known_hosts = Some(home.join("known_hosts"));
        configure(&mut options);
        SshTransport::new(options).unwrap()
    }

    #[tokio::test]
    async fn a_passphrase_is_asked_once_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
            .arg(&key)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no ssh-keygen");
            return;
        }
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let t = transport(dir.path(), |o| {
            o.passphrase = Some(Arc::new(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                Some("secret".to_owned())
            }))
        });
        let (a, b) = tokio::join!(t.shared.key(&key, true), t.shared.key(&key, true));
        assert!(matches!(a, Ok(Some(_))), "{a:?}");
        assert!(matches!(b, Ok(Some(_))));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert!(matches!(
            t.shared.key(&dir.path().join("none"), false).await,
            Ok(None)
        ));
        assert!(t.shared.key(&dir.path().join("none2"), true).await.is_err());

        let wrong = transport(dir.path(), |o| {
            o.passphrase = Some(Arc::new(|_| Some("wrong".to_owned())))
        });
        let e = wrong.shared.key(&key, true).await.unwrap_err();
        assert!(e.contains("cannot decrypt"), "{e}");
        let none = transport(dir.path(), |_| {});
        assert!(none.shared.key(&key, true).await.is_err());
    }

    #[test]
    fn hops_apply_the_config_under_what_the_user_wrote() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        std::fs::write(
            dir.path().join(".ssh/config"),
            "Host web1\n HostName 10.0.0.1\n User deploy\n Port 2222\n IdentityFile ~/.ssh/%r_%h\n",
        )
        .unwrap();
        let t = transport(dir.path(), |o| o.known_hosts = None);
        let hop = t.shared.hop("web1", None, None, "ssh://web1");
        assert_eq!(
            (hop.host.as_str(), hop.port, hop.user.as_str()),
            ("10.0.0.1", 2222, "deploy")
        );
        assert_eq!(
            hop.identities,
            vec![(dir.path().join(".ssh/deploy_10.0.0.1"), true)]
        );
        let hop = t.shared.hop("web1", Some("root"), Some(22), "x");
        assert_eq!((hop.port, hop.user.as_str()), (22, "root"));
        let hop = t.shared.hop("other", None, None, "x");
        assert_eq!(
            (hop.host.as_str(), hop.port, hop.user.as_str()),
            ("other", 22, "me")
        );
        assert_eq!(hop.identities.len(), 3);
        assert!(hop.identities.iter().all(|(_, explicit)| !explicit));
        let jump = t.shared.jump_hop("admin@web1:99").unwrap();
        assert_eq!(
            (jump.host.as_str(), jump.port, jump.user.as_str()),
            ("10.0.0.1", 99, "admin")
        );
        assert!(t.shared.jump_hop("a b").is_err());
    }

    /// A test-only host key for the in-process server below.
    const HOST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDbitIQ8r+ssGcv1oA0dBbl/R9dACvWBUagpw/FiP3qmQAAAIgjxq5tI8au
bQAAAAtzc2gtZWQyNTUxOQAAACDbitIQ8r+ssGcv1oA0dBbl/R9dACvWBUagpw/FiP3qmQ
AAAEAb1BbE/UwP6Uwb50ob58t1HjcfSiGFu5euQNU+GnWz6tuK0hDyv6ywZy/WgDR0FuX9
H10AK9YFRqCnD8WI/eqZAAAABHRlc3QB
-----END OPENSSH PRIVATE KEY-----
";
    const HOST_PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINuK0hDyv6ywZy/WgDR0FuX9H10AK9YFRqCnD8WI/eqZ";

    /// An in-process SSH server (russh) that checks a password, by the `password`
    /// method or by keyboard-interactive, and answers `exec` with the command as output
    /// and exit status 3.
    #[derive(Clone)]
    struct PasswordServer {
        keyboard_interactive: bool,
    }

    impl russh::server::Handler for PasswordServer {
        type Error = russh::Error;

        async fn auth_password(
            &mut self,
            user: &str,
            password: &str,
        ) -> Result<russh::server::Auth, Self::Error> {
            Ok(
                if !self.keyboard_interactive && user == "alice" && password == "secret" {
                    russh::server::Auth::Accept
                } else {
                    russh::server::Auth::reject()
                },
            )
        }

        async fn auth_keyboard_interactive<'a>(
            &'a mut self,
            user: &str,
            _submethods: &str,
            response: Option<russh::server::Response<'a>>,
        ) -> Result<russh::server::Auth, Self::Error> {
            if !self.keyboard_interactive || user != "alice" {
                return Ok(russh::server::Auth::reject());
            }
            Ok(match response {
                None => russh::server::Auth::Partial {
                    name: "".into(),
                    instructions: "".into(),
                    prompts: vec![("Password: ".into(), false)].into(),
                },
                Some(mut answers) => match answers.next() {
                    Some(answer) if answer.as_ref() == b"secret" => russh::server::Auth::Accept,
                    _ => russh::server::Auth::reject(),
                },
            })
        }

        async fn channel_open_session(
            &mut self,
            _channel: russh::Channel<russh::server::Msg>,
            reply: russh::server::ChannelOpenHandle,
            _session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            Ok(())
        }

        async fn exec_request(
            &mut self,
            channel: russh::ChannelId,
            data: &[u8],
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            let mut line = data.to_vec();
            line.push(b'\n');
            session.data(channel, line)?;
            session.exit_status_request(channel, 3)?;
            session.eof(channel)?;
            session.close(channel)?;
            Ok(())
        }
    }

    /// Serves [`PasswordServer`] on a loopback port.
    async fn password_server(keyboard_interactive: bool) -> u16 {
        use russh::MethodKind;
        let config = Arc::new(russh::server::Config {
            methods: russh::MethodSet::from(
                &[MethodKind::Password, MethodKind::KeyboardInteractive][..],
            ),
            auth_rejection_time: std::time::Duration::ZERO,
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            keys: vec![decode_secret_key(HOST_KEY, None).unwrap()],
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = PasswordServer {
                    keyboard_interactive,
                };
                let config = Arc::clone(&config);
                tokio::spawn(async move {
                    if let Ok(session) = russh::server::run_stream(config, stream, handler).await {
                        let _ = session.await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn password_and_keyboard_interactive() {
        use crate::order::Request;
        use crate::transport::{Outcome, Transport};
        for keyboard_interactive in [false, true] {
            let port = password_server(keyboard_interactive).await;
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("known_hosts"),
                format!("[127.0.0.1]:{port} {HOST_PUB}\n"),
            )
            .unwrap();
            let request = Request {
                order: "run".into(),
                argv: vec!["echo".into(), "hi".into()],
                ..Request::default()
            };
            let target = Target::parse(&format!("ssh://alice@127.0.0.1:{port}"), 1).unwrap();
            for (password, works) in [("secret", true), ("wrong", false)] {
                let t = transport(dir.path(), |o| o.password = Some(password.to_owned()));
                let (tx, mut rx) = mpsc::channel(8);
                let outcome = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    t.deliver(&target, &request, tx),
                )
                .await
                .expect("in time");
                if works {
                    let reply = outcome.reply().expect("a reply");
                    assert_eq!(reply.content()["code"], "3", "{outcome:?}");
                    // The server echoes the command line it was given: the user's
                    // command, after the shell's pid line.
                    let Some(TaggedEvent {
                        event: Event::Line { stream, line, .. },
                        ..
                    }) = rx.recv().await
                    else {
                        panic!("no line")
                    };
                    assert_eq!(stream, Stream::Stdout);
                    assert!(line.starts_with("sh -c 'printf \"DEPLOY-PID-"), "{line}");
                    assert!(line.ends_with(" >&2'; echo hi"), "{line}");
                } else {
                    let Outcome::Failed(why) = outcome else {
                        panic!("{outcome:?}")
                    };
                    assert!(
                        why.contains("tried: password, keyboard-interactive"),
                        "{why}"
                    );
                }
            }
        }
    }
}
