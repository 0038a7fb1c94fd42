//! `ssh://` servers behind the proxy: the real deploy-proxy, whose group `mixed` holds
//! hosts of the testkit's sshd cluster (real sshd on 127.0.0.11–20, logging in as root
//! with a generated key) and a real agent, driven by the real deploy-client with
//! `--order=run`; then the proxy's authorization of `ssh://` hosts (keys → groups →
//! hosts, `[orders]`, `[server] allow_run`) and its strict host-key checking.
//!
//! The cluster needs root and `/usr/sbin/sshd`; without them
//! [`sshd::cluster`](deploy_testkit::sshd::cluster) prints why and these tests return
//! early. The proxy reads nothing of the machine's SSH setup: its `[ssh]` names the key,
//! the known_hosts file and an empty ssh_config in the test's directories.

use crate::util::*;
use deploy_testkit::sshd::{self, Cluster};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// The proxy's name in these tests.
const ID: &str = "px-ssh";
/// May address `mixed` (SSH hosts and an agent).
const RUN_KEY: &str = "run-key";
/// May address only `other` (the agent).
const OTHER_KEY: &str = "other-key";
/// May address `mixed`, but `[orders]` allows it only `exec` and `status`.
const EXEC_KEY: &str = "exec-key";

/// `base64("hi\n")`.
const HI: &str = "aGkK";

/// One proxy in front of some cluster hosts and one agent with `allow_run = on`.
struct Site {
    proxy: Proxy,
    /// The SSH hosts as written in the API file (`ssh://127.0.0.1x:port`).
    ssh: Vec<String>,
    /// The agent as the proxy names it (`127.0.0.1:port`).
    agent: String,
    _agent: Agent,
    _agent_sb: Sandbox,
    _home: tempfile::TempDir,
    _dir: Sandbox,
}

impl Site {
    /// Every server of `mixed`, as results name them.
    fn names(&self) -> BTreeSet<String> {
        self.ssh
            .iter()
            .cloned()
            .chain([self.agent.clone()])
            .collect()
    }

    /// deploy-client through the proxy with `key` and `args`, then `extra`.
    fn client(&self, key: &str, args: &str, extra: &[&str]) -> Output {
        let port = self.proxy.port().to_string();
        let mut all = vec![
            "--hosts",
            "127.0.0.1",
            "--port",
            &port,
            "--api-key",
            key,
            "--args",
            args,
        ];
        all.extend_from_slice(extra);
        client(&all)
    }
}

/// `[ssh]` from a HOME made by [`sshd::home`] (its key and known_hosts), and an empty
/// ssh_config in `dir`, so that nothing of the machine's SSH setup is read.
fn ssh_options(config: ProxyConfig, home: &Path, dir: &Path) -> ProxyConfig {
    let ssh_config = dir.join("ssh_config");
    std::fs::write(&ssh_config, "").expect("write ssh_config");
    config
        .ssh("identity", home.join(".ssh/id_ed25519").display())
        .ssh("known_hosts", home.join(".ssh/known_hosts").display())
        .ssh("config", ssh_config.display())
}

/// Cluster hosts `hosts` and an agent in `mixed`, the agent alone in `other`; the keys
/// above; `allow_run = on`; then `config` for the test's own changes.
fn site(c: &Cluster, hosts: &[usize], config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Site {
    let agent_sb = Sandbox::new();
    let agent = AgentConfig::new(&agent_sb)
        .server("allow_run", "on")
        .start(&agent_sb);
    let home = sshd::home(c, true);
    let dir = Sandbox::new();
    let ssh: Vec<String> = hosts.iter().map(|&i| c.spec(i)).collect();
    let base = ProxyConfig::new(ID)
        .server("allow_run", "on")
        .key(RUN_KEY, "mixed")
        .key(OTHER_KEY, "other")
        .key(EXEC_KEY, "mixed")
        .orders(EXEC_KEY, "exec,status")
        .servers("mixed", &ssh)
        .servers("mixed", [agent.addr()])
        .servers("other", [agent.addr()]);
    let proxy = config(ssh_options(base, home.path(), dir.path())).start(dir.path());
    Site {
        proxy,
        ssh,
        agent: agent.addr().to_string(),
        _agent: agent,
        _agent_sb: agent_sb,
        _home: home,
        _dir: dir,
    }
}

/// The `content` of a successful `run` record, checked on the way: relayed via the
/// proxy, 200, and `return`/`code` agree with `code`.
fn ran<'a>(host: &str, record: &'a Map<String, Value>, code: &str, out: &Output) -> &'a Value {
    assert_eq!(record["via"], ID, "{host}: {out:#?}");
    assert_eq!(record["returnCode"], "200", "{host}: {out:#?}");
    let content = &record["content"];
    assert_eq!(content["code"], code, "{host}: {out:#?}");
    let ok = if code == "0" { "true" } else { "false" };
    assert_eq!(content["return"], ok, "{host}: {out:#?}");
    content
}

