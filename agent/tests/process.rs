//! The prefork process model (spec §7, §15.16): `max_prefork` workers as children of the
//! master; SIGTERM stops master and workers (none orphaned); a killed worker is replaced;
//! `max_requests_per_child` recycles workers; SIGHUP reloads the configuration without
//! closing the listening socket; process titles; the pid file.

use crate::util::*;
use nix::sys::signal::Signal;
use std::time::Duration;

/// One exec round trip over v1 plain, which must succeed.
async fn echo(agent: &Agent, word: &str) {
    let r = call(
        Proto::V1Plain,
        agent.addr(),
        "exec",
        &format!("service:echo,{word}"),
    )
    .await;
    r.expect_code(200);
    assert_eq!(r.s("content"), b64(format!("{word}\n")));
}

#[tokio::test]
async fn prefork_workers_and_sigterm_stops_everything() {
    let sb = Sandbox::new();
    let mut agent = Config::new(&sb).server("max_prefork", 3).start(&sb);
    let master = agent.pid();
    let workers = agent.wait_workers(3).await;
    for &w in &workers {
        assert_eq!(proc_stat(w).map(|s| s.1), Some(master));
    }
    for i in 0..6 {
        echo(&agent, &format!("w{i}")).await;
    }
    agent.signal(Signal::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the master did not exit within 5 s of SIGTERM");
    assert!(status.success(), "master exit status {status:?}");
    for &w in &workers {
        assert!(!alive(w), "worker {w} outlived the master: an orphan");
    }

    // Nobody accepts on the port any more.
    assert!(
        std::net::TcpStream::connect_timeout(&agent.addr(), Duration::from_secs(1)).is_err(),
        "something still listens on {}",
        agent.addr()
    );
}

#[tokio::test]
async fn killed_worker_is_replaced() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("max_prefork", 2).start(&sb);
    let before = agent.wait_workers(2).await;
    let victim = before[0];
    signal(victim, Signal::SIGKILL);
    let after = eventually(Duration::from_secs(10), "a replacement worker", || {
        let w = agent.workers();
        (w.len() == 2 && !w.contains(&victim)).then_some(w)
    })
    .await;
    assert!(after.contains(&before[1]), "the other worker was kept");
    for i in 0..4 {
        echo(&agent, &format!("after-kill-{i}")).await;
    }
}

#[tokio::test]
async fn max_requests_per_child_recycles_workers() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .server("max_prefork", 1)
        .server("max_requests_per_child", 2)
        .start(&sb);
    let first = agent.wait_workers(1).await;
    let mut seen = first.clone();
    for i in 0..5 {
        echo(&agent, &format!("r{i}")).await;
        for w in agent.workers() {
            if !seen.contains(&w) {
                seen.push(w);
            }
        }
    }
    let now = agent.wait_workers(1).await;
    assert_ne!(now, first, "the worker was not replaced after 5 requests");
    // 5 connections with 2 per worker need at least 3 workers in total.
    assert!(seen.len() >= 3, "workers seen: {seen:?}");
}

#[tokio::test]
async fn sighup_reloads_jobs_and_keeps_the_socket() {
    let sb = Sandbox::new();
    let config = Config::new(&sb);
    let agent = config.start(&sb);
    let master = agent.pid();
    let addr = agent.addr();
    let r = call(Proto::V2, addr, "exec", "service:printf,x").await;
    r.expect_code(400);
    assert_eq!(r.text, "exec[service:printf] not found!");

    let config = config.job("service:printf", "/usr/bin/printf %s");
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    let old = agent.wait_workers(1).await;
    agent.signal(Signal::SIGHUP);
    // Wait for the new generation of workers (requests racing the switch are the
    // subject of `in_flight_requests_survive_reload_and_shutdown`).
    let new = eventually(Duration::from_secs(10), "new workers after SIGHUP", || {
        let w = agent.workers();
        (w.len() == 1 && w != old).then_some(w)
    })
    .await;
    let r = call(Proto::V2, addr, "exec", "service:printf,reloaded").await;
    r.expect_code(200);
    assert_eq!(r.s("content"), b64("reloaded"));
    assert_eq!(agent.pid(), master);
    assert_eq!(agent.workers(), new);
    assert!(alive(master), "the master restarted");
    // Every worker serves the new configuration (v1 too, same port).
    for _ in 0..4 {
        let r = call(Proto::V1Plain, addr, "exec", "service:printf,v1").await;
        r.expect_code(200);
    }

    // A broken file on SIGHUP keeps the running configuration and its workers.
    std::fs::write(sb.join("jobs.ini"), "[jobs]\nbroken = 'unbalanced\n").unwrap();
    agent.signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(5),
        "the reload error in the log",
        || agent.log().contains("reload failed").then_some(()),
    )
    .await;
    assert_eq!(agent.workers(), new, "workers replaced by a failed reload");
    let r = call(Proto::V2, addr, "exec", "service:printf,still").await;
    r.expect_code(200);
    assert!(alive(master));
}

