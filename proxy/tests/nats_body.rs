//! Flow control of request bodies over NATS (`deploy-client --nats-servers … --order
//! upload` to an agent with no port): the caller keeps at most `WINDOW` pieces
//! unacknowledged, the agent grants more with a sealed `continue` every `ACK_EVERY`
//! pieces it took.
//!
//! * a 64 MiB upload arrives intact, and a spy on the bus never sees more body pieces
//!   outstanding than the window (plus a little slack for the bus' ordering between
//!   two connections); without the credit the caller publishes all 1024 at once;
//! * the agent killed mid-body: the client fails within the credit wait, non-zero,
//!   naming the host, and the destination file is not there.

use crate::util::*;
use deploy_nats::transport::{ACK_EVERY, WINDOW};
use deploy_testkit::nats::{self, NatsCluster, CALLER};
use nix::sys::signal::Signal;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SPY: (&str, &str) = ("spy", "spypw");
const SIZE: usize = 64 << 20;

fn cluster(sb: &Sandbox) -> Option<NatsCluster> {
    if !nats::available() {
        eprintln!("note: nats-server is not installed; skipping");
        return None;
    }
    let auth = nats::authorization(&[("a1", &[])]).replacen(
        "  users: [\n",
        &format!(
            "  users: [\n    {{ user: {}, password: {}, permissions: {{ publish: \">\", subscribe: \">\" }} }}\n",
            SPY.0, SPY.1
        ),
        1,
    );
    let dir = sb.join("nats");
    std::fs::create_dir_all(&dir).unwrap();
    // One server: the spy sees acknowledgements and pieces in the order the server
    // took them.
    Some(NatsCluster::start(&dir, 1, &auth))
}

/// The upload of `src/big.bin` to `nats://a1` as a child process.
fn upload(cluster: &NatsCluster, src: &std::path::Path, root: &str) -> std::process::Child {
    Command::new(bins::client())
        .current_dir(src)
        .args(["--nats-servers", &cluster.urls(Some(CALLER))])
        .arg("--nats-agent-keys")
        .arg(cluster.agent_keys())
        .args(["--thread-timeout", "120", "--hosts", "nats://a1"])
        .args(["--order=upload", "--relative", "--upload=big.bin"])
        .arg(format!("--root={root}"))
        .args(["--format=json"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("DEPLOY_KEY_CIPHER", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Watches the bus: body pieces to a1 and messages on inboxes; records the most
/// pieces ever seen beyond what the inbox messages so far could have granted.
struct Spy {
    pieces: Arc<AtomicUsize>,
    worst: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spy {
    fn start(cluster: &NatsCluster) -> Spy {
        let url = cluster.servers[0].url.clone();
        let (pieces, worst, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (pieces, worst, stop) = (pieces.clone(), worst.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    use futures_util::StreamExt;
                    let spy = async_nats::ConnectOptions::with_user_and_password(
                        SPY.0.into(),
                        SPY.1.into(),
                    )
                    .subscription_capacity(1 << 20)
                    .connect(url.as_str())
                    .await
                    .unwrap();
                    let mut sub = spy.subscribe(">").await.unwrap();
                    spy.flush().await.unwrap();
                    ready_tx.send(()).unwrap();
                    let mut inbox = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Some(msg)) =
                            tokio::time::timeout(Duration::from_millis(200), sub.next()).await
                        else {
                            continue;
                        };
                        let subject = msg.subject.as_str();
                        if subject.starts_with("_INBOX.") {
                            inbox += 1;
                        } else if subject.starts_with("deploy.body.a1.") {
                            let n = pieces.fetch_add(1, Ordering::Relaxed) + 1;
                            let granted = WINDOW + ACK_EVERY * inbox;
                            worst.fetch_max(n.saturating_sub(granted), Ordering::Relaxed);
                        }
                    }
                })
            })
        };
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Spy {
            pieces,
            worst,
            stop,
            thread: Some(thread),
        }
    }

    /// (pieces seen, most pieces beyond the credit granted).
    fn finish(mut self) -> (usize, usize) {
        std::thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.pieces.load(Ordering::Relaxed),
            self.worst.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn a_64_mib_upload_over_nats_is_windowed_and_arrives_intact() {
    let sb = Sandbox::new();
    let Some(cluster) = cluster(&sb) else {
        return;
    };
    let agent = nats::start_agent(
        &sb,
        AgentConfig::new(&sb).server("allow_upload", "on"),
        &cluster.server_lines(),
        "a1",
        &[],
        None,
        &cluster.agent_keys(),
    );
    let src = sb.join("src");
    make_blob(&src.join("big.bin"), SIZE);
    let spy = Spy::start(&cluster);
    let out = upload(&cluster, &src, &sb.allowed_str("up"))
        .wait_with_output()
        .unwrap();
    let (pieces, worst) = spy.finish();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let sent = std::fs::read(src.join("big.bin")).unwrap();
    let got = std::fs::read(sb.allowed().join("up/big.bin")).unwrap();
    assert!(
        got == sent,
        "the upload arrived changed ({} bytes)",
        got.len()
    );
    assert!(pieces >= SIZE / (64 << 10), "{pieces} pieces seen");
    assert!(
        worst <= 2 * ACK_EVERY,
        "{worst} pieces beyond the agent's credit ({pieces} pieces in all)"
    );
}

#[test]
fn the_agent_killed_mid_body_fails_the_upload_cleanly() {
    let sb = Sandbox::new();
    let Some(cluster) = cluster(&sb) else {
        return;
    };
    let agent = nats::start_agent(
        &sb,
        AgentConfig::new(&sb).server("allow_upload", "on"),
        &cluster.server_lines(),
        "a1",
        &[],
        None,
        &cluster.agent_keys(),
    );
    let src = sb.join("src");
    make_blob(&src.join("big.bin"), SIZE);
    let spy = Spy::start(&cluster);
    let started = Instant::now();
    let child = upload(&cluster, &src, &sb.allowed_str("up"));
    wait_until(Duration::from_secs(60), "the body flowing", || {
        (spy.pieces.load(Ordering::Relaxed) >= 2 * WINDOW).then_some(())
    });
    for w in agent.workers() {
        signal(w, Signal::SIGKILL);
    }
    agent.signal(Signal::SIGKILL);
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let (pieces, _) = spy.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("a1"),
        "the host is named: {stdout}\n{stderr}"
    );
    assert!(
        pieces < SIZE / (64 << 10),
        "the body stopped: {pieces} pieces"
    );
    assert!(took < Duration::from_secs(60), "failed after {took:?}");
    assert!(
        !sb.allowed().join("up/big.bin").exists(),
        "nothing half-written at the destination"
    );
}
