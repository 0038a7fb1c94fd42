//! [`AgentTransport`]: one TCP connection per order to a deploy agent or proxy, in
//! protocol v2 or the original's v1.
//!
//! ```text
//! resolve (lookup_host) ─► connect each address in turn   ≤ connect_timeout
//!   v2:  handshake ─► Request{id 1} ─► Event* ─► Reply{id 1}
//!   v1:  POST /agent/<order> ─► HTTP-like response           (plain)
//!        aes:/ssl-length: envelope ─► ssl-length: envelope   (ssl, iff a public key is set)
//! └──────────────────────────── whole exchange ≤ deadline ────────────────────────────┘
//! ```
//!
//! A proxy tags the events it relays for its agents with their names; a delivery keeps
//! that tag ([`TaggedEvent`]). Tags count only in the answer to a request that carries
//! an API key, that is, one addressed to a proxy: an agent speaks for itself.
//!
//! Sockets get `TCP_NODELAY`: every exchange is a few small writes answered by the peer.
//! Before parsing a v1 reply, its first bytes are peeked, so that an agent in the other
//! mode (plain vs ssl) is reported as a protocol mismatch rather than as garbage.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{lookup_host, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};

use super::{BoxFuture, Outcome, Transport};
use crate::crypto::RsaPublicKey;
use crate::legacy::auth::{make_auth_key, DEFAULT_KEY_CIPHER};
use crate::legacy::http::{encode_request_escaped, read_response, Form, HttpResponse};
use crate::legacy::ssl::{
    encode_ssl_request, new_passphrase, open_response, read_ssl_response, seal, wrap_passphrase,
};
use crate::legacy::{LegacyError, Limits};
use crate::order::{Reply, Request};
use crate::target::Target;
use crate::wire::connection::SecureConnection;
use crate::wire::handshake::{self, ClientParams};
use crate::wire::message::{into_reply, Message, TaggedEvent};
use crate::wire::WireError;

/// Largest reply body accepted (a proxy's merged reply for many hosts can be large).
pub const MAX_REPLY: usize = 64 << 20;

/// The request identifier used on a v2 connection (one order per connection).
const REQUEST_ID: u64 = 1;

/// Which wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Protocol v2: authenticated key exchange, AES-256-GCM records, streamed events.
    #[default]
    V2,
    /// The original Perl deploy's protocol (plain, or "ssl" with a public key).
    V1,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::V2 => "v2",
            Protocol::V1 => "v1",
        })
    }
}

/// Delivers orders to deploy agents (or proxies) over TCP.
#[derive(Clone)]
pub struct AgentTransport {
    /// Protocol to speak.
    pub protocol: Protocol,
    /// The agent's shared secret (`key_cipher`).
    pub key_cipher: String,
    /// The agent's RSA public key. v2: pinned, so only the key's holder can complete the
    /// handshake. v1: switches the "ssl" envelope on.
    pub public_key: Option<Arc<RsaPublicKey>>,
    /// Longest wait for name resolution and the TCP connection together.
    pub connect_timeout: Duration,
    /// Longest wait for the whole exchange, connection included.
    pub deadline: Duration,
    /// v2 only: keep authenticated connections open for the next order to the same
    /// address (the proxy does; a one-shot client has no use for it).
    pub pool: Option<Arc<Pool>>,
}

/// How long a pooled connection may sit idle (the agent closes its end after 60 s).
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per address.
const POOL_PER_ADDRESS: usize = 16;

/// A connection and the moment it became idle.
type Idle = (Instant, SecureConnection<TcpStream>);

/// Authenticated v2 connections waiting for their next order, by address.
#[derive(Default)]
pub struct Pool {
    idle: std::sync::Mutex<HashMap<String, Vec<Idle>>>,
}

impl Pool {
    fn take(&self, address: &str) -> Option<SecureConnection<TcpStream>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = idle.get_mut(address)?;
        while let Some((since, conn)) = list.pop() {
            if since.elapsed() < POOL_IDLE {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, address: String, conn: SecureConnection<TcpStream>) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = idle.entry(address).or_default();
        list.retain(|(since, _)| since.elapsed() < POOL_IDLE);
        if list.len() < POOL_PER_ADDRESS {
            list.push((Instant::now(), conn));
        }
    }
}

