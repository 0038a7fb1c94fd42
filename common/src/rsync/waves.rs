//! The relay scheduler: an `rsync` order pushed in waves, each finished host serving the
//! next ones (see [`super::relay`] for what an agent does).
//!
//! The source (the group's rsync daemon) and every verified host are *servers* with
//! `fanout` slots each. While a host waits and a server has a free slot, the host is sent
//! a relay pull from that server, peers before the source (so the source sends about
//! `fanout` copies and the fleet does the rest: 1 → k → k² …). The first host that pulled
//! from the source sets the reference manifest; a host that reports another one is failed
//! and never serves; every later pull carries the reference (`expect`) and is checked by
//! the receiver before it reports success.
//!
//! A pull from a peer that fails (the peer died, was cut off, or served a tree that does
//! not match the reference) marks the peer bad (no more hosts are sent to it) and puts the
//! host back in the queue, to pull from another server, at most [`MAX_ATTEMPTS`] times;
//! its last attempt is from the source. Each result names where the host pulled from
//! (`from`: `source` or a host) and how many attempts it took. At the end every serving
//! host is told to stop.

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::relay::{self, Pull, RelayArgs};
use crate::fanout::{FanoutEvent, HostResult};
use crate::order::{Body, Request};
use crate::target::Target;
use crate::transport::{Outcome, Transport};
use crate::wire::message::{Event, Stream};

/// How many times a host may try to pull before its failure is final.
pub const MAX_ATTEMPTS: u32 = 3;

/// How many hosts each server (the source included) feeds at once by default.
pub const DEFAULT_FANOUT: usize = 2;

/// One server: the source (`url` `None`) or a verified host.
struct Server {
    url: Option<String>,
    /// The host's index; `None` for the source.
    host: Option<usize>,
    free: usize,
    bad: bool,
}

/// One pull that ended.
struct Pulled {
    index: usize,
    server: usize,
    outcome: Outcome,
}

/// Pushes `request` (an `rsync` order naming a group) to `targets` in relay waves; the
/// stream is the same as [`crate::fanout::Fanout::run`]'s (one `Done` per target). Must
/// be called inside a Tokio runtime.
pub fn run(
    transport: Arc<dyn Transport>,
    targets: Vec<Target>,
    request: Request,
    fanout: usize,
) -> mpsc::Receiver<FanoutEvent> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(drive(transport, targets, request, fanout.max(1), tx));
    rx
}

/// The first address `target` resolves to.
async fn address(target: &Target) -> Option<IpAddr> {
    if let Ok(ip) = target.host.parse() {
        return Some(ip);
    }
    let mut addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .ok()?;
    addrs.next().map(|a| a.ip())
}

fn body_str(outcome: &Outcome, key: &str) -> Option<String> {
    match outcome {
        Outcome::Reply(reply) => match &reply.body {
            Body::Json(map) => map.get(key).and_then(Value::as_str).map(str::to_owned),
            _ => None,
        },
        _ => None,
    }
}

fn succeeded(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Reply(r) if r.code == 200)
        && body_str(outcome, "return").as_deref() == Some("true")
}

/// Adds `from` and `attempts` to a JSON reply (other outcomes are left as they are).
fn annotate(outcome: &mut Outcome, from: &str, attempts: u32, note: Option<String>) {
    if let Outcome::Reply(reply) = outcome {
        if let Body::Json(map) = &mut reply.body {
            map.insert("from".into(), Value::String(from.to_owned()));
            map.insert("attempts".into(), Value::String(attempts.to_string()));
            if let Some(note) = note {
                map.insert("return".into(), Value::String("false".into()));
                map.insert("error".into(), Value::String(note));
            }
        }
    }
}

