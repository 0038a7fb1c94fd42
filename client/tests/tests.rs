//! Integration tests: the real `deploy-client` binary against in-process fake agents.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod lock;
mod ops;
mod scenario;
mod ssh;
mod ssh_fleet;
mod ssh_orgalorg;
mod ssh_release;
mod ssh_scenario;
mod tasks;
mod util;

use std::sync::Arc;
use std::time::Duration;

use deploy_common::order::Reply;
use deploy_common::wire::message::{Event, Stream};
use serde_json::{json, Value};
use util::{answer, client, closed_port, obj, silent, v1_agent, v2_agent, v2_agent_on, VECTORS};

fn exec_ok() -> Reply {
    Reply::ok(obj(json!({
        "return": "true",
        "command": "L2Jpbi9lY2hvIGhp",
        "content": "aGkK"
    })))
}

fn exec_false() -> Reply {
    Reply::ok(obj(
        json!({"return": "false", "command": "L2Jpbi9mYWxzZQ==", "content": ""}),
    ))
}

/// The pretty JSON record of one host, as the original printed it.
fn record(
    host: &str,
    order: &str,
    ret: u8,
    status: u8,
    code: &str,
    reason: &str,
    content: &str,
) -> String {
    format!(
        "   \"{host}\" : {{\n      \"{order}\" : {{\n         \"return\" : {ret},\n         \"serverStatus\" : {status},\n         \"returnCode\" : {code},\n         \"returnString\" : {reason},\n         \"content\" : {content}\n      }}\n   }}"
    )
}

