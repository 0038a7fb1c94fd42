//! Agents reached over NATS only (`[nats] tcp = off`: no listening port at all), on a
//! real 3-server `nats-server` cluster with routes, users and permissions
//! (`testkit::nats`), through the real deploy-client: `exec`, `status` and `upload`;
//! a server killed mid-order; a tampered, a replayed and a wrongly keyed order refused;
//! an agent whose NATS user may not subscribe to its subject unreachable.

use crate::util::*;
use deploy_testkit::nats::{self, NatsCluster, CALLER};
use std::process::Command;
use std::time::{Duration, Instant};

/// A spy with every right on the bus: what an attacker with NATS access can do.
const SPY: (&str, &str) = ("spy", "spypw");

fn cluster(sb: &Sandbox, agents: &[(&str, &[&str])]) -> Option<NatsCluster> {
    if !nats::available() {
        eprintln!("note: nats-server is not installed; skipping");
        return None;
    }
    let auth = nats::authorization(agents).replacen(
        "  users: [\n",
        &format!(
            "  users: [\n    {{ user: {}, password: {}, permissions: {{ publish: \">\", subscribe: \">\" }} }}\n",
            SPY.0, SPY.1
        ),
        1,
    );
    let dir = sb.join("nats");
    std::fs::create_dir_all(&dir).unwrap();
    Some(NatsCluster::start(&dir, 3, &auth))
}

/// deploy-client over NATS with `key`, in `cwd`.
fn client(cluster: &NatsCluster, key: &str, cwd: &std::path::Path, args: &[&str]) -> Output {
    let servers = cluster.urls(Some(CALLER));
    run_command(
        Command::new(bins::client())
            .current_dir(cwd)
            .args(["--nats-servers", &servers, "--thread-timeout", "5"])
            .arg("--nats-agent-keys")
            .arg(cluster.agent_keys())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", key)
            .env("NO_COLOR", "1"),
        Duration::from_secs(30),
    )
}

/// An agent `name` on the cluster with a job `service:mark` appending its argument
/// to `<sandbox>/marks`.
fn agent(sb: &Sandbox, cluster: &NatsCluster, name: &str, groups: &[&str]) -> Agent {
    let config = Config::new(sb)
        .server("allow_upload", "on")
        .group(
            "g",
            &[("dest", "127.0.0.1::M/x"), ("src", &sb.allowed_str("g"))],
        )
        .job(
            "service:mark",
            &format!("/bin/sh -c 'echo %s >> {}'", sb.join("marks").display()),
        );
    nats::start_agent(
        sb,
        config,
        &cluster.server_lines(),
        name,
        groups,
        None,
        &cluster.agent_keys(),
    )
}

fn marks(sb: &Sandbox) -> String {
    std::fs::read_to_string(sb.join("marks")).unwrap_or_default()
}