/// Why a v2 request on an established connection failed.
struct V2Error {
    /// Nothing came back: the connection was already dead (closed while pooled), so
    /// the agent never saw the request and it may be sent again on a fresh one.
    stale: bool,
    outcome: Outcome,
}

impl fmt::Debug for AgentTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentTransport")
            .field("protocol", &self.protocol)
            .field("key_cipher", &"<redacted>")
            .field(
                "public_key",
                &self.public_key.as_ref().map(|k| k.fingerprint()),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Default for AgentTransport {
    /// v2, `key_cipher` `65535` (the original's default), no public key, 5 s to connect,
    /// 30 s for the exchange.
    fn default() -> Self {
        AgentTransport {
            protocol: Protocol::V2,
            key_cipher: DEFAULT_KEY_CIPHER.to_owned(),
            public_key: None,
            connect_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            pool: None,
        }
    }
}

impl Transport for AgentTransport {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            // An upload root may name the host (`%h`, `%p`): each agent gets its own.
            // Through a proxy (a request with an API key) the proxy expands it for each
            // of its agents.
            let expanded;
            let request = match request.upload.as_deref() {
                Some(spec) if spec.root.contains('%') && request.api_key.is_empty() => {
                    let mut copy = request.clone();
                    let mut spec = spec.clone();
                    spec.root = crate::target::expand(&spec.root, target, &[]);
                    copy.upload = Some(Box::new(spec));
                    expanded = copy;
                    &expanded
                }
                _ => request,
            };
            let exchange = async {
                if let (Protocol::V2, Some(pool)) = (self.protocol, &self.pool) {
                    if let Some(mut conn) = pool.take(&target.address()) {
                        match self.request_v2(&mut conn, request, &events).await {
                            Ok(reply) => {
                                pool.put(target.address(), conn);
                                return Outcome::Reply(reply);
                            }
                            Err(e) if e.stale => {
                                tracing::debug!(target = %target, "pooled connection was closed; reconnecting");
                            }
                            Err(e) => return e.outcome,
                        }
                    }
                }
                let stream = match connect(target, self.connect_timeout).await {
                    Ok(stream) => stream,
                    Err(outcome) => return outcome,
                };
                match self.protocol {
                    Protocol::V2 => self.exchange_v2(target, stream, request, &events).await,
                    Protocol::V1 => match &self.public_key {
                        None => self.exchange_v1_plain(stream, request).await,
                        Some(key) => self.exchange_v1_ssl(stream, request, key).await,
                    },
                }
            };
            // A timed order waits on the host for its instant: the deadline starts then.
            let deadline = self.deadline
                + crate::order::at::wait_of(
                    request.at,
                    request.max_wait,
                    crate::order::at::now_ms(),
                );
            timeout(deadline, exchange)
                .await
                .unwrap_or(Outcome::Timeout(deadline))
        })
    }

    /// v2: connects and completes the handshake (the shared secret, and the pinned key
    /// if any, proven both ways); the connection goes to the pool for the delivery that
    /// follows, or is closed without one. v1 has nothing to prove before the request,
    /// so only the TCP connection is made (and closed). Bounded by the deadline, like a
    /// delivery.
    fn connect<'a>(
        &'a self,
        target: &'a Target,
        _request: &'a Request,
    ) -> BoxFuture<'a, Result<(), Outcome>> {
        Box::pin(async move {
            let stage = async {
                let mut stream = connect(target, self.connect_timeout).await?;
                if self.protocol == Protocol::V1 {
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
                let conn = self.handshake(stream).await?;
                self.keep_or_close(target, conn).await;
                Ok(())
            };
            timeout(self.deadline, stage)
                .await
                .unwrap_or(Err(Outcome::Timeout(self.deadline)))
        })
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Resolves the target and connects to its addresses in turn, within `limit`.
async fn connect(target: &Target, limit: Duration) -> Result<TcpStream, Outcome> {
    let unreachable = |cause: String| Outcome::Unreachable {
        address: target.address(),
        cause,
    };
    let give_up = Instant::now() + limit;
    let addrs: Vec<_> =
        match timeout_at(give_up, lookup_host((target.host.as_str(), target.port))).await {
            Err(_) => return Err(unreachable("name resolution timed out".into())),
            Ok(Err(e)) => return Err(unreachable(format!("cannot resolve {}: {e}", target.host))),
            Ok(Ok(addrs)) => addrs.collect(),
        };
    let mut cause = format!("no address for {}", target.host);
    for addr in &addrs {
        match timeout_at(give_up, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(peer = %addr, cause = %e, "cannot set TCP_NODELAY");
                }
                tracing::debug!(peer = %addr, "connected");
                return Ok(stream);
            }
            Ok(Err(e)) => {
                cause = if addrs.len() > 1 {
                    format!("{addr}: {e}")
                } else {
                    e.to_string()
                };
            }
            Err(_) => {
                cause = format!("connection timed out after {} s", super::seconds(limit));
                break;
            }
        }
    }
    Err(unreachable(cause))
}

