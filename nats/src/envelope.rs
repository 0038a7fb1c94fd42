//! The sealed envelope: v2 messages carried over NATS, which is not trusted.
//!
//! NATS moves bytes between subjects; anybody with access to the servers (or to a
//! subject the permissions leave open) may read, drop, reorder, replay or forge them.
//! So every order and every reply is sealed end to end with keys only the caller and
//! the agent can compute, from the agent's shared secret `key_cipher` (the psk of the
//! v2 wire), X25519, and each agent's static X25519 identity key that callers pin by
//! name ([`crate::identity`]).
//!
//! ```text
//! request  = 0x02 | 0x01 | caller_eph_pub[32] | nonce[32] | AES-256-GCM(k_req, iv = 0^12, aad = header[66], plain)
//!   plain  = {"time_ms": <caller's unix ms>, "to": "<subject>", "message": {"type":"request",…}}
//! reply    = 0x02 | 0x02 | agent_eph_pub[32] | seq u64 BE | name_len u8 | name | AES-256-GCM(k_rep, iv = 0^4 | seq, aad = header, plain)
//!   plain  = a v2 message: {"type":"event"|"continue"|"reply",…}
//! body     = 0x02 | 0x03 | caller_eph_pub[32] | seq u64 BE | name_len u8 | name | AES-256-GCM(k_body, iv = 0^4 | seq, aad = header, plain)
//!   plain  = a v2 data message: {"type":"data","id":1,"data":"…","end":…}
//!
//! psk    = SHA-256("deploy nats psk" | key_cipher)
//! k_req  = HKDF-SHA256(salt = psk, ikm = nonce | caller_eph_pub,                    info = "deploy nats c2s")
//! k_rep  = HKDF-SHA256(salt = psk, ikm = ee | es | nonce, info = "deploy nats s2c" | name)
//! k_body = HKDF-SHA256(salt = psk, ikm = ee | es | nonce, info = "deploy nats body" | name)
//!   ee   = X25519(agent_eph, caller_eph)       (forward secrecy of the replies)
//!   es   = X25519(agent_static, caller_eph)    (only the holder of the key pinned for
//!                                               `name` can compute it)
//! ```
//!
//! A request's body (`upload`) follows the v2 exchange: the agent sends `continue`
//! when its order is ready for it, the caller then publishes the body's `data`
//! messages, sealed as a numbered stream of its own, on `deploy.body.<name>.<nonce
//! in hex>`, which the agent subscribed to before saying `continue`.
//!
//! * **Who may order**: only a holder of `key_cipher` can seal a request the agent opens
//!   (AES-GCM authenticates header and body); anything else is dropped unanswered.
//! * **Replay**: the request carries the caller's clock; the agent refuses one more
//!   than [`MAX_SKEW`] away from its own, and any nonce it has already seen within
//!   the window ([`SeenSet`], bounded: when full it refuses new orders rather than
//!   forget one). The nonce is the order's unique id.
//! * **Redirection**: the request names the subject it was published on (`to`); an
//!   agent refuses one that arrived on another subject (an order for `web1` moved to a
//!   group).
//! * **Who may answer**: the reply key mixes in X25519 of the caller's ephemeral key
//!   with the static key the caller pinned for the name the reply claims, so only that
//!   agent can seal a reply the caller opens: another member of the group (same psk),
//!   or anybody holding `key_cipher`, cannot answer for it (finding 2). A reply naming
//!   an agent with no pin is refused ([`EnvelopeError::Unpinned`]).
//! * **Replies**: each agent seals its stream under its own key, bound to the request's
//!   nonce, the agent's name and its static key, with a sequence number from 0 in the
//!   nonce of the cipher. The caller takes only the next number: a dropped, reordered or replayed
//!   message breaks the delivery, and since the final reply's number is the count of
//!   messages before it, a truncated stream cannot end cleanly.
//! * **Forward secrecy — partial.** The reply key mixes the caller's and the agent's
//!   ephemeral X25519 keys, so a later leak of `key_cipher` does not open recorded
//!   replies (outputs, fetched files). The request, sealed before the agent says
//!   anything, depends on `key_cipher` alone: whoever records NATS traffic and later
//!   learns `key_cipher` can read past orders (not their results), and could have
//!   forged orders meanwhile. Sealing requests to the pinned static key too would
//!   close that for orders to one agent, not for a group's single publish; not done.
//! * The agent's ephemeral key is authenticated through `k_rep` (only the holder of
//!   the pinned static key, with the psk, makes a key that opens); a caller seeing
//!   another key later in the same stream refuses it.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, EphemeralPrivateKey, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::{digest, hkdf, rand};
use deploy_common::wire::message::Message;
use serde::{Deserialize, Serialize};

