//! The relay scheduler: an `rsync` order pushed as a pipelined, chunk-verified stream
//! (see [`super::relay`] and [`super::stream`] for what an agent does).
//!
//! ```text
//! 1. first host:  relay pull stream=1   rsync from the source, tar of the tree cut into
//!                                       chunks; reply: manifest, chunk list digest, addr
//! 2. the others:  relay chain           a tree of `fanout` children per host (1: a chain)
//!    in breadth-first order; a host's order goes out as soon as its parent reports
//!    (an event line) the address it serves on, so every hop runs at once and a chunk
//!    moves on as soon as it is verified: time ≈ one host's + depth × one chunk's.
//! ```
//!
//! Each chain order names its parent and then its other ancestors (nearest first): a host
//! whose parent dies, stalls or serves a chunk that does not match the list reconnects to
//! the next one and resumes at its chunk offset. A host whose parent's order failed
//! before it served is attached to its nearest live ancestor. A chain host whose own
//! order fails is retried once as a plain pull from the source. If the first host fails,
//! the next host is tried as the first, at most [`MAX_ATTEMPTS`] times. Each result names
//! where the host pulled from (`from`: `source` or a host) and how many attempts it
//! took; agents' progress lines are passed on. At the end every serving host is told to
//! stop.
//!
//! # The witness
//!
//! Every chain host checks each chunk against the first host's list and its tree against
//! the first host's manifest, so a bad peer cannot poison the hosts after it; but the
//! first host itself is only trusted. The first chain host (position 1, which finishes
//! first) is therefore also the witness (`verify=1`): once its tree matches the manifest
//! it compares it with *its own* source, `rsync --dry-run --checksum`, as a push without
//! relay would trust that source. Results are held until its verdict: `witness` names it
//! in every result (`unverified: …` if it could not tell), and on a mismatch every host's
//! result fails, naming the first host and the witness (re-run without `--relay`: each
//! host then pulls from its source). If the witness's chain order fails it pulls from
//! its source with the manifest expected, which judges the same way.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::relay::{self, Chain, Pull, RelayArgs};
use crate::fanout::{FanoutEvent, HostResult};
use crate::order::{Body, Request};
use crate::target::Target;
use crate::transport::{Outcome, Transport};
use crate::wire::message::{Event, Stream};

/// How many times a host may try to pull before its failure is final.
pub const MAX_ATTEMPTS: u32 = 3;

/// How many children each host feeds by default (1: a chain, which uses each link once
/// in each direction and so runs every hop at full link speed).
pub const DEFAULT_FANOUT: usize = 1;

/// The most ancestors a chain order names to fall back on (beyond its parent).
const MAX_FALLBACKS: usize = 4;

/// What a host's delivery reported.
enum Msg {
    /// It serves its stream on this address.
    Serving(usize, SocketAddr),
    /// A progress or output line.
    Line(usize, Event),
    /// Its order ended.
    Done(usize, Outcome),
}

/// Where a host stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Waiting,
    Running,
    Serving,
    /// Ended; `true` if it ever served (its children may still pull from it).
    Ended(bool),
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

/// What the witness found.
enum Verdict {
    /// No verdict yet: results are held.
    Waiting,
    /// The witness's tree is its source's.
    Verified(String),
    /// The witness could not tell (why).
    Unverified(String),
    /// The first host's tree is not the witness's source's (the witness's name).
    Mismatch(String),
    /// No witness (the first host alone): nothing to add.
    Alone,
}

/// Sets `key` in a JSON reply (other outcomes are left as they are).
fn mark(outcome: &mut Outcome, key: &str, value: String) {
    if let Outcome::Reply(reply) = outcome {
        if let Body::Json(map) = &mut reply.body {
            map.insert(key.into(), Value::String(value));
        }
    }
}

/// The witness's verdict from its final outcome, given the first host's `manifest`.
fn judge(outcome: &Outcome, manifest: &str, witness: &str) -> Verdict {
    let theirs = body_str(outcome, "manifest");
    match body_str(outcome, "witness").as_deref() {
        Some("verified") if succeeded(outcome) => Verdict::Verified(witness.to_owned()),
        Some("mismatch") => Verdict::Mismatch(witness.to_owned()),
        // A pull from the source with the manifest expected (the witness's retry).
        _ if theirs.as_deref().is_some_and(|m| m != manifest) => {
            Verdict::Mismatch(witness.to_owned())
        }
        _ => Verdict::Unverified(format!(
            "unverified: the witness {witness} {}",
            body_str(outcome, "error")
                .map(|e| format!("failed ({})", e.trim()))
                .unwrap_or_else(|| format!("ended: {outcome}"))
        )),
    }
}

