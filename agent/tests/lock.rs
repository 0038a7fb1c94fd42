//! The cluster lock against real agents: the `lock`/`unlock` orders over v2 (taken,
//! refused naming the holder, renewed, expired and taken over, released only with the
//! token, one winner among racing workers), and [`ClusterLock`] across several agents
//! (all or nothing, heartbeats beyond the lease, loss when an agent is SIGKILLed).
//!
//! Leases are 1–3 s so that expiry and loss are seen within seconds.

use crate::util::*;
use deploy_common::lock::cluster::{ClusterLock, Held, HostLock, LockSpec, Lost};
use deploy_common::order::lock::{LockName, Token};
use deploy_common::order::Request;
use deploy_common::target::Target;
use deploy_common::transport::{AgentTransport, Protocol};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A `lock` request.
fn lock(name: &str, holder: &str, token: &str, lease: Option<u64>) -> Request {
    Request {
        order: "lock".into(),
        options: name.into(),
        holder: holder.into(),
        token: token.into(),
        lease,
        ..Request::default()
    }
}

/// An `unlock` request.
fn unlock(name: &str, token: &str) -> Request {
    Request {
        order: "unlock".into(),
        options: name.into(),
        token: token.into(),
        ..Request::default()
    }
}

/// One v2 order to `agent`.
async fn send(agent: &Agent, request: Request) -> Reply {
    v2(agent.addr(), KEY, Some(&agent_public_key()), request)
        .await
        .expect("v2 exchange")
}

fn token() -> String {
    Token::generate().expect("random").as_str().to_owned()
}

/// A locker for `holder` over v2 to the test agents.
fn locker(holder: &str, lease: u64) -> ClusterLock {
    let transport = AgentTransport {
        protocol: Protocol::V2,
        key_cipher: KEY.into(),
        public_key: Some(Arc::new(agent_public_key())),
        connect_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(5),
        pool: None,
    };
    let spec = LockSpec {
        name: LockName::parse("web").expect("name"),
        holder: holder.into(),
        token: Token::generate().expect("random"),
        lease,
    };
    ClusterLock::new(Arc::new(transport), spec)
}

fn targets(agents: &[&Agent]) -> Vec<Target> {
    agents
        .iter()
        .map(|a| Target::new(a.addr().ip().to_string(), a.addr().port()))
        .collect()
}

fn start_agents(n: usize) -> Vec<(Sandbox, Agent)> {
    (0..n)
        .map(|_| {
            let sb = Sandbox::new();
            let agent = Config::new(&sb).start(&sb);
            (sb, agent)
        })
        .collect()
}

#[tokio::test]
async fn taken_refused_renewed_released() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let (alice, bob) = (token(), token());

    let r = send(&agent, lock("web", "alice@a:1", &alice, Some(30))).await;
    r.expect_code(200);
    assert_eq!(r.s("return"), "true");
    assert_eq!(r.s("lock"), "web");
    assert_eq!(r.s("holder"), "alice@a:1");
    assert_eq!(r.s("token"), alice);
    assert_eq!(r.s("lease"), "30");
    assert_eq!(r.s("renewed"), "false");
    let expires: u64 = r.s("expires").parse().expect("unix time");
    let now = unix_now();
    assert!(
        (now + 29..=now + 31).contains(&expires),
        "{expires} vs {now}"
    );

    // A second locker is refused with 423, told who holds it and until when.
    let r = send(&agent, lock("web", "bob@b:2", &bob, Some(30))).await;
    r.expect_code(423);
    assert_eq!(r.s("return"), "false");
    assert_eq!(r.s("holder"), "alice@a:1");
    assert_eq!(r.s("expires"), expires.to_string());

    // Another name is another lock.
    send(&agent, lock("db", "bob@b:2", &bob, Some(30)))
        .await
        .expect_code(200);

    // The same token renews (the heartbeat).
    let r = send(&agent, lock("web", "alice@a:1", &alice, Some(30))).await;
    r.expect_code(200);
    assert_eq!(r.s("renewed"), "true");

    // unlock needs the token: a wrong one or none is refused, naming the holder.
    for wrong in [bob.as_str(), ""] {
        let r = send(&agent, unlock("web", wrong)).await;
        r.expect_code(403);
        assert!(r.text.contains("held by alice@a:1"), "{r:?}");
        assert!(!r.text.contains(&alice), "the token leaked: {r:?}");
    }
    let r = send(&agent, unlock("web", &alice)).await;
    r.expect_code(200);
    assert_eq!(r.s("released"), "true");
    let r = send(&agent, unlock("web", &alice)).await;
    r.expect_code(200);
    assert_eq!(r.s("released"), "false");

    // Free again: bob takes it. Without a token, the agent draws one.
    send(&agent, lock("web", "bob@b:2", &bob, None))
        .await
        .expect_code(200);
    let r = send(&agent, lock("other", "", "", None)).await;
    r.expect_code(200);
    assert_eq!(r.s("token").len(), 32);
    assert_eq!(r.s("lease"), "30");
    assert_eq!(
        r.s("holder"),
        "127.0.0.1",
        "the peer labels an anonymous holder"
    );

    // The lease file is private to the agent.
    let meta = std::fs::metadata(sb.join("state/locks/web.json")).expect("lock file");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
}