/// The proxy's own refusal: one record under the proxy's name, `code` and `text`.
fn assert_refused_run(out: &Output, code: &str, text: &str) {
    let (host, record) = only_record(out, "run");
    assert_eq!(
        host, "127.0.0.1",
        "the refusal is the proxy's own: {out:#?}"
    );
    assert_eq!(record["returnCode"], code, "{out:#?}");
    assert_eq!(record["content"], text, "{out:#?}");
    out.expect_code(1);
}

#[test]
fn ssh_hosts_and_an_agent_run_through_the_proxy() {
    let Some(c) = sshd::cluster() else { return };
    let site = site(c, &[0, 1, 2], |p| p);
    let names = site.names();
    assert_eq!(names.len(), 4);

    // The default `lines` format: every host's line under its own name, not the
    // proxy's (the agent's and the SSH hosts' lines are relayed tagged).
    let out = site.client(
        RUN_KEY,
        "groups:mixed",
        &["--order=run", "--", "echo", "hi"],
    );
    out.expect_code(0);
    let mut got: Vec<&str> = out.stdout.lines().collect();
    got.sort();
    let want: Vec<String> = names.iter().map(|n| format!("{n}: hi")).collect();
    assert_eq!(got, want, "{out:#?}");

    // The original's document: one record per host, at top level, via the proxy.
    let out = site.client(
        RUN_KEY,
        "groups:mixed",
        &["--order=run", "--format=json", "--", "echo", "hi"],
    );
    out.expect_code(0);
    let got = records(&out, "run");
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), names);
    for (host, record) in &got {
        assert_eq!(ran(host, record, "0", &out)["content"], HI, "{host}");
    }

    // A failing command fails on every host, each with its own record.
    let out = site.client(
        RUN_KEY,
        "groups:mixed",
        &["--order=run", "--format=json", "--", "false"],
    );
    out.expect_code(1);
    let got = records(&out, "run");
    assert_eq!(got.len(), 4, "{out:#?}");
    for (host, record) in &got {
        ran(host, record, "1", &out);
    }
}

/// `--stdin` and `--sudo` pass through the proxy to agents and SSH hosts alike.
#[test]
fn stdin_and_sudo_pass_through_the_proxy() {
    let Some(c) = sshd::cluster() else { return };
    let site = site(c, &[3, 4], |p| p);
    let input = site._dir.join("input.txt");
    std::fs::write(&input, "from stdin\nsecond line\n").expect("write input");
    let stdin = format!("--stdin={}", input.display());
    let out = site.client(
        RUN_KEY,
        "groups:mixed",
        &["--order=run", "--format=json", &stdin, "--", "cat"],
    );
    out.expect_code(0);
    let got = records(&out, "run");
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), site.names());
    for (host, record) in &got {
        let content = ran(host, record, "0", &out);
        // base64("from stdin\nsecond line\n")
        assert_eq!(
            content["content"], "ZnJvbSBzdGRpbgpzZWNvbmQgbGluZQo=",
            "{host}"
        );
    }

    if !Path::new("/usr/bin/sudo").exists() {
        eprintln!("note: sudo is not installed; skipping the --sudo part");
        return;
    }
    let out = site.client(
        RUN_KEY,
        "groups:mixed",
        &["--order=run", "--format=json", "--sudo", "--", "id", "-u"],
    );
    out.expect_code(0);
    for (host, record) in &records(&out, "run") {
        let content = ran(host, record, "0", &out);
        assert_eq!(content["content"], "MAo=", "{host}: base64(\"0\\n\")");
    }
}