/// Whether `pid` has a handler installed for signal `signo` (`SigCgt` in
/// /proc/PID/status).
fn catches(pid: i32, signo: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (signo - 1)) != 0
}

#[tokio::test]
async fn in_flight_requests_survive_reload_and_shutdown() {
    let sb = Sandbox::new();
    let mut agent = Config::new(&sb).start(&sb);
    let worker = agent.wait_workers(1).await[0];
    assert!(
        catches(worker, Signal::SIGTERM as u32),
        "worker {worker} does not catch SIGTERM"
    );
    let addr = agent.addr();

    // A reload while an order runs: the retiring worker finishes it.
    let (reply, ()) = tokio::join!(
        call(Proto::V1Plain, addr, "exec", "service:sleep,2"),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            agent.signal(Signal::SIGHUP);
        }
    );
    reply.expect_code(200);
    assert_eq!(reply.s("return"), "true");

    // Shutdown while an order runs: it is answered before the master exits.
    let (reply, ()) = tokio::join!(call(Proto::V2, addr, "exec", "service:sleep,2"), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        agent.signal(Signal::SIGTERM);
    });
    reply.expect_code(200);
    agent
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("master exit after SIGTERM");
}

#[tokio::test]
async fn process_titles() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let worker = agent.wait_workers(1).await[0];
    let master_title = cmdline(agent.pid());
    assert!(
        master_title.starts_with("deploy::agent: master process"),
        "master cmdline: {master_title:?}"
    );
    // A worker sets its title right after the fork; on a loaded machine the test may
    // look before it has run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut worker_title = cmdline(worker);
    while !worker_title.starts_with("deploy::agent: worker process")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        worker_title = cmdline(worker);
    }
    assert!(
        worker_title.starts_with("deploy::agent: worker process"),
        "worker cmdline: {worker_title:?}"
    );
}

#[tokio::test]
async fn pid_file_written_and_removed() {
    let sb = Sandbox::new();
    let pid_file = sb.join("run/agent.pid");
    std::fs::create_dir(sb.join("run")).unwrap();
    let mut agent = Config::new(&sb)
        .server("pid_file", pid_file.display())
        .start(&sb);
    let master = agent.pid();
    let text = eventually(Duration::from_secs(5), "the pid file", || {
        std::fs::read_to_string(&pid_file).ok()
    })
    .await;
    assert_eq!(text.trim(), master.to_string(), "pid file content {text:?}");
    agent.signal(Signal::SIGTERM);
    // Sent as soon as the pid file exists: possibly before the master has its signal
    // handlers, so the signal must be held until then (prefork::hold_signals).
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("master exit");
    assert!(
        status.success(),
        "master exit status {status:?} (killed by the signal instead of stopping?)"
    );
    assert!(!pid_file.exists(), "pid file left behind after SIGTERM");
}

#[tokio::test]
async fn idle_v2_connection_does_not_hold_up_shutdown() {
    let sb = Sandbox::new();
    let mut agent = Config::new(&sb).start(&sb);
    let worker = agent.wait_workers(1).await[0];
    assert!(
        catches(worker, Signal::SIGTERM as u32),
        "worker {worker} does not catch SIGTERM (see in_flight_requests_survive_reload_and_shutdown)"
    );
    let mut idle = v2_connect(agent.addr(), KEY, None).await.expect("v2");
    v2_exchange(&mut idle, 1, request("exec", "service:echo,idle"))
        .await
        .expect("v2 request")
        .expect_code(200);
    agent.signal(Signal::SIGTERM);
    agent
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the master did not exit within 5 s of SIGTERM with an idle v2 client");
    assert!(!alive(worker));
    match tokio::time::timeout(Duration::from_secs(2), idle.recv()).await {
        Ok(Ok(None)) | Ok(Err(_)) => {}
        other => panic!("the idle v2 connection was not closed: {other:?}"),
    }
}

#[tokio::test]
async fn timed_out_jobs_are_reaped() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("max_process_timeout", 1).start(&sb);
    let worker = agent.wait_workers(1).await[0];
    for _ in 0..3 {
        call(Proto::V1Plain, agent.addr(), "exec", "service:sleep,5")
            .await
            .expect_code(408);
    }
    let zombies = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| matches!(proc_stat(pid), Some(('Z', ppid)) if ppid == worker))
            .collect()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        zombies(),
        Vec::<i32>::new(),
        "zombie children of worker {worker}"
    );
}
