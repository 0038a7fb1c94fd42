//! A caller's request body (`upload`, `napp` push), received once and kept for the
//! fan-out: spooled to an anonymous file (`O_TMPFILE`) in the proxy's state directory,
//! then read by each agent's delivery at its own pace
//! ([`SharedBody`](deploy_common::upload::body::SharedBody)).
//!
//! Why a spool and not a tee: with a tee, the slowest agent (or one that stops reading)
//! would set the pace of the caller and of every other agent, and one stalled agent
//! would stall the whole upload; a spool costs one copy on the proxy's disk (the body's
//! size, gone when the fan-out ends or the process dies: the file never has a name) and
//! the time to receive the body before the first agent gets a byte. Memory stays one
//! piece per connection either way.

use deploy_common::order::Reply;
use deploy_common::server::conn::{BodyChunk, Events};
use deploy_common::upload::body::SharedBody;
use std::io::Write as _;
use std::path::Path;

/// Asks the caller for its body and spools it under `dir`: the body, or the reply that
/// ends the order (400 cut short or no v2, 507 no room, 500 the spool could not be made).
pub async fn receive(events: &Events, dir: &Path) -> Result<SharedBody, Reply> {
    let file = tempfile::tempfile_in(dir).map_err(|e| {
        tracing::error!(dir = %dir.display(), error = %e, "cannot make the body's spool");
        Reply::error(
            500,
            format!("the proxy cannot spool the body in {}: {e}", dir.display()),
        )
    })?;
    let Some(mut rx) = events.body() else {
        return Err(Reply::error(
            400,
            "this order needs protocol v2 (its files travel as the request's body)",
        ));
    };
    let (tx, mut pieces) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let dir_shown = dir.display().to_string();
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        let mut len = 0u64;
        while let Some(piece) = pieces.blocking_recv() {
            out.write_all(&piece)?;
            len += piece.len() as u64;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        Ok::<_, std::io::Error>((file, len))
    });
    let mut complete = false;
    let mut tx = Some(tx);
    while let Some(chunk) = rx.recv().await {
        match chunk {
            BodyChunk::Data(bytes) => {
                // A writer that failed has its error below; the rest is read and dropped.
                if let Some(sender) = &tx {
                    if sender.send(bytes).await.is_err() {
                        tx = None;
                    }
                }
            }
            BodyChunk::End => {
                complete = true;
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Reply::error(500, format!("spooling the body: {e}")))?;
    let (file, len) = written.map_err(|e| {
        let code = if e.raw_os_error() == Some(libc::ENOSPC) {
            507
        } else {
            500
        };
        tracing::error!(dir = %dir_shown, error = %e, "spooling the body failed");
        Reply::error(
            code,
            format!("the proxy could not spool the body in {dir_shown}: {e}"),
        )
    })?;
    if !complete {
        return Err(Reply::error(
            400,
            "the body was cut short; nothing was sent to the servers",
        ));
    }
    Ok(SharedBody::from_file(file, len))
}
