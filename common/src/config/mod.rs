//! Configuration: the original's INI dialect and the typed configs built from it.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`ini`] | the dialect: lines → sections → entries with line numbers |
//! | this module | [`ConfigError`], [`ServerConfig`] (the `[server]` section agent and proxy share), [`Level`], value parsing |
//! | [`agent`] | [`AgentConfig`] (`deploy_agent.ini`) and [`RsyncGroup`] |
//! | [`jobs`] | [`Jobs`] (`deploy_agent_exec.ini`) and [`JobTemplate`]: argv, never a shell |
//! | [`proxy`] | [`ProxyConfig`] (`deploy_proxy.ini`) and [`ApiKeys`] (`deploy_proxy_api.ini`) |
//! | [`check`] | what `--check` reports beyond syntax; default secrets a daemon refuses |
//! | [`dump`] | the effective configuration as INI (`-T`, `--print-config`), secrets hidden |
//!
//! # Design
//!
//! Files are parsed from `&str` (`parse`) or read from disk (`load`), into plain structs
//! with public fields and documented defaults, so the binaries can let command-line flags
//! override them. Every error names `file:line` and, where there is one, `[section] key`:
//!
//! ```text
//! /etc/deploy/deploy_agent.ini:12: [server] port: invalid number "34x0"
//! ```
//!
//! Unlike the original, which ignored anything it did not know, unknown sections and
//! unknown keys are errors, and a list key written as a scalar (`host = …` instead of
//! `host[] = …`) or the reverse is an error with a hint. Keys the original documented but
//! never used are accepted and reported in an `ignored` list so the binary can warn; this
//! library logs nothing itself.
//!
//! Relative file paths that point at other config or key files (`[jobs] path`,
//! `[api] path`, `ssl_private_key`, `ssl_public_key`) are resolved against the directory
//! of the ini that names them. Log paths are taken as written (they may say `syslog`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub mod agent;
pub mod check;
pub mod dump;
pub mod ini;
pub mod jobs;
pub mod nats;
pub mod proxy;

pub use agent::{AgentConfig, AgentExtras, RsyncGroup, ScenariosConfig};
pub use ini::Ini;
pub use jobs::{JobError, JobTemplate, Jobs};
pub use proxy::{ApiKeys, ProxyClientConfig, ProxyConfig};

use ini::{Entry, Section};

/// Everything that can be wrong with a configuration file.
///
/// The `Display` form always starts with the file (and the line, when there is one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file named by a key (`[jobs] path`, `[api] path`) could not be read.
    #[error("{}:{line}: [{section}] {key}: cannot read {}: {source}", path.display(), target.display())]
    ReadReferenced {
        /// The file containing the key.
        path: PathBuf,
        /// The key's line.
        line: usize,
        /// The key's section.
        section: String,
        /// The key as written.
        key: String,
        /// The file it names, resolved.
        target: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A line is neither a comment, `key = value` nor a `[section]` header, or a key is
    /// outside any section where that is not allowed.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The offending line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A section this kind of file does not have.
    #[error("{}:{line}: unknown section [{section}] (expected {expected})", path.display())]
    UnknownSection {
        /// The file.
        path: PathBuf,
        /// The section's header line.
        line: usize,
        /// The section name.
        section: String,
        /// The sections this file may contain.
        expected: &'static str,
    },
    /// A key this section does not have.
    #[error("{}:{line}: [{section}] {key}: unknown key", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key's line.
        line: usize,
        /// The section.
        section: String,
        /// The key as written (with `[]` for list entries).
        key: String,
    },
    /// A key's value is malformed, out of range, or written in the wrong form.
    #[error("{}:{line}: [{section}] {key}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key's line.
        line: usize,
        /// The section.
        section: String,
        /// The key as written (with `[]` for list entries).
        key: String,
        /// What is wrong, quoting the value.
        reason: String,
    },
    /// A section lacks a key it cannot do without.
    #[error("{}:{line}: [{section}]: missing key {key}", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// The section's header line.
        line: usize,
        /// The section.
        section: String,
        /// The missing key.
        key: &'static str,
    },
}

/// A key that was accepted for compatibility with the original but has no effect.
///
/// The typed configs collect these so the binary can log a warning at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The file.
    pub path: PathBuf,
    /// The key's line.
    pub line: usize,
    /// The section.
    pub section: String,
    /// The key as written.
    pub key: String,
    /// Why it is ignored.
    pub note: &'static str,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: [{}] {}: ignored ({})",
            self.path.display(),
            self.line,
            self.section,
            self.key,
            self.note
        )
    }
}

