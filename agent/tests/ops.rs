//! Operating faults (issue 8 §5, §6): default secrets refused, running as `nobody`, jobs
//! that outlive their caller or their worker, `rkill` letting rsync clean up, and
//! reloads under load that lose no order.

use crate::util::*;
use deploy_common::wire::message::Message;
use nix::sys::signal::Signal;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// Pids of live `/bin/sleep <marker>` processes.
fn with_marker(marker: &str) -> Vec<i32> {
    let want = format!("/bin/sleep {marker}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| alive(pid) && cmdline(pid).trim_end() == want)
        .collect()
}

/// Waits for exactly one `/bin/sleep <marker>`.
async fn one_with_marker(marker: &str) -> i32 {
    let found = eventually(Duration::from_secs(10), "the job to start", || {
        let pids = with_marker(marker);
        (!pids.is_empty()).then_some(pids)
    })
    .await;
    assert_eq!(
        found.len(),
        1,
        "{found:?}: {:?}",
        found.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
    );
    found[0]
}

#[test]
fn default_secrets_are_refused_unless_allowed() {
    for weak in ["65535", "change-me", ""] {
        let sb = Sandbox::new();
        let config = Config::new(&sb).server("key_cipher", weak);
        std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
        std::fs::write(sb.join("agent.ini"), config.ini_text()).unwrap();
        let ini = sb.join("agent.ini");
        let (code, _, stderr) = run_agent(&["--path", ini.to_str().unwrap(), "--foreground"]);
        assert_eq!(code, 1, "{weak:?}: {stderr}");
        assert!(
            stderr.contains("refusing to start")
                && stderr.contains("[server] key_cipher is a default secret"),
            "{weak:?}: {stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
        let (code, _, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
        assert_eq!(code, 1, "{weak:?}: {stderr}");
        assert!(stderr.contains("default secret"), "{stderr}");
    }
    // The lab override.
    let sb = Sandbox::new();
    let _agent = Config::new(&sb)
        .server("key_cipher", "65535")
        .server("allow_default_secrets", "on")
        .start(&sb);
}

/// `user`/`group` with a state dir the master creates: the workers (as nobody) serve.
#[tokio::test]
async fn runs_as_nobody_with_a_master_created_state_dir() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = sb.join("var/lib/agent-state");
    let agent = Config::new(&sb)
        .server("user", "nobody")
        .server("group", "nogroup")
        .server("state_dir", state.display())
        .start(&sb);
    let worker = agent.wait_workers(1).await[0];
    let uid = std::fs::read_to_string(format!("/proc/{worker}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|u| u.split_whitespace().next().unwrap_or("").to_owned())
        })
        .unwrap();
    assert_eq!(uid, "65534", "the worker runs as nobody");
    for proto in [Proto::V2, Proto::V1Plain] {
        let r = call(proto, agent.addr(), "exec", "service:echo,as-nobody").await;
        r.expect_code(200);
        assert_eq!(r.s("content"), b64("as-nobody\n"));
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), 65534);
    assert!(agent.log().contains("started"), "{}", agent.log());
}

/// A state dir nobody cannot use is refused at start (and by --check), instead of
/// workers that crash in a loop behind a master that says it started.
#[test]
fn unusable_state_dir_is_refused_at_start() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = sb.join("theirs");
    std::fs::create_dir(&state).unwrap();
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(4_000_321)), None).unwrap();
    let config = Config::new(&sb)
        .server("user", "nobody")
        .server("state_dir", state.display());
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    std::fs::write(sb.join("agent.ini"), config.ini_text()).unwrap();
    let ini = sb.join("agent.ini");
    for args in [&["--check"][..], &["--foreground"][..]] {
        let mut all = args.to_vec();
        all.extend(["--path", ini.to_str().unwrap()]);
        let (code, _, stderr) = run_agent(&all);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains("not by nobody"), "{args:?}: {stderr}");
        assert!(!stderr.contains("started"), "{stderr}");
    }
}