/// Applies `verdict` to a host's result (not the witness's own: see [`drive`]).
fn apply(verdict: &Verdict, outcome: &mut Outcome, first: &str) {
    match verdict {
        Verdict::Waiting | Verdict::Alone => {}
        Verdict::Verified(w) => mark(outcome, "witness", w.clone()),
        Verdict::Unverified(why) => mark(outcome, "witness", why.clone()),
        Verdict::Mismatch(w) => {
            mark(outcome, "witness", "mismatch".into());
            if let Outcome::Reply(reply) = outcome {
                if let Body::Json(map) = &mut reply.body {
                    map.insert("return".into(), Value::String("false".into()));
                    map.insert(
                        "error".into(),
                        Value::String(format!(
                            "relay: the tree the first host {first} pulled and served is not the \
                             source's, as the witness {w} found: re-run without --relay"
                        )),
                    );
                }
            }
        }
    }
}

/// A prefix of the line an agent sends once it serves its stream.
pub const SERVING: &str = "relay serving ";

/// Delivers `req` to `targets[index]`, reporting its lines, its serving address and its
/// end on `msgs`.
fn deliver(
    jobs: &mut JoinSet<()>,
    transport: &Arc<dyn Transport>,
    targets: &Arc<Vec<Target>>,
    index: usize,
    req: Request,
    msgs: mpsc::Sender<Msg>,
) {
    let transport = Arc::clone(transport);
    let targets = Arc::clone(targets);
    jobs.spawn(async move {
        let Some(target) = targets.get(index) else {
            let _ = msgs
                .send(Msg::Done(index, Outcome::Failed("no such target".into())))
                .await;
            return;
        };
        let (etx, mut erx) = mpsc::channel(64);
        let forward = async {
            while let Some(event) = erx.recv().await {
                if let Event::Line { line, .. } = &event {
                    if let Some(addr) = line.strip_prefix(SERVING) {
                        if let Ok(addr) = addr.trim().parse() {
                            let _ = msgs.send(Msg::Serving(index, addr)).await;
                            continue;
                        }
                    }
                }
                let _ = msgs.send(Msg::Line(index, event)).await;
            }
        };
        let (outcome, ()) = tokio::join!(transport.deliver(target, &req, etx), forward);
        let _ = msgs.send(Msg::Done(index, outcome)).await;
    });
}

fn line(text: String, stream: Stream) -> Event {
    Event::Line {
        stream,
        line: text,
        partial: false,
    }
}

