//! Filesystem checks and writes shared by the modules that keep state on disk
//! (background transfers, locks).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Writes `dir/name` (mode 0600) through a temporary file `.name.<pid>.tmp` and a rename,
/// so that readers never see half of it; the temporary file is never followed if it is a
/// link, and removed on failure. No fsync: the callers' state is void after a crash of
/// the machine anyway.
pub(crate) fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(content)?;
        drop(file);
        fs::rename(&tmp, dir.join(name))
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

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