use crate::identity::{AgentKeys, Identity};

/// The envelope format's version byte (2: replies bound to the agent's static key; a
/// version-1 peer's envelopes are refused as such, rather than run with replies
/// nobody can open).
pub const VERSION: u8 = 2;
const KIND_REQUEST: u8 = 1;
const KIND_REPLY: u8 = 2;
const KIND_BODY: u8 = 3;
/// Bytes before a request's ciphertext.
const REQUEST_HEADER: usize = 2 + 32 + 32;
/// AES-GCM tag length.
const TAG: usize = 16;

/// The largest difference between the caller's clock and the agent's accepted.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// Most nonces an agent remembers (orders accepted within the last `2 × MAX_SKEW`).
pub const SEEN_CAPACITY: usize = 100_000;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Too short, wrong version or kind, bad name length.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The AEAD tag did not verify: tampered, or sealed with another key.
    #[error("envelope authentication failed (tampered, or another key)")]
    Forged,
    /// The plaintext is not what it must be.
    #[error("bad sealed content: {0}")]
    Content(String),
    /// The caller's clock is too far from ours.
    #[error("request time {time_ms} ms is {skew_ms} ms away from ours (at most {} s)", MAX_SKEW.as_secs())]
    Skew {
        /// The caller's time.
        time_ms: i64,
        /// The difference.
        skew_ms: i64,
    },
    /// This nonce was already served.
    #[error("replayed request (nonce already seen)")]
    Replayed,
    /// The seen-set is full: refusing is the safe answer.
    #[error("too many requests within the replay window ({SEEN_CAPACITY})")]
    Busy,
    /// Published on another subject than the one it was sealed for.
    #[error("request sealed for subject {sealed:?} arrived on {arrived:?}")]
    WrongSubject {
        /// Sealed for.
        sealed: String,
        /// Arrived on.
        arrived: String,
    },
    /// A reply out of sequence (dropped, reordered or replayed).
    #[error("reply {got} from {name} out of sequence (expected {expected})")]
    Sequence {
        /// The agent.
        name: String,
        /// Number received.
        got: u64,
        /// Number expected.
        expected: u64,
    },
    /// A reply from an agent whose key the caller has not pinned.
    #[error("no NATS key pinned for agent {0} (add the line `deploy-agent --print-nats-key` prints on it to agent_keys)")]
    Unpinned(String),
    /// The crypto library failed (no randomness…).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

/// The pre-shared key derived from `key_cipher`.
#[derive(Clone)]
pub struct Psk([u8; 32]);

impl Psk {
    /// Derives the psk of the envelopes from an agent's `key_cipher`.
    pub fn new(key_cipher: &str) -> Psk {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"deploy nats psk");
        ctx.update(key_cipher.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Psk(out)
    }
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(…)")
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(psk: &Psk, ikm: &[&[u8]], info: &[&[u8]]) -> Result<LessSafeKey, EnvelopeError> {
    let ikm: Vec<u8> = ikm.concat();
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &psk.0).extract(&ikm);
    let okm = prk
        .expand(info, Len32)
        .map_err(|_| EnvelopeError::Crypto("hkdf"))?;
    let mut key = [0u8; 32];
    okm.fill(&mut key)
        .map_err(|_| EnvelopeError::Crypto("hkdf"))?;
    let unbound =
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| EnvelopeError::Crypto("aes key"))?;
    Ok(LessSafeKey::new(unbound))
}

