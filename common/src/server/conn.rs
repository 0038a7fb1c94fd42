//! One accepted connection, whatever its protocol.
//!
//! Before anything is read, the peer is checked against `[allow::hosts]` and its
//! connection cap (`max_connections_per_peer`, [`super::peers`]); a refused peer's
//! connection is closed at once, with no reply, so it can neither hold a slot while it
//! stalls nor cause a private-key operation.
//!
//! The first byte tells the protocols apart: `0x00` starts a v2 connection
//! ([`crate::wire::MAGIC`]); `aes:` or `WHO` a v1 "ssl" request; anything else a v1 plain
//! request. Then, in the original's order: for v1 the method (405) and `auth_key` (401),
//! the order in the URL or message (404), and finally the program's [`Handler`], bounded
//! by `max_process_timeout` (408). Every request gets a reply or a closed socket, never a
//! hung one, and one access-log line.
//!
//! v1 "ssl" has no MAC, so after the RSA unwrap every failure (no passphrase, bad
//! padding, not a request, wrong `auth_key` — checked first) gets one answer: the sealed
//! empty 401 a wrong key gets, of the same length; a peer with `ssl_max_failures`
//! failures within a minute has its v1 ssl refused for a while (see [`super::peers`]).
//! A v1 "ssl" caller this server does not serve (`legacy_protocol = off`, `ssl = off`)
//! gets its refusal sealed with its passphrase when the server has its private key, so
//! that the Perl client can print it; in plain text when it has none.

use super::peers::{LogRate, PeerLimits, PeerTable};
use crate::access::HostAllowList;
use crate::crypto::keys::RsaPrivateKey;
use crate::legacy::{self, http, ssl, Limits};
use crate::order::{OrderName, Reply, Request};
use crate::wire::frame::RecordBudget;
use crate::wire::handshake::{self, ServerParams};
use crate::wire::message::{Event, Message, TaggedEvent};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many bytes of v2 records a worker holds while they arrive, all connections
/// together (see [`RecordBudget`]).
pub const RECORD_MEMORY: usize = 64 << 20;

/// How long a v2 connection may sit idle between requests.
pub const V2_IDLE: Duration = Duration::from_secs(60);

/// What a program does with an authenticated, well-formed request.
pub trait Handler: Send + Sync + 'static {
    /// Whether `order` names something this program serves (otherwise 404).
    fn knows(&self, order: &str) -> bool;

    /// Runs the request. Events sent on `events` are streamed to v2 clients (and
    /// dropped for v1 ones, see [`Events::wanted`]); the returned reply ends the request.
    /// Output lines and progress are meant for clients that set `request.follow`.
    fn handle(
        &self,
        peer: SocketAddr,
        request: Request,
        events: Events,
    ) -> impl Future<Output = Reply> + Send;
}

/// Where a handler sends streamed events, and where it gets the request's body from
/// (v2 only, see [`Events::body`]).
#[derive(Clone, Debug, Default)]
pub struct Events {
    tx: Option<mpsc::Sender<TaggedEvent>>,
    body: Option<Arc<BodySlot>>,
}

/// A piece of a request's body (see [`Events::body`]).
#[derive(Debug, PartialEq, Eq)]
pub enum BodyChunk {
    /// Some bytes.
    Data(Vec<u8>),
    /// The client sent the whole body. A channel that closes without it means the body
    /// was cut short (the client went away or stalled): the order must not use it.
    End,
}

/// The body of one v2 request, until its handler asks for it.
#[derive(Debug)]
struct BodySlot {
    ready: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<BodyChunk>>>,
}

/// Pieces of a body buffered between the connection and its handler.
const BODY_QUEUE: usize = 8;

/// The longest `data` message: 64 KiB of bytes in base64 (so at most
/// `BODY_QUEUE + 1` such pieces, about 600 KiB, are held per connection).
const MAX_DATA_B64: usize = (64usize << 10).div_ceil(3) * 4;

impl From<mpsc::Sender<TaggedEvent>> for Events {
    /// A sink that forwards to a channel (e.g. an HTTP stream).
    fn from(tx: mpsc::Sender<TaggedEvent>) -> Events {
        Events {
            tx: Some(tx),
            body: None,
        }
    }
}