#[tokio::test]
async fn json_shape_for_success_error_and_unreachable() {
    let ok = v2_agent("k", answer(exec_ok())).await;
    let bad = v2_agent("k", answer(Reply::error(400, "exec[x] not found!"))).await;
    let down = closed_port().await;
    let hosts = format!("{ok},{bad},{down}");
    // Loose (strict would start the order nowhere, see `strict_starts_nowhere`).
    let out = client(
        &[
            "--hosts",
            &hosts,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--skip-unreachable",
        ],
        None,
    )
    .await;
    // Hosts sorted (all on 127.0.0.1: by port), whatever the command line's order.
    let mut records = vec![
        (ok.port(), record(
            &ok.to_string(), "exec", 1, 1, "\"200\"", "\"OK\"",
            "{\n            \"return\" : \"true\",\n            \"command\" : \"L2Jpbi9lY2hvIGhp\",\n            \"content\" : \"aGkK\"\n         }"
        )),
        (bad.port(), record(&bad.to_string(), "exec", 0, 1, "\"400\"", "\"Bad Request\"", "\"exec[x] not found!\"")),
        (down.port(), record(&down.to_string(), "exec", 0, 0, "null", "null", &format!("\"can't connect to {down}\""))),
    ];
    records.sort();
    let records: Vec<String> = records.into_iter().map(|(_, r)| r).collect();
    let expected = format!("{{\n{}\n}}\n", records.join(",\n"));
    assert_eq!(out.stdout, expected);
    // The 400 fails the run; the unreachable host is skipped.
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "deploy-client: skipped: {down}: can't connect to {down}: "
        )),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn exit_codes_0_and_1() {
    let ok = v2_agent("k", answer(exec_ok())).await;
    let failed = v2_agent("k", answer(exec_false())).await;
    let out = client(
        &[
            "--hosts",
            &ok.to_string(),
            "--order",
            "exec",
            "--options=x",
            "--key-cipher",
            "k",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let hosts = format!("{ok},{failed}");
    let out = client(
        &[
            "--hosts",
            &hosts,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 1, "{out:?}");

    // A wrong key is a 401 answer: the order failed, the host was reachable.
    let out = client(
        &[
            "--hosts",
            &ok.to_string(),
            "--order=exec",
            "--options=x",
            "--key-cipher=wrong",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 1, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let r = &v[ok.to_string()]["exec"];
    assert_eq!(r["returnCode"], json!("401"));
    assert_eq!(r["returnString"], json!("Unauthorized"));
    assert_eq!(r["serverStatus"], json!(1));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let out = client(&["--hosts=a:b", "--order=status", "--options=g"], None).await;
    assert_eq!(out.status, 2);
    assert!(
        out.stderr
            .contains("deploy-client: error: bad host \"a:b\""),
        "{}",
        out.stderr
    );

    let out = client(
        &[
            "--hosts=a",
            "--order=status",
            "--options=g",
            "--ssl-public-key=/no/such.pem",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 2);
    assert!(out.stderr.contains("/no/such.pem"), "{}", out.stderr);

    let out = client(&["--hosts=a", "--order=nope"], None).await;
    assert_eq!(out.status, 2);
    let out = client(&["--order=status", "--options=g"], None).await;
    assert_eq!(out.status, 2);
    let out = client(
        &["--hosts=-", "--order=status", "--options=g"],
        Some("# nobody\n"),
    )
    .await;
    assert_eq!(out.status, 2);
    assert!(out.stderr.contains("no hosts"), "{}", out.stderr);
    assert!(out.stdout.is_empty());

    // An order without what it needs is refused here, before any host is contacted
    // (the agent below would answer 200).
    let agent = v2_agent("k", answer(exec_ok())).await;
    let host = agent.to_string();
    for (order, needle) in [
        ("exec", "--order=exec needs --options=JOB[,ARG...]"),
        ("status", "--order=status needs --options=GROUP"),
        ("rlist", "--order=rlist needs --options=GROUP"),
        ("rsync", "--order=rsync needs --options=GROUP"),
        ("rkill", "--order=rkill needs --options=GROUP"),
    ] {
        let order = format!("--order={order}");
        for extra in [None, Some("--options= ")] {
            let mut args = vec!["--hosts", &host, &order, "--key-cipher=k"];
            args.extend(extra);
            let out = client(&args, None).await;
            assert_eq!(out.status, 2, "{args:?}: {out:?}");
            assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
            assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        }
    }
}

/// Arguments that are not UTF-8 are usage errors naming the flag (they panicked with
/// exit 101 in `std::env::args`), while a path flag keeps its bytes.
#[tokio::test]
async fn non_utf8_arguments_are_usage_errors() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    for (args, named) in [
        (
            &[&b"--hosts=\xff"[..], b"--order=status", b"--options=g"][..],
            "'--hosts <HOST,...>'",
        ),
        (
            &[
                b"--hosts=a",
                b"--order=status",
                b"--options=g",
                b"--api-key=k\xfe",
            ],
            "'--api-key",
        ),
        (
            &[b"--hosts=a", b"--order=upload", b"--upload", b"/tmp/\xff"],
            "'--upload <PATH>'",
        ),
        (
            &[b"--hosts=a", b"--order=run", b"--", b"echo", b"\xff"],
            "COMMAND",
        ),
        (
            &[b"--hosts=a", b"--order=status", b"--options=g", b"\xff"],
            "unexpected argument",
        ),
        (&[b"--generate", b"\xff"], "--generate takes"),
    ] {
        let mut cmd = util::command(&[]);
        cmd.args(args.iter().map(|a| OsStr::from_bytes(a)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), cmd.output())
            .await
            .expect("deploy-client did not finish in 10 s")
            .expect("spawn deploy-client");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A path flag keeps any bytes: the error is about the file, not the argument.
    let mut cmd = util::command(&["--hosts=a", "--order=status", "--options=g"]);
    cmd.arg(OsStr::from_bytes(b"--ssl-public-key=/no/such/\xff.pem"))
        .kill_on_drop(true);
    let out = cmd.output().await.expect("spawn deploy-client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/no/such/"), "{stderr}");
    assert!(!stderr.contains("UTF-8"), "{stderr}");
}

/// Missing local files (key, upload, stdin) are named with their reason once.
#[tokio::test]
async fn missing_files_name_their_reason_once() {
    for (args, path) in [
        (
            &[
                "--hosts=a",
                "--order=status",
                "--options=g",
                "--ssl-public-key=/no/such.pem",
            ][..],
            "/no/such.pem",
        ),
        (
            &[
                "--hosts=a",
                "--order=upload",
                "--upload=/no/such/file",
                "--root=/tmp",
                "--",
                "true",
            ],
            "/no/such/file",
        ),
        (
            &[
                "--hosts=a",
                "--order=run",
                "--stdin=/no/such/in",
                "--",
                "true",
            ],
            "/no/such/in",
        ),
    ] {
        let out = client(args, None).await;
        assert_eq!(out.status, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(path), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.matches("(os error 2)").count(),
            1,
            "{}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn help_documents_exit_codes() {
    let out = client(&["--help"], None).await;
    assert_eq!(out.status, 0);
    assert!(out.stdout.contains("Exit status:"), "{}", out.stdout);
    let out = client(&["--version"], None).await;
    assert!(out.stdout.starts_with("deploy-client "), "{}", out.stdout);
}

#[tokio::test]
async fn text_format_folds_identical_results() {
    let a = v2_agent("k", answer(exec_ok())).await;
    let b = v2_agent("k", answer(exec_ok())).await;
    let c = v2_agent("k", answer(Reply::error(400, "exec[x] not found!"))).await;
    let hosts = format!("{a},{c},{b}");
    let out = client(
        &[
            "--hosts",
            &hosts,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--format=text",
        ],
        None,
    )
    .await;
    // Sorted by host (here by port), folded in the order of their first host.
    let (first, second) = if a.port() < b.port() { (a, b) } else { (b, a) };
    let ok = format!("{first},{second} (2): 200 OK return=true command=\"/bin/echo hi\"\n    hi\n");
    let bad = format!("{c}: 400 Bad Request exec[x] not found!\n");
    let expected = if first.port() < c.port() {
        format!("{ok}{bad}")
    } else {
        format!("{bad}{ok}")
    };
    assert_eq!(out.stdout, expected);
    assert_eq!(out.status, 1);

    // Two runs print the same document whatever the order of the hosts given.
    let reversed = format!("{b},{c},{a}");
    let again = client(
        &[
            "--hosts",
            &reversed,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--format=text",
        ],
        None,
    )
    .await;
    assert_eq!(again.stdout, out.stdout);
}

#[tokio::test]
async fn jsonl_streams_events_then_results() {
    let follow: util::Handler = Arc::new(|r| {
        assert!(r.follow);
        (
            vec![Event::Line {
                stream: Stream::Stdout,
                line: "hi".into(),
                partial: false,
            }],
            Duration::ZERO,
            exec_ok(),
        )
    });
    let a = v2_agent("k", follow).await;
    let down = closed_port().await;
    let hosts = format!("{a},{down}");
    let out = client(
        &[
            "--hosts",
            &hosts,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--format=jsonl",
            "--follow",
            "-q",
            "--skip-unreachable",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0);
    assert!(out.stderr.is_empty(), "-q: {}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    let host_a = a.to_string();
    let event_at = lines.iter().position(|l| l.get("line").is_some()).unwrap();
    let a_done = lines
        .iter()
        .position(|l| l["host"] == json!(host_a) && l.get("result").is_some())
        .unwrap();
    assert!(event_at < a_done);
    assert_eq!(
        lines[event_at],
        json!({"host": host_a, "stream": "stdout", "line": "hi"})
    );
    assert_eq!(
        serde_json::to_string(&lines[a_done]).unwrap(),
        format!(
            r#"{{"host":"{a}","order":"exec","result":{{"return":1,"serverStatus":1,"returnCode":"200","returnString":"OK","content":{{"return":"true","command":"L2Jpbi9lY2hvIGhp","content":"aGkK"}}}}}}"#
        )
    );
}

#[tokio::test]
async fn hosts_from_stdin() {
    let a = v2_agent("k", answer(exec_ok())).await;
    let b = v2_agent("k", answer(exec_ok())).await;
    let list = format!("# agents\n{a}\n  {b}, {a} # twice\n");
    let out = client(
        &[
            "--hosts=-",
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--format=text",
        ],
        Some(&list),
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    // Text output is sorted by host (the port, numerically, for one address).
    let (first, second) = if a.port() < b.port() { (a, b) } else { (b, a) };
    assert!(
        out.stdout
            .starts_with(&format!("{first},{second} (2): 200 OK")),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn ipv6_with_port() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    drop(probe);
    let a = v2_agent_on("[::1]:0", "k", answer(exec_ok())).await;
    let spec = format!("[::1]:{}", a.port());
    let out = client(
        &[
            "--hosts",
            &spec,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[&spec]["exec"]["returnCode"], json!("200"));
}

#[tokio::test]
async fn v1_plain_and_ssl() {
    let plain = v1_agent("k", false, answer(exec_ok())).await;
    let out = client(
        &[
            "--hosts",
            &plain.to_string(),
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--protocol=v1",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v[plain.to_string()]["exec"]["content"]["content"],
        json!("aGkK")
    );

    // A wrong key: 401 with an empty body is content null, as in the original.
    let out = client(
        &[
            "--hosts",
            &plain.to_string(),
            "--order=exec",
            "--options=x",
            "--protocol=v1",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 1, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[plain.to_string()]["exec"]["content"], Value::Null);
    assert_eq!(v[plain.to_string()]["exec"]["returnCode"], json!("401"));

    let ssl = v1_agent("k", true, answer(exec_ok())).await;
    let key = format!("--ssl-public-key={VECTORS}/agent_public.pem");
    let out = client(
        &[
            "--hosts",
            &ssl.to_string(),
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--protocol=v1",
            &key,
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v[ssl.to_string()]["exec"]["content"]["return"],
        json!("true")
    );

    // ssl client → plain agent: a clear failure in the record, nothing else on stdout.
    let out = client(
        &[
            "--hosts",
            &plain.to_string(),
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--protocol=v1",
            &key,
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 3, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let content = v[plain.to_string()]["exec"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(content.contains("protocol mismatch"), "{content}");
    assert!(out.stderr.contains("protocol mismatch"), "{}", out.stderr);
}

#[tokio::test]
async fn silent_host_times_out() {
    let dead = silent().await;
    let ok = v2_agent("k", answer(exec_ok())).await;
    let hosts = format!("{dead},{ok}");
    let start = std::time::Instant::now();
    let out = client(
        &[
            "--hosts",
            &hosts,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--thread-timeout=1",
            // Loose: strict would wait for the silent host before starting anywhere.
            "--skip-unreachable",
        ],
        None,
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(out.status, 3, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let r = &v[dead.to_string()]["exec"];
    assert_eq!(r["serverStatus"], json!(0));
    assert_eq!(r["content"], json!("Process Timeout(1)!"));
    assert_eq!(v[ok.to_string()]["exec"]["return"], json!(1));
    // Hosts sorted (by port here), not in arrival order.
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    let mut sorted = [dead, ok];
    sorted.sort_by_key(|a| a.port());
    assert_eq!(keys, [&sorted[0].to_string(), &sorted[1].to_string()]);
}

#[tokio::test]
async fn closed_stdout_exits_quietly() {
    use std::process::Stdio;
    let slow: util::Handler = Arc::new(|_| (Vec::new(), Duration::from_millis(200), exec_ok()));
    let a = v2_agent("k", slow).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_deploy-client"))
        .args([
            "--hosts",
            &a.to_string(),
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn follow_lines_go_to_stderr_in_json_mode() {
    let lines: util::Handler = Arc::new(|_| {
        let line = |s: &str| Event::Line {
            stream: Stream::Stdout,
            line: s.into(),
            partial: false,
        };
        (vec![line("one"), line("two")], Duration::ZERO, exec_ok())
    });
    let a = v2_agent("k", lines).await;
    let out = client(
        &[
            "--hosts",
            &a.to_string(),
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--follow",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stderr, format!("{a}: one\n{a}: two\n"));
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[a.to_string()]["exec"]["return"], json!(1));
}

/// An impostor that knows the default secret (every stock client's) would learn the API
/// key: the client refuses to send it (exit 2) unless the server is authenticated by a
/// non-default secret or a pinned key.
#[tokio::test]
async fn api_key_only_to_an_authenticated_server() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&seen);
    let impostor = v2_agent(
        deploy_common::legacy::auth::DEFAULT_KEY_CIPHER,
        Arc::new(move |r: &deploy_common::order::Request| {
            log.lock().unwrap().push(r.api_key.clone());
            (Vec::new(), Duration::ZERO, exec_ok())
        }),
    )
    .await;
    let host = format!("--hosts={impostor}");
    for extra in [&[][..], &["--key-cipher=change-me"][..]] {
        let mut args = vec![
            host.as_str(),
            "--order=exec",
            "--options=service:echo,hi",
            "--api-key=the-api-key",
            "--args=groups:web",
        ];
        args.extend_from_slice(extra);
        let out = client(&args, None).await;
        assert_eq!(out.status, 2, "{extra:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("refusing to send the API key"),
            "{}",
            out.stderr
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the key reached the impostor"
    );

    // A real secret: the key goes (and this server, knowing it, answers).
    let proxy = v2_agent("proxy-secret", {
        let log = Arc::clone(&seen);
        Arc::new(move |r: &deploy_common::order::Request| {
            log.lock().unwrap().push(r.api_key.clone());
            (Vec::new(), Duration::ZERO, exec_ok())
        })
    })
    .await;
    let out = client(
        &[
            &format!("--hosts={proxy}"),
            "--order=exec",
            "--options=service:echo,hi",
            "--api-key=the-api-key",
            "--args=groups:web",
            "--key-cipher=proxy-secret",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(*seen.lock().unwrap(), ["the-api-key"]);
}

/// Warnings on a pipe are plain text: no ANSI colour codes (issue 8 §7), whatever
/// `NO_COLOR` says.
#[tokio::test]
async fn logs_on_a_pipe_have_no_colours() {
    let plain = v1_agent("k", false, answer(exec_ok())).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_deploy-client"))
        .args([
            "--hosts",
            &plain.to_string(),
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--protocol=v1",
            "--follow",
        ])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("DEPLOY_KEY_CIPHER")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .expect("deploy-client did not finish in 10 s")
        .expect("run deploy-client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--follow has no effect"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// Node sets on the command line and in a host list read from stdin, with `!` and
/// `-x`/`--exclude`: only the hosts left are contacted (the excluded ones are agents
/// too, which would answer).
#[tokio::test]
async fn node_sets_expand_and_exclude() {
    let first = v2_agent_on("127.0.0.31:0", "k", answer(exec_ok())).await;
    let port = first.port();
    for i in 32..=35 {
        v2_agent_on(&format!("127.0.0.{i}:{port}"), "k", answer(exec_ok())).await;
    }
    let port = port.to_string();
    let keys = |out: &util::Output| -> Vec<String> {
        let v: Value = serde_json::from_str(&out.stdout).expect("json");
        v.as_object().expect("object").keys().cloned().collect()
    };
    let args = [
        "--order=exec",
        "--options=x",
        "--key-cipher=k",
        "--port",
        &port,
    ];
    let mut cli = vec!["--hosts=127.0.0.[31-35],!127.0.0.34", "-x", "127.0.0.33"];
    cli.extend(args);
    let out = client(&cli, None).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(keys(&out), ["127.0.0.31", "127.0.0.32", "127.0.0.35"]);

    let mut stdin = vec!["--hosts=-", "--exclude=127.0.0.[31,35]"];
    stdin.extend(args);
    let out = client(
        &stdin,
        Some("# web\n127.0.0.[32-33]\n127.0.0.[34-35] !127.0.0.33\n"),
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(keys(&out), ["127.0.0.32", "127.0.0.34"]);

    // A bad node set is a usage error naming it.
    let mut bad = vec!["--hosts=127.0.0.[35-31]"];
    bad.extend(args);
    let out = client(&bad, None).await;
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("bad node set \"127.0.0.[35-31]\": range \"35-31\" goes backwards"),
        "{}",
        out.stderr
    );
}

/// The defaults file: hosts, port and format from `DEPLOY_CLIENT_CONFIG` (or
/// `~/.config/deploy/client.ini`), flags winning; a bad line is a usage error naming
/// the file and line.
#[tokio::test]
async fn defaults_file_under_the_flags() {
    let first = v2_agent_on("127.0.0.41:0", "k", answer(exec_ok())).await;
    let port = first.port();
    v2_agent_on(&format!("127.0.0.42:{port}"), "k", answer(exec_ok())).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.ini");
    std::fs::write(
        &file,
        format!("; defaults\n[client]\nhosts = 127.0.0.[41-42]\nport = {port}\nformat = text\n"),
    )
    .unwrap();
    let run = |env: Vec<(&'static str, std::ffi::OsString)>, args: &'static [&'static str]| {
        let mut cmd = util::command(&["--order=exec", "--options=x", "--key-cipher=k"]);
        cmd.args(args).envs(env).stdin(std::process::Stdio::null());
        async move {
            let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
                .await
                .unwrap()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let text = "127.0.0.41,127.0.0.42 (2): 200 OK return=true command=\"/bin/echo hi\"\n    hi\n";
    let env = vec![("DEPLOY_CLIENT_CONFIG", file.clone().into_os_string())];
    let (code, stdout, stderr) = run(env.clone(), &[]).await;
    assert_eq!((code, stdout.as_str()), (Some(0), text), "{stderr}");
    // Flags win.
    let (code, stdout, _) = run(env.clone(), &["--format=json", "--hosts=127.0.0.42"]).await;
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["127.0.0.42"]
    );
    // The user's file, found through HOME.
    std::fs::create_dir_all(dir.path().join(".config/deploy")).unwrap();
    std::fs::copy(&file, dir.path().join(".config/deploy/client.ini")).unwrap();
    let home = vec![("HOME", dir.path().as_os_str().to_owned())];
    let mut cmd = util::command(&["--order=exec", "--options=x", "--key-cipher=k"]);
    cmd.env_remove("DEPLOY_CLIENT_CONFIG").envs(home);
    let out = cmd.output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    // A bad line names the file and line.
    std::fs::write(&file, "[client]\nport = 3441\nformat = yaml\n").unwrap();
    let (code, stdout, stderr) = run(env, &["--hosts=127.0.0.41"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(&format!(
            "{}:3: [client] format: \"yaml\": expected json, text, jsonl, lines or table",
            file.display()
        )),
        "{stderr}"
    );
}

/// Strict (the default) for an order that starts work: every agent is connected to
/// (v2: authenticated) before the order goes to any, and it goes to none when one
/// cannot be reached, or refuses us, or does not answer in time; the client names it.
/// Over v1 the connect stage is the TCP connection. Read-only orders go where they
/// can.
#[tokio::test]
async fn strict_starts_nowhere() {
    let seen = Arc::new(std::sync::Mutex::new(0usize));
    let counting = |seen: &Arc<std::sync::Mutex<usize>>| -> util::Handler {
        let seen = Arc::clone(seen);
        Arc::new(move |_| {
            *seen.lock().unwrap() += 1;
            (Vec::new(), Duration::ZERO, exec_ok())
        })
    };
    let a = v2_agent("k", counting(&seen)).await;
    let b = v2_agent("k", counting(&seen)).await;
    let down = closed_port().await;
    let wrong = v2_agent("other", counting(&seen)).await;
    let dead = silent().await;
    for (culprit, status, why) in [
        (down.to_string(), 3, format!("can't connect to {down}")),
        (wrong.to_string(), 1, "401 Unauthorized".to_owned()),
        (dead.to_string(), 3, "no reply within 1 s".to_owned()),
    ] {
        let hosts = format!("{a},{culprit},{b}");
        let args = [
            "--hosts",
            &hosts,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--thread-timeout=1",
        ];
        let out = client(&args, None).await;
        assert_eq!(*seen.lock().unwrap(), 0, "{culprit}: {out:?}");
        assert_eq!(out.status, status, "{culprit}: {out:?}");
        assert!(
            out.stderr.contains(&format!(
                "error: strict: the order started nowhere, since {culprit} could not be connected to (--skip-unreachable runs on the others)"
            )),
            "{culprit}: {}",
            out.stderr
        );
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        for live in [a, b] {
            let r = &v[live.to_string()]["exec"];
            assert_eq!(r["returnCode"], json!("503"), "{out:?}");
            let content = r["content"].as_str().unwrap();
            assert!(
                content.contains(&format!("{culprit} failed ({why}")),
                "{culprit}: {content}"
            );
        }
        // Loose: the others run.
        let mut loose = args.to_vec();
        loose.push("--skip-unreachable");
        client(&loose, None).await;
        assert_eq!(*seen.lock().unwrap(), 2, "{culprit}");
        *seen.lock().unwrap() = 0;
    }
    // Everyone there: the order goes out on the connections of the connect stage.
    let hosts = format!("{a},{b}");
    let out = client(
        &[
            "--hosts",
            &hosts,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
        ],
        None,
    )
    .await;
    assert_eq!((out.status, *seen.lock().unwrap()), (0, 2), "{out:?}");
    *seen.lock().unwrap() = 0;

    // v1: the TCP connection is the stage.
    let v1 = v1_agent("k", false, counting(&seen)).await;
    let hosts = format!("{v1},{down}");
    let out = client(
        &[
            "--hosts",
            &hosts,
            "--order=exec",
            "--options=x",
            "--key-cipher=k",
            "--protocol=v1",
        ],
        None,
    )
    .await;
    assert_eq!((out.status, *seen.lock().unwrap()), (3, 0), "{out:?}");

    // A read-only order is not gated.
    let hosts = format!("{a},{down}");
    let out = client(
        &[
            "--hosts",
            &hosts,
            "--order=status",
            "--options=x",
            "--key-cipher=k",
        ],
        None,
    )
    .await;
    assert_eq!((out.status, *seen.lock().unwrap()), (3, 1), "{out:?}");
}
