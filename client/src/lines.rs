//! The `lines` format (default for `run`): every output line as it arrives, prefixed by
//! its host, on the stream it came from; a summary of failures on standard error.
//!
//! ```text
//! stdout:  ssh://web01: hello                      (-q: "hello", exactly the host's
//!                                                    bytes: no newline added after a
//!                                                    last partial line;
//!                                                    -v: "ssh://web01: <stdout> hello")
//! stderr:  ssh://web02: tail: cannot open 'x'
//! stderr:  deploy-client: 10 of 10 hosts failed: code 17 (10 hosts)
//! stderr:  deploy-client: 2 of 10 hosts failed: code 1: ssh://web3, ssh://web7
//! ```
//!
//! Lines arrive whole from the transports, so hosts never interleave inside a line; a
//! host's lines keep their order. With `--grouped`, a host's lines are held until it is
//! done and then printed together. Output is buffered and written when the stream of
//! events pauses, so that a flood of lines costs few system calls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use deploy_common::fanout::HostResult;
use deploy_common::order::Body;
use deploy_common::transport::{Outcome, Verdict};
use deploy_common::wire::message::{Event, Stream};

use crate::render;

/// Renders events in the `lines` format.
pub struct Lines {
    raw: bool,
    /// `-v`: each line says its stream after the host (`<stdout>`, `<stderr>`).
    tagged: bool,
    grouped: bool,
    order: String,
    out: Vec<u8>,
    err: Vec<u8>,
    /// `--grouped`: per target and host (the agents behind one proxy share its
    /// target), the lines so far.
    held: HashMap<(usize, String), Held>,
    /// `--grouped`: hosts done, whose lines are written at the next flush, in order
    /// (after `out` and `err`); lines that come meanwhile join the last of them.
    ready: Vec<Held>,
    /// Targets and hosts that streamed at least one line.
    streamed: HashSet<(usize, String)>,
}

impl Lines {
    /// A renderer; `raw` drops the host prefix (`-q`).
    pub fn new(order: &str, raw: bool, grouped: bool) -> Lines {
        Lines {
            raw,
            tagged: false,
            grouped,
            order: order.to_owned(),
            out: Vec::new(),
            err: Vec::new(),
            held: HashMap::new(),
            ready: Vec::new(),
            streamed: HashSet::new(),
        }
    }

    /// Tags every line with its stream (`-v`), unless raw.
    pub fn tagged(mut self, tagged: bool) -> Lines {
        self.tagged = tagged;
        self
    }

    /// Appends `line` of `host`, formatted, to `buf`; with `partial` (the last text of
    /// a stream that had no newline after it) and raw (`-q`), no newline is added, so
    /// the output is copied exactly.
    fn format(&self, buf: &mut Vec<u8>, host: &str, stream: Stream, line: &str, partial: bool) {
        if !self.raw {
            buf.extend_from_slice(host.as_bytes());
            buf.extend_from_slice(b": ");
            if self.tagged {
                buf.extend_from_slice(match stream {
                    Stream::Stdout => b"<stdout> ",
                    Stream::Stderr => b"<stderr> ",
                });
            }
        }
        buf.extend_from_slice(line.as_bytes());
        if !(self.raw && partial) {
            buf.push(b'\n');
        }
    }

    /// A line to write at the next flush (after the hosts already done, if any).
    fn line(&mut self, host: &str, stream: Stream, line: &str) {
        self.text(host, stream, line, false);
    }

    /// A line, or a last partial one, to write at the next flush.
    fn text(&mut self, host: &str, stream: Stream, line: &str, partial: bool) {
        let mut buf = std::mem::take(match stream {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        });
        if self.ready.is_empty() {
            self.format(&mut buf, host, stream, line, partial);
        } else {
            let mut formatted = Vec::new();
            self.format(&mut formatted, host, stream, line, partial);
            if let Some(last) = self.ready.last_mut() {
                last.push(stream, &formatted);
            }
        }
        *match stream {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        } = buf;
    }

