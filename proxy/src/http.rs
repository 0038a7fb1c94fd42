//! The HTTP/JSON API: the proxy as an internal API server for scripts and CI systems.
//!
//! ```text
//! POST /api/<order>                      (loopback-only unless [client] http_listen says otherwise)
//! X-Api-Key: <key>                       (or Authorization: Bearer <key>; one of them, once)
//! Content-Type: application/json         {"options":"service:echo,hi","args":"groups:web"}
//!                                        (a form body or query string works too)
//! Accept: application/x-ndjson           optional: stream one line per agent as it answers
//!
//! 200 application/json       {"<agent>":{"<order>":{"return":1,"serverStatus":1,…}},…}
//! 200 application/x-ndjson   {"host":"<agent>","order":"<order>","result":{…},"via":"<proxy>"}\n …
//!                            {"done":true,"hosts":N}\n
//! 4xx application/json       {"error":"<text>"}
//!
//! GET /healthz                           no key
//! 200 application/json       {"status":"ok","version":"<version>"}
//! ```
//!
//! HTTP/1.1 is parsed by hyper (strict: a malformed request line or header, such as a
//! space before a header's colon, is a 400 without a body, sent by hyper); what a parsed
//! request means is [`deploy_proxy::api`]'s business (400, 401, 404, 405, 413 as JSON).
//! `[allow::hosts]` is checked at accept, before any byte is read, and applies to
//! `/healthz` too. One request per connection; the request (head and body) must arrive
//! within `socket_timeout` (408 for a late body; a late head closes the connection).
//! The v1 wire's parser (`deploy_common::legacy::http`) is never used here.

use crate::relay::Relay;
use deploy_common::access::HostAllowList;
use deploy_common::order::{Body, Reply, Request};
use deploy_common::server::conn::{Events, Handler};
use deploy_common::server::log::access;
use deploy_common::wire::message::{Event, TaggedEvent};
use deploy_proxy::api::{self, ApiError, ApiRequest, Call, MAX_BODY};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The largest request head hyper buffers (hyper's minimum is 8 KiB); larger is a 431.
const MAX_HEAD: usize = 16 * 1024;

/// A response body: whole (JSON) or streamed (NDJSON lines from a channel).
type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// Serves one HTTP connection: at most one request, within `timeout`.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    allow: Arc<HostAllowList>,
    relay: Arc<Relay>,
    timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    if !allow.allows(peer.ip()) {
        refuse(stream, peer).await;
        return;
    }
    let deadline = Instant::now() + timeout;
    let service = service_fn(move |req| {
        let relay = Arc::clone(&relay);
        async move { Ok::<_, Infallible>(answer(req, peer, relay, deadline).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(peer = %peer, cause = %e, "http connection ended with an error");
    }
}

/// Answers a peer outside `[allow::hosts]` without reading its request.
async fn refuse(mut stream: TcpStream, peer: SocketAddr) {
    tracing::info!(peer = %peer, "http caller refused by [allow::hosts]");
    let body = json!({"error": format!("Your IP [{}] is not allowed on this server.", peer.ip())});
    let body = format!("{body}\n");
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    if let Err(e) = write.await {
        tracing::debug!(peer = %peer, cause = %e, "cannot answer a refused http caller");
    }
}

/// One request → one response; never fails (errors are JSON responses).
async fn answer(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    relay: Arc<Relay>,
    deadline: Instant,
) -> Response<ApiBody> {
    let (parts, body) = req.into_parts();
    // The endpoint first: a wrong path or method is answered without reading the body.
    if let Err(e) = api::route(parts.method.as_str(), parts.uri.path()) {
        return refused(peer, &e);
    }
    let announced = hyper::body::Body::size_hint(&body).lower();
    if usize::try_from(announced).map_or(true, |n| n > MAX_BODY) {
        return refused(peer, &ApiError::TooLarge);
    }
    let body = match tokio::time::timeout_at(deadline, Limited::new(body, MAX_BODY).collect()).await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refused(peer, &ApiError::TooLarge);
        }
        Ok(Err(e)) => {
            tracing::info!(peer = %peer, cause = %e, "http request body unreadable");
            return json_response(400, &json!({"error": format!("cannot read the body: {e}")}));
        }
        Err(_) => {
            tracing::info!(peer = %peer, "http request body not received in time");
            return json_response(408, &json!({"error": "timed out reading the request"}));
        }
    };
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let call = api::parse(&ApiRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &headers,
        body: &body,
    });
    match call {
        Err(e) => refused(peer, &e),
        Ok(Call::Health) => json_response(
            200,
            &json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}),
        ),
        Ok(Call::Order {
            request,
            stream: false,
        }) => merged(peer, relay, *request).await,
        Ok(Call::Order {
            request,
            stream: true,
        }) => streamed(peer, relay, *request).await,
    }
}