#[test]
fn exec_status_upload_over_nats_only() {
    let sb = Sandbox::new();
    let Some(cluster) = cluster(&sb, &[("a1", &["web", "alias:a1b"])]) else {
        return;
    };
    let agent = agent(&sb, &cluster, "a1", &["web", "alias:a1b"]);
    assert!(agent.addrs.is_empty(), "no listening port: {}", agent.log());

    let out = client(
        &cluster,
        KEY,
        sb.path(),
        &[
            "--hosts",
            "nats://a1",
            "--order=exec",
            "--options=service:echo,hi",
            "--format=json",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:#?}\n{}", agent.log());
    let doc = out.json();
    let rec = &doc["nats://a1"]["exec"];
    assert_eq!(rec["returnCode"], "200", "{out:#?}");
    assert_eq!(rec["content"]["content"], b64("hi\n"), "{out:#?}");

    let out = client(
        &cluster,
        KEY,
        sb.path(),
        &[
            "--hosts",
            "nats://a1",
            "--order=status",
            "--options=g",
            "--format=json",
        ],
    );
    assert_eq!(
        out.json()["nats://a1"]["status"]["serverStatus"],
        1,
        "{out:#?}"
    );
    assert_eq!(
        out.json()["nats://a1"]["status"]["returnCode"],
        "200",
        "{out:#?}"
    );

    let src = sb.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("one.txt"), "one\n").unwrap();
    let root = format!("--root={}", sb.allowed_str("up"));
    let out = client(
        &cluster,
        KEY,
        &src,
        &[
            "--hosts",
            "nats://a1",
            "--order=upload",
            "--relative",
            "--upload=one.txt",
            &root,
            "--format=json",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:#?}\n{}", agent.log());
    assert_eq!(
        std::fs::read_to_string(sb.allowed().join("up/one.txt")).unwrap(),
        "one\n"
    );

    // An alias answers as itself (one process, several endpoints).
    let out = client(
        &cluster,
        KEY,
        sb.path(),
        &[
            "--hosts",
            "nats://a1b",
            "--order=exec",
            "--options=service:echo,b",
            "--format=json",
        ],
    );
    assert_eq!(
        out.json()["nats://a1b"]["exec"]["content"]["content"],
        b64("b\n"),
        "{out:#?}"
    );

    // The access log says the orders came over NATS.
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("exec") && l.contains("nats")),
        "{log}"
    );
}

#[test]
fn a_nats_server_killed_mid_order_then_the_next_order_works() {
    let sb = Sandbox::new();
    let Some(mut cluster) = cluster(&sb, &[("a1", &[])]) else {
        return;
    };
    // The agent knows server 0 only (it learns the others from the cluster); the
    // caller knows the others only.
    let config = Config::new(&sb);
    let first = format!("server[] = {}\n", cluster.servers[0].url);
    let agent = nats::start_agent(&sb, config, &first, "a1", &[], None, &cluster.agent_keys());
    let mut child = Command::new(bins::client())
        .args([
            "--nats-agent-keys",
            &cluster.agent_keys().display().to_string(),
            "--nats-servers",
            &format!(
                "{},{}",
                with_user(&cluster.servers[1].url),
                with_user(&cluster.servers[2].url)
            ),
        ])
        .args([
            "--hosts",
            "nats://a1",
            "--order=exec",
            "--options=service:sleep,2",
            "--thread-timeout",
            "5",
        ])
        .env_clear()
        .env("DEPLOY_KEY_CIPHER", KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    cluster.servers[0].kill();
    let _ = child.wait();
    // The agent reconnects to another server; the next order works.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let servers = format!(
            "{},{}",
            with_user(&cluster.servers[1].url),
            with_user(&cluster.servers[2].url)
        );
        let out = run_command(
            Command::new(bins::client())
                .args(["--nats-servers", &servers, "--thread-timeout", "3"])
                .arg("--nats-agent-keys")
                .arg(cluster.agent_keys())
                .args([
                    "--hosts",
                    "nats://a1",
                    "--order=exec",
                    "--options=service:echo,back",
                    "--format=json",
                ])
                .env_clear()
                .env("DEPLOY_KEY_CIPHER", KEY),
            Duration::from_secs(20),
        );
        if out.code == Some(0) {
            assert_eq!(
                out.json()["nats://a1"]["exec"]["content"]["content"],
                b64("back\n")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no order after the server's death: {out:#?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn with_user(url: &str) -> String {
    url.replacen("nats://", &format!("nats://{}:{}@", CALLER.0, CALLER.1), 1)
}

async fn spy(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(SPY.0.into(), SPY.1.into())
        .connect(url)
        .await
        .unwrap()
}

/// Captures the next message on `subject` while `during` runs, as a spy on the bus.
fn capture(cluster: &NatsCluster, subject: &str, during: impl FnOnce()) -> (String, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The client's handles need the runtime's context when they drop.
    let _enter = rt.enter();
    let spy = rt.block_on(spy(&cluster.servers[0].url));
    let mut sub = rt.block_on(spy.subscribe(subject.to_owned())).unwrap();
    rt.block_on(spy.flush()).unwrap();
    during();
    let msg = rt.block_on(async {
        use futures_util::StreamExt;
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
    });
    (msg.subject.to_string(), msg.payload.to_vec())
}

/// Publishes `payload` on `subject` as the spy, with a fresh reply inbox, and returns
/// how many answers came within 2 s.
fn inject(cluster: &NatsCluster, subject: &str, payload: Vec<u8>) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::StreamExt;
        let spy = spy(&cluster.servers[1].url).await;
        let inbox = spy.new_inbox();
        let mut sub = spy.subscribe(inbox.clone()).await.unwrap();
        spy.publish_with_reply(subject.to_owned(), inbox, payload.into())
            .await
            .unwrap();
        spy.flush().await.unwrap();
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            n += 1;
        }
        n
    })
}

