//! The proxy's configuration (`deploy_proxy.ini`) and its API key file
//! (`deploy_proxy_api.ini`).
//!
//! ```text
//! [server]          ; ServerConfig, port 3441 by default
//! [client]          ; how the proxy talks to agents
//! port = 3440
//! [allow::hosts]    ; who may call the proxy
//! host[] = 127.0.0.1
//! [api]
//! path = deploy_proxy_api.ini
//! [ssh]             ; how the proxy logs in to ssh:// servers (ProxySshConfig)
//! identity[] = /etc/deploy/keys/proxy_ed25519
//! known_hosts = /etc/deploy/known_hosts
//! [store]           ; where the state shared by callers lives (ProxyStoreConfig)
//! backend = nats    ; redb (default: one proxy, the state dir) or nats (several proxies)
//! server[] = nats://10.0.0.1:4222
//! replicas = 3      ; copies of the bucket (3 survives one NATS server's loss)
//! prefix = deploy-  ; the bucket is <prefix>state
//! key = …           ; the fleet's secret: every value in the bucket is sealed with it
//! credentials = /etc/deploy/nats.creds   ; or user/password; tls_ca, tls_cert/tls_key
//! ```
//!
//! The API file:
//!
//! ```text
//! [keys]
//! <apikey>[] = web,db              ; groups this key may address; comma list, repeatable
//! sha256:<64 hex>[] = web          ; the same, storing only SHA-256(apikey)
//! [servers]
//! web[] = web1.example.org         ; one target per line: name, IPv4,
//! web[] = 192.0.2.10:3440          ;   optionally with :port,
//! web[] = [2001:db8::1]:3440       ;   IPv6 in brackets
//! web[] = ssh://deploy@web3:2222   ; agentless: reached over SSH ([ssh] in the proxy ini)
//! far[] = proxy://proxy2:3441/web  ; a group of another proxy
//! db[] = db[01-20] !db13           ; node sets (ClusterShell): ranges, lists,
//!                                  ;   `!x` leaves x out of the whole group
//! all[] = @web,@db                 ; groups of groups: recursive, each server
//!                                  ;   once; loops and unknown groups refused
//! [names]                          ; optional: how a key is named to agents
//! <apikey> = ci                    ;   (or sha256:<64 hex> = ci); default key<N>,
//!                                  ;   N its position under [keys]
//! ```
//!
//! A key's name is what the proxy records as who asked for a release
//! (`apikey:<name>`): never the key itself.
//!
//! An API key is everything left of the first `=` (minus the `[]`), so it cannot contain
//! `=` or start with `#`/`;`; base64 keys with padding must be stored hashed. Keys are
//! compared in constant time: every configured key is kept only as its SHA-256, the
//! presented key is hashed once, and every entry is compared with
//! [`aws_lc_rs::constant_time::verify_slices_are_equal`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256};

use super::ini::{Entry, Ini};
use super::{
    apply_allow_hosts, load_referenced, reject_implicit, unknown_section, ConfigError, Cx, Ignored,
    ServerConfig,
};
use crate::access::HostAllowList;
use crate::nodeset;
use crate::target::{Scheme, Target, SSH_PREFIX};

/// The sections `deploy_proxy.ini` may contain (for the error message).
const PROXY_SECTIONS: &str = "server, client, allow::hosts, api, ssh, store or nats";

/// The sections the API file may contain (for the error message).
const API_SECTIONS: &str = "keys, orders, servers, names or group::<name>";

/// `[client]`: how the proxy reaches agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyClientConfig {
    /// `port`: the agents' port (all agents behind one proxy share it, unless a
    /// `[servers]` entry names its own). Default 3440.
    pub port: u16,
    /// `thread_timeout` (seconds): bound on one whole exchange with one agent. Default 10 s.
    pub thread_timeout: Duration,
    /// `socket_timeout` (seconds): per read/write. Default 5 s.
    pub socket_timeout: Duration,
    /// `key_cipher`: the agents' shared secret. Default `65535`.
    pub key_cipher: String,
    /// `ssl`: talk to agents over the encrypted transport. Default false.
    pub ssl: bool,
    /// `ssl_public_key`: PEM file of the agents' public key.
    pub ssl_public_key: Option<PathBuf>,
    /// `concurrency` (new): agents contacted at once. Default 256.
    pub concurrency: usize,
    /// `connect_timeout` (seconds, new): bound on connecting to one agent. Default 3 s.
    pub connect_timeout: Duration,
    /// `protocol` (new): `v2` (default) or `v1` to drive agents of the original.
    pub protocol: AgentProtocol,
    /// `proxy_api_key` (new): the API key presented to chained proxies
    /// (`proxy://host:port/group` entries).
    pub proxy_api_key: Option<String>,
    /// `proxy_id` (new): this proxy's name in loop detection. Default: the host name
    /// and `[server] port`.
    pub proxy_id: Option<String>,
    /// `http_listen` (new): address of the HTTP/JSON API; none by default.
    pub http_listen: Option<std::net::SocketAddr>,
    /// `heartbeat` (seconds, new): how often the proxy probes each agent of its API file
    /// for `nodes` (a brief `health`, one worker probing for all); 0 = never. Default 5.
    pub heartbeat: Duration,
    /// `heartbeat_timeout` (seconds, new): an agent that answered no probe for this long
    /// is `offline` (before that, one that missed a probe is `unstable`). Default three
    /// heartbeats.
    pub heartbeat_timeout: Option<Duration>,
}

impl ProxyClientConfig {
    /// `heartbeat_timeout`, or three heartbeats.
    pub fn offline_after(&self) -> Duration {
        self.heartbeat_timeout.unwrap_or(self.heartbeat * 3)
    }
}

/// `[ssh]` (new): how the proxy logs in to the `ssh://` servers of its API file.
///
/// Every default is what `ssh` would use when run as the user the proxy runs as
/// (`[server] user`, else the user that starts it): its `~/.ssh/config`, its
/// `~/.ssh/known_hosts` (and `/etc/ssh/ssh_known_hosts`), its `~/.ssh/id_ed25519`,
/// `id_ecdsa`, `id_rsa`. A daemon asks nobody: no ssh-agent, no passphrase, no password,
/// so key files must be unencrypted and readable by that user. Host keys are checked
/// strictly: an unknown key is refused unless `accept_new_host_keys = on`, a changed key
/// always.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySshConfig {
    /// `identity[]`: private key files, tried in order (before the SSH configuration's
    /// `IdentityFile`s).
    pub identities: Vec<PathBuf>,
    /// `known_hosts`: the file of trusted host keys (and where accepted new keys go).
    pub known_hosts: Option<PathBuf>,
    /// `accept_new_host_keys`: record unknown host keys instead of refusing them (trust
    /// on first use). Default off.
    pub accept_new_host_keys: bool,
    /// `config`: an OpenSSH client configuration file (`Host`, `HostName`, `User`,
    /// `Port`, `IdentityFile`, `ProxyJump`, `Include`).
    pub config: Option<PathBuf>,
    /// `user`: the remote user when neither the server entry (`ssh://user@host`) nor the
    /// configuration names one. Default: the user the proxy runs as.
    pub user: Option<String>,
    /// `connect_timeout` (seconds): bound on connecting, then again on the SSH
    /// handshake. Default: `[client] connect_timeout`.
    pub connect_timeout: Option<Duration>,
    /// `keepalive` (seconds, 0 = off): probe a silent server after this long (three
    /// unanswered probes end the connection). Default off.
    pub keepalive: Option<Duration>,
}

