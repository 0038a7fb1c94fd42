//! stretcher's event mode under real Serf (the Debian package `serf`): five serf agents
//! on loopback, each with `-event-handler user:deploy=deploy-agent stretcher --path
//! <its agent ini>` and its own `DEST` (serf hands its environment to handlers), joined
//! into one cluster. One `serf event deploy URL` deploys on every node; the same event
//! name with another URL deploys again; and a node that rejoins with `-replay` gets both
//! events re-delivered (same `SERF_USER_LTIME`) and deploys neither again.
//!
//! `serf` is found on `PATH` (or through `DEPLOY_TEST_SERF`). Absent, the test fails
//! when `CI` is set and is skipped (saying why) otherwise.

use crate::util::*;
use deploy_testkit::shelf::Shelf;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long an event may take to reach every node and deploy there (serf coalesces
/// user events for about a second or two before running handlers).
const DELIVERY: Duration = Duration::from_secs(60);

fn serf_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DEPLOY_TEST_SERF") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("DEPLOY_TEST_SERF={} is not a file", p.display()))
        };
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("serf"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| "serf not found on PATH (apt-get install serf)".into())
}

/// One serf agent with its deploy host: a sandbox, the agent ini the handler uses, the
/// `dest` it deploys to, and the serf process (killed on drop, its log replayed when
/// the test fails).
struct Node {
    name: String,
    sb: Sandbox,
    ini: PathBuf,
    dest: PathBuf,
    bind: u16,
    rpc: u16,
    child: Option<Child>,
}

impl Node {
    fn new(i: usize, shelf: &Path) -> Node {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.allowed()).unwrap();
        let config = Config::new(&sb).server("allow_deploy", "on").raw(&format!(
            "[deploy]\nmanifest[] = file://{}/\n",
            shelf.display()
        ));
        let ini = sb.join("agent.ini");
        std::fs::write(&ini, config.ini_text()).unwrap();
        std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
        let dest = sb.allowed().join("app");
        Node {
            name: format!("node{i}"),
            sb,
            ini,
            dest,
            bind: free_port(),
            rpc: free_port(),
            child: None,
        }
    }

    fn rpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.rpc)
    }

    fn log_path(&self) -> PathBuf {
        self.sb.join("serf.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `serf agent`, joined to `join` (with `-replay` when asked), and waits for
    /// its RPC to answer.
    fn start(&mut self, serf: &Path, join: Option<&str>, replay: bool) {
        let handler = format!(
            "user:deploy={} stretcher --path {}",
            bins::agent().display(),
            self.ini.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(serf);
        cmd.arg("agent")
            .arg(format!("-node={}", self.name))
            .arg(format!("-bind=127.0.0.1:{}", self.bind))
            .arg(format!("-rpc-addr={}", self.rpc_addr()))
            // Handler output is logged at debug level only.
            .arg("-log-level=debug")
            .arg(format!("-event-handler={handler}"));
        if let Some(join) = join {
            cmd.arg(format!("-join={join}"));
        }
        if replay {
            cmd.arg("-replay");
        }
        // serf passes its own environment to its handlers: DEST reaches the manifest.
        let child = cmd
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEST", &self.dest)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", serf.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "serf agent {} exited ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            let ok = Command::new(serf)
                .args(["members", &format!("-rpc-addr={}", self.rpc_addr())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "serf agent {} did not answer on {} within 30 s:\n{}",
                self.name,
                self.rpc_addr(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn version(&self) -> String {
        std::fs::read_to_string(self.dest.join("version")).unwrap_or_default()
    }

    /// The events the handler recorded as applied (it records one after its deploy
    /// answered, so after the history line).
    fn applied(&self) -> String {
        std::fs::read_to_string(self.sb.join("state/deploy/applied-events")).unwrap_or_default()
    }

    /// Lines of the release history of `dest` (one per switch).
    fn switches(&self) -> usize {
        let mut dir = self.dest.clone().into_os_string();
        dir.push(".releases");
        std::fs::read_to_string(Path::new(&dir).join(".history"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- serf log of {} ---\n{}", self.name, self.log());
        }
    }
}

fn send_event(serf: &Path, node: &Node, payload: &str) {
    let out = run_command(
        Command::new(serf).args([
            "event",
            &format!("-rpc-addr={}", node.rpc_addr()),
            "deploy",
            payload,
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "serf event: {out:#?}");
}

fn wait_for_version(nodes: &[Node], v: &str) {
    wait_until(DELIVERY, &format!("version {v} on every node"), || {
        nodes.iter().all(|n| n.version() == v).then_some(())
    });
}

#[test]
fn one_serf_event_deploys_on_every_node_once() {
    let serf = match serf_binary() {
        Ok(serf) => serf,
        Err(why) if std::env::var_os("CI").is_some() => panic!("CI is set: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let shelf = Shelf::new();
    let mut nodes: Vec<Node> = (1..=5).map(|i| Node::new(i, shelf.path())).collect();
    let first = format!("127.0.0.1:{}", nodes[0].bind);
    nodes[0].start(&serf, None, false);
    for node in nodes.iter_mut().skip(1) {
        node.start(&serf, Some(&first), false);
    }
    // Everyone sees everyone before the event (an event reaches the members it knows).
    wait_until(Duration::from_secs(30), "5 alive serf members", || {
        let out = Command::new(&serf)
            .args(["members", &format!("-rpc-addr={}", nodes[4].rpc_addr())])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.matches(" alive").count() == 5).then_some(())
    });

    let m1 = shelf.manifest("1");
    send_event(&serf, &nodes[0], &m1);
    wait_for_version(&nodes, "1");

    // The same event name with another URL (sent from another node): a new LTime, a
    // new deploy everywhere.
    let m2 = shelf.manifest("2");
    send_event(&serf, &nodes[2], &m2);
    wait_for_version(&nodes, "2");
    // The history line follows the switch: wait for it too.
    wait_until(DELIVERY, "two switches in every node's history", || {
        nodes.iter().all(|n| n.switches() == 2).then_some(())
    });
    // And for the handler to record the event as applied, which it does last: a serf
    // stopped before that would rightly deploy it again on replay.
    wait_until(
        DELIVERY,
        "event 2 recorded as applied on every node",
        || {
            nodes
                .iter()
                .all(|n| n.applied().lines().count() == 2)
                .then_some(())
        },
    );

    // A re-delivery: node5 leaves and rejoins with -replay, so serf runs its handler
    // again for the past events, with their LTimes (both, in practice; the latest at
    // least, were they coalesced). Neither is deployed again.
    let last = nodes.len() - 1;
    nodes[last].stop();
    let before = nodes[last].log().len();
    nodes[last].start(&serf, Some(&first), true);
    let replayed = wait_until(
        DELIVERY,
        "node5's handler to run for the replayed events",
        || {
            let log = nodes[last].log();
            let new = log.get(before..).unwrap_or_default().to_owned();
            (new.contains("event serf:deploy:2 was applied already; skipped")
                || new.contains("stretcher: deploying"))
            .then_some(new)
        },
    );
    assert!(!replayed.contains("stretcher: deploying"), "{replayed}");
    assert_eq!(nodes[last].switches(), 2, "{replayed}");
    assert_eq!(nodes[last].version(), "2");
}
