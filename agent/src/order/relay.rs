//! `rsync` in relay mode (`args` = `relay pull …` / `relay chain …` / `relay stop …`,
//! see [`deploy_common::rsync::relay`]): the first host pulls the group's tree from its
//! source and serves it as a chunked stream; chain hosts pull that stream from a peer,
//! verify every chunk, and serve it on, for this order only. `stop` (or the order's
//! `ttl`) ends the serving.
//!
//! The store-and-forward mode of the first version (a peer's tree served by
//! `rsync --daemon` per connection, `relay pull from=…` or `serve` without `stream`) is
//! refused with 400: the chain stream replaced it, and its daemons outlived the order
//! and showed the token on their command lines (review findings 4 and 6).
//!
//! # Pipelined relay (`stream=1`, `chain`)
//!
//! ```text
//! first host (pull stream=1): rsync ─► tar of the tree ─► spool + ChunkList ─► serve
//! chain host:  bind, event "relay serving ADDR" ─► connect to from[0] (our own address,
//!   token proof) ─► list (digest checked) ─► per chunk: SHA-256 checked ─► spool
//!   (children read it as it grows) + extractor (deploy_extract, confined) ─► manifest
//!   checked against `expect` ─► reply (from, pulled, refused, resumed)
//! ```
//!
//! A peer that fails (refused, closed, silent for [`STALL`], or a chunk that does not
//! match the list) is left for the next address in `from`, resuming at the first chunk
//! not yet verified; one that sent a bad chunk is never asked again. Serving answers only
//! addresses in `peers` that prove the token ([`rs::stream::accept`]), reads the spool
//! only up to what was verified, and lasts until `stop` or the `ttl`.

use super::Agent;
use deploy_common::order::{flag, object, Reply, Request};
use deploy_common::rsync::relay::{self, Chain, Pull, RelayArgs};
use deploy_common::rsync::stream::{self as rstream, ChunkList, Chunker};
use deploy_common::rsync::{self as rs};
use deploy_common::server::conn::Events;
use deploy_common::upload::{self, pieces::Piece};
use deploy_common::wire::message::{Event, Stream};
use serde_json::Value;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

/// How much of a failed pull's output the reply carries.
const OUTPUT_TAIL: usize = 4096;

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
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
        RelayArgs::Chain(chain) => {
            let limit = agent.rsync_timeout();
            chained(spec, checksum, chain, &base, events, limit).await
        }
    }
}

async fn pulled(spec: rs::RsyncSpec, checksum: String, pull: Pull, base: &Path) -> Reply {
    // The store-and-forward relay (a peer's tree served by `rsync --daemon`, pulled
    // from it with the token as password) is gone: the chain stream replaced it, and
    // its per-connection daemons outlived the order and showed the token on their
    // command lines. Only pulls from the group's own source are served.
    if pull.from.is_some() || (pull.serve && !pull.stream) {
        return Reply::error(
            400,
            "relay: serving or pulling a tree through rsync --daemon is no longer supported \
             (the chain stream replaced it: update the caller)",
        );
    }
    let from = spec.dest.clone();
    let argv = rs::argv(&spec, false);
    let mut cmd = tokio::process::Command::new(&spec.rsync);
    cmd.args(argv)
        .env("LC_ALL", rs::LOCALE)
        .stdin(Stdio::null())
        .kill_on_drop(true);
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
    if let (true, true, Some(bind)) = (pull.stream, pull.serve, pull.bind) {
        match spool_tree(&spec, &pull, bind, base).await {
            Ok((addr, list)) => {
                body.insert("stream".into(), Value::String(addr.to_string()));
                body.insert("list".into(), Value::String(list.digest()));
                body.insert("chunks".into(), Value::String(list.count().to_string()));
                body.insert("streamBytes".into(), Value::String(list.size.to_string()));
            }
            Err(e) => {
                tracing::warn!(bind = %bind, error = %e, "relay: cannot serve the stream");
                body.insert("return".into(), flag(false));
                body.insert("error".into(), Value::String(e));
                return Reply::ok(body);
            }
        }
    }
    tracing::info!(from = %from, manifest = %manifest.digest, bytes = manifest.bytes, "relay pull finished");
    Reply::ok(body)
}

