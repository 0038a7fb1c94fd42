//! [`ClusterLock`]: take a lock on every host or on none, keep it with heartbeats, and
//! release it.
//!
//! ```text
//! acquire(targets) ── lock ──► every host, each bounded by the lease
//!   all granted ─────────────► Held
//!   any refused/failed ── unlock ──► the granted and the unknown ──► NotAcquired
//!
//! Held::heartbeat(stop)   one task per host:
//!   every lease/3: lock again with the same token
//!     200 renewed ────────── the lease restarts from when the renewal was sent
//!     423 / 403 / other ──── Lost (someone else has it, or the agent refuses)
//!     200 not renewed ────── Lost (the lease had run out on the host: not held throughout)
//!     no answer ──────────── retry; Lost once a whole lease passed since the last renewal
//! Held::release()         unlock with the token on every host
//! ```
//!
//! # Design
//!
//! One token is drawn per locker and sent to every host, so one request serves the whole
//! cluster and a release needs no per-host state. Acquisitions and releases go out
//! through the fan-out engine ([`Fanout::results`]: at most `concurrency` hosts at a
//! time, each within the lease, every result with when its delivery started). Each
//! held host then has a heartbeat task of its own, so a slow host delays only its own
//! renewal. Times are taken from [`tokio::time::Instant`], so tests run on paused time.
//! Anything a host answers that is not a grant for our name and token — a proxy's
//! document included — counts as a refusal: through a proxy the all-or-nothing promise
//! could not be checked, so the client must talk to the agents directly.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::fanout::{Fanout, HostResult};
use crate::order::lock::{Grant, HeldBy, LockName, Token};
use crate::order::{Body, OrderName, Request};
use crate::target::Target;
use crate::transport::{Outcome, Transport};

/// Shortest pause before retrying a renewal that got no answer.
const MIN_RETRY: Duration = Duration::from_millis(100);

/// What to lock, for whom, and for how long.
#[derive(Debug, Clone)]
pub struct LockSpec {
    /// The lock's name.
    pub name: LockName,
    /// The label shown to others (`user@host:pid`).
    pub holder: String,
    /// The proof of ownership, the same on every host.
    pub token: Token,
    /// Lease in seconds (1 to [`crate::order::lock::MAX_LEASE`]).
    pub lease: u64,
}

impl LockSpec {
    /// The `lock` request (also the heartbeat).
    pub fn lock_request(&self) -> Request {
        Request {
            order: OrderName::Lock.as_str().to_owned(),
            options: self.name.as_str().to_owned(),
            lease: Some(self.lease),
            holder: self.holder.clone(),
            token: self.token.as_str().to_owned(),
            ..Request::default()
        }
    }

    /// The `unlock` request.
    pub fn unlock_request(&self) -> Request {
        Request {
            order: OrderName::Unlock.as_str().to_owned(),
            options: self.name.as_str().to_owned(),
            holder: self.holder.clone(),
            token: self.token.as_str().to_owned(),
            ..Request::default()
        }
    }

    /// The lease as a duration (at least a second).
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease.max(1))
    }
}

/// How one host answered `lock`.
#[derive(Debug, Clone, PartialEq)]
pub enum HostLock {
    /// The lock is ours there.
    Granted(Grant),
    /// Someone else holds it (423).
    Held(HeldBy),
    /// The host answered something else (an error code, or a body that is not a grant
    /// for our name and token). The text says what.
    Refused(String),
    /// No usable answer: unreachable, timed out, broken exchange. It may or may not hold
    /// the lock for us.
    Failed(String),
}

impl HostLock {
    /// Reads a host's outcome of a `lock` request made with `spec`.
    pub fn classify(spec: &LockSpec, outcome: &Outcome) -> HostLock {
        let reply = match outcome {
            Outcome::Reply(reply) => reply,
            Outcome::Relayed { via, .. } => {
                return HostLock::Refused(format!(
                    "answered through proxy {via}; lock the agents directly"
                ))
            }
            Outcome::Unreachable { .. } | Outcome::Timeout(_) | Outcome::Failed(_) => {
                return HostLock::Failed(outcome.to_string())
            }
        };
        match (reply.code, &reply.body) {
            (200, Body::Json(body)) => match Grant::from_body(body) {
                Some(grant)
                    if grant.lock == spec.name.as_str() && spec.token.matches(&grant.token) =>
                {
                    HostLock::Granted(grant)
                }
                _ => HostLock::Refused(
                    "200 OK without a grant of this lock and token (a proxy?)".to_owned(),
                ),
            },
            (423, Body::Json(body)) => match HeldBy::from_body(body) {
                Some(held) => HostLock::Held(held),
                None => HostLock::Refused("423 Locked by an unnamed holder".to_owned()),
            },
            (code, Body::Text(text)) => {
                HostLock::Refused(format!("{code} {}: {text}", reply.reason()))
            }
            (code, _) => HostLock::Refused(format!("{code} {}", reply.reason())),
        }
    }

