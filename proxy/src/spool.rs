//! A caller's request body (`upload`, `napp` push), received once for the whole
//! fan-out: written to an anonymous file (`O_TMPFILE`) in the proxy's state directory
//! while every delivery reads it at its own pace
//! ([`SharedBody`](deploy_common::upload::body::SharedBody)).
//!
//! A tee through a file rather than through memory: agents start as soon as the body
//! does and a fast one follows the caller, but a slow (or stalled) agent never holds back
//! the caller or the others, as a tee with in-memory backpressure would; it reads behind
//! from the disk. The cost is one copy of the body on the proxy's disk, gone when the
//! fan-out ends or the process dies (the file never has a name). Memory stays one piece
//! per connection.

use deploy_common::order::Reply;
use deploy_common::server::conn::{BodyChunk, Events};
use deploy_common::upload::body::SharedBody;
use std::path::Path;

/// Makes the spool under `dir` and asks the caller for its body, which a task then
/// writes to it: the body to hand to the deliveries at once, or the reply that ends the
/// order (400 no v2, 500 the spool could not be made).
pub async fn receive(events: &Events, dir: &Path) -> Result<SharedBody, Reply> {
    let cannot = |e: std::io::Error| {
        tracing::error!(dir = %dir.display(), error = %e, "cannot make the body's spool");
        Reply::error(
            500,
            format!("the proxy cannot spool the body in {}: {e}", dir.display()),
        )
    };
    let file = tempfile::tempfile_in(dir).map_err(cannot)?;
    let (body, mut writer) = SharedBody::spool(file).map_err(cannot)?;
    let Some(mut rx) = events.body() else {
        return Err(Reply::error(
            400,
            "this order needs protocol v2 (its files travel as the request's body)",
        ));
    };
    let (tx, mut pieces) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let shown = dir.display().to_string();
    // The writer: a blocking thread; readers see each piece once it is written. It
    // ends the body complete only after the caller's `end`; an error or a cut leaves
    // it cut (dropped), which stops every delivery mid-body.
    tokio::task::spawn_blocking(move || {
        while let Some(piece) = pieces.blocking_recv() {
            if piece.is_empty() {
                tracing::debug!(bytes = writer.written(), "body spooled");
                writer.finish(true);
                return;
            }
            if let Err(e) = writer.append(&piece) {
                tracing::error!(dir = %shown, error = %e, "spooling the body failed");
                return;
            }
        }
        tracing::info!(bytes = writer.written(), "the caller's body was cut short");
    });
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            match chunk {
                // An empty piece is never sent for data (the conn layer drops none, but
                // an empty `data` would read as the end here): skip it.
                BodyChunk::Data(bytes) if bytes.is_empty() => {}
                BodyChunk::Data(bytes) => {
                    if tx.send(bytes).await.is_err() {
                        // The writer failed: read the rest and drop it.
                        while rx.recv().await.is_some() {}
                        return;
                    }
                }
                BodyChunk::End => {
                    let _ = tx.send(Vec::new()).await;
                    return;
                }
            }
        }
    });
    Ok(body)
}
