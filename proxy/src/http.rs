//! The HTTP/JSON API: the proxy as an internal API server for scripts and CI systems.
//!
//! ```text
//! POST /api/<order>                      (loopback-only unless [client] http_listen says otherwise)
//! X-Api-Key: <key>                       (or Authorization: Bearer <key>)
//! Content-Type: application/json         {"options":"service:echo,hi","args":"groups:web"}
//!                                        (a form body or query string works too)
//! Accept: application/x-ndjson           optional: stream one line per agent as it answers
//!
//! 200 application/json       {"<agent>":{"<order>":{"return":1,"serverStatus":1,…}},…}
//! 200 application/x-ndjson   {"host":"<agent>","order":"<order>","result":{…},"via":"<proxy>"}\n …
//!                            {"done":true,"hosts":N}\n
//! 4xx application/json       {"error":"<text>"}
//! ```
//!
//! `[allow::hosts]` applies as on the main port. One request per connection.

use crate::relay::Relay;
use deploy_common::access::HostAllowList;
use deploy_common::legacy::{http, Limits};
use deploy_common::order::{Body, OrderName, Reply, Request};
use deploy_common::server::conn::{Events, Handler};
use deploy_common::wire::message::{Event, TaggedEvent};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn reason(code: u16) -> &'static str {
    match code {
        403 => "Forbidden",
        other => deploy_common::order::reason(other),
    }
}

fn head(code: u16, content_type: &str, length: Option<usize>) -> String {
    let length = length
        .map(|n| format!("Content-Length: {n}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\n{length}Connection: close\r\n\r\n",
        reason(code)
    )
}

async fn respond(
    stream: &mut BufStream<TcpStream>,
    code: u16,
    body: &Value,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    stream
        .write_all(head(code, "application/json", Some(text.len())).as_bytes())
        .await?;
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await?;
    stream.get_mut().shutdown().await
}

/// The request's parameters from the body (JSON or form) and the query string.
fn parameters(req: &http::HttpRequest) -> Result<Request, String> {
    let mut request = Request::default();
    let segments = req.path_segments();
    match (segments.first().map(String::as_str), segments.get(1)) {
        (Some("api"), Some(order)) if segments.len() == 2 => request.order = order.clone(),
        _ => return Err("expected /api/<order>".into()),
    }
    if let Some((_, query)) = req.url.split_once('?') {
        let form = http::Form::parse(query.as_bytes());
        request.options = form.options;
        request.args = form.args;
    }
    // JSON when said so, or when the body looks like it (`curl -d '{…}'` sends it as
    // application/x-www-form-urlencoded).
    let is_json = req
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
        || req.body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if is_json && !req.body.is_empty() {
        let v: Value =
            serde_json::from_slice(&req.body).map_err(|e| format!("invalid JSON body: {e}"))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(o) = field("options") {
            request.options = o;
        }
        if let Some(a) = field("args") {
            request.args = a;
        }
    } else if !req.body.is_empty() {
        let form = http::Form::parse(&req.body);
        if !form.options.is_empty() {
            request.options = form.options;
        }
        if !form.args.is_empty() {
            request.args = form.args;
        }
    }
    request.api_key = req
        .header("x-api-key")
        .map(str::to_owned)
        .or_else(|| {
            req.header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Ok(request)
}

/// Serves one HTTP connection.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    allow: Arc<HostAllowList>,
    relay: Arc<Relay>,
    timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let mut stream = BufStream::new(stream);
    let result = async {
        if !allow.allows(peer.ip()) {
            return respond(&mut stream, 403, &json!({"error": format!("Your IP [{}] is not allowed on this server.", peer.ip())})).await;
        }
        let req = match http::read_request(&mut stream, &Limits { timeout, ..Limits::default() }).await {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) => return respond(&mut stream, 400, &json!({"error": e.to_string()})).await,
        };
        if req.method != "POST" && req.method != "GET" {
            return respond(&mut stream, 405, &json!({"error": "use POST /api/<order>"})).await;
        }
        let request = match parameters(&req) {
            Ok(r) => r,
            Err(e) => return respond(&mut stream, 404, &json!({"error": e})).await,
        };
        if OrderName::parse(&request.order).is_none() {
            return respond(&mut stream, 404, &json!({"error": format!("unknown order {:?}", request.order)})).await;
        }
        if request.api_key.is_empty() {
            return respond(&mut stream, 401, &json!({"error": "missing API key (X-Api-Key header)"})).await;
        }
        let streaming = req
            .header("accept")
            .is_some_and(|a| a.contains("application/x-ndjson"));
        let started = std::time::Instant::now();
        let order = request.order.clone();
        if !streaming {
            let reply = relay.handle(peer, request, Events::none()).await;
            let code = reply.code;
            let body = match reply.body {
                Body::Json(map) if code == 200 => Value::Object(map),
                other => json!({"error": Reply { code, body: other }.content()}),
            };
            deploy_common::server::log::access(peer.ip(), &order, "http", code, 0, started.elapsed(), &[]);
            return respond(&mut stream, code, &body).await;
        }
        let (tx, mut rx) = mpsc::channel::<TaggedEvent>(256);
        let work = relay.handle(peer, request, Events::from(tx));
        tokio::pin!(work);
        let mut started_body = false;
        let mut hosts = 0usize;
        loop {
            tokio::select! {
                event = rx.recv() => {
                    // Results only: output lines and progress are not part of this API.
                    let Some(TaggedEvent { event: Event::Host { host, order, result, via }, .. }) = event else { continue };
                    if !started_body {
                        stream.write_all(head(200, "application/x-ndjson", None).as_bytes()).await?;
                        started_body = true;
                    }
                    hosts += 1;
                    let mut line = serde_json::to_string(&json!({"host": host, "order": order, "result": result, "via": via})).unwrap_or_default();
                    line.push('\n');
                    stream.write_all(line.as_bytes()).await?;
                    stream.flush().await?;
                }
                reply = &mut work => {
                    while let Ok(TaggedEvent { event, .. }) = rx.try_recv() {
                        let Event::Host { host, order, result, via } = event else { continue };
                        if !started_body {
                            stream.write_all(head(200, "application/x-ndjson", None).as_bytes()).await?;
                            started_body = true;
                        }
                        hosts += 1;
                        let line = serde_json::to_string(&json!({"host": host, "order": order, "result": result, "via": via})).unwrap_or_default();
                        stream.write_all(format!("{line}\n").as_bytes()).await?;
                    }
                    deploy_common::server::log::access(peer.ip(), &order, "http", reply.code, 0, started.elapsed(), &[]);
                    if !started_body {
                        if reply.code != 200 {
                            return respond(&mut stream, reply.code, &json!({"error": reply.content()})).await;
                        }
                        stream.write_all(head(200, "application/x-ndjson", None).as_bytes()).await?;
                    }
                    stream.write_all(format!("{}\n", json!({"done": true, "hosts": hosts})).as_bytes()).await?;
                    stream.flush().await?;
                    return stream.get_mut().shutdown().await;
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(peer = %peer, cause = %e, "http connection ended with an error");
    }
}
