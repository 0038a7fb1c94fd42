//! `upload`: a tar stream, sent as the request's body, extracted in-process under a
//! directory that `[allow::paths]` allows, then optionally a command run there. Only
//! where the agent's configuration says `allow_upload = on` (and, for the command,
//! `allow_run = on`).
//!
//! ```text
//! checks (403/400) ─► open the allowed root, make ROOT beneath it (openat2, no links)
//!   ─► ask the client for the body ─► each piece to the extractor (a blocking thread)
//!   ─► end: the extractor reads the end blocks ─► the command (argv, no shell) in ROOT
//! ```
//!
//! The archive is the caller's, and the agent often runs as root, so no other program
//! reads it: [`deploy_extract`] parses every header itself and makes every entry
//! relative to ROOT's directory descriptor through no symbolic link (the kernel
//! enforces it), refusing hard links, devices, FIFOs, absolute names, `..`, links that
//! point out of ROOT and any header or pax key it does not model. Files never keep the
//! archive's owners, nor setuid, setgid, sticky or group/other write bits. Each file is
//! written under a temporary name and renamed into place when complete, so a cut body
//! or a refused entry leaves no truncated file; complete entries before it stay. The
//! extraction runs as the agent's user; `sudo` applies to the command only.
//!
//! If the extraction stops early (a refused entry, a full disk), the rest of the body
//! is read and dropped, so the client gets the reply rather than a broken connection.

use super::{process, Agent};
use deploy_common::order::run::ran;
use deploy_common::order::upload::sent;
use deploy_common::order::{Reply, Request};
use deploy_common::server::conn::{BodyChunk, Events};
use deploy_extract::{Error as ExtractError, Options, Root};
use std::io::{self, Read};
use tokio::sync::mpsc;

/// Pieces of the body queued for the extractor.
const QUEUE: usize = 8;

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    let server = &agent.config.server;
    if !server.allow_upload {
        return Reply::error(403, "upload is disabled on this agent (allow_upload = off)");
    }
    if !request.argv.is_empty() && !server.allow_run {
        return Reply::error(
            403,
            "a command after upload needs allow_run = on on this agent",
        );
    }
    let Some(spec) = request.upload.as_deref() else {
        return Reply::error(400, "upload needs its files and root");
    };
    if !events.can_have_body() {
        return Reply::error(
            400,
            "upload needs protocol v2 (its files travel as the request's body)",
        );
    }
    let (base, rel) = match agent.config.allow_paths.check_beneath(&spec.root) {
        Ok(found) => found,
        Err(denied) => return Reply::error(403, denied.to_string()),
    };
    let root = match Root::create_beneath(&base, &rel) {
        Ok(root) => root,
        Err(e) => return Reply::error(403, e.to_string()),
    };
    let root_text = root.path().to_string_lossy().into_owned();
    let Some(mut body) = events.body() else {
        return Reply::error(
            400,
            "upload needs protocol v2 (its files travel as the request's body)",
        );
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let extraction = tokio::task::spawn_blocking(move || {
        let options = Options::default();
        deploy_extract::extract(
            Body {
                rx,
                piece: Vec::new(),
                at: 0,
                ended: false,
            },
            &root,
            &options,
        )
    });
    let mut tx = Some(tx);
    let mut bytes = 0u64;
    let complete = loop {
        match body.recv().await {
            Some(BodyChunk::Data(chunk)) => {
                bytes += chunk.len() as u64;
                if let Some(sender) = &tx {
                    if sender.send(Piece::Data(chunk)).await.is_err() {
                        // The extractor stopped (its error is the reply): drain the rest.
                        tx = None;
                    }
                }
            }
            Some(BodyChunk::End) => {
                if let Some(sender) = tx.take() {
                    let _ = sender.send(Piece::End).await;
                }
                break true;
            }
            None => break false,
        }
    };
    // Without `End`, a closed queue reads as a cut stream.
    drop(tx);
    let summary = match extraction.await {
        Ok(Ok(summary)) => summary,
        Ok(Err(_)) if !complete => {
            return Reply::error(
                400,
                "the upload was cut short; files complete before the cut stay, no partial file",
            )
        }
        Ok(Err(e)) => {
            let code = match e {
                ExtractError::Io { .. } | ExtractError::Root { .. } => 500,
                _ => 400,
            };
            tracing::warn!(root = %root_text, error = %e, "upload refused");
            return Reply::error(code, format!("upload refused: {e}"));
        }
        Err(e) => return Reply::error(500, format!("the extraction failed: {e}")),
    };
    let files = usize::try_from(summary.files + summary.symlinks).unwrap_or(usize::MAX);
    if request.argv.is_empty() {
        return Reply::ok(sent(ran(0, "extract", b""), &root_text, files, bytes));
    }
    let command = process::with_sudo(request.sudo, &request.argv);
    let finished = process::run_in(
        &command,
        None,
        request.follow,
        events,
        std::path::Path::new(&root_text),
    )
    .await;
    let body = ran(finished.code, &command.join(" "), &finished.output);
    Reply::ok(sent(body, &root_text, files, bytes))
}

/// A piece of the body, or its end.
enum Piece {
    Data(Vec<u8>),
    End,
}

/// The body as a blocking reader for the extractor: the queue closing before `End`
/// is an error, never a clean end of the archive.
struct Body {
    rx: mpsc::Receiver<Piece>,
    piece: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.piece.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(piece)) => {
                    self.piece = piece;
                    self.at = 0;
                }
                Some(Piece::End) => {
                    self.ended = true;
                    return Ok(0);
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upload was cut short",
                    ))
                }
            }
        }
        let rest = self.piece.get(self.at..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.at += n;
        Ok(n)
    }
}
