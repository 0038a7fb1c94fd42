//! Where the workspace's binaries are.
//!
//! Cargo gives an integration test the path of its own package's binaries only
//! (`CARGO_BIN_EXE_<name>`); the proxy's tests also run `deploy-agent` and
//! `deploy-client`. Every binary of the workspace lands in the same profile directory
//! (`target/debug/`), which is the parent of the test executable's `deps/`:
//!
//! ```text
//! target/debug/deps/tests-0123abcd   the running test
//! target/debug/deploy-agent          bin("deploy-agent")
//! ```
//!
//! `cargo test --workspace` builds every package's binaries before running any test, so
//! they are there and current. A missing one (e.g. `cargo test -p deploy-proxy` on a
//! fresh target directory) is built once with `cargo build -p <name> --bin <name>` into
//! the same target directory and profile (Cargo does not hold its lock while tests run).
//! A present one is used as it is, never rebuilt: a nested build resolves features
//! without the tests' dev-dependencies and could rebuild (and replace) what the outer
//! `cargo test` just built. So after changing the agent, run the proxy's tests through
//! `--workspace`, or build the agent first. `DEPLOY_TEST_BIN_DIR` overrides the
//! directory.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Serializes on-demand builds within one test process.
static BUILD: Mutex<()> = Mutex::new(());

/// The profile directory (`target/debug`) holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEPLOY_TEST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test executable's directory");
    match deps.file_name().and_then(|n| n.to_str()) {
        Some("deps") => deps.parent().expect("profile directory").to_path_buf(),
        _ => deps.to_path_buf(),
    }
}

/// The path of the workspace binary `name` (also its package's name), built if missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if path.is_file() {
        return path;
    }
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if path.is_file() {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let dir = bin_dir();
    // target/<profile dir>: "debug" is the dev profile's directory.
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::env::workspace_dir()).args([
        "build",
        "--quiet",
        "-p",
        name,
        "--bin",
        name,
        "--profile",
        profile,
    ]);
    if let Some(target_dir) = dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    eprintln!("deploy-testkit: {} is missing; building it", path.display());
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run cargo build -p {name}: {e}"));
    assert!(status.success(), "cargo build -p {name} failed: {status}");
    assert!(
        path.is_file(),
        "{} still missing after cargo build -p {name}",
        path.display()
    );
    path
}

/// `deploy-agent`.
pub fn agent() -> PathBuf {
    bin("deploy-agent")
}

/// `deploy-proxy`.
pub fn proxy() -> PathBuf {
    bin("deploy-proxy")
}

/// `deploy-client`.
pub fn client() -> PathBuf {
    bin("deploy-client")
}

/// What `<bin> --version` must print: `<name> <version> (commit <HEAD>)`, the commit
/// as `git rev-parse --short=12 HEAD` in the workspace says it ("unknown" outside git).
pub fn expected_version(name: &str) -> String {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(crate::env::workspace_dir())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{name} {} (commit {commit})\n", env!("CARGO_PKG_VERSION"))
}

/// Runs `<bin> --version` and `-V`, and checks both print [`expected_version`].
pub fn assert_version(bin: &std::path::Path) {
    let name = bin
        .file_name()
        .and_then(|n| n.to_str())
        .expect("binary name");
    let want = expected_version(name);
    for flag in ["--version", "-V"] {
        let out = Command::new(bin)
            .arg(flag)
            .output()
            .unwrap_or_else(|e| panic!("run {} {flag}: {e}", bin.display()));
        assert!(out.status.success(), "{name} {flag}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{name} {flag}");
    }
}
