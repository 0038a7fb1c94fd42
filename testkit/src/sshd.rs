//! Real `sshd` instances on loopback for the tests of `ssh://` hosts: ten on
//! 127.0.0.11–20 (ephemeral ports) plus a jump host on 127.0.0.21, each with its own
//! generated host key, all accepting one generated user key for root.
//!
//! The instances are started once per test process, by a thread that lives as long as
//! the process, with `PR_SET_PDEATHSIG`, so they end with it. Every test gets its own
//! HOME ([`home`]: key, known_hosts), so the real `~/.ssh` is never read. They need root
//! (sshd's privilege separation, `PermitRootLogin`) and `/usr/sbin/sshd`; without them
//! [`cluster`] returns `None` and the caller skips its test with a message.
//!
//! Sessions run with `HOME` set to an empty directory, so that bash (which sources
//! `~/.bashrc` for sshd's commands on Debian) does not run the machine's root `.bashrc`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

/// The sshd binary.
pub const SSHD: &str = "/usr/sbin/sshd";
/// How many target instances there are (the jump host is one more).
pub const HOSTS: usize = 10;
/// The extra instance used as a jump host (it logs at debug level, which sshd also
/// sends to its clients' stderr, so it is kept out of the ten).
pub const JUMP: usize = HOSTS;

/// The sshd instances.
pub struct Cluster {
    /// The directory of keys, configurations and logs.
    pub dir: PathBuf,
    /// `(address, port, host public key line)` per instance.
    pub hosts: Vec<(String, u16, String)>,
}

impl Cluster {
    /// `ssh://ip:port` of instance `i`.
    pub fn spec(&self, i: usize) -> String {
        let (ip, port, _) = &self.hosts[i];
        format!("ssh://{ip}:{port}")
    }

    /// The ten hosts, comma separated.
    pub fn all(&self) -> String {
        (0..HOSTS)
            .map(|i| self.spec(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The user key every instance accepts.
    pub fn user_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// known_hosts lines for every instance.
    pub fn known_hosts(&self) -> String {
        self.hosts
            .iter()
            .map(|(ip, port, key)| format!("[{ip}]:{port} {key}\n"))
            .collect()
    }
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

/// Generates an ed25519 key pair without a passphrase at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
}

/// Removes the directories of earlier test runs whose process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("deploy-ssh-tests-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Starts one sshd on `ip`, on a free port; `None` if it could not bind (a race for the
/// port), so that the caller tries another.
fn start_sshd(dir: &Path, i: usize, ip: &str) -> Option<u16> {
    let port = TcpListener::bind((ip, 0)).ok()?.local_addr().ok()?.port();
    let config = dir.join(format!("sshd_config{i}"));
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress {ip}\nHostKey {d}/host{i}\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PidFile {d}/sshd{i}.pid\nMaxStartups 100\nAllowTcpForwarding yes\n\
             SetEnv HOME={d}/remote-home\n{debug}",
            d = dir.display(),
            // The jump host of the ProxyJump test logs the channels it opens.
            debug = if i == JUMP { "LogLevel DEBUG1\n" } else { "" },
        ),
    )
    .ok()?;
    let mut cmd = Command::new(SSHD);
    cmd.args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only an async-signal-safe prctl between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().ok()?;
    let stderr = child.stderr.take()?;
    let (tx, rx) = mpsc::channel();
    let log = dir.join(format!("sshd{i}.log"));
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(log).ok();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Server listening on") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(true);
                }
            }
            if let Some(log) = &mut log {
                use std::io::Write as _;
                let _ = writeln!(log, "{line}");
            }
        }
        if let Some(tx) = tx.take() {
            let _ = tx.send(false);
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(true) => {
            std::mem::forget(child);
            Some(port)
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

fn start_cluster() -> Option<Cluster> {
    if !Path::new(SSHD).exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("ssh tests skipped: they need root and {SSHD}");
        return None;
    }
    remove_stale();
    let dir = std::env::temp_dir().join(format!("deploy-ssh-tests-{}", std::process::id()));
    // The sessions' HOME: empty, so that bash (which sources ~/.bashrc for sshd's
    // commands on Debian) does not run the machine's root .bashrc.
    std::fs::create_dir_all(dir.join("remote-home")).expect("temp dir");
    let _ = std::fs::create_dir_all("/run/sshd");
    keygen(&dir.join("id_ed25519"));
    std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys")).expect("copy");
    let (tx, rx) = mpsc::channel();
    let spawn_dir = dir.clone();
    // sshd gets PR_SET_PDEATHSIG, which fires when the thread that forked it ends: so
    // fork from a thread that never ends.
    std::thread::spawn(move || {
        let mut hosts = Vec::new();
        for i in 0..=HOSTS {
            keygen(&spawn_dir.join(format!("host{i}")));
            let key =
                std::fs::read_to_string(spawn_dir.join(format!("host{i}.pub"))).expect("host key");
            let key = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            let ip = format!("127.0.0.{}", 11 + i);
            let port = (0..5).find_map(|_| start_sshd(&spawn_dir, i, &ip));
            let Some(port) = port else {
                let _ = tx.send(None);
                return;
            };
            hosts.push((ip, port, key));
        }
        let _ = tx.send(Some(hosts));
        loop {
            std::thread::park();
        }
    });
    let hosts = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .expect("sshd instances did not start; see their logs in the temp dir");
    Some(Cluster { dir, hosts })
}

/// The cluster, or `None` (test skipped).
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER.get_or_init(start_cluster).as_ref()
}

/// A HOME for one test: the user key as `~/.ssh/id_ed25519`, and known_hosts with
/// every instance unless `known` is false.
pub fn home(cluster: &Cluster, known: bool) -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("home");
    let ssh = home.path().join(".ssh");
    std::fs::create_dir_all(&ssh).expect("mkdir");
    std::fs::copy(cluster.user_key(), ssh.join("id_ed25519")).expect("key");
    if known {
        std::fs::write(ssh.join("known_hosts"), cluster.known_hosts()).expect("known_hosts");
    }
    home
}
