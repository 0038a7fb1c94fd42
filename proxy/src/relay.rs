//! The proxy's order handler: authorize the API key, select the agents, fan the order
//! out, and merge (or stream) their results.
//!
//! Authorization keeps the original's rules and texts (spec §3.2) but matches names
//! exactly (case-insensitively), never as regular expressions:
//!
//! ```text
//! args = hosts:<h1,h2,…>   every host must be a server of one of the key's groups
//! args = groups:<g1,g2,…>  every group must be one of the key's groups; their servers
//! anything else            403 Syntax error, unrecognized expression: [<args>]
//! refused                  403 You don't have permission to access on this[<item>].
//! order not in [orders]    403 This API key may not send the order [<order>].
//! run, [server] allow_run off   403 run is disabled on this proxy (allow_run = off)
//! ```
//!
//! The same rules cover every kind of server: an `ssh://` host is reachable only by the
//! keys whose groups list it, like an agent. `run` is relayed only when the proxy's own
//! `[server] allow_run` is on: agents refuse it unless theirs is too, but an `ssh://`
//! host has nothing else to refuse it.
//!
//! Replies: to v1 clients (and the non-streaming HTTP API), one body in the original's
//! nested shape, `{agent: {order: {return, serverStatus, returnCode, returnString,
//! content}}}`. To v2 clients, every agent's record is streamed as an [`Event::Host`] the
//! moment it arrives, and the reply only counts them. `follow` is passed on to the
//! agents (an rsync then answers when the transfer has ended), and the output lines and
//! progress they stream (an `ssh://` host streams its lines always) are relayed to a v2
//! caller as they come, each tagged with its agent's name
//! ([`TaggedEvent`](deploy_common::wire::message::TaggedEvent)), so that the caller can
//! show them under that name:
//!
//! ```text
//! agent web1 ─ {"kind":"line","line":"hi"} ─► proxy ─ {"host":"web1","event":{"kind":"line","line":"hi"}} ─► client
//! ```
//!
//! A strict request (`strict`, which deploy-client sets unless `--skip-unreachable`)
//! is all or nothing: every selected server is connected to first, whatever its group
//! ([`gate`]); if one cannot be, the order goes nowhere, that server's record says why
//! and every other one is a 503 "not started" naming it. A chained proxy gets the
//! request with `strict` and does the same for its own servers.
//!
//! `upload` and `napp` push carry the caller's files as the request's body: once the
//! order is authorized (and, strict, every server connected) the proxy asks the caller
//! for it and sends it as is to every agent (and chained proxy) of the selection while
//! it arrives, through a spool file each reads at its own pace ([`crate::spool`]). `ssh://` servers are refused for these (501), as callers
//! that cannot send a body (v1, the HTTP API: 400).

use crate::route::{Route, Routes, Server};
use deploy_common::config::proxy::ProxyConfig;
use deploy_common::fanout::{Fanout, FanoutEvent};
use deploy_common::gate;
use deploy_common::order::{object, scenario_versions, OrderName, Reply, Request};
use deploy_common::server::conn::{Events, Handler};
use deploy_common::target::{Scheme, Target};
use deploy_common::transport::Transport;
use deploy_common::wire::message::{Event, TaggedEvent};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The proxy's handler; one per worker.
pub struct Relay {
    config: Arc<ProxyConfig>,
    routes: Arc<Routes>,
    concurrency: usize,
    /// The state kept for every caller (scenario versions, leases, the inventory).
    store: crate::store::SharedStore,
    /// This proxy's name in `via` lists.
    pub id: String,
}

