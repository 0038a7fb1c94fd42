//! [`Lab`]: an emulated network of hosts made of Linux network namespaces, built by a test
//! and torn down when it drops (also while a failing test unwinds), for the fault tests
//! of issue 12 (a black-holed agent, a lossy link, a link cut mid-transfer, a relay peer
//! dying mid-relay).
//!
//! ```text
//! namespace dt<pid>-<n>-hub      bridge br0, one veth end h<i> per host (shaped: the host's download)
//!    │
//!    ├── namespace dt<pid>-<n>-<name>   eth0 = 10.77.0.<i+1>/24 (shaped: the host's upload), lo
//!    ├── …                               nftables table `inet dpl`: black hole, loss
//! ```
//!
//! Nothing is routed out of the lab (no default route, no address in the caller's
//! namespace): every host reaches only the others, over the bridge. Processes run inside a
//! host with `ip netns exec` ([`Lab::command`]); an agent is started through a wrapper
//! named `deploy-agent`, so the usual [`Daemon`] harness reads its `listening on` lines.
//!
//! Faults, per host: [`Lab::shape`] / [`Lab::unshape`] (tc `tbf` on both ends of its link), [`Lab::cut`] /
//! [`Lab::restore`] (its link down / up, at the bridge), [`Lab::black_hole`] (nftables
//! drops every packet in and out of `eth0`), [`Lab::loss`] (nftables drops a share of
//! them at random, `numgen random mod 100 < P`; [`Lab::loss_inbound`] only what the host
//! receives), [`Lab::heal`] (the nftables rules gone), [`Lab::kill_host`] (every process
//! of the host SIGKILLed, the host still on the network). This kernel has no `netem`, so latency is
//! not emulated.
//!
//! Names carry the test process's pid and a counter, so tests run in parallel; a lab also
//! deletes the namespaces left by test processes that died without unwinding (SIGKILL).
//! Needs root (CAP_NET_ADMIN), iproute2 and nftables: [`Lab::new`] returns `None` after
//! printing `SKIPPED: <why>` where namespaces cannot be made, except under CI as root,
//! where that is a failure.

use crate::agent::{Agent, AgentConfig};
use crate::bins;
use crate::daemon::Daemon;
use crate::sandbox::Sandbox;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The prefix of every namespace a lab makes.
const PREFIX: &str = "dt";
/// The network of the lab's hosts (a /24: at most 250 hosts).
const NET: [u8; 3] = [10, 77, 0];
/// Namespaces of dead test processes older than this are deleted by the next lab.
const STALE_AFTER: Duration = Duration::from_secs(120);

static LABS: AtomicUsize = AtomicUsize::new(0);

/// One host of a lab.
#[derive(Debug, Clone)]
struct Host {
    name: String,
    ns: String,
    /// Its veth end in the hub.
    port: String,
    addr: Ipv4Addr,
    /// Whether its nftables table exists.
    table: bool,
}

/// An emulated network; see the module documentation.
#[derive(Debug)]
pub struct Lab {
    id: String,
    hub: String,
    hosts: Vec<Host>,
    ip: PathBuf,
    nft: PathBuf,
    /// Wrappers and rsync daemon configurations.
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

/// Finds a system tool in the usual directories (the tests' `PATH` may lack `/usr/sbin`).
fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs `program args…`; `Err` with its standard error (or why it did not start).
fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} {}: {e}", program.display(), args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {}: {} ({})",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

