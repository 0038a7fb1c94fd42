//! The harness: sandboxes, a real rsync daemon, the real `deploy-agent` binary, and
//! clients for the three wires it speaks (v2, v1 plain, v1 "ssl").
//!
//! # Pieces
//!
//! * [`Sandbox`]: one temporary directory per test with `allowed/` (the only
//!   `[allow::paths]` root), `outside/`, `state/` and room for source trees.
//! * [`make_tree`] / [`make_blob`] / [`assert_same_tree`]: source trees with awkward names
//!   (`we"ird.txt`, a newline in a name, a subdirectory) and a recursive byte comparison.
//! * [`RsyncDaemon`]: `rsync --daemon --no-detach` on a free 127.0.0.1 port with read-only
//!   modules; killed and reaped on drop.
//! * [`Config`]: builds an agent ini (and its jobs file) around a sandbox, with test
//!   defaults: `127.0.0.1:0`, key `agentsecret`, legacy on, one worker, the test RSA key.
//! * [`Agent`]: launches `CARGO_BIN_EXE_deploy-agent --foreground`, learns its addresses
//!   from the `deploy-agent: listening on ADDR` lines, keeps draining stderr, prints it if
//!   the test panics, and stops the master (SIGTERM, then SIGKILL) on drop.
//! * Clients: [`call`] (one order over a chosen [`Proto`]), [`v2`], [`v2_connect`],
//!   [`v1_plain`], [`v1_ssl`], [`v1_raw`], [`v1_ssl_raw`]. Every network operation runs
//!   under [`tokio::time::timeout`], so a hung agent fails the test instead of hanging it.
//!
//! # Time
//!
//! These tests drive real processes (the agent, rsync, sleep), so tokio's paused clock
//! (STYLE.md §9) cannot stand in for them; instead every wait is bounded and every
//! polling loop has a deadline.

#![allow(dead_code)]

use base64::Engine;
use deploy_common::crypto::keys::RsaPublicKey;
use deploy_common::legacy::http::{self, Form};
use deploy_common::legacy::{auth, ssl, Limits};
use deploy_common::order::Request;
use deploy_common::wire::connection::SecureConnection;
use deploy_common::wire::handshake::{self, ClientParams};
use deploy_common::wire::message::{Event, Message};
use deploy_common::wire::WireError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The agents' shared secret in these tests (the golden vectors' too).
pub const KEY: &str = "agentsecret";
/// Bound on any single network exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the agent printing its listening lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent binary under test.
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_deploy-agent");

/// The shared spec's legacy vectors and test keys.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/spec/legacy-vectors"
    ))
}

/// The repository's `etc/` samples.
pub fn etc_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../etc"))
}

/// The agent's test private key (PEM path).
pub fn agent_private_key_path() -> PathBuf {
    vectors_dir().join("agent_private.pem")
}

/// The agent's test public key.
pub fn agent_public_key() -> RsaPublicKey {
    RsaPublicKey::load(&vectors_dir().join("agent_public.pem")).expect("agent_public.pem")
}

/// Another RSA key (the proxy's), which the agent does not hold.
pub fn other_public_key() -> RsaPublicKey {
    RsaPublicKey::load(&vectors_dir().join("proxy_public.pem")).expect("proxy_public.pem")
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Standard base64 of `bytes`.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64 (panics with the input on failure).
pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("bad base64 {text:?}: {e}"))
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Sandboxes and trees

/// A test's private temporary directory.
pub struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    /// Creates the directory with `allowed/`, `outside/` and `state/` in it.
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("deploy-agent-test.")
            .tempdir()
            .expect("tempdir");
        for sub in ["allowed", "outside", "state"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        Sandbox { dir }
    }

    /// The sandbox root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the sandbox.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The one allowed root.
    pub fn allowed(&self) -> PathBuf {
        self.join("allowed")
    }

    /// `allowed/<rel>` as a string, for options and ini values.
    pub fn allowed_str(&self, rel: &str) -> String {
        format!("{}/{rel}", self.allowed().display())
    }
}