impl Events {
    /// A sink that forwards to `tx`, with a body the client sends once asked: `ready`
    /// fires when the handler asks ([`Events::body`]), then the pieces come on `rx`.
    /// For transports other than a v2 connection (NATS).
    pub fn with_body(
        tx: mpsc::Sender<TaggedEvent>,
        ready: tokio::sync::oneshot::Sender<()>,
        rx: mpsc::Receiver<BodyChunk>,
    ) -> Events {
        Events {
            tx: Some(tx),
            body: Some(Arc::new(BodySlot {
                ready: std::sync::Mutex::new(Some(ready)),
                rx: std::sync::Mutex::new(Some(rx)),
            })),
        }
    }

    /// A sink that drops everything (v1, or a client that did not ask to follow).
    pub fn none() -> Events {
        Events::default()
    }

    /// Whether anybody listens (a v2 client; v1 has no way to receive events).
    pub fn wanted(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether the client can send a body (v2; not v1, nor the HTTP API).
    pub fn can_have_body(&self) -> bool {
        self.body.is_some()
    }

    /// Asks the client for the request's body and returns its pieces as they arrive
    /// (the client is told to send it now: call this once ready to take it, after any
    /// check that could refuse the order). `None` if there can be none: v1, the HTTP
    /// API, or asked already. While the body flows no event reaches the client (they
    /// wait, 64 at most): a handler should send none until it has read the body's end.
    pub fn body(&self) -> Option<mpsc::Receiver<BodyChunk>> {
        let slot = self.body.as_ref()?;
        let rx = slot
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        if let Some(ready) = slot
            .ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = ready.send(());
        }
        Some(rx)
    }

    /// Sends one event, waiting if the client reads slowly; a gone client is ignored.
    pub async fn send(&self, event: Event) {
        self.send_tagged(TaggedEvent::from(event)).await;
    }

    /// Sends one event about another host (a proxy relaying an agent's output lines or
    /// progress), tagged with its name; see [`TaggedEvent`].
    pub async fn send_for(&self, host: &str, event: Event) {
        self.send_tagged(TaggedEvent::about(host, event)).await;
    }

    async fn send_tagged(&self, event: TaggedEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event).await;
        }
    }
}

/// The connection-level policy of a server, rebuilt when the config is reloaded.
pub struct Policy {
    /// `[allow::hosts]`.
    pub allow_hosts: HostAllowList,
    /// Accept the original's v1 wire (`legacy_protocol`).
    pub legacy: bool,
    /// v1 plain requests are refused when `ssl = on` (the original's ends had to agree).
    pub v1_plain: bool,
    /// v1 "ssl" requests are refused when `ssl = off` (`on` and `both` serve them).
    pub v1_ssl: bool,
    /// The shared secret: v1 `auth_key` and v2 pre-shared key.
    pub key_cipher: String,
    /// Check v1 `auth_key` (the agent does; the original proxy ignored it).
    pub check_v1_auth: bool,
    /// RSA key for v2 server authentication and v1 ssl. A legacy key (under 2048 bits,
    /// taken only with `legacy_protocol` and `ssl` on) serves v1 ssl alone: v2 runs as
    /// if there were no key.
    pub private_key: Option<Arc<RsaPrivateKey>>,
    /// What to say about a legacy `ssl_private_key`, at start-up and in `--check`.
    pub key_warning: Option<String>,
    /// Bound on reading a request (the original's `socket_timeout`).
    pub socket_timeout: Duration,
    /// Bound on running one request (`max_process_timeout`).
    pub request_timeout: Option<Duration>,
    /// First URL segments accepted for v1 (`agent`; the proxy also takes `api`).
    pub v1_prefixes: &'static [&'static str],
    /// Live connections and v1 ssl failures per peer (this worker's).
    pub peers: PeerTable,
    /// Bound on the memory of v2 records being received (this worker's).
    pub records: RecordBudget,
    /// Rate of the warnings about connections refused at accept (a flood of them must
    /// not become a flood of log lines).
    pub refusals: LogRate,
}

/// Why a [`Policy`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The RSA key could not be loaded.
    #[error(transparent)]
    Key(#[from] crate::crypto::keys::KeyError),
    /// `ssl = true` without a key.
    #[error("[server] ssl = true needs ssl_private_key")]
    SslWithoutKey,
}

