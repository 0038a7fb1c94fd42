//! Relay distribution: hosts that have the tree serve it to their peers.
//!
//! Without relay every agent pulls the whole tree from one rsync daemon, so a push to N
//! hosts sends N copies out of one link. With relay (issue 12) a scheduler
//! ([`super::waves`]) sends the `rsync` order with relay `args` ([`RelayArgs`]): the
//! first host pulls from the group's source and serves the tree as a chunked stream
//! ([`super::stream`]); the others form chains that pull, verify every chunk and serve it
//! on, for this order only, authenticated by a per-order random [`token`] handed out
//! over the sealed v2 connection.
//!
//! * **Verifying**: [`manifest`] is the SHA-256 of the sorted list of the tree's
//!   directories, files (mode, size, SHA-256 of the content) and symbolic links; the
//!   stream's chunk list is checked against a digest the scheduler got from the first
//!   host, and the extracted tree against its manifest.
//! * `from` ([`peer_url`]: a peer's `rsync --daemon`) is still parsed, so an agent can
//!   refuse it by name: the store-and-forward mode that used it is gone.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The `auth users` name peers pull as.
pub const USER: &str = "relay";
/// The one module a relaying agent serves.
pub const MODULE: &str = "relay";
/// The first word of an `rsync` order's `args` that asks for relay mode.
pub const PREFIX: &str = "relay";
/// How long an agent serves when the scheduler names no `ttl` (seconds).
pub const DEFAULT_TTL: u64 = 600;

/// Why relay arguments or a manifest could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The `args` of a relay order are malformed.
    #[error("relay args: {0}")]
    Args(String),
    /// Reading the tree failed.
    #[error("manifest of {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The system's random source failed.
    #[error("no random token available")]
    Random,
}

/// What a relay `rsync` order asks of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayArgs {
    /// Pull the group's tree (from its source, or from a peer), verify it, maybe serve it.
    Pull(Pull),
    /// Receive the tree as a verified chunk stream from a peer (pipelined relay).
    Chain(Chain),
    /// Stop serving for the order whose token this is.
    Stop {
        /// The order's token.
        token: String,
    },
}

/// A relay pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// A peer's URL ([`peer_url`]); `None`: the group's own source.
    pub from: Option<String>,
    /// The order's token (hex): the password peers pull with.
    pub token: String,
    /// The reference manifest; `None` for the first pulls from the source.
    pub expect: Option<String>,
    /// Serve the tree once it is verified.
    pub serve: bool,
    /// The address to serve on (the one the scheduler reached the agent at).
    pub bind: Option<IpAddr>,
    /// The only addresses allowed to pull.
    pub peers: Vec<IpAddr>,
    /// How long to serve at most (seconds).
    pub ttl: u64,
    /// Serve the tree as a chunk stream ([`super::stream`]) rather than by `rsync --daemon`;
    /// the reply carries the chunk list's digest (`list`).
    pub stream: bool,
}

/// A pipelined relay receive: chunks from `from` (the parent first, then the hosts to
/// fall back on), each checked against the list whose digest is `list`, extracted under
/// the group's target and, with `serve`, forwarded to this host's own children as soon
/// as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The order's token (hex).
    pub token: String,
    /// Peers' stream addresses: the parent, then earlier hosts to fall back on.
    pub from: Vec<SocketAddr>,
    /// The chunk list's SHA-256 (hex), from the first host over the sealed connection.
    pub list: String,
    /// The reference manifest the extracted tree must have.
    pub expect: String,
    /// The reference tree's [`Manifest::shape`]: when given, the extracted tree is
    /// checked against it (names, types, modes, sizes, link targets; no extra entries)
    /// instead of re-hashing every file, whose contents came from chunks verified
    /// against the list. `None` (an older scheduler): the full manifest.
    pub shape: Option<String>,
    /// Serve the stream to children (on `bind`).
    pub serve: bool,
    /// The address to serve on.
    pub bind: Option<IpAddr>,
    /// The only addresses allowed to connect.
    pub peers: Vec<IpAddr>,
    /// How long to serve at most (seconds).
    pub ttl: u64,
}