/// Explains a v2 failure after connecting, with a hint when the peer looks like a v1
/// server.
fn v2_failure(error: WireError) -> Outcome {
    const V1_HINT: &str = "protocol mismatch: the peer does not speak protocol v2 (a v1 agent?)";
    match error {
        // An HTTP status line or `ssl-length:` read as a frame length.
        WireError::TooLarge { len, .. }
            if [*b"HTTP", *b"ssl-"]
                .iter()
                .any(|p| u32::from_be_bytes(*p) as usize == len) =>
        {
            Outcome::Failed(V1_HINT.to_owned())
        }
        WireError::Closed => Outcome::Failed(
            "connection closed by the peer before the reply (a v1 agent, or one that refused the connection?)"
                .to_owned(),
        ),
        WireError::Timeout => Outcome::Failed("timed out".to_owned()),
        other => Outcome::Failed(format!("protocol v2: {other}")),
    }
}

fn v1_failure(error: LegacyError, deadline: Duration) -> Outcome {
    match error {
        LegacyError::Timeout => Outcome::Timeout(deadline),
        LegacyError::Crypto => Outcome::Failed(
            "cannot decrypt the agent's reply (does the public key match the agent's private key?)"
                .to_owned(),
        ),
        other => Outcome::Failed(format!("protocol v1: {other}")),
    }
}

/// The reply of a parsed v1 response, or why there is none.
fn v1_reply(response: &HttpResponse) -> Outcome {
    match response.to_reply() {
        Some(reply) => Outcome::Reply(reply),
        None if response.code.is_none() && response.headers.is_empty() => {
            Outcome::Failed("connection closed without a reply".to_owned())
        }
        None => Outcome::Failed(format!(
            "protocol v1: reply without a valid status line (code {:?})",
            response.code.as_deref().unwrap_or("missing")
        )),
    }
}

impl AgentTransport {
    fn limits(&self) -> Limits {
        Limits {
            timeout: self.deadline,
            max_body: MAX_REPLY,
            ..Limits::default()
        }
    }

    /// The v2 handshake on `stream` (the shared secret, and the pinned key if any,
    /// proven both ways): the secure connection, or the outcome of a refusal or failure.
    async fn handshake(&self, stream: TcpStream) -> Result<SecureConnection<TcpStream>, Outcome> {
        let params = ClientParams {
            key_cipher: &self.key_cipher,
            pinned: self.public_key.as_deref(),
            now: unix_now(),
        };
        match handshake::client(stream, params).await {
            Ok(conn) => Ok(conn),
            Err(WireError::Refused { code, message }) => {
                Err(Outcome::Reply(Reply::error(code, message)))
            }
            Err(e) => Err(v2_failure(e)),
        }
    }

    /// Gives an idle connection to the pool for the next delivery to `target`, or
    /// closes it without one.
    async fn keep_or_close(&self, target: &Target, mut conn: SecureConnection<TcpStream>) {
        match &self.pool {
            Some(pool) => pool.put(target.address(), conn),
            None => {
                let _ = conn.get_mut().shutdown().await;
            }
        }
    }

    async fn exchange_v2(
        &self,
        target: &Target,
        stream: TcpStream,
        request: &Request,
        events: &mpsc::Sender<TaggedEvent>,
    ) -> Outcome {
        let mut conn = match self.handshake(stream).await {
            Ok(conn) => conn,
            Err(outcome) => return outcome,
        };
        match self.request_v2(&mut conn, request, events).await {
            Ok(reply) => {
                self.keep_or_close(target, conn).await;
                Outcome::Reply(reply)
            }
            Err(e) => e.outcome,
        }
    }

