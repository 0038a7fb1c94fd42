//! Where each server of the API file is reached, and how.
//!
//! A `[servers]` entry is an agent (`host`, `host:port`, `[v6]:port`; the port defaults
//! to `[client] port` or the group's override), an agentless host
//! (`ssh://[user@]host[:port]`, port 22 by default, reached over native SSH with the
//! options of `[ssh]`, see [`crate::ssh`]) or another proxy
//! (`proxy://host[:port]/group`, default port 3441), which gets the order with
//! `groups:<group>`, `[client] proxy_api_key`, and this proxy in its `via` list. Every
//! server carries its [`Route`] (protocol, key, public key from `[client]` and
//! `[group::<name>]`, or the chained group), which is the [`Transport`] the fan-out engine
//! uses for it: the same address listed in two groups keeps each group's route.
//!
//! ```text
//! group route = Mux ─┬─ host, host:port     → the group's AgentTransport (pooled)
//!                    └─ ssh://…             → the proxy's one SshTransport (if any server is ssh://)
//!                    └─ nats://name         → the group's LazyNatsTransport (one NATS link for the proxy, `[nats]`)
//! chained route      → AgentTransport (v2, unpinned) with groups:<group> and proxy_api_key
//! ```
//!
//! A group whose servers are all `nats://` agents and whose `[group::<name>]` says
//! `nats_publish = on` is asked with one publish on `deploy.group.<group>` when an
//! order names the whole group ([`Route::nats_group`], used by the relay's fan-out);
//! its agents list the group in `[nats] group[]`.
//!
//! A group's agents and SSH hosts share its route, so one fan-out (and one concurrency
//! limit) covers the whole group.

use deploy_common::config::proxy::{AgentProtocol, ProxyConfig};
use deploy_common::crypto::keys::RsaPublicKey;
use deploy_common::order::Request;
use deploy_common::ssh::SshTransport;
use deploy_common::target::{Scheme, Target};
use deploy_common::transport::agent::Pool;
use deploy_common::transport::{AgentTransport, BoxFuture, Mux, Outcome, Protocol, Transport};
use deploy_common::wire::message::TaggedEvent;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How one server is reached.
pub struct Route {
    /// A group's [`Mux`] (agents and SSH hosts), or a chained proxy's agent transport.
    transport: Arc<dyn Transport>,
    /// For a chained proxy: the group to ask it for.
    chain: Option<String>,
    /// The API key presented to a chained proxy.
    proxy_api_key: String,
    /// A group of `nats://` agents only: its name, its size and its NATS transport, for
    /// one publish to the whole group.
    nats_group: Option<(
        String,
        usize,
        Arc<deploy_nats::transport::LazyNatsTransport>,
    )>,
}

/// One `[servers]` entry, resolved.
#[derive(Clone)]
pub struct Server {
    /// The entry as written (what `hosts:` names).
    pub entry: String,
    /// Where it is.
    pub target: Target,
    /// Whether it is a chained proxy.
    pub chained: bool,
    /// How it is reached.
    pub route: Arc<Route>,
}

/// Every group's servers and the routes to them.
pub struct Routes {
    groups: HashMap<String, Vec<Server>>,
}