impl Relay {
    /// Builds the handler from a configuration.
    pub fn new(config: Arc<ProxyConfig>) -> Result<Relay, String> {
        let ssh = crate::ssh::transport(&config)?;
        let routes = Arc::new(Routes::new(&config, ssh)?);
        let concurrency = config.client.concurrency;
        let id = config.client.proxy_id.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into());
            match config.server.port {
                0 => host,
                port => format!("{host}:{port}"),
            }
        });
        let store = crate::store::SharedStore::new(&config);
        Ok(Relay {
            config,
            routes,
            concurrency,
            store,
            id,
        })
    }

    /// The servers `request` may reach, or the 403 reply.
    fn authorize(&self, request: &Request) -> Result<Vec<Server>, Reply> {
        let args: String = request
            .args
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        let Some((kind, list)) = args.split_once(':') else {
            return Err(Reply::error(
                403,
                format!("Syntax error, unrecognized expression: [{args}]"),
            ));
        };
        let items: Vec<&str> = list.split(',').filter(|i| !i.is_empty()).collect();
        let denied = |item: &str| {
            Reply::error(
                403,
                format!("You don't have permission to access on this[{item}]."),
            )
        };
        let api = &self.config.api;
        let key: String = request
            .api_key
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let Some(groups) = api.groups_for(&key) else {
            return Err(denied(items.first().copied().unwrap_or_default()));
        };
        if let Some(orders) = api.orders_for(&key) {
            if !orders.iter().any(|o| o == &request.order) {
                return Err(Reply::error(
                    403,
                    format!("This API key may not send the order [{}].", request.order),
                ));
            }
        }
        let mut selected: Vec<Server> = Vec::new();
        let mut seen = HashSet::new();
        let mut push = |server: &Server, selected: &mut Vec<Server>| {
            if seen.insert(server.entry.clone()) {
                selected.push(server.clone());
            }
        };
        match kind {
            "groups" => {
                for item in &items {
                    let group = groups.iter().find(|g| g.eq_ignore_ascii_case(item));
                    let servers = group.and_then(|g| self.routes.group(g));
                    let Some(servers) = servers else {
                        return Err(denied(item));
                    };
                    for s in servers {
                        push(s, &mut selected);
                    }
                }
            }
            "hosts" => {
                for item in &items {
                    let found = groups
                        .iter()
                        .filter_map(|g| self.routes.group(g))
                        .flatten()
                        .find(|s| {
                            !s.chained
                                && (s.entry.eq_ignore_ascii_case(item)
                                    || s.target.host.eq_ignore_ascii_case(item))
                        });
                    match found {
                        Some(server) => push(server, &mut selected),
                        None => return Err(denied(item)),
                    }
                }
            }
            _ => {
                return Err(Reply::error(
                    403,
                    format!("Syntax error, unrecognized expression: [{args}]"),
                ))
            }
        }
        // An arbitrary command is this proxy's decision too (agents have their own
        // allow_run; ssh:// hosts have no other gate).
        if request.order == "run" && !self.config.server.allow_run {
            return Err(Reply::error(
                403,
                "run is disabled on this proxy (allow_run = off)",
            ));
        }
        Ok(selected)
    }
}

impl Relay {
    /// `nodes`: the agents the key may reach (its `groups:`/`hosts:` selection, or every
    /// group of the key), as the heartbeat last saw them, in the state `options` names
    /// (all if empty). Never probes (see [`crate::nodes`]).
    async fn nodes(&self, peer: SocketAddr, request: &Request) -> Reply {
        let wanted = match request.options.trim() {
            "" => None,
            text => match deploy_common::order::nodes::State::parse(text) {
                Some(state) => Some(state),
                None => {
                    return Reply::error(
                        400,
                        format!("nodes: unknown state {text:?} (online, unstable or offline)"),
                    )
                }
            },
        };
        let selection = if request.args.trim().is_empty() {
            let key: String = request
                .api_key
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let groups = self.config.api.groups_for(&key).unwrap_or_default();
            Request {
                args: format!("groups:{}", groups.join(",")),
                ..request.clone()
            }
        } else {
            request.clone()
        };
        let servers = match self.authorize(&selection) {
            Ok(servers) => servers,
            Err(reply) => {
                tracing::warn!(
                    peer = %peer.ip(),
                    order = %request.order,
                    key = %deploy_common::server::log::key_id(&request.api_key),
                    code = reply.code,
                    "refused"
                );
                return reply;
            }
        };
        if self.config.client.heartbeat.is_zero() {
            return Reply::error(
                503,
                "nodes: this proxy probes no agents ([client] heartbeat = 0)",
            );
        }
        let Some(table) = crate::nodes::current(&self.config, &self.store).await else {
            return Reply::error(
                503,
                format!(
                    "nodes: the first heartbeat has not ended yet; ask again in {} s",
                    self.config.client.heartbeat.as_secs()
                ),
            );
        };
        let addresses: HashSet<String> = servers
            .iter()
            .filter(|s| !s.chained)
            .map(|s| crate::nodes::address(&s.target))
            .collect();
        let mut counts = [0usize; 3];
        let nodes: Vec<Value> = table
            .nodes
            .iter()
            .filter(|n| addresses.contains(&n.address))
            .inspect(|n| {
                if let Some(c) = counts.get_mut(n.state as usize) {
                    *c += 1;
                }
            })
            .filter(|n| wanted.is_none_or(|w| w == n.state))
            .filter_map(|n| serde_json::to_value(n).ok())
            .collect();
        let [online, unstable, offline] = counts;
        Reply::ok(object([
            ("return", Value::String("true".into())),
            ("interval_s", Value::String(table.interval_s.to_string())),
            ("updated_ms", Value::String(table.updated_ms.to_string())),
            ("round_ms", Value::String(table.round_ms.to_string())),
            ("nodes", Value::Array(nodes)),
            ("online", Value::String(online.to_string())),
            ("unstable", Value::String(unstable.to_string())),
            ("offline", Value::String(offline.to_string())),
        ]))
    }

