//! Several proxies, one fleet: two real proxies share their state through a real 3-server
//! NATS JetStream cluster on loopback (`[store] backend = nats`, an R3 bucket).
//!
//! * scenario history appended through proxy A is listed through proxy B; appends sent
//!   to both at once are all kept, each once; with one NATS server killed the store
//!   still answers;
//! * the `nodes` heartbeat has one leader across both proxies (a lease in the bucket,
//!   not a flock in each state dir), the other proxy answers from the shared inventory,
//!   and when the leader's proxy is killed the other takes over;
//! * `deploy-client --proxy A,B`: a read order whose stream A cuts before the final
//!   reply is sent again to B; with A killed (connection refused) even `exec` goes to B.

use crate::util::*;
use deploy_common::order::scenario_versions::{Action, VersionsSpec, ORDER};
use deploy_common::order::Request;
use deploy_testkit::KEY;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

pub(crate) const API_KEY: &str = "store-key";
const LIMIT: Duration = Duration::from_secs(60);
const LEAD: &str = "this worker leads the fleet's heartbeat";

/// A proxy on the shared store, `[client] heartbeat` = `heartbeat` seconds.
fn proxy(
    dir: &std::path::Path,
    id: &str,
    cluster: &NatsCluster,
    heartbeat: u64,
    agents: &[String],
) -> Proxy {
    ProxyConfig::new(id)
        .client("heartbeat", heartbeat)
        .client("heartbeat_timeout", 3)
        .key(API_KEY, "web")
        .servers("web", agents)
        .raw(&deploy_testkit::nats::store_section(cluster, "t-", None))
        .start(dir)
}

fn versions(addr: SocketAddr, spec: VersionsSpec) -> Reply {
    let request = Request {
        order: ORDER.into(),
        api_key: API_KEY.into(),
        scenario_versions: Some(Box::new(spec)),
        ..Request::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(deploy_testkit::v2(addr, PROXY_KEY, None, request))
        .unwrap()
}

pub(crate) fn append(addr: SocketAddr, n: u32, message: &str) -> Reply {
    let version = json!({
        "id": format!("{n:08x}{}", "ab".repeat(28)),
        "scenario": "shared",
        "time": 1_700_000_000_000u64 + u64::from(n),
        "message": message,
        "map": {"node": {"app": format!("{n:x}")}},
    });
    versions(
        addr,
        VersionsSpec {
            action: Action::Append,
            scenario: String::new(),
            prefix: String::new(),
            offset: 0,
            limit: 0,
            version: Some(version),
        },
    )
}

/// The messages of scenario "shared" through `addr`, newest first.
pub(crate) fn list(addr: SocketAddr) -> Vec<String> {
    let reply = versions(
        addr,
        VersionsSpec {
            action: Action::List,
            scenario: "shared".into(),
            prefix: String::new(),
            offset: 0,
            limit: 1000,
            version: None,
        },
    );
    assert_eq!(reply.code, 200, "{reply:?}");
    reply.body()["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["message"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn scenario_history_is_one_across_proxies_and_survives_a_nats_server() {
    let mut cluster = NatsCluster::jetstream();
    let (da, db) = (Sandbox::new(), Sandbox::new());
    let a = proxy(da.path(), "proxy-a", &cluster, 0, &[]);
    let b = proxy(db.path(), "proxy-b", &cluster, 0, &[]);
    let (a_addr, b_addr) = (a.addr(), b.addr());

    assert_eq!(append(a_addr, 0, "via A").code, 200);
    assert_eq!(list(b_addr), ["via A"], "B sees what A recorded");

    // Both proxies at once: every append kept, none twice.
    let per_proxy = 10u32;
    std::thread::scope(|s| {
        for (addr, tag, base) in [(a_addr, "a", 100), (b_addr, "b", 200)] {
            s.spawn(move || {
                for i in 0..per_proxy {
                    let reply = append(addr, base + i, &format!("{tag}{i}"));
                    assert_eq!(reply.code, 200, "{reply:?}");
                }
            });
        }
    });
    let all = list(a_addr);
    assert_eq!(all.len(), 1 + 2 * per_proxy as usize, "{all:?}");
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "duplicates: {all:?}");
    assert_eq!(list(b_addr), all);

    // One NATS server down: the R3 bucket keeps answering through both proxies.
    cluster.kill(0);
    assert_eq!(
        append(b_addr, 999, "after a server died").code,
        200,
        "{}",
        cluster.logs()
    );
    let after = list(a_addr);
    assert_eq!(
        after.first().map(String::as_str),
        Some("after a server died")
    );
    assert_eq!(after.len(), all.len() + 1);
}

#[test]
fn a_forged_version_in_the_bucket_fails_the_order_that_meets_it() {
    let cluster = NatsCluster::jetstream();
    let da = Sandbox::new();
    let a = proxy(da.path(), "proxy-a", &cluster, 0, &[]);
    assert_eq!(append(a.addr(), 0, "genuine").code, 200);
    // A writer to the bucket without [store] key puts an invented version after it.
    let slot = format!(
        "v.{}.1",
        "shared"
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let url = cluster.client_urls()[0].clone();
    let invented = json!({
        "id": "0badc0de".repeat(8),
        "scenario": "shared",
        "time": 1_700_000_000_999u64,
        "message": "invented",
        "map": {"node": {"app": "0"}},
    });
    let key = slot.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(url.as_str()).await.unwrap();
            let kv = async_nats::jetstream::new(client)
                .get_key_value("t-state")
                .await
                .unwrap();
            kv.put(&key, serde_json::to_vec(&invented).unwrap().into())
                .await
                .unwrap();
        });
    let reply = versions(
        a.addr(),
        VersionsSpec {
            action: Action::List,
            scenario: "shared".into(),
            prefix: String::new(),
            offset: 0,
            limit: 10,
            version: None,
        },
    );
    assert_eq!(reply.code, 500, "{reply:?}");
    let text = format!("{reply:?}");
    assert!(
        text.contains(&format!("nats bucket t-state key {slot}")) && text.contains("refused"),
        "{text}"
    );
    assert!(!text.contains("invented"), "{text}");
}

