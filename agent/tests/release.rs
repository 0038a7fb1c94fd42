//! Releases on real agents driven by the real client: a fleet-wide rollout in two
//! phases (nobody switches when one host fails to prepare), rollback, `releases`,
//! confirm-or-revert across an agent restart, the allow-lists, and stretcher's event
//! mode (`deploy-agent stretcher`) with a Serf-style line and a Consul JSON array.

use crate::util::*;
use deploy_testkit::shelf::{version, Shelf};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An agent that deploys from `shelf` to `<sandbox>/allowed/app`.
fn deploying_agent(sb: &Sandbox, shelf: &Shelf) -> (Agent, PathBuf) {
    let dest = sb.allowed().join("app");
    std::fs::create_dir_all(sb.allowed()).unwrap();
    let agent = Config::new(sb)
        .server("allow_deploy", "on")
        .raw(&format!(
            "[deploy]\nmanifest[] = file://{}/\n",
            shelf.path().display()
        ))
        .env("DEST", dest.display())
        .start(sb);
    (agent, dest)
}

fn client(args: &[&str]) -> Output {
    run_command(
        Command::new(bins::client())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", KEY)
            .env("USER", "tester")
            .env("NO_COLOR", "1"),
        std::time::Duration::from_secs(60),
    )
}

#[test]
fn a_rollout_prepares_everywhere_then_switches_everywhere() {
    let shelf = Shelf::new();
    let sbs: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let fleet: Vec<(Agent, PathBuf)> = sbs.iter().map(|sb| deploying_agent(sb, &shelf)).collect();
    let hosts: Vec<String> = fleet.iter().map(|(a, _)| a.addr().to_string()).collect();
    let hosts = hosts.join(",");
    let m1 = shelf.manifest("1");
    let out = client(&[
        "--hosts",
        &hosts,
        "--order=deploy",
        "--manifest",
        &m1,
        "-m",
        "first",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("3 of 3 hosts switched"), "{out:#?}");
    for (_, dest) in &fleet {
        assert_eq!(version(dest), "1");
    }
    // Every host names the release alike.
    let doc = out.json();
    let ids: Vec<String> = doc
        .as_object()
        .unwrap()
        .values()
        .map(|h| h["deploy"]["content"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    // v2 with one host whose manifest is refused: nobody switches, nothing is left.
    let m2 = shelf.manifest("2");
    let broken = Sandbox::new();
    let refusing = Config::new(&broken)
        .server("allow_deploy", "on")
        .env("DEST", broken.allowed().join("app").display())
        .start(&broken);
    let with_bad = format!("{hosts},{}", refusing.addr());
    let out = client(&["--hosts", &with_bad, "--order=deploy", "--manifest", &m2]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("nobody in it switched"), "{out:#?}");
    assert!(
        out.stdout.contains("manifest[]"),
        "the refusal is named: {out:#?}"
    );
    for (_, dest) in &fleet {
        assert_eq!(version(dest), "1", "nobody switched");
        let releases = std::fs::read_dir(dest.with_file_name("app.releases"))
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(releases, 1, "the prepared release was discarded");
    }

    // v2 everywhere, in waves with a canary; then roll back one host by prefix.
    let out = client(&[
        "--hosts",
        &hosts,
        "--order=deploy",
        "--manifest",
        &m2,
        "--canary=1",
        "--batch=50%",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains("wave 1: 1 hosts") && out.stderr.contains("wave 2: 2 hosts"),
        "a canary, then the rest: {out:#?}"
    );
    for (_, dest) in &fleet {
        assert_eq!(version(dest), "2");
    }
    let (first, first_dest) = &fleet[0];
    let out = client(&[
        "--hosts",
        &first.addr().to_string(),
        "--order=rollback",
        "--dest",
        &first_dest.display().to_string(),
        "-m",
        "bad",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(version(first_dest), "1");
    let out = client(&[
        "--hosts",
        &first.addr().to_string(),
        "--order=releases",
        "--dest",
        &first_dest.display().to_string(),
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let content = &out.json()[first.addr().to_string()]["releases"]["content"];
    let history: serde_json::Value =
        serde_json::from_str(content["history"].as_str().unwrap()).unwrap();
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["switch", "switch", "rollback"]);
    assert_eq!(history[2]["message"], "bad");
}

#[test]
fn an_unconfirmed_switch_reverts_even_across_a_restart() {
    let shelf = Shelf::new();
    let sb = Sandbox::new();
    let (agent, dest) = deploying_agent(&sb, &shelf);
    let host = agent.addr().to_string();
    let out = client(&[
        "--hosts",
        &host,
        "--order=deploy",
        "--manifest",
        &shelf.manifest("1"),
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let out = client(&[
        "--hosts",
        &host,
        "--order=deploy",
        "--manifest",
        &shelf.manifest("2"),
        "--confirm-within=3s",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(version(&dest), "2");
    // The agent goes away and comes back before the deadline; it still reverts.
    drop(agent);
    let (agent, _) = deploying_agent(&sb, &shelf);
    wait_until(std::time::Duration::from_secs(10), "the revert", || {
        (version(&dest) == "1").then_some(())
    });
    // A confirmed one stays.
    let host = agent.addr().to_string();
    let out = client(&[
        "--hosts",
        &host,
        "--order=deploy",
        "--manifest",
        &shelf.manifest("2"),
        "--confirm-within=2s",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let out = client(&[
        "--hosts",
        &host,
        "--order=confirm",
        "--dest",
        &dest.display().to_string(),
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(version(&dest), "2");
}

#[test]
fn releases_are_off_unless_enabled_and_manifests_come_from_the_allow_list() {
    let shelf = Shelf::new();
    let sb = Sandbox::new();
    let off = Config::new(&sb).start(&sb);
    let out = client(&[
        "--hosts",
        &off.addr().to_string(),
        "--order=deploy",
        "--manifest",
        &shelf.manifest("1"),
    ]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("allow_deploy = off"), "{out:#?}");
    // Enabled, but a manifest outside [deploy] manifest[], and one with hooks.
    let sb2 = Sandbox::new();
    let (agent, dest) = deploying_agent(&sb2, &shelf);
    let host = agent.addr().to_string();
    let elsewhere = sb2.join("evil.yml");
    std::fs::write(&elsewhere, "commands:\n  pre: [\"touch /tmp/pwned\"]\n").unwrap();
    let out = client(&[
        "--hosts",
        &host,
        "--order=deploy",
        "--manifest",
        &format!("file://{}", elsewhere.display()),
    ]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("manifest[]"), "{out:#?}");
    let hooked = shelf.path().join("hooked.yml");
    std::fs::write(
        &hooked,
        format!(
            "commands:\n  pre: [\"touch {}/pwned\"]\n",
            sb2.path().display()
        ),
    )
    .unwrap();
    let out = client(&[
        "--hosts",
        &host,
        "--order=deploy",
        "--manifest",
        &format!("file://{}", hooked.display()),
    ]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("hooks = off"), "{out:#?}");
    assert!(!sb2.join("pwned").exists());
    // A dest outside [allow::paths].
    let outside = shelf.path().join("outside.yml");
    let m1 = std::fs::read_to_string(shelf.path().join("m1.yml")).unwrap();
    std::fs::write(&outside, m1.replace("{{ must_env \"DEST\" }}", "/etc/app")).unwrap();
    let out = client(&[
        "--hosts",
        &host,
        "--order=deploy",
        "--manifest",
        &format!("file://{}", outside.display()),
    ]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("not allowed"), "{out:#?}");
    assert!(!dest.exists());
}

/// Runs `deploy-agent stretcher` on `ini` with `input` on stdin and `env`.
fn stretcher(ini: &Path, input: &[u8], env: &[(&str, &str)]) -> (i32, String) {
    use std::io::Write as _;
    let mut child = Command::new(bins::agent())
        .args(["stretcher", "--path"])
        .arg(ini)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn stretcher_event_mode_deploys_once_per_event() {
    let shelf = Shelf::new();
    let sb = Sandbox::new();
    let (agent, dest) = deploying_agent(&sb, &shelf);
    let ini = sb.join("agent.ini");
    drop(agent);
    let dest_text = dest.display().to_string();
    let env = [
        ("DEST", dest_text.as_str()),
        ("SERF_USER_EVENT", "deploy"),
        ("SERF_USER_LTIME", "7"),
    ];
    // A Serf user event: one line, no trailing newline.
    let (code, log) = stretcher(&ini, shelf.manifest("1").as_bytes(), &env);
    assert_eq!(code, 0, "{log}");
    assert_eq!(version(&dest), "1");
    // The same event again (Serf re-delivery): skipped.
    let (code, log) = stretcher(&ini, shelf.manifest("2").as_bytes(), &env);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("applied already"), "{log}");
    assert_eq!(version(&dest), "1");
    // Consul: the last event's payload.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let events = format!(
        "[{{\"ID\":\"e1\",\"Name\":\"deploy\",\"Payload\":\"{}\",\"LTime\":1}},{{\"ID\":\"e2\",\"Name\":\"deploy\",\"Payload\":\"{}\",\"LTime\":2}}]",
        b64(&shelf.manifest("1")),
        b64(&shelf.manifest("2"))
    );
    let (code, log) = stretcher(
        &ini,
        events.as_bytes(),
        &[("DEST", &dest_text), ("CONSUL_INDEX", "3")],
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(version(&dest), "2");
    // A failing deploy under Consul still exits 0 (stretcher's rule); without, 1.
    let bad = format!(
        "[{{\"ID\":\"e3\",\"Payload\":\"{}\"}}]",
        b64("file:///nowhere.yml")
    );
    let (code, _) = stretcher(
        &ini,
        bad.as_bytes(),
        &[("DEST", &dest_text), ("CONSUL_INDEX", "4")],
    );
    assert_eq!(code, 0);
    let (code, log) = stretcher(&ini, b"file:///nowhere.yml\n", &[("DEST", &dest_text)]);
    assert_eq!(code, 1, "{log}");
}

/// Agents and `ssh://` hosts in one rollout: the client renders the manifest for the
/// SSH hosts (with its own `DEST`, `%h-%p` per host) and drives them with scripts, the
/// agents run it natively; both prepare before either switches, and both leave the
/// same layout, which `releases` and `rollback` read alike.
#[test]
fn a_rollout_mixes_agents_and_ssh_hosts() {
    let Some(c) = deploy_testkit::sshd::cluster() else {
        return;
    };
    let home = deploy_testkit::sshd::home(c, true);
    let shelf = Shelf::new();
    let sb = Sandbox::new();
    let (agent, agent_dest) = deploying_agent(&sb, &shelf);
    let ssh: Vec<String> = (8..10).map(|i| c.spec(i)).collect();
    let ssh_dest = |i: usize| {
        let (ip, port, _) = &c.hosts[i];
        shelf.path().join(format!("ssh-{ip}-{port}/app"))
    };
    let hosts = format!("{},{}", agent.addr(), ssh.join(","));
    let template = format!("{}/ssh-%h-%p/app", shelf.path().display());
    let client = |args: &[&str]| {
        run_command(
            Command::new(bins::client())
                .args(args)
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("DEPLOY_KEY_CIPHER", KEY)
                .env("HOME", home.path())
                .env("USER", "root")
                .env("DEST", &template),
            std::time::Duration::from_secs(60),
        )
    };
    for v in ["1", "2"] {
        let out = client(&[
            "--hosts",
            &hosts,
            "--order=deploy",
            "--manifest",
            &shelf.manifest(v),
        ]);
        assert_eq!(out.code, Some(0), "{out:#?}");
        assert!(out.stderr.contains("3 of 3 hosts switched"), "{out:#?}");
        let doc = out.json();
        let ids: Vec<&str> = doc
            .as_object()
            .unwrap()
            .values()
            .map(|h| h["deploy"]["content"]["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "one release id: {ids:?}"
        );
        assert_eq!(version(&agent_dest), v);
        for i in 8..10 {
            assert_eq!(version(&ssh_dest(i)), v);
        }
    }
    // The SSH hosts' layout is the agents': the agent's own code lists it.
    let agent_side = deploy_release::layout::Releases::new(&ssh_dest(8), None);
    assert_eq!(agent_side.ids().len(), 2);
    assert_eq!(agent_side.history().len(), 2);
    // Back everywhere, each host on its own dest.
    for (host, dest) in [
        (agent.addr().to_string(), agent_dest.display().to_string()),
        (ssh.join(","), template.clone()),
    ] {
        let out = client(&["--hosts", &host, "--order=rollback", "--dest", &dest]);
        assert_eq!(out.code, Some(0), "{out:#?}");
    }
    assert_eq!(version(&agent_dest), "1");
    for i in 8..10 {
        assert_eq!(version(&ssh_dest(i)), "1");
        let actions: Vec<String> = deploy_release::layout::Releases::new(&ssh_dest(i), None)
            .history()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["switch", "switch", "rollback"]);
    }
}

/// stretcher's knobs per order: a caller may ask for a stricter download than the
/// host's own settings (here a bandwidth cap and a timeout that cannot both hold).
#[test]
fn per_order_knobs_bound_the_download() {
    let shelf = Shelf::new();
    let big = shelf.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    make_blob(&big.join("blob"), 1 << 20);
    let tar = shelf.path().join("big.tar");
    assert!(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&big)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let out = Command::new("sha256sum").arg(&tar).output().unwrap();
    let sum = String::from_utf8(out.stdout).unwrap();
    let sum = sum.split_whitespace().next().unwrap().to_owned();
    std::fs::write(
        shelf.path().join("big.yml"),
        format!(
            "src: file://{}\nchecksum: {sum}\ndest: {{{{ must_env \"DEST\" }}}}\nsync_strategy: release\n",
            tar.display()
        ),
    )
    .unwrap();
    let sb = Sandbox::new();
    let (agent, dest) = deploying_agent(&sb, &shelf);
    let host = agent.addr().to_string();
    let manifest = format!("file://{}/big.yml", shelf.path().display());
    // 1 MiB at 256 KiB/s takes 4 s: a 1 s limit stops it, naming the timeout.
    let out = client(&[
        "--hosts",
        &host,
        "--order=deploy",
        "--manifest",
        &manifest,
        "--max-bandwidth=256k",
        "--fetch-timeout=1s",
    ]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("timeout"), "{out:#?}");
    assert!(!dest.exists(), "nobody switched");
    // Without them the same deploy goes through.
    let out = client(&["--hosts", &host, "--order=deploy", "--manifest", &manifest]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(dest.join("blob").is_file());
    // Knobs are for deploy only.
    let out = client(&[
        "--hosts",
        &host,
        "--order=releases",
        "--dest",
        "/x",
        "--retry=3",
    ]);
    assert_eq!(out.code, Some(2), "{out:#?}");
}

#[test]
fn a_followed_rollout_streams_each_hosts_log_and_ends() {
    // The log's kept copy used to hold the follower's channel open: a followed
    // deploy never answered.
    let shelf = Shelf::new();
    let sbs: Vec<Sandbox> = (0..2).map(|_| Sandbox::new()).collect();
    let fleet: Vec<(Agent, PathBuf)> = sbs.iter().map(|sb| deploying_agent(sb, &shelf)).collect();
    let hosts: Vec<String> = fleet.iter().map(|(a, _)| a.addr().to_string()).collect();
    let m1 = shelf.manifest("1");
    let out = client(&[
        "--hosts",
        &hosts.join(","),
        "--order=deploy",
        "--manifest",
        &m1,
        "--follow",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    for host in &hosts {
        assert!(
            out.stderr.contains(&format!("{host}: prepared release ")),
            "each host's log streams under its name: {out:#?}"
        );
    }
    for (_, dest) in &fleet {
        assert_eq!(version(dest), "1");
    }
}

#[test]
fn a_rollout_on_a_terminal_shows_each_hosts_progress() {
    let shelf = Shelf::new();
    let sbs: Vec<Sandbox> = (0..2).map(|_| Sandbox::new()).collect();
    let fleet: Vec<(Agent, PathBuf)> = sbs.iter().map(|sb| deploying_agent(sb, &shelf)).collect();
    let hosts: Vec<String> = fleet.iter().map(|(a, _)| a.addr().to_string()).collect();
    let m1 = shelf.manifest("1");
    // `script` gives the client a terminal; what the terminal showed is its output.
    let command = format!(
        "{} --hosts {} --order=deploy --manifest {m1} --format=text",
        bins::client().display(),
        hosts.join(",")
    );
    let out = run_command(
        Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", KEY)
            .env("USER", "tester")
            .env("TERM", "xterm")
            .env("NO_COLOR", "1"),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    for host in &hosts {
        let bar = out
            .stdout
            .lines()
            .flat_map(|l| l.split('\r'))
            .any(|l| l.contains(host.as_str()) && l.contains("100%") && l.contains("prepared"));
        assert!(bar, "a finished bar for {host}: {out:#?}");
    }
    assert!(
        !out.stdout.contains("prepared release "),
        "no log lines without --follow: {out:#?}"
    );
}

/// One release order on a raw v2 connection; the reply's content.
fn release_order(
    agent: &Agent,
    spec: deploy_common::order::release::ReleaseSpec,
) -> serde_json::Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut request = request("deploy", "");
    request.release = Some(Box::new(spec));
    let reply = runtime
        .block_on(v2(agent.addr(), KEY, None, request))
        .unwrap();
    assert_eq!(reply.code, 200, "{reply:?}");
    serde_json::Value::Object(reply.body().clone())
}

#[test]
fn a_switch_waits_for_the_rollouts_instant() {
    use deploy_common::order::release::{Phase, ReleaseSpec};
    let shelf = Shelf::new();
    let sb = Sandbox::new();
    let (agent, dest) = deploying_agent(&sb, &shelf);
    let now = || chrono::Utc::now().timestamp_millis();
    let prepare = |v: &str| {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let content = release_order(
            &agent,
            ReleaseSpec {
                manifest_url: shelf.manifest(v),
                phase: Phase::Prepare,
                id: stamp,
                ..ReleaseSpec::default()
            },
        );
        content["id"].as_str().unwrap().to_owned()
    };
    let switch = |id: &str, at: i64| {
        release_order(
            &agent,
            ReleaseSpec {
                phase: Phase::Switch,
                dest: dest.display().to_string(),
                id: id.to_owned(),
                at: Some(at),
                ..ReleaseSpec::default()
            },
        )
    };
    // An instant a minute ahead means the caller's clock is off: no wait, said so.
    let id1 = prepare("1");
    let asked = now() + 60_000;
    let content = switch(&id1, asked);
    let switched_at: i64 = content["switched_at"].as_str().unwrap().parse().unwrap();
    assert!(switched_at < asked, "{content}");
    let log = base64_decode(content["log"].as_str().unwrap());
    assert!(log.contains("ahead of this host's clock"), "{log}");
    assert_eq!(version(&dest), "1");
    // A near instant is waited for: the rename is not before it.
    let id2 = prepare("2");
    let asked = now() + 1_500;
    let content = switch(&id2, asked);
    let switched_at: i64 = content["switched_at"].as_str().unwrap().parse().unwrap();
    assert!(switched_at >= asked, "{switched_at} < {asked}: {content}");
    assert_eq!(version(&dest), "2");
}

fn base64_decode(b64: &str) -> String {
    use base64::Engine as _;
    String::from_utf8_lossy(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .into_owned()
}

#[test]
fn a_switch_failure_rolls_back_the_others_unless_no_rollback() {
    let shelf = Shelf::new();
    let sbs: Vec<Sandbox> = (0..2).map(|_| Sandbox::new()).collect();
    let fleet: Vec<(Agent, PathBuf)> = sbs.iter().map(|sb| deploying_agent(sb, &shelf)).collect();
    let hosts: Vec<String> = fleet.iter().map(|(a, _)| a.addr().to_string()).collect();
    let hosts = hosts.join(",");
    let out = client(&[
        "--hosts",
        &hosts,
        "--order=deploy",
        "--manifest",
        &shelf.manifest("1"),
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    // The second host's dest becomes a real directory: it prepares, but cannot switch.
    let odd = &fleet[1].1;
    std::fs::remove_file(odd).unwrap();
    std::fs::create_dir(odd).unwrap();
    let m2 = shelf.manifest("2");
    let out = client(&["--hosts", &hosts, "--order=deploy", "--manifest", &m2]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("1 hosts rolled back"), "{out:#?}");
    assert_eq!(version(&fleet[0].1), "1", "rolled back");
    let out = client(&[
        "--hosts",
        &hosts,
        "--order=deploy",
        "--manifest",
        &m2,
        "--no-rollback",
    ]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(!out.stderr.contains("rolled back"), "{out:#?}");
    assert_eq!(version(&fleet[0].1), "2", "kept: --no-rollback");
    assert_eq!(version(odd), "", "the real directory is left alone");
}

#[test]
fn the_agents_deploy_keys_and_a_releases_dir() {
    let shelf = Shelf::new();
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.allowed()).unwrap();
    let dest = sb.allowed().join("app");
    let work = sb.join("work");
    let elsewhere = tempfile::tempdir().unwrap();
    let start = |deploy: &str| {
        Config::new(&sb)
            .server("allow_deploy", "on")
            .raw(&format!(
                "[deploy]\nmanifest[] = file://{}/\n{deploy}",
                shelf.path().display()
            ))
            .env("DEST", dest.display())
            .start(&sb)
    };
    let deploy = |agent: &Agent, manifest: &str| {
        client(&[
            "--hosts",
            &agent.addr().to_string(),
            "--order=deploy",
            "--manifest",
            manifest,
        ])
    };
    // src[]: an artifact outside the allowed prefixes is refused, naming the key.
    let agent = start(&format!("src[] = file://{}/\n", elsewhere.path().display()));
    let out = deploy(&agent, &shelf.manifest("1"));
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("src[]"), "{out:#?}");
    assert_eq!(version(&dest), "");
    drop(agent);
    // inline: a manifest sent by the client (@FILE) only where `inline = on`.
    let inline = format!("@{}/m1.yml", shelf.path().display());
    let agent = start("");
    let out = deploy(&agent, &inline);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("inline"), "{out:#?}");
    drop(agent);
    // work_dir: downloads and staging go there; one the agent cannot use fails the
    // deploy, naming it.
    let agent = start("inline = on\nwork_dir = /proc/no-such-dir\n");
    let out = deploy(&agent, &inline);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("/proc/no-such-dir"), "{out:#?}");
    drop(agent);
    let agent = start(&format!("inline = on\nwork_dir = {}\n", work.display()));
    let out = deploy(&agent, &inline);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(version(&dest), "1");
    assert!(work.is_dir());
    // A releases directory of the manifest's own, found again with --releases-dir.
    let releases = sb.allowed().join("kept-releases");
    let m2 = std::fs::read_to_string(shelf.path().join("m2.yml")).unwrap();
    let m2_path = shelf.path().join("m2-dir.yml");
    std::fs::write(
        &m2_path,
        format!("{m2}releases_dir: {}\n", releases.display()),
    )
    .unwrap();
    let out = deploy(&agent, &format!("file://{}", m2_path.display()));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(version(&dest), "2");
    assert!(std::fs::read_link(&dest).unwrap().starts_with(&releases));
    let list = |extra: &[&str]| {
        let mut args = vec![
            "--hosts".to_owned(),
            agent.addr().to_string(),
            "--order=releases".to_owned(),
            format!("--dest={}", dest.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client(&args)
    };
    let releases_arg = format!("--releases-dir={}", releases.display());
    let out = list(&[&releases_arg]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let content = &out.json()[agent.addr().to_string()]["releases"]["content"];
    let current = content["current"].as_str().unwrap_or_default();
    assert!(
        !current.is_empty() && std::fs::read_link(&dest).unwrap().ends_with(current),
        "{out:#?}"
    );
}
