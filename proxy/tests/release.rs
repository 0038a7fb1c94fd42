//! Releases through the proxy: a rollout to agents whose dests differ (each renders the
//! manifest with its own environment) prepares everywhere then switches everywhere;
//! one agent refusing to prepare means nobody switches; `releases`, `rollback` and
//! `confirm` go through too, over v2 and the HTTP API; and every release record on an
//! agent names the caller's API key by its name (`apikey:<name>`), never by the key nor
//! by what the caller says of itself.

use crate::util::*;
use deploy_testkit::shelf::{version, Shelf};
use serde_json::Value;
use std::path::PathBuf;

/// The proxy's name in these tests.
const ID: &str = "px-rel";
/// The API key of these tests, and its name in `[names]`.
const API_KEY: &str = "release-key-5d1c";
const KEY_NAME: &str = "ci-bot";

/// An agent that deploys from the shelf to `<its sandbox>/allowed/app` (or, with
/// `allowed = false`, one whose `[deploy]` allows no manifest).
fn agent(sb: &Sandbox, shelf: &Shelf, allowed: bool) -> (Agent, PathBuf) {
    let dest = sb.allowed().join("app");
    std::fs::create_dir_all(sb.allowed()).unwrap();
    let prefix = if allowed {
        format!("file://{}/", shelf.path().display())
    } else {
        "file:///nowhere/".to_owned()
    };
    let agent = AgentConfig::new(sb)
        .server("allow_deploy", "on")
        .raw(&format!("[deploy]\nmanifest[] = {prefix}\n"))
        .env("DEST", dest.display())
        .start(sb);
    (agent, dest)
}

/// Three deploying agents (group `fleet`), a fourth that refuses the manifest (group
/// `mixed` = all four), and a proxy with the HTTP API.
struct Setup {
    proxy: Proxy,
    fleet: Vec<(Agent, PathBuf)>,
    refusing: (Agent, PathBuf),
    shelf: Shelf,
    _sbs: Vec<Sandbox>,
}

fn setup() -> Setup {
    let shelf = Shelf::new();
    let sbs: Vec<Sandbox> = (0..5).map(|_| Sandbox::new()).collect();
    let fleet: Vec<(Agent, PathBuf)> = sbs[..3].iter().map(|sb| agent(sb, &shelf, true)).collect();
    let refusing = agent(&sbs[3], &shelf, false);
    let addrs: Vec<String> = fleet.iter().map(|(a, _)| a.addr().to_string()).collect();
    let proxy = ProxyConfig::new(ID)
        .key(API_KEY, "fleet,mixed")
        .name(API_KEY, KEY_NAME)
        .servers("fleet", &addrs)
        .servers("mixed", &addrs)
        .servers("mixed", [refusing.0.addr()])
        .client("thread_timeout", "20")
        .http()
        .start(sbs[4].path());
    Setup {
        proxy,
        fleet,
        refusing,
        shelf,
        _sbs: sbs,
    }
}

impl Setup {
    /// `deploy-client` to the proxy, as `tester`, with `args` then `extra`.
    fn client(&self, args: &str, extra: &[&str]) -> Output {
        let port = self.proxy.port().to_string();
        let mut all = vec![
            "--hosts",
            "127.0.0.1",
            "--port",
            &port,
            "--api-key",
            API_KEY,
            "--args",
            args,
        ];
        all.extend_from_slice(extra);
        client(&all)
    }