/// The proxy's authorization covers `ssh://` hosts as it covers agents.
#[test]
fn a_key_without_the_group_is_refused_for_ssh_hosts() {
    let Some(c) = sshd::cluster() else { return };
    let site = site(c, &[5], |p| p);
    let host = c.spec(5);
    let ip = &c.hosts[5].0;
    let run = ["--order=run", "--format=json", "--", "echo", "hi"];

    // The SSH host by its entry or by its address, or its group: refused.
    for args in [
        format!("hosts:{host}"),
        format!("hosts:{ip}"),
        "groups:mixed".to_owned(),
    ] {
        let out = site.client(OTHER_KEY, &args, &run);
        let item = args.split_once(':').map(|(_, i)| i).unwrap_or_default();
        assert_refused_run(
            &out,
            "403",
            &format!("You don't have permission to access on this[{item}]."),
        );
    }
    // Its own group is fine for that key (the agent only)…
    let out = site.client(OTHER_KEY, "groups:other", &run);
    out.expect_code(0);
    assert_eq!(
        records(&out, "run").keys().collect::<Vec<_>>(),
        [&site.agent]
    );
    // …and the SSH host for a key with its group.
    let out = site.client(RUN_KEY, &format!("hosts:{host}"), &run);
    out.expect_code(0);
    let got = records(&out, "run");
    assert_eq!(got.keys().collect::<Vec<_>>(), [&host]);
    assert_eq!(ran(&host, &got[&host], "0", &out)["content"], HI);

    // [orders] applies: this key may address the group, but not send `run`.
    let out = site.client(EXEC_KEY, "groups:mixed", &run);
    assert_refused_run(&out, "403", "This API key may not send the order [run].");

    // And `run` needs the proxy's own allow_run.
    let dir = Sandbox::new();
    let home = sshd::home(c, true);
    let off = ssh_options(
        ProxyConfig::new("px-norun")
            .key(RUN_KEY, "mixed")
            .servers("mixed", [&host]),
        home.path(),
        dir.path(),
    )
    .start(dir.path());
    let port = off.port().to_string();
    let out = client(&[
        "--hosts",
        "127.0.0.1",
        "--port",
        &port,
        "--api-key",
        RUN_KEY,
        "--args",
        "groups:mixed",
        "--order=run",
        "--format=json",
        "--",
        "echo",
        "hi",
    ]);
    assert_refused_run(
        &out,
        "403",
        "run is disabled on this proxy (allow_run = off)",
    );
}

/// An unknown host key is refused (the host's record says why, and the run exits 3);
/// with `accept_new_host_keys = on` it is recorded in the known_hosts file and the run
/// goes on. A changed key would be refused either way (see the ssh module's tests).
#[test]
fn unknown_host_keys_are_refused_unless_accepted() {
    let Some(c) = sshd::cluster() else { return };
    let host = c.spec(6);
    let (ip, port, key) = &c.hosts[6];
    let run = ["--order=run", "--format=json", "--", "echo", "hi"];
    for accept in [false, true] {
        let dir = Sandbox::new();
        let home = sshd::home(c, false);
        let known = home.path().join(".ssh/known_hosts");
        let mut config = ProxyConfig::new(ID)
            .server("allow_run", "on")
            .key(RUN_KEY, "mixed")
            .servers("mixed", [&host]);
        config = ssh_options(config, home.path(), dir.path());
        if accept {
            config = config.ssh("accept_new_host_keys", "on");
        }
        let proxy = config.start(dir.path());
        let proxy_port = proxy.port().to_string();
        let out = client(
            &[
                "--hosts",
                "127.0.0.1",
                "--port",
                &proxy_port,
                "--api-key",
                RUN_KEY,
                "--args",
                "groups:mixed",
            ]
            .into_iter()
            .chain(run)
            .collect::<Vec<_>>(),
        );
        let (name, record) = only_record(&out, "run");
        assert_eq!(name, host, "{out:#?}");
        if accept {
            out.expect_code(0);
            assert_eq!(ran(&host, &record, "0", &out)["content"], HI);
            let recorded = std::fs::read_to_string(&known).expect("known_hosts written");
            assert!(
                recorded.contains(&format!("[{ip}]:{port} {key}")),
                "{recorded:?}"
            );
        } else {
            out.expect_code(3);
            let why = record["content"].as_str().unwrap_or_default();
            assert!(why.contains("is not known"), "{record:?}");
            assert_eq!(record["via"], json!(ID), "{record:?}");
            assert!(
                !known.exists(),
                "nothing recorded without accept_new_host_keys"
            );
        }
    }
}