impl Policy {
    /// The policy a `[server]` section describes (loading `ssl_private_key`), with the
    /// program's own peers list, v1 authentication rule and URL prefixes.
    pub fn new(
        server: &crate::config::ServerConfig,
        allow_hosts: HostAllowList,
        check_v1_auth: bool,
        v1_prefixes: &'static [&'static str],
    ) -> Result<Policy, PolicyError> {
        // A key under 2048 bits is taken only where it is used for the v1 "ssl" mode,
        // which fleets migrating from the Perl deploy need; v2 never uses it.
        let v1_ssl = server.legacy_protocol && server.ssl;
        let private_key = match &server.ssl_private_key {
            Some(path) if v1_ssl => Some(Arc::new(RsaPrivateKey::load_v1(path)?)),
            Some(path) => Some(Arc::new(RsaPrivateKey::load(path)?)),
            None => None,
        };
        let key_warning = match (&server.ssl_private_key, &private_key) {
            (Some(path), Some(key)) if key.is_legacy() => Some(format!(
                "[server] ssl_private_key {}: a {}-bit RSA key, accepted for the v1 \"ssl\" mode \
                 only (legacy); v2 does not use it and v2 clients cannot pin it. Replace it with a \
                 key of at least {} bits (openssl genrsa 3072) on the agents and their callers",
                path.display(),
                key.bits(),
                crate::crypto::MIN_RSA_BITS
            )),
            _ => None,
        };
        if let Some(warning) = &key_warning {
            tracing::warn!("{warning}");
        }
        if server.ssl && private_key.is_none() {
            return Err(PolicyError::SslWithoutKey);
        }
        Ok(Policy {
            allow_hosts,
            legacy: server.legacy_protocol,
            v1_plain: !server.ssl || server.ssl_both,
            v1_ssl: server.ssl,
            key_cipher: server.key_cipher.clone(),
            check_v1_auth,
            private_key,
            key_warning,
            socket_timeout: server.socket_timeout,
            request_timeout: server.max_process_timeout,
            v1_prefixes,
            peers: PeerTable::new(PeerLimits {
                connections: usize::try_from(server.max_connections_per_peer).unwrap_or(usize::MAX),
                ssl_failures: server.ssl_max_failures,
            }),
            records: RecordBudget::new(RECORD_MEMORY),
            refusals: LogRate::new(Duration::from_secs(1)),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    V2,
    V1Plain,
    V1Ssl,
    Nats,
}

impl Wire {
    fn name(self) -> &'static str {
        match self {
            Wire::V2 => "v2",
            Wire::V1Plain => "v1",
            Wire::V1Ssl => "v1-ssl",
            Wire::Nats => "nats",
        }
    }
}

fn detect(first: &[u8]) -> Wire {
    let lower: Vec<u8> = first.iter().take(4).map(u8::to_ascii_lowercase).collect();
    if first.first() == Some(&0) {
        Wire::V2
    } else if lower.starts_with(b"aes:") || lower.starts_with(b"who") {
        Wire::V1Ssl
    } else {
        Wire::V1Plain
    }
}

/// Writes the access-log line of a connection closed before anything was read from it.
fn refused(peer: SocketAddr, code: u16) {
    super::log::access(peer.ip(), "", "-", code, 0, Duration::ZERO, &[]);
}

/// Writes the access-log line of one request.
fn access(
    peer: SocketAddr,
    wire: Wire,
    request: Option<&Request>,
    code: u16,
    bytes: usize,
    started: Instant,
) {
    let order = request.map(|r| r.order.as_str()).unwrap_or("");
    let options = request.map(|r| r.options.as_str()).unwrap_or("");
    // Who asked for what: the API key's short hash (never the key), the proxy's target
    // selection (`groups:…`/`hosts:…`) and a `run`'s command, when there are any.
    let key = request
        .filter(|r| !r.api_key.trim().is_empty())
        .map(|r| super::log::key_id(&r.api_key));
    // A relay order's token (a password for its peers) is not logged.
    let args = request
        .map(|r| crate::rsync::relay::redact(&r.args))
        .filter(|a| !a.is_empty());
    let argv = request
        .filter(|r| !r.argv.is_empty())
        .map(|r| super::log::argv_text(&r.argv));
    let mut extra: Vec<(&str, &dyn std::fmt::Display)> = vec![("options", &options)];
    if let Some(args) = &args {
        extra.push(("args", args));
    }
    if let Some(key) = &key {
        extra.push(("key", key));
    }
    if let Some(argv) = &argv {
        extra.push(("argv", argv));
    }
    super::log::access(
        peer.ip(),
        order,
        wire.name(),
        code,
        u64::try_from(bytes).unwrap_or(u64::MAX),
        started.elapsed(),
        &extra,
    );
}

async fn run_bounded<H: Handler>(
    handler: &H,
    policy: &Policy,
    peer: SocketAddr,
    request: Request,
    events: Events,
) -> Reply {
    // A timed order's wait for its instant does not count against the limit.
    let waiting =
        crate::order::at::wait_of(request.at, request.max_wait, crate::order::at::now_ms());
    let fut = handler.handle(peer, request, events);
    match policy.request_timeout.map(|limit| limit + waiting) {
        Some(limit) => match tokio::time::timeout(limit, fut).await {
            Ok(reply) => reply,
            Err(_) => Reply::error(
                408,
                format!(
                    "order did not finish within max_process_timeout ({} s)",
                    limit.as_secs()
                ),
            ),
        },
        None => fut.await,
    }
}

/// Serves one request that came by another way than a connection (an agent's NATS
/// subscription, already authenticated by its envelope): the order checked (404), the
/// handler bounded by `max_process_timeout` (408), one access-log line with wire
/// `nats` and the peer `peer` stands for. Returns the reply.
pub async fn serve_request<H: Handler>(
    handler: &H,
    policy: &Policy,
    peer: SocketAddr,
    request: Request,
    events: Events,
) -> Reply {
    let started = Instant::now();
    let reply = if handler.knows(&request.order) {
        run_bounded(handler, policy, peer, request.clone(), events).await
    } else {
        Reply::error(404, format!("unknown order {:?}", request.order))
    };
    let size = crate::wire::message::Message::reply(0, &reply)
        .encode()
        .len();
    access(peer, Wire::Nats, Some(&request), reply.code, size, started);
    reply
}

/// Serves one accepted connection to the end. Never panics; every failure is logged and
/// ends the connection.
///
/// `shutdown` ends an idle v2 connection between requests (a request in progress
/// finishes first).
pub async fn serve<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    policy: Arc<Policy>,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    // The peer is checked before anything is read from it (and before any private-key
    // operation): a refused or over-cap peer costs one accept and one close, and never
    // holds a connection slot while it stalls.
    if !policy.allow_hosts.allows(peer.ip()) {
        if let Some(suppressed) = policy.refusals.admit() {
            tracing::warn!(peer = %peer.ip(), suppressed, "peer not allowed by [allow::hosts]; connection closed");
        }
        refused(peer, 403);
        return;
    }
    let Some(_slot) = policy.peers.enter(peer.ip()) else {
        if let Some(suppressed) = policy.refusals.admit() {
            tracing::warn!(
                peer = %peer.ip(),
                suppressed,
                "too many connections from this peer (max_connections_per_peer); connection closed"
            );
        }
        refused(peer, 503);
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut stream = BufStream::new(stream);
    let first = match tokio::time::timeout(policy.socket_timeout, stream.fill_buf()).await {
        Ok(Ok(buf)) if !buf.is_empty() => detect(buf),
        Ok(Ok(_)) => return,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, cause = %e, "read failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "no request within socket_timeout");
            return;
        }
    };
    let started = Instant::now();
    let result = match first {
        Wire::V2 => serve_v2(&mut stream, peer, &policy, &*handler, &shutdown).await,
        legacy_wire if !policy.legacy => {
            let reply = Reply::error(
                400,
                "the legacy (v1) protocol is disabled on this server; use a v2 client or set legacy_protocol = on",
            );
            if legacy_wire == Wire::V1Ssl {
                return log_end(
                    peer,
                    refuse_v1_ssl(&mut stream, peer, &policy, &reply).await,
                );
            }
            let bytes = http::encode_response(&reply);
            access(peer, legacy_wire, None, reply.code, bytes.len(), started);
            write_all_and_close(&mut stream, &bytes)
                .await
                .map_err(Into::into)
        }
        Wire::V1Plain => serve_v1_plain(&mut stream, peer, &policy, &*handler).await,
        Wire::V1Ssl => serve_v1_ssl(&mut stream, peer, &policy, &*handler).await,
        // Never detected on a socket: NATS orders come through `serve_request`.
        Wire::Nats => Err("not a connection protocol".into()),
    };
    log_end(peer, result);
}