async fn drive(
    transport: Arc<dyn Transport>,
    targets: Vec<Target>,
    request: Request,
    fanout: usize,
    tx: mpsc::Sender<FanoutEvent>,
) {
    let token = match relay::token() {
        Ok(t) => t,
        Err(e) => {
            for (index, target) in targets.iter().enumerate() {
                let result = HostResult {
                    index,
                    host: target.to_string(),
                    outcome: Outcome::Failed(e.to_string()),
                    elapsed: Duration::ZERO,
                };
                let _ = tx.send(FanoutEvent::Done(result)).await;
            }
            return;
        }
    };
    let mut ips = Vec::with_capacity(targets.len());
    for target in &targets {
        ips.push(address(target).await);
    }
    let peers: Vec<IpAddr> = ips.iter().flatten().copied().collect();
    let names: Vec<String> = targets.iter().map(Target::to_string).collect();
    let started: Vec<Instant> = vec![Instant::now(); targets.len()];
    let mut attempts = vec![0u32; targets.len()];
    let mut avoid: Vec<HashSet<usize>> = vec![HashSet::new(); targets.len()];
    let mut servers = vec![Server {
        url: None,
        host: None,
        free: fanout,
        bad: false,
    }];
    let mut reference: Option<String> = None;
    let mut pending: VecDeque<usize> = (0..targets.len()).collect();
    let mut running: JoinSet<Pulled> = JoinSet::new();
    let request = Arc::new(request);
    let targets = Arc::new(targets);

    loop {
        // Assign every waiting host a free server, peers first (most free slots first).
        while let Some(&index) = pending.front() {
            let last_try = attempts.get(index).copied().unwrap_or(0) + 1 >= MAX_ATTEMPTS;
            let avoided = avoid.get(index);
            let pick = servers
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    s.free > 0 && !s.bad && avoided.is_none_or(|a| !a.contains(i))
                        // The last attempt is from the source.
                        && (!last_try || s.url.is_none())
                })
                .max_by_key(|(i, s)| (s.url.is_some(), s.free, usize::MAX - i))
                .map(|(i, _)| i);
            let Some(server) = pick else { break };
            pending.pop_front();
            let Some(s) = servers.get_mut(server) else {
                break;
            };
            s.free -= 1;
            if let Some(a) = attempts.get_mut(index) {
                *a += 1;
            }
            let from_name = s
                .host
                .and_then(|h| names.get(h).cloned())
                .unwrap_or_else(|| "source".into());
            let pull = RelayArgs::Pull(Pull {
                from: s.url.clone(),
                token: token.clone(),
                expect: reference.clone(),
                serve: ips.get(index).copied().flatten().is_some(),
                bind: ips.get(index).copied().flatten(),
                peers: peers.clone(),
                ttl: relay::DEFAULT_TTL,
            });
            let mut req = (*request).clone();
            req.args = pull.to_args();
            req.follow = false;
            let host = names.get(index).cloned().unwrap_or_default();
            tracing::info!(host = %host, from = %from_name, "relay pull");
            let _ = tx
                .send(FanoutEvent::Event {
                    index,
                    host,
                    event: Event::Line {
                        stream: Stream::Stdout,
                        line: format!("pulling from {from_name}"),
                        partial: false,
                    },
                })
                .await;
            let transport = Arc::clone(&transport);
            let targets = Arc::clone(&targets);
            running.spawn(async move {
                let outcome = match targets.get(index) {
                    Some(target) => {
                        let (etx, mut erx) = mpsc::channel(16);
                        let drain = async { while erx.recv().await.is_some() {} };
                        let (outcome, ()) =
                            tokio::join!(transport.deliver(target, &req, etx), drain);
                        outcome
                    }
                    None => Outcome::Failed("no such target".into()),
                };
                Pulled {
                    index,
                    server,
                    outcome,
                }
            });
        }
        if running.is_empty() {
            // Nothing runs and nothing could be assigned: those left have no server.
            while let Some(index) = pending.pop_front() {
                let result = HostResult {
                    index,
                    host: names.get(index).cloned().unwrap_or_default(),
                    outcome: Outcome::Failed("relay: no server left to pull from".into()),
                    elapsed: started.first().map_or(Duration::ZERO, Instant::elapsed),
                };
                let _ = tx.send(FanoutEvent::Done(result)).await;
            }
            break;
        }
        let Some(Ok(Pulled {
            index,
            server,
            mut outcome,
        })) = running.join_next().await
        else {
            continue;
        };
        let from_peer = servers.get(server).and_then(|s| s.host);
        let from_name = from_peer
            .and_then(|h| names.get(h).cloned())
            .unwrap_or_else(|| "source".into());
        if let Some(s) = servers.get_mut(server) {
            s.free += 1;
        }
        let tries = attempts.get(index).copied().unwrap_or(0);
        let host = names.get(index).cloned().unwrap_or_default();
        let mut note = None;
        if succeeded(&outcome) {
            let manifest = body_str(&outcome, "manifest");
            match (&reference, manifest) {
                (None, Some(m)) => reference = Some(m),
                (Some(r), Some(m)) if *r == m => {}
                (_, m) => {
                    note = Some(format!(
                        "manifest {} differs from the reference {}",
                        m.unwrap_or_else(|| "(none)".into()),
                        reference.clone().unwrap_or_default()
                    ))
                }
            }
            if note.is_none() {
                if let Some(url) = body_str(&outcome, "serve") {
                    servers.push(Server {
                        url: Some(url),
                        host: Some(index),
                        free: fanout,
                        bad: false,
                    });
                }
            }
        } else if from_peer.is_some() && tries < MAX_ATTEMPTS {
            // Route around the peer: it fails no one else, the host tries elsewhere.
            let why = body_str(&outcome, "error")
                .or_else(|| body_str(&outcome, "content"))
                .unwrap_or_else(|| outcome.to_string());
            tracing::warn!(host = %host, from = %from_name, why = %why.trim(), "relay pull from a peer failed; retrying elsewhere");
            if let Some(s) = servers.get_mut(server) {
                s.bad = true;
            }
            if let Some(a) = avoid.get_mut(index) {
                a.insert(server);
            }
            let _ = tx
                .send(FanoutEvent::Event {
                    index,
                    host,
                    event: Event::Line {
                        stream: Stream::Stderr,
                        line: format!("pull from {from_name} failed, retrying elsewhere"),
                        partial: false,
                    },
                })
                .await;
            pending.push_front(index);
            continue;
        }
        annotate(&mut outcome, &from_name, tries, note);
        let result = HostResult {
            index,
            host,
            outcome,
            elapsed: started.get(index).map_or(Duration::ZERO, Instant::elapsed),
        };
        if tx.send(FanoutEvent::Done(result)).await.is_err() {
            break;
        }
    }
    // Every host that served stops serving.
    let mut stops = JoinSet::new();
    for host in servers.iter().filter_map(|s| s.host) {
        let mut req = (*request).clone();
        req.args = RelayArgs::Stop {
            token: token.clone(),
        }
        .to_args();
        req.follow = false;
        let transport = Arc::clone(&transport);
        let targets = Arc::clone(&targets);
        stops.spawn(async move {
            if let Some(target) = targets.get(host) {
                let (etx, _erx) = mpsc::channel(1);
                let _ = transport.deliver(target, &req, etx).await;
            }
        });
    }
    while stops.join_next().await.is_some() {}
}