/// A log severity, named as syslog names them (`log_error_level`).
///
/// Accepted spellings, case-insensitive: `emerg`, `alert`, `crit`, `error`/`err`,
/// `warn`/`warning`, `notice`, `info`, `debug`, or the syslog numbers `0`–`7`
/// (0 = emerg … 7 = debug). The original accepted only names and silently disabled
/// logging when given a number (or `emerg`); we map numbers to their syslog level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// 0: system is unusable.
    Emerg,
    /// 1: action must be taken immediately.
    Alert,
    /// 2: critical conditions.
    Crit,
    /// 3: error conditions.
    Error,
    /// 4: warning conditions.
    Warn,
    /// 5: normal but significant.
    Notice,
    /// 6: informational (the default).
    Info,
    /// 7: debug messages.
    Debug,
}

impl Level {
    /// All levels, most severe first; the index is the syslog number.
    pub const ALL: [Level; 8] = [
        Level::Emerg,
        Level::Alert,
        Level::Crit,
        Level::Error,
        Level::Warn,
        Level::Notice,
        Level::Info,
        Level::Debug,
    ];

    /// The name as the original wrote it (`emerg` … `debug`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Emerg => "emerg",
            Level::Alert => "alert",
            Level::Crit => "crit",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// The syslog priority number (0 = emerg … 7 = debug).
    pub fn syslog_number(self) -> u8 {
        self as u8
    }

