//! [`Root`]: a directory opened once, under which every entry is made relative to a
//! parent directory's file descriptor, so the kernel, not a name check, keeps writes
//! inside it.
//!
//! ```text
//! parent   openat2(root_fd, "a/b", O_PATH|O_DIRECTORY,
//!                  RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS)
//!          (missing directories: mkdirat + openat2, one component at a time)
//! file     openat(parent, ".deploy-tmp.PID.N", O_CREAT|O_EXCL|O_NOFOLLOW, 0600)
//!          write, fchmod, futimens, renameat(parent, tmp, parent, name)
//! dir      mkdirat(parent, name) + fchmod (an existing directory is kept as it is)
//! link     symlinkat(target, parent, tmp) + renameat(parent, tmp, parent, name)
//! ```
//!
//! A symbolic link anywhere on a parent's path (`ELOOP`) refuses the entry; a link or
//! file at an entry's own name is replaced by `renameat`, never followed.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, Mode};
use nix::sys::time::TimeSpec;

use crate::{archive::Entry, Error, Name};

/// Temporary names in this process.
static TEMP: AtomicU64 = AtomicU64::new(0);

/// The resolve flags of every confined open: beneath the starting directory, through
/// no symbolic link and no magic link. Public so that other confined code (NodeApps)
/// resolves exactly as the extractor does.
pub fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// A failed operation on an entry, named once the entry is known.
#[derive(Debug)]
pub struct FsError {
    op: &'static str,
    errno: Errno,
}

impl FsError {
    fn new(op: &'static str, errno: Errno) -> FsError {
        FsError { op, errno }
    }

    /// The error, naming `entry`.
    pub fn at(self, entry: &Entry) -> Error {
        match self.errno {
            Errno::ELOOP | Errno::EXDEV => Error::Refused {
                entry: entry.name.clone(),
                reason: "its path goes through a symbolic link".into(),
            },
            Errno::ENOTDIR => Error::Refused {
                entry: entry.name.clone(),
                reason: "its path goes through something that is not a directory".into(),
            },
            errno => Error::Io {
                entry: entry.name.clone(),
                op: self.op,
                source: io::Error::from(errno),
            },
        }
    }
}

