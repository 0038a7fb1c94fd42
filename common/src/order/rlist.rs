//! The `rlist` order: the files a transfer would create and delete.
//!
//! ```text
//! {"return":"true","transferFilesCount":"<n>","transferFilesSize":"<bytes>",
//!  "transferNewFiles":["a","dir/b",…],"transferDeleteFiles":["old",…]}
//! dry run failed: as status, {"return":"false","content":"<base64>"}
//! ```
//!
//! Names are sent as JSON strings, properly escaped (the original did not escape them,
//! so a `"` in a file name broke its replies).

use super::{flag, object, strings};
use serde_json::{Map, Value};

/// The dry run's figures and file lists.
pub fn listed(files: u64, size: u64, new: &[String], deleted: &[String]) -> Map<String, Value> {
    object([
        ("return", flag(true)),
        ("transferFilesCount", Value::String(files.to_string())),
        ("transferFilesSize", Value::String(size.to_string())),
        ("transferNewFiles", strings(new)),
        ("transferDeleteFiles", strings(deleted)),
    ])
}