/// Seconds without a byte from a peer before a chain host leaves it for the next one.
const STALL: Duration = Duration::from_secs(10);
/// How long connecting and the handshake with a peer may take.
const CONNECT: Duration = Duration::from_secs(5);
/// How many times a chain host goes through its list of peers before it gives up.
const ROUNDS: u32 = 3;
/// Chunks queued for the extractor.
const EXTRACT_QUEUE: usize = 4;

/// What a serving host has: the list (once known) and how many chunks of the spool are
/// verified.
#[derive(Clone, Default)]
struct Have {
    list: Option<Arc<ChunkList>>,
    chunks: u64,
}

/// The spool's directory and file of the order `token`, made private.
fn spool_dir(base: &Path, token: &str) -> Result<(PathBuf, PathBuf), String> {
    let dir = base.join(token);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    let file = dir.join("stream");
    Ok((dir, file))
}

/// The first host: the tree it just pulled as a tar stream in the spool, cut into
/// chunks; serves it and returns the address and the list.
async fn spool_tree(
    spec: &rs::RsyncSpec,
    pull: &Pull,
    bind: IpAddr,
    base: &Path,
) -> Result<(SocketAddr, ChunkList), String> {
    let (dir, file) = spool_dir(base, &pull.token)?;
    let root = PathBuf::from(&spec.src);
    let path = file.clone();
    let list = tokio::task::spawn_blocking(move || write_tar(&root, &path))
        .await
        .map_err(|e| format!("spool: {e}"))??;
    let list = Arc::new(list);
    let (have_tx, have_rx) = watch::channel(Have {
        list: Some(Arc::clone(&list)),
        chunks: list.count(),
    });
    let addr = listen_stream(
        bind,
        pull.token.clone(),
        pull.peers.clone(),
        pull.ttl,
        dir,
        file,
        have_rx,
    )
    .await?;
    drop(have_tx);
    tracing::info!(%addr, chunks = list.count(), bytes = list.size, "relay: first host serves its stream");
    Ok((addr, Arc::unwrap_or_clone(list)))
}

/// Writes the tar stream of the tree under `root` to `spool` (blocking): entries
/// depth-first, each directory's names sorted, a directory before its contents.
fn write_tar(root: &Path, spool: &Path) -> Result<ChunkList, String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| format!("spool {p}: {e}")
    };
    let file = std::fs::File::create(spool).map_err(io(spool))?;
    let mut out = Chunker::new(file, rstream::DEFAULT_CHUNK);
    let mut stack: Vec<String> = vec![String::new()];
    let mut buf = vec![0u8; 1 << 20];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let name = name
                .into_string()
                .map_err(|n| format!("spool: {} is not UTF-8", n.to_string_lossy()))?;
            let rel_name = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let local = root.join(&rel_name);
            let meta = std::fs::symlink_metadata(&local).map_err(io(&local))?;
            let kind = if meta.is_dir() {
                subdirs.push(rel_name.clone());
                upload::Kind::Dir
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&local).map_err(io(&local))?;
                upload::Kind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            } else if meta.is_file() {
                upload::Kind::File { size: meta.len() }
            } else {
                return Err(format!(
                    "spool: {} is not a file, directory or link",
                    local.display()
                ));
            };
            let entry = upload::Entry {
                local: local.clone(),
                name: rel_name,
                kind: kind.clone(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: u64::try_from(meta.mtime()).unwrap_or(0),
            };
            out.push(&upload::tar::header(&entry)).map_err(io(spool))?;
            if let upload::Kind::File { size } = kind {
                let mut f = std::fs::File::open(&local).map_err(io(&local))?;
                let mut left = size;
                while left > 0 {
                    let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                    let part = buf.get_mut(..want).unwrap_or_default();
                    f.read_exact(part).map_err(io(&local))?;
                    out.push(part).map_err(io(spool))?;
                    left -= want as u64;
                }
                let pad = (512 - size % 512) % 512;
                out.push(&vec![0u8; pad as usize]).map_err(io(spool))?;
            }
        }
        // Popped in sorted order: the last pushed is taken first.
        stack.extend(subdirs.into_iter().rev());
    }
    out.push(&[0u8; 1024]).map_err(io(spool))?;
    out.finish().map_err(io(spool))
}

