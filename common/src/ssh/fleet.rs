//! `health` and `fetch` on SSH hosts: one `sh` command each, whose output our code
//! reads, so that a caller gets the agents' replies and events whatever the transport.
//!
//! ```text
//! health  sh -c SSH_SCRIPT (/proc files, df -P, date +%s%N)  ─► parse_ssh ─► the agent's body
//! fetch   sh -c 'p=$(readlink -f -- PATH) && cd "${p%/*}/" && exec tar -cf - -- "${p##*/}"'
//!         stdout ─► data events (the caller's confined extractor reads them) ─► reply
//! ```
//!
//! An SSH host has no `[allow::paths]`: a fetch reads what the remote user can read,
//! as `ssh host tar` would. What arrives is still the host's, so the caller extracts it
//! with the confined extractor, which refuses links that leave the tree (the whole
//! host's fetch then fails, naming the entry).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use base64::Engine as _;
use russh::ChannelMsg;
use tokio::sync::mpsc;

use super::lines::{quote, shell};
use super::{Shared, SshError};
use crate::order::fetch::expand;
use crate::order::health::{parse_ssh, SSH_SCRIPT};
use crate::order::{object, Reply, Request};
use crate::target::Target;
use crate::wire::message::{Event, TaggedEvent};

/// The most output of the health command read.
const MAX_HEALTH_OUTPUT: usize = 256 << 10;
/// The most of a command's standard error kept for its error reply.
const MAX_STDERR: usize = 8 << 10;

impl Shared {
    /// `health` on `target`.
    pub(super) async fn deliver_health(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
    ) -> Result<Reply, SshError> {
        let session = self.connect(target).await?;
        let channel = session.channel().await?;
        let (mut reader, writer) = channel.split();
        writer.exec(false, shell(SSH_SCRIPT, request.sudo)).await?;
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } => keep(&mut out, &data, MAX_HEALTH_OUTPUT),
                ChannelMsg::ExtendedData { data, .. } => keep(&mut err, &data, MAX_STDERR),
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let health = parse_ssh(&String::from_utf8_lossy(&out));
        if health.time_ms == 0 || health.cores == 0 {
            return Ok(Reply::error(
                500,
                format!(
                    "health: the host's answer could not be read (exit {}): {}",
                    code.map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
                    String::from_utf8_lossy(&err).trim()
                ),
            ));
        }
        Ok(Reply::ok(health.to_body()))
    }

    /// `fetch` on `target`: the archive's pieces as data events.
    pub(super) async fn deliver_fetch(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
        events: &mpsc::Sender<TaggedEvent>,
    ) -> Result<Reply, SshError> {
        let path = match expand(&request.options, |var| {
            (var == "@root").then(|| "/root".to_owned())
        }) {
            Ok(path) => path,
            Err(e) => {
                return Ok(Reply::error(
                    400,
                    format!("{e} (an SSH host has only @root)"),
                ))
            }
        };
        if path.contains('\0') {
            return Ok(Reply::error(400, "fetch: a path with a NUL byte"));
        }
        let script = format!(
            "p=$(readlink -f -- {}) && [ -e \"$p\" ] && [ \"$p\" != / ] && cd \"${{p%/*}}/\" && exec tar -cf - -- \"${{p##*/}}\"",
            quote(&path)
        );
        let session = self.connect(target).await?;
        let channel = session.channel().await?;
        let (mut reader, writer) = channel.split();
        writer.exec(false, shell(&script, request.sudo)).await?;
        let (mut err, mut code, mut bytes) = (Vec::new(), None, 0u64);
        let b64 = base64::engine::general_purpose::STANDARD;
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    bytes += data.len() as u64;
                    let _ = events
                        .send(TaggedEvent::from(Event::Data {
                            data: b64.encode(&*data),
                        }))
                        .await;
                }
                ChannelMsg::ExtendedData { data, .. } => keep(&mut err, &data, MAX_STDERR),
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        if code != Some(0) {
            let why = String::from_utf8_lossy(&err).trim().to_owned();
            return Ok(Reply::error(
                500,
                match why.is_empty() {
                    true => format!("fetch {path}: no such file or directory, or not readable"),
                    false => format!("fetch {path}: {why}"),
                },
            ));
        }
        let name = path.rsplit('/').find(|c| !c.is_empty()).unwrap_or_default();
        Ok(Reply::ok(object([
            ("return", serde_json::Value::String("true".into())),
            ("path", serde_json::Value::String(path.clone())),
            ("name", serde_json::Value::String(name.to_owned())),
            ("bytes", serde_json::Value::String(bytes.to_string())),
        ])))
    }
}

/// Appends `data` to `buf`, up to `limit` bytes.
fn keep(buf: &mut Vec<u8>, data: &[u8], limit: usize) {
    let room = limit.saturating_sub(buf.len());
    buf.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
}
