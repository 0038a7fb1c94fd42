//! Output formats: the original's pretty JSON, folded text, and JSON lines.
//!
//! `json` (default) is the original client's document, printed once every host is done,
//! hosts sorted by name (naturally: `web9` before `web10`; see [`sort_by_host`]), record keys in a fixed order, and the layout of Perl's
//! `JSON::XS->pretty` (3-space indent, `" : "`):
//!
//! ```text
//! {
//!    "127.0.0.1" : {
//!       "exec" : {
//!          "return" : 1,
//!          "serverStatus" : 1,
//!          "returnCode" : "200",
//!          "returnString" : "OK",
//!          "content" : { … }
//!       }
//!    }
//! }
//! ```
//!
//! `text` prints one block per distinct result, naming the hosts that share it (like
//! `clush -b`), hosts sorted like `json`'s:
//!
//! ```text
//! 127.0.0.1,127.0.0.2 (2): 200 OK return=true command="/bin/echo hi"
//!     hi
//! 127.0.0.3: can't connect to 127.0.0.3:3440: Connection refused (os error 111)
//! ```
//!
//! In `text`, values that are instants are shown as dates in the local time zone
//! (`lastRsyncFinished=2026-12-02T10:47:50+00:00` rather than `1796208470`; see
//! [`date_keys`]); `json` and `jsonl` keep the values as the hosts sent them.
//!
//! `jsonl` prints, as they happen, `{"host":…,"stream":…,"line":…}` for output lines,
//! `{"host":…,"event":{…}}` for other streamed events, and
//! `{"host":…,"order":…,"result":{…}}` when a host is done, flushing every line.

use std::io::{self, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use deploy_common::fanout::HostResult;
use deploy_common::transport::Outcome;
use deploy_common::wire::message::Event;
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};
use serde_json::{json, Map, Value};

/// Width under which a list of short items is written on the header line.
const INLINE_LIST: usize = 60;

/// serde_json's pretty printer with Perl `JSON::XS` spacing: 3-space indent and
/// `" : "` between a key and its value.
pub struct PerlPretty<'a> {
    inner: PrettyFormatter<'a>,
}

impl Default for PerlPretty<'_> {
    fn default() -> Self {
        PerlPretty {
            inner: PrettyFormatter::with_indent(b"   "),
        }
    }
}

impl Formatter for PerlPretty<'_> {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.inner.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.inner.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b" : ")
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object_value(w)
    }
}

/// Writes `value` in the Perl pretty layout, with a trailing newline.
pub fn write_perl_pretty(out: &mut impl Write, value: &Value) -> io::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, PerlPretty::default());
    value.serialize(&mut ser).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// Sorts results by host in natural order (`web2` before `web10`, `h:99` before
/// `h:3440`), so that two runs over the same hosts print the same document whatever
/// order the answers came in. Ties (one host through two proxies) keep their order.
pub fn sort_by_host(results: &mut [&HostResult]) {
    results.sort_by(|a, b| natural_cmp(&a.host, &b.host));
}

/// Compares two names with their runs of digits as numbers (`web9` < `web10`); runs
/// equal as numbers (`01`, `1`) are ordered by length, then the text decides.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut x, mut y) = (a, b);
    loop {
        let (Some(cx), Some(cy)) = (x.chars().next(), y.chars().next()) else {
            return x.len().cmp(&y.len()).then_with(|| a.cmp(b));
        };
        if cx.is_ascii_digit() && cy.is_ascii_digit() {
            let end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (dx, rx) = x.split_at(end(x));
            let (dy, ry) = y.split_at(end(y));
            let (tx, ty) = (dx.trim_start_matches('0'), dy.trim_start_matches('0'));
            let by_value = tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty));
            match by_value.then_with(|| dx.len().cmp(&dy.len())) {
                Ordering::Equal => (x, y) = (rx, ry),
                other => return other,
            }
        } else {
            match cx.cmp(&cy) {
                Ordering::Equal => (x, y) = (&x[cx.len_utf8()..], &y[cy.len_utf8()..]),
                other => return other,
            }
        }
    }
}

/// The original client's document: host → order → record, in the order of `results`.
pub fn document(order: &str, results: &[&HostResult]) -> Value {
    let mut hosts = Map::new();
    for r in results {
        let mut by_order = Map::new();
        by_order.insert(order.to_owned(), Value::Object(r.outcome.to_json()));
        hosts.insert(r.host.clone(), Value::Object(by_order));
    }
    Value::Object(hosts)
}