/// Which store keeps the state a proxy shares with its callers (and other proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// An embedded database in `[server] state_dir`: one proxy.
    #[default]
    Redb,
    /// A NATS JetStream key-value bucket: several proxies serving one fleet.
    Nats,
}

/// `[store]`: where scenario versions, leases taken through the proxy and the node
/// inventory are kept. `backend = nats` needs at least one `server[]` and a `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStoreConfig {
    /// `backend`: `redb` (default) or `nats`.
    pub backend: StoreBackend,
    /// `server[]`: the NATS servers, `nats://host:port` (or `tls://`).
    pub servers: Vec<String>,
    /// `prefix`: the bucket is named `<prefix>state` (default `deploy-`).
    pub prefix: String,
    /// `replicas`: copies of the bucket (default 3; 1 for a single server).
    pub replicas: usize,
    /// `credentials`: a NATS `.creds` file (JWT and nkey seed).
    pub credentials: Option<PathBuf>,
    /// `user` and `password`.
    pub user: Option<String>,
    /// `password` (with `user`).
    pub password: Option<String>,
    /// `tls_ca`: the CA that signs the servers' certificates (turns TLS on).
    pub tls_ca: Option<PathBuf>,
    /// `tls_cert`: a client certificate (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: the client certificate's key.
    pub tls_key: Option<PathBuf>,
    /// `key` (new): the secret every proxy of the fleet shares, under which each value
    /// written to the NATS bucket is sealed (HMAC-SHA256 bound to bucket and key name,
    /// `deploy_store::seal`); a value that does not verify is refused on read. Required
    /// with `backend = nats`; a default secret (`change-me`…) is refused at start like
    /// `key_cipher` unless `allow_default_secrets = on`. Its own secret, not a
    /// `key_cipher`: the bucket's writers need not be the agents' callers.
    pub key: Option<String>,
}

impl Default for ProxyStoreConfig {
    fn default() -> ProxyStoreConfig {
        ProxyStoreConfig {
            backend: StoreBackend::Redb,
            servers: Vec::new(),
            prefix: "deploy-".to_owned(),
            replicas: 3,
            credentials: None,
            user: None,
            password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            key: None,
        }
    }
}

/// One `[store]` entry.
fn apply_store(cx: &Cx<'_>, e: &Entry, store: &mut ProxyStoreConfig) -> Result<(), ConfigError> {
    match (e.key.as_str(), e.list) {
        ("server", true) => {
            for url in e.value.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                let rest = url
                    .strip_prefix("nats://")
                    .or_else(|| url.strip_prefix("tls://"))
                    .ok_or_else(|| {
                        cx.invalid(
                            e,
                            format!("{url:?}: expected nats://host:port or tls://host:port"),
                        )
                    })?;
                let port_ok = rest
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok || rest.contains(['/', '@', ' ']) {
                    return Err(cx.invalid(e, format!("{url:?}: expected nats://host:port")));
                }
                store.servers.push(url.to_owned());
            }
        }
        ("server", false) => return Err(cx.want_list(e)),
        (
            "backend" | "prefix" | "replicas" | "credentials" | "user" | "password" | "tls_ca"
            | "tls_cert" | "tls_key" | "key",
            true,
        ) => return Err(cx.want_scalar(e)),
        ("backend", false) => {
            store.backend = match e.value.to_ascii_lowercase().as_str() {
                "redb" => StoreBackend::Redb,
                "nats" => StoreBackend::Nats,
                _ => return Err(cx.invalid(e, format!("expected redb or nats, got {:?}", e.value))),
            }
        }
        ("prefix", false) => {
            if !e
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(cx.invalid(e, "letters, digits, - and _ only (a NATS bucket name)"));
            }
            store.prefix = e.value.clone();
        }
        ("replicas", false) => {
            store.replicas = cx.number(e)?;
            if !(1..=5).contains(&store.replicas) {
                return Err(cx.invalid(e, "must be 1 to 5"));
            }
        }
        ("credentials", false) => store.credentials = cx.file(e),
        ("user", false) => store.user = cx.opt_string(e),
        ("password", false) => store.password = cx.opt_string(e),
        ("tls_ca", false) => store.tls_ca = cx.file(e),
        ("tls_cert", false) => store.tls_cert = cx.file(e),
        ("tls_key", false) => store.tls_key = cx.file(e),
        ("key", false) => store.key = cx.opt_string(e),
        _ => return Err(cx.unknown_key(e)),
    }
    Ok(())
}

/// The wire a proxy speaks to agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AgentProtocol {
    /// The v2 protocol.
    #[default]
    V2,
    /// The original's wire.
    V1,
}

/// Per-group overrides, from `[group::<name>]` in the API file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOverride {
    /// `port`: the group's agents' port.
    pub port: Option<u16>,
    /// `key_cipher`: the group's agents' secret.
    pub key_cipher: Option<String>,
    /// `ssl_public_key`: the group's agents' public key (PEM file).
    pub ssl_public_key: Option<PathBuf>,
    /// `protocol`: `v2` or `v1`.
    pub protocol: Option<AgentProtocol>,
    /// `nats_publish`: when every server of the group is a `nats://` agent subscribed
    /// to `deploy.group.<group>` (its `[nats] group[]`), an order to the whole group is
    /// one publish there instead of one per agent.
    pub nats_publish: bool,
}

fn protocol(cx: &Cx<'_>, e: &Entry) -> Result<AgentProtocol, ConfigError> {
    match e.value.to_ascii_lowercase().as_str() {
        "v2" | "2" => Ok(AgentProtocol::V2),
        "v1" | "1" | "legacy" => Ok(AgentProtocol::V1),
        _ => Err(cx.invalid(e, format!("expected v2 or v1, got {:?}", e.value))),
    }
}