/// The client gives up (`--thread-timeout`): the agent stops the job.
#[tokio::test]
async fn a_job_whose_caller_went_away_is_stopped() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let marker = "271.8281";
    let addr = agent.addr().to_string();
    let client = tokio::task::spawn_blocking(move || {
        run_command(
            std::process::Command::new(bins::client()).args([
                "--hosts",
                &addr,
                "--key-cipher",
                KEY,
                "--order=exec",
                &format!("--options=service:sleep,{marker}"),
                "--thread-timeout=2",
            ]),
            Duration::from_secs(20),
        )
    });
    let job = one_with_marker(marker).await;
    let out = client.await.unwrap();
    assert!(
        out.stderr.contains("no reply within 2 s"),
        "the client timed out: {:?} {}",
        out.code,
        out.stderr
    );
    eventually(
        Duration::from_secs(4),
        "the job to stop after its caller left",
        || (!alive(job)).then_some(()),
    )
    .await;

    // Same for a raw v2 connection closed while its order runs.
    let mut conn = v2_connect(agent.addr(), KEY, None).await.unwrap();
    conn.send(&Message::Request {
        id: 1,
        request: request("exec", "service:sleep,314.159"),
    })
    .await
    .unwrap();
    let job = one_with_marker("314.159").await;
    drop(conn);
    eventually(Duration::from_secs(4), "the job to stop", || {
        (!alive(job)).then_some(())
    })
    .await;
    // The worker is fine.
    call(Proto::V2, agent.addr(), "exec", "service:echo,ok")
        .await
        .expect_code(200);
}

/// A SIGKILLed worker takes its jobs with it.
#[tokio::test]
async fn jobs_die_with_their_worker() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let worker = agent.wait_workers(1).await[0];
    let addr = agent.addr();
    let pending = tokio::spawn(async move {
        let _ = v2(addr, KEY, None, request("exec", "service:sleep,161.803")).await;
    });
    let job = one_with_marker("161.803").await;
    signal(worker, Signal::SIGKILL);
    eventually(
        Duration::from_secs(4),
        "the job to die with its worker",
        || (!alive(job)).then_some(()),
    )
    .await;
    let _ = pending.await;
    assert!(
        agent
            .log()
            .contains("killed the jobs a gone worker left running"),
        "{}",
        agent.log()
    );
    // A replacement serves.
    eventually(Duration::from_secs(10), "a replacement worker", || {
        (agent.workers().len() == 1).then_some(())
    })
    .await;
    call(Proto::V2, agent.addr(), "exec", "service:echo,ok")
        .await
        .expect_code(200);
}

/// `rkill` gives the transfer SIGTERM first: rsync (here a stand-in with rsync's habit
/// of removing its temporary file on SIGTERM) cleans up.
#[tokio::test]
async fn rkill_lets_the_transfer_clean_up() {
    let sb = Sandbox::new();
    let temp = sb.allowed().join("web/.file.XXXXXX");
    std::fs::create_dir_all(sb.allowed().join("web")).unwrap();
    let fake = sb.join("fake-rsync");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ntouch '{t}'\ntrap 'rm -f \"{t}\"; exit 20' TERM\nwhile :; do sleep 0.1; done\n",
            t = temp.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Config::new(&sb)
        .group(
            "web",
            &[
                ("dest", "rsync://127.0.0.1:1/DEST"),
                ("src", &sb.allowed_str("web")),
                ("rsync", &fake.display().to_string()),
            ],
        )
        .start(&sb);
    call(Proto::V2, agent.addr(), "rsync", "web")
        .await
        .expect_code(200);
    eventually(
        Duration::from_secs(10),
        "the transfer's temporary file",
        || temp.exists().then_some(()),
    )
    .await;
    let r = call(Proto::V2, agent.addr(), "rkill", "web").await;
    r.expect_code(200);
    assert!(
        !temp.exists(),
        "rkill left the transfer's temporary file behind"
    );
}

/// A connection accepted by a worker that is then replaced (SIGHUP) still gets its
/// first request answered.
#[tokio::test]
async fn reload_answers_a_connection_accepted_before_it() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let old = agent.wait_workers(1).await;
    let mut conn = v2_connect(agent.addr(), KEY, None).await.unwrap();
    agent.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "a new worker", || {
        agent
            .workers()
            .iter()
            .any(|w| !old.contains(w))
            .then_some(())
    })
    .await;
    // By now the old worker has been told to stop (once the new one serves); it
    // lingers only for the connections it accepted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(old[0]), "the old worker drains what it accepted");
    let r = v2_exchange(&mut conn, 1, request("exec", "service:echo,late"))
        .await
        .expect("the connection accepted before the reload was dropped");
    r.expect_code(200);
}

/// Orders from a few concurrent clients during several SIGHUPs: none fails.
#[tokio::test]
async fn reloads_under_load_lose_no_order() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("max_prefork", 2).start(&sb);
    agent.wait_workers(2).await;
    let addr = agent.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let stop = std::sync::Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match v2(
                    addr,
                    KEY,
                    None,
                    request("exec", &format!("service:echo,c{c}")),
                )
                .await
                {
                    Ok(r) if r.code == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        agent.signal(Signal::SIGHUP);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "reloads under load: {ok} orders answered, {} failed",
        failed.len()
    );
    assert!(ok > 50, "only {ok} orders in 5 s");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
}
