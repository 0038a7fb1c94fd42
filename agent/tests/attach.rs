//! Following a transfer that another client started (issue 13): `status` of a running
//! transfer says how far it is (bytes, percent, rate, start), a second `rsync --follow`
//! attaches to the running transfer and streams it to its end, and Ctrl-C of a follower
//! leaves the transfer running and prints the `rkill` command that stops it. The real
//! client, agent, runner and rsync daemon; transfers slowed by `--bwlimit`.

use crate::util::*;
use nix::sys::signal::Signal;
use std::process::Command;
use std::time::Duration;

/// An agent with group `name` pulling one file of `bytes` at `--bwlimit=kib` KiB/s.
fn slow_agent(sb: &Sandbox, name: &str, bytes: usize, kib: u32) -> (Agent, RsyncDaemon) {
    let source = sb.join("source");
    make_blob(&source.join("big.bin"), bytes);
    let rsyncd = RsyncDaemon::start(&source);
    let bwlimit = format!("--bwlimit={kib}");
    let agent = Config::new(sb)
        .group(
            name,
            &[
                ("dest", &rsyncd.url("DEST")),
                ("src", &sb.allowed_str(name)),
                ("option[]", "--archive"),
                ("option[]", &bwlimit),
            ],
        )
        .start(sb);
    (agent, rsyncd)
}

/// `deploy-client` with a clean environment and the agents' key.
fn client_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bins::client());
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("DEPLOY_KEY_CIPHER", KEY)
        .env("NO_COLOR", "1");
    cmd
}

fn client(args: &[&str]) -> Output {
    run_command(&mut client_command(args), Duration::from_secs(60))
}

