//! Strict runs (orgalorg's default): an `exec` with one agent unreachable starts nowhere,
//! whether the client reaches the agents directly or through a proxy (which connects
//! to every agent of the request first when the request says `strict`); the dead agent
//! is named, the exit status is 3. With `--skip-unreachable` the reachable agents run,
//! and the unreachable one does not fail the run, through a proxy (v2 and v1) as
//! directly.
//!
//! Each live agent has a job, `service:mark`, that creates a file in its own sandbox:
//! the files are the proof of what ran where.

use crate::util::*;
use std::net::SocketAddr;

/// The proxy's name in these tests.
const ID: &str = "px-strict";
/// The API key of these tests.
const API_KEY: &str = "strict-key";
/// The job that leaves a mark.
const MARK: &str = "service:mark";

/// Two live agents, each marking its own sandbox, and one address nobody listens on.
struct Marked {
    agents: Vec<Agent>,
    sandboxes: Vec<Sandbox>,
    dead: SocketAddr,
}

impl Marked {
    fn start() -> Marked {
        let mut marked = Marked {
            agents: Vec::new(),
            sandboxes: Vec::new(),
            dead: closed_port(),
        };
        for _ in 0..2 {
            let sb = Sandbox::new();
            let mark = format!("/usr/bin/touch {}", sb.join("ran").display());
            let agent = AgentConfig::new(&sb).job(MARK, &mark).start(&sb);
            marked.agents.push(agent);
            marked.sandboxes.push(sb);
        }
        marked
    }

    /// The two live agents and the dead address, as the client and the proxy name them.
    fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.agents.iter().map(|a| a.addr().to_string()).collect();
        hosts.push(self.dead.to_string());
        hosts
    }

    /// How many live agents ran the job (and forgets it, for the next run).
    fn ran(&self) -> usize {
        self.sandboxes
            .iter()
            .filter(|sb| std::fs::remove_file(sb.join("ran")).is_ok())
            .count()
    }
}

/// A port on 127.0.0.1 that refuses connections (bound, then closed).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Checks a strict run that did not start: exit 3, the dead agent's record says it
/// could not be reached, each live one's is a 503 naming it, and stderr names it.
fn assert_started_nowhere(out: &Output, marked: &Marked) {
    out.expect_code(3);
    let dead = marked.dead.to_string();
    let records = records(out, "exec");
    assert_eq!(records.len(), 3, "{out:#?}");
    assert_eq!(records[&dead]["serverStatus"], 0, "{out:#?}");
    assert_eq!(
        records[&dead]["content"],
        format!("can't connect to {dead}"),
        "{out:#?}"
    );
    for agent in &marked.agents {
        let record = &records[&agent.addr().to_string()];
        assert_eq!(record["returnCode"], "503", "{out:#?}");
        let content = record["content"].as_str().unwrap_or_default();
        assert!(
            content.starts_with(
                "not started (strict: every host or none; --skip-unreachable runs on the others): "
            ) && content.contains(&format!("{dead} failed (can't connect to {dead}")),
            "{out:#?}"
        );
    }
    assert!(
        out.stderr
            .contains(&format!("error: {dead}: can't connect to {dead}")),
        "{out:#?}"
    );
}

#[test]
fn strict_exec_on_agents_starts_nowhere_unless_all_connect() {
    let marked = Marked::start();
    let hosts = marked.hosts().join(",");
    let exec = |extra: &[&str]| {
        let mut args = vec![
            "--hosts",
            &hosts,
            "--key-cipher",
            KEY,
            "--order=exec",
            "--options",
            MARK,
        ];
        args.extend_from_slice(extra);
        client(&args)
    };
    let out = exec(&[]);
    assert_eq!(marked.ran(), 0, "a job ran in strict mode: {out:#?}");
    assert_started_nowhere(&out, &marked);
    assert!(
        out.stderr.contains(&format!(
            "the order started nowhere, since {} could not be connected to",
            marked.dead
        )),
        "{out:#?}"
    );

    // Loose: the two run, the dead one is skipped and fails nothing.
    let out = exec(&["--skip-unreachable"]);
    assert_eq!(marked.ran(), 2, "{out:#?}");
    out.expect_code(0);
    assert!(
        out.stderr.contains(&format!("skipped: {}", marked.dead)),
        "{out:#?}"
    );

    // Read-only orders are not gated: `status` reaches the live two.
    let out = client(&[
        "--hosts",
        &hosts,
        "--key-cipher",
        KEY,
        "--order=rlist",
        "--options=none",
    ]);
    let records = records(&out, "rlist");
    for agent in &marked.agents {
        assert_eq!(
            records[&agent.addr().to_string()]["serverStatus"],
            1,
            "{out:#?}"
        );
        assert_ne!(
            records[&agent.addr().to_string()]["returnCode"],
            "503",
            "{out:#?}"
        );
    }
}

/// The proxy gates its own fan-out when the client's request is strict.
#[test]
fn strict_exec_through_a_proxy_starts_nowhere_unless_all_connect() {
    let marked = Marked::start();
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .key(API_KEY, "web")
        .servers("web", marked.hosts())
        .start(dir.path());
    let out = via_proxy(proxy.port(), API_KEY, "groups:web", MARK, &[]);
    assert_eq!(marked.ran(), 0, "a job ran in strict mode: {out:#?}");
    assert_started_nowhere(&out, &marked);
    for record in records(&out, "exec").values() {
        assert_eq!(record["via"], ID, "{out:#?}");
    }

    // Streamed (jsonl) the same: every agent's record, none started.
    let out = via_proxy(
        proxy.port(),
        API_KEY,
        "groups:web",
        MARK,
        &["--format=jsonl"],
    );
    out.expect_code(3);
    assert_eq!(marked.ran(), 0, "{out:#?}");
    assert_eq!(out.stdout.matches("not started").count(), 2, "{out:#?}");

    // Loose: the two run.
    let out = via_proxy(
        proxy.port(),
        API_KEY,
        "groups:web",
        MARK,
        &["--skip-unreachable"],
    );
    assert_eq!(marked.ran(), 2, "{out:#?}");
    out.expect_code(0);
}

/// `--skip-unreachable` through a proxy: the unreachable agent behind it is left out of
/// the exit status, as when the agents are reached directly; over v1 (the proxy's
/// nested document) too. Without it, the run fails for it (3).
#[test]
fn skip_unreachable_behind_a_proxy_leaves_the_dead_out_of_the_exit_status() {
    let marked = Marked::start();
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .key(API_KEY, "web")
        .servers("web", marked.hosts())
        .start(dir.path());
    let dead = marked.dead.to_string();
    for extra in [&[][..], &["--protocol=v1"][..]] {
        let mut args = vec!["--skip-unreachable"];
        args.extend_from_slice(extra);
        let out = via_proxy(proxy.port(), API_KEY, "groups:web", MARK, &args);
        assert_eq!(marked.ran(), 2, "{extra:?}: {out:#?}");
        out.expect_code(0);
        assert!(
            out.stderr.contains(&format!(
                "note: 1 unreachable host skipped (--skip-unreachable): {dead}"
            )),
            "{extra:?}: {out:#?}"
        );
        assert!(!out.stderr.contains("error:"), "{extra:?}: {out:#?}");
    }
    // Over v1 a strict request cannot be told to the proxy (the original's wire has
    // no such field): the proxy delivers where it can, and the dead agent fails the run.
    let out = via_proxy(
        proxy.port(),
        API_KEY,
        "groups:web",
        MARK,
        &["--protocol=v1"],
    );
    assert_eq!(marked.ran(), 2, "{out:#?}");
    out.expect_code(3);
}