impl Default for ProxyClientConfig {
    fn default() -> ProxyClientConfig {
        ProxyClientConfig {
            port: 3440,
            thread_timeout: Duration::from_secs(10),
            socket_timeout: Duration::from_secs(5),
            key_cipher: "65535".to_owned(),
            ssl: false,
            ssl_public_key: None,
            concurrency: 256,
            connect_timeout: Duration::from_secs(3),
            protocol: AgentProtocol::V2,
            proxy_api_key: None,
            proxy_id: None,
            http_listen: None,
            heartbeat: Duration::from_secs(5),
            heartbeat_timeout: None,
        }
    }
}

/// The whole proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The ini file this was read from.
    pub path: PathBuf,
    /// `[server]` (port 3441, process name `deploy::proxy:` by default).
    pub server: ServerConfig,
    /// `[client]`.
    pub client: ProxyClientConfig,
    /// `[allow::hosts] host[]`: peers allowed to call. Missing section: nobody.
    pub allow_hosts: HostAllowList,
    /// `[api] path`, resolved against the ini's directory. `None`: no API keys.
    pub api_path: Option<PathBuf>,
    /// `[ssh]`: how `ssh://` servers are reached.
    pub ssh: ProxySshConfig,
    /// `[store]`: where the state shared by callers is kept.
    pub store: ProxyStoreConfig,
    /// The keys read from `api_path` (only by [`ProxyConfig::load`]).
    pub api: ApiKeys,
    /// Keys accepted for compatibility but without effect (`ipc_path`,
    /// `worker_method`); the binary should warn about each.
    pub ignored: Vec<Ignored>,
    /// `[nats]`: how `nats://` servers are reached (see [`super::nats`]).
    pub nats: Option<super::nats::NatsConfig>,
}

impl ProxyConfig {
    /// The configuration of a proxy started without a file.
    pub fn defaults(path: &Path) -> ProxyConfig {
        ProxyConfig {
            path: path.to_path_buf(),
            server: ServerConfig::proxy_defaults(),
            client: ProxyClientConfig::default(),
            allow_hosts: HostAllowList::new(),
            api_path: None,
            ssh: ProxySshConfig::default(),
            store: ProxyStoreConfig::default(),
            api: ApiKeys::default(),
            nats: None,
            ignored: Vec::new(),
        }
    }

    /// Reads `path`, then the API file it names.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let ini = Ini::load(path)?;
        let mut config = ProxyConfig::from_ini(&ini)?;
        if let Some(api_path) = &config.api_path {
            let api_ini = load_referenced(&ini, "api", "path", api_path)?;
            config.api = ApiKeys::from_ini(&api_ini)?;
        }
        Ok(config)
    }

    /// Parses the text of a proxy ini; `path` names it in errors and anchors relative
    /// paths. The API file is **not** read ([`ProxyConfig::load`] does that).
    pub fn parse(text: &str, path: &Path) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::from_ini(&Ini::parse(text, path)?)
    }

    /// Builds the configuration from a parsed ini (without reading the API file).
    pub fn from_ini(ini: &Ini) -> Result<ProxyConfig, ConfigError> {
        let mut config = ProxyConfig::defaults(ini.path());
        for section in ini.sections() {
            reject_implicit(ini, section)?;
            let cx = Cx::new(ini, section);
            match section.name() {
                "server" => config.server.apply(&cx, section)?,
                "client" => {
                    for e in section.entries() {
                        apply_client(&cx, e, &mut config.client, &mut config.ignored)?;
                    }
                }
                "allow::hosts" => apply_allow_hosts(&cx, section, &mut config.allow_hosts)?,
                "api" => {
                    for e in section.entries() {
                        match (e.key.as_str(), e.list) {
                            ("path", false) => config.api_path = cx.file(e),
                            ("path", true) => return Err(cx.want_scalar(e)),
                            _ => return Err(cx.unknown_key(e)),
                        }
                    }
                }
                "ssh" => {
                    for e in section.entries() {
                        apply_ssh(&cx, e, &mut config.ssh)?;
                    }
                }
                "store" => {
                    for e in section.entries() {
                        apply_store(&cx, e, &mut config.store)?;
                    }
                    let store = &config.store;
                    if store.backend == StoreBackend::Nats && store.servers.is_empty() {
                        return Err(cx.missing(section, "server[]"));
                    }
                    // The bucket is not trusted: no shared store without its key.
                    if store.backend == StoreBackend::Nats && store.key.is_none() {
                        return Err(cx.missing(section, "key"));
                    }
                    if store.user.is_some() != store.password.is_some() {
                        return Err(cx.missing(
                            section,
                            if store.user.is_some() {
                                "password"
                            } else {
                                "user"
                            },
                        ));
                    }
                    if store.tls_cert.is_some() != store.tls_key.is_some() {
                        return Err(cx.missing(
                            section,
                            if store.tls_cert.is_some() {
                                "tls_key"
                            } else {
                                "tls_cert"
                            },
                        ));
                    }
                }
                "nats" => config.nats = Some(super::nats::NatsConfig::parse(&cx, section, false)?),
                _ => return Err(unknown_section(ini, section, PROXY_SECTIONS)),
            }
        }
        Ok(config)
    }

    /// Whether some server of the API file is an `ssh://` host.
    pub fn has_ssh_servers(&self) -> bool {
        self.api
            .server_groups()
            .filter_map(|g| self.api.servers(g))
            .flatten()
            .any(|entry| is_ssh(entry))
    }
}

/// Whether a `[servers]` entry is an `ssh://` host (the scheme in any case).
pub fn is_ssh(entry: &str) -> bool {
    entry
        .get(..SSH_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(SSH_PREFIX))
}

/// One `[ssh]` entry.
fn apply_ssh(cx: &Cx<'_>, e: &Entry, ssh: &mut ProxySshConfig) -> Result<(), ConfigError> {
    match (e.key.as_str(), e.list) {
        ("identity", true) => match cx.file(e) {
            Some(path) => ssh.identities.push(path),
            None => return Err(cx.invalid(e, "empty value")),
        },
        ("identity", false) => return Err(cx.want_list(e)),
        ("known_hosts" | "config" | "user" | "connect_timeout" | "keepalive", true)
        | ("accept_new_host_keys", true) => return Err(cx.want_scalar(e)),
        ("known_hosts", false) => ssh.known_hosts = cx.file(e),
        ("config", false) => ssh.config = cx.file(e),
        ("accept_new_host_keys", false) => ssh.accept_new_host_keys = cx.boolean(e)?,
        ("user", false) => {
            ssh.user = cx.opt_string(e);
            if let Some(user) = &ssh.user {
                if user
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '/' | ':'))
                {
                    return Err(cx.invalid(e, format!("invalid user name {user:?}")));
                }
            }
        }
        ("connect_timeout", false) => {
            let timeout = cx.seconds(e)?;
            if timeout.is_zero() {
                return Err(cx.invalid(e, "must be at least 1"));
            }
            ssh.connect_timeout = Some(timeout);
        }
        ("keepalive", false) => {
            ssh.keepalive = Some(cx.seconds(e)?).filter(|d| !d.is_zero());
        }
        _ => return Err(cx.unknown_key(e)),
    }
    Ok(())
}