/// Asks `status` of `group` every 100 ms until `done` holds (15 s at most).
async fn status_until(
    proto: Proto,
    agent: &Agent,
    group: &str,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = call(proto, agent.addr(), "status", group).await;
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `status` of a running transfer keeps the original's keys and adds how far it is.
#[tokio::test]
async fn status_reports_the_bytes_and_percent_of_a_running_transfer() {
    let sb = Sandbox::new();
    // 4 MiB at 100 KiB/s: about 40 s, stopped by rkill below.
    let (agent, _rsyncd) = slow_agent(&sb, "slow", 4 << 20, 100);
    call(Proto::V2, agent.addr(), "rsync", "slow")
        .await
        .expect_code(200);
    for proto in [Proto::V2, Proto::V1Plain] {
        let status = status_until(proto, &agent, "slow", "a progress figure", |s| {
            s.body().contains_key("transferredBytes")
        })
        .await;
        status.expect_code(200);
        assert_eq!(status.s("return"), "true", "{status:?}");
        assert_eq!(status.s("alreadyRsync"), "true", "{status:?}");
        assert!(!status.list("process").is_empty(), "{status:?}");
        assert!(
            !status.body().contains_key("checksum"),
            "a checksum marks a started transfer: {status:?}"
        );
        let bytes: u64 = status.s("transferredBytes").parse().expect("bytes");
        assert!(bytes <= 4 << 20, "{status:?}");
        let percent: u8 = status.s("transferPercent").parse().expect("percent");
        assert!(percent < 100, "{status:?}");
        assert!(status.s("transferRate").ends_with("/s"), "{status:?}");
        let since: u64 = status.s("transferStarted").parse().expect("start");
        assert!(
            since <= unix_now() && since + 120 > unix_now(),
            "{status:?}"
        );
        // Every value a string, as the original's callers expect.
        for (key, value) in status.body() {
            assert!(
                value.is_string()
                    || value
                        .as_array()
                        .is_some_and(|a| a.iter().all(|v| v.is_string())),
                "{key}: {status:?}"
            );
        }
    }
    // The text format shows them, the start as a date.
    let host = agent.addr().to_string();
    let out = client(&[
        "--hosts",
        &host,
        "--order=status",
        "--options=slow",
        "--format=text",
    ]);
    out.expect_code(0);
    assert!(
        out.stdout.contains(" transferPercent=") && out.stdout.contains(" transferredBytes="),
        "{out:#?}"
    );
    assert!(
        has_date(&out.stdout, "transferStarted"),
        "the start as a date: {out:#?}"
    );
    call(Proto::V2, agent.addr(), "rkill", "slow")
        .await
        .expect_code(200);
}

/// Whether `text` has ` key=YYYY-MM-DDTHH:MM:SS` (a date, not Unix seconds).
fn has_date(text: &str, key: &str) -> bool {
    let needle = format!(" {key}=");
    text.match_indices(&needle).any(|(at, _)| {
        let value: String = text[at + needle.len()..].chars().take(19).collect();
        let bytes = value.as_bytes();
        value.len() == 19
            && bytes[4] == b'-'
            && bytes[7] == b'-'
            && bytes[10] == b'T'
            && bytes[13] == b':'
            && bytes[16] == b':'
    })
}

/// A second client's `rsync --follow` attaches to the transfer the first started and
/// ends with its result; afterwards `status --format=text` dates the end.
#[test]
fn a_second_client_attaches_to_a_running_transfer() {
    let sb = Sandbox::new();
    // 1.5 MiB at 200 KiB/s: about 7.5 s.
    let (agent, _rsyncd) = slow_agent(&sb, "medium", 3 << 19, 200);
    let host = agent.addr().to_string();
    let first = client(&["--hosts", &host, "--order=rsync", "--options=medium"]);
    first.expect_code(0);
    let record = &first.json()[&host]["rsync"]["content"];
    assert!(record["checksum"].is_string(), "started: {first:#?}");
    assert!(record.get("exitCode").is_none(), "not followed: {first:#?}");

    let second = client(&[
        "--hosts",
        &host,
        "--order=rsync",
        "--options=medium",
        "--follow",
        "--format=jsonl",
    ]);
    second.expect_code(0);
    let lines = second.json_lines();
    let result = lines
        .iter()
        .find(|l| l["order"] == "rsync")
        .unwrap_or_else(|| panic!("a result: {second:#?}"));
    let content = &result["result"]["content"];
    assert_eq!(content["attached"], "true", "{second:#?}");
    assert_eq!(content["exitCode"], "0", "to the end: {second:#?}");
    assert_eq!(content["checksum"], record["checksum"], "{second:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l["event"]["kind"] == "progress" || l["line"].is_string()),
        "the transfer's output streamed: {second:#?}"
    );
    assert_same_tree(&sb.join("source"), &sb.allowed().join("medium"));

    let status = client(&[
        "--hosts",
        &host,
        "--order=status",
        "--options=medium",
        "--format=text",
    ]);
    status.expect_code(0);
    assert!(
        has_date(&status.stdout, "lastRsyncFinished"),
        "a date, not Unix seconds: {status:#?}"
    );
}

/// Ctrl-C of a follower: exit 130, the transfer goes on, and the command printed stops
/// it.
#[tokio::test]
async fn ctrl_c_leaves_the_transfer_running_and_says_how_to_stop_it() {
    let sb = Sandbox::new();
    let (agent, _rsyncd) = slow_agent(&sb, "slow", 4 << 20, 100);
    let host = agent.addr().to_string();
    let mut follower = Spawned::start(&mut client_command(&[
        "--hosts",
        &host,
        "--order",
        "rsync",
        "--options",
        "slow",
        "--follow",
    ]));
    // Following: the transfer's first lines are on its standard error.
    follower.wait_for_stderr(Duration::from_secs(15), |l| {
        l.starts_with(&format!("{host}: "))
    });
    follower.signal(Signal::SIGINT);
    let out = follower.finish(Duration::from_secs(15));
    assert_eq!(out.code, Some(130), "{out:#?}");
    assert!(
        out.stderr
            .contains("the transfer goes on on the agents; to stop it:"),
        "{out:#?}"
    );
    let command = out
        .stderr
        .lines()
        .map(str::trim)
        .find(|l| l.contains("--order=rkill"))
        .unwrap_or_else(|| panic!("the rkill command: {out:#?}"))
        .to_owned();
    assert!(
        command.starts_with(&bins::client().display().to_string())
            && command.contains(&format!("--hosts={host}"))
            && command.contains("--options slow")
            && !command.contains("--follow"),
        "{command}"
    );

    // The transfer goes on.
    let status = call(Proto::V2, agent.addr(), "status", "slow").await;
    assert_eq!(
        status.s("alreadyRsync"),
        "true",
        "still running: {status:?}"
    );

    // The command printed stops it.
    let rkill = run_command(
        Command::new("sh")
            .args(["-c", &command])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", KEY),
        Duration::from_secs(60),
    );
    rkill.expect_code(0);
    let killed = &rkill.json()[&host]["rkill"]["content"]["process"];
    assert!(
        killed.as_array().is_some_and(|p| !p.is_empty()),
        "{rkill:#?}"
    );
    let after = status_until(Proto::V2, &agent, "slow", "the transfer to end", |s| {
        s.body().contains_key("lastRsync")
    })
    .await;
    assert!(
        matches!(after.s("lastRsync"), "killed" | "failed"),
        "{after:?}"
    );
}

/// Under `--lock`, Ctrl-C of a followed rsync releases the lock and, here too, says the
/// transfer goes on and how to stop it.
#[tokio::test]
async fn ctrl_c_under_a_lock_says_the_transfer_goes_on() {
    let sb = Sandbox::new();
    let (agent, _rsyncd) = slow_agent(&sb, "slow", 4 << 20, 100);
    let host = agent.addr().to_string();
    let mut follower = Spawned::start(&mut client_command(&[
        "--hosts",
        &host,
        "--order=rsync",
        "--options=slow",
        "--follow",
        "--lock",
    ]));
    follower.wait_for_stderr(Duration::from_secs(15), |l| {
        l.starts_with(&format!("{host}: "))
    });
    follower.signal(Signal::SIGINT);
    let out = follower.finish(Duration::from_secs(15));
    assert_eq!(out.code, Some(130), "{out:#?}");
    assert!(
        out.stderr
            .contains("the transfer goes on on the agents; to stop it:")
            && out.stderr.contains("releasing lock deploy"),
        "{out:#?}"
    );
    let command = out
        .stderr
        .lines()
        .find(|l| l.contains("--order=rkill"))
        .unwrap_or_else(|| panic!("the rkill command: {out:#?}"));
    assert!(!command.contains("--lock"), "{command}");
    let status = call(Proto::V2, agent.addr(), "status", "slow").await;
    assert_eq!(
        status.s("alreadyRsync"),
        "true",
        "still running: {status:?}"
    );
    call(Proto::V2, agent.addr(), "rkill", "slow")
        .await
        .expect_code(200);
}
