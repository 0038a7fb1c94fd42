//! The agent's configuration (`deploy_agent.ini` and its jobs file).

use std::path::PathBuf;

/// One `[rsync::group::<name>]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RsyncGroup {
    /// `dest`: the rsync *source* (`host::MODULE/path` or `rsync://host[:port]/MODULE/path`).
    pub dest: String,
    /// `src`: the local *target* directory on the agent.
    pub src: String,
    /// `rsync`: the binary (default `/usr/bin/rsync`).
    pub rsync: PathBuf,
    /// `rsh`: value for `--rsh=`.
    pub rsh: Option<String>,
    /// `exclude[]` values.
    pub exclude: Vec<String>,
    /// `include[]` values.
    pub include: Vec<String>,
    /// `option[]` values: extra rsync arguments, each one argv element.
    pub option: Vec<String>,
}
