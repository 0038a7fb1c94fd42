//! `deploy-client scenario …` against real agents with `[scenarios]` on: Octopoda's
//! helloWorld, the barrier between orders, strict and --keep-going failures, scenario
//! versions and reset, and folders refused before anything is sent.

use std::fs;
use std::path::{Path, PathBuf};

use deploy_testkit::{Agent, AgentConfig, ProxyConfig, Sandbox};
use serde_json::Value;

use crate::util::{client, Output};

/// An agent serving scenarios, its workspace under its `[allow::paths]`.
struct Node {
    sb: Sandbox,
    agent: Agent,
}

impl Node {
    fn start() -> Node {
        let sb = Sandbox::new();
        let ws = sb.allowed().join("scenarios/workspace");
        fs::create_dir_all(&ws).unwrap();
        let agent = AgentConfig::new(&sb)
            .raw(&format!(
                "[scenarios]\nenabled = on\nworkspace = {}\n",
                ws.display()
            ))
            .start(&sb);
        Node { sb, agent }
    }

    /// The node as deployment.yaml names it.
    fn name(&self) -> String {
        self.agent.addr().to_string()
    }

    /// A NodeApp's directory.
    fn napp(&self, app: &str, scenario: &str) -> PathBuf {
        self.sb
            .allowed()
            .join(format!("scenarios/workspace/{app}@{scenario}"))
    }
}

/// The helloWorld folder with its two nodes replaced by `a` and `b`.
fn hello_world(dir: &Path, a: &Node, b: &Node) -> PathBuf {
    deploy_testkit::scenario::hello_world(dir, &a.name(), &b.name())
}

async fn scenario(args: &[&str]) -> Output {
    let mut all = vec!["scenario", "--key-cipher=agentsecret"];
    all.extend_from_slice(args);
    client(&all, None).await
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A script file.
fn script(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("#!/bin/sh\n{text}\n")).unwrap();
}

