//! The connect stage of a strict run: every target reached and authenticated before
//! the order starts anywhere (orgalorg's all-or-nothing start, for agents and proxies).
//!
//! ```text
//! strict run ─► Transport::connect(t1) … connect(tN)     concurrently, each ≤ its deadline
//!   all Ok  ─► the order goes out as usual (Fanout), on the connections just made
//!   some Err ─► nothing is sent anywhere: those targets get their outcome (unreachable,
//!               401…), every other one a 503 reply
//!               "not started (strict: every host or none; --skip-unreachable runs on
//!                the others): web3 failed (can't connect to web3:3440: …)"
//! ```
//!
//! # Design
//!
//! The stage is a function of its own, not a mode of [`Fanout`](crate::fanout::Fanout),
//! because a proxy fans out once per route: its gate spans every route of the request
//! before any of them starts. A caller runs [`connect_all`]; on `Err` it reports the
//! results it got ([`into_events`] makes them the stream a fan-out would have given).
//! Which orders are gated is the caller's choice ([`applies`]: those that start work);
//! a request asks a proxy for it with [`Request::strict`](crate::order::Request).
//!
//! What the stage proves is as much as a transport can before delivering: an agent over
//! v2 completes the handshake (and its pool keeps the connection for the delivery), an
//! agent over v1 accepts the TCP connection, an SSH host authenticates. A host that goes
//! away between the stage and the delivery still fails alone; the stage closes the
//! window, it cannot make it zero.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::fanout::{FanoutEvent, HostResult};
use crate::order::{Reply, Request};
use crate::target::Target;
use crate::transport::{Outcome, Transport};

/// The orders a strict run gates: those that start work on the hosts. Read-only orders
/// (`status`, `rlist`) and `rkill` (stopping what can be stopped is better than
/// nothing) are not; the cluster lock and rollouts have their own all-or-nothing.
pub const ORDERS: [&str; 4] = ["exec", "run", "upload", "rsync"];

/// Whether a strict run of `order` goes through the connect stage.
pub fn applies(order: &str) -> bool {
    ORDERS.contains(&order)
}

/// At most this many failed hosts are named in a not-started reply; the rest counted.
const NAMED: usize = 20;

/// The text of a host's reply when the run did not start because of others.
pub const NOT_STARTED: &str =
    "not started (strict: every host or none; --skip-unreachable runs on the others)";

/// Connects to every target (`transport` of each, as paired), at most `concurrency` at
/// a time. `Ok` when every one connected; otherwise every target's result, in input
/// order (`index` its position): the failed ones with their outcome, the others with
/// the 503 reply of [`not_started`].
pub async fn connect_all(
    entries: Vec<(Arc<dyn Transport>, Target)>,
    request: &Request,
    concurrency: usize,
) -> Result<(), Vec<HostResult>> {
    let start = Instant::now();
    let request = Arc::new(request.clone());
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let hosts: Vec<String> = entries.iter().map(|(_, t)| t.to_string()).collect();
    for (index, (transport, target)) in entries.into_iter().enumerate() {
        let permits = Arc::clone(&permits);
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let began = Instant::now();
            let result = transport.connect(&target, &request).await;
            (index, result, began.elapsed())
        });
    }
    let mut failed: Vec<Option<(Outcome, Duration)>> = hosts.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (index, outcome, elapsed) = match joined {
            Ok((_, Ok(()), _)) => continue,
            Ok((index, Err(outcome), elapsed)) => (index, outcome, elapsed),
            Err(e) => {
                // A task that panicked or was cancelled: its index is unknown, so the
                // run cannot be said to have connected. Nothing is started.
                tracing::error!(cause = %e, "connect stage task failed");
                return Err(hosts
                    .iter()
                    .enumerate()
                    .map(|(index, host)| HostResult {
                        index,
                        host: host.clone(),
                        outcome: Outcome::Failed(format!("internal error: {e}")),
                        elapsed: start.elapsed(),
                    })
                    .collect());
            }
        };
        if let Some(slot) = failed.get_mut(index) {
            *slot = Some((outcome, elapsed));
        }
    }
    let culprits: Vec<(&str, &Outcome)> = hosts
        .iter()
        .zip(&failed)
        .filter_map(|(host, f)| f.as_ref().map(|(o, _)| (host.as_str(), o)))
        .collect();
    if culprits.is_empty() {
        return Ok(());
    }
    let reply = not_started(&culprits);
    for (host, outcome) in &culprits {
        tracing::warn!(host = %host, outcome = %outcome, "strict: cannot connect; the order starts nowhere");
    }
    let elapsed = start.elapsed();
    Err(hosts
        .into_iter()
        .zip(failed)
        .enumerate()
        .map(|(index, (host, failed))| {
            let (outcome, elapsed) = match failed {
                Some(failed) => failed,
                None => (Outcome::Reply(reply.clone()), elapsed),
            };
            HostResult {
                index,
                host,
                outcome,
                elapsed,
            }
        })
        .collect())
}

