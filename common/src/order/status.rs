//! The `status` order: is a transfer running, and what would one do?
//!
//! ```text
//! running   {"return":"true","alreadyRsync":"true","process":["<pid>",…]
//!            [,"transferStarted":"<unix>"]
//!            [,"transferredBytes":"<n>","transferPercent":"<0-100>","transferRate":"12.34MB/s"]}
//! idle      {"return":"true","alreadyRsync":"false","transferFilesCount":"<n>","transferFilesSize":"<bytes>"
//!            [,"lastRsync":"finished|failed|killed","lastRsyncCode":"<n>","lastRsyncMessage":"…","lastRsyncFinished":"<unix>"]}
//! dry run failed {"return":"false","content":"<base64 of rsync's output>"}
//! ```
//!
//! The `lastRsync*` keys are new: they appear only once a transfer of the same
//! source and target has ended, and carry rsync's exit code and its documented meaning.
//! So are the running transfer's `transferStarted` and, once rsync has printed a
//! progress update (`--info=progress2`, rsync 3.1+), `transferredBytes`,
//! `transferPercent` and `transferRate`. The original's keys come first and keep their
//! meaning, so v1 and Perl callers read the same body; `checksum` stays out of it, since
//! its presence is what tells a started transfer from a running one in an `rsync` reply.

use super::{flag, object, strings};
use serde_json::{Map, Value};

/// What is known of a running transfer besides its processes; each part is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// When it started, Unix seconds.
    pub started: Option<u64>,
    /// Bytes transferred so far.
    pub bytes: Option<u64>,
    /// Percent done, as rsync reports it.
    pub percent: Option<u8>,
    /// The rate as rsync prints it.
    pub rate: Option<String>,
}

/// A transfer of this group is running.
pub fn running(pids: &[u32], now: &Running) -> Map<String, Value> {
    let mut body = object([
        ("return", flag(true)),
        ("alreadyRsync", flag(true)),
        ("process", strings(pids)),
    ]);
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            body.insert(key.into(), Value::String(value));
        }
    };
    put("transferStarted", now.started.map(|t| t.to_string()));
    put("transferredBytes", now.bytes.map(|b| b.to_string()));
    put("transferPercent", now.percent.map(|p| p.to_string()));
    put("transferRate", now.rate.clone());
    body
}

/// How the last transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastTransfer {
    /// `finished`, `failed` or `killed`.
    pub state: &'static str,
    /// rsync's exit code, or 128 + signal.
    pub code: i32,
    /// The code's documented meaning.
    pub message: String,
    /// When it ended, Unix seconds.
    pub finished: u64,
}

/// Nothing is running; the dry run's figures.
pub fn idle(files: u64, size: u64, last: Option<&LastTransfer>) -> Map<String, Value> {
    let mut body = object([
        ("return", flag(true)),
        ("alreadyRsync", flag(false)),
        ("transferFilesCount", Value::String(files.to_string())),
        ("transferFilesSize", Value::String(size.to_string())),
    ]);
    if let Some(last) = last {
        body.insert("lastRsync".into(), Value::String(last.state.into()));
        body.insert("lastRsyncCode".into(), Value::String(last.code.to_string()));
        body.insert(
            "lastRsyncMessage".into(),
            Value::String(last.message.clone()),
        );
        body.insert(
            "lastRsyncFinished".into(),
            Value::String(last.finished.to_string()),
        );
    }
    body
}

/// rsync failed: its output, base64-encoded as the original did.
pub fn failed(output: &[u8]) -> Map<String, Value> {
    use base64::Engine;
    object([
        ("return", flag(false)),
        (
            "content",
            Value::String(base64::engine::general_purpose::STANDARD.encode(output)),
        ),
    ])
}
