//! One order to many targets, concurrently, as a stream of events and results.
//!
//! ```text
//! Fanout::run(targets, request) ──► Receiver<FanoutEvent>
//!
//!   driver task ── Semaphore(concurrency) ──► JoinSet: one task per target
//!                                               transport.deliver(target, request, events)
//!   per target:  Event{index, host, event}*   as the target streams them (host: the
//!                                             agent's, for events a proxy relays)
//!                Done(HostResult)             exactly once, the moment it is known
//! ```
//!
//! # Design
//!
//! Nothing polls: each target's task sends its result when the transport resolves, so a
//! fast host is reported at once and a slow or dead one costs only its own deadline (the
//! transport's). At most `concurrency` deliveries run at a time; the rest wait for a
//! permit. Results arrive in completion order and carry the target's `index` in the
//! input, so callers can print in input order if they want. The engine sees only a
//! `dyn Transport` and so does not know how targets are reached.
//!
//! Dropping the receiver cancels the run: the driver notices, and its `JoinSet` aborts
//! every delivery still in flight. A delivery task that panics still produces its
//! `Done`, with [`Outcome::Failed`].

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::order::Request;
use crate::target::Target;
use crate::transport::{Outcome, Transport};
use crate::wire::message::{Event, TaggedEvent};

/// Default number of deliveries in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 256;

/// Capacity of the channel of [`FanoutEvent`]s.
const CHANNEL: usize = 1024;

/// Capacity of each delivery's own event channel.
const PER_TARGET_CHANNEL: usize = 64;

/// The final result for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct HostResult {
    /// Position of the target in the input.
    pub index: usize,
    /// The target as named by the user ([`Target`]'s `Display`).
    pub host: String,
    /// How the delivery ended.
    pub outcome: Outcome,
    /// Time from the start of this target's delivery to its outcome.
    pub elapsed: Duration,
}

/// What a [`Fanout`] run reports.
#[derive(Debug, Clone, PartialEq)]
pub enum FanoutEvent {
    /// A target streamed an event (output line, progress) while its order runs.
    Event {
        /// Position of the target in the input.
        index: usize,
        /// The target as named by the user; for an event a proxy relayed for one of its
        /// agents, that agent as the proxy names it (the `host` of its
        /// [`Event::Host`] result).
        host: String,
        /// What happened.
        event: Event,
    },
    /// A target's delivery ended. Sent exactly once per target, after its events.
    Done(HostResult),
}

/// Runs one order on many targets through a [`Transport`].
#[derive(Clone)]
pub struct Fanout {
    transport: Arc<dyn Transport>,
    concurrency: usize,
}

impl Fanout {
    /// A fan-out through `transport`, with [`DEFAULT_CONCURRENCY`].
    pub fn new(transport: Arc<dyn Transport>) -> Fanout {
        Fanout {
            transport,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// Sets how many deliveries may run at once (at least 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> Fanout {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How many deliveries may run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Starts delivering `request` to every target and returns the stream of events.
    /// The stream ends after the last target's [`FanoutEvent::Done`]. Must be called
    /// inside a Tokio runtime; the work runs in spawned tasks.
    pub fn run(&self, targets: Vec<Target>, request: Request) -> mpsc::Receiver<FanoutEvent> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let transport = Arc::clone(&self.transport);
        let permits = Arc::new(Semaphore::new(self.concurrency));
        tokio::spawn(drive(transport, permits, targets, Arc::new(request), tx));
        rx
    }
}

/// Spawns one task per target as permits allow, then waits for them all; stops (and so
/// aborts the tasks) as soon as nobody listens any more.
async fn drive(
    transport: Arc<dyn Transport>,
    permits: Arc<Semaphore>,
    targets: Vec<Target>,
    request: Arc<Request>,
    tx: mpsc::Sender<FanoutEvent>,
) {
    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    for (index, target) in targets.into_iter().enumerate() {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return, // never closed
            },
            _ = tx.closed() => return,
        };
        let host = target.to_string();
        let job = deliver_one(
            Arc::clone(&transport),
            target,
            Arc::clone(&request),
            index,
            host.clone(),
            tx.clone(),
        );
        let handle = tasks.spawn(async move {
            job.await;
            drop(permit);
        });
        names.insert(handle.id(), (index, host));
        // Reap what has finished so far, without waiting.
        while let Some(done) = tasks.try_join_next_with_id() {
            if !reap(done, &mut names, &tx).await {
                return;
            }
        }
    }
    loop {
        let done = tokio::select! {
            done = tasks.join_next_with_id() => match done {
                Some(done) => done,
                None => return,
            },
            _ = tx.closed() => return,
        };
        if !reap(done, &mut names, &tx).await {
            return;
        }
    }
}

