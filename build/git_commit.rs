// The build script of every binary crate (agent, proxy, client), included by their
// `build.rs`: it sets `DEPLOY_GIT_COMMIT` for `deploy_common::version!()`, which
// `--version` prints.
//
// The commit is `git rev-parse --short=12 HEAD` in the crate's directory; outside a git
// checkout (a source tarball) it is `DEPLOY_GIT_COMMIT` from the environment, else
// "unknown". The script reruns only when HEAD moves: it watches `HEAD`, the ref HEAD
// points to and `packed-refs` (as git names them, so linked worktrees work too), never
// the work tree, so an edit does not make the binaries rebuild on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `git args…` in `dir`: its trimmed standard output, if it succeeded and said anything.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// Tells cargo to rerun this script when git's file `name` (e.g. `HEAD`) changes, if it
/// exists (a missing one would make cargo rerun the script on every build).
fn watch_git_path(dir: &Path, name: &str) {
    if let Some(path) = git(dir, &["rev-parse", "--git-path", name]) {
        let path: PathBuf = dir.join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEPLOY_GIT_COMMIT");
    let commit = match git(&dir, &["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            watch_git_path(&dir, "HEAD");
            watch_git_path(&dir, "packed-refs");
            if let Some(head_ref) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
                watch_git_path(&dir, &head_ref);
            }
            commit
        }
        None => std::env::var("DEPLOY_GIT_COMMIT").unwrap_or_else(|_| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=DEPLOY_GIT_COMMIT={commit}");
}
