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

use super::WireError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest handshake frame.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
/// Largest record after the handshake (16 MiB).
pub const MAX_RECORD: usize = 16 << 20;

/// Reads one frame; returns its header (for use as AAD) and payload. `Ok(None)` on a
/// clean EOF before the first byte of the header.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
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
    let mut payload = vec![0u8; len];
    reader
        .read_exact(&mut payload)
        .await
        .map_err(eof_is_closed)?;
    Ok(Some((header, payload)))
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
