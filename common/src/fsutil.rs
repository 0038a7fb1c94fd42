//! Filesystem checks shared by the modules that keep state on disk (background
//! transfers, locks).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What is wrong with `dir` as a private state directory, if anything: it must be a real
/// directory (not a symlink), owned by us, and not writable by group or others, since its
/// files decide what the agent kills, reports or grants.
pub(crate) fn private_dir_problem(dir: &Path) -> std::io::Result<Option<&'static str>> {
    let meta = fs::symlink_metadata(dir)?;
    Ok(if !meta.file_type().is_dir() {
        Some("not a directory")
    } else if meta.uid() != nix::unistd::geteuid().as_raw() {
        Some("owned by another user")
    } else if meta.mode() & 0o022 != 0 {
        Some("writable by group or others")
    } else {
        None
    })
}
