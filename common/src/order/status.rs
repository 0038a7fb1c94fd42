//! The `status` order: is a transfer running, and what would one do?
//!
//! ```text
//! running   {"return":"true","alreadyRsync":"true","process":["<pid>",…]}
//! idle      {"return":"true","alreadyRsync":"false","transferFilesCount":"<n>","transferFilesSize":"<bytes>"
//!            [,"lastRsync":"finished|failed|killed","lastRsyncCode":"<n>","lastRsyncMessage":"…","lastRsyncFinished":"<unix>"]}
//! dry run failed {"return":"false","content":"<base64 of rsync's output>"}
//! ```
//!
//! The `lastRsync*` keys are new: they appear only once a transfer of the same
//! source and target has ended, and carry rsync's exit code and its documented meaning.

use super::{flag, object, strings};
use serde_json::{Map, Value};

/// A transfer of this group is running.
pub fn running(pids: &[u32]) -> Map<String, Value> {
    object([
        ("return", flag(true)),
        ("alreadyRsync", flag(true)),
        ("process", strings(pids)),
    ])
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