impl RelayArgs {
    /// The `args` string for this request.
    pub fn to_args(&self) -> String {
        match self {
            RelayArgs::Stop { token } => format!("{PREFIX} stop token={token}"),
            RelayArgs::Pull(p) => {
                let mut s = format!("{PREFIX} pull token={} ttl={}", p.token, p.ttl);
                if let Some(from) = &p.from {
                    let _ = write!(s, " from={from}");
                }
                if let Some(expect) = &p.expect {
                    let _ = write!(s, " expect={expect}");
                }
                if p.serve {
                    s.push_str(" serve=1");
                }
                if let Some(bind) = p.bind {
                    let _ = write!(s, " bind={bind}");
                }
                if !p.peers.is_empty() {
                    let peers: Vec<String> = p.peers.iter().map(IpAddr::to_string).collect();
                    let _ = write!(s, " peers={}", peers.join(","));
                }
                if p.stream {
                    s.push_str(" stream=1");
                }
                s
            }
            RelayArgs::Chain(c) => {
                let from: Vec<String> = c.from.iter().map(SocketAddr::to_string).collect();
                let mut s = format!(
                    "{PREFIX} chain token={} ttl={} from={} list={} expect={}",
                    c.token,
                    c.ttl,
                    from.join(","),
                    c.list,
                    c.expect
                );
                if let Some(shape) = &c.shape {
                    let _ = write!(s, " shape={shape}");
                }
                if c.serve {
                    s.push_str(" serve=1");
                }
                if let Some(bind) = c.bind {
                    let _ = write!(s, " bind={bind}");
                }
                if !c.peers.is_empty() {
                    let peers: Vec<String> = c.peers.iter().map(IpAddr::to_string).collect();
                    let _ = write!(s, " peers={}", peers.join(","));
                }
                s
            }
        }
    }
}

/// Whether an `rsync` order's `args` ask for relay mode.
pub fn is_relay(args: &str) -> bool {
    args.split_whitespace().next() == Some(PREFIX)
}

