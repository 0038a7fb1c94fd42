//! `--follow` through proxies: the output lines agents stream reach a v2 client as they
//! come, each under its agent's name (the proxy tags the events it relays), with
//! stdout and stderr apart, before that agent's result; through a chain of proxies too;
//! and an agent cannot pass its lines off as another host's; a second client attaches
//! to a running transfer through the proxy and sees it end after the first one's
//! Ctrl-C. No sshd needed: agents with `allow_run = on` run `/bin/sh -c …`.

use crate::util::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const ID: &str = "px-follow";
const API_KEY: &str = "follow-key";

/// Prints two lines on stdout and one on stderr, in this order.
const SCRIPT: &str = "echo one; echo two >&2; echo three";

/// One agent process with `allow_run = on` on 127.0.0.1 and 127.0.0.2 (two agents as
/// the proxy sees them).
struct Agents {
    agent: Agent,
    _sb: Sandbox,
}

impl Agents {
    fn start() -> Agents {
        let sb = Sandbox::new();
        let agent = AgentConfig::new(&sb)
            .server("allow_run", "on")
            .server("listen", "127.0.0.2:0")
            .hosts(&["127.0.0.0/8"])
            .start(&sb);
        Agents { agent, _sb: sb }
    }

    fn names(&self) -> BTreeSet<String> {
        self.agent.addrs.iter().map(ToString::to_string).collect()
    }
}

/// `deploy-client` through the proxy on `port`: `run` of [`SCRIPT`] with `extra` flags.
fn run_script(port: u16, key: &str, args: &str, extra: &[&str]) -> Output {
    let port = port.to_string();
    let mut all = vec![
        "--hosts",
        "127.0.0.1",
        "--port",
        &port,
        "--api-key",
        key,
        "--args",
        args,
        "--order=run",
    ];
    all.extend_from_slice(extra);
    all.extend_from_slice(&["--", "/bin/sh", "-c", SCRIPT]);
    client(&all)
}