    /// A strict request (`request.strict`): connects to every server first, across
    /// routes, and `Err` with every server's result (see [`gate::connect_all`]) unless
    /// all connected. Other requests pass at once.
    async fn connect_stage(
        &self,
        servers: &[Server],
        request: &Request,
    ) -> Result<(), Vec<deploy_common::fanout::HostResult>> {
        if !request.strict {
            return Ok(());
        }
        let entries = servers
            .iter()
            .map(|s| {
                let route: Arc<dyn Transport> = Arc::clone(&s.route) as Arc<dyn Transport>;
                (route, s.target.clone())
            })
            .collect();
        gate::connect_all(entries, request, self.concurrency).await
    }

    /// Fans `request` out to `servers`, one fan-out per route (servers of one group
    /// share theirs), merged into one stream with the servers' own indexes.
    fn fan_out(&self, servers: &[Server], request: Request) -> mpsc::Receiver<FanoutEvent> {
        let mut buckets: Vec<(Arc<Route>, Vec<usize>)> = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            match buckets
                .iter_mut()
                .find(|(route, _)| Arc::ptr_eq(route, &server.route))
            {
                Some((_, indexes)) => indexes.push(index),
                None => buckets.push((Arc::clone(&server.route), vec![index])),
            }
        }
        let (tx, rx) = mpsc::channel(256);
        for (route, indexes) in buckets {
            let targets: Vec<Target> = indexes
                .iter()
                .filter_map(|&i| servers.get(i).map(|s| s.target.clone()))
                .collect();
            if let Some((group, nats)) = route.nats_group(&targets) {
                group_publish(group, nats, targets, indexes, request.clone(), tx.clone());
                continue;
            }
            let transport: Arc<dyn Transport> = route;
            let mut bucket_rx = Fanout::new(transport)
                .with_concurrency(self.concurrency)
                .run(targets, request.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(event) = bucket_rx.recv().await {
                    let global = |i: usize| indexes.get(i).copied().unwrap_or(i);
                    let event = match event {
                        FanoutEvent::Event { index, host, event } => FanoutEvent::Event {
                            index: global(index),
                            host,
                            event,
                        },
                        FanoutEvent::Done(mut done) => {
                            done.index = global(done.index);
                            FanoutEvent::Done(done)
                        }
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            });
        }
        rx
    }
}