/// Listens on an ephemeral port of `bind` and serves the spool to fleet peers that
/// prove `token`, each chunk once `have` says it is verified, until the spool's
/// directory is removed (`stop`) or `ttl` passes; connections still open then are cut.
async fn listen_stream(
    bind: IpAddr,
    token: String,
    peers: Vec<IpAddr>,
    ttl: u64,
    dir: PathBuf,
    spool: PathBuf,
    have: watch::Receiver<Have>,
) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind((bind, 0))
        .await
        .map_err(|e| format!("bind {bind}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    let ttl = Duration::from_secs(ttl);
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(ttl);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(STOP_CHECK);
        let token = Arc::new(token);
        // Every peer's connection, ended with the serving (stop or ttl), not left to
        // stream the unlinked spool for as long as the peer reads.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = &mut deadline => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = tick.tick() => {
                    if !dir.exists() {
                        break;
                    }
                }
                accepted = listener.accept() => {
                    let Ok((socket, peer)) = accepted else { continue };
                    if !peers.contains(&peer.ip()) {
                        tracing::warn!(peer = %peer, "relay: stream connection from outside the fleet refused");
                        continue;
                    }
                    let (token, spool, have) = (Arc::clone(&token), spool.clone(), have.clone());
                    conns.spawn(async move {
                        if let Err(e) = serve_peer(socket, &token, &spool, have).await {
                            tracing::info!(peer = %peer, error = %e, "relay: stream to a peer ended");
                        }
                    });
                }
            }
        }
        conns.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        tracing::info!(dir = %dir.display(), "relay stream serving ended");
    });
    Ok(addr)
}