/// Logs how a connection ended, if with an error.
fn log_end(peer: SocketAddr, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!(peer = %peer, cause = %e, "connection ended with an error");
    }
}

async fn write_all_and_close(
    stream: &mut BufStream<TcpStream>,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    stream.get_mut().shutdown().await
}

/// v1 checks after parsing: method (405), auth_key (401), URL (404). Returns the request
/// as far as it could be read (for the access log) and, on failure, the error reply.
fn v1_request(
    req: &http::HttpRequest,
    policy: &Policy,
    knows: impl Fn(&str) -> bool,
) -> (Request, Option<Reply>) {
    let form = req.form();
    let segments = req.path_segments();
    let mut request = Request {
        order: segments.get(1).cloned().unwrap_or_default(),
        options: form.options,
        args: form.args,
        api_key: form.api_key,
        ..Request::default()
    };
    // The original proxy's path form, /<api|agent>/<order>/<options>/<args>/<api_key>:
    // non-empty segments override the form (a proxy-only feature, spec §6.1).
    if policy.v1_prefixes.contains(&"api") {
        let fields = [
            &mut request.options,
            &mut request.args,
            &mut request.api_key,
        ];
        for (field, segment) in fields.into_iter().zip(segments.iter().skip(2)) {
            if !segment.is_empty() {
                *field = segment.clone();
            }
        }
    }
    if req.method != "GET" && req.method != "POST" {
        return (request, Some(Reply::empty(405)));
    }
    if policy.check_v1_auth
        && !legacy::auth::verify_auth_key(&policy.key_cipher, &form.auth_key, super::unix_now())
    {
        return (request, Some(Reply::empty(401)));
    }
    let prefix_ok = segments
        .first()
        .is_some_and(|s| policy.v1_prefixes.contains(&s.as_str()));
    // The v1 wire carries the original's five orders only.
    let legacy_order = OrderName::LEGACY
        .iter()
        .any(|o| o.as_str() == request.order);
    if !prefix_ok || !legacy_order || !knows(&request.order) {
        return (request, Some(Reply::empty(404)));
    }
    (request, None)
}