/// Delivers `request` to a whole group of `nats://` agents with one publish
/// ([`deploy_nats::transport::deliver_group`]), reporting as a fan-out would: each
/// agent's events, then exactly one `Done` per target (unreachable after the deadline
/// for those that never answered).
fn group_publish(
    group: &str,
    nats: &Arc<deploy_nats::transport::LazyNatsTransport>,
    targets: Vec<Target>,
    indexes: Vec<usize>,
    request: Request,
    tx: mpsc::Sender<FanoutEvent>,
) {
    let started = std::time::Instant::now();
    let mut members = Vec::new();
    let mut forwards = Vec::new();
    for (target, index) in targets.into_iter().zip(indexes) {
        let (events_tx, mut events_rx) = mpsc::channel::<TaggedEvent>(64);
        let host = target.to_string();
        let tx = tx.clone();
        forwards.push((index, host.clone(), async move {
            while let Some(TaggedEvent { event, .. }) = events_rx.recv().await {
                let event = FanoutEvent::Event {
                    index,
                    host: host.clone(),
                    event,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }));
        members.push((target, events_tx));
    }
    let outcomes =
        deploy_nats::transport::deliver_group(Arc::clone(nats), group.to_owned(), request, members);
    for ((index, host, forward), (_, outcome)) in forwards.into_iter().zip(outcomes) {
        let tx = tx.clone();
        tokio::spawn(async move {
            // Events first (their channel closes when the delivery ends), then Done.
            forward.await;
            let outcome = outcome.await.unwrap_or_else(|_| {
                deploy_common::transport::Outcome::Failed("nats: delivery lost".into())
            });
            let _ = tx
                .send(FanoutEvent::Done(deploy_common::fanout::HostResult {
                    index,
                    host,
                    outcome,
                    elapsed: started.elapsed(),
                }))
                .await;
        });
    }
}

/// Why an order with a body cannot be relayed, if it cannot: the caller cannot send
/// one (v1, the HTTP API), or a server is an `ssh://` host (whose upload reads files,
/// and the proxy has none of the caller's).
fn body_refused(servers: &[Server], events: &Events) -> Option<Reply> {
    if !events.can_have_body() {
        return Some(Reply::error(
            400,
            "this order needs protocol v2 (its files travel as the request's body)",
        ));
    }
    let ssh: Vec<String> = servers
        .iter()
        .filter(|s| !s.chained && s.target.scheme == Scheme::Ssh)
        .map(|s| s.target.to_string())
        .collect();
    if !ssh.is_empty() {
        return Some(Reply::error(
            501,
            format!(
                "files go through a proxy to agents only; send them to {} directly",
                ssh.join(", ")
            ),
        ));
    }
    None
}

impl Handler for Relay {
    fn knows(&self, order: &str) -> bool {
        OrderName::parse(order).is_some() || order == scenario_versions::ORDER
    }

    async fn handle(&self, peer: SocketAddr, request: Request, events: Events) -> Reply {
        if request.via.iter().any(|v| v == &self.id) {
            return Reply::error(
                508,
                format!(
                    "proxy loop: {} would relay this request again (via {})",
                    self.id,
                    request.via.join(" > ")
                ),
            );
        }
        if request.order == scenario_versions::ORDER {
            // The proxy's own store, not relayed.
            return crate::versions::handle(&self.config, &self.store, &request).await;
        }
        match OrderName::parse(&request.order) {
            Some(OrderName::Nodes) => return self.nodes(peer, &request).await,
            // The files travel as events, which only a v2 caller receives.
            Some(OrderName::Fetch) if !events.wanted() => {
                return Reply::error(
                    400,
                    "fetch sends files as a stream: ask over protocol v2 (deploy-client fetch)",
                )
            }
            _ => {}
        }
        if matches!(
            OrderName::parse(&request.order),
            Some(OrderName::Lock | OrderName::Unlock)
        ) {
            // All-or-nothing needs every host's own answer, and an SSH host's lock is a
            // session of whoever took it: here, a proxy worker that no client could
            // release. deploy-client takes locks on the hosts directly.
            return Reply::error(
                501,
                "the cluster lock is taken on agents and SSH hosts directly, not through a proxy",
            );
        }
        // `upload` and `napp` push carry their files as the request's body: the
        // caller's, received once and sent as is to every server (never files of the
        // proxy's own, whatever `upload` names).
        let with_body = request.upload.is_some()
            || OrderName::parse(&request.order) == Some(OrderName::Upload)
            || request
                .napp
                .as_deref()
                .is_some_and(|n| n.action == deploy_common::order::napp::Action::Push);
        let servers = match self.authorize(&request) {
            Ok(servers) => servers,
            Err(reply) => {
                // An unknown key, or one without these groups or this order: an
                // authorization failure, named by its hash only.
                tracing::warn!(
                    peer = %peer.ip(),
                    order = %request.order,
                    args = %request.args,
                    key = %deploy_common::server::log::key_id(&request.api_key),
                    code = reply.code,
                    "refused"
                );
                return reply;
            }
        };
        if with_body {
            if let Some(reply) = body_refused(&servers, &events) {
                return reply;
            }
        }
        let order = request.order.clone();
        // v2 callers get every agent's record as it arrives; v1 callers one document.
        let follow = events.wanted();
        let mut via = request.via.clone();
        via.push(self.id.clone());
        // The agents follow (stream, and for rsync wait for the end) when asked; the
        // caller's selection and key stay here.
        // Who asked for a release is this key, by name (never the key itself): what
        // the caller says of itself is not taken on trust.
        let who = format!(
            "apikey:{}",
            self.config
                .api
                .name_for(request.api_key.trim())
                .unwrap_or_default()
        );
        let mut forwarded = Request {
            args: String::new(),
            api_key: String::new(),
            via,
            ..request
        };
        if let Some(spec) = forwarded.release.as_deref_mut() {
            spec.who = who;
        }
        let count = servers.len();
        let mut direct: Vec<Option<(String, Map<String, Value>)>> =
            (0..count).map(|_| None).collect();
        let mut relayed: Vec<(String, Value)> = Vec::new();
        let mut rx = match self.connect_stage(&servers, &forwarded).await {
            Ok(()) if with_body => {
                // Asked for only now: after every check that could refuse the order,
                // and (strict) once every server is connected.
                match crate::spool::receive(&events, &self.config.server.state_dir).await {
                    Ok(body) => {
                        tracing::info!(order = %order, servers = count, "relaying the caller's body");
                        forwarded.body = Some(body);
                        self.fan_out(&servers, forwarded)
                    }
                    Err(reply) => return reply,
                }
            }
            // `rsync --relay`: scheduled here, over the agents (crate::relay_push).
            Ok(())
                if forwarded.relay.is_some()
                    && OrderName::parse(&order) == Some(OrderName::Rsync) =>
            {
                match crate::relay_push::run(&servers, forwarded) {
                    Ok(rx) => rx,
                    Err(reply) => return reply,
                }
            }
            Ok(()) => self.fan_out(&servers, forwarded),
            Err(results) => gate::into_events(results),
        };
        while let Some(event) = rx.recv().await {
            match event {
                FanoutEvent::Event {
                    index,
                    host: from,
                    event:
                        Event::Host {
                            host,
                            order: o,
                            mut result,
                            via,
                        },
                } => {
                    // Only a chained proxy reports results for other hosts: a plain
                    // agent must not be able to forge another host's result.
                    if !servers.get(index).is_some_and(|s| s.chained) {
                        tracing::warn!(server = %from, claimed = %host, "ignored a host result from a server that is not a proxy");
                        continue;
                    }
                    let via = format!("{} > {via}", self.id);
                    if let Value::Object(map) = &mut result {
                        map.insert("via".into(), Value::String(via.clone()));
                    }
                    if follow {
                        events
                            .send(Event::Host {
                                host: host.clone(),
                                order: o,
                                result: result.clone(),
                                via,
                            })
                            .await;
                    }
                    relayed.push((host, result));
                }
                // An agent's (or SSH host's) output line or progress: streamed to a v2
                // caller under the agent's name, which a chained proxy has already put
                // on the events it relays. Only a chained proxy speaks for other hosts:
                // whatever an agent tags its events with, they are its own.
                FanoutEvent::Event { index, host, event } => {
                    let host = match servers.get(index) {
                        Some(server) if !server.chained => server.target.to_string(),
                        _ => host,
                    };
                    events.send_for(&host, event).await;
                }
                FanoutEvent::Done(done) => {
                    let chained_ok = servers.get(done.index).is_some_and(|s| s.chained)
                        && done.outcome.reply().is_some_and(|r| r.code == 200);
                    if chained_ok {
                        continue;
                    }
                    let record = done.outcome.to_json();
                    if follow {
                        events
                            .send(Event::Host {
                                host: done.host.clone(),
                                order: order.clone(),
                                result: Value::Object(record.clone()),
                                via: self.id.clone(),
                            })
                            .await;
                    }
                    if let Some(slot) = direct.get_mut(done.index) {
                        *slot = Some((done.host, record));
                    }
                }
            }
        }
        let hosts = direct.iter().flatten().count() + relayed.len();
        if follow {
            return Reply::ok(object([
                ("via", Value::String(self.id.clone())),
                ("hosts", Value::String(hosts.to_string())),
            ]));
        }
        let mut merged = Map::new();
        for (host, record) in direct.into_iter().flatten() {
            merged.insert(
                host,
                Value::Object(object([(order.as_str(), Value::Object(record))])),
            );
        }
        for (host, record) in relayed {
            merged.insert(host, Value::Object(object([(order.as_str(), record)])));
        }
        Reply::ok(merged)
    }
}
