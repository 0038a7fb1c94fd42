//! The master's pid file.
//!
//! The original wrote none, and its init scripts stopped it by name, which failed once
//! the processes had renamed themselves. [`PidFile::create`] refuses to start a second
//! master while the pid file names a live process, replaces a stale one, and writes the
//! new pid atomically (temporary file, then `rename`), so a reader never sees a partial
//! file. Dropping the [`PidFile`] removes the file, but only in the process that created
//! it (not in forked workers) and only while it still holds that pid.
//!
//! ```text
//! 1234\n        (decimal pid, newline; mode 0644)
//! ```
//!
//! If privileges are dropped after the pid file is created, the directory must stay
//! writable by the new user for the removal to succeed; otherwise the file is left
//! behind and recognised as stale at the next start.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Why the pid file could not be created. The `Display` form names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PidError {
    /// The pid file names a live process: another instance is running.
    #[error("pid file {}: process {pid} is still running", path.display())]
    Running {
        /// The pid file.
        path: PathBuf,
        /// The live process it names.
        pid: u32,
    },
    /// The existing pid file could not be read.
    #[error("pid file {}: cannot read: {source}", path.display())]
    Read {
        /// The pid file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The pid file could not be written.
    #[error("pid file {}: cannot write: {source}", path.display())]
    Write {
        /// The pid file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
}

/// A pid file holding this process's pid, removed on drop.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's pid to `path`, unless `path` names another live process.
    ///
    /// A missing file, an unreadable number or the pid of a process that is gone is
    /// replaced.
    pub fn create(path: impl AsRef<Path>) -> Result<PidFile, PidError> {
        let path = path.as_ref().to_path_buf();
        let pid = std::process::id();
        match read_pid(&path) {
            Ok(Some(old)) if old != pid && is_alive(old) => {
                return Err(PidError::Running { path, pid: old });
            }
            Ok(Some(old)) if old != pid => {
                tracing::info!(path = %path.display(), pid = old, "replacing stale pid file");
            }
            Ok(_) => {}
            Err(source) => return Err(PidError::Read { path, source }),
        }
        write_atomically(&path, pid).map_err(|source| PidError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(PidFile { path, pid })
    }

    /// The pid file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid written to it.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // A forked worker inherits this value; only the creator removes the file, and
        // only while it is still ours (not replaced by a newer instance).
        if std::process::id() == self.pid
            && matches!(read_pid(&self.path), Ok(Some(p)) if p == self.pid)
        {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), cause = %e, "cannot remove pid file");
            }
        }
    }
}

/// The pid in the file; `None` when there is no file or it holds no positive number.
fn read_pid(path: &Path) -> io::Result<Option<u32>> {
    match fs::read(path) {
        Ok(bytes) => Ok(std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|&pid| pid > 0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `pid` names a live process: `kill(pid, 0)` succeeds (or is refused for lack
/// of permission, which also means it exists) and, on Linux, `/proc/<pid>` exists.
fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    let signalled = match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    };
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        signalled && Path::new(&format!("/proc/{pid}")).exists()
    } else {
        signalled
    }
}

/// Writes `<pid>\n` to a temporary file beside `path` (mode 0644) and renames it over
/// `path`.
fn write_atomically(path: &Path, pid: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{pid}.tmp"));
    let temp = path.with_file_name(temp_name);

    let write = || -> io::Result<()> {
        // A leftover from an earlier process with the same pid.
        let _ = fs::remove_file(&temp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)?;
        // The umask may have cleared bits of the mode above.
        file.set_permissions(Permissions::from_mode(0o644))?;
        file.write_all(format!("{pid}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn created_with_our_pid_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.pid");
        let pid_file = PidFile::create(&path).expect("create");
        assert_eq!(pid_file.path(), path);
        assert_eq!(pid_file.pid(), std::process::id());
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!("{}\n", std::process::id())
        );
        assert_eq!(mode(&path), 0o644);
        // Our own pid in the file is not "another instance".
        let again = PidFile::create(&path).expect("create again");
        drop(again);
        assert!(!path.exists());
        drop(pid_file);
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn stale_and_garbage_files_are_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.pid");
        for old in ["2147483646\n", "hello", "", "0", "-5", "\u{fffd}\u{0}"] {
            fs::write(&path, old).expect("write");
            let pid_file = PidFile::create(&path).expect("create over stale file");
            assert_eq!(
                fs::read_to_string(&path).expect("read"),
                format!("{}\n", pid_file.pid())
            );
        }
    }

    #[test]
    fn a_live_process_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.pid");
        let parent = std::os::unix::process::parent_id();
        fs::write(&path, format!("{parent}\n")).expect("write");
        let err = PidFile::create(&path).expect_err("running");
        assert!(
            matches!(err, PidError::Running { pid, .. } if pid == parent),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&parent.to_string()), "{text}");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!("{parent}\n")
        );
    }

    #[test]
    fn a_replaced_file_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.pid");
        let pid_file = PidFile::create(&path).expect("create");
        fs::write(&path, "2147483646\n").expect("replace");
        drop(pid_file);
        assert_eq!(fs::read_to_string(&path).expect("read"), "2147483646\n");
    }

    #[test]
    fn errors_name_the_path() {
        let err = PidFile::create("/nonexistent-deploy-dir/agent.pid").expect_err("no dir");
        assert!(matches!(err, PidError::Write { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("/nonexistent-deploy-dir/agent.pid"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let err = PidFile::create(dir.path().join("a/..")).expect_err("no file name");
        assert!(err.to_string().contains("cannot write"), "{err}");
    }
}
