//! The HTTP/JSON API (`[client] http_listen`) driven by `curl`: `POST /api/<order>` with
//! `X-Api-Key` answers the merged document, or with `Accept: application/x-ndjson` one
//! line per agent as it answers and a closing `{"done":true,…}`; errors are JSON with
//! their status (401 without a key, 403 for a refused key or caller). Each curl test is
//! skipped, with a note, where curl is not installed.
//!
//! The strictness tests write raw bytes on a TCP connection ([`raw`]), so that no client
//! normalizes the request: a header shaped like a request line, a space before a colon,
//! duplicate key headers, bad JSON, unknown routes and methods, oversized and late bodies,
//! and `/healthz`.

use crate::util::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const ID: &str = "px-http";
const API_KEY: &str = "http-key";
const BODY: &str = r#"{"options":"service:echo,hi","args":"groups:web"}"#;

struct Setup {
    proxy: Proxy,
    web: Farm,
    _dir: Sandbox,
}

fn setup(net: u8, config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Setup {
    let web = Farm::start(net, 1, 3, KEY);
    let dir = Sandbox::new();
    let proxy = config(
        ProxyConfig::new(ID)
            .http()
            .key(API_KEY, "web")
            .servers("web", &web.addrs),
    )
    .start(dir.path());
    Setup {
        proxy,
        web,
        _dir: dir,
    }
}

impl Setup {
    fn url(&self, order: &str) -> String {
        format!("http://{}/api/{order}", self.proxy.http())
    }
}

/// The record of a successful `/bin/echo hi`, as the HTTP document holds it (no `via`).
fn echo_record() -> Value {
    json!({
        "return": 1,
        "serverStatus": 1,
        "returnCode": "200",
        "returnString": "OK",
        "content": {"return": "true", "command": ECHO_COMMAND, "content": ECHO_CONTENT, "code": "0"},
    })
}

/// Asserts a merged document: exactly `hosts`, each `{exec: <echo record>}`.
fn assert_merged(body: &str, hosts: &BTreeSet<String>) {
    let doc: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    let doc = doc
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(
        &doc.keys().cloned().collect::<BTreeSet<_>>(),
        hosts,
        "{body}"
    );
    for (host, by_order) in doc {
        assert_eq!(by_order, &json!({"exec": echo_record()}), "{host}");
    }
}

#[test]
fn post_exec_returns_the_merged_document() {
    if !have_curl() {
        return;
    }
    let s = setup(41, |c| c);
    let out = curl(&[
        "-i",
        "-H",
        &format!("X-Api-Key: {API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        BODY,
        &s.url("exec"),
    ]);
    out.expect_code(0);
    let (code, headers, body) = http_parts(&out);
    assert_eq!(code, 200, "{out:#?}");
    assert_eq!(headers["content-type"], "application/json");
    let names: BTreeSet<String> = s.web.names().into_iter().collect();
    assert_merged(&body, &names);

    // A form body and a bearer token work too.
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {API_KEY}"),
        "--data-urlencode",
        "options=service:echo,hi",
        "--data-urlencode",
        "args=groups:web",
        &s.url("exec"),
    ]);
    assert_merged(&out.stdout, &names);
}

#[test]
fn the_readme_curl_line_works() {
    if !have_curl() {
        return;
    }
    let s = setup(42, |c| c);
    // Exactly the README's form: no Content-Type, no Accept.
    let out = run_command(
        Command::new("curl").args([
            "-s",
            "-H",
            &format!("X-Api-Key: {API_KEY}"),
            "-d",
            BODY,
            &s.url("exec"),
        ]),
        RUN_LIMIT,
    );
    out.expect_code(0);
    assert_merged(&out.stdout, &s.web.names().into_iter().collect());
}

