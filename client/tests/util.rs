//! Helpers for the integration tests: running the real `deploy-client` binary with a
//! clean environment, and small in-process fake agents (v2, v1 plain, v1 ssl, silent,
//! closed port) for it to talk to.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deploy_common::crypto::RsaPrivateKey;
use deploy_common::legacy::auth::verify_auth_key;
use deploy_common::legacy::http::{encode_response, read_request, HttpRequest};
use deploy_common::legacy::ssl::{encode_ssl_response, open_request, read_ssl_request, seal};
use deploy_common::legacy::Limits;
use deploy_common::order::{Reply, Request};
use deploy_common::wire::handshake::{self, ServerParams};
use deploy_common::wire::message::{Event, Message};
use serde_json::{Map, Value};
use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The legacy test vectors, with the agent's key pair.
pub const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/spec/legacy-vectors"
);

/// What the binary did.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `deploy-client` with `args` (and `stdin`), in an environment without the
/// variables it reads, under a 10 s limit.
pub async fn client(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deploy-client"));
    cmd.args(args)
        .env_remove("DEPLOY_KEY_CIPHER")
        .env_remove("DEPLOY_API_KEY")
        .env_remove("RUST_LOG")
        // No defaults file (tests that want one set it).
        .env("DEPLOY_CLIENT_CONFIG", "")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn deploy-client");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("deploy-client did not finish in 10 s")
        .expect("wait");
    Output {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `deploy-client` with `args`, in an environment without the variables it reads.
pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deploy-client"));
    cmd.args(args)
        .env_remove("DEPLOY_KEY_CIPHER")
        .env_remove("DEPLOY_API_KEY")
        .env_remove("RUST_LOG")
        .env("DEPLOY_CLIENT_CONFIG", "");
    cmd
}

/// A `deploy-client` that keeps running: its stderr is read line by line.
pub struct Running {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `deploy-client` with `args`, without the variables it reads.
    pub fn spawn(args: &[&str]) -> Running {
        Running::start(command(args))
    }

    /// Starts `cmd` (see [`command`]).
    pub fn start(mut cmd: tokio::process::Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn deploy-client");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        let all = Arc::new(Mutex::new(String::new()));
        let copy = Arc::clone(&all);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                copy.lock().expect("mutex").push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            stderr: all,
        }
    }

    /// Waits (at most 10 s) for a stderr line containing `needle`.
    pub async fn wait_for(&mut self, needle: &str) {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "no {needle:?} on stderr; got:\n{}",
            self.stderr.lock().expect("mutex")
        );
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("kill");
    }

    /// Waits (at most `limit`) for the exit; returns what it printed.
    pub async fn finish(mut self, limit: Duration) -> Output {
        let mut stdout = self.child.stdout.take().expect("stdout");
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "deploy-client still runs after {limit:?}; stderr:\n{}",
                    self.stderr.lock().expect("mutex")
                )
            })
            .expect("wait");
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.expect("stdout");
        // Let the reader task take the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stderr = self.stderr.lock().expect("mutex").clone();
        Output {
            status: status.code().unwrap_or(-1),
            stdout: out,
            stderr,
        }
    }
}

/// A JSON object from a `json!` literal.
pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

/// What a fake agent answers: events, a delay, the reply.
pub type Handler = Arc<dyn Fn(&Request) -> (Vec<Event>, Duration, Reply) + Send + Sync>;

/// A handler that always answers `reply`.
pub fn answer(reply: Reply) -> Handler {
    Arc::new(move |_| (Vec::new(), Duration::ZERO, reply.clone()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn listen(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// Starts a v2 agent on `bind` (e.g. `127.0.0.1:0`).
pub async fn v2_agent_on(bind: &str, key_cipher: &str, handler: Handler) -> SocketAddr {
    v2_agent_killable(bind, key_cipher, handler).await.0
}

/// Starts a v2 agent on `bind`; aborting the returned task closes its listening socket
/// (new connections are refused, as if the agent had died).
pub async fn v2_agent_killable(
    bind: &str,
    key_cipher: &str,
    handler: Handler,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (listener, addr) = listen(bind).await;
    let key_cipher = key_cipher.to_owned();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (key_cipher, handler) = (key_cipher.clone(), handler.clone());
            tokio::spawn(async move {
                let params = ServerParams {
                    key_cipher: &key_cipher,
                    private_key: None,
                    now: unix_now(),
                };
                let Ok(mut conn) = handshake::server(stream, params).await else {
                    return;
                };
                let Ok(Some(Message::Request { id, request })) = conn.recv().await else {
                    return;
                };
                let (events, delay, reply) = handler(&request);
                for event in events {
                    let _ = conn.send(&Message::Event { id, event }).await;
                }
                tokio::time::sleep(delay).await;
                let _ = conn.send(&Message::reply(id, &reply)).await;
            });
        }
    });
    (addr, task)
}

/// Starts a v2 agent on 127.0.0.1.
pub async fn v2_agent(key_cipher: &str, handler: Handler) -> SocketAddr {
    v2_agent_on("127.0.0.1:0", key_cipher, handler).await
}

fn v1_order(request: &HttpRequest, key_cipher: &str) -> Result<Request, Reply> {
    if !matches!(request.method.as_str(), "GET" | "POST") {
        return Err(Reply::empty(405));
    }
    let form = request.form();
    if !verify_auth_key(key_cipher, &form.auth_key, unix_now()) {
        return Err(Reply::empty(401));
    }
    match request.path_segments().as_slice() {
        [agent, order] if agent == "agent" => Ok(Request {
            order: order.clone(),
            options: form.options,
            args: form.args,
            api_key: form.api_key,
            ..Request::default()
        }),
        _ => Err(Reply::empty(404)),
    }
}

/// Starts a v1 agent: plain, or ssl with the vectors' private key.
pub async fn v1_agent(key_cipher: &str, ssl: bool, handler: Handler) -> SocketAddr {
    let (listener, addr) = listen("127.0.0.1:0").await;
    let key_cipher = key_cipher.to_owned();
    let private = ssl.then(|| {
        Arc::new(
            RsaPrivateKey::load(format!("{VECTORS}/agent_private.pem").as_ref())
                .expect("agent key"),
        )
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (key_cipher, handler, private) =
                (key_cipher.clone(), handler.clone(), private.clone());
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let limits = Limits::default();
                let reply_to = |request: &HttpRequest| match v1_order(request, &key_cipher) {
                    Ok(order) => handler(&order).2,
                    Err(reply) => reply,
                };
                let bytes = match &private {
                    None => {
                        let Ok(Some(request)) = read_request(&mut stream, &limits).await else {
                            return;
                        };
                        encode_response(&reply_to(&request))
                    }
                    Some(key) => {
                        let Ok(Some((head, ct))) = read_ssl_request(&mut stream, &limits).await
                        else {
                            return;
                        };
                        let Ok((pass, request)) = open_request(key, &head, &ct) else {
                            return;
                        };
                        let Ok(sealed) = seal(&pass, &encode_response(&reply_to(&request))) else {
                            return;
                        };
                        encode_ssl_response(&sealed)
                    }
                };
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A listener that accepts and never answers.
pub async fn silent() -> SocketAddr {
    let (listener, addr) = listen("127.0.0.1:0").await;
    tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// An address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let (listener, addr) = listen("127.0.0.1:0").await;
    drop(listener);
    addr
}