/// Octopoda's README example, unchanged but for its node names: prepare and start by
/// default (orders 1-3 across three apps), then a custom target, stop and purge.
#[tokio::test]
async fn hello_world_on_two_agents() {
    let (a, b) = (Node::start(), Node::start());
    let dir = tempfile::tempdir().unwrap();
    let folder = hello_world(dir.path(), &a, &b);
    let f = folder.to_str().unwrap();
    let out = scenario(&["apply", f, "-m", "first"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let hw = "helloWorld";
    assert_eq!(
        read(a.napp("helloPrinter", hw).join("hello.txt")),
        "-->prepared\nhello\n"
    );
    assert_eq!(
        read(b.napp("worldPrinter", hw).join("world.txt")),
        "-->prepared\nworld\n"
    );
    for n in [&a, &b] {
        assert_eq!(
            read(n.napp("helloWorldPrinter", hw).join("helloworld.txt")),
            "-->prepared\nhelloworld\n"
        );
        // The sources were pushed.
        assert_eq!(
            read(n.napp("helloWorldPrinter", hw).join("README")),
            read(folder.join("helloworld/src/README"))
        );
    }
    assert!(
        !a.napp("worldPrinter", hw).exists(),
        "worldPrinter is b's only"
    );
    // $OCTOPODA_OUTPUT comes back under each step.
    for (node, line) in [
        (&a, "prepared hello"),
        (&b, "prepared world"),
        (&a, "helloworld"),
        (&b, "helloworld"),
    ] {
        assert!(
            out.stdout.contains(&format!("     | {line}")),
            "{node:?}{}",
            out.stdout,
            node = node.name()
        );
    }
    assert!(out.stdout.contains("recorded version "), "{}", out.stdout);

    // The custom target runs only where it is defined, with its output returned.
    let out = scenario(&["apply", f, "date", "--format=json"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let scripts: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s["app"].as_str().unwrap(), s["node"].as_str().unwrap()))
        .collect();
    assert_eq!(scripts.len(), 3, "{scripts:?}");
    assert!(steps
        .iter()
        .all(|s| s["code"] == 0 && !s["output"].as_str().unwrap().is_empty()));
    assert_eq!(
        read(a.napp("helloPrinter", hw).join("hello.txt"))
            .lines()
            .count(),
        3
    );

    let out = scenario(&["apply", f, "stop"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let out = scenario(&["apply", f, "purge"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    for (n, app) in [
        (&a, "helloPrinter"),
        (&b, "worldPrinter"),
        (&a, "helloWorldPrinter"),
        (&b, "helloWorldPrinter"),
    ] {
        assert!(
            !n.napp(app, hw).exists(),
            "{app} on {} not purged",
            n.name()
        );
    }
    // …and the scenario's record with them.
    let out = scenario(&["versions", f]).await;
    assert_eq!(out.stdout, "(0 of 0 versions)\n", "{out:?}");
}

/// One application of a test folder: name, nodes, scripts (target, order, text).
type AppSpec<'a> = (&'a str, Vec<String>, Vec<(&'a str, i64, String)>);

/// A folder of apps whose scripts are given as (app, nodes, [(target, order, text)]).
fn folder(dir: &Path, name: &str, apps: &[AppSpec<'_>]) -> PathBuf {
    let root = dir.join(name);
    let mut yaml = format!("name: {name}\ndescription: test\napplications:\n");
    for (app, nodes, scripts) in apps {
        fs::create_dir_all(root.join(app).join("src")).unwrap();
        fs::write(root.join(app).join("src/content"), format!("{app}\n")).unwrap();
        yaml.push_str(&format!(
            "- name: {app}\n  description: x\n  scriptpath: {app}/scripts\n  sourcepath: {app}/src\n  nodes:\n"
        ));
        for n in nodes {
            yaml.push_str(&format!("    - '{n}'\n"));
        }
        yaml.push_str("  script:\n");
        let mut targets: Vec<&str> = scripts.iter().map(|s| s.0).collect();
        for t in ["prepare", "start", "stop", "purge"] {
            if !targets.contains(&t) {
                targets.push(t);
                script(&root.join(app).join(format!("scripts/{t}.sh")), "true");
                yaml.push_str(&format!(
                    "    - target: {t}\n      file: {t}.sh\n      order: 1\n"
                ));
            }
        }
        for (target, order, text) in scripts {
            script(&root.join(app).join(format!("scripts/{target}.sh")), text);
            yaml.push_str(&format!(
                "    - target: {target}\n      file: {target}.sh\n      order: {order}\n"
            ));
        }
    }
    fs::write(root.join("deployment.yaml"), yaml).unwrap();
    root
}

/// Nothing of order 2 starts before every script of order 1 ended on every node: the
/// order-1 scripts sleep before writing their end marker, the order-2 one writes its
/// start marker first; the shared file's lines must show every end before any start.
#[tokio::test]
async fn orders_are_barriers_across_apps_and_nodes() {
    let (a, b) = (Node::start(), Node::start());
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let m = markers.display();
    let nodes = vec![a.name(), b.name()];
    let slow = format!("sleep 0.3; echo \"end1 $OCTOPODA_APP $OCTOPODA_NODENAME\" >> {m}");
    let slower = format!("sleep 0.6; echo \"end1 $OCTOPODA_APP $OCTOPODA_NODENAME\" >> {m}");
    let second = format!("echo \"start2 $OCTOPODA_APP $OCTOPODA_NODENAME\" >> {m}");
    let root = folder(
        dir.path(),
        "barrier",
        &[
            ("one", nodes.clone(), vec![("go", 1, slow)]),
            ("two", nodes.clone(), vec![("go", 1, slower)]),
            ("three", nodes.clone(), vec![("go", 2, second)]),
        ],
    );
    let out = scenario(&["apply", root.to_str().unwrap(), "go"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let text = read(markers);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let last_end = lines.iter().rposition(|l| l.starts_with("end1")).unwrap();
    let first_start = lines.iter().position(|l| l.starts_with("start2")).unwrap();
    assert!(
        last_end < first_start,
        "an order-2 script started before order 1 ended:\n{text}"
    );
    // The node name a script sees is its node as written.
    for n in [&a, &b] {
        assert!(
            text.contains(&format!("start2 three {}", n.name())),
            "{text}"
        );
    }
}

/// A failing script stops the later orders (exit 1, the step named with its exit code);
/// with --keep-going they run, and the exit status still reports the failure.
#[tokio::test]
async fn failing_script_strict_and_keep_going() {
    let a = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("later");
    let root = folder(
        dir.path(),
        "failing",
        &[
            (
                "bad",
                vec![a.name()],
                vec![("go", 1, "echo oops >&2; exit 3".into())],
            ),
            (
                "later",
                vec![a.name()],
                vec![("go", 2, format!("echo ran >> {}", marker.display()))],
            ),
        ],
    );
    let f = root.to_str().unwrap();
    let out = scenario(&["apply", f, "go"]).await;
    assert_eq!(out.status, 1, "{out:?}");
    assert!(!marker.exists(), "order 2 ran after a failure");
    assert!(
        out.stdout
            .contains(&format!("FAIL {} bad: go go.sh: exit 3", a.name())),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("stopped: a script of target \"go\", order 1 failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("{} bad: oops", a.name())),
        "live stderr line: {}",
        out.stderr
    );

    let out = scenario(&["apply", f, "go", "--keep-going", "--format=json"]).await;
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(read(marker), "ran\n");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let bad = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app"] == "bad")
        .unwrap();
    assert_eq!(bad["code"], 3);
    assert_eq!(bad["target"], "go");
    assert_eq!(bad["script"], "go.sh");
    assert_eq!(bad["node"], a.name());
}

/// Three prepares with three contents give three scenario versions; a reset to the
/// first puts its content back on every node and records a fourth (A→B→C→A).
#[tokio::test]
async fn scenario_versions_and_reset() {
    let (a, b) = (Node::start(), Node::start());
    let dir = tempfile::tempdir().unwrap();
    let root = folder(
        dir.path(),
        "versions",
        &[("app", vec![a.name(), b.name()], vec![])],
    );
    let f = root.to_str().unwrap();
    let content = root.join("app/src/content");
    let mut ids = Vec::new();
    for v in ["A", "B", "C"] {
        fs::write(&content, v).unwrap();
        let out = scenario(&["apply", f, "prepare", "-m", v, "--format=json"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        let report: Value = serde_json::from_str(&out.stdout).unwrap();
        let id = report["recorded"]["id"]
            .as_str()
            .expect("a version")
            .to_owned();
        assert_eq!(report["recorded"]["message"], v);
        ids.push(id);
    }
    // The same content again changes no NodeApp: no new scenario version.
    let out = scenario(&["apply", f, "prepare", "--format=json"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(report.get("recorded").is_none(), "{report}");

    let out = scenario(&["versions", f, "--format=json"]).await;
    let page: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(page["total"], 3);
    let messages: Vec<&str> = page["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["C", "B", "A"]);

    // Too short a prefix is refused before anything is sent.
    let out = scenario(&["reset", f, "-v", &ids[0][..2], "-m", "back"]).await;
    assert_eq!(out.status, 2, "{out:?}");
    let out = scenario(&["reset", f, "-v", &ids[0][..6], "-m", "back to A"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    for n in [&a, &b] {
        assert_eq!(read(n.napp("app", "versions").join("content")), "A");
    }
    let out = scenario(&["versions", f, "--format=json"]).await;
    let page: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(page["total"], 4);
    let newest = &page["versions"][0];
    assert_eq!(newest["message"], "back to A");
    assert_eq!(newest["restores"], ids[0].as_str());
    // The text listing, newest first.
    let out = scenario(&["versions", f, "-l", "2"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].ends_with(&format!("back to A (reset to {})", &ids[0][..12])),
        "{}",
        out.stdout
    );
    assert!(lines[1].ends_with("  C"), "{}", out.stdout);
    assert_eq!(lines[2], "(2 of 4 versions)");
}

/// A folder that names a path outside itself, or a script outside its scriptpath, is
/// refused before any connection is made to its nodes.
#[tokio::test]
async fn escapes_are_refused_before_anything_is_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let node = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let root = folder(dir.path(), "escape", &[("app", vec![node.clone()], vec![])]);
    let yaml = fs::read_to_string(root.join("deployment.yaml")).unwrap();
    fs::write(
        root.join("deployment.yaml"),
        yaml.replace("sourcepath: app/src", "sourcepath: ../../etc"),
    )
    .unwrap();
    let out = scenario(&["apply", root.to_str().unwrap()]).await;
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("\"../../etc\" is outside the scenario folder"),
        "{}",
        out.stderr
    );

    // A script outside scriptpath, though inside the folder.
    script(&root.join("other.sh"), "true");
    fs::write(
        root.join("deployment.yaml"),
        yaml.replace("file: start.sh", "file: ../../other.sh"),
    )
    .unwrap();
    let out = scenario(&["apply", root.to_str().unwrap()]).await;
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stderr.contains("is outside scriptpath"),
        "{}",
        out.stderr
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection reached the node"
    );
}

/// `@group` nodes go through a proxy with its own secret: each of the group's agents
/// runs the script and is reported under the proxy's name for it; a commit records a
/// version naming them, and a reset goes back through the proxy to each. A prepare
/// through the proxy is refused by it (it does not relay the sources).
#[tokio::test]
async fn groups_through_a_proxy() {
    let (a, b) = (Node::start(), Node::start());
    let pdir = Sandbox::new();
    let proxy = ProxyConfig::new("px")
        .key("scenario-key", "web")
        .servers("web", &[a.name(), b.name()])
        .start(pdir.path());
    let dir = tempfile::tempdir().unwrap();
    // The NodeApps are prepared directly (the proxy does not carry sources)…
    let direct = folder(
        dir.path(),
        "grp",
        &[("app", vec![a.name(), b.name()], vec![])],
    );
    let out = scenario(&["apply", direct.to_str().unwrap(), "prepare"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    // …then driven through the proxy, from another folder of the same scenario.
    let other = dir.path().join("through");
    fs::create_dir_all(&other).unwrap();
    let via = folder(
        &other,
        "grp",
        &[(
            "app",
            vec!["@web".into()],
            vec![(
                "hi",
                1,
                "echo \"hi from $OCTOPODA_APP\" >> \"$OCTOPODA_OUTPUT\"".into(),
            )],
        )],
    );
    let f = via.to_str().unwrap();
    let port = format!("127.0.0.1:{}", proxy.port());
    let through = |args: &[&str]| {
        let mut all = vec![
            "apply",
            "--proxy",
            &port,
            "--api-key=scenario-key",
            "--proxy-key-cipher=proxysecret",
        ];
        all.extend_from_slice(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        scenario(&refs).await
    };
    let out = run(through(&[f, "hi", "--format=json"])).await;
    assert_eq!(out.status, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut nodes: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["output"], "hi from app\n", "{s}");
            s["node"].as_str().unwrap()
        })
        .collect();
    nodes.sort();
    let mut want = [a.name(), b.name()];
    want.sort();
    assert_eq!(nodes, want);

    let out = run(through(&[f, "commit", "-m", "one", "--format=json"])).await;
    assert_eq!(out.status, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let first = report["recorded"]["id"].as_str().unwrap().to_owned();
    let map = report["recorded"]["map"].as_object().unwrap();
    assert_eq!(map.len(), 2, "{map:?}");
    fs::write(a.napp("app", "grp").join("content"), "changed by hand").unwrap();
    let out = run(through(&[f, "commit", "-m", "two"])).await;
    assert_eq!(out.status, 0, "{out:?}");

    let mut reset = through(&[f, "-v", &first[..8], "-m", "back"]);
    reset[0] = "reset".into();
    let out = run(reset).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(read(a.napp("app", "grp").join("content")), "app\n");

    // Sources go through the proxy too: this folder's, to both agents of the group.
    fs::write(via.join("app/src/content"), "through the proxy\n").unwrap();
    let out = run(through(&[f, "prepare"])).await;
    assert_eq!(out.status, 0, "{out:?}");
    for node in [&a, &b] {
        assert_eq!(
            read(node.napp("app", "grp").join("content")),
            "through the proxy\n"
        );
    }
}

/// A scenario whose nodes are all a proxy's group, applied from scratch through it:
/// `prepare` pushes the sources (the proxy relays the tar body to every agent), the
/// prepare scripts run in the pushed tree, and a NodeApp version is recorded on each.
#[tokio::test]
async fn prepare_through_a_proxy() {
    let (a, b) = (Node::start(), Node::start());
    let pdir = Sandbox::new();
    let proxy = ProxyConfig::new("px-prep")
        .key("scenario-key", "web")
        .servers("web", &[a.name(), b.name()])
        .start(pdir.path());
    let dir = tempfile::tempdir().unwrap();
    let f = folder(
        dir.path(),
        "prep",
        &[(
            "app",
            vec!["@web".into()],
            vec![("prepare", 1, "cat content >> \"$OCTOPODA_OUTPUT\"".into())],
        )],
    );
    fs::create_dir_all(f.join("app/src/sub")).unwrap();
    fs::write(f.join("app/src/sub/deep.txt"), "deep\n").unwrap();
    let port = format!("127.0.0.1:{}", proxy.port());
    let out = scenario(&[
        "apply",
        "--proxy",
        &port,
        "--api-key=scenario-key",
        "--proxy-key-cipher=proxysecret",
        f.to_str().unwrap(),
        "prepare",
        "--format=json",
    ])
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let outputs: Vec<&Value> = steps.iter().filter(|s| s["action"] == "script").collect();
    assert_eq!(outputs.len(), 2, "{report:#}");
    for step in outputs {
        assert_eq!(step["output"], "app\n", "{step}");
    }
    for node in [&a, &b] {
        assert_eq!(read(node.napp("app", "prep").join("content")), "app\n");
        assert_eq!(
            read(node.napp("app", "prep").join("sub/deep.txt")),
            "deep\n"
        );
    }
    let map = report["recorded"]["map"].as_object().unwrap();
    assert_eq!(map.len(), 2, "{report:#}");
}

/// `napp get|versions|reset` on one node: the versions of a NodeApp newest first, and a
/// reset that puts an older tree back and records it again.
#[tokio::test]
async fn napp_views_and_reset() {
    let a = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let root = folder(dir.path(), "nv", &[("app", vec![a.name()], vec![])]);
    let f = root.to_str().unwrap();
    for v in ["one", "two"] {
        fs::write(root.join("app/src/content"), v).unwrap();
        let out = scenario(&["apply", f, "prepare", "-m", v]).await;
        assert_eq!(out.status, 0, "{out:?}");
    }
    let napp = |args: &[&str]| {
        let mut all = vec!["napp", "--key-cipher=agentsecret"];
        all.extend_from_slice(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        client(&refs, None).await
    };
    let host = a.name();
    let out = run(napp(&["versions", &host, "app@nv", "--format=json"])).await;
    assert_eq!(out.status, 0, "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let versions = doc["versions"].as_array().unwrap();
    let messages: Vec<&str> = versions
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["two", "one"]);
    let one = versions[1]["version"].as_str().unwrap().to_owned();

    let out = run(napp(&[
        "reset",
        &host,
        "app@nv",
        "-v",
        &one[..5],
        "-m",
        "undo",
    ]))
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("reset to {}", &one[..12])),
        "{}",
        out.stdout
    );
    assert_eq!(read(a.napp("app", "nv").join("content")), "one");
    let out = run(napp(&["versions", &host, "app@nv", "-l", "1"])).await;
    assert!(
        out.stdout.lines().next().unwrap().ends_with("undo *"),
        "{}",
        out.stdout
    );

    let out = run(napp(&["get", &host, "@nv"])).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.starts_with("app@nv  current "), "{}", out.stdout);
    // A short prefix is refused here; a bad name too.
    let out = run(napp(&["reset", &host, "app@nv", "-v", "ab", "-m", "x"])).await;
    assert_eq!(out.status, 2, "{out:?}");
    let out = run(napp(&["versions", &host, "../x@nv"])).await;
    assert_eq!(out.status, 2, "{out:?}");
}

/// `ssh://` nodes beside an agent: sources pushed and scripts run over SSH with the
/// same variables, their lines live and their `$OCTOPODA_OUTPUT` returned; purge
/// removes their NodeApps. Scenario versions name the agent's NodeApps and the SSH
/// hosts' (kept on the hosts, `ssh_scenario`).
#[tokio::test]
async fn ssh_hosts_beside_an_agent() {
    let Some(c) = deploy_testkit::sshd::cluster() else {
        eprintln!("skipped: no sshd cluster (needs root and /usr/sbin/sshd)");
        return;
    };
    let agent = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let ssh = crate::ssh_scenario::Ssh::new(dir.path()).expect("the sshd cluster");
    let (s0, s1) = (c.spec(0), c.spec(1));
    let root = folder(
        dir.path(),
        "mixed",
        &[
            (
                "web",
                vec![s0.clone(), s1.clone()],
                vec![(
                    "prepare",
                    1,
                    "echo \"line from $OCTOPODA_NODENAME\"; cat content >> \"$OCTOPODA_OUTPUT\"; \
                     echo \"$OCTOPODA_APP $OCTOPODA_SCENARIO $PWD\" >> \"$OCTOPODA_OUTPUT\""
                        .into(),
                )],
            ),
            ("db", vec![agent.name()], vec![]),
        ],
    );
    let f = root.to_str().unwrap();
    let out = ssh
        .run("scenario", &["apply", f, "prepare", "-m", "one"])
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    for (i, spec) in [(0, &s0), (1, &s1)] {
        let port = c.hosts[i].1;
        let napp = dir.path().join(format!("ssh/{port}/ws/web@mixed"));
        assert_eq!(read(napp.join("content")), "web\n");
        // Live lines, prefixed with node and app.
        assert!(
            out.stdout
                .contains(&format!("{spec} web: line from {spec}")),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .contains(&format!("     | web mixed {}", napp.display())),
            "{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("recorded version"), "{}", out.stdout);
    let out = ssh.run("scenario", &["versions", f, "--format=json"]).await;
    let page: Value = serde_json::from_str(&out.stdout).unwrap();
    let map = page["versions"][0]["map"].as_object().unwrap();
    let mut want = vec![agent.name(), s0.clone(), s1.clone()];
    want.sort();
    assert_eq!(map.keys().cloned().collect::<Vec<_>>(), want, "{map:?}");

    let out = ssh.run("scenario", &["apply", f, "purge"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    for i in 0..2 {
        let port = c.hosts[i].1;
        assert!(!dir.path().join(format!("ssh/{port}/ws/web@mixed")).exists());
    }
}

/// `sourcepath: ./` sends the whole folder but for its `.deploy/` (the scenario
/// versions): recording a version does not change the NodeApps, so the next prepare of
/// the same folder records none.
#[tokio::test]
async fn the_folders_own_records_are_not_pushed() {
    let a = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let root = folder(dir.path(), "whole", &[("app", vec![a.name()], vec![])]);
    let yaml = fs::read_to_string(root.join("deployment.yaml")).unwrap();
    fs::write(
        root.join("deployment.yaml"),
        yaml.replace("sourcepath: app/src", "sourcepath: ./"),
    )
    .unwrap();
    let f = root.to_str().unwrap();
    let out = scenario(&["apply", f, "prepare", "--format=json"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(report.get("recorded").is_some(), "{report}");
    assert!(root.join(".deploy/scenario-versions.jsonl").exists());
    let napp = a.napp("app", "whole");
    assert!(napp.join("deployment.yaml").exists());
    assert!(
        !napp.join(".deploy").exists(),
        "the versions file was pushed"
    );
    let out = scenario(&["apply", f, "prepare", "--format=json"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(report.get("recorded").is_none(), "{report}");
}

/// Applied through a proxy, scenario versions are the proxy's (redb in its state dir):
/// recorded there (nothing beside the folder), seen by a second client from a copy of
/// the folder elsewhere, kept across a restart of the proxy, and reset through them.
#[tokio::test]
async fn versions_kept_by_the_proxy() {
    let (a, b) = (Node::start(), Node::start());
    let pdir = Sandbox::new();
    let config = ProxyConfig::new("px-versions")
        .key("scenario-key", "web")
        .servers("web", &[a.name(), b.name()]);
    let proxy = config.start(pdir.path());
    let apps: Vec<AppSpec<'_>> = vec![("app", vec!["@web".into()], vec![])];
    let one = tempfile::tempdir().unwrap();
    let first = folder(one.path(), "shared", &apps);
    let two = tempfile::tempdir().unwrap();
    let second = folder(two.path(), "shared", &apps);
    let through = |port: u16, args: &[&str]| {
        let port = format!("127.0.0.1:{port}");
        let mut all: Vec<String> = vec![args[0].into()];
        all.extend(
            [
                "--proxy",
                &port,
                "--api-key=scenario-key",
                "--proxy-key-cipher=proxysecret",
            ]
            .map(String::from),
        );
        all.extend(args[1..].iter().map(|s| s.to_string()));
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            scenario(&refs).await
        }
    };
    let f1 = first.to_str().unwrap();
    let out = through(proxy.port(), &["apply", f1, "prepare", "-m", "one"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    fs::write(a.napp("app", "shared").join("content"), "changed\n").unwrap();
    let out = through(proxy.port(), &["apply", f1, "commit", "-m", "two"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        !first.join(".deploy/scenario-versions.jsonl").exists(),
        "versions went beside the folder"
    );

    // Another client, another folder of the same scenario: the same history.
    let f2 = second.to_str().unwrap();
    let listed = |out: &crate::util::Output| -> Vec<(String, String)> {
        let page: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(page["total"], 2, "{page:#}");
        page["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["id"].as_str().unwrap().to_owned(),
                    v["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let out = through(proxy.port(), &["versions", f2, "--format=json"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let before = listed(&out);
    assert_eq!(
        before.iter().map(|v| v.1.as_str()).collect::<Vec<_>>(),
        ["two", "one"]
    );

    // After a restart of the proxy (a new port, the same state dir).
    drop(proxy);
    let proxy = config.start(pdir.path());
    let out = through(proxy.port(), &["versions", f2, "--format=json"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(listed(&out), before);

    // And a reset from the second folder goes back to the first version.
    let out = through(
        proxy.port(),
        &["reset", f2, "-v", &before[1].0[..8], "-m", "back"],
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(read(a.napp("app", "shared").join("content")), "app\n");
}
