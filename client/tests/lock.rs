//! The cluster lock from the command line: the real `deploy-client` against in-process v2
//! agents that keep their leases in a real [`LockStore`] (the agent's own store and
//! replies), so the rules are the agent's; killing one closes its port.
//!
//! Covers `--order=lock` (held until SIGINT while heartbeats renew a 1 s lease, refused
//! with exit 4 naming the holder and leaving nothing locked, lost with exit 5 when an
//! agent dies), `--lock` around `exec` (held during the order, released after, aborted
//! with exit 5 when lost), `--order=unlock` with and without the token, and usage errors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploy_common::lock::store::{LockOutcome, LockStore, Now};
use deploy_common::order::lock::{LockName, Token};
use deploy_common::order::{Reply, Request};
use serde_json::json;

use crate::util::{client, obj, v2_agent_killable, Handler, Running};

/// A fake agent serving `lock`, `unlock` and a slow `exec` from a real lock store.
struct LockAgent {
    addr: std::net::SocketAddr,
    store: LockStore,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
    /// For every `exec`: whether lock `web` was held when it started.
    exec_saw_lock: Arc<Mutex<Vec<bool>>>,
    /// How many `lock` requests renewed a live lease.
    renewals: Arc<Mutex<usize>>,
}

impl LockAgent {
    async fn start(exec_takes: Duration) -> LockAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LockStore::open(dir.path()).expect("lock store");
        let exec_saw_lock = Arc::new(Mutex::new(Vec::new()));
        let renewals = Arc::new(Mutex::new(0));
        let handler: Handler = {
            let (store, seen, renewals) = (store.clone(), exec_saw_lock.clone(), renewals.clone());
            Arc::new(move |request: &Request| {
                let reply = answer(&store, request, &seen, &renewals);
                let delay = if request.order == "exec" {
                    exec_takes
                } else {
                    Duration::ZERO
                };
                (Vec::new(), delay, reply)
            })
        };
        let (addr, task) = v2_agent_killable("127.0.0.1:0", "k", handler).await;
        LockAgent {
            addr,
            store,
            _dir: dir,
            task,
            exec_saw_lock,
            renewals,
        }
    }

    /// The holder of lock `web`, if it is held.
    fn holder(&self) -> Option<String> {
        self.store
            .get(&web(), &Now::system())
            .expect("store")
            .map(|r| r.holder)
    }

    /// Closes the agent's port.
    fn kill(&self) {
        self.task.abort();
    }
}

fn web() -> LockName {
    LockName::parse("web").expect("name")
}

/// The agent's rules, through the same store and reply helpers it uses.
fn answer(
    store: &LockStore,
    request: &Request,
    exec_saw_lock: &Mutex<Vec<bool>>,
    renewals: &Mutex<usize>,
) -> Reply {
    let now = Now::system();
    if request.order == "exec" {
        let held = store.get(&web(), &now).expect("store").is_some();
        exec_saw_lock.lock().expect("mutex").push(held);
        return Reply::ok(obj(json!({"return": "true", "command": "", "content": ""})));
    }
    let Ok(name) = LockName::parse(&request.options) else {
        return Reply::error(400, "bad lock name");
    };
    match request.order.as_str() {
        "lock" => {
            let Ok(token) = Token::parse(&request.token) else {
                return Reply::error(400, "bad lock token");
            };
            let lease = request.lease.unwrap_or(30);
            let outcome = store
                .lock(&name, &token, &request.holder, lease, &now)
                .expect("store");
            if matches!(outcome, LockOutcome::Renewed(_)) {
                *renewals.lock().expect("mutex") += 1;
            }
            outcome.into_reply(&now)
        }
        "unlock" => store
            .unlock(&name, &request.token, &now)
            .expect("store")
            .into_reply(&name, &now),
        _ => Reply::empty(404),
    }
}