/// The JSON error response for `e`, logged.
fn refused(peer: SocketAddr, e: &ApiError) -> Response<ApiBody> {
    tracing::info!(peer = %peer, status = e.status(), cause = %e, "http request refused");
    let mut response = json_response(e.status(), &json!({"error": e.to_string()}));
    if let Some(allow) = e.allow() {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// `code` with `body` as one line of JSON.
fn json_response(code: u16, body: &Value) -> Response<ApiBody> {
    let text = format!("{body}\n");
    response(
        code,
        "application/json",
        Full::new(Bytes::from(text)).boxed_unsync(),
    )
}

fn response(code: u16, content_type: &'static str, body: ApiBody) -> Response<ApiBody> {
    let mut response = Response::new(body);
    // A relayed reply's code is any number; one HTTP cannot say is a bad gateway.
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The order's merged document (or its error), once every agent has answered.
async fn merged(peer: SocketAddr, relay: Arc<Relay>, request: Request) -> Response<ApiBody> {
    let started = std::time::Instant::now();
    let order = request.order.clone();
    let reply = relay.handle(peer, request, Events::none()).await;
    let code = reply.code;
    access(peer.ip(), &order, "http", code, 0, started.elapsed(), &[]);
    let body = match reply.body {
        Body::Json(map) if code == 200 => Value::Object(map),
        other => json!({"error": Reply { code, body: other }.content()}),
    };
    json_response(code, &body)
}

/// One NDJSON line for a result event; `None` for other events (output lines and
/// progress are not part of this API).
fn host_line(event: TaggedEvent) -> Option<Bytes> {
    let Event::Host {
        host,
        order,
        result,
        via,
    } = event.event
    else {
        return None;
    };
    let line = json!({"host": host, "order": order, "result": result, "via": via});
    Some(Bytes::from(format!("{line}\n")))
}

fn done_line(hosts: usize) -> Bytes {
    Bytes::from(format!("{}\n", json!({"done": true, "hosts": hosts})))
}

/// The order's results as NDJSON, each line sent as its agent answers. The status is
/// chosen at the first result: an order refused before any agent answered (a bad key, a
/// refused group) is a JSON error with its status, like [`merged`]'s.
async fn streamed(peer: SocketAddr, relay: Arc<Relay>, request: Request) -> Response<ApiBody> {
    let started = std::time::Instant::now();
    let order = request.order.clone();
    let (tx, mut events) = mpsc::channel::<TaggedEvent>(256);
    let mut work = Box::pin(async move { relay.handle(peer, request, Events::from(tx)).await });
    let mut open = true;
    let first = loop {
        tokio::select! {
            event = events.recv(), if open => match event {
                Some(event) => if let Some(line) = host_line(event) { break line },
                None => open = false,
            },
            reply = &mut work => {
                let mut lines = Vec::new();
                while let Ok(event) = events.try_recv() {
                    lines.extend(host_line(event));
                }
                access(peer.ip(), &order, "http", reply.code, 0, started.elapsed(), &[]);
                if lines.is_empty() && reply.code != 200 {
                    return json_response(reply.code, &json!({"error": reply.content()}));
                }
                let hosts = lines.len();
                lines.push(done_line(hosts));
                let body = Full::new(Bytes::from(lines.concat())).boxed_unsync();
                return response(200, "application/x-ndjson", body);
            }
        }
    };
    let (out, lines) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut hosts = 1;
        if out.send(first).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                // The caller went away: dropping the work cancels the order.
                () = out.closed() => return,
                event = events.recv(), if open => match event {
                    Some(event) => if let Some(line) = host_line(event) {
                        hosts += 1;
                        if out.send(line).await.is_err() {
                            return;
                        }
                    },
                    None => open = false,
                },
                reply = &mut work => {
                    while let Ok(event) = events.try_recv() {
                        if let Some(line) = host_line(event) {
                            hosts += 1;
                            if out.send(line).await.is_err() {
                                return;
                            }
                        }
                    }
                    access(peer.ip(), &order, "http", reply.code, 0, started.elapsed(), &[]);
                    let _ = out.send(done_line(hosts)).await;
                    return;
                }
            }
        }
    });
    response(200, "application/x-ndjson", Lines(lines).boxed_unsync())
}

/// A streamed body: each received chunk is one frame, the end of the channel its end.
struct Lines(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|line| line.map(|line| Ok(Frame::data(line))))
    }
}