/// One JSON line for a streamed event: `{host, stream, line}` for an output line,
/// `{host, event}` for the others.
pub fn event_line(host: &str, event: &Event) -> Value {
    match event {
        Event::Line { stream, line, .. } => json!({ "host": host, "stream": stream, "line": line }),
        _ => json!({ "host": host, "event": event }),
    }
}

/// One JSON line for a finished host.
pub fn result_line(order: &str, result: &HostResult) -> Value {
    json!({ "host": result.host, "order": order, "result": result.outcome.to_json() })
}

/// A result as text: a header line and indented body lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Block {
    /// What follows `host: ` on the first line.
    pub header: String,
    /// Further lines, each already indented.
    pub body: Vec<String>,
}

/// Text form of one host's result. Failures carry their cause.
pub fn text_block(order: &str, outcome: &Outcome) -> Block {
    match outcome {
        Outcome::Reply(_) => record_block(order, &outcome.to_json()),
        Outcome::Unreachable { .. } => Block {
            header: outcome.to_string(),
            body: Vec::new(),
        },
        Outcome::Timeout(_) => Block {
            header: outcome
                .to_json()
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or("timed out")
                .to_owned(),
            body: Vec::new(),
        },
        Outcome::Failed(why) => Block {
            header: format!("error: {why}"),
            body: Vec::new(),
        },
        Outcome::Relayed { record, via } => {
            let mut block = record_block(order, record);
            block.header.push_str(&format!(" (via {via})"));
            block
        }
    }
}

/// Text form of a record (`return`, `serverStatus`, `returnCode`, `returnString`,
/// `content`), also used for the records a proxy nests in its content.
fn record_block(order: &str, record: &Map<String, Value>) -> Block {
    let content = record.get("content").unwrap_or(&Value::Null);
    let (Some(code), reason) = (
        record.get("returnCode").and_then(Value::as_str),
        record.get("returnString").and_then(Value::as_str),
    ) else {
        return Block {
            header: match content {
                Value::String(s) => s.clone(),
                Value::Null => "no reply".to_owned(),
                other => other.to_string(),
            },
            body: Vec::new(),
        };
    };
    let mut header = format!("{code} {}", reason.unwrap_or_default());
    let mut body = Vec::new();
    match content {
        Value::Null => {}
        Value::String(text) => {
            let mut lines = text.lines();
            if let Some(first) = lines.next() {
                header.push(' ');
                header.push_str(first);
            }
            body.extend(lines.map(|l| format!("    {l}")));
        }
        Value::Object(map) if is_proxy_document(map) => {
            for (host, by_order) in map {
                let Some((inner_order, record)) = by_order
                    .as_object()
                    .and_then(|m| m.iter().next())
                    .and_then(|(o, r)| r.as_object().map(|r| (o, r)))
                else {
                    continue;
                };
                let inner = record_block(inner_order, record);
                body.push(format!("    {host}: {}", inner.header));
                body.extend(inner.body.iter().map(|l| format!("    {l}")));
            }
        }
        Value::Object(map) => body_fields(order, map, &mut header, &mut body),
        other => {
            header.push(' ');
            header.push_str(&other.to_string());
        }
    }
    Block { header, body }
}

/// Whether a 200 body is a proxy's document (host → order → record).
fn is_proxy_document(map: &Map<String, Value>) -> bool {
    deploy_common::transport::proxy_records(map).is_some()
}

/// `key=value` pairs on the header; decoded `content` and long lists as body lines.
fn body_fields(order: &str, map: &Map<String, Value>, header: &mut String, body: &mut Vec<String>) {
    for (key, value) in map {
        match (key.as_str(), value) {
            ("content", Value::String(b64)) => match STANDARD.decode(b64) {
                Ok(bytes) => body.extend(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .map(|l| format!("    {l}")),
                ),
                Err(_) => push_pair(header, key, b64),
            },
            ("command", Value::String(b64)) if order == "exec" || order == "run" => {
                let command = STANDARD
                    .decode(b64)
                    .map(|b| String::from_utf8_lossy(&b).trim_end().to_owned())
                    .unwrap_or_else(|_| b64.clone());
                push_pair(header, key, &command);
            }
            (_, Value::String(s)) => match date_text(key, s, &chrono::Local) {
                Some(date) => push_pair(header, key, &date),
                None => push_pair(header, key, s),
            },
            (_, Value::Array(items)) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect();
                let short = items
                    .iter()
                    .all(|i| !i.is_empty() && !i.contains(char::is_whitespace));
                let width: usize = items.iter().map(|i| i.len() + 1).sum();
                if short && width <= INLINE_LIST {
                    header.push_str(&format!(" {key}=[{}]", items.join(",")));
                } else {
                    header.push_str(&format!(" {key}=({})", items.len()));
                    body.push(format!("    {key}:"));
                    body.extend(items.iter().map(|i| format!("      {i}")));
                }
            }
            (_, other) => push_pair(header, key, &other.to_string()),
        }
    }
}

