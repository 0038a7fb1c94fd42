//! Confined file operations: every name is one component opened relative to a
//! directory descriptor, and every directory is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (the extractor's flags,
//! [`deploy_extract::fs::beneath`]), so no symbolic link, planted or recorded, is ever
//! followed.
//!
//! ```text
//! list      openat2(dir, ".", O_RDONLY|O_DIRECTORY) + getdents
//! stat      fstatat(dir, name, AT_SYMLINK_NOFOLLOW)
//! read      openat(dir, name, O_RDONLY|O_NOFOLLOW|O_NONBLOCK) + fstat: a regular file only
//! link      readlinkat(dir, name)
//! write     openat(dir, ".deploy-tmp.PID.N", O_CREAT|O_EXCL|O_NOFOLLOW, 0600) … renameat
//! remove    unlinkat; a directory: its contents first, each opened as above
//! ```
//!
//! Temporary names start with [`TEMP_PREFIX`], the extractor's; walks skip them.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag, OpenHow};
use nix::sys::stat::{self, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// Names starting with this are work in progress (ours or the extractor's).
pub const TEMP_PREFIX: &[u8] = b".deploy-tmp.";

/// How deep a tree may nest (a guard against a stack overflow on a hostile tree).
pub const MAX_DEPTH: usize = 256;

static TEMP: AtomicU64 = AtomicU64::new(0);

/// A name as the kernel takes it.
pub fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// A fresh temporary name in this process.
pub fn temp_name(what: &str) -> Vec<u8> {
    let n = TEMP.fetch_add(1, Ordering::Relaxed);
    let mut name = TEMP_PREFIX.to_vec();
    name.extend_from_slice(format!("{what}.{}.{n}", std::process::id()).as_bytes());
    name
}

/// What a directory entry is (never through a link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device (never recorded).
    Other,
}

/// An entry's kind and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Its kind.
    pub kind: Kind,
    /// `mode & 0o7777`.
    pub mode: u32,
}

fn how_dir() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(deploy_extract::fs::beneath())
}

/// Opens the directory `rel` (one or more components, `.` for `base` itself) beneath
/// `base`, readable, through no symbolic link.
pub fn open_dir(base: &impl AsFd, rel: &[u8]) -> Result<OwnedFd, Errno> {
    let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
    fcntl::openat2(base, os(rel), how_dir())
}

/// The entry `name` of `dir`, not following a link; `None` if there is none.
pub fn stat_at(dir: &impl AsFd, name: &[u8]) -> Result<Option<Meta>, Errno> {
    match stat::fstatat(dir, os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                SFlag::S_IFREG => Kind::File,
                SFlag::S_IFDIR => Kind::Dir,
                SFlag::S_IFLNK => Kind::Symlink,
                _ => Kind::Other,
            };
            Ok(Some(Meta {
                kind,
                mode: st.st_mode & 0o7777,
            }))
        }
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The names in `dir` (without `.` and `..`), sorted bytewise.
pub fn list(dir: &impl AsFd) -> Result<Vec<Vec<u8>>, Errno> {
    let fd = open_dir(dir, b".")?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// Opens the regular file `name` of `dir` for reading (a link or anything else:
/// `ELOOP` or `EINVAL`).
pub fn open_file(dir: &impl AsFd, name: &[u8]) -> Result<File, Errno> {
    let fd = fcntl::openat(
        dir,
        os(name),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let st = stat::fstat(&fd)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Errno::EINVAL);
    }
    // Back to blocking reads (O_NONBLOCK only kept a FIFO from stalling the open).
    fcntl::fcntl(&fd, fcntl::FcntlArg::F_SETFL(OFlag::empty()))?;
    Ok(File::from(fd))
}

/// The target of the symbolic link `name` in `dir`.
pub fn read_link(dir: &impl AsFd, name: &[u8]) -> Result<Vec<u8>, Errno> {
    fcntl::readlinkat(dir, os(name)).map(|t| t.as_bytes().to_vec())
}

/// Creates a new empty file under a temporary name in `dir` (mode `0o600`).
pub fn temp_file(dir: &impl AsFd, what: &str) -> Result<(Vec<u8>, File), Errno> {
    let mut attempts = 0;
    loop {
        let name = temp_name(what);
        match fcntl::openat(
            dir,
            os(&name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(Errno::EEXIST) if attempts < 16 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Creates the symbolic link `target` under a temporary name in `dir`.
pub fn temp_symlink(dir: &impl AsFd, target: &[u8]) -> Result<Vec<u8>, Errno> {
    let mut attempts = 0;
    loop {
        let name = temp_name("link");
        match nix::unistd::symlinkat(os(target), dir, os(&name)) {
            Ok(()) => return Ok(name),
            Err(Errno::EEXIST) if attempts < 16 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Renames `from` in `from_dir` to `to` in `to_dir` (replacing a file or link there).
pub fn rename(
    from_dir: &impl AsFd,
    from: &[u8],
    to_dir: &impl AsFd,
    to: &[u8],
) -> Result<(), Errno> {
    fcntl::renameat(from_dir, os(from), to_dir, os(to))
}

/// Makes the directory `name` in `dir` (`EEXIST` if anything is there).
pub fn make_dir(dir: &impl AsFd, name: &[u8], mode: u32) -> Result<(), Errno> {
    stat::mkdirat(dir, os(name), Mode::from_bits_truncate(mode & 0o7777))
}

/// Sets the mode of the directory `name` in `dir` (opened through no link).
pub fn chmod_dir(dir: &impl AsFd, name: &[u8], mode: u32) -> Result<(), Errno> {
    let fd = open_dir(dir, name)?;
    stat::fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
}

/// Removes the file or link `name` of `dir`.
pub fn unlink(dir: &impl AsFd, name: &[u8]) -> Result<(), Errno> {
    nix::unistd::unlinkat(dir, os(name), UnlinkatFlags::NoRemoveDir)
}

/// Removes the empty directory `name` of `dir`.
pub fn rmdir(dir: &impl AsFd, name: &[u8]) -> Result<(), Errno> {
    nix::unistd::unlinkat(dir, os(name), UnlinkatFlags::RemoveDir)
}

/// Removes `name` of `dir` whatever it is; a directory with everything in it (each
/// level opened beneath the last, through no link: a link inside is removed, never
/// followed). Nothing there is not an error.
pub fn remove_tree(dir: &impl AsFd, name: &[u8]) -> Result<(), Errno> {
    remove_tree_at(dir, name, 0)
}

fn remove_tree_at(dir: &impl AsFd, name: &[u8], depth: usize) -> Result<(), Errno> {
    match stat_at(dir, name)? {
        None => Ok(()),
        Some(Meta {
            kind: Kind::Dir, ..
        }) => {
            if depth > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            let sub = open_dir(dir, name)?;
            for child in list(&sub)? {
                remove_tree_at(&sub, &child, depth + 1)?;
            }
            drop(sub);
            match rmdir(dir, name) {
                Err(Errno::ENOENT) => Ok(()),
                other => other,
            }
        }
        Some(_) => match unlink(dir, name) {
            Err(Errno::ENOENT) => Ok(()),
            other => other,
        },
    }
}

/// Flushes `fd` (a file or a directory) to disk.
pub fn sync(fd: &impl AsFd) -> Result<(), Errno> {
    nix::unistd::fsync(fd)
}