/// One `[client]` entry.
fn apply_client(
    cx: &Cx<'_>,
    e: &Entry,
    client: &mut ProxyClientConfig,
    ignored: &mut Vec<Ignored>,
) -> Result<(), ConfigError> {
    const KEYS: &[&str] = &[
        "port",
        "thread_timeout",
        "socket_timeout",
        "key_cipher",
        "ssl",
        "ssl_public_key",
        "ipc_path",
        "worker_method",
        "concurrency",
        "connect_timeout",
        "protocol",
        "proxy_api_key",
        "proxy_id",
        "http_listen",
        "heartbeat",
        "heartbeat_timeout",
    ];
    if e.list {
        return Err(match KEYS.contains(&e.key.as_str()) {
            true => cx.want_scalar(e),
            false => cx.unknown_key(e),
        });
    }
    let mut ignore = |note| {
        ignored.push(Ignored {
            path: cx.path.to_path_buf(),
            line: e.line,
            section: cx.section.to_owned(),
            key: e.written_key(),
            note,
        })
    };
    match e.key.as_str() {
        "port" => client.port = cx.number(e)?,
        "thread_timeout" => client.thread_timeout = cx.seconds(e)?,
        "socket_timeout" => client.socket_timeout = cx.seconds(e)?,
        "key_cipher" => client.key_cipher = e.value.clone(),
        "ssl" => client.ssl = cx.boolean(e)?,
        "ssl_public_key" => client.ssl_public_key = cx.file(e),
        "ipc_path" => ignore("results are passed in memory, not through an IPC directory"),
        "worker_method" => ignore("agents are contacted concurrently from one process"),
        "concurrency" => {
            client.concurrency = cx.number(e)?;
            if client.concurrency == 0 {
                return Err(cx.invalid(e, "must be at least 1"));
            }
        }
        "connect_timeout" => client.connect_timeout = cx.seconds(e)?,
        "protocol" => client.protocol = protocol(cx, e)?,
        "proxy_api_key" => client.proxy_api_key = cx.opt_string(e),
        "proxy_id" => client.proxy_id = cx.opt_string(e),
        "http_listen" => {
            client.http_listen = Some(e.value.parse().map_err(|_| {
                cx.invalid(
                    e,
                    format!("invalid address {:?} (expected addr:port)", e.value),
                )
            })?)
        }
        "heartbeat" => client.heartbeat = cx.seconds(e)?,
        "heartbeat_timeout" => client.heartbeat_timeout = Some(cx.seconds(e)?),
        _ => return Err(cx.unknown_key(e)),
    }
    Ok(())
}

/// The proxy's API keys and server groups (`[api] path`). See the [module docs](self).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    /// SHA-256 of each key, with its groups (in file order, duplicates kept).
    keys: Vec<([u8; 32], Vec<String>)>,
    /// Group → targets (in file order, duplicates kept).
    servers: BTreeMap<String, Vec<String>>,
    /// SHA-256 of a key → the orders it may send (`[orders]`; absent: every order).
    orders: Vec<([u8; 32], Vec<String>)>,
    /// `[group::<name>]` overrides.
    overrides: BTreeMap<String, GroupOverride>,
    /// SHA-256 of a key → its name (`[names]`).
    names: Vec<([u8; 32], String)>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, even hashed.
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .field("servers", &self.servers)
            .finish()
    }
}

impl ApiKeys {
    /// Reads and parses the API file at `path`.
    pub fn load(path: &Path) -> Result<ApiKeys, ConfigError> {
        ApiKeys::from_ini(&Ini::load(path)?)
    }

