//! The fleet's state through the proxy: `health` and `fetch` relayed (the fetched tree
//! arrives under the agent's name), and `nodes`: its heartbeat (every second here, offline after three)
//! sees three real agents online, one killed goes offline, revived comes back online;
//! `--state` filters; the HTTP API answers `GET /api/nodes` from the same table; a key
//! sees only its groups' agents. Every wait polls the command under a deadline: the
//! assertions are about states, never about how long they took.

use crate::util::*;
use serde_json::Value;
use std::time::Duration;

const API_KEY: &str = "nodes-key";
const WEB_ONLY: &str = "web-only-key";
/// Bound on each wait for a state (the heartbeat is 1 s, offline after 3 s).
const LIMIT: Duration = Duration::from_secs(30);

/// An agent on `ip:port`, with its own sandbox.
fn agent(sb: &Sandbox, ip: &str, port: u16) -> Agent {
    AgentConfig::new(sb)
        .server("addr", ip)
        .server("port", port)
        .hosts(&["127.0.0.0/8"])
        .start(sb)
}

/// The state of `address` in a `nodes` answer.
fn state_of(content: &Value, address: &str) -> Option<String> {
    content["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["address"] == address)
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

#[test]
fn agents_go_offline_and_come_back() {
    let sandboxes: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let ips = ["127.0.31.1", "127.0.31.2", "127.0.31.3"];
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut agents: Vec<Option<Agent>> = sandboxes
        .iter()
        .zip(ips.iter().zip(&ports))
        .map(|(sb, (ip, port))| Some(agent(sb, ip, *port)))
        .collect();
    let addresses: Vec<String> = ips
        .iter()
        .zip(&ports)
        .map(|(ip, port)| format!("{ip}:{port}"))
        .collect();
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new("nodes-proxy")
        .client("heartbeat", 1)
        .client("heartbeat_timeout", 3)
        .key(API_KEY, "web,db")
        .key(WEB_ONLY, "web")
        .servers("web", &addresses[..2])
        .servers("db", &addresses[2..])
        .http()
        .start(dir.path());
    let port = proxy.port();

    // Every agent online, with its version and a latency.
    let all_online = |content: &Value| {
        addresses
            .iter()
            .all(|a| state_of(content, a).as_deref() == Some("online"))
    };
    let content = wait_until(LIMIT, "three agents online", || {
        let c = nodes(port, API_KEY, &[]);
        all_online(&c).then_some(c)
    });
    assert_eq!(content["online"], "3", "{content:#}");
    for node in content["nodes"].as_array().unwrap() {
        assert!(
            node["version"]
                .as_str()
                .unwrap()
                .starts_with("deploy-agent "),
            "{node}"
        );
        assert!(node["latency_ms"].as_f64().unwrap() >= 0.0);
        assert!(node["last_seen_ms"].as_u64().unwrap() > 0);
    }
    // A key sees its groups' agents only.
    let web = nodes(port, WEB_ONLY, &[]);
    assert_eq!(web["nodes"].as_array().unwrap().len(), 2, "{web:#}");
    assert_eq!(state_of(&web, &addresses[2]), None);

    // One killed: offline within the timeout (unstable on the way is allowed).
    agents[1] = None;
    let content = wait_until(LIMIT, "the killed agent offline", || {
        let c = nodes(port, API_KEY, &[]);
        (state_of(&c, &addresses[1]).as_deref() == Some("offline")).then_some(c)
    });
    assert_eq!(state_of(&content, &addresses[0]).as_deref(), Some("online"));
    assert_eq!(state_of(&content, &addresses[2]).as_deref(), Some("online"));
    let killed = content["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["address"] == addresses[1].as_str())
        .unwrap()
        .clone();
    assert!(!killed["error"].as_str().unwrap().is_empty(), "{killed}");
    // --state keeps one state.
    let offline = nodes(port, API_KEY, &["--state=offline"]);
    let listed: Vec<&str> = offline["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["address"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [addresses[1].as_str()]);
    assert_eq!(offline["offline"], "1");
    assert_eq!(offline["online"], "2");

    // The HTTP API answers from the same table.
    if have_curl() {
        let url = format!("http://{}/api/nodes?options=offline", proxy.http());
        let out = curl(&["-H", &format!("X-Api-Key: {API_KEY}"), &url]);
        let body: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"));
        assert_eq!(
            body["nodes"][0]["address"],
            addresses[1].as_str(),
            "{body:#}"
        );
        let out = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("X-Api-Key: {API_KEY}"),
            &format!("http://{}/api/fetch", proxy.http()),
        ]);
        assert_eq!(out.stdout, "501");
    }

    // Revived on the same address: online again.
    agents[1] = Some(agent(&sandboxes[1], ips[1], ports[1]));
    wait_until(LIMIT, "the revived agent online", || {
        let c = nodes(port, API_KEY, &[]);
        all_online(&c).then_some(())
    });
    drop(agents);
}

#[test]
fn health_and_fetch_through_the_proxy() {
    let sandboxes: Vec<Sandbox> = (0..2).map(|_| Sandbox::new()).collect();
    let agents: Vec<Agent> = sandboxes
        .iter()
        .enumerate()
        .map(|(i, sb)| {
            std::fs::create_dir_all(sb.allowed().join("logs")).unwrap();
            std::fs::write(sb.allowed().join("logs/app.log"), format!("agent {i}\n")).unwrap();
            AgentConfig::new(sb)
                .server("addr", format!("127.0.0.{}", 41 + i))
                .server("allow_fetch", "on")
                .hosts(&["127.0.0.0/8"])
                .start(sb)
        })
        .collect();
    let addresses: Vec<String> = agents.iter().map(|a| a.addr().to_string()).collect();
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new("fleet-proxy")
        .key(API_KEY, "web")
        .servers("web", &addresses)
        .start(dir.path());
    let port = proxy.port().to_string();
    let via = [
        "127.0.0.1",
        "--port",
        &port,
        "--api-key",
        API_KEY,
        "--args",
        "groups:web",
        "--format=json",
    ];

    let mut args = vec!["health"];
    args.extend_from_slice(&via);
    let out = client(&args);
    out.expect_code(0);
    let doc = out.json();
    for address in &addresses {
        let content = &doc[address.as_str()]["health"]["content"];
        assert!(content["cores"].as_u64().unwrap() > 0, "{doc:#}");
        assert!(
            content["offset_ms"].as_i64().unwrap().abs() < 1000,
            "{content:#}"
        );
    }

    // Each agent's own file, through the proxy, under its own name.
    let into = dir.join("fetched");
    for (sb, address) in sandboxes.iter().zip(&addresses) {
        let remote = sb.allowed().join("logs").display().to_string();
        let mut args = vec!["fetch", &remote, into.to_str().unwrap()];
        args.extend_from_slice(&via);
        let out = client(&args);
        // The other agent refuses a path outside its [allow::paths] (403).
        let doc = out.json();
        assert_eq!(
            doc[address.as_str()]["fetch"]["returnCode"],
            "200",
            "{doc:#}"
        );
    }
    for (i, address) in addresses.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(into.join(address).join("logs/app.log")).unwrap(),
            format!("agent {i}\n")
        );
    }
}
