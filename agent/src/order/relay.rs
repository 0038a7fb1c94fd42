//! `rsync` in relay mode (`args` = `relay pull …` / `relay stop …`, see
//! [`deploy_common::rsync::relay`]): pull the group's tree from its source or from a
//! peer, verify it against the reference manifest, and serve it to the fleet for this
//! order only.
//!
//! The pull runs in the foreground (the scheduler waits for it to plan the next wave);
//! its reply carries rsync's exit code, the tree's `manifest`, and, when the agent
//! serves, the `serve` URL peers pull from. Serving is a listener on an ephemeral port of
//! the address the scheduler reached us at, which hands each connection from an allowed
//! peer to `rsync --daemon` in inetd mode with a one-off configuration under
//! `<state_dir>/relay/<token>/` (read-only module, `auth users` with the order's token).
//! `stop` removes that directory; the listener closes at its next check (once a second)
//! or after the order's `ttl`, whichever comes first.

use super::Agent;
use deploy_common::order::{flag, object, Reply, Request};
use deploy_common::rsync::relay::{self, Pull, RelayArgs};
use deploy_common::rsync::{self as rs};
use serde_json::Value;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Seconds a pull from a peer waits for its daemon to answer (rsync `--contimeout`).
const PEER_CONNECT_TIMEOUT: u32 = 10;
/// Seconds without data after which a pull from a peer gives up (rsync `--timeout`).
const PEER_IO_TIMEOUT: u32 = 30;

/// How much of a failed pull's output the reply carries.
const OUTPUT_TAIL: usize = 4096;

pub(super) async fn run(agent: &Agent, request: &Request) -> Reply {
    let args = match relay::parse(&request.args) {
        Ok(a) => a,
        Err(e) => return Reply::error(400, e.to_string()),
    };
    let (spec, checksum) = match agent.resolve(&request.options) {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    let base = agent.config.server.state_dir.join("relay");
    match args {
        RelayArgs::Stop { token } => {
            let dir = base.join(&token);
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => tracing::info!(dir = %dir.display(), "relay serving stopped"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Reply::error(500, format!("cannot remove {}: {e}", dir.display()))
                }
            }
            Reply::ok(object([("return", flag(true))]))
        }
        RelayArgs::Pull(pull) => pulled(spec, checksum, pull, &base).await,
    }
}

async fn pulled(mut spec: rs::RsyncSpec, checksum: String, pull: Pull, base: &Path) -> Reply {
    let from = pull.from.clone().unwrap_or_else(|| spec.dest.clone());
    if let Some(url) = &pull.from {
        spec.dest = url.clone();
    }
    let mut argv = rs::argv(&spec, false);
    if let (Some(_), Some(bind)) = (&pull.from, pull.bind) {
        // From our own address, which is the one the serving peer allows.
        argv.insert(0, format!("--address={bind}").into());
    }
    if pull.from.is_some() {
        // A black-holed or stalled peer fails the pull (and is routed around) instead
        // of holding the host until the scheduler's deadline.
        argv.insert(0, format!("--contimeout={PEER_CONNECT_TIMEOUT}").into());
        argv.insert(0, format!("--timeout={PEER_IO_TIMEOUT}").into());
    }
    let mut cmd = tokio::process::Command::new(&spec.rsync);
    cmd.args(argv)
        .env("LC_ALL", rs::LOCALE)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if pull.from.is_some() {
        cmd.env("RSYNC_PASSWORD", &pull.token);
    }
    let started = std::time::Instant::now();
    let output = match cmd.output().await {
        Ok(o) => o,
        Err(e) => return Reply::error(500, format!("cannot run {}: {e}", spec.rsync.display())),
    };
    let code = output.status.code().unwrap_or(-1);
    if code != 0 {
        let mut text = output.stdout;
        text.extend_from_slice(&output.stderr);
        let tail = text.len().saturating_sub(OUTPUT_TAIL);
        let content = String::from_utf8_lossy(text.get(tail..).unwrap_or_default()).into_owned();
        tracing::warn!(from = %from, code, "relay pull failed");
        return Reply::ok(object([
            ("return", flag(false)),
            ("checksum", Value::String(checksum)),
            ("exitCode", Value::String(code.to_string())),
            (
                "exitMessage",
                Value::String(rs::exit_meaning(code).to_owned()),
            ),
            ("content", Value::String(content)),
        ]));
    }
    let root = PathBuf::from(&spec.src);
    let manifest = match tokio::task::spawn_blocking(move || relay::manifest(&root)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Reply::error(500, e.to_string()),
        Err(e) => return Reply::error(500, format!("manifest: {e}")),
    };
    let mut body = object([
        ("return", flag(true)),
        ("checksum", Value::String(checksum)),
        ("exitCode", Value::String("0".into())),
        ("exitMessage", Value::String(rs::exit_meaning(0).to_owned())),
        ("manifest", Value::String(manifest.digest.clone())),
        ("files", Value::String(manifest.files.to_string())),
        ("bytes", Value::String(manifest.bytes.to_string())),
        (
            "seconds",
            Value::String(format!("{:.3}", started.elapsed().as_secs_f64())),
        ),
    ]);
    if let Some(expect) = &pull.expect {
        if *expect != manifest.digest {
            tracing::warn!(from = %from, expect = %expect, got = %manifest.digest, "relay pull does not match the reference manifest");
            body.insert("return".into(), flag(false));
            body.insert(
                "error".into(),
                Value::String(format!(
                    "manifest {} does not match the reference {expect}",
                    manifest.digest
                )),
            );
            return Reply::ok(body);
        }
    }
    if let (true, Some(bind)) = (pull.serve, pull.bind) {
        match serve(&spec, &pull, bind, base).await {
            Ok(url) => {
                body.insert("serve".into(), Value::String(url));
            }
            // The tree is here and verified: the pull succeeded, it just serves no one.
            Err(e) => {
                tracing::warn!(bind = %bind, error = %e, "relay: cannot serve");
                body.insert("serveError".into(), Value::String(e));
            }
        }
    }
    tracing::info!(from = %from, manifest = %manifest.digest, bytes = manifest.bytes, "relay pull finished");
    Reply::ok(body)
}