/// One peer: the handshake, then every chunk from the one it asked for, each as soon as
/// it is verified here.
async fn serve_peer(
    mut socket: tokio::net::TcpStream,
    token: &str,
    spool: &Path,
    mut have: watch::Receiver<Have>,
) -> Result<(), String> {
    let _ = socket.set_nodelay(true);
    let list = have
        .wait_for(|h| h.list.is_some())
        .await
        .map_err(|_| "the stream was never received".to_owned())?
        .list
        .clone()
        .ok_or("no list")?;
    let first = tokio::time::timeout(CONNECT, rstream::accept(&mut socket, token, &list))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let file =
        Arc::new(std::fs::File::open(spool).map_err(|e| format!("{}: {e}", spool.display()))?);
    let mut buf = Vec::new();
    for index in first..list.count() {
        have.wait_for(|h| h.chunks > index)
            .await
            .map_err(|_| format!("the stream stopped before chunk {index}"))?;
        let (start, len) = list.span(index);
        buf.resize(usize::try_from(len).map_err(|_| "chunk too large")?, 0);
        // A positioned read straight into the buffer this loop reuses.
        let f = Arc::clone(&file);
        buf = tokio::task::spawn_blocking(move || {
            std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, start).map(|()| buf)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        socket.write_all(&buf).await.map_err(|e| e.to_string())?;
    }
    socket.flush().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Why a peer was left.
enum Left {
    /// It failed (connect, handshake, closed, stalled): it may be asked again.
    Failed(String),
    /// It sent a chunk that does not match the list: never again.
    Bad(String),
}

/// Receives the stream from `chain.from`, chunk by chunk, verified before it is spooled
/// (for children) and extracted under `spec.src`.
async fn chained(
    spec: rs::RsyncSpec,
    checksum: String,
    chain: Chain,
    base: &Path,
    events: &Events,
    limit: Duration,
) -> Reply {
    let started = std::time::Instant::now();
    let target = PathBuf::from(&spec.src);
    if let Err(e) = tokio::fs::create_dir_all(&target).await {
        return Reply::error(500, format!("relay: create {}: {e}", target.display()));
    }
    let root = match deploy_extract::Root::open(&target) {
        Ok(r) => r,
        Err(e) => return Reply::error(500, format!("relay: {e}")),
    };
    let (dir, spool) = match spool_dir(base, &chain.token) {
        Ok(x) => x,
        Err(e) => return Reply::error(500, e),
    };
    // Written on a blocking thread from the chunk's own buffer (no copy into a tokio
    // file's buffer), then that buffer goes on to the extractor.
    let out = match tokio::fs::File::create(&spool).await {
        Ok(f) => Arc::new(f.into_std().await),
        Err(e) => return Reply::error(500, format!("relay: {}: {e}", spool.display())),
    };
    let (have_tx, have_rx) = watch::channel(Have::default());
    let mut serving = None;
    if let (true, Some(bind)) = (chain.serve, chain.bind) {
        match listen_stream(
            bind,
            chain.token.clone(),
            chain.peers.clone(),
            chain.ttl,
            dir.clone(),
            spool.clone(),
            have_rx,
        )
        .await
        {
            Ok(addr) => {
                serving = Some(addr);
                events
                    .send(Event::Line {
                        stream: Stream::Stdout,
                        line: format!("{}{addr}", rs::waves::SERVING),
                        partial: false,
                    })
                    .await;
            }
            Err(e) => tracing::warn!(bind = %bind, error = %e, "relay: cannot serve the stream"),
        }
    }
    let (ptx, prx) = mpsc::channel(EXTRACT_QUEUE);
    let options = deploy_extract::Options {
        mode_mask: 0o777,
        ..deploy_extract::Options::default()
    };
    let extraction = tokio::task::spawn_blocking(move || {
        deploy_extract::extract(
            upload::pieces::PieceReader::new(prx, "the relay stream was cut short"),
            &root,
            &options,
        )
    });
    let mut ptx = Some(ptx);
    let mut list: Option<Arc<ChunkList>> = None;
    let mut next = 0u64;
    let mut refused: Vec<SocketAddr> = Vec::new();
    let mut pulled: Vec<(SocketAddr, u64)> = Vec::new();
    let mut resumed = 0u32;
    let mut last_from = None;
    let mut reported = 0u64;
    let mut errors: Vec<String> = Vec::new();
    'rounds: for round in 0..ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for &peer in &chain.from {
            if refused.contains(&peer) {
                continue;
            }
            if list.as_ref().is_some_and(|l| next >= l.count()) {
                break 'rounds;
            }
            if next > 0 {
                resumed += 1;
            }
            let got_before = next;
            let left = pull_from(
                peer,
                &chain,
                &mut list,
                &mut next,
                &out,
                &have_tx,
                &mut ptx,
                events,
                &mut reported,
            )
            .await;
            if next > got_before {
                pulled.push((peer, next - got_before));
                last_from = Some(peer);
            }
            match left {
                None => break 'rounds,
                Some(Left::Failed(why)) => {
                    tracing::warn!(peer = %peer, chunk = next, why = %why, "relay: peer failed; trying the next one");
                    errors.push(format!("{peer}: {why}"));
                }
                Some(Left::Bad(why)) => {
                    tracing::warn!(peer = %peer, chunk = next, why = %why, "relay: peer served a bad chunk; refused");
                    errors.push(format!("{peer}: {why}"));
                    refused.push(peer);
                }
            }
        }
    }
    let complete = list.as_ref().is_some_and(|l| next >= l.count());
    if let Some(tx) = ptx.take() {
        if complete {
            let _ = tx.send(Piece::End).await;
        }
    }
    let extracted = extraction.await;
    let pulled_text: Vec<String> = pulled.iter().map(|(p, n)| format!("{p}:{n}")).collect();
    let refused_text: Vec<String> = refused.iter().map(SocketAddr::to_string).collect();
    let mut body = object([
        ("return", flag(false)),
        ("checksum", Value::String(checksum)),
        (
            "from",
            Value::String(last_from.map(|a| a.to_string()).unwrap_or_default()),
        ),
        ("pulled", Value::String(pulled_text.join(","))),
        ("refused", Value::String(refused_text.join(","))),
        ("resumed", Value::String(resumed.to_string())),
        ("chunks", Value::String(next.to_string())),
        (
            "seconds",
            Value::String(format!("{:.3}", started.elapsed().as_secs_f64())),
        ),
    ]);
    if let Some(addr) = serving {
        body.insert("stream".into(), Value::String(addr.to_string()));
    }
    if !complete {
        body.insert(
            "error".into(),
            Value::String(format!(
                "relay: no peer served the whole stream ({})",
                errors.join("; ")
            )),
        );
        return Reply::ok(body);
    }
    match extracted {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            body.insert(
                "error".into(),
                Value::String(format!("relay: extraction: {e}")),
            );
            return Reply::ok(body);
        }
        Err(e) => {
            body.insert(
                "error".into(),
                Value::String(format!("relay: extraction: {e}")),
            );
            return Reply::ok(body);
        }
    }
    let root = target.clone();
    let manifest = match tokio::task::spawn_blocking(move || relay::manifest(&root)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Reply::error(500, e.to_string()),
        Err(e) => return Reply::error(500, format!("manifest: {e}")),
    };
    body.insert("manifest".into(), Value::String(manifest.digest.clone()));
    body.insert("files".into(), Value::String(manifest.files.to_string()));
    body.insert("bytes".into(), Value::String(manifest.bytes.to_string()));
    if manifest.digest != chain.expect {
        tracing::warn!(expect = %chain.expect, got = %manifest.digest, "relay: extracted tree does not match the reference manifest");
        body.insert(
            "error".into(),
            Value::String(format!(
                "manifest {} does not match the reference {} (files in {} that the source does not have?)",
                manifest.digest,
                chain.expect,
                target.display()
            )),
        );
        return Reply::ok(body);
    }
    if chain.verify {
        if let Err(why) = witness(&spec, limit, &mut body).await {
            body.insert("error".into(), Value::String(why));
            return Reply::ok(body);
        }
    }
    body.insert("return".into(), flag(true));
    body.insert("exitCode".into(), Value::String("0".into()));
    tracing::info!(from = ?last_from, chunks = next, resumed, refused = refused.len(), "relay chain finished");
    Reply::ok(body)
}

