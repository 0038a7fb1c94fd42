//! The `exec` order: run a job named in the jobs file.
//!
//! `options` is `<job>[,<arg>…]` (separators `,` or `|`). Arguments become argv elements
//! of the job's template; no shell ever sees them.
//!
//! ```text
//! {"return":"true"|"false","command":"<base64 of the command line>","content":"<base64 of stdout+stderr>",
//!  "code":"<exit code; 128 + signal when killed>"}      (`code` is new: the original's keys stay)
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

/// The job ran and ended with `code` (0 is success).
pub fn ran(code: i32, command: &str, output: &[u8]) -> Map<String, Value> {
    let b64 = base64::engine::general_purpose::STANDARD;
    object([
        ("return", flag(code == 0)),
        ("command", Value::String(b64.encode(command))),
        ("content", Value::String(b64.encode(output))),
        ("code", Value::String(code.to_string())),
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
        let body = ran(0, "/bin/echo hello world", b"hello world\n");
        assert_eq!(body["code"], "0");
        assert_eq!(ran(3, "x", b"")["return"], "false");
        assert_eq!(ran(3, "x", b"")["code"], "3");
        assert_eq!(body["command"], "L2Jpbi9lY2hvIGhlbGxvIHdvcmxk");
        assert_eq!(body["content"], "aGVsbG8gd29ybGQK");
        assert_eq!(split_options(""), (String::new(), vec![]));
    }
}