fn online(content: &Value, agents: &[String]) -> bool {
    agents.iter().all(|a| {
        content["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["address"] == a.as_str() && n["state"] == "online")
        })
    })
}

#[test]
fn one_heartbeat_leader_across_proxies_and_a_takeover() {
    let cluster = NatsCluster::jetstream();
    let sandboxes: Vec<Sandbox> = (0..2).map(|_| Sandbox::new()).collect();
    let ips = ["127.0.47.1", "127.0.47.2"];
    let _agents: Vec<Agent> = sandboxes
        .iter()
        .zip(ips)
        .map(|(sb, ip)| {
            AgentConfig::new(sb)
                .server("addr", ip)
                .server("port", 0)
                .hosts(&["127.0.0.0/8"])
                .start(sb)
        })
        .collect();
    let agents: Vec<String> = _agents.iter().map(|a| a.addr().to_string()).collect();
    let (da, db) = (Sandbox::new(), Sandbox::new());
    let a = proxy(da.path(), "proxy-a", &cluster, 1, &agents);
    let b = proxy(db.path(), "proxy-b", &cluster, 1, &agents);
    let (a_port, b_port) = (a.addr().port(), b.addr().port());

    // Both proxies answer from one inventory; exactly one of them probes.
    wait_until(LIMIT, "agents online through A", || {
        online(&nodes(a_port, API_KEY, &[]), &agents).then_some(())
    });
    wait_until(LIMIT, "agents online through B", || {
        online(&nodes(b_port, API_KEY, &[]), &agents).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let leaders = [&a, &b].iter().filter(|p| p.log().contains(LEAD)).count();
    assert_eq!(leaders, 1, "A:\n{}\nB:\n{}", a.log(), b.log());

    // The leader's proxy dies: the other takes over and the inventory moves on.
    let (mut leader, survivor, survivor_port) = if a.log().contains(LEAD) {
        (a, b, b_port)
    } else {
        (b, a, a_port)
    };
    leader.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = leader.wait_exit_blocking(Duration::from_secs(10));
    drop(leader);
    let before: u64 = nodes(survivor_port, API_KEY, &[])["updated_ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_until(LIMIT, "the survivor leads", || {
        survivor.log().contains(LEAD).then_some(())
    });
    wait_until(LIMIT, "a newer inventory", || {
        let c = nodes(survivor_port, API_KEY, &[]);
        let updated: u64 = c["updated_ms"].as_str()?.parse().ok()?;
        (updated > before + 1000 && online(&c, &agents)).then_some(())
    });
}

/// A peer that accepts a connection, reads what comes, and cuts it (a proxy that died
/// mid-order, before its final reply).
fn cutting_peer() -> (SocketAddr, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        use std::io::Read;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("nobody connected: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap_or(0);
        drop(stream);
        n
    });
    (addr, handle)
}

#[test]
fn the_client_fails_over_to_the_next_proxy() {
    let farm = Farm::start(48, 1, 2, KEY);
    let agents = farm.names();
    let (da, db) = (Sandbox::new(), Sandbox::new());
    let config = |id: &str| {
        ProxyConfig::new(id)
            .client("heartbeat", 0)
            .key(API_KEY, "web")
            .servers("web", &agents)
    };
    let a = config("proxy-a").start(da.path());
    let b = config("proxy-b").start(db.path());
    let run = |proxies: &str, order: &str, options: &str| {
        client(&[
            "--proxy",
            proxies,
            "--api-key",
            API_KEY,
            "--args",
            "groups:web",
            "--order",
            order,
            "--options",
            options,
            "--format=json",
        ])
    };
    let b_addr = format!("127.0.0.1:{}", b.port());

    // A stream cut before the final reply: a read order is sent again, to B.
    let (cut, peer) = cutting_peer();
    let out = run(&format!("{cut},{b_addr}"), "health", "");
    assert!(peer.join().unwrap() > 0, "the first proxy was asked");
    assert_eq!(out.code, Some(0), "{out:?}");
    for agent in &agents {
        assert!(
            out.stdout.contains(agent.as_str()),
            "{agent}: {}",
            out.stdout
        );
    }

    // Proxy A killed: nothing was delivered, so even exec goes to B.
    let a_addr = format!("127.0.0.1:{}", a.port());
    a.signal(nix::sys::signal::Signal::SIGKILL);
    let mut a = a;
    let _ = a.wait_exit_blocking(Duration::from_secs(10));
    let out = run(&format!("{a_addr},{b_addr}"), "exec", ECHO);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.matches(ECHO_CONTENT).count(),
        agents.len(),
        "{}",
        out.stdout
    );

    // Without a next proxy the cut is the answer.
    let (cut, peer) = cutting_peer();
    let out = run(&cut.to_string(), "health", "");
    peer.join().unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
}