    /// One request on an established connection: send it, relay its events, return
    /// its reply.
    async fn request_v2(
        &self,
        conn: &mut SecureConnection<TcpStream>,
        request: &Request,
        events: &mpsc::Sender<TaggedEvent>,
    ) -> Result<Reply, V2Error> {
        let message = Message::Request {
            id: REQUEST_ID,
            request: request.clone(),
        };
        let fail = |stale: bool, e: WireError| V2Error {
            stale: stale && matches!(e, WireError::Closed | WireError::Io(_)),
            outcome: v2_failure(e),
        };
        conn.send(&message).await.map_err(|e| fail(true, e))?;
        // Only a proxy (asked with an API key) may say whose events it streams.
        let to_proxy = !request.api_key.is_empty();
        let mut received = false;
        loop {
            match conn.recv_tagged().await {
                Ok(Some((Message::Event { id, event }, host))) if id == REQUEST_ID => {
                    received = true;
                    let host = host.filter(|_| to_proxy);
                    // A closed receiver means nobody listens; the exchange goes on.
                    let _ = events.send(TaggedEvent { host, event }).await;
                }
                Ok(Some((Message::Continue { id }, _))) if id == REQUEST_ID => {
                    received = true;
                    send_body(conn, request).await?;
                }
                Ok(Some((
                    Message::Reply {
                        id,
                        code,
                        body,
                        text,
                    },
                    _,
                ))) if id == REQUEST_ID => return Ok(into_reply(code, body, text)),
                Ok(Some((other, _))) => {
                    return Err(V2Error {
                        stale: false,
                        outcome: Outcome::Failed(format!(
                            "protocol v2: unexpected message from the agent: {}",
                            String::from_utf8_lossy(&other.encode())
                                .chars()
                                .take(120)
                                .collect::<String>()
                        )),
                    })
                }
                Ok(None) => return Err(fail(!received, WireError::Closed)),
                Err(e) => return Err(fail(!received, e)),
            }
        }
    }

    fn form(&self, request: &Request) -> Form {
        Form {
            auth_key: make_auth_key(&self.key_cipher, unix_now()),
            options: request.options.clone(),
            args: request.args.clone(),
            api_key: request.api_key.clone(),
        }
    }

    async fn exchange_v1_plain(&self, mut stream: TcpStream, request: &Request) -> Outcome {
        let bytes = encode_request_escaped(&request.order, &self.form(request));
        if let Err(e) = stream.write_all(&bytes).await {
            return Outcome::Failed(format!("cannot send the request: {e}"));
        }
        let mut reader = BufReader::new(stream);
        match reader.fill_buf().await {
            Ok([0, ..]) => return v1_sees_v2(),
            Ok(head) if starts_with_ignore_case(head, b"ssl-length") => {
                return Outcome::Failed(
                    "protocol mismatch: the agent answered in v1 \"ssl\" mode; give its public key"
                        .to_owned(),
                )
            }
            Ok(_) => {}
            Err(e) => return Outcome::Failed(format!("cannot read the reply: {e}")),
        }
        match read_response(&mut reader, &self.limits()).await {
            Ok(response) => v1_reply(&response),
            Err(e) => v1_failure(e, self.deadline),
        }
    }

