//! The harness of the agent's tests: everything comes from `deploy-testkit` (shared with
//! the proxy's tests) — sandboxes and trees, a real rsync daemon, the agent process
//! harness that reads its `listening on` lines, `/proc` helpers, and the v2 / v1 plain /
//! v1 "ssl" clients. Only what names this crate's own binary is defined here.

#![allow(unused_imports)]

pub use deploy_testkit::AgentConfig as Config;
pub use deploy_testkit::*;
use std::path::Path;

/// The agent binary under test (the same file [`deploy_testkit::bins::agent`] finds).
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_deploy-agent");

/// Runs the agent binary with `args` to completion (for `--check`); returns the exit
/// code, stdout and stderr.
pub fn run_agent(args: &[&str]) -> (i32, String, String) {
    run_bin(Path::new(AGENT_BIN), args)
}