fn iv(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn random32() -> Result<[u8; 32], EnvelopeError> {
    let mut out = [0u8; 32];
    rand::fill(&mut out).map_err(|_| EnvelopeError::Crypto("random"))?;
    Ok(out)
}

fn now_ms() -> i64 {
    deploy_common::order::at::now_ms()
}

/// What a request seals.
#[derive(Serialize, Deserialize)]
struct Plain {
    time_ms: i64,
    to: String,
    message: Message,
}

/// The caller's half of one sealed order: what it needs to open the replies.
pub struct Sealed {
    /// The envelope to publish.
    pub bytes: Vec<u8>,
    /// The keys and state to open every agent's replies.
    pub opener: Opener,
}

/// Seals `message` (a request) for `subject` under `psk`, at the caller's time `now_ms`;
/// replies will be taken only from agents whose keys `pins` holds.
pub fn seal_request(
    psk: &Psk,
    subject: &str,
    message: &Message,
    now_ms: i64,
    pins: Arc<AgentKeys>,
) -> Result<Sealed, EnvelopeError> {
    // Not an `EphemeralPrivateKey`: that one agrees once, and a group's replies come
    // from many agents. It lives as long as the delivery, then is dropped.
    let eph = PrivateKey::generate(&X25519).map_err(|_| EnvelopeError::Crypto("x25519"))?;
    let eph_pub = eph
        .compute_public_key()
        .map_err(|_| EnvelopeError::Crypto("x25519"))?;
    let nonce = random32()?;
    let mut header = Vec::with_capacity(REQUEST_HEADER);
    header.extend_from_slice(&[VERSION, KIND_REQUEST]);
    header.extend_from_slice(eph_pub.as_ref());
    header.extend_from_slice(&nonce);
    let key = derive(psk, &[&nonce, eph_pub.as_ref()], &[b"deploy nats c2s"])?;
    let plain = Plain {
        time_ms: now_ms,
        to: subject.to_owned(),
        message: message.clone(),
    };
    let mut body = serde_json::to_vec(&plain).map_err(|e| EnvelopeError::Content(e.to_string()))?;
    key.seal_in_place_append_tag(iv(0), Aad::from(&header[..]), &mut body)
        .map_err(|_| EnvelopeError::Crypto("seal"))?;
    let mut bytes = header;
    bytes.extend_from_slice(&body);
    Ok(Sealed {
        bytes,
        opener: Opener {
            psk: psk.clone(),
            eph,
            nonce,
            pins,
            streams: HashMap::new(),
        },
    })
}

/// A request the agent opened, and how to seal its replies.
pub struct Opened {
    /// The request (a `Message::Request`).
    pub message: Message,
    /// The caller's clock.
    pub time_ms: i64,
    /// Seals this order's reply stream.
    pub replier: Replier,
    /// Opens the caller's body stream, if the order asks for one.
    pub body: StreamOpener,
    /// The order's nonce, in hex (the body's subject ends with it).
    pub nonce_hex: String,
}

/// Opens a request that arrived on `subject`, for the agent called `name` whose static
/// key is `identity`. Checks the tag, the subject, the clock and (through `seen`)
/// replays, in that order; nothing is recorded in `seen` unless all the rest holds.
pub fn open_request(
    psk: &Psk,
    identity: &Identity,
    name: &str,
    subject: &str,
    bytes: &[u8],
    seen: &mut SeenSet,
    now_ms: i64,
) -> Result<Opened, EnvelopeError> {
    if bytes.len() < REQUEST_HEADER + TAG {
        return Err(EnvelopeError::Malformed("too short"));
    }
    let (header, sealed) = bytes.split_at(REQUEST_HEADER);
    if header.first() != Some(&VERSION) {
        return Err(EnvelopeError::Malformed("unknown version"));
    }
    if header.get(1) != Some(&KIND_REQUEST) {
        return Err(EnvelopeError::Malformed("not a request"));
    }
    let caller_pub = header
        .get(2..34)
        .ok_or(EnvelopeError::Malformed("header"))?;
    let nonce: [u8; 32] = header
        .get(34..66)
        .and_then(|n| n.try_into().ok())
        .ok_or(EnvelopeError::Malformed("header"))?;
    let key = derive(psk, &[&nonce, caller_pub], &[b"deploy nats c2s"])?;
    let mut buf = sealed.to_vec();
    let plain = key
        .open_in_place(iv(0), Aad::from(header), &mut buf)
        .map_err(|_| EnvelopeError::Forged)?;
    let plain: Plain =
        serde_json::from_slice(plain).map_err(|e| EnvelopeError::Content(e.to_string()))?;
    if !matches!(plain.message, Message::Request { .. }) {
        return Err(EnvelopeError::Content("not a request message".into()));
    }
    if plain.to != subject {
        return Err(EnvelopeError::WrongSubject {
            sealed: plain.to,
            arrived: subject.to_owned(),
        });
    }
    let skew = now_ms.saturating_sub(plain.time_ms);
    let max = i64::try_from(MAX_SKEW.as_millis()).unwrap_or(i64::MAX);
    if skew.saturating_abs() > max {
        return Err(EnvelopeError::Skew {
            time_ms: plain.time_ms,
            skew_ms: skew,
        });
    }
    seen.insert(nonce, plain.time_ms, now_ms)?;
    let rng = rand::SystemRandom::new();
    let eph = EphemeralPrivateKey::generate(&X25519, &rng)
        .map_err(|_| EnvelopeError::Crypto("x25519"))?;
    let eph_pub: [u8; 32] = eph
        .compute_public_key()
        .ok()
        .and_then(|k| k.as_ref().try_into().ok())
        .ok_or(EnvelopeError::Crypto("x25519"))?;
    let ee = agreement::agree_ephemeral(
        eph,
        UnparsedPublicKey::new(&X25519, caller_pub),
        EnvelopeError::Crypto("x25519 agreement"),
        |s| Ok(s.to_vec()),
    )?;
    let es = identity.agree(caller_pub)?;
    let name_bytes = name.as_bytes();
    if name_bytes.is_empty() || name_bytes.len() > 255 {
        return Err(EnvelopeError::Malformed("agent name of 1-255 bytes"));
    }
    let key = derive(psk, &[&ee, &es, &nonce], &[b"deploy nats s2c", name_bytes])?;
    let body_key = derive(psk, &[&ee, &es, &nonce], &[b"deploy nats body", name_bytes])?;
    Ok(Opened {
        message: plain.message,
        time_ms: plain.time_ms,
        replier: Replier {
            key,
            eph_pub,
            name: name.to_owned(),
            seq: 0,
            kind: KIND_REPLY,
        },
        body: StreamOpener {
            key: body_key,
            name: name.to_owned(),
            next: 0,
        },
        nonce_hex: hex(&nonce),
    })
}

/// Seals one order's reply stream, numbering its messages.
pub struct Replier {
    key: LessSafeKey,
    eph_pub: [u8; 32],
    name: String,
    seq: u64,
    kind: u8,
}

impl Replier {
    /// Seals the next message of the stream.
    pub fn seal(&mut self, message: &Message) -> Result<Vec<u8>, EnvelopeError> {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&[VERSION, self.kind]);
        bytes.extend_from_slice(&self.eph_pub);
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        let len = u8::try_from(self.name.len()).map_err(|_| EnvelopeError::Malformed("name"))?;
        bytes.push(len);
        bytes.extend_from_slice(self.name.as_bytes());
        let mut body = message.encode();
        self.key
            .seal_in_place_append_tag(iv(self.seq), Aad::from(&bytes[..]), &mut body)
            .map_err(|_| EnvelopeError::Crypto("seal"))?;
        self.seq += 1;
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }
}

