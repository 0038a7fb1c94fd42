//! The v2 wire protocol: length-prefixed frames, an authenticated key exchange, and
//! AES-256-GCM records carrying JSON messages.
//!
//! # Layout
//!
//! * [`frame`]: bytes ↔ frames (a `u32` big-endian length, then the payload). Knows
//!   nothing of sockets or keys.
//! * [`handshake`]: the three handshake messages and the key schedule.
//! * [`connection`]: a socket after the handshake: `send`/`recv` of [`message::Message`]
//!   values, sealed with per-direction keys and sequence numbers.
//! * [`message`]: requests, streamed events and final replies.
//!
//! The full specification, with test vectors, is `docs/protocol.md`.
//!
//! # Design
//!
//! ```text
//! client                                             agent
//!   MAGIC "\0DEPLOY\x02"            ──────────────►
//!   ClientHello { x25519 eph, nonce, time,
//!                 [RSA-OAEP-SHA256(secret)] }       ──────────────►
//!                                   ◄──────────────  ServerHello { x25519 eph, nonce,
//!                                                                  confirm_s }
//!   ClientFinished { confirm_c }    ──────────────►
//!   sealed Request                  ──────────────►
//!                                   ◄──────────────  sealed Event* Reply
//! ```
//!
//! Keys come from HKDF-SHA256 over the X25519 shared secret and the RSA-wrapped secret,
//! salted with a hash of the agent's `key_cipher` and bound to the transcript. So:
//!
//! * the agent is authenticated by its RSA key whenever the client pins it (only the key's
//!   holder can compute `confirm_s`);
//! * the client is authenticated by `key_cipher`, which never crosses the wire, as a
//!   pre-shared key (only a holder can compute `confirm_c`); a passive listener cannot
//!   even attempt a dictionary attack on it, since the keys also depend on X25519;
//! * every connection has fresh keys from both sides' randomness, so a recorded
//!   connection cannot be replayed; within a connection, the sequence number in every
//!   nonce rejects replayed, dropped or reordered records; the client's clock must be
//!   within [`handshake::MAX_SKEW`] of the agent's;
//! * ephemeral X25519 gives forward secrecy: a later leak of the RSA key or of
//!   `key_cipher` does not open recorded traffic.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod connection;
pub mod frame;
pub mod handshake;
pub mod message;

/// The first bytes a v2 client sends. The leading NUL never starts a v1 request, which is
/// how one port serves both protocols.
pub const MAGIC: &[u8; 8] = b"\0DEPLOY\x02";

/// Errors of the v2 protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more bytes than the limit allows.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record larger than [`frame::SMALL_RECORD`] could not be received now: the
    /// receiver's [`frame::RecordBudget`] is spent by other connections.
    #[error("record of {len} bytes refused: the receiver's memory budget for records is spent")]
    Busy {
        /// Announced length.
        len: usize,
    },
    /// The peer closed the connection in the middle of a frame or handshake.
    #[error("connection closed by peer")]
    Closed,
    /// A message did not have the expected form.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A sealed record failed authentication (tampered, replayed, reordered or wrong key).
    #[error("record authentication failed")]
    BadRecord,
    /// The peer refused the handshake; carries its code and message.
    #[error("{code} {message}")]
    Refused {
        /// HTTP-like code (401 authentication, 400 protocol, 503 busy…).
        code: u16,
        /// The peer's explanation.
        message: String,
    },
    /// The handshake failed on our side.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// Operation timed out.
    #[error("timed out")]
    Timeout,
}

#[cfg(test)]
mod tests;
