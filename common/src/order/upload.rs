//! The `upload` order (SSH hosts): files streamed as one tar archive into a remote
//! directory, then optionally a command run there.
//!
//! ```text
//! request  {"order":"upload","upload":{"files":["app"],"root":"/srv/%h","relative":true},
//!           "argv":["./install.sh"],"sudo":false}
//! reply    {"return":"true","root":"/srv/web1","files":"12","bytes":"80384",
//!           "code":"0","command":"<base64>","content":"<base64>"}
//! ```
//!
//! `files` and `bytes` count what was sent (`bytes` is the archive's size). Without a
//! command, `code` is tar's exit code and `content` its messages; with one, they are the
//! command's, which runs only if the extraction succeeded, in `root`
//! (`cd <root> && { <command>; }`).

use serde_json::{Map, Value};

/// Adds the upload's figures to a `run`-shaped body (see [`super::run::ran`]).
pub fn sent(
    mut body: Map<String, Value>,
    root: &str,
    files: usize,
    bytes: u64,
) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(ret) = body.remove("return") {
        out.insert("return".into(), ret);
    }
    out.insert("root".into(), Value::String(root.to_owned()));
    out.insert("files".into(), Value::String(files.to_string()));
    out.insert("bytes".into(), Value::String(bytes.to_string()));
    out.extend(body);
    out
}