#[tokio::test]
async fn malformed_requests_are_400_and_v1_cannot_lock() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let t = token();
    for (request, needle) in [
        (lock("../etc", "a", &t, None), "bad lock name"),
        (lock(".hidden", "a", &t, None), "bad lock name"),
        (lock(&"x".repeat(65), "a", &t, None), "bad lock name"),
        (lock("web", "a", "short", None), "bad lock token"),
        (lock("web", "a", &t, Some(0)), "lease must be 1 to 3600"),
        (lock("web", "a", &t, Some(3601)), "lease must be 1 to 3600"),
        (lock("web", "a\nb", &t, None), "bad holder"),
        (unlock("a/b", &t), "bad lock name"),
    ] {
        let r = send(&agent, request).await;
        r.expect_code(400);
        assert!(r.text.contains(needle), "{needle}: {r:?}");
    }
    // The v1 wire carries the original's five orders only.
    call(Proto::V1Plain, agent.addr(), "lock", "web")
        .await
        .expect_code(404);
}

#[tokio::test]
async fn expired_lease_is_taken_over() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let (alice, bob) = (token(), token());
    send(&agent, lock("web", "alice", &alice, Some(1)))
        .await
        .expect_code(200);
    send(&agent, lock("web", "bob", &bob, Some(1)))
        .await
        .expect_code(423);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(&agent, lock("web", "bob", &bob, Some(2))).await;
    r.expect_code(200);
    assert_eq!(r.s("renewed"), "false");
    // Alice's late heartbeat now finds bob.
    let r = send(&agent, lock("web", "alice", &alice, Some(1))).await;
    r.expect_code(423);
    assert_eq!(r.s("holder"), "bob");
    assert!(
        agent
            .log()
            .contains("lock taken over from an expired lease"),
        "{}",
        agent.log()
    );
}

/// Three worker processes, twenty lockers at once: exactly one wins.
#[tokio::test]
async fn one_winner_across_workers() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("max_prefork", 3).start(&sb);
    agent.wait_workers(3).await;
    let addr = agent.addr();
    let racers: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                let request = lock("web", &format!("racer{i}"), &token(), Some(30));
                v2(addr, KEY, Some(&agent_public_key()), request)
                    .await
                    .expect("v2")
                    .code
            })
        })
        .collect();
    let mut codes = Vec::new();
    for racer in racers {
        codes.push(racer.await.expect("join"));
    }
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 423).count(), 19, "{codes:?}");
}

