//! The whole fleet of the NATS issue at once: a real 3-server NATS cluster with
//! JetStream and users, agents reachable only over NATS (no listening port), and two
//! proxies that reach them over that cluster and share `[store] backend = nats` on it.
//!
//! ```text
//! client ─► proxy A ─┐                ┌─► agent a1 (tcp = off)
//!   (--proxy A,B)    ├─► n0 ─ n1 ─ n2 ┤
//!        └► proxy B ─┘  (JetStream R3) └─► agent a2 (tcp = off)
//! ```
//!
//! * an order through either proxy reaches every agent;
//! * a scenario version appended through A is listed through B (after A died);
//! * one NATS server killed mid-order: the next order through either proxy works;
//! * proxy A killed (master and workers) mid-order: `deploy-client --proxy A,B` sends
//!   the read order again to B, and the next order through B works.

use crate::store::{append, list, API_KEY};
use crate::util::*;
use deploy_testkit::nats::{self, NatsCluster, CALLER};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// The proxies' user for the store (JetStream's API subjects, which `CALLER` may not use).
const STORE: (&str, &str) = ("store", "storepw");

fn cluster(sb: &Sandbox) -> Option<NatsCluster> {
    if !nats::available() {
        eprintln!("note: nats-server is not installed; skipping");
        return None;
    }
    let auth = nats::authorization(&[("a1", &["web"]), ("a2", &["web"])]).replacen(
        "  users: [\n",
        &format!(
            "  users: [\n    {{ user: {}, password: {}, permissions: {{ publish: \">\", subscribe: \">\" }} }}\n",
            STORE.0, STORE.1
        ),
        1,
    );
    let dir = sb.join("nats");
    std::fs::create_dir_all(&dir).unwrap();
    Some(NatsCluster::with_jetstream(&dir, 3, &auth))
}

/// A proxy whose group `web` is `nats://a1, a2` and `slow` adds the absent
/// `nats://a3` (an order to it lasts until `thread_timeout`), on the cluster for both
/// its agents and its store.
fn proxy(dir: &std::path::Path, id: &str, cluster: &NatsCluster) -> Daemon {
    let config = ProxyConfig::new(id)
        .key(API_KEY, "web,slow")
        .servers("web", ["nats://a1", "nats://a2"])
        .servers("slow", ["nats://a1", "nats://a2", "nats://a3"])
        .client("thread_timeout", 4)
        .client("heartbeat", 0);
    let ini = config.write(dir);
    let mut text = std::fs::read_to_string(&ini).unwrap();
    text.push_str(&format!(
        "\n[nats]\n{}user = {}\npassword = {}\nagent_keys = {}\n",
        cluster.server_lines(),
        CALLER.0,
        CALLER.1,
        cluster.agent_keys().display()
    ));
    text.push_str(&format!(
        "\n[store]\nbackend = nats\nprefix = fleet-\nreplicas = 3\nuser = {}\npassword = {}\n",
        STORE.0, STORE.1
    ));
    for url in cluster.client_urls() {
        text.push_str(&format!("server[] = {url}\n"));
    }
    std::fs::write(&ini, text).unwrap();
    Daemon::start(&bins::proxy(), &ini, &[], 1)
}

/// `exec service:echo,hi` to group `web` through the proxy on `port`: whether both
/// agents answered 200.
fn echo_works(port: u16) -> Result<(), String> {
    let out = via_proxy(port, API_KEY, "groups:web", ECHO, &["--format=json"]);
    if out.code != Some(0) {
        return Err(format!("{out:#?}"));
    }
    let doc = out.json();
    for a in ["nats://a1", "nats://a2"] {
        if doc[a]["exec"]["returnCode"] != "200" {
            return Err(format!("{a}: {out:#?}"));
        }
    }
    Ok(())
}

/// Retries [`echo_works`] for up to 20 s (clients reconnecting after a server's death).
fn echo_works_soon(port: u16, what: &str, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match echo_works(port) {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}\n{}", logs()),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_proxies_nats_only_agents_one_store_and_the_deaths_they_survive() {
    let sb = Sandbox::new();
    let Some(mut cluster) = cluster(&sb) else {
        return;
    };
    let (sb1, sb2) = (Sandbox::new(), Sandbox::new());
    let a1 = nats::start_agent(
        &sb1,
        AgentConfig::new(&sb1),
        &cluster.server_lines(),
        "a1",
        &["web"],
        None,
        &cluster.agent_keys(),
    );
    let a2 = nats::start_agent(
        &sb2,
        AgentConfig::new(&sb2),
        &cluster.server_lines(),
        "a2",
        &["web"],
        None,
        &cluster.agent_keys(),
    );
    // a3 is enrolled (its key pinned) but never started: the absent one.
    nats::enrol_unstarted(&Sandbox::new(), "a3", &cluster.agent_keys());
    let (da, db) = (Sandbox::new(), Sandbox::new());
    let mut a = proxy(da.path(), "proxy-a", &cluster);
    let b = proxy(db.path(), "proxy-b", &cluster);
    let (a_port, b_port) = (a.addr().port(), b.addr().port());
    let (a_addr, b_addr) = (a.addr(), b.addr());

    // Orders through either proxy.
    echo_works(a_port).unwrap_or_else(|e| panic!("through A: {e}\n{}", a.log()));
    echo_works(b_port).unwrap_or_else(|e| panic!("through B: {e}\n{}", b.log()));

    // Scenario history appended through A (listed through B at the end, A dead).
    let appended = append(a_addr, 1, "via A");
    assert_eq!(appended.code, 200, "{appended:?}\n{}", a.log());

    // One NATS server killed mid-order; the next order through either proxy works.
    let slow = std::thread::spawn(move || {
        via_proxy(a_port, API_KEY, "groups:web", "service:sleep,2", &[])
    });
    std::thread::sleep(Duration::from_millis(700));
    cluster.kill(0);
    let _ = slow.join();
    let logs = || {
        format!(
            "a1:\n{}\na2:\n{}\nA:\n{}\nB:\n{}",
            a1.log(),
            a2.log(),
            a.log(),
            b.log()
        )
    };
    echo_works_soon(a_port, "through A after a NATS server died", logs);
    echo_works_soon(b_port, "through B after a NATS server died", logs);

    // Proxy A killed mid-order (a read order: `health`, held by the absent a3 until
    // the deadline): the client sends it again to B.
    let proxies = format!("127.0.0.1:{a_port},127.0.0.1:{b_port}");
    let child = std::process::Command::new(bins::client())
        .args(["--proxy", &proxies, "--api-key", API_KEY])
        .args([
            "--args",
            "groups:slow",
            "--order",
            "health",
            "--format=json",
        ])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("DEPLOY_KEY_CIPHER", PROXY_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let workers = a.workers();
    assert!(!workers.is_empty(), "proxy A has workers");
    for w in workers {
        signal(w, Signal::SIGKILL);
    }
    a.signal(Signal::SIGKILL);
    assert!(a.wait_exit_blocking(Duration::from_secs(10)).is_some());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\nB:\n{}", b.log()));
    for agent in ["nats://a1", "nats://a2"] {
        assert_eq!(
            doc[agent]["health"]["returnCode"], "200",
            "{agent} answered through B: {stdout}\n{stderr}"
        );
    }
    assert_eq!(
        doc["nats://a3"]["health"]["serverStatus"], 0,
        "the absent agent is unreachable: {stdout}"
    );
    echo_works(b_port).unwrap_or_else(|e| panic!("through B after A died: {e}"));

    // The history A recorded is B's too.
    assert_eq!(list(b_addr), ["via A"], "B sees what A recorded");
}
