//! The pipelined relay stream: a tree as one tar stream cut into fixed-size chunks, each
//! chunk's SHA-256 known before any byte of it travels, passed host → host.
//!
//! ```text
//! first host: rsync from the source ─► tar of the tree (spool file) ─► ChunkList
//!             (its digest goes to the scheduler over the sealed v2 connection)
//! every other host, from its parent (a peer, TCP):
//!   S: DRLY1 <nonce hex>\n
//!   C: <HMAC-SHA256(token, "DRLY1 " nonce) hex> <first chunk>\n
//!   S: OK <list bytes>\n <ChunkList bytes>      (or NO\n and close)
//!   S: chunk first, first+1, … (raw; sizes follow from the list)
//! ```
//!
//! The client checks the list against the digest the scheduler handed it, then every
//! chunk against the list *before* it writes, extracts or forwards it, so a bad peer
//! can waste a host's time but never poison it or the hosts after it. The token never
//! crosses the peer connection (a challenge–response over a fresh nonce), and a server
//! only answers addresses of the fleet.

use std::fmt::Write as _;
use std::io::Write as _;

use aws_lc_rs::digest::{digest, Context, SHA256};
use aws_lc_rs::hmac;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The first word of the server's greeting.
pub const MAGIC: &str = "DRLY1";
/// The default chunk size: small enough that a hop adds little (a host forwards a chunk
/// once it has all of it and checked it: 256 KiB is 21 ms at 100 Mbit/s), large enough
/// that hashing and syscalls cost little.
pub const DEFAULT_CHUNK: u64 = 256 << 10;
/// The smallest and largest chunk sizes accepted from the scheduler.
pub const CHUNK_RANGE: std::ops::RangeInclusive<u64> = 4096..=(64 << 20);
/// The longest handshake line read from a peer.
const MAX_LINE: usize = 256;
/// The most chunks a list may hold (a 256 GiB tree at 256 KiB chunks; a 32 MiB list).
const MAX_CHUNKS: u64 = 1 << 20;

/// Why a stream or handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The socket or the spool failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The other side does not speak the protocol.
    #[error("relay handshake: {0}")]
    Handshake(String),
    /// The server refused our proof (wrong token, or not of the fleet).
    #[error("relay peer refused the connection")]
    Refused,
    /// The chunk list does not match the digest the scheduler handed out.
    #[error("chunk list {got} does not match the expected {expected}")]
    List {
        /// The expected digest.
        expected: String,
        /// What the peer sent.
        got: String,
    },
    /// A chunk list is malformed.
    #[error("malformed chunk list: {0}")]
    BadList(String),
}

/// A stream's size, chunk size and every chunk's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkList {
    /// Total bytes of the stream.
    pub size: u64,
    /// Bytes per chunk (the last one may be shorter).
    pub chunk: u64,
    /// SHA-256 of each chunk.
    pub hashes: Vec<[u8; 32]>,
}

impl ChunkList {
    /// How many chunks.
    pub fn count(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// Where chunk `index` starts and how long it is.
    pub fn span(&self, index: u64) -> (u64, u64) {
        let start = index.saturating_mul(self.chunk);
        (start, self.chunk.min(self.size.saturating_sub(start)))
    }

    /// Whether `data` is chunk `index`.
    pub fn check(&self, index: u64, data: &[u8]) -> bool {
        let Ok(i) = usize::try_from(index) else {
            return false;
        };
        self.hashes
            .get(i)
            .is_some_and(|h| digest(&SHA256, data).as_ref() == h.as_slice())
    }

    /// The list as bytes: size and chunk (big-endian u64 each), then the hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 32 * self.hashes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.chunk.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses [`ChunkList::to_bytes`], checking that the count fits the size.
    pub fn from_bytes(bytes: &[u8]) -> Result<ChunkList, StreamError> {
        let bad = |s: &str| StreamError::BadList(s.to_owned());
        let (head, rest) = bytes.split_at_checked(16).ok_or_else(|| bad("too short"))?;
        let (size, chunk) = head.split_at(8);
        let size = u64::from_be_bytes(size.try_into().map_err(|_| bad("size"))?);
        let chunk = u64::from_be_bytes(chunk.try_into().map_err(|_| bad("chunk"))?);
        if !CHUNK_RANGE.contains(&chunk) {
            return Err(bad("chunk size out of range"));
        }
        let count = size.div_ceil(chunk);
        if count > MAX_CHUNKS || rest.len() as u64 != count * 32 {
            return Err(bad("the hashes do not fit the size"));
        }
        let hashes = rest
            .chunks_exact(32)
            .map(|c| <[u8; 32]>::try_from(c).map_err(|_| bad("hash")))
            .collect::<Result<_, _>>()?;
        Ok(ChunkList {
            size,
            chunk,
            hashes,
        })
    }

    /// The SHA-256 (hex) of [`ChunkList::to_bytes`]: what the scheduler hands out.
    pub fn digest(&self) -> String {
        hex(digest(&SHA256, &self.to_bytes()).as_ref())
    }
}

/// Cuts bytes written through it into chunks, hashing each, while appending them to a
/// spool file.
pub struct Chunker {
    chunk: u64,
    size: u64,
    current: Context,
    in_current: u64,
    hashes: Vec<[u8; 32]>,
    out: std::io::BufWriter<std::fs::File>,
}

impl Chunker {
    /// A chunker writing to `spool`.
    pub fn new(spool: std::fs::File, chunk: u64) -> Chunker {
        Chunker {
            chunk,
            size: 0,
            current: Context::new(&SHA256),
            in_current: 0,
            hashes: Vec::new(),
            out: std::io::BufWriter::with_capacity(1 << 20, spool),
        }
    }

