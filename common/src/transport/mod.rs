//! Delivering one order to one target and streaming its events back.
//!
//! # Layout
//!
//! | item | owns |
//! |---|---|
//! | [`Transport`] | the trait every way of reaching a target implements |
//! | [`Outcome`] | how a delivery ended: a reply, or why there is none |
//! | [`agent`] | [`AgentTransport`]: TCP to a deploy agent (or proxy), protocol v2 or v1 |
//! | [`mux`] | [`Mux`]: each target to the transport of its scheme (agent or `ssh://`) |
//!
//! [`Transport::connect`] is the connect stage of strict runs ([`crate::gate`]): every
//! target reached and authenticated before anything is sent to any.
//!
//! # Design
//!
//! A transport knows how to reach a target and nothing about who asked: the fan-out
//! engine ([`crate::fanout`]) drives any number of deliveries at once through a
//! `dyn Transport`, so an SSH transport or a chained proxy can join later without the
//! engine or its callers changing. Events come with the name of the host they are about
//! when a proxy relayed them ([`TaggedEvent`]), through the one delivery method. A
//! delivery never fails with an error: everything that can go wrong with one host is
//! an [`Outcome`], which renders to the original client's per-host JSON record
//! ([`Outcome::to_json`]).
//!
//! ```text
//! Outcome            return serverStatus returnCode returnString content
//! Reply 200          1      1            "200"      "OK"         {…agent body…}
//! Reply 4xx/5xx      0      1            "400"      "Bad Request" "text" | null
//! Unreachable        0      0            null       null         "can't connect to h:p"
//! Timeout(t)         0      0            null       null         "Process Timeout(t)!"
//! Failed(why)        0      1            null       null         "why"
//! ```

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::order::{Body, Reply, Request};
use crate::target::Target;
use crate::wire::message::TaggedEvent;

pub mod agent;
pub mod mux;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use agent::{AgentTransport, Protocol};
pub use mux::Mux;

/// A boxed, sendable future, the return type of [`Transport::deliver`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way of delivering one order to one target.
pub trait Transport: Send + Sync {
    /// Delivers `request` to `target`, sends every event the target streams on `events`
    /// as it arrives (waiting when the receiver is behind; a closed receiver just drops
    /// them), and resolves to how the exchange ended. Implementations bound the whole
    /// exchange by their own deadline and never panic on anything a peer sends. The
    /// sender is dropped when the future completes, which ends the event stream.
    ///
    /// An event is about the target itself ([`TaggedEvent::from`] an
    /// [`Event`](crate::wire::message::Event), no host), unless a proxy relayed it for one of its agents: then it keeps that
    /// agent's name ([`TaggedEvent::host`]), which the fan-out engine reports instead of
    /// the target's. Only transports that can reach a proxy (and those that wrap them)
    /// ever tag one.
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome>;

    /// The connect stage of a strict run ([`crate::gate`]): reaches `target` and proves
    /// who we are (connects and authenticates) without starting anything, so that a run
    /// can start nowhere unless every target is there. `Err` is the outcome the target
    /// gets (unreachable, refused…). A transport that keeps connections (the agent
    /// transport with a pool) keeps this one for the delivery that follows. The default
    /// checks nothing: a transport that cannot tell before delivering passes.
    fn connect<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), Outcome>> {
        let _ = (target, request);
        Box::pin(async { Ok(()) })
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The target answered (any code; a refused v2 handshake becomes its code and text).
    Reply(Reply),
    /// No connection could be made.
    Unreachable {
        /// `host:port` as tried.
        address: String,
        /// Why (resolution failure, refused, connect timeout…).
        cause: String,
    },
    /// No reply within the deadline, which is given.
    Timeout(Duration),
    /// Connected, but the exchange broke: a protocol mismatch, a bad record, a reply that
    /// is not a reply. The text says what happened.
    Failed(String),
    /// The result of an agent behind a proxy, relayed as the original's per-host record
    /// (`return`, `serverStatus`, `returnCode`, `returnString`, `content`).
    Relayed {
        /// The record.
        record: Map<String, Value>,
        /// The proxy (or chain of proxies, outermost first) that relayed it.
        via: String,
    },
}