async fn drive(
    transport: Arc<dyn Transport>,
    targets: Vec<Target>,
    request: Request,
    fanout: usize,
    tx: mpsc::Sender<FanoutEvent>,
) {
    let names: Vec<String> = targets.iter().map(Target::to_string).collect();
    let started = Instant::now();
    let result = |index: usize, outcome: Outcome| HostResult {
        index,
        host: names.get(index).cloned().unwrap_or_default(),
        outcome,
        elapsed: started.elapsed(),
    };
    let done = |index: usize, outcome: Outcome| FanoutEvent::Done(result(index, outcome));
    let token = match relay::token() {
        Ok(t) => t,
        Err(e) => {
            for index in 0..targets.len() {
                let _ = tx.send(done(index, Outcome::Failed(e.to_string()))).await;
            }
            return;
        }
    };
    let mut ips = Vec::with_capacity(targets.len());
    for target in &targets {
        ips.push(address(target).await);
    }
    let peers: Vec<IpAddr> = ips.iter().flatten().copied().collect();
    let targets = Arc::new(targets);
    let (mtx, mut mrx) = mpsc::channel::<Msg>(1024);
    let mut jobs = JoinSet::new();
    let mut served: Vec<usize> = Vec::new();
    // Results held until the witness's verdict (the first host's among them).
    let mut held: Vec<HostResult> = Vec::new();

    // 1. The first host pulls from the source and cuts the tree into chunks.
    let mut first = None;
    let mut tried = 0;
    let mut candidates = 0..targets.len();
    while tried < MAX_ATTEMPTS {
        let Some(index) = candidates.next() else {
            break;
        };
        tried += 1;
        let Some(bind) = ips.get(index).copied().flatten() else {
            let _ = tx
                .send(done(
                    index,
                    Outcome::Failed("relay: cannot resolve the host".into()),
                ))
                .await;
            continue;
        };
        let mut req = request.clone();
        req.args = RelayArgs::Pull(Pull {
            from: None,
            token: token.clone(),
            expect: None,
            serve: true,
            bind: Some(bind),
            peers: peers.clone(),
            ttl: relay::DEFAULT_TTL,
            stream: true,
        })
        .to_args();
        req.follow = true;
        tracing::info!(host = %names.get(index).map_or("", String::as_str), "relay: first host pulls from the source");
        deliver(&mut jobs, &transport, &targets, index, req, mtx.clone());
        let mut outcome = Outcome::Failed("relay: no reply".into());
        while let Some(msg) = mrx.recv().await {
            match msg {
                Msg::Serving(..) => {}
                Msg::Line(i, event) => {
                    let host = names.get(i).cloned().unwrap_or_default();
                    let _ = tx
                        .send(FanoutEvent::Event {
                            index: i,
                            host,
                            event,
                        })
                        .await;
                }
                Msg::Done(_, o) => {
                    outcome = o;
                    break;
                }
            }
        }
        let fields = (
            body_str(&outcome, "stream"),
            body_str(&outcome, "list"),
            body_str(&outcome, "manifest"),
        );
        let ok = succeeded(&outcome);
        annotate(&mut outcome, "source", 1, None);
        let finished = result(index, outcome);
        if let (true, (Some(addr), Some(list), Some(manifest))) = (ok, fields) {
            if let Ok(addr) = addr.parse::<SocketAddr>() {
                served.push(index);
                first = Some((index, addr, list, manifest));
                held.push(finished);
                break;
            }
        }
        let _ = tx.send(FanoutEvent::Done(finished)).await;
    }
    let rest: Vec<usize> = candidates.collect();
    let Some((root, root_addr, list, manifest)) = first else {
        for index in rest {
            let _ = tx
                .send(done(
                    index,
                    Outcome::Failed("relay: no first host could pull from the source".into()),
                ))
                .await;
        }
        return;
    };

    // 2. The others, as a tree of `fanout` children per host, in breadth-first order:
    // position 0 is the first host, position p's parent is (p - 1) / fanout. Position 1
    // is the witness.
    let first_name = names.get(root).cloned().unwrap_or_default();
    let witness = rest.first().copied();
    let mut verdict = if witness.is_some() {
        Verdict::Waiting
    } else {
        Verdict::Alone
    };
    if witness.is_none() {
        for finished in held.drain(..) {
            let _ = tx.send(FanoutEvent::Done(finished)).await;
        }
    }
    let mut order = vec![root];
    order.extend(rest.iter().copied());
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut stage = vec![Stage::Waiting; order.len()];
    let mut addr: Vec<Option<SocketAddr>> = vec![None; order.len()];
    if let Some(s) = stage.first_mut() {
        *s = Stage::Ended(true);
    }
    if let Some(a) = addr.first_mut() {
        *a = Some(root_addr);
    }
    let by_addr: HashMap<SocketAddr, usize> = HashMap::from([(root_addr, root)]);
    let mut by_addr = by_addr;
    let mut attempts = vec![0u32; targets.len()];
    let mut running = 0usize;
    loop {
        // Start every waiting host whose nearest live ancestor serves.
        for p in 1..order.len() {
            if stage.get(p) != Some(&Stage::Waiting) {
                continue;
            }
            let mut from = Vec::new();
            let mut ready = true;
            let mut a = p;
            while a > 0 {
                a = (a - 1) / fanout;
                match stage.get(a) {
                    Some(Stage::Serving) | Some(Stage::Ended(true)) => {
                        from.extend(addr.get(a).copied().flatten());
                    }
                    // Its order ended before it served: skip it.
                    Some(Stage::Ended(false)) => {}
                    _ => {
                        if from.is_empty() {
                            ready = false;
                            break;
                        }
                    }
                }
            }
            if !ready || from.is_empty() {
                continue;
            }
            // The parent (or nearest live ancestor), a few more, and always the first host.
            let last = from.pop();
            from.truncate(1 + MAX_FALLBACKS);
            from.extend(last);
            from.dedup();
            let Some(&index) = order.get(p) else { continue };
            let bind = ips.get(index).copied().flatten();
            let mut req = request.clone();
            req.args = RelayArgs::Chain(Chain {
                token: token.clone(),
                from: from.clone(),
                list: list.clone(),
                expect: manifest.clone(),
                serve: bind.is_some(),
                bind,
                peers: peers.clone(),
                ttl: relay::DEFAULT_TTL,
                verify: Some(index) == witness,
            })
            .to_args();
            req.follow = true;
            let parent = from
                .first()
                .and_then(|a| by_addr.get(a))
                .and_then(|&i| names.get(i).cloned())
                .unwrap_or_default();
            let host = names.get(index).cloned().unwrap_or_default();
            tracing::info!(host = %host, parent = %parent, "relay: chain host starts");
            let _ = tx
                .send(FanoutEvent::Event {
                    index,
                    host,
                    event: line(format!("pulling from {parent}"), Stream::Stdout),
                })
                .await;
            if let Some(a) = attempts.get_mut(index) {
                *a += 1;
            }
            if let Some(s) = stage.get_mut(p) {
                *s = Stage::Running;
            }
            running += 1;
            deliver(&mut jobs, &transport, &targets, index, req, mtx.clone());
        }
        if running == 0 {
            break;
        }
        let Some(msg) = mrx.recv().await else { break };
        match msg {
            Msg::Serving(index, a) => {
                if let Some(&p) = position.get(&index) {
                    if let Some(s) = stage.get_mut(p) {
                        *s = Stage::Serving;
                    }
                    if let Some(slot) = addr.get_mut(p) {
                        *slot = Some(a);
                    }
                    by_addr.insert(a, index);
                    served.push(index);
                }
            }
            Msg::Line(index, event) => {
                let host = names.get(index).cloned().unwrap_or_default();
                let _ = tx.send(FanoutEvent::Event { index, host, event }).await;
            }
            Msg::Done(index, mut outcome) => {
                let p = position.get(&index).copied().unwrap_or(0);
                let tries = attempts.get(index).copied().unwrap_or(1);
                let was_serving = stage.get(p) == Some(&Stage::Serving);
                running = running.saturating_sub(1);
                let ok = succeeded(&outcome);
                if !ok && tries < 2 && !matches!(stage.get(p), Some(Stage::Ended(_))) {
                    // Its children keep pulling from its ancestors; it pulls from the source.
                    let why = body_str(&outcome, "error").unwrap_or_else(|| outcome.to_string());
                    tracing::warn!(host = %names.get(index).map_or("", String::as_str), why = %why.trim(), "relay: chain pull failed; pulling from the source");
                    if let Some(s) = stage.get_mut(p) {
                        *s = Stage::Ended(was_serving);
                    }
                    if let Some(a) = attempts.get_mut(index) {
                        *a += 1;
                    }
                    let host = names.get(index).cloned().unwrap_or_default();
                    let _ = tx
                        .send(FanoutEvent::Event {
                            index,
                            host,
                            event: line(
                                format!("relay failed ({}), pulling from the source", why.trim()),
                                Stream::Stderr,
                            ),
                        })
                        .await;
                    let mut req = request.clone();
                    req.args = RelayArgs::Pull(Pull {
                        from: None,
                        token: token.clone(),
                        expect: Some(manifest.clone()),
                        serve: false,
                        bind: None,
                        peers: Vec::new(),
                        ttl: relay::DEFAULT_TTL,
                        stream: false,
                    })
                    .to_args();
                    req.follow = false;
                    running += 1;
                    deliver(&mut jobs, &transport, &targets, index, req, mtx.clone());
                    continue;
                }
                if let Some(s) = stage.get_mut(p) {
                    if !matches!(s, Stage::Ended(_)) {
                        *s = Stage::Ended(was_serving);
                    }
                }
                let from = if tries >= 2 {
                    "source".to_owned()
                } else {
                    body_str(&outcome, "from")
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        .and_then(|a| by_addr.get(&a))
                        .and_then(|&i| names.get(i).cloned())
                        .unwrap_or_else(|| "source".into())
                };
                annotate(&mut outcome, &from, tries, None);
                let mut finished = result(index, outcome);
                let mut ready = Vec::new();
                if Some(index) == witness {
                    let name = names.get(index).cloned().unwrap_or_default();
                    verdict = judge(&finished.outcome, &manifest, &name);
                    if matches!(verdict, Verdict::Mismatch(_)) {
                        tracing::error!(first = %first_name, witness = %name, "relay: the first host's tree is not the witness's source's");
                        let found = body_str(&finished.outcome, "error").unwrap_or_default();
                        mark(&mut finished.outcome, "witness", "mismatch".into());
                        mark(
                            &mut finished.outcome,
                            "error",
                            format!(
                                "relay witness: the tree of the first host {first_name} is not \
                                 the source's ({})",
                                found.trim()
                            ),
                        );
                    }
                    ready.push(finished);
                    for mut other in held.drain(..) {
                        apply(&verdict, &mut other.outcome, &first_name);
                        ready.push(other);
                    }
                } else if matches!(verdict, Verdict::Waiting) {
                    held.push(finished);
                } else {
                    apply(&verdict, &mut finished.outcome, &first_name);
                    ready.push(finished);
                }
                let mut gone = false;
                for finished in ready {
                    gone |= tx.send(FanoutEvent::Done(finished)).await.is_err();
                }
                if gone {
                    break;
                }
            }
        }
    }
    drop(mtx);
    // A witness that never ended (the run was cut short): what was held goes out as is.
    let why = Verdict::Unverified("unverified: the witness did not finish".into());
    for mut finished in held {
        apply(&why, &mut finished.outcome, &first_name);
        let _ = tx.send(FanoutEvent::Done(finished)).await;
    }
    // Every host that served stops serving.
    let mut stops = JoinSet::new();
    for host in served {
        let mut req = request.clone();
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
    jobs.abort_all();
}