/// The extraction root: an open directory.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens an existing directory (not through a symbolic link at its last component).
    pub fn open(path: &Path) -> Result<Root, Error> {
        let fd = fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| root_error(path, e))?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    /// Opens `base/rel`, making the missing directories of `rel` (mode `0o755`), with
    /// `rel` resolved beneath `base` and through no symbolic link.
    pub fn create_beneath(base: &Path, rel: &Path) -> Result<Root, Error> {
        Root::open(base)?.subdir(rel, true)
    }

    /// Opens (making missing directories, mode `0o755`, when `create`) the directory
    /// `rel` beneath this root, through no symbolic link, as a root of its own.
    pub fn subdir(&self, rel: &Path, create: bool) -> Result<Root, Error> {
        let path = self.path.join(rel);
        let parts: Vec<Vec<u8>> = crate::archive::clean(rel.as_os_str().as_bytes())
            .map_err(|why| root_error(&path, Errno::EINVAL).with_reason(why))?;
        let mut cur = self
            .fd
            .try_clone()
            .map_err(|e| root_error(&path, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        for part in &parts {
            cur = child_dir(&cur, part, 0o755, create).map_err(|e| root_error(&path, e.errno))?;
        }
        // Reopened readable (an O_PATH descriptor cannot be listed or synced).
        let fd = fcntl::openat2(
            &cur,
            ".",
            OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(beneath()),
        )
        .map_err(|e| root_error(&path, e))?;
        Ok(Root { fd, path })
    }

    /// A second root on the same directory (its descriptor duplicated).
    pub fn try_clone(&self) -> Result<Root, Error> {
        let fd = self.fd.try_clone().map_err(|source| Error::Root {
            path: self.path.display().to_string(),
            source,
        })?;
        Ok(Root {
            fd,
            path: self.path.clone(),
        })
    }

    /// The root's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's directory descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Opens the regular file `rel` for reading, resolved beneath the root through no
    /// symbolic link (the kernel refuses one anywhere on the way, `ELOOP`/`EXDEV`): for
    /// a reader that must not be led out of the root between a walk and its read.
    /// Opened `O_NONBLOCK` until it is known to be a regular file, so a FIFO swapped in
    /// since the walk is refused rather than stalling the open for good.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        let fd = fcntl::openat2(
            &self.fd,
            rel,
            OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
                .resolve(beneath()),
        )
        .map_err(io::Error::from)?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", rel.display()),
            ));
        }
        fcntl::fcntl(&file, fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(io::Error::from)?;
        Ok(file)
    }

    /// Flushes the root's file system.
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::syncfs(&self.fd).map_err(io::Error::from)
    }

    /// Makes directory `name` in `parent` with `mode` (an existing one is kept).
    pub fn make_dir(&self, parent: &OwnedFd, name: &[u8], mode: u32) -> Result<(), FsError> {
        child_dir(parent, name, mode, true).map(drop)
    }

    /// Makes (or replaces) the symbolic link `name` in `parent`.
    pub fn make_symlink(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        target: &[u8],
    ) -> Result<(), FsError> {
        let target = std::ffi::OsStr::from_bytes(target);
        let mut attempts = 0;
        loop {
            let temp = temp_name();
            match nix::unistd::symlinkat(target, parent, temp.as_os_str()) {
                Ok(()) => {
                    return rename_into_place(parent, &temp, name, "make the symbolic link");
                }
                Err(Errno::EEXIST) if attempts < 16 => attempts += 1,
                Err(e) => return Err(FsError::new("make the symbolic link", e)),
            }
        }
    }

    /// Writes a file `name` in `parent` from `data` (a reader of the entry's bytes),
    /// under a temporary name renamed into place once complete.
    pub fn write_file(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        mode: u32,
        mtime: Option<i64>,
        mut data: impl FnMut(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<u64, Error> {
        self.write_file_with(parent, name, mode, mtime, |file| {
            let mut buf = vec![0u8; 64 << 10];
            let mut written = 0u64;
            loop {
                let n = match data(&mut buf)? {
                    0 => return Ok(written),
                    n => n,
                };
                file.write_all(buf.get(..n).unwrap_or_default())
                    .map_err(|source| Error::Io {
                        entry: Name(name.to_vec()),
                        op: "write",
                        source,
                    })?;
                written += n as u64;
            }
        })
    }

    /// [`Root::write_file`] with the data written by `body` (its byte count returned):
    /// for a caller that writes from buffers it already holds. On an error from `body`
    /// the temporary file is removed.
    pub fn write_file_with(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        mode: u32,
        mtime: Option<i64>,
        body: impl FnOnce(&mut File) -> Result<u64, Error>,
    ) -> Result<u64, Error> {
        let entry_name = || Name(name.to_vec());
        let io_error = |op: &'static str, errno: Errno| Error::Io {
            entry: entry_name(),
            op,
            source: io::Error::from(errno),
        };
        let mut attempts = 0;
        let (temp, fd) = loop {
            let temp = temp_name();
            match fcntl::openat(
                parent,
                temp.as_os_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => break (temp, fd),
                Err(Errno::EEXIST) if attempts < 16 => attempts += 1,
                Err(e) => return Err(io_error("create", e)),
            }
        };
        let discard = |parent: &OwnedFd| {
            let _ = nix::unistd::unlinkat(
                parent,
                temp.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        };
        let mut file = File::from(fd);
        let written = match body(&mut file) {
            Ok(n) => n,
            Err(e) => {
                drop(file);
                discard(parent);
                return Err(e);
            }
        };
        let finish = (|| {
            stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode & 0o7777))
                .map_err(|e| io_error("set the mode of", e))?;
            if let Some(mtime) = mtime {
                let t = TimeSpec::new(mtime, 0);
                stat::futimens(file.as_fd(), &t, &t).map_err(|e| io_error("set the time of", e))?;
            }
            Ok(())
        })();
        drop(file);
        if let Err(e) = finish {
            discard(parent);
            return Err(e);
        }
        rename_into_place(parent, &temp, name, "write").map_err(|e| {
            discard(parent);
            io_error(e.op, e.errno)
        })?;
        Ok(written)
    }
}

