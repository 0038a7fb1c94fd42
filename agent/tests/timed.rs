//! Timed runs and background tasks on real agents, driven by the real client:
//! `--at`/`--delay` start every agent's command at one instant (each on its own clock),
//! an instant in the past or too far ahead is refused by the agent (409) and by the
//! client; `--background` starts a command detached, and `--order=tasks` lists, waits
//! for and cancels it, also after the worker that started it is gone.

use crate::util::*;
use base64::Engine as _;
use deploy_common::order::Request;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn client(args: &[&str]) -> Output {
    run_command(
        Command::new(bins::client())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", KEY)
            .env("NO_COLOR", "1"),
        Duration::from_secs(60),
    )
}

/// An agent with `allow_run` on 127.0.0.`n`, and a job `stamp` printing its clock.
fn running_agent(sb: &Sandbox, n: u8) -> Agent {
    let stamp = sb.join("stamp.sh");
    std::fs::write(&stamp, "#!/bin/sh\ndate +%s%N\n").unwrap();
    std::fs::set_permissions(&stamp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Config::new(sb)
        .server("allow_run", "on")
        .server("listen", format!("127.0.0.{n}:0"))
        .hosts(&["127.0.0.0/8"])
        .job("stamp", &stamp.display().to_string())
        .start(sb)
}

fn now_ms() -> i64 {
    deploy_common::order::at::now_ms()
}

/// The JSON document of a `--format=json` run.
fn doc(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
}

/// The decoded `content` of `host`'s reply to `order`.
fn content(doc: &Value, host: &str, order: &str) -> String {
    let b64 = doc[host][order]["content"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content for {host}: {doc:#}"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// Start instants (unix ms) printed by `date +%s%N` on each host.
fn starts(doc: &Value, hosts: &[String], order: &str) -> Vec<i64> {
    hosts
        .iter()
        .map(|h| {
            let ns: i64 = content(doc, h, order).trim().parse().unwrap();
            ns / 1_000_000
        })
        .collect()
}

#[test]
fn every_agent_starts_at_the_instant() {
    let sbs: Vec<Sandbox> = (0..4).map(|_| Sandbox::new()).collect();
    let agents: Vec<Agent> = sbs
        .iter()
        .zip(2u8..)
        .map(|(sb, n)| running_agent(sb, n))
        .collect();
    let hosts: Vec<String> = agents.iter().map(|a| a.addr().to_string()).collect();
    let list = hosts.join(",");

    // --at: unix milliseconds, 1.5 s ahead.
    let at = now_ms() + 1_500;
    let at_flag = format!("--at={at}");
    let out = client(&[
        "--hosts",
        &list,
        "--order=run",
        &at_flag,
        "--format=json",
        "--",
        "date",
        "+%s%N",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let ran = doc(&out);
    let started = starts(&ran, &hosts, "run");
    for (host, start) in hosts.iter().zip(&started) {
        assert!(
            *start >= at,
            "{host} started at {start}, before the instant {at}"
        );
        // The agent says when it started the command, on its clock.
        let said: i64 = ran[host]["run"]["content"]["started_at"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no started_at: {ran:#}"));
        assert!(said >= at && said <= *start, "{host}: started_at {said}");
    }

    // --delay on exec: every host starts at the client's now + delay, not before.
    let before = now_ms();
    let out = client(&[
        "--hosts",
        &list,
        "--order=exec",
        "--options=stamp",
        "--delay=1200ms",
        "--format=json",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    for (host, start) in hosts.iter().zip(starts(&doc(&out), &hosts, "exec")) {
        assert!(
            start >= before + 1_200,
            "{host} started at {start}, before now + delay"
        );
    }
}

#[tokio::test]
async fn an_instant_the_agent_cannot_honour_is_refused() {
    let sb = Sandbox::new();
    let agent = running_agent(&sb, 2);
    let marker = sb.join("ran");
    let timed = |at: i64, max_wait: Option<u64>| Request {
        order: "run".into(),
        argv: vec!["touch".into(), marker.display().to_string()],
        at: Some(at),
        max_wait,
        ..Request::default()
    };
    // Passed by more than the tolerance: 409, naming the instant and this host's clock.
    let reply = v2(
        agent.addr(),
        KEY,
        Some(&agent_public_key()),
        timed(now_ms() - 5_000, None),
    )
    .await
    .unwrap();
    reply.expect_code(409);
    assert!(reply.text.contains("passed"), "{reply:?}");
    assert!(reply.text.contains("by this host's clock ("), "{reply:?}");
    // Further ahead than the caller allows.
    let reply = v2(
        agent.addr(),
        KEY,
        Some(&agent_public_key()),
        timed(now_ms() + 60_000, Some(1_000)),
    )
    .await
    .unwrap();
    reply.expect_code(409);
    assert!(
        reply
            .text
            .contains("over the longest wait allowed (1000 ms)"),
        "{reply:?}"
    );
    assert!(!marker.exists(), "a refused order ran");

    // The client refuses them itself, before sending anything.
    let host = agent.addr().to_string();
    let past = format!("--at={}", now_ms() - 5_000);
    let out = client(&["--hosts", &host, "--order=run", &past, "--", "true"]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("passed"), "{out:#?}");
    let out = client(&[
        "--hosts",
        &host,
        "--order=run",
        "--delay=2h",
        "--max-wait=1h",
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("over --max-wait"), "{out:#?}");
    // The v1 wire cannot carry an instant: refused rather than run at once.
    let out = client(&[
        "--hosts",
        &host,
        "--order=run",
        "--protocol=v1",
        "--delay=1s",
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("need --protocol=v2"), "{out:#?}");
}

/// `--order=tasks --options=OPTIONS` on `host`, as JSON; the host's reply body.
fn tasks(host: &str, options: &str) -> (Output, Value) {
    let options = format!("--options={options}");
    let out = client(&["--hosts", host, "--order=tasks", &options, "--format=json"]);
    let body = doc(&out)[host]["tasks"]["content"].clone();
    (out, body)
}

#[test]
fn background_tasks_are_listed_waited_for_and_cancelled() {
    let sb = Sandbox::new();
    let agent = running_agent(&sb, 2);
    let host = agent.addr().to_string();
    let pid_file = sb.join("task.pid");

    // A long task: its id comes back at once.
    let script = format!(
        "echo $$ > {}; echo started; exec sleep 300",
        pid_file.display()
    );
    let out = client(&[
        "--hosts",
        &host,
        "--order=run",
        "--background",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let long = doc(&out)[&host]["run"]["content"]["task"]
        .as_str()
        .unwrap_or_else(|| panic!("no task id: {out:#?}"))
        .to_owned();
    let pid: i32 = wait_until(Duration::from_secs(10), "the task's pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    assert!(alive(pid));

    // It survives the worker that started it.
    for worker in agent.workers() {
        signal(worker, nix::sys::signal::Signal::SIGKILL);
    }
    wait_until(Duration::from_secs(10), "a new worker", || {
        (!agent.workers().is_empty()).then_some(())
    });
    assert!(alive(pid), "the task died with its worker");

    // A short one that fails.
    let out = client(&[
        "--hosts",
        &host,
        "--order=run",
        "--background",
        "--",
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let short = doc(&out)[&host]["run"]["content"]["task"]
        .as_str()
        .unwrap()
        .to_owned();
    let (out, body) = tasks(&host, &format!("wait,{short}"));
    assert_eq!(out.code, Some(1), "a failed task fails the wait: {out:#?}");
    assert_eq!(body["state"], "done", "{out:#?}");
    assert_eq!(body["code"], "3", "{out:#?}");
    let tail = base64::engine::general_purpose::STANDARD
        .decode(body["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(tail, b"hi\n");

    // Both listed, newest first; the long one running.
    let (out, body) = tasks(&host, "list");
    assert_eq!(out.code, Some(0), "{out:#?}");
    let list: Vec<Value> = serde_json::from_str(body["tasks"].as_str().unwrap()).unwrap();
    let ids: Vec<&str> = list.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, [short.as_str(), long.as_str()], "{out:#?}");
    assert_eq!(list[1]["state"], "running");
    assert_eq!(list[0]["code"], "3");

    // A wait that ends before the task does says so.
    let (out, body) = tasks(&host, &format!("wait,{long},1"));
    assert_eq!(body["state"], "running", "{out:#?}");

    // Cancel: the process is gone, the wait reports it.
    let (out, body) = tasks(&host, &format!("cancel,{long}"));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(body["state"], "cancelled");
    let (out, body) = tasks(&host, &format!("wait,{long}"));
    assert_eq!(body["state"], "cancelled", "{out:#?}");
    assert_eq!(body["code"], "143", "SIGTERM: {out:#?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the cancelled task's process is still there"
    );

    // Unknown ids and bad options.
    let (out, _) = tasks(&host, "wait,0123456789abcdef0123456789abcdef");
    assert!(out.stdout.contains("not found"), "{out:#?}");
    let (out, _) = tasks(&host, "cancel,../x");
    assert!(out.stdout.contains("not a task id"), "{out:#?}");
}
