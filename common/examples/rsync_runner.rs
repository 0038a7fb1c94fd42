//! A stand-alone background-transfer runner: `rsync_runner <dir> <lock fd> -- <rsync> <argv…>`.
//!
//! The agent runs [`deploy_common::rsync::runner_main`] through a hidden subcommand of its
//! own binary. This example exposes the same function as a program of its own so that the
//! `rsync::state` tests in `deploy-common` have a runner to spawn without depending on the
//! agent crate: `cargo test` builds examples, and the tests look for this one next to the
//! test binary (`target/<profile>/examples/rsync_runner`).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(deploy_common::rsync::runner_main(&args));
}
