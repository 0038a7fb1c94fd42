//! Messages carried in sealed v2 records: JSON objects tagged by `type`.
//!
//! ```text
//! client → agent   {"type":"request","id":1,"order":"exec","options":"job,arg","args":"","api_key":"","follow":true}
//! agent → client   {"type":"event","id":1,"event":{"kind":"line","stream":"stdout","line":"hello"}}
//! agent → client   {"type":"reply","id":1,"code":200,"body":{"return":"true",…}}
//! agent → client   {"type":"reply","id":1,"code":400,"text":"exec[x] not found!"}
//! ```
//!
//! A connection carries any number of requests one after another; each request gets zero
//! or more events and exactly one reply with the same `id`.

use crate::order::{Body, Reply, Request};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A message of the v2 protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// An order to run.
    Request {
        /// Caller-chosen identifier echoed in events and the reply.
        id: u64,
        /// The order.
        #[serde(flatten)]
        request: Request,
    },
    /// Something that happened while the order runs.
    Event {
        /// The request's identifier.
        id: u64,
        /// What happened.
        event: Event,
    },
    /// The order's outcome; the last message for its `id`.
    Reply {
        /// The request's identifier.
        id: u64,
        /// HTTP-like status code.
        code: u16,
        /// A JSON body (results).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Map<String, Value>>,
        /// A text body (errors).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A streamed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// One line of a command's output (without its newline).
    Line {
        /// Where it came from.
        stream: Stream,
        /// The text, lossily decoded as UTF-8.
        line: String,
    },
    /// One agent's result, relayed by a proxy as soon as it arrives.
    Host {
        /// The agent as the proxy names it (`host` or `host:port`).
        host: String,
        /// The order.
        order: String,
        /// The original's per-host object: `return`, `serverStatus`, `returnCode`,
        /// `returnString`, `content`.
        result: Value,
        /// The proxy (or chain of proxies) that relayed it.
        via: String,
    },
    /// Transfer progress (rsync `--info=progress2`).
    Progress {
        /// Bytes transferred so far.
        bytes: u64,
        /// Percentage of the whole, 0–100.
        percent: u8,
        /// Human-readable rate as rsync prints it, e.g. `12.34MB/s`.
        rate: String,
    },
}

impl Message {
    /// The reply message for `reply`.
    pub fn reply(id: u64, reply: &Reply) -> Message {
        let (body, text) = match &reply.body {
            Body::Json(map) => (Some(map.clone()), None),
            Body::Text(t) => (None, Some(t.clone())),
            Body::Empty => (None, None),
        };
        Message::Reply {
            id,
            code: reply.code,
            body,
            text,
        }
    }

    /// Decodes a JSON payload.
    pub fn decode(bytes: &[u8]) -> Result<Message, super::WireError> {
        serde_json::from_slice(bytes).map_err(|e| super::WireError::Malformed(e.to_string()))
    }

    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain data types cannot fail (string keys, no maps with
        // non-string keys); fall back to an empty object rather than panic.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Turns the parts of a reply message back into a [`Reply`].
pub fn into_reply(code: u16, body: Option<Map<String, Value>>, text: Option<String>) -> Reply {
    let body = match (body, text) {
        (Some(map), _) => Body::Json(map),
        (None, Some(t)) => Body::Text(t),
        (None, None) => Body::Empty,
    };
    Reply { code, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let m = Message::Request {
            id: 1,
            request: Request {
                order: "exec".into(),
                options: "service:echo,hi".into(),
                ..Request::default()
            },
        };
        let s = String::from_utf8(m.encode()).unwrap();
        assert_eq!(
            s,
            r#"{"type":"request","id":1,"order":"exec","options":"service:echo,hi","args":"","api_key":""}"#
        );
        assert_eq!(Message::decode(s.as_bytes()).unwrap(), m);

        let e = Message::Event {
            id: 1,
            event: Event::Line {
                stream: Stream::Stderr,
                line: "x".into(),
            },
        };
        let s = String::from_utf8(e.encode()).unwrap();
        assert_eq!(
            s,
            r#"{"type":"event","id":1,"event":{"kind":"line","stream":"stderr","line":"x"}}"#
        );
        assert!(Message::decode(b"{\"type\":\"nope\"}").is_err());
        assert!(Message::decode(b"\xff").is_err());
    }
}
