//! Frames: a `u32` big-endian payload length, then the payload.
//!
//! ```text
//! +----------------+---------------------------+
//! | length (u32 BE) | payload (length bytes)    |
//! +----------------+---------------------------+
//! ```
//!
//! Handshake frames carry plaintext; after the handshake every payload is an AES-256-GCM
//! record whose additional data is the 4-byte length itself (see
//! [`super::connection`]). A length over the reader's limit is an error before any
//! allocation.
//!
//! A payload's buffer grows with the bytes that actually arrive, never from the announced
//! length alone: a peer that announces 16 MiB and sends 10 bytes costs 10 bytes (plus
//! the first [`FIRST_CHUNK`]). A receiver that serves many peers can also bound the
//! bytes of all the records it is receiving at once with a [`RecordBudget`].

use super::WireError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest handshake frame.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
/// Largest record after the handshake (16 MiB).
pub const MAX_RECORD: usize = 16 << 20;

/// The most a payload's buffer holds before any of it arrived; it then grows (doubling)
/// as bytes come.
pub const FIRST_CHUNK: usize = 16 << 10;

/// Payloads up to this size are read without a [`RecordBudget`] reservation.
pub const SMALL_RECORD: usize = 64 << 10;

/// A bound on the bytes of the records being received at once by all the connections
/// that share it (one per worker process on a server).
///
/// A payload larger than [`SMALL_RECORD`] reserves its announced length before it is
/// read and gives it back once it is dropped; when the budget cannot cover it the read
/// fails with [`WireError::Busy`] (the connection ends) rather than waiting, so stalled
/// peers can never pin more than the budget.
#[derive(Debug, Clone)]
pub struct RecordBudget {
    left: Option<Arc<AtomicUsize>>,
}

impl RecordBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> RecordBudget {
        RecordBudget {
            left: Some(Arc::new(AtomicUsize::new(bytes))),
        }
    }

    /// No bound (a client reading its own replies).
    pub fn unlimited() -> RecordBudget {
        RecordBudget { left: None }
    }

    /// Bytes left to reserve (`usize::MAX` when unlimited).
    pub fn available(&self) -> usize {
        self.left
            .as_ref()
            .map_or(usize::MAX, |left| left.load(Ordering::SeqCst))
    }

    /// Reserves `len` bytes for one payload, if the budget has them.
    fn reserve(&self, len: usize) -> Option<Reservation> {
        let Some(left) = &self.left else {
            return Some(Reservation { left: None, len: 0 });
        };
        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(len))
            .ok()
            .map(|_| Reservation {
                left: Some(Arc::clone(left)),
                len,
            })
    }
}

/// Bytes taken from a [`RecordBudget`]; given back on drop.
struct Reservation {
    left: Option<Arc<AtomicUsize>>,
    len: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(left) = &self.left {
            left.fetch_add(self.len, Ordering::SeqCst);
        }
    }
}

/// Reads one frame; returns its header (for use as AAD) and payload. `Ok(None)` on a
/// clean EOF before the first byte of the header.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<([u8; 4], Vec<u8>)>, WireError> {
    read_frame_within(reader, max, &RecordBudget::unlimited()).await
}

/// [`read_frame`], with a payload over [`SMALL_RECORD`] counted against `budget` while
/// it is read ([`WireError::Busy`] when the budget cannot cover it).
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    budget: &RecordBudget,
) -> Result<Option<([u8; 4], Vec<u8>)>, WireError> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        let n = reader
            .read(header.get_mut(filled..).unwrap_or_default())
            .await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(WireError::Closed)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let _reservation = if len > SMALL_RECORD {
        Some(budget.reserve(len).ok_or(WireError::Busy { len })?)
    } else {
        None
    };
    let payload = read_payload(reader, len).await?;
    Ok(Some((header, payload)))
}

/// Reads exactly `len` bytes into a buffer that grows as they arrive.
async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> Result<Vec<u8>, WireError> {
    let mut payload = Vec::with_capacity(len.min(FIRST_CHUNK));
    let want = u64::try_from(len).map_err(|_| WireError::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    // `take` + `read_to_end` only grows the vector by what the reader delivered.
    (&mut *reader)
        .take(want)
        .read_to_end(&mut payload)
        .await
        .map_err(eof_is_closed)?;
    if payload.len() != len {
        return Err(WireError::Closed);
    }
    Ok(payload)
}

/// The header of a payload of `len` bytes.
pub fn header(len: usize) -> Result<[u8; 4], WireError> {
    let len32 = u32::try_from(len).map_err(|_| WireError::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    Ok(len32.to_be_bytes())
}

/// Writes one frame (header and payload) without flushing.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(payload.len() + 4);
    buf.extend_from_slice(&header(payload.len())?);
    buf.extend_from_slice(payload);
    writer.write_all(&buf).await?;
    Ok(())
}

/// Maps an unexpected EOF to [`WireError::Closed`].
pub(crate) fn eof_is_closed(e: std::io::Error) -> WireError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        WireError::Closed
    } else {
        WireError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        assert_eq!(buf, b"\0\0\0\x05hello");
        let mut r = &buf[..];
        let (h, p) = read_frame(&mut r, 16).await.unwrap().unwrap();
        assert_eq!(h, [0, 0, 0, 5]);
        assert_eq!(p, b"hello");
        assert!(read_frame(&mut r, 16).await.unwrap().is_none());

        let mut r = &buf[..];
        assert!(matches!(
            read_frame(&mut r, 4).await,
            Err(WireError::TooLarge { len: 5, max: 4 })
        ));
        let mut r = &buf[..6];
        assert!(matches!(
            read_frame(&mut r, 16).await,
            Err(WireError::Closed)
        ));
        let mut r = &buf[..2];
        assert!(matches!(
            read_frame(&mut r, 16).await,
            Err(WireError::Closed)
        ));
    }
}