/// Parses relay `args` (`relay pull key=value…`, `relay chain key=value…` or
/// `relay stop token=…`).
pub fn parse(args: &str) -> Result<RelayArgs, RelayError> {
    let bad = |what: &str| RelayError::Args(what.to_owned());
    let mut words = args.split_whitespace();
    if words.next() != Some(PREFIX) {
        return Err(bad("must start with `relay`"));
    }
    let action = words
        .next()
        .ok_or_else(|| bad("no action (pull, chain or stop)"))?;
    let mut pull = Pull {
        from: None,
        token: String::new(),
        expect: None,
        serve: false,
        bind: None,
        peers: Vec::new(),
        ttl: DEFAULT_TTL,
        stream: false,
    };
    let mut list = None;
    let mut shape = None;
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| RelayError::Args(format!("`{word}` is not key=value")))?;
        match key {
            "token" => pull.token = value.to_owned(),
            "from" => pull.from = Some(value.to_owned()),
            "expect" => pull.expect = Some(value.to_owned()),
            "list" => list = Some(value.to_owned()),
            "shape" => shape = Some(value.to_owned()),
            "serve" => pull.serve = value == "1",
            "stream" => pull.stream = value == "1",
            "bind" => {
                pull.bind = Some(
                    value
                        .parse()
                        .map_err(|_| RelayError::Args(format!("bind: bad address `{value}`")))?,
                )
            }
            "peers" => {
                pull.peers = value
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse()
                            .map_err(|_| RelayError::Args(format!("peers: bad address `{p}`")))
                    })
                    .collect::<Result<_, _>>()?
            }
            "ttl" => {
                pull.ttl = value
                    .parse()
                    .map_err(|_| RelayError::Args(format!("ttl: bad number `{value}`")))?
            }
            _ => return Err(RelayError::Args(format!("unknown key `{key}`"))),
        }
    }
    if !valid_token(&pull.token) {
        return Err(bad("token must be 32 to 128 hex digits"));
    }
    let sha = |v: &Option<String>| {
        v.as_ref()
            .is_none_or(|x| x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if !sha(&pull.expect) {
        return Err(bad("expect must be a SHA-256 in hex"));
    }
    if !sha(&list) {
        return Err(bad("list must be a SHA-256 in hex"));
    }
    if !sha(&shape) {
        return Err(bad("shape must be a SHA-256 in hex"));
    }
    if action == "chain" {
        let from = pull
            .from
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|_| RelayError::Args(format!("from: bad peer address `{p}`")))
            })
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        if from.is_empty() {
            return Err(bad("chain needs from=<peer>[,<peer>…]"));
        }
        let list = list.ok_or_else(|| bad("chain needs list="))?;
        let expect = pull.expect.ok_or_else(|| bad("chain needs expect="))?;
        return Ok(RelayArgs::Chain(Chain {
            token: pull.token,
            from,
            list,
            expect,
            shape,
            serve: pull.serve,
            bind: pull.bind,
            peers: pull.peers,
            ttl: pull.ttl,
        }));
    }
    if list.is_some() || shape.is_some() {
        return Err(bad("list= and shape= are for chain"));
    }
    if let Some(from) = &pull.from {
        let ok = from.starts_with(&format!("rsync://{USER}@"))
            && from.ends_with(&format!("/{MODULE}/"))
            && !from.chars().any(|c| c.is_control() || c.is_whitespace());
        if !ok {
            return Err(RelayError::Args(format!(
                "from: `{from}` is not a relay peer URL"
            )));
        }
    }
    match action {
        "pull" => Ok(RelayArgs::Pull(pull)),
        "stop" => Ok(RelayArgs::Stop { token: pull.token }),
        other => Err(RelayError::Args(format!("unknown action `{other}`"))),
    }
}

/// `args` for logs: a relay order's `token=` value hidden, other args as they are.
pub fn redact(args: &str) -> std::borrow::Cow<'_, str> {
    if !is_relay(args) {
        return std::borrow::Cow::Borrowed(args);
    }
    let words: Vec<&str> = args
        .split_whitespace()
        .map(|w| {
            if w.starts_with("token=") {
                "token=-"
            } else {
                w
            }
        })
        .collect();
    std::borrow::Cow::Owned(words.join(" "))
}

fn valid_token(token: &str) -> bool {
    (32..=128).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fresh per-order token: 128 random bits in hex.
pub fn token() -> Result<String, RelayError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| RelayError::Random)?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The URL peers pull a relaying agent's tree from.
pub fn peer_url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("rsync://{USER}@{v4}:{port}/{MODULE}/"),
        IpAddr::V6(v6) => format!("rsync://{USER}@[{v6}]:{port}/{MODULE}/"),
    }
}

/// A tree's manifest: its SHA-256 in hex, and how many files and bytes it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// SHA-256 (hex) of the sorted entry list (empty from [`shape`], which reads no
    /// file).
    pub digest: String,
    /// SHA-256 (hex) of the same list without the files' contents' hashes
    /// (`f path mode size`): the tree's shape.
    pub shape: String,
    /// Regular files.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
}

/// Walks `root` (blocking) and returns its [`Manifest`]: one line per entry below it, in
/// byte order of the relative paths: `d path mode`, `f path mode size sha256`,
/// `l path target`. Symbolic links are recorded, never followed.
pub fn manifest(root: &Path) -> Result<Manifest, RelayError> {
    walk(root, true)
}

