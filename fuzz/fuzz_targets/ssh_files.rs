//! The SSH side's parsers of local files and of output: `SshConfig::parse` (then
//! `resolve`), `KnownHosts::add` (then `check`/`algorithms`), `LineSplitter`, and
//! `Target::parse` of `ssh://` specifications.
//!
//! Invariants checked:
//! * no parser panics on any text;
//! * `LineSplitter`: the lines it returns, each followed by a newline, then the last
//!   line from `finish`, give back the input (for UTF-8 input whose lines are shorter
//!   than `MAX_LINE`), however the input is cut into pieces;
//! * an `ssh://` target that parses displays exactly as written (trimmed), and has the
//!   SSH scheme.

#![no_main]

use std::path::Path;

use deploy_common::ssh::known_hosts::KnownHosts;
use deploy_common::ssh::lines::{LineSplitter, MAX_LINE};
use deploy_common::ssh::SshConfig;
use deploy_common::target::{Scheme, Target};
use libfuzzer_sys::fuzz_target;

/// A fixed key for `check`.
const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = SshConfig::parse(text, Path::new("fuzz")) {
        for host in ["web01", "a.example.com", "", "[::1]"] {
            let _ = config.resolve(host);
        }
        let _ = config.resolve(text.lines().next().unwrap_or_default());
    }

    let mut known = KnownHosts::default();
    known.add(text, Path::new("fuzz"));
    if let Ok(key) = russh::keys::parse_public_key_base64(KEY) {
        let _ = known.check("web01", 22, &key);
        let _ = known.check("web01", 2222, &key);
        let _ = known.algorithms("web01", 22);
    }

    if text.lines().all(|l| l.len() < MAX_LINE) {
        let mut splitter = LineSplitter::default();
        let mut out = String::new();
        let cut = data.first().map_or(1, |&b| usize::from(b % 7) + 1);
        for piece in data.chunks(cut) {
            for line in splitter.push(piece) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        if let Some(last) = splitter.finish() {
            out.push_str(&last);
        }
        assert_eq!(out, text);
    }

    let spec = format!("ssh://{text}");
    if let Ok(target) = Target::parse(&spec, 3441) {
        assert_eq!(target.scheme, Scheme::Ssh);
        assert_eq!(target.to_string(), spec.trim());
    }
});