    /// Appends `bytes`.
    pub fn push(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = usize::try_from(self.chunk - self.in_current).unwrap_or(usize::MAX);
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.current.update(now);
            self.in_current += now.len() as u64;
            bytes = later;
            if self.in_current == self.chunk {
                self.close_chunk();
            }
        }
        Ok(())
    }

    fn close_chunk(&mut self) {
        let ctx = std::mem::replace(&mut self.current, Context::new(&SHA256));
        let mut h = [0u8; 32];
        h.copy_from_slice(ctx.finish().as_ref());
        self.hashes.push(h);
        self.in_current = 0;
    }

    /// Flushes the spool and returns the list.
    pub fn finish(mut self) -> std::io::Result<ChunkList> {
        if self.in_current > 0 {
            self.close_chunk();
        }
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        Ok(ChunkList {
            size: self.size,
            chunk: self.chunk,
            hashes: self.hashes,
        })
    }
}

/// A fresh nonce (hex).
pub fn nonce() -> Result<String, StreamError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| StreamError::Handshake("no random nonce available".into()))?;
    Ok(hex(&bytes))
}

fn proof(token: &str, nonce: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    hex(hmac::sign(&key, format!("{MAGIC} {nonce}").as_bytes()).as_ref())
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes.
async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, StreamError> {
    let mut line = Vec::new();
    loop {
        let b = r.read_u8().await?;
        if b == b'\n' {
            break;
        }
        if line.len() >= MAX_LINE {
            return Err(StreamError::Handshake("line too long".into()));
        }
        line.push(b);
    }
    String::from_utf8(line).map_err(|_| StreamError::Handshake("not text".into()))
}

/// Server side: greets, checks the client's proof of `token`; the first chunk it wants,
/// or why not (the client was told `NO`).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    token: &str,
    list: &ChunkList,
) -> Result<u64, StreamError> {
    let n = nonce()?;
    s.write_all(format!("{MAGIC} {n}\n").as_bytes()).await?;
    let line = read_line(s).await?;
    let (mac, first) = line
        .split_once(' ')
        .ok_or_else(|| StreamError::Handshake("expected `<proof> <chunk>`".into()))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    let mac = unhex(mac).ok_or_else(|| StreamError::Handshake("proof is not hex".into()))?;
    let first: u64 = first
        .parse()
        .map_err(|_| StreamError::Handshake("bad chunk number".into()))?;
    if hmac::verify(&key, format!("{MAGIC} {n}").as_bytes(), &mac).is_err() {
        let _ = s.write_all(b"NO\n").await;
        return Err(StreamError::Refused);
    }
    let bytes = list.to_bytes();
    s.write_all(format!("OK {}\n", bytes.len()).as_bytes())
        .await?;
    s.write_all(&bytes).await?;
    Ok(first.min(list.count()))
}

/// Client side: proves `token`, asks for chunks from `first`, reads the list and checks
/// it against `expected` (its digest).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    token: &str,
    first: u64,
    expected: &str,
) -> Result<ChunkList, StreamError> {
    let hello = read_line(s).await?;
    let nonce = hello
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| StreamError::Handshake(format!("unexpected greeting `{hello}`")))?;
    s.write_all(format!("{} {first}\n", proof(token, nonce)).as_bytes())
        .await?;
    let answer = read_line(s).await?;
    let len: usize = match answer.strip_prefix("OK ") {
        Some(len) => len
            .parse()
            .map_err(|_| StreamError::Handshake("bad list length".into()))?,
        None if answer == "NO" => return Err(StreamError::Refused),
        None => return Err(StreamError::Handshake(format!("unexpected `{answer}`"))),
    };
    if len > 16 + 32 * MAX_CHUNKS as usize {
        return Err(StreamError::BadList("too long".into()));
    }
    let mut bytes = vec![0u8; len];
    s.read_exact(&mut bytes).await?;
    let list = ChunkList::from_bytes(&bytes)?;
    let got = list.digest();
    if got != expected {
        return Err(StreamError::List {
            expected: expected.to_owned(),
            got,
        });
    }
    Ok(list)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn chunker_cuts_and_list_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let mut c = Chunker::new(std::fs::File::create(&path).unwrap(), 4096);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        c.push(&data[..5000]).unwrap();
        c.push(&data[5000..]).unwrap();
        let list = c.finish().unwrap();
        assert_eq!((list.size, list.count()), (10_000, 3));
        assert_eq!(list.span(2), (8192, 10_000 - 8192));
        assert!(list.check(1, &data[4096..8192]));
        assert!(!list.check(1, &data[4095..8191]));
        assert!(!list.check(3, &data[..10]));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert_eq!(ChunkList::from_bytes(&list.to_bytes()).unwrap(), list);
        let mut short = list.to_bytes();
        short.pop();
        assert!(ChunkList::from_bytes(&short).is_err());
    }

    #[tokio::test]
    async fn handshake_needs_the_token_and_the_right_list() {
        let list = ChunkList {
            size: 5000,
            chunk: 4096,
            hashes: vec![[1; 32], [2; 32]],
        };
        let token = "a".repeat(32);
        for (client_token, expect, ok) in [
            (token.clone(), list.digest(), true),
            ("b".repeat(32), list.digest(), false),
            (token.clone(), "0".repeat(64), false),
        ] {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            let l = list.clone();
            let t = token.clone();
            let server = tokio::spawn(async move { accept(&mut a, &t, &l).await });
            let got = connect(&mut b, &client_token, 1, &expect).await;
            let served = server.await.unwrap();
            assert_eq!(got.is_ok(), ok, "{got:?}");
            if client_token == token {
                assert_eq!(served.unwrap(), 1);
            } else {
                assert!(matches!(served, Err(StreamError::Refused)));
            }
        }
    }
}
