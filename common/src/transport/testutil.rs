//! In-process fake agents for transport and fan-out tests: v2, v1 plain, v1 ssl, a
//! listener that never answers, and a closed port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::crypto::{RsaPrivateKey, RsaPublicKey};
use crate::legacy::auth::verify_auth_key;
use crate::legacy::http::{encode_response, read_request, HttpRequest};
use crate::legacy::ssl::{encode_ssl_response, open_request, read_ssl_request, seal};
use crate::legacy::Limits;
use crate::order::{Reply, Request};
use crate::target::Target;
use crate::wire::handshake::{self, ServerParams};
use crate::wire::message::{Event, Message, TaggedEvent};

/// The test keys of the legacy vectors.
pub const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/spec/legacy-vectors"
);

/// The agent's key pair from the vectors.
pub fn agent_keys() -> (Arc<RsaPrivateKey>, Arc<RsaPublicKey>) {
    (
        Arc::new(RsaPrivateKey::load(format!("{VECTORS}/agent_private.pem").as_ref()).unwrap()),
        Arc::new(RsaPublicKey::load(format!("{VECTORS}/agent_public.pem").as_ref()).unwrap()),
    )
}

/// What a fake agent does with each order.
pub type Handler = Arc<dyn Fn(&Request) -> (Vec<Event>, Duration, Reply) + Send + Sync>;

/// A handler that always answers `reply` after `delay`, streaming `events` first.
pub fn canned(events: Vec<Event>, delay: Duration, reply: Reply) -> Handler {
    Arc::new(move |_| (events.clone(), delay, reply.clone()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A target for a local listener.
pub fn target(addr: SocketAddr) -> Target {
    Target::parse(&addr.to_string(), 1).unwrap()
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Starts a v2 agent with `key_cipher` (and an RSA key if given).
pub async fn v2_agent(
    key_cipher: &str,
    private: Option<Arc<RsaPrivateKey>>,
    handler: Handler,
) -> SocketAddr {
    let (listener, addr) = listen().await;
    let key_cipher = key_cipher.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (key_cipher, private, handler) =
                (key_cipher.clone(), private.clone(), handler.clone());
            tokio::spawn(async move {
                let params = ServerParams {
                    key_cipher: &key_cipher,
                    private_key: private.as_deref(),
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
                    conn.send(&Message::Event { id, event }).await.unwrap();
                }
                tokio::time::sleep(delay).await;
                let _ = conn.send(&Message::reply(id, &reply)).await;
            });
        }
    });
    addr
}

/// Starts a v2 peer that answers every request like a proxy: `events` (tagged with the
/// agents they are about, or not), then `reply`.
pub async fn v2_relay(key_cipher: &str, events: Vec<TaggedEvent>, reply: Reply) -> SocketAddr {
    let (listener, addr) = listen().await;
    let key_cipher = key_cipher.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (key_cipher, events, reply) = (key_cipher.clone(), events.clone(), reply.clone());
            tokio::spawn(async move {
                let params = ServerParams {
                    key_cipher: &key_cipher,
                    private_key: None,
                    now: unix_now(),
                };
                let Ok(mut conn) = handshake::server(stream, params).await else {
                    return;
                };
                let Ok(Some(Message::Request { id, .. })) = conn.recv().await else {
                    return;
                };
                for event in &events {
                    conn.send_event(id, event).await.unwrap();
                }
                let _ = conn.send(&Message::reply(id, &reply)).await;
            });
        }
    });
    addr
}

/// The order of a v1 request as a [`Request`], or a 401/404 for a bad key or URL.
fn v1_order(request: &HttpRequest, key_cipher: &str) -> Result<Request, Reply> {
    if !matches!(request.method.as_str(), "GET" | "POST") {
        return Err(Reply::empty(405));
    }
    let form = request.form();
    if !verify_auth_key(key_cipher, &form.auth_key, unix_now()) {
        return Err(Reply::empty(401));
    }
    let segments = request.path_segments();
    match segments.as_slice() {
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

/// Starts a v1 agent, plain or (with a private key) ssl.
pub async fn v1_agent(
    key_cipher: &str,
    private: Option<Arc<RsaPrivateKey>>,
    handler: Handler,
) -> SocketAddr {
    let (listener, addr) = listen().await;
    let key_cipher = key_cipher.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (key_cipher, private, handler) =
                (key_cipher.clone(), private.clone(), handler.clone());
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let limits = Limits::default();
                let answer = |request: &HttpRequest| match v1_order(request, &key_cipher) {
                    Ok(order) => handler(&order),
                    Err(reply) => (Vec::new(), Duration::ZERO, reply),
                };
                match &private {
                    None => {
                        let Ok(Some(request)) = read_request(&mut stream, &limits).await else {
                            return;
                        };
                        let (_, delay, reply) = answer(&request);
                        tokio::time::sleep(delay).await;
                        let _ = stream.write_all(&encode_response(&reply)).await;
                    }
                    Some(key) => {
                        let Ok(Some((head, ciphertext))) =
                            read_ssl_request(&mut stream, &limits).await
                        else {
                            // A plain client: answer as a plain server would (405).
                            let _ = stream.write_all(&encode_response(&Reply::empty(405))).await;
                            return;
                        };
                        let Ok((passphrase, request)) = open_request(key, &head, &ciphertext)
                        else {
                            return;
                        };
                        let (_, delay, reply) = answer(&request);
                        tokio::time::sleep(delay).await;
                        let sealed = seal(&passphrase, &encode_response(&reply)).unwrap();
                        let _ = stream.write_all(&encode_ssl_response(&sealed)).await;
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A listener that accepts connections, reads nothing and never answers.
pub async fn silent() -> SocketAddr {
    let (listener, addr) = listen().await;
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
    let (listener, addr) = listen().await;
    drop(listener);
    addr
}