/// Runs `nft -f -` inside `ns` with `script` as its input.
fn nft_script(ip: &Path, nft: &Path, ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new(ip)
        .args(["netns", "exec", ns])
        .arg(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip netns exec {ns} nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft -f - in {ns}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft in {ns}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns}: {} for\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// SIGKILLs every process inside `ns` (`ip netns pids`).
fn kill_all(ip: &Path, ns: &str) {
    for _round in 0..3 {
        let pids = run(ip, &["netns", "pids", ns]).unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes the namespaces of test processes that are gone (killed without unwinding).
fn sweep_stale(ip: &Path) {
    let Ok(list) = run(ip, &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let old = std::fs::metadata(Path::new("/run/netns").join(name))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old {
            kill_all(ip, name);
            let _ = run(ip, &["netns", "del", name]);
        }
    }
}

impl Lab {
    /// A lab with no hosts yet (its hub and bridge made). `None`, after printing
    /// `SKIPPED: <why>`, where network namespaces cannot be made here (no root, no
    /// iproute2, a container without CAP_NET_ADMIN); but under CI (`CI` set) as root,
    /// that is a test failure.
    pub fn new() -> Option<Lab> {
        match Lab::try_new() {
            Ok(lab) => Some(lab),
            Err(why) => {
                let root = nix::unistd::geteuid().is_root();
                if std::env::var_os("CI").is_some() && root {
                    panic!("CI as root, yet no network namespace could be made: {why}");
                }
                println!("SKIPPED: network namespaces unavailable here: {why}");
                eprintln!("SKIPPED: network namespaces unavailable here: {why}");
                None
            }
        }
    }

    fn try_new() -> Result<Lab, String> {
        let ip = tool("ip").ok_or("no `ip` (iproute2) in /usr/sbin, /sbin or /usr/bin")?;
        let nft = tool("nft").ok_or("no `nft` (nftables) in /usr/sbin, /sbin or /usr/bin")?;
        sweep_stale(&ip);
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let id = format!("{PREFIX}{}-{n}", std::process::id());
        let hub = format!("{id}-hub");
        run(&ip, &["netns", "add", &hub])?;
        let dir = tempfile::Builder::new()
            .prefix("deploy-netns.")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let lab = Lab {
            id,
            hub,
            hosts: Vec::new(),
            ip,
            nft,
            dir,
            children: Vec::new(),
        };
        lab.ip_ok(&["-n", &lab.hub, "link", "set", "lo", "up"])?;
        lab.ip_ok(&["-n", &lab.hub, "link", "add", "br0", "type", "bridge"])?;
        lab.ip_ok(&["-n", &lab.hub, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    fn ip_ok(&self, args: &[&str]) -> Result<String, String> {
        run(&self.ip, args)
    }

    /// Runs `ip args…`, panicking with its error.
    fn ip(&self, args: &[&str]) {
        if let Err(e) = self.ip_ok(args) {
            panic!("lab {}: {e}", self.id);
        }
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab {}: no host {name:?}", self.id))
    }

    /// Adds host `name` (its namespace, its link into the bridge, its address); returns
    /// the address.
    pub fn add(&mut self, name: &str) -> Ipv4Addr {
        let i = self.hosts.len() + 1;
        assert!(i <= 250, "a lab holds at most 250 hosts");
        let ns = format!("{}-{name}", self.id);
        let port = format!("h{i}");
        let addr = Ipv4Addr::new(NET[0], NET[1], NET[2], (i + 1) as u8);
        self.ip(&["netns", "add", &ns]);
        self.hosts.push(Host {
            name: name.to_owned(),
            ns: ns.clone(),
            port: port.clone(),
            addr,
            table: false,
        });
        let hub = self.hub.clone();
        self.ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
        self.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        self.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        addr
    }

    /// Host `name`'s address.
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.host(name).addr
    }

    /// The lab's network, for `[allow::hosts]`.
    pub fn network(&self) -> String {
        format!("{}.{}.{}.0/24", NET[0], NET[1], NET[2])
    }

    /// Host `name`'s namespace.
    pub fn namespace(&self, name: &str) -> &str {
        &self.host(name).ns
    }

    /// Limits host `name`'s link to `rate` (tc's syntax: `8mbit`) each way, with `tbf`.
    pub fn shape(&self, name: &str, rate: &str) {
        let h = self.host(name);
        for (ns, dev) in [
            (h.ns.as_str(), "eth0"),
            (self.hub.as_str(), h.port.as_str()),
        ] {
            self.ip_tc(&[
                "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst",
                "32kb", "latency", "200ms",
            ]);
        }
    }

    /// Lifts the [`Lab::shape`] limit of host `name`'s link.
    pub fn unshape(&self, name: &str) {
        let h = self.host(name);
        for (ns, dev) in [
            (h.ns.as_str(), "eth0"),
            (self.hub.as_str(), h.port.as_str()),
        ] {
            self.ip_tc(&["-n", ns, "qdisc", "del", "dev", dev, "root"]);
        }
    }

    fn ip_tc(&self, args: &[&str]) {
        let tc = tool("tc").unwrap_or_else(|| panic!("no `tc` (iproute2)"));
        if let Err(e) = run(&tc, args) {
            panic!("lab {}: {e}", self.id);
        }
    }

    /// Cuts host `name`'s link (its end in the bridge down): nothing passes either way,
    /// and the host's `eth0` loses its carrier.
    pub fn cut(&self, name: &str) {
        let h = self.host(name);
        self.ip(&["-n", &self.hub, "link", "set", &h.port, "down"]);
    }

    /// Brings host `name`'s link back after [`Lab::cut`].
    pub fn restore(&self, name: &str) {
        let h = self.host(name);
        self.ip(&["-n", &self.hub, "link", "set", &h.port, "up"]);
    }

    /// Appends nftables rules to host `name`'s table (made on first use): an `input`
    /// and an `output` rule body, such as `iifname "eth0" drop`.
    fn nft(&mut self, name: &str, input: Option<&str>, output: Option<&str>) {
        let idx = self
            .hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab {}: no host {name:?}", self.id));
        let mut script = String::new();
        if !self.hosts[idx].table {
            script.push_str(
                "add table inet dpl\n\
                 add chain inet dpl in { type filter hook input priority 0; policy accept; }\n\
                 add chain inet dpl out { type filter hook output priority 0; policy accept; }\n",
            );
        }
        if let Some(rule) = input {
            script.push_str(&format!("add rule inet dpl in {rule}\n"));
        }
        if let Some(rule) = output {
            script.push_str(&format!("add rule inet dpl out {rule}\n"));
        }
        if let Err(e) = nft_script(&self.ip, &self.nft, &self.hosts[idx].ns, &script) {
            panic!("lab {}: {e}", self.id);
        }
        self.hosts[idx].table = true;
    }

    /// Black-holes host `name`: every packet in or out of its `eth0` is dropped, silently
    /// (no reset, no ICMP), as a host that vanished from the network.
    pub fn black_hole(&mut self, name: &str) {
        self.nft(
            name,
            Some("iifname \"eth0\" drop"),
            Some("oifname \"eth0\" drop"),
        );
    }

    /// Drops `percent` % of host `name`'s packets at random, each way (as `netem loss`
    /// on both ends of its link would).
    pub fn loss(&mut self, name: &str, percent: u8) {
        self.nft(
            name,
            Some(&format!(
                "iifname \"eth0\" numgen random mod 100 < {percent} drop"
            )),
            Some(&format!(
                "oifname \"eth0\" numgen random mod 100 < {percent} drop"
            )),
        );
    }

    /// Drops `percent` % of the packets host `name` receives (its download: the data of
    /// a pull), at random; what it sends (acknowledgements) passes.
    pub fn loss_inbound(&mut self, name: &str, percent: u8) {
        self.nft(
            name,
            Some(&format!(
                "iifname \"eth0\" numgen random mod 100 < {percent} drop"
            )),
            None,
        );
    }

    /// Removes host `name`'s nftables rules (black hole, loss).
    pub fn heal(&mut self, name: &str) {
        let idx = self
            .hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab {}: no host {name:?}", self.id));
        if self.hosts[idx].table {
            if let Err(e) = nft_script(
                &self.ip,
                &self.nft,
                &self.hosts[idx].ns,
                "delete table inet dpl\n",
            ) {
                panic!("lab {}: {e}", self.id);
            }
            self.hosts[idx].table = false;
        }
    }

    /// SIGKILLs every process of host `name` (its agent, the agent's children): the host
    /// stays on the network, so its peers' connections are reset.
    pub fn kill_host(&self, name: &str) {
        kill_all(&self.ip, &self.host(name).ns);
    }

    /// The processes inside host `name`: pid and command name (`/proc/PID/comm`).
    pub fn processes(&self, name: &str) -> Vec<(i32, String)> {
        let pids = run(&self.ip, &["netns", "pids", &self.host(name).ns]).unwrap_or_default();
        pids.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter_map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                Some((pid, comm.trim().to_owned()))
            })
            .collect()
    }

    /// A command running `program` inside host `name` (`ip netns exec`).
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.host(name).ns])
            .arg(program);
        cmd
    }

    /// `deploy-client args…` run inside host `name`, with the clean environment of
    /// [`crate::deploy_client`] (`DEPLOY_KEY_CIPHER` = `key_cipher`), bounded by `limit`.
    pub fn client(
        &self,
        name: &str,
        args: &[&str],
        key_cipher: &str,
        limit: Duration,
    ) -> crate::Output {
        crate::run_command(
            self.command(name, bins::client())
                .args(args)
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("DEPLOY_KEY_CIPHER", key_cipher)
                .env("NO_COLOR", "1"),
            limit,
        )
    }

    /// Starts `deploy-agent --foreground` inside host `name` on `config` (written into
    /// `sb`, as [`AgentConfig::start`] does), through a wrapper named `deploy-agent` that
    /// enters the namespace and execs the agent (so the pid is the agent's).
    pub fn agent(&self, name: &str, config: &AgentConfig, sb: &Sandbox) -> Agent {
        std::fs::write(sb.join("jobs.ini"), config.jobs_text()).expect("write jobs.ini");
        let ini = sb.join("agent.ini");
        std::fs::write(&ini, config.ini_text()).expect("write agent.ini");
        let bin_dir = self.dir.path().join(format!("bin-{name}"));
        std::fs::create_dir_all(&bin_dir).expect("wrapper dir");
        let wrapper = bin_dir.join("deploy-agent");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {} netns exec {} {} \"$@\"\n",
                self.ip.display(),
                self.host(name).ns,
                bins::agent().display()
            ),
        )
        .expect("write the agent wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the agent wrapper");
        Daemon::start(&wrapper, &ini, &[], 1)
    }

    /// Starts `rsync --daemon` inside host `name` on port 873 with read-only module
    /// `DEST` over `tree` (killed when the lab drops); returns `rsync://ADDR/DEST/`.
    pub fn rsync_daemon(&mut self, name: &str, tree: &Path) -> String {
        let addr = self.addr(name);
        let dir = self.dir.path().join(format!("rsyncd-{name}"));
        std::fs::create_dir_all(&dir).expect("rsyncd dir");
        let log = dir.join("rsyncd.log");
        let conf = dir.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\npid file = {d}/rsyncd.pid\nlog file = {log}\nuid = {uid}\ngid = {gid}\n\
                 munge symlinks = no\n[DEST]\npath = {tree}\nread only = yes\n",
                d = dir.display(),
                log = log.display(),
                tree = tree.display(),
                uid = nix::unistd::getuid(),
                gid = nix::unistd::getgid()
            ),
        )
        .expect("write rsyncd.conf");
        let child = self
            .command(name, "rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--address={addr}"))
            .arg("--port=873")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rsync --daemon");
        self.children.push(child);
        // rsyncd logs `… starting, listening on port 873` once bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on port") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rsync --daemon in {name} did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        format!("rsync://{addr}/DEST/")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.ns.clone()).collect();
        names.push(self.hub.clone());
        for ns in &names {
            kill_all(&self.ip, ns);
        }
        for ns in &names {
            if let Err(e) = run(&self.ip, &["netns", "del", ns]) {
                eprintln!("lab {}: {e}", self.id);
            }
        }
    }
}