/// The 503 reply of a host that connected, in a run that did not start because of
/// `culprits` (host, outcome), which it names (the first 20, then a count).
pub fn not_started(culprits: &[(&str, &Outcome)]) -> Reply {
    let mut named: Vec<String> = culprits
        .iter()
        .take(NAMED)
        .map(|(host, outcome)| format!("{host} failed ({outcome})"))
        .collect();
    if culprits.len() > NAMED {
        named.push(format!("and {} more", culprits.len() - NAMED));
    }
    Reply::error(503, format!("{NOT_STARTED}: {}", named.join(", ")))
}

/// The stream a fan-out would have given for `results`: one `Done` each.
pub fn into_events(results: Vec<HostResult>) -> mpsc::Receiver<FanoutEvent> {
    let (tx, rx) = mpsc::channel(results.len().max(1));
    for result in results {
        // Cannot fail: the channel holds them all and its receiver is right here.
        let _ = tx.try_send(FanoutEvent::Done(result));
    }
    rx
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::transport::testutil::{closed_port, target};
    use crate::transport::BoxFuture;
    use crate::wire::message::TaggedEvent;

    /// Connects where the port is not 1; counts deliveries, which must never happen
    /// here.
    struct Ports;

    impl Transport for Ports {
        fn deliver<'a>(
            &'a self,
            _target: &'a Target,
            _request: &'a Request,
            _events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async { panic!("the connect stage delivered something") })
        }

        fn connect<'a>(
            &'a self,
            target: &'a Target,
            _request: &'a Request,
        ) -> BoxFuture<'a, Result<(), Outcome>> {
            Box::pin(async move {
                match target.port {
                    1 => Err(Outcome::Unreachable {
                        address: target.address(),
                        cause: "refused".into(),
                    }),
                    _ => Ok(()),
                }
            })
        }
    }

    fn entries(ports: &[u16]) -> Vec<(Arc<dyn Transport>, Target)> {
        ports
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let transport: Arc<dyn Transport> = Arc::new(Ports);
                (transport, Target::new(format!("h{i}"), p))
            })
            .collect()
    }

    #[tokio::test]
    async fn all_connected_goes_ahead() {
        let r = Request::default();
        assert!(connect_all(entries(&[2, 3, 4]), &r, 2).await.is_ok());
        assert!(connect_all(Vec::new(), &r, 2).await.is_ok());
    }

    /// One failure: it keeps its outcome, the others are told why they did not start.
    #[tokio::test]
    async fn one_failure_starts_nothing_and_is_named() {
        let results = connect_all(entries(&[2, 1, 4]), &Request::default(), 1)
            .await
            .unwrap_err();
        assert_eq!(results.len(), 3);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.index, i);
            assert_eq!(r.host, format!("h{i}"));
        }
        assert!(matches!(results[1].outcome, Outcome::Unreachable { .. }));
        for r in [&results[0], &results[2]] {
            let reply = r.outcome.reply().unwrap();
            assert_eq!(reply.code, 503);
            let text = reply.content();
            let text = text.as_str().unwrap();
            assert!(text.starts_with(NOT_STARTED), "{text}");
            assert!(
                text.ends_with("h1 failed (can't connect to h1:1: refused)"),
                "{text}"
            );
        }
    }

    #[test]
    fn many_failures_are_counted_past_the_named() {
        let o = Outcome::Failed("x".into());
        let hosts: Vec<String> = (0..25).map(|i| format!("h{i}")).collect();
        let culprits: Vec<(&str, &Outcome)> = hosts.iter().map(|h| (h.as_str(), &o)).collect();
        let text = not_started(&culprits).content();
        let text = text.as_str().unwrap();
        assert!(text.contains("h19 failed (x), and 5 more"), "{text}");
        assert!(!text.contains("h20"), "{text}");
    }

    /// A real agent transport: a closed port fails the stage at once.
    #[tokio::test]
    async fn agent_transport_connects_or_not() {
        let closed = closed_port().await;
        let transport: Arc<dyn Transport> = Arc::new(crate::transport::AgentTransport::default());
        let results = connect_all(vec![(transport, target(closed))], &Request::default(), 4)
            .await
            .unwrap_err();
        assert!(matches!(results[0].outcome, Outcome::Unreachable { .. }));
    }

    #[tokio::test]
    async fn results_become_done_events() {
        let results = connect_all(entries(&[1, 1]), &Request::default(), 4)
            .await
            .unwrap_err();
        let mut rx = into_events(results);
        let mut n = 0;
        while let Some(FanoutEvent::Done(r)) = rx.recv().await {
            assert!(matches!(r.outcome, Outcome::Unreachable { .. }));
            n += 1;
        }
        assert_eq!(n, 2);
    }
}
