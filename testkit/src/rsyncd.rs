//! [`RsyncDaemon`]: `rsync --daemon --no-detach` on a free 127.0.0.1 port with read-only
//! modules; killed and reaped on drop. [`RsyncSource`]: the transfer tests' source tree
//! ([`source_tree`](crate::source_tree)) served by one, as module `DEST`.

use crate::net::free_port;
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// `rsync --daemon` serving read-only modules on 127.0.0.1.
pub struct RsyncDaemon {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Holds the config and log until the daemon is gone.
    _dir: TempDir,
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
                    return RsyncDaemon {
                        child,
                        port,
                        _dir: dir,
                    };
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

/// A source for transfer tests: [`source_tree`](crate::source_tree) (with a blob) in a
/// sandbox of its own, served by an [`RsyncDaemon`] as module `DEST`.
pub struct RsyncSource {
    /// The tree served.
    pub path: PathBuf,
    /// The daemon serving it (dropped before the tree).
    pub daemon: RsyncDaemon,
    _sb: crate::Sandbox,
}

impl RsyncSource {
    /// The tree with `blob` bytes at `blob.bin` (none if 0), and its daemon.
    pub fn start(blob: usize) -> RsyncSource {
        let sb = crate::Sandbox::new();
        let path = crate::source_tree(&sb, blob);
        let daemon = RsyncDaemon::start(&path);
        RsyncSource {
            path,
            daemon,
            _sb: sb,
        }
    }

    /// `rsync://127.0.0.1:PORT/DEST/`: the tree's contents.
    pub fn url(&self) -> String {
        self.daemon.url("DEST/")
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
