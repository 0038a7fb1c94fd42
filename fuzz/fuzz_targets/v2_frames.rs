//! The v2 frame reader: a byte stream cut into `u32`-length-prefixed frames.
//!
//! Input layout: byte 0 picks the read chunk size (1..=256 bytes per `poll_read`, to
//! exercise partial reads of the header and payload), bytes 1..3 the frame limit
//! (0..=`MAX_HANDSHAKE_FRAME`), the rest is the stream.
//!
//! Invariants checked:
//! * `read_frame` never panics, and never allocates more than the limit (the length is
//!   checked before the payload buffer exists; libFuzzer's `-malloc_limit_mb`, which
//!   defaults to `-rss_limit_mb`, would report a huge allocation);
//! * every frame's payload is at most the limit and its header is its length;
//! * round trip: `write_frame` of the frames read so far reproduces the consumed
//!   prefix of the stream; `Ok(None)` only after the whole stream; `TooLarge` only for
//!   a header announcing more than the limit; `Closed` only for a truncated frame.

#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use deploy_common::wire::frame::{read_frame, write_frame, MAX_HANDSHAKE_FRAME};
use deploy_common::wire::WireError;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::runtime::{Builder, Runtime};

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    Builder::new_current_thread()
        .build()
        .expect("current-thread runtime")
});

/// A reader that hands out at most `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let [chunk, hi, lo, stream @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk) + 1;
    let max = usize::from(u16::from_be_bytes([*hi, *lo])) % (MAX_HANDSHAKE_FRAME + 1);

    RUNTIME.block_on(async {
        let mut reader = Chunked {
            data: stream,
            pos: 0,
            chunk,
        };
        let mut rewritten = Vec::new();
        loop {
            let before = reader.pos;
            match read_frame(&mut reader, max).await {
                Ok(Some((header, payload))) => {
                    assert!(payload.len() <= max, "{} > {max}", payload.len());
                    assert_eq!(u32::from_be_bytes(header) as usize, payload.len());
                    write_frame(&mut rewritten, &payload)
                        .await
                        .expect("write_frame");
                    assert_eq!(&rewritten[..], &stream[..reader.pos], "frames differ");
                }
                Ok(None) => {
                    assert_eq!(before, stream.len(), "EOF reported before the end");
                    assert_eq!(rewritten, stream);
                    break;
                }
                Err(WireError::TooLarge { len, max: m }) => {
                    assert_eq!(m, max);
                    assert!(len > max);
                    let header = &stream[before..before + 4];
                    assert_eq!(
                        u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize,
                        len
                    );
                    break;
                }
                Err(WireError::Closed) => {
                    let rest = stream.len() - before;
                    assert!(rest > 0, "Closed with nothing left");
                    if rest >= 4 {
                        let header = &stream[before..before + 4];
                        let len = u32::from_be_bytes(header.try_into().expect("4 bytes"));
                        assert!(rest - 4 < len as usize, "Closed on a complete frame");
                    }
                    break;
                }
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
    });
});