/// The keys whose values are instants: Unix seconds, or milliseconds.
///
/// | key | order | unit |
/// |---|---|---|
/// | `lastRsyncFinished` | `status` | seconds |
/// | `transferStarted` | `status`, `rsync` (already running) | seconds |
/// | `expires` | `lock` | seconds (`0`: held by a session, no lease) |
/// | `switched_at` | `deploy`, `rollback`, `confirm` | milliseconds |
pub fn date_keys(key: &str) -> Option<DateUnit> {
    match key {
        "lastRsyncFinished" | "transferStarted" | "expires" => Some(DateUnit::Seconds),
        "switched_at" => Some(DateUnit::Millis),
        _ => None,
    }
}

/// How an instant is counted from the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateUnit {
    /// Whole seconds.
    Seconds,
    /// Milliseconds.
    Millis,
}

/// `value` of `key` as a date in `zone` (RFC 3339, to the second or the millisecond),
/// if `key` holds instants and `value` is one; `None` otherwise (0 included: it means
/// "none", not 1970).
fn date_text<Z: chrono::TimeZone>(key: &str, value: &str, zone: &Z) -> Option<String>
where
    Z::Offset: std::fmt::Display,
{
    let unit = date_keys(key)?;
    let n: i64 = value.parse().ok().filter(|&n| n > 0)?;
    let (secs, nanos, format) = match unit {
        DateUnit::Seconds => (n, 0, "%Y-%m-%dT%H:%M:%S%:z"),
        DateUnit::Millis => (
            n.div_euclid(1000),
            u32::try_from(n.rem_euclid(1000)).ok()? * 1_000_000,
            "%Y-%m-%dT%H:%M:%S%.3f%:z",
        ),
    };
    let date = zone.timestamp_opt(secs, nanos).single()?;
    Some(date.format(format).to_string())
}

/// Appends ` key=value`, quoting values that are empty or contain blanks or quotes.
fn push_pair(header: &mut String, key: &str, value: &str) {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
        header.push_str(&format!(" {key}={value:?}"));
    } else {
        header.push_str(&format!(" {key}={value}"));
    }
}