/// How a caller should judge an [`Outcome`], e.g. for an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Code 200 and the body's `return` is `"true"` or absent.
    Succeeded,
    /// The target answered, but with another code or `return` other than `"true"`.
    OrderFailed,
    /// No usable answer: unreachable, timed out or failed.
    HostFailed,
}

impl Outcome {
    /// Judges the outcome (see [`Verdict`]).
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::Reply(reply) if reply.code == 200 => match &reply.body {
                Body::Json(map) => match map.get("return") {
                    None => Verdict::Succeeded,
                    Some(Value::String(s)) if s == "true" => Verdict::Succeeded,
                    Some(_) => Verdict::OrderFailed,
                },
                Body::Text(_) | Body::Empty => Verdict::Succeeded,
            },
            Outcome::Reply(_) => Verdict::OrderFailed,
            Outcome::Unreachable { .. } | Outcome::Timeout(_) | Outcome::Failed(_) => {
                Verdict::HostFailed
            }
            Outcome::Relayed { record, .. } => relayed_verdict(record),
        }
    }

    /// The original's `serverStatus`: false when the target could not be reached or did
    /// not answer in time.
    pub fn server_status(&self) -> bool {
        match self {
            Outcome::Unreachable { .. } | Outcome::Timeout(_) => false,
            Outcome::Relayed { record, .. } => record.get("serverStatus") != Some(&Value::from(0)),
            _ => true,
        }
    }

    /// The reply, if the target answered.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Outcome::Reply(reply) => Some(reply),
            _ => None,
        }
    }

    /// The original client's per-host record, keys in this fixed order: `return` (1 iff
    /// code 200), `serverStatus` (1/0), `returnCode` (string or null), `returnString`
    /// (reason or null), `content` (the 200 body as an object, an error text, or null).
    /// Unreachable targets get `"can't connect to host:port"` without the cause, as in
    /// the original; callers log the cause separately.
    pub fn to_json(&self) -> Map<String, Value> {
        if let Outcome::Relayed { record, via } = self {
            let mut map = record.clone();
            map.insert("via".into(), Value::String(via.clone()));
            return map;
        }
        let (ok, code, reason, content) = match self {
            Outcome::Reply(reply) => (
                reply.code == 200,
                Value::String(reply.code.to_string()),
                Value::String(reply.reason().to_owned()),
                reply.content(),
            ),
            Outcome::Unreachable { address, .. } => (
                false,
                Value::Null,
                Value::Null,
                Value::String(format!("can't connect to {address}")),
            ),
            Outcome::Timeout(deadline) => (
                false,
                Value::Null,
                Value::Null,
                Value::String(format!("Process Timeout({})!", seconds(*deadline))),
            ),
            Outcome::Failed(why) => (false, Value::Null, Value::Null, Value::String(why.clone())),
            Outcome::Relayed { .. } => (false, Value::Null, Value::Null, Value::Null),
        };
        let mut map = Map::new();
        map.insert("return".into(), Value::from(u8::from(ok)));
        map.insert(
            "serverStatus".into(),
            Value::from(u8::from(self.server_status())),
        );
        map.insert("returnCode".into(), code);
        map.insert("returnString".into(), reason);
        map.insert("content".into(), content);
        map
    }
}

/// A duration in seconds as a person writes it: `5`, `0.5`.
pub fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}", d.as_secs_f64())
    }
}