/// Pulls chunks from `peer` from `*next` on; `None` once the stream is complete.
#[allow(clippy::too_many_arguments)]
async fn pull_from(
    peer: SocketAddr,
    chain: &Chain,
    list: &mut Option<Arc<ChunkList>>,
    next: &mut u64,
    out: &Arc<std::fs::File>,
    have: &watch::Sender<Have>,
    extract: &mut Option<mpsc::Sender<Piece>>,
    events: &Events,
    reported: &mut u64,
) -> Option<Left> {
    let fail = |e: String| Some(Left::Failed(e));
    let socket = match peer {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    let Ok(socket) = socket else {
        return fail("cannot make a socket".into());
    };
    if let Some(bind) = chain.bind {
        // From our own address: the one the serving peer allows.
        if let Err(e) = socket.bind(SocketAddr::new(bind, 0)) {
            return fail(format!("bind {bind}: {e}"));
        }
    }
    let mut s = match tokio::time::timeout(CONNECT, socket.connect(peer)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(format!("connect: {e}")),
        Err(_) => return fail("connect timed out".into()),
    };
    let _ = s.set_nodelay(true);
    let got = match tokio::time::timeout(
        CONNECT,
        rstream::connect(&mut s, &chain.token, *next, &chain.list),
    )
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e @ rstream::StreamError::List { .. })) => return Some(Left::Bad(e.to_string())),
        Ok(Err(e)) => return fail(e.to_string()),
        Err(_) => return fail("handshake timed out".into()),
    };
    let list = match list {
        Some(l) => Arc::clone(l),
        None => {
            let l = Arc::new(got);
            *list = Some(Arc::clone(&l));
            have.send_modify(|h| h.list = Some(Arc::clone(&l)));
            l
        }
    };
    let mut buf = Vec::new();
    while *next < list.count() {
        let (_, len) = list.span(*next);
        buf.resize(usize::try_from(len).unwrap_or(0), 0);
        match tokio::time::timeout(STALL, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return fail(format!("chunk {}: {e}", *next)),
            Err(_) => return fail(format!("chunk {}: stalled for {}s", *next, STALL.as_secs())),
        }
        if !list.check(*next, &buf) {
            return Some(Left::Bad(format!(
                "chunk {} does not match its SHA-256 in the list",
                *next
            )));
        }
        let file = Arc::clone(out);
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            (&*file).write_all(&buf).map(|()| buf)
        })
        .await;
        buf = match written {
            Ok(Ok(buf)) => buf,
            Ok(Err(e)) => return fail(format!("spool: {e}")),
            Err(e) => return fail(format!("spool: {e}")),
        };
        *next += 1;
        have.send_modify(|h| h.chunks = *next);
        if let Some(tx) = extract.as_ref() {
            // The verified chunk itself, not a copy (the next one gets a fresh buffer).
            if tx
                .send(Piece::Data(std::mem::take(&mut buf)))
                .await
                .is_err()
            {
                // The extractor stopped (its error is the reply); children still get chunks.
                *extract = None;
            }
        }
        let percent = *next * 100 / list.count().max(1);
        if percent >= *reported + 10 || *next == list.count() {
            *reported = percent;
            events
                .send(Event::Line {
                    stream: Stream::Stdout,
                    line: format!(
                        "relay {percent}% ({}/{} chunks) from {peer}",
                        *next,
                        list.count()
                    ),
                    partial: false,
                })
                .await;
        }
    }
    None
}

