//! deploy over NATS: agents that dial out to a NATS cluster and serve orders arriving
//! on their subjects, and callers (client, proxy) that reach them there.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`envelope`] | the sealed envelope: requests, reply streams and bodies sealed end to end |
//! | [`identity`] | agents' static X25519 keys, and the callers' pins of them |
//! | [`subjects`] | the subject names |
//! | [`connect`] | a NATS connection from a `[nats]` section |
//! | [`serve`] | the agent's side: subscribe, open, serve through the program's handler |
//! | [`transport`] | the callers' side: [`transport::NatsTransport`] for `nats://` targets, group delivery |
//!
//! # Design
//!
//! NATS only moves bytes: it is not trusted. An order travels as the same v2 messages
//! as on TCP (request, events, continue/data, reply), each sealed in an envelope
//! ([`envelope`]) with keys derived from the agent's `key_cipher` and X25519, so the
//! agent serves only callers that hold its key, replays and reordering are refused,
//! and the servers see subjects and sizes, nothing else. Replies are bound to the
//! agent's static key, which callers pin per name ([`identity`]): no other holder of
//! `key_cipher` (another agent of the group) can answer for it. The agent serves what it
//! opens through the same [`deploy_common::server::conn::Handler`] as its TCP
//! connections (same orders, events, deadlines; access-log lines with wire `nats`).
//!
//! The TCP path stays the default; the agent links this crate for its `[nats]`
//! section only, the client and the proxy for `nats://` targets.

pub mod connect;
pub mod envelope;
pub mod identity;
pub mod serve;
pub mod subjects;
pub mod transport;

pub use transport::NatsTransport;