impl fmt::Display for Outcome {
    /// One line for logs: `200 OK`, `can't connect to h:p: <cause>`,
    /// `no reply within 5 s`, or the failure text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Reply(reply) => write!(f, "{} {}", reply.code, reply.reason()),
            Outcome::Unreachable { address, cause } => {
                write!(f, "can't connect to {address}: {cause}")
            }
            Outcome::Timeout(deadline) => write!(f, "no reply within {} s", seconds(*deadline)),
            Outcome::Failed(why) => f.write_str(why),
            Outcome::Relayed { record, via } => {
                let text = |key: &str| match record.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "null".into(),
                };
                if record.get("serverStatus") == Some(&Value::from(0)) {
                    write!(f, "{} (via {via})", text("content"))
                } else {
                    write!(
                        f,
                        "{} {} (via {via})",
                        text("returnCode"),
                        text("returnString")
                    )
                }
            }
        }
    }
}

/// The verdict of a relayed per-host record: unreachable or broken hosts (no code)
/// failed; 200 with a `return` other than `"true"` in the content, or another code, is a
/// failed order. The verdict of [`record_outcome`].
pub fn relayed_verdict(record: &Map<String, Value>) -> Verdict {
    record_outcome(record).verdict()
}

/// The outcome a per-host record (`return`, `serverStatus`, `returnCode`,
/// `returnString`, `content`) stands for: the inverse of [`Outcome::to_json`], as far as
/// the record tells (an unreachable host's cause is not in it). A proxy relays its
/// agents' results as records, so this is how a caller judges and summarises them like
/// its own targets' outcomes.
///
/// ```text
/// returnCode "403", content "text"          Reply 403 (text)
/// returnCode "200", content {…}             Reply 200 (the object)
/// serverStatus 0, "Process Timeout(2)!"     Timeout(2 s)
/// serverStatus 0, "can't connect to h:p"    Unreachable h:p
/// serverStatus 1, no code, content "why"    Failed(why)
/// ```
pub fn record_outcome(record: &Map<String, Value>) -> Outcome {
    let content = record.get("content").unwrap_or(&Value::Null);
    let text = match content {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if record.get("serverStatus") == Some(&Value::from(0)) {
        let timeout = text
            .strip_prefix("Process Timeout(")
            .and_then(|t| t.strip_suffix(")!"))
            .and_then(|t| t.parse::<f64>().ok())
            .and_then(|t| Duration::try_from_secs_f64(t).ok());
        return match timeout {
            Some(deadline) => Outcome::Timeout(deadline),
            None => Outcome::Unreachable {
                address: text
                    .strip_prefix("can't connect to ")
                    .unwrap_or(&text)
                    .to_owned(),
                cause: String::new(),
            },
        };
    }
    let code = record
        .get("returnCode")
        .and_then(Value::as_str)
        .and_then(|c| c.parse::<u16>().ok());
    let Some(code) = code else {
        return Outcome::Failed(if text.is_empty() {
            "no reply".to_owned()
        } else {
            text
        });
    };
    let body = match content {
        Value::Object(map) => Body::Json(map.clone()),
        Value::Null => Body::Empty,
        _ => Body::Text(text),
    };
    Outcome::Reply(Reply { code, body })
}

/// One host's entry in a proxy's document: host, order, record.
pub type ProxyRecord<'a> = (&'a str, &'a str, &'a Map<String, Value>);

/// The per-host records of a proxy's document, `{host: {order: record}}` (what a proxy
/// answers a v1 caller, spec §5.4), in the document's order; `None` if `body` is not
/// such a document (an agent's own body, or no host at all).
pub fn proxy_records(body: &Map<String, Value>) -> Option<Vec<ProxyRecord<'_>>> {
    if body.is_empty() {
        return None;
    }
    body.iter()
        .map(|(host, by_order)| {
            let by_order = by_order.as_object().filter(|m| m.len() == 1)?;
            let (order, record) = by_order.iter().next()?;
            let record = record
                .as_object()
                .filter(|r| r.contains_key("serverStatus"))?;
            Some((host.as_str(), order.as_str(), record))
        })
        .collect()
}