#[test]
fn tampered_replayed_and_wrongly_keyed_orders_are_refused() {
    let sb = Sandbox::new();
    let Some(cluster) = cluster(&sb, &[("a1", &[])]) else {
        return;
    };
    let agent = agent(&sb, &cluster, "a1", &[]);
    let (subject, payload) = capture(&cluster, "deploy.agent.a1", || {
        let out = client(
            &cluster,
            KEY,
            sb.path(),
            &[
                "--hosts",
                "nats://a1",
                "--order=exec",
                "--options=service:mark,one",
            ],
        );
        assert_eq!(out.code, Some(0), "{out:#?}\n{}", agent.log());
    });
    assert_eq!(marks(&sb), "one\n");

    // Replayed as captured: refused, not run again, unanswered.
    assert_eq!(inject(&cluster, &subject, payload.clone()), 0);
    assert_eq!(marks(&sb), "one\n");
    assert!(agent.log().contains("replayed request"), "{}", agent.log());

    // Tampered (one bit of the sealed order): refused.
    let mut bad = payload.clone();
    let last = bad.len() - 20;
    bad[last] ^= 1;
    assert_eq!(inject(&cluster, &subject, bad), 0);
    assert!(
        agent.log().contains("envelope authentication failed"),
        "{}",
        agent.log()
    );
    assert_eq!(marks(&sb), "one\n");

    // A caller with another key: refused, reported unreachable at its deadline.
    let out = client(
        &cluster,
        "notthekey",
        sb.path(),
        &[
            "--hosts",
            "nats://a1",
            "--order=exec",
            "--options=service:mark,two",
            "--format=json",
        ],
    );
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        out.json()["nats://a1"]["exec"]["serverStatus"],
        0,
        "{out:#?}"
    );
    assert_eq!(marks(&sb), "one\n");
}

#[test]
fn an_agent_outside_its_nats_permissions_gets_nothing() {
    let sb = Sandbox::new();
    // User `a1` may subscribe to deploy.agent.a1 only; the agent calls itself `a2`.
    let Some(cluster) = cluster(&sb, &[("a1", &[])]) else {
        return;
    };
    let config = Config::new(&sb);
    let agent = nats::start_agent(
        &sb,
        config,
        &cluster.server_lines(),
        "a2",
        &[],
        Some(("a1", nats::AGENT_PASSWORD)),
        &cluster.agent_keys(),
    );
    let out = client(
        &cluster,
        KEY,
        sb.path(),
        &[
            "--hosts",
            "nats://a2",
            "--order=exec",
            "--options=service:echo,hi",
            "--format=json",
        ],
    );
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        out.json()["nats://a2"]["exec"]["serverStatus"],
        0,
        "{out:#?}"
    );
    assert!(
        agent.log().to_lowercase().contains("permissions violation"),
        "{}",
        agent.log()
    );
}