/// What [`make_tree`] wrote.
#[derive(Debug, Clone)]
pub struct TreeInfo {
    /// Regular files, relative paths with `/`.
    pub files: Vec<String>,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// The weird names every tree contains.
pub const WEIRD_QUOTE: &str = "we\"ird.txt";
/// A file name with a newline in it.
pub const WEIRD_NEWLINE: &str = "new\nline.txt";

/// Deterministic pseudo-random bytes (xorshift), so trees need no crate and no entropy.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes a source tree under `root`: files of sizes 0 to ~120 KB, `sub/` and
/// `sub/deeper/`, `we"ird.txt`, a name with a newline, a backslash and a space.
pub fn make_tree(root: &Path) -> TreeInfo {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..12u64 {
        let size = match i {
            0 => 0,
            1 => 1,
            _ => (i * i * 997) as usize,
        };
        files.insert(format!("file{i:03}.bin"), noise(i + 1, size));
    }
    for i in 1..=5 {
        files.insert(format!("sub/s{i}.conf"), format!("sub {i}\n").into_bytes());
        files.insert(
            format!("sub/deeper/d{i}"),
            format!("deep {i}\n").into_bytes(),
        );
    }
    files.insert(WEIRD_QUOTE.into(), b"weird \"quoted\" name\n".to_vec());
    files.insert(WEIRD_NEWLINE.into(), b"a newline in my name\n".to_vec());
    files.insert("back\\slash and space.txt".into(), b"\\\n".to_vec());
    std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir tree");
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir tree");
    let mut bytes = 0;
    for (name, content) in &files {
        std::fs::write(root.join(name), content).expect("write tree file");
        bytes += content.len() as u64;
    }
    TreeInfo {
        files: files.into_keys().collect(),
        bytes,
    }
}

/// Writes one file of `len` pseudo-random bytes at `path` (creating its directory).
pub fn make_blob(path: &Path, len: usize) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, noise(len as u64, len)).expect("write blob");
}

/// Asserts that `got` has exactly the entries of `want`, recursively: same names, same
/// kinds, same file contents.
pub fn assert_same_tree(want: &Path, got: &Path) {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", root.join(rel).display()))
            .map(|e| e.expect("dir entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel.join(entry.file_name());
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                out.insert(rel.clone(), None);
                walk(root, &rel, out);
            } else {
                assert!(kind.is_file(), "{} is not a regular file", rel.display());
                out.insert(
                    rel.clone(),
                    Some(std::fs::read(root.join(&rel)).expect("read")),
                );
            }
        }
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    walk(want, Path::new(""), &mut a);
    walk(got, Path::new(""), &mut b);
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(
        names_a,
        names_b,
        "{} and {} differ in their entries",
        want.display(),
        got.display()
    );
    for (name, content) in &a {
        assert!(
            content == &b[name],
            "{} differs between {} and {}",
            name.display(),
            want.display(),
            got.display()
        );
    }
}

// ---------------------------------------------------------------------------------------
// /proc

/// `(state, ppid)` of a process, or `None` if it does not exist.
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid …": comm may contain anything, so split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z')
}

/// Live (non-zombie) children of `parent`, sorted.
pub fn children(parent: i32) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((s, ppid)) if ppid == parent && s != 'Z'))
        .collect();
    out.sort_unstable();
    out
}

/// A process's command line, NULs as spaces, trailing NULs dropped.
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ")
}

/// Peak resident memory of a process, in KiB (0 if unknown).
pub fn vm_hwm_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
}

// ---------------------------------------------------------------------------------------
// rsync daemon

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A 127.0.0.1 port that refuses connections for as long as the returned socket lives
/// (bound without listening, so nobody else can take it meanwhile).
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind 127.0.0.1:0");
    let port = socket.local_addr().expect("local_addr").port();
    (socket, port)
}

/// `rsync --daemon` serving read-only modules on 127.0.0.1.
pub struct RsyncDaemon {
    child: Child,
    /// Its port.
    pub port: u16,
    dir: TempDir,
}

impl RsyncDaemon {
    /// Serves one module `DEST` with the tree at `tree`.
    pub fn start(tree: &Path) -> RsyncDaemon {
        RsyncDaemon::start_modules(&[("DEST", tree)])
    }

