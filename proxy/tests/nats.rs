//! `nats://` agents behind the proxy, on a real 3-server NATS cluster: an order to a
//! group of NATS agents (`nats_publish = on`) is one publish on `deploy.group.<g>`,
//! the absent member reported unreachable after the deadline; a group without
//! `nats_publish` is asked on each agent's subject; an upload's body relayed over
//! NATS; `nodes` says `via: nats`.

use crate::util::*;
use deploy_testkit::nats::{self, NatsCluster, CALLER};
use std::time::Duration;

const API_KEY: &str = "nats-key";
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

/// A proxy whose group `web` is `nats://a1, a2, a3` (one publish) and group `one` is
/// `nats://a1` alone.
fn proxy(dir: &std::path::Path, cluster: &NatsCluster) -> Daemon {
    let config = ProxyConfig::new("px-nats")
        .key(API_KEY, "web,one")
        .servers("web", ["nats://a1", "nats://a2", "nats://a3"])
        .servers("one", ["nats://a1"])
        .group("web", &[("nats_publish", "on")])
        .client("thread_timeout", 3)
        .client("heartbeat", 3600)
        .server("allow_upload", "on");
    let ini = config.write(dir);
    let mut text = std::fs::read_to_string(&ini).unwrap();
    text.push_str(&format!(
        "\n[nats]\n{}user = {}\npassword = {}\nagent_keys = {}\n",
        cluster.server_lines(),
        CALLER.0,
        CALLER.1,
        cluster.agent_keys().display()
    ));
    std::fs::write(&ini, text).unwrap();
    Daemon::start(&bins::proxy(), &ini, &[], 1)
}

/// Counts the messages published on `deploy.>` while `during` runs (plus 1 s).
fn count_publishes(cluster: &NatsCluster, during: impl FnOnce()) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let spy = rt
        .block_on(
            async_nats::ConnectOptions::with_user_and_password(SPY.0.into(), SPY.1.into())
                .connect(cluster.servers[2].url.as_str()),
        )
        .unwrap();
    let mut sub = rt.block_on(spy.subscribe("deploy.>")).unwrap();
    rt.block_on(spy.flush()).unwrap();
    during();
    rt.block_on(async {
        use futures_util::StreamExt;
        let mut subjects = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            subjects.push(msg.subject.to_string());
        }
        subjects
    })
}

#[test]
fn a_group_of_nats_agents_is_one_publish_and_the_absent_one_is_unreachable() {
    let sb = Sandbox::new();
    let Some(cluster) = cluster(&sb, &[("a1", &["web"]), ("a2", &["web"]), ("a3", &["web"])])
    else {
        return;
    };
    let (sb1, sb2) = (Sandbox::new(), Sandbox::new());
    let _a1 = nats::start_agent(
        &sb1,
        AgentConfig::new(&sb1).server("allow_upload", "on"),
        &cluster.server_lines(),
        "a1",
        &["web"],
        None,
        &cluster.agent_keys(),
    );
    let _a2 = nats::start_agent(
        &sb2,
        AgentConfig::new(&sb2),
        &cluster.server_lines(),
        "a2",
        &["web"],
        None,
        &cluster.agent_keys(),
    );
    // a3 is enrolled (its key pinned) but never started: the absent member.
    nats::enrol_unstarted(&Sandbox::new(), "a3", &cluster.agent_keys());
    let proxy = proxy(&sb.join("proxy"), &cluster);
    // The heartbeat probes them over NATS (one round at start: heartbeat = 3600, so
    // that no probe is counted below) and says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = client(&[
            "--hosts",
            "127.0.0.1",
            "--port",
            &proxy.addr().port().to_string(),
            "--api-key",
            API_KEY,
            "--order=nodes",
            "--format=json",
        ]);
        let text = out.stdout.clone();
        if text.matches("\"online\"").count() >= 2 {
            assert!(text.contains("\"via\" : \"nats\""), "{text}");
            assert!(!text.contains("\"tcp\""), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{out:#?}\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let mut out = None;
    let subjects = count_publishes(&cluster, || {
        out = Some(via_proxy(
            proxy.addr().port(),
            API_KEY,
            "groups:web",
            ECHO,
            &["--format=json"],
        ));
    });
    let out = out.unwrap();
    assert_eq!(
        subjects,
        ["deploy.group.web"],
        "one publish for the group: {subjects:?}"
    );
    let doc = out.json();
    for a in ["nats://a1", "nats://a2"] {
        assert_eq!(
            doc[a]["exec"]["returnCode"],
            "200",
            "{out:#?}\n{}",
            proxy.log()
        );
    }
    let a3 = &doc["nats://a3"]["exec"];
    assert_eq!(a3["serverStatus"], 0, "{out:#?}");
    assert!(
        a3["content"].as_str().unwrap().contains("deploy.agent.a3"),
        "{out:#?}"
    );
    assert_ne!(out.code, Some(0));

    // A group of one without nats_publish: the agent's own subject.
    let subjects = count_publishes(&cluster, || {
        let out = via_proxy(
            proxy.addr().port(),
            API_KEY,
            "groups:one",
            ECHO,
            &["--format=json"],
        );
        assert_eq!(
            out.json()["nats://a1"]["exec"]["returnCode"],
            "200",
            "{out:#?}"
        );
    });
    assert_eq!(subjects, ["deploy.agent.a1"], "{subjects:?}");

    // An upload through the proxy: the caller's body relayed to the agent over NATS
    // in sealed pieces.
    let src = sb.join("src");
    std::fs::create_dir_all(&src).unwrap();
    make_blob(&src.join("big.bin"), 300_000);
    let out = run_command(
        std::process::Command::new(bins::client())
            .current_dir(&src)
            .args([
                "--hosts",
                "127.0.0.1",
                "--port",
                &proxy.addr().port().to_string(),
            ])
            .args([
                "--api-key",
                API_KEY,
                "--args",
                "groups:one",
                "--order=upload",
            ])
            .args(["--relative", "--upload=big.bin", "--format=json"])
            .arg(format!("--root={}", sb1.allowed_str("up")))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", PROXY_KEY),
        RUN_LIMIT,
    );
    assert_eq!(out.code, Some(0), "{out:#?}\n{}", proxy.log());
    assert_eq!(
        std::fs::read(sb1.allowed().join("up/big.bin")).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );
}