impl Routes {
    /// Resolves every `[servers]` entry of the configuration; `ssh` reaches the `ssh://`
    /// ones ([`crate::ssh::transport`]). Errors name the group and the entry, or the key
    /// file.
    pub fn new(config: &ProxyConfig, ssh: Option<Arc<SshTransport>>) -> Result<Routes, String> {
        let ssh: Option<Arc<dyn Transport>> = ssh.map(|t| t as Arc<dyn Transport>);
        let client = &config.client;
        // A key under 2048 bits (the Perl deploy's fleets) is taken for the v1 "ssl"
        // mode only, with a warning; a v2 group refuses it.
        let load_key = |path: &std::path::Path, protocol: AgentProtocol| {
            let key = match protocol {
                AgentProtocol::V1 => RsaPublicKey::load_v1(path),
                AgentProtocol::V2 => RsaPublicKey::load(path),
            }
            .map_err(|e| e.to_string())?;
            if key.is_legacy() {
                tracing::warn!(
                    key = %path.display(),
                    bits = key.bits(),
                    "a legacy RSA key, accepted for the v1 \"ssl\" mode only; replace it with one of at least 2048 bits"
                );
            }
            Ok::<_, String>(Arc::new(key))
        };
        // Loaded at most once per protocol that uses it.
        let mut default_keys: Vec<(AgentProtocol, Arc<RsaPublicKey>)> = Vec::new();
        // One pool of authenticated agent connections for the whole worker.
        let pool = Arc::new(Pool::default());
        // One NATS connection for the whole worker, made at the first nats:// order.
        let link = config
            .nats
            .clone()
            .map(|n| Arc::new(deploy_nats::transport::NatsLink::new(n, true)));
        let mut groups = HashMap::new();
        let proxy_api_key = client.proxy_api_key.clone().unwrap_or_default();
        for group in config.api.server_groups() {
            let o = config
                .api
                .group_override(group)
                .cloned()
                .unwrap_or_default();
            let wire = o.protocol.unwrap_or(client.protocol);
            let public_key = match (&o.ssl_public_key, &client.ssl_public_key) {
                (Some(path), _) => Some(load_key(path, wire)?),
                (None, Some(path)) => match default_keys.iter().find(|(p, _)| *p == wire) {
                    Some((_, key)) => Some(Arc::clone(key)),
                    None => {
                        let key = load_key(path, wire)?;
                        default_keys.push((wire, Arc::clone(&key)));
                        Some(key)
                    }
                },
                (None, None) => None,
            };
            let protocol = match wire {
                AgentProtocol::V2 => Protocol::V2,
                AgentProtocol::V1 => Protocol::V1,
            };
            let agent = Arc::new(AgentTransport {
                protocol,
                key_cipher: o
                    .key_cipher
                    .clone()
                    .unwrap_or_else(|| client.key_cipher.clone()),
                // v1 "ssl" only when [client] ssl = true; v2 pins whenever a key is known.
                public_key: match protocol {
                    Protocol::V1 if !client.ssl && o.ssl_public_key.is_none() => None,
                    _ => public_key,
                },
                connect_timeout: client.connect_timeout,
                deadline: client.thread_timeout,
                pool: Some(Arc::clone(&pool)),
            });
            // Every agent and SSH host of the group shares one route (one fan-out per
            // route).
            let nats = link.as_ref().map(|link| {
                Arc::new(deploy_nats::transport::LazyNatsTransport::new(
                    Arc::clone(link),
                    &agent.key_cipher,
                    client.thread_timeout,
                ))
            });
            let entries = config.api.servers(group).unwrap_or_default();
            let all_nats = !entries.is_empty()
                && entries
                    .iter()
                    .all(|e| Target::parse(e, 0).is_ok_and(|t| t.scheme == Scheme::Nats));
            let group_route = Arc::new(Route {
                transport: Arc::new(Mux {
                    agent: Arc::clone(&agent) as Arc<dyn Transport>,
                    ssh: ssh.clone(),
                    nats: nats.clone().map(|t| t as Arc<dyn Transport>),
                }),
                chain: None,
                proxy_api_key: String::new(),
                nats_group: nats
                    .filter(|_| {
                        o.nats_publish
                            && all_nats
                            && deploy_common::config::nats::is_subject_token(group)
                    })
                    .map(|t| (group.to_owned(), entries.len(), t)),
            });
            let mut servers = Vec::new();
            for entry in config.api.servers(group).unwrap_or_default() {
                let (spec, chain, default_port) = match entry.strip_prefix("proxy://") {
                    Some(rest) => {
                        let (host, chained_group) = rest.split_once('/').unwrap_or((rest, ""));
                        (host, Some(chained_group.to_owned()), 3441)
                    }
                    None => (entry.as_str(), None, o.port.unwrap_or(client.port)),
                };
                let target = Target::parse(spec, default_port)
                    .map_err(|e| format!("[servers] {group}: {e}"))?;
                if target.scheme == Scheme::Nats && link.is_none() {
                    return Err(format!(
                        "[servers] {group}: {entry}: nats:// servers need a [nats] section"
                    ));
                }
                if target.scheme == Scheme::Ssh && ssh.is_none() {
                    // Cannot happen: the transport exists whenever a server is ssh://.
                    return Err(format!("[servers] {group}: {entry}: no SSH transport"));
                }
                let route = match chain {
                    None => Arc::clone(&group_route),
                    // A chained proxy speaks v2 and is not pinned to the agents' key.
                    Some(chained_group) => Arc::new(Route {
                        transport: Arc::new(AgentTransport {
                            protocol: Protocol::V2,
                            public_key: None,
                            ..(*agent).clone()
                        }),
                        chain: Some(chained_group),
                        proxy_api_key: proxy_api_key.clone(),
                        nats_group: None,
                    }),
                };
                servers.push(Server {
                    entry: entry.clone(),
                    chained: route.chain.is_some(),
                    target,
                    route,
                });
            }
            groups.insert(group.to_owned(), servers);
        }
        Ok(Routes { groups })
    }

    /// The servers of a group (exact name).
    pub fn group(&self, name: &str) -> Option<&[Server]> {
        self.groups.get(name).map(Vec::as_slice)
    }
}

impl Route {
    /// The group, and its NATS transport, when `targets` are every server of a group
    /// of `nats://` agents (then one publish reaches them all).
    pub fn nats_group(
        &self,
        targets: &[Target],
    ) -> Option<(&str, &Arc<deploy_nats::transport::LazyNatsTransport>)> {
        let (group, size, transport) = self.nats_group.as_ref()?;
        let distinct: std::collections::HashSet<&str> =
            targets.iter().map(|t| t.host.as_str()).collect();
        (targets.len() == *size && distinct.len() == *size).then_some((group.as_str(), transport))
    }

    /// The request as this route sends it: a chained proxy gets its group and the key
    /// for it.
    fn request_for<'r>(&self, request: &'r Request) -> Cow<'r, Request> {
        match &self.chain {
            None => Cow::Borrowed(request),
            Some(group) => Cow::Owned(Request {
                api_key: self.proxy_api_key.clone(),
                args: format!("groups:{group}"),
                ..request.clone()
            }),
        }
    }
}

impl Transport for Route {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        // The names a chained proxy puts on its agents' events pass through.
        Box::pin(async move {
            let request = self.request_for(request);
            self.transport.deliver(target, &request, events).await
        })
    }

    /// A chained proxy is connected to (and authenticated with) like an agent.
    fn connect<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), Outcome>> {
        Box::pin(async move {
            let request = self.request_for(request);
            self.transport.connect(target, &request).await
        })
    }
}