    /// The closest `tracing` level: emerg…error → ERROR, warn → WARN,
    /// notice/info → INFO, debug → DEBUG.
    pub fn tracing_level(self) -> tracing::Level {
        match self {
            Level::Emerg | Level::Alert | Level::Crit | Level::Error => tracing::Level::ERROR,
            Level::Warn => tracing::Level::WARN,
            Level::Notice | Level::Info => tracing::Level::INFO,
            Level::Debug => tracing::Level::DEBUG,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`Level::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log level {0:?} (expected emerg, alert, crit, error, warn, notice, info, debug or 0-7)")]
pub struct InvalidLevel(pub String);

impl FromStr for Level {
    type Err = InvalidLevel;

    fn from_str(s: &str) -> Result<Level, InvalidLevel> {
        let level = match s.trim().to_ascii_lowercase().as_str() {
            "emerg" | "0" => Level::Emerg,
            "alert" | "1" => Level::Alert,
            "crit" | "2" => Level::Crit,
            "error" | "err" | "3" => Level::Error,
            "warn" | "warning" | "4" => Level::Warn,
            "notice" | "5" => Level::Notice,
            "info" | "6" => Level::Info,
            "debug" | "7" => Level::Debug,
            _ => return Err(InvalidLevel(s.to_owned())),
        };
        Ok(level)
    }
}

/// Parses a boolean the way the config files spell them: `true|on|1|yes` and
/// `false|off|0|no`, case-insensitive. (The original knew only the first three of each
/// and took anything else as false.)
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Some(true),
        "false" | "off" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Whether `secret` is one nobody should run a daemon with: empty, the built-in
/// `65535` (the original's default, which every stock client also uses) or a sample's
/// `change-me` placeholder (any case, surrounding blanks ignored).
pub fn is_default_secret(secret: &str) -> bool {
    let s = secret.trim();
    s.is_empty()
        || s == crate::legacy::auth::DEFAULT_KEY_CIPHER
        || s.eq_ignore_ascii_case("change-me")
}

/// The `[server]` section, shared by agent and proxy.
///
/// Defaults are those of [`ServerConfig::agent_defaults`] or
/// [`ServerConfig::proxy_defaults`]; where they differ from the original's the field says
/// so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `user`: switch to this user (name or number) after binding. Default: none (stay).
    pub user: Option<String>,
    /// `group`: switch to this group (name or number) after binding. Default: none (stay).
    pub group: Option<String>,
    /// `addr`: the address to listen on. Default `0.0.0.0`.
    pub addr: IpAddr,
    /// `port`: the port to listen on. Default 3440 (agent) / 3441 (proxy).
    pub port: u16,
    /// `listen[]` (new): further `addr:port` listen addresses (`[v6]:port` for IPv6).
    pub listen: Vec<SocketAddr>,
    /// `backlog`: listen(2) backlog. Default 1024.
    pub backlog: u32,
    /// `socket_timeout` (seconds): per-read/write timeout. Default 5 s.
    pub socket_timeout: Duration,
    /// `socket_accept_filter`: `TCP_DEFER_ACCEPT` (Linux) / `dataready` (FreeBSD).
    /// Default false.
    pub socket_accept_filter: bool,
    /// `max_prefork`: number of preforked workers. Default 2 (original: 0, and it ran
    /// n+1 workers).
    pub max_prefork: u32,
    /// `max_requests_per_child`: a worker exits after this many connections; 0 =
    /// unlimited. Default 0.
    pub max_requests_per_child: u64,
    /// `max_process_timeout` (seconds): bound on one request; `None` (written `0`) = no
    /// limit. Default 300 s (the original's default was no limit).
    pub max_process_timeout: Option<Duration>,
    /// `max_connections` (new): concurrent connections served. Default 256.
    pub max_connections: u32,
    /// `max_connections_per_peer` (new): live connections one peer address may hold
    /// (per worker). Default 64.
    pub max_connections_per_peer: u32,
    /// `ssl_max_failures` (new): failed v1 "ssl" requests a peer may make within a
    /// minute before its v1 ssl is refused for ten minutes (per worker); 0 = unbounded.
    /// Default 10.
    pub ssl_max_failures: u32,
    /// `log_write`: write the error and access logs at all. Default false.
    pub log_write: bool,
    /// `log_error_level`: the most verbose level written to the error log. Default info.
    pub log_error_level: Level,
    /// `log_error_path`: a file (strftime template) or anything containing `syslog`.
    /// Default `/var/log/deploy/error.log` (proxy: `/var/log/deploy/proxy_error.log`, so
    /// that both daemons on one host keep their own files).
    pub log_error_path: PathBuf,
    /// `log_access_path`: as `log_error_path`. Default `/var/log/deploy/access.log`
    /// (proxy: `/var/log/deploy/proxy_access.log`).
    pub log_access_path: PathBuf,
    /// `key_cipher`: the secret the daemon's callers prove they know (the v2 handshake's
    /// pre-shared key; behind the legacy `auth_key`). On the proxy it is the callers'
    /// secret too, beside their API keys. Default `65535` (as the original; its comments
    /// wrongly said 4294967295), which a daemon refuses to start with (see
    /// [`is_default_secret`]) unless `allow_default_secrets` is on.
    pub key_cipher: String,
    /// `allow_default_secrets` (new): start even though a secret is a default (lab
    /// only). Default false.
    pub allow_default_secrets: bool,
    /// `ssl`: the v1 mode served: `off` plain only, `on` "ssl" only (both as the
    /// original), or `both` (new, for migrations; [`ServerConfig::ssl_both`]). `true`
    /// for `on` and `both`. Default false.
    pub ssl: bool,
    /// `ssl = both`: serve v1 plain and v1 "ssl" side by side.
    pub ssl_both: bool,
    /// `ssl_private_key`: PEM file of this server's private key.
    pub ssl_private_key: Option<PathBuf>,
    /// `ssl_public_key`: PEM file of this server's public key (read but unused by the
    /// original).
    pub ssl_public_key: Option<PathBuf>,
    /// `process_name`: prefix of the process titles. Default `deploy::agent:` /
    /// `deploy::proxy:`.
    pub process_name: String,
    /// `legacy_protocol` (new): also accept the original's v1 wire. Default false.
    pub legacy_protocol: bool,
    /// `pid_file` (new): absolute path of a pid file to write. Default none.
    pub pid_file: Option<PathBuf>,
    /// `state_dir` (new): absolute directory for runtime state (transfer logs, locks).
    /// Default `/var/lib/deploy-agent` / `/var/lib/deploy-proxy`.
    pub state_dir: PathBuf,
    /// `allow_run` (new): an opt-in switch, default false; the config layer only parses
    /// it, its effect is documented by the program that reads it.
    pub allow_run: bool,
    /// `allow_upload` (new): an opt-in switch, default false: the agent extracts
    /// `upload` tar streams under `[allow::paths]`.
    pub allow_upload: bool,
    /// `allow_fetch` (new): an opt-in switch, default false: the agent sends files and
    /// directories under `[allow::paths]` back to a caller (`fetch`, as a tar stream).
    /// Off by default because it reads whatever those roots hold (logs, keys a release
    /// put there) for anyone with the key.
    pub allow_fetch: bool,
    /// `allow_deploy` (new): an opt-in switch, default false: the agent serves the
    /// release orders (`deploy`, `rollback`, `confirm`; `[deploy]` says from where).
    pub allow_deploy: bool,
    /// `umask` (new, octal): the daemon's umask. Default `022` (the original used 0).
    pub umask: u32,
    /// `transfer_stall_timeout` (new, seconds; agent): a background transfer that moves
    /// less than 4 KiB in this long is stopped and fails with rsync's timeout code (30),
    /// since rsync's own `--timeout` does not notice a link cut while it waits. `None`
    /// (written `0`) = never. Default 300 s.
    pub transfer_stall_timeout: Option<Duration>,
}

impl ServerConfig {
    /// The agent's defaults.
    pub fn agent_defaults() -> ServerConfig {
        ServerConfig {
            user: None,
            group: None,
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 3440,
            listen: Vec::new(),
            backlog: 1024,
            socket_timeout: Duration::from_secs(5),
            socket_accept_filter: false,
            max_prefork: 2,
            max_requests_per_child: 0,
            max_process_timeout: Some(Duration::from_secs(300)),
            max_connections: 256,
            max_connections_per_peer: 64,
            ssl_max_failures: 10,
            log_write: false,
            log_error_level: Level::Info,
            log_error_path: PathBuf::from("/var/log/deploy/error.log"),
            log_access_path: PathBuf::from("/var/log/deploy/access.log"),
            key_cipher: "65535".to_owned(),
            allow_default_secrets: false,
            ssl: false,
            ssl_both: false,
            ssl_private_key: None,
            ssl_public_key: None,
            process_name: "deploy::agent:".to_owned(),
            legacy_protocol: false,
            pid_file: None,
            state_dir: PathBuf::from("/var/lib/deploy-agent"),
            allow_run: false,
            allow_upload: false,
            allow_fetch: false,
            allow_deploy: false,
            umask: 0o022,
            transfer_stall_timeout: Some(Duration::from_secs(300)),
        }
    }

    /// The proxy's defaults: as the agent's but port 3441, process name
    /// `deploy::proxy:`, state dir `/var/lib/deploy-proxy` and log files
    /// `/var/log/deploy/proxy_{error,access}.log`.
    pub fn proxy_defaults() -> ServerConfig {
        ServerConfig {
            port: 3441,
            log_error_path: PathBuf::from("/var/log/deploy/proxy_error.log"),
            log_access_path: PathBuf::from("/var/log/deploy/proxy_access.log"),
            process_name: "deploy::proxy:".to_owned(),
            state_dir: PathBuf::from("/var/lib/deploy-proxy"),
            ..ServerConfig::agent_defaults()
        }
    }

    /// Applies the entries of a `[server]` section over `self`, in file order.
    pub(crate) fn apply(&mut self, cx: &Cx<'_>, section: &Section) -> Result<(), ConfigError> {
        for e in section.entries() {
            match (e.key.as_str(), e.list) {
                ("listen", true) => {
                    let v = e.value.as_str();
                    let addr = v.parse::<SocketAddr>().map_err(|_| {
                        cx.invalid(
                            e,
                            format!(
                                "invalid listen address {v:?} (expected addr:port or [v6]:port)"
                            ),
                        )
                    })?;
                    self.listen.push(addr);
                }
                ("listen", false) => return Err(cx.want_list(e)),
                (_, true) if SERVER_KEYS.contains(&e.key.as_str()) => return Err(cx.want_scalar(e)),
                ("user", _) => self.user = cx.opt_string(e),
                ("group", _) => self.group = cx.opt_string(e),
                ("addr", _) => {
                    self.addr = e
                        .value
                        .parse()
                        .map_err(|_| cx.invalid(e, format!("invalid IP address {:?}", e.value)))?
                }
                ("port", _) => self.port = cx.number(e)?,
                ("backlog", _) => self.backlog = cx.number(e)?,
                ("socket_timeout", _) => self.socket_timeout = cx.seconds(e)?,
                ("socket_accept_filter", _) => self.socket_accept_filter = cx.boolean(e)?,
                ("max_prefork", _) => self.max_prefork = cx.number(e)?,
                ("max_requests_per_child", _) => self.max_requests_per_child = cx.number(e)?,
                ("max_process_timeout", _) => {
                    let t = cx.seconds(e)?;
                    self.max_process_timeout = (!t.is_zero()).then_some(t);
                }
                ("max_connections", _) => {
                    self.max_connections = cx.number(e)?;
                    if self.max_connections == 0 {
                        return Err(cx.invalid(e, "must be at least 1"));
                    }
                }
                ("max_connections_per_peer", _) => {
                    self.max_connections_per_peer = cx.number(e)?;
                    if self.max_connections_per_peer == 0 {
                        return Err(cx.invalid(e, "must be at least 1"));
                    }
                }
                ("ssl_max_failures", _) => self.ssl_max_failures = cx.number(e)?,
                ("log_write", _) => self.log_write = cx.boolean(e)?,
                ("log_error_level", _) => {
                    self.log_error_level = e
                        .value
                        .parse()
                        .map_err(|l: InvalidLevel| cx.invalid(e, l.to_string()))?
                }
                ("log_error_path", _) => self.log_error_path = cx.nonempty(e)?.into(),
                ("log_access_path", _) => self.log_access_path = cx.nonempty(e)?.into(),
                ("key_cipher", _) => self.key_cipher = e.value.clone(),
                ("allow_default_secrets", _) => self.allow_default_secrets = cx.boolean(e)?,
                ("ssl", _) => {
                    self.ssl_both = e.value.trim().eq_ignore_ascii_case("both");
                    self.ssl = self.ssl_both || cx.boolean(e)?;
                }
                ("ssl_private_key", _) => self.ssl_private_key = cx.file(e),
                ("ssl_public_key", _) => self.ssl_public_key = cx.file(e),
                ("process_name", _) => self.process_name = e.value.clone(),
                ("legacy_protocol", _) => self.legacy_protocol = cx.boolean(e)?,
                ("pid_file", _) => {
                    self.pid_file = match e.value.is_empty() {
                        true => None,
                        false => Some(cx.absolute(e)?),
                    }
                }
                ("state_dir", _) => self.state_dir = cx.absolute(e)?,
                ("allow_run", _) => self.allow_run = cx.boolean(e)?,
                ("allow_upload", _) => self.allow_upload = cx.boolean(e)?,
                ("allow_fetch", _) => self.allow_fetch = cx.boolean(e)?,
                ("allow_deploy", _) => self.allow_deploy = cx.boolean(e)?,
                ("umask", _) => self.umask = cx.octal_mode(e)?,
                ("transfer_stall_timeout", _) => {
                    let t = cx.seconds(e)?;
                    self.transfer_stall_timeout = (!t.is_zero()).then_some(t);
                }
                _ => return Err(cx.unknown_key(e)),
            }
        }
        Ok(())
    }
}

/// The scalar keys of `[server]` (for the "written as a list" error).
const SERVER_KEYS: &[&str] = &[
    "user",
    "group",
    "addr",
    "port",
    "backlog",
    "socket_timeout",
    "socket_accept_filter",
    "max_prefork",
    "max_requests_per_child",
    "max_process_timeout",
    "max_connections",
    "max_connections_per_peer",
    "ssl_max_failures",
    "log_write",
    "log_error_level",
    "log_error_path",
    "log_access_path",
    "key_cipher",
    "allow_default_secrets",
    "ssl",
    "ssl_private_key",
    "ssl_public_key",
    "process_name",
    "legacy_protocol",
    "pid_file",
    "state_dir",
    "allow_run",
    "allow_upload",
    "allow_fetch",
    "allow_deploy",
    "umask",
    "transfer_stall_timeout",
];

/// The context of one section while it is interpreted: where errors point, and the
/// directory relative paths resolve against.
pub(crate) struct Cx<'a> {
    /// The ini file.
    pub path: &'a Path,
    /// The section being read.
    pub section: &'a str,
}

impl<'a> Cx<'a> {
    /// A context for `section` of `ini`.
    pub fn new(ini: &'a Ini, section: &'a Section) -> Cx<'a> {
        Cx {
            path: ini.path(),
            section: section.name(),
        }
    }

    /// The directory of the ini file.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(""))
    }

    /// `reason` about entry `e`.
    pub fn invalid(&self, e: &Entry, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: e.line,
            section: self.section.to_owned(),
            key: e.written_key(),
            reason: reason.into(),
        }
    }

    /// `e` is not a key of this section.
    pub fn unknown_key(&self, e: &Entry) -> ConfigError {
        ConfigError::UnknownKey {
            path: self.path.to_path_buf(),
            line: e.line,
            section: self.section.to_owned(),
            key: e.written_key(),
        }
    }

    /// `e` is written `key = …` but `key` is a list.
    pub fn want_list(&self, e: &Entry) -> ConfigError {
        self.invalid(e, format!("is a list: write `{}[] = …`", e.key))
    }

    /// `e` is written `key[] = …` but `key` is a single value.
    pub fn want_scalar(&self, e: &Entry) -> ConfigError {
        self.invalid(e, format!("is a single value: write `{} = …`", e.key))
    }

    /// `section` lacks `key`.
    pub fn missing(&self, section: &Section, key: &'static str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            line: section.line(),
            section: self.section.to_owned(),
            key,
        }
    }

    /// The value, `None` if empty.
    pub fn opt_string(&self, e: &Entry) -> Option<String> {
        (!e.value.is_empty()).then(|| e.value.clone())
    }

    /// The value, which must not be empty.
    pub fn nonempty(&self, e: &Entry) -> Result<String, ConfigError> {
        if e.value.is_empty() {
            return Err(self.invalid(e, "empty value"));
        }
        Ok(e.value.clone())
    }

    /// A boolean (see [`parse_bool`]).
    pub fn boolean(&self, e: &Entry) -> Result<bool, ConfigError> {
        parse_bool(&e.value).ok_or_else(|| {
            self.invalid(
                e,
                format!(
                    "invalid boolean {:?} (expected true, on, 1, yes, false, off, 0 or no)",
                    e.value
                ),
            )
        })
    }

    /// A non-negative decimal integer that fits `T`.
    pub fn number<T: TryFrom<u64>>(&self, e: &Entry) -> Result<T, ConfigError> {
        let v = e.value.as_str();
        let n: u64 = match v.bytes().all(|b| b.is_ascii_digit()) {
            true => v.parse().ok(),
            false => None,
        }
        .ok_or_else(|| self.invalid(e, format!("invalid number {v:?}")))?;
        T::try_from(n).map_err(|_| self.invalid(e, format!("number out of range {v:?}")))
    }

    /// Whole seconds.
    pub fn seconds(&self, e: &Entry) -> Result<Duration, ConfigError> {
        self.number::<u64>(e).map(Duration::from_secs)
    }

    /// An octal file mode mask (`022`, `0022`, `0o022`), at most `0777`.
    pub fn octal_mode(&self, e: &Entry) -> Result<u32, ConfigError> {
        let v = e.value.as_str();
        let digits = v.strip_prefix("0o").unwrap_or(v);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && !digits.starts_with('+') => Ok(m),
            _ => Err(self.invalid(e, format!("invalid octal mode {v:?} (expected e.g. 022)"))),
        }
    }

    /// A file path, `None` if empty; relative paths resolve against the ini's directory.
    pub fn file(&self, e: &Entry) -> Option<PathBuf> {
        (!e.value.is_empty()).then(|| self.base_dir().join(&e.value))
    }

    /// An absolute path.
    pub fn absolute(&self, e: &Entry) -> Result<PathBuf, ConfigError> {
        let p = PathBuf::from(&e.value);
        if !p.is_absolute() {
            return Err(self.invalid(e, format!("path {:?} must be absolute", e.value)));
        }
        Ok(p)
    }
}

/// Rejects the implicit section of keys written before any header (in files where every
/// key belongs to a named section).
pub(crate) fn reject_implicit(ini: &Ini, section: &Section) -> Result<(), ConfigError> {
    match section.header_line() {
        None => Err(ConfigError::Syntax {
            path: ini.path().to_path_buf(),
            line: section.line(),
            message: format!(
                "key {:?} before the first [section] header",
                section
                    .entries()
                    .first()
                    .map(|e| e.written_key())
                    .unwrap_or_default()
            ),
        }),
        Some(_) => Ok(()),
    }
}

/// An unknown section error for `section`.
pub(crate) fn unknown_section(ini: &Ini, section: &Section, expected: &'static str) -> ConfigError {
    ConfigError::UnknownSection {
        path: ini.path().to_path_buf(),
        line: section.line(),
        section: section.name().to_owned(),
        expected,
    }
}

/// Reads the file an `ini` entry `[section] key` names (the jobs file, the API file); a
/// file that cannot be read is reported at the line that names it.
pub(crate) fn load_referenced(
    ini: &Ini,
    section: &str,
    key: &str,
    target: &std::path::Path,
) -> Result<Ini, ConfigError> {
    match Ini::load(target) {
        Err(ConfigError::Read { source, .. }) => Err(ConfigError::ReadReferenced {
            path: ini.path().to_path_buf(),
            line: ini
                .section(section)
                .and_then(|s| s.get(key))
                .map_or(0, |e| e.line),
            section: section.to_owned(),
            key: key.to_owned(),
            target: target.to_path_buf(),
            source,
        }),
        other => other,
    }
}

/// Applies an `[allow::hosts]` section (`host[] = …` entries) to `list`.
pub(crate) fn apply_allow_hosts(
    cx: &Cx<'_>,
    section: &Section,
    list: &mut crate::access::HostAllowList,
) -> Result<(), ConfigError> {
    for e in section.entries() {
        match (e.key.as_str(), e.list) {
            ("host", true) => list
                .push_spec(&e.value)
                .map_err(|err| cx.invalid(e, err.to_string()))?,
            ("host", false) => return Err(cx.want_list(e)),
            _ => return Err(cx.unknown_key(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> Result<ServerConfig, ConfigError> {
        let ini = Ini::parse(text, Path::new("/etc/deploy/deploy_agent.ini"))?;
        let mut cfg = ServerConfig::agent_defaults();
        let section = ini.section("server").unwrap();
        cfg.apply(&Cx::new(&ini, section), section)?;
        Ok(cfg)
    }

    /// Every file under `etc/` parses with the loader its name calls for.
    #[test]
    fn every_shipped_file_parses() {
        let etc = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../etc"));
        let mut seen = 0;
        for entry in std::fs::read_dir(etc).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            match name.as_str() {
                n if n.ends_with("_exec.ini") => drop(Jobs::load(&path).unwrap()),
                n if n.ends_with("_api.ini") => drop(ApiKeys::load(&path).unwrap()),
                n if n.starts_with("deploy_agent") => drop(AgentConfig::load(&path).unwrap()),
                n if n.starts_with("deploy_proxy") => drop(ProxyConfig::load(&path).unwrap()),
                // deploy-client's defaults: parsed by the client's own test
                // (client/src/defaults.rs, `the_shipped_file_parses`).
                "client.ini" => continue,
                n if n.ends_with(".ini") => panic!("no loader for etc/{n}"),
                _ => continue,
            }
            seen += 1;
        }
        assert!(
            seen >= 4,
            "found only {seen} ini files in {}",
            etc.display()
        );
    }

    #[test]
    fn levels() {
        for (i, level) in Level::ALL.iter().enumerate() {
            assert_eq!(level.syslog_number() as usize, i);
            assert_eq!(level.as_str().parse::<Level>(), Ok(*level));
            assert_eq!(i.to_string().parse::<Level>(), Ok(*level));
        }
        assert_eq!("WARNING".parse::<Level>(), Ok(Level::Warn));
        assert_eq!("Err".parse::<Level>(), Ok(Level::Error));
        assert!("8".parse::<Level>().is_err());
        assert!("verbose".parse::<Level>().is_err());
        assert_eq!(Level::Notice.tracing_level(), tracing::Level::INFO);
    }

    #[test]
    fn booleans() {
        for t in ["true", "ON", "1", "Yes"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "Off", "0", "NO"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("enabled"), None);
        assert_eq!(parse_bool(""), None);
    }

    #[test]
    fn server_defaults() {
        let a = server("[server]\n").unwrap();
        assert_eq!(a, ServerConfig::agent_defaults());
        assert_eq!(a.addr.to_string(), "0.0.0.0");
        assert_eq!(a.port, 3440);
        assert_eq!(a.backlog, 1024);
        assert_eq!(a.socket_timeout, Duration::from_secs(5));
        assert_eq!(a.max_prefork, 2);
        assert_eq!(a.max_process_timeout, Some(Duration::from_secs(300)));
        assert_eq!(a.key_cipher, "65535");
        assert_eq!(a.umask, 0o022);
        assert!(!a.legacy_protocol && !a.allow_run && !a.ssl && !a.log_write);
        let p = ServerConfig::proxy_defaults();
        assert_eq!(p.port, 3441);
        assert_eq!(p.process_name, "deploy::proxy:");
        // Its own log files: the packages' logrotate files name them apart.
        assert_eq!(
            p.log_error_path,
            Path::new("/var/log/deploy/proxy_error.log")
        );
        assert_eq!(
            p.log_access_path,
            Path::new("/var/log/deploy/proxy_access.log")
        );
    }

    #[test]
    fn server_keys() {
        let c = server(
            "[server]\n\
             user = deploy\ngroup = 1000\naddr = ::1\nport = 4000\n\
             listen[] = 127.0.0.1:4001\nlisten[] = [::1]:4002\n\
             backlog = 16\nsocket_timeout = 7\nsocket_accept_filter = on\n\
             max_prefork = 0\nmax_requests_per_child = 10\nmax_process_timeout = 0\n\
             max_connections = 3\nlog_write = TRUE\nlog_error_level = 3\n\
             log_error_path = syslog\nlog_access_path = /tmp/a.%Y.log\n\
             key_cipher = s3cret;x\nssl = yes\nssl_private_key = keys/agent.pem\n\
             ssl_public_key = /k/pub.pem\nprocess_name = x:\nlegacy_protocol = 1\n\
             pid_file = /run/deploy-agent.pid\nstate_dir = /srv/state\nallow_run = on\n\
             umask = 027\n",
        )
        .unwrap();
        assert_eq!(c.user.as_deref(), Some("deploy"));
        assert_eq!(c.group.as_deref(), Some("1000"));
        assert_eq!(c.addr.to_string(), "::1");
        assert_eq!(c.port, 4000);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[1].to_string(), "[::1]:4002");
        assert_eq!(c.socket_timeout, Duration::from_secs(7));
        assert!(c.socket_accept_filter);
        assert_eq!(c.max_prefork, 0);
        assert_eq!(c.max_process_timeout, None, "0 = no limit");
        assert_eq!(c.log_error_level, Level::Error);
        assert_eq!(c.key_cipher, "s3cret;x");
        assert_eq!(
            c.ssl_private_key.as_deref(),
            Some(Path::new("/etc/deploy/keys/agent.pem"))
        );
        assert_eq!(c.ssl_public_key.as_deref(), Some(Path::new("/k/pub.pem")));
        assert!(c.ssl && c.log_write && c.legacy_protocol && c.allow_run);
        assert_eq!(c.umask, 0o027);
        assert!(!c.allow_default_secrets);
        assert!(
            server("[server]\nallow_default_secrets = on\n")
                .unwrap()
                .allow_default_secrets
        );
    }

    #[test]
    fn default_secrets() {
        for weak in ["", " ", "65535", "change-me", " CHANGE-ME "] {
            assert!(is_default_secret(weak), "{weak:?}");
        }
        for strong in ["655351", "change-me-now", "s3cret"] {
            assert!(!is_default_secret(strong), "{strong:?}");
        }
    }

    #[test]
    fn server_errors() {
        for (text, want) in [
            (
                "[server]\nport = 34x0\n",
                "/etc/deploy/deploy_agent.ini:2: [server] port: invalid number \"34x0\"",
            ),
            (
                "[server]\nport = 70000\n",
                "/etc/deploy/deploy_agent.ini:2: [server] port: number out of range \"70000\"",
            ),
            (
                "[server]\n\nport = -1\n",
                "/etc/deploy/deploy_agent.ini:3: [server] port: invalid number \"-1\"",
            ),
            (
                "[server]\nssl = maybe\n",
                "/etc/deploy/deploy_agent.ini:2: [server] ssl: invalid boolean \"maybe\" (expected true, on, 1, yes, false, off, 0 or no)",
            ),
            (
                "[server]\nprot = 1\n",
                "/etc/deploy/deploy_agent.ini:2: [server] prot: unknown key",
            ),
            (
                "[server]\nport[] = 1\n",
                "/etc/deploy/deploy_agent.ini:2: [server] port[]: is a single value: write `port = …`",
            ),
            (
                "[server]\nlisten = 1.2.3.4:5\n",
                "/etc/deploy/deploy_agent.ini:2: [server] listen: is a list: write `listen[] = …`",
            ),
            (
                "[server]\nlisten[] = ::1:5\n",
                "/etc/deploy/deploy_agent.ini:2: [server] listen[]: invalid listen address \"::1:5\" (expected addr:port or [v6]:port)",
            ),
            (
                "[server]\naddr = localhost\n",
                "/etc/deploy/deploy_agent.ini:2: [server] addr: invalid IP address \"localhost\"",
            ),
            (
                "[server]\nlog_error_level = verbose\n",
                "/etc/deploy/deploy_agent.ini:2: [server] log_error_level: invalid log level \"verbose\" (expected emerg, alert, crit, error, warn, notice, info, debug or 0-7)",
            ),
            (
                "[server]\numask = 999\n",
                "/etc/deploy/deploy_agent.ini:2: [server] umask: invalid octal mode \"999\" (expected e.g. 022)",
            ),
            (
                "[server]\nstate_dir = var/lib\n",
                "/etc/deploy/deploy_agent.ini:2: [server] state_dir: path \"var/lib\" must be absolute",
            ),
            (
                "[server]\nmax_connections = 0\n",
                "/etc/deploy/deploy_agent.ini:2: [server] max_connections: must be at least 1",
            ),
            (
                "[server]\nmax_connections_per_peer = 0\n",
                "/etc/deploy/deploy_agent.ini:2: [server] max_connections_per_peer: must be at least 1",
            ),
        ] {
            assert_eq!(server(text).unwrap_err().to_string(), want, "{text:?}");
        }
    }

    #[test]
    fn ssl_modes_and_peer_limits() {
        let defaults = ServerConfig::agent_defaults();
        assert_eq!(
            (defaults.max_connections_per_peer, defaults.ssl_max_failures),
            (64, 10)
        );
        for (value, ssl, both) in [
            ("off", false, false),
            ("on", true, false),
            ("Both", true, true),
        ] {
            let c = server(&format!("[server]\nssl = {value}\n")).unwrap();
            assert_eq!((c.ssl, c.ssl_both), (ssl, both), "{value}");
        }
        let c = server("[server]\nmax_connections_per_peer = 3\nssl_max_failures = 0\n").unwrap();
        assert_eq!((c.max_connections_per_peer, c.ssl_max_failures), (3, 0));
    }
}