/// One agent's reply stream, as the caller follows it.
struct Stream {
    key: LessSafeKey,
    eph_pub: [u8; 32],
    next: u64,
}

/// Opens the replies to one sealed order, from any number of agents.
pub struct Opener {
    psk: Psk,
    /// The caller's X25519 key of this order, agreed with each agent's.
    eph: PrivateKey,
    nonce: [u8; 32],
    /// The agents' static keys, by name: a reply is bound to the one of its name.
    pins: Arc<AgentKeys>,
    streams: HashMap<String, Stream>,
}

/// The parts of a reply envelope before its ciphertext.
struct ReplyHeader<'a> {
    eph_pub: [u8; 32],
    seq: u64,
    name: &'a str,
    header: &'a [u8],
    sealed: &'a [u8],
}

fn parse_stream(bytes: &[u8], kind: u8) -> Result<ReplyHeader<'_>, EnvelopeError> {
    let bad = EnvelopeError::Malformed;
    if bytes.first() != Some(&VERSION) {
        return Err(bad("unknown version"));
    }
    if bytes.get(1) != Some(&kind) {
        return Err(bad("not of the expected kind"));
    }
    let eph_pub: [u8; 32] = bytes
        .get(2..34)
        .and_then(|b| b.try_into().ok())
        .ok_or(bad("too short"))?;
    let seq = u64::from_be_bytes(
        bytes
            .get(34..42)
            .and_then(|b| b.try_into().ok())
            .ok_or(bad("too short"))?,
    );
    let len = usize::from(*bytes.get(42).ok_or(bad("too short"))?);
    let end = 43 + len;
    let name = bytes.get(43..end).ok_or(bad("too short"))?;
    let name = std::str::from_utf8(name).map_err(|_| bad("name not UTF-8"))?;
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    let (header, sealed) = bytes.split_at_checked(end).ok_or(bad("too short"))?;
    if sealed.len() < TAG {
        return Err(bad("too short"));
    }
    Ok(ReplyHeader {
        eph_pub,
        seq,
        name,
        header,
        sealed,
    })
}

