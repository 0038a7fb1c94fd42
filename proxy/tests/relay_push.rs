//! `rsync --relay` through the proxy: the real client asks the real proxy, which
//! schedules the pipelined relay over its real agents (each on its own loopback
//! address, group `web` from a real rsync daemon): the first pulls from the source, the
//! others from each other, and each agent's record says where it pulled from; the HTTP
//! API asks for it with `{"relay": k}`. One agent killed while it relays is routed around.

use crate::util::*;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Agents on 127.<net>.<i>.1 (i from 1) with group `web` from `source_url` into their own
/// `allowed/web`, and a proxy with key `relay-key` for group `web` over all of them.
struct Fleet {
    web: WebFleet,
    proxy: Proxy,
    _proxy_dir: Sandbox,
}

impl Fleet {
    fn start(net: u8, n: u8, source_url: &str) -> Fleet {
        let web = WebFleet::local(n.into(), |i, sb| {
            AgentConfig::new(sb)
                .server("addr", ip(net, i as u8 + 1, 1))
                .server("key_cipher", KEY)
                .hosts(&["127.0.0.0/8"])
                .web_group(sb, source_url, &[])
        });
        let addrs: Vec<_> = (0..web.agents.len()).map(|i| web.addr(i)).collect();
        let dir = Sandbox::new();
        let proxy = ProxyConfig::new(&format!("px-relay-{net}"))
            .key("relay-key", "web")
            .servers("web", &addrs)
            .http()
            .start(dir.path());
        Fleet {
            web,
            proxy,
            _proxy_dir: dir,
        }
    }

    fn name(&self, i: usize) -> String {
        self.web.addr(i).to_string()
    }

    fn target(&self, i: usize) -> PathBuf {
        self.web.target(i)
    }

    fn agent(&self, i: usize) -> &Agent {
        &self.web.agents[i].1
    }

    fn sandbox(&self, i: usize) -> &Sandbox {
        &self.web.agents[i].0
    }

    /// `deploy-client --proxy … --order=rsync --options=web --relay --format=json`.
    fn relay(&self, fanout: &str) -> Output {
        client(&[
            "--proxy",
            &format!("127.0.0.1:{}", self.proxy.port()),
            "--api-key",
            "relay-key",
            "--args",
            "groups:web",
            "--order=rsync",
            "--options=web",
            "--relay",
            "--relay-fanout",
            fanout,
            "--format=json",
        ])
    }
}

/// A relay field of a host's record (the agent's reply is the record's `content`).
fn field(record: &Map<String, Value>, key: &str) -> String {
    record
        .get("content")
        .and_then(|c| c.get(key))
        .or_else(|| record.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn relay_through_the_proxy_is_scheduled_over_its_agents() {
    let rsyncd = RsyncSource::start(1_500_000);
    let source = rsyncd.path.clone();
    let fleet = Fleet::start(88, 4, &rsyncd.url());
    let out = fleet.relay("1");
    assert_eq!(out.code, Some(0), "{out:#?}");
    let records = records(&out, "rsync");
    assert_eq!(records.len(), 4, "{out:#?}");
    for i in 0..4 {
        assert_same_tree(&source, &fleet.target(i));
        let r = &records[&fleet.name(i)];
        // A chain in the selection's order: the first from the source, each next one
        // from the one before it, every chunk from that peer.
        let want = if i == 0 {
            "source".to_owned()
        } else {
            fleet.name(i - 1)
        };
        assert_eq!(field(r, "from"), want, "{out:#?}");
        if i > 0 {
            assert!(
                // Stream addresses: the peer's own address, an ephemeral port.
                field(r, "pulled").starts_with(&format!("{}:", fleet.agent(i - 1).addr().ip())),
                "{r:#?}"
            );
        }
    }
}

#[test]
fn relay_through_the_proxy_routes_around_an_agent_killed_mid_relay() {
    let rsyncd = RsyncSource::start(24_000_000);
    let source = rsyncd.path.clone();
    let fleet = Fleet::start(89, 4, &rsyncd.url());
    // Agent 2 (fed by agent 1, feeding agent 3) is killed once it has spooled two
    // chunks of the stream and before it has all of it.
    let relay_dir = fleet.sandbox(1).join("state").join("relay");
    let chunk = deploy_common::rsync::stream::DEFAULT_CHUNK;
    let (out, killed_at) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(25);
            while Instant::now() < deadline {
                let spooled = std::fs::read_dir(&relay_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| std::fs::metadata(e.path().join("stream")).ok())
                    .map(|m| m.len())
                    .max();
                if let Some(len) = spooled.filter(|&len| len >= 2 * chunk) {
                    let agent = fleet.agent(1);
                    for pid in agent.workers() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    agent.signal(nix::sys::signal::Signal::SIGKILL);
                    return Some(len);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        });
        let out = fleet.relay("1");
        (out, watcher.join().expect("watcher"))
    });
    let killed_at = killed_at.unwrap_or_else(|| panic!("agent 2 never spooled: {out:#?}"));
    assert!(
        killed_at < 20_000_000,
        "killed too late ({killed_at} bytes)"
    );
    // Agent 2's failure is reported (exit 3 or 1), the others all have the tree.
    assert_ne!(out.code, Some(0), "{out:#?}");
    let records = records(&out, "rsync");
    assert_eq!(records.len(), 4, "{out:#?}");
    assert_ne!(
        field(&records[&fleet.name(1)], "return"),
        "true",
        "{out:#?}"
    );
    for i in [0, 2, 3] {
        assert_same_tree(&source, &fleet.target(i));
    }
    // Agent 3 left its dead parent for its grandparent.
    let third = &records[&fleet.name(2)];
    assert_eq!(field(third, "from"), fleet.name(0), "{out:#?}");
}

#[test]
fn relay_over_the_http_api() {
    if !have_curl() {
        eprintln!("SKIPPED: no curl");
        return;
    }
    let rsyncd = RsyncSource::start(700_000);
    let source = rsyncd.path.clone();
    let fleet = Fleet::start(87, 3, &rsyncd.url());
    let out = curl(&[
        "-H",
        "X-Api-Key: relay-key",
        "-d",
        r#"{"options":"web","args":"groups:web","relay":1}"#,
        &format!("http://{}/api/rsync", fleet.proxy.http()),
    ]);
    out.expect_code(0);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"));
    for i in 0..3 {
        assert_same_tree(&source, &fleet.target(i));
        let record = doc
            .get(fleet.name(i))
            .and_then(|r| r.get("rsync"))
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("no record for agent {i}: {out:#?}"));
        let want = if i == 0 {
            "source".to_owned()
        } else {
            fleet.name(i - 1)
        };
        assert_eq!(field(record, "from"), want, "{out:#?}");
    }
}