    /// Serves each `(name, path)` as a read-only module. Retries on another port if the
    /// chosen one was taken in the meantime.
    pub fn start_modules(modules: &[(&str, &Path)]) -> RsyncDaemon {
        let dir = tempfile::Builder::new()
            .prefix("deploy-rsyncd.")
            .tempdir()
            .expect("tempdir");
        let mut conf = format!(
            "use chroot = no\npid file = {dir}/rsyncd.pid\nlog file = {dir}/rsyncd.log\n\
             uid = {uid}\ngid = {gid}\nmunge symlinks = no\n",
            dir = dir.path().display(),
            uid = nix::unistd::getuid(),
            gid = nix::unistd::getgid(),
        );
        for (name, path) in modules {
            conf.push_str(&format!(
                "[{name}]\npath = {}\nread only = yes\n",
                path.display()
            ));
        }
        let conf_path = dir.path().join("rsyncd.conf");
        std::fs::write(&conf_path, conf).expect("write rsyncd.conf");
        for _attempt in 0..10 {
            let port = free_port();
            let _ = std::fs::remove_file(dir.path().join("rsyncd.pid"));
            let mut child = Command::new("rsync")
                .arg("--daemon")
                .arg("--no-detach")
                .arg(format!("--config={}", conf_path.display()))
                .arg("--address=127.0.0.1")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn rsync --daemon (is rsync installed?)");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                if StdTcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return RsyncDaemon { child, port, dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("rsync --daemon did not start");
    }

    /// `rsync://127.0.0.1:PORT/<module_path>`.
    pub fn url(&self, module_path: &str) -> String {
        format!("rsync://127.0.0.1:{}/{module_path}", self.port)
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Agent configuration

/// An agent ini under construction, with test defaults.
#[derive(Debug, Clone)]
pub struct Config {
    server: Vec<(String, String)>,
    hosts: Vec<String>,
    paths: Vec<String>,
    groups: Vec<(String, Vec<(String, String)>)>,
    jobs: Vec<(String, String)>,
}

impl Config {
    /// Defaults: `127.0.0.1:0`, `key_cipher = agentsecret`, legacy on, ssl off but with
    /// the test private key (so v2 pinning and v1 ssl work too), one worker,
    /// `socket_timeout = 5`, `max_process_timeout = 30`, state in the sandbox; peers
    /// `127.0.0.1` and `::1`; the sandbox's `allowed/`; jobs `service:echo`,
    /// `service:sleep`, `service:false`.
    pub fn new(sb: &Sandbox) -> Config {
        let server = [
            ("addr", "127.0.0.1".to_string()),
            ("port", "0".into()),
            ("key_cipher", KEY.into()),
            ("legacy_protocol", "on".into()),
            ("ssl", "off".into()),
            (
                "ssl_private_key",
                agent_private_key_path().display().to_string(),
            ),
            ("state_dir", sb.join("state").display().to_string()),
            ("max_prefork", "1".into()),
            ("socket_timeout", "5".into()),
            ("max_process_timeout", "30".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Config {
            server,
            hosts: vec!["127.0.0.1".into(), "::1".into()],
            paths: vec![sb.allowed().display().to_string()],
            groups: Vec::new(),
            jobs: vec![
                ("service:echo".into(), "/bin/echo %s".into()),
                ("service:sleep".into(), "/bin/sleep %s".into()),
                ("service:false".into(), "/bin/false %s".into()),
            ],
        }
    }

    /// Sets a `[server]` key (replacing a default); `listen` appends `listen[]`.
    pub fn server(mut self, key: &str, value: impl ToString) -> Config {
        let value = value.to_string();
        if key == "listen" {
            self.server.push(("listen[]".into(), value));
        } else if let Some(slot) = self.server.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.server.push((key.into(), value));
        }
        self
    }

    /// Removes a `[server]` key (back to the built-in default).
    pub fn without(mut self, key: &str) -> Config {
        self.server.retain(|(k, _)| k != key);
        self
    }

    /// Replaces `[allow::hosts]`.
    pub fn hosts(mut self, hosts: &[&str]) -> Config {
        self.hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    /// Adds an `[rsync::group::NAME]` section; keys ending in `[]` are list entries.
    pub fn group(mut self, name: &str, entries: &[(&str, &str)]) -> Config {
        self.groups.push((
            name.into(),
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        self
    }

    /// Adds a job.
    pub fn job(mut self, name: &str, template: &str) -> Config {
        self.jobs.push((name.into(), template.into()));
        self
    }

    /// The jobs file's text.
    pub fn jobs_text(&self) -> String {
        let mut out = String::from("[jobs]\n");
        for (name, template) in &self.jobs {
            out.push_str(&format!("{name} = {template}\n"));
        }
        out
    }

    /// The ini's text (its `[jobs] path` is `jobs.ini`, beside it).
    pub fn ini_text(&self) -> String {
        let mut out = String::from("[server]\n");
        for (k, v) in &self.server {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push_str("\n[allow::hosts]\n");
        for h in &self.hosts {
            out.push_str(&format!("host[] = {h}\n"));
        }
        out.push_str("\n[allow::paths]\n");
        for p in &self.paths {
            out.push_str(&format!("path[] = {p}\n"));
        }
        for (name, entries) in &self.groups {
            out.push_str(&format!("\n[rsync::group::{name}]\n"));
            for (k, v) in entries {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out.push_str("\n[jobs]\npath = jobs.ini\n");
        out
    }

    /// Writes `agent.ini` and `jobs.ini` into the sandbox and starts the agent.
    pub fn start(&self, sb: &Sandbox) -> Agent {
        std::fs::write(sb.join("jobs.ini"), self.jobs_text()).expect("write jobs.ini");
        Agent::start(sb.path(), &self.ini_text())
    }
}

// ---------------------------------------------------------------------------------------
// The agent process

/// A running `deploy-agent --foreground`.
pub struct Agent {
    child: Option<Child>,
    /// Every listening address, in the order printed (`addr` first, then `listen[]`).
    pub addrs: Vec<SocketAddr>,
    /// The ini it was started with.
    pub ini: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Writes `ini` to `<dir>/agent.ini`, starts the agent on it and waits (at most
    /// [`START_TIMEOUT`]) for one `listening on` line per listening socket (`addr` plus
    /// each `listen[]` line of the ini).
    pub fn start(dir: &Path, ini: &str) -> Agent {
        let ini_path = dir.join("agent.ini");
        std::fs::write(&ini_path, ini).expect("write agent.ini");
        let expected = 1 + ini
            .lines()
            .filter(|l| l.trim_start().starts_with("listen[]"))
            .count();
        let mut child = Command::new(AGENT_BIN)
            .arg("--foreground")
            .arg("--path")
            .arg(&ini_path)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn deploy-agent");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if let Some(addr) = text.trim().strip_prefix("deploy-agent: listening on ") {
                        if let Ok(addr) = addr.parse() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().expect("log lock").push_str(&text);
                    line.clear();
                }
            });
        }
        let mut agent = Agent {
            child: Some(child),
            addrs: Vec::new(),
            ini: ini_path,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while agent.addrs.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(addr) => agent.addrs.push(addr),
                Err(_) => panic!(
                    "deploy-agent printed {} of {expected} `listening on` lines within {START_TIMEOUT:?}; log:\n{}\nini:\n{ini}",
                    agent.addrs.len(),
                    agent.log()
                ),
            }
        }
        agent
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Everything the agent wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Sends a signal to the master.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal(self.pid(), sig);
    }

    /// The live worker processes (children of the master).
    pub fn workers(&self) -> Vec<i32> {
        children(self.pid())
    }

    /// Waits until exactly `n` workers are alive; returns their pids.
    pub async fn wait_workers(&self, n: usize) -> Vec<i32> {
        eventually(Duration::from_secs(10), &format!("{n} workers"), || {
            let w = self.workers();
            (w.len() == n).then_some(w)
        })
        .await
    }

    /// Waits at most `limit` for the master to exit; reaps it.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while let Ok(None) = child.try_wait() {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let mut err = std::io::stderr();
            let _ = writeln!(
                err,
                "----- deploy-agent log ({}) -----\n{}----- end of log -----",
                self.ini.display(),
                self.log()
            );
        }
    }
}

/// Runs the agent binary with `args` to completion (for `--check`); returns the exit
/// code and stderr+stdout.
pub fn run_agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(AGENT_BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run deploy-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// Clients

/// Which wire a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// v2, pinning the agent's RSA key.
    V2,
    /// The original's plain HTTP-like request.
    V1Plain,
    /// The original's "ssl" envelope.
    V1Ssl,
}

/// An order's outcome as any client sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub code: u16,
    /// Reason phrase (v1 only; empty for v2).
    pub reason: String,
    /// `Content-Type` (v1 only).
    pub content_type: String,
    /// The JSON object body, if any.
    pub json: Option<Map<String, Value>>,
    /// The text body (errors), or the raw body for v1.
    pub text: String,
    /// Streamed events (v2 only).
    pub events: Vec<Event>,
}

impl Reply {
    /// The JSON body; panics with the reply if there is none.
    pub fn body(&self) -> &Map<String, Value> {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("expected a JSON body, got {self:?}"))
    }

    /// A string field of the JSON body; panics if absent or not a string.
    pub fn s(&self, key: &str) -> &str {
        self.body()
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string {key:?} in {self:?}"))
    }

    /// A string-array field of the JSON body.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.body()
            .get(key)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("no array {key:?} in {self:?}"))
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("non-string in {key:?}: {self:?}"))
                    .to_owned()
            })
            .collect()
    }

    /// Asserts the code, with the whole reply in the message.
    pub fn expect_code(&self, code: u16) -> &Reply {
        assert_eq!(self.code, code, "unexpected reply: {self:?}");
        self
    }
}

