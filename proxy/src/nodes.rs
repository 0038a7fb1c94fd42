//! The heartbeat behind `nodes`: one worker probes every agent of the API file every
//! `[client] heartbeat` seconds and keeps their states in the state directory, which
//! every worker reads to answer `nodes` (see [`deploy_common::order::nodes`]).
//!
//! ```text
//! each worker: thread "heartbeat" ─ flock <state_dir>/nodes.lock (non-blocking)
//!   held    ─► leader: every heartbeat, a brief `health` to each agent (pooled v2
//!              connections, at most [client] concurrency at once) ─► states
//!              ─► <state_dir>/nodes.json (written to a temporary name, renamed)
//!   refused ─► tries again next heartbeat (the leader may be recycled or stopped)
//! nodes order (any worker) ─► nodes.json ─► the caller's agents, filtered by state
//!
//! [store] backend = nats (several proxies, one fleet): the same, across proxies
//! each worker of each proxy: thread "heartbeat" ─ lease "nodes-heartbeat" in the bucket
//!   (holder: this worker's token; ttl: 3 heartbeats, at least 3 s)
//!   granted ─► leader: probes as above, renews the lease before writing each round
//!              ─► the bucket's "inventory" key; a renewal refused (Held) ─► stands down
//!   held    ─► tries again next heartbeat (a dead leader's lease ends within its ttl)
//! nodes order (any worker of any proxy) ─► the bucket's inventory
//! ```
//!
//! # Design
//!
//! A `nodes` call never probes: a thousand agents cost one small file read, however
//! often it is asked. Prefork workers are processes, so one of them must lead or the
//! fleet would get one probe per worker: the lock does that without the master taking
//! part, and the kernel releases it when the leader exits. The leader has its own
//! thread and runtime, its own routes and pool, so that probes never wait behind
//! orders nor orders behind probes. A new leader starts from the states in the file
//! (a recycled worker loses no `since`). Agents behind chained proxies and `ssh://`
//! hosts are not probed (a chained proxy knows its own agents).

use crate::route::Routes;
use deploy_common::config::proxy::{ProxyConfig, StoreBackend};
use deploy_common::order::health::BRIEF;
use deploy_common::order::nodes::{Node, State};
use deploy_common::order::{Body, Request};
use deploy_common::target::Scheme;
use deploy_common::transport::{Outcome, Transport};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The leader's lock, in the state directory.
const LOCK_FILE: &str = "nodes.lock";
/// The states, in the state directory.
const STATE_FILE: &str = "nodes.json";

/// What the leader writes after every round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    /// When the round ended, Unix milliseconds.
    pub updated_ms: u64,
    /// The heartbeat, seconds.
    pub interval_s: u64,
    /// How long the last round of probes took, milliseconds.
    #[serde(default)]
    pub round_ms: u64,
    /// Every probed agent.
    pub nodes: Vec<Node>,
}

/// The states file of `config`.
pub fn state_file(config: &ProxyConfig) -> PathBuf {
    config.server.state_dir.join(STATE_FILE)
}

/// Reads the states file (`None` if there is none yet or it does not parse).
pub fn read(path: &Path) -> Option<Table> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The inventory the `nodes` order answers from: the bucket's when the store is shared
/// (`None` if it cannot be read), else the state directory's file.
pub async fn current(config: &ProxyConfig, store: &crate::store::SharedStore) -> Option<Table> {
    if !store.shared() {
        return read(&state_file(config));
    }
    let bytes = match store.nats().await {
        Ok(nats) => nats.inventory().await,
        Err(e) => Err(e),
    };
    match bytes {
        Ok(bytes) => serde_json::from_slice(&bytes?).ok(),
        Err(e) => {
            tracing::warn!(store = %store.describe(), cause = %e, "nodes: cannot read the shared inventory");
            None
        }
    }
}

/// The name of the heartbeat leader's lease in a shared store.
const LEADER_LEASE: &str = "nodes-heartbeat";

