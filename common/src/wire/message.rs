//! Messages carried in sealed v2 records: JSON objects tagged by `type`.
//!
//! ```text
//! client → agent   {"type":"request","id":1,"order":"exec","options":"job,arg","args":"","api_key":"","follow":true}
//! agent → client   {"type":"event","id":1,"event":{"kind":"line","stream":"stdout","line":"hello"}}
//! proxy → client   {"type":"event","id":1,"host":"web1","event":{"kind":"line",…}}   (TaggedEvent)
//! agent → client   {"type":"reply","id":1,"code":200,"body":{"return":"true",…}}
//! agent → client   {"type":"reply","id":1,"code":400,"text":"exec[x] not found!"}
//! ```
//!
//! A connection carries any number of requests one after another; each request gets zero
//! or more events and exactly one reply with the same `id`.
//!
//! An order that takes a body (`upload`: a tar stream) asks for it once it is ready to
//! receive it; the client then sends it in `data` messages, the last one marked `end`,
//! and reads events and the reply as for any order. An order that refuses (403…) just
//! replies, and no body is sent.
//!
//! ```text
//! agent → client   {"type":"continue","id":1}
//! client → agent   {"type":"data","id":1,"data":"<base64, at most 64 KiB decoded>"}  …
//! client → agent   {"type":"data","id":1,"data":"","end":true}
//! ```

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
    /// The order is ready for its body: send it (as [`Message::Data`]).
    Continue {
        /// The request's identifier.
        id: u64,
    },
    /// A piece of a request's body; the last one has `end` set.
    Data {
        /// The request's identifier.
        id: u64,
        /// The bytes, base64.
        data: String,
        /// This is the last piece.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        end: bool,
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
        /// The stream ended after this text, without a newline (`printf abc`): a raw
        /// copy of the output (`-q`) adds none. Omitted when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
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
    /// A piece of a byte stream the order sends back (`fetch`: its tar archive), in
    /// order; the stream ends with the reply.
    Data {
        /// The bytes, base64 (at most 64 KiB decoded).
        data: String,
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

/// An event and, when a proxy relays it for one of its agents, that agent's name as the
/// proxy names it (the `host` of its [`Event::Host`] result), so that a client can show
/// each agent's output lines and progress under the agent's name rather than the
/// proxy's.
///
/// On the wire the name is an optional `host` member of the event message, omitted when
/// there is none (an untagged event encodes exactly as [`Message::Event`]). It is
/// additive: a decoder that does not know it ignores it and attributes the event to the
/// proxy, as before.
///
/// ```text
/// {"type":"event","id":1,"host":"web1","event":{"kind":"line","stream":"stdout","line":"hello"}}
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedEvent {
    /// The agent the event is about, if a proxy relayed it.
    pub host: Option<String>,
    /// The event.
    pub event: Event,
}

impl From<Event> for TaggedEvent {
    /// An event about the peer itself (untagged).
    fn from(event: Event) -> TaggedEvent {
        TaggedEvent { host: None, event }
    }
}

impl TaggedEvent {
    /// An event about `host`.
    pub fn about(host: impl Into<String>, event: Event) -> TaggedEvent {
        TaggedEvent {
            host: Some(host.into()),
            event,
        }
    }

    /// Encodes the event message for request `id` as JSON.
    pub fn encode(&self, id: u64) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            id: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            host: Option<&'a str>,
            event: &'a Event,
        }
        let wire = Wire {
            kind: "event",
            id,
            host: self.host.as_deref(),
            event: &self.event,
        };
        // As for Message::encode: plain data, cannot fail; never panic.
        serde_json::to_vec(&wire).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// The optional `host` tag of an event message.
#[derive(Deserialize)]
struct HostTag {
    #[serde(default)]
    host: Option<String>,
}

impl Message {
    /// Decodes a payload, with the `host` tag if it is an event message that has one
    /// ([`TaggedEvent`]). A tag that is empty or holds control characters is ignored.
    pub fn decode_tagged(bytes: &[u8]) -> Result<(Message, Option<String>), super::WireError> {
        let message = Message::decode(bytes)?;
        let host = match &message {
            Message::Event { .. } => serde_json::from_slice::<HostTag>(bytes)
                .ok()
                .and_then(|tag| tag.host)
                .filter(|h| !h.is_empty() && !h.chars().any(char::is_control)),
            _ => None,
        };
        Ok((message, host))
    }

    /// A body piece for request `id`.
    pub fn data(id: u64, bytes: &[u8], end: bool) -> Message {
        use base64::Engine as _;
        Message::Data {
            id,
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
            end,
        }
    }

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
                partial: false,
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

    /// A relayed event carries its agent's name; without one it encodes exactly as
    /// before, and a decoder that ignores the tag still reads the event.
    #[test]
    fn tagged_events() {
        let event = Event::Line {
            stream: Stream::Stdout,
            line: "hi".into(),
            partial: false,
        };
        let plain = TaggedEvent::from(event.clone()).encode(3);
        let message = Message::Event {
            id: 3,
            event: event.clone(),
        };
        assert_eq!(plain, message.encode());
        assert_eq!(
            Message::decode_tagged(&plain).unwrap(),
            (message.clone(), None)
        );

        let tagged = TaggedEvent::about("web1:3445", event.clone()).encode(3);
        assert_eq!(
            String::from_utf8(tagged.clone()).unwrap(),
            r#"{"type":"event","id":3,"host":"web1:3445","event":{"kind":"line","stream":"stdout","line":"hi"}}"#
        );
        assert_eq!(Message::decode(&tagged).unwrap(), message, "old decoders");
        assert_eq!(
            Message::decode_tagged(&tagged).unwrap(),
            (message.clone(), Some("web1:3445".to_owned()))
        );
        for bad in [r#""""#, r#""a\nb""#, "5", "null"] {
            let text = format!(
                r#"{{"type":"event","id":3,"host":{bad},"event":{{"kind":"line","stream":"stdout","line":"hi"}}}}"#
            );
            assert_eq!(
                Message::decode_tagged(text.as_bytes()).unwrap(),
                (message.clone(), None),
                "{bad}"
            );
        }
        // Only event messages have a tag.
        let reply = br#"{"type":"reply","id":3,"code":200,"host":"x"}"#;
        assert_eq!(Message::decode_tagged(reply).unwrap().1, None);
    }
}