/// Runs a v1 request that passed its checks, or returns the check's error reply.
async fn v1_run<H: Handler>(
    parsed: &http::HttpRequest,
    policy: &Policy,
    handler: &H,
    peer: SocketAddr,
) -> (Request, Reply) {
    match v1_request(parsed, policy, |o| handler.knows(o)) {
        (request, None) => {
            let reply = run_bounded(handler, policy, peer, request.clone(), Events::none()).await;
            (request, reply)
        }
        (request, Some(reply)) => (request, reply),
    }
}

fn limits(policy: &Policy) -> Limits {
    Limits {
        timeout: policy.socket_timeout,
        ..Limits::default()
    }
}

/// Answers a v1 request (sealed with the request's passphrase in ssl mode), logs it and
/// closes the connection.
async fn v1_answer(
    stream: &mut BufStream<TcpStream>,
    peer: SocketAddr,
    request: Option<&Request>,
    reply: &Reply,
    passphrase: Option<&[u8]>,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let plain = http::encode_response(reply);
    let (wire, bytes) = match passphrase {
        None => (Wire::V1Plain, plain),
        Some(pass) => (
            Wire::V1Ssl,
            ssl::encode_ssl_response(&ssl::seal(pass, &plain)?),
        ),
    };
    access(peer, wire, request, reply.code, bytes.len(), started);
    Ok(write_all_and_close(stream, &bytes).await?)
}

async fn serve_v1_plain<H: Handler>(
    stream: &mut BufStream<TcpStream>,
    peer: SocketAddr,
    policy: &Policy,
    handler: &H,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let refuse = |code: u16, text: String| Reply::error(code, text);
    let parsed = match http::read_request(stream, &limits(policy)).await {
        Ok(Some(req)) => req,
        Ok(None) => return Ok(()),
        Err(e) => {
            let reply = match e {
                legacy::LegacyError::Timeout => {
                    refuse(408, "request not received within socket_timeout".into())
                }
                e => refuse(400, format!("malformed request: {e}")),
            };
            return v1_answer(stream, peer, None, &reply, None, started).await;
        }
    };
    if !policy.v1_plain {
        let reply = refuse(400, "this server requires the ssl mode (ssl = true)".into());
        return v1_answer(stream, peer, None, &reply, None, started).await;
    }
    let (request, reply) = v1_run(&parsed, policy, handler, peer).await;
    if reply.code == 401 {
        tracing::warn!(peer = %peer.ip(), order = %request.order, "v1 request refused: wrong or expired auth_key");
    }
    v1_answer(stream, peer, Some(&request), &reply, None, started).await
}