/// Takes lock `web` on `agent` for `holder` directly in its store.
fn pre_lock(agent: &LockAgent, holder: &str, lease: u64) {
    let token = Token::generate().expect("random");
    agent
        .store
        .lock(&web(), &token, holder, lease, &Now::system())
        .expect("store");
}

fn hosts(agents: &[&LockAgent]) -> String {
    agents
        .iter()
        .map(|a| a.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn lock_only_holds_beyond_the_lease_until_interrupted() {
    let a = LockAgent::start(Duration::ZERO).await;
    let b = LockAgent::start(Duration::ZERO).await;
    let list = hosts(&[&a, &b]);
    let mut running = Running::spawn(&[
        "--hosts",
        &list,
        "--order=lock",
        "--options=web",
        "--lease=2",
        "--key-cipher=k",
        "--format=jsonl",
    ]);
    running
        .wait_for("locked on 2 hosts; waiting for interrupt")
        .await;
    // Over two leases later it is still held, renewed by heartbeats.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for agent in [&a, &b] {
        let holder = agent.holder().expect("still locked");
        assert!(holder.contains('@'), "holder label user@host:pid: {holder}");
        assert!(*agent.renewals.lock().expect("mutex") >= 5);
    }
    running.signal(nix::sys::signal::Signal::SIGINT);
    let out = running.finish(Duration::from_secs(5)).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(a.holder(), None, "released on interrupt");
    assert_eq!(b.holder(), None, "released on interrupt");
    // One result line per host, with the grant (and its token, for a later unlock).
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    for line in &lines {
        assert_eq!(line["order"], "lock");
        assert_eq!(line["result"]["returnCode"], "200");
        assert_eq!(line["result"]["content"]["lock"], "web");
        assert_eq!(
            line["result"]["content"]["token"].as_str().map(str::len),
            Some(32)
        );
    }
}

#[tokio::test]
async fn refused_on_one_host_releases_the_others_and_exits_4() {
    let a = LockAgent::start(Duration::ZERO).await;
    let b = LockAgent::start(Duration::ZERO).await;
    let c = LockAgent::start(Duration::ZERO).await;
    pre_lock(&b, "bob@elsewhere:7", 30);
    let list = hosts(&[&a, &b, &c]);
    let out = client(
        &[
            "--hosts",
            &list,
            "--order=lock",
            "--options=web",
            "--key-cipher=k",
            "--format=text",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 4, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "deploy-client: error: {}: lock web is held by bob@elsewhere:7 until",
            b.addr
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("lock web not acquired on 1 of 3 hosts (held by bob@elsewhere:7)"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("423 Locked"), "{}", out.stdout);
    assert_eq!(a.holder(), None, "released again");
    assert_eq!(c.holder(), None, "released again");
    assert_eq!(b.holder().as_deref(), Some("bob@elsewhere:7"));

    // `--lock` around an order: refused the same way, the order never runs.
    let out = client(
        &[
            "--hosts",
            &list,
            "--order=exec",
            "--options=service:echo",
            "--lock=web",
            "--key-cipher=k",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 4, "{out:?}");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(a.exec_saw_lock.lock().expect("mutex").is_empty());
    assert_eq!(a.holder(), None);
}

#[tokio::test]
async fn dead_agent_loses_the_lock_with_exit_5() {
    let a = LockAgent::start(Duration::ZERO).await;
    let b = LockAgent::start(Duration::ZERO).await;
    let list = hosts(&[&a, &b]);
    let mut running = Running::spawn(&[
        "--hosts",
        &list,
        "--order=lock",
        "--options=web",
        "--lease=2",
        "--key-cipher=k",
    ]);
    running.wait_for("waiting for interrupt").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.kill();
    let killed = Instant::now();
    let out = running.finish(Duration::from_secs(5)).await;
    let took = killed.elapsed();
    assert_eq!(out.status, 5, "{out:?}");
    assert!(
        took < Duration::from_millis(2500),
        "lost only after {took:?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "deploy-client: error: lock web lost on {}:",
            b.addr
        )),
        "{}",
        out.stderr
    );
    assert_eq!(a.holder(), None, "the surviving host was released");
}

#[tokio::test]
async fn lock_around_exec_holds_during_the_order_and_releases_after() {
    let agents = [
        LockAgent::start(Duration::from_millis(2500)).await,
        LockAgent::start(Duration::from_millis(2500)).await,
        LockAgent::start(Duration::from_millis(2500)).await,
    ];
    let list = hosts(&agents.iter().collect::<Vec<_>>());
    let out = client(
        &[
            "--hosts",
            &list,
            "--order=exec",
            "--options=service:echo",
            "--lock=web",
            "--lease=2",
            "--key-cipher=k",
            "--format=text",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.contains("200 OK"), "{}", out.stdout);
    for agent in &agents {
        assert_eq!(*agent.exec_saw_lock.lock().expect("mutex"), [true]);
        // The order outlived the lease: heartbeats renewed it.
        assert!(*agent.renewals.lock().expect("mutex") >= 2);
        assert_eq!(agent.holder(), None, "released after the order");
    }
}

#[tokio::test]
async fn lock_lost_mid_order_aborts_it_with_exit_5() {
    let a = LockAgent::start(Duration::from_secs(20)).await;
    let b = LockAgent::start(Duration::from_secs(20)).await;
    let list = hosts(&[&a, &b]);
    let started = Instant::now();
    let running = Running::spawn(&[
        "--hosts",
        &list,
        "--order=exec",
        "--options=service:sleep",
        "--lock",
        "--lease=2",
        "--key-cipher=k",
    ]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    b.kill();
    let out = running.finish(Duration::from_secs(6)).await;
    assert_eq!(out.status, 5, "{out:?}");
    // Long before the order's 20 s.
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(
        out.stderr.contains("lock deploy lost on") && out.stderr.contains("aborted"),
        "{}",
        out.stderr
    );
    // The default lock name is `deploy`; the survivor was released.
    let deploy = LockName::parse("deploy").expect("name");
    assert_eq!(a.store.get(&deploy, &Now::system()).expect("store"), None);
}

#[tokio::test]
async fn unlock_needs_the_token() {
    let a = LockAgent::start(Duration::ZERO).await;
    let token = Token::generate().expect("random");
    a.store
        .lock(&web(), &token, "alice@a:1", 30, &Now::system())
        .expect("store");
    let host = a.addr.to_string();
    let out = client(
        &[
            "--hosts",
            &host,
            "--order=unlock",
            "--options=web",
            "--key-cipher=k",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stdout.contains("held by alice@a:1"), "{}", out.stdout);
    assert_eq!(a.holder().as_deref(), Some("alice@a:1"));

    let out = client(
        &[
            "--hosts",
            &host,
            "--order=unlock",
            "--options=web",
            "--key-cipher=k",
            "--token",
            token.as_str(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        out.stdout.contains("\"released\" : \"true\""),
        "{}",
        out.stdout
    );
    assert_eq!(a.holder(), None);
}

#[tokio::test]
async fn lock_usage_errors() {
    for (args, needle) in [
        (
            &["--hosts=h", "--order=status", "--options=g", "--lock"][..],
            "--lock is for --order=run, exec, rsync, upload or sync",
        ),
        (
            &["--hosts=h", "--order=lock", "--lock=x"][..],
            "--lock is for --order=run, exec, rsync, upload or sync",
        ),
        (
            &["--hosts=h", "--order=lock", "--protocol=v1"][..],
            "needs --protocol=v2",
        ),
        (
            &["--hosts=h", "--order=lock", "--options=a/b"][..],
            "bad lock name",
        ),
        (
            &["--hosts=h", "--order=lock", "--token=short"][..],
            "--token",
        ),
        (&["--hosts=h", "--order=lock", "--lease=0"][..], "--lease"),
        (
            &["--hosts=h", "--order=lock", "--lease=3601"][..],
            "--lease",
        ),
    ] {
        let out = client(args, None).await;
        assert_eq!(out.status, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}