    /// Whether the lock is ours there.
    pub fn granted(&self) -> bool {
        matches!(self, HostLock::Granted(_))
    }
}

impl fmt::Display for HostLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostLock::Granted(g) => {
                write!(f, "lock {} taken until {} (unix time)", g.lock, g.expires)
            }
            HostLock::Held(held) => held.fmt(f),
            HostLock::Refused(why) | HostLock::Failed(why) => f.write_str(why),
        }
    }
}

/// One host's part in an acquisition.
#[derive(Debug, Clone, PartialEq)]
pub struct HostAttempt {
    /// The delivery's result (for rendering).
    pub result: HostResult,
    /// What it means for the lock.
    pub state: HostLock,
}

/// The lock could not be taken everywhere; it was released where it had been taken.
#[derive(Debug, Clone, PartialEq)]
pub struct NotAcquired {
    /// Every host's answer, in input order.
    pub attempts: Vec<HostAttempt>,
    /// Hosts that granted the lock but could not be released again, and why. Their
    /// leases run out by themselves.
    pub unreleased: Vec<(String, String)>,
}

impl NotAcquired {
    /// The hosts that did not grant the lock.
    pub fn refusals(&self) -> impl Iterator<Item = &HostAttempt> {
        self.attempts.iter().filter(|a| !a.state.granted())
    }
}

/// The heartbeat of one host failed: the lock can no longer be guaranteed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lock {lock} lost on {host}: {why}")]
pub struct Lost {
    /// The lock.
    pub lock: String,
    /// The host.
    pub host: String,
    /// What happened.
    pub why: String,
}

/// Takes a lock on a set of hosts.
#[derive(Clone)]
pub struct ClusterLock {
    /// Every acquisition and release goes out through it (its transport also carries
    /// the heartbeats).
    fanout: Fanout,
    spec: Arc<LockSpec>,
}

impl fmt::Debug for ClusterLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterLock")
            .field("spec", &self.spec)
            .field("concurrency", &self.fanout.concurrency())
            .finish_non_exhaustive()
    }
}

impl ClusterLock {
    /// A locker for `spec` through `transport`, [`DEFAULT_CONCURRENCY`] hosts at a time
    /// (the fan-out's default).
    ///
    /// [`DEFAULT_CONCURRENCY`]: crate::fanout::DEFAULT_CONCURRENCY
    pub fn new(transport: Arc<dyn Transport>, spec: LockSpec) -> ClusterLock {
        ClusterLock {
            fanout: Fanout::new(transport),
            spec: Arc::new(spec),
        }
    }

