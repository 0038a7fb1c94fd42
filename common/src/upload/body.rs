//! A request body received once and sent as is to many peers: what a proxy relays
//! (`upload`, `napp` push) instead of files of its own.
//!
//! ```text
//! caller ─ continue/data… ─► proxy: BodyWriter appends to an anonymous file in its
//!                                   state dir (never a name: gone with the last handle
//!                                   or a crash) and publishes how much is written
//!          SharedBody ─► agent 1: pread from offset 0, waiting at the written end
//!                     ─► agent 2: its own offset, its own pace …
//! ```
//!
//! Deliveries start as soon as the body does (a tee), each reading the file at its own
//! offset (`pread`): a fast agent follows the caller, a slow one reads behind it from the
//! disk, and nobody waits for the slowest. Memory is one chunk per delivery whatever the
//! body's size or the number of agents; the disk holds one copy of the body until the
//! fan-out ends. If the caller's body is cut (or cannot be written), every delivery stops
//! mid-body, which the agents take as a cut upload (no partial file). The file holds the
//! caller's bytes only: a [`SharedBody`] is never made from the proxy's own files.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use tokio::sync::watch;

use crate::upload::tar::CHUNK;

/// How far the body is written, and whether it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    written: u64,
    end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Complete,
    Cut,
}

/// A body being received or received (see the module documentation). Cloning shares it.
#[derive(Clone)]
pub struct SharedBody {
    inner: Arc<Spooled>,
}

struct Spooled {
    file: File,
    progress: watch::Receiver<Progress>,
}

/// The receiving side: appends what the caller sends. Dropped before [`finish`]
/// (`BodyWriter::finish`), the body counts as cut.
pub struct BodyWriter {
    file: File,
    written: u64,
    tx: watch::Sender<Progress>,
}

impl SharedBody {
    /// A body to be written to `file` (empty, opened for reading and writing), and its
    /// writer.
    pub fn spool(file: File) -> std::io::Result<(SharedBody, BodyWriter)> {
        let (tx, progress) = watch::channel(Progress {
            written: 0,
            end: End::Open,
        });
        let writer = BodyWriter {
            file: file.try_clone()?,
            written: 0,
            tx,
        };
        Ok((
            SharedBody {
                inner: Arc::new(Spooled { file, progress }),
            },
            writer,
        ))
    }

    /// The piece at `offset` (at most [`CHUNK`] bytes), once written; empty at the
    /// end of a complete body; an error if the body was cut before `offset`.
    pub async fn chunk_at(&self, offset: u64) -> std::io::Result<Vec<u8>> {
        let mut rx = self.inner.progress.clone();
        let written = loop {
            let now = *rx.borrow_and_update();
            if now.written > offset {
                break now.written;
            }
            match now.end {
                End::Complete => return Ok(Vec::new()),
                End::Cut => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the caller's body was cut short",
                    ))
                }
                End::Open => {
                    if rx.changed().await.is_err() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the caller's body was cut short",
                        ));
                    }
                }
            }
        };
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let want = usize::try_from((written - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buf = vec![0u8; want];
            inner.file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl BodyWriter {
    /// Appends `bytes` (blocking: call from a blocking thread) and lets readers see them.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, self.written)?;
        self.written += bytes.len() as u64;
        let written = self.written;
        self.tx.send_modify(|p| p.written = written);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Ends the body: whole (`complete`), or cut.
    pub fn finish(self, complete: bool) {
        let end = if complete { End::Complete } else { End::Cut };
        self.tx.send_modify(|p| p.end = end);
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        self.tx.send_if_modified(|p| {
            if p.end == End::Open {
                p.end = End::Cut;
                true
            } else {
                false
            }
        });
    }
}

impl std::fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBody({:?})", *self.inner.progress.borrow())
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

    async fn read_all(body: SharedBody) -> std::io::Result<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            let piece = body.chunk_at(got.len() as u64).await?;
            if piece.is_empty() {
                return Ok(got);
            }
            got.extend(piece);
        }
    }

    #[tokio::test]
    async fn readers_follow_the_writer_to_the_end() {
        let (body, mut writer) = SharedBody::spool(tempfile::tempfile().unwrap()).unwrap();
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        // A reader that starts before anything is written waits for the writer.
        let early = tokio::spawn(read_all(body.clone()));
        for piece in data.chunks(1000) {
            writer.append(piece).unwrap();
            tokio::task::yield_now().await;
        }
        writer.finish(true);
        assert_eq!(early.await.unwrap().unwrap(), data);
        assert_eq!(read_all(body.clone()).await.unwrap(), data);
        assert_eq!(body, body.clone());
    }

    #[tokio::test]
    async fn a_cut_body_is_an_error_for_every_reader() {
        let (body, mut writer) = SharedBody::spool(tempfile::tempfile().unwrap()).unwrap();
        writer.append(b"some").unwrap();
        drop(writer);
        assert!(read_all(body).await.is_err());
    }
}
