//! The `run` order: an arbitrary command (over SSH, or on agents that allow it).
//!
//! ```text
//! request  {"order":"run","argv":["tail","-n","1","/var/log/syslog"],"stdin":"<base64>","sudo":false}
//! reply    {"return":"true"|"false","code":"<exit code>","command":"<base64>","content":"<base64 of stdout+stderr>"}
//! ```
//!
//! `return` is `"true"` iff the exit code is 0; a client's summary groups hosts by code.

use super::{flag, object, Reply, Request};
use base64::Engine;
use serde_json::{Map, Value};

/// The request's `stdin`, decoded; the 400 reply if it is not base64.
pub fn stdin(request: &Request) -> Result<Option<Vec<u8>>, Reply> {
    match &request.stdin {
        None => Ok(None),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Some)
            .map_err(|e| Reply::error(400, format!("run: stdin is not base64: {e}"))),
    }
}

/// The command ran and exited with `code`.
pub fn ran(code: i32, command: &str, output: &[u8]) -> Map<String, Value> {
    let b64 = base64::engine::general_purpose::STANDARD;
    object([
        ("return", flag(code == 0)),
        ("code", Value::String(code.to_string())),
        ("command", Value::String(b64.encode(command))),
        ("content", Value::String(b64.encode(output))),
    ])
}
