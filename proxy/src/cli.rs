//! deploy-proxy's command line: the configuration file, the flags shared with the agent
//! ([`ServerArgs`]), and the original's `--client-*` flags (which, unlike the
//! original's `--client-port`, all take effect).

use clap::{Parser, ValueEnum};
use deploy_common::cli::ServerArgs;
use deploy_common::config::proxy::{AgentProtocol, ProxyConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The agents' protocol.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    /// deploy v2.
    V2,
    /// The original's wire.
    V1,
}

/// deploy-proxy: authenticates API keys and relays one order to many agents at once.
#[derive(Debug, Parser)]
#[command(name = "deploy-proxy", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (INI).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/deploy/deploy_proxy.ini"
    )]
    pub path: PathBuf,
    /// Flags over `[server]`.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The agents' port (`[client] port`).
    #[arg(long = "client-port")]
    pub client_port: Option<u16>,
    /// Bound on one exchange with one agent, seconds (`[client] thread_timeout`).
    #[arg(long = "client-thread-timeout")]
    pub client_thread_timeout: Option<u64>,
    /// Bound on connecting to one agent, seconds (`[client] socket_timeout`).
    #[arg(long = "client-socket-timeout")]
    pub client_socket_timeout: Option<u64>,
    /// The agents' shared secret (`[client] key_cipher`).
    #[arg(
        long = "client-key-cipher",
        env = "DEPLOY_CLIENT_KEY_CIPHER",
        hide_env_values = true
    )]
    pub client_key_cipher: Option<String>,
    /// The agents' RSA public key (`[client] ssl_public_key`).
    #[arg(long = "client-ssl-public-key")]
    pub client_ssl_public_key: Option<PathBuf>,
    /// The agents' protocol (`[client] protocol`).
    #[arg(long = "client-protocol")]
    pub client_protocol: Option<ProtocolArg>,
    /// Accepted for compatibility; results are passed in memory.
    #[arg(long = "client-ipc-path", hide = true)]
    pub client_ipc_path: Option<String>,
    /// Accepted for compatibility; agents are contacted from one process.
    #[arg(long = "client-worker-method", hide = true)]
    pub client_worker_method: Option<String>,
    /// Address of the HTTP/JSON API (`[client] http_listen`), e.g. 127.0.0.1:3442.
    #[arg(long = "http-listen")]
    pub http_listen: Option<SocketAddr>,
}

impl Cli {
    /// Applies the flags over a loaded configuration.
    pub fn apply(&self, config: &mut ProxyConfig) {
        self.server.apply(&mut config.server);
        let c = &mut config.client;
        if let Some(v) = self.client_port {
            c.port = v;
        }
        if let Some(v) = self.client_thread_timeout {
            c.thread_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = self.client_socket_timeout {
            c.connect_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = &self.client_key_cipher {
            c.key_cipher = v.clone();
        }
        if let Some(v) = &self.client_ssl_public_key {
            c.ssl_public_key = Some(v.clone());
        }
        if let Some(v) = self.client_protocol {
            c.protocol = match v {
                ProtocolArg::V2 => AgentProtocol::V2,
                ProtocolArg::V1 => AgentProtocol::V1,
            };
        }
        if let Some(v) = self.http_listen {
            c.http_listen = Some(v);
        }
    }
}
