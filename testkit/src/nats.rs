//! Real `nats-server` processes on loopback: one server, or a cluster whose servers
//! route to each other, each on ephemeral ports learnt from its log (route ports chosen before the start); with or without
//! JetStream (the one launcher of the transport tests and of the shared-store tests).
//!
//! ```text
//! server i: client 127.0.0.1:<random>, http 127.0.0.1:<random>,
//!           routes 127.0.0.1:<free port i>, route to every other server's port
//! JetStream: jetstream { store_dir: <dir>/js-<i> }; ready when every live server's
//!            GET /healthz answers 200
//! ```
//!
//! [`NatsCluster::start`] takes the text of an `authorization { … }` block (users and
//! their permissions) every server shares; [`authorization`] writes the one the tests
//! use: a caller and one user per agent, limited as `etc/nats/accounts.conf` limits
//! them. [`NatsCluster::with_jetstream`] adds JetStream to that;
//! [`NatsCluster::jetstream`] is three JetStream servers without users in a directory
//! of their own. A server can be killed (SIGKILL) mid-test ([`NatsCluster::kill`]).
//! Servers are killed when the cluster drops, their logs replayed on a failing test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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
    /// `127.0.0.1:<port>` of the monitoring endpoint.
    monitor: String,
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
    /// The directory [`NatsCluster::jetstream`] made (removed on drop, after the servers).
    _own: Option<tempfile::TempDir>,
}