    /// Sets how many hosts are contacted at once (at least 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> ClusterLock {
        self.fanout = self.fanout.with_concurrency(concurrency);
        self
    }

    /// What is locked.
    pub fn spec(&self) -> &LockSpec {
        &self.spec
    }

    /// Takes the lock on every target, or on none. Each host must answer within the
    /// lease, and every lease taken must still run when the last host has answered
    /// (otherwise the earliest could have expired meanwhile: use a longer lease).
    pub async fn acquire(&self, targets: Vec<Target>) -> Result<Held, NotAcquired> {
        let lease = self.spec.lease();
        let delivered = self.each(targets, self.spec.lock_request(), lease).await;
        let now = Instant::now();
        let mut attempts = Vec::with_capacity(delivered.len());
        let mut hosts = Vec::new();
        // Hosts that granted, including leases that ran out during the acquisition.
        let mut granted = Vec::new();
        for d in delivered {
            let mut state = HostLock::classify(&self.spec, &d.result.outcome);
            if let HostLock::Granted(grant) = &state {
                granted.push(d.result.host.clone());
                let lease = Duration::from_secs(grant.lease.max(1));
                let valid_until = d.started + lease;
                if valid_until <= now {
                    state = HostLock::Failed(format!(
                        "its lease of {} s ran out before every host had answered; use a longer lease",
                        grant.lease
                    ));
                } else {
                    hosts.push(HeldHost {
                        target: d.target.clone(),
                        host: d.result.host.clone(),
                        lease,
                        valid_until,
                    });
                }
            }
            attempts.push((
                d.target,
                HostAttempt {
                    result: d.result,
                    state,
                },
            ));
        }
        if attempts.iter().all(|(_, a)| a.state.granted()) {
            return Ok(Held {
                lock: self.clone(),
                hosts,
                attempts: attempts.into_iter().map(|(_, a)| a).collect(),
            });
        }
        // Release where it was taken, and where we cannot know (an answer may be lost);
        // only failures on hosts that had granted it matter.
        let release: Vec<Target> = attempts
            .iter()
            .filter(|(_, a)| matches!(a.state, HostLock::Granted(_) | HostLock::Failed(_)))
            .map(|(t, _)| t.clone())
            .collect();
        let mut unreleased = self.release(release).await;
        unreleased.retain(|(host, _)| granted.contains(host));
        Err(NotAcquired {
            attempts: attempts.into_iter().map(|(_, a)| a).collect(),
            unreleased,
        })
    }

    /// Sends `unlock` with this locker's token to `targets` (e.g. all of them, after an
    /// acquisition was interrupted); returns the hosts where that failed, and why.
    pub async fn release(&self, targets: Vec<Target>) -> Vec<(String, String)> {
        if targets.is_empty() {
            return Vec::new();
        }
        // After a lease the lock is gone anyway: no point in waiting longer.
        let limit = self.spec.lease();
        self.each(targets, self.spec.unlock_request(), limit)
            .await
            .into_iter()
            .filter_map(|d| {
                let ok = matches!(&d.result.outcome, Outcome::Reply(r) if r.code == 200);
                (!ok).then(|| (d.result.host, d.result.outcome.to_string()))
            })
            .collect()
    }

    /// Delivers `request` to every target through the fan-out, each within `limit`;
    /// results in input order.
    async fn each(
        &self,
        targets: Vec<Target>,
        request: Request,
        limit: Duration,
    ) -> Vec<Delivered> {
        self.fanout
            .clone()
            .with_limit(limit)
            .results(targets.clone(), request)
            .await
            .into_iter()
            .zip(targets)
            .map(|(timed, target)| Delivered {
                started: timed.started,
                target,
                result: timed.result,
            })
            .collect()
    }
}

/// One delivery's result and when it started.
struct Delivered {
    started: Instant,
    target: Target,
    result: HostResult,
}

/// A host where the lock is ours, and until when we may rely on it.
#[derive(Debug, Clone)]
struct HeldHost {
    target: Target,
    host: String,
    lease: Duration,
    /// When the last successful (re)grant was sent, plus its lease.
    valid_until: Instant,
}

/// The lock, taken on every host.
#[derive(Debug)]
pub struct Held {
    lock: ClusterLock,
    hosts: Vec<HeldHost>,
    /// Every host's answer to the acquisition, in input order.
    pub attempts: Vec<HostAttempt>,
}

impl Held {
    /// What is locked.
    pub fn spec(&self) -> &LockSpec {
        self.lock.spec()
    }

    /// On how many hosts.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Renews every host's lease every lease/3 until `stop` is cancelled (then `Ok`), or
    /// until a host is lost (then `Err`, and the other hosts' heartbeats stop). Lost
    /// means: the host refused a renewal, answered that the lease had run out, or could
    /// not be renewed for a whole lease since the last renewal was sent.
    pub async fn heartbeat(&self, stop: CancellationToken) -> Result<(), Lost> {
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        for host in &self.hosts {
            let handle = tasks.spawn(beat(
                Arc::clone(self.lock.fanout.transport()),
                Arc::clone(&self.lock.spec),
                host.clone(),
                stop.clone(),
            ));
            names.insert(handle.id(), host.host.clone());
        }
        while let Some(done) = tasks.join_next_with_id().await {
            let lost = match done {
                Ok((_, Ok(()))) => continue,
                Ok((_, Err(lost))) => lost,
                Err(e) => Lost {
                    lock: self.spec().name.to_string(),
                    host: names.get(&e.id()).cloned().unwrap_or_default(),
                    why: format!("internal error: {e}"),
                },
            };
            tasks.abort_all();
            return Err(lost);
        }
        Ok(())
    }

