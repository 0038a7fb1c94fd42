//! Timed runs through a proxy: the proxy relays the instant (`at`, `max_wait`) with the
//! order, its deadline towards the agents starts after the wait, and every agent of the
//! group starts its job at the instant, not before; a background task started through
//! the proxy is waited for through it.

use crate::util::*;
use base64::Engine as _;
use serde_json::Value;

const ID: &str = "px-timed";
const API_KEY: &str = "timed-key";

/// The decoded `content` of an agent's `exec` or `run` record.
fn decoded(record: &serde_json::Map<String, Value>) -> String {
    let b64 = record["content"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {record:?}"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn a_delayed_exec_through_a_proxy_starts_every_agent_at_the_instant() {
    let sandboxes: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let agents: Vec<Agent> = sandboxes
        .iter()
        .map(|sb| {
            let stamp = sb.join("stamp.sh");
            std::fs::write(&stamp, "#!/bin/sh\ndate +%s%N\n").unwrap();
            std::fs::set_permissions(&stamp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            AgentConfig::new(sb)
                .server("allow_run", "on")
                .job("stamp", &stamp.display().to_string())
                .start(sb)
        })
        .collect();
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .key(API_KEY, "web")
        // Shorter than the wait: the deadline must start after it.
        .client("thread_timeout", 1)
        .servers("web", agents.iter().map(Agent::addr).collect::<Vec<_>>())
        .start(dir.path());
    let before = deploy_common::order::at::now_ms();
    let out = via_proxy(
        proxy.port(),
        API_KEY,
        "groups:web",
        "stamp",
        &["--delay=2s"],
    );
    out.expect_code(0);
    let stamps = records(&out, "exec");
    assert_eq!(stamps.len(), 3, "{out:#?}");
    for (host, record) in &stamps {
        let ns: i64 = decoded(record).trim().parse().unwrap();
        assert!(
            ns / 1_000_000 >= before + 2_000,
            "{host} started at {} ms, before the instant {}",
            ns / 1_000_000,
            before + 2_000
        );
    }

    // A background task through the proxy, then waited for through it.
    let out = via_proxy(
        proxy.port(),
        API_KEY,
        &format!("hosts:{}", agents[0].addr()),
        "stamp",
        &["--background"],
    );
    out.expect_code(0);
    let record = records_of(&out);
    let task = record["content"]["task"]
        .as_str()
        .unwrap_or_else(|| panic!("no task: {out:#?}"))
        .to_owned();
    let port = proxy.port().to_string();
    let options = format!("--options=wait,{task}");
    let args = format!("hosts:{}", agents[0].addr());
    let out = client(&[
        "--hosts",
        "127.0.0.1",
        "--port",
        &port,
        "--api-key",
        API_KEY,
        "--args",
        &args,
        "--order=tasks",
        &options,
    ]);
    out.expect_code(0);
    let waited = records(&out, "tasks");
    let record = waited.values().next().unwrap();
    assert_eq!(record["content"]["state"], "done", "{out:#?}");
    assert_eq!(record["content"]["code"], "0", "{out:#?}");
}

/// The single agent record of an `exec` run.
fn records_of(out: &Output) -> serde_json::Map<String, Value> {
    let all = records(out, "exec");
    assert_eq!(all.len(), 1, "{out:#?}");
    all.into_values().next().unwrap()
}

/// The HTTP API carries `at`: an exec posted with an instant 1.5 s ahead starts at or
/// after it (the agent's clock is this machine's).
#[test]
fn an_instant_through_the_http_api_starts_the_job_at_it() {
    if !have_curl() {
        return;
    }
    let sb = Sandbox::new();
    let stamp = sb.join("stamp.sh");
    std::fs::write(&stamp, "#!/bin/sh\ndate +%s%N\n").unwrap();
    std::fs::set_permissions(&stamp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let agent = AgentConfig::new(&sb)
        .job("stamp", &stamp.display().to_string())
        .start(&sb);
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(ID)
        .http()
        .key(API_KEY, "web")
        .servers("web", [agent.addr()])
        .start(dir.path());
    let at = deploy_common::order::at::now_ms() + 1_500;
    let body = format!(r#"{{"options":"stamp","args":"groups:web","at":{at}}}"#);
    let out = curl(&[
        "-H",
        &format!("X-Api-Key: {API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &format!("http://{}/api/exec", proxy.http()),
    ]);
    out.expect_code(0);
    let doc: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:#?}"));
    let record = doc[agent.addr().to_string()]["exec"]
        .as_object()
        .unwrap_or_else(|| panic!("no exec record: {out:#?}"));
    let ns: i64 = decoded(record).trim().parse().unwrap();
    assert!(
        ns / 1_000_000 >= at,
        "started at {} ms, before the instant {at}: {out:#?}",
        ns / 1_000_000
    );
}