/// Checks a `--format=jsonl` stream: per agent, its lines (stdout `one`, `three` in
/// order; stderr `two`) under its own name, then its result relayed `via`; nothing
/// under another name.
fn assert_relayed_lines(out: &Output, names: &BTreeSet<String>, via: &str) {
    let lines = out.json_lines();
    let hosts: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l["host"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(&hosts, names, "every event under an agent's name: {out:#?}");
    for name in names {
        let of_host: Vec<&Value> = lines.iter().filter(|l| l["host"] == *name).collect();
        let stream = |s: &str| -> Vec<&str> {
            of_host
                .iter()
                .filter(|l| l["stream"] == s)
                .filter_map(|l| l["line"].as_str())
                .collect()
        };
        assert_eq!(stream("stdout"), ["one", "three"], "{name}: {out:#?}");
        assert_eq!(stream("stderr"), ["two"], "{name}: {out:#?}");
        let last = of_host.last().expect("events");
        assert_eq!(
            last["order"], "run",
            "{name}: the result comes last: {out:#?}"
        );
        assert_eq!(last["result"]["via"], via, "{name}: {out:#?}");
        assert_eq!(last["result"]["returnCode"], "200", "{name}: {out:#?}");
        assert_eq!(last["result"]["content"]["code"], "0", "{name}: {out:#?}");
    }
}

#[test]
fn follow_relays_each_agents_lines_under_its_name() {
    let agents = Agents::start();
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .server("allow_run", "on")
        .key(API_KEY, "web")
        .servers("web", &agents.agent.addrs)
        .start(dir.path());
    let names = agents.names();
    assert_eq!(names.len(), 2);

    let out = run_script(
        proxy.port(),
        API_KEY,
        "groups:web",
        &["--follow", "--format=jsonl"],
    );
    out.expect_code(0);
    assert_relayed_lines(&out, &names, ID);

    // The default `lines` format prefixes each line with its agent, stdout and stderr
    // apart.
    let out = run_script(proxy.port(), API_KEY, "groups:web", &[]);
    out.expect_code(0);
    let mut got: Vec<&str> = out.stdout.lines().collect();
    got.sort();
    let mut want: Vec<String> = names
        .iter()
        .flat_map(|n| [format!("{n}: one"), format!("{n}: three")])
        .collect();
    want.sort();
    assert_eq!(got, want, "{out:#?}");
    for name in &names {
        assert!(
            out.stderr.lines().any(|l| l == format!("{name}: two")),
            "{name}: {out:#?}"
        );
    }

    // --grouped: each agent's stdout together, under its own name (not the proxy's).
    let out = run_script(proxy.port(), API_KEY, "groups:web", &["--grouped"]);
    out.expect_code(0);
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(got.len(), 4, "{out:#?}");
    for pair in got.chunks(2) {
        let name = pair[0].strip_suffix(": one").expect("one first");
        assert!(names.contains(name), "{out:#?}");
        assert_eq!(pair[1], format!("{name}: three"), "{out:#?}");
    }

    // Without --follow (json), agents do not stream, and the records are as before.
    let out = run_script(proxy.port(), API_KEY, "groups:web", &["--format=jsonl"]);
    out.expect_code(0);
    let lines = out.json_lines();
    assert!(
        lines.iter().all(|l| l.get("stream").is_none()),
        "no output lines without --follow: {out:#?}"
    );
    assert_eq!(lines.len(), 2, "one result per agent: {out:#?}");
    for line in &lines {
        assert_eq!(line["result"]["content"]["code"], json!("0"), "{out:#?}");
        // base64 of the 14 bytes "one\ntwo\nthree\n", stdout and stderr in arrival
        // order (which of the two pipes is read first is not fixed).
        let content = line["result"]["content"]["content"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(content.len(), 20, "{out:#?}");
    }
}

/// Through two proxies, the lines keep the name the inner proxy gave its agents.
#[test]
fn follow_through_a_chain_keeps_the_agents_names() {
    const INNER_SECRET: &str = "inner-server-secret";
    let agents = Agents::start();
    let inner_dir = Sandbox::new();
    let inner = ProxyConfig::new("px-inner")
        .server("allow_run", "on")
        .server("key_cipher", INNER_SECRET)
        .key("inner-key", "web")
        .servers("web", &agents.agent.addrs)
        .start(inner_dir.path());
    let outer_dir = Sandbox::new();
    let outer = ProxyConfig::new("px-outer")
        .server("allow_run", "on")
        .client("proxy_api_key", "inner-key")
        .key(API_KEY, "far")
        .chain("far", inner.addr(), "web")
        .group("far", &[("key_cipher", INNER_SECRET)])
        .start(outer_dir.path());

    let out = run_script(
        outer.port(),
        API_KEY,
        "groups:far",
        &["--follow", "--format=jsonl"],
    );
    out.expect_code(0);
    assert_relayed_lines(&out, &agents.names(), "px-outer > px-inner");
}

/// A v2 peer posing as an agent that answers every request with an output line tagged
/// as another host's, then `200 {"return":"true"}`. Serves until the test binary ends.
fn spoofing_agent() -> std::net::SocketAddr {
    use deploy_common::order::Reply;
    use deploy_common::wire::handshake::{self, ServerParams};
    use deploy_common::wire::message::{Event, Message, Stream, TaggedEvent};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default();
                    let params = ServerParams {
                        key_cipher: KEY,
                        private_key: None,
                        now,
                    };
                    let Ok(mut conn) = handshake::server(stream, params).await else {
                        return;
                    };
                    while let Ok(Some(Message::Request { id, .. })) = conn.recv().await {
                        let forged = Event::Line {
                            stream: Stream::Stdout,
                            line: "forged".into(),
                            partial: false,
                        };
                        let _ = conn
                            .send_event(id, &TaggedEvent::about("victim", forged))
                            .await;
                        // And a forged result for another host, as a proxy would relay.
                        let result = Event::Host {
                            host: "victim".into(),
                            order: "run".into(),
                            result: json!({"return": 1, "content": "forged result"}),
                            via: "nobody".into(),
                        };
                        let _ = conn.send_event(id, &TaggedEvent::from(result)).await;
                        let ok = json!({"return": "true"});
                        let reply = Reply::ok(ok.as_object().cloned().unwrap_or_default());
                        let _ = conn.send(&Message::reply(id, &reply)).await;
                    }
                });
            }
        });
    });
    addr
}

