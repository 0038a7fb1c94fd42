//! In-process clients of the three wires a server speaks: [`call`] (one order over a
//! chosen [`Proto`]), [`v2`], [`v2_connect`], [`v2_exchange`], [`v1_plain`], [`v1_ssl`],
//! [`v1_raw`], [`v1_ssl_raw`]. Every network operation runs under
//! [`tokio::time::timeout`], so a hung server fails the test instead of hanging it.

use crate::env::{agent_public_key, unix_now, IO_TIMEOUT, KEY};
use crate::net::{connect, read_to_eof};
use deploy_common::crypto::keys::RsaPublicKey;
use deploy_common::legacy::http::{self, Form};
use deploy_common::legacy::{auth, ssl, Limits};
use deploy_common::order::Request;
use deploy_common::wire::connection::SecureConnection;
use deploy_common::wire::handshake::{self, ClientParams};
use deploy_common::wire::message::{Event, Message};
use deploy_common::wire::WireError;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Which wire a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// v2, pinning the agent's RSA key.
    V2,
    /// The original's plain HTTP-like request.
    V1Plain,
    /// The original's "ssl" envelope.
    V1Ssl,
}

/// An order's outcome as any client sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub code: u16,
    /// Reason phrase (v1 only; empty for v2).
    pub reason: String,
    /// `Content-Type` (v1 only).
    pub content_type: String,
    /// The JSON object body, if any.
    pub json: Option<Map<String, Value>>,
    /// The text body (errors), or the raw body for v1.
    pub text: String,
    /// Streamed events (v2 only).
    pub events: Vec<Event>,
}

impl Reply {
    /// The JSON body; panics with the reply if there is none.
    pub fn body(&self) -> &Map<String, Value> {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("expected a JSON body, got {self:?}"))
    }

    /// A string field of the JSON body; panics if absent or not a string.
    pub fn s(&self, key: &str) -> &str {
        self.body()
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string {key:?} in {self:?}"))
    }

    /// A string-array field of the JSON body.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.body()
            .get(key)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("no array {key:?} in {self:?}"))
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("non-string in {key:?}: {self:?}"))
                    .to_owned()
            })
            .collect()
    }

    /// Asserts the code, with the whole reply in the message.
    pub fn expect_code(&self, code: u16) -> &Reply {
        assert_eq!(self.code, code, "unexpected reply: {self:?}");
        self
    }
}

/// Runs one order over `proto` against `addr` with the right key.
pub async fn call(proto: Proto, addr: SocketAddr, order: &str, options: &str) -> Reply {
    call_with_key(proto, addr, KEY, order, options).await
}

/// Like [`call`] with a chosen key_cipher; v2 errors (refused handshakes) panic.
pub async fn call_with_key(
    proto: Proto,
    addr: SocketAddr,
    key: &str,
    order: &str,
    options: &str,
) -> Reply {
    match proto {
        Proto::V2 => v2(
            addr,
            key,
            Some(&agent_public_key()),
            request(order, options),
        )
        .await
        .unwrap_or_else(|e| panic!("v2 {order} {options:?}: {e}")),
        Proto::V1Plain => v1_plain(addr, order, options, key).await,
        Proto::V1Ssl => v1_ssl(addr, order, options, key).await,
    }
}

/// A v2 request for `order` with `options`.
pub fn request(order: &str, options: &str) -> Request {
    Request {
        order: order.into(),
        options: options.into(),
        ..Request::default()
    }
}

/// Connects and completes a v2 handshake.
pub async fn v2_connect(
    addr: SocketAddr,
    key: &str,
    pinned: Option<&RsaPublicKey>,
) -> Result<SecureConnection<TcpStream>, WireError> {
    let stream = connect(addr).await;
    let params = ClientParams {
        key_cipher: key,
        pinned,
        now: unix_now(),
    };
    tokio::time::timeout(IO_TIMEOUT, handshake::client(stream, params))
        .await
        .unwrap_or(Err(WireError::Timeout))
}