    /// Releases the lock on every host; returns those where that failed, and why (their
    /// leases run out by themselves).
    pub async fn release(&self) -> Vec<(String, String)> {
        let targets = self.hosts.iter().map(|h| h.target.clone()).collect();
        self.lock.release(targets).await
    }
}

/// One host's heartbeat (see [`Held::heartbeat`]).
async fn beat(
    transport: Arc<dyn Transport>,
    spec: Arc<LockSpec>,
    held: HeldHost,
    stop: CancellationToken,
) -> Result<(), Lost> {
    let request = spec.lock_request();
    let lost = |why: String| Lost {
        lock: spec.name.to_string(),
        host: held.host.clone(),
        why,
    };
    let mut lease = held.lease;
    let mut valid_until = held.valid_until;
    let mut next = valid_until
        .checked_sub(lease)
        .map_or(Instant::now(), |start| start + lease / 3);
    let mut last_failure: Option<String> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = sleep_until(next) => {}
        }
        let sent = Instant::now();
        if sent >= valid_until {
            let why = last_failure.unwrap_or_else(|| "no answer".to_owned());
            return Err(lost(format!(
                "not renewed for a whole lease ({} s): {why}",
                lease.as_secs()
            )));
        }
        // Its events (a lock streams none) are dropped unread.
        let (events, _) = mpsc::channel(1);
        let outcome = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            outcome = timeout_at(valid_until, transport.deliver(&held.target, &request, events)) => outcome,
        };
        let Ok(outcome) = outcome else {
            last_failure = Some("no answer before the lease ran out".to_owned());
            next = valid_until;
            continue;
        };
        match HostLock::classify(&spec, &outcome) {
            HostLock::Granted(grant) if grant.renewed => {
                lease = Duration::from_secs(grant.lease.max(1));
                valid_until = sent + lease;
                next = sent + lease / 3;
                last_failure = None;
                tracing::debug!(host = %held.host, lock = %spec.name, "lease renewed");
            }
            HostLock::Granted(_) => {
                return Err(lost(
                    "the lease had run out on the host before it was renewed".to_owned(),
                ))
            }
            HostLock::Held(by) => return Err(lost(format!("taken over: {by}"))),
            HostLock::Refused(why) => return Err(lost(format!("renewal refused: {why}"))),
            HostLock::Failed(why) => {
                tracing::warn!(host = %held.host, lock = %spec.name, cause = %why, "lease renewal failed; retrying");
                last_failure = Some(why);
                let retry = (lease / 10).max(MIN_RETRY);
                next = (Instant::now() + retry).min(valid_until);
            }
        }
    }
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
    use crate::order::lock::{released, MAX_LEASE};
    use crate::order::Reply;
    use crate::transport::BoxFuture;
    use crate::wire::message::TaggedEvent;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// In-memory agents with the store's rules, on tokio's (paused) clock.
    #[derive(Default)]
    struct Agents {
        locks: Mutex<HashMap<String, (String, String, Instant)>>,
        down: Mutex<HashSet<String>>,
        renewals: Mutex<usize>,
    }

    impl Agents {
        fn holder(&self, host: &str) -> Option<String> {
            let locks = self.locks.lock().unwrap();
            locks
                .get(host)
                .filter(|(_, _, until)| *until > Instant::now())
                .map(|(_, holder, _)| holder.clone())
        }

        fn answer(&self, host: &str, request: &Request) -> Reply {
            let mut locks = self.locks.lock().unwrap();
            let now = Instant::now();
            let live = locks
                .get(host)
                .filter(|(_, _, until)| *until > now)
                .cloned();
            let expires = |until: Instant| (until - now).as_secs();
            match request.order.as_str() {
                "lock" => {
                    let lease = request.lease.unwrap_or(30).min(MAX_LEASE);
                    match live {
                        Some((token, holder, until)) if token != request.token => Reply {
                            code: 423,
                            body: Body::Json(
                                HeldBy {
                                    lock: request.options.clone(),
                                    holder,
                                    expires: expires(until),
                                }
                                .to_body(),
                            ),
                        },
                        live => {
                            let renewed = live.is_some();
                            if renewed {
                                *self.renewals.lock().unwrap() += 1;
                            }
                            let until = now + Duration::from_secs(lease);
                            locks.insert(
                                host.to_owned(),
                                (request.token.clone(), request.holder.clone(), until),
                            );
                            Reply::ok(
                                Grant {
                                    lock: request.options.clone(),
                                    holder: request.holder.clone(),
                                    token: request.token.clone(),
                                    lease,
                                    expires: expires(until),
                                    renewed,
                                }
                                .to_body(),
                            )
                        }
                    }
                }
                _ => match live {
                    Some((token, _, _)) if token != request.token => Reply::error(403, "not yours"),
                    live => {
                        locks.remove(host);
                        Reply::ok(released(&request.options, live.is_some()))
                    }
                },
            }
        }
    }

    impl Transport for Agents {
        fn deliver<'a>(
            &'a self,
            target: &'a Target,
            request: &'a Request,
            _events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let host = target.to_string();
                if self.down.lock().unwrap().contains(&host) {
                    return Outcome::Unreachable {
                        address: target.address(),
                        cause: "connection refused".into(),
                    };
                }
                Outcome::Reply(self.answer(&host, request))
            })
        }
    }

    fn spec(holder: &str, lease: u64) -> LockSpec {
        LockSpec {
            name: LockName::parse("web").unwrap(),
            holder: holder.into(),
            token: Token::generate().unwrap(),
            lease,
        }
    }

    fn targets(n: usize) -> Vec<Target> {
        (0..n).map(|i| Target::new(format!("h{i}"), 1)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn all_or_nothing() {
        let agents = Arc::new(Agents::default());
        let bob = ClusterLock::new(agents.clone(), spec("bob", 30));
        let held = bob.acquire(vec![Target::new("h1", 1)]).await.unwrap();
        assert_eq!(held.hosts(), 1);

        let alice = ClusterLock::new(agents.clone(), spec("alice", 30)).with_concurrency(2);
        let refused = alice.acquire(targets(3)).await.unwrap_err();
        let problems: Vec<_> = refused.refusals().collect();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].result.host, "h1");
        assert!(
            matches!(&problems[0].state, HostLock::Held(h) if h.holder == "bob"),
            "{problems:?}"
        );
        assert!(refused.unreleased.is_empty());
        // h0 and h2 were released again; h1 is still bob's.
        assert_eq!(agents.holder("h0"), None);
        assert_eq!(agents.holder("h2"), None);
        assert_eq!(agents.holder("h1").as_deref(), Some("bob"));

        // An unreachable host also aborts, and the others are released.
        agents.down.lock().unwrap().insert("h5".into());
        let carol = ClusterLock::new(agents.clone(), spec("carol", 30));
        let mut t = targets(3);
        t[1] = Target::new("h5", 1);
        let refused = carol.acquire(t).await.unwrap_err();
        assert!(matches!(
            refused.refusals().next().map(|a| &a.state),
            Some(HostLock::Failed(_))
        ));
        assert_eq!(agents.holder("h0"), None);

        held.release().await;
        assert_eq!(agents.holder("h1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_it_and_release_frees_it() {
        let agents = Arc::new(Agents::default());
        let lock = ClusterLock::new(agents.clone(), spec("alice", 3));
        let held = Arc::new(lock.acquire(targets(3)).await.unwrap());
        let stop = CancellationToken::new();
        let beating = tokio::spawn({
            let (held, stop) = (Arc::clone(&held), stop.clone());
            async move { held.heartbeat(stop).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        for h in ["h0", "h1", "h2"] {
            assert_eq!(agents.holder(h).as_deref(), Some("alice"), "{h}");
        }
        // 10 s at one renewal per second, per host.
        assert!(*agents.renewals.lock().unwrap() >= 27);
        stop.cancel();
        assert_eq!(beating.await.unwrap(), Ok(()));
        assert!(held.release().await.is_empty());
        assert_eq!(agents.holder("h0"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_for_a_lease_is_lost() {
        let agents = Arc::new(Agents::default());
        let lock = ClusterLock::new(agents.clone(), spec("alice", 3));
        let held = lock.acquire(targets(2)).await.unwrap();
        let start = Instant::now();
        let stop = CancellationToken::new();
        let down = {
            let agents = agents.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                agents.down.lock().unwrap().insert("h1".into());
                std::future::pending::<()>().await
            }
        };
        let lost = tokio::select! {
            lost = held.heartbeat(stop) => lost.unwrap_err(),
            () = down => unreachable!(),
        };
        assert_eq!(lost.host, "h1");
        assert!(lost.why.contains("not renewed for a whole lease"), "{lost}");
        assert!(lost.why.contains("connection refused"), "{lost}");
        // Down at 5 s; last renewal sent at 4 s: lost at 7 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(6) && took <= Duration::from_secs(8),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn taken_over_is_lost() {
        let agents = Arc::new(Agents::default());
        let held = ClusterLock::new(agents.clone(), spec("alice", 3))
            .acquire(targets(1))
            .await
            .unwrap();
        // The host forgets the lease and someone else takes it.
        agents.locks.lock().unwrap().clear();
        ClusterLock::new(agents.clone(), spec("mallory", 3))
            .acquire(targets(1))
            .await
            .unwrap();
        let lost = held.heartbeat(CancellationToken::new()).await.unwrap_err();
        assert!(lost.why.contains("taken over"), "{lost}");
        assert!(lost.why.contains("mallory"), "{lost}");
    }

    /// [`Agents`] behind a delay of `delay` per delivery; the `silent` host never
    /// answers.
    struct Slow {
        agents: Arc<Agents>,
        delay: Duration,
        silent: &'static str,
    }

    impl Slow {
        fn new(agents: Arc<Agents>, delay: Duration, silent: &'static str) -> Arc<Slow> {
            Arc::new(Slow {
                agents,
                delay,
                silent,
            })
        }
    }

    impl Transport for Slow {
        fn deliver<'a>(
            &'a self,
            target: &'a Target,
            request: &'a Request,
            events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                if target.host == self.silent {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(self.delay).await;
                self.agents.deliver(target, request, events).await
            })
        }
    }

    /// A host that never answers fails the acquisition once the lease has passed (the
    /// bound of every delivery), and the others are released; so is it (it may hold the
    /// lock), bounded by the lease again.
    #[tokio::test(start_paused = true)]
    async fn a_silent_host_fails_the_acquisition_at_the_lease() {
        let agents = Arc::new(Agents::default());
        let slow = Slow::new(agents.clone(), Duration::ZERO, "h1");
        let begin = Instant::now();
        let lock = ClusterLock::new(slow, spec("alice", 3));
        let refused = tokio::time::timeout(Duration::from_secs(60), lock.acquire(targets(3)))
            .await
            .expect("the acquisition ended")
            .unwrap_err();
        assert_eq!(begin.elapsed(), Duration::from_secs(3 + 3));
        assert!(refused.unreleased.is_empty(), "{:?}", refused.unreleased);
        let silent = &refused.attempts[1];
        assert_eq!(silent.result.host, "h1");
        assert_eq!(
            silent.result.outcome,
            Outcome::Timeout(Duration::from_secs(3))
        );
        assert!(matches!(silent.state, HostLock::Failed(_)));
        // The others' leases ran out meanwhile: none of them counts as held.
        assert!(refused.attempts.iter().all(|a| !a.state.granted()));
        assert_eq!(agents.holder("h0"), None);
        assert_eq!(agents.holder("h2"), None);
    }

    /// At most `concurrency` hosts are asked at once (two, then two more a turn later),
    /// and each lease counts from when its own request went out (after its wait for a
    /// turn), not from the start of the acquisition.
    #[tokio::test(start_paused = true)]
    async fn leases_count_from_each_delivery() {
        let agents = Arc::new(Agents::default());
        let slow = Slow::new(agents.clone(), Duration::from_secs(1), "");
        let begin = Instant::now();
        let held = ClusterLock::new(slow, spec("alice", 5))
            .with_concurrency(2)
            .acquire(targets(4))
            .await
            .unwrap();
        let turn = Duration::from_millis(1005);
        let until: Vec<Duration> = held.hosts.iter().map(|h| h.valid_until - begin).collect();
        let lease = Duration::from_secs(5);
        assert_eq!(until, [lease, lease, turn + lease, turn + lease]);
        assert!(held.release().await.is_empty());
    }
}