/// Only a chained proxy speaks for other hosts: an agent's events stay its own,
/// whatever name it tags them with.
#[test]
fn an_agent_cannot_speak_for_another_host() {
    let agent = spoofing_agent();
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .key(API_KEY, "web")
        .servers("web", [agent])
        .start(dir.path());
    let out = via_proxy(
        proxy.port(),
        API_KEY,
        "groups:web",
        ECHO,
        &["--follow", "--format=jsonl"],
    );
    out.expect_code(0);
    let lines = out.json_lines();
    let line = lines
        .iter()
        .find(|l| l["line"] == "forged")
        .unwrap_or_else(|| panic!("the line is relayed: {out:#?}"));
    assert_eq!(line["host"], agent.to_string(), "{out:#?}");
    assert!(
        lines.iter().all(|l| l["host"] != "victim"),
        "nothing under the forged name: {out:#?}"
    );
    assert!(
        !out.stdout.contains("forged result"),
        "no result for another host from a plain agent: {out:#?}"
    );
}

/// `deploy-client` through the proxy on `port`, with the proxies' key, as a command.
fn client_command(port: u16, args: &[&str]) -> std::process::Command {
    let port = port.to_string();
    let mut cmd = std::process::Command::new(bins::client());
    cmd.args([
        "--hosts",
        "127.0.0.1",
        "--port",
        &port,
        "--api-key",
        API_KEY,
        "--args",
        "groups:web",
    ])
    .args(args)
    .env_clear()
    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
    .env("DEPLOY_KEY_CIPHER", PROXY_KEY)
    .env("NO_COLOR", "1");
    cmd
}

/// Through the proxy, a second client's `rsync --follow` attaches to the transfer the
/// first one follows; Ctrl-C of the first (exit 130, the `rkill` printed) leaves the
/// transfer running, and the second sees it to its end.
#[test]
fn a_follower_attaches_through_the_proxy_and_outlives_the_starters_ctrl_c() {
    use nix::sys::signal::Signal;
    use std::time::Duration;
    let sb = Sandbox::new();
    let source = sb.join("source");
    // 1.5 MiB at 200 KiB/s: about 7.5 s.
    make_blob(&source.join("big.bin"), 3 << 19);
    let rsyncd = RsyncDaemon::start(&source);
    let agent = AgentConfig::new(&sb)
        .group(
            "medium",
            &[
                ("dest", &rsyncd.url("DEST")),
                ("src", &sb.allowed_str("medium")),
                ("option[]", "--archive"),
                ("option[]", "--bwlimit=200"),
            ],
        )
        .start(&sb);
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .client("thread_timeout", "60")
        .key(API_KEY, "web")
        .servers("web", &agent.addrs)
        .start(dir.path());
    let name = agent.addr().to_string();
    let rsync = ["--order=rsync", "--options=medium", "--follow"];

    let mut starter = Spawned::start(&mut client_command(proxy.port(), &rsync));
    starter.wait_for_stderr(Duration::from_secs(15), |l| {
        l.starts_with(&format!("{name}: "))
    });
    let mut args = rsync.to_vec();
    args.push("--format=jsonl");
    let attached = Spawned::start(&mut client_command(proxy.port(), &args));

    starter.signal(Signal::SIGINT);
    let out = starter.finish(Duration::from_secs(15));
    assert_eq!(out.code, Some(130), "{out:#?}");
    assert!(
        out.stderr.lines().any(|l| l.contains("--order=rkill")
            && l.contains("--args groups:web")
            && l.contains(&format!("--api-key {API_KEY}"))),
        "the rkill command, through the proxy: {out:#?}"
    );

    let out = attached.finish(Duration::from_secs(60));
    out.expect_code(0);
    let lines = out.json_lines();
    let result = lines
        .iter()
        .find(|l| l["order"] == "rsync")
        .unwrap_or_else(|| panic!("a result: {out:#?}"));
    assert_eq!(result["host"], name.as_str(), "{out:#?}");
    assert_eq!(result["result"]["via"], ID, "{out:#?}");
    let content = &result["result"]["content"];
    assert_eq!(content["attached"], "true", "{out:#?}");
    assert_eq!(content["exitCode"], "0", "the transfer went on: {out:#?}");
    assert_same_tree(&source, &sb.allowed().join("medium"));
}
