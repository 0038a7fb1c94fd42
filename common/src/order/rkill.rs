//! The `rkill` order: kill a running transfer.
//!
//! ```text
//! {"return":"true","process":["<pid>",…]}     ([] when nothing was running)
//! ```

use super::{flag, object, strings};
use serde_json::{Map, Value};

/// The processes that were killed.
pub fn killed(pids: &[u32]) -> Map<String, Value> {
    object([("return", flag(true)), ("process", strings(pids))])
}
