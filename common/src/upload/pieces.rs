//! A queue of byte pieces read as a blocking [`Read`]: how an async side (a request's
//! body, a host's fetched archive) feeds the extractor running on a blocking thread.
//!
//! ```text
//! async side: tx.send(Piece::Data(..)) … tx.send(Piece::End)
//! blocking side: deploy_extract::extract(PieceReader::new(rx, "the body was cut short"), …)
//! ```
//!
//! The queue closing before [`Piece::End`] is an error (`UnexpectedEof`, with the
//! caller's words), never a clean end: a cut stream must not look like a short archive.

use std::io::{self, BufRead, Read};

use tokio::sync::mpsc;

/// A piece of the stream, or its end.
#[derive(Debug)]
pub enum Piece {
    /// The next bytes.
    Data(Vec<u8>),
    /// The stream ended whole.
    End,
}

/// The receiving end of a queue of [`Piece`]s as a blocking reader (call it on a
/// blocking thread: it uses `blocking_recv`).
#[derive(Debug)]
pub struct PieceReader {
    rx: mpsc::Receiver<Piece>,
    piece: Vec<u8>,
    at: usize,
    ended: bool,
    cut: &'static str,
}

impl PieceReader {
    /// Reads what `rx` receives; `cut` says what a queue closed before `End` means.
    pub fn new(rx: mpsc::Receiver<Piece>, cut: &'static str) -> PieceReader {
        PieceReader {
            rx,
            piece: Vec::new(),
            at: 0,
            ended: false,
            cut,
        }
    }
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.fill_buf()?;
        let n = rest.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.consume(n);
        Ok(n)
    }
}

/// The pieces themselves as the buffer: a reader that writes what it gets
/// (`deploy_extract::extract_buffered`) copies nothing out of them first.
impl BufRead for PieceReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.at >= self.piece.len() {
            if self.ended {
                return Ok(&[]);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(piece)) => {
                    self.piece = piece;
                    self.at = 0;
                }
                Some(Piece::End) => {
                    self.ended = true;
                    return Ok(&[]);
                }
                None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, self.cut)),
            }
        }
        Ok(self.piece.get(self.at..).unwrap_or_default())
    }

    fn consume(&mut self, amount: usize) {
        self.at = self.at.saturating_add(amount).min(self.piece.len());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_pieces_then_ends_or_reports_the_cut() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Piece::Data(b"ab".to_vec())).unwrap();
        tx.try_send(Piece::Data(b"c".to_vec())).unwrap();
        tx.try_send(Piece::End).unwrap();
        let mut all = Vec::new();
        PieceReader::new(rx, "cut").read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abc");

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Piece::Data(b"ab".to_vec())).unwrap();
        drop(tx);
        let mut all = Vec::new();
        let err = PieceReader::new(rx, "the body was cut short")
            .read_to_end(&mut all)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(err.to_string(), "the body was cut short");
    }

    #[test]
    fn buffered_reads_hand_out_the_pieces_themselves() {
        let (tx, rx) = mpsc::channel(4);
        let piece = b"abcdef".to_vec();
        let at = piece.as_ptr();
        tx.try_send(Piece::Data(piece)).unwrap();
        tx.try_send(Piece::Data(b"g".to_vec())).unwrap();
        drop(tx);
        let mut r = PieceReader::new(rx, "cut");
        let got = r.fill_buf().unwrap();
        assert_eq!((got, got.as_ptr()), (&b"abcdef"[..], at), "no copy");
        r.consume(4);
        assert_eq!(r.fill_buf().unwrap(), b"ef");
        let mut two = [0u8; 3];
        assert_eq!(r.read(&mut two).unwrap(), 2);
        assert_eq!(r.fill_buf().unwrap(), b"g");
        r.consume(1);
        assert_eq!(r.fill_buf().unwrap_err().to_string(), "cut");
    }
}
