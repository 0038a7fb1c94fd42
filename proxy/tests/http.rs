//! The HTTP/JSON API (`[client] http_listen`) driven by `curl`: `POST /api/<order>` with
//! `X-Api-Key` answers the merged document, or with `Accept: application/x-ndjson` one
//! line per agent as it answers and a closing `{"done":true,…}`; errors are JSON with
//! their status (401 without a key, 403 for a refused key or caller). Each test is
//! skipped, with a note, where curl is not installed.

use crate::util::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const ID: &str = "px-http";
const API_KEY: &str = "http-key";
const BODY: &str = r#"{"options":"service:echo,hi","args":"groups:web"}"#;

struct Setup {
    proxy: Proxy,
    web: Farm,
    _dir: Sandbox,
}

fn setup(net: u8, config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Setup {
    let web = Farm::start(net, 1, 3, KEY);
    let dir = Sandbox::new();
    let proxy = config(
        ProxyConfig::new(ID)
            .http()
            .key(API_KEY, "web")
            .servers("web", &web.addrs),
    )
    .start(dir.path());
    Setup {
        proxy,
        web,
        _dir: dir,
    }
}

impl Setup {
    fn url(&self, order: &str) -> String {
        format!("http://{}/api/{order}", self.proxy.http())
    }
}

/// The record of a successful `/bin/echo hi`, as the HTTP document holds it (no `via`).
fn echo_record() -> Value {
    json!({
        "return": 1,
        "serverStatus": 1,
        "returnCode": "200",
        "returnString": "OK",
        "content": {"return": "true", "command": ECHO_COMMAND, "content": ECHO_CONTENT},
    })
}

/// Asserts a merged document: exactly `hosts`, each `{exec: <echo record>}`.
fn assert_merged(body: &str, hosts: &BTreeSet<String>) {
    let doc: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    let doc = doc
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(
        &doc.keys().cloned().collect::<BTreeSet<_>>(),
        hosts,
        "{body}"
    );
    for (host, by_order) in doc {
        assert_eq!(by_order, &json!({"exec": echo_record()}), "{host}");
    }
}

#[test]
fn post_exec_returns_the_merged_document() {
    if !have_curl() {
        return;
    }
    let s = setup(41, |c| c);
    let out = curl(&[
        "-i",
        "-H",
        &format!("X-Api-Key: {API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        BODY,
        &s.url("exec"),
    ]);
    out.expect_code(0);
    let (code, headers, body) = http_parts(&out);
    assert_eq!(code, 200, "{out:#?}");
    assert_eq!(headers["content-type"], "application/json");
    let names: BTreeSet<String> = s.web.names().into_iter().collect();
    assert_merged(&body, &names);

    // A form body and a bearer token work too.
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {API_KEY}"),
        "--data-urlencode",
        "options=service:echo,hi",
        "--data-urlencode",
        "args=groups:web",
        &s.url("exec"),
    ]);
    assert_merged(&out.stdout, &names);
}

#[test]
fn the_readme_curl_line_works() {
    if !have_curl() {
        return;
    }
    let s = setup(42, |c| c);
    // Exactly the README's form: no Content-Type, no Accept.
    let out = run_command(
        Command::new("curl").args([
            "-s",
            "-H",
            &format!("X-Api-Key: {API_KEY}"),
            "-d",
            BODY,
            &s.url("exec"),
        ]),
        RUN_LIMIT,
    );
    out.expect_code(0);
    assert_merged(&out.stdout, &s.web.names().into_iter().collect());
}

#[test]
fn ndjson_streams_one_line_per_agent_then_done() {
    if !have_curl() {
        return;
    }
    let silent = Silent::start(ip(43, 250, 1));
    let s = setup(43, |c| {
        c.client("thread_timeout", 2).servers("web", [silent.addr])
    });
    let out = curl(&[
        "-i",
        "-N",
        "-H",
        &format!("X-Api-Key: {API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/x-ndjson",
        "-d",
        BODY,
        &s.url("exec"),
    ]);
    out.expect_code(0);
    let (code, headers, body) = http_parts(&out);
    assert_eq!(code, 200, "{out:#?}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 5, "3 agents, the silent one, done: {body}");
    assert_eq!(lines[4], json!({"done": true, "hosts": 4}));
    let slow = silent.addr.to_string();
    let mut fast = BTreeSet::new();
    for line in &lines[..4] {
        let host = line["host"].as_str().expect("host").to_owned();
        assert_eq!(line["order"], "exec", "{line}");
        assert_eq!(line["via"], ID, "{line}");
        if host == slow {
            assert_eq!(line["result"]["content"], "Process Timeout(2)!", "{line}");
            assert_eq!(line["result"]["serverStatus"], 0, "{line}");
        } else {
            assert_eq!(line["result"], echo_record(), "{host}");
            fast.insert(host);
        }
    }
    assert_eq!(
        lines[3]["host"],
        slow.as_str(),
        "the silent agent comes last"
    );
    assert_eq!(fast, s.web.names().into_iter().collect());

    // Streamed: the answering agents' lines came well before the silent one's.
    let at = |needle: &str| {
        out.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no line with {needle}: {out:#?}"))
    };
    let slow_at = at(&format!("\"host\":\"{slow}\""));
    for host in s.web.names() {
        let t = at(&format!("\"host\":\"{host}\""));
        assert!(
            t + Duration::from_secs(1) < slow_at,
            "{host}'s line at {t:?}, the silent agent's at {slow_at:?}: not streamed"
        );
    }
}

#[test]
fn errors_are_json_with_their_status() {
    if !have_curl() {
        return;
    }
    let s = setup(44, |c| c);
    let post = |headers: &[&str], url: &str| {
        let mut args = vec!["-i", "-H", "Content-Type: application/json"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend(["-d", BODY, url]);
        let out = curl(&args);
        out.expect_code(0);
        let (code, headers, body) = http_parts(&out);
        assert_eq!(headers["content-type"], "application/json", "{out:#?}");
        let body: Value = serde_json::from_str(&body).expect("JSON error body");
        (code, body["error"].as_str().unwrap_or_default().to_owned())
    };
    let exec = s.url("exec");

    let (code, error) = post(&[], &exec);
    assert_eq!(
        (code, error.as_str()),
        (401, "missing API key (X-Api-Key header)")
    );

    let (code, error) = post(&["X-Api-Key: wrong"], &exec);
    assert_eq!(
        (code, error.as_str()),
        (403, "You don't have permission to access on this[web].")
    );

    let (code, error) = post(&[&format!("X-Api-Key: {API_KEY}")], &s.url("nope"));
    assert_eq!(code, 404, "{error}");

    // A refusal is a JSON error even when a stream was asked for.
    let (code, error) = post(&["X-Api-Key: wrong", "Accept: application/x-ndjson"], &exec);
    assert_eq!(
        (code, error.as_str()),
        (403, "You don't have permission to access on this[web].")
    );
}

#[test]
fn callers_outside_allow_hosts_get_403() {
    if !have_curl() {
        return;
    }
    let s = setup(45, |c| c.hosts(&["127.0.0.2"]));
    let out = curl(&[
        "-i",
        "-H",
        &format!("X-Api-Key: {API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        BODY,
        &s.url("exec"),
    ]);
    let (code, _, body) = http_parts(&out);
    assert_eq!(code, 403, "{out:#?}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["error"],
        "Your IP [127.0.0.1] is not allowed on this server."
    );
}