    /// The history of the release link of fleet agent `i`, through the proxy.
    fn history(&self, i: usize) -> Vec<Value> {
        let (agent, dest) = &self.fleet[i];
        let host = agent.addr().to_string();
        let out = self.client(
            &format!("hosts:{host}"),
            &["--order=releases", "--dest", &dest.display().to_string()],
        );
        out.expect_code(0);
        let content = &out.json()[&host]["releases"]["content"];
        let history = content["history"]
            .as_str()
            .unwrap_or_else(|| panic!("no history: {out:#?}"));
        serde_json::from_str::<Value>(history)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

#[test]
fn a_rollout_through_the_proxy_switches_every_agent_and_names_the_key() {
    let s = setup();
    let out = s.client(
        "groups:fleet",
        &[
            "--order=deploy",
            "--manifest",
            &s.shelf.manifest("1"),
            "-m",
            "first",
        ],
    );
    out.expect_code(0);
    assert!(
        out.stderr.contains("3 of 3 hosts switched"),
        "every agent behind the proxy switched: {out:#?}"
    );
    assert!(out.stderr.contains("switch skew"), "{out:#?}");
    for (_, dest) in &s.fleet {
        assert_eq!(version(dest), "1");
    }
    let out = s.client(
        "groups:fleet",
        &["--order=deploy", "--manifest", &s.shelf.manifest("2")],
    );
    out.expect_code(0);
    for (_, dest) in &s.fleet {
        assert_eq!(version(dest), "2");
    }
    // Who asked is the key, by name: not tester@host, never the key.
    let history = s.history(0);
    assert_eq!(history.len(), 2, "{history:?}");
    for event in &history {
        assert_eq!(event["action"], "switch");
        assert_eq!(event["who"], format!("apikey:{KEY_NAME}"), "{history:?}");
    }
    assert_eq!(history[0]["message"], "first");
    let (_, dest0) = &s.fleet[0];
    let meta = std::fs::read_dir(dest0.with_file_name("app.releases").join(".meta"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(!meta.contains(API_KEY), "the key itself is never recorded");

    // rollback through v2, for one agent.
    let (agent1, dest1) = &s.fleet[1];
    let out = s.client(
        &format!("hosts:{}", agent1.addr()),
        &[
            "--order=rollback",
            "--dest",
            &dest1.display().to_string(),
            "-m",
            "bad",
        ],
    );
    out.expect_code(0);
    assert_eq!(version(dest1), "1");
    assert_eq!(
        version(&s.fleet[2].1),
        "2",
        "only the named agent rolled back"
    );
    let last = s.history(1).pop().unwrap();
    assert_eq!(
        (&last["action"], &last["who"], &last["message"]),
        (
            &Value::from("rollback"),
            &Value::from(format!("apikey:{KEY_NAME}")),
            &Value::from("bad")
        )
    );
}

#[test]
fn an_agent_refusing_to_prepare_means_nobody_switches() {
    let s = setup();
    let out = s.client(
        "groups:fleet",
        &["--order=deploy", "--manifest", &s.shelf.manifest("1")],
    );
    out.expect_code(0);
    let out = s.client(
        "groups:mixed",
        &["--order=deploy", "--manifest", &s.shelf.manifest("2")],
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("nobody in it switched"), "{out:#?}");
    assert!(
        out.stdout.contains("manifest[]"),
        "the refusal is named: {out:#?}"
    );
    for (_, dest) in &s.fleet {
        assert_eq!(version(dest), "1", "nobody switched");
        let kept = std::fs::read_dir(dest.with_file_name("app.releases"))
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(kept, 1, "the prepared release was discarded");
    }
    assert_eq!(version(&s.refusing.1), "");
}

#[test]
fn the_http_api_carries_release_fields() {
    if !have_curl() {
        return;
    }
    let s = setup();
    let out = s.client(
        "groups:fleet",
        &["--order=deploy", "--manifest", &s.shelf.manifest("1")],
    );
    out.expect_code(0);
    let (agent, dest) = &s.fleet[0];
    let host = agent.addr().to_string();
    let url = |order: &str| format!("http://{}/api/{order}", s.proxy.http());
    let post = |order: &str, body: Value| {
        curl(&[
            "-H",
            &format!("X-Api-Key: {API_KEY}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            &url(order),
        ])
    };
    // A deploy in two phases by hand: prepare, then switch by id alone.
    let out = post(
        "deploy",
        serde_json::json!({"args": format!("hosts:{host}"),
            "release": {"manifest_url": s.shelf.manifest("2"), "phase": "prepare",
                        "message": "by hand"}}),
    );
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{out:#?}"));
    let prepared = &doc[&host]["deploy"]["content"];
    let id = prepared["id"].as_str().unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(version(dest), "1", "prepared, not switched");
    let out = post(
        "deploy",
        serde_json::json!({"args": format!("hosts:{host}"),
            "release": {"phase": "switch", "id": id}}),
    );
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{out:#?}"));
    assert_eq!(doc[&host]["deploy"]["returnCode"], "200", "{doc:#}");
    assert_eq!(version(dest), "2");
    // releases and confirm-less rollback, then what the history says.
    let out = post(
        "rollback",
        serde_json::json!({"args": format!("hosts:{host}"),
            "release": {"dest": dest.display().to_string()}}),
    );
    assert!(out.stdout.contains("\"200\""), "{out:#?}");
    assert_eq!(version(dest), "1");
    let out = post(
        "releases",
        serde_json::json!({"args": format!("hosts:{host}"),
            "release": {"dest": dest.display().to_string()}}),
    );
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{out:#?}"));
    let history: Value = serde_json::from_str(
        doc[&host]["releases"]["content"]["history"]
            .as_str()
            .unwrap_or_else(|| panic!("{doc:#}")),
    )
    .unwrap();
    let whos: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["who"].as_str().unwrap())
        .collect();
    assert_eq!(whos, vec![format!("apikey:{KEY_NAME}"); 3]);
    // A caller cannot say who it is, nor send fields the wire does not know.
    let out = curl(&[
        "-i",
        "-H",
        &format!("X-Api-Key: {API_KEY}"),
        "-d",
        &serde_json::json!({"args": format!("hosts:{host}"),
            "release": {"dest": dest.display().to_string(), "who": "root@elsewhere"}})
        .to_string(),
        &url("confirm"),
    ]);
    assert_eq!(http_parts(&out).0, 400, "{out:#?}");
}
