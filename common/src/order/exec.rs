//! The `exec` order: run a job named in the jobs file.
//!
//! `options` is `<job>[,<arg>…]` (separators `,` or `|`). Arguments become argv elements
//! of the job's template; no shell ever sees them.
//!
//! ```text
//! {"return":"true"|"false","command":"<base64 of the command line>","content":"<base64 of stdout+stderr>"}
//! unknown job: 400 "exec[<job>] not found!"
//! ```

use super::{flag, object};
use base64::Engine;
use serde_json::{Map, Value};

/// Splits `options` into the job name and its arguments.
pub fn split_options(options: &str) -> (String, Vec<String>) {
    let mut parts = options.split([',', '|']).map(str::to_owned);
    let name = parts.next().unwrap_or_default();
    (name, parts.collect())
}

/// The job ran; `success` is exit status 0.
pub fn ran(success: bool, command: &str, output: &[u8]) -> Map<String, Value> {
    let b64 = base64::engine::general_purpose::STANDARD;
    object([
        ("return", flag(success)),
        ("command", Value::String(b64.encode(command))),
        ("content", Value::String(b64.encode(output))),
    ])
}

/// The 400 text for an unknown job.
pub fn not_found(name: &str) -> String {
    format!("exec[{name}] not found!")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_example() {
        let (name, args) = split_options("service:echo,hello|world");
        assert_eq!(name, "service:echo");
        assert_eq!(args, ["hello", "world"]);
        let body = ran(true, "/bin/echo hello world", b"hello world\n");
        assert_eq!(body["command"], "L2Jpbi9lY2hvIGhlbGxvIHdvcmxk");
        assert_eq!(body["content"], "aGVsbG8gd29ybGQK");
        assert_eq!(split_options(""), (String::new(), vec![]));
    }
}
