//! [`JetStreamCluster`]: three real `nats-server -js` processes clustered on 127.0.0.1
//! ephemeral ports, each with its own temporary store directory; killed and reaped on
//! drop. A server can be killed (SIGKILL) and started again on the same ports and store.
//!
//! ```text
//! server i: -a 127.0.0.1 -p CLIENT_i -m MONITOR_i -js -sd <tmp>/s<i> -n s<i>
//!           --cluster_name deploy-test --cluster nats://127.0.0.1:ROUTE_i
//!           --routes nats://127.0.0.1:ROUTE_j,… (the other two)
//! ready   : GET /healthz on every live server's monitor port answers 200
//! ```

use crate::net::free_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// One server's ports and process.
struct Server {
    client: u16,
    route: u16,
    monitor: u16,
    child: Option<Child>,
}

/// A 3-server JetStream cluster on loopback (see the module documentation).
pub struct JetStreamCluster {
    servers: Vec<Server>,
    dir: TempDir,
}

/// Where `nats-server` is (Debian installs it in /usr/sbin).
fn nats_server() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = PathBuf::from(dir).join("nats-server");
        if path.exists() {
            return path;
        }
    }
    PathBuf::from("nats-server")
}

impl JetStreamCluster {
    /// Starts three servers and waits until JetStream is ready on each.
    pub fn start() -> JetStreamCluster {
        let dir = tempfile::Builder::new()
            .prefix("deploy-nats.")
            .tempdir()
            .expect("tempdir");
        let servers = (0..3)
            .map(|_| Server {
                client: free_port(),
                route: free_port(),
                monitor: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = JetStreamCluster { servers, dir };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster.wait_ready();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| format!("nats://127.0.0.1:{}", s.route))
            .collect();
        let store = self.dir.path().join(format!("s{i}"));
        let log = self.dir.path().join(format!("s{i}.log"));
        let server = &mut self.servers[i];
        let child = Command::new(nats_server())
            .args(["-a", "127.0.0.1", "-js", "--cluster_name", "deploy-test"])
            .args(["-p", &server.client.to_string()])
            .args(["-m", &server.monitor.to_string()])
            .args(["-n", &format!("s{i}")])
            .arg("-sd")
            .arg(&store)
            .args(["--cluster", &format!("nats://127.0.0.1:{}", server.route)])
            .args(["--routes", &routes.join(",")])
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server (apt-get install nats-server)");
        server.child = Some(child);
    }

    /// Waits until every live server's `/healthz` answers 200 (JetStream current).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for server in self.servers.iter().filter(|s| s.child.is_some()) {
            while !healthy(server.monitor) {
                assert!(
                    Instant::now() < deadline,
                    "nats-server on {} not ready; logs in {}",
                    server.client,
                    self.dir.path().display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `nats://127.0.0.1:PORT` of every server, for a client's server list.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client))
            .collect()
    }

    /// The client port of server `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.servers[i].client
    }

    /// Kills server `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// The servers' logs, for a failing test.
    pub fn logs(&self) -> String {
        (0..self.servers.len())
            .map(|i| {
                let path = self.dir.path().join(format!("s{i}.log"));
                format!(
                    "--- s{i}\n{}",
                    std::fs::read_to_string(path).unwrap_or_default()
                )
            })
            .collect()
    }
}

/// Whether `GET /healthz` on 127.0.0.1:`port` answers 200.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
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

impl Drop for JetStreamCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}