async fn serve_v1_ssl<H: Handler>(
    stream: &mut BufStream<TcpStream>,
    peer: SocketAddr,
    policy: &Policy,
    handler: &H,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    if !policy.v1_ssl {
        let reply = Reply::error(
            400,
            "this server does not serve the v1 ssl mode (ssl = off); use the plain mode",
        );
        // Sealed when the server has its private key (loaded for v2), so that the Perl
        // client prints the reason rather than `Protocol mismatch.`; in plain text
        // without one. As when v1 is off altogether.
        return refuse_v1_ssl(stream, peer, policy, &reply).await;
    }
    let Some(key) = policy.private_key.clone() else {
        // Not configured for ssl: answer in plain text, as a plain server would, but
        // explicitly.
        let reply = Reply::error(
            400,
            "this server has no ssl_private_key; use the plain mode",
        );
        return v1_answer(stream, peer, None, &reply, None, started).await;
    };
    // From here on every failure — passphrase not unwrapped, bad padding, not a request,
    // wrong auth_key — gets the very same answer: a sealed, empty 401, as a wrong key
    // always got. (Without a passphrase it is sealed under a random one.) Otherwise the
    // difference between "bad padding" and "good padding" is a decryption oracle.
    let Some((passphrase, opened)) = open_v1_ssl(stream, peer, policy, &key, started).await? else {
        return Ok(());
    };
    // The auth_key is checked before anything else the plaintext could show (a method
    // that is not GET/POST would otherwise answer 405 to a request with a wrong key).
    let opened = opened.and_then(|parsed| {
        let authentic = !policy.check_v1_auth
            || legacy::auth::verify_auth_key(
                &policy.key_cipher,
                &parsed.form().auth_key,
                super::unix_now(),
            );
        if authentic {
            Ok(parsed)
        } else {
            Err(legacy::LegacyError::Crypto)
        }
    });
    let (request, reply) = match opened {
        Ok(parsed) => {
            let (request, reply) = v1_run(&parsed, policy, handler, peer).await;
            (Some(request), reply)
        }
        Err(_) => (None, Reply::empty(401)),
    };
    if reply.code == 401 {
        tracing::warn!(
            peer = %peer.ip(),
            "v1 ssl request refused: it could not be decrypted or its auth_key is wrong"
        );
        if policy.peers.ssl_failed(peer.ip()) {
            tracing::warn!(
                peer = %peer.ip(),
                refused_for_s = super::peers::SSL_REFUSAL.as_secs(),
                "too many failed v1 ssl requests from this peer (ssl_max_failures); its v1 ssl is refused for a while"
            );
        }
    }
    v1_answer(
        stream,
        peer,
        request.as_ref(),
        &reply,
        Some(&passphrase),
        started,
    )
    .await
}

/// Reads a v1 "ssl" request and opens it with `key` ([`ssl::open_request_uniform`]):
/// the passphrase to seal the answer with and the request (or why it could not be
/// opened, all failures alike). `None` when there is nothing to answer: the peer closed,
/// sent a broken envelope (closed, logged) or is refused for its failures
/// (`ssl_max_failures`: closed before any private-key operation).
async fn open_v1_ssl(
    stream: &mut BufStream<TcpStream>,
    peer: SocketAddr,
    policy: &Policy,
    key: &RsaPrivateKey,
    started: Instant,
) -> Result<
    Option<(Vec<u8>, Result<http::HttpRequest, legacy::LegacyError>)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    if policy.peers.ssl_refused(peer.ip()) {
        // Closed before reading: no private-key operation, no answer to learn from.
        tracing::warn!(
            peer = %peer.ip(),
            "v1 ssl refused: too many failed requests from this peer (ssl_max_failures)"
        );
        access(peer, Wire::V1Ssl, None, 429, 0, started);
        let _ = stream.get_mut().shutdown().await;
        return Ok(None);
    }
    // A framing error comes before any private-key operation and says nothing about the
    // secret: it closes.
    let (head, ciphertext) = match ssl::read_ssl_request(stream, &limits(policy)).await {
        Ok(None) => return Ok(None),
        Ok(Some(message)) => message,
        Err(e) => {
            access(peer, Wire::V1Ssl, None, 400, 0, started);
            let _ = stream.get_mut().shutdown().await;
            return Err(Box::new(e));
        }
    };
    Ok(Some(ssl::open_request_uniform(key, &head, &ciphertext)?))
}