    /// Takes one streamed event.
    pub fn event(&mut self, index: usize, host: &str, event: &Event) {
        let Event::Line {
            stream,
            line,
            partial,
        } = event
        else {
            return;
        };
        self.streamed.insert((index, host.to_owned()));
        if self.grouped {
            let mut formatted = Vec::new();
            self.format(&mut formatted, host, *stream, line, *partial);
            self.held
                .entry((index, host.to_owned()))
                .or_default()
                .push(*stream, &formatted);
        } else {
            self.text(host, *stream, line, *partial);
        }
    }

    /// A host is done: its held lines (`--grouped`), or, when it streamed nothing, what
    /// its result says (the output of a `run` that did not stream, another order's
    /// result in the `text` form).
    ///
    /// `target_done` says the whole target ended (not one agent behind a proxy): lines
    /// still held for its agents are printed then rather than lost.
    pub fn done(&mut self, result: &HostResult, target_done: bool) {
        if target_done {
            let orphans: Vec<(usize, String)> = self
                .held
                .keys()
                .filter(|(index, host)| *index == result.index && *host != result.host)
                .cloned()
                .collect();
            for orphan in orphans {
                if let Some(held) = self.held.remove(&orphan) {
                    self.ready.push(held);
                }
            }
        }
        let key = (result.index, result.host.clone());
        if let Some(held) = self.held.remove(&key) {
            self.ready.push(held);
            return;
        }

        if self.streamed.contains(&key) {
            return;
        }
        match &result.outcome {
            Outcome::Reply(reply)
                if matches!(self.order.as_str(), "run" | "upload" | "sync")
                    && reply.code == 200 =>
            {
                if let Body::Json(map) = &reply.body {
                    let bytes = map
                        .get("content")
                        .and_then(|c| c.as_str())
                        .and_then(|b| STANDARD.decode(b).ok())
                        .unwrap_or_default();
                    for line in String::from_utf8_lossy(&bytes).lines() {
                        self.line(&result.host, Stream::Stdout, line);
                    }
                }
            }
            Outcome::Relayed { record, .. }
                if matches!(self.order.as_str(), "run" | "upload" | "sync")
                    && record.get("returnCode").and_then(|c| c.as_str()) == Some("200") =>
            {
                let bytes = record
                    .get("content")
                    .and_then(|c| c.get("content"))
                    .and_then(|c| c.as_str())
                    .and_then(|b| STANDARD.decode(b).ok())
                    .unwrap_or_default();
                for line in String::from_utf8_lossy(&bytes).lines() {
                    self.line(&result.host, Stream::Stdout, line);
                }
            }
            outcome if outcome.verdict() != Verdict::HostFailed => {
                // A command's output is on stdout; a refusal of `run`, `upload` or
                // `sync` (not started, 403…) is an error, on stderr.
                let refused = matches!(self.order.as_str(), "run" | "upload" | "sync")
                    && outcome.reply().is_some_and(|r| r.code != 200);
                let stream = if refused {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                let block = render::text_block(&self.order, outcome);
                self.line(&result.host, stream, &block.header);
                for body in block.body {
                    self.line(&result.host, stream, body.trim_start());
                }
            }
            _ => {}
        }
    }

    /// Bytes waiting to be written (a host done counts as much as a flush needs).
    pub fn buffered(&self) -> usize {
        let ready = if self.ready.is_empty() {
            0
        } else {
            usize::MAX / 2
        };
        self.out.len() + self.err.len() + ready
    }

    /// Writes what is buffered, then the lines of the hosts done (`--grouped`).
    pub fn flush(&mut self, out: &mut impl Write) -> io::Result<()> {
        write_both(out, &mut self.out, &mut self.err)?;
        for held in std::mem::take(&mut self.ready) {
            held.write(out)?;
        }
        Ok(())
    }
}

/// Writes `stdout` to `out` and `stderr` to the standard error, and empties them.
fn write_both(out: &mut impl Write, stdout: &mut Vec<u8>, stderr: &mut Vec<u8>) -> io::Result<()> {
    if !stdout.is_empty() {
        out.write_all(stdout)?;
        out.flush()?;
        stdout.clear();
    }
    if !stderr.is_empty() {
        let mut err = io::stderr().lock();
        err.write_all(stderr)?;
        err.flush()?;
        stderr.clear();
    }
    Ok(())
}

/// Bytes of one host's held lines (`--grouped`) kept in memory; past them the host's
/// lines go to an unnamed temporary file, so that memory stays bounded whatever the
/// hosts print.
const SPILL_AT: usize = 128 << 10;

/// One host's formatted lines, held until it is done (`--grouped`): records of a
/// stream tag (`o`, `e`) and the line with its newline, in memory up to [`SPILL_AT`]
/// bytes, then in a temporary file.
#[derive(Default)]
struct Held {
    mem: Vec<u8>,
    file: Option<io::BufWriter<std::fs::File>>,
}

impl Held {
    fn push(&mut self, stream: Stream, formatted: &[u8]) {
        let tag = match stream {
            Stream::Stdout => b'o',
            Stream::Stderr => b'e',
        };
        if let Some(file) = &mut self.file {
            let written = file
                .write_all(&[tag])
                .and_then(|()| file.write_all(formatted));
            match written {
                Ok(()) => return,
                Err(e) => {
                    // Lines already in the file would be lost: give up holding them.
                    tracing::warn!(cause = %e, "--grouped: cannot write the temporary file");
                }
            }
        }
        self.mem.push(tag);
        self.mem.extend_from_slice(formatted);
        if self.mem.len() > SPILL_AT && self.file.is_none() {
            match tempfile::tempfile() {
                Ok(file) => {
                    let mut file = io::BufWriter::with_capacity(64 << 10, file);
                    if file.write_all(&self.mem).is_ok() {
                        self.mem = Vec::new();
                        self.file = Some(file);
                    }
                }
                Err(e) => {
                    tracing::debug!(cause = %e, "--grouped: no temporary file; held in memory")
                }
            }
        }
    }