/// Finding 1 (h7 review): the replay guard after a restart is `time_ms < since_ms`,
/// with no margin for a caller whose clock runs ahead. An order stamped 30 s in the
/// future (a caller 30 s ahead, within MAX_SKEW) is still "after" a subscriber that
/// started now, and the new subscriber's seen-set is empty: a spy who captured it
/// replays it after the agent restarts (or its worker is replaced) and it runs again.
#[test]
fn an_order_from_a_caller_ahead_is_not_run_again_after_a_restart() {
    use deploy_nats::envelope::{self, Psk, SeenSet};
    use deploy_nats::identity::{AgentKeys, Identity};
    let sb = Sandbox::new();
    let Some(cluster) = cluster(&sb, &[("a1", &[])]) else {
        return;
    };
    let agent1 = agent(&sb, &cluster, "a1", &[]);
    // The order as the real client seals it, re-sealed as a caller 30 s ahead would.
    let (subject, payload) = capture(&cluster, "deploy.agent.a1", || {
        let out = client(
            &cluster,
            KEY,
            sb.path(),
            &[
                "--hosts",
                "nats://a1",
                "--order=exec",
                "--options=service:mark,one",
            ],
        );
        assert_eq!(out.code, Some(0), "{out:#?}\n{}", agent1.log());
    });
    let psk = Psk::new(KEY);
    let now = envelope::caller_now();
    // Any static key opens a request (it binds only the replies, unread here).
    let opened = envelope::open_request(
        &psk,
        &Identity::generate().unwrap(),
        "a1",
        &subject,
        &payload,
        &mut SeenSet::new(),
        now,
    )
    .unwrap();
    let ahead = envelope::seal_request(
        &psk,
        &subject,
        &opened.message,
        now + 30_000,
        std::sync::Arc::new(AgentKeys::none()),
    )
    .unwrap()
    .bytes;
    // The caller 30 s ahead: its order runs once.
    assert!(
        inject(&cluster, &subject, ahead.clone()) > 0,
        "{}",
        agent1.log()
    );
    assert_eq!(marks(&sb), "one\none\n");
    // Replayed at once: refused.
    assert_eq!(inject(&cluster, &subject, ahead.clone()), 0);
    drop(agent1);
    let agent2 = agent(&sb, &cluster, "a1", &[]);
    std::thread::sleep(Duration::from_millis(500));
    // Replayed after the restart, still within the caller's 30 s: must be refused.
    let answers = inject(&cluster, &subject, ahead);
    assert_eq!(marks(&sb), "one\none\n", "{}", agent2.log());
    assert_eq!(answers, 0);
}

/// An upload of 4 MB of `seed`-patterned bytes to `nats://a1` while `on_bus` acts as a
/// spy subscribed to `watch` (subscribed before the upload starts); `on_bus` gets the
/// spy, its subscription and the upload's thread, and returns when that is finished.
/// Checks the upload succeeded and the file arrived whole.
fn upload_under_a_spy(
    seed: u32,
    watch: &str,
    on_bus: impl FnOnce(
        &tokio::runtime::Runtime,
        &async_nats::Client,
        &mut async_nats::Subscriber,
        &std::thread::ScopedJoinHandle<'_, Output>,
    ),
) {
    let sb = Sandbox::new();
    let Some(cluster) = cluster(&sb, &[("a1", &[])]) else {
        return;
    };
    let agent = agent(&sb, &cluster, "a1", &[]);
    let src = sb.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i * seed % 251) as u8).collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let root = format!("--root={}", sb.allowed_str("up"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let spy = rt.block_on(spy(&cluster.servers[0].url));
    let mut sub = rt.block_on(spy.subscribe(watch.to_owned())).unwrap();
    rt.block_on(spy.flush()).unwrap();
    let out = std::thread::scope(|scope| {
        let upload = scope.spawn(|| {
            client(
                &cluster,
                KEY,
                &src,
                &[
                    "--hosts",
                    "nats://a1",
                    "--order=upload",
                    "--relative",
                    "--upload=big.bin",
                    &root,
                    "--format=json",
                ],
            )
        });
        on_bus(&rt, &spy, &mut sub, &upload);
        upload.join().unwrap()
    });
    assert_eq!(out.code, Some(0), "{out:#?}\n{}", agent.log());
    assert_eq!(std::fs::read(sb.allowed().join("up/big.bin")).unwrap(), big);
}

/// The next message of `sub`, within 10 s.
fn next_message(
    rt: &tokio::runtime::Runtime,
    sub: &mut async_nats::Subscriber,
) -> async_nats::Message {
    use futures_util::StreamExt;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
    })
}