/// Runs one order over `proto` against `addr` with the right key.
pub async fn call(proto: Proto, addr: SocketAddr, order: &str, options: &str) -> Reply {
    call_with_key(proto, addr, KEY, order, options).await
}

/// Like [`call`] with a chosen key_cipher; v2 errors (refused handshakes) panic.
pub async fn call_with_key(
    proto: Proto,
    addr: SocketAddr,
    key: &str,
    order: &str,
    options: &str,
) -> Reply {
    match proto {
        Proto::V2 => v2(
            addr,
            key,
            Some(&agent_public_key()),
            request(order, options),
        )
        .await
        .unwrap_or_else(|e| panic!("v2 {order} {options:?}: {e}")),
        Proto::V1Plain => v1_plain(addr, order, options, key).await,
        Proto::V1Ssl => v1_ssl(addr, order, options, key).await,
    }
}

/// A v2 request for `order` with `options`.
pub fn request(order: &str, options: &str) -> Request {
    Request {
        order: order.into(),
        options: options.into(),
        ..Request::default()
    }
}

/// Connects and completes a v2 handshake.
pub async fn v2_connect(
    addr: SocketAddr,
    key: &str,
    pinned: Option<&RsaPublicKey>,
) -> Result<SecureConnection<TcpStream>, WireError> {
    let stream = connect(addr).await;
    let params = ClientParams {
        key_cipher: key,
        pinned,
        now: unix_now(),
    };
    tokio::time::timeout(IO_TIMEOUT, handshake::client(stream, params))
        .await
        .unwrap_or(Err(WireError::Timeout))
}

