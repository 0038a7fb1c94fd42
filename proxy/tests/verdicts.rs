//! The agents' results decide what the client says and how it exits, whichever
//! protocol reached the proxy: a v1 caller gets the original's one nested document,
//! yet its exit status follows the agents' records inside it (a failing job exits 1,
//! dead agents exit 3), and the failure summary names the agents' own exit codes
//! rather than "relayed failure", over v2 as over v1.

use crate::util::*;

const ID: &str = "px-verdicts";
const API_KEY: &str = "verdict-key";

/// An agent on `127.<net>.1.1` whose job `exit:n` exits with `code`.
fn exiting_agent(net: u8, code: u8) -> (Agent, Sandbox) {
    let sb = Sandbox::new();
    let agent = AgentConfig::new(&sb)
        .server("addr", ip(net, 1, 1))
        .hosts(&["127.0.0.0/8"])
        .job("exit:n", &format!("/bin/sh -c 'exit {code}'"))
        .start(&sb);
    (agent, sb)
}

#[test]
fn a_v1_caller_exits_by_the_agents_results() {
    // Ten dead agents, and one group of a live agent.
    let dead: Vec<_> = (1..=10).map(|i| refusing_addr(ip(71, 250, i))).collect();
    let live = Farm::start(71, 1, 1, KEY);
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .key(API_KEY, "dead,live")
        .servers("dead", dead.iter().map(|(_, addr)| *addr))
        .servers("live", &live.addrs)
        .start(dir.path());
    let v1 = ["--protocol", "v1"];

    // Sanity: a job that succeeds exits 0, in the nested shape.
    let out = via_proxy(proxy.port(), API_KEY, "groups:live", ECHO, &v1);
    out.expect_code(0);
    let (host, outer) = only_record(&out, "exec");
    assert_eq!(host, "127.0.0.1", "the proxy at the outer level: {out:#?}");
    assert_eq!(outer["returnCode"], "200", "{out:#?}");

    // A failing job: the proxy answered 200, the agent's job failed.
    let out = via_proxy(proxy.port(), API_KEY, "groups:live", "service:false", &v1);
    let (_, outer) = only_record(&out, "exec");
    let inner = &outer["content"][&live.names()[0]]["exec"];
    assert_eq!(inner["content"]["return"], "false", "{out:#?}");
    out.expect_code(1);

    // Ten dead agents: every record says so; the run failed for hosts.
    let out = via_proxy(proxy.port(), API_KEY, "groups:dead", ECHO, &v1);
    let (_, outer) = only_record(&out, "exec");
    let inner = outer["content"].as_object().expect("the agents' document");
    assert_eq!(inner.len(), 10, "{out:#?}");
    for (agent, by_order) in inner {
        assert_eq!(by_order["exec"]["serverStatus"], 0, "{agent}: {out:#?}");
    }
    out.expect_code(3);
    for (_, addr) in &dead {
        assert!(
            out.stderr
                .contains(&format!("deploy-client: error: {addr}: can't connect")),
            "each dead agent is reported on stderr: {out:#?}"
        );
    }
}

#[test]
fn the_summary_keeps_the_agents_exit_codes() {
    let (one, _sb1) = exiting_agent(72, 1);
    let (two, _sb2) = exiting_agent(73, 2);
    let (_hold, down) = refusing_addr(ip(74, 250, 1));
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .key(API_KEY, "web")
        .servers("web", [one.addr(), two.addr(), down])
        .start(dir.path());
    // Over v2 the run is loose (strict would start it nowhere, see `strict`): the
    // unreachable agent is skipped. A v1 request cannot ask the proxy to be strict: it
    // runs where it can, and the unreachable agent counts.
    for (protocol, code, parts) in [
        (
            &["--skip-unreachable"][..],
            1,
            &["2 of 3 hosts failed", "code 1", "code 2"][..],
        ),
        (
            &["--protocol", "v1"][..],
            3,
            &["3 of 3 hosts failed", "code 1", "code 2", "unreachable"][..],
        ),
    ] {
        let mut extra = vec!["--format", "lines"];
        extra.extend_from_slice(protocol);
        let out = via_proxy(proxy.port(), API_KEY, "groups:web", "exit:n", &extra);
        out.expect_code(code);
        let summary = out
            .stderr
            .lines()
            .find(|l| l.contains("hosts failed"))
            .unwrap_or_else(|| panic!("{protocol:?}: no summary: {out:#?}"));
        for part in parts {
            assert!(
                summary.contains(part),
                "{protocol:?}: {part:?} in {summary:?}"
            );
        }
        assert!(!summary.contains("relayed"), "{protocol:?}: {summary:?}");
    }
}