#[test]
fn ndjson_streams_one_line_per_agent_then_done() {
    if !have_curl() {
        return;
    }
    let silent = Silent::start(ip(43, 250, 1));
    let s = setup(43, |c| {
        c.client("thread_timeout", 2).servers("web", [silent.addr])
    });
    let out = curl(&[
        "-i",
        "-N",
        "-H",
        &format!("X-Api-Key: {API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/x-ndjson",
        "-d",
        BODY,
        &s.url("exec"),
    ]);
    out.expect_code(0);
    let (code, headers, body) = http_parts(&out);
    assert_eq!(code, 200, "{out:#?}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 5, "3 agents, the silent one, done: {body}");
    assert_eq!(lines[4], json!({"done": true, "hosts": 4}));
    let slow = silent.addr.to_string();
    let mut fast = BTreeSet::new();
    for line in &lines[..4] {
        let host = line["host"].as_str().expect("host").to_owned();
        assert_eq!(line["order"], "exec", "{line}");
        assert_eq!(line["via"], ID, "{line}");
        if host == slow {
            assert_eq!(line["result"]["content"], "Process Timeout(2)!", "{line}");
            assert_eq!(line["result"]["serverStatus"], 0, "{line}");
        } else {
            assert_eq!(line["result"], echo_record(), "{host}");
            fast.insert(host);
        }
    }
    assert_eq!(
        lines[3]["host"],
        slow.as_str(),
        "the silent agent comes last"
    );
    assert_eq!(fast, s.web.names().into_iter().collect());

    // Streamed: the answering agents' lines came well before the silent one's.
    let at = |needle: &str| {
        out.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no line with {needle}: {out:#?}"))
    };
    let slow_at = at(&format!("\"host\":\"{slow}\""));
    for host in s.web.names() {
        let t = at(&format!("\"host\":\"{host}\""));
        assert!(
            t + Duration::from_secs(1) < slow_at,
            "{host}'s line at {t:?}, the silent agent's at {slow_at:?}: not streamed"
        );
    }
}

#[test]
fn errors_are_json_with_their_status() {
    if !have_curl() {
        return;
    }
    let s = setup(44, |c| c);
    let post = |headers: &[&str], url: &str| {
        let mut args = vec!["-i", "-H", "Content-Type: application/json"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend(["-d", BODY, url]);
        let out = curl(&args);
        out.expect_code(0);
        let (code, headers, body) = http_parts(&out);
        assert_eq!(headers["content-type"], "application/json", "{out:#?}");
        let body: Value = serde_json::from_str(&body).expect("JSON error body");
        (code, body["error"].as_str().unwrap_or_default().to_owned())
    };
    let exec = s.url("exec");

    let (code, error) = post(&[], &exec);
    assert_eq!(
        (code, error.as_str()),
        (401, "missing API key (X-Api-Key header)")
    );

    let (code, error) = post(&["X-Api-Key: wrong"], &exec);
    assert_eq!(
        (code, error.as_str()),
        (403, "You don't have permission to access on this[web].")
    );

    let (code, error) = post(&[&format!("X-Api-Key: {API_KEY}")], &s.url("nope"));
    assert_eq!(code, 404, "{error}");

    // A refusal is a JSON error even when a stream was asked for.
    let (code, error) = post(&["X-Api-Key: wrong", "Accept: application/x-ndjson"], &exec);
    assert_eq!(
        (code, error.as_str()),
        (403, "You don't have permission to access on this[web].")
    );
}

#[test]
fn callers_outside_allow_hosts_get_403() {
    if !have_curl() {
        return;
    }
    let s = setup(45, |c| c.hosts(&["127.0.0.2"]));
    let out = curl(&[
        "-i",
        "-H",
        &format!("X-Api-Key: {API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        BODY,
        &s.url("exec"),
    ]);
    let (code, _, body) = http_parts(&out);
    assert_eq!(code, 403, "{out:#?}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["error"],
        "Your IP [127.0.0.1] is not allowed on this server."
    );
}

/// A response read by [`raw`].
#[derive(Debug)]
struct Raw {
    code: u16,
    /// Lower-cased names.
    headers: std::collections::BTreeMap<String, String>,
    body: String,
    /// From the connection to the end of the response.
    took: Duration,
}

impl Raw {
    /// The body as JSON.
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }

    /// The JSON body's `error`, asserting the response is a JSON error.
    fn error(&self) -> String {
        assert_eq!(
            self.headers["content-type"], "application/json",
            "{self:#?}"
        );
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {self:#?}"))
            .to_owned()
    }
}

/// Writes `request` byte for byte on a new connection to `addr` and reads the answer to
/// EOF (a request is one connection); a connection closed without an answer is code 0.
fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP API");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream.write_all(request).expect("write the request");
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset && !answer.is_empty(),
            "reading the answer: {e} after {answer:?}"
        );
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if answer.is_empty() {
        return Raw {
            code: 0,
            headers: Default::default(),
            body: String::new(),
            took,
        };
    }
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {answer:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Raw {
        code,
        headers,
        body: body.to_owned(),
        took,
    }
}

/// A request with `head_lines` (each without its CRLF) after the request line, a
/// `Content-Length` and `body`.
fn request(request_line: &str, head_lines: &[&str], body: &str) -> Vec<u8> {
    let mut out = format!("{request_line}\r\nHost: test\r\n");
    for line in head_lines {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

#[test]
fn a_header_shaped_like_a_request_line_does_not_change_the_route() {
    let s = setup(46, |c| c);
    // The review's attack: the v1 parser took the last request-shaped line, so this
    // POST /api/status ran exec with the fake line's query.
    let attack = request(
        "POST /api/status HTTP/1.1",
        &[
            "X-Note: GET /api/exec?options=service:echo,hi&args=groups:web HTTP/1.1",
            &format!("X-Api-Key: {API_KEY}"),
            "Content-Type: application/x-www-form-urlencoded",
        ],
        "args=groups:web",
    );
    let out = raw(s.proxy.http(), &attack);
    assert!(
        !out.body.contains("\"exec\"") && !out.body.contains(ECHO_CONTENT),
        "the header line ran exec: {out:#?}"
    );
    // It is the status order, relayed to every agent of the group.
    assert_eq!(out.code, 200, "{out:#?}");
    let doc = out.json();
    let doc = doc.as_object().expect("a document");
    assert_eq!(
        doc.keys().cloned().collect::<BTreeSet<_>>(),
        s.web.names().into_iter().collect(),
        "{out:#?}"
    );
    for (host, by_order) in doc {
        let orders: Vec<&String> = by_order.as_object().expect("orders").keys().collect();
        assert_eq!(orders, ["status"], "{host}: {out:#?}");
    }
}

#[test]
fn malformed_header_lines_are_400() {
    let s = setup(47, |c| c);
    for bad in [
        // The v1 parser trimmed the name and took the key.
        format!("X-Api-Key : {API_KEY}"),
        format!("X-Api-Key\t: {API_KEY}"),
        // A line without a colon, which the v1 parser skipped.
        "X-Note GET /api/status HTTP/1.1".to_owned(),
    ] {
        let out = raw(
            s.proxy.http(),
            &request("POST /api/exec HTTP/1.1", &[&bad], BODY),
        );
        assert_eq!(out.code, 400, "{bad:?}: {out:#?}");
        assert!(!out.body.contains(ECHO_CONTENT), "{bad:?} ran: {out:#?}");
    }
    // A header folded onto a second line (obsolete line folding).
    let folded = request(
        "POST /api/exec HTTP/1.1",
        &["X-Note: a", &format!(" X-Api-Key: {API_KEY}")],
        BODY,
    );
    assert_eq!(raw(s.proxy.http(), &folded).code, 400);
}

#[test]
fn duplicate_or_double_keys_are_400() {
    let s = setup(48, |c| c);
    let key = format!("X-Api-Key: {API_KEY}");
    let bearer = format!("Authorization: Bearer {API_KEY}");
    let json = "Content-Type: application/json";
    for (lines, error) in [
        // The v1 parser let the last one win.
        (
            vec!["X-Api-Key: wrong", key.as_str(), json],
            "the x-api-key header appears more than once",
        ),
        (
            vec!["Authorization: Bearer wrong", bearer.as_str(), json],
            "the authorization header appears more than once",
        ),
        (
            vec![key.as_str(), bearer.as_str(), json],
            "two API keys (X-Api-Key and Authorization: Bearer): send one",
        ),
    ] {
        let out = raw(
            s.proxy.http(),
            &request("POST /api/exec HTTP/1.1", &lines, BODY),
        );
        assert_eq!((out.code, out.error().as_str()), (400, error), "{lines:?}");
    }
    // One key, given once, works.
    let out = raw(
        s.proxy.http(),
        &request("POST /api/exec HTTP/1.1", &[&key, json], BODY),
    );
    assert_eq!(out.code, 200, "{out:#?}");
    assert_merged(&out.body, &s.web.names().into_iter().collect());
}

#[test]
fn bad_bodies_routes_and_methods_are_json_errors() {
    let s = setup(49, |c| c);
    let key = format!("X-Api-Key: {API_KEY}");
    let json = "Content-Type: application/json";
    let post = |line: &str, body: &str| raw(s.proxy.http(), &request(line, &[&key, json], body));

    let out = post(
        "POST /api/exec HTTP/1.1",
        r#"{"options":"service:echo,hi","#,
    );
    assert_eq!(out.code, 400, "{out:#?}");
    assert!(out.error().starts_with("invalid JSON body: "), "{out:#?}");
    let out = post("POST /api/exec HTTP/1.1", r#"{"options":["service:echo"]}"#);
    assert_eq!(out.code, 400, "{out:#?}");
    assert!(out.error().starts_with("invalid JSON body: "), "{out:#?}");
    let out = post("POST /api/exec?options=a HTTP/1.1", BODY);
    assert_eq!(
        (out.code, out.error().as_str()),
        (400, r#"parameter "options" given more than once"#)
    );

    for target in ["/", "/nope", "/api/exec/more", "/agent/exec", "/api/"] {
        let out = post(&format!("POST {target} HTTP/1.1"), BODY);
        assert_eq!(out.code, 404, "{target}: {out:#?}");
        out.error();
    }
    let out = post("POST /api/nope HTTP/1.1", BODY);
    assert_eq!(
        (out.code, out.error().as_str()),
        (404, r#"unknown order "nope""#)
    );

    for (line, allow) in [
        ("PUT /api/exec HTTP/1.1", "GET, POST"),
        ("DELETE /api/exec HTTP/1.1", "GET, POST"),
        ("POST /healthz HTTP/1.1", "GET, HEAD"),
    ] {
        let out = post(line, BODY);
        assert_eq!(out.code, 405, "{line}: {out:#?}");
        assert_eq!(out.headers["allow"], allow, "{line}");
        out.error();
    }

    // Over 1 MiB: refused on the announced length, before any byte of it is read.
    let big = format!(
        "POST /api/exec HTTP/1.1\r\nHost: t\r\n{key}\r\n{json}\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024 + 1
    );
    let out = raw(s.proxy.http(), big.as_bytes());
    assert_eq!(
        (out.code, out.error().as_str()),
        (413, "request body larger than 1048576 bytes")
    );
}

#[test]
fn healthz_needs_no_key_but_an_allowed_peer() {
    let s = setup(50, |c| c);
    let out = raw(s.proxy.http(), b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(out.code, 200, "{out:#?}");
    assert_eq!(out.headers["content-type"], "application/json");
    assert_eq!(
        out.json(),
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
    );

    let refused = setup(53, |c| c.hosts(&["127.0.0.2"]));
    let out = raw(
        refused.proxy.http(),
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(
        (out.code, out.error().as_str()),
        (403, "Your IP [127.0.0.1] is not allowed on this server.")
    );
}

#[test]
fn a_request_must_arrive_within_socket_timeout() {
    let s = setup(54, |c| c.server("socket_timeout", 1));
    // A head that never ends: the connection is closed.
    let out = raw(s.proxy.http(), b"POST /api/exec HTTP/1.1\r\nHost: t\r\n");
    assert!(out.code == 0 || out.code == 408, "{out:#?}");
    assert!(out.took < Duration::from_secs(4), "{out:#?}");
    // A body that never ends: 408.
    let key = format!("X-Api-Key: {API_KEY}");
    let short =
        format!("POST /api/exec HTTP/1.1\r\nHost: t\r\n{key}\r\nContent-Length: 100\r\n\r\n{{");
    let out = raw(s.proxy.http(), short.as_bytes());
    assert_eq!(
        (out.code, out.error().as_str()),
        (408, "timed out reading the request")
    );
    assert!(out.took < Duration::from_secs(4), "{out:#?}");
}