/// Where a leader writes its rounds.
enum Sink {
    /// The state directory's file (one proxy; the flock elects the leader).
    File(PathBuf),
    /// The shared bucket, while this worker's lease holds.
    Shared {
        store: Box<deploy_store::nats::NatsStore>,
        token: String,
        owner: String,
        ttl: Duration,
    },
}

/// Starts this worker's heartbeat thread (it leads only if no other worker does).
pub fn spawn(config: Arc<ProxyConfig>) {
    if config.client.heartbeat.is_zero() {
        return;
    }
    let started = std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || match config.store.backend {
            StoreBackend::Redb => lead(&config),
            StoreBackend::Nats => lead_shared(&config),
        });
    if let Err(e) = started {
        tracing::warn!(cause = %e, "cannot start the heartbeat thread; nodes will not be probed by this worker");
    }
}

/// The key of a node in `nodes.json`: `host:port`, or `nats://name` for an agent
/// reached over NATS.
pub fn address(target: &deploy_common::target::Target) -> String {
    match target.scheme {
        Scheme::Nats => target.to_string(),
        _ => target.address(),
    }
}

/// Waits to lead, then probes for as long as the worker lives.
fn lead(config: &ProxyConfig) {
    use nix::fcntl::{Flock, FlockArg};
    let interval = config.client.heartbeat;
    let path = config.server.state_dir.join(LOCK_FILE);
    let _lock = loop {
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(path = %path.display(), cause = %e, "heartbeat: cannot open the lock file; no probes");
                return;
            }
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => std::thread::sleep(interval),
            Err((_, e)) => {
                tracing::warn!(path = %path.display(), cause = %e, "heartbeat: cannot lock; no probes");
                return;
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(cause = %e, "heartbeat: cannot start a runtime; no probes");
            return;
        }
    };
    runtime.block_on(beat(config, Sink::File(state_file(config))));
}