/// Folds hosts with identical blocks together, in the order of first appearance, and
/// writes `hosts (n): header` (just `host: header` for one) and the body lines.
pub fn write_text(out: &mut impl Write, order: &str, results: &[&HostResult]) -> io::Result<()> {
    let mut groups: Vec<(Block, Vec<&str>)> = Vec::new();
    for r in results {
        let block = text_block(order, &r.outcome);
        match groups.iter_mut().find(|(b, _)| *b == block) {
            Some((_, hosts)) => hosts.push(&r.host),
            None => groups.push((block, vec![&r.host])),
        }
    }
    for (block, hosts) in groups {
        let names = hosts.join(",");
        if hosts.len() > 1 {
            writeln!(out, "{names} ({}): {}", hosts.len(), block.header)?;
        } else {
            writeln!(out, "{names}: {}", block.header)?;
        }
        for line in &block.body {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_common::order::Reply;
    use std::time::Duration;

    fn result(host: &str, outcome: Outcome) -> HostResult {
        HostResult {
            index: 0,
            host: host.into(),
            outcome,
            elapsed: Duration::ZERO,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn hosts_sort_naturally() {
        let mut names = vec![
            "web10",
            "web9",
            "web09",
            "db1",
            "127.0.0.1:3440",
            "127.0.0.1:99",
            "web",
            "ssh://a",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "127.0.0.1:99",
                "127.0.0.1:3440",
                "db1",
                "ssh://a",
                "web",
                "web9",
                "web09",
                "web10"
            ]
        );
        let results = [
            result("b2", Outcome::Timeout(Duration::ZERO)),
            result("b10", Outcome::Timeout(Duration::ZERO)),
            result("a", Outcome::Timeout(Duration::ZERO)),
        ];
        let mut refs: Vec<&HostResult> = results.iter().collect();
        sort_by_host(&mut refs);
        let hosts: Vec<&str> = refs.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(hosts, ["a", "b2", "b10"]);
    }

    #[test]
    fn perl_pretty_layout() {
        let mut out = Vec::new();
        let v = json!({"a": {"b": [1, "x"], "c": {}, "d": [], "e": null}});
        write_perl_pretty(&mut out, &v).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\n   \"a\" : {\n      \"b\" : [\n         1,\n         \"x\"\n      ],\n      \"c\" : {},\n      \"d\" : [],\n      \"e\" : null\n   }\n}\n"
        );
    }

    #[test]
    fn text_folds_identical_results() {
        let ok = Outcome::Reply(Reply::ok(obj(json!({
            "return": "true", "command": "L2Jpbi9lY2hvIGhpIA==", "content": "aGkKdGhlcmUK"
        }))));
        let a = result("a", ok.clone());
        let b = result("b", ok);
        let c = result("c", Outcome::Reply(Reply::error(400, "exec[x] not found!")));
        let d = result("d", Outcome::Timeout(Duration::from_secs(3)));
        let mut out = Vec::new();
        write_text(&mut out, "exec", &[&a, &c, &b, &d]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,b (2): 200 OK return=true command=\"/bin/echo hi\"\n    hi\n    there\n\
             c: 400 Bad Request exec[x] not found!\n\
             d: Process Timeout(3)!\n"
        );
    }

    #[test]
    fn text_of_status_lists_and_proxy_documents() {
        let status = Outcome::Reply(Reply::ok(obj(json!({
            "return": "true", "alreadyRsync": "true", "process": ["12", "34"]
        }))));
        assert_eq!(
            text_block("status", &status).header,
            "200 OK return=true alreadyRsync=true process=[12,34]"
        );
        let proxy = Outcome::Reply(Reply::ok(obj(json!({
            "10.0.0.1": {"exec": {"return": 0, "serverStatus": 0, "returnCode": null,
                                  "returnString": null, "content": "can't connect to 10.0.0.1:3440"}},
            "10.0.0.2": {"exec": {"return": 1, "serverStatus": 1, "returnCode": "200",
                                  "returnString": "OK", "content": {"return": "true"}}}
        }))));
        assert_eq!(
            text_block("exec", &proxy),
            Block {
                header: "200 OK".into(),
                body: vec![
                    "    10.0.0.1: can't connect to 10.0.0.1:3440".into(),
                    "    10.0.0.2: 200 OK return=true".into(),
                ]
            }
        );
    }

    #[test]
    fn instants_are_dates_in_text() {
        let utc = chrono::Utc;
        assert_eq!(
            date_text("lastRsyncFinished", "1796208470", &utc).as_deref(),
            Some("2026-12-02T10:47:50+00:00")
        );
        assert_eq!(
            date_text("switched_at", "1796208470123", &utc).as_deref(),
            Some("2026-12-02T10:47:50.123+00:00")
        );
        assert_eq!(date_text("expires", "0", &utc), None, "0 is no instant");
        assert_eq!(date_text("lastRsyncCode", "1796208470", &utc), None);
        assert_eq!(date_text("transferStarted", "soon", &utc), None);
        let east = chrono::FixedOffset::east_opt(3600).unwrap();
        assert_eq!(
            date_text("transferStarted", "1796208470", &east).as_deref(),
            Some("2026-12-02T11:47:50+01:00")
        );
    }

    #[test]
    fn document_keeps_host_and_key_order() {
        let z = result("z", Outcome::Reply(Reply::empty(401)));
        let a = result(
            "a",
            Outcome::Unreachable {
                address: "a:1".into(),
                cause: "refused".into(),
            },
        );
        assert_eq!(
            document("status", &[&z, &a]).to_string(),
            r#"{"z":{"status":{"return":0,"serverStatus":1,"returnCode":"401","returnString":"Unauthorized","content":null}},"a":{"status":{"return":0,"serverStatus":0,"returnCode":null,"returnString":null,"content":"can't connect to a:1"}}}"#
        );
    }
}
