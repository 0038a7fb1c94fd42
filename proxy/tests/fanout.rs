//! One order through the proxy to two dozen agents: every agent's record at top level
//! with its `via` (json, text, jsonl as the records arrive), the very records a direct
//! run gets, and the original's nested shape for a v1 client.

use crate::util::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// The proxy's name in these tests.
const ID: &str = "px-fleet";
/// The API key of these tests.
const API_KEY: &str = "fleet-key";
/// The secret of the `other` group's agents (a `[group::other]` override).
const OTHER_KEY: &str = "other-secret";

/// 22 agents in group `web` (two processes of 11 addresses, key [`KEY`]) and 2 in group
/// `other` (two processes, key [`OTHER_KEY`]), behind one proxy.
struct Fleet {
    proxy: Proxy,
    web: Farm,
    other: Farm,
    _dir: Sandbox,
}

impl Fleet {
    fn start(net: u8, config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Fleet {
        let web = Farm::start(net, 2, 11, KEY);
        let other = Farm::start(net + 100, 2, 1, OTHER_KEY);
        let dir = Sandbox::new();
        let proxy = config(
            ProxyConfig::new(ID)
                .key(API_KEY, "web,other")
                .servers("web", &web.addrs)
                .servers("other", &other.addrs)
                .group("other", &[("key_cipher", OTHER_KEY)]),
        )
        .start(dir.path());
        Fleet {
            proxy,
            web,
            other,
            _dir: dir,
        }
    }

    fn names(&self) -> BTreeSet<String> {
        self.web
            .names()
            .into_iter()
            .chain(self.other.names())
            .collect()
    }

    fn run(&self, options: &str, extra: &[&str]) -> Output {
        via_proxy(
            self.proxy.port(),
            API_KEY,
            "groups:web,other",
            options,
            extra,
        )
    }
}

#[test]
fn every_agent_at_top_level_with_via() {
    let fleet = Fleet::start(11, |c| c);
    assert_eq!(fleet.names().len(), 24);
    let out = fleet.run(ECHO, &[]);
    out.expect_code(0);
    let records = records(&out, "exec");
    assert_eq!(
        records.keys().cloned().collect::<BTreeSet<_>>(),
        fleet.names(),
        "{out:#?}"
    );
    for (host, record) in &records {
        assert_echo_ok(host, record, ID);
    }
    assert!(
        !out.stderr.contains("error"),
        "no per-host errors: {out:#?}"
    );
}

#[test]
fn text_folds_the_agents_into_one_block() {
    let fleet = Fleet::start(12, |c| c);
    let out = fleet.run(ECHO, &["--format", "text"]);
    out.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one header and one body line: {out:#?}");
    let (hosts, rest) = lines[0]
        .split_once(" (24): ")
        .unwrap_or_else(|| panic!("24 hosts folded together: {out:#?}"));
    assert_eq!(
        rest,
        format!("200 OK return=true command=\"/bin/echo hi\" code=0 (via {ID})")
    );
    let hosts: BTreeSet<String> = hosts.split(',').map(str::to_owned).collect();
    assert_eq!(hosts, fleet.names());
    assert_eq!(lines[1], "    hi");
}

#[test]
fn jsonl_prints_each_agent_as_it_arrives() {
    // A silent agent holds its line until the proxy's per-agent deadline.
    let silent = Silent::start(ip(13, 200, 1));
    let fleet = Fleet::start(13, |c| {
        c.client("thread_timeout", 3)
            .key(API_KEY, "slow")
            .servers("slow", [silent.addr])
    });
    let out = via_proxy(
        fleet.proxy.port(),
        API_KEY,
        "groups:web,other,slow",
        ECHO,
        // Loose: strict would wait for the silent agent and start nothing.
        &["--format", "jsonl", "--skip-unreachable"],
    );
    out.expect_code(3);
    let lines = out.json_lines();
    assert_eq!(
        lines.len(),
        25,
        "24 agents and the silent one; the proxy's own summary is not a result: {out:#?}"
    );
    let slow = silent.addr.to_string();
    let mut fast = BTreeSet::new();
    let mut slow_at = None;
    let mut fast_until = Duration::ZERO;
    for ((at, _), line) in out.lines.iter().zip(&lines) {
        let host = line["host"].as_str().expect("host").to_owned();
        assert_eq!(line["order"], "exec", "{line}");
        assert_ne!(
            host, "127.0.0.1",
            "the proxy itself is not listed: {out:#?}"
        );
        if host == slow {
            assert_eq!(line["result"]["serverStatus"], 0, "{line}");
            assert_eq!(line["result"]["content"], "Process Timeout(3)!", "{line}");
            assert_eq!(line["result"]["via"], ID, "{line}");
            slow_at = Some(*at);
        } else {
            assert!(slow_at.is_none(), "{host} after the timed-out agent");
            let record = line["result"].as_object().expect("record");
            assert_echo_ok(&host, record, ID);
            assert!(fast.insert(host), "one line per agent: {out:#?}");
            fast_until = fast_until.max(*at);
        }
    }
    assert_eq!(fast, fleet.names());
    let slow_at = slow_at.expect("a line for the silent agent");
    assert!(
        slow_at >= Duration::from_millis(2900),
        "the silent agent's line came at {slow_at:?}, before its deadline"
    );
    assert!(
        fast_until + Duration::from_secs(1) < slow_at,
        "the answering agents' lines were held back until {fast_until:?} \
         (the silent one's came at {slow_at:?}): they are not streamed"
    );
}

#[test]
fn proxied_records_equal_direct_ones() {
    let fleet = Fleet::start(14, |c| c);
    // A success, an order that fails on the agent, and an unknown job.
    for options in [ECHO, "service:false,x", "service:nope,x"] {
        let mut direct_records = records(&direct(&fleet.web.addrs, KEY, options), "exec");
        direct_records.extend(records(
            &direct(&fleet.other.addrs, OTHER_KEY, options),
            "exec",
        ));
        assert_eq!(direct_records.len(), 24);
        let proxied = fleet.run(options, &[]);
        let proxied_records = records(&proxied, "exec");
        assert_eq!(
            proxied_records.keys().collect::<Vec<_>>(),
            direct_records.keys().collect::<Vec<_>>(),
            "{options}: {proxied:#?}"
        );
        for (host, record) in &proxied_records {
            assert_eq!(record["via"], ID, "{options} {host}");
            assert_eq!(
                without_via(record),
                direct_records[host],
                "{options}: {host} through the proxy and directly"
            );
        }
        if options == ECHO {
            proxied.expect_code(0);
        } else {
            proxied.expect_code(1);
        }
    }
}

#[test]
fn v1_client_gets_the_original_nested_shape() {
    let fleet = Fleet::start(15, |c| c);
    let v2 = records(&fleet.run(ECHO, &[]), "exec");
    let out = fleet.run(ECHO, &["--protocol", "v1"]);
    out.expect_code(0);
    let (host, outer) = only_record(&out, "exec");
    assert_eq!(host, "127.0.0.1", "the proxy at the outer level: {out:#?}");
    for (k, v) in [
        ("return", Value::from(1)),
        ("serverStatus", Value::from(1)),
        ("returnCode", Value::from("200")),
        ("returnString", Value::from("OK")),
    ] {
        assert_eq!(outer[k], v, "{k}: {out:#?}");
    }
    assert!(outer.get("via").is_none(), "v1 has no via: {out:#?}");
    let inner = outer["content"].as_object().expect("the agents' document");
    assert_eq!(
        inner.keys().cloned().collect::<BTreeSet<_>>(),
        fleet.names(),
        "{out:#?}"
    );
    for (agent, by_order) in inner {
        let by_order = by_order.as_object().expect("order → record");
        assert_eq!(by_order.len(), 1, "{agent}: {by_order:?}");
        let record = by_order["exec"].as_object().expect("record");
        assert_eq!(
            record,
            &without_via(&v2[agent]),
            "{agent}: v1 and v2 records"
        );
    }
}

/// A key allowed only group `all` = `@web,@db` (plus one `web` server written again)
/// reaches every agent of both groups, each once.
#[test]
fn a_group_of_groups_reaches_the_agents_of_both() {
    let web = Farm::start(16, 1, 2, KEY);
    let db = Farm::start(116, 1, 2, KEY);
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .key(API_KEY, "all")
        .servers("web", &web.addrs)
        .servers("db", &db.addrs)
        .servers("all", ["@web,@db".to_owned(), web.addrs[0].to_string()])
        .start(dir.path());
    let out = via_proxy(proxy.port(), API_KEY, "groups:all", ECHO, &[]);
    out.expect_code(0);
    let records = records(&out, "exec");
    let expected: BTreeSet<String> = web.names().into_iter().chain(db.names()).collect();
    assert_eq!(expected.len(), 4);
    assert_eq!(
        records.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{out:#?}"
    );
    for (host, record) in &records {
        assert_echo_ok(host, record, ID);
    }
}