/// Whether `nats-server` is installed (tests skip with a message when it is not, so
/// that a machine without it says why instead of failing obscurely).
///
/// Under CI (`CI` set, as `.ci/run` does) a missing server is a failure, not a skip:
/// the tests that need it must run there.
pub fn available() -> bool {
    let found = Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found || std::env::var_os("CI").is_none(),
        "nats-server ({}) is not installed, and CI is set: install it (apt-get install nats-server)",
        binary().display()
    );
    found
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
        NatsCluster::launch(dir, n, authorization, false)
    }

    /// [`NatsCluster::start`] with JetStream on every server (each its own store in
    /// `dir/js-<i>`); returns once every server's `/healthz` says JetStream is current.
    pub fn with_jetstream(dir: &Path, n: usize, authorization: &str) -> NatsCluster {
        NatsCluster::launch(dir, n, authorization, true)
    }

    /// Three JetStream servers without users, in a temporary directory of their own
    /// (what the shared-store tests need).
    pub fn jetstream() -> NatsCluster {
        let own = tempfile::Builder::new()
            .prefix("deploy-nats.")
            .tempdir()
            .expect("tempdir");
        let mut cluster = NatsCluster::with_jetstream(own.path(), 3, "");
        cluster._own = Some(own);
        cluster
    }

    fn launch(dir: &Path, n: usize, authorization: &str, jetstream: bool) -> NatsCluster {
        let mut servers: Vec<NatsServer> = Vec::new();
        // Every server routes to every other (a JetStream cluster refuses to start
        // without configured routes, so the first cannot wait for the others).
        let route_ports: Vec<u16> = (0..n).map(|_| crate::net::free_port()).collect();
        for i in 0..n {
            let routes = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("\"nats://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: deploy\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}\n",
                    route_ports[i]
                )
            } else {
                String::new()
            };
            let js = if jetstream {
                format!(
                    "jetstream {{\n  store_dir: \"{}\"\n}}\n",
                    dir.join(format!("js-{i}")).display()
                )
            } else {
                String::new()
            };
            let text = format!(
                "listen: \"127.0.0.1:-1\"\nhttp: \"127.0.0.1:-1\"\nserver_name: n{i}\n{js}{cluster}{authorization}"
            );
            let conf = dir.join(format!("nats-{i}.conf"));
            std::fs::write(&conf, text).expect("write nats config");
            servers.push(start_server(&conf, n > 1));
        }
        let cluster = NatsCluster {
            servers,
            dir: dir.to_path_buf(),
            _own: None,
        };
        if n > 1 {
            cluster.wait_routes(n - 1);
        }
        if jetstream {
            cluster.wait_ready();
        }
        cluster
    }

    /// Waits until every live server's `GET /healthz` answers 200 (with JetStream:
    /// its meta group and streams current).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for server in self.servers.iter().filter(|s| s.child.is_some()) {
            while !healthy(&server.monitor) {
                assert!(
                    Instant::now() < deadline,
                    "nats-server {} not ready; logs:\n{}",
                    server.url,
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The client URL of every server (killed ones too), as a store's `server[]`.
    pub fn client_urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url.clone()).collect()
    }

    /// Kills server `i` (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Every server's log, for a failing test.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- n{i} ({})\n{}", s.url, s.log()))
            .collect()
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

    /// The callers' pin file (`[nats] agent_keys`, `--nats-agent-keys`) that
    /// [`start_agent`] and [`enrol_unstarted`] append the agents' keys to.
    pub fn agent_keys(&self) -> PathBuf {
        self.dir.join("agent-keys")
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

/// Which port a line of a server's log announces.
#[derive(Clone, Copy)]
enum Port {
    Client,
    Route,
    Monitor,
}

/// Whether `GET /healthz` on `addr` (`127.0.0.1:<port>`) answers 200.
fn healthy(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
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
    let (tx, rx) = mpsc::channel::<(Port, String)>();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                for (marker, kind) in [
                    ("Listening for client connections on ", Port::Client),
                    ("Listening for route connections on ", Port::Route),
                    ("Starting http monitor on ", Port::Monitor),
                ] {
                    if let Some((_, addr)) = line.trim().split_once(marker) {
                        let addr = addr.trim_start_matches("http://");
                        let _ = tx.send((kind, addr.to_owned()));
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
        monitor: String::new(),
        log,
    };
    let deadline = Instant::now() + START;
    while server.url.is_empty() || server.monitor.is_empty() || (cluster && server.route.is_empty())
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((Port::Route, addr)) => server.route = format!("nats://{addr}"),
            Ok((Port::Client, addr)) => server.url = format!("nats://{addr}"),
            Ok((Port::Monitor, addr)) => server.monitor = addr,
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
/// [`AGENT_PASSWORD`] (or `user`), and no TCP port; waits until it serves over NATS,
/// then enrols it: appends its pin lines to `pins` ([`enrol`]).
pub fn start_agent(
    sb: &crate::Sandbox,
    config: crate::AgentConfig,
    server_lines: &str,
    name: &str,
    groups: &[&str],
    user: Option<(&str, &str)>,
    pins: &Path,
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
    enrol(&ini, pins);
    agent
}

/// Enrols the agent configured by `ini` as an operator would: appends what
/// `deploy-agent --print-nats-key` prints (its name and aliases with its public key,
/// the key created if it had none) to the callers' pin file `pins`.
pub fn enrol(ini: &Path, pins: &Path) {
    let out = Command::new(crate::bins::agent())
        .arg("--print-nats-key")
        .arg("--path")
        .arg(ini)
        .output()
        .expect("run deploy-agent --print-nats-key");
    assert!(
        out.status.success(),
        "deploy-agent --print-nats-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pins)
        .expect("open the pin file");
    file.write_all(&out.stdout).expect("append to the pin file");
}

/// Enrols an agent `name` that is never started (its key made in `sb`), as for a
/// member of a group that is down.
pub fn enrol_unstarted(sb: &crate::Sandbox, name: &str, pins: &Path) {
    let config = crate::AgentConfig::new(sb).raw(&format!(
        "[nats]\nserver[] = nats://127.0.0.1:1\nname = {name}\ntcp = off\n"
    ));
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).expect("write jobs.ini");
    let ini = sb.path().join("agent.ini");
    std::fs::write(&ini, config.ini_text()).expect("write agent.ini");
    enrol(&ini, pins);
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
