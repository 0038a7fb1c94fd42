//! A v2 connection after the handshake: sealed records carrying [`Message`]s.
//!
//! ```text
//! record  = length u32 BE | AES-256-GCM(key_dir, nonce, aad = length, plaintext) (ciphertext | tag[16])
//! nonce   = 0x00000000 | sequence u64 BE      (per direction, starting at 0, +1 per record)
//! ```
//!
//! Each direction has its own key, so a record reflected back to its sender fails; the
//! receiver's expected sequence number is part of the nonce, so a replayed, dropped or
//! reordered record fails authentication, and the connection is then unusable.

use super::frame::{eof_is_closed, header, read_frame_within, RecordBudget, MAX_RECORD};
use super::message::{Message, TaggedEvent};
use super::WireError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// An authenticated, encrypted v2 connection.
pub struct SecureConnection<S> {
    stream: S,
    send_key: LessSafeKey,
    recv_key: LessSafeKey,
    send_seq: u64,
    recv_seq: u64,
    budget: RecordBudget,
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    for (slot, byte) in n.iter_mut().skip(4).zip(seq.to_be_bytes()) {
        *slot = byte;
    }
    Nonce::assume_unique_for_key(n)
}

impl<S: AsyncRead + AsyncWrite + Unpin> SecureConnection<S> {
    /// Wraps a stream whose handshake produced these keys.
    pub(crate) fn new(stream: S, send: &[u8; 32], recv: &[u8; 32]) -> Result<Self, WireError> {
        let key = |k: &[u8; 32]| {
            UnboundKey::new(&AES_256_GCM, k)
                .map(LessSafeKey::new)
                .map_err(|_| WireError::Handshake("bad session key".into()))
        };
        Ok(SecureConnection {
            stream,
            send_key: key(send)?,
            recv_key: key(recv)?,
            send_seq: 0,
            recv_seq: 0,
            budget: RecordBudget::unlimited(),
        })
    }

    /// Counts the records this connection receives against `budget` (a server shares one
    /// among its connections); unlimited by default.
    pub fn set_record_budget(&mut self, budget: RecordBudget) {
        self.budget = budget;
    }

    /// Seals and sends one message, then flushes.
    pub async fn send(&mut self, message: &Message) -> Result<(), WireError> {
        self.send_payload(message.encode()).await
    }

    /// Seals and sends one event message for request `id`, with its host tag if any.
    pub async fn send_event(&mut self, id: u64, event: &TaggedEvent) -> Result<(), WireError> {
        self.send_payload(event.encode(id)).await
    }

    async fn send_payload(&mut self, mut record: Vec<u8>) -> Result<(), WireError> {
        let len = record.len() + AES_256_GCM.tag_len();
        if len > MAX_RECORD {
            return Err(WireError::TooLarge {
                len,
                max: MAX_RECORD,
            });
        }
        let head = header(len)?;
        self.send_key
            .seal_in_place_append_tag(nonce(self.send_seq), Aad::from(head), &mut record)
            .map_err(|_| WireError::BadRecord)?;
        self.send_seq = self.send_seq.wrapping_add(1);
        let mut out = Vec::with_capacity(record.len() + 4);
        out.extend_from_slice(&head);
        out.extend_from_slice(&record);
        self.stream.write_all(&out).await.map_err(eof_is_closed)?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Receives and opens one message; `Ok(None)` on a clean EOF between records.
    pub async fn recv(&mut self) -> Result<Option<Message>, WireError> {
        match self.open_next().await? {
            Some(plain) => Message::decode(&plain).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`SecureConnection::recv`], with the `host` tag of an event message that
    /// has one ([`TaggedEvent`]).
    pub async fn recv_tagged(&mut self) -> Result<Option<(Message, Option<String>)>, WireError> {
        match self.open_next().await? {
            Some(plain) => Message::decode_tagged(&plain).map(Some),
            None => Ok(None),
        }
    }

    /// Reads and opens the next record: its plaintext, or `None` on a clean EOF.
    async fn open_next(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some((head, mut record)) =
            read_frame_within(&mut self.stream, MAX_RECORD, &self.budget).await?
        else {
            return Ok(None);
        };
        let len = self
            .recv_key
            .open_in_place(nonce(self.recv_seq), Aad::from(head), &mut record)
            .map_err(|_| WireError::BadRecord)?
            .len();
        self.recv_seq = self.recv_seq.wrapping_add(1);
        // The plaintext is the record's prefix (the tag follows it).
        record.truncate(len);
        Ok(Some(record))
    }

    /// The underlying stream (for shutdown, peer address…).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The underlying stream, shared (e.g. to notice the peer closing it).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}