use std::os::unix::fs::DirBuilderExt as _;

/// How often a serving listener checks that its order has not been stopped.
const STOP_CHECK: Duration = Duration::from_secs(1);

/// The most differing names a witness's reply quotes.
const WITNESS_NAMES: usize = 5;

/// The witness's check (`verify=1`): the tree the chain delivered, compared with the
/// group's own source by `rsync --dry-run --checksum` (the source reads and hashes its
/// files; only names and checksums cross). Every host of a relay otherwise trusts the
/// first host's manifest; the witness trusts only its source, as a push without relay
/// does, so a first host that pulled or served another tree is caught. Sets `witness`
/// in `body` to `verified` or `mismatch`; `Err` says why the tree is not the source's
/// (or why the check could not run: then `witness` is `failed`).
async fn witness(
    spec: &rs::RsyncSpec,
    limit: Duration,
    body: &mut serde_json::Map<String, Value>,
) -> Result<(), String> {
    // `--checksum` as one more option; `default_flags` (--archive --delete --force) stay.
    let mut check = spec.clone();
    check.option.push("--checksum".into());
    let failed = |body: &mut serde_json::Map<String, Value>, why: String| {
        body.insert("witness".into(), Value::String("failed".into()));
        Err(format!(
            "relay witness: rsync --dry-run --checksum against the source {why}"
        ))
    };
    let output = match rs::run_foreground(&check, true, limit).await {
        Ok(out) if out.status_code == Some(0) => out.output,
        Ok(out) => {
            let code = out.status_code.unwrap_or(-1);
            return failed(
                body,
                format!("failed with {code} ({})", rs::exit_meaning(code)),
            );
        }
        Err(e) => return failed(body, format!("could not run: {e}")),
    };
    let differences = rs::output::differences(&String::from_utf8_lossy(&output));
    if differences.is_empty() {
        body.insert("witness".into(), Value::String("verified".into()));
        return Ok(());
    }
    tracing::warn!(differences = differences.len(), first = %differences.first().map_or("", String::as_str), "relay witness: the relayed tree is not the source's");
    body.insert("witness".into(), Value::String("mismatch".into()));
    let shown: Vec<&str> = differences
        .iter()
        .take(WITNESS_NAMES)
        .map(String::as_str)
        .collect();
    Err(format!(
        "relay witness: the tree relayed from the first host is not the source's: {} entries differ ({}{})",
        differences.len(),
        shown.join(", "),
        if differences.len() > WITNESS_NAMES { ", …" } else { "" }
    ))
}