impl Error {
    fn with_reason(self, why: &str) -> Error {
        match self {
            Error::Root { path, .. } => Error::Root {
                path,
                source: io::Error::new(io::ErrorKind::InvalidInput, why),
            },
            other => other,
        }
    }
}

fn root_error(path: &Path, errno: Errno) -> Error {
    let source = match errno {
        Errno::ELOOP | Errno::EXDEV => io::Error::other("its path goes through a symbolic link"),
        errno => io::Error::from(errno),
    };
    Error::Root {
        path: path.display().to_string(),
        source,
    }
}

fn temp_name() -> std::ffi::OsString {
    let n = TEMP.fetch_add(1, Ordering::Relaxed);
    format!(".deploy-tmp.{}.{n}", std::process::id()).into()
}

fn rename_into_place(
    parent: &OwnedFd,
    temp: &std::ffi::OsStr,
    name: &[u8],
    op: &'static str,
) -> Result<(), FsError> {
    let name = std::ffi::OsStr::from_bytes(name);
    fcntl::renameat(parent, temp, parent, name).map_err(|e| {
        let _ = nix::unistd::unlinkat(parent, temp, nix::unistd::UnlinkatFlags::NoRemoveDir);
        FsError::new(op, e)
    })
}

/// Opens (making it if `create`) the directory `name` in `parent`, through no link.
fn child_dir(parent: &OwnedFd, name: &[u8], mode: u32, create: bool) -> Result<OwnedFd, FsError> {
    let name = std::ffi::OsStr::from_bytes(name);
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(beneath())
    };
    match fcntl::openat2(parent, name, how()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create => {}
        Err(e) => return Err(FsError::new("open the directory", e)),
    }
    match stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => {
            // Made here: its mode, exactly (the umask applied to mkdirat).
            let fd = fcntl::openat2(
                parent,
                name,
                OpenHow::new()
                    .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                    .resolve(beneath()),
            )
            .map_err(|e| FsError::new("open the directory", e))?;
            stat::fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
                .map_err(|e| FsError::new("set the mode of", e))?;
        }
        // Made by someone else meanwhile: opened below, through no link.
        Err(Errno::EEXIST) => {}
        Err(e) => return Err(FsError::new("make the directory", e)),
    }
    fcntl::openat2(parent, name, how()).map_err(|e| FsError::new("open the directory", e))
}

/// The last parent directory opened, reused while entries share it.
#[derive(Debug, Default)]
pub struct DirCache {
    last: Option<(Vec<Vec<u8>>, OwnedFd)>,
}

impl DirCache {
    /// The directory `parts` under `root`, made (mode `0o755 & mask`) where missing.
    pub fn dir(&mut self, root: &Root, parts: &[Vec<u8>], mask: u32) -> Result<&OwnedFd, FsError> {
        let hit = matches!(&self.last, Some((cached, _)) if cached.as_slice() == parts);
        if !hit {
            let fd = if parts.is_empty() {
                root.fd.try_clone().map_err(|e| {
                    FsError::new("open", Errno::from_raw(e.raw_os_error().unwrap_or(0)))
                })?
            } else {
                let joined = parts.join(&b'/');
                let path = std::ffi::OsStr::from_bytes(&joined);
                match fcntl::openat2(
                    &root.fd,
                    path,
                    OpenHow::new()
                        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                        .resolve(beneath()),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => {
                        let mut cur = root.fd.try_clone().map_err(|e| {
                            FsError::new("open", Errno::from_raw(e.raw_os_error().unwrap_or(0)))
                        })?;
                        for part in parts {
                            cur = child_dir(&cur, part, 0o755 & mask | 0o700, true)?;
                        }
                        cur
                    }
                    Err(e) => return Err(FsError::new("open the directory", e)),
                }
            };
            self.last = Some((parts.to_vec(), fd));
        }
        match &self.last {
            Some((_, fd)) => Ok(fd),
            None => Err(FsError::new("open", Errno::EINVAL)),
        }
    }

    /// Drops the cached directory if `parts` (just replaced) is it or leads to it.
    pub fn forget(&mut self, parts: &[Vec<u8>]) {
        if matches!(&self.last, Some((cached, _)) if cached.starts_with(parts)) {
            self.last = None;
        }
    }
}