/// [`manifest`] without reading any file: only [`Manifest::shape`] (with `files` and
/// `bytes`); `digest` is empty.
pub fn shape(root: &Path) -> Result<Manifest, RelayError> {
    walk(root, false)
}

fn walk(root: &Path, contents: bool) -> Result<Manifest, RelayError> {
    use aws_lc_rs::digest::{Context, SHA256};
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RelayError::Io { path, source }
    };
    let mut list = Context::new(&SHA256);
    let mut shape = Context::new(&SHA256);
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut stack = vec![PathBuf::new()];
    let mut buf = vec![0u8; 1 << 16];
    // Depth-first, each directory's entries sorted, so the order is deterministic.
    let mut entries: Vec<PathBuf> = Vec::new();
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        names.sort();
        for name in names.into_iter().rev() {
            let rel = rel.join(name);
            let full = root.join(&rel);
            let meta = fs::symlink_metadata(&full).map_err(io(&full))?;
            if meta.is_dir() {
                stack.push(rel.clone());
            }
            entries.push(rel);
        }
    }
    entries.sort();
    for rel in entries {
        let full = root.join(&rel);
        let meta = fs::symlink_metadata(&full).map_err(io(&full))?;
        let mode = meta.permissions().mode() & 0o7777;
        let name = rel.to_string_lossy();
        let line = if meta.is_dir() {
            format!("d {name} {mode:o}\n")
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&full).map_err(io(&full))?;
            format!("l {name} {}\n", target.to_string_lossy())
        } else if meta.is_file() {
            files += 1;
            bytes += meta.len();
            let head = format!("f {name} {mode:o} {}", meta.len());
            shape.update(head.as_bytes());
            shape.update(b"\n");
            if contents {
                let mut file = fs::File::open(&full).map_err(io(&full))?;
                let mut ctx = Context::new(&SHA256);
                loop {
                    let n = file.read(&mut buf).map_err(io(&full))?;
                    if n == 0 {
                        break;
                    }
                    ctx.update(buf.get(..n).unwrap_or_default());
                }
                list.update(format!("{head} {}\n", hex(ctx.finish().as_ref())).as_bytes());
            }
            continue;
        } else {
            format!("o {name} {mode:o}\n")
        };
        list.update(line.as_bytes());
        shape.update(line.as_bytes());
    }
    Ok(Manifest {
        digest: if contents {
            hex(list.finish().as_ref())
        } else {
            String::new()
        },
        shape: hex(shape.finish().as_ref()),
        files,
        bytes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let pull = RelayArgs::Pull(Pull {
            from: Some(peer_url("10.0.0.2".parse().unwrap(), 4000)),
            token: token().unwrap(),
            expect: Some("a".repeat(64)),
            serve: true,
            bind: Some("10.0.0.3".parse().unwrap()),
            peers: vec!["10.0.0.2".parse().unwrap(), "::1".parse().unwrap()],
            ttl: 30,
            stream: true,
        });
        assert_eq!(parse(&pull.to_args()).unwrap(), pull);
        let chain = RelayArgs::Chain(Chain {
            token: "d".repeat(32),
            from: vec!["10.0.0.2:4000".parse().unwrap(), "[::1]:5".parse().unwrap()],
            list: "e".repeat(64),
            expect: "f".repeat(64),
            shape: Some("1".repeat(64)),
            serve: true,
            bind: Some("10.0.0.3".parse().unwrap()),
            peers: vec!["10.0.0.2".parse().unwrap()],
            ttl: 9,
        });
        assert_eq!(parse(&chain.to_args()).unwrap(), chain);
        if let RelayArgs::Chain(mut old) = chain {
            // From a scheduler that sends no shape.
            old.shape = None;
            let old = RelayArgs::Chain(old);
            assert_eq!(parse(&old.to_args()).unwrap(), old);
        }
        let stop = RelayArgs::Stop {
            token: "b".repeat(32),
        };
        assert_eq!(parse(&stop.to_args()).unwrap(), stop);
        assert!(is_relay("relay stop token=x") && !is_relay("relayed"));
        assert_eq!(
            redact("relay stop token=abc ttl=1"),
            "relay stop token=- ttl=1"
        );
        assert_eq!(redact("groups:web token=abc"), "groups:web token=abc");
    }

    #[test]
    fn bad_args_refused() {
        let t = "c".repeat(32);
        for args in [
            "relay".to_owned(),
            "relay pull token=short".into(),
            format!("relay pull token={t} from=host::MOD"),
            format!("relay pull token={t} from=/etc"),
            format!("relay pull token={t} expect=zz"),
            format!("relay pull token={t} bind=nohost"),
            format!("relay pull token={t} what=1"),
            format!("relay jump token={t}"),
            format!(
                "relay chain token={t} list={} expect={}",
                "a".repeat(64),
                "a".repeat(64)
            ),
            format!(
                "relay chain token={t} from=nohost:1 list={} expect={}",
                "a".repeat(64),
                "a".repeat(64)
            ),
            format!(
                "relay chain token={t} from=1.2.3.4:5 expect={}",
                "a".repeat(64)
            ),
            format!("relay pull token={t} list={}", "a".repeat(64)),
            format!("relay pull token={t} shape={}", "a".repeat(64)),
            format!(
                "relay chain token={t} from=1.2.3.4:5 list={} expect={} shape=xyz",
                "a".repeat(64),
                "a".repeat(64)
            ),
        ] {
            assert!(parse(&args).is_err(), "{args}");
        }
    }

    #[test]
    fn manifest_sees_content_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/a"), b"hello").unwrap();
        fs::write(root.join("b"), b"world").unwrap();
        std::os::unix::fs::symlink("sub/a", root.join("link")).unwrap();
        let first = manifest(root).unwrap();
        assert_eq!((first.files, first.bytes), (2, 10));
        assert_eq!(manifest(root).unwrap(), first);
        fs::write(root.join("sub/a"), b"hellO").unwrap();
        let changed = manifest(root).unwrap();
        assert_ne!(changed.digest, first.digest);
        fs::write(root.join("sub/a"), b"hello").unwrap();
        assert_eq!(manifest(root).unwrap().digest, first.digest);
        fs::set_permissions(root.join("b"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(manifest(root).unwrap().digest, first.digest);
    }

    #[test]
    fn shape_sees_everything_but_contents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/a"), b"hello").unwrap();
        fs::write(root.join("b"), b"world").unwrap();
        std::os::unix::fs::symlink("sub/a", root.join("link")).unwrap();
        let full = manifest(root).unwrap();
        let first = shape(root).unwrap();
        assert_eq!(
            (&first.shape, first.files, first.bytes),
            (&full.shape, 2, 10)
        );
        assert!(first.digest.is_empty(), "shape reads no file");
        // The same sizes, other contents: the same shape.
        fs::write(root.join("sub/a"), b"hellO").unwrap();
        assert_eq!(shape(root).unwrap().shape, first.shape);
        // Everything else counts: a size, a mode, a link target, an extra entry.
        let changes: [&dyn Fn(); 4] = [
            &|| fs::write(root.join("sub/a"), b"hello!").unwrap(),
            &|| fs::set_permissions(root.join("b"), fs::Permissions::from_mode(0o600)).unwrap(),
            &|| {
                fs::remove_file(root.join("link")).unwrap();
                std::os::unix::fs::symlink("b", root.join("link")).unwrap();
            },
            &|| fs::write(root.join("sub/extra"), b"").unwrap(),
        ];
        let mut seen = vec![first.shape.clone()];
        for change in changes {
            change();
            let now = shape(root).unwrap().shape;
            assert!(!seen.contains(&now), "a change left the shape as it was");
            assert_eq!(manifest(root).unwrap().shape, now);
            seen.push(now);
        }
    }
}