/// Sends one request on an open v2 connection and collects its events and reply.
pub async fn v2_exchange(
    conn: &mut SecureConnection<TcpStream>,
    id: u64,
    request: Request,
) -> Result<Reply, WireError> {
    tokio::time::timeout(IO_TIMEOUT, async {
        conn.send(&Message::Request { id, request }).await?;
        let mut events = Vec::new();
        loop {
            match conn.recv().await? {
                None => return Err(WireError::Closed),
                Some(Message::Event { id: eid, event }) => {
                    assert_eq!(eid, id, "event for another request");
                    events.push(event);
                }
                Some(Message::Reply {
                    id: rid,
                    code,
                    body,
                    text,
                }) => {
                    assert_eq!(rid, id, "reply for another request");
                    return Ok(Reply {
                        code,
                        reason: String::new(),
                        content_type: String::new(),
                        json: body,
                        text: text.unwrap_or_default(),
                        events,
                    });
                }
                Some(other) => panic!("unexpected message from the agent: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or(Err(WireError::Timeout))
}

/// One v2 order on a fresh connection.
pub async fn v2(
    addr: SocketAddr,
    key: &str,
    pinned: Option<&RsaPublicKey>,
    request: Request,
) -> Result<Reply, WireError> {
    let mut conn = v2_connect(addr, key, pinned).await?;
    v2_exchange(&mut conn, 1, request).await
}

/// Sends raw bytes on a fresh connection and returns everything the agent sends back
/// until it closes (within [`IO_TIMEOUT`]).
pub async fn v1_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr).await;
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(bytes))
        .await
        .expect("write timed out")
        .expect("write");
    read_to_eof(&mut stream, IO_TIMEOUT).await
}

/// Parses a complete plain response, checking `Content-Length` against the body.
pub fn parse_plain(bytes: &[u8]) -> Reply {
    let resp = http::parse_response_bytes(bytes).expect("parse response");
    let code: u16 = resp
        .code
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no status line in {:?}",
                String::from_utf8_lossy(bytes).into_owned()
            )
        });
    let body = resp.body.clone().unwrap_or_default();
    let length: usize = resp
        .header("content-length")
        .expect("Content-Length header")
        .parse()
        .expect("numeric Content-Length");
    assert_eq!(length, body.len(), "Content-Length does not match the body");
    let content_type = resp.header("content-type").unwrap_or_default().to_owned();
    let json = if content_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Some(map),
            other => panic!(
                "application/json body is not a JSON object ({other:?}): {:?}",
                String::from_utf8_lossy(&body)
            ),
        }
    } else {
        None
    };
    Reply {
        code,
        reason: resp.reason.unwrap_or_default(),
        content_type,
        json,
        text: String::from_utf8_lossy(&body).into_owned(),
        events: Vec::new(),
    }
}

/// The form of one order with a fresh `auth_key` for `key`.
pub fn form(options: &str, key: &str) -> Form {
    Form {
        auth_key: auth::make_auth_key(key, unix_now()),
        options: options.into(),
        ..Form::default()
    }
}

/// One v1 plain order (values percent-escaped where needed).
pub async fn v1_plain(addr: SocketAddr, order: &str, options: &str, key: &str) -> Reply {
    let bytes = http::encode_request_escaped(order, &form(options, key));
    parse_plain(&v1_raw(addr, &bytes).await)
}

/// Wraps a complete plain request in the ssl envelope for the agent's key, sends it, and
/// returns the decrypted plain response bytes.
pub async fn v1_ssl_raw(addr: SocketAddr, plain_request: &[u8]) -> Vec<u8> {
    let passphrase = ssl::new_passphrase().expect("passphrase");
    let aes = ssl::wrap_passphrase(&agent_public_key(), &passphrase).expect("wrap");
    let sealed = ssl::seal(&passphrase, plain_request).expect("seal");
    let raw = v1_raw(addr, &ssl::encode_ssl_request(&aes, &sealed)).await;
    let mut reader: &[u8] = &raw;
    let (_, ciphertext) = ssl::read_ssl_response(&mut reader, &Limits::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "not an ssl response ({e}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    ssl::open(&passphrase, &ciphertext).expect("decrypt the ssl response")
}

/// One v1 order in the ssl envelope.
pub async fn v1_ssl(addr: SocketAddr, order: &str, options: &str, key: &str) -> Reply {
    let plain = http::encode_request_escaped(order, &form(options, key));
    let bytes = v1_ssl_raw(addr, &plain).await;
    // In ssl mode the body is everything after the head; Content-Length must agree.
    parse_plain(&bytes)
}
