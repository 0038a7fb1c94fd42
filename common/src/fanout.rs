//! One order to many targets, concurrently, as a stream of events and results.
//!
//! ```text
//! Fanout::run(targets, request) ──► Receiver<FanoutEvent>
//! Fanout::results(targets, request) ──► Vec<Timed>   (input order, events dropped)
//!
//!   driver ── Semaphore(concurrency) ──► JoinSet: one task per target
//!                                          transport.deliver(target, request, events)
//!                                          (≤ limit, if one is set)
//!   per target:  Event{index, host, event}*   as the target streams them (host: the
//!                                             agent's, for events a proxy relays)
//!                Done(HostResult)             exactly once, the moment it is known
//! ```
//!
//! # Design
//!
//! Nothing polls: each target's task sends its result when the transport resolves, so a
//! fast host is reported at once and a slow or dead one costs only its own deadline (the
//! transport's, or the fan-out's [`Fanout::with_limit`] if that is shorter). At most
//! `concurrency` deliveries run at a time; the rest wait for a permit. Results arrive in
//! completion order and carry the target's `index` in the input, so callers can print in
//! input order if they want. The engine sees only a `dyn Transport` and so does not know
//! how targets are reached.
//!
//! [`Fanout::results`] is the same engine for callers that want every result at once
//! and when each delivery started (the cluster lock, [`crate::lock::cluster`]): one
//! driver serves both, reporting to a [`Report`] (a stream, or results only).
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
use tokio::time::{timeout, Instant};

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

/// A target's result and when its delivery started (once it had a permit), from
/// [`Fanout::results`].
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// When the delivery started; its result's `elapsed` counts from here.
    pub started: Instant,
    /// How it ended.
    pub result: HostResult,
}

/// Runs one order on many targets through a [`Transport`].
#[derive(Clone)]
pub struct Fanout {
    transport: Arc<dyn Transport>,
    concurrency: usize,
    limit: Option<Duration>,
}

impl Fanout {
    /// A fan-out through `transport`, with [`DEFAULT_CONCURRENCY`].
    pub fn new(transport: Arc<dyn Transport>) -> Fanout {
        Fanout {
            transport,
            concurrency: DEFAULT_CONCURRENCY,
            limit: None,
        }
    }

    /// Sets how many deliveries may run at once (at least 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> Fanout {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Bounds every delivery by `limit` too, on top of the transport's own deadline: a
    /// delivery still running then is dropped and ends as [`Outcome::Timeout`]`(limit)`.
    pub fn with_limit(mut self, limit: Duration) -> Fanout {
        self.limit = Some(limit);
        self
    }

    /// How many deliveries may run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The transport every delivery goes through.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Starts delivering `request` to every target and returns the stream of events.
    /// The stream ends after the last target's [`FanoutEvent::Done`]. Must be called
    /// inside a Tokio runtime; the work runs in spawned tasks.
    pub fn run(&self, targets: Vec<Target>, request: Request) -> mpsc::Receiver<FanoutEvent> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(
            self.clone()
                .drive(targets, Arc::new(request), Report::Stream(tx)),
        );
        rx
    }

    /// Delivers `request` to every target and returns every target's result, with when
    /// its delivery started, in input order (one per target); the targets' events are
    /// dropped. Dropping the future aborts the deliveries still in flight.
    pub async fn results(&self, targets: Vec<Target>, request: Request) -> Vec<Timed> {
        let (tx, mut rx) = mpsc::channel::<Timed>(CHANNEL);
        let hosts: Vec<String> = targets.iter().map(Target::to_string).collect();
        let mut slots: Vec<Option<Timed>> = hosts.iter().map(|_| None).collect();
        let collect = async {
            while let Some(timed) = rx.recv().await {
                if let Some(slot) = slots.get_mut(timed.result.index) {
                    *slot = Some(timed);
                }
            }
        };
        let drive = self
            .clone()
            .drive(targets, Arc::new(request), Report::Results(tx));
        tokio::join!(drive, collect);
        // Every target is reported (a panicked delivery too); a slot left empty anyway
        // is a failure, never a missing host.
        slots
            .into_iter()
            .zip(hosts)
            .enumerate()
            .map(|(index, (slot, host))| {
                slot.unwrap_or_else(|| Timed {
                    started: Instant::now(),
                    result: HostResult {
                        index,
                        host,
                        outcome: Outcome::Failed("internal error: no result".to_owned()),
                        elapsed: Duration::ZERO,
                    },
                })
            })
            .collect()
    }

    /// Spawns one task per target as permits allow, then waits for them all; stops (and
    /// so aborts the tasks) as soon as nobody listens any more.
    async fn drive(self, targets: Vec<Target>, request: Arc<Request>, report: Report) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        for (index, target) in targets.into_iter().enumerate() {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return, // never closed
                },
                () = report.closed() => return,
            };
            let host = target.to_string();
            let job = deliver_one(
                Arc::clone(&self.transport),
                self.limit,
                target,
                Arc::clone(&request),
                index,
                host.clone(),
                report.clone(),
            );
            let handle = tasks.spawn(async move {
                job.await;
                drop(permit);
            });
            names.insert(handle.id(), (index, host));
            // Reap what has finished so far, without waiting.
            while let Some(done) = tasks.try_join_next_with_id() {
                if !reap(done, &mut names, &report).await {
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
                () = report.closed() => return,
            };
            if !reap(done, &mut names, &report).await {
                return;
            }
        }
    }
}