/// Forgets a finished task; reports a panicked one as failed. False if the receiver is
/// gone.
async fn reap(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    names: &mut HashMap<tokio::task::Id, (usize, String)>,
    tx: &mpsc::Sender<FanoutEvent>,
) -> bool {
    match done {
        Ok((id, ())) => {
            names.remove(&id);
            true
        }
        Err(e) => {
            let Some((index, host)) = names.remove(&e.id()) else {
                return true;
            };
            tracing::error!(host = %host, cause = %e, "delivery task failed");
            let result = HostResult {
                index,
                host,
                outcome: Outcome::Failed(format!("internal error: {e}")),
                elapsed: Duration::ZERO,
            };
            tx.send(FanoutEvent::Done(result)).await.is_ok()
        }
    }
}

/// Delivers to one target, forwarding its events tagged with `index` and `host`, then
/// sends its result.
async fn deliver_one(
    transport: Arc<dyn Transport>,
    target: Target,
    request: Arc<Request>,
    index: usize,
    host: String,
    tx: mpsc::Sender<FanoutEvent>,
) {
    let start = Instant::now();
    let (events_tx, mut events_rx) = mpsc::channel(PER_TARGET_CHANNEL);
    let delivery = transport.deliver(&target, &request, events_tx);
    let forward = async {
        while let Some(TaggedEvent { host: about, event }) = events_rx.recv().await {
            let tagged = FanoutEvent::Event {
                index,
                host: about.unwrap_or_else(|| host.clone()),
                event,
            };
            if tx.send(tagged).await.is_err() {
                break;
            }
        }
    };
    let (outcome, ()) = tokio::join!(delivery, forward);
    let elapsed = start.elapsed();
    tracing::debug!(host = %host, outcome = %outcome, elapsed_ms = elapsed.as_millis() as u64, "done");
    let result = HostResult {
        index,
        host,
        outcome,
        elapsed,
    };
    let _ = tx.send(FanoutEvent::Done(result)).await;
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::order::Reply;
    use crate::transport::testutil::{canned, closed_port, silent, target, v2_agent, v2_relay};
    use crate::transport::{AgentTransport, BoxFuture, Protocol};
    use crate::wire::message::Stream;
    use serde_json::json;

    fn ok() -> Reply {
        Reply::ok(json!({"return": "true"}).as_object().unwrap().clone())
    }

    fn transport(key_cipher: &str, deadline: Duration) -> Arc<dyn Transport> {
        Arc::new(AgentTransport {
            protocol: Protocol::V2,
            key_cipher: key_cipher.into(),
            public_key: None,
            connect_timeout: Duration::from_secs(2),
            deadline,
            pool: None,
        })
    }

    async fn collect(mut rx: mpsc::Receiver<FanoutEvent>) -> Vec<FanoutEvent> {
        let mut out = Vec::new();
        let all = async {
            while let Some(e) = rx.recv().await {
                out.push(e);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("test timeout");
        out
    }

    fn done(events: &[FanoutEvent]) -> Vec<&HostResult> {
        events
            .iter()
            .filter_map(|e| match e {
                FanoutEvent::Done(r) => Some(r),
                FanoutEvent::Event { .. } => None,
            })
            .collect()
    }

    /// Results stream as they come: the fast host is done before the slow one, the
    /// silent one times out at its deadline, the closed port fails at once, and a wrong
    /// key is a 401; every target is reported exactly once.
    #[tokio::test]
    async fn results_arrive_as_they_come() {
        let line = Event::Line {
            stream: Stream::Stdout,
            line: "hello".into(),
            partial: false,
        };
        let fast = v2_agent("k", None, canned(vec![line.clone()], Duration::ZERO, ok())).await;
        let slow = v2_agent("k", None, canned(vec![], Duration::from_millis(400), ok())).await;
        let wrong = v2_agent("other", None, canned(vec![], Duration::ZERO, ok())).await;
        let dead = silent().await;
        let closed = closed_port().await;
        let targets = vec![
            target(slow),
            target(dead),
            target(fast),
            target(closed),
            target(wrong),
        ];
        let fanout = Fanout::new(transport("k", Duration::from_millis(800)));
        let start = Instant::now();
        let events = collect(fanout.run(targets.clone(), Request::default())).await;
        let took = start.elapsed();
        assert!(took < Duration::from_millis(2000), "{took:?}");

        let results = done(&events);
        assert_eq!(results.len(), 5);
        let order: Vec<usize> = results.iter().map(|r| r.index).collect();
        let pos = |i: usize| order.iter().position(|&x| x == i).unwrap();
        assert!(pos(2) < pos(0), "fast before slow: {order:?}");
        assert!(pos(0) < pos(1), "slow before the timeout: {order:?}");
        for r in &results {
            assert_eq!(r.host, targets[r.index].to_string());
        }
        let by_index = |i: usize| results.iter().find(|r| r.index == i).unwrap();
        assert_eq!(by_index(0).outcome, Outcome::Reply(ok()));
        assert!(by_index(0).elapsed >= Duration::from_millis(400));
        assert_eq!(
            by_index(1).outcome,
            Outcome::Timeout(Duration::from_millis(800))
        );
        assert_eq!(by_index(2).outcome, Outcome::Reply(ok()));
        assert!(matches!(by_index(3).outcome, Outcome::Unreachable { .. }));
        assert_eq!(by_index(4).outcome.reply().map(|r| r.code), Some(401));

        // The fast host's event comes before its result.
        let event_at = events
            .iter()
            .position(|e| matches!(e, FanoutEvent::Event { index: 2, event, .. } if *event == line))
            .expect("event");
        let done_at = events
            .iter()
            .position(|e| matches!(e, FanoutEvent::Done(r) if r.index == 2))
            .unwrap();
        assert!(event_at < done_at);
    }

    /// Events a proxy tags with its agents' names are reported under those names; the
    /// proxy's own events (untagged) under the proxy's. A request without an API key
    /// (not addressed to a proxy) drops the tags, in a fan-out as in a lone delivery.
    #[tokio::test]
    async fn relayed_events_keep_their_agent() {
        let line = |text: &str| Event::Line {
            stream: Stream::Stdout,
            line: text.into(),
            partial: false,
        };
        let proxy = v2_relay(
            "k",
            vec![
                TaggedEvent::from(line("own")),
                TaggedEvent::about("web1", line("one")),
                TaggedEvent::about("ssh://root@web2", line("two")),
            ],
            ok(),
        )
        .await;
        let fanout = Fanout::new(transport("k", Duration::from_secs(5)));
        let to_proxy = Request {
            api_key: "api".into(),
            ..Request::default()
        };
        let hosts = |events: Vec<FanoutEvent>| -> Vec<(String, Event)> {
            events
                .into_iter()
                .filter_map(|e| match e {
                    FanoutEvent::Event {
                        index: 0,
                        host,
                        event,
                    } => Some((host, event)),
                    _ => None,
                })
                .collect()
        };
        let got = hosts(collect(fanout.run(vec![target(proxy)], to_proxy)).await);
        let name = target(proxy).to_string();
        assert_eq!(
            got,
            [
                (name.clone(), line("own")),
                ("web1".to_owned(), line("one")),
                ("ssh://root@web2".to_owned(), line("two")),
            ]
        );
        let got = hosts(collect(fanout.run(vec![target(proxy)], Request::default())).await);
        assert_eq!(
            got,
            [
                (name.clone(), line("own")),
                (name.clone(), line("one")),
                (name, line("two")),
            ],
            "no API key, no proxy: the peer speaks for itself"
        );

        let (tx, mut rx) = mpsc::channel(8);
        let outcome = transport("k", Duration::from_secs(5))
            .deliver(&target(proxy), &Request::default(), tx)
            .await;
        assert_eq!(outcome, Outcome::Reply(ok()));
        let mut plain = Vec::new();
        while let Some(event) = rx.recv().await {
            plain.push(event);
        }
        assert_eq!(
            plain,
            [line("own"), line("one"), line("two")].map(TaggedEvent::from)
        );
    }

    /// A transport that tags nothing has its events come under the target's name, and
    /// nothing is lost.
    #[tokio::test]
    async fn untagged_transports_keep_the_target() {
        struct Lines;
        impl Transport for Lines {
            fn deliver<'a>(
                &'a self,
                _target: &'a Target,
                _request: &'a Request,
                events: mpsc::Sender<TaggedEvent>,
            ) -> BoxFuture<'a, Outcome> {
                Box::pin(async move {
                    for i in 0..200 {
                        let line = Event::Line {
                            stream: Stream::Stderr,
                            line: i.to_string(),
                            partial: false,
                        };
                        events.send(TaggedEvent::from(line)).await.unwrap();
                    }
                    Outcome::Reply(Reply::empty(200))
                })
            }
        }
        let fanout = Fanout::new(Arc::new(Lines));
        let events = collect(fanout.run(vec![Target::new("h", 1)], Request::default())).await;
        let lines: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                FanoutEvent::Event {
                    host,
                    event: Event::Line { line, .. },
                    ..
                } => {
                    assert_eq!(host, "h");
                    Some(line.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(lines, (0..200).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(done(&events).len(), 1);
    }

    /// A transport that records how many deliveries run at once.
    struct Counting {
        now: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl Transport for Counting {
        fn deliver<'a>(
            &'a self,
            _target: &'a Target,
            _request: &'a Request,
            _events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            use std::sync::atomic::Ordering::SeqCst;
            Box::pin(async move {
                let n = self.now.fetch_add(1, SeqCst) + 1;
                self.peak.fetch_max(n, SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.now.fetch_sub(1, SeqCst);
                Outcome::Reply(Reply::empty(200))
            })
        }
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let counting = Arc::new(Counting {
            now: 0.into(),
            peak: 0.into(),
        });
        let fanout = Fanout::new(counting.clone()).with_concurrency(3);
        let targets = (0..10).map(|i| Target::new(format!("h{i}"), 1)).collect();
        let events = collect(fanout.run(targets, Request::default())).await;
        assert_eq!(done(&events).len(), 10);
        assert_eq!(counting.peak.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// A panicking transport still yields a result per target.
    struct Panics;

    impl Transport for Panics {
        fn deliver<'a>(
            &'a self,
            _target: &'a Target,
            _request: &'a Request,
            _events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async { panic!("boom") })
        }
    }

    #[tokio::test]
    async fn panics_become_failures() {
        let fanout = Fanout::new(Arc::new(Panics));
        let events = collect(fanout.run(
            vec![Target::new("a", 1), Target::new("b", 1)],
            Request::default(),
        ))
        .await;
        let results = done(&events);
        assert_eq!(results.len(), 2);
        assert!(results
            .iter()
            .all(|r| matches!(&r.outcome, Outcome::Failed(m) if m.contains("internal error"))));
    }
}