/// Finding 5 (h7 review): the agent's body receiver ended the upload at the first
/// message on `deploy.body.<name>.<nonce>` that did not open, though anybody who may
/// publish there can send one (the nonce is in the clear in the request's header), and
/// nothing unauthenticated should steer an order. The caller's side drops such
/// messages and goes on; the agent's side does too.
#[test]
fn junk_on_the_body_subject_does_not_abort_an_upload() {
    upload_under_a_spy(7, "deploy.agent.a1", |rt, spy, sub, upload| {
        let msg = next_message(rt, sub);
        let nonce: String = msg.payload[34..66]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let subject = format!("deploy.body.a1.{nonce}");
        while !upload.is_finished() {
            rt.block_on(async {
                spy.publish(subject.clone(), vec![1u8, 3, 0].into())
                    .await
                    .unwrap();
                spy.flush().await.unwrap();
            });
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

/// Review finding 9: anybody on the bus can send a reply message again on the caller's
/// inbox; the caller used to fail that host on the repeated number (after the order
/// ran), so a retry by hand could run it twice. A repeated message is dropped now.
#[test]
fn a_reply_message_sent_again_does_not_fail_the_host() {
    // 4 MB: enough pieces for several `continue` grants on the reply stream; the
    // first reply message (the agent's `continue`) is sent again once.
    upload_under_a_spy(13, "_INBOX.>", |rt, spy, sub, _| {
        let first = next_message(rt, sub);
        rt.block_on(async {
            spy.publish(first.subject.clone(), first.payload.clone())
                .await
                .unwrap();
            spy.flush().await.unwrap();
        });
    });
}

/// Finding 2 (h7 review), end to end: `a2`, a member of the fleet with the same
/// `key_cipher` (and NATS rights on `a1`'s subject: `alias[] = a1`), answers the
/// orders for `a1` faster than `a1` does. Its replies are not sealed with the key the
/// caller pinned for `a1`, so they are refused and `a1`'s genuine reply is taken; an
/// order to `a2`, whose key nobody pinned, is not sent at all.
#[test]
fn a_second_agent_with_the_same_key_cannot_answer_for_the_first() {
    let sb = Sandbox::new();
    let Some(cluster) = cluster(&sb, &[("a1", &[]), ("a2", &["alias:a1"])]) else {
        return;
    };
    let (sb1, sb2) = (Sandbox::new(), Sandbox::new());
    let job = |sb: &Sandbox, what: &str| {
        Config::new(sb).job(
            "service:who",
            &format!(
                "/bin/sh -c '{what}; echo %s >> {}'",
                sb.join("ran").display()
            ),
        )
    };
    // The genuine a1, enrolled in the callers' pins; it answers after 1 s.
    let genuine = nats::start_agent(
        &sb1,
        job(&sb1, "sleep 1; echo genuine"),
        &cluster.server_lines(),
        "a1",
        &[],
        None,
        &cluster.agent_keys(),
    );
    // The rogue answers at once, as a1 (and as itself); its lines go to a pin file
    // nobody reads.
    let rogue = nats::start_agent(
        &sb2,
        job(&sb2, "echo forged"),
        &cluster.server_lines(),
        "a2",
        &["alias:a1"],
        None,
        &sb2.join("rogue-pins"),
    );
    let out = client(
        &cluster,
        KEY,
        sb.path(),
        &[
            "--hosts",
            "nats://a1",
            "--order=exec",
            "--options=service:who,one",
            "--format=json",
        ],
    );
    let ran = |sb: &Sandbox| std::fs::read_to_string(sb.join("ran")).unwrap_or_default();
    // Both received the order (a2 holds the key); only a1's outcome counts.
    assert_eq!(ran(&sb2), "one\n", "{}", rogue.log());
    assert_eq!(out.code, Some(0), "{out:#?}\n{}", genuine.log());
    assert_eq!(
        out.json()["nats://a1"]["exec"]["content"]["content"],
        b64("genuine\n"),
        "a1's answer came from another agent: {out:#?}"
    );
    assert_eq!(ran(&sb1), "one\n");

    // a2 is nobody's: not pinned, so not sent anything.
    let out = client(
        &cluster,
        KEY,
        sb.path(),
        &[
            "--hosts",
            "nats://a2",
            "--order=exec",
            "--options=service:who,two",
            "--format=json",
        ],
    );
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stdout.contains("no key pinned for agent a2"),
        "{out:#?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ran(&sb2), "one\n", "{}", rogue.log());
}
