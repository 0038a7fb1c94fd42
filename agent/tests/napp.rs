//! `napp`: Octopoda's NodeApp steps on real agents, through raw v2 orders (the shapes of
//! `deploy_common::order::napp`): pushes with a tar body, versions recorded only on
//! change, `.gitignore`, revert-style resets with prefixes, versions across a restart,
//! scripts with their variables and `$OCTOPODA_OUTPUT`, and the refusals (scenarios
//! off, bad names, a workspace outside `[allow::paths]`, links planted to lead out).

use crate::util::*;
use base64::Engine as _;
use deploy_common::order::napp::{Action, NappSpec};
use deploy_common::wire::message::{Event, Message};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An agent with scenarios on; its workspace.
fn scenario_agent(sb: &Sandbox) -> (Agent, PathBuf) {
    let ws = sb.allowed().join("sc/workspace");
    let agent = Config::new(sb)
        .raw(&format!(
            "[scenarios]\nenabled = on\nworkspace = {}\n",
            ws.display()
        ))
        .start(sb);
    (agent, ws)
}

fn spec(action: Action, app: &str) -> NappSpec {
    NappSpec {
        action,
        scenario: "s1".into(),
        app: app.into(),
        ..NappSpec::default()
    }
}

/// One napp order (with `body` as its tar body), followed or not.
fn napp(addr: std::net::SocketAddr, spec: NappSpec, body: Option<&[u8]>, follow: bool) -> Reply {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = v2_connect(addr, KEY, None).await.expect("connect");
        let mut request = request("napp", "");
        request.napp = Some(Box::new(spec));
        request.follow = follow;
        conn.send(&Message::Request { id: 1, request })
            .await
            .unwrap();
        let mut events = Vec::new();
        loop {
            let message = tokio::time::timeout(std::time::Duration::from_secs(30), conn.recv())
                .await
                .expect("the agent answers")
                .unwrap();
            match message {
                Some(Message::Continue { id: 1 }) => {
                    let bytes = body.expect("a body was asked for");
                    for piece in bytes.chunks(4000) {
                        conn.send(&Message::data(1, piece, false)).await.unwrap();
                    }
                    conn.send(&Message::data(1, &[], true)).await.unwrap();
                }
                Some(Message::Event { event, .. }) => events.push(event),
                Some(Message::Reply {
                    code, body, text, ..
                }) => {
                    break Reply {
                        code,
                        reason: String::new(),
                        content_type: String::new(),
                        json: body,
                        text: text.unwrap_or_default(),
                        events,
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
}

/// A tar of the tree under `dir`.
fn tar_of(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--format=ustar", "-cf", "-", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn push(addr: std::net::SocketAddr, app: &str, src: &Path, message: &str) -> String {
    let mut s = spec(Action::Push, app);
    s.message = message.into();
    let r = napp(addr, s, Some(&tar_of(src)), false);
    r.expect_code(200);
    r.s("version").to_owned()
}

fn versions(
    addr: std::net::SocketAddr,
    app: &str,
    offset: usize,
    limit: usize,
) -> (Vec<BTreeMap<String, String>>, Reply) {
    let mut s = spec(Action::Versions, app);
    s.offset = Some(offset);
    s.limit = Some(limit);
    let r = napp(addr, s, None, false);
    r.expect_code(200);
    (serde_json::from_str(r.s("versions")).unwrap(), r)
}

fn reset(addr: std::net::SocketAddr, app: &str, prefix: &str) -> Reply {
    let mut s = spec(Action::Reset, app);
    s.version = prefix.into();
    s.message = format!("reset to {prefix}");
    napp(addr, s, None, false)
}

#[test]
fn pushes_record_a_version_only_when_something_changed() {
    let sb = Sandbox::new();
    let (agent, ws) = scenario_agent(&sb);
    let src = sb.join("src");
    write(&src.join("conf/app.ini"), "v1\n");
    write(&src.join("run.sh"), "echo hi\n");
    let a = push(agent.addr(), "web", &src, "first");
    assert_eq!(a.len(), 64, "{a}");
    let dir = ws.join("web@s1");
    assert_eq!(read(&dir.join("conf/app.ini")), "v1\n");
    assert_eq!(
        push(agent.addr(), "web", &src, "same"),
        "",
        "nothing changed"
    );
    write(&src.join("conf/app.ini"), "v2\n");
    let b = push(agent.addr(), "web", &src, "second");
    assert!(!b.is_empty() && b != a);
    // commit: a version even though nothing changed.
    let mut s = spec(Action::Commit, "web");
    s.message = "release 1".into();
    let c = napp(agent.addr(), s, None, false);
    let c = c.expect_code(200).s("version").to_owned();
    assert!(!c.is_empty() && c != b);
    let (listed, r) = versions(agent.addr(), "web", 0, 2);
    assert_eq!(r.s("total"), "3");
    assert_eq!(r.s("current"), c);
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0]["version"].as_str(), listed[0]["message"].as_str()),
        (c.as_str(), "release 1")
    );
    assert_eq!(listed[1]["version"], b);
    let (older, _) = versions(agent.addr(), "web", 2, 5);
    assert_eq!(older.len(), 1);
    assert_eq!(older[0]["version"], a);
    // get lists it.
    let r = napp(agent.addr(), spec(Action::Get, ""), None, false);
    let napps: Vec<serde_json::Value> =
        serde_json::from_str(r.expect_code(200).s("napps")).unwrap();
    assert_eq!(napps.len(), 1, "{napps:?}");
    assert_eq!(napps[0]["app"], "web");
    assert_eq!(napps[0]["current"], c.as_str());
    assert_eq!(napps[0]["versions"], 3);
    // purge: the directory and its versions gone.
    napp(agent.addr(), spec(Action::Purge, "web"), None, false).expect_code(200);
    assert!(!dir.exists());
    assert!(!ws.join(".deploy/versions/web@s1").exists());
    let (listed, r) = versions(agent.addr(), "web", 0, 5);
    assert!(listed.is_empty());
    assert_eq!(r.s("total"), "0");
}

#[test]
fn gitignored_files_are_not_recorded_and_survive_a_reset() {
    let sb = Sandbox::new();
    let (agent, ws) = scenario_agent(&sb);
    let src = sb.join("src");
    write(&src.join(".gitignore"), "*.log\ntmp/\n");
    write(&src.join("app.conf"), "A\n");
    let a = push(agent.addr(), "web", &src, "A");
    let dir = ws.join("web@s1");
    // What the application writes at run time, ignored.
    write(&dir.join("app.log"), "started\n");
    write(&dir.join("tmp/cache"), "cached\n");
    let mut commit = spec(Action::Commit, "web");
    commit.message = "with logs".into();
    napp(agent.addr(), commit.clone(), None, false).expect_code(200);
    // An ignored file changing is no change.
    write(&dir.join("app.log"), "started\nstopped\n");
    assert_eq!(push(agent.addr(), "web", &src, "again"), "");
    write(&src.join("app.conf"), "B\n");
    write(&src.join("new.txt"), "B only\n");
    push(agent.addr(), "web", &src, "B");
    let r = reset(agent.addr(), "web", &a[..3]);
    r.expect_code(200);
    assert_eq!(r.s("restored"), a);
    assert_eq!(read(&dir.join("app.conf")), "A\n");
    assert!(!dir.join("new.txt").exists(), "not in A");
    assert_eq!(
        read(&dir.join("app.log")),
        "started\nstopped\n",
        "ignored: left alone"
    );
    assert_eq!(read(&dir.join("tmp/cache")), "cached\n");
}

#[test]
fn reset_is_revert_style_and_refuses_short_or_ambiguous_prefixes() {
    let sb = Sandbox::new();
    let (agent, ws) = scenario_agent(&sb);
    let src = sb.join("src");
    let dir = ws.join("web@s1");
    let mut ids = Vec::new();
    for v in ["A", "B", "C"] {
        write(&src.join("v.txt"), v);
        ids.push(push(agent.addr(), "web", &src, v));
    }
    let r = reset(agent.addr(), "web", &ids[0][..3]);
    r.expect_code(200);
    let new = r.s("version").to_owned();
    assert_eq!(read(&dir.join("v.txt")), "A");
    let (listed, r) = versions(agent.addr(), "web", 0, 10);
    assert_eq!(r.s("total"), "4");
    let got: Vec<&str> = listed.iter().map(|v| v["version"].as_str()).collect();
    assert_eq!(
        got,
        [new.as_str(), &ids[2], &ids[1], &ids[0]],
        "A, B, C, A' newest first"
    );
    // The restored tree is A's: pushing A again records nothing.
    write(&src.join("v.txt"), "A");
    assert_eq!(push(agent.addr(), "web", &src, "A again"), "");

    let r = reset(agent.addr(), "web", &ids[1][..2]);
    assert_eq!(r.code, 400, "{r:?}");
    assert!(r.text.contains("at least 3"), "{r:?}");
    let r = reset(agent.addr(), "web", "zzz");
    assert_eq!(r.code, 400, "{r:?}");
    let r = reset(agent.addr(), "nope", &ids[1][..8]);
    assert_eq!(r.code, 404, "{r:?}");
    // Commit until two versions share 3 hex digits (4096 prefixes: a few dozen commits).
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for v in ids.iter().chain([&new]) {
        seen.insert(v[..3].to_owned(), v.clone());
    }
    let shared = (0..600)
        .find_map(|n| {
            let mut s = spec(Action::Commit, "web");
            s.message = format!("c{n}");
            let r = napp(agent.addr(), s, None, false);
            let id = r.expect_code(200).s("version").to_owned();
            seen.insert(id[..3].to_owned(), id.clone())
                .map(|_| id[..3].to_owned())
        })
        .expect("a shared prefix");
    write(&dir.join("v.txt"), "changed by hand");
    let r = reset(agent.addr(), "web", &shared);
    assert_eq!(r.code, 400, "{r:?}");
    assert!(r.text.contains("ambiguous"), "{r:?}");
    assert_eq!(
        read(&dir.join("v.txt")),
        "changed by hand",
        "a refused reset changes nothing"
    );
}

#[test]
fn versions_survive_an_agent_restart() {
    let sb = Sandbox::new();
    let (agent, ws) = scenario_agent(&sb);
    let src = sb.join("src");
    write(&src.join("f"), "1");
    let a = push(agent.addr(), "web", &src, "one");
    write(&src.join("f"), "2");
    let b = push(agent.addr(), "web", &src, "two");
    drop(agent);
    let (agent, _) = scenario_agent(&sb);
    let (listed, _) = versions(agent.addr(), "web", 0, 5);
    let got: Vec<&str> = listed.iter().map(|v| v["version"].as_str()).collect();
    assert_eq!(got, [b.as_str(), a.as_str()]);
    assert_eq!(
        push(agent.addr(), "web", &src, "same"),
        "",
        "the new agent knows the tree"
    );
    reset(agent.addr(), "web", &a[..5]).expect_code(200);
    assert_eq!(read(&ws.join("web@s1/f")), "1");
}

#[test]
fn scripts_get_the_variables_and_return_their_output() {
    let sb = Sandbox::new();
    let (agent, ws) = scenario_agent(&sb);
    let src = sb.join("src");
    write(&src.join("data.txt"), "payload\n");
    push(agent.addr(), "web", &src, "p");
    let script = "echo \"pwd=$PWD\"\n\
                  env | grep -E '^(OCTOPODA|DEPLOY)_' | sort\n\
                  cat data.txt\n\
                  echo to-stderr >&2\n\
                  echo \"result one\" >> \"$OCTOPODA_OUTPUT\"\n\
                  printf 'result two' >> \"$DEPLOY_OUTPUT\"\n\
                  ls -A\n\
                  exit 3\n";
    let mut s = spec(Action::Script, "web");
    s.target = "start".into();
    s.file = "start.sh".into();
    s.script = base64::engine::general_purpose::STANDARD.encode(script);
    s.env.insert("OCTOPODA_NODENAME".into(), "node-7".into());
    s.env
        .insert("OCTOPODA_CURRENTDIR".into(), "/caller/guess".into());
    s.env.insert("CUSTOM".into(), "x".into());
    let r = napp(agent.addr(), s.clone(), None, true);
    r.expect_code(200);
    let decode = |k: &str| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(r.s(k))
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(r.s("return"), "false", "exit 3 is a failure");
    assert_eq!(r.s("code"), "3");
    assert_eq!(decode("output"), "result one\nresult two");
    let stdout = decode("stdout");
    let dir = ws.canonicalize().unwrap().join("web@s1");
    let root = dir.parent().unwrap().parent().unwrap();
    assert!(
        stdout.contains(&format!("pwd={}\n", dir.display())),
        "{stdout}"
    );
    for prefix in ["OCTOPODA_", "DEPLOY_"] {
        for (k, v) in [
            ("NODENAME", "node-7".to_owned()),
            ("CURRENTDIR", dir.display().to_string()),
            ("FILENAME", "start.sh".into()),
            ("APP", "web".into()),
            ("SCENARIO", "s1".into()),
            ("ROOT", root.display().to_string()),
            ("WORKSPACE", root.join("workspace").display().to_string()),
            ("FSTORE", root.join("fstore").display().to_string()),
            ("LOG", root.join("log").display().to_string()),
        ] {
            assert!(
                stdout.contains(&format!("{prefix}{k}={v}\n")),
                "{prefix}{k}: {stdout}"
            );
        }
    }
    assert!(stdout.contains("DEPLOY_TARGET=start\n"), "{stdout}");
    assert!(stdout.contains("payload\n"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("data.txt"),
        "nothing but the NodeApp's files in its dir: {stdout}"
    );
    assert_eq!(decode("stderr"), "to-stderr\n");
    // Followed: the lines came as events too.
    let lines: Vec<String> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Line { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect();
    assert!(lines.contains(&"to-stderr".to_owned()), "{lines:?}");
    assert!(lines.contains(&"payload".to_owned()), "{lines:?}");
    // The private files are gone.
    let scratch = sb.join("state/napp");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    // Success, and a fresh output file per run.
    s.script =
        base64::engine::general_purpose::STANDARD.encode("echo again >> \"$OCTOPODA_OUTPUT\"\n");
    let r = napp(agent.addr(), s, None, false);
    assert_eq!((r.s("return"), r.s("code")), ("true", "0"));
    assert_eq!(
        r.s("output"),
        base64::engine::general_purpose::STANDARD.encode("again\n")
    );
}

#[test]
fn refused_when_scenarios_are_off_or_names_are_bad() {
    let sb = Sandbox::new();
    let off = Config::new(&sb).start(&sb);
    let r = napp(off.addr(), spec(Action::Get, ""), None, false);
    assert_eq!(r.code, 403, "{r:?}");
    assert!(r.text.contains("[scenarios] enabled = off"), "{r:?}");
    drop(off);

    let sb = Sandbox::new();
    let (agent, ws) = scenario_agent(&sb);
    let src = sb.join("src");
    write(&src.join("f"), "x");
    for (scenario, app) in [
        ("s1", ".."),
        ("..", "web"),
        ("s1", "a/b"),
        ("s1", ".hidden"),
        ("s1", ""),
        ("", "web"),
        ("s1", "a@b"),
    ] {
        let mut s = spec(Action::Push, app);
        s.scenario = scenario.into();
        let r = napp(agent.addr(), s, Some(&tar_of(&src)), false);
        assert_eq!(r.code, 400, "{scenario:?} {app:?}: {r:?}");
        assert!(r.text.contains("invalid"), "{r:?}");
    }
    assert!(!sb.allowed().join("sc/f").exists() && !sb.join("f").exists());
    let made = std::fs::read_dir(&ws).map(|d| d.count()).unwrap_or(0);
    assert_eq!(made, 0, "nothing made in the workspace");
}

#[test]
fn a_workspace_outside_the_allowed_paths_refuses_to_start() {
    let sb = Sandbox::new();
    let config = Config::new(&sb).raw(&format!(
        "[scenarios]\nenabled = on\nworkspace = {}\n",
        sb.join("elsewhere/ws").display()
    ));
    std::fs::write(sb.join("agent.ini"), config.ini_text()).unwrap();
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    let ini = sb.join("agent.ini");
    let (code, _, stderr) = run_agent(&["--path", ini.to_str().unwrap(), "--foreground"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("refusing to start") && stderr.contains("[scenarios] workspace"),
        "{stderr}"
    );
    let (code, _, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("is not under an [allow::paths] path"),
        "{stderr}"
    );
}

#[test]
fn links_planted_in_a_nodeapp_never_lead_out() {
    let sb = Sandbox::new();
    let (agent, ws) = scenario_agent(&sb);
    let outside = sb.join("outside");
    write(&outside.join("keep"), "outside\n");
    let src = sb.join("src");
    write(&src.join("d/keep"), "inside\n");
    let a = push(agent.addr(), "web", &src, "A");
    let dir = ws.join("web@s1");
    // d becomes a link out: a snapshot records the link, not what it points to.
    std::fs::remove_dir_all(dir.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("d")).unwrap();
    let mut commit = spec(Action::Commit, "web");
    commit.message = "planted".into();
    napp(agent.addr(), commit, None, false).expect_code(200);
    // A push through the link is refused by the extractor.
    let r = napp(
        agent.addr(),
        spec(Action::Push, "web"),
        Some(&tar_of(&src)),
        false,
    );
    assert_eq!(r.code, 400, "{r:?}");
    assert!(r.text.contains("symbolic link"), "{r:?}");
    // A reset replaces the link with A's directory, writing nothing outside.
    reset(agent.addr(), "web", &a[..6]).expect_code(200);
    assert!(std::fs::symlink_metadata(dir.join("d")).unwrap().is_dir());
    assert_eq!(read(&dir.join("d/keep")), "inside\n");
    assert_eq!(read(&outside.join("keep")), "outside\n");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    // A NodeApp directory that is itself a link out is refused, for every action.
    std::os::unix::fs::symlink(&outside, ws.join("evil@s1")).unwrap();
    let r = napp(
        agent.addr(),
        spec(Action::Push, "evil"),
        Some(&tar_of(&src)),
        false,
    );
    assert_eq!(r.code, 500, "{r:?}");
    assert!(r.text.contains("symbolic link"), "{r:?}");
    let mut s = spec(Action::Script, "evil");
    s.script = base64::engine::general_purpose::STANDARD.encode("touch pwned\n");
    let r = napp(agent.addr(), s, None, false);
    assert!(r.code >= 400, "{r:?}");
    napp(agent.addr(), spec(Action::Purge, "evil"), None, false).expect_code(200);
    assert_eq!(read(&outside.join("keep")), "outside\n");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing made or removed outside"
    );
}

/// A script past `max_process_timeout` gets 408 and is killed with its group; its
/// private files go too.
#[test]
fn a_script_past_its_deadline_is_killed() {
    let sb = Sandbox::new();
    let ws = sb.allowed().join("sc/workspace");
    let agent = Config::new(&sb)
        .server("max_process_timeout", 1)
        .raw(&format!(
            "[scenarios]\nenabled = on\nworkspace = {}\n",
            ws.display()
        ))
        .start(&sb);
    let mut s = spec(Action::Script, "web");
    s.script =
        base64::engine::general_purpose::STANDARD.encode("sleep 60 &\necho $! > pid\nwait\n");
    let r = napp(agent.addr(), s, None, false);
    assert_eq!(r.code, 408, "{r:?}");
    let pid: i32 = wait_until(std::time::Duration::from_secs(10), "the pid file", || {
        std::fs::read_to_string(ws.join("web@s1/pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    wait_until(
        std::time::Duration::from_secs(10),
        "the script's child killed",
        || (!alive(pid)).then_some(()),
    );
    wait_until(
        std::time::Duration::from_secs(10),
        "the private files removed",
        || (std::fs::read_dir(sb.join("state/napp")).ok()?.count() == 0).then_some(()),
    );
}

/// Output beyond what one reply carries: the end of each stream and of
/// `$OCTOPODA_OUTPUT` comes back, said so, instead of a reply too big to send.
#[test]
fn a_script_with_a_big_output_still_gets_its_reply() {
    let sb = Sandbox::new();
    let (agent, _) = scenario_agent(&sb);
    let mut s = spec(Action::Script, "web");
    s.script = base64::engine::general_purpose::STANDARD.encode(
        "yes 0123456789abcdef | head -c 20000000\n\
         yes err | head -c 20000000 >&2\n\
         yes out | head -c 20000000 >> \"$OCTOPODA_OUTPUT\"\n\
         echo last\n",
    );
    let r = napp(agent.addr(), s, None, false);
    r.expect_code(200);
    let decode = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(r.s(k))
            .unwrap()
    };
    let stdout = decode("stdout");
    assert!(stdout.len() < 4 << 20, "{}", stdout.len());
    assert!(stdout.starts_with(b"[deploy-agent: earlier output dropped]\n"));
    assert!(stdout.ends_with(b"last\n"));
    let output = decode("output");
    assert!(
        output.len() < 4 << 20 && output.ends_with(b"out\n"),
        "{}",
        output.len()
    );
    assert!(decode("stderr").ends_with(b"err\n"));
}

/// The script may replace `$OCTOPODA_OUTPUT`: a FIFO nobody writes must not stall the
/// agent's read (the order is answered), and a link to a file outside is not followed
/// (the agent, maybe root, never reads it back for the caller).
#[test]
fn an_output_file_swapped_for_a_fifo_or_a_link_is_not_read() {
    let sb = Sandbox::new();
    let (agent, _) = scenario_agent(&sb);
    let mut s = spec(Action::Script, "web");
    s.script = base64::engine::general_purpose::STANDARD
        .encode("rm -f \"$OCTOPODA_OUTPUT\"\nmkfifo \"$OCTOPODA_OUTPUT\"\necho done\n");
    let r = napp(agent.addr(), s, None, false);
    r.expect_code(200);
    assert_eq!(r.s("code"), "0", "{r:?}");
    assert_eq!(r.s("output"), "", "{r:?}");

    let secret = sb.join("secret");
    write(&secret, "not for the caller\n");
    let mut s = spec(Action::Script, "web");
    s.script = base64::engine::general_purpose::STANDARD.encode(format!(
        "rm -f \"$OCTOPODA_OUTPUT\"\nln -s '{}' \"$OCTOPODA_OUTPUT\"\n",
        secret.display()
    ));
    let r = napp(agent.addr(), s, None, false);
    r.expect_code(200);
    assert_eq!(r.s("output"), "", "{r:?}");
}

/// Endless bytes without a newline (followed): they come as partial lines of bounded
/// size, and the reply comes with the end of the stream, instead of one line growing
/// in the agent's memory past what one event can carry.
#[test]
fn a_line_without_end_comes_in_pieces() {
    let sb = Sandbox::new();
    let (agent, _) = scenario_agent(&sb);
    let mut s = spec(Action::Script, "web");
    s.script = base64::engine::general_purpose::STANDARD
        .encode("head -c 20000000 /dev/zero | tr '\\0' a\necho\necho last\n");
    let r = napp(agent.addr(), s, None, true);
    r.expect_code(200);
    let mut longest = 0;
    let mut total = 0;
    for event in &r.events {
        if let Event::Line { line, .. } = event {
            longest = longest.max(line.len());
            total += line.len();
        }
    }
    assert!(longest <= 64 << 10, "a line event of {longest} bytes");
    assert_eq!(total, 20_000_000 + "last".len(), "every byte came");
    let stdout = base64::engine::general_purpose::STANDARD
        .decode(r.s("stdout"))
        .unwrap();
    assert!(stdout.ends_with(b"a\nlast\n"));
}