    async fn exchange_v1_ssl(
        &self,
        mut stream: TcpStream,
        request: &Request,
        key: &RsaPublicKey,
    ) -> Outcome {
        let crypto = || -> Result<_, LegacyError> {
            let passphrase = new_passphrase()?;
            let aes = wrap_passphrase(key, &passphrase)?;
            let plain = encode_request_escaped(&request.order, &self.form(request));
            let sealed = seal(&passphrase, &plain)?;
            Ok((passphrase, encode_ssl_request(&aes, &sealed)))
        };
        let (passphrase, bytes) = match crypto() {
            Ok(parts) => parts,
            Err(e) => return Outcome::Failed(format!("cannot encrypt the request: {e}")),
        };
        if let Err(e) = stream.write_all(&bytes).await {
            return Outcome::Failed(format!("cannot send the request: {e}"));
        }
        let mut reader = BufReader::new(stream);
        match reader.fill_buf().await {
            Ok([0, ..]) => return v1_sees_v2(),
            Ok(head) if starts_with_ignore_case(head, b"HTTP/") => {
                let limits = self.limits();
                let status = match read_response(&mut reader, &limits).await {
                    Ok(r) => format!(
                        "{} {}",
                        r.code.as_deref().unwrap_or_default(),
                        r.reason.as_deref().unwrap_or_default()
                    ),
                    Err(_) => String::new(),
                };
                let status = status.trim();
                let status = if status.is_empty() {
                    String::new()
                } else {
                    format!(" ({status})")
                };
                return Outcome::Failed(format!(
                    "protocol mismatch: the agent answered in v1 plain mode{status}; it is not configured for \"ssl\""
                ));
            }
            Ok(_) => {}
            Err(e) => return Outcome::Failed(format!("cannot read the reply: {e}")),
        }
        let limits = self.limits();
        let (_, ciphertext) = match read_ssl_response(&mut reader, &limits).await {
            Ok(parts) => parts,
            Err(e) => return v1_failure(e, self.deadline),
        };
        match open_response(&passphrase, &ciphertext) {
            Ok(response) => v1_reply(&response),
            Err(e) => v1_failure(e, self.deadline),
        }
    }
}

/// Sends the body the agent asked for: the `upload` files as one tar stream, in
/// [`CHUNK`](crate::upload::tar::CHUNK)-sized `data` messages, then `end`. If the files
/// cannot be read the connection is dropped mid-body, so that the agent never takes a
/// cut archive for a whole one.
async fn send_body(
    conn: &mut SecureConnection<TcpStream>,
    request: &Request,
) -> Result<(), V2Error> {
    let failed = |why: String| V2Error {
        stale: false,
        outcome: Outcome::Failed(why),
    };
    if let Some(body) = &request.body {
        return send_shared(conn, body).await;
    }
    let Some(spec) = request.upload.as_deref().filter(|s| !s.files.is_empty()) else {
        return Err(failed(
            "the agent asked for a body, but this order has none".to_owned(),
        ));
    };
    let manifest = crate::upload::manifest(spec).await.map_err(failed)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let producer = tokio::spawn(async move {
        crate::upload::tar::stream(&manifest, |chunk| {
            let tx = tx.clone();
            async move { tx.send(chunk).await.map_err(|_| "the agent went away") }
        })
        .await
    });
    while let Some(chunk) = rx.recv().await {
        conn.send(&Message::data(REQUEST_ID, &chunk, false))
            .await
            .map_err(|e| failed(format!("sending the upload: {e}")))?;
    }
    match producer.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(failed(format!("upload stopped: {e}"))),
        Err(e) => return Err(failed(format!("upload stopped: internal error: {e}"))),
    }
    conn.send(&Message::data(REQUEST_ID, &[], true))
        .await
        .map_err(|e| failed(format!("sending the upload: {e}")))
}

/// Sends a body a proxy receives (see [`crate::upload::body`]), from its start, at this
/// agent's pace (following the caller's as it arrives); a cut body drops the connection
/// mid-body, which the agent takes as a cut upload.
async fn send_shared(
    conn: &mut SecureConnection<TcpStream>,
    body: &crate::upload::body::SharedBody,
) -> Result<(), V2Error> {
    let failed = |why: String| V2Error {
        stale: false,
        outcome: Outcome::Failed(why),
    };
    let mut offset = 0u64;
    loop {
        let chunk = body
            .chunk_at(offset)
            .await
            .map_err(|e| failed(format!("relaying the body: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        conn.send(&Message::data(REQUEST_ID, &chunk, false))
            .await
            .map_err(|e| failed(format!("sending the body: {e}")))?;
    }
    conn.send(&Message::data(REQUEST_ID, &[], true))
        .await
        .map_err(|e| failed(format!("sending the body: {e}")))
}

/// A v1 client got a v2 frame (which starts with a 0 length byte) back.
fn v1_sees_v2() -> Outcome {
    Outcome::Failed(
        "protocol mismatch: the peer answered in protocol v2; use protocol v2 for it".to_owned(),
    )
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}