/// Sends one request on an open v2 connection and collects its events and reply.
pub async fn v2_exchange(
    conn: &mut SecureConnection<TcpStream>,
    id: u64,
    request: Request,
) -> Result<Reply, WireError> {
    tokio::time::timeout(IO_TIMEOUT, async {
        conn.send(&Message::Request { id, request }).await?;
        let mut events = Vec::new();
        loop {
            match conn.recv().await? {
                None => return Err(WireError::Closed),
                Some(Message::Event { id: eid, event }) => {
                    assert_eq!(eid, id, "event for another request");
                    events.push(event);
                }
                Some(Message::Reply {
                    id: rid,
                    code,
                    body,
                    text,
                }) => {
                    assert_eq!(rid, id, "reply for another request");
                    return Ok(Reply {
                        code,
                        reason: String::new(),
                        content_type: String::new(),
                        json: body,
                        text: text.unwrap_or_default(),
                        events,
                    });
                }
                Some(other) => panic!("unexpected message from the agent: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or(Err(WireError::Timeout))
}

/// One v2 order on a fresh connection.
pub async fn v2(
    addr: SocketAddr,
    key: &str,
    pinned: Option<&RsaPublicKey>,
    request: Request,
) -> Result<Reply, WireError> {
    let mut conn = v2_connect(addr, key, pinned).await?;
    v2_exchange(&mut conn, 1, request).await
}

/// Connects within [`IO_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Reads until EOF within `limit`; panics if the peer keeps the connection open longer.
/// A reset after some bytes counts as EOF.
pub async fn read_to_eof(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let result = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("read: {e}"),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "the agent did not close the connection within {limit:?} (got {:?} so far)",
        String::from_utf8_lossy(&out)
    );
    out
}

/// Sends raw bytes on a fresh connection and returns everything the agent sends back
/// until it closes (within [`IO_TIMEOUT`]).
pub async fn v1_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr).await;
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(bytes))
        .await
        .expect("write timed out")
        .expect("write");
    read_to_eof(&mut stream, IO_TIMEOUT).await
}

/// Parses a complete plain response, checking `Content-Length` against the body.
pub fn parse_plain(bytes: &[u8]) -> Reply {
    let resp = http::parse_response_bytes(bytes).expect("parse response");
    let code: u16 = resp
        .code
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no status line in {:?}",
                String::from_utf8_lossy(bytes).into_owned()
            )
        });
    let body = resp.body.clone().unwrap_or_default();
    let length: usize = resp
        .header("content-length")
        .expect("Content-Length header")
        .parse()
        .expect("numeric Content-Length");
    assert_eq!(length, body.len(), "Content-Length does not match the body");
    let content_type = resp.header("content-type").unwrap_or_default().to_owned();
    let json = if content_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Some(map),
            other => panic!(
                "application/json body is not a JSON object ({other:?}): {:?}",
                String::from_utf8_lossy(&body)
            ),
        }
    } else {
        None
    };
    Reply {
        code,
        reason: resp.reason.unwrap_or_default(),
        content_type,
        json,
        text: String::from_utf8_lossy(&body).into_owned(),
        events: Vec::new(),
    }
}

