//! The `rsync` order: start a transfer in the background and return its handle.
//!
//! ```text
//! started          {"return":"true","checksum":"<md5 hex of dest+src>"}
//! already running  {"return":"true","alreadyRsync":"true","process":["<pid>",…]}
//! with follow (v2) {"return":"true"|"false","checksum":"…","exitCode":"<n>","exitMessage":"…"}
//!                  after Line/Progress events while it ran
//! ```

use super::{flag, object};
use serde_json::{Map, Value};

/// The transfer started; `checksum` is its handle for `status` and `rkill`.
pub fn started(checksum: &str) -> Map<String, Value> {
    object([
        ("return", flag(true)),
        ("checksum", Value::String(checksum.to_owned())),
    ])
}

/// The followed transfer ended with `code`.
pub fn finished(checksum: &str, code: i32, message: &str) -> Map<String, Value> {
    object([
        ("return", flag(code == 0)),
        ("checksum", Value::String(checksum.to_owned())),
        ("exitCode", Value::String(code.to_string())),
        ("exitMessage", Value::String(message.to_owned())),
    ])
}