/// Waits for the shared leader's lease, then probes while it holds; forever.
fn lead_shared(config: &ProxyConfig) {
    use deploy_store::{Acquired, LeaseStore as _};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(cause = %e, "heartbeat: cannot start a runtime; no probes");
            return;
        }
    };
    let interval = config.client.heartbeat;
    let ttl = (interval * 3).max(Duration::from_secs(3));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let owner = format!("{host} pid {}", std::process::id());
    let token = format!("{owner} since {}", unix_ms());
    let settings = crate::store::settings(&config.store);
    runtime.block_on(async {
        let store = loop {
            match deploy_store::nats::NatsStore::connect(&settings).await {
                Ok(store) => break store,
                Err(e) => {
                    tracing::warn!(cause = %e, "heartbeat: cannot reach the shared store; trying again");
                    tokio::time::sleep(interval).await;
                }
            }
        };
        loop {
            match store.acquire(LEADER_LEASE, &token, &owner, ttl).await {
                Ok(Acquired::Granted(_)) => {
                    tracing::info!(owner = %owner, ttl_s = ttl.as_secs(), "heartbeat: this worker leads the fleet's heartbeat");
                    let sink = Sink::Shared {
                        store: Box::new(store.clone()),
                        token: token.clone(),
                        owner: owner.clone(),
                        ttl,
                    };
                    beat(config, sink).await;
                    tracing::warn!(owner = %owner, "heartbeat: the lease was lost; standing by");
                }
                Ok(Acquired::Held(_)) => {}
                Err(e) => {
                    tracing::warn!(cause = %e, "heartbeat: cannot read the leader's lease");
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
}

/// One agent to probe.
struct Probe {
    node: Node,
    target: deploy_common::target::Target,
    route: Arc<crate::route::Route>,
}

/// Probes every agent every heartbeat, for ever (or, on a shared store, until the
/// leader's lease is lost).
async fn beat(config: &ProxyConfig, sink: Sink) {
    let ssh = match crate::ssh::transport(config) {
        Ok(ssh) => ssh,
        Err(e) => {
            tracing::warn!(cause = %e, "heartbeat: no SSH transport");
            None
        }
    };
    let routes = match Routes::new(config, ssh) {
        Ok(routes) => routes,
        Err(e) => {
            tracing::warn!(cause = %e, "heartbeat: cannot resolve the servers; no probes");
            return;
        }
    };
    let previous_table = match &sink {
        Sink::File(file) => read(file),
        Sink::Shared { store, .. } => store
            .inventory()
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok()),
    };
    let previous: HashMap<String, Node> = previous_table
        .map(|t| {
            t.nodes
                .into_iter()
                .map(|n| (n.address.clone(), n))
                .collect()
        })
        .unwrap_or_default();
    let now = unix_ms();
    let mut probes: Vec<Probe> = Vec::new();
    for group in config.api.server_groups() {
        for server in routes.group(group).unwrap_or_default() {
            if server.chained || server.target.scheme == Scheme::Ssh {
                continue;
            }
            let nats = server.target.scheme == Scheme::Nats;
            let address = address(&server.target);
            if probes.iter().any(|p| p.node.address == address) {
                continue;
            }
            let node = previous.get(&address).cloned().unwrap_or(Node {
                name: server.entry.clone(),
                group: group.to_owned(),
                address: address.clone(),
                state: State::Offline,
                latency_ms: 0.0,
                version: String::new(),
                since_ms: now,
                last_seen_ms: 0,
                error: "not probed yet".into(),
                via: String::new(),
            });
            probes.push(Probe {
                node: Node {
                    name: server.entry.clone(),
                    group: group.to_owned(),
                    via: if nats { "nats" } else { "tcp" }.to_owned(),
                    ..node
                },
                target: server.target.clone(),
                route: Arc::clone(&server.route),
            });
        }
    }
    tracing::info!(
        agents = probes.len(),
        every_s = config.client.heartbeat.as_secs(),
        "heartbeat: this worker probes the agents"
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(
        config.client.concurrency.max(1),
    ));
    let offline_after =
        u64::try_from(config.client.offline_after().as_millis()).unwrap_or(u64::MAX);
    let mut ticker = tokio::time::interval(config.client.heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let round_started = Instant::now();
        let mut round = tokio::task::JoinSet::new();
        for (index, probe) in probes.iter().enumerate() {
            let (target, route, permits) = (
                probe.target.clone(),
                Arc::clone(&probe.route),
                Arc::clone(&permits),
            );
            round.spawn(async move {
                let _permit = permits.acquire_owned().await.ok();
                let request = Request {
                    order: "health".into(),
                    options: BRIEF.into(),
                    ..Request::default()
                };
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                drop(rx);
                let started = Instant::now();
                let outcome = route.deliver(&target, &request, tx).await;
                (index, outcome, started.elapsed())
            });
        }
        while let Some(done) = round.join_next().await {
            let Ok((index, outcome, elapsed)) = done else {
                continue;
            };
            if let Some(probe) = probes.get_mut(index) {
                update(&mut probe.node, &outcome, elapsed, unix_ms(), offline_after);
            }
        }
        let table = Table {
            updated_ms: unix_ms(),
            interval_s: config.client.heartbeat.as_secs(),
            round_ms: u64::try_from(round_started.elapsed().as_millis()).unwrap_or(u64::MAX),
            nodes: probes.iter().map(|p| p.node.clone()).collect(),
        };
        match &sink {
            Sink::File(file) => {
                if let Err(e) = write(file, &table) {
                    tracing::warn!(path = %file.display(), cause = %e, "heartbeat: cannot write the states");
                }
            }
            Sink::Shared {
                store,
                token,
                owner,
                ttl,
            } => {
                use deploy_store::{Acquired, LeaseStore as _};
                match store.acquire(LEADER_LEASE, token, owner, *ttl).await {
                    Ok(Acquired::Granted(_)) => {}
                    Ok(Acquired::Held(other)) => {
                        tracing::warn!(leader = %other.owner, "heartbeat: another worker leads now");
                        return;
                    }
                    Err(e) => {
                        // Unrenewed, the lease ends by itself; stop before another leads.
                        tracing::warn!(cause = %e, "heartbeat: cannot renew the leader's lease");
                        return;
                    }
                }
                let bytes = serde_json::to_vec(&table).unwrap_or_default();
                if let Err(e) = store.put_inventory(bytes).await {
                    tracing::warn!(cause = %e, "heartbeat: cannot write the shared inventory");
                }
            }
        }
    }
}

/// A node's state after a probe that ended with `outcome` after `elapsed`, at `now`.
fn update(node: &mut Node, outcome: &Outcome, elapsed: Duration, now: u64, offline_after: u64) {
    let answered = match outcome {
        Outcome::Reply(reply) => {
            if let (200, Body::Json(body)) = (reply.code, &reply.body) {
                if let Some(Value::String(version)) = body.get("version") {
                    node.version = shown_version(version);
                }
            }
            true
        }
        _ => false,
    };
    let state = if answered {
        node.last_seen_ms = now;
        node.latency_ms = (elapsed.as_secs_f64() * 10_000.0).round() / 10.0;
        node.error.clear();
        State::Online
    } else {
        node.error = outcome.to_string();
        if node.last_seen_ms > 0 && now.saturating_sub(node.last_seen_ms) < offline_after {
            State::Unstable
        } else {
            State::Offline
        }
    };
    if state != node.state {
        tracing::info!(agent = %node.address, from = node.state.as_str(), to = state.as_str(), "heartbeat: state changed");
        node.state = state;
        node.since_ms = now;
    }
}

/// The longest version kept for a node.
const MAX_VERSION: usize = 128;

/// An agent's version as the table keeps it: at most [`MAX_VERSION`] bytes, control
/// characters dropped. The string comes from the agent's reply; kept as is, a huge or
/// escape-laden one would sit in every worker's memory, in `nodes.json` and on the
/// caller's terminal.
fn shown_version(version: &str) -> String {
    let mut out = String::new();
    for c in version.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_VERSION {
            break;
        }
        out.push(c);
    }
    out
}

/// Writes `table` to a temporary name beside `path`, then renames it into place.
fn write(path: &Path, table: &Table) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(table).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Unix time now, milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_common::order::Reply;

    #[test]
    fn states() {
        let mut node = Node {
            name: "a".into(),
            group: "g".into(),
            address: "a:1".into(),
            state: State::Offline,
            latency_ms: 0.0,
            version: String::new(),
            since_ms: 0,
            last_seen_ms: 0,
            error: String::new(),
            via: "tcp".into(),
        };
        let ok = Outcome::Reply(Reply::error(404, "old agent"));
        update(&mut node, &ok, Duration::from_millis(2), 1000, 3000);
        assert_eq!(
            (node.state, node.since_ms, node.last_seen_ms),
            (State::Online, 1000, 1000)
        );
        let mut body = serde_json::Map::new();
        body.insert(
            "version".into(),
            Value::String(format!("1.0\u{1b}[2J{}", "x".repeat(1 << 20))),
        );
        let big = Outcome::Reply(Reply::ok(body));
        update(&mut node, &big, Duration::from_millis(2), 1000, 3000);
        assert!(node.version.starts_with("1.0[2Jxxx"), "{}", node.version);
        assert_eq!(node.version.len(), MAX_VERSION);
        let gone = Outcome::Failed("refused".into());
        update(&mut node, &gone, Duration::ZERO, 2000, 3000);
        assert_eq!((node.state, node.since_ms), (State::Unstable, 2000));
        update(&mut node, &gone, Duration::ZERO, 3500, 3000);
        assert_eq!((node.state, node.since_ms), (State::Unstable, 2000));
        update(&mut node, &gone, Duration::ZERO, 4000, 3000);
        assert_eq!(
            (node.state, node.since_ms, node.error.as_str()),
            (State::Offline, 4000, "refused")
        );
    }
}