    /// Parses an API file's text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<ApiKeys, ConfigError> {
        ApiKeys::from_ini(&Ini::parse(text, path)?)
    }

    /// Builds the keys from a parsed ini.
    pub fn from_ini(ini: &Ini) -> Result<ApiKeys, ConfigError> {
        let mut api = ApiKeys::default();
        for section in ini.sections() {
            reject_implicit(ini, section)?;
            let cx = Cx::new(ini, section);
            match section.name() {
                "keys" => {
                    for e in section.entries() {
                        if !e.list {
                            return Err(cx.want_list(e));
                        }
                        let digest = key_digest(&e.key).map_err(|reason| cx.invalid(e, reason))?;
                        let groups: Vec<String> = e
                            .value
                            .split(',')
                            .map(str::trim)
                            .filter(|g| !g.is_empty())
                            .map(str::to_owned)
                            .collect();
                        if groups.is_empty() {
                            return Err(cx.invalid(e, "no groups (expected a comma list)"));
                        }
                        match api.keys.iter_mut().find(|(d, _)| *d == digest) {
                            Some((_, existing)) => existing.extend(groups),
                            None => api.keys.push((digest, groups)),
                        }
                    }
                }
                "servers" => {
                    // Node sets (`web[01-20]`, `!web05`): a group's exclusions apply to
                    // all its entries, wherever they are written.
                    let mut excluded: Vec<(String, String)> = Vec::new();
                    // `@other` members (group → (referenced group, entry)), expanded
                    // once every group is read.
                    let mut refs: Vec<(String, String, &Entry)> = Vec::new();
                    for e in section.entries() {
                        if !e.list {
                            return Err(cx.want_list(e));
                        }
                        let set = nodeset::parse_list(&e.value, nodeset::DEFAULT_LIMIT)
                            .map_err(|err| cx.invalid(e, err.to_string()))?;
                        if set.include.is_empty() && set.exclude.is_empty() {
                            return Err(cx.invalid(e, "no server given".to_owned()));
                        }
                        if let Some(x) = set.exclude.iter().find(|x| x.starts_with('@')) {
                            return Err(cx.invalid(
                                e,
                                format!("!{x}: a group cannot be excluded (exclude its servers)"),
                            ));
                        }
                        for server in &set.include {
                            if let Some(name) = server.strip_prefix('@') {
                                if name.is_empty() || name.contains('@') {
                                    return Err(
                                        cx.invalid(e, format!("{server:?}: expected @<group>"))
                                    );
                                }
                                refs.push((e.key.clone(), name.to_owned(), e));
                            }
                        }
                        for server in set.include.iter().chain(&set.exclude) {
                            if server.starts_with('@') {
                                continue;
                            }
                            if !valid_target(server) {
                                // The entry as written, and the part at fault if the
                                // entry is a list.
                                let part = if *server == e.value {
                                    String::new()
                                } else {
                                    format!(": {server:?} is not a server")
                                };
                                return Err(cx.invalid(
                                    e,
                                    format!(
                                        "invalid server {:?}{part} (expected a host name or IPv4 address, or [IPv6], optionally with :port; or ssh://[user@]host[:port], or nats://name; node sets like web[01-20] expand to these)",
                                        e.value
                                    ),
                                ));
                            }
                        }
                        api.servers
                            .entry(e.key.clone())
                            .or_default()
                            .extend(set.include);
                        excluded.extend(set.exclude.into_iter().map(|x| (e.key.clone(), x)));
                    }
                    expand_group_refs(&cx, &mut api.servers, &refs)?;
                    for (group, server) in &excluded {
                        if let Some(servers) = api.servers.get_mut(group) {
                            servers.retain(|s| s != server);
                        }
                    }
                }
                "orders" => {
                    for e in section.entries() {
                        if !e.list {
                            return Err(cx.want_list(e));
                        }
                        let digest = key_digest(&e.key).map_err(|reason| cx.invalid(e, reason))?;
                        let orders = e
                            .value
                            .split(',')
                            .map(str::trim)
                            .filter(|o| !o.is_empty())
                            .map(str::to_owned);
                        match api.orders.iter_mut().find(|(d, _)| *d == digest) {
                            Some((_, existing)) => existing.extend(orders),
                            None => api.orders.push((digest, orders.collect())),
                        }
                    }
                }
                "names" => {
                    for e in section.entries() {
                        if e.list {
                            return Err(cx.want_scalar(e));
                        }
                        let digest = key_digest(&e.key).map_err(|reason| cx.invalid(e, reason))?;
                        let name = e.value.trim();
                        let printable = name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
                        if name.is_empty() || name.len() > 64 || !printable {
                            return Err(cx.invalid(
                                e,
                                "a key's name is 1 to 64 letters, digits, '-', '_', '.' or '@'",
                            ));
                        }
                        api.names.retain(|(d, _)| *d != digest);
                        api.names.push((digest, name.to_owned()));
                    }
                }
                name if name.starts_with("group::") => {
                    let group = name.trim_start_matches("group::").to_owned();
                    let mut o = GroupOverride::default();
                    for e in section.entries() {
                        if e.list {
                            return Err(cx.want_scalar(e));
                        }
                        match e.key.as_str() {
                            "port" => o.port = Some(cx.number(e)?),
                            "key_cipher" => o.key_cipher = Some(e.value.clone()),
                            "ssl_public_key" => o.ssl_public_key = cx.file(e),
                            "protocol" => o.protocol = Some(protocol(&cx, e)?),
                            "nats_publish" => o.nats_publish = cx.boolean(e)?,
                            _ => return Err(cx.unknown_key(e)),
                        }
                    }
                    api.overrides.insert(group, o);
                }
                _ => return Err(unknown_section(ini, section, API_SECTIONS)),
            }
        }
        Ok(api)
    }

    /// The groups the presented API key may address, or `None` for an unknown key.
    /// Compares against every configured key in constant time.
    pub fn groups_for(&self, presented_key: &str) -> Option<&[String]> {
        let presented = digest(&SHA256, presented_key.as_bytes());
        let mut found = None;
        for (stored, groups) in &self.keys {
            // No early exit: every entry costs the same.
            if verify_slices_are_equal(stored, presented.as_ref()).is_ok() {
                found = Some(groups.as_slice());
            }
        }
        found
    }

    /// The orders the presented key may send, or `None` when it is not restricted.
    /// Constant time like [`ApiKeys::groups_for`].
    pub fn orders_for(&self, presented_key: &str) -> Option<&[String]> {
        let presented = digest(&SHA256, presented_key.as_bytes());
        let mut found = None;
        for (stored, orders) in &self.orders {
            if verify_slices_are_equal(stored, presented.as_ref()).is_ok() {
                found = Some(orders.as_slice());
            }
        }
        found
    }

    /// The name of the presented key (`[names]`, else `key<N>` with N its position
    /// under `[keys]`), or `None` for an unknown key. Never the key itself.
    /// Constant time like [`ApiKeys::groups_for`].
    pub fn name_for(&self, presented_key: &str) -> Option<String> {
        let presented = digest(&SHA256, presented_key.as_bytes());
        let mut found = None;
        for (n, (stored, _)) in self.keys.iter().enumerate() {
            if verify_slices_are_equal(stored, presented.as_ref()).is_ok() {
                found = Some(format!("key{}", n + 1));
            }
        }
        for (stored, name) in &self.names {
            if verify_slices_are_equal(stored, presented.as_ref()).is_ok() && found.is_some() {
                found = Some(name.clone());
            }
        }
        found
    }

    /// The overrides of a group (`[group::<name>]`), if any.
    pub fn group_override(&self, group: &str) -> Option<&GroupOverride> {
        self.overrides.get(group)
    }

    /// The targets of a server group (`host`, `host:port`, `[v6]:port`, `ssh://…` or
    /// `proxy://…`, as written), or `None`.
    pub fn servers(&self, group: &str) -> Option<&[String]> {
        self.servers.get(group).map(Vec::as_slice)
    }

    /// The group names of `[servers]`, sorted.
    pub fn server_groups(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }

    /// How many distinct API keys are configured.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The form to store a key hashed in the API file: `sha256:<64 lowercase hex>`.
    pub fn hashed_form(key: &str) -> String {
        let d = digest(&SHA256, key.as_bytes());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

/// The SHA-256 under which a `[keys]` key is stored: parsed from `sha256:<hex>`, or
/// computed from a plain key.
fn key_digest(key: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    match key.strip_prefix("sha256:") {
        Some(hex) => {
            let bytes = hex.as_bytes();
            if bytes.len() != 64 {
                return Err(format!(
                    "a hashed key needs 64 hex digits after sha256:, found {}",
                    bytes.len()
                ));
            }
            for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                let digit = |c: u8| (c as char).to_digit(16);
                match pair {
                    [hi, lo] => match (digit(*hi), digit(*lo)) {
                        (Some(h), Some(l)) => *slot = (h * 16 + l) as u8,
                        _ => return Err("a hashed key must be hexadecimal after sha256:".into()),
                    },
                    _ => return Err("a hashed key must be hexadecimal after sha256:".into()),
                }
            }
        }
        None => out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref()),
    }
    Ok(out)
}

