//! The `sync` order (SSH hosts): upload, then start a sync tool on every host and speak
//! orgalorg's sync protocol with it over its standard input and output, so that the
//! steps of a deployment can wait for every host at a barrier (peers spec §1.6).
//!
//! ```text
//! deploy ─► every tool:   <prefix> HELLO
//! deploy ─► every tool:   <prefix> NODE <node> [CURRENT]     one per host of the run
//! deploy ─► every tool:   <prefix> START
//! tool   ─► deploy:       <prefix> SYNC <description>
//! deploy ─► every tool:   <prefix> SYNC <node> <description>  (the sender included)
//! ```
//!
//! * `<prefix>` is `ORGALORG:<unix nanoseconds>`, fresh for every run, so that tools
//!   written for orgalorg work unchanged; a tool should read it from the HELLO line.
//! * Unlike orgalorg, the NODE lines carry the prefix too, and the tool is always told
//!   its run directory: it starts there, and `DEPLOY_RUN_DIR` names it. The default
//!   one, `~/.deploy-runs/<nanoseconds>-<host>-<port>`, is per host and removed when
//!   the host's tool has ended (unless kept).
//! * `<node>` is `[user@host:port]` as orgalorg writes it: the host as written on the
//!   command line, with the user and port it is reached with.
//! * Lines of the tool other than `<prefix> SYNC …` are its output (also lines that
//!   start with the prefix, e.g. a tool echoing what it was told), shown with its host
//!   like `run`'s; its standard error is passed through the same way.
//! * A tool that exits before reading HELLO is fine (a plain command works).
//! * HELLO is sent once every host's tool has started. In strict mode, a host that
//!   cannot be reached or fails its upload aborts the run before HELLO (every tool gets
//!   EOF and no START); with `--skip-unreachable`, unreachable hosts are left out of the
//!   NODE list.
//!
//! The reply is `upload`'s ([`super::upload`]), with the tool's exit code.

use serde::{Deserialize, Serialize};

/// Where the default run directories are, relative to the remote home.
pub const RUNS_DIR: &str = ".deploy-runs";

/// One sync run: its prefix and the hosts taking part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRun {
    /// `ORGALORG:<unix nanoseconds>`.
    pub prefix: String,
    /// Every host of the run, as written.
    pub nodes: Vec<String>,
    /// Abort every host if one cannot start (otherwise unreachable hosts are left out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// The run directory is this run's own (the default `.deploy-runs/<run>-<host>-<port>`):
    /// each host removes it when its tool has ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scratch: bool,
}

impl SyncRun {
    /// A run over `nodes` with a fresh prefix.
    pub fn new(nodes: Vec<String>, strict: bool) -> SyncRun {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        SyncRun {
            prefix: format!("ORGALORG:{nanos}"),
            nodes,
            strict,
            scratch: false,
        }
    }

    /// The default run directory of this run on a host, relative to the remote home:
    /// per host (`%h-%p`), so that hosts sharing their home directory (NFS) do not
    /// extract into one directory.
    pub fn default_root(&self) -> String {
        format!(
            "{RUNS_DIR}/{}-%h-%p",
            self.prefix.trim_start_matches("ORGALORG:")
        )
    }

    /// The opening lines for `node`: HELLO, a NODE line per host of `nodes`
    /// (`CURRENT` on `node`'s), START.
    pub fn opening(&self, nodes: &[String], node: &str) -> String {
        let mut text = format!("{} HELLO\n", self.prefix);
        for other in nodes {
            let current = if other == node { " CURRENT" } else { "" };
            text.push_str(&format!("{} NODE {other}{current}\n", self.prefix));
        }
        text.push_str(&format!("{} START\n", self.prefix));
        text
    }

    /// Reads a line of a tool: `Some(Some(description))` for `<prefix> SYNC
    /// <description>`, `Some(None)` for another line with the prefix, `None` for a line
    /// without it.
    pub fn sync_request<'a>(&self, line: &'a str) -> Option<Option<&'a str>> {
        let rest = line.strip_prefix(&self.prefix)?.strip_prefix(' ')?;
        Some(match rest.split_once(' ') {
            Some(("SYNC", description)) => Some(description),
            None if rest == "SYNC" => Some(""),
            _ => None,
        })
    }

    /// The broadcast of `node`'s SYNC.
    pub fn sync_line(&self, node: &str, description: &str) -> String {
        format!("{} SYNC {node} {description}\n", self.prefix)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines() {
        let run = SyncRun {
            prefix: "ORGALORG:1".into(),
            nodes: vec!["a".into(), "b".into()],
            strict: true,
            scratch: false,
        };
        assert_eq!(run.default_root(), ".deploy-runs/1-%h-%p");
        assert_eq!(
            run.opening(&run.nodes, "b"),
            "ORGALORG:1 HELLO\nORGALORG:1 NODE a\nORGALORG:1 NODE b CURRENT\nORGALORG:1 START\n"
        );
        assert_eq!(
            run.sync_request("ORGALORG:1 SYNC phase 1"),
            Some(Some("phase 1"))
        );
        assert_eq!(run.sync_request("ORGALORG:1 SYNC"), Some(Some("")));
        assert_eq!(run.sync_request("ORGALORG:1 OTHER x"), Some(None));
        assert_eq!(run.sync_request("ORGALORG:12 SYNC x"), None);
        assert_eq!(run.sync_request("hello"), None);
        assert_eq!(run.sync_line("a", "phase 1"), "ORGALORG:1 SYNC a phase 1\n");
        assert!(SyncRun::new(vec![], false).prefix.starts_with("ORGALORG:"));
    }
}