/// Refuses a v1 "ssl" caller when `legacy_protocol = off` (or `ssl = off`) with
/// `reply`. With its
/// private key (loaded for v2) the server reads the request and seals the refusal with
/// the caller's passphrase, so that the Perl client prints the reason; a refusal in
/// plain text is all it could show as `Protocol mismatch.`. Without the key, plain text
/// is the only answer there is. A request that does not open counts towards the peer's
/// `ssl_max_failures`, as on the served path.
async fn refuse_v1_ssl(
    stream: &mut BufStream<TcpStream>,
    peer: SocketAddr,
    policy: &Policy,
    reply: &Reply,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let Some(key) = policy.private_key.clone() else {
        return v1_answer(stream, peer, None, reply, None, started).await;
    };
    match open_v1_ssl(stream, peer, policy, &key, started).await? {
        // Sealed whether or not the request opened: a caller without the agent's
        // public key learns nothing it could not read in plain text before.
        Some((passphrase, opened)) => {
            if opened.is_err() && policy.peers.ssl_failed(peer.ip()) {
                tracing::warn!(
                    peer = %peer.ip(),
                    refused_for_s = super::peers::SSL_REFUSAL.as_secs(),
                    "too many failed v1 ssl requests from this peer (ssl_max_failures); its v1 ssl is refused for a while"
                );
            }
            v1_answer(stream, peer, None, reply, Some(&passphrase), started).await
        }
        None => Ok(()),
    }
}

async fn serve_v2<H: Handler>(
    stream: &mut BufStream<TcpStream>,
    peer: SocketAddr,
    policy: &Policy,
    handler: &H,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let params = ServerParams {
        key_cipher: &policy.key_cipher,
        // A legacy key is the v1 ssl mode's only.
        private_key: policy.private_key.as_deref().filter(|k| !k.is_legacy()),
        now: super::unix_now(),
    };
    let mut conn = match tokio::time::timeout(
        policy.socket_timeout,
        handshake::server(&mut *stream, params),
    )
    .await
    {
        Ok(Ok(mut conn)) => {
            conn.set_record_budget(policy.records.clone());
            conn
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer.ip(), cause = %e, "v2 handshake failed");
            access(peer, Wire::V2, None, 401, 0, Instant::now());
            return Err(Box::new(e));
        }
        Err(_) => return Err("handshake timed out".into()),
    };
    let mut first = true;
    loop {
        let is_first = first;
        let idle = if first {
            policy.socket_timeout
        } else {
            V2_IDLE
        };
        first = false;
        // A worker told to stop still answers a fresh connection's first request: the
        // client connected to the shared socket in good faith (a reload loses none).
        let next = tokio::select! {
            _ = shutdown.cancelled(), if !is_first => return Ok(()),
            next = tokio::time::timeout(idle, conn.recv()) => next,
        };
        let message = match next {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(Box::new(e)),
        };
        let started = Instant::now();
        let Message::Request { id, request } = message else {
            return Err("unexpected message from client".into());
        };
        // Every v2 request gets an event channel: a proxy streams each agent's result
        // on it; an agent streams output only when the client asked to `follow`.
        // `cut`: the order ended before its body did, the connection is out of step.
        let (reply, cut) = if !handler.knows(&request.order) {
            (
                Reply::error(404, format!("unknown order {:?}", request.order)),
                false,
            )
        } else {
            let (tx, mut rx) = mpsc::channel::<TaggedEvent>(64);
            let (ready_tx, mut ready_rx) = tokio::sync::oneshot::channel();
            let (body_tx, body_rx) = mpsc::channel(BODY_QUEUE);
            let events = Events {
                tx: Some(tx),
                body: Some(Arc::new(BodySlot {
                    ready: std::sync::Mutex::new(Some(ready_tx)),
                    rx: std::sync::Mutex::new(Some(body_rx)),
                })),
            };
            let work = run_bounded(handler, policy, peer, request.clone(), events);
            tokio::pin!(work);
            let mut events_open = true;
            let mut body_tx = Some(body_tx);
            let mut cut = false;
            let reply = loop {
                tokio::select! {
                    reply = &mut work => {
                        // Flush what the handler queued before it returned.
                        while let Ok(event) = rx.try_recv() {
                            conn.send_event(id, &event).await?;
                        }
                        break reply;
                    }
                    event = rx.recv(), if events_open => match event {
                        Some(event) => conn.send_event(id, &event).await?,
                        None => events_open = false,
                    },
                    // The caller went away: dropping `work` stops what it started.
                    () = peer_closed(conn.get_ref().get_ref()) => {
                        access(peer, Wire::V2, Some(&request), 499, 0, started);
                        return Err("the client closed the connection during the order; order stopped".into());
                    }
                    asked = &mut ready_rx, if body_tx.is_some() => {
                        let Some(tx) = body_tx.take() else { continue };
                        if asked.is_err() {
                            continue;
                        }
                        conn.send(&Message::Continue { id }).await?;
                        match receive_body(&mut conn, id, tx, &mut work, policy.socket_timeout).await? {
                            None => {}
                            Some(reply) => {
                                cut = true;
                                break reply;
                            }
                        }
                    }
                }
            };
            (reply, cut)
        };
        let message = Message::reply(id, &reply);
        let size = message.encode().len();
        conn.send(&message).await?;
        access(peer, Wire::V2, Some(&request), reply.code, size, started);
        if cut {
            // Read what the client still sends (the rest of its body) for a while
            // before closing: closing with unread data would reset the connection
            // and could destroy the reply before the client reads it.
            let stream = conn.get_mut();
            let _ = stream.flush().await;
            let drain = async {
                let mut sink = [0u8; 16 << 10];
                let idle = policy.socket_timeout;
                while matches!(
                    tokio::time::timeout(idle, stream.read(&mut sink)).await,
                    Ok(Ok(n)) if n > 0
                ) {}
            };
            let _ = tokio::time::timeout(V2_IDLE, drain).await;
            return Ok(());
        }
    }
}