/// Starts serving `spec.src` on an ephemeral port of `bind`; returns the peers' URL.
async fn serve(
    spec: &rs::RsyncSpec,
    pull: &Pull,
    bind: IpAddr,
    base: &Path,
) -> Result<String, String> {
    let dir = base.join(&pull.token);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    let secrets = dir.join("secrets");
    relay::write_secrets(&secrets, &pull.token)
        .map_err(|e| format!("write {}: {e}", secrets.display()))?;
    let conf = dir.join("rsyncd.conf");
    let text = relay::daemon_config(
        Path::new(&spec.src),
        &secrets,
        &dir.join("rsyncd.log"),
        &pull.peers,
    );
    std::fs::write(&conf, text).map_err(|e| format!("write {}: {e}", conf.display()))?;
    let listener = tokio::net::TcpListener::bind((bind, 0))
        .await
        .map_err(|e| format!("bind {bind}: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?
        .port();
    let ttl = Duration::from_secs(pull.ttl);
    let rsync = spec.rsync.clone();
    let peers = pull.peers.clone();
    tracing::info!(bind = %bind, port, dir = %dir.display(), "relay serving");
    tokio::spawn(accept_loop(listener, rsync, conf, dir, peers, ttl));
    Ok(relay::peer_url(bind, port))
}

use std::os::unix::fs::DirBuilderExt as _;

/// How often a serving listener checks that its order has not been stopped.
const STOP_CHECK: Duration = Duration::from_secs(1);

async fn accept_loop(
    listener: tokio::net::TcpListener,
    rsync: PathBuf,
    conf: PathBuf,
    dir: PathBuf,
    peers: Vec<IpAddr>,
    ttl: Duration,
) {
    let deadline = tokio::time::sleep(ttl);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(STOP_CHECK);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            _ = tick.tick() => {
                if !conf.exists() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let Ok((socket, peer)) = accepted else { continue };
                if !conf.exists() {
                    break;
                }
                if !peers.contains(&peer.ip()) {
                    tracing::warn!(peer = %peer, "relay: connection from outside the fleet refused");
                    continue;
                }
                if let Err(e) = hand_over(socket, &rsync, &conf) {
                    tracing::warn!(peer = %peer, error = %e, "relay: cannot start rsync --daemon");
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    tracing::info!(dir = %dir.display(), "relay serving ended");
}

/// Runs `rsync --daemon` in inetd mode on `socket`, reaped in the background.
fn hand_over(socket: tokio::net::TcpStream, rsync: &Path, conf: &Path) -> std::io::Result<()> {
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    let fd: OwnedFd = socket.into();
    let out = fd.try_clone()?;
    let mut child = tokio::process::Command::new(rsync)
        .arg("--daemon")
        .arg(format!("--config={}", conf.display()))
        .stdin(Stdio::from(fd))
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}
