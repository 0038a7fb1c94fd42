//! Connecting to a NATS cluster from a `[nats]` section ([`NatsConfig`]).
//!
//! The client keeps trying for ever: at start (`retry_on_initial_connect`), and after
//! losing its server, among every server of the list and those the cluster announces.
//! Subscriptions are restored by the client on reconnection, so callers and agents
//! keep their subjects without doing anything.

use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use deploy_common::config::nats::NatsConfig;

/// Why a connection could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A `server[]` entry is not a NATS URL.
    #[error("[nats] server[] {url:?}: {cause}")]
    Url {
        /// As written.
        url: String,
        /// The client's complaint.
        cause: String,
    },
    /// A key or credentials file could not be read.
    #[error("[nats] {key} {path}: {cause}")]
    File {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The client refused the options.
    #[error("NATS: {0}")]
    Client(String),
}

/// `url` without its `user:password@` part, for messages.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", url.get(at + 1..).unwrap_or("")),
        _ => url.to_owned(),
    }
}

/// Connects with `config`, naming the connection `name` (seen in the servers'
/// monitoring). `persistent` (daemons): returns at once and keeps trying to connect
/// in the background (`retry_on_initial_connect`); otherwise (a one-shot client) the
/// first failure is an error. Both reconnect for ever once connected.
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    persistent: bool,
) -> Result<async_nats::Client, ConnectError> {
    let servers = config
        .servers
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>().map_err(|e| ConnectError::Url {
                url: url.clone(),
                cause: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(10))
        .max_reconnects(None)
        .event_callback(|event| async move {
            tracing::info!(event = %event, "nats connection");
        });
    // `nats://user:password@host:port` (as `--nats-servers` may give them): the
    // client does not take them from the URL by itself.
    let from_url = servers
        .iter()
        .find(|s| s.has_user_pass())
        .and_then(|s| Some((s.username()?.to_owned(), s.password()?.to_owned())));
    if let (None, Some((user, password))) = (&config.user, from_url) {
        options = options.user_and_password(user, password);
    }
    if persistent {
        options = options.retry_on_initial_connect();
    }
    if let Some((user, password)) = &config.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(path) = &config.nkey {
        let seed = std::fs::read_to_string(path).map_err(|cause| ConnectError::File {
            key: "nkey",
            path: path.display().to_string(),
            cause,
        })?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &config.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|cause| ConnectError::File {
                key: "credentials",
                path: path.display().to_string(),
                cause,
            })?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.tls_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options
        .connect(servers)
        .await
        .map_err(|e| ConnectError::Client(e.to_string()))
}