    /// Writes the lines: stdout's to `out`, stderr's to the standard error.
    fn write(self, out: &mut impl Write) -> io::Result<()> {
        use std::io::{BufRead as _, Seek as _};
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut take = |record: &[u8], out: &mut dyn Write| -> io::Result<()> {
            let Some((tag, line)) = record.split_first() else {
                return Ok(());
            };
            match tag {
                b'e' => stderr.extend_from_slice(line),
                _ => stdout.extend_from_slice(line),
            }
            if stdout.len() + stderr.len() >= 64 << 10 {
                write_both(&mut &mut *out, &mut stdout, &mut stderr)?;
            }
            Ok(())
        };
        match self.file {
            None => {
                for record in self.mem.split_inclusive(|&b| b == b'\n') {
                    take(record, out)?;
                }
            }
            Some(file) => {
                let mut file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
                file.rewind()?;
                let mut reader = io::BufReader::with_capacity(64 << 10, file);
                let mut record = Vec::new();
                while reader.read_until(b'\n', &mut record)? > 0 {
                    take(&record, out)?;
                    record.clear();
                }
            }
        }
        write_both(out, &mut stdout, &mut stderr)
    }
}

/// Why a host failed, as a group name for the summary: `code 17`, `unreachable`,
/// `timed out`, `403 Permission Denied`, `error`. `None` if it succeeded
/// (or is skipped as unreachable).
fn failure(result: &HostResult, skip_unreachable: bool) -> Option<String> {
    outcome_failure(&result.outcome, skip_unreachable)
}

/// [`failure`] of an outcome; an agent's record relayed by a proxy counts as the
/// outcome it stands for (its exit code, its refusal, unreachable…).
fn outcome_failure(outcome: &Outcome, skip_unreachable: bool) -> Option<String> {
    if outcome.verdict() == Verdict::Succeeded {
        return None;
    }
    Some(match outcome {
        Outcome::Reply(reply) if reply.code == 200 => match &reply.body {
            Body::Json(map) => match map.get("code").and_then(|c| c.as_str()) {
                Some(code) => format!("code {code}"),
                None => "return false".to_owned(),
            },
            _ => "return false".to_owned(),
        },
        Outcome::Reply(reply) if is_not_started(reply) => "not started".to_owned(),
        Outcome::Reply(reply) => format!("{} {}", reply.code, reply.reason()),
        Outcome::Unreachable { .. } if skip_unreachable => return None,
        Outcome::Unreachable { .. } => "unreachable".to_owned(),
        Outcome::Timeout(_) => "timed out".to_owned(),
        // The reasons (host keys, authentication…) name their host; they were
        // reported host by host.
        Outcome::Failed(_) => "error".to_owned(),
        Outcome::Relayed { record, .. } => {
            return outcome_failure(
                &deploy_common::transport::record_outcome(record),
                skip_unreachable,
            )
        }
    })
}

/// Whether a reply says the order did not start (a 503: strict mode, another host
/// failed).
pub fn is_not_started(reply: &deploy_common::order::Reply) -> bool {
    reply.code == 503 && matches!(&reply.body, Body::Text(text) if text.starts_with("not started"))
}

/// Most hosts named per group of the summary; the rest are counted.
const NAMED_HOSTS: usize = 20;

/// `N of M hosts failed: code 17: web3, web7; unreachable: db1` when only some
/// failed (hosts sorted naturally, at most [`NAMED_HOSTS`] named per group), or
/// `M of M hosts failed: code 17 (M hosts)` when all did; groups largest first;
/// `None` if nothing failed.
pub fn summary(results: &[&HostResult], skip_unreachable: bool) -> Option<String> {
    let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for result in results {
        if let Some(why) = failure(result, skip_unreachable) {
            groups.entry(why).or_default().push(&result.host);
        }
    }
    let failed: usize = groups.values().map(Vec::len).sum();
    if failed == 0 {
        return None;
    }
    let mut groups: Vec<(String, Vec<&str>)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let parts: Vec<String> = groups
        .iter_mut()
        .map(|(why, hosts)| {
            let n = hosts.len();
            if failed == results.len() {
                return format!("{why} ({n} host{})", plural(n));
            }
            hosts.sort_by(|a, b| render::natural_cmp(a, b));
            let mut named = hosts
                .iter()
                .take(NAMED_HOSTS)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            if n > NAMED_HOSTS {
                named.push_str(&format!(" and {} more", n - NAMED_HOSTS));
            }
            format!("{why}: {named}")
        })
        .collect();
    let separator = if failed == results.len() { ", " } else { "; " };
    Some(format!(
        "{failed} of {} host{} failed: {}",
        results.len(),
        plural(results.len()),
        parts.join(separator)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_common::order::run::ran;
    use deploy_common::order::Reply;
    use std::time::Duration;

    fn result(index: usize, host: &str, outcome: Outcome) -> HostResult {
        HostResult {
            index,
            host: host.into(),
            outcome,
            elapsed: Duration::ZERO,
        }
    }

    fn exited(code: i32) -> Outcome {
        Outcome::Reply(Reply::ok(ran(code, "x", b"")))
    }

    #[test]
    fn summary_groups_failures() {
        let a = result(0, "a", exited(17));
        let b = result(1, "b", exited(17));
        let c = result(2, "c", exited(0));
        let d = result(
            3,
            "d",
            Outcome::Unreachable {
                address: "d:22".into(),
                cause: "refused".into(),
            },
        );
        assert_eq!(
            summary(&[&b, &a, &c, &d], false).as_deref(),
            Some("3 of 4 hosts failed: code 17: a, b; unreachable: d")
        );
        assert_eq!(
            summary(&[&a, &b, &c, &d], true).as_deref(),
            Some("2 of 4 hosts failed: code 17: a, b")
        );
        assert_eq!(summary(&[&c], false), None);
        // Everyone failed: counts say it all.
        assert_eq!(
            summary(&[&a, &b, &d], false).as_deref(),
            Some("3 of 3 hosts failed: code 17 (2 hosts), unreachable (1 host)")
        );
        // Many failed hosts: the first ones (naturally sorted) are named.
        let many: Vec<HostResult> = (0..25)
            .map(|i| result(i, &format!("web{i}"), exited(1)))
            .collect();
        let mut all: Vec<&HostResult> = many.iter().collect();
        all.push(&c);
        let text = summary(&all, false).unwrap();
        assert!(
            text.starts_with("25 of 26 hosts failed: code 1: web0, web1, web2,"),
            "{text}"
        );
        assert!(text.ends_with("web19 and 5 more"), "{text}");

        // Agents behind a proxy: their own exit codes and failures, not the relay's.
        let relayed = |index: usize, host: &str, outcome: Outcome| {
            result(
                index,
                host,
                Outcome::Relayed {
                    record: outcome.to_json(),
                    via: "px".into(),
                },
            )
        };
        let e = relayed(0, "e", exited(1));
        let f = relayed(0, "f", exited(2));
        let g = relayed(0, "g", exited(0));
        let h = relayed(0, "h", Outcome::Reply(Reply::error(403, "no")));
        assert_eq!(
            summary(&[&e, &f, &g, &h, &d], false).as_deref(),
            Some("4 of 5 hosts failed: 403 Permission Denied: h; code 1: e; code 2: f; unreachable: d")
        );
    }

    #[test]
    fn prefixes_grouping_and_raw() {
        let line = |s: &str| Event::Line {
            stream: Stream::Stdout,
            line: s.into(),
            partial: false,
        };
        let flushed = |l: &mut Lines| {
            let mut out = Vec::new();
            l.flush(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let mut l = Lines::new("run", false, true);
        l.event(0, "a", &line("1"));
        l.event(1, "b", &line("x"));
        l.event(0, "a", &line("2"));
        assert_eq!(flushed(&mut l), "");
        l.done(&result(1, "b", exited(0)), true);
        l.done(&result(0, "a", exited(0)), true);
        assert_eq!(flushed(&mut l), "b: x\na: 1\na: 2\n");

        // Behind a proxy (one target, index 0): each agent's lines together under its
        // name; an agent whose result never came is printed when the proxy ends.
        let mut l = Lines::new("run", false, true);
        l.event(0, "x", &line("x1"));
        l.event(0, "y", &line("y1"));
        l.event(0, "x", &line("x2"));
        l.done(&result(0, "x", exited(0)), false);
        assert_eq!(flushed(&mut l), "x: x1\nx: x2\n");
        l.done(&result(0, "px", exited(0)), true);
        assert_eq!(flushed(&mut l), "y: y1\n");

        // A host's lines past the bound go to a temporary file, and come back whole,
        // in order, after the lines of the host done before it.
        let mut l = Lines::new("run", false, true);
        let many: Vec<String> = (0..20_000).map(|n| format!("line {n:>40}")).collect();
        l.event(1, "small", &line("s"));
        for text in &many {
            l.event(0, "big", &line(text));
        }
        assert!(l.held[&(0, "big".to_owned())].file.is_some(), "not spilled");
        assert!(l.held[&(0, "big".to_owned())].mem.len() <= SPILL_AT);
        l.done(&result(1, "small", exited(0)), true);
        l.done(&result(0, "big", exited(0)), true);
        let expected: String = std::iter::once("small: s\n".to_owned())
            .chain(many.iter().map(|t| format!("big: {t}\n")))
            .collect();
        assert_eq!(flushed(&mut l), expected);

        let mut l = Lines::new("run", true, false);
        l.event(
            0,
            "a",
            &Event::Line {
                stream: Stream::Stderr,
                line: "e".into(),
                partial: false,
            },
        );
        assert_eq!(String::from_utf8_lossy(&l.err), "e\n");

        // A last text without newline: raw, none added; prefixed, one (the next
        // prefix needs its own line).
        let partial = Event::Line {
            stream: Stream::Stdout,
            line: "abc".into(),
            partial: true,
        };
        let mut raw = Lines::new("run", true, false);
        raw.event(0, "a", &partial);
        assert_eq!(String::from_utf8_lossy(&raw.out), "abc");
        let mut prefixed = Lines::new("run", false, true);
        prefixed.event(0, "a", &partial);
        prefixed.done(&result(0, "a", exited(0)), true);
        assert_eq!(flushed(&mut prefixed), "a: abc\n");
    }
}
