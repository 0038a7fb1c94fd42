//! Every order end to end, over each wire: `status`, `rlist`, `rsync` (then the target
//! compared byte for byte with the source), a slow `rsync` seen as already running and
//! killed with `rkill`, and `exec` (success, unknown job, failing job).
//!
//! The same scenario runs three times, once per [`Proto`], each against its own agent and
//! rsync daemon; the reply shapes must be identical whatever the wire (spec §5.1).

use crate::util::*;
use std::time::{Duration, Instant};

/// Size of the slow group's file: at `--bwlimit=100` (KiB/s) it would take ~40 s.
const SLOW_BYTES: usize = 4 << 20;

/// Asserts that every value of the body is a JSON string (or an array of strings): the
/// original's clients expect `"true"`, `"328"`, never `true` or `328`.
fn assert_all_strings(reply: &Reply) {
    for (key, value) in reply.body() {
        let ok = match value {
            serde_json::Value::String(_) => true,
            serde_json::Value::Array(items) => items.iter().all(|i| i.is_string()),
            _ => false,
        };
        assert!(ok, "{key} is not a string (or list of strings): {reply:?}");
    }
}

/// v1 replies carry the original's content types.
fn assert_content_type(proto: Proto, reply: &Reply) {
    if proto == Proto::V2 {
        return;
    }
    let want = if reply.code == 200 {
        "application/json; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    assert_eq!(reply.content_type, want, "{reply:?}");
}

async fn order(proto: Proto, agent: &Agent, name: &str, options: &str) -> Reply {
    let reply = call(proto, agent.addr(), name, options).await;
    assert_content_type(proto, &reply);
    if reply.code == 200 {
        assert_all_strings(&reply);
    }
    reply
}

async fn every_order(proto: Proto) {
    let sb = Sandbox::new();
    let source = sb.join("source");
    let tree = make_tree(&source);
    let slow_source = sb.join("slow-source");
    make_blob(&slow_source.join("big.bin"), SLOW_BYTES);
    let rsyncd = RsyncDaemon::start_modules(&[("DEST", &source), ("SLOW", &slow_source)]);
    let web_target = sb.allowed().join("web");
    let agent = Config::new(&sb)
        .group(
            "web",
            &[
                ("dest", &rsyncd.url("DEST")),
                ("src", &web_target.display().to_string()),
            ],
        )
        .group(
            "slow",
            &[
                ("dest", &rsyncd.url("SLOW")),
                ("src", &sb.allowed_str("slow")),
                ("option[]", "--archive"),
                ("option[]", "--bwlimit=100"),
            ],
        )
        .start(&sb);

    // status on a fresh target: a dry run with real figures (rsync 3.1+ wording parsed).
    let status = order(proto, &agent, "status", "web").await;
    status.expect_code(200);
    assert_eq!(status.s("return"), "true");
    assert_eq!(status.s("alreadyRsync"), "false");
    let count: u64 = status
        .s("transferFilesCount")
        .parse()
        .expect("numeric count");
    assert!(count > 0, "fresh target must need files: {status:?}");
    assert_eq!(count, tree.files.len() as u64, "{status:?}");
    assert_eq!(status.s("transferFilesSize"), tree.bytes.to_string());
    assert!(
        !status.body().contains_key("lastRsync"),
        "no transfer ran yet: {status:?}"
    );

    // rlist: every file listed, awkward names as real JSON strings.
    let rlist = order(proto, &agent, "rlist", "web").await;
    rlist.expect_code(200);
    assert_eq!(rlist.s("return"), "true");
    let new = rlist.list("transferNewFiles");
    assert!(rlist.list("transferDeleteFiles").is_empty(), "{rlist:?}");
    for name in tree.files.iter().filter(|n| !n.contains('\n')) {
        assert!(new.contains(name), "{name:?} missing from {new:?}");
    }
    assert!(new.iter().any(|n| n == WEIRD_QUOTE), "{new:?}");
    // rsync escapes the newline (`\#012`); the entry stays one entry.
    assert!(
        new.iter()
            .any(|n| n.starts_with("new") && n.ends_with("line.txt")),
        "{new:?}"
    );
    assert!(
        !new.iter().any(|n| n == "new" || n == "line.txt"),
        "{new:?}"
    );
    if proto != Proto::V2 {
        assert!(
            rlist.text.contains(r#""we\"ird.txt""#),
            "the quote must be escaped on the wire: {}",
            rlist.text
        );
    }
    assert_eq!(rlist.s("transferFilesCount"), count.to_string());

    // rsync: returns its handle at once, then runs in the background.
    let started = Instant::now();
    let rsync = order(proto, &agent, "rsync", "web").await;
    rsync.expect_code(200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "rsync must not wait for the transfer"
    );
    assert_eq!(rsync.s("return"), "true");
    let checksum = rsync.s("checksum");
    assert!(
        checksum.len() == 32 && checksum.bytes().all(|b| b.is_ascii_hexdigit()),
        "{rsync:?}"
    );
    assert_eq!(rsync.body().len(), 2, "{rsync:?}");

    // Poll status until the transfer is recorded as finished.
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let s = order(proto, &agent, "status", "web").await;
        s.expect_code(200);
        if s.body().get("lastRsync").and_then(|v| v.as_str()) == Some("finished") {
            break s;
        }
        assert!(Instant::now() < deadline, "transfer did not finish: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.s("alreadyRsync"), "false");
    assert_eq!(done.s("lastRsyncCode"), "0");
    assert_eq!(done.s("transferFilesCount"), "0", "nothing left: {done:?}");
    assert_same_tree(&source, &web_target);

    // A slow transfer: a second rsync sees it running.
    let first = order(proto, &agent, "rsync", "slow").await;
    first.expect_code(200);
    assert_eq!(first.s("return"), "true");
    assert!(first.body().contains_key("checksum"), "{first:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        let again = order(proto, &agent, "rsync", "slow").await;
        again.expect_code(200);
        assert_eq!(again.s("alreadyRsync"), "true", "{again:?}");
        // A listed process may be between fork and exec, or already a zombie (empty
        // cmdline) for an instant: wait for a moment when an rsync is visible.
        let is_rsync = again
            .list("process")
            .iter()
            .filter_map(|p| p.parse::<i32>().ok())
            .any(|p| cmdline(p).contains("rsync"));
        if is_rsync {
            break again;
        }
        assert!(Instant::now() < deadline, "no pids reported: {again:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.s("return"), "true");
    let pids: Vec<i32> = again
        .list("process")
        .iter()
        .map(|p| p.parse().expect("numeric pid"))
        .collect();
    assert!(
        pids.iter().any(|&p| cmdline(p).contains("rsync")),
        "none of {pids:?} is an rsync"
    );
    let status = order(proto, &agent, "status", "slow").await;
    status.expect_code(200);
    assert_eq!(status.s("alreadyRsync"), "true", "{status:?}");
    assert!(!status.list("process").is_empty(), "{status:?}");

    // rkill kills it.
    let rkill = order(proto, &agent, "rkill", "slow").await;
    rkill.expect_code(200);
    assert_eq!(rkill.s("return"), "true");
    let killed: Vec<i32> = rkill
        .list("process")
        .iter()
        .map(|p| p.parse().expect("numeric pid"))
        .collect();
    assert!(!killed.is_empty(), "{rkill:?}");
    eventually(Duration::from_secs(5), "killed pids to die", || {
        killed.iter().all(|&p| !alive(p)).then_some(())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = order(proto, &agent, "status", "slow").await;
        s.expect_code(200);
        if s.s("alreadyRsync") == "false" && s.body().contains_key("lastRsync") {
            break s;
        }
        assert!(Instant::now() < deadline, "still running: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(after.s("lastRsync"), "killed" | "failed"),
        "{after:?}"
    );
    let rkill = order(proto, &agent, "rkill", "slow").await;
    assert!(rkill.list("process").is_empty(), "nothing left: {rkill:?}");

    // exec: the original's example, byte for byte.
    let exec = order(proto, &agent, "exec", "service:echo,hello,world").await;
    exec.expect_code(200);
    assert_eq!(exec.s("return"), "true");
    assert_eq!(exec.s("code"), "0");
    assert_eq!(exec.s("content"), b64("hello world\n"));
    assert_eq!(exec.s("content"), "aGVsbG8gd29ybGQK");
    assert_eq!(exec.s("command"), b64("/bin/echo hello world"));
    assert_eq!(exec.s("command"), "L2Jpbi9lY2hvIGhlbGxvIHdvcmxk");

    let unknown = order(proto, &agent, "exec", "service:nginx,restart").await;
    unknown.expect_code(400);
    assert_eq!(unknown.text, "exec[service:nginx] not found!");
    assert!(unknown.json.is_none());

    let fails = order(proto, &agent, "exec", "service:false").await;
    fails.expect_code(200);
    assert_eq!(fails.s("return"), "false");
    assert_eq!(fails.s("code"), "1", "the job's exit code (issue 9)");
    assert_eq!(fails.s("content"), "");
    assert!(
        String::from_utf8(unb64(fails.s("command")))
            .unwrap()
            .starts_with("/bin/false"),
        "{fails:?}"
    );
}

#[tokio::test]
async fn every_order_v2() {
    every_order(Proto::V2).await;
}

#[tokio::test]
async fn every_order_v1_plain() {
    every_order(Proto::V1Plain).await;
}

#[tokio::test]
async fn every_order_v1_ssl() {
    every_order(Proto::V1Ssl).await;
}

/// v2 `follow`: exec streams its output lines as events before the reply.
#[tokio::test]
async fn v2_follow_streams_exec_lines() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .job("service:printf", "/usr/bin/printf %s")
        .start(&sb);
    let mut req = request("exec", r"service:printf,one\ntwo\n");
    req.follow = true;
    let reply = v2(agent.addr(), KEY, None, req).await.expect("v2");
    reply.expect_code(200);
    assert_eq!(reply.s("content"), b64("one\ntwo\n"));
    let lines: Vec<String> = reply
        .events
        .iter()
        .map(|e| match e {
            deploy_common::wire::message::Event::Line { line, .. } => line.clone(),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(lines, ["one", "two"]);

    // Output that does not end with a newline: the last line says so.
    let mut req = request("exec", r"service:printf,one\ntwo");
    req.follow = true;
    let reply = v2(agent.addr(), KEY, None, req).await.expect("v2");
    reply.expect_code(200);
    let lines: Vec<(String, bool)> = reply
        .events
        .iter()
        .map(|e| match e {
            deploy_common::wire::message::Event::Line { line, partial, .. } => {
                (line.clone(), *partial)
            }
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(lines, [("one".into(), false), ("two".into(), true)]);
}

/// v2 `follow` on `rsync`: the transfer's output and progress arrive as events, and the
/// reply waits for the end and carries rsync's exit code.
#[tokio::test]
async fn v2_follow_rsync_streams_until_the_end() {
    let sb = Sandbox::new();
    let source = sb.join("source");
    make_tree(&source);
    let rsyncd = RsyncDaemon::start(&source);
    let target = sb.allowed().join("web");
    let agent = Config::new(&sb)
        .group(
            "web",
            &[
                ("dest", &rsyncd.url("DEST")),
                ("src", &target.display().to_string()),
            ],
        )
        .start(&sb);
    let mut req = request("rsync", "web");
    req.follow = true;
    let reply = v2(agent.addr(), KEY, None, req).await.expect("v2");
    reply.expect_code(200);
    assert_eq!(reply.s("return"), "true");
    assert_eq!(reply.s("exitCode"), "0");
    assert_eq!(reply.s("exitMessage"), "success");
    assert_same_tree(&source, &target);
    use deploy_common::wire::message::Event;
    let lines: Vec<&str> = reply
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Line { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("sub/s1.conf")),
        "no file line among {lines:?}"
    );
    assert!(
        reply
            .events
            .iter()
            .any(|e| matches!(e, Event::Progress { percent: 100, .. })),
        "no 100% progress event in {:?}",
        reply.events
    );
    // Afterwards status knows how it ended.
    let status = call(Proto::V2, agent.addr(), "status", "web").await;
    assert_eq!(status.s("lastRsync"), "finished");
}

/// Failures of the work itself are `200` with `return: "false"` and the output, as in
/// the original (spec §4.4, §4.8): a dry run against a source that is down, and a job
/// whose program does not exist.
#[tokio::test]
async fn failures_are_reported_in_the_body() {
    let sb = Sandbox::new();
    let (_hold, closed) = closed_port();
    let agent = Config::new(&sb)
        .group(
            "down",
            &[
                ("dest", &format!("rsync://127.0.0.1:{closed}/DEST")),
                ("src", &sb.allowed_str("down")),
            ],
        )
        .job("service:missing", "/nonexistent/program %s")
        .start(&sb);
    for proto in [Proto::V2, Proto::V1Plain, Proto::V1Ssl] {
        for o in ["status", "rlist"] {
            let r = call(proto, agent.addr(), o, "down").await;
            r.expect_code(200);
            assert_eq!(r.s("return"), "false", "{o}: {r:?}");
            let out = String::from_utf8_lossy(&unb64(r.s("content"))).into_owned();
            assert!(out.contains("Connection refused"), "{o}: {out}");
        }
        // rsync fails at once: "false" with rsync's error, as the original answered
        // after its 1 s wait (issue 9), in v1 and v2 alike.
        let r = call(proto, agent.addr(), "rsync", "down").await;
        r.expect_code(200);
        assert_eq!(r.s("return"), "false", "rsync: {r:?}");
        let out = String::from_utf8_lossy(&unb64(r.s("content"))).into_owned();
        assert!(out.contains("Connection refused"), "rsync: {out}");
        let r = call(proto, agent.addr(), "exec", "service:missing,x").await;
        r.expect_code(200);
        assert_eq!(r.s("return"), "false");
        let out = String::from_utf8_lossy(&unb64(r.s("content"))).into_owned();
        assert!(out.contains("/nonexistent/program"), "{out}");
    }
    assert!(!sb.allowed().join("down").exists());
}
