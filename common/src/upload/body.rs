//! A request body received once and sent as is to many peers: what a proxy relays
//! (`upload`, `napp` push) instead of files of its own.
//!
//! ```text
//! caller ─ continue/data… ─► proxy: spooled to an anonymous file in its state dir
//!                                   (never a name, gone with the last handle or a crash)
//!          SharedBody ─► agent 1: pread from offset 0, CHUNK by CHUNK
//!                     ─► agent 2: its own offset, its own pace …
//! ```
//!
//! Each delivery reads the file at its own offset (`pread`), so a slow agent holds back
//! nobody else and memory is one chunk per delivery, whatever the body's size or the
//! number of agents. The file is the caller's bytes, never re-read from the proxy's own
//! disk: a [`SharedBody`] is made only from what a peer sent.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use crate::upload::tar::CHUNK;

/// A whole body, kept in a file (see the module documentation). Cloning shares it.
#[derive(Clone)]
pub struct SharedBody {
    inner: Arc<Spooled>,
}

struct Spooled {
    file: File,
    len: u64,
}

impl SharedBody {
    /// A body of `len` bytes already written to `file` (read with `pread`, so the
    /// file's cursor does not matter).
    pub fn from_file(file: File, len: u64) -> SharedBody {
        SharedBody {
            inner: Arc::new(Spooled { file, len }),
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The piece at `offset` (at most [`CHUNK`] bytes; empty at the end).
    pub async fn chunk_at(&self, offset: u64) -> std::io::Result<Vec<u8>> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let left = inner.len.saturating_sub(offset);
            let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buf = vec![0u8; want];
            let mut at = 0;
            while at < want {
                let n = inner.file.read_at(&mut buf[at..], offset + at as u64)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the spooled body is shorter than recorded",
                    ));
                }
                at += n;
            }
            Ok(buf)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl std::fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBody({} bytes)", self.inner.len)
    }
}

/// Two requests are equal only if they share the same body (the same spool).
impl PartialEq for SharedBody {
    fn eq(&self, other: &SharedBody) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for SharedBody {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[tokio::test]
    async fn reads_every_chunk_at_its_offset() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let body = SharedBody::from_file(file, data.len() as u64);
        let mut got = Vec::new();
        loop {
            let piece = body.chunk_at(got.len() as u64).await.unwrap();
            if piece.is_empty() {
                break;
            }
            got.extend(piece);
        }
        assert_eq!(got, data);
        assert_eq!(body, body.clone());
    }
}