/// Where the driver reports: the stream of [`Fanout::run`], or the results only, with
/// their start, for [`Fanout::results`].
#[derive(Clone)]
enum Report {
    /// Every event and result.
    Stream(mpsc::Sender<FanoutEvent>),
    /// Results only; events are read and dropped.
    Results(mpsc::Sender<Timed>),
}

impl Report {
    /// Passes on one event of target `index`. False if nobody listens any more.
    async fn event(&self, index: usize, host: String, event: Event) -> bool {
        match self {
            Report::Stream(tx) => tx
                .send(FanoutEvent::Event { index, host, event })
                .await
                .is_ok(),
            Report::Results(tx) => !tx.is_closed(),
        }
    }

    /// Passes on a target's result. False if nobody listens any more.
    async fn done(&self, started: Instant, result: HostResult) -> bool {
        match self {
            Report::Stream(tx) => tx.send(FanoutEvent::Done(result)).await.is_ok(),
            Report::Results(tx) => tx.send(Timed { started, result }).await.is_ok(),
        }
    }

    /// Resolves once nobody listens any more.
    async fn closed(&self) {
        match self {
            Report::Stream(tx) => tx.closed().await,
            Report::Results(tx) => tx.closed().await,
        }
    }
}

/// Forgets a finished task; reports a panicked one as failed. False if the receiver is
/// gone.
async fn reap(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    names: &mut HashMap<tokio::task::Id, (usize, String)>,
    report: &Report,
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
            report.done(Instant::now(), result).await
        }
    }
}

/// Delivers to one target (within `limit`, if any), forwarding its events tagged with
/// `index` and `host`, then reports its result.
async fn deliver_one(
    transport: Arc<dyn Transport>,
    limit: Option<Duration>,
    target: Target,
    request: Arc<Request>,
    index: usize,
    host: String,
    report: Report,
) {
    let start = Instant::now();
    let (events_tx, mut events_rx) = mpsc::channel(PER_TARGET_CHANNEL);
    let delivery = async {
        let delivery = transport.deliver(&target, &request, events_tx);
        match limit {
            None => delivery.await,
            Some(limit) => timeout(limit, delivery)
                .await
                .unwrap_or(Outcome::Timeout(limit)),
        }
    };
    let forward = async {
        while let Some(TaggedEvent { host: about, event }) = events_rx.recv().await {
            let about = about.unwrap_or_else(|| host.clone());
            if !report.event(index, about, event).await {
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
    let _ = report.done(start, result).await;
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

    /// Takes `port` × 100 ms to answer 200 (after a line), never answers on port 0,
    /// and panics on port 9.
    struct Paced;

    impl Transport for Paced {
        fn deliver<'a>(
            &'a self,
            target: &'a Target,
            _request: &'a Request,
            events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                match target.port {
                    0 => std::future::pending().await,
                    9 => panic!("boom"),
                    port => {
                        let line = Event::Line {
                            stream: Stream::Stdout,
                            line: target.host.clone(),
                            partial: false,
                        };
                        let _ = events.send(TaggedEvent::from(line)).await;
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(port))).await;
                        Outcome::Reply(Reply::empty(200))
                    }
                }
            })
        }
    }

    /// A limit ends a delivery still running then as a timeout of that limit, streamed
    /// like any result; deliveries within it are not touched.
    #[tokio::test(start_paused = true)]
    async fn a_limit_bounds_every_delivery() {
        let fanout = Fanout::new(Arc::new(Paced)).with_limit(Duration::from_millis(500));
        let targets = vec![Target::new("never", 0), Target::new("quick", 2)];
        let events = collect(fanout.run(targets, Request::default())).await;
        let results = done(&events);
        assert_eq!(results.len(), 2);
        let by_index = |i: usize| results.iter().find(|r| r.index == i).unwrap();
        assert_eq!(
            by_index(0).outcome,
            Outcome::Timeout(Duration::from_millis(500))
        );
        assert_eq!(by_index(0).elapsed, Duration::from_millis(500));
        assert_eq!(by_index(1).outcome, Outcome::Reply(Reply::empty(200)));
        assert_eq!(by_index(1).elapsed, Duration::from_millis(200));
    }

    /// `results` gives one result per target in input order, each with when its
    /// delivery started (after waiting for a permit), drops the events, and reports a
    /// panicked delivery as failed.
    #[tokio::test(start_paused = true)]
    async fn results_in_input_order_with_their_start() {
        let fanout = Fanout::new(Arc::new(Paced)).with_concurrency(1);
        let targets = vec![
            Target::new("a", 3),
            Target::new("b", 9),
            Target::new("c", 1),
        ];
        let begin = Instant::now();
        let timed = fanout.results(targets.clone(), Request::default()).await;
        let hosts: Vec<String> = timed.iter().map(|t| t.result.host.clone()).collect();
        let names: Vec<String> = targets.iter().map(Target::to_string).collect();
        assert_eq!(hosts, names);
        assert_eq!(
            timed.iter().map(|t| t.result.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(timed[0].result.outcome, Outcome::Reply(Reply::empty(200)));
        assert!(
            matches!(&timed[1].result.outcome, Outcome::Failed(m) if m.contains("internal error")),
            "{:?}",
            timed[1].result.outcome
        );
        assert_eq!(timed[2].result.outcome, Outcome::Reply(Reply::empty(200)));
        // One at a time: c waited for a (300 ms) and b (at once), and started then.
        assert_eq!(timed[0].started, begin);
        assert_eq!(timed[2].started, begin + Duration::from_millis(300));
        assert_eq!(timed[2].result.elapsed, Duration::from_millis(100));
        assert_eq!(begin.elapsed(), Duration::from_millis(400));
    }
}