/// The form of one order with a fresh `auth_key` for `key`.
pub fn form(options: &str, key: &str) -> Form {
    Form {
        auth_key: auth::make_auth_key(key, unix_now()),
        options: options.into(),
        ..Form::default()
    }
}

/// One v1 plain order (values percent-escaped where needed).
pub async fn v1_plain(addr: SocketAddr, order: &str, options: &str, key: &str) -> Reply {
    let bytes = http::encode_request_escaped(order, &form(options, key));
    parse_plain(&v1_raw(addr, &bytes).await)
}

/// Wraps a complete plain request in the ssl envelope for the agent's key, sends it, and
/// returns the decrypted plain response bytes.
pub async fn v1_ssl_raw(addr: SocketAddr, plain_request: &[u8]) -> Vec<u8> {
    let passphrase = ssl::new_passphrase().expect("passphrase");
    let aes = ssl::wrap_passphrase(&agent_public_key(), &passphrase).expect("wrap");
    let sealed = ssl::seal(&passphrase, plain_request).expect("seal");
    let raw = v1_raw(addr, &ssl::encode_ssl_request(&aes, &sealed)).await;
    let mut reader: &[u8] = &raw;
    let (_, ciphertext) = ssl::read_ssl_response(&mut reader, &Limits::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "not an ssl response ({e}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    ssl::open(&passphrase, &ciphertext).expect("decrypt the ssl response")
}

/// One v1 order in the ssl envelope.
pub async fn v1_ssl(addr: SocketAddr, order: &str, options: &str, key: &str) -> Reply {
    let plain = http::encode_request_escaped(order, &form(options, key));
    let bytes = v1_ssl_raw(addr, &plain).await;
    // In ssl mode the body is everything after the head; Content-Length must agree.
    parse_plain(&bytes)
}