impl Opener {
    /// Opens one reply envelope: the agent's name and its message. Refuses a forged
    /// one, and one out of its stream's sequence.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(String, Message), EnvelopeError> {
        let r = parse_stream(bytes, KIND_REPLY)?;
        if !self.streams.contains_key(r.name) {
            let key = self.stream_key(&r.eph_pub, r.name)?;
            self.streams.insert(
                r.name.to_owned(),
                Stream {
                    key,
                    eph_pub: r.eph_pub,
                    next: 0,
                },
            );
        }
        let stream = self
            .streams
            .get_mut(r.name)
            .ok_or(EnvelopeError::Crypto("stream"))?;
        if stream.eph_pub != r.eph_pub {
            return Err(EnvelopeError::Forged);
        }
        let mut buf = r.sealed.to_vec();
        let plain = match stream
            .key
            .open_in_place(iv(r.seq), Aad::from(r.header), &mut buf)
        {
            Ok(plain) => plain,
            Err(_) => {
                if stream.next == 0 {
                    // A forged first message must not pin its key for the real one.
                    self.streams.remove(r.name);
                }
                return Err(EnvelopeError::Forged);
            }
        };
        if r.seq != stream.next {
            return Err(EnvelopeError::Sequence {
                name: r.name.to_owned(),
                got: r.seq,
                expected: stream.next,
            });
        }
        stream.next += 1;
        let message = Message::decode(plain).map_err(|e| EnvelopeError::Content(e.to_string()))?;
        Ok((r.name.to_owned(), message))
    }

    /// The nonce of the order, in hex (the body's subject ends with it).
    pub fn nonce_hex(&self) -> String {
        hex(&self.nonce)
    }

    /// Seals the body for agent `name`, once it said `continue` (its key is known from
    /// its first reply).
    pub fn body_sealer(&self, name: &str) -> Result<Replier, EnvelopeError> {
        let stream = self
            .streams
            .get(name)
            .ok_or(EnvelopeError::Content(format!("no reply from {name} yet")))?;
        let (ee, es) = self.agreements(&stream.eph_pub, name)?;
        let key = derive(
            &self.psk,
            &[&ee, &es, &self.nonce],
            &[b"deploy nats body", name.as_bytes()],
        )?;
        let eph_pub: [u8; 32] = self
            .eph
            .compute_public_key()
            .ok()
            .and_then(|k| k.as_ref().try_into().ok())
            .ok_or(EnvelopeError::Crypto("x25519"))?;
        Ok(Replier {
            key,
            eph_pub,
            name: name.to_owned(),
            seq: 0,
            kind: KIND_BODY,
        })
    }

    /// X25519 of the caller's key with agent `name`'s ephemeral key, and with the
    /// static key pinned for `name`.
    fn agreements(
        &self,
        agent_eph: &[u8],
        name: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), EnvelopeError> {
        let pinned = self
            .pins
            .get(name)
            .ok_or_else(|| EnvelopeError::Unpinned(name.to_owned()))?;
        let agree = |public: &[u8]| {
            agreement::agree(
                &self.eph,
                UnparsedPublicKey::new(&X25519, public),
                EnvelopeError::Forged,
                |s| Ok(s.to_vec()),
            )
        };
        Ok((agree(agent_eph)?, agree(pinned)?))
    }

    fn stream_key(&self, agent_pub: &[u8], name: &str) -> Result<LessSafeKey, EnvelopeError> {
        let (ee, es) = self.agreements(agent_pub, name)?;
        derive(
            &self.psk,
            &[&ee, &es, &self.nonce],
            &[b"deploy nats s2c", name.as_bytes()],
        )
    }
}

