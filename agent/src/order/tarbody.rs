//! A request's tar body, extracted as it arrives: the pipeline `upload` and `napp`'s
//! `push` share.
//!
//! ```text
//! ask the client for the body ─► each piece to the extractor (a blocking thread,
//!   deploy_extract, confined beneath the root's descriptor) ─► end: the extractor
//!   reads the end blocks ─► its summary, or the reply that refuses
//! ```
//!
//! If the extraction stops early (a refused entry, a full disk), the rest of the body
//! is read and dropped, so the client gets the reply rather than a broken connection.
//! A cut body leaves no partial file (files are renamed into place when complete).

use deploy_common::order::Reply;
use deploy_common::server::conn::{BodyChunk, Events};
use deploy_common::upload::pieces::{Piece, PieceReader};
use deploy_extract::{Error as ExtractError, Options, Root, Summary};
use tokio::sync::mpsc;

/// Pieces of the body queued for the extractor.
const QUEUE: usize = 8;

/// Extracts the request's body under `root`: what was made and the body's size, or the
/// reply refusing it (400 for the archive's fault, 500 for the node's).
pub(super) async fn extract(
    events: &Events,
    root: Root,
    options: Options,
) -> Result<(Summary, u64), Reply> {
    let Some(mut body) = events.body() else {
        return Err(Reply::error(
            400,
            "this order needs protocol v2 (its files travel as the request's body)",
        ));
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let extraction = tokio::task::spawn_blocking(move || {
        deploy_extract::extract(
            PieceReader::new(rx, "the body was cut short"),
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
    match extraction.await {
        Ok(Ok(summary)) => Ok((summary, bytes)),
        Ok(Err(_)) if !complete => Err(Reply::error(
            400,
            "the body was cut short; files complete before the cut stay, no partial file",
        )),
        Ok(Err(e)) => {
            let code = match e {
                ExtractError::Io { .. } | ExtractError::Root { .. } => 500,
                _ => 400,
            };
            Err(Reply::error(code, format!("upload refused: {e}")))
        }
        Err(e) => Err(Reply::error(500, format!("the extraction failed: {e}"))),
    }
}