/// Replaces every `@other` member of a `[servers]` group by `other`'s servers,
/// recursively. An unknown group or a loop (`a → b → a`, `a → a`) is an error at the
/// entry that names it; a group that includes groups keeps each server once (first
/// occurrence).
fn expand_group_refs(
    cx: &Cx<'_>,
    servers: &mut BTreeMap<String, Vec<String>>,
    refs: &[(String, String, &Entry)],
) -> Result<(), ConfigError> {
    if refs.is_empty() {
        return Ok(());
    }
    for (group, name, e) in refs {
        if !servers.contains_key(name) {
            return Err(cx.invalid(
                e,
                format!("group {group:?} includes @{name}, which is not a group of [servers]"),
            ));
        }
    }
    fn visit(
        cx: &Cx<'_>,
        raw: &BTreeMap<String, Vec<String>>,
        refs: &[(String, String, &Entry)],
        group: &str,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        path.push(group.to_owned());
        for member in raw.get(group).map(Vec::as_slice).unwrap_or_default() {
            match member.strip_prefix('@') {
                Some(name) => {
                    if let Some(start) = path.iter().position(|g| g == name) {
                        let mut cycle: Vec<&str> =
                            path[start..].iter().map(String::as_str).collect();
                        cycle.push(name);
                        // Every `@name` member came from an entry of `refs`.
                        let at = refs
                            .iter()
                            .find(|(g, n, _)| g == group && n == name)
                            .or(refs.first());
                        let reason = format!("groups include each other: {}", cycle.join(" → "));
                        if let Some((_, _, e)) = at {
                            return Err(cx.invalid(e, reason));
                        }
                        continue;
                    }
                    visit(cx, raw, refs, name, path, out)?;
                }
                None => {
                    if !out.contains(member) {
                        out.push(member.clone());
                    }
                }
            }
        }
        path.pop();
        Ok(())
    }
    let raw = servers.clone();
    for (group, members) in servers.iter_mut() {
        if !members.iter().any(|m| m.starts_with('@')) {
            continue;
        }
        let mut out = Vec::new();
        visit(cx, &raw, refs, group, &mut Vec::new(), &mut out)?;
        *members = out;
    }
    Ok(())
}

/// `host`, `host:port`, `a.b.c.d[:port]`, `[v6][:port]` (a bare IPv6 address too),
/// `ssh://[user@]host[:port]`, `proxy://host[:port]/group`.
fn valid_target(s: &str) -> bool {
    if s.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("nats://"))
    {
        return Target::parse(s, 0).is_ok_and(|t| t.scheme == Scheme::Nats);
    }
    if is_ssh(s) {
        return Target::parse(s, 22).is_ok_and(|t| t.scheme == Scheme::Ssh);
    }
    if let Some(rest) = s.strip_prefix("proxy://") {
        // A chained proxy: proxy://host[:port]/group
        return match rest.split_once('/') {
            Some((host, group)) => {
                !group.is_empty() && !group.contains('/') && valid_plain_target(host)
            }
            None => false,
        };
    }
    valid_plain_target(s)
}