/// Opens the caller's body stream on the agent's side, in sequence only.
pub struct StreamOpener {
    key: LessSafeKey,
    name: String,
    next: u64,
}

impl StreamOpener {
    /// Opens the next piece of the body.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Message, EnvelopeError> {
        let r = parse_stream(bytes, KIND_BODY)?;
        if r.name != self.name {
            return Err(EnvelopeError::Forged);
        }
        let mut buf = r.sealed.to_vec();
        let plain = self
            .key
            .open_in_place(iv(r.seq), Aad::from(r.header), &mut buf)
            .map_err(|_| EnvelopeError::Forged)?;
        if r.seq != self.next {
            return Err(EnvelopeError::Sequence {
                name: self.name.clone(),
                got: r.seq,
                expected: self.next,
            });
        }
        self.next += 1;
        Message::decode(plain).map_err(|e| EnvelopeError::Content(e.to_string()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The nonces of the orders accepted within the replay window, oldest first.
#[derive(Default)]
pub struct SeenSet {
    order: VecDeque<([u8; 32], i64)>,
    set: std::collections::HashSet<[u8; 32]>,
}

impl SeenSet {
    /// An empty set.
    pub fn new() -> SeenSet {
        SeenSet::default()
    }

    /// Records `nonce` (sent at `time_ms`), forgetting those that can no longer pass the
    /// clock check; refuses one already there, or any when full.
    pub fn insert(
        &mut self,
        nonce: [u8; 32],
        time_ms: i64,
        now_ms: i64,
    ) -> Result<(), EnvelopeError> {
        let window = i64::try_from(MAX_SKEW.as_millis()).unwrap_or(i64::MAX);
        // A request with time t is accepted until now = t + window; keep its nonce
        // that long (plus a margin).
        while let Some((old, t)) = self.order.front() {
            if now_ms.saturating_sub(*t) > window.saturating_mul(2) {
                self.set.remove(old);
                self.order.pop_front();
            } else {
                break;
            }
        }
        if self.set.contains(&nonce) {
            return Err(EnvelopeError::Replayed);
        }
        if self.set.len() >= SEEN_CAPACITY {
            return Err(EnvelopeError::Busy);
        }
        self.set.insert(nonce);
        // Times are within the window of now, so the queue stays nearly ordered;
        // eviction looks at the front only, which errs on keeping nonces longer.
        self.order.push_back((nonce, time_ms));
        Ok(())
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// The caller's clock, for [`seal_request`].
pub fn caller_now() -> i64 {
    now_ms()
}

#[cfg(test)]
mod tests;