/// One agent is locked by bob: alice gets none of the three, bob is named, and the two
/// alice had taken are free again for carol.
#[tokio::test]
async fn all_or_nothing_across_agents() {
    let agents = start_agents(3);
    let all: Vec<&Agent> = agents.iter().map(|(_, a)| a).collect();
    let bob = locker("bob@b:2", 30)
        .acquire(targets(&all[1..2]))
        .await
        .expect("bob locks the middle agent");

    let refused = locker("alice@a:1", 30)
        .acquire(targets(&all))
        .await
        .expect_err("alice must not get the lock");
    let problems: Vec<_> = refused.refusals().collect();
    assert_eq!(problems.len(), 1, "{refused:?}");
    assert_eq!(problems[0].result.host, targets(&all[1..2])[0].to_string());
    assert!(
        matches!(&problems[0].state, HostLock::Held(h) if h.holder == "bob@b:2"),
        "{refused:?}"
    );
    assert!(refused.unreleased.is_empty(), "{refused:?}");
    assert_eq!(refused.attempts.len(), 3);

    let carol = locker("carol@c:3", 30)
        .acquire(vec![targets(&all)[0].clone(), targets(&all)[2].clone()])
        .await
        .expect("the agents alice had taken were released");
    assert_eq!(carol.hosts(), 2);
    assert!(carol.release().await.is_empty());
    assert!(bob.release().await.is_empty());
}

/// Runs `held`'s heartbeat in the background; returns its stop token and handle.
fn beat(held: &Arc<Held>) -> (CancellationToken, tokio::task::JoinHandle<Result<(), Lost>>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let (held, stop) = (Arc::clone(held), stop.clone());
        async move { held.heartbeat(stop).await }
    });
    (stop, handle)
}

#[tokio::test]
async fn heartbeats_hold_the_lock_beyond_its_lease() {
    let agents = start_agents(2);
    let all: Vec<&Agent> = agents.iter().map(|(_, a)| a).collect();
    let held = Arc::new(
        locker("alice@a:1", 2)
            .acquire(targets(&all))
            .await
            .expect("alice locks"),
    );
    let (stop, handle) = beat(&held);
    // Over two leases later, still hers everywhere.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for agent in &all {
            let r = send(agent, lock("web", "bob", &token(), Some(1))).await;
            r.expect_code(423);
            assert_eq!(r.s("holder"), "alice@a:1");
        }
    }
    stop.cancel();
    assert_eq!(handle.await.expect("join"), Ok(()));
    assert!(held.release().await.is_empty());
    locker("bob", 1)
        .acquire(targets(&all))
        .await
        .expect("free after the release");
}

/// An agent that dies (master and workers SIGKILLed) is reported lost within about a
/// lease of the last renewal.
#[tokio::test]
async fn killed_agent_loses_the_lock_within_a_lease() {
    let mut agents = start_agents(2);
    let lease = 2;
    let (held, victim) = {
        let all: Vec<&Agent> = agents.iter().map(|(_, a)| a).collect();
        let held = locker("alice@a:1", lease)
            .acquire(targets(&all))
            .await
            .expect("alice locks");
        (Arc::new(held), targets(&all[1..2])[0].to_string())
    };
    let (_stop, handle) = beat(&held);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let (_, agent) = agents.get_mut(1).expect("second agent");
    let workers = agent.workers();
    agent.signal(Signal::SIGKILL);
    for w in workers {
        signal(w, Signal::SIGKILL);
    }
    let killed = Instant::now();
    agent.wait_exit(Duration::from_secs(5)).await;

    let lost = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the heartbeat did not notice the dead agent")
        .expect("join")
        .expect_err("the lock must be lost");
    let took = killed.elapsed();
    assert_eq!(lost.host, victim, "{lost}");
    assert!(lost.why.contains("not renewed for a whole lease"), "{lost}");
    assert!(
        took <= Duration::from_secs(lease) + Duration::from_millis(500),
        "lost only after {took:?}"
    );
    // The survivor can still be released.
    let unreleased = held.release().await;
    assert_eq!(unreleased.len(), 1, "{unreleased:?}");
    assert_eq!(unreleased[0].0, victim);
}
