//! Real `nats-server` processes on loopback: one server, or a cluster whose servers
//! route to each other, each on ephemeral ports learnt from its log.
//!
//! ```text
//! server 0: client 127.0.0.1:<random>, routes 127.0.0.1:<random>
//! server 1: client …, routes …, route to server 0      (the mesh completes by gossip)
//! server 2: client …, routes …, route to server 0
//! ```
//!
//! [`NatsCluster::start`] takes the text of an `authorization { … }` block (users and
//! their permissions) every server shares; [`authorization`] writes the one the tests
//! use: a caller and one user per agent, limited as `etc/nats/accounts.conf` limits
//! them. Servers are killed when the cluster drops, their logs replayed on a failing
//! test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The caller's NATS user and password in [`authorization`].
pub const CALLER: (&str, &str) = ("caller", "callerpw");

/// The password of every agent user in [`authorization`] (the user is the agent's name).
pub const AGENT_PASSWORD: &str = "agentpw";

/// How long a server may take to say it listens.
const START: Duration = Duration::from_secs(20);

/// One running `nats-server`.
pub struct NatsServer {
    child: Option<Child>,
    /// `nats://127.0.0.1:<port>` for clients.
    pub url: String,
    /// `nats://127.0.0.1:<port>` for routes.
    pub route: String,
    log: Arc<Mutex<String>>,
}

impl NatsServer {
    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- nats-server {} log ---\n{}", self.url, self.log());
        }
    }
}

/// The server binary: on the `PATH`, else Debian's `/usr/sbin/nats-server` (not on
/// a user's `PATH`).
fn binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("nats-server")
    }
}

/// Servers routed to each other.
pub struct NatsCluster {
    /// The servers, in start order.
    pub servers: Vec<NatsServer>,
    dir: PathBuf,
}