/// Resolves when the peer has closed its side of `stream` (EOF, or an error, on a
/// peek); stays pending while the peer is silent or has sent more (which is left
/// unread for the connection).
async fn peer_closed(stream: &TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match stream.peek(&mut byte).await {
            Ok(0) | Err(_) => return,
            Ok(_) => std::future::pending::<()>().await,
        }
    }
}

/// Receives the body of request `id` into `tx` until its `end` (then `None`), while
/// `work` runs; `Some(reply)` if the order ended first (the rest of the body is then
/// unread: the caller closes the connection after the reply). A client that sends
/// nothing for `idle` ends the connection, and the order sees its body cut short.
async fn receive_body<F: Future<Output = Reply>>(
    conn: &mut crate::wire::connection::SecureConnection<&mut BufStream<TcpStream>>,
    id: u64,
    tx: mpsc::Sender<BodyChunk>,
    work: &mut std::pin::Pin<&mut F>,
    idle: Duration,
) -> Result<Option<Reply>, Box<dyn std::error::Error + Send + Sync>> {
    use base64::Engine as _;
    let mut tx = Some(tx);
    loop {
        let next = tokio::select! {
            reply = work.as_mut() => return Ok(Some(reply)),
            next = tokio::time::timeout(idle, conn.recv()) => next,
        };
        let (data, end) = match next {
            Ok(Ok(Some(Message::Data { id: of, data, end }))) if of == id => (data, end),
            Ok(Ok(Some(_))) => return Err("protocol v2: expected the request's body".into()),
            Ok(Ok(None)) => return Err("the client went away during the request's body".into()),
            Ok(Err(e)) => return Err(Box::new(e)),
            Err(_) => return Err("request body: nothing received within socket_timeout".into()),
        };
        if data.len() > MAX_DATA_B64 {
            return Err(format!(
                "request body: a data message of {} bytes (at most {MAX_DATA_B64})",
                data.len()
            )
            .into());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| format!("request body: bad base64: {e}"))?;
        let mut chunks = Vec::with_capacity(2);
        if !bytes.is_empty() {
            chunks.push(BodyChunk::Data(bytes));
        }
        if end {
            chunks.push(BodyChunk::End);
        }
        for chunk in chunks {
            // A handler that stopped reading gets no more; the body is still read to its
            // end so that the connection stays in step.
            if let Some(sender) = &tx {
                tokio::select! {
                    sent = sender.send(chunk) => if sent.is_err() { tx = None },
                    reply = work.as_mut() => return Ok(Some(reply)),
                }
            }
        }
        if end {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect(b"\0DEPLOY\x02"), Wire::V2);
        assert_eq!(detect(b"aes:QV"), Wire::V1Ssl);
        assert_eq!(detect(b"WHO\r\n"), Wire::V1Ssl);
        assert_eq!(detect(b"POST /agent"), Wire::V1Plain);
        assert_eq!(detect(b"G"), Wire::V1Plain);
    }
}