fn valid_plain_target(s: &str) -> bool {
    let port_ok = |p: &str| p.parse::<u16>().is_ok() && p.bytes().all(|b| b.is_ascii_digit());
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, tail)) => {
                v6.parse::<Ipv6Addr>().is_ok()
                    && (tail.is_empty() || tail.strip_prefix(':').is_some_and(port_ok))
            }
            None => false,
        };
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return true;
    }
    match s.split_once(':') {
        Some((host, port)) => name_ok(host) && port_ok(port),
        None => name_ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const ETC_PROXY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/deploy_proxy.ini");
    const ETC_API: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/deploy_proxy_api.ini");

    fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::parse(text, Path::new("/etc/deploy/deploy_proxy.ini"))
    }

    fn api(text: &str) -> Result<ApiKeys, ConfigError> {
        ApiKeys::parse(text, Path::new("/etc/deploy/api.ini"))
    }

    #[test]
    fn shipped_proxy_ini_loads() {
        let c = ProxyConfig::load(Path::new(ETC_PROXY)).unwrap();
        // The sample documents the defaults, but for the callers' secret, which it
        // leaves as a placeholder the proxy refuses to start with.
        assert_eq!(
            c.server,
            ServerConfig {
                key_cipher: "change-me".into(),
                ..ServerConfig::proxy_defaults()
            }
        );
        assert_eq!(c.client.key_cipher, "change-me");
        assert_eq!(
            c.client,
            ProxyClientConfig {
                key_cipher: "change-me".into(),
                ..ProxyClientConfig::default()
            }
        );
        assert!(c.allow_hosts.allows("127.0.0.1".parse::<IpAddr>().unwrap()));
        let etc = Path::new(ETC_PROXY).parent().unwrap();
        assert_eq!(
            c.api_path.as_deref(),
            Some(etc.join("deploy_proxy_api.ini").as_path())
        );
        assert!(c.api.key_count() > 0);
        assert_eq!(c.ssh, ProxySshConfig::default());
        assert!(!c.server.allow_run);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    }

    #[test]
    fn shipped_api_ini_parses() {
        let keys = ApiKeys::load(Path::new(ETC_API)).unwrap();
        assert_eq!(
            keys.groups_for("change-me-api-key"),
            Some(&["web".to_string(), "db".to_string()][..])
        );
        assert_eq!(
            keys.groups_for("change-me-web-only"),
            Some(&["web".to_string()][..])
        );
        assert_eq!(keys.groups_for("nope"), None);
        assert_eq!(keys.servers("web").unwrap(), ["127.0.0.1", "[::1]:3440"]);
        assert!(keys.servers("db").is_some());
    }

    #[test]
    fn key_names() {
        let hashed = "sha256:0fdd93d2188ce4987e70277a5fef28d4fbf22637e279eb76ab1e88c0dcfca107";
        let api = ApiKeys::parse(
            &format!("[keys]\na[] = web\nb[] = web\n{hashed}[] = web\n[names]\nb = ci\n{hashed} = ops\nzz = ghost\n"),
            Path::new("/etc/deploy/api.ini"),
        )
        .unwrap();
        assert_eq!(api.name_for("a").as_deref(), Some("key1"));
        assert_eq!(api.name_for("b").as_deref(), Some("ci"));
        assert_eq!(api.name_for("change-me-web-only").as_deref(), Some("ops"));
        assert_eq!(api.name_for("zz"), None, "a name alone grants nothing");
        for bad in [
            "[names]\na[] = x\n",
            "[names]\na = \n",
            "[names]\na = x y\n",
        ] {
            assert!(
                ApiKeys::parse(bad, Path::new("/etc/deploy/api.ini")).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c,
            ProxyConfig::defaults(Path::new("/etc/deploy/deploy_proxy.ini"))
        );
        assert_eq!(c.server.port, 3441);
        assert_eq!(c.server.process_name, "deploy::proxy:");
        assert_eq!(c.client.port, 3440);
        assert_eq!(c.client.thread_timeout, Duration::from_secs(10));
        assert_eq!(c.client.socket_timeout, Duration::from_secs(5));
        assert_eq!(c.client.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.client.concurrency, 256);
        assert_eq!(c.client.key_cipher, "65535");
        assert!(c.allow_hosts.is_empty() && c.api_path.is_none() && c.api.key_count() == 0);
    }

    #[test]
    fn client_section() {
        let c = parse(
            "[client]\nport = 4440\nthread_timeout = 20\nsocket_timeout = 2\n\
             key_cipher = k\nssl = on\nssl_public_key = agents.pem\n\
             ipc_path = /tmp/.deploy_proxy_ipc\nworker_method = fork\n\
             concurrency = 8\nconnect_timeout = 1\n[api]\npath = /opt/api.ini\n",
        )
        .unwrap();
        assert_eq!(c.client.port, 4440);
        assert_eq!(c.client.thread_timeout, Duration::from_secs(20));
        assert!(c.client.ssl);
        assert_eq!(
            c.client.ssl_public_key.as_deref(),
            Some(Path::new("/etc/deploy/agents.pem"))
        );
        assert_eq!(c.client.concurrency, 8);
        assert_eq!(c.api_path.as_deref(), Some(Path::new("/opt/api.ini")));
        let keys: Vec<_> = c.ignored.iter().map(|i| (i.line, i.key.as_str())).collect();
        assert_eq!(keys, [(8, "ipc_path"), (9, "worker_method")]);
    }

    #[test]
    fn store_section() {
        let c = parse("[store]\nbackend = nats\nserver[] = nats://127.0.0.1:4222, tls://n2:4222\nprefix = f1-\nreplicas = 1\ncredentials = n.creds\nkey = k3y\n").unwrap();
        assert_eq!(c.store.key.as_deref(), Some("k3y"));
        assert_eq!(c.store.backend, StoreBackend::Nats);
        assert_eq!(c.store.servers, ["nats://127.0.0.1:4222", "tls://n2:4222"]);
        assert_eq!((c.store.prefix.as_str(), c.store.replicas), ("f1-", 1));
        assert_eq!(
            c.store.credentials.as_deref(),
            Some(Path::new("/etc/deploy/n.creds"))
        );
        assert_eq!(parse("").unwrap().store, ProxyStoreConfig::default());
        let e = parse("[store]\nbackend = nats\n").unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/deploy/deploy_proxy.ini:1: [store]"),
            "{e}"
        );
        assert!(e.contains("server[]"), "{e}");
        // No shared store without the key its values are sealed with.
        let e = parse("[store]\nbackend = nats\nserver[] = nats://127.0.0.1:4222\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/deploy/deploy_proxy.ini:1: [store]") && e.contains("key"),
            "{e}"
        );
        let e = parse("[store]\nbackend = nats\nserver[] = nats://a:4222\nkey =\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key"), "{e}");
    }

    #[test]
    fn proxy_errors() {
        for (text, want) in [
            (
                "[allow::paths]\npath[] = /\n",
                "/etc/deploy/deploy_proxy.ini:1: unknown section [allow::paths] (expected server, client, allow::hosts, api, ssh, store or nats)",
            ),
            (
                "[client]\nport = x\n",
                "/etc/deploy/deploy_proxy.ini:2: [client] port: invalid number \"x\"",
            ),
            (
                "[client]\nconcurrency = 0\n",
                "/etc/deploy/deploy_proxy.ini:2: [client] concurrency: must be at least 1",
            ),
            (
                "[client]\nhost[] = x\n",
                "/etc/deploy/deploy_proxy.ini:2: [client] host[]: unknown key",
            ),
            (
                "[api]\npath[] = x\n",
                "/etc/deploy/deploy_proxy.ini:2: [api] path[]: is a single value: write `path = …`",
            ),
            (
                "[store]\nbackend = etcd\n",
                "/etc/deploy/deploy_proxy.ini:2: [store] backend: expected redb or nats, got \"etcd\"",
            ),
            (
                "[store]\nserver[] = nats://a:4222\nserver[] = http://b:4222\n",
                "/etc/deploy/deploy_proxy.ini:3: [store] server[]: \"http://b:4222\": expected nats://host:port or tls://host:port",
            ),
            (
                "[store]\nreplicas = 0\n",
                "/etc/deploy/deploy_proxy.ini:2: [store] replicas: must be 1 to 5",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), want, "{text:?}");
        }
    }

    #[test]
    fn keys_plain_and_hashed() {
        let hashed = ApiKeys::hashed_form("s3cret");
        assert_eq!(
            hashed,
            "sha256:1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"
        );
        let keys = api(&format!(
            "[keys]\n\
             plain[] = web, db\n\
             plain[] = ,extra,\n\
             {hashed}[] = web\n\
             s3cret[] = db\n\
             [servers]\n\
             web[] = web1.example.org\n\
             web[] = 192.0.2.1:3440\n\
             web[] = [2001:db8::1]:4000\n\
             web[] = web1.example.org\n\
             db[] = 2001:db8::2\n"
        ))
        .unwrap();
        assert_eq!(
            keys.key_count(),
            2,
            "a plain key and its hash are the same key"
        );
        assert_eq!(keys.groups_for("plain").unwrap(), ["web", "db", "extra"]);
        assert_eq!(keys.groups_for("s3cret").unwrap(), ["web", "db"]);
        assert_eq!(keys.groups_for(&hashed), None, "the hash is not the key");
        assert_eq!(keys.groups_for("Plain"), None);
        assert_eq!(keys.groups_for(""), None);
        assert_eq!(keys.servers("web").unwrap().len(), 4, "duplicates kept");
        assert_eq!(keys.servers("db").unwrap(), ["2001:db8::2"]);
        assert_eq!(keys.servers("nope"), None);
        assert_eq!(keys.server_groups().collect::<Vec<_>>(), ["db", "web"]);
        assert!(
            !format!("{keys:?}").contains("1ec1"),
            "Debug hides key material"
        );
    }

    #[test]
    fn api_errors() {
        for (text, want) in [
            (
                "[keys]\nk = web\n",
                "/etc/deploy/api.ini:2: [keys] k: is a list: write `k[] = …`",
            ),
            (
                "[keys]\nk[] = , ,\n",
                "/etc/deploy/api.ini:2: [keys] k[]: no groups (expected a comma list)",
            ),
            (
                "[keys]\nsha256:abcd[] = web\n",
                "/etc/deploy/api.ini:2: [keys] sha256:abcd[]: a hashed key needs 64 hex digits after sha256:, found 4",
            ),
            (
                "[servers]\nweb[] = host:99999\n",
                "/etc/deploy/api.ini:2: [servers] web[]: invalid server \"host:99999\" (expected a host name or IPv4 address, or [IPv6], optionally with :port; or ssh://[user@]host[:port], or nats://name; node sets like web[01-20] expand to these)",
            ),
            (
                "[server]\n",
                "/etc/deploy/api.ini:1: unknown section [server] (expected keys, orders, servers, names or group::<name>)",
            ),
            ("k[] = web\n", "/etc/deploy/api.ini:1: key \"k[]\" before the first [section] header"),
        ] {
            assert_eq!(api(text).unwrap_err().to_string(), want, "{text:?}");
        }
        let bad_hex = format!("[keys]\nsha256:{}[] = web\n", "zz".repeat(32));
        assert!(api(&bad_hex)
            .unwrap_err()
            .to_string()
            .contains("hexadecimal"));
    }

    #[test]
    fn targets() {
        for ok in [
            "h",
            "h.example.org",
            "h:1",
            "10.0.0.1",
            "10.0.0.1:3440",
            "[::1]",
            "[::1]:3440",
            "::1",
            "under_score",
            "ssh://h",
            "SSH://root@h:2222",
            "ssh://[::1]:22",
            "proxy://p:3441/web",
        ] {
            assert!(valid_target(ok), "{ok:?}");
        }
        for bad in [
            "",
            "h:",
            "h:x",
            "[::1",
            "[::1]:",
            "[x]:1",
            "a b",
            "h:1:2x",
            "h:+1",
            "ssh://",
            "ssh://@h",
            "ssh://h:0",
            "ssh://a b",
            "rsh://h",
            "proxy://p",
        ] {
            assert!(!valid_target(bad), "{bad:?}");
        }
    }

    #[test]
    fn ssh_section() {
        let c = parse("").unwrap();
        assert_eq!(c.ssh, ProxySshConfig::default());
        assert!(!c.has_ssh_servers());
        let c = parse(
            "[ssh]\nidentity[] = keys/id_ed25519\nidentity[] = /k/id_rsa\n\
             known_hosts = known_hosts\naccept_new_host_keys = on\nconfig = /etc/deploy/ssh_config\n\
             user = deploy\nconnect_timeout = 4\nkeepalive = 15\n",
        )
        .unwrap();
        assert_eq!(
            c.ssh,
            ProxySshConfig {
                identities: vec![
                    PathBuf::from("/etc/deploy/keys/id_ed25519"),
                    PathBuf::from("/k/id_rsa")
                ],
                known_hosts: Some(PathBuf::from("/etc/deploy/known_hosts")),
                accept_new_host_keys: true,
                config: Some(PathBuf::from("/etc/deploy/ssh_config")),
                user: Some("deploy".into()),
                connect_timeout: Some(Duration::from_secs(4)),
                keepalive: Some(Duration::from_secs(15)),
            }
        );
        assert_eq!(parse("[ssh]\nkeepalive = 0\n").unwrap().ssh.keepalive, None);
        for (text, want) in [
            (
                "[ssh]\nidentity = k\n",
                "/etc/deploy/deploy_proxy.ini:2: [ssh] identity: is a list: write `identity[] = …`",
            ),
            (
                "[ssh]\nknown_hosts[] = k\n",
                "/etc/deploy/deploy_proxy.ini:2: [ssh] known_hosts[]: is a single value: write `known_hosts = …`",
            ),
            (
                "[ssh]\naccept_new_host_keys = maybe\n",
                "/etc/deploy/deploy_proxy.ini:2: [ssh] accept_new_host_keys: invalid boolean \"maybe\" (expected true, on, 1, yes, false, off, 0 or no)",
            ),
            (
                "[ssh]\nuser = a@b\n",
                "/etc/deploy/deploy_proxy.ini:2: [ssh] user: invalid user name \"a@b\"",
            ),
            (
                "[ssh]\nconnect_timeout = 0\n",
                "/etc/deploy/deploy_proxy.ini:2: [ssh] connect_timeout: must be at least 1",
            ),
            (
                "[ssh]\npassword = x\n",
                "/etc/deploy/deploy_proxy.ini:2: [ssh] password: unknown key",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), want, "{text:?}");
        }
    }

    #[test]
    fn groups_include_groups() {
        let k = api("[servers]\nweb[] = w1 w2\ndb[] = d1 w1\nall[] = @web,@db\n\
             all[] = x1 w2\ntop[] = @all !d1\nweb[] = w3\n")
        .unwrap();
        assert_eq!(k.servers("all").unwrap(), ["w1", "w2", "w3", "d1", "x1"]);
        assert_eq!(k.servers("top").unwrap(), ["w1", "w2", "w3", "x1"]);
        assert_eq!(k.servers("web").unwrap(), ["w1", "w2", "w3"]);
        let err = |text: &str| api(text).unwrap_err().to_string();
        assert_eq!(
            err("[servers]\na[] = h1\na[] = @b\nb[] = @a\n"),
            "/etc/deploy/api.ini:4: [servers] b[]: groups include each other: a → b → a"
        );
        assert_eq!(
            err("[servers]\na[] = h1 @a\n"),
            "/etc/deploy/api.ini:2: [servers] a[]: groups include each other: a → a"
        );
        assert_eq!(
            err("[servers]\na[] = @nope\n"),
            "/etc/deploy/api.ini:2: [servers] a[]: group \"a\" includes @nope, which is not a group of [servers]"
        );
        assert!(err("[servers]\na[] = h1 !@b\nb[] = h2\n").contains("cannot be excluded"));
        assert!(err("[servers]\na[] = @\n").contains("expected @<group>"));
    }

    #[test]
    fn ssh_servers() {
        let mut c = parse("").unwrap();
        c.api =
            api("[keys]\nk[] = web\n[servers]\nweb[] = h1\nweb[] = SSH://root@h2:2222\n").unwrap();
        assert!(c.has_ssh_servers());
        assert_eq!(c.api.servers("web").unwrap(), ["h1", "SSH://root@h2:2222"]);
        // Node sets, with exclusions anywhere in the group.
        c.api = api(
            "[servers]\nweb[] = !web03\nweb[] = web[01-04]\nweb[] = ssh://db[1,3]\ndb[] = x[8-10] !x9\n",
        )
        .unwrap();
        assert_eq!(
            c.api.servers("web").unwrap(),
            ["web01", "web02", "web04", "ssh://db1", "ssh://db3"]
        );
        assert_eq!(c.api.servers("db").unwrap(), ["x8", "x10"]);
        let e = api("[servers]\nweb[] = web[3-1]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("web[3-1]") && e.contains("goes backwards"),
            "{e}"
        );
        c.api = api("[servers]\nweb[] = h1\nfar[] = proxy://p/web\n").unwrap();
        assert!(!c.has_ssh_servers());
    }

    #[test]
    fn load_reports_missing_api_file_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("proxy.ini");
        std::fs::write(&ini, "[api]\npath = api.ini\n").unwrap();
        let e = ProxyConfig::load(&ini).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2: [api] path: cannot read ", ini.display())),
            "{e}"
        );
        std::fs::write(dir.path().join("api.ini"), "[keys]\nk[] = g\n").unwrap();
        assert_eq!(
            ProxyConfig::load(&ini)
                .unwrap()
                .api
                .groups_for("k")
                .unwrap(),
            ["g"]
        );
    }
}
