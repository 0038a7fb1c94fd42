//! Output bytes → whole lines, per stream, and the remote command line (with a timed
//! run's wait script, or detached for `--background`).
//!
//! ```text
//! "a\nb" + "c\n" + EOF  →  "a", "bc"          (a line is emitted once complete)
//! "x"    + EOF          →  "x"                (a last line without newline, at EOF)
//! ```
//!
//! A line is never cut, except one longer than [`MAX_LINE`] (binary output without
//! newlines), which is emitted in pieces of that size so that memory stays bounded.
//! Bytes are decoded as UTF-8, invalid sequences replaced.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

/// Longest line kept whole (1 MiB).
pub const MAX_LINE: usize = 1 << 20;

/// Splits one stream into lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they complete, without their newline.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            let (head, tail) = bytes.split_at(at);
            self.pending.extend_from_slice(head);
            lines.push(String::from_utf8_lossy(&self.pending).into_owned());
            self.pending.clear();
            bytes = tail.get(1..).unwrap_or_default();
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            lines.push(String::from_utf8_lossy(&self.pending).into_owned());
            self.pending = rest;
        }
        lines
    }

    /// The last line, if the stream ended without a newline.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(line)
    }
}

/// The remote command line for `argv`, with ssh's semantics: the words joined with
/// spaces and given to the remote user's shell (`ssh host tail -f '/var/log/*.log'`
/// runs `tail -f /var/log/*.log` there, so the glob expands remotely). With `sudo`,
/// the whole shell command runs under `sudo -n sh -c '…'`, so every part of a
/// pipeline or list is privileged.
pub fn remote_command(argv: &[String], sudo: bool) -> String {
    let joined = argv.join(" ");
    if sudo {
        format!("sudo -n sh -c {}", quote(&joined))
    } else {
        joined
    }
}

/// The reply of a background start ([`super::tasks::start_script`]): the `tasks`
/// order's `started` shape with the task's `id` and the pid printed; a reply that is
/// not a pid is returned as it came.
pub fn background_started(
    reply: crate::order::Reply,
    id: &str,
    command: &str,
) -> crate::order::Reply {
    use base64::Engine as _;
    let crate::order::Body::Json(body) = &reply.body else {
        return reply;
    };
    let pid = body
        .get("content")
        .and_then(serde_json::Value::as_str)
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.trim().parse::<u32>().ok());
    match (body.get("code").and_then(serde_json::Value::as_str), pid) {
        (Some("0"), Some(pid)) => {
            crate::order::Reply::ok(crate::order::tasks::started(id, pid, command))
        }
        _ => reply,
    }
}

/// Exit code of a timed run's wait script ([`wait_until`]) when the host refuses the
/// instant (EX_TEMPFAIL), its reason on stderr.
pub const REFUSED_INSTANT: i32 = 75;

/// A POSIX `sh` script that sleeps until instant `at` (unix ms) by the host's clock,
/// or exits [`REFUSED_INSTANT`] naming the instant and the host's clock when it passed
/// by more than the tolerance or lies over `max_wait` ms ahead (the agents' rule,
/// `order::at::admit`). Needs `date +%s%N` (GNU, busybox) and a fractional `sleep`;
/// with a `date` that has no `%N`, it falls back to whole seconds.
pub fn wait_until(at: i64, max_wait: Option<u64>) -> String {
    use crate::order::at::TOLERANCE_MS;
    let max = crate::order::at::max_wait_ms(max_wait);
    let instant = crate::order::at::rfc3339(at);
    format!(
        "n=$(date +%s%N 2>/dev/null); case $n in *N*|'') n=$(($(date +%s)*1000000000));; esac; \
         left=$(({at} - n / 1000000)); \
         if [ $left -lt -{TOLERANCE_MS} ]; then echo \"run: the start instant {instant} passed $((-left)) ms ago by this host's clock ($(date -u +%Y-%m-%dT%H:%M:%SZ)); tolerance {TOLERANCE_MS} ms\" >&2; exit {REFUSED_INSTANT}; fi; \
         if [ $left -gt {max} ]; then echo \"run: the start instant {instant} is $left ms ahead of this host's clock ($(date -u +%Y-%m-%dT%H:%M:%SZ)), over the longest wait allowed ({max} ms)\" >&2; exit {REFUSED_INSTANT}; fi; \
         if [ $left -gt 0 ]; then sleep $((left / 1000)).$(printf %03d $((left % 1000))); fi"
    )
}

/// `script` for `sh -c`, whatever the remote login shell, under `sudo -n` if `sudo`.
pub fn shell(script: &str, sudo: bool) -> String {
    if sudo {
        format!("sudo -n sh -c {}", quote(script))
    } else {
        format!("sh -c {}", quote(script))
    }
}

/// Quotes `s` for a POSIX shell: `'…'`, with `'` written `'\''`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_whole() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nb"), ["a"]);
        assert_eq!(s.push(b"c\n\nd"), ["bc", ""]);
        assert_eq!(s.push(b""), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("d"));
        assert_eq!(s.finish(), None);
        assert_eq!(s.push(b"\xff\n"), ["\u{fffd}"]);
    }

    #[test]
    fn huge_lines_are_bounded() {
        let mut s = LineSplitter::default();
        let big = vec![b'x'; MAX_LINE + 10];
        let lines = s.push(&big);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(s.finish().map(|l| l.len()), Some(10));
    }

    #[test]
    fn commands() {
        let argv: Vec<String> = ["tail", "-f", "/var/log/*.log"].map(String::from).into();
        assert_eq!(remote_command(&argv, false), "tail -f /var/log/*.log");
        let argv: Vec<String> = ["echo it's", "&&", "id"].map(String::from).into();
        assert_eq!(
            remote_command(&argv, true),
            "sudo -n sh -c 'echo it'\\''s && id'"
        );
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod wait_tests {
    use super::*;

    fn sh(script: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("sh")
    }

    #[test]
    fn the_wait_script_waits_or_refuses() {
        let now = crate::order::at::now_ms();
        let waited = sh(&format!("{}; date +%s%N", wait_until(now + 300, None)));
        assert!(waited.status.success(), "{waited:?}");
        let started: i64 = String::from_utf8_lossy(&waited.stdout)
            .trim()
            .parse::<i64>()
            .expect("date")
            / 1_000_000;
        assert!(
            started >= now + 300,
            "started {started}, instant {}",
            now + 300
        );
        let late = sh(&wait_until(now - 5_000, None));
        assert_eq!(late.status.code(), Some(REFUSED_INSTANT));
        assert!(String::from_utf8_lossy(&late.stderr).contains("passed"));
        let far = sh(&wait_until(now + 60_000, Some(1_000)));
        assert_eq!(far.status.code(), Some(REFUSED_INSTANT));
        assert!(String::from_utf8_lossy(&far.stderr).contains("over the longest wait"));
    }
}