/// Whether `nats-server` is installed (tests skip with a message when it is not, so
/// that a machine without it says why instead of failing obscurely).
pub fn available() -> bool {
    Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The `authorization` block of the tests: the caller may publish `deploy.>` and
/// read its inboxes; each agent `(name, groups)` may subscribe to its own subject,
/// its groups' (`alias:<name>`: another name's) and its bodies', and publish only to
/// inboxes.
pub fn authorization(agents: &[(&str, &[&str])]) -> String {
    let mut users = format!(
        "    {{ user: {}, password: {}, permissions: {{ publish: [\"deploy.>\"], subscribe: [\"_INBOX.>\"] }} }}\n",
        CALLER.0, CALLER.1
    );
    for (name, groups) in agents {
        let mut subs = vec![
            format!("\"deploy.agent.{name}\""),
            format!("\"deploy.body.{name}.>\""),
        ];
        for g in groups.iter() {
            match g.strip_prefix("alias:") {
                Some(alias) => {
                    subs.push(format!("\"deploy.agent.{alias}\""));
                    subs.push(format!("\"deploy.body.{alias}.>\""));
                }
                None => subs.push(format!("\"deploy.group.{g}\"")),
            }
        }
        users.push_str(&format!(
            "    {{ user: {name}, password: {AGENT_PASSWORD}, permissions: {{ publish: [\"_INBOX.>\"], subscribe: [{}] }} }}\n",
            subs.join(", ")
        ));
    }
    format!("authorization {{\n  users: [\n{users}  ]\n}}\n")
}

impl NatsCluster {
    /// Starts `n` servers in `dir`, every one with `authorization` (may be empty),
    /// servers after the first routing to it.
    pub fn start(dir: &Path, n: usize, authorization: &str) -> NatsCluster {
        let mut servers: Vec<NatsServer> = Vec::new();
        for i in 0..n {
            let routes = servers
                .first()
                .map(|s| format!("  routes: [\"{}\"]\n", s.route))
                .unwrap_or_default();
            let cluster = if n > 1 {
                format!("cluster {{\n  name: deploy\n  listen: \"127.0.0.1:-1\"\n{routes}}}\n")
            } else {
                String::new()
            };
            let text =
                format!("listen: \"127.0.0.1:-1\"\nserver_name: n{i}\n{cluster}{authorization}");
            let conf = dir.join(format!("nats-{i}.conf"));
            std::fs::write(&conf, text).expect("write nats config");
            servers.push(start_server(&conf, n > 1));
        }
        let cluster = NatsCluster {
            servers,
            dir: dir.to_path_buf(),
        };
        if n > 1 {
            cluster.wait_routes(n - 1);
        }
        cluster
    }

    /// The client URLs of the servers still running, comma-separated (as
    /// `--nats-servers` takes them), each with `user:password@` if given.
    pub fn urls(&self, user: Option<(&str, &str)>) -> String {
        self.servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| match user {
                Some((u, p)) => s.url.replacen("nats://", &format!("nats://{u}:{p}@"), 1),
                None => s.url.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `server[] = …` lines for a `[nats]` section, every server of the cluster.
    pub fn server_lines(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("server[] = {}\n", s.url))
            .collect()
    }

    /// The directory holding the configs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until every server logged `routes` route connections.
    fn wait_routes(&self, routes: usize) {
        let deadline = Instant::now() + START;
        loop {
            let done = self
                .servers
                .iter()
                .all(|s| s.log().matches("Route connection created").count() >= routes);
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster did not form its routes; logs:\n{}",
                self.servers
                    .iter()
                    .map(NatsServer::log)
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn start_server(conf: &Path, cluster: bool) -> NatsServer {
    let mut child = Command::new(binary())
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nats-server (apt-get install nats-server)");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                for (marker, is_route) in [
                    ("Listening for client connections on ", false),
                    ("Listening for route connections on ", true),
                ] {
                    if let Some((_, addr)) = line.trim().split_once(marker) {
                        let _ = tx.send((is_route, format!("nats://{addr}")));
                    }
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                }
                line.clear();
            }
        });
    }
    let mut server = NatsServer {
        child: Some(child),
        url: String::new(),
        route: String::new(),
        log,
    };
    let deadline = Instant::now() + START;
    while server.url.is_empty() || (cluster && server.route.is_empty()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, url)) => server.route = url,
            Ok((false, url)) => server.url = url,
            Err(_) => panic!(
                "nats-server {} did not say where it listens; log:\n{}",
                conf.display(),
                server.log()
            ),
        }
    }
    server
}

/// Starts an agent from `config` with a `[nats]` section (every server of `cluster`,
/// or only `servers` when given), `name`, `groups` (`alias:<name>` for an `alias[]`), NATS user `name` with
/// [`AGENT_PASSWORD`] (or `user`), and no TCP port; waits until it serves over NATS.
pub fn start_agent(
    sb: &crate::Sandbox,
    config: crate::AgentConfig,
    server_lines: &str,
    name: &str,
    groups: &[&str],
    user: Option<(&str, &str)>,
) -> crate::Agent {
    let (user, password) = user.unwrap_or((name, AGENT_PASSWORD));
    let mut section = format!(
        "[nats]\n{server_lines}name = {name}\ntcp = off\nuser = {user}\npassword = {password}\n"
    );
    for g in groups {
        if let Some(alias) = g.strip_prefix("alias:") {
            section.push_str(&format!("alias[] = {alias}\n"));
        } else {
            section.push_str(&format!("group[] = {g}\n"));
        }
    }
    let config = config.raw(&section);
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).expect("write jobs.ini");
    let ini = sb.path().join("agent.ini");
    std::fs::write(&ini, config.ini_text()).expect("write agent.ini");
    let agent = crate::Daemon::start(&crate::bins::agent(), &ini, &[], 0);
    wait_serving(&agent);
    agent
}

/// Waits until `agent` logged that it serves over NATS, connected.
pub fn wait_serving(agent: &crate::Agent) {
    let deadline = Instant::now() + START;
    while !agent
        .log()
        .lines()
        .any(|l| l.contains("nats: serving") && l.contains("connected=true"))
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not serve over NATS; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
