//! Scenarios on `ssh://` hosts (real sshd instances on loopback): Octopoda's helloWorld
//! applied there, NodeApp versions kept on the hosts in the agents' layout (read back
//! with `deploy-napp` as an agent would), revert-style reset A→B→C→A checked on disk,
//! an ignored file surviving, an ambiguous prefix refused, and hostile file names.

use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::Output;

/// The client against the sshd cluster, the workspace per port under `dir` (also
/// `scenario::ssh_hosts_beside_an_agent`'s).
pub(crate) struct Ssh {
    home: tempfile::TempDir,
    ws: PathBuf,
}

impl Ssh {
    pub(crate) fn new(dir: &Path) -> Option<Ssh> {
        let c = deploy_testkit::sshd::cluster()?;
        Some(Ssh {
            home: deploy_testkit::sshd::home(c, true),
            ws: dir.join("ssh/%p/ws"),
        })
    }

    /// A NodeApp's directory on host `i`.
    fn napp(&self, i: usize, app: &str, scenario: &str) -> PathBuf {
        let port = deploy_testkit::sshd::cluster().unwrap().hosts[i].1;
        PathBuf::from(self.ws.to_str().unwrap().replace("%p", &port.to_string()))
            .join(format!("{app}@{scenario}"))
    }

    pub(crate) async fn run(&self, sub: &str, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deploy-client"));
        cmd.args([sub, "--key-cipher=agentsecret"])
            .arg(format!("--ssh-workspace={}", self.ws.display()))
            .args(args)
            .env("HOME", self.home.path())
            .env("USER", "root")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("DEPLOY_KEY_CIPHER")
            .env_remove("RUST_LOG")
            .env("DEPLOY_CLIENT_CONFIG", "")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
            .await
            .expect("deploy-client did not finish in 60 s")
            .unwrap();
        Output {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `napp versions HOST APP@SCENARIO` as JSON: the ids, newest first.
    async fn versions(&self, host: &str, napp: &str) -> Vec<String> {
        let out = self
            .run(
                "napp",
                &["versions", host, napp, "--format=json", "-l", "50"],
            )
            .await;
        assert_eq!(out.status, 0, "{out:?}");
        let doc: Value = serde_json::from_str(&out.stdout).unwrap();
        doc["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// The versions as an agent reads them from that workspace.
fn agent_view(napp_dir: &Path) -> Vec<deploy_napp::Version> {
    let ws = napp_dir.parent().unwrap();
    let name = napp_dir.file_name().unwrap().to_str().unwrap();
    let (app, scenario) = name.split_once('@').unwrap();
    let root = deploy_napp::Root::open(ws).unwrap();
    let w = deploy_napp::Workspace::new(root, deploy_napp::Layout::new(ws, None, None));
    w.versions(app, scenario).unwrap()
}

fn read(p: PathBuf) -> String {
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// helloWorld on two SSH hosts; prepare records versions on the hosts, commit too; versions listed by a fresh client; reset A→B→C→A
/// revert-style, on disk; an ignored file stays; a too-short or ambiguous prefix is
/// refused.
#[tokio::test]
async fn hello_world_versions_on_ssh_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ssh) = Ssh::new(dir.path()) else {
        eprintln!("skipped: no sshd cluster (needs root and /usr/sbin/sshd)");
        return;
    };
    let c = deploy_testkit::sshd::cluster().unwrap();
    let (s0, s1) = (c.spec(0), c.spec(1));
    let folder = deploy_testkit::scenario::hello_world(dir.path(), &s0, &s1);
    let f = folder.to_str().unwrap();
    let src = folder.join("helloworld/src");
    fs::write(src.join(".gitignore"), "*.log\n").unwrap();

    fs::write(src.join("v.txt"), "A\n").unwrap();
    let out = ssh.run("scenario", &["apply", f, "-m", "A"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let hw = |i| ssh.napp(i, "helloWorldPrinter", "helloWorld");
    assert_eq!(
        read(hw(0).join("helloworld.txt")),
        "-->prepared\nhelloworld\n"
    );
    let a = ssh.versions(&s0, "helloWorldPrinter@helloWorld").await;
    assert_eq!(a.len(), 1, "{a:?}");
    // The scenario version names the SSH hosts' NodeApps too.
    let out = ssh.run("scenario", &["versions", f, "--format=json"]).await;
    let page: Value = serde_json::from_str(&out.stdout).unwrap();
    let map = page["versions"][0]["map"].as_object().unwrap();
    assert!(map.contains_key(&s0) && map.contains_key(&s1), "{map:?}");
    assert_eq!(map[&s0]["helloWorldPrinter"], a[0].as_str());

    fs::write(src.join("v.txt"), "B\n").unwrap();
    fs::write(src.join("only-b.txt"), "b\n").unwrap();
    let out = ssh
        .run("scenario", &["apply", f, "prepare", "-m", "B"])
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    let out = ssh
        .run("scenario", &["apply", f, "commit", "-m", "C"])
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    let ids = ssh.versions(&s0, "helloWorldPrinter@helloWorld").await;
    assert_eq!(ids.len(), 3, "A, B, C: {ids:?}");
    assert_eq!(ids[2], a[0]);
    // An agent reads the same history from the host's files.
    let seen = agent_view(&hw(0));
    assert_eq!(
        seen.iter()
            .rev()
            .map(|v| v.version.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(
        seen.iter().map(|v| v.message.as_str()).collect::<Vec<_>>(),
        ["A", "B", "C"]
    );

    // An ignored file on the host, and a stray one the reset removes.
    fs::write(hw(0).join("debug.log"), "keep me").unwrap();
    fs::write(hw(0).join("stray.txt"), "x").unwrap();
    let host = s0.as_str();
    let out = ssh
        .run(
            "napp",
            &[
                "reset",
                host,
                "helloWorldPrinter@helloWorld",
                "-v",
                "ab",
                "-m",
                "x",
            ],
        )
        .await;
    assert_ne!(out.status, 0, "a 2-digit prefix: {out:?}");
    let prefix = &a[0][..6];
    let out = ssh
        .run(
            "napp",
            &[
                "reset",
                host,
                "helloWorldPrinter@helloWorld",
                "-v",
                prefix,
                "-m",
                "back to A",
            ],
        )
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(read(hw(0).join("v.txt")), "A\n");
    assert!(!hw(0).join("only-b.txt").exists());
    assert!(!hw(0).join("stray.txt").exists());
    assert_eq!(read(hw(0).join("debug.log")), "keep me");
    let seen = agent_view(&hw(0));
    assert_eq!(seen.len(), 4, "A→B→C→A: {seen:?}");
    assert_eq!(seen[3].manifest, seen[0].manifest);
    assert_eq!(seen[3].message, "back to A");
    assert!(
        fs::read_dir(hw(0)).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".deploy-tmp")),
        "the staging directory is gone"
    );
    // The other host was not touched.
    assert_eq!(read(hw(1).join("v.txt")), "B\n");

    // Two versions sharing a prefix: refused, naming both.
    let log = hw(0)
        .parent()
        .unwrap()
        .join(".deploy/versions/helloWorldPrinter@helloWorld/log");
    let mut text = read(log.clone());
    for id in ["abc1", "abc2"] {
        text.push_str(&format!(
            "{{\"version\":\"{id}{}\",\"time\":\"2026-01-01T00:00:00.000Z\",\"message\":\"x\",\"manifest\":\"{}\"}}\n",
            "0".repeat(60),
            seen[0].manifest
        ));
    }
    fs::write(&log, text).unwrap();
    let out = ssh
        .run(
            "napp",
            &[
                "reset",
                host,
                "helloWorldPrinter@helloWorld",
                "-v",
                "abc",
                "-m",
                "x",
            ],
        )
        .await;
    assert_ne!(out.status, 0, "{out:?}");
    assert!(out.stderr.contains("ambiguous"), "{out:?}");
}

/// File names a shell would misread travel through commit and reset unharmed: a
/// newline, a quote, `$(…)`, a byte that is not UTF-8.
#[tokio::test]
async fn hostile_names_round_trip_on_ssh_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ssh) = Ssh::new(dir.path()) else {
        eprintln!("skipped: no sshd cluster (needs root and /usr/sbin/sshd)");
        return;
    };
    let c = deploy_testkit::sshd::cluster().unwrap();
    let s2 = c.spec(2);
    let folder = dir.path().join("odd");
    fs::create_dir_all(folder.join("app/src")).unwrap();
    fs::create_dir_all(folder.join("app/scripts")).unwrap();
    let mut yaml = format!(
        "name: odd\ndescription: x\napplications:\n- name: app\n  description: x\n  scriptpath: app/scripts\n  sourcepath: app/src\n  nodes:\n    - '{s2}'\n  script:\n"
    );
    for t in ["prepare", "start", "stop", "purge"] {
        fs::write(folder.join(format!("app/scripts/{t}.sh")), "true\n").unwrap();
        yaml.push_str(&format!(
            "    - target: {t}\n      file: {t}.sh\n      order: 1\n"
        ));
    }
    fs::write(folder.join("deployment.yaml"), yaml).unwrap();
    let f = folder.to_str().unwrap();
    let names = ["new\nline", "it's", "$(touch pwned)", "a b/c'd"];
    let src = folder.join("app/src");
    // Sources must be UTF-8 (the upload's rule); the host's tree need not be.
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    for n in names {
        let p = src.join(n);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("one {n}")).unwrap();
    }
    let out = ssh
        .run("scenario", &["apply", f, "prepare", "-m", "one"])
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    let napp = ssh.napp(2, "app", "odd");
    fs::write(napp.join(latin1), "one").unwrap();
    let out = ssh
        .run("scenario", &["apply", f, "commit", "-m", "one+"])
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    for n in names {
        fs::write(napp.join(n), format!("two {n}")).unwrap();
    }
    fs::write(napp.join(latin1), "two").unwrap();
    let out = ssh
        .run("scenario", &["apply", f, "commit", "-m", "two"])
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    let ids = ssh.versions(&s2, "app@odd").await;
    assert_eq!(ids.len(), 3, "{ids:?}");
    let out = ssh
        .run(
            "napp",
            &["reset", &s2, "app@odd", "-v", &ids[1][..8], "-m", "back"],
        )
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    for n in names {
        assert_eq!(read(napp.join(n)), format!("one {n}"), "{n:?}");
    }
    assert_eq!(fs::read(napp.join(latin1)).unwrap(), b"one");
    assert!(!napp.join("pwned").exists() && !dir.path().join("pwned").exists());
    let out = ssh
        .run(
            "napp",
            &["reset", &s2, "app@odd", "-v", &ids[0][..8], "-m", "again"],
        )
        .await;
    assert_eq!(out.status, 0, "{out:?}");
    for n in names {
        assert_eq!(read(napp.join(n)), format!("two {n}"), "{n:?}");
    }
    assert_eq!(fs::read(napp.join(latin1)).unwrap(), b"two");
    assert_eq!(agent_view(&napp).len(), 5);
}
